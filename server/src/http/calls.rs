//! `/calls`: call history (CDRs). Admins see their tenant's, users the calls of their own
//! extensions.

use axum::extract::State;
use serde::Deserialize;
use switchboard_storage::calls::{self, Call, Direction, Disposition, Filter};
use switchboard_storage::{Page, PageRequest, Timestamp, Uuid};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls))
        .routes(routes!(get_call))
}

/// Filters and paging for the call list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    /// Calls that started at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<Timestamp>,
    /// Calls that started before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<Timestamp>,
    /// Calls to or from the extension with this number.
    extension: Option<String>,
    /// Calls to, from or on (DID) this number.
    number: Option<String>,
    /// `inbound`, `outbound` or `internal`.
    direction: Option<Direction>,
    /// `answered`, `busy`, `no_answer`, `cancelled`, `failed`, `interrupted` or `in_progress`.
    disposition: Option<Disposition>,
    /// Items per page, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

impl CallQuery {
    fn page(&self) -> Result<PageRequest, ApiError> {
        PageParams {
            limit: self.limit,
            cursor: self.cursor,
        }
        .request()
    }
}

/// List calls, newest first.
#[utoipa::path(get, path = "/calls", tag = "calls", security(("bearer" = [])), params(CallQuery),
    responses((status = 200, body = Page<Call>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_calls(
    State(state): State<AppState>,
    who: Auth,
    Query(query): Query<CallQuery>,
) -> ApiResult<Json<Page<Call>>> {
    let page = query.page()?;
    let filter = Filter {
        since: query.since,
        until: query.until,
        extension: query.extension,
        number: query.number,
        direction: query.direction,
        disposition: query.disposition,
        owner: who.owner_filter(),
    };
    Ok(Json(
        calls::list(&state.db, who.scope(), &filter, &page).await?,
    ))
}

/// Read one call.
#[utoipa::path(get, path = "/calls/{id}", tag = "calls", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Call), (status = 404, body = ErrorBody)))]
async fn get_call(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Call>> {
    Ok(Json(
        calls::get(&state.db, who.scope(), who.owner_filter(), id).await?,
    ))
}

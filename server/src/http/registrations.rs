//! `/registrations`: where extensions are registered (live SIP bindings). Admins see their
//! tenant's, users those of their own extensions.

use axum::extract::State;
use serde::Deserialize;
use switchboard_storage::registrations::{self, Filter, Registration};
use switchboard_storage::{Page, Timestamp, Uuid};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Query};
use super::{ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_registrations))
}

/// Filters and paging for the registration list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RegistrationQuery {
    /// Only this extension's contacts.
    extension_id: Option<Uuid>,
    /// Items per page, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// Live registrations: one item per contact of each extension, with where it registered from,
/// its transport, user agent and expiry.
#[utoipa::path(get, path = "/registrations", tag = "registrations", security(("bearer" = [])), params(RegistrationQuery),
    responses((status = 200, body = Page<Registration>), (status = 401, body = ErrorBody)))]
async fn list_registrations(
    State(state): State<AppState>,
    who: Auth,
    Query(query): Query<RegistrationQuery>,
) -> ApiResult<Json<Page<Registration>>> {
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let filter = Filter {
        extension_id: query.extension_id,
        owner: who.owner_filter(),
    };
    Ok(Json(
        registrations::list(&state.db, who.scope(), filter, Timestamp::now(), &page).await?,
    ))
}

//! `/calls`: call history (CDRs). Admins see their tenant's, users the calls of their own
//! extensions.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchboard_signalling::core::{RecordingError, RecordingRequest};
use switchboard_storage::calls::{self, Call, Direction, Disposition, Filter};
use switchboard_storage::{Page, PageRequest, Timestamp, Uuid};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls))
        .routes(routes!(get_call))
        .routes(routes!(control_recording))
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

/// What to do with a live call's recording.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum RecordingAction {
    /// Start recording (once per call; answered calls only).
    Start,
    /// Leave what follows out of the file until resumed.
    Pause,
    /// Record again.
    Resume,
    /// Close the file.
    Stop,
}

/// A recording request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecordingBody {
    /// `start`, `pause`, `resume` or `stop`.
    action: RecordingAction,
}

/// Where a call's recording stands after a request.
#[derive(Serialize, ToSchema)]
struct RecordingStatus {
    /// The recording (its row appears under `/recordings` once the file is open).
    recording_id: Uuid,
    /// `recording`, `paused` or `stopped`.
    state: &'static str,
}

/// Start, pause, resume or stop recording a live call (stereo WAV, caller left, callee
/// right). Answers 409 when the call is not answered yet or the action does not fit the
/// recording's state.
#[utoipa::path(post, path = "/calls/{id}/recording", tag = "calls", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = RecordingBody,
    responses((status = 200, body = RecordingStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn control_recording(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<RecordingBody>,
) -> ApiResult<Json<RecordingStatus>> {
    // Only calls the caller may see.
    calls::get(&state.db, who.scope(), who.owner_filter(), id).await?;
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "call control is not running",
        )
    };
    let sip = state.sip.as_ref().ok_or_else(unavailable)?;
    let request = match body.action {
        RecordingAction::Start => RecordingRequest::Start,
        RecordingAction::Pause => RecordingRequest::Pause,
        RecordingAction::Resume => RecordingRequest::Resume,
        RecordingAction::Stop => RecordingRequest::Stop,
    };
    match sip.control_recording(id, request).await {
        None => Err(unavailable()),
        Some(Ok((recording_id, state))) => Ok(Json(RecordingStatus {
            recording_id,
            state: state.as_str(),
        })),
        Some(Err(RecordingError::NoSuchCall)) => Err(ApiError::conflict(
            "call_not_live",
            "the call has ended (or is on another node)",
        )),
        Some(Err(error)) => Err(ApiError::conflict("recording_state", error.to_string())),
    }
}

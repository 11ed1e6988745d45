//! `/audit-log`: who changed what (admins: their tenant; superadmins: everything).

use axum::extract::State;
use switchboard_storage::Page;
use switchboard_storage::audit::{self, AuditEntry};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Query};
use super::{ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

/// Audit entries, newest first.
#[utoipa::path(get, path = "/audit-log", tag = "audit", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 403, body = ErrorBody)))]
async fn list_audit_log(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    who.require_admin()?;
    Ok(Json(
        audit::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

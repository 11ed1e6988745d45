//! `/ring-groups`: extensions rung together or in turn (admins).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::ring_groups::{self, RingGroup, Strategy};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_ring_groups, create_ring_group))
        .routes(routes!(
            get_ring_group,
            update_ring_group,
            delete_ring_group
        ))
}

const MAX_MEMBERS: usize = 100;

/// A new ring group.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRingGroup {
    /// Name, unique in the tenant.
    name: String,
    /// `simultaneous` (default) or `sequential`.
    strategy: Option<Strategy>,
    /// Seconds to ring (each member, when sequential), 5 to 300 (default 30).
    ring_timeout_secs: Option<u32>,
    /// Member extension ids in ringing order.
    members: Vec<Uuid>,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a ring group; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRingGroup {
    name: Option<String>,
    strategy: Option<Strategy>,
    ring_timeout_secs: Option<u32>,
    members: Option<Vec<Uuid>>,
}

fn check(group: &mut RingGroup) -> ApiResult<()> {
    group.name = validate::text("name", &group.name, 64)?;
    if !(5..=300).contains(&group.ring_timeout_secs) {
        return Err(ApiError::invalid("ring_timeout_secs", "must be 5 to 300"));
    }
    if group.members.len() > MAX_MEMBERS {
        return Err(ApiError::invalid(
            "members",
            format!("at most {MAX_MEMBERS} members"),
        ));
    }
    Ok(())
}

fn audit_details(group: &RingGroup) -> serde_json::Value {
    json!({"name": group.name, "strategy": group.strategy, "members": group.members})
}

/// List ring groups.
#[utoipa::path(get, path = "/ring-groups", tag = "ring-groups", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<RingGroup>), (status = 403, body = ErrorBody)))]
async fn list_ring_groups(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<RingGroup>>> {
    who.require_admin()?;
    Ok(Json(
        ring_groups::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Create a ring group.
#[utoipa::path(post, path = "/ring-groups", tag = "ring-groups", security(("bearer" = [])), request_body = CreateRingGroup,
    responses((status = 201, body = RingGroup), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_ring_group(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateRingGroup>,
) -> ApiResult<(StatusCode, Json<RingGroup>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let now = Timestamp::now();
    let mut group = RingGroup {
        id: new_id(),
        tenant_id,
        name: body.name,
        strategy: body.strategy.unwrap_or(Strategy::Simultaneous),
        ring_timeout_secs: body.ring_timeout_secs.unwrap_or(30),
        members: body.members,
        created_at: now,
        updated_at: now,
    };
    check(&mut group)?;
    ring_groups::create(&state.db, &group).await?;
    state.sync_ring_group(group.id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "ring_group",
                object_id: group.id.to_string(),
                details: audit_details(&group),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(group)))
}

/// Read a ring group.
#[utoipa::path(get, path = "/ring-groups/{id}", tag = "ring-groups", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = RingGroup), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_ring_group(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<RingGroup>> {
    who.require_admin()?;
    Ok(Json(ring_groups::get(&state.db, who.scope(), id).await?))
}

/// Change a ring group.
#[utoipa::path(patch, path = "/ring-groups/{id}", tag = "ring-groups", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateRingGroup,
    responses((status = 200, body = RingGroup), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_ring_group(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateRingGroup>,
) -> ApiResult<Json<RingGroup>> {
    who.require_admin()?;
    let mut group = ring_groups::get(&state.db, who.scope(), id).await?;
    group.name = body.name.unwrap_or(group.name);
    group.strategy = body.strategy.unwrap_or(group.strategy);
    group.ring_timeout_secs = body.ring_timeout_secs.unwrap_or(group.ring_timeout_secs);
    group.members = body.members.unwrap_or(group.members);
    check(&mut group)?;
    let group = ring_groups::update(&state.db, &group).await?;
    state.sync_ring_group(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(group.tenant_id),
                action: "update",
                object_type: "ring_group",
                object_id: id.to_string(),
                details: audit_details(&group),
            },
        )
        .await;
    Ok(Json(group))
}

/// Delete a ring group (refused with 409 while a number routes to it).
#[utoipa::path(delete, path = "/ring-groups/{id}", tag = "ring-groups", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_ring_group(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let group = ring_groups::get(&state.db, who.scope(), id).await?;
    ring_groups::delete(&state.db, who.scope(), id).await?;
    state.sync_ring_group(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(group.tenant_id),
                action: "delete",
                object_type: "ring_group",
                object_id: id.to_string(),
                details: audit_details(&group),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

//! `/outbound-routes`: which trunk numbers dialled by extensions leave through (admins).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::outbound_routes::{self, OutboundRoute};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, update_route, delete_route))
}

/// A new outbound route.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRoute {
    /// Name, unique in the tenant.
    name: String,
    /// Leading digits of the E.164 number without `+` (`1`, `44`, `1555`); empty for every
    /// number.
    #[serde(default)]
    prefix: String,
    /// The trunk calls leave through.
    trunk_id: Uuid,
    /// Among routes with the same prefix length, lower goes first (default 100).
    priority: Option<i32>,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a route; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateRoute {
    name: Option<String>,
    prefix: Option<String>,
    trunk_id: Option<Uuid>,
    priority: Option<i32>,
}

fn check(route: &mut OutboundRoute) -> ApiResult<()> {
    route.name = validate::text("name", &route.name, 64)?;
    if route.prefix.len() > 15 || !route.prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "prefix",
            "must be up to 15 digits (the E.164 number without `+`)",
        ));
    }
    if !(0..=10_000).contains(&route.priority) {
        return Err(ApiError::invalid("priority", "must be 0 to 10000"));
    }
    Ok(())
}

async fn audit(
    state: &AppState,
    who: &Auth,
    ip: &ClientIp,
    route: &OutboundRoute,
    action: &'static str,
) {
    state
        .audit(
            who,
            ip,
            AuditEvent {
                tenant_id: Some(route.tenant_id),
                action,
                object_type: "outbound_route",
                object_id: route.id.to_string(),
                details: json!({"name": route.name, "prefix": route.prefix, "trunk_id": route.trunk_id}),
            },
        )
        .await;
}

/// List outbound routes.
#[utoipa::path(get, path = "/outbound-routes", tag = "outbound-routes", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<OutboundRoute>), (status = 403, body = ErrorBody)))]
async fn list_routes(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<OutboundRoute>>> {
    who.require_admin()?;
    Ok(Json(
        outbound_routes::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Create an outbound route.
#[utoipa::path(post, path = "/outbound-routes", tag = "outbound-routes", security(("bearer" = [])), request_body = CreateRoute,
    responses((status = 201, body = OutboundRoute), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateRoute>,
) -> ApiResult<(StatusCode, Json<OutboundRoute>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let now = Timestamp::now();
    let mut route = OutboundRoute {
        id: new_id(),
        tenant_id,
        name: body.name,
        prefix: body.prefix,
        trunk_id: body.trunk_id,
        priority: body.priority.unwrap_or(100),
        created_at: now,
        updated_at: now,
    };
    check(&mut route)?;
    outbound_routes::create(&state.db, &route).await?;
    state.sync_route(route.id).await;
    audit(&state, &who, &ip, &route, "create").await;
    Ok((StatusCode::CREATED, Json(route)))
}

/// Read an outbound route.
#[utoipa::path(get, path = "/outbound-routes/{id}", tag = "outbound-routes", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = OutboundRoute), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_route(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<OutboundRoute>> {
    who.require_admin()?;
    Ok(Json(
        outbound_routes::get(&state.db, who.scope(), id).await?,
    ))
}

/// Change an outbound route.
#[utoipa::path(patch, path = "/outbound-routes/{id}", tag = "outbound-routes", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateRoute,
    responses((status = 200, body = OutboundRoute), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_route(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateRoute>,
) -> ApiResult<Json<OutboundRoute>> {
    who.require_admin()?;
    let mut route = outbound_routes::get(&state.db, who.scope(), id).await?;
    route.name = body.name.unwrap_or(route.name);
    route.prefix = body.prefix.unwrap_or(route.prefix);
    route.trunk_id = body.trunk_id.unwrap_or(route.trunk_id);
    route.priority = body.priority.unwrap_or(route.priority);
    check(&mut route)?;
    let route = outbound_routes::update(&state.db, &route).await?;
    state.sync_route(id).await;
    audit(&state, &who, &ip, &route, "update").await;
    Ok(Json(route))
}

/// Delete an outbound route.
#[utoipa::path(delete, path = "/outbound-routes/{id}", tag = "outbound-routes", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let route = outbound_routes::get(&state.db, who.scope(), id).await?;
    outbound_routes::delete(&state.db, who.scope(), id).await?;
    state.sync_route(id).await;
    audit(&state, &who, &ip, &route, "delete").await;
    Ok(StatusCode::NO_CONTENT)
}

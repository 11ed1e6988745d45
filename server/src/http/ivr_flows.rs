//! `/ivr-flows`: IVR flow drafts and their immutable published versions (admins).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_signalling::ivr::Graph;
use switchboard_storage::ivr_flows::{self, IvrFlow, IvrFlowVersion};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flows, create_flow))
        .routes(routes!(get_flow, update_flow, delete_flow))
        .routes(routes!(publish_flow))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
}

/// A new flow.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateFlow {
    /// Name, unique in the tenant.
    name: String,
    /// The flow graph: `{"entry": "<node>", "nodes": {"<node>": {"verb": "...", ...}}}`.
    #[schema(value_type = Object)]
    graph: serde_json::Value,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a flow's draft; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateFlow {
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    graph: Option<serde_json::Value>,
}

fn check_graph(graph: &serde_json::Value) -> ApiResult<()> {
    Graph::parse(graph)
        .map(|_| ())
        .map_err(|e| ApiError::invalid("graph", e))
}

/// List flows.
#[utoipa::path(get, path = "/ivr-flows", tag = "ivr-flows", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<IvrFlow>), (status = 403, body = ErrorBody)))]
async fn list_flows(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<IvrFlow>>> {
    who.require_admin()?;
    Ok(Json(
        ivr_flows::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Create a flow. The graph is validated: an existing entry node, known verbs, and
/// transitions that name existing nodes.
#[utoipa::path(post, path = "/ivr-flows", tag = "ivr-flows", security(("bearer" = [])), request_body = CreateFlow,
    responses((status = 201, body = IvrFlow), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_flow(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateFlow>,
) -> ApiResult<(StatusCode, Json<IvrFlow>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    check_graph(&body.graph)?;
    let now = Timestamp::now();
    let flow = IvrFlow {
        id: new_id(),
        tenant_id,
        name: validate::text("name", &body.name, 64)?,
        draft: body.graph,
        published_version: None,
        created_at: now,
        updated_at: now,
    };
    ivr_flows::create(&state.db, &flow).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "ivr_flow",
                object_id: flow.id.to_string(),
                details: json!({"name": flow.name}),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(flow)))
}

/// Read a flow and its draft.
#[utoipa::path(get, path = "/ivr-flows/{id}", tag = "ivr-flows", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = IvrFlow), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_flow(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<IvrFlow>> {
    who.require_admin()?;
    Ok(Json(ivr_flows::get(&state.db, who.scope(), id).await?))
}

/// Rename a flow or replace its draft. Published versions don't change.
#[utoipa::path(patch, path = "/ivr-flows/{id}", tag = "ivr-flows", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateFlow,
    responses((status = 200, body = IvrFlow), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_flow(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateFlow>,
) -> ApiResult<Json<IvrFlow>> {
    who.require_admin()?;
    let mut flow = ivr_flows::get(&state.db, who.scope(), id).await?;
    if let Some(name) = &body.name {
        flow.name = validate::text("name", name, 64)?;
    }
    if let Some(graph) = body.graph {
        check_graph(&graph)?;
        flow.draft = graph;
    }
    let flow = ivr_flows::update(&state.db, &flow).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(flow.tenant_id),
                action: "update",
                object_type: "ivr_flow",
                object_id: id.to_string(),
                details: json!({"name": flow.name}),
            },
        )
        .await;
    Ok(Json(flow))
}

/// Delete a flow and its versions (refused with 409 while a number routes to it).
#[utoipa::path(delete, path = "/ivr-flows/{id}", tag = "ivr-flows", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_flow(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let flow = ivr_flows::get(&state.db, who.scope(), id).await?;
    ivr_flows::delete(&state.db, who.scope(), id).await?;
    state.sync_flow(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(flow.tenant_id),
                action: "delete",
                object_type: "ivr_flow",
                object_id: id.to_string(),
                details: json!({"name": flow.name}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish the current draft as the next immutable version. The whole graph is validated
/// again first.
#[utoipa::path(post, path = "/ivr-flows/{id}/publish", tag = "ivr-flows", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 201, body = IvrFlowVersion), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn publish_flow(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<IvrFlowVersion>)> {
    who.require_admin()?;
    let flow = ivr_flows::get(&state.db, who.scope(), id).await?;
    check_graph(&flow.draft)?;
    let version = ivr_flows::publish(&state.db, who.scope(), id, Some(who.id)).await?;
    state.sync_flow(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(flow.tenant_id),
                action: "publish",
                object_type: "ivr_flow",
                object_id: id.to_string(),
                details: json!({"version": version.version}),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(version)))
}

/// Published versions of a flow, newest first.
#[utoipa::path(get, path = "/ivr-flows/{id}/versions", tag = "ivr-flows", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<IvrFlowVersion>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<IvrFlowVersion>>> {
    who.require_admin()?;
    Ok(Json(ivr_flows::versions(&state.db, who.scope(), id).await?))
}

/// One published version of a flow.
#[utoipa::path(get, path = "/ivr-flows/{id}/versions/{version}", tag = "ivr-flows", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("version" = u32, Path)),
    responses((status = 200, body = IvrFlowVersion), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_version(
    State(state): State<AppState>,
    who: Auth,
    Path((id, version)): Path<(Uuid, u32)>,
) -> ApiResult<Json<IvrFlowVersion>> {
    who.require_admin()?;
    Ok(Json(
        ivr_flows::version(&state.db, who.scope(), id, version).await?,
    ))
}

//! `/tenants`: superadmins manage tenants; everyone may read their own.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::tenants::{self, Tenant};
use switchboard_storage::{Page, Uuid};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::validate::double_option;
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
}

/// A new tenant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    /// Display name.
    name: String,
    /// SIP domain (unique): the realm its extensions register in.
    sip_domain: String,
    /// Record every answered call of the tenant (default false).
    #[serde(default)]
    record_calls: bool,
    /// The number (E.164; `+1…`, `1…` or national forms are normalised) its extensions
    /// present on calls out when they have no caller ID of their own.
    caller_id_number: Option<String>,
    /// Calls out at once for this tenant, instead of `outbound.max_concurrent_per_tenant`.
    max_outbound_calls: Option<i32>,
    /// Answered minutes out per UTC day, instead of `outbound.daily_minutes_per_tenant`
    /// (0: no cap).
    daily_outbound_minutes: Option<i32>,
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTenant {
    name: Option<String>,
    sip_domain: Option<String>,
    /// Record every answered call of the tenant.
    record_calls: Option<bool>,
    /// The tenant's caller ID number; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    caller_id_number: Option<Option<String>>,
    /// Calls out at once for this tenant; `null`: the server's limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>)]
    max_outbound_calls: Option<Option<i32>>,
    /// Answered minutes out per UTC day for this tenant; `null`: the server's limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i32>)]
    daily_outbound_minutes: Option<Option<i32>>,
}

/// List tenants (superadmin).
#[utoipa::path(get, path = "/tenants", tag = "tenants", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Tenant>), (status = 403, body = ErrorBody)))]
async fn list_tenants(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Tenant>>> {
    who.require_superadmin()?;
    Ok(Json(tenants::list(&state.db, &page.request()?).await?))
}

/// Create a tenant (superadmin).
#[utoipa::path(post, path = "/tenants", tag = "tenants", security(("bearer" = [])), request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    who.require_superadmin()?;
    let name = validate::text("name", &body.name, 100)?;
    let domain = validate::sip_domain("sip_domain", &body.sip_domain)?;
    let caller_id = validate::caller_id_number(body.caller_id_number)?;
    let max_calls = limit("max_outbound_calls", body.max_outbound_calls)?;
    let minutes = limit("daily_outbound_minutes", body.daily_outbound_minutes)?;
    let mut tenant = tenants::create(&state.db, &name, &domain).await?;
    if body.record_calls || caller_id.is_some() || max_calls.is_some() || minutes.is_some() {
        tenant.record_calls = body.record_calls;
        tenant.caller_id_number = caller_id;
        tenant.max_outbound_calls = max_calls;
        tenant.daily_outbound_minutes = minutes;
        tenant = tenants::update(&state.db, &tenant).await?;
    }
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant.id),
                action: "create",
                object_type: "tenant",
                object_id: tenant.id.to_string(),
                details: json!({"name": tenant.name, "sip_domain": tenant.sip_domain, "record_calls": tenant.record_calls, "caller_id_number": tenant.caller_id_number, "max_outbound_calls": tenant.max_outbound_calls, "daily_outbound_minutes": tenant.daily_outbound_minutes}),
            },
        )
        .await;
    state.sync_tenant(tenant.id).await;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Read a tenant: any tenant for a superadmin, else only one's own.
#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Tenant>> {
    if who.require_superadmin().is_err() && id != who.tenant_id {
        return Err(ApiError::not_found());
    }
    Ok(Json(tenants::get(&state.db, id).await?))
}

/// Rename a tenant, change its SIP domain, its recording policy, its caller ID or its limits on
/// calls out (superadmin).
#[utoipa::path(patch, path = "/tenants/{id}", tag = "tenants", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateTenant,
    responses((status = 200, body = Tenant), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_tenant(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateTenant>,
) -> ApiResult<Json<Tenant>> {
    who.require_superadmin()?;
    let mut tenant = tenants::get(&state.db, id).await?;
    if let Some(name) = &body.name {
        tenant.name = validate::text("name", name, 100)?;
    }
    if let Some(domain) = &body.sip_domain {
        tenant.sip_domain = validate::sip_domain("sip_domain", domain)?;
    }
    tenant.record_calls = body.record_calls.unwrap_or(tenant.record_calls);
    if let Some(number) = body.caller_id_number {
        tenant.caller_id_number = validate::caller_id_number(number)?;
    }
    if let Some(calls) = body.max_outbound_calls {
        tenant.max_outbound_calls = limit("max_outbound_calls", calls)?;
    }
    if let Some(minutes) = body.daily_outbound_minutes {
        tenant.daily_outbound_minutes = limit("daily_outbound_minutes", minutes)?;
    }
    let tenant = tenants::update(&state.db, &tenant).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(id),
                action: "update",
                object_type: "tenant",
                object_id: id.to_string(),
                details: json!({"name": tenant.name, "sip_domain": tenant.sip_domain, "record_calls": tenant.record_calls, "caller_id_number": tenant.caller_id_number, "max_outbound_calls": tenant.max_outbound_calls, "daily_outbound_minutes": tenant.daily_outbound_minutes}),
            },
        )
        .await;
    state.sync_tenant(id).await;
    Ok(Json(tenant))
}

/// Delete an empty tenant (superadmin). A tenant with users, extensions, trunks or numbers is
/// refused with 409.
#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_tenant(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_superadmin()?;
    if id == who.tenant_id {
        return Err(ApiError::conflict(
            "in_use",
            "you cannot delete your own tenant",
        ));
    }
    tenants::delete(&state.db, id).await?;
    state.sync_tenant(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(id),
                action: "delete",
                object_type: "tenant",
                object_id: id.to_string(),
                details: json!({}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A per-tenant limit: 0 to 1 000 000.
fn limit(field: &str, value: Option<i32>) -> ApiResult<Option<i32>> {
    match value {
        Some(n) if !(0..=1_000_000).contains(&n) => {
            Err(ApiError::invalid(field, "must be between 0 and 1000000"))
        }
        other => Ok(other),
    }
}

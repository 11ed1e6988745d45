//! `/trunks`: SIP trunks of a tenant (admins).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::trunks::{self, Transport, Trunk, TrunkKind};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::validate::double_option;
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_trunks, create_trunk))
        .routes(routes!(get_trunk, update_trunk, delete_trunk))
        .routes(routes!(get_registration))
}

/// A new trunk.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTrunk {
    /// Name, unique in the tenant.
    name: String,
    /// `credential` (username/password, optional REGISTER) or `ip` (trusted source addresses).
    kind: TrunkKind,
    /// Primary proxy host name or address, e.g. `sip.telnyx.com`.
    host: String,
    /// Port (default: the transport's, or DNS SRV).
    port: Option<u16>,
    /// Transport (default `udp`).
    transport: Option<Transport>,
    /// Secondary proxy for failover.
    secondary_host: Option<String>,
    /// Username (required for credential trunks).
    username: Option<String>,
    /// Digest username when it differs from `username`.
    auth_username: Option<String>,
    /// Password (required for credential trunks). Stored encrypted; never returned.
    password: Option<String>,
    /// Send REGISTER to the carrier (credential trunks; default false).
    #[serde(default)]
    register: bool,
    /// Addresses, CIDR blocks or host names inbound calls may come from (required for IP trunks).
    #[serde(default)]
    allowed_sources: Vec<String>,
    /// Digits put in front of every dialled number.
    #[serde(default)]
    tech_prefix: String,
    /// Extra headers on outbound INVITEs, e.g. `{"X-Telnyx-Username": "acme"}`.
    #[serde(default)]
    custom_headers: BTreeMap<String, String>,
    /// Whether the trunk is used (default true).
    enabled: Option<bool>,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a trunk; absent fields stay as they are, `null` clears optional ones.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTrunk {
    name: Option<String>,
    kind: Option<TrunkKind>,
    host: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u16>)]
    port: Option<Option<u16>>,
    transport: Option<Transport>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    secondary_host: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    username: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    auth_username: Option<Option<String>>,
    /// New password; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    password: Option<Option<String>>,
    register: Option<bool>,
    allowed_sources: Option<Vec<String>>,
    tech_prefix: Option<String>,
    custom_headers: Option<BTreeMap<String, String>>,
    enabled: Option<bool>,
}

/// Validates the fields of `trunk` and the rules between them (`password` is a new password
/// about to be stored, if any).
fn check(trunk: &mut Trunk, password: Option<&str>) -> ApiResult<()> {
    trunk.name = validate::text("name", &trunk.name, 64)?;
    trunk.host = validate::host("host", &trunk.host)?;
    if trunk.port == Some(0) {
        return Err(ApiError::invalid("port", "must be 1 to 65535"));
    }
    if let Some(host) = &trunk.secondary_host {
        trunk.secondary_host = Some(validate::host("secondary_host", host)?);
    }
    for (field, value) in [
        ("username", &mut trunk.username),
        ("auth_username", &mut trunk.auth_username),
    ] {
        if let Some(v) = value {
            *v = validate::text(field, v, 128)?;
        }
    }
    if let Some(password) = password
        && (password.is_empty() || password.len() > 128 || password.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "password",
            "must be 1 to 128 characters without control characters",
        ));
    }
    if trunk.allowed_sources.len() > 64 {
        return Err(ApiError::invalid("allowed_sources", "at most 64 entries"));
    }
    for source in &mut trunk.allowed_sources {
        *source = validate::source("allowed_sources", source)?;
    }
    if trunk.tech_prefix.len() > 16
        || !trunk
            .tech_prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+*#".contains(&b))
    {
        return Err(ApiError::invalid(
            "tech_prefix",
            "at most 16 of 0-9, +, * and #",
        ));
    }
    if trunk.custom_headers.len() > 16 {
        return Err(ApiError::invalid("custom_headers", "at most 16 headers"));
    }
    for (name, value) in &trunk.custom_headers {
        validate::header("custom_headers", name, value)?;
    }
    match trunk.kind {
        TrunkKind::Credential => {
            if trunk.username.is_none() {
                return Err(ApiError::invalid(
                    "username",
                    "a credential trunk needs a username",
                ));
            }
            if !trunk.password_set {
                return Err(ApiError::invalid(
                    "password",
                    "a credential trunk needs a password",
                ));
            }
        }
        TrunkKind::Ip => {
            if trunk.allowed_sources.is_empty() {
                return Err(ApiError::invalid(
                    "allowed_sources",
                    "an IP trunk needs at least one allowed source",
                ));
            }
            if trunk.register {
                return Err(ApiError::invalid(
                    "register",
                    "an IP trunk does not register",
                ));
            }
        }
    }
    Ok(())
}

fn audit_details(trunk: &Trunk) -> serde_json::Value {
    json!({"name": trunk.name, "kind": trunk.kind, "host": trunk.host})
}

/// List trunks.
#[utoipa::path(get, path = "/trunks", tag = "trunks", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Trunk>), (status = 403, body = ErrorBody)))]
async fn list_trunks(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Trunk>>> {
    who.require_admin()?;
    Ok(Json(
        trunks::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Create a trunk.
#[utoipa::path(post, path = "/trunks", tag = "trunks", security(("bearer" = [])), request_body = CreateTrunk,
    responses((status = 201, body = Trunk), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_trunk(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateTrunk>,
) -> ApiResult<(StatusCode, Json<Trunk>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let now = Timestamp::now();
    let mut trunk = Trunk {
        id: new_id(),
        tenant_id,
        name: body.name,
        kind: body.kind,
        host: body.host,
        port: body.port,
        transport: body.transport.unwrap_or(Transport::Udp),
        secondary_host: body.secondary_host,
        username: body.username,
        auth_username: body.auth_username,
        password_set: body.password.is_some(),
        register: body.register,
        allowed_sources: body.allowed_sources,
        tech_prefix: body.tech_prefix,
        custom_headers: body.custom_headers,
        enabled: body.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    check(&mut trunk, body.password.as_deref())?;
    let sealed = body.password.map(|p| {
        state
            .secret_box
            .seal(&trunks::password_context(trunk.id), p.as_bytes())
    });
    trunks::create(&state.db, &trunk, sealed.as_deref()).await?;
    state.sync_trunk(trunk.id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "trunk",
                object_id: trunk.id.to_string(),
                details: audit_details(&trunk),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(trunk)))
}

/// Read a trunk.
#[utoipa::path(get, path = "/trunks/{id}", tag = "trunks", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Trunk), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_trunk(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Trunk>> {
    who.require_admin()?;
    Ok(Json(trunks::get(&state.db, who.scope(), id).await?))
}

/// Change a trunk.
#[utoipa::path(patch, path = "/trunks/{id}", tag = "trunks", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateTrunk,
    responses((status = 200, body = Trunk), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_trunk(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateTrunk>,
) -> ApiResult<Json<Trunk>> {
    who.require_admin()?;
    let mut trunk = trunks::get(&state.db, who.scope(), id).await?;
    trunk.name = body.name.unwrap_or(trunk.name);
    trunk.kind = body.kind.unwrap_or(trunk.kind);
    trunk.host = body.host.unwrap_or(trunk.host);
    trunk.port = body.port.unwrap_or(trunk.port);
    trunk.transport = body.transport.unwrap_or(trunk.transport);
    trunk.secondary_host = body.secondary_host.unwrap_or(trunk.secondary_host);
    trunk.username = body.username.unwrap_or(trunk.username);
    trunk.auth_username = body.auth_username.unwrap_or(trunk.auth_username);
    trunk.register = body.register.unwrap_or(trunk.register);
    trunk.allowed_sources = body.allowed_sources.unwrap_or(trunk.allowed_sources);
    trunk.tech_prefix = body.tech_prefix.unwrap_or(trunk.tech_prefix);
    trunk.custom_headers = body.custom_headers.unwrap_or(trunk.custom_headers);
    trunk.enabled = body.enabled.unwrap_or(trunk.enabled);
    if let Some(password) = &body.password {
        trunk.password_set = password.is_some();
    }
    check(
        &mut trunk,
        body.password.as_ref().and_then(Option::as_deref),
    )?;
    let mut trunk = trunks::update(&state.db, &trunk).await?;
    if let Some(password) = body.password {
        let sealed = password.map(|p| {
            state
                .secret_box
                .seal(&trunks::password_context(id), p.as_bytes())
        });
        trunks::set_password(&state.db, id, sealed.as_deref()).await?;
        // Setting the password moved `updated_at` on: answer with the row as stored.
        trunk = trunks::get(&state.db, who.scope(), id).await?;
    }
    state.sync_trunk(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(trunk.tenant_id),
                action: "update",
                object_type: "trunk",
                object_id: id.to_string(),
                details: audit_details(&trunk),
            },
        )
        .await;
    Ok(Json(trunk))
}

/// Delete a trunk.
#[utoipa::path(delete, path = "/trunks/{id}", tag = "trunks", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_trunk(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let trunk = trunks::get(&state.db, who.scope(), id).await?;
    trunks::delete(&state.db, who.scope(), id).await?;
    state.sync_trunk(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(trunk.tenant_id),
                action: "delete",
                object_type: "trunk",
                object_id: id.to_string(),
                details: audit_details(&trunk),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a trunk's registration with its carrier stands.
#[derive(serde::Serialize, ToSchema)]
struct Registration {
    /// `not_registering` (the trunk does not register, or is disabled), `registering`,
    /// `registered` or `failed` (retried after 30 s, doubling to 15 minutes).
    state: &'static str,
    /// Seconds the carrier granted (when registered).
    expires: Option<u32>,
    /// Why the last attempt failed (when failed).
    reason: Option<String>,
    /// When it came to this state.
    since: Option<Timestamp>,
}

/// Read where a trunk's registration with its carrier stands.
#[utoipa::path(get, path = "/trunks/{id}/registration", tag = "trunks", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Registration), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_registration(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Registration>> {
    use switchboard_signalling::core::TrunkRegState;
    who.require_admin()?;
    trunks::get(&state.db, who.scope(), id).await?;
    let current = state
        .sip
        .as_ref()
        .and_then(|sip| sip.trunk_registration(id));
    let registration = match current {
        None => Registration {
            state: "not_registering",
            expires: None,
            reason: None,
            since: None,
        },
        Some((reg, since)) => {
            let (state, expires, reason) = match reg {
                TrunkRegState::Registering => ("registering", None, None),
                TrunkRegState::Registered { expires } => ("registered", Some(expires), None),
                TrunkRegState::Failed { reason } => ("failed", None, Some(reason)),
                TrunkRegState::Unregistered => ("not_registering", None, None),
            };
            Registration {
                state,
                expires,
                reason,
                since: Some(since),
            }
        }
    };
    Ok(Json(registration))
}

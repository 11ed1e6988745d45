//! `/extensions`: admins manage their tenant's extensions; users see the ones they own.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::extensions::{self, Extension, Filter};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants, users};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::validate::double_option;
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_extensions, create_extension))
        .routes(routes!(get_extension, update_extension, delete_extension))
}

/// A new extension.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateExtension {
    /// Dialable number, 2 to 15 digits, unique in the tenant.
    number: String,
    /// Name shown to callees.
    display_name: String,
    /// SIP password (8 to 128 printable characters). Stored encrypted; never returned.
    password: String,
    /// Owning user, in the same tenant.
    user_id: Option<Uuid>,
    /// Caller-ID name for outbound calls.
    caller_id_name: Option<String>,
    /// Caller-ID number (E.164) for outbound calls.
    caller_id_number: Option<String>,
    /// May call out through trunks (default false).
    #[serde(default)]
    outbound_allowed: bool,
    /// Voicemail on no answer (default false).
    #[serde(default)]
    voicemail_enabled: bool,
    /// Record its answered calls, made and received (default false).
    #[serde(default)]
    record_calls: bool,
    /// Forward every call to this extension number or number outside.
    forward_always: Option<String>,
    /// Forward calls when it is busy.
    forward_busy: Option<String>,
    /// Forward calls it does not answer in the ring time (or with no phone registered).
    forward_no_answer: Option<String>,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to an extension; absent fields stay as they are, `null` clears optional ones.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateExtension {
    number: Option<String>,
    display_name: Option<String>,
    /// New SIP password.
    password: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    user_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    caller_id_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    caller_id_number: Option<Option<String>>,
    outbound_allowed: Option<bool>,
    voicemail_enabled: Option<bool>,
    record_calls: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    forward_always: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    forward_busy: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    forward_no_answer: Option<Option<String>>,
}

/// Checks the forwarding targets of `extension`: each a number as the extension would dial
/// it (an extension number, or a number outside, `+` and 2 to 15 digits), never its own.
fn check_forwards(extension: &mut Extension) -> ApiResult<()> {
    for (field, target) in [
        ("forward_always", &mut extension.forward_always),
        ("forward_busy", &mut extension.forward_busy),
        ("forward_no_answer", &mut extension.forward_no_answer),
    ] {
        let Some(value) = target else { continue };
        let trimmed = value.trim();
        let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
        if !(2..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(
                field,
                "an extension number or a number outside: 2 to 15 digits, `+` first for E.164",
            ));
        }
        if trimmed == extension.number {
            return Err(ApiError::invalid(
                field,
                "an extension cannot forward to itself",
            ));
        }
        *value = trimmed.to_owned();
    }
    Ok(())
}

async fn check_owner(state: &AppState, tenant_id: Uuid, user_id: Option<Uuid>) -> ApiResult<()> {
    if let Some(user_id) = user_id {
        users::get(
            &state.db,
            switchboard_storage::Scope::Tenant(tenant_id),
            user_id,
        )
        .await
        .map_err(|_| ApiError::invalid("user_id", "no such user in this tenant"))?;
    }
    Ok(())
}

fn caller_id_name(value: Option<String>) -> ApiResult<Option<String>> {
    value
        .map(|n| validate::text("caller_id_name", &n, 64))
        .transpose()
}

/// List extensions: an admin's tenant, everything for a superadmin, a user's own.
#[utoipa::path(get, path = "/extensions", tag = "extensions", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Extension>), (status = 401, body = ErrorBody)))]
async fn list_extensions(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Extension>>> {
    let filter = Filter {
        user_id: who.owner_filter(),
    };
    Ok(Json(
        extensions::list(&state.db, who.scope(), filter, &page.request()?).await?,
    ))
}

/// Create an extension.
#[utoipa::path(post, path = "/extensions", tag = "extensions", security(("bearer" = [])), request_body = CreateExtension,
    responses((status = 201, body = Extension), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_extension(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateExtension>,
) -> ApiResult<(StatusCode, Json<Extension>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let number = validate::extension_number("number", &body.number)?;
    let display_name = validate::text("display_name", &body.display_name, 100)?;
    validate::sip_password("password", &body.password)?;
    check_owner(&state, tenant_id, body.user_id).await?;
    let now = Timestamp::now();
    let mut extension = Extension {
        id: new_id(),
        tenant_id,
        number,
        display_name,
        user_id: body.user_id,
        caller_id_name: caller_id_name(body.caller_id_name)?,
        caller_id_number: validate::caller_id_number(body.caller_id_number)?,
        outbound_allowed: body.outbound_allowed,
        voicemail_enabled: body.voicemail_enabled,
        record_calls: body.record_calls,
        forward_always: body.forward_always,
        forward_busy: body.forward_busy,
        forward_no_answer: body.forward_no_answer,
        created_at: now,
        updated_at: now,
        registered_contacts: 0,
    };
    check_forwards(&mut extension)?;
    let sealed = state.secret_box.seal(
        &extensions::secret_context(extension.id),
        body.password.as_bytes(),
    );
    extensions::create(&state.db, &extension, &sealed).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "extension",
                object_id: extension.id.to_string(),
                details: json!({"number": extension.number}),
            },
        )
        .await;
    state.sync_extension(extension.id).await;
    Ok((StatusCode::CREATED, Json(extension)))
}

/// Read an extension.
#[utoipa::path(get, path = "/extensions/{id}", tag = "extensions", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Extension), (status = 404, body = ErrorBody)))]
async fn get_extension(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Extension>> {
    let extension = extensions::get(&state.db, who.scope(), id).await?;
    if who
        .owner_filter()
        .is_some_and(|me| extension.user_id != Some(me))
    {
        return Err(ApiError::not_found());
    }
    Ok(Json(extension))
}

/// Change an extension.
#[utoipa::path(patch, path = "/extensions/{id}", tag = "extensions", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateExtension,
    responses((status = 200, body = Extension), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_extension(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateExtension>,
) -> ApiResult<Json<Extension>> {
    who.require_admin()?;
    let mut extension = extensions::get(&state.db, who.scope(), id).await?;
    if let Some(number) = &body.number {
        extension.number = validate::extension_number("number", number)?;
    }
    if let Some(name) = &body.display_name {
        extension.display_name = validate::text("display_name", name, 100)?;
    }
    if let Some(user_id) = body.user_id {
        check_owner(&state, extension.tenant_id, user_id).await?;
        extension.user_id = user_id;
    }
    if let Some(name) = body.caller_id_name {
        extension.caller_id_name = caller_id_name(name)?;
    }
    if let Some(number) = body.caller_id_number {
        extension.caller_id_number = validate::caller_id_number(number)?;
    }
    extension.outbound_allowed = body.outbound_allowed.unwrap_or(extension.outbound_allowed);
    extension.voicemail_enabled = body
        .voicemail_enabled
        .unwrap_or(extension.voicemail_enabled);
    extension.record_calls = body.record_calls.unwrap_or(extension.record_calls);
    for (change, target) in [
        (body.forward_always, &mut extension.forward_always),
        (body.forward_busy, &mut extension.forward_busy),
        (body.forward_no_answer, &mut extension.forward_no_answer),
    ] {
        if let Some(change) = change {
            *target = change;
        }
    }
    check_forwards(&mut extension)?;
    if let Some(password) = &body.password {
        validate::sip_password("password", password)?;
    }
    let mut extension = extensions::update(&state.db, &extension).await?;
    if let Some(password) = &body.password {
        let sealed = state
            .secret_box
            .seal(&extensions::secret_context(id), password.as_bytes());
        extensions::set_secret(&state.db, id, &sealed).await?;
        // Setting the secret moved `updated_at` on: answer with the row as stored.
        extension = extensions::get(&state.db, who.scope(), id).await?;
    }
    state
        .audit(&who, &ip, AuditEvent {
            tenant_id: Some(extension.tenant_id),
            action: "update",
            object_type: "extension",
            object_id: id.to_string(),
            details: json!({"number": extension.number, "password_changed": body.password.is_some()}),
        })
        .await;
    state.sync_extension(id).await;
    Ok(Json(extension))
}

/// Delete an extension (refused with 409 while a number routes to it).
#[utoipa::path(delete, path = "/extensions/{id}", tag = "extensions", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_extension(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let extension = extensions::get(&state.db, who.scope(), id).await?;
    extensions::delete(&state.db, who.scope(), id).await?;
    state.sync_extension(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(extension.tenant_id),
                action: "delete",
                object_type: "extension",
                object_id: id.to_string(),
                details: json!({"number": extension.number}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

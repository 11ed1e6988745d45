//! `/users`: admins manage the users of their tenant; superadmins everyone's. A user may read
//! their own record.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::users::{self, NewUser, Role, User, UserStatus};
use switchboard_storage::{Page, Timestamp, Uuid, tenants, tokens};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};
use crate::auth::password;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(reset_totp))
}

/// A new user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    /// Login email (unique).
    email: String,
    /// Initial password.
    password: String,
    /// Role (default `user`). Only superadmins may create superadmins.
    role: Option<Role>,
    /// Display name.
    #[serde(default)]
    display_name: String,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    email: Option<String>,
    display_name: Option<String>,
    role: Option<Role>,
    status: Option<UserStatus>,
    /// Sets a new password and ends the user's sessions.
    password: Option<String>,
}

/// Fails unless the caller may change `target`: admins manage their tenant except
/// superadmins; nobody grants a role above their own.
fn may_manage(who: &Auth, target: &User, new_role: Option<Role>) -> Result<(), ApiError> {
    who.require_admin()?;
    if who.role == Role::Admin
        && (target.role == Role::Superadmin || new_role == Some(Role::Superadmin))
    {
        return Err(ApiError::forbidden(
            "only a superadmin may manage superadmins",
        ));
    }
    Ok(())
}

/// List users (admins: their tenant; superadmins: all).
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<User>), (status = 403, body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<User>>> {
    who.require_admin()?;
    Ok(Json(
        users::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = User), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    who.require_admin()?;
    let role = body.role.unwrap_or(Role::User);
    if role == Role::Superadmin && who.role != Role::Superadmin {
        return Err(ApiError::forbidden(
            "only a superadmin may create superadmins",
        ));
    }
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let email = validate::email("email", &body.email)?;
    let display_name = validate::optional_text("display_name", &body.display_name, 100)?;
    validate::password(
        "password",
        &body.password,
        state.config.auth.min_password_length,
    )?;
    let password_hash = password::hash(body.password.clone()).await?;
    let user = users::create(
        &state.db,
        NewUser {
            tenant_id,
            email,
            display_name,
            password_hash,
            role,
        },
    )
    .await?;
    state
        .set_turn_password(user.id, &user.email, &body.password)
        .await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "user",
                object_id: user.id.to_string(),
                details: json!({"email": user.email, "role": user.role}),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Read a user (admins: their tenant; everyone: themselves).
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    if id != who.id && who.require_admin().is_err() {
        return Err(ApiError::not_found());
    }
    Ok(Json(users::get(&state.db, who.scope(), id).await?))
}

/// Change a user.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateUser,
    responses((status = 200, body = User), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_user(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateUser>,
) -> ApiResult<Json<User>> {
    who.require_admin()?;
    let mut user = users::get(&state.db, who.scope(), id).await?;
    may_manage(&who, &user, body.role)?;
    if id == who.id
        && (body.role.is_some_and(|r| r != user.role) || body.status == Some(UserStatus::Disabled))
    {
        return Err(ApiError::forbidden(
            "you cannot change your own role or disable yourself",
        ));
    }
    if let Some(email) = &body.email {
        user.email = validate::email("email", email)?;
    }
    if let Some(name) = &body.display_name {
        user.display_name = validate::optional_text("display_name", name, 100)?;
    }
    user.role = body.role.unwrap_or(user.role);
    user.status = body.status.unwrap_or(user.status);
    if let Some(new_password) = &body.password {
        validate::password(
            "password",
            new_password,
            state.config.auth.min_password_length,
        )?;
    }
    let mut user = users::update(&state.db, &user).await?;
    let password_changed = body.password.is_some();
    let ends_sessions = password_changed || user.status == UserStatus::Disabled;
    if let Some(new_password) = body.password {
        users::set_password_hash(&state.db, id, &password::hash(new_password.clone()).await?)
            .await?;
        state
            .set_turn_password(id, &user.email, &new_password)
            .await?;
    }
    state.turn_users_changed();
    if ends_sessions {
        tokens::revoke_user(&state.db, id, Timestamp::now()).await?;
        users::bump_token_version(&state.db, id).await?;
        // These writes moved `updated_at` on: answer with the row as stored.
        user = users::get(&state.db, who.scope(), id).await?;
    }
    state
        .audit(&who, &ip, AuditEvent {
            tenant_id: Some(user.tenant_id),
            action: "update",
            object_type: "user",
            object_id: id.to_string(),
            details: json!({"email": user.email, "role": user.role, "status": user.status, "password_changed": password_changed}),
        })
        .await;
    Ok(Json(user))
}

/// Delete a user: they can no longer log in, their sessions end and their extensions are
/// detached. The record stays for the audit log.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_user(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let user = users::get(&state.db, who.scope(), id).await?;
    may_manage(&who, &user, None)?;
    if id == who.id {
        return Err(ApiError::conflict("in_use", "you cannot delete yourself"));
    }
    users::delete(&state.db, who.scope(), id).await?;
    state.turn_users_changed();
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(user.tenant_id),
                action: "delete",
                object_type: "user",
                object_id: id.to_string(),
                details: json!({"email": user.email}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user's TOTP second factor (for a user who lost their device).
#[utoipa::path(delete, path = "/users/{id}/totp", tag = "users", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn reset_totp(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let user = users::get(&state.db, who.scope(), id).await?;
    may_manage(&who, &user, None)?;
    users::set_totp(&state.db, id, None, false).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(user.tenant_id),
                action: "reset_totp",
                object_type: "user",
                object_id: id.to_string(),
                details: json!({}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

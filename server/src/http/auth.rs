//! `/auth`: login, token refresh and revocation, the current user, password change and the
//! TOTP second factor.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_storage::tokens::{self, RefreshToken};
use switchboard_storage::users::{self, Principal, User, UserStatus};
use switchboard_storage::{Scope, Timestamp, Uuid, new_id};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Json;
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};
use crate::auth::tokens::{new_refresh_secret, refresh_hash};
use crate::auth::{password, totp};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(totp_enroll))
        .routes(routes!(totp_verify))
        .routes(routes!(totp_disable))
}

/// Credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    /// Account email.
    email: String,
    /// Password.
    password: String,
    /// Current TOTP code, for accounts with a second factor.
    totp_code: Option<String>,
}

/// A fresh pair of tokens.
#[derive(Serialize, ToSchema)]
pub(super) struct TokenResponse {
    /// JWT to send as `Authorization: Bearer ...`.
    access_token: String,
    /// Opaque token for `POST /auth/refresh`; single use.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
}

/// A refresh token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    /// The refresh token.
    refresh_token: String,
}

fn unix_now() -> u64 {
    u64::try_from(Timestamp::now().as_millis() / 1000).unwrap_or(0)
}

fn rate_limited(wait: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many login attempts; try again later",
    )
    .retry_after(wait.as_secs() + 1)
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "wrong email or password")
}

fn locked(until: Timestamp, now: Timestamp) -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "account_locked",
        "too many failed logins; the account is locked for a while",
    )
    .retry_after(until.secs_since(now))
}

/// Issues an access token and a refresh token of `family`.
async fn issue(state: &AppState, principal: &Principal, family: Uuid) -> ApiResult<TokenResponse> {
    let now = Timestamp::now();
    let secret = new_refresh_secret();
    let record = RefreshToken {
        id: new_id(),
        family_id: family,
        user_id: principal.id,
        created_at: now,
        expires_at: now.after(state.config.auth.refresh_token_ttl),
        used_at: None,
        revoked_at: None,
    };
    tokens::insert(&state.db, &record, &refresh_hash(&secret)).await?;
    let access = state.tokens.issue(
        principal.id,
        principal.tenant_id,
        principal.role,
        principal.token_version,
        unix_now(),
    );
    Ok(TokenResponse {
        access_token: access,
        refresh_token: secret,
        token_type: "Bearer",
        expires_in: state.tokens.ttl().as_secs(),
    })
}

/// Counts a failed login and answers 423 if it locked the account, else 401.
async fn fail_login(state: &AppState, user: Uuid, error: ApiError) -> ApiError {
    let auth = &state.config.auth;
    let now = Timestamp::now();
    let until = now.after(auth.lockout_duration);
    match users::record_login_failure(&state.db, user, auth.lockout_threshold, until).await {
        Ok(true) => {
            state.metrics.login("locked");
            locked(until, now)
        }
        Ok(false) => error,
        Err(e) => e.into(),
    }
}

/// Checks a TOTP code against the user's sealed seed and spends its time step.
async fn check_totp(
    state: &AppState,
    user: Uuid,
    sealed: Option<&[u8]>,
    code: &str,
) -> ApiResult<bool> {
    let sealed = sealed.ok_or_else(|| {
        ApiError::conflict(
            "totp_not_enrolled",
            "enrol first: POST /api/v1/auth/totp/enroll",
        )
    })?;
    let secret = state.secret_box.open(&users::totp_context(user), sealed)?;
    let Some(step) = totp::check(&secret, code, unix_now()) else {
        return Ok(false);
    };
    Ok(users::use_totp_step(&state.db, user, i64::try_from(step).unwrap_or(i64::MAX)).await?)
}

/// Log in with email and password (and a TOTP code when the account has a second factor).
///
/// Limited per client IP and per account; repeated failures lock the account for
/// `auth.lockout_duration`.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Wrong credentials, or `totp_required` / `invalid_totp`", body = super::error::ErrorBody),
        (status = 403, description = "Account disabled", body = super::error::ErrorBody),
        (status = 423, description = "Account locked", body = super::error::ErrorBody),
        (status = 429, description = "Too many attempts", body = super::error::ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(request): Json<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let now = Instant::now();
    let email = request.email.trim().to_lowercase();
    if let Some(ip) = ip.0 {
        state.ip_limiter.check(&ip, now).map_err(|wait| {
            state.metrics.login("rate_limited");
            rate_limited(wait)
        })?;
    }
    state.account_limiter.check(&email, now).map_err(|wait| {
        state.metrics.login("rate_limited");
        rate_limited(wait)
    })?;

    let Some(auth) = users::get_auth_by_email(&state.db, &email).await? else {
        // Spend the same time as a real check, so unknown emails can't be told apart by timing.
        password::verify(request.password, password::decoy_hash().to_owned()).await;
        state.metrics.login("invalid_credentials");
        return Err(invalid_credentials());
    };
    let user_id = auth.user.id;
    let wall = Timestamp::now();
    if let Some(until) = auth.locked_until
        && until > wall
    {
        state.metrics.login("locked");
        return Err(locked(until, wall));
    }
    let password = request.password.clone();
    if !password::verify(request.password, auth.password_hash.clone()).await {
        state.metrics.login("invalid_credentials");
        return Err(fail_login(&state, user_id, invalid_credentials()).await);
    }
    if auth.user.status != UserStatus::Active {
        state.metrics.login("disabled");
        return Err(ApiError::forbidden("this account is disabled"));
    }
    if auth.user.totp_enabled {
        let Some(code) = request.totp_code else {
            state.metrics.login("totp_required");
            return Err(ApiError::unauthorized(
                "totp_required",
                "this account needs a TOTP code: send `totp_code`",
            ));
        };
        if !check_totp(&state, user_id, auth.totp_secret.as_deref(), &code).await? {
            state.metrics.login("invalid_totp");
            let error = ApiError::unauthorized(
                "invalid_totp",
                "the TOTP code is wrong or was already used",
            );
            return Err(fail_login(&state, user_id, error).await);
        }
    }
    users::record_login_success(&state.db, user_id).await?;
    // Logins written before TURN keys existed, or with another realm, get theirs now.
    if state.turn.is_some() {
        state
            .set_turn_password(user_id, &auth.user.email, &password)
            .await?;
    }
    let principal = Principal {
        id: user_id,
        tenant_id: auth.user.tenant_id,
        role: auth.user.role,
        token_version: auth.token_version,
    };
    state.metrics.login("success");
    Ok(Json(issue(&state, &principal, new_id()).await?))
}

/// Exchange a refresh token for a new pair. The presented token is spent; presenting a spent
/// token again revokes every token of its login (its family).
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 401, description = "Invalid, expired, revoked or reused (`refresh_token_reused`) token", body = super::error::ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let invalid = || {
        ApiError::unauthorized(
            "invalid_refresh_token",
            "the refresh token is invalid, expired or revoked",
        )
    };
    let reused = || {
        ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; every session of this login has been revoked",
        )
    };
    let Some(token) = tokens::find(&state.db, &refresh_hash(request.refresh_token.trim())).await?
    else {
        state.metrics.refresh("invalid");
        return Err(invalid());
    };
    let now = Timestamp::now();
    if token.revoked_at.is_some() || token.expires_at <= now {
        state.metrics.refresh("invalid");
        return Err(invalid());
    }
    if token.used_at.is_some() || !tokens::spend(&state.db, token.id, now).await? {
        tokens::revoke_family(&state.db, token.family_id, now).await?;
        state.metrics.refresh("reused");
        tracing::warn!(user = %token.user_id, family = %token.family_id, "refresh token reused; family revoked");
        return Err(reused());
    }
    let Some(principal) = users::principal(&state.db, token.user_id).await? else {
        tokens::revoke_family(&state.db, token.family_id, now).await?;
        state.metrics.refresh("invalid");
        return Err(invalid());
    };
    state.metrics.refresh("success");
    Ok(Json(issue(&state, &principal, token.family_id).await?))
}

/// Log out: revoke the given refresh token and every token of the same login. Always 204.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Logged out")))]
async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    if let Some(token) =
        tokens::find(&state.db, &refresh_hash(request.refresh_token.trim())).await?
    {
        tokens::revoke_family(&state.db, token.family_id, Timestamp::now()).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Log out everywhere: revoke every refresh token of the caller and invalidate their access
/// tokens.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Every session ended"), (status = 401, body = super::error::ErrorBody)))]
async fn logout_all(State(state): State<AppState>, who: Auth) -> ApiResult<StatusCode> {
    tokens::revoke_user(&state.db, who.id, Timestamp::now()).await?;
    users::bump_token_version(&state.db, who.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own account.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = super::error::ErrorBody)))]
async fn me(State(state): State<AppState>, who: Auth) -> ApiResult<Json<User>> {
    Ok(Json(users::get(&state.db, Scope::All, who.id).await?))
}

/// A password change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    /// The current password.
    current_password: String,
    /// The new password.
    new_password: String,
}

/// Change the caller's password. Every other session ends; the response carries new tokens
/// for this one.
#[utoipa::path(post, path = "/auth/password", tag = "auth", security(("bearer" = [])), request_body = ChangePassword,
    responses((status = 200, body = TokenResponse), (status = 401, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
async fn change_password(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(request): Json<ChangePassword>,
) -> ApiResult<Json<TokenResponse>> {
    let auth = users::get_auth(&state.db, who.id).await?;
    if !password::verify(request.current_password, auth.password_hash).await {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "the current password is wrong",
        ));
    }
    validate::password(
        "new_password",
        &request.new_password,
        state.config.auth.min_password_length,
    )?;
    users::set_password_hash(
        &state.db,
        who.id,
        &password::hash(request.new_password.clone()).await?,
    )
    .await?;
    state
        .set_turn_password(who.id, &auth.user.email, &request.new_password)
        .await?;
    tokens::revoke_user(&state.db, who.id, Timestamp::now()).await?;
    users::bump_token_version(&state.db, who.id).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(who.tenant_id),
                action: "change_password",
                object_type: "user",
                object_id: who.id.to_string(),
                details: json!({}),
            },
        )
        .await;
    let principal = Principal {
        token_version: who.token_version + 1,
        ..who.0
    };
    Ok(Json(issue(&state, &principal, new_id()).await?))
}

/// A TOTP secret to put in an authenticator app.
#[derive(Serialize, ToSchema)]
struct TotpEnrollment {
    /// The secret in base32.
    secret: String,
    /// `otpauth://` URI (render as a QR code).
    otpauth_uri: String,
}

/// A TOTP code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TotpCode {
    /// Six digits from the authenticator app.
    code: String,
}

/// Start enrolling a TOTP second factor: returns a new secret. It is enforced only after
/// `POST /auth/totp/verify` confirms a code.
#[utoipa::path(post, path = "/auth/totp/enroll", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TotpEnrollment), (status = 409, description = "Already enabled", body = super::error::ErrorBody)))]
async fn totp_enroll(State(state): State<AppState>, who: Auth) -> ApiResult<Json<TotpEnrollment>> {
    let auth = users::get_auth(&state.db, who.id).await?;
    if auth.user.totp_enabled {
        return Err(ApiError::conflict(
            "totp_already_enabled",
            "disable the current second factor first",
        ));
    }
    let secret = totp::new_secret();
    let sealed = state.secret_box.seal(&users::totp_context(who.id), &secret);
    users::set_totp(&state.db, who.id, Some(sealed), false).await?;
    Ok(Json(TotpEnrollment {
        secret: totp::base32(&secret),
        otpauth_uri: totp::otpauth_uri(&state.config.auth.totp_issuer, &auth.user.email, &secret),
    }))
}

/// Confirm enrolment with a code from the app; from now on logins need a code.
#[utoipa::path(post, path = "/auth/totp/verify", tag = "auth", security(("bearer" = [])), request_body = TotpCode,
    responses((status = 204, description = "Second factor enabled"), (status = 401, description = "Wrong code", body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn totp_verify(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(request): Json<TotpCode>,
) -> ApiResult<StatusCode> {
    let auth = users::get_auth(&state.db, who.id).await?;
    if auth.user.totp_enabled {
        return Err(ApiError::conflict(
            "totp_already_enabled",
            "the second factor is already enabled",
        ));
    }
    let sealed = auth.totp_secret.ok_or_else(|| {
        ApiError::conflict(
            "totp_not_enrolled",
            "enrol first: POST /api/v1/auth/totp/enroll",
        )
    })?;
    let secret = state
        .secret_box
        .open(&users::totp_context(who.id), &sealed)?;
    let step = totp::check(&secret, &request.code, unix_now())
        .ok_or_else(|| ApiError::unauthorized("invalid_totp", "the TOTP code is wrong"))?;
    users::set_totp(&state.db, who.id, Some(sealed), true).await?;
    users::use_totp_step(&state.db, who.id, i64::try_from(step).unwrap_or(i64::MAX)).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(who.tenant_id),
                action: "enable_totp",
                object_type: "user",
                object_id: who.id.to_string(),
                details: json!({}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Turn the second factor off, confirming with a current code.
#[utoipa::path(post, path = "/auth/totp/disable", tag = "auth", security(("bearer" = [])), request_body = TotpCode,
    responses((status = 204, description = "Second factor disabled"), (status = 401, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
async fn totp_disable(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(request): Json<TotpCode>,
) -> ApiResult<StatusCode> {
    let auth = users::get_auth(&state.db, who.id).await?;
    if !auth.user.totp_enabled {
        return Err(ApiError::conflict(
            "totp_not_enabled",
            "no second factor is enabled",
        ));
    }
    if !check_totp(&state, who.id, auth.totp_secret.as_deref(), &request.code).await? {
        return Err(ApiError::unauthorized(
            "invalid_totp",
            "the TOTP code is wrong or was already used",
        ));
    }
    users::set_totp(&state.db, who.id, None, false).await?;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(who.tenant_id),
                action: "disable_totp",
                object_type: "user",
                object_id: who.id.to_string(),
                details: json!({}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

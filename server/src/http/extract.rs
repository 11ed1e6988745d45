//! Request extractors whose rejections are [`ApiError`]s, and the authenticated principal.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;
use switchboard_storage::users::{self, Principal, Role};
use switchboard_storage::{PageRequest, Scope, Uuid};
use utoipa::IntoParams;

use super::{ApiError, AppState};

/// `axum::Json` whose rejections are JSON errors (400 syntax, 422 shape, 413 size, 415 type).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(super) struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(super) struct Query<T>(pub T);

/// `axum::extract::Path` whose rejections are JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(super) struct Path<T>(pub T);

/// The client's address, when the server knows it.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The authenticated caller: a valid access token whose user is live, active, in a live
/// tenant, and whose token version is current.
#[derive(Clone, Copy, Debug)]
pub struct Auth(pub Principal);

impl std::ops::Deref for Auth {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "send `Authorization: Bearer <access_token>`",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthorized("invalid_token", "expected a Bearer token"))?;
        Self::from_token(state, token).await
    }
}

impl Auth {
    /// Checks an access token: valid, unexpired, and its user still live at the same token
    /// version.
    pub async fn from_token(state: &AppState, token: &str) -> Result<Self, ApiError> {
        let claims = state.tokens.verify(token.trim()).ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "the access token is invalid or expired")
        })?;
        let principal = users::principal(&state.db, claims.sub)
            .await?
            .filter(|p| p.token_version == claims.ver)
            .ok_or_else(|| {
                ApiError::unauthorized("invalid_token", "the access token has been revoked")
            })?;
        Ok(Self(principal))
    }

    /// What this caller may see: every tenant for a superadmin, else their own.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Superadmin => Scope::All,
            Role::Admin | Role::User => Scope::Tenant(self.tenant_id),
        }
    }

    /// For `user`s, their own id: lists and lookups are narrowed to what they own.
    pub fn owner_filter(&self) -> Option<Uuid> {
        (self.role == Role::User).then_some(self.id)
    }

    /// Fails unless the caller is an admin or superadmin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Superadmin | Role::Admin => Ok(()),
            Role::User => Err(ApiError::forbidden("this needs an admin")),
        }
    }

    /// Fails unless the caller is a superadmin.
    pub fn require_superadmin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Superadmin => Ok(()),
            Role::Admin | Role::User => Err(ApiError::forbidden("this needs a superadmin")),
        }
    }

    /// The tenant a new object goes into: the requested one for a superadmin (default: their
    /// own), else the caller's own (asking for another is refused).
    pub fn tenant_for_create(&self, requested: Option<Uuid>) -> Result<Uuid, ApiError> {
        match (self.role, requested) {
            (Role::Superadmin, Some(tenant)) => Ok(tenant),
            (_, None) => Ok(self.tenant_id),
            (_, Some(tenant)) if tenant == self.tenant_id => Ok(tenant),
            (_, Some(_)) => Err(ApiError::forbidden(
                "objects can only be created in your own tenant",
            )),
        }
    }
}

/// Paging parameters of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageParams {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

impl PageParams {
    /// The storage page request, refusing out-of-range limits.
    pub(super) fn request(&self) -> Result<PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_query",
                "`limit` must be between 1 and 500",
            ));
        }
        Ok(PageRequest {
            limit,
            cursor: self.cursor,
        })
    }
}

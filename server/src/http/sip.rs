//! SIP for browsers and app phones: `POST /api/v1/sip/credentials` hands a logged-in user
//! short-lived SIP credentials for an extension they own (no extension password reaches the
//! browser), and `GET /sip` is SIP over WebSocket (RFC 7118, subprotocol `sip`).

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use switchboard_storage::{PageRequest, Timestamp, Uuid, extensions, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::Json;
use super::{ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(credentials))
}

/// The WebSocket endpoint, outside `/api/v1`.
pub(super) fn websocket_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(websocket))
}

/// What `POST /sip/credentials` takes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsRequest {
    /// The extension to phone as; it must be yours. Without it: your extension with the
    /// lowest number.
    #[serde(default)]
    extension_id: Option<Uuid>,
}

/// Short-lived SIP credentials: give `username` as the digest (authorization) user name and
/// register `uri` over one of `websocket`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Credentials {
    /// The extension.
    extension_id: Uuid,
    /// Its number (the user part of `uri`).
    number: String,
    /// Its display name.
    display_name: String,
    /// The address of record to register: `sip:<number>@<tenant SIP domain>`.
    uri: String,
    /// Digest user name: `<expires_at>:<number>`.
    username: String,
    /// Digest password.
    password: String,
    /// Digest realm: the tenant's SIP domain.
    realm: String,
    /// When the credentials stop working (unix seconds): fetch new ones before.
    expires_at: i64,
    /// Seconds they are valid for.
    ttl: u64,
    /// SIP over WebSocket at the advertised address (`ws://` and `wss://`).
    websocket: Vec<String>,
}

/// Short-lived SIP credentials for one of your own extensions, valid for
/// `sip.credential_ttl`, derived from the extension and the server's key: changing the
/// extension's password revokes them.
#[utoipa::path(post, path = "/sip/credentials", tag = "sip", security(("bearer" = [])),
    request_body(content = Option<CredentialsRequest>, content_type = "application/json"),
    responses((status = 200, body = Credentials), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn credentials(
    State(state): State<AppState>,
    who: Auth,
    body: axum::body::Bytes,
) -> ApiResult<Json<Credentials>> {
    // The body is optional: none asks for the default extension.
    let request: CredentialsRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CredentialsRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let Some(sip) = &state.sip else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sip_disabled",
            "the SIP service is not running",
        ));
    };
    let extension = match request.extension_id {
        Some(id) => {
            let extension = extensions::get(&state.db, who.scope(), id).await?;
            if extension.user_id != Some(who.id) {
                return Err(ApiError::forbidden(
                    "SIP credentials are only given for your own extensions",
                ));
            }
            extension
        }
        None => {
            let page = PageRequest {
                limit: 500,
                cursor: None,
            };
            let filter = extensions::Filter {
                user_id: Some(who.id),
            };
            extensions::list(&state.db, who.scope(), filter, &page)
                .await?
                .items
                .into_iter()
                .min_by(|a, b| a.number.cmp(&b.number))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "no_extension",
                        "you own no extension: an admin sets your user on one first",
                    )
                })?
        }
    };
    let sealed = extensions::sealed_secret(&state.db, extension.id).await?;
    let secret = state
        .secret_box
        .open_string(&extensions::secret_context(extension.id), &sealed)
        .map_err(ApiError::internal)?;
    let tenant = tenants::get(&state.db, extension.tenant_id).await?;
    let ttl = state.config.sip.credential_ttl.as_secs();
    let expires_at = (Timestamp::now().0 / 1000).saturating_add(i64::try_from(ttl).unwrap_or(0));
    let (username, password) = sip.mint_credentials(
        extension.id,
        &extension.number,
        &secret,
        u64::try_from(expires_at).unwrap_or(0),
    );
    Ok(Json(Credentials {
        extension_id: extension.id,
        uri: format!("sip:{}@{}", extension.number, tenant.sip_domain),
        number: extension.number,
        display_name: extension.display_name,
        username,
        password,
        realm: tenant.sip_domain,
        expires_at,
        ttl,
        websocket: sip.websocket_urls().to_vec(),
    }))
}

/// SIP over WebSocket (RFC 7118): offer the subprotocol `sip`; every frame is one SIP
/// message. Over the HTTPS listener the transport is `WSS`.
#[utoipa::path(get, path = "/sip", tag = "sip",
    responses((status = 101, description = "Switching to the WebSocket protocol, subprotocol `sip`"),
        (status = 400, description = "The `sip` subprotocol was not offered"),
        (status = 503, description = "Too many SIP connections, or the SIP service is not running")))]
async fn websocket(
    State(state): State<AppState>,
    connected: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    secure: Option<axum::Extension<crate::https::Secure>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Both listeners serve with the peer's address; only routers built without it lack it.
    let (Some(sip), Some(axum::Extension(ConnectInfo(addr)))) = (&state.sip, connected) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the SIP service is not running",
        )
            .into_response();
    };
    match sip.websocket(secure.is_some(), addr, upgrade) {
        Ok(response) => response,
        Err(refused) => refused.into_response(),
    }
}

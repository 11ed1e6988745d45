//! `/ice-servers`: the STUN and TURN servers a WebRTC client should use, with short-lived
//! TURN credentials for the logged-in user (coturn-compatible REST credentials minted with
//! the TURN shared secret, so no password of the user's reaches the browser).

use axum::extract::State;
use serde::Serialize;
use switchboard_storage::Timestamp;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::Json;
use super::{ApiResult, AppState, Auth};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ice_servers))
}

/// One entry of an `RTCConfiguration.iceServers` list.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub(super) urls: Vec<String>,
    /// TURN username (`<expiry unix time>:<user id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) credential: Option<String>,
}

/// What `GET /ice-servers` answers: pass `iceServers` to `new RTCPeerConnection(...)`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IceServers {
    /// The servers; empty when the TURN server is disabled.
    #[serde(rename = "iceServers")]
    pub(super) ice_servers: Vec<IceServer>,
    /// Seconds the credentials stay valid.
    pub(super) ttl: u64,
    /// When they expire (unix seconds); fetch new ones before.
    pub(super) expires_at: i64,
}

/// ICE servers for WebRTC clients: STUN, and TURN over UDP, TCP and TLS with credentials of
/// the logged-in user valid for `turn.credential_ttl`.
#[utoipa::path(get, path = "/ice-servers", tag = "turn", security(("bearer" = [])),
    responses((status = 200, body = IceServers), (status = 401, body = ErrorBody)))]
async fn ice_servers(State(state): State<AppState>, who: Auth) -> ApiResult<Json<IceServers>> {
    let ttl = state.config.turn.credential_ttl.as_secs();
    let now = Timestamp::now().0 / 1000;
    let expires_at = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    let Some(turn) = &state.turn else {
        return Ok(Json(IceServers {
            ice_servers: Vec::new(),
            ttl,
            expires_at,
        }));
    };
    let credential = switchboard_turn::rest::mint(
        &turn.secret,
        &who.id.to_string(),
        u64::try_from(expires_at).unwrap_or(0),
    );
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    if let Some(udp) = turn.udp {
        servers.push(IceServer {
            urls: vec![format!("stun:{udp}")],
            username: None,
            credential: None,
        });
        urls.push(format!("turn:{udp}?transport=udp"));
    }
    if let Some(tcp) = turn.tcp {
        urls.push(format!("turn:{tcp}?transport=tcp"));
    }
    urls.extend(
        turn.tls
            .iter()
            .map(|tls| format!("turns:{tls}?transport=tcp")),
    );
    if !urls.is_empty() {
        servers.push(IceServer {
            urls,
            username: Some(credential.username),
            credential: Some(credential.password),
        });
    }
    Ok(Json(IceServers {
        ice_servers: servers,
        ttl,
        expires_at,
    }))
}

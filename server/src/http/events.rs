//! `GET /events`: live events over a WebSocket. The access token comes in the
//! `Authorization` header, or (browsers cannot set headers on a WebSocket) as the first
//! message, `{"token": "<access token>"}`, within ten seconds. A superadmin sees every event,
//! an admin those of their tenant, a user those of their own extensions. Every message is one
//! JSON event; see `docs/events.md`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchboard_storage::extensions::{self, Filter};
use switchboard_storage::users::Role;
use switchboard_storage::{PageRequest, Uuid};
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Auth};
use crate::events::Published;

/// How long a client has to send its token.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive pings, so proxies keep the connection and dead peers are noticed.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Extensions a `user` may own and be told about at most.
const MAX_OWNED: u32 = 500;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Who may see what, fixed when the connection is authenticated.
enum Audience {
    All,
    Tenant(Uuid),
    Extensions(Uuid, HashSet<Uuid>),
}

impl Audience {
    fn sees(&self, event: &Published) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(tenant) => event.tenant_id == *tenant,
            Self::Extensions(tenant, owned) => {
                event.tenant_id == *tenant
                    && event.extensions.iter().flatten().any(|e| owned.contains(e))
            }
        }
    }

    async fn of(state: &AppState, who: &Auth) -> Result<Self, ApiError> {
        Ok(match who.role {
            Role::Superadmin => Self::All,
            Role::Admin => Self::Tenant(who.tenant_id),
            Role::User => {
                let page = PageRequest {
                    limit: MAX_OWNED,
                    cursor: None,
                };
                let owned = extensions::list(
                    &state.db,
                    who.scope(),
                    Filter {
                        user_id: Some(who.id),
                    },
                    &page,
                )
                .await?;
                Self::Extensions(who.tenant_id, owned.items.iter().map(|e| e.id).collect())
            }
        })
    }
}

#[derive(Deserialize)]
struct Hello {
    token: String,
}

/// Live events (WebSocket): registrations up and down; calls started, ringing, answered,
/// held, resumed and ended. Authenticate with the `Authorization` header or a first message
/// `{"token": "..."}`.
#[utoipa::path(get, path = "/events", tag = "events", security(("bearer" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol; every message is one JSON event"),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let who = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let token = value
                .to_str()
                .ok()
                .and_then(|h| {
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                })
                .ok_or_else(|| {
                    ApiError::unauthorized("invalid_token", "expected a Bearer token")
                })?;
            Some(Auth::from_token(&state, token).await?)
        }
        None => None,
    };
    let open = state.events.connections.fetch_add(1, Ordering::Relaxed);
    if open >= state.config.http.max_event_connections {
        state.events.connections.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "too many event connections (http.max_event_connections)",
        )
        .retry_after(5));
    }
    Ok(upgrade
        .on_upgrade(move |socket| async move {
            serve(&state, socket, who).await;
            state.events.connections.fetch_sub(1, Ordering::Relaxed);
        })
        .into_response())
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Waits for `{"token": ...}` and checks it.
async fn hello(state: &AppState, socket: &mut WebSocket) -> Result<Auth, &'static str> {
    let first = tokio::time::timeout(AUTH_TIMEOUT, socket.recv())
        .await
        .map_err(|_| "no token within 10 s")?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err("expected {\"token\": \"<access token>\"}");
    };
    let hello: Hello =
        serde_json::from_str(&text).map_err(|_| "expected {\"token\": \"<access token>\"}")?;
    Auth::from_token(state, &hello.token)
        .await
        .map_err(|_| "the access token is invalid, expired or revoked")
}

async fn serve(state: &AppState, mut socket: WebSocket, who: Option<Auth>) {
    // Subscribe first: nothing published after the upgrade is missed.
    let mut events = state.events.subscribe();
    let who = match who {
        Some(who) => who,
        None => match hello(state, &mut socket).await {
            Ok(who) => who,
            Err(reason) => return close(socket, close_code::POLICY, reason).await,
        },
    };
    let Ok(audience) = Audience::of(state, &who).await else {
        return close(socket, close_code::ERROR, "could not load your extensions").await;
    };
    let ready = serde_json::json!({"type": "events.ready", "user_id": who.id}).to_string();
    if socket.send(Message::Text(ready.into())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => {
                let text = match event {
                    Ok(event) if audience.sees(&event) => event.json.clone(),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        serde_json::json!({"type": "events.lagged", "missed": missed}).to_string()
                    }
                    Err(RecvError::Closed) => return close(socket, close_code::AWAY, "shutting down").await,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Pings are answered by the WebSocket layer; anything else is ignored.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_audience_sees_its_own_events() {
        let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
        let event = |tenant_id, extensions| Published {
            tenant_id,
            extensions,
            json: String::new(),
        };
        let call_to_me = event(tenant, [Some(theirs), Some(mine)]);
        let call_between_others = event(tenant, [Some(theirs), None]);
        let elsewhere = event(other_tenant, [Some(mine), None]);

        assert!(
            [&call_to_me, &call_between_others, &elsewhere]
                .iter()
                .all(|e| Audience::All.sees(e))
        );
        let admin = Audience::Tenant(tenant);
        assert!(admin.sees(&call_to_me) && admin.sees(&call_between_others));
        assert!(!admin.sees(&elsewhere));
        let user = Audience::Extensions(tenant, HashSet::from([mine]));
        assert!(user.sees(&call_to_me));
        assert!(!user.sees(&call_between_others));
        assert!(!user.sees(&elsewhere), "same extension id, other tenant");
    }
}

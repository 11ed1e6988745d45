//! The HTTP control plane: REST API under `/api/v1` (JWT bearer auth), its OpenAPI document,
//! and the operational endpoints `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers hold only cheap handles ([`AppState`]); SQL lives in `switchboard_storage`.

mod audit_log;
mod auth;
mod calls;
pub mod error;
mod events;
mod extensions;
mod extract;
mod ice_servers;
mod ivr_flows;
mod numbers;
mod ops;
mod outbound_routes;
mod phone;
mod prompts;
mod recordings;
mod registrations;
mod ring_groups;
mod sip;
mod tenants;
mod trunks;
mod users;
mod validate;

use std::net::IpAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use switchboard_storage::crypto::SecretBox;
use switchboard_storage::{Db, audit};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::limiter::RateLimiter;
use crate::auth::tokens::TokenKeys;
use crate::config::Config;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
pub use error::{ApiError, ApiResult};
pub use extract::{Auth, ClientIp};

/// Everything a handler may touch. Cloning is one reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// Database.
    pub db: Db,
    /// Configuration.
    pub config: Arc<Config>,
    /// Access-token keys.
    pub tokens: TokenKeys,
    /// Seals secrets at rest.
    pub secret_box: SecretBox,
    /// Login attempts per client IP.
    pub ip_limiter: RateLimiter<IpAddr>,
    /// Login attempts per account email.
    pub account_limiter: RateLimiter<String>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where recordings are stored.
    pub recordings_dir: PathBuf,
    /// The SIP service, when running (tests of the control plane alone run without it).
    pub sip: Option<crate::sip::SipHandle>,
    /// Live events for `GET /api/v1/events`.
    pub events: crate::events::EventHub,
    /// The TURN server, when running.
    pub turn: Option<crate::turn::TurnHandle>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// State over `db` with `config`.
    pub fn new(db: Db, config: Arc<Config>, jwt_secret: &[u8], secret_box: SecretBox) -> Self {
        Self(Arc::new(Inner {
            tokens: TokenKeys::new(jwt_secret, config.auth.access_token_ttl),
            ip_limiter: RateLimiter::new(config.auth.login_attempts_per_ip_per_minute),
            account_limiter: RateLimiter::new(config.auth.login_attempts_per_account_per_minute),
            metrics: Metrics::new(),
            recordings_dir: config.data_dir.join("recordings"),
            sip: None,
            turn: None,
            events: crate::events::EventHub::new(),
            secret_box,
            config,
            db,
        }))
    }

    /// Connects the control plane to the SIP service: directory changes are pushed to it and
    /// its counters exported.
    pub fn with_sip(mut self, sip: crate::sip::SipHandle) -> Self {
        // Called once, before the state is shared.
        let inner =
            Arc::get_mut(&mut self.0).expect("with_sip is called before the state is cloned");
        inner.metrics.register_sip(sip.stats());
        inner.metrics.register_media(sip.media_stats());
        inner.metrics.register_recorder(sip.recorder_stats());
        inner.sip = Some(sip);
        self
    }

    /// Connects the control plane to the TURN server: `GET /ice-servers` hands out its
    /// credentials, user changes reload its keys, its counters are exported.
    pub fn with_turn(mut self, turn: crate::turn::TurnHandle) -> Self {
        let inner =
            Arc::get_mut(&mut self.0).expect("with_turn is called before the state is cloned");
        inner.metrics.register_turn(turn.stats());
        inner.turn = Some(turn);
        self
    }

    /// Derives and stores a user's TURN long-term key from a password just set or checked,
    /// and has the TURN server pick it up.
    pub async fn set_turn_password(
        &self,
        id: switchboard_storage::Uuid,
        email: &str,
        password: &str,
    ) -> Result<(), switchboard_storage::Error> {
        let realm = &self.config.turn.realm;
        crate::turn::store_user_key(&self.db, &self.secret_box, realm, id, email, password).await?;
        self.turn_users_changed();
        Ok(())
    }

    /// A user was disabled, deleted or changed: the TURN server reloads its users' keys.
    pub fn turn_users_changed(&self) {
        if let Some(turn) = &self.turn {
            turn.users_changed();
        }
    }

    /// Uses `events` (the hub the signalling task publishes to) for `GET /api/v1/events`.
    pub fn with_events(mut self, events: crate::events::EventHub) -> Self {
        let inner =
            Arc::get_mut(&mut self.0).expect("with_events is called before the state is cloned");
        inner.events = events;
        self
    }

    /// Pushes the current state of an extension to the signalling core.
    pub async fn sync_extension(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_extension(id).await;
        }
    }

    /// Pushes the current state of a tenant to the signalling core.
    pub async fn sync_tenant(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_tenant(id).await;
        }
    }

    /// Pushes the current state of a trunk to the signalling core.
    pub async fn sync_trunk(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_trunk(id).await;
        }
    }

    /// Pushes the published version of a flow to the signalling core.
    pub async fn sync_flow(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_flow(id).await;
        }
    }

    /// Pushes the current state of a ring group to the signalling core.
    pub async fn sync_ring_group(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_ring_group(id).await;
        }
    }

    /// Pushes the current state of an outbound route to the signalling core.
    pub async fn sync_route(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_route(id).await;
        }
    }

    /// Pushes the current state of a number to the signalling core.
    pub async fn sync_number(&self, id: switchboard_storage::Uuid) {
        if let Some(sip) = &self.sip {
            sip.sync_number(id).await;
        }
    }

    /// Appends to the audit log. A failure is logged, not returned: the change it describes has
    /// already been made.
    pub async fn audit(&self, who: &Auth, ip: &ClientIp, entry: AuditEvent<'_>) {
        let entry = audit::NewEntry {
            tenant_id: entry.tenant_id,
            actor_user_id: Some(who.id),
            action: entry.action,
            object_type: entry.object_type,
            object_id: entry.object_id,
            details: entry.details,
            source_ip: ip.0.map(|ip| ip.to_string()),
        };
        if let Err(error) = audit::record(&self.db, entry).await {
            tracing::error!(%error, "audit log write failed");
        }
    }
}

/// One change, for [`AppState::audit`].
pub struct AuditEvent<'a> {
    /// Tenant concerned.
    pub tenant_id: Option<switchboard_storage::Uuid>,
    /// `create`, `update`, `delete`, ...
    pub action: &'a str,
    /// `extension`, `user`, ...
    pub object_type: &'a str,
    /// Object id.
    pub object_id: String,
    /// Details, never secrets.
    pub details: serde_json::Value,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard control plane",
        description = "Tenants, users, extensions, trunks, numbers, ring groups, IVR flows, call history and recordings. Authenticate with `POST /api/v1/auth/login`, then send `Authorization: Bearer <access_token>`.",
    ),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API routes with their OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(tenants::routes())
        .merge(users::routes())
        .merge(extensions::routes())
        .merge(trunks::routes())
        .merge(numbers::routes())
        .merge(outbound_routes::routes())
        .merge(ring_groups::routes())
        .merge(ivr_flows::routes())
        .merge(prompts::routes())
        .merge(calls::routes())
        .merge(recordings::routes())
        .merge(registrations::routes())
        .merge(events::routes())
        .merge(audit_log::routes())
        .merge(ice_servers::routes())
        .merge(sip::routes())
        .merge(ops::openapi_route())
}

/// The routes and the OpenAPI document describing them, built from the same declarations.
fn routes_and_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api())
        .merge(sip::websocket_routes())
        .merge(ops::routes())
        .split_for_parts();
    // OpenAPI requires a description on every response; where a handler gives none, use the
    // status's reason phrase.
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in &mut operation.responses.responses {
                if let utoipa::openapi::RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    let reason = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok());
                    response.description = reason
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Response")
                        .to_owned();
                }
            }
        }
    }
    (routes, doc)
}

/// The OpenAPI document of the whole HTTP interface.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_doc().1
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = routes_and_doc();
    let doc_json: Arc<str> = doc.to_json().unwrap_or_default().into();
    routes
        .merge(phone::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(ops::OpenApiJson(doc_json)))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.max_body_bytes,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.http.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal(anyhow::anyhow!("handler panicked")).into_response()
            },
        ))
        .with_state(state)
}

/// Counts and times every routed request.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status,
        })
        .inc();
    response
}

async fn fallback(State(state): State<AppState>, request: Request) -> ApiError {
    let labels = HttpLabels {
        method: request.method().as_str().to_owned(),
        route: "unmatched".into(),
        status: 404,
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

//! Operational endpoints: liveness, readiness, metrics, and the OpenAPI document.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Json;
use crate::metrics::StateLabel;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

pub(super) fn openapi_route() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The serialised OpenAPI document, shared by every request.
#[derive(Clone)]
pub(super) struct OpenApiJson(pub(super) Arc<str>);

/// Health status.
#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok`, or why not.
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "Database unreachable", body = Health)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok" })),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "database unreachable",
                }),
            )
        }
    }
}

/// Prometheus metrics (OpenMetrics text format). Names are documented in `docs/metrics.md`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle) = state.db.pool_stats();
    let idle = i64::try_from(idle).unwrap_or(0);
    state
        .metrics
        .db_connections
        .get_or_create(&StateLabel { state: "idle" })
        .set(idle);
    state
        .metrics
        .db_connections
        .get_or_create(&StateLabel { state: "in_use" })
        .set(i64::from(size) - idle);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
}

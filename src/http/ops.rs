//! Operational endpoints: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::{StatusResponse, Unavailable};
use crate::error::Result;
use crate::telemetry;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")
    )
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!(telemetry::REDIS_CONNECTIONS).set(state.store.connection_count() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::metrics().render(),
    )
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = StatusResponse)
    )
)]
async fn healthz() -> Json<StatusResponse> {
    Json(StatusResponse { status: "ok" })
}

/// Readiness: Redis answers and holds every script.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = StatusResponse),
        Unavailable
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<StatusResponse>> {
    state.store.check_ready().await?;
    Ok(Json(StatusResponse { status: "ready" }))
}

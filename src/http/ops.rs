//! Operational endpoints: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::error::Result;
use crate::telemetry;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus text exposition of every metric of this process.
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

/// The process is alive and serving HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Redis answers and holds every script; 503 otherwise.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.store.check_ready().await?;
    Ok(Json(json!({ "status": "ready" })))
}

//! Operational endpoints: liveness and readiness.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::error::Result;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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

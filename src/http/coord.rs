//! Routes of the coordination primitives under `/v1/tenants/{tenant}`:
//! idempotency claims, checkpoints, reservation pools and publish limits.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use super::extract::{JsonBody, KeyPath, PoolPath, TenantPath};
use crate::coord::checkpoints::AdvanceRequest;
use crate::coord::idempotency::{Claim, ClaimRequest, CompleteRequest, ReleaseRequest};
use crate::coord::limits::Limits;
use crate::coord::reservations::{AcquireRequest, HoldRequest, PoolConfigRequest};
use crate::error::Result;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/idempotency/{key}", get(idempotency_record))
        .route("/idempotency/{key}/claim", post(claim))
        .route("/idempotency/{key}/complete", post(complete))
        .route("/idempotency/{key}/release", post(release))
        .route("/checkpoints/{name}", get(checkpoint))
        .route("/checkpoints/{name}/advance", post(advance))
        .route("/pools/{pool}", put(declare_pool).get(pool_info))
        .route("/pools/{pool}/acquire", post(acquire))
        .route("/pools/{pool}/renew", post(renew))
        .route("/pools/{pool}/release", post(release_reservation))
        .route(
            "/limits",
            put(set_limits).get(get_limits).delete(clear_limits),
        )
}

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn claim(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<ClaimRequest>,
) -> Result<Response> {
    let claim = state.coord.claim(&path.tenant, &path.key, &request).await?;
    let status = created_or_ok(matches!(claim, Claim::Claimed { .. }));
    Ok((status, Json(claim)).into_response())
}

async fn complete(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> Result<Response> {
    let completed_at = state
        .coord
        .complete(&path.tenant, &path.key, &request)
        .await?;
    Ok(Json(json!({"state": "completed", "completed_at": completed_at})).into_response())
}

async fn release(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<ReleaseRequest>,
) -> Result<Response> {
    state
        .coord
        .release(&path.tenant, &path.key, &request)
        .await?;
    Ok(Json(json!({"state": "released"})).into_response())
}

async fn idempotency_record(State(state): State<AppState>, path: KeyPath) -> Result<Response> {
    let record = state
        .coord
        .idempotency_record(&path.tenant, &path.key)
        .await?;
    Ok(Json(record).into_response())
}

async fn advance(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<AdvanceRequest>,
) -> Result<Response> {
    let checkpoint = state
        .coord
        .advance(&path.tenant, &path.key, request.seq)
        .await?;
    Ok(Json(checkpoint).into_response())
}

async fn checkpoint(State(state): State<AppState>, path: KeyPath) -> Result<Response> {
    let checkpoint = state.coord.checkpoint(&path.tenant, &path.key).await?;
    Ok(Json(checkpoint).into_response())
}

async fn declare_pool(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<PoolConfigRequest>,
) -> Result<Response> {
    let created = state
        .coord
        .declare_pool(&path.tenant, &path.pool, &request)
        .await?;
    let info = state.coord.pool_info(&path.tenant, &path.pool).await?;
    Ok((created_or_ok(created), Json(info)).into_response())
}

async fn pool_info(State(state): State<AppState>, path: PoolPath) -> Result<Response> {
    let info = state.coord.pool_info(&path.tenant, &path.pool).await?;
    Ok(Json(info).into_response())
}

async fn acquire(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<AcquireRequest>,
) -> Result<Response> {
    let reservation = state
        .coord
        .acquire(&path.tenant, &path.pool, &request)
        .await?;
    Ok((StatusCode::CREATED, Json(reservation)).into_response())
}

async fn renew(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<Response> {
    let expires_at = state
        .coord
        .renew(&path.tenant, &path.pool, &request)
        .await?;
    Ok(
        Json(json!({"reservation_id": request.reservation_id, "expires_at": expires_at}))
            .into_response(),
    )
}

async fn release_reservation(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<Response> {
    state
        .coord
        .release_reservation(&path.tenant, &path.pool, &request)
        .await?;
    Ok(Json(json!({"reservation_id": request.reservation_id, "released": true})).into_response())
}

async fn set_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    JsonBody(limits): JsonBody<Limits>,
) -> Result<Response> {
    state.coord.set_limits(&tenant, &limits).await?;
    Ok(Json(limits).into_response())
}

async fn get_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<Response> {
    let limits = state.coord.limits(&tenant).await?;
    Ok(Json(json!({ "limits": limits })).into_response())
}

async fn clear_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<StatusCode> {
    state.coord.clear_limits(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

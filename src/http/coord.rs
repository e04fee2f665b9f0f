//! Routes of the coordination primitives under `/v1/tenants/{tenant}`:
//! idempotency claims, checkpoints, reservation pools and publish limits.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, KeyPath, PoolPath, TenantPath};
use super::openapi::{
    ApiErrors, BodyErrors, CheckpointParams, Conflict, FinishResponse, HoldResponse, KeyParams,
    LimitsResponse, NotFound, PoolParams, TenantParams, TooManyRequests,
};
use super::{AppState, created_or_ok};
use crate::coord::checkpoints::{AdvanceRequest, Checkpoint};
use crate::coord::idempotency::{
    Claim, ClaimRequest, CompleteRequest, IdempotencyRecord, ReleaseRequest,
};
use crate::coord::limits::Limits;
use crate::coord::reservations::{
    AcquireRequest, HoldRequest, PoolConfigRequest, PoolInfo, ReleaseReservationRequest,
    Reservation,
};
use crate::error::Result;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(idempotency_record))
        .routes(routes!(claim))
        .routes(routes!(complete))
        .routes(routes!(release))
        .routes(routes!(checkpoint, delete_checkpoint))
        .routes(routes!(advance))
        .routes(routes!(declare_pool, pool_info, delete_pool))
        .routes(routes!(acquire))
        .routes(routes!(renew))
        .routes(routes!(release_reservation))
        .routes(routes!(set_limits, get_limits, clear_limits))
}

/// Claim an idempotency key (409 in_progress with owner and expires_at while someone holds it).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/idempotency/{key}/claim",
    tag = "coordination",
    params(KeyParams),
    request_body = ClaimRequest,
    responses(
        (status = 201, description = "Claimed: run the work", body = Claim),
        (status = 200, description = "Completed before: the stored result", body = Claim),
        ApiErrors, BodyErrors, Conflict
    )
)]
async fn claim(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<ClaimRequest>,
) -> Result<Response> {
    let claim = state.coord.claim(&path.tenant, &path.key, &request).await?;
    let status = created_or_ok(matches!(claim, Claim::Claimed { .. }));
    Ok((status, Json(claim)).into_response())
}

/// Store the result of a claim.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/idempotency/{key}/complete",
    tag = "coordination",
    params(KeyParams),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "Stored", body = FinishResponse),
        ApiErrors, BodyErrors, Conflict
    )
)]
async fn complete(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> Result<Response> {
    let completed_at = state
        .coord
        .complete(&path.tenant, &path.key, &request)
        .await?;
    Ok(Json(FinishResponse {
        state: "completed",
        completed_at: Some(completed_at),
    })
    .into_response())
}

/// Free a claimed key for a retry.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/idempotency/{key}/release",
    tag = "coordination",
    params(KeyParams),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Released", body = FinishResponse),
        ApiErrors, BodyErrors, Conflict
    )
)]
async fn release(
    State(state): State<AppState>,
    path: KeyPath,
    JsonBody(request): JsonBody<ReleaseRequest>,
) -> Result<Response> {
    state
        .coord
        .release(&path.tenant, &path.key, &request)
        .await?;
    Ok(Json(FinishResponse {
        state: "released",
        completed_at: None,
    })
    .into_response())
}

/// Read the state of an idempotency key.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/idempotency/{key}",
    tag = "coordination",
    params(KeyParams),
    responses(
        (status = 200, description = "The record", body = IdempotencyRecord),
        ApiErrors, NotFound
    )
)]
async fn idempotency_record(State(state): State<AppState>, path: KeyPath) -> Result<Response> {
    let record = state
        .coord
        .idempotency_record(&path.tenant, &path.key)
        .await?;
    Ok(Json(record).into_response())
}

/// Advance a high-water mark (accepted only above it).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/checkpoints/{name}/advance",
    tag = "coordination",
    params(CheckpointParams),
    request_body = AdvanceRequest,
    responses(
        (status = 200, description = "Accepted or not, and the mark", body = Checkpoint),
        ApiErrors, BodyErrors
    )
)]
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

/// Read a checkpoint.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/checkpoints/{name}",
    tag = "coordination",
    params(CheckpointParams),
    responses(
        (status = 200, description = "The mark", body = Checkpoint),
        ApiErrors, NotFound
    )
)]
async fn checkpoint(State(state): State<AppState>, path: KeyPath) -> Result<Response> {
    let checkpoint = state.coord.checkpoint(&path.tenant, &path.key).await?;
    Ok(Json(checkpoint).into_response())
}

/// Delete a checkpoint (advancing it again starts from nothing).
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/checkpoints/{name}",
    tag = "coordination",
    params(CheckpointParams),
    responses(
        (status = 204, description = "Deleted"),
        ApiErrors, NotFound
    )
)]
async fn delete_checkpoint(State(state): State<AppState>, path: KeyPath) -> Result<StatusCode> {
    state
        .coord
        .delete_checkpoint(&path.tenant, &path.key)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create or resize a reservation pool.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/pools/{pool}",
    tag = "coordination",
    params(PoolParams),
    request_body = PoolConfigRequest,
    responses(
        (status = 201, description = "Created", body = PoolInfo),
        (status = 200, description = "Updated", body = PoolInfo),
        ApiErrors, BodyErrors
    )
)]
async fn declare_pool(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<PoolConfigRequest>,
) -> Result<Response> {
    let (created, info) = state
        .coord
        .declare_pool(&path.tenant, &path.pool, &request)
        .await?;
    Ok((created_or_ok(created), Json(info)).into_response())
}

/// Describe a pool and its live holders.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/pools/{pool}",
    tag = "coordination",
    params(PoolParams),
    responses(
        (status = 200, description = "The pool", body = PoolInfo),
        ApiErrors, NotFound
    )
)]
async fn pool_info(State(state): State<AppState>, path: PoolPath) -> Result<Response> {
    let info = state.coord.pool_info(&path.tenant, &path.pool).await?;
    Ok(Json(info).into_response())
}

/// Delete a pool with its live reservations (their renew and release answer 404).
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/pools/{pool}",
    tag = "coordination",
    params(PoolParams),
    responses(
        (status = 204, description = "Deleted"),
        ApiErrors, NotFound
    )
)]
async fn delete_pool(State(state): State<AppState>, path: PoolPath) -> Result<StatusCode> {
    state.coord.delete_pool(&path.tenant, &path.pool).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a slot, waiting up to wait_ms; 429 pool_full otherwise.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/pools/{pool}/acquire",
    tag = "coordination",
    params(PoolParams),
    request_body = AcquireRequest,
    responses(
        (status = 201, description = "Reserved", body = Reservation),
        ApiErrors, BodyErrors, NotFound, TooManyRequests
    )
)]
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

/// Renew a live reservation.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/pools/{pool}/renew",
    tag = "coordination",
    params(PoolParams),
    request_body = HoldRequest,
    responses(
        (status = 200, description = "Renewed", body = HoldResponse),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
async fn renew(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<HoldRequest>,
) -> Result<Response> {
    let expires_at = state
        .coord
        .renew(&path.tenant, &path.pool, &request)
        .await?;
    Ok(Json(HoldResponse {
        reservation_id: request.reservation_id,
        expires_at: Some(expires_at),
        released: None,
    })
    .into_response())
}

/// Release a reservation.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/pools/{pool}/release",
    tag = "coordination",
    params(PoolParams),
    request_body = ReleaseReservationRequest,
    responses(
        (status = 200, description = "Released", body = HoldResponse),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
async fn release_reservation(
    State(state): State<AppState>,
    path: PoolPath,
    JsonBody(request): JsonBody<ReleaseReservationRequest>,
) -> Result<Response> {
    state
        .coord
        .release_reservation(&path.tenant, &path.pool, &request)
        .await?;
    Ok(Json(HoldResponse {
        reservation_id: request.reservation_id,
        expires_at: None,
        released: Some(true),
    })
    .into_response())
}

/// Set the tenant's publish quota.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/limits",
    tag = "coordination",
    params(TenantParams),
    request_body = Limits,
    responses(
        (status = 200, description = "Set", body = Limits),
        ApiErrors, BodyErrors
    )
)]
async fn set_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    JsonBody(limits): JsonBody<Limits>,
) -> Result<Response> {
    state.coord.set_limits(&tenant, &limits).await?;
    Ok(Json(limits).into_response())
}

/// Read the tenant's publish quota.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/limits",
    tag = "coordination",
    params(TenantParams),
    responses(
        (status = 200, description = "The quota, or null", body = LimitsResponse),
        ApiErrors
    )
)]
async fn get_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<Response> {
    let limits = state.coord.limits(&tenant).await?;
    Ok(Json(LimitsResponse { limits }).into_response())
}

/// Remove the tenant's publish quota.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/limits",
    tag = "coordination",
    params(TenantParams),
    responses(
        (status = 204, description = "Removed"),
        ApiErrors
    )
)]
async fn clear_limits(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<StatusCode> {
    state.coord.clear_limits(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

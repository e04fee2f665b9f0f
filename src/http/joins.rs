//! Routes under `/v1/tenants/{tenant}/topics/{topic}/joins/{join}`:
//! declare, describe, and record a part.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JoinPartPath, JoinPath, JsonBody};
use super::openapi::{ApiErrors, BodyErrors, Conflict, JoinParams, JoinPartParams, NotFound};
use super::{AppState, created_or_ok};
use crate::error::Result;
use crate::workflow::joins::{JoinInfo, JoinRequest, PartRecorded, PartRequest};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(declare_join, get_join))
        .routes(routes!(record_part))
}

/// Declare a fan-in join: the parts to wait for and a deadline.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/topics/{topic}/joins/{join}",
    tag = "workflows",
    params(JoinParams),
    request_body = JoinRequest,
    responses(
        (status = 201, description = "Created", body = JoinInfo),
        (status = 200, description = "Already declared the same way", body = JoinInfo),
        ApiErrors, BodyErrors, Conflict
    )
)]
async fn declare_join(
    State(state): State<AppState>,
    path: JoinPath,
    JsonBody(request): JsonBody<JoinRequest>,
) -> Result<Response> {
    let created = state
        .broker
        .declare_join(&path.tenant, &path.topic, &path.join, &request)
        .await?;
    let info = state
        .broker
        .join_info(&path.tenant, &path.topic, &path.join)
        .await?;
    Ok((created_or_ok(created), Json(info)).into_response())
}

/// Describe a join: state, results, errors, missing parts.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics/{topic}/joins/{join}",
    tag = "workflows",
    params(JoinParams),
    responses(
        (status = 200, description = "The join", body = JoinInfo),
        ApiErrors, NotFound
    )
)]
async fn get_join(State(state): State<AppState>, path: JoinPath) -> Result<Json<JoinInfo>> {
    Ok(Json(
        state
            .broker
            .join_info(&path.tenant, &path.topic, &path.join)
            .await?,
    ))
}

/// Record one part's result or error (idempotent per part); the last part
/// publishes the aggregate to the topic.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/joins/{join}/parts/{part}",
    tag = "workflows",
    params(JoinPartParams),
    request_body = PartRequest,
    responses(
        (status = 200, description = "Recorded (or the same part again)", body = PartRecorded),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
async fn record_part(
    State(state): State<AppState>,
    path: JoinPartPath,
    JsonBody(request): JsonBody<PartRequest>,
) -> Result<Json<PartRecorded>> {
    Ok(Json(
        state
            .broker
            .record_part(
                (&path.tenant, &path.topic),
                (&path.join, &path.part),
                &request,
                state.max_body,
            )
            .await?,
    ))
}

//! Routes under `/v1/tenants/{tenant}/topics/{topic}/groups/{group}`:
//! declare, describe, delete, pause/resume, fetch, ack and extend.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::extract::{DeadLetterPath, GroupPath, JsonBody, PageQuery, QueryParams};
use crate::broker::delivery::FetchRequest;
use crate::broker::groups::GroupConfigRequest;
use crate::error::{Error, Result};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/topics/{topic}/groups/{group}",
            put(declare_group).get(get_group).delete(delete_group),
        )
        .route("/topics/{topic}/groups/{group}/pause", post(pause))
        .route("/topics/{topic}/groups/{group}/resume", post(resume))
        .route("/topics/{topic}/groups/{group}/fetch", post(fetch))
        .route("/topics/{topic}/groups/{group}/ack", post(ack))
        .route("/topics/{topic}/groups/{group}/extend", post(extend))
        .route("/topics/{topic}/groups/{group}/nack", post(nack))
        .route("/topics/{topic}/groups/{group}/reject", post(reject))
        .route("/topics/{topic}/groups/{group}/dlq", get(list_dlq))
        .route(
            "/topics/{topic}/groups/{group}/dlq/replay",
            post(replay_dlq),
        )
        .route(
            "/topics/{topic}/groups/{group}/dlq/{id}",
            delete(delete_dead_letter),
        )
}

async fn declare_group(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(config): JsonBody<GroupConfigRequest>,
) -> Result<Response> {
    let created = state
        .broker
        .declare_group(&path.tenant, &path.topic, &path.group, &config)
        .await?;
    let info = state
        .broker
        .group_info(&path.tenant, &path.topic, &path.group)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn get_group(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    let info = state
        .broker
        .group_info(&path.tenant, &path.topic, &path.group)
        .await?;
    Ok(Json(info).into_response())
}

async fn delete_group(State(state): State<AppState>, path: GroupPath) -> Result<StatusCode> {
    state
        .broker
        .delete_group(&path.tenant, &path.topic, &path.group)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    set_paused(state, path, true).await
}

async fn resume(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    set_paused(state, path, false).await
}

async fn set_paused(state: AppState, path: GroupPath, paused: bool) -> Result<Response> {
    state
        .broker
        .set_paused(&path.tenant, &path.topic, &path.group, paused)
        .await?;
    Ok(Json(json!({ "paused": paused })).into_response())
}

async fn fetch(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<FetchRequest>,
) -> Result<Response> {
    let messages = state
        .broker
        .fetch(&path.tenant, &path.topic, &path.group, &request)
        .await?;
    Ok(Json(json!({ "messages": messages })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    receipts: Vec<String>,
}

async fn ack(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .ack(&path.tenant, &path.topic, &path.group, &request.receipts)
        .await?;
    if request.receipts.len() == 1 && !outcome.lease_lost.is_empty() {
        return Err(lease_lost());
    }
    Ok(Json(outcome).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest {
    receipts: Vec<String>,
    #[serde(default)]
    lease_ms: Option<u64>,
}

async fn extend(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .extend(
            &path.tenant,
            &path.topic,
            &path.group,
            &request.receipts,
            request.lease_ms,
        )
        .await?;
    if request.receipts.len() == 1 && !outcome.lease_lost.is_empty() {
        return Err(lease_lost());
    }
    Ok(Json(outcome).into_response())
}

/// A single-receipt call whose lease was lost: the worker must not commit.
fn lease_lost() -> Error {
    Error::Conflict {
        code: "lease_lost",
        detail: "the lease of this delivery expired and the message was or may be redelivered; do not commit its work".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackRequest {
    receipts: Vec<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

async fn nack(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<NackRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .nack(
            &path.tenant,
            &path.topic,
            &path.group,
            &request.receipts,
            request.delay_ms,
            request.error.as_deref(),
        )
        .await?;
    if request.receipts.len() == 1 && !outcome.lease_lost.is_empty() {
        return Err(lease_lost());
    }
    Ok(Json(outcome).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectRequest {
    receipts: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

async fn reject(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<RejectRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .reject(
            &path.tenant,
            &path.topic,
            &path.group,
            &request.receipts,
            request.error.as_deref(),
        )
        .await?;
    if request.receipts.len() == 1 && !outcome.lease_lost.is_empty() {
        return Err(lease_lost());
    }
    Ok(Json(outcome).into_response())
}

async fn list_dlq(
    State(state): State<AppState>,
    path: GroupPath,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Response> {
    let page = state
        .broker
        .dead_letters(
            &path.tenant,
            &path.topic,
            &path.group,
            query.after.as_deref(),
            query.limit,
        )
        .await?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    ids: Option<Vec<String>>,
}

async fn replay_dlq(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .replay_dead_letters(
            &path.tenant,
            &path.topic,
            &path.group,
            request.ids.as_deref(),
        )
        .await?;
    Ok(Json(outcome).into_response())
}

async fn delete_dead_letter(
    State(state): State<AppState>,
    path: DeadLetterPath,
) -> Result<StatusCode> {
    let g = &path.group;
    state
        .broker
        .delete_dead_letter(&g.tenant, &g.topic, &g.group, &path.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

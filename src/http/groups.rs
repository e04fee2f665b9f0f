//! Routes under `/v1/tenants/{tenant}/topics/{topic}/groups/{group}`:
//! declare, describe, delete, pause/resume, fetch, ack and extend.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{
    DeadLetterPath, GroupPath, JsonBody, OptionalJsonBody, PageQuery, QueryParams,
};
use super::openapi::{
    ApiErrors, BodyErrors, Conflict, DeadLetterParams, FetchResponse, GroupParams, MessageIdText,
    NotFound, PausedResponse, ReceiptText,
};
use super::{AppState, declare_then_read};
use crate::broker::delivery::{AckOutcome, ExtendOutcome, FetchRequest};
use crate::broker::dlq::{DeadLetterPage, ReplayOutcome};
use crate::broker::groups::{GroupConfigRequest, GroupInfo};
use crate::broker::retry::{NackOutcome, RejectOutcome};
use crate::error::{Error, Result};
use crate::workflow::emit::{Emit, Steps};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(declare_group, get_group, delete_group))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(fetch))
        .routes(routes!(ack))
        .routes(routes!(extend))
        .routes(routes!(nack))
        .routes(routes!(reject))
        .routes(routes!(list_dlq))
        .routes(routes!(replay_dlq))
        .routes(routes!(delete_dead_letter))
}

/// Declare a consumer group or update its config.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}",
    tag = "groups",
    params(GroupParams),
    request_body = Option<GroupConfigRequest>,
    responses(
        (status = 201, description = "Created", body = GroupInfo),
        (status = 200, description = "Updated", body = GroupInfo),
        ApiErrors, BodyErrors, Conflict
    )
)]
async fn declare_group(
    State(state): State<AppState>,
    path: GroupPath,
    OptionalJsonBody(config): OptionalJsonBody<GroupConfigRequest>,
) -> Result<Response> {
    let (status, info) = declare_then_read(
        || {
            state
                .broker
                .declare_group(&path.tenant, &path.topic, &path.group, &config)
        },
        || {
            state
                .broker
                .group_info(&path.tenant, &path.topic, &path.group)
        },
    )
    .await?;
    Ok((status, Json(info)).into_response())
}

/// Describe a group: config, lag, pending, delayed, dead letters, consumers.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}",
    tag = "groups",
    params(GroupParams),
    responses(
        (status = 200, description = "The group", body = GroupInfo),
        ApiErrors, NotFound
    )
)]
async fn get_group(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    let info = state
        .broker
        .group_info(&path.tenant, &path.topic, &path.group)
        .await?;
    Ok(Json(info).into_response())
}

/// Delete a group with its retry schedule and dead letters.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}",
    tag = "groups",
    params(GroupParams),
    responses(
        (status = 204, description = "Deleted"),
        ApiErrors, NotFound
    )
)]
async fn delete_group(State(state): State<AppState>, path: GroupPath) -> Result<StatusCode> {
    state
        .broker
        .delete_group(&path.tenant, &path.topic, &path.group)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop deliveries of a group (publishing goes on).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/pause",
    tag = "groups",
    params(GroupParams),
    responses(
        (status = 200, description = "Paused", body = PausedResponse),
        ApiErrors, NotFound
    )
)]
async fn pause(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    set_paused(state, path, true).await
}

/// Resume deliveries of a group.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/resume",
    tag = "groups",
    params(GroupParams),
    responses(
        (status = 200, description = "Resumed", body = PausedResponse),
        ApiErrors, NotFound
    )
)]
async fn resume(State(state): State<AppState>, path: GroupPath) -> Result<Response> {
    set_paused(state, path, false).await
}

async fn set_paused(state: AppState, path: GroupPath, paused: bool) -> Result<Response> {
    state
        .broker
        .set_paused(&path.tenant, &path.topic, &path.group, paused)
        .await?;
    Ok(Json(PausedResponse { paused }).into_response())
}

/// Fetch messages under a lease, long-polling up to wait_ms.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/fetch",
    tag = "groups",
    params(GroupParams),
    request_body = FetchRequest,
    responses(
        (status = 200, description = "Deliveries (possibly none)", body = FetchResponse),
        ApiErrors, BodyErrors, NotFound
    )
)]
async fn fetch(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<FetchRequest>,
) -> Result<Response> {
    let (acked, messages) = state
        .broker
        .ack_then_fetch(&path.tenant, &path.topic, &path.group, &request)
        .await?;
    let (acked, lease_lost) = acked.map(|a| (a.acked, a.lease_lost)).unzip();
    Ok(Json(FetchResponse {
        messages,
        acked,
        lease_lost,
    })
    .into_response())
}

/// Body of `POST …/ack`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AckRequest {
    /// Receipts from fetch, 1 to 1000 (exactly one with `emit`).
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Vec<ReceiptText>)]
    receipts: Vec<String>,
    /// Ack with emit: messages of the next step, published exactly once
    /// (idempotency key `emit:<group>:<message id>:<index>`) before the ack.
    #[serde(default)]
    #[schema(max_items = 100)]
    emit: Option<Vec<Emit>>,
}

/// Acknowledge deliveries (fenced: a lost lease is refused).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/ack",
    tag = "groups",
    params(GroupParams),
    request_body = AckRequest,
    responses(
        (status = 200, description = "Acked and lost receipts", body = AckOutcome),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
async fn ack(
    State(state): State<AppState>,
    path: GroupPath,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Response> {
    // An empty `emit` list is a plain ack.
    let outcome = match request.emit.filter(|e| !e.is_empty()) {
        Some(emits) => {
            Steps {
                broker: &state.broker,
                coord: &state.coord,
                channels: &state.channels,
            }
            .ack_with_emit(
                (&path.tenant, &path.topic, &path.group),
                &request.receipts,
                emits,
            )
            .await?
        }
        None => {
            state
                .broker
                .ack(&path.tenant, &path.topic, &path.group, &request.receipts)
                .await?
        }
    };
    refuse_single_lost(&request.receipts, &outcome.lease_lost)?;
    Ok(Json(outcome).into_response())
}

/// Body of `POST …/extend`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtendRequest {
    /// Receipts from fetch, 1 to 1000.
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Vec<ReceiptText>)]
    receipts: Vec<String>,
    /// New lease in ms (default and maximum: the group's lease_ms).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 43200000)]
    lease_ms: Option<u64>,
}

/// Renew the leases of current deliveries.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/extend",
    tag = "groups",
    params(GroupParams),
    request_body = ExtendRequest,
    responses(
        (status = 200, description = "Renewed and lost receipts", body = ExtendOutcome),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
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
    refuse_single_lost(&request.receipts, &outcome.lease_lost)?;
    Ok(Json(outcome).into_response())
}

/// A call with a single receipt whose lease was lost answers 409: the
/// worker must not commit. Batches report `lease_lost` in the body instead.
fn refuse_single_lost(receipts: &[String], lease_lost: &[String]) -> Result<()> {
    if receipts.len() == 1 && !lease_lost.is_empty() {
        return Err(Error::Conflict {
            code: "lease_lost",
            detail: "the lease of this delivery expired and the message was or may be redelivered; do not commit its work".into(),
        });
    }
    Ok(())
}

/// Body of `POST …/nack`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NackRequest {
    /// Receipts from fetch, 1 to 1000.
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Vec<ReceiptText>)]
    receipts: Vec<String>,
    /// Retry after this long (default: the group's backoff).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 31536000000_u64)]
    delay_ms: Option<u64>,
    /// Why it failed; kept as last_error when dead-lettered.
    #[serde(default)]
    #[schema(max_length = 4096)]
    error: Option<String>,
}

/// Give deliveries back for a retry after delay_ms or the group backoff.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/nack",
    tag = "groups",
    params(GroupParams),
    request_body = NackRequest,
    responses(
        (status = 200, description = "Scheduled, dead-lettered and lost receipts", body = NackOutcome),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
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
    refuse_single_lost(&request.receipts, &outcome.lease_lost)?;
    Ok(Json(outcome).into_response())
}

/// Body of `POST …/reject`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectRequest {
    /// Receipts from fetch, 1 to 1000.
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Vec<ReceiptText>)]
    receipts: Vec<String>,
    /// Why it failed; kept as last_error when dead-lettered.
    #[serde(default)]
    #[schema(max_length = 4096)]
    error: Option<String>,
}

/// Dead-letter deliveries now.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/reject",
    tag = "groups",
    params(GroupParams),
    request_body = RejectRequest,
    responses(
        (status = 200, description = "Dead-lettered and lost receipts", body = RejectOutcome),
        ApiErrors, BodyErrors, NotFound, Conflict
    )
)]
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
    refuse_single_lost(&request.receipts, &outcome.lease_lost)?;
    Ok(Json(outcome).into_response())
}

/// List a group's dead letters.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq",
    tag = "dead letters",
    params(GroupParams, PageQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        ApiErrors, NotFound
    )
)]
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

/// Body of `POST …/dlq/replay` (no `ids`: replay all).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    /// Message ids to replay, 1 to 1000; leave out to replay all.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Option<Vec<MessageIdText>>)]
    ids: Option<Vec<String>>,
    /// Only dead letters after this dlq id: replaying all, where the scan
    /// starts (the `next_after` of an answer with `more: true`); with
    /// `ids`, their dead letters up to it stay.
    #[serde(default)]
    #[schema(pattern = "^(0|[1-9][0-9]{0,18})(-(0|[1-9][0-9]{0,18}))?$")]
    after: Option<String>,
}

/// Send dead letters back to this group only, attempts reset.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq/replay",
    tag = "dead letters",
    params(GroupParams),
    request_body = Option<ReplayRequest>,
    responses(
        (status = 200, description = "Replayed and missing ids", body = ReplayOutcome),
        ApiErrors, BodyErrors, NotFound
    )
)]
async fn replay_dlq(
    State(state): State<AppState>,
    path: GroupPath,
    OptionalJsonBody(request): OptionalJsonBody<ReplayRequest>,
) -> Result<Response> {
    let outcome = state
        .broker
        .replay_dead_letters(
            &path.tenant,
            &path.topic,
            &path.group,
            request.ids.as_deref(),
            request.after.as_deref(),
        )
        .await?;
    Ok(Json(outcome).into_response())
}

/// Delete the dead letters of one message id.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/topics/{topic}/groups/{group}/dlq/{id}",
    tag = "dead letters",
    params(DeadLetterParams),
    responses(
        (status = 204, description = "Deleted"),
        ApiErrors, NotFound
    )
)]
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

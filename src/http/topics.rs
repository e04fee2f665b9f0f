//! Routes under `/v1/tenants/{tenant}/topics`: declare, describe, list,
//! delete, publish (single and batch) and history.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::AppState;
use super::extract::{JsonBody, PageQuery, QueryParams, TenantPath, TopicPath, parse_json};
use crate::broker::publish::{MAX_BATCH, PublishRequest, Published};
use crate::broker::topics::TopicConfigRequest;
use crate::error::{Error, RateLimitInfo, Result};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/topics", get(list_topics))
        .route(
            "/topics/{topic}",
            put(declare_topic).get(get_topic).delete(delete_topic),
        )
        .route("/topics/{topic}/messages", post(publish).get(history))
        .route("/topics/{topic}/messages:batch", post(publish_batch))
}

async fn list_topics(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<Json<serde_json::Value>> {
    let topics = state.broker.list_topics(&tenant).await?;
    Ok(Json(serde_json::json!({ "topics": topics })))
}

async fn declare_topic(
    State(state): State<AppState>,
    path: TopicPath,
    JsonBody(config): JsonBody<TopicConfigRequest>,
) -> Result<Response> {
    let created = state
        .broker
        .declare_topic(&path.tenant, &path.topic, &config)
        .await?;
    let info = state.broker.topic_info(&path.tenant, &path.topic).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn get_topic(State(state): State<AppState>, path: TopicPath) -> Result<Response> {
    let info = state.broker.topic_info(&path.tenant, &path.topic).await?;
    Ok(Json(info).into_response())
}

async fn delete_topic(State(state): State<AppState>, path: TopicPath) -> Result<StatusCode> {
    state.broker.delete_topic(&path.tenant, &path.topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Keeps the request's W3C `traceparent` with the message (unless the
/// message brings its own), so consumers continue the publisher's trace.
fn carry_traceparent(request_headers: &HeaderMap, message: &mut PublishRequest) {
    let Some(traceparent) = request_headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    message
        .headers
        .get_or_insert_with(Default::default)
        .entry("traceparent".to_owned())
        .or_insert_with(|| traceparent.to_owned());
}

async fn publish(
    State(state): State<AppState>,
    path: TopicPath,
    request_headers: HeaderMap,
    JsonBody(mut message): JsonBody<PublishRequest>,
) -> Result<Response> {
    carry_traceparent(&request_headers, &mut message);
    message.validate("")?;
    let quota = state.coord.charge_publish(&path.tenant, 1).await?;
    let published = state
        .broker
        .publish(&path.tenant, &path.topic, std::slice::from_ref(&message))
        .await?
        .pop()
        .ok_or_else(|| Error::Internal("publish returned no result".into()))?;
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(with_quota((status, Json(published)).into_response(), quota))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    messages: Vec<Box<RawValue>>,
}

/// Per-item outcome of a batch: `results[i]` or `errors[i]` is set, never both.
#[derive(Serialize)]
struct BatchResponse {
    results: Vec<Option<Published>>,
    errors: Vec<Option<serde_json::Value>>,
}

async fn publish_batch(
    State(state): State<AppState>,
    path: TopicPath,
    request_headers: HeaderMap,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<Response> {
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH {
        return Err(Error::invalid_field(
            "messages",
            format!("must hold between 1 and {MAX_BATCH} messages"),
        ));
    }
    let mut errors = Vec::with_capacity(batch.messages.len());
    let mut valid = Vec::with_capacity(batch.messages.len());
    for (i, raw) in batch.messages.iter().enumerate() {
        let prefix = format!("messages[{i}].");
        let parsed =
            parse_json::<PublishRequest>(raw.get().as_bytes(), &prefix).and_then(|mut m| {
                carry_traceparent(&request_headers, &mut m);
                m.validate(&prefix).map(|()| m)
            });
        match parsed {
            Ok(message) => {
                valid.push(message);
                errors.push(None);
            }
            Err(e) => errors.push(Some(e.to_problem_json())),
        }
    }
    let mut quota = None;
    let mut published = if valid.is_empty() {
        Vec::new()
    } else {
        quota = state
            .coord
            .charge_publish(&path.tenant, valid.len() as u64)
            .await?;
        state
            .broker
            .publish(&path.tenant, &path.topic, &valid)
            .await?
    }
    .into_iter();
    let results = errors
        .iter()
        .map(|e| if e.is_none() { published.next() } else { None })
        .collect();
    Ok(with_quota(
        Json(BatchResponse { results, errors }).into_response(),
        quota,
    ))
}

/// Adds the tenant's `RateLimit-*` headers when it has a quota.
fn with_quota(mut response: Response, quota: Option<RateLimitInfo>) -> Response {
    if let Some(quota) = quota {
        quota.insert_headers(response.headers_mut());
    }
    response
}

async fn history(
    State(state): State<AppState>,
    path: TopicPath,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Response> {
    let page = state
        .broker
        .history(
            &path.tenant,
            &path.topic,
            query.after.as_deref(),
            query.limit,
        )
        .await?;
    Ok(Json(page).into_response())
}

//! Routes under `/v1/tenants/{tenant}/topics`: declare, describe, list,
//! delete, publish (single and batch) and history.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{
    JsonBody, OptionalJsonBody, PageQuery, QueryParams, TenantPath, TopicPath, parse_json,
    sole_traceparent,
};
use super::openapi::{
    ApiErrors, BodyErrors, Conflict, NotFound, Problem, TenantParams, TooManyRequests, TopicList,
    TopicParams,
};
use super::{AppState, created_or_ok, declare_then_read};
use crate::broker::publish::{MAX_BATCH, PublishRequest, Published};
use crate::broker::topics::{HistoryPage, TopicConfigRequest, TopicInfo};
use crate::error::{Error, RateLimitInfo, Result};
use crate::names::{Tenant, Topic};
use crate::traces::{self, MessageSpan, Step, TRACEPARENT, attr};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_topics))
        .routes(routes!(declare_topic, get_topic, delete_topic))
        .routes(routes!(publish, history))
        .routes(routes!(publish_batch))
}

/// List a tenant's topics.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics",
    tag = "topics",
    params(TenantParams),
    responses(
        (status = 200, description = "Topic names", body = TopicList),
        ApiErrors
    )
)]
async fn list_topics(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
) -> Result<Json<TopicList>> {
    let topics = state.broker.list_topics(&tenant).await?;
    Ok(Json(TopicList { topics }))
}

/// Declare a topic or update its config.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/topics/{topic}",
    tag = "topics",
    params(TopicParams),
    request_body = Option<TopicConfigRequest>,
    responses(
        (status = 201, description = "Created", body = TopicInfo),
        (status = 200, description = "Updated", body = TopicInfo),
        ApiErrors, BodyErrors
    )
)]
async fn declare_topic(
    State(state): State<AppState>,
    path: TopicPath,
    OptionalJsonBody(config): OptionalJsonBody<TopicConfigRequest>,
) -> Result<Response> {
    let (status, info) = declare_then_read(
        || {
            state
                .broker
                .declare_topic(&path.tenant, &path.topic, &config)
        },
        || state.broker.topic_info(&path.tenant, &path.topic),
    )
    .await?;
    Ok((status, Json(info)).into_response())
}

/// Describe a topic: config, length, ids, last seq, groups with lag.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics/{topic}",
    tag = "topics",
    params(TopicParams),
    responses(
        (status = 200, description = "The topic", body = TopicInfo),
        ApiErrors, NotFound
    )
)]
async fn get_topic(State(state): State<AppState>, path: TopicPath) -> Result<Response> {
    let info = state.broker.topic_info(&path.tenant, &path.topic).await?;
    Ok(Json(info).into_response())
}

/// Delete a topic with its messages and groups.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/topics/{topic}",
    tag = "topics",
    params(TopicParams),
    responses(
        (status = 204, description = "Deleted"),
        ApiErrors, NotFound, Conflict
    )
)]
async fn delete_topic(State(state): State<AppState>, path: TopicPath) -> Result<StatusCode> {
    state.broker.delete_topic(&path.tenant, &path.topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The request's `traceparent` header, if any: all a publish needs of
/// the request's headers (extracting the whole `HeaderMap` clones it).
/// Sent twice, it names no trace (W3C Trace Context: a new trace).
pub(super) struct RequestTraceparent(pub(super) Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for RequestTraceparent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self(sole_traceparent(&parts.headers).cloned()))
    }
}

/// Keeps the request's W3C `traceparent` with the message (unless the
/// message brings its own), so consumers continue the publisher's trace.
/// Runs after the message's own headers were validated: the header is the
/// sidecar's addition, not one of the client's 64, and a malformed one is
/// dropped rather than failing the publish (W3C Trace Context: a receiver
/// ignores an invalid traceparent).
fn carry_traceparent(request: &RequestTraceparent, message: &mut PublishRequest) {
    let Some(traceparent) = request
        .0
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v))
    else {
        return;
    };
    message
        .headers
        .get_or_insert_with(Default::default)
        .entry("traceparent".to_owned())
        .or_insert_with(|| traceparent.to_owned());
}

/// A `publish` span under the message's `traceparent` (the request's, see
/// [`carry_traceparent`]), which it then replaces: consumers continue from
/// the publish.
fn publish_span(tenant: &Tenant, topic: &Topic, message: &mut PublishRequest) -> MessageSpan {
    let parent = message.headers.as_ref().and_then(|h| h.get(TRACEPARENT));
    let span = MessageSpan::on(
        Step::Publish,
        parent.map(String::as_str),
        tenant,
        topic,
        None,
    );
    if let Some(traceparent) = span.traceparent() {
        message
            .headers
            .get_or_insert_with(Default::default)
            .insert(TRACEPARENT.to_owned(), traceparent);
    }
    span
}

/// Ends a `publish` span with what came of it.
fn published(mut span: MessageSpan, result: Result<&Published, &Error>) {
    if !span.is_recording() {
        return;
    }
    match result {
        Ok(p) => {
            span.set(attr::MESSAGE_ID, &p.id);
            span.set_int("streamcar.seq", i64::try_from(p.seq).unwrap_or(i64::MAX));
            let outcome = if p.duplicate {
                "duplicate"
            } else {
                "published"
            };
            span.set(attr::OUTCOME, outcome);
        }
        Err(e) => span.fail(e.code()),
    }
}

/// `version-trace_id-parent_id-flags` in lowercase hex (2-32-16-2 digits),
/// as W3C Trace Context defines it; a future version may append `-…` fields.
fn is_traceparent(value: &str) -> bool {
    const MAX_LEN: usize = 256;
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = value.splitn(5, '-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest = parts.next();
    value.len() <= MAX_LEN
        && hex(version, 2)
        && version != "ff"
        && (version != "00" || rest.is_none())
        && rest.is_none_or(|r| r.bytes().all(|b| b.is_ascii_graphic()))
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// Publish one message.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/messages",
    tag = "topics",
    params(TopicParams),
    request_body = PublishRequest,
    responses(
        (status = 201, description = "Published", body = Published),
        (status = 200, description = "Duplicate of an earlier idempotency key; nothing written", body = Published),
        ApiErrors, BodyErrors, TooManyRequests
    )
)]
async fn publish(
    State(state): State<AppState>,
    path: TopicPath,
    request_headers: RequestTraceparent,
    JsonBody(message): JsonBody<PublishRequest>,
) -> Result<Response> {
    publish_message(&state, path, request_headers, message).await
}

/// What `POST …/messages` does once its request is read: the handler above
/// and [`super::dispatch`] (which serves the route without the router) both
/// end here.
pub(super) async fn publish_message(
    state: &AppState,
    path: TopicPath,
    request_headers: RequestTraceparent,
    mut message: PublishRequest,
) -> Result<Response> {
    message.validate(&"")?;
    carry_traceparent(&request_headers, &mut message);
    let span = publish_span(&path.tenant, &path.topic, &mut message);
    let outcome = state
        .broker
        .publish_one_within_quota(&state.coord, &path.tenant, &path.topic, &message)
        .await;
    published(span, outcome.as_ref().map(|(p, _)| p));
    let (published, quota) = outcome?;
    let status = created_or_ok(!published.duplicate);
    Ok(with_quota((status, Json(published)).into_response(), quota))
}

/// Body of `POST …/messages:batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// 1 to 1000 messages, each shaped like the single publish body
    /// (`PublishRequest`). An item that is not fails alone, in `errors[i]`.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<serde_json::Value>)]
    messages: Vec<Box<RawValue>>,
}

/// `messages[i].`, the field prefix of a batch item's errors (formatted
/// only for an error, not for every item).
struct ItemPrefix(usize);

impl std::fmt::Display for ItemPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "messages[{}].", self.0)
    }
}

/// Per-item outcome of a batch: `results[i]` or `errors[i]` is set, never both.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchResponse {
    /// What each published (or duplicate) item got.
    results: Vec<Option<Published>>,
    /// The problem document of each refused item.
    #[schema(value_type = Vec<Option<Problem>>)]
    errors: Vec<Option<serde_json::Value>>,
}

/// Publish up to 1000 messages; one bad item fails only itself.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topics/{topic}/messages:batch",
    tag = "topics",
    params(TopicParams),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Per-item results and errors, in order", body = BatchResponse),
        ApiErrors, BodyErrors, TooManyRequests
    )
)]
async fn publish_batch(
    State(state): State<AppState>,
    path: TopicPath,
    request_headers: RequestTraceparent,
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
        let prefix = ItemPrefix(i);
        let parsed =
            parse_json::<PublishRequest>(raw.get().as_bytes(), &prefix).and_then(|mut m| {
                m.validate(&prefix)?;
                carry_traceparent(&request_headers, &mut m);
                Ok(m)
            });
        match parsed {
            Ok(message) => {
                valid.push(message);
                errors.push(None);
            }
            Err(e) => errors.push(Some(e.to_problem_json())),
        }
    }
    if valid.is_empty() {
        let results = vec![None; errors.len()];
        return Ok(Json(BatchResponse { results, errors }).into_response());
    }
    let spans: Vec<MessageSpan> = if traces::enabled() {
        let (tenant, topic) = (&path.tenant, &path.topic);
        valid
            .iter_mut()
            .map(|m| publish_span(tenant, topic, m))
            .collect()
    } else {
        Vec::new()
    };
    let outcome = state
        .broker
        .publish_within_quota(&state.coord, &path.tenant, &path.topic, &valid)
        .await;
    match &outcome {
        Ok(o) => spans
            .into_iter()
            .zip(&o.items)
            .for_each(|(span, item)| published(span, item.as_ref())),
        Err(e) => spans.into_iter().for_each(|span| published(span, Err(e))),
    }
    let outcome = outcome?;
    let mut items = outcome.items.into_iter();
    let mut results = Vec::with_capacity(errors.len());
    let mut refusal = None;
    for error in &mut errors {
        let item = if error.is_none() { items.next() } else { None };
        match item {
            Some(Ok(published)) => results.push(Some(published)),
            Some(Err(e)) => {
                *error = Some(e.to_problem_json());
                refusal.get_or_insert(e);
                results.push(None);
            }
            None => results.push(None),
        }
    }
    // Refused with nothing to show (no item published, none a duplicate):
    // the batch as a whole answers the 429, with its Retry-After.
    if let Some(refusal) = refusal
        && results.iter().all(Option::is_none)
    {
        return Err(refusal);
    }
    Ok(with_quota(
        Json(BatchResponse { results, errors }).into_response(),
        outcome.quota,
    ))
}

/// Adds the tenant's `RateLimit-*` headers when it has a quota.
fn with_quota(mut response: Response, quota: Option<RateLimitInfo>) -> Response {
    if let Some(quota) = quota {
        quota.insert_headers(response.headers_mut());
    }
    response
}

/// Read past messages without touching any group.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topics/{topic}/messages",
    tag = "topics",
    params(TopicParams, PageQuery),
    responses(
        (status = 200, description = "A page of messages", body = HistoryPage),
        ApiErrors, NotFound
    )
)]
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

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn traceparent_format() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(ok));
        // A later version may append fields; version 00 may not.
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        assert!(!is_traceparent(&format!("{ok}-extra")));
        for bad in [
            "",
            "not-a-trace",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
        let long = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "x".repeat(300)
        );
        assert!(!is_traceparent(&long));
    }
}

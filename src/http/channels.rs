//! Routes of realtime channels: config, publish, history, Server-Sent
//! Events (`…/channels/{channel}/events`) and one WebSocket per client for
//! many channels (`…/ws`). The resume logic lives in
//! [`crate::channels::cursor`]; this module only moves it onto HTTP.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, OptionalJsonBody, QueryParams, TenantPath};
use super::openapi::{ApiErrors, BodyErrors, ChannelParams, TenantParams};
use super::session::{WS_READ_BUFFER, WsSession};
use super::{AppState, created_or_ok};
use crate::channels::history::{
    ChannelConfigRequest, ChannelInfo, ChannelPublish, ChannelPublished, DEFAULT_PAGE, HistoryPage,
    MAX_PAGE,
};
use crate::channels::{ChannelName, Position};
use crate::edge::Access;
use crate::edge::presence::PresenceInfo;
use crate::error::{Error, Result};
use crate::names::{Name, Tenant};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(declare_channel, get_channel))
        .routes(routes!(publish_to_channel, channel_history))
        .routes(routes!(events))
        .routes(routes!(presence))
        .routes(routes!(websocket))
}

/// `{tenant}` and `{channel}` of the path.
pub struct ChannelPath {
    /// The tenant.
    pub tenant: Tenant,
    /// The channel.
    pub channel: ChannelName,
}

fn param<N: Name>(params: &RawPathParams, name: &str) -> Result<N> {
    let raw = params
        .iter()
        .find_map(|(k, v)| (k == name).then_some(v))
        .ok_or_else(|| Error::Internal(format!("route has no {name} parameter")))?;
    N::parse(raw).map_err(|e| Error::BadRequest {
        code: "invalid_name",
        detail: format!("invalid {} name '{raw}': {e}", N::KIND),
        field: Some(name.to_owned()),
    })
}

impl<S: Send + Sync> FromRequestParts<S> for ChannelPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::bad_request("invalid_path", e.body_text()))?;
        Ok(Self {
            tenant: param(&params, "tenant")?,
            channel: param(&params, "channel")?,
        })
    }
}

/// Set a channel's history size and TTL (channels need no declaration:
/// without one they keep 100 messages for 5 minutes).
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/channels/{channel}",
    tag = "channels",
    params(ChannelParams),
    request_body = Option<ChannelConfigRequest>,
    responses(
        (status = 201, description = "Created", body = ChannelInfo),
        (status = 200, description = "Updated", body = ChannelInfo),
        ApiErrors, BodyErrors
    )
)]
async fn declare_channel(
    State(state): State<AppState>,
    path: ChannelPath,
    OptionalJsonBody(config): OptionalJsonBody<ChannelConfigRequest>,
) -> Result<Response> {
    let channels = &state.channels;
    let created = channels
        .declare(&path.tenant, &path.channel, &config)
        .await?;
    let reading = channels.read(&path.tenant, &path.channel, 0, 0).await?;
    Ok((created_or_ok(created), Json(reading.info)).into_response())
}

/// A channel's epoch, top offset and config.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/channels/{channel}",
    tag = "channels",
    params(ChannelParams),
    responses((status = 200, description = "The channel", body = ChannelInfo), ApiErrors)
)]
async fn get_channel(
    State(state): State<AppState>,
    path: ChannelPath,
) -> Result<Json<ChannelInfo>> {
    let reading = state
        .channels
        .read(&path.tenant, &path.channel, 0, 0)
        .await?;
    Ok(Json(reading.info))
}

/// Publish to a channel: appended to its history and sent live, in one step.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/channels/{channel}/messages",
    tag = "channels",
    params(ChannelParams),
    request_body = ChannelPublish,
    responses(
        (status = 201, description = "Published", body = ChannelPublished),
        (status = 200, description = "Duplicate idempotency key: the first publish's offset, nothing written", body = ChannelPublished),
        ApiErrors, BodyErrors
    )
)]
async fn publish_to_channel(
    State(state): State<AppState>,
    path: ChannelPath,
    JsonBody(message): JsonBody<ChannelPublish>,
) -> Result<Response> {
    let published = state
        .channels
        .publish(&path.tenant, &path.channel, &message)
        .await?;
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(published)).into_response())
}

/// `?since=<epoch>:<offset>&limit=N`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Position: messages after it (default: from the oldest kept).
    #[param(pattern = "^[A-Za-z0-9]{1,32}:(0|[1-9][0-9]{0,18})$")]
    since: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Read a channel's history after a position.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/channels/{channel}/messages",
    tag = "channels",
    params(ChannelParams, HistoryQuery),
    responses((status = 200, description = "History after `since`", body = HistoryPage), ApiErrors)
)]
async fn channel_history(
    State(state): State<AppState>,
    path: ChannelPath,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<HistoryPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let since = query
        .since
        .as_deref()
        .map(|s| Position::parse(s, "since"))
        .transpose()?;
    let page = state
        .channels
        .history(&path.tenant, &path.channel, since.as_ref(), limit)
        .await?;
    Ok(Json(page))
}

/// `?since=<epoch>:<offset>` of the event stream.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Resume after this position (`Last-Event-ID` wins when both are given).
    #[param(pattern = "^[A-Za-z0-9]{1,32}:(0|[1-9][0-9]{0,18})$")]
    since: Option<String>,
}

/// Server-Sent Events of a channel (`text/event-stream`). Each message is
/// `id: <epoch>:<offset>`, `event: message`, `data: {epoch, offset,
/// payload, headers, published_at}`. With `Last-Event-ID` (or `?since=`)
/// everything after that position is replayed, then live, without gap or
/// duplicate; a position that cannot be recovered gets one `event: reset`
/// (`{epoch, top_offset}`) first. A subscriber that falls more than
/// `--channel-queue-bytes` behind gets `event: error` (`slow_consumer`) and
/// the stream ends; it resumes with its last id. A comment line every 15 s
/// keeps proxies open.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/channels/{channel}/events",
    tag = "channels",
    params(
        ChannelParams, EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this `<epoch>:<offset>`")
    ),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), ApiErrors)
)]
async fn events(
    State(state): State<AppState>,
    path: ChannelPath,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response> {
    let since = super::session::resume_position(&headers, query.since.as_deref())?;
    super::session::events(&state, &path.tenant, &path.channel, since, Access::Open).await
}

/// Who is subscribed to a channel through the client edge, over every
/// sidecar: one entry per user (`sub`) with its open connections. Each
/// sidecar refreshes its entries every third of `--edge-presence-ttl`
/// (default 30 s); a sidecar that dies stops counting within that TTL.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/channels/{channel}/presence",
    tag = "channels",
    params(ChannelParams),
    responses((status = 200, description = "Users subscribed through the edge", body = PresenceInfo), ApiErrors)
)]
async fn presence(State(state): State<AppState>, path: ChannelPath) -> Result<Json<PresenceInfo>> {
    let info = crate::edge::presence::read(&state.store, &path.tenant, &path.channel).await?;
    Ok(Json(info))
}

/// One WebSocket for many channels of a tenant. Client frames (JSON text):
/// `{"op":"subscribe","channel","since"?}`, `{"op":"unsubscribe","channel"}`,
/// `{"op":"publish","channel","payload"}` (into a channel) or
/// `{"op":"publish","topic","payload","idempotency_key"?,"headers"?}` (to a
/// topic, quotas included). Server frames: `{"type":"subscribed",
/// "channel","epoch","top_offset","recovered"}`, `{"type":"message","channel",
/// "epoch","offset","payload","headers"}`, `{"type":"reset","channel","epoch",
/// "top_offset"}`, `{"type":"published","topic","id","seq","duplicate"}`,
/// `{"type":"error","code","detail","channel"?,"topic"?,"retry_after_ms"?}`.
/// A subscriber that falls more than `--channel-queue-bytes` behind is
/// closed with 4008 `slow_consumer`.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/ws",
    tag = "channels",
    params(TenantParams),
    responses((status = 101, description = "Switching to the WebSocket protocol"), ApiErrors)
)]
async fn websocket(
    State(state): State<AppState>,
    TenantPath(tenant): TenantPath,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return Error::bad_request(
                "websocket_upgrade_required",
                format!("this route speaks WebSocket only: {}", e.body_text()),
            )
            .into_response();
        }
    };
    let max = state.max_body;
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| WsSession::new(state, tenant, Access::Open).run(socket))
}

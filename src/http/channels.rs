//! Routes of realtime channels: config, publish, history, Server-Sent
//! Events (`…/channels/{channel}/events`) and one WebSocket per client for
//! many channels (`…/ws`). The resume logic lives in
//! [`crate::channels::cursor`]; this module only moves it onto HTTP.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, OptionalJsonBody, QueryParams, TenantPath};
use super::openapi::{ApiErrors, BodyErrors, ChannelParams, TenantParams};
use super::{AppState, created_or_ok};
use crate::channels::cursor::{CatchUp, Cursor, LiveStep};
use crate::channels::history::{
    ChannelConfigRequest, ChannelInfo, ChannelPublish, ChannelPublished, DEFAULT_PAGE, HistoryPage,
    MAX_PAGE,
};
use crate::channels::hub::Subscription;
use crate::channels::outbox::{Event as Queued, Outbox};
use crate::channels::protocol::{ClientFrame, MAX_SUBSCRIPTIONS, ServerFrame};
use crate::channels::{ChannelName, Channels, ConnectionGauge, Delivery, Position};
use crate::error::{Error, Result};
use crate::names::{Name, Tenant};

/// Comment-line interval that keeps proxies from closing an idle stream.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// WebSocket close code of a subscriber that fell too far behind.
const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// How long the close frame may wait behind unread data before the socket
/// is dropped without it (a slow client that reads again in time learns
/// why it was cut; a dead one does not hold the task).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(declare_channel, get_channel))
        .routes(routes!(publish_to_channel, channel_history))
        .routes(routes!(events))
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
    let since = match headers.get("last-event-id") {
        Some(value) => Some(Position::parse(
            value.to_str().unwrap_or_default(),
            "Last-Event-ID",
        )?),
        None => query
            .since
            .as_deref()
            .map(|s| Position::parse(s, "since"))
            .transpose()?,
    };
    let gauge = ConnectionGauge::open("sse");
    let channels = state.channels.clone();
    let outbox = channels.outbox();
    // Live first, then history: nothing published in between is lost.
    let subscription = channels.subscribe(&path.tenant, &path.channel, outbox.clone(), 0);
    let opened = Cursor::open(&channels, &path.tenant, &path.channel, since).await?;
    let mut session = SseSession {
        shutdown: channels.shutdown_signal(),
        channels,
        cursor: opened.cursor,
        outbox,
        pending: VecDeque::new(),
        more: false,
        done: false,
        _subscription: subscription,
        _gauge: gauge,
    };
    session.take(opened.first);
    Ok(Sse::new(session.into_stream())
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

/// One SSE subscriber: its cursor, its queue and what is ready to send.
struct SseSession {
    channels: Channels,
    cursor: Cursor,
    outbox: Arc<Outbox>,
    /// Events ready to send (at most one history page).
    pending: VecDeque<Event>,
    /// History remains to be read before live messages continue.
    more: bool,
    /// The stream ends once `pending` is empty.
    done: bool,
    /// True once the service shuts down.
    shutdown: tokio::sync::watch::Receiver<bool>,
    _subscription: Subscription,
    _gauge: ConnectionGauge,
}

fn message_event(delivery: &Delivery) -> Event {
    Event::default()
        .id(format!("{}:{}", delivery.epoch, delivery.offset))
        .event("message")
        .data(serde_json::to_string(delivery).unwrap_or_default())
}

fn error_event(code: &str, detail: &str) -> Event {
    Event::default()
        .event("error")
        .data(serde_json::json!({ "code": code, "detail": detail }).to_string())
}

impl SseSession {
    fn take(&mut self, catch_up: CatchUp) {
        if let Some((epoch, top)) = catch_up.reset {
            // The id moves the client's Last-Event-ID to where it now stands.
            self.pending.push_back(
                Event::default()
                    .id(format!("{epoch}:{top}"))
                    .event("reset")
                    .data(serde_json::json!({ "epoch": epoch, "top_offset": top }).to_string()),
            );
        }
        self.pending
            .extend(catch_up.messages.iter().map(message_event));
        self.more = catch_up.more;
    }

    /// The next event, or None when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if self.more {
                match self.cursor.catch_up(&self.channels).await {
                    Ok(catch_up) => self.take(catch_up),
                    Err(e) => {
                        // The client resumes with its last id.
                        self.pending
                            .push_back(error_event(e.code(), &e.public_detail()));
                        self.done = true;
                    }
                }
                continue;
            }
            let item = tokio::select! {
                item = self.outbox.recv() => item,
                () = stopping(&mut self.shutdown) => {
                    self.done = true;
                    continue;
                }
            };
            match item {
                None => {
                    self.pending.push_back(error_event(
                        "slow_consumer",
                        "the subscriber fell too far behind; resume with the last event id",
                    ));
                    self.done = true;
                }
                Some(item) => match item.event {
                    Queued::Resync => self.more = true,
                    Queued::Live(live) => match self.cursor.live(&live.delivery) {
                        LiveStep::Deliver => self.pending.push_back(message_event(&live.delivery)),
                        LiveStep::Skip => {}
                        LiveStep::Gap => self.more = true,
                    },
                },
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut session| async move {
            let event = session.next().await?;
            Some((Ok(event), session))
        })
    }
}

/// One WebSocket for many channels of a tenant. Client frames (JSON text):
/// `{"op":"subscribe","channel","since"?}`, `{"op":"unsubscribe","channel"}`,
/// `{"op":"publish","channel","payload"}`. Server frames: `{"type":"subscribed",
/// "channel","epoch","top_offset","recovered"}`, `{"type":"message","channel",
/// "epoch","offset","payload","headers"}`, `{"type":"reset","channel","epoch",
/// "top_offset"}`, `{"type":"error","code","detail"}`. A subscriber that falls
/// more than `--channel-queue-bytes` behind is closed with 4008 `slow_consumer`.
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
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| WsSession::new(state.channels.clone(), tenant).run(socket))
}

/// One channel subscription of a WebSocket.
struct WsSub {
    cursor: Cursor,
    _subscription: Subscription,
}

/// Why a WebSocket session ends.
enum End {
    /// The client went away or the socket failed.
    Gone,
    /// The client fell too far behind.
    Slow,
    /// The service is shutting down.
    Shutdown,
}

struct WsSession {
    channels: Channels,
    tenant: Tenant,
    outbox: Arc<Outbox>,
    subs: HashMap<u64, WsSub>,
    by_channel: HashMap<ChannelName, u64>,
    next_sub: u64,
    _gauge: ConnectionGauge,
}

impl WsSession {
    fn new(channels: Channels, tenant: Tenant) -> Self {
        Self {
            outbox: channels.outbox(),
            channels,
            tenant,
            subs: HashMap::new(),
            by_channel: HashMap::new(),
            next_sub: 0,
            _gauge: ConnectionGauge::open("ws"),
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let mut shutdown = self.channels.shutdown_signal();
        let end = loop {
            let step = tokio::select! {
                () = stopping(&mut shutdown) => Err(End::Shutdown),
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => self.on_frame(&mut socket, text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        send_error(&mut socket, &self.outbox, "invalid_frame", "frames are JSON text", None).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Err(End::Gone),
                },
                item = self.outbox.recv() => match item {
                    None => Err(End::Slow),
                    Some(item) => self.on_queued(&mut socket, item.sub, item.event).await,
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        let (code, reason) = match end {
            End::Gone => return,
            End::Slow => (CLOSE_SLOW_CONSUMER, "slow_consumer"),
            // 1001 "going away": the client reconnects (to another sidecar).
            End::Shutdown => (1001, "shutting_down"),
        };
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(close)).await;
    }

    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        text: &str,
    ) -> std::result::Result<(), End> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                let code = e.code();
                return send_error(socket, &self.outbox, code, &e.public_detail(), None).await;
            }
        };
        match frame {
            ClientFrame::Subscribe { channel, since } => {
                self.subscribe(socket, channel, since).await
            }
            ClientFrame::Unsubscribe { channel } => match self.by_channel.remove(&channel) {
                Some(sub) => {
                    self.subs.remove(&sub);
                    Ok(())
                }
                None => {
                    send_error(
                        socket,
                        &self.outbox,
                        "not_subscribed",
                        "this connection is not subscribed to the channel",
                        Some(channel.as_str()),
                    )
                    .await
                }
            },
            ClientFrame::Publish { channel, message } => {
                match self
                    .channels
                    .publish(&self.tenant, &channel, &message)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        send_error(
                            socket,
                            &self.outbox,
                            e.code(),
                            &e.public_detail(),
                            Some(channel.as_str()),
                        )
                        .await
                    }
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        channel: ChannelName,
        since: Option<Position>,
    ) -> std::result::Result<(), End> {
        if self.by_channel.contains_key(&channel) {
            return send_error(
                socket,
                &self.outbox,
                "already_subscribed",
                "this connection is already subscribed to the channel",
                Some(channel.as_str()),
            )
            .await;
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return send_error(
                socket,
                &self.outbox,
                "too_many_subscriptions",
                &format!("at most {MAX_SUBSCRIPTIONS} channels per connection"),
                Some(channel.as_str()),
            )
            .await;
        }
        let sub = self.next_sub;
        self.next_sub += 1;
        let subscription =
            self.channels
                .subscribe(&self.tenant, &channel, self.outbox.clone(), sub);
        let opened = match Cursor::open(&self.channels, &self.tenant, &channel, since).await {
            Ok(opened) => opened,
            Err(e) => {
                return send_error(
                    socket,
                    &self.outbox,
                    e.code(),
                    &e.public_detail(),
                    Some(channel.as_str()),
                )
                .await;
            }
        };
        let subscribed = ServerFrame::Subscribed {
            channel: channel.as_str(),
            epoch: &opened.epoch,
            top_offset: opened.top_offset,
            recovered: opened.recovered,
        };
        send(socket, &self.outbox, subscribed.to_text()).await?;
        self.by_channel.insert(channel, sub);
        self.subs.insert(
            sub,
            WsSub {
                cursor: opened.cursor,
                _subscription: subscription,
            },
        );
        self.send_catch_up(socket, sub, opened.first).await
    }

    /// Sends a catch-up's frames, then reads on until history is exhausted.
    async fn send_catch_up(
        &mut self,
        socket: &mut WebSocket,
        sub: u64,
        mut catch_up: CatchUp,
    ) -> std::result::Result<(), End> {
        loop {
            let Some(ws_sub) = self.subs.get_mut(&sub) else {
                return Ok(());
            };
            let channel = ws_sub.cursor.channel().as_str().to_owned();
            if let Some((epoch, top_offset)) = &catch_up.reset {
                let frame = ServerFrame::Reset {
                    channel: &channel,
                    epoch,
                    top_offset: *top_offset,
                };
                send(socket, &self.outbox, frame.to_text()).await?;
            }
            for delivery in &catch_up.messages {
                send(
                    socket,
                    &self.outbox,
                    ServerFrame::message(&channel, delivery).to_text(),
                )
                .await?;
            }
            if !catch_up.more {
                return Ok(());
            }
            let Some(ws_sub) = self.subs.get_mut(&sub) else {
                return Ok(());
            };
            catch_up = match ws_sub.cursor.catch_up(&self.channels).await {
                Ok(next) => next,
                Err(e) => {
                    // Dropped: the client subscribes again from its position.
                    self.subs.remove(&sub);
                    self.by_channel.retain(|_, s| *s != sub);
                    return send_error(
                        socket,
                        &self.outbox,
                        e.code(),
                        &e.public_detail(),
                        Some(&channel),
                    )
                    .await;
                }
            };
        }
    }

    async fn on_queued(
        &mut self,
        socket: &mut WebSocket,
        sub: u64,
        event: Queued,
    ) -> std::result::Result<(), End> {
        // Events of a subscription that was ended since are dropped.
        let Some(ws_sub) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        let gap = match &event {
            Queued::Resync => true,
            Queued::Live(live) => match ws_sub.cursor.live(&live.delivery) {
                LiveStep::Deliver => {
                    let frame =
                        ServerFrame::message(ws_sub.cursor.channel().as_str(), &live.delivery);
                    return send(socket, &self.outbox, frame.to_text()).await;
                }
                LiveStep::Skip => false,
                LiveStep::Gap => true,
            },
        };
        if !gap {
            return Ok(());
        }
        let catch_up = CatchUp {
            more: true,
            ..CatchUp::default()
        };
        self.send_catch_up(socket, sub, catch_up).await
    }
}

/// Resolves once the service shuts down (the watch guard is dropped here,
/// so callers' futures stay `Send`).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sends a text frame unless the client stops reading long enough for the
/// connection's queue to overflow meanwhile.
async fn send(
    socket: &mut WebSocket,
    outbox: &Outbox,
    text: String,
) -> std::result::Result<(), End> {
    tokio::select! {
        sent = socket.send(Message::Text(text.into())) => sent.map_err(|_| End::Gone),
        () = outbox.overflowed() => Err(End::Slow),
    }
}

async fn send_error(
    socket: &mut WebSocket,
    outbox: &Outbox,
    code: &str,
    detail: &str,
    channel: Option<&str>,
) -> std::result::Result<(), End> {
    let frame = ServerFrame::Error {
        code,
        detail,
        channel,
    };
    send(socket, outbox, frame.to_text()).await
}

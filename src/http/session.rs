//! The realtime-channel sessions both listeners run: one Server-Sent
//! Events stream for one channel, and one WebSocket for many. The loopback
//! API (`crate::http::channels`) and the client edge (`crate::http::edge`)
//! call the same code and differ only in the [`Access`] they hand it:
//! allow-all on the API, the token's claims on the edge (grants, publish
//! rate, presence, expiry and refresh). The resume logic itself lives in
//! [`crate::channels::cursor`]; this module moves it onto HTTP.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::AppState;
use crate::channels::cursor::{CatchUp, Cursor, LiveStep};
use crate::channels::hub::Subscription;
use crate::channels::outbox::{Event as Queued, Outbox};
use crate::channels::protocol::{ClientFrame, ServerFrame};
use crate::channels::{ChannelName, Channels, ConnectionGauge, Delivery, Position};
use crate::edge::Access;
use crate::edge::presence::Joined;
use crate::error::{Error, Result};
use crate::names::{Tenant, Topic};

/// Comment-line interval that keeps proxies from closing an idle stream.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// WebSocket close code of a subscriber that fell too far behind.
const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// WebSocket close code of a connection whose token expired unrefreshed.
pub(super) const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// How long the close frame may wait behind unread data before the socket
/// is dropped without it (a slow client that reads again in time learns
/// why it was cut; a dead one does not hold the task).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence of an edge client after which its WebSocket is pinged: a client
/// gone without closing its socket (a phone that lost its network) on a
/// quiet channel is never written to, so TCP never reports it gone.
const WS_PING_AFTER: Duration = Duration::from_secs(15);
/// How long a pinged edge client has to send anything (its pong) before
/// its session ends, freeing its connection slots and its presence.
const WS_PONG_WAIT: Duration = Duration::from_secs(10);
/// Read buffer of one WebSocket (it grows for a larger frame). tungstenite
/// fills its read buffer to this size with zeros before reading, so its
/// default (128 KiB) would be 128 KiB of RSS for every connection, idle or
/// not; client frames are small.
pub(super) const WS_READ_BUFFER: usize = 4 << 10;

/// Where an SSE subscriber resumes: the `Last-Event-ID` header (sent by a
/// reconnecting `EventSource`) wins over the `since` query parameter.
pub(super) fn resume_position(
    headers: &axum::http::HeaderMap,
    since: Option<&str>,
) -> Result<Option<Position>> {
    match headers.get("last-event-id") {
        Some(value) => {
            Position::parse(value.to_str().unwrap_or_default(), "Last-Event-ID").map(Some)
        }
        None => since.map(|s| Position::parse(s, "since")).transpose(),
    }
}

/// Starts an event stream of `channel` for a connection with `access`:
/// refused (403) before streaming when the channel is not granted.
pub(super) async fn events(
    state: &AppState,
    tenant: &Tenant,
    channel: &ChannelName,
    since: Option<Position>,
    access: Access,
) -> Result<Response> {
    let presence = access.subscribe(tenant, channel)?;
    let gauge = ConnectionGauge::open("sse");
    let channels = state.channels.clone();
    let outbox = channels.outbox();
    // Live first, then history: nothing published in between is lost.
    let subscription = channels.subscribe(tenant, channel, outbox.clone(), 0);
    let opened = Cursor::open(&channels, tenant, channel, since).await?;
    let mut session = SseSession {
        shutdown: channels.shutdown_signal(),
        channels,
        cursor: opened.cursor,
        outbox,
        pending: VecDeque::new(),
        more: false,
        done: false,
        expires: access.expires_at(),
        access,
        _presence: presence,
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
    /// When the stream ends with `token_expired` (edge clients).
    expires: Option<tokio::time::Instant>,
    access: Access,
    _presence: Option<Joined>,
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

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
                () = until(self.expires) => {
                    self.access.expired();
                    self.pending.push_back(
                        Event::default().event("token_expired").data(
                            serde_json::json!({
                                "code": "token_expired",
                                "detail": "the token expired; reconnect with a new one and the last event id",
                            })
                            .to_string(),
                        ),
                    );
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

/// One channel subscription of a WebSocket.
struct WsSub {
    cursor: Cursor,
    _presence: Option<Joined>,
    _subscription: Subscription,
}

/// Why a WebSocket session ends.
pub(super) enum End {
    /// The client went away or the socket failed.
    Gone,
    /// The client fell too far behind.
    Slow,
    /// The service is shutting down.
    Shutdown,
    /// The token expired without a refresh.
    TokenExpired,
    /// An edge client answered no ping.
    Unresponsive,
}

/// One WebSocket: many channel subscriptions of one tenant.
pub(super) struct WsSession {
    state: AppState,
    tenant: Tenant,
    access: Access,
    outbox: Arc<Outbox>,
    subs: HashMap<u64, WsSub>,
    by_channel: HashMap<ChannelName, u64>,
    next_sub: u64,
    _gauge: ConnectionGauge,
}

impl WsSession {
    /// A session of `tenant` for a connection with `access`.
    pub(super) fn new(state: AppState, tenant: Tenant, access: Access) -> Self {
        Self {
            outbox: state.channels.outbox(),
            state,
            tenant,
            access,
            subs: HashMap::new(),
            by_channel: HashMap::new(),
            next_sub: 0,
            _gauge: ConnectionGauge::open("ws"),
        }
    }

    /// Serves the socket until the client leaves, falls behind, its token
    /// expires or the service stops.
    pub(super) async fn run(mut self, mut socket: WebSocket) {
        let mut shutdown = self.state.channels.shutdown_signal();
        // Edge clients only: on the loopback API the peer is in the pod,
        // and the kernel reports its end.
        let watch_client = matches!(self.access, Access::Client(_));
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        let end = loop {
            let expires = self.access.expires_at();
            let check = watch_client.then(|| {
                heard + WS_PING_AFTER + if pinged { WS_PONG_WAIT } else { Duration::ZERO }
            });
            let step = tokio::select! {
                () = stopping(&mut shutdown) => Err(End::Shutdown),
                () = until(expires) => Err(End::TokenExpired),
                () = until(check) => {
                    if pinged {
                        Err(End::Unresponsive)
                    } else {
                        pinged = true;
                        ping(&mut socket, &self.outbox).await
                    }
                }
                incoming = socket.recv() => {
                    heard = tokio::time::Instant::now();
                    pinged = false;
                    match incoming {
                        Some(Ok(Message::Text(text))) => self.on_frame(&mut socket, text.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            send_error(&mut socket, &self.outbox, "invalid_frame", "frames are JSON text", None).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Close(_)) | Err(_)) | None => Err(End::Gone),
                    }
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
            End::TokenExpired => {
                self.access.expired();
                (CLOSE_TOKEN_EXPIRED, "token_expired")
            }
            // "Going away": a client still there reconnects and resumes.
            End::Unresponsive => (1001, "ping_timeout"),
        };
        close(&mut socket, code, reason).await;
    }

    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        text: &str,
    ) -> std::result::Result<(), End> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return send_error_of(socket, &self.outbox, &e, None).await,
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
                let published = match self.access.publish_to_channel(&self.tenant) {
                    Ok(()) => {
                        self.state
                            .channels
                            .publish(&self.tenant, &channel, &message)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match published {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        send_error_of(socket, &self.outbox, &e, Some(Target::Channel(&channel)))
                            .await
                    }
                }
            }
            ClientFrame::PublishTopic { topic, message } => {
                self.publish_to_topic(socket, topic, *message).await
            }
            ClientFrame::Auth { .. } => {
                let detail = match self.access {
                    Access::Open => {
                        "auth is for the client edge; this API needs no token per connection"
                    }
                    Access::Client(_) => {
                        "this connection is already authenticated (refresh replaces the token)"
                    }
                };
                send_error(socket, &self.outbox, "invalid_frame", detail, None).await
            }
            ClientFrame::Refresh { token } => self.refresh(socket, &token).await,
        }
    }

    async fn publish_to_topic(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        mut message: crate::broker::publish::PublishRequest,
    ) -> std::result::Result<(), End> {
        let published = match self.access.publish_to_topic(&self.tenant, &topic) {
            Ok(key) => {
                if let Some(sub) = key {
                    // One user's idempotency keys are not another's: scoped
                    // by sub (a newline, which no key or sub may hold, keeps
                    // the scope apart from every key a client can send).
                    if let Some(idem) = &message.idempotency_key {
                        message.dedup_scope = Some(format!("edge\n{sub}\n{idem}"));
                    }
                    message.key = Some(sub);
                }
                self.state
                    .broker
                    .publish_one_within_quota(&self.state.coord, &self.tenant, &topic, &message)
                    .await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok((published, _)) => {
                let frame = ServerFrame::Published {
                    topic: topic.as_str(),
                    id: &published.id,
                    seq: published.seq,
                    duplicate: published.duplicate,
                };
                send(socket, &self.outbox, frame.to_text()).await
            }
            Err(e) => send_error_of(socket, &self.outbox, &e, Some(Target::Topic(&topic))).await,
        }
    }

    /// Replaces the token; subscriptions the new one no longer grants end
    /// with a `forbidden` error each.
    async fn refresh(
        &mut self,
        socket: &mut WebSocket,
        token: &str,
    ) -> std::result::Result<(), End> {
        if let Err(e) = self.access.refresh(token) {
            return send_error_of(socket, &self.outbox, &e, None).await;
        }
        let exp = self.access.claims().map_or(0, |c| c.exp);
        send(
            socket,
            &self.outbox,
            ServerFrame::Refreshed { exp }.to_text(),
        )
        .await?;
        let revoked: Vec<ChannelName> = self
            .by_channel
            .keys()
            .filter(|channel| !self.access.grants(channel))
            .cloned()
            .collect();
        for channel in revoked {
            if let Some(sub) = self.by_channel.remove(&channel) {
                self.subs.remove(&sub);
            }
            send_error(
                socket,
                &self.outbox,
                "forbidden",
                "the refreshed token no longer grants this channel; unsubscribed",
                Some(channel.as_str()),
            )
            .await?;
        }
        Ok(())
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
        let max = self.access.max_subscriptions();
        if self.subs.len() >= max {
            return send_error(
                socket,
                &self.outbox,
                "too_many_subscriptions",
                &format!("at most {max} channels per connection"),
                Some(channel.as_str()),
            )
            .await;
        }
        let presence = match self.access.subscribe(&self.tenant, &channel) {
            Ok(presence) => presence,
            Err(e) => {
                return send_error_of(socket, &self.outbox, &e, Some(Target::Channel(&channel)))
                    .await;
            }
        };
        let sub = self.next_sub;
        self.next_sub += 1;
        let channels = &self.state.channels;
        let subscription = channels.subscribe(&self.tenant, &channel, self.outbox.clone(), sub);
        let opened = match Cursor::open(channels, &self.tenant, &channel, since).await {
            Ok(opened) => opened,
            Err(e) => {
                return send_error_of(socket, &self.outbox, &e, Some(Target::Channel(&channel)))
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
                _presence: presence,
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
            catch_up = match ws_sub.cursor.catch_up(&self.state.channels).await {
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

/// Sends a close frame, waiting at most [`CLOSE_TIMEOUT`] behind unread data.
pub(super) async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(close)).await;
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

/// Pings the client; one that does not even take the ping within
/// [`WS_PONG_WAIT`] is not reading and is let go.
async fn ping(socket: &mut WebSocket, outbox: &Outbox) -> std::result::Result<(), End> {
    tokio::select! {
        sent = tokio::time::timeout(WS_PONG_WAIT, socket.send(Message::Ping(Default::default()))) => {
            match sent {
                Ok(sent) => sent.map_err(|_| End::Gone),
                Err(_) => Err(End::Unresponsive),
            }
        }
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
        topic: None,
        retry_after_ms: None,
    };
    send(socket, outbox, frame.to_text()).await
}

/// What an error frame is about.
#[derive(Clone, Copy)]
enum Target<'a> {
    Channel(&'a ChannelName),
    Topic(&'a Topic),
}

/// An error frame for `e`: its code and public detail, and `retry_after_ms`
/// when it is a 429 (rate limit, quota, full backlog).
async fn send_error_of(
    socket: &mut WebSocket,
    outbox: &Outbox,
    e: &Error,
    target: Option<Target<'_>>,
) -> std::result::Result<(), End> {
    let frame = ServerFrame::Error {
        code: e.code(),
        detail: &e.public_detail(),
        channel: match target {
            Some(Target::Channel(c)) => Some(c.as_str()),
            _ => None,
        },
        topic: match target {
            Some(Target::Topic(t)) => Some(t.as_str()),
            _ => None,
        },
        retry_after_ms: retry_after_ms(e),
    };
    send(socket, outbox, frame.to_text()).await
}

/// An error frame's `retry_after_ms`: when a transient error (a 429, a
/// Redis outage) may be tried again, at least 1 ms.
fn retry_after_ms(e: &Error) -> Option<u64> {
    e.retry_after()
        .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// An error frame for a socket that has no session yet (the edge's first
/// frame), unbounded by any queue.
pub(super) async fn send_error_frame(socket: &mut WebSocket, e: &Error) {
    let frame = ServerFrame::Error {
        code: e.code(),
        detail: &e.public_detail(),
        channel: None,
        topic: None,
        retry_after_ms: retry_after_ms(e),
    };
    let _ = tokio::time::timeout(
        CLOSE_TIMEOUT,
        socket.send(Message::Text(frame.to_text().into())),
    )
    .await;
}

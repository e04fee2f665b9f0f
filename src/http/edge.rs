//! The client edge listener (`--edge-listen`): `GET /v1/edge/ws` and
//! `GET /v1/edge/events` only, for browsers and devices holding a JWT.
//!
//! Everything before the upgrade or the first event is checked here and
//! answered as problem+json: the Origin (403 `origin_not_allowed`), the
//! token (401 with the refusal's code), the channel grant on SSE (403
//! `forbidden`), the connection limits (429 `too_many_connections`). A
//! WebSocket without a token in the request must send
//! `{"op":"auth","token"}` as its first frame within 10 s (else close 4003).
//! After that the edge runs the very same sessions as the loopback API
//! ([`super::session`]) with the token's [`Access`].

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::extract::QueryParams;
use super::problem::HttpError;
use super::session::{self, WsSession};
use super::{AppState, observe};
use crate::channels::ChannelName;
use crate::channels::protocol::ClientFrame;
use crate::edge::{Access, Edge, limits::Slot};
use crate::error::{Error, Result};

/// How long a WebSocket may stay open without presenting a token.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Close code of a WebSocket whose first-frame authentication failed.
const CLOSE_UNAUTHORIZED: u16 = 4003;
/// Close code of a WebSocket over a connection limit after first-frame auth.
const CLOSE_TOO_MANY: u16 = 4029;

/// State of the edge's handlers.
#[derive(Clone)]
struct EdgeState {
    app: AppState,
    edge: Edge,
}

/// The edge's router: its two routes and nothing else.
pub fn router(app: AppState, edge: Edge) -> Router {
    Router::new()
        .route("/v1/edge/ws", get(websocket))
        .route("/v1/edge/events", get(events))
        .fallback(|uri: Uri| async move { HttpError::RouteNotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { HttpError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(EdgeState { app, edge })
}

/// The token of the request: `Authorization: Bearer`, else `?token=`.
fn request_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or(query)
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// 403 unless the Origin is allowed (one that is not text matches no
/// allowed origin: it is not the same as no Origin).
fn check_origin(edge: &Edge, headers: &HeaderMap) -> Result<()> {
    let given = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or_default());
    if edge.origin_allowed(given) {
        return Ok(());
    }
    edge.refused("origin_not_allowed");
    Err(Error::Forbidden {
        code: "origin_not_allowed",
        detail: "this origin may not connect to the edge (--edge-allowed-origins)".into(),
    })
}

/// `?token=` of the WebSocket route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    token: Option<String>,
}

async fn websocket(
    State(state): State<EdgeState>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<WsQuery>,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let EdgeState { app, edge } = state;
    check_origin(&edge, &headers)?;
    let upgrade = upgrade.map_err(|e| {
        Error::bad_request(
            "websocket_upgrade_required",
            format!("this route speaks WebSocket only: {}", e.body_text()),
        )
    })?;
    // Refused tokens first (401), then the limits (429), all before upgrade.
    let claims = match request_token(&headers, query.token.as_deref()) {
        Some(token) => Some(edge.verify(Some(token))?),
        None => None,
    };
    let slot = edge.connection()?;
    let (access, pending_slot) = match claims {
        Some(claims) => (Some(edge.admit(claims, slot, "ws")?), None),
        // The slot is held while the client authenticates in its first frame.
        None => (None, Some(slot)),
    };
    let max = edge.config().max_frame;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Clients send small frames; the default 128 KiB read buffer per
        // connection would dominate the memory of thousands of them.
        .read_buffer_size(super::session::WS_READ_BUFFER)
        .on_upgrade(move |mut socket| async move {
            let access = match (access, pending_slot) {
                (Some(access), _) => access,
                (None, Some(slot)) => match first_frame_auth(&edge, slot, &mut socket).await {
                    Some(access) => access,
                    None => return,
                },
                (None, None) => return,
            };
            let Some(tenant) = access.claims().map(|c| c.tenant.clone()) else {
                return;
            };
            WsSession::new(app, tenant, access).run(socket).await;
        }))
}

/// Waits (at most [`AUTH_TIMEOUT`]) for `{"op":"auth","token"}`; on any
/// failure sends an error frame and closes the socket.
async fn first_frame_auth(edge: &Edge, slot: Slot, socket: &mut WebSocket) -> Option<Access> {
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let token = loop {
        match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                // Counted as a missing token.
                let _ = edge.verify(None);
                session::close(socket, CLOSE_UNAUTHORIZED, "auth_timeout").await;
                return None;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Text(text)))) => match ClientFrame::parse(text.as_str()) {
                Ok(ClientFrame::Auth { token }) => break token,
                Ok(_) => {
                    let e = Error::Unauthenticated {
                        code: "token_missing",
                        detail: "the first frame must be {\"op\":\"auth\",\"token\":…}".into(),
                    };
                    let _ = edge.verify(None);
                    session::send_error_frame(socket, &e).await;
                    session::close(socket, CLOSE_UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
                Err(e) => {
                    session::send_error_frame(socket, &e).await;
                    session::close(socket, CLOSE_UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
            },
            Ok(Some(Ok(Message::Binary(_)))) => {
                let e = Error::bad_request("invalid_frame", "frames are JSON text");
                session::send_error_frame(socket, &e).await;
                session::close(socket, CLOSE_UNAUTHORIZED, "unauthorized").await;
                return None;
            }
            Ok(_) => return None,
        }
    };
    let admitted = edge
        .verify(Some(&token))
        .and_then(|claims| edge.admit(claims, slot, "ws"));
    match admitted {
        Ok(access) => Some(access),
        Err(e) => {
            let (code, reason) = match e {
                Error::TooManyRequests { .. } => (CLOSE_TOO_MANY, "too_many_connections"),
                _ => (CLOSE_UNAUTHORIZED, "unauthorized"),
            };
            session::send_error_frame(socket, &e).await;
            session::close(socket, code, reason).await;
            None
        }
    }
}

/// `?channel=…&since=…&token=…` of the event stream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    channel: Option<String>,
    since: Option<String>,
    token: Option<String>,
}

async fn events(
    State(state): State<EdgeState>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Response {
    let allowed_origin = origin(&headers)
        .filter(|o| state.edge.origin_allowed(Some(o)))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let mut response = match open_events(state, &headers, query).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // EventSource from another origin needs CORS to read the stream.
    if let Some(origin) = allowed_origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn open_events(
    state: EdgeState,
    headers: &HeaderMap,
    query: EventsQuery,
) -> Result<Response> {
    let EdgeState { app, edge } = state;
    check_origin(&edge, headers)?;
    let claims = edge.verify(request_token(headers, query.token.as_deref()))?;
    let name = query
        .channel
        .as_deref()
        .ok_or_else(|| Error::invalid_field("channel", "is required"))?;
    let channel = ChannelName::parse(name).map_err(|e| Error::BadRequest {
        code: "invalid_name",
        detail: format!("invalid channel name '{name}': {e}"),
        field: Some("channel".into()),
    })?;
    let since = super::session::resume_position(headers, query.since.as_deref())?;
    let tenant = claims.tenant.clone();
    let slot = edge.connection()?;
    let access = edge.admit(claims, slot, "sse")?;
    session::events(&app, &tenant, &channel, since, access).await
}

//! A WebSocket client for the tests: the loopback `/ws` and the edge's
//! `/v1/edge/ws`, with JSON frames and bounded waits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::TestApp;

/// Longest wait for a connection, a frame or a close before the test fails.
const WAIT: Duration = Duration::from_secs(15);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with `headers`; Err is the refusal's status
/// and problem body (a refusal is always problem+json).
pub async fn open(url: &str, headers: &[(&str, String)]) -> Result<Ws, (u16, Value)> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(WAIT, connect)
        .await
        .expect("the upgrade answered in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().expect("text header").to_owned());
            assert_eq!(
                content_type.as_deref(),
                Some("application/problem+json"),
                "status {status}"
            );
            let body = resp.body().clone().unwrap_or_default();
            Err((status, serde_json::from_slice(&body).expect("problem JSON")))
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// The loopback API's `/ws` of `app`.
pub async fn connect(app: &TestApp) -> Ws {
    let url = app.url("/ws").replacen("http://", "ws://", 1);
    open(&url, &[]).await.expect("websocket")
}

/// An `authorization: Bearer` header.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send frame");
}

/// The next text frame, raw (pings skipped); panics when the socket closes.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait limit")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next JSON frame (pings skipped); panics when the socket closes.
pub async fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("JSON frame")
}

/// Reads until the server closes: its close code and reason (0 when the
/// socket just ended).
pub async fn close(ws: &mut Ws) -> (u16, String) {
    for _ in 0..10_000 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the close within the wait limit")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => {}
        }
    }
    panic!("no close");
}

/// Subscribes to `channel`; the server's answer frame.
pub async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    send(ws, json!({ "op": "subscribe", "channel": channel })).await;
    next(ws).await
}

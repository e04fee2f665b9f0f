//! A lean keep-alive HTTP/1.1 client for the sidecar runs: one hyper
//! connection per worker, no pool or redirect machinery, so the client's own
//! CPU (it shares the 2 cores with Redis and the sidecar) stays close to what
//! the raw runs spend in redis-rs.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Mutex;

/// One keep-alive connection per worker.
pub struct Clients {
    host: String,
    base_path: String,
    conns: Vec<Mutex<SendRequest<Full<Bytes>>>>,
}

async fn connect(host: &str) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect to sidecar");
    stream.set_nodelay(true).expect("nodelay");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    send
}

/// Whether the sidecar at `host` (`127.0.0.1:port`) answers `GET /readyz`
/// with a success; false while it is not listening yet.
pub async fn is_ready(host: &str) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(host).await else {
        return false;
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let request = hyper::Request::get("/readyz")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    matches!(send.send_request(request).await, Ok(r) if r.status().is_success())
}

impl Clients {
    /// `workers` connections to `host` (`127.0.0.1:port`); paths are relative
    /// to `base_path` (`/v1/tenants/bench`).
    pub async fn new(host: &str, base_path: &str, workers: usize) -> Self {
        let mut conns = Vec::with_capacity(workers);
        for _ in 0..workers {
            conns.push(Mutex::new(connect(host).await));
        }
        Self {
            host: host.to_owned(),
            base_path: base_path.to_owned(),
            conns,
        }
    }

    /// Sends `method path` with a JSON body on worker `worker`'s connection.
    pub async fn send(
        &self,
        worker: usize,
        method: &str,
        path: &str,
        body: String,
    ) -> (u16, Value) {
        let mut conn = self.conns[worker % self.conns.len()].lock().await;
        // The previous response may still be settling in the dispatcher.
        conn.ready().await.expect("sidecar connection stays open");
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = conn.send_request(request).await.expect("sidecar answers");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Sends one request on a fresh connection (closed afterwards) to `path`
/// (absolute, not under a tenant). With `give_up_after`, the client drops
/// the connection after that long without reading the answer, as a client
/// that gives up on a long-poll does; the answer is then `None`.
pub async fn once(
    host: &str,
    method: &str,
    path: &str,
    body: String,
    give_up_after: Option<std::time::Duration>,
) -> Option<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    // Aborting the connection task drops the socket: the sidecar sees the
    // client go away mid-request.
    let conn = tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let exchange = async {
        let response = send.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, bytes))
    };
    let answer = match give_up_after {
        Some(after) => tokio::time::timeout(after, exchange).await.ok().flatten(),
        None => exchange.await,
    };
    conn.abort();
    answer
}

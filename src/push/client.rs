//! The HTTP/1.1 client that carries pushes to the app: hyper-util's pooled
//! client (keep-alive connections reused across requests), over TCP or a
//! Unix socket, with the failures sorted the way the push loop needs them.
//!
//! The one distinction that matters: a request the app never saw (the
//! connection could not be opened) is [`Failure::Unreachable`] and costs the
//! message no attempt; anything after the connection was made (a reset, a
//! timeout) may have reached the app and is a failed attempt.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::spec::Target;

/// Longest wait for a connection to open; past it the app counts as
/// unreachable (a request's connect gets at most half its timeout, so a
/// connection the app never accepts is that, not a timed-out attempt).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Most of an answer's body that is read (the rest is dropped with the
/// connection): enough for an error text now and an `emit` list later.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Connects every request to one Unix socket, whatever the URI says.
#[derive(Clone)]
struct UnixConnector(Arc<PathBuf>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path.as_path())
                .await
                .map(TokioIo::new)
        })
    }
}

enum Inner {
    Tcp(HyperClient<HttpConnector, Full<Bytes>>),
    Unix(HyperClient<UnixConnector, Full<Bytes>>),
}

/// A keep-alive client for one subscription's target.
pub struct Client {
    inner: Inner,
    target: Target,
}

/// What the app answered.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// `Retry-After` in whole seconds, when given as such.
    pub retry_after: Option<u64>,
    /// The body, up to [`MAX_ANSWER_BYTES`].
    pub body: Bytes,
    /// False when `body` is not all of it: longer than
    /// [`MAX_ANSWER_BYTES`], or cut off (a reset, the timeout).
    pub complete: bool,
}

/// Why there is no answer.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be opened: the app never saw the request.
    Unreachable(String),
    /// No answer within the subscription's timeout.
    Timeout,
    /// The connection broke after it was opened (reset, protocol error).
    Broken(String),
}

impl Client {
    /// A client for `target`, keeping up to `idle` connections open, for
    /// requests of `timeout`.
    pub fn new(target: &Target, idle: usize, timeout: Duration) -> Self {
        let mut builder = HyperClient::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(idle);
        let inner = match target {
            Target::Http(_) => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeout / 2)));
                http.set_nodelay(true);
                Inner::Tcp(builder.build(http))
            }
            Target::Unix { socket, .. } => {
                Inner::Unix(builder.build(UnixConnector(Arc::new(socket.clone()))))
            }
        };
        Self {
            inner,
            target: target.clone(),
        }
    }

    /// The URI of a request (Unix routes get a placeholder authority: the
    /// connector ignores it, and HTTP/1.1 needs a `Host`).
    pub fn uri(&self) -> Uri {
        match &self.target {
            Target::Http(uri) => uri.clone(),
            Target::Unix { route, .. } => format!("http://localhost{route}")
                .parse()
                .unwrap_or_else(|_| Uri::from_static("http://localhost/")),
        }
    }

    /// Sends `request` and reads the answer within `timeout`. The status
    /// decides: once it has come, a body still arriving at the deadline (or
    /// cut off) is kept as far as it came.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = async {
            match &self.inner {
                Inner::Tcp(c) => c.request(request).await,
                Inner::Unix(c) => c.request(request).await,
            }
        };
        let response = tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| {
                if e.is_connect() {
                    Failure::Unreachable(error_chain(&e))
                } else {
                    Failure::Broken(error_chain(&e))
                }
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after_secs);
        let mut body = response.into_body();
        let mut read = BytesMut::new();
        let mut complete = false;
        while read.len() <= MAX_ANSWER_BYTES {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read.extend_from_slice(&data);
                    }
                }
                Ok(None) => {
                    complete = read.len() <= MAX_ANSWER_BYTES;
                    break;
                }
                _ => break,
            }
        }
        read.truncate(MAX_ANSWER_BYTES);
        Ok(Answer {
            status,
            retry_after,
            body: read.freeze(),
            complete,
        })
    }

    /// Opens (and drops) one connection: does the app accept connections again?
    pub async fn probe(&self) -> bool {
        let connect = async {
            match &self.target {
                Target::Http(uri) => {
                    let host = uri.host().unwrap_or("127.0.0.1");
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let port = uri.port_u16().unwrap_or(80);
                    tokio::net::TcpStream::connect((host, port)).await.is_ok()
                }
                Target::Unix { socket, .. } => {
                    tokio::net::UnixStream::connect(socket).await.is_ok()
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or(false)
    }
}

/// `Retry-After` as whole seconds from now: delay-seconds, or an HTTP date
/// (one already past is 0).
fn retry_after_secs(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs_f64().ceil() as u64),
    )
}

/// An error with its causes (hyper's own text is only the outermost layer).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after_secs("2"), Some(2));
        assert_eq!(retry_after_secs(" 120 "), Some(120));
        assert_eq!(retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let secs = retry_after_secs(&httpdate::fmt_http_date(soon)).unwrap();
        assert!((29..=31).contains(&secs), "{secs}");
        assert_eq!(retry_after_secs("soon"), None);
        assert_eq!(retry_after_secs("-1"), None);
    }
}

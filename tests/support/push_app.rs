//! The fake push app of the push tests (`tests/push.rs`,
//! `tests/adversarial_push.rs`): a server on loopback that records every
//! request the sidecar pushes and answers as the test scripts it, either
//! over hyper (HTTP/1.1 with kept-alive connections, on a TCP port or a
//! Unix socket, see [`PushApp::start`]) or over raw TCP (one request a
//! connection, free to misbehave below HTTP, see [`PushApp::start_raw`]);
//! and the subscriptions and the sidecar that push to it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::TestApp;

/// The tenant of the subscriptions.
pub const TENANT: &str = "acme";
/// Longest any wait loop of the push tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// One request the app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Seen {
    /// The value of header `name` (lower case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// How the hyper app answers: status, extra headers, body, after an
/// optional pause. Status 0 drops the connection without an answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub pause: Duration,
}

/// An answer of `status` with no headers or body, at once.
pub fn answer(status: u16) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: String::new(),
        pause: Duration::ZERO,
    }
}

/// What the raw app does with one request.
pub enum Reply {
    /// Writes these bytes, then closes the connection.
    Raw(Vec<u8>),
    /// Waits, then does the rest.
    After(Duration, Box<Reply>),
    /// Answers this status with a 100 MB body of `x`.
    Huge(u16),
    /// Never answers; holds the connection open.
    Hang,
}

/// A complete HTTP/1.1 answer that closes the connection.
pub fn http(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut text = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    Reply::Raw(text.into_bytes())
}

/// `reply` after `pause`.
pub fn after(pause: Duration, reply: Reply) -> Reply {
    Reply::After(pause, Box::new(reply))
}

/// Answers the n-th request (0-based) given what it was, over hyper.
type HttpScript = Arc<dyn Fn(usize, &Seen) -> Answer + Send + Sync>;
/// Does with the n-th request (0-based) what it says, over raw TCP.
type RawScript = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

/// The script of an app, which decides how it serves.
#[derive(Clone)]
enum Script {
    Http(HttpScript),
    Raw(RawScript),
}

/// Where the app listens.
pub enum Bind {
    Tcp(u16),
    Unix(PathBuf),
}

/// What the app saw and how many requests it had in flight.
#[derive(Default)]
struct Counts {
    seen: Mutex<Vec<Seen>>,
    now: AtomicUsize,
    most: AtomicUsize,
    answered: AtomicUsize,
    /// Requests in progress per `ce-subject` (message key), and the most seen.
    per_key: Mutex<HashMap<String, usize>>,
    per_key_most: AtomicUsize,
    /// `ce-id`s answered with a 2xx, in order.
    ok: Mutex<Vec<String>>,
}

impl Counts {
    /// Records a request that came in and counts it in flight; its number.
    fn arrive(&self, seen: &Seen) -> usize {
        let n = {
            let mut all = self.seen.lock().unwrap();
            all.push(seen.clone());
            all.len() - 1
        };
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if let Some(key) = seen.headers.get("ce-subject") {
            let mut per_key = self.per_key.lock().unwrap();
            let count = per_key.entry(key.clone()).or_default();
            *count += 1;
            self.per_key_most.fetch_max(*count, Ordering::SeqCst);
        }
        n
    }

    /// Counts a request out of flight before its answer leaves (the next
    /// message of the key can only come after the sidecar acks this one);
    /// `ok`: it is answered with a 2xx.
    fn leave(&self, seen: &Seen, ok: bool) {
        if let Some(key) = seen.headers.get("ce-subject") {
            *self.per_key.lock().unwrap().get_mut(key).unwrap() -= 1;
        }
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.answered.fetch_add(1, Ordering::SeqCst);
        if ok {
            let id = seen.header("ce-id").to_owned();
            self.ok.lock().unwrap().push(id);
        }
    }
}

/// The app. `stop` closes the listener and, over hyper, every open
/// connection, like a dead process.
pub struct PushApp {
    counts: Arc<Counts>,
    script: Script,
    bind: Bind,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PushApp {
    /// The hyper app on a loopback port, answering as `script` says.
    pub async fn start(script: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static) -> Self {
        // Port 0: the first bind takes a port the OS picks (no race with
        // other tests for a "free" port); a restart binds that port again.
        Self::start_on(Bind::Tcp(0), script).await
    }

    /// The hyper app answering 200 to everything after `pause`.
    pub async fn start_slow(pause: Duration) -> Self {
        Self::start(move |_, _| Answer {
            pause,
            ..answer(200)
        })
        .await
    }

    /// The hyper app on `bind`, answering as `script` says.
    pub async fn start_on(
        bind: Bind,
        script: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::listen(bind, Script::Http(Arc::new(script))).await
    }

    /// The raw app on a loopback port (one request a connection), doing as
    /// `script` says.
    pub async fn start_raw(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::listen(Bind::Tcp(0), Script::Raw(Arc::new(script))).await
    }

    async fn listen(bind: Bind, script: Script) -> Self {
        let mut app = Self {
            counts: Arc::new(Counts::default()),
            script,
            bind,
            task: None,
        };
        app.resume().await;
        app
    }

    /// The URL to push to (path `/hook`).
    pub fn url(&self) -> String {
        match &self.bind {
            Bind::Tcp(port) => format!("http://127.0.0.1:{port}/hook"),
            Bind::Unix(path) => format!("unix:{}:/hook", path.display()),
        }
    }

    /// Listens (again).
    pub async fn resume(&mut self) {
        let counts = self.counts.clone();
        let script = self.script.clone();
        self.task = Some(match &mut self.bind {
            Bind::Tcp(port) => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", *port))
                    .await
                    .expect("bind the app port");
                *port = listener.local_addr().expect("app addr").port();
                tokio::spawn(async move {
                    let mut conns = JoinSet::new();
                    while let Ok((stream, _)) = listener.accept().await {
                        match &script {
                            Script::Http(answer) => {
                                let io = TokioIo::new(stream);
                                conns.spawn(serve_http(counts.clone(), answer.clone(), io));
                            }
                            // Not in the JoinSet: a connection outlives the
                            // listener (a hung one stays hung).
                            Script::Raw(reply) => {
                                tokio::spawn(serve_raw(stream, counts.clone(), reply.clone()));
                            }
                        }
                    }
                })
            }
            Bind::Unix(path) => {
                let Script::Http(answer) = script else {
                    panic!("the raw app listens on TCP only");
                };
                let _ = std::fs::remove_file(&*path);
                let listener = tokio::net::UnixListener::bind(path).expect("bind the app socket");
                tokio::spawn(async move {
                    let mut conns = JoinSet::new();
                    while let Ok((stream, _)) = listener.accept().await {
                        let io = TokioIo::new(stream);
                        conns.spawn(serve_http(counts.clone(), answer.clone(), io));
                    }
                })
            }
        });
    }

    /// Stops listening and drops every hyper connection (the JoinSet
    /// aborts them).
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Every request so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.counts.seen.lock().unwrap().clone()
    }

    /// How many requests were answered (or dropped) so far.
    pub fn answered(&self) -> usize {
        self.counts.answered.load(Ordering::SeqCst)
    }

    /// The most requests in flight at once.
    pub fn most_concurrent(&self) -> usize {
        self.counts.most.load(Ordering::SeqCst)
    }

    /// The most requests of one key (`ce-subject`) in flight at once.
    pub fn most_per_key(&self) -> usize {
        self.counts.per_key_most.load(Ordering::SeqCst)
    }

    /// The `ce-id`s answered with a 2xx, in order.
    pub fn ok(&self) -> Vec<String> {
        self.counts.ok.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the app got {} of {n} requests",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PushApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve_http<I>(counts: Arc<Counts>, script: HttpScript, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let counts = counts.clone();
        let script = script.clone();
        async move {
            let path = req.uri().path().to_owned();
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                at: Instant::now(),
                path,
                headers,
                body,
            };
            let n = counts.arrive(&seen);
            let answer = script(n, &seen);
            tokio::time::sleep(answer.pause).await;
            counts.leave(&seen, (200..300).contains(&answer.status));
            // Status 0: drop the connection without an answer (a reset).
            if answer.status == 0 {
                return Err(std::io::Error::other("scripted reset"));
            }
            let mut response = hyper::Response::new(Full::new(Bytes::from(answer.body)));
            *response.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap();
            for (name, value) in answer.headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            Ok::<_, std::io::Error>(response)
        }
    });
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

/// Reads one request (headers, then a `content-length` body).
async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut end = None;
    let mut length = 0;
    while end.is_none_or(|e| buf.len() < e + length) {
        let n = stream.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if end.is_none()
            && let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            end = Some(i + 4);
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| l.strip_prefix("content-length:"));
            length = len.and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
    }
    let end = end?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Seen {
        at: Instant::now(),
        path,
        headers,
        body: Bytes::copy_from_slice(&buf[end..]),
    })
}

async fn serve_raw(mut stream: TcpStream, counts: Arc<Counts>, script: RawScript) {
    let Some(seen) = read_request(&mut stream).await else {
        return;
    };
    let n = counts.arrive(&seen);
    let mut reply = script(n, &seen);
    while let Reply::After(pause, rest) = reply {
        tokio::time::sleep(pause).await;
        reply = *rest;
    }
    let ok = matches!(&reply, Reply::Raw(bytes) if bytes.starts_with(b"HTTP/1.1 2"));
    counts.leave(&seen, ok);
    match reply {
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Huge(status) => {
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
                100 << 20
            );
            let chunk = vec![b'x'; 64 * 1024];
            let mut ok = stream.write_all(head.as_bytes()).await.is_ok();
            for _ in 0..1600 {
                ok = ok && stream.write_all(&chunk).await.is_ok();
            }
        }
        Reply::Hang => {
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Reply::After(..) => unreachable!(),
    }
}

/// One subscription entry (tenant [`TENANT`], topic `orders`, group
/// `push`), with the fields of `extra` added.
pub fn subscription(name: &str, url: &str, extra: Value) -> Value {
    let mut entry = json!({
        "name": name, "tenant": TENANT, "topic": "orders", "group": "push", "url": url,
    });
    for (k, v) in extra.as_object().unwrap() {
        entry[k] = v.clone();
    }
    entry
}

/// streamcar in-process with these subscriptions and this drain timeout.
pub async fn sidecar_draining(entries: Vec<Value>, drain: Duration) -> TestApp {
    let text = json!({ "subscriptions": entries }).to_string();
    let subscriptions = streamcar::push::spec::parse(&text, true).expect("valid subscriptions");
    TestApp::start_with(move |c| {
        c.subscriptions = subscriptions;
        c.drain_timeout = drain;
    })
    .await
}

/// streamcar in-process with these subscriptions (drain timeout 5 s).
pub async fn sidecar(entries: Vec<Value>) -> TestApp {
    sidecar_draining(entries, Duration::from_secs(5)).await
}

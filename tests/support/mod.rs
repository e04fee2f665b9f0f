//! Test harness: a real `redis-server` on a free loopback port in its own
//! temp dir, and streamcar started in-process on a free port against it.
//!
//! Every test gets its own Redis (so fault tests can kill and restart it
//! without disturbing others) and its own tenant name. Everything is driven
//! through the public HTTP API.
#![allow(dead_code)] // each test binary uses a different subset

pub mod browser;
pub mod edge;
pub mod otlp;
pub mod proxy;
pub mod push_app;
pub mod sse;
pub mod ws;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Most time any harness wait loop may take.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A loopback port that was free a moment ago, for a server that must be
/// told its port (a `redis-server`, a sidecar process).
///
/// Taken below Linux's ephemeral range (32768–60999), where the kernel
/// never hands out ports on its own: a port from `bind(0)` could be given
/// again, as another `bind(0)` or as the source port of one of the tests'
/// many client connections, before the server binds it. Each test process
/// walks its own stretch of the range (by pid), so parallel tests in one
/// process never get the same port either. Ports stay in 10000–19999, so a
/// cluster node's bus port (port + 10000) is in 20000–29999, where no
/// other server is ever put.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(FIRST + offset).expect("below 20000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// A private `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--maxmemory-policy", "noeviction"])
            // A replica's full sync starts at once (the default waits 5 s
            // for more replicas to share it), so replica tests do not sit
            // through that delay, nor budget for it.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        loop {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection, for checks the API cannot make.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection()
            .expect("connect to test redis")
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server` children: every node a primary, the
/// 16384 slots spread over them by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) nodes, forms the cluster and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, 0, 5000, &[])
    }

    /// Starts `masters` (≥ 3) primaries with `replicas` replicas each
    /// (`redis-cli --cluster create --cluster-replicas`), the given
    /// `cluster-node-timeout` and extra `redis-server` arguments, and waits
    /// until every node reports `cluster_state:ok` and every replica is in
    /// sync with its primary.
    pub fn start_with(
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
        extra: &[&str],
    ) -> Self {
        let timeout = node_timeout_ms.to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            timeout.as_str(),
        ];
        args.extend_from_slice(extra);
        let n = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..n).map(|_| RedisServer::start_with(&args)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster did not form: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let cluster = Self { nodes };
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        while cluster
            .topology()
            .iter()
            .filter(|n| n.master_port.is_some())
            .count()
            < masters * replicas
            || !cluster.replicas_in_sync()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the replicas did not sync"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Whether every primary reports all its replicas online.
    fn replicas_in_sync(&self) -> bool {
        let topology = self.topology();
        topology
            .iter()
            .filter(|n| n.master_port.is_none())
            .all(|m| {
                let expected = topology
                    .iter()
                    .filter(|r| r.master_port == Some(m.port))
                    .count();
                let Some(node) = self.nodes.iter().find(|n| n.port() == m.port) else {
                    return false;
                };
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                info.matches("state=online").count() == expected
            })
    }

    /// `CLUSTER NODES` as seen by the first node that answers: each node's
    /// port, role, health and slots.
    pub fn topology(&self) -> Vec<ClusterNode> {
        for node in &self.nodes {
            let Ok(client) = redis::Client::open(node.url()) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500))
            else {
                continue;
            };
            let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query::<String>(&mut conn)
            else {
                continue;
            };
            return ClusterNode::parse_all(&text);
        }
        Vec::new()
    }

    /// The slot of `key` (asked of any node that answers).
    pub fn key_slot(&self, key: &str) -> u16 {
        for node in &self.nodes {
            if let Ok(client) = redis::Client::open(node.url())
                && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500))
                && let Ok(slot) = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query(&mut conn)
            {
                return slot;
            }
        }
        panic!("no cluster node answers");
    }

    /// The index in `nodes` of the server listening on `port`.
    pub fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// A [`proxy::RedisProxy`] in front of the first node, which then
    /// announces the proxy's port (`cluster-announce-port`), so the slot
    /// map every client learns names the proxy; with that node as the
    /// cluster sees it.
    pub async fn proxy_first_node(&self) -> (proxy::RedisProxy, ClusterNode) {
        let node = &self.nodes[0];
        let proxy = proxy::RedisProxy::start(node.port()).await;
        let proxy_port: u16 = proxy.url().rsplit(':').next().unwrap().parse().unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-announce-port")
            .arg(proxy_port)
            .query(&mut node.connection())
            .expect("CONFIG SET cluster-announce-port");
        let mut announced = false;
        for _ in 0..200 {
            announced = self.nodes.iter().all(|n| {
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query::<String>(&mut n.connection())
                    .is_ok_and(|nodes| nodes.contains(&format!(":{proxy_port}@")))
            });
            if announced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(announced, "the cluster never named the proxy");
        let proxied = self
            .topology()
            .into_iter()
            .find(|n| n.port == proxy_port)
            .expect("the proxied node");
        (proxy, proxied)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    /// The primary's port when this node is a replica.
    pub master_port: Option<u16>,
    /// Flagged `fail` (or `fail?`) by the cluster.
    pub failing: bool,
    /// Slot ranges it serves (primaries only).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn parse_all(text: &str) -> Vec<Self> {
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .filter(|f: &Vec<&str>| f.len() >= 8)
            .collect();
        let port_of = |field: &str| -> u16 {
            let addr = field.split('@').next().unwrap_or_default();
            addr.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        lines
            .iter()
            .map(|f| {
                let master_port = (f[3] != "-")
                    .then(|| lines.iter().find(|m| m[0] == f[3]).map(|m| port_of(m[1])))
                    .flatten();
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Self {
                    id: f[0].to_owned(),
                    port: port_of(f[1]),
                    master_port: if f[2].contains("master") {
                        None
                    } else {
                        master_port
                    },
                    failing: f[2].contains("fail"),
                    slots,
                }
            })
            .collect()
    }

    /// Whether this primary serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

impl RedisCluster {
    /// The seed list `--redis-url` takes with `--redis-cluster`.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }
}

/// A response: status, headers and the body parsed as JSON (Null if empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `content-type` header ('' when missing).
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts this is a problem+json with `status` and `code`, and returns it.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "body: {}",
            self.body
        );
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        assert!(self.body["detail"].is_string(), "body: {}", self.body);
        &self.body
    }
}

/// The real `streamcar serve` binary as a child process.
pub struct StreamcarProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    args: Vec<String>,
}

impl StreamcarProcess {
    /// Starts `streamcar serve` against `redis_url` on a free port with
    /// `extra` flags, and waits until it answers `/healthz` (and, for up
    /// to 2.5 s more, `/readyz`).
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = ["serve", "--redis-url", redis_url, "--listen"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(format!("127.0.0.1:{port}"));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut process = Self {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            args,
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_streamcar"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // `STREAMCAR_TEST_STDERR=1` shows the sidecars' logs (debugging).
            .stderr(if std::env::var_os("STREAMCAR_TEST_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn streamcar");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let answers = |path: &'static str| {
            let (client, base) = (client.clone(), self.base.clone());
            async move {
                client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        };
        let mut alive = false;
        for _ in 0..200 {
            if answers("/healthz").await {
                alive = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(alive, "streamcar did not start");
        // Ready too (Redis reachable, scripts loaded), unless the test
        // started it without a Redis on purpose: then go on after a while.
        for _ in 0..50 {
            if answers("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL (no drain, no cleanup).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same flags and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("running");
        i32::try_from(child.id()).expect("pid fits")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        panic!("streamcar did not exit");
    }
}

impl Drop for StreamcarProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of `GET url` as text (metrics, pages, raw JSON).
pub async fn get_text(client: &reqwest::Client, url: String) -> String {
    client
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text")
}

/// The payloads of a history page (`GET …/messages`), in order.
pub fn payloads(history: &Value) -> Vec<&Value> {
    history["messages"]
        .as_array()
        .expect("a history page has messages")
        .iter()
        .map(|m| &m["payload"])
        .collect()
}

static TENANT_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// streamcar running in-process against a private Redis.
pub struct TestApp {
    pub redis: RedisServer,
    server: Option<streamcar::Server>,
    pub base: String,
    pub client: reqwest::Client,
    /// This test's own tenant.
    pub tenant: String,
}

impl TestApp {
    /// Starts Redis and the app with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts Redis and the app with no background pass (retention, group
    /// gauges), so what Redis runs is what the test's calls made it run.
    pub async fn start_quiet() -> Self {
        Self::start_with(|c| {
            c.retention_interval = std::time::Duration::ZERO;
            c.metrics_interval = std::time::Duration::ZERO;
        })
        .await
    }

    /// Starts Redis and the app, letting the test adjust the config.
    pub async fn start_with(adjust: impl FnOnce(&mut streamcar::config::Config)) -> Self {
        Self::start_with_redis(&[], adjust).await
    }

    /// Starts a Redis with extra `redis-server` arguments (e.g. a small
    /// `--maxmemory`) and the app against it, letting the test adjust the
    /// config.
    pub async fn start_with_redis(
        redis_args: &[&str],
        adjust: impl FnOnce(&mut streamcar::config::Config),
    ) -> Self {
        let redis = RedisServer::start_with(redis_args);
        let url = redis.url();
        Self::start_on(redis, url, adjust).await
    }

    /// Starts Redis, a [`proxy::RedisProxy`] in front of it, and the app
    /// talking to Redis only through the proxy, on one connection and with
    /// no background pass (so the proxy's rule sees just what the test's
    /// calls send, in order). `app.redis` is the Redis behind the proxy.
    pub async fn start_behind_proxy(
        adjust: impl FnOnce(&mut streamcar::config::Config),
    ) -> (Self, proxy::RedisProxy) {
        let redis = RedisServer::start();
        let proxy = proxy::RedisProxy::start(redis.port()).await;
        let app = Self::start_on(redis, proxy.url(), |c| {
            c.redis_connections = 1;
            c.retention_interval = Duration::ZERO;
            c.metrics_interval = Duration::ZERO;
            adjust(c);
        })
        .await;
        (app, proxy)
    }

    /// Starts the app against `redis`, reached at `redis_url`.
    async fn start_on(
        redis: RedisServer,
        redis_url: String,
        adjust: impl FnOnce(&mut streamcar::config::Config),
    ) -> Self {
        let mut config = streamcar::config::Config::for_redis(redis_url);
        adjust(&mut config);
        let server = streamcar::start(&config).await.expect("start streamcar");
        let base = format!("http://{}", server.addr());
        let n = TENANT_COUNTER.fetch_add(1, Ordering::Relaxed);
        Self {
            redis,
            server: Some(server),
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            tenant: format!("t{}-{n}", std::process::id()),
        }
    }

    /// Absolute URL of `path` under this test's tenant (`/topics/x` →
    /// `http://…/v1/tenants/<tenant>/topics/x`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/tenants/{}{path}", self.base, self.tenant)
    }

    /// Sends a request to an absolute URL; `body` is sent as JSON when given.
    pub async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Reply {
        let mut req = self.client.request(method, url);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.expect("request reaches streamcar");
        Self::reply(resp).await
    }

    /// Turns a reqwest response into a [`Reply`].
    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("non-JSON body ({e}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET a tenant path.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, &self.url(path), None).await
    }

    /// POST JSON to a tenant path.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, &self.url(path), Some(body)).await
    }

    /// POST a JSON text as it is to a tenant path: what a `Value` cannot
    /// hold (lone surrogate escapes, numbers past f64, exact sizes).
    pub async fn post_text(&self, path: &str, body: impl Into<String>) -> Reply {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request reaches streamcar");
        Self::reply(resp).await
    }

    /// PUT JSON to a tenant path.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, &self.url(path), Some(body)).await
    }

    /// DELETE a tenant path.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, &self.url(path), None).await
    }

    /// Publishes `body` to `topic` and asserts it was accepted (201 or 200).
    pub async fn publish(&self, topic: &str, body: &Value) -> Value {
        let reply = self.post(&format!("/topics/{topic}/messages"), body).await;
        assert!(
            reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
            "publish failed: {} {}",
            reply.status,
            reply.body
        );
        reply.body
    }

    /// Publishes `messages` to `topic` in one batch request, asserts it was
    /// answered 200, and returns the reply's body (its `results`).
    pub async fn publish_batch(&self, topic: &str, messages: &[Value]) -> Value {
        let reply = self
            .post(
                &format!("/topics/{topic}/messages:batch"),
                &serde_json::json!({ "messages": messages }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    }

    /// Declares group `group` on `topic` with `config` and asserts success.
    pub async fn group(&self, topic: &str, group: &str, config: &Value) -> Value {
        let reply = self
            .put(&format!("/topics/{topic}/groups/{group}"), config)
            .await;
        assert!(
            reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
            "declare group failed: {} {}",
            reply.status,
            reply.body
        );
        reply.body
    }

    /// Fetches for `consumer` and returns the delivered messages.
    pub async fn fetch(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        max: u32,
        wait_ms: u64,
    ) -> Vec<Value> {
        let reply = self
            .post(
                &format!("/topics/{topic}/groups/{group}/fetch"),
                &serde_json::json!({"consumer": consumer, "max": max, "wait_ms": wait_ms}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "fetch: {}", reply.body);
        reply.body["messages"].as_array().expect("messages").clone()
    }

    /// Acks `receipts` and returns the reply (not asserted).
    pub async fn ack(&self, topic: &str, group: &str, receipts: &[&str]) -> Reply {
        self.post(
            &format!("/topics/{topic}/groups/{group}/ack"),
            &serde_json::json!({ "receipts": receipts }),
        )
        .await
    }

    /// Fetches up to `max` (no wait) and acks them all; the messages.
    pub async fn fetch_and_ack(&self, topic: &str, group: &str, max: u32) -> Vec<Value> {
        let messages = self.fetch(topic, group, "w", max, 0).await;
        let receipts: Vec<&str> = messages
            .iter()
            .map(|m| m["receipt"].as_str().expect("receipt"))
            .collect();
        let reply = self.ack(topic, group, &receipts).await;
        assert_eq!(reply.status, StatusCode::OK, "ack: {}", reply.body);
        assert_eq!(
            reply.body["acked"].as_array().map(Vec::len),
            Some(receipts.len()),
            "{}",
            reply.body
        );
        messages
    }

    /// How many times this test's Redis ran each of `commands` (lower case,
    /// subcommands as `xinfo|groups`), from `INFO commandstats`; commands
    /// run inside scripts count too.
    pub fn command_calls(&self, commands: &[&str]) -> Vec<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.redis.connection())
            .expect("INFO");
        commands
            .iter()
            .map(|name| {
                info.lines()
                    .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                    .and_then(|rest| rest.split(',').next())
                    .map_or(0, |n| n.parse().expect("calls"))
            })
            .collect()
    }

    /// The tenant's listed topics (`GET …/topics`).
    pub async fn listed_topics(&self) -> std::collections::HashSet<String> {
        let reply = self.get("/topics").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .map(|t| t.as_str().expect("name").to_owned())
            .collect()
    }

    /// Of topics `{prefix}0` … `{prefix}{n-1}`: those listed but gone or
    /// there but not listed (`(name, exists)`), and how many exist. Polled
    /// a bounded number of times, as repairs of the listing run in tasks of
    /// their own.
    pub async fn listing_disagreements(
        &self,
        prefix: &str,
        n: usize,
    ) -> (Vec<(String, bool)>, usize) {
        let mut disagree = Vec::new();
        let mut existing = 0;
        for _ in 0..50 {
            let listed = self.listed_topics().await;
            disagree.clear();
            existing = 0;
            for i in 0..n {
                let name = format!("{prefix}{i}");
                let exists = self.get(&format!("/topics/{name}")).await.status == StatusCode::OK;
                existing += usize::from(exists);
                if exists != listed.contains(&name) {
                    disagree.push((name, exists));
                }
            }
            if disagree.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (disagree, existing)
    }

    /// All history of `topic`, following `next_after` page by page.
    pub async fn history(&self, topic: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10_000 {
            let query = after
                .as_ref()
                .map_or_else(String::new, |a| format!("&after={a}"));
            let reply = self
                .get(&format!("/topics/{topic}/messages?limit=1000{query}"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            let page = reply.body["messages"].as_array().expect("messages").clone();
            if page.is_empty() {
                return all;
            }
            after = reply.body["next_after"].as_str().map(str::to_owned);
            all.extend(page);
        }
        panic!("history did not end");
    }

    /// GET a path outside the tenant (`/readyz`, `/metrics`).
    pub async fn get_root(&self, path: &str) -> Reply {
        self.send(Method::GET, &format!("{}{path}", self.base), None)
            .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        get_text(&self.client, format!("{}/metrics", self.base)).await
    }

    /// `http://<edge address>` when the config enabled the client edge.
    pub fn edge_base(&self) -> Option<String> {
        let server = self.server.as_ref()?;
        server.edge_addr().map(|addr| format!("http://{addr}"))
    }

    /// Stops the app gracefully.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

/// A `/proc/<pid>/status` line in bytes (`VmRSS`, `VmHWM`); 0 if unreadable.
pub fn proc_memory_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

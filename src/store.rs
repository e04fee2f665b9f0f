//! The shared handle on Redis that domain modules ([`crate::broker`],
//! [`crate::coord`]) work through: the connections, the script registry,
//! long-poll wake-ups and the shutdown signal. Cheap to clone.
//!
//! ## Connections
//!
//! On one Redis: a few multiplexed connections (redis-rs `ConnectionManager`:
//! pipelined, reconnecting by itself with backoff, with connect and response
//! timeouts) shared by every request, handed out round-robin. On a Redis
//! Cluster (`--redis-cluster`): one redis-rs cluster connection, which keeps
//! a multiplexed connection per node and sends each command to the node that
//! owns its slot (every script's keys share one hash tag, so one slot).
//! Nothing is checked out exclusively: concurrent requests pipeline on the
//! same sockets, and nobody (a long-poll included) can starve the others of
//! a connection. A pool with exclusive checkout (deadpool-redis, the first
//! design) cost one extra round trip per request for its health-check PING
//! and measured at a quarter of raw Redis throughput on single publishes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::{OnceCell, watch};

use crate::cluster_link::ClusterLink;
use crate::error::{Error, RedisOutage, Result};
use crate::scripts::{NamedScript, Scripts};
use crate::wake::Wakeups;

/// Bounded waits: with Redis gone or hung, requests answer 503 within
/// seconds and never hang. The response timeout is generous enough for the
/// largest script (a 1000-message batch).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reply may take: [`RESPONSE_TIMEOUT`], or with `--durability
/// replicas:N` a second more than the longest `WAIT` when that is longer. A
/// `WAIT` cut off by the response timeout would look like a hung Redis:
/// `redis_unavailable` instead of `durability_timeout`, and a dropped
/// connection under every other request on it.
pub fn response_timeout(durability: Option<Replicas>) -> Duration {
    durability.map_or(RESPONSE_TIMEOUT, |replicas| {
        RESPONSE_TIMEOUT.max(replicas.timeout.saturating_add(Duration::from_secs(1)))
    })
}

/// On a Redis Cluster, how redis-rs retries a request that met a failover
/// on the connections that keep its retries (the channel hub's sharded
/// subscriptions; the command connection's are off, and
/// [`crate::cluster_link`] decides what it sends again): each retry first
/// refreshes the slot map (on MOVED, a lost connection or CLUSTERDOWN), so
/// a request that arrives after the replica's promotion finds the new
/// primary. redis-rs's
/// defaults (16 retries, waits from 1.28 s up to 655 s) would hold a
/// request for minutes; ours are capped so that retries span about a
/// cluster-node-timeout while the whole request stays within
/// [`CLUSTER_REQUEST_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 4;
const CLUSTER_RETRY_MIN_WAIT_MS: u64 = 50;
const CLUSTER_RETRY_MAX_WAIT_MS: u64 = 500;
/// Retry n waits up to `factor × 2ⁿ` ms (within the bounds above): 200,
/// 400, 500, 500.
const CLUSTER_RETRY_FACTOR_MS: u64 = 100;
/// Connecting to a node: a dead host (no RST, the packets vanish) must not
/// hold the slot-map refresh, which connects to every node, for long.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A whole cluster request, retries included, beyond one reply's timeout.
const CLUSTER_REQUEST_EXTRA: Duration = Duration::from_secs(1);
/// How much longer than a whole request one node's reply may take. redis-rs
/// sends a request whose reply timed out again at once, on the same
/// connection, while the first copy still waits in Redis's queue (behind
/// other requests' `WAIT`s, say) and runs later: a write run twice (a
/// publish without an idempotency key written twice). With the node's
/// timeout past the whole request's, the caller gives up first, and
/// redis-rs never sends again a request nobody waits for. Failovers are
/// unaffected: a lost connection or a redirect is an error, not a timeout.
const CLUSTER_NODE_EXTRA: Duration = Duration::from_secs(2);

/// A cluster client builder with the sidecar's bounded timeouts and
/// retries (see [`CLUSTER_RETRIES`]): every cluster connection the sidecar
/// opens (commands, channel fan-out) follows a failover this fast. Replies
/// may take `response_timeout` (see [`response_timeout`]); a request that
/// outlasts it is given up, never sent again (see [`CLUSTER_NODE_EXTRA`]).
pub fn cluster_client_builder(
    seed_urls: &[&str],
    response_timeout: Duration,
) -> redis::cluster::ClusterClientBuilder {
    ClusterClient::builder(seed_urls.to_vec())
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .response_timeout(
            response_timeout
                .saturating_add(CLUSTER_REQUEST_EXTRA)
                .saturating_add(CLUSTER_NODE_EXTRA),
        )
        .overall_response_timeout(Some(response_timeout.saturating_add(CLUSTER_REQUEST_EXTRA)))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_RETRY_MIN_WAIT_MS)
        .max_retry_wait(CLUSTER_RETRY_MAX_WAIT_MS)
        .retry_wait_formula(CLUSTER_RETRY_FACTOR_MS, 2)
}

/// The error code a write answers with when fewer replicas than
/// `--durability replicas:N` asks for confirmed it in time.
pub const DURABILITY_CODE: &str = "DURABILITY";

/// `--durability replicas:N`: every write waits (`WAIT N timeout`) until N
/// replicas have it, or fails with [`DURABILITY_CODE`] (the write may
/// exist; a retry with the same idempotency key is safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// How many replicas must confirm.
    pub count: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// What `--durability replicas:N` needs at each call: the replicas to wait
/// for, and which commands never write (those do not wait).
#[derive(Debug)]
struct Durability {
    replicas: Replicas,
    /// `WAIT <replicas> <timeout ms>`, built once.
    wait: Cmd,
    read_only: Arc<ReadOnly>,
}

/// Tells the commands that never write from those that may (a write waits
/// for replicas under `--durability replicas:N`, and on a cluster is never
/// sent twice, see [`crate::cluster_link`]).
#[derive(Debug)]
pub struct ReadOnly {
    /// The read-only scripts' SHAs (`EVALSHA`) and sources (`EVAL`, sent
    /// after a NOSCRIPT).
    scripts: HashSet<Vec<u8>>,
    sources: Vec<&'static str>,
}

/// A connection handle; clones share one multiplexed socket (or, on a Redis
/// Cluster, one set of sockets, one per node, each command routed to the node
/// that owns its slot).
#[derive(Clone)]
pub struct Conn {
    link: Link,
    /// With `--durability replicas:N`, where commands that never write go:
    /// Redis blocks a connection while a `WAIT` on it waits, and reads
    /// never wait for replicas.
    reads: Option<Link>,
    /// Replica confirmation every write waits for (None: the leader's word).
    durability: Option<Arc<Durability>>,
}

#[derive(Clone)]
enum Link {
    /// A standalone Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterLink),
}

impl Link {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Single(c) => c,
            Self::Cluster(c) => c,
        }
    }
}

/// Commands that never write (the only ones that skip `WAIT`). Scripts
/// count as writes: most of them write, and a `WAIT` after one that did
/// not returns at once.
const READ_ONLY: &[&str] = &[
    "PING",
    "TIME",
    "INFO",
    "CONFIG",
    "CLIENT",
    "SCRIPT",
    "PUBSUB",
    // Messages, not data: nothing for a replica to keep.
    "PUBLISH",
    "SPUBLISH",
    "GET",
    "MGET",
    "EXISTS",
    "TTL",
    "PTTL",
    "HGET",
    "HMGET",
    "HGETALL",
    "HEXISTS",
    "HLEN",
    "SMEMBERS",
    "SISMEMBER",
    "SCARD",
    "ZRANGE",
    "ZCARD",
    "ZSCORE",
    "XRANGE",
    "XREVRANGE",
    "XLEN",
    "XINFO",
    "XPENDING",
    "WAIT",
];

impl ReadOnly {
    /// From the registry's read-only scripts.
    fn of(scripts: &Scripts) -> Self {
        Self {
            scripts: scripts
                .read_only()
                .map(|s| s.get_hash().as_bytes().to_vec())
                .collect(),
            sources: scripts.read_only().map(NamedScript::code).collect(),
        }
    }

    /// How many commands of `pipeline` may write.
    pub fn writers(&self, pipeline: &Pipeline) -> usize {
        pipeline.cmd_iter().filter(|c| self.writes(c)).count()
    }

    /// Whether `cmd` may write (a script is judged by its SHA, or by its
    /// source when sent by `EVAL`).
    pub fn writes(&self, cmd: &Cmd) -> bool {
        let mut args = cmd.args_iter();
        match (args.next(), args.next()) {
            (Some(redis::Arg::Simple(name)), Some(redis::Arg::Simple(sha)))
                if name.eq_ignore_ascii_case(b"EVALSHA") =>
            {
                !self.scripts.contains(sha)
            }
            (Some(redis::Arg::Simple(name)), Some(redis::Arg::Simple(source)))
                if name.eq_ignore_ascii_case(b"EVAL") =>
            {
                !self.sources.iter().any(|s| s.as_bytes() == source)
            }
            (Some(redis::Arg::Simple(name)), _) => !READ_ONLY
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name)),
            _ => true,
        }
    }
}

/// The error of a write the required replicas did not confirm (503
/// `durability_timeout`: it may exist).
fn not_confirmed(detail: String) -> redis::RedisError {
    redis::make_extension_error(DURABILITY_CODE.to_owned(), Some(detail))
}

/// The `WAIT` that confirms a write, sent in one pipeline with it.
///
/// `WAIT` counts the replicas that have *this connection's* writes. Sent on
/// its own after the write's answer, it could go out on another connection
/// (the write's connection dropped and the manager reconnected, or a
/// failover moved the slot to a new primary): a connection that wrote
/// nothing has nothing to wait for, so that `WAIT` would at once confirm a
/// write that may be lost. In one pipeline both go out on one socket, and a
/// connection lost in between fails the call (503: the write may exist).
struct Confirmation {
    /// What must confirm, and its `WAIT`.
    durability: Arc<Durability>,
    /// Where the write goes on a cluster: its slot's primary (any node for
    /// a write with no key, as long as the `WAIT` goes there too).
    route: SingleNodeRoutingInfo,
}

impl Conn {
    /// Where commands that never write go.
    fn read_side(&mut self) -> &mut Link {
        self.reads.as_mut().unwrap_or(&mut self.link)
    }

    /// The `WAIT` that `cmds` need: none without `--durability replicas:N`
    /// or when none of them may write.
    fn confirmation<'c>(&self, mut cmds: impl Iterator<Item = &'c Cmd>) -> Option<Confirmation> {
        let durability = self.durability.as_ref()?;
        let written = cmds.find(|c| durability.read_only.writes(c))?;
        let route = match crate::slot::of_command(written) {
            Some(slot) => SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)),
            None => SingleNodeRoutingInfo::Random,
        };
        Some(Confirmation {
            durability: durability.clone(),
            route,
        })
    }

    /// Sends the caller's commands with the `WAIT` last, on one connection,
    /// and checks the `WAIT`. `count` counts the caller's replies, which are
    /// returned; a command the server refused is the call's error (NOSCRIPT
    /// then reloads the script), whatever the `WAIT` said.
    async fn send_confirmed(
        &mut self,
        mut pipeline: Pipeline,
        offset: usize,
        count: usize,
        confirmation: &Confirmation,
    ) -> RedisResult<Vec<Value>> {
        pipeline.add_command(confirmation.durability.wait.clone());
        let mut values = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(&pipeline, offset, count + 1).await?,
            Link::Cluster(c) => {
                let route = confirmation.route.clone();
                let sent = c
                    .conn
                    .route_pipeline(pipeline.clone(), offset, count + 1, route)
                    .await;
                match sent {
                    // Redirected or refused for now: sent again with its
                    // `WAIT`, to the node named (see `cluster_link`), so the
                    // `WAIT` still counts the replicas of this write.
                    Err(e) => {
                        let writers = confirmation.durability.read_only.writers(&pipeline);
                        c.resend(&pipeline, offset, count + 1, writers, e).await?
                    }
                    sent => sent?,
                }
            }
        };
        let waited = values.pop().ok_or_else(|| {
            redis::RedisError::from((ErrorKind::Client, "no reply to WAIT in the pipeline"))
        })?;
        let refused = values.iter().find_map(|v| match v {
            Value::ServerError(e) => Some(e.clone()),
            _ => None,
        });
        if let Some(refused) = refused {
            return Err(refused.into());
        }
        check_confirmed(waited.extract_error(), confirmation.durability.replicas)?;
        Ok(values)
    }

    /// The `WAIT` on its own, after the commands it confirms: only where
    /// one pipeline cannot carry both (a transaction would wrap the `WAIT`
    /// in its `MULTI … EXEC`).
    async fn confirm_after(&mut self, confirmation: &Confirmation) -> RedisResult<()> {
        let reply = match &mut self.link {
            Link::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(confirmation.route.clone());
                c.conn
                    .route_command(confirmation.durability.wait.clone(), routing)
                    .await
            }
            Link::Single(c) => c.req_packed_command(&confirmation.durability.wait).await,
        };
        check_confirmed(reply, confirmation.durability.replicas)
    }
}

/// Whether a `WAIT` reply confirms the write. A lost connection stays what
/// it is (unreachable); any answer but a count means the node cannot
/// confirm the write, e.g. `ERR WAIT cannot be used with replica instances`
/// from a primary that a failover just turned into a replica. Either way the
/// write may exist: the client retries with its idempotency key.
fn check_confirmed(reply: RedisResult<Value>, replicas: Replicas) -> RedisResult<()> {
    let reply = match reply {
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return Err(e),
        Err(e) => return Err(not_confirmed(format!("WAIT failed: {e}"))),
        Ok(reply) => reply,
    };
    let confirmed = match reply {
        Value::Int(n) => u64::try_from(n).unwrap_or(0),
        other => return Err(not_confirmed(format!("WAIT answered {other:?}"))),
    };
    if confirmed < u64::from(replicas.count) {
        return Err(not_confirmed(format!(
            "{confirmed} of {} replicas confirmed the write within {} ms",
            replicas.count,
            replicas.timeout.as_millis().max(1)
        )));
    }
    Ok(())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Some(confirmation) = self.confirmation(std::iter::once(cmd)) else {
                return self.read_side().as_dyn().req_packed_command(cmd).await;
            };
            let mut pipeline = Pipeline::with_capacity(2);
            pipeline.add_command(cmd.clone());
            self.send_confirmed(pipeline, 0, 1, &confirmation)
                .await?
                .pop()
                .ok_or_else(|| (ErrorKind::Client, "no reply in the pipeline").into())
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Some(confirmation) = self.confirmation(pipeline.cmd_iter()) else {
                return self
                    .read_side()
                    .as_dyn()
                    .req_packed_commands(pipeline, offset, count)
                    .await;
            };
            if !pipeline.is_transaction() {
                // Sent again on a cluster only with one write in it (see
                // `ClusterLink::resend`).
                return self
                    .send_confirmed(pipeline.clone(), offset, count, &confirmation)
                    .await;
            }
            let values = self
                .link
                .as_dyn()
                .req_packed_commands(pipeline, offset, count)
                .await?;
            self.confirm_after(&confirmation).await?;
            Ok(values)
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.conn.get_db(),
        }
    }
}

/// The shared connections: round-robin managers for one Redis, or one
/// cluster connection, opened on first use (a cluster that cannot be reached
/// yet is not an error at start: requests answer 503 until it can).
pub enum Connections {
    /// Standalone Redis.
    Single {
        /// Lazily connecting, self-reconnecting managers.
        managers: Vec<ConnectionManager>,
        /// Round-robin position.
        next: AtomicUsize,
    },
    /// Redis Cluster.
    Cluster {
        /// Seed nodes and timeouts (boxed: it is large and used once).
        client: Box<ClusterClient>,
        /// The connection, once one could be made; it then follows the
        /// cluster's topology (MOVED/ASK, failovers) by itself.
        connection: OnceCell<ClusterConnection>,
    },
}

impl Connections {
    /// `count` lazily connecting managers for `redis_url`: an unreachable
    /// Redis is not an error here; requests fail with 503 until it answers.
    /// Replies may take `response_timeout` (see [`response_timeout`]).
    pub fn new(redis_url: &str, count: usize, response_timeout: Duration) -> RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let managers = (0..count.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<RedisResult<_>>()?;
        Ok(Self::Single {
            managers,
            next: AtomicUsize::new(0),
        })
    }

    /// A Redis Cluster reached through any of `seed_urls`; replies may take
    /// `response_timeout`. redis-rs's own retries are off: it would send
    /// again a write that may have run; [`ClusterLink`] decides instead.
    pub fn cluster(seed_urls: &[&str], response_timeout: Duration) -> RedisResult<Self> {
        let client = cluster_client_builder(seed_urls, response_timeout)
            .retries(0)
            .build()?;
        Ok(Self::Cluster {
            client: Box::new(client),
            connection: OnceCell::new(),
        })
    }

    /// A connection; `read_only` tells a cluster link which requests it may
    /// send again.
    async fn link(&self, read_only: &Arc<ReadOnly>) -> RedisResult<Link> {
        Ok(match self {
            Self::Single { managers, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % managers.len();
                Link::Single(managers[i].clone())
            }
            Self::Cluster { client, connection } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(|conn| Link::Cluster(ClusterLink::new(conn, read_only.clone())))?,
        })
    }

    /// How many shared connections there are (a cluster connection counts
    /// as one).
    pub fn len(&self) -> usize {
        match self {
            Self::Single { managers, .. } => managers.len(),
            Self::Cluster { .. } => 1,
        }
    }

    /// Never true: there is always at least one connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Connections, scripts, wake-ups and shutdown signal, shared by every operation.
#[derive(Clone)]
pub struct Store {
    connections: Arc<Connections>,
    scripts: Arc<Scripts>,
    wakeups: Wakeups,
    shutdown: watch::Receiver<bool>,
    /// `--strict`: refuse a Redis that may evict keys.
    strict: bool,
    /// Which commands never write.
    read_only: Arc<ReadOnly>,
    /// `--durability replicas:N`: what every write waits for.
    durability: Option<Arc<Durability>>,
    /// With `--durability replicas:N`: connections of their own for
    /// commands that never write (see [`Conn`]).
    reads: Option<Arc<Connections>>,
}

impl Store {
    /// Wraps the connections, the script registry, the long-poll wake-ups
    /// and the shutdown signal (which ends waiting calls early).
    pub fn new(
        connections: Arc<Connections>,
        scripts: Arc<Scripts>,
        wakeups: Wakeups,
        shutdown: watch::Receiver<bool>,
        strict: bool,
    ) -> Self {
        let read_only = Arc::new(ReadOnly::of(&scripts));
        Self {
            connections,
            scripts,
            read_only,
            wakeups,
            shutdown,
            strict,
            durability: None,
            reads: None,
        }
    }

    /// Every write waits for `replicas` (None: the leader's answer is
    /// enough); commands that never write then go on `reads`, which
    /// connect to the same Redis.
    #[must_use]
    pub fn with_durability(mut self, replicas: Option<(Replicas, Connections)>) -> Self {
        let Some((replicas, reads)) = replicas else {
            return self;
        };
        self.reads = Some(Arc::new(reads));
        let timeout_ms = u64::try_from(replicas.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas.count).arg(timeout_ms.max(1));
        self.durability = Some(Arc::new(Durability {
            replicas,
            wait,
            read_only: self.read_only.clone(),
        }));
        self
    }

    /// A shared connection; on a cluster, the first call connects.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        let reads = match &self.reads {
            Some(reads) => Some(reads.link(&self.read_only).await?),
            None => None,
        };
        Ok(Conn {
            link: self.connections.link(&self.read_only).await?,
            reads,
            durability: self.durability.clone(),
        })
    }

    /// The script registry.
    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Local wake-ups for waiting calls.
    pub(crate) fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// A receiver that turns true when the service shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Wakes calls waiting on `channel` on every sidecar.
    pub(crate) async fn wake(&self, conn: &mut Conn, channel: &str) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(0)
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }

    /// How many shared Redis connections there are.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Redis's `maxmemory-policy` when it is not `noeviction` (eviction would
    /// silently delete streams, leases and idempotency records). None when
    /// it is safe or Redis does not let us read it (managed services).
    pub async fn eviction_policy(&self) -> Option<String> {
        let mut conn = self.conn().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.get(1).filter(|p| *p != "noeviction").cloned()
    }

    /// Readiness: Redis answers PING, holds every script, takes writes (it
    /// is not a read-only replica, its used memory is not over `maxmemory`);
    /// with `--strict`, also that it never evicts keys.
    pub async fn check_ready(&self) -> Result<()> {
        let answering = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            self.scripts.ensure_loaded(&mut conn).await?;
            Ok::<_, Error>(conn)
        }
        .await;
        // `redis_up` means "Redis answers": a full or read-only Redis is up
        // (and says why it refuses writes in the readiness answer).
        metrics::gauge!(crate::telemetry::REDIS_UP).set(if answering.is_ok() { 1.0 } else { 0.0 });
        let mut conn = answering?;
        Self::check_slots_served(&mut conn).await?;
        self.check_writable(&mut conn).await?;
        if self.strict
            && let Some(policy) = self.eviction_policy().await
        {
            return Err(Error::EvictingRedis(policy));
        }
        Ok(())
    }

    /// On a Redis Cluster: every primary answers and reports
    /// `cluster_state:ok`, i.e. every slot has a live primary. Between a
    /// primary's death and its replica's promotion this fails (the dead
    /// primary does not answer, then the others report `fail`), so
    /// `/readyz` answers 503 while some slot has no primary.
    async fn check_slots_served(conn: &mut Conn) -> Result<()> {
        // A read: on the connections of reads, never behind a write's
        // `WAIT` (a dozen of them, with a replica gone, outlasted the
        // reply timeout and made a serving sidecar unready).
        let Link::Cluster(cluster) = conn.read_side() else {
            return Ok(());
        };
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let reply = cluster.conn.route_command(info, routing).await?;
        let reports = info_reports(&reply);
        if reports.is_empty() || reports.iter().any(|r| !r.contains("cluster_state:ok")) {
            return Err(Error::Unavailable {
                kind: RedisOutage::ClusterDown,
                source: None,
            });
        }
        Ok(())
    }

    /// Whether Redis would take a write now, from `INFO`: a replica refuses
    /// every write, and with `noeviction` a Redis over `maxmemory` refuses
    /// the ones that add data, which includes every publish. (`INFO` is the
    /// same check Redis makes before a command; a Redis that does not let us
    /// read it is not held against readiness.)
    async fn check_writable(&self, conn: &mut Conn) -> Result<()> {
        let Ok(reply) = redis::cmd("INFO").query_async::<Value>(conn).await else {
            return Ok(());
        };
        // A cluster answers with one report per primary.
        for report in info_reports(&reply) {
            let state = WriteState::parse(&report);
            if state.replica {
                return Err(Error::Unavailable {
                    kind: RedisOutage::ReadOnly,
                    source: None,
                });
            }
            if state.out_of_memory() {
                tracing::warn!(
                    used_memory = state.used_memory,
                    not_counted = state.not_counted,
                    maxmemory = state.maxmemory,
                    "redis is out of memory: writes are refused"
                );
                return Err(Error::Unavailable {
                    kind: RedisOutage::OutOfMemory,
                    source: None,
                });
            }
        }
        Ok(())
    }
}

/// The text reports of an `INFO` reply: one from a single Redis, one per
/// node (keyed by address) from a cluster.
fn info_reports(reply: &Value) -> Vec<String> {
    match reply {
        Value::Map(nodes) => nodes
            .iter()
            .filter_map(|(_, report)| redis::from_redis_value_ref::<String>(report).ok())
            .collect(),
        other => redis::from_redis_value_ref::<String>(other)
            .ok()
            .into_iter()
            .collect(),
    }
}

/// What `INFO` tells about whether Redis takes writes.
#[derive(Debug, Default, PartialEq, Eq)]
struct WriteState {
    used_memory: u64,
    not_counted: u64,
    maxmemory: u64,
    replica: bool,
}

impl WriteState {
    fn parse(report: &str) -> Self {
        let mut state = Self::default();
        for line in report.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let number = || value.parse().unwrap_or(0);
            match name {
                "used_memory" => state.used_memory = number(),
                "mem_not_counted_for_evict" => state.not_counted = number(),
                "maxmemory" => state.maxmemory = number(),
                "role" => state.replica = value == "slave",
                _ => {}
            }
        }
        state
    }

    /// Redis's own test (`getMaxmemoryState`): memory used, less replication
    /// and AOF buffers, above a non-zero `maxmemory`.
    fn out_of_memory(&self) -> bool {
        self.maxmemory > 0 && self.used_memory.saturating_sub(self.not_counted) > self.maxmemory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_and_role() {
        let report = "# Memory\r\nused_memory:2000\r\nmaxmemory:1000\r\nmem_not_counted_for_evict:500\r\n# Replication\r\nrole:master\r\n";
        let state = WriteState::parse(report);
        assert_eq!(
            state,
            WriteState {
                used_memory: 2000,
                not_counted: 500,
                maxmemory: 1000,
                replica: false,
            }
        );
        assert!(state.out_of_memory());
        let under = WriteState {
            not_counted: 1000,
            ..state
        };
        assert!(!under.out_of_memory(), "buffers do not count");
        let unlimited = WriteState::parse("used_memory:5\r\nmaxmemory:0\r\n");
        assert!(!unlimited.out_of_memory(), "no maxmemory, no limit");
        assert!(WriteState::parse("role:slave\r\n").replica);
    }

    #[test]
    fn cluster_info_is_one_report_per_node() {
        let reply = Value::Map(vec![
            (
                Value::BulkString(b"127.0.0.1:7000".to_vec()),
                Value::BulkString(b"role:master".to_vec()),
            ),
            (
                Value::BulkString(b"127.0.0.1:7001".to_vec()),
                Value::VerbatimString {
                    format: redis::VerbatimFormat::Text,
                    text: "role:slave".into(),
                },
            ),
        ]);
        let reports = info_reports(&reply);
        assert_eq!(reports.len(), 2);
        assert!(WriteState::parse(&reports[1]).replica);
    }
}

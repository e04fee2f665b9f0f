//! Command-line flags and `STREAMCAR_*` environment variables, parsed and
//! validated once at start into a [`Config`]. Nothing else reads the
//! environment; tests build a [`Config`] directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options shared by `serve` and `dev`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// TCP address to serve the HTTP API on (keep it on loopback).
    #[arg(long, env = "STREAMCAR_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// Also serve the API on this Unix socket (mode 0600; a stale file is replaced).
    #[arg(long, env = "STREAMCAR_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Largest accepted request body, e.g. `1048576`, `512KiB`, `1MiB`.
    #[arg(long, env = "STREAMCAR_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,

    /// How long a graceful shutdown may take before in-flight requests are cut, e.g. `10s`.
    #[arg(long, env = "STREAMCAR_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How often retention passes run (one sidecar at a time), e.g. `10s`.
    #[arg(long, env = "STREAMCAR_RETENTION_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Longest a waiting long-poll goes without re-checking Redis when no
    /// wake-up arrives (a safety net under pub/sub), e.g. `1s`.
    #[arg(long, env = "STREAMCAR_WAKE_RECHECK", default_value = "1s", value_parser = parse_duration)]
    pub wake_recheck: Duration,

    /// Outbound queue of one realtime-channel connection (SSE or WebSocket);
    /// a subscriber that falls further behind is disconnected (slow_consumer).
    #[arg(long, env = "STREAMCAR_CHANNEL_QUEUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub channel_queue_bytes: usize,

    /// Longest a write to a client may make no progress before its
    /// connection is closed (a subscriber that stops reading, a dead peer),
    /// e.g. `30s`.
    #[arg(long, env = "STREAMCAR_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Consumers that own nothing are forgotten after this long idle, e.g. `60m`.
    #[arg(long, env = "STREAMCAR_CONSUMER_IDLE", default_value = "60m", value_parser = parse_duration)]
    pub consumer_idle: Duration,

    /// How often group gauges (lag, pending, …) are refreshed, e.g. `15s`.
    #[arg(long, env = "STREAMCAR_METRICS_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub metrics_interval: Duration,

    /// File holding the bearer token every /v1 request must present (unset = no auth).
    #[arg(long, env = "STREAMCAR_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Shared multiplexed Redis connections (each pipelines many requests;
    /// fewer connections mean larger pipelines, so fewer system calls on
    /// both sides).
    #[arg(long, env = "STREAMCAR_REDIS_CONNECTIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_connections: u16,

    /// Threads serving requests. 1 (the default) runs everything on one
    /// thread, which suits a sidecar beside one app instance and spends the
    /// least CPU per request; 0 = one per available CPU.
    #[arg(long, env = "STREAMCAR_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub worker_threads: u16,

    /// Refuse a Redis whose maxmemory-policy is not noeviction (at start and in /readyz).
    #[arg(long, env = "STREAMCAR_STRICT")]
    pub strict: bool,

    /// Push subscriptions (YAML or JSON): the sidecar POSTs each message of
    /// these groups to the app's URL.
    #[arg(long, env = "STREAMCAR_SUBSCRIPTIONS")]
    pub subscriptions: Option<PathBuf>,

    /// `leader` (a write is done when the Redis primary has it) or
    /// `replicas:N` (every write also waits until N replicas have it).
    #[arg(long, env = "STREAMCAR_DURABILITY", default_value = "leader", value_parser = parse_durability)]
    pub durability: DurabilityMode,

    /// With `--durability replicas:N`: how long a write waits for the replicas, e.g. `1s` (1ms to 60s).
    #[arg(long, env = "STREAMCAR_DURABILITY_TIMEOUT", default_value = "1s", value_parser = parse_durability_timeout)]
    pub durability_timeout: Duration,

    /// Export OpenTelemetry spans (publish, deliver, push, ack, nack, emit,
    /// join) over OTLP/HTTP protobuf to this collector, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is appended unless given).
    /// Unset = no spans are made.
    #[arg(long, env = "STREAMCAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "STREAMCAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The client edge (`--edge-listen` and its JWT settings).
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// JWT signature algorithm of edge tokens (`--jwt-alg`). The algorithm comes
/// from here, never from a token's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum JwtAlg {
    /// HMAC-SHA256 with a shared secret (the key file holds the secret).
    #[default]
    #[value(name = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256 (the key file holds the public key, PEM).
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256 (the key file holds the public key, PEM).
    #[value(name = "ES256")]
    Es256,
}

/// Flags of the client edge: a second listener, meant to face browsers and
/// devices, that serves only `GET /v1/edge/ws` and `GET /v1/edge/events`
/// to holders of a short-lived JWT.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Serve the client edge on this address (off when unset; never the API's address).
    #[arg(long, env = "STREAMCAR_EDGE_LISTEN")]
    pub edge_listen: Option<SocketAddr>,

    /// Key that verifies edge tokens: the shared secret (HS256, at least 32
    /// bytes) or a public key PEM (RS256, ES256). Re-read on SIGHUP.
    #[arg(long, env = "STREAMCAR_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// Signature algorithm every edge token must use.
    #[arg(long, env = "STREAMCAR_JWT_ALG", value_enum, default_value_t = JwtAlg::Hs256)]
    pub jwt_alg: JwtAlg,

    /// Required `aud` of edge tokens (unset: not checked).
    #[arg(long, env = "STREAMCAR_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of edge tokens (unset: not checked).
    #[arg(long, env = "STREAMCAR_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Origins allowed to open edge connections, comma-separated, e.g.
    /// `https://app.example.com` (unset: any; requests without Origin,
    /// i.e. not from a browser, are always allowed).
    #[arg(long, env = "STREAMCAR_EDGE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub edge_allowed_origins: Vec<String>,

    /// Most open edge connections of this sidecar (more: 429).
    #[arg(long, env = "STREAMCAR_EDGE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub edge_max_connections: u32,

    /// Most open edge connections of one user (`sub`) on this sidecar (more: 429).
    #[arg(long, env = "STREAMCAR_EDGE_MAX_CONNECTIONS_PER_USER", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub edge_max_connections_per_user: u32,

    /// Largest WebSocket message an edge client may send, e.g. `64KiB`.
    #[arg(long, env = "STREAMCAR_EDGE_MAX_FRAME", default_value = "64KiB", value_parser = parse_size)]
    pub edge_max_frame: usize,

    /// Publishes per second one edge connection may make (also its burst).
    #[arg(long, env = "STREAMCAR_EDGE_PUBLISH_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub edge_publish_rate: u32,

    /// How long a sidecar's presence entries outlive its last heartbeat
    /// (heartbeats go every third of it), e.g. `30s`.
    #[arg(long, env = "STREAMCAR_EDGE_PRESENCE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub edge_presence_ttl: Duration,
}

/// The client edge, validated (see [`EdgeArgs`]).
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Where the edge listens.
    pub listen: SocketAddr,
    /// The verification key's file.
    pub key_file: PathBuf,
    /// The one accepted algorithm.
    pub alg: JwtAlg,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Allowed browser origins (empty: any).
    pub allowed_origins: Vec<String>,
    /// Most connections of the sidecar.
    pub max_connections: usize,
    /// Most connections of one user.
    pub max_connections_per_user: usize,
    /// Largest client message in bytes.
    pub max_frame: usize,
    /// Publishes per second per connection.
    pub publish_rate: u32,
    /// Presence entry lifetime without a heartbeat.
    pub presence_ttl: Duration,
}

impl EdgeConfig {
    /// Defaults around a listen address and key file (tests, embedding).
    pub fn new(listen: SocketAddr, key_file: PathBuf, alg: JwtAlg) -> Self {
        Self {
            listen,
            key_file,
            alg,
            audience: None,
            issuer: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_connections_per_user: 16,
            max_frame: 64 << 10,
            publish_rate: 20,
            presence_ttl: Duration::from_secs(30),
        }
    }
}

impl EdgeArgs {
    /// The validated edge config; None when `--edge-listen` is unset.
    pub fn config(&self, api_listen: SocketAddr) -> Result<Option<EdgeConfig>, String> {
        let Some(listen) = self.edge_listen else {
            return Ok(None);
        };
        if listen == api_listen && listen.port() != 0 {
            return Err(
                "--edge-listen must differ from --listen (the API never faces clients)".into(),
            );
        }
        let key_file = self
            .jwt_key_file
            .clone()
            .ok_or("--edge-listen needs --jwt-key-file (the key that verifies client tokens)")?;
        if self.edge_presence_ttl < Duration::from_secs(1) {
            return Err("--edge-presence-ttl must be at least 1s".into());
        }
        for origin in &self.edge_allowed_origins {
            let origin = origin.trim();
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!(
                    "--edge-allowed-origins: '{origin}' is not an origin such as https://app.example.com (or *)"
                ));
            }
        }
        Ok(Some(EdgeConfig {
            listen,
            key_file,
            alg: self.jwt_alg,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            allowed_origins: self
                .edge_allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            max_connections: self.edge_max_connections as usize,
            max_connections_per_user: self.edge_max_connections_per_user as usize,
            max_frame: self.edge_max_frame,
            publish_rate: self.edge_publish_rate,
            presence_ttl: self.edge_presence_ttl,
        }))
    }
}

impl ServerArgs {
    /// The async runtime `--worker-threads` asks for: a current-thread
    /// runtime for 1 (no cross-thread wake-ups or work stealing), else a
    /// multi-thread one.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            0 => tokio::runtime::Builder::new_multi_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(usize::from(n));
                b
            }
        };
        builder.enable_all().build()
    }
}

/// Everything the running service needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis to serve against.
    pub redis_url: String,
    /// TCP listen address.
    pub listen: SocketAddr,
    /// Optional Unix socket path.
    pub socket: Option<PathBuf>,
    /// Request body limit in bytes.
    pub max_body: usize,
    /// Graceful shutdown budget.
    pub drain_timeout: Duration,
    /// Shared Redis connections.
    pub redis_connections: usize,
    /// Time between retention passes.
    pub retention_interval: Duration,
    /// Idle time after which a consumer that owns nothing is forgotten.
    pub consumer_idle: Duration,
    /// Longest a waiting long-poll goes without re-checking Redis.
    pub wake_recheck: Duration,
    /// Time between group gauge refreshes.
    pub metrics_interval: Duration,
    /// Bearer token required on /v1 (None = open).
    pub api_token: Option<String>,
    /// Refuse a Redis that may evict keys.
    pub strict: bool,
    /// Replica confirmation every write waits for (None: the leader's word).
    pub durability: Option<crate::store::Replicas>,
    /// `redis_url` is a comma-separated list of Redis Cluster seed nodes.
    pub redis_cluster: bool,
    /// Push subscriptions (`--subscriptions`), checked.
    pub subscriptions: Vec<crate::push::Subscription>,
    /// OTLP/HTTP collector to export spans to (`--otlp-endpoint`); None = off.
    pub otlp_endpoint: Option<String>,
    /// Outbound queue bound of one realtime-channel connection, in bytes.
    pub channel_queue_bytes: usize,
    /// The client edge (None: off).
    pub edge: Option<EdgeConfig>,
    /// Longest a write to a client may stall before the connection is closed.
    pub write_timeout: Duration,
}

impl Config {
    /// The Redis URLs: the one Redis, or the cluster's seed nodes.
    pub fn redis_urls(&self) -> Vec<&str> {
        if self.redis_cluster {
            self.redis_url.split(',').map(str::trim).collect()
        } else {
            vec![self.redis_url.as_str()]
        }
    }

    /// Builds a config from shared server flags and a Redis URL, reading
    /// the API token file if one is given.
    pub fn new(redis_url: String, args: &ServerArgs) -> Result<Self, String> {
        let api_token = match &args.api_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Self {
            redis_url,
            listen: args.listen,
            socket: args.socket.clone(),
            max_body: args.max_body,
            drain_timeout: args.drain_timeout,
            redis_connections: usize::from(args.redis_connections),
            retention_interval: args.retention_interval,
            consumer_idle: args.consumer_idle,
            wake_recheck: args.wake_recheck,
            metrics_interval: args.metrics_interval,
            api_token,
            strict: args.strict,
            durability: match args.durability {
                DurabilityMode::Leader => None,
                DurabilityMode::Replicas(count) => Some(crate::store::Replicas {
                    count,
                    timeout: args.durability_timeout,
                }),
            },
            redis_cluster: false,
            subscriptions: match &args.subscriptions {
                Some(path) => crate::push::load(path)?,
                None => Vec::new(),
            },
            channel_queue_bytes: args.channel_queue_bytes,
            edge: args.edge.config(args.listen)?,
            write_timeout: args.write_timeout,
            otlp_endpoint: match &args.otlp_endpoint {
                Some(url) => Some(
                    crate::traces::traces_url(url)
                        .map(|_| url.clone())
                        .map_err(|e| format!("--otlp-endpoint {url}: {e}"))?,
                ),
                None => None,
            },
        })
    }

    /// Defaults for tests and embedding: loopback on a free port.
    pub fn for_redis(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket: None,
            max_body: 1 << 20,
            drain_timeout: Duration::from_secs(10),
            redis_connections: 2,
            retention_interval: Duration::from_secs(10),
            consumer_idle: Duration::from_secs(3600),
            wake_recheck: crate::wake::SAFETY_RECHECK,
            metrics_interval: Duration::from_secs(15),
            api_token: None,
            strict: false,
            durability: None,
            redis_cluster: false,
            subscriptions: Vec::new(),
            channel_queue_bytes: 1 << 20,
            edge: None,
            write_timeout: Duration::from_secs(30),
            otlp_endpoint: None,
        }
    }
}

/// Reads a bearer token file: surrounding whitespace is ignored, and the
/// token must be 16 to 4096 visible ASCII characters.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --api-token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--api-token-file {} must hold one token of 16 to 4096 visible ASCII characters",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Parses a byte size: a plain number of bytes or one with `KiB`/`MiB` suffix.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 1048576, 512KiB or 1MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" | "m" => 1 << 20,
        other => return Err(format!("unknown size unit '{other}' (use B, KiB or MiB)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes < 1024 {
        return Err(format!("'{s}' is below the 1KiB minimum"));
    }
    Ok(bytes)
}

/// When a write counts as done (`--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityMode {
    /// When the Redis primary has it.
    Leader,
    /// When the primary and this many replicas have it.
    Replicas(u32),
}

/// Parses `--durability`: `leader` or `replicas:N` (N ≥ 1).
pub fn parse_durability(s: &str) -> Result<DurabilityMode, String> {
    match s.trim() {
        "leader" => Ok(DurabilityMode::Leader),
        other => other
            .strip_prefix("replicas:")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .map(DurabilityMode::Replicas)
            .ok_or_else(|| format!("'{s}' is not leader or replicas:N (N ≥ 1)")),
    }
}

/// Parses a duration: a number with unit `ms`, `s` or `m` (plain number = ms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        other => Err(format!("unknown duration unit '{other}' (use ms, s or m)")),
    }
}

/// The longest `--durability-timeout`: a write's `WAIT` holds its Redis
/// connection (and every request pipelined behind it) that long, and the
/// connection's response timeout, which is how fast a hung Redis is noticed,
/// grows with it.
const MAX_DURABILITY_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses `--durability-timeout`: a duration from 1 ms to 60 s.
pub fn parse_durability_timeout(s: &str) -> Result<Duration, String> {
    let timeout = parse_duration(s)?;
    if timeout.is_zero() || timeout > MAX_DURABILITY_TIMEOUT {
        return Err(format!("'{s}' is out of range: use 1ms to 60s"));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_values() {
        assert_eq!(parse_durability("leader"), Ok(DurabilityMode::Leader));
        assert_eq!(
            parse_durability("replicas:2"),
            Ok(DurabilityMode::Replicas(2))
        );
        for bad in [
            "",
            "replicas:0",
            "replicas:",
            "replicas:x",
            "followers:1",
            "replicas:-1",
        ] {
            assert!(parse_durability(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12").is_err());
        assert!(parse_size("1GiB").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_millis(300)));
        assert!(parse_duration("1h").is_err());
    }
}

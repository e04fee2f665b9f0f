//! The domain error: what an operation on topics, groups or coordination
//! state can fail with, each case with a stable machine-readable `code`.
//!
//! This module knows nothing about HTTP: [`crate::http::problem`] renders an
//! [`Error`] as an RFC 9457 `application/problem+json` response (status,
//! `Retry-After`, `RateLimit-*`). Redis failures are sorted here once, in
//! `From<redis::RedisError>`: the transient ones (unreachable, out of memory,
//! busy, loading, read-only, cluster reconfiguring) become
//! [`Error::Unavailable`] with a [`RedisOutage`] kind, everything else is an
//! internal error that keeps the Redis error as its source. Every Redis error
//! is counted in [`REDIS_ERRORS`] by kind.

use std::fmt;
use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Redis errors seen by the sidecar, by [`RedisOutage`] kind (or `other`).
///
/// The name lives here rather than in [`crate::telemetry`] because the one
/// place that counts it is the Redis error conversion below.
pub const REDIS_ERRORS: &str = "streamcar_redis_errors_total";

/// Describes the metrics of this module (call once the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Redis errors seen by the sidecar, by kind: unavailable, out_of_memory, busy, loading, readonly, cluster_down, persistence, other."
    );
}

/// Quota state reported in `RateLimit-Limit/Remaining/Reset` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The limit (burst or backlog size).
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Until the limit is fully available again.
    pub reset: Duration,
}

/// What kind of thing was not found; each kind answers its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFoundKind {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A reservation pool.
    Pool,
    /// A sequence checkpoint.
    Checkpoint,
    /// A consumer-side idempotency key (never claimed, or expired).
    IdempotencyKey,
    /// A dead letter, by its message id.
    DeadLetter,
    /// A fan-in join.
    Join,
    /// A part of a join.
    JoinPart,
}

impl NotFoundKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [Self; 8] = [
        Self::Topic,
        Self::Group,
        Self::Pool,
        Self::Checkpoint,
        Self::IdempotencyKey,
        Self::DeadLetter,
        Self::Join,
        Self::JoinPart,
    ];

    /// The stable code, e.g. `topic_not_found`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Topic => "topic_not_found",
            Self::Group => "group_not_found",
            Self::Pool => "pool_not_found",
            Self::Checkpoint => "checkpoint_not_found",
            Self::IdempotencyKey => "idempotency_key_not_found",
            Self::DeadLetter => "dead_letter_not_found",
            Self::Join => "join_not_found",
            Self::JoinPart => "part_not_found",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Group => "group",
            Self::Pool => "pool",
            Self::Checkpoint => "checkpoint",
            Self::IdempotencyKey => "idempotency key",
            Self::DeadLetter => "dead letter",
            Self::Join => "join",
            Self::JoinPart => "part",
        }
    }
}

impl fmt::Display for NotFoundKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Why Redis cannot serve a request right now. Every kind is transient: the
/// same request may succeed later without any change on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOutage {
    /// No connection: refused, dropped, timed out, or authentication failed.
    Unreachable,
    /// `OOM`: used memory is over `maxmemory` and the policy is `noeviction`.
    OutOfMemory,
    /// `BUSY`: a script or function has run past `busy-reply-threshold`.
    Busy,
    /// `LOADING`: Redis is loading its dataset after a start.
    Loading,
    /// `READONLY` / `MASTERDOWN`: this node is a replica (a failover moved
    /// the primary, or the URL points at a replica).
    ReadOnly,
    /// `CLUSTERDOWN` / `TRYAGAIN` or no node for a slot: the cluster is
    /// failing over or resharding.
    ClusterDown,
    /// `MISCONF`: Redis refuses writes because it cannot persist them (an
    /// AOF or RDB write failed, e.g. a full disk).
    Persistence,
    /// `--durability replicas:N`: fewer than N replicas confirmed a write
    /// within the timeout. The write may exist.
    Durability,
}

impl RedisOutage {
    /// Every kind, for documentation and tests.
    pub const ALL: [Self; 8] = [
        Self::Unreachable,
        Self::OutOfMemory,
        Self::Busy,
        Self::Loading,
        Self::ReadOnly,
        Self::ClusterDown,
        Self::Persistence,
        Self::Durability,
    ];

    /// The stable code, e.g. `redis_out_of_memory`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Unreachable => "redis_unavailable",
            Self::OutOfMemory => "redis_out_of_memory",
            Self::Busy => "redis_busy",
            Self::Loading => "redis_loading",
            Self::ReadOnly => "redis_readonly",
            Self::ClusterDown => "redis_cluster_down",
            Self::Persistence => "redis_persistence_failed",
            Self::Durability => "durability_timeout",
        }
    }

    /// The `kind` label of [`REDIS_ERRORS`].
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unavailable",
            Self::OutOfMemory => "out_of_memory",
            Self::Busy => "busy",
            Self::Loading => "loading",
            Self::ReadOnly => "readonly",
            Self::ClusterDown => "cluster_down",
            Self::Persistence => "persistence",
            Self::Durability => "durability",
        }
    }

    /// What the client is told (no Redis internals).
    pub fn public_detail(self) -> &'static str {
        match self {
            Self::Unreachable => {
                "Redis is unreachable or not ready; retry after the Retry-After delay"
            }
            Self::OutOfMemory => {
                "Redis is out of memory (maxmemory reached, noeviction) and refuses writes; retry after the Retry-After delay, once consumers catch up or an operator frees memory"
            }
            Self::Busy => {
                "Redis is busy running a long script or function; retry after the Retry-After delay"
            }
            Self::Loading => {
                "Redis is loading its dataset after a restart; retry after the Retry-After delay"
            }
            Self::ReadOnly => {
                "Redis answered as a read-only replica (a failover may be in progress); retry after the Retry-After delay"
            }
            Self::ClusterDown => {
                "the Redis Cluster is failing over or resharding; retry after the Retry-After delay"
            }
            Self::Persistence => {
                "Redis refuses writes because it cannot persist them (MISCONF); retry after the Retry-After delay"
            }
            Self::Durability => {
                "the write was not confirmed by the required replicas in time; it may exist: retry with the same idempotency key after the Retry-After delay"
            }
        }
    }

    /// The outage a Redis error stands for, if it is a transient one.
    pub fn of(e: &redis::RedisError) -> Option<Self> {
        use redis::{ErrorKind, ServerErrorKind};
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::AuthenticationFailed
            || reply_cut_off(e)
        {
            return Some(Self::Unreachable);
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::BusyLoading) => return Some(Self::Loading),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown) => {
                return Some(Self::ReadOnly);
            }
            // MOVED/ASK reach us only when redis-rs ran out of redirects
            // while a failover or resharding moves slots.
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            )
            | ErrorKind::ClusterConnectionNotFound => return Some(Self::ClusterDown),
            _ => {}
        }
        // redis-rs has no kinds for these: match the server's error code,
        // exactly (`BUSYGROUP` and `BUSYKEY` are other, permanent errors).
        match server_code(e).as_deref() {
            Some("OOM") => Some(Self::OutOfMemory),
            Some("BUSY") => Some(Self::Busy),
            Some("MISCONF") => Some(Self::Persistence),
            Some(crate::store::DURABILITY_CODE) => Some(Self::Durability),
            _ => None,
        }
    }
}

/// Whether `e` is a reply its connection cut off: redis-rs's parser meets
/// the end of the stream inside a reply and reports a parse error
/// (`Unexpected end of input`), not a dropped connection. The command may
/// have run, as with any lost connection: an outage (503, retry), not an
/// unexpected answer (500). A reply of the wrong shape (a conversion error,
/// also of kind `Parse`) stays internal.
fn reply_cut_off(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Parse
        && e.detail().is_some_and(|d| {
            // The reply parser's own report (a conversion error's text
            // quotes the value, which could hold these words).
            d.starts_with("Parse error at") && d.contains("Unexpected end of input")
        })
}

impl fmt::Display for RedisOutage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The server's error code (`OOM`, `BUSY`, …) of a reply error, including
/// one that failed a pipeline (redis-rs reports those separately).
fn server_code(e: &redis::RedisError) -> Option<String> {
    if let Some(code) = e.code() {
        return Some(code.to_owned());
    }
    e.clone()
        .into_server_errors()
        .and_then(|errors| errors.first().map(|(_, error)| error.code().to_owned()))
}

impl Error {
    /// The same failure for another caller of a call many callers shared
    /// (a group commit): transient outages keep their kind (503 and its
    /// code), not-found and conflicts their code, anything else becomes an
    /// internal error with the text.
    pub fn for_each_caller(&self) -> Self {
        match self {
            Self::Unavailable { kind, .. } => Self::Unavailable {
                kind: *kind,
                source: None,
            },
            Self::NotFound { kind, name } => Self::NotFound {
                kind: *kind,
                name: name.clone(),
            },
            Self::Conflict { code, detail } => Self::Conflict {
                code,
                detail: detail.clone(),
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Everything an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, wrong type, unknown field, bad name.
    #[error("{detail}")]
    BadRequest {
        /// Stable code, e.g. `invalid_body`, `invalid_name`.
        code: &'static str,
        /// What is wrong, for a human.
        detail: String,
        /// The offending field (JSON path or path parameter), when known.
        field: Option<String>,
    },
    /// The addressed resource does not exist.
    #[error("{kind} '{name}' does not exist")]
    NotFound {
        /// What kind of thing.
        kind: NotFoundKind,
        /// Its name.
        name: String,
    },
    /// The request conflicts with current state (stale receipt, lost lease…).
    #[error("{detail}")]
    Conflict {
        /// Stable code, e.g. `lease_lost`.
        code: &'static str,
        /// What happened.
        detail: String,
    },
    /// What the request would store is over a size bound (a join's
    /// results together past `--max-body`).
    #[error("{detail}")]
    TooLarge {
        /// Stable code, e.g. `join_too_large`.
        code: &'static str,
        /// What is too large.
        detail: String,
    },
    /// The caller did not present the configured API token.
    #[error("this API needs Authorization: Bearer <token>")]
    Unauthorized,
    /// A client credential (an edge JWT) is missing or refused.
    #[error("{detail}")]
    Unauthenticated {
        /// Stable code, e.g. `token_expired`, `invalid_signature`.
        code: &'static str,
        /// Why, for a human (never the token itself).
        detail: String,
    },
    /// The credential is valid but does not grant this (a channel outside
    /// the token's `channels`, an Origin not allowed).
    #[error("{detail}")]
    Forbidden {
        /// Stable code, e.g. `forbidden`, `origin_not_allowed`.
        code: &'static str,
        /// What is not granted.
        detail: String,
    },
    /// Over quota, backlog full or pool full: try again later. Nothing dropped.
    #[error("{detail}")]
    TooManyRequests {
        /// Stable code, e.g. `rate_limited`, `backlog_full`.
        code: &'static str,
        /// What is full.
        detail: String,
        /// When a retry may succeed.
        retry_after: Duration,
        /// Quota state for the `RateLimit-*` headers.
        limit: Option<RateLimitInfo>,
    },
    /// An idempotency key is claimed by someone else right now.
    #[error("the key is being processed by '{owner}' until {expires_at}")]
    InProgress {
        /// Who holds the claim.
        owner: String,
        /// When the claim ends unless completed (ms, Redis clock).
        expires_at: u64,
    },
    /// `--strict` and Redis may evict keys (`maxmemory-policy` not `noeviction`).
    #[error("Redis maxmemory-policy is {0}, not noeviction: it may delete streamcar's data")]
    EvictingRedis(String),
    /// Redis cannot serve now (see [`RedisOutage`]); the same call may
    /// succeed later.
    #[error("redis is unavailable ({kind}){}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Unavailable {
        /// Why.
        kind: RedisOutage,
        /// The Redis error that told us, when there was one (a readiness
        /// check can find Redis out of memory without any failed command).
        #[source]
        source: Option<redis::RedisError>,
    },
    /// An unexpected Redis answer. Logged; the client sees no detail.
    #[error("unexpected redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// Stored data that does not parse (written by something else, or a bug).
    #[error("{what} is not valid JSON: {source}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A bug: an invariant of the service does not hold. Logged; the client
    /// sees no detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A 400 with a code and no specific field.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            detail: detail.into(),
            field: None,
        }
    }

    /// A 400 about one named field.
    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        Self::BadRequest {
            code: "invalid_field",
            detail: format!("{field}: {}", detail.into()),
            field: Some(field),
        }
    }

    /// `kind` named `name` does not exist.
    pub fn not_found(kind: NotFoundKind, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::TooManyRequests { code, .. }
            | Self::TooLarge { code, .. }
            | Self::Unauthenticated { code, .. }
            | Self::Forbidden { code, .. } => code,
            Self::NotFound { kind, .. } => kind.code(),
            Self::Unauthorized => "unauthorized",
            Self::InProgress { .. } => "in_progress",
            Self::Unavailable { kind, .. } => kind.code(),
            Self::EvictingRedis(_) => "redis_evicts",
            Self::Redis(_) | Self::Corrupt { .. } | Self::Internal(_) => "internal",
        }
    }

    /// How long the client should wait before trying again, for the
    /// transient errors: the limiter's answer for a 429; a second for a
    /// Redis outage (usually seconds long: a restart, a failover, a script
    /// that finishes), so a client that retries every second finds the way
    /// open again soon after Redis does. HTTP sends it as `Retry-After`,
    /// realtime sessions as an error frame's `retry_after_ms`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { .. } | Self::EvictingRedis(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// True for errors whose details are internal: the client gets a
    /// generic text, the log gets the whole chain.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::Corrupt { .. } | Self::Internal(_)
        )
    }

    /// What the client is told. Internal details stay in the log.
    pub fn public_detail(&self) -> String {
        match self {
            Self::Unavailable { kind, .. } => kind.public_detail().to_owned(),
            e if e.is_internal() => "an internal error occurred; it has been logged".into(),
            other => other.to_string(),
        }
    }

    /// The error and its sources, for logs: `a: b: c`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let next = e.to_string();
            // thiserror messages often embed their source already.
            if !text.ends_with(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            source = e.source();
        }
        text
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        let outage = RedisOutage::of(&e);
        let label = outage.map_or("other", RedisOutage::label);
        metrics::counter!(REDIS_ERRORS, "kind" => label).increment(1);
        match outage {
            Some(kind) => Self::Unavailable {
                kind,
                source: Some(e),
            },
            None => Self::Redis(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some("something went wrong".into()))
    }

    #[test]
    fn not_found_kinds_have_their_own_codes() {
        let e = Error::not_found(NotFoundKind::Checkpoint, "c");
        assert_eq!(e.code(), "checkpoint_not_found");
        assert_eq!(e.to_string(), "checkpoint 'c' does not exist");
        assert_eq!(
            Error::not_found(NotFoundKind::IdempotencyKey, "k").code(),
            "idempotency_key_not_found"
        );
    }

    #[test]
    fn outage_codes_and_labels_are_distinct() {
        let codes: std::collections::HashSet<_> =
            RedisOutage::ALL.iter().map(|k| k.code()).collect();
        let labels: std::collections::HashSet<_> =
            RedisOutage::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(codes.len(), RedisOutage::ALL.len());
        assert_eq!(labels.len(), RedisOutage::ALL.len());
    }

    #[test]
    fn io_errors_are_unreachable_and_others_internal() {
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(RedisOutage::of(&io), Some(RedisOutage::Unreachable));
        let typed = redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "type"));
        assert_eq!(RedisOutage::of(&typed), None);
        let e = Error::from(typed);
        assert!(e.is_internal());
        assert!(std::error::Error::source(&e).is_some(), "keeps its source");
    }

    #[test]
    fn a_reply_cut_off_is_unreachable_and_a_reply_of_the_wrong_shape_internal() {
        let cut = redis::RedisError::from(redis::ParsingError::from(
            "Parse error at 0\nUnexpected end of input\nexpected 4 more elements\n",
        ));
        assert_eq!(RedisOutage::of(&cut), Some(RedisOutage::Unreachable));
        let shape = <i64 as redis::FromRedisValue>::from_redis_value(redis::Value::Nil)
            .map_err(redis::RedisError::from)
            .expect_err("nil is no integer");
        assert_eq!(shape.kind(), redis::ErrorKind::Parse);
        assert_eq!(RedisOutage::of(&shape), None);
    }

    #[test]
    fn server_codes_map_to_their_outage_exactly() {
        for (code, outage) in [
            ("OOM", Some(RedisOutage::OutOfMemory)),
            ("BUSY", Some(RedisOutage::Busy)),
            ("MISCONF", Some(RedisOutage::Persistence)),
            // Permanent errors that merely start like a transient one.
            ("BUSYGROUP", None),
            ("BUSYKEY", None),
            ("OOMX", None),
            ("WRONGTYPE", None),
        ] {
            assert_eq!(RedisOutage::of(&server_error(code)), outage, "{code}");
        }
        let loading = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "loading",
        ));
        assert_eq!(RedisOutage::of(&loading), Some(RedisOutage::Loading));
        let readonly = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "readonly",
        ));
        assert_eq!(RedisOutage::of(&readonly), Some(RedisOutage::ReadOnly));
        let e = Error::from(server_error("OOM"));
        assert_eq!(e.code(), "redis_out_of_memory");
        assert!(std::error::Error::source(&e).is_some(), "keeps its source");
    }
}

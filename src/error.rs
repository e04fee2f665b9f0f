//! The one error type of the service and its RFC 9457 rendering.
//!
//! Domain code returns [`Error`]; the HTTP layer turns it into an
//! `application/problem+json` response with a stable machine-readable `code`.
//! Internal details (Redis error text, script failures) never reach the
//! client: they are logged once here and the client gets a generic detail.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// Whole seconds, rounded up, at least 1: the unit of `Retry-After`.
fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Everything a request can fail with.
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
        /// What kind of thing: `topic`, `group`, …
        kind: &'static str,
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
    /// The body is larger than `--max-body`.
    #[error("request body is larger than the {limit} byte limit")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The body is not declared as JSON.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// No such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// `/v1` needs a bearer token and none (or a wrong one) was given.
    #[error("this API needs Authorization: Bearer <token>")]
    Unauthorized,
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
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
    /// Redis is unreachable, loading or failing over.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected Redis answer. Logged; the client sees no detail.
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

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::InProgress { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::EvictingRedis(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::TooManyRequests { code, .. } => code,
            Self::NotFound { kind, .. } => match *kind {
                "topic" => "topic_not_found",
                "group" => "group_not_found",
                "pool" => "pool_not_found",
                "dead letter" => "dead_letter_not_found",
                "join" => "join_not_found",
                "part" => "part_not_found",
                _ => "not_found",
            },
            Self::RouteNotFound(_) => "route_not_found",
            Self::Unauthorized => "unauthorized",
            Self::InProgress { .. } => "in_progress",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable(_) => "redis_unavailable",
            Self::EvictingRedis(_) => "redis_evicts",
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told. Internal details stay in the log.
    fn public_detail(&self) -> String {
        match self {
            Self::Unavailable(_) => {
                "Redis is unreachable or not ready; retry after the Retry-After delay".into()
            }
            Self::Internal(_) => "an internal error occurred; it has been logged".into(),
            other => other.to_string(),
        }
    }
}

impl RateLimitInfo {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
    /// (seconds) to `headers`.
    pub fn insert_headers(&self, headers: &mut axum::http::HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(ceil_secs(self.reset)));
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        use redis::ErrorKind;
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::AuthenticationFailed | ErrorKind::ClusterConnectionNotFound
            )
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ReadOnly
                )
            );
        if transient {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(format!("redis: {e}"))
        }
    }
}

/// RFC 9457 problem details, plus `code` and `field` extension members.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// Extension members of some problems (e.g. `owner` of `in_progress`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<serde_json::Value>,
}

impl Error {
    fn problem(&self) -> Problem<'_> {
        let status = self.status();
        Problem {
            kind: format!("urn:streamcar:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.public_detail(),
            code: self.code(),
            field: match self {
                Self::BadRequest { field, .. } => field.as_deref(),
                _ => None,
            },
            extra: match self {
                Self::InProgress { owner, expires_at } => Some(serde_json::json!({
                    "state": "in_progress",
                    "owner": owner,
                    "expires_at": expires_at,
                })),
                _ => None,
            },
        }
    }

    /// The problem document as a JSON value, for per-item errors of a batch.
    pub fn to_problem_json(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(msg) => tracing::error!(error = %msg, "request failed"),
            Self::Unavailable(msg) => tracing::warn!(error = %msg, "redis unavailable"),
            _ => {}
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } => Some(ceil_secs(*retry_after)),
            Self::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::TooManyRequests {
            limit: Some(limit), ..
        } = &self
        {
            limit.insert_headers(headers);
        }
        response
    }
}

//! Errors as HTTP answers: every failure is an RFC 9457
//! `application/problem+json` document with a stable `code`.
//!
//! [`crate::error::Error`] is the domain's error and knows no HTTP; this
//! module gives each case its status and headers (`Retry-After` on every
//! 429 and 503, `RateLimit-*` where a quota is involved), and adds the few
//! failures only the HTTP layer can have ([`HttpError`]: body too large, not
//! JSON, no such route or method). Internal details never reach the client:
//! they are logged here, once, with their whole source chain.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, RateLimitInfo};

/// Failures of the HTTP layer itself, plus any domain error.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The body is larger than `--max-body`.
    #[error("request body is larger than the {limit} byte limit")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The body is declared as something other than JSON.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// No such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A domain error.
    #[error(transparent)]
    Domain(#[from] Error),
}

/// Whole seconds, rounded up, at least 1: the unit of `Retry-After`.
fn ceil_secs(d: Duration) -> u64 {
    u64::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl RateLimitInfo {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
    /// (seconds) to `headers`.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(ceil_secs(self.reset)));
    }
}

/// The status a domain error answers with.
fn status(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthorized | Error::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict { .. } | Error::InProgress { .. } => StatusCode::CONFLICT,
        Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable { .. } | Error::EvictingRedis(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Redis(_) | Error::Corrupt { .. } | Error::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// RFC 9457 problem details, plus `code` and `field` extension members.
#[derive(Serialize)]
struct ProblemBody<'a> {
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

impl<'a> ProblemBody<'a> {
    fn new(status: StatusCode, code: &'a str, detail: String) -> Self {
        Self {
            kind: format!("urn:streamcar:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code,
            field: None,
            extra: None,
        }
    }

    fn of(e: &'a Error) -> Self {
        let mut body = Self::new(status(e), e.code(), e.public_detail());
        body.field = match e {
            Error::BadRequest { field, .. } => field.as_deref(),
            _ => None,
        };
        body.extra = match e {
            Error::InProgress { owner, expires_at } => Some(serde_json::json!({
                "state": "in_progress",
                "owner": owner,
                "expires_at": expires_at,
            })),
            _ => None,
        };
        body
    }
}

impl Error {
    /// The problem document as a JSON value, for per-item errors of a batch.
    pub fn to_problem_json(&self) -> serde_json::Value {
        serde_json::to_value(ProblemBody::of(self)).unwrap_or_default()
    }
}

/// A problem+json response with `status` and `body`.
fn problem_response(status: StatusCode, body: &ProblemBody<'_>) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.is_internal() {
            tracing::error!(error = %self.chain(), "request failed");
        } else if let Error::Unavailable { kind, .. } = &self {
            tracing::warn!(%kind, error = %self.chain(), "redis cannot serve the request");
        }
        let status = status(&self);
        let mut response = problem_response(status, &ProblemBody::of(&self));
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
        }
        if let Error::Unauthenticated { .. } = &self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Error::TooManyRequests {
            limit: Some(limit), ..
        } = &self
        {
            limit.insert_headers(headers);
        }
        response
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            Self::Domain(e) => return e.into_response(),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        };
        problem_response(status, &ProblemBody::new(status, code, self.to_string()))
    }
}

//! What a push looks like on the wire: the request built from deliveries,
//! and the verdict read from the app's answer.
//!
//! One delivery per request (`batch: 1`) is a CloudEvents binary-mode
//! request: the payload is the body and the envelope travels in `ce-*` and
//! `streamcar-*` headers. With `batch > 1` the body is a JSON array of
//! delivery objects (the shape fetch returns), which carry their envelope
//! themselves; such a request has no per-message headers.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};

use super::client::Answer;
use crate::broker::delivery::Delivery;
use crate::broker::publish::MAX_DURATION_MS;

/// How much of an error answer's body goes into `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// Builds the request for `deliveries` (`batch`: the subscription sends arrays).
pub fn build(
    uri: Uri,
    source: &str,
    deliveries: &[&Delivery],
    batch: bool,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("streamcar/", env!("CARGO_PKG_VERSION"))),
    );
    let body = match (batch, deliveries) {
        (false, [d]) => {
            let m = &d.message;
            let own: HashMap<String, String> =
                serde_json::from_str(m.headers.get()).unwrap_or_default();
            let time = UNIX_EPOCH + Duration::from_millis(m.published_at);
            let mut set = |name: &'static str, value: &str| {
                // A value that is no valid header (only possible for odd
                // stored text) is left out rather than failing the push.
                if let Ok(v) = HeaderValue::from_str(value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            };
            set("ce-specversion", "1.0");
            set("ce-id", &m.id);
            set("ce-source", source);
            set(
                "ce-type",
                own.get("type").map_or("streamcar.message", String::as_str),
            );
            set(
                "ce-time",
                &humantime::format_rfc3339_millis(time).to_string(),
            );
            if let Some(key) = &m.key {
                set("ce-subject", key);
            }
            set("streamcar-seq", &m.seq.to_string());
            set("streamcar-attempt", &d.attempt.to_string());
            set("streamcar-receipt", &d.receipt);
            if let Some(c) = &m.correlation_id {
                set("streamcar-correlation-id", c);
            }
            if let Some(c) = &m.causation_id {
                set("streamcar-causation-id", c);
            }
            for name in ["traceparent", "tracestate"] {
                if let Some(v) = own.get(name) {
                    set(name, v);
                }
            }
            Bytes::copy_from_slice(m.payload.get().as_bytes())
        }
        _ => Bytes::from(serde_json::to_vec(deliveries).unwrap_or_else(|_| b"[]".to_vec())),
    };
    *request.body_mut() = Full::new(body);
    request
}

/// What the sidecar does with a delivery once the app has answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Ack,
    /// 202: the app acks or nacks it later itself, with its receipt.
    TakenOver,
    /// The app refuses it for good: dead-letter now with this error.
    Reject(String),
    /// Try again later: after `delay_ms` (from `Retry-After`) or the group's backoff.
    Nack {
        /// Explicit delay, ms.
        delay_ms: Option<u64>,
        /// Why.
        error: String,
    },
}

/// Reads the app's answer. Statuses the table does not name are retried:
/// an unknown answer never dead-letters a message early (`max_deliveries`
/// still bounds the retries).
pub fn judge(answer: &Answer) -> Verdict {
    let status = answer.status;
    match status.as_u16() {
        202 => Verdict::TakenOver,
        200..=299 => Verdict::Ack,
        400 | 403 | 410 | 413 | 415 | 422 => Verdict::Reject(error_text(status, &answer.body)),
        _ => Verdict::Nack {
            delay_ms: answer
                .retry_after
                .map(|s| s.saturating_mul(1000).min(MAX_DURATION_MS)),
            error: error_text(status, &answer.body),
        },
    }
}

/// `HTTP 422: <start of the body>` (the reason phrase when there is no body),
/// on one line.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    let start = &body[..body.len().min(ERROR_BODY_BYTES)];
    let text: String = String::from_utf8_lossy(start)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("")
    } else {
        text
    };
    format!("HTTP {}: {text}", status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, retry_after: Option<u64>, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn the_answer_table() {
        assert_eq!(judge(&answer(200, None, "")), Verdict::Ack);
        assert_eq!(judge(&answer(204, None, "")), Verdict::Ack);
        assert_eq!(judge(&answer(202, None, "")), Verdict::TakenOver);
        for code in [400, 403, 410, 413, 415, 422] {
            assert!(
                matches!(judge(&answer(code, None, "x")), Verdict::Reject(_)),
                "{code}"
            );
        }
        for code in [404, 408, 409, 425, 429, 500, 502, 503, 504, 401, 302] {
            assert!(
                matches!(
                    judge(&answer(code, None, "")),
                    Verdict::Nack { delay_ms: None, .. }
                ),
                "{code}"
            );
        }
        assert_eq!(
            judge(&answer(503, Some(2), "busy")),
            Verdict::Nack {
                delay_ms: Some(2000),
                error: "HTTP 503: busy".into()
            }
        );
    }

    #[test]
    fn error_texts_are_short_single_lines() {
        assert_eq!(
            judge(&answer(422, None, "bad\nthing")),
            Verdict::Reject("HTTP 422: bad thing".into())
        );
        assert_eq!(
            judge(&answer(422, None, "")),
            Verdict::Reject("HTTP 422: Unprocessable Entity".into())
        );
        let Verdict::Reject(long) = judge(&answer(400, None, &"é".repeat(500))) else {
            panic!("reject");
        };
        assert!(long.len() <= 220, "{}", long.len());
    }
}

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

use serde::Deserialize;
use serde_json::value::RawValue;

use super::client::{Answer, MAX_ANSWER_BYTES};
use crate::broker::delivery::Delivery;
use crate::broker::publish::MAX_DURATION_MS;
use crate::workflow::emit::Emit;

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
            // Only a valid W3C traceparent names a trace (anything else is
            // ignored, as Trace Context asks), and a tracestate goes only
            // with the traceparent it belongs to.
            if let Some(traceparent) = own
                .get("traceparent")
                .filter(|t| crate::traces::parse(t).is_some())
            {
                set("traceparent", traceparent);
                if let Some(state) = own.get("tracestate") {
                    set("tracestate", state);
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
#[derive(Debug)]
pub enum Verdict {
    /// 2xx: done.
    Ack,
    /// 2xx with a body `{"emit": […]}`: done, and these are the next
    /// step's messages (an ack with emit).
    AckEmit(Vec<Emit>),
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

/// The part of a 2xx answer's body the sidecar reads: any other JSON (or
/// none) is a plain ack.
#[derive(Deserialize)]
struct AnswerBody<'a> {
    #[serde(borrow, default)]
    emit: Option<&'a RawValue>,
}

/// Reads the app's answer to a request of one delivery (`batch` false) or
/// of several. Statuses the table does not name are retried: an unknown
/// answer never dead-letters a message early (`max_deliveries` still
/// bounds the retries).
pub fn judge(answer: &Answer, batch: bool) -> Verdict {
    let status = answer.status;
    match status.as_u16() {
        202 => Verdict::TakenOver,
        200..=299 => judge_success(status, answer, batch),
        400 | 403 | 410 | 413 | 415 | 422 => Verdict::Reject(error_text(status, &answer.body)),
        _ => Verdict::Nack {
            delay_ms: answer
                .retry_after
                .map(|s| s.saturating_mul(1000).min(MAX_DURATION_MS)),
            error: error_text(status, &answer.body),
        },
    }
}

/// A 2xx answer: a plain ack, or an ack with emit when the body is a JSON
/// object with a non-empty `emit` list. An `emit` the sidecar cannot use
/// is the app's bug: nacked with the reason (the group's backoff, then the
/// dead letter, where `last_error` says what was wrong), never acked
/// without its next step. So is an object the sidecar cannot read whole
/// (over [`MAX_ANSWER_BYTES`] or cut off: an emit may be in the rest) or
/// that is not valid JSON and names `emit`.
fn judge_success(status: StatusCode, answer: &Answer, batch: bool) -> Verdict {
    let body = &answer.body[..];
    let refused = |why: String| Verdict::Nack {
        delay_ms: None,
        error: format!("HTTP {}: {why}", status.as_u16()),
    };
    // Only an object: serde would also read a struct from an array.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Verdict::Ack;
    }
    let emit = match serde_json::from_slice::<AnswerBody>(body) {
        Ok(read) => read.emit,
        Err(_) if !answer.complete => {
            return refused(format!(
                "the answer was cut off (over {MAX_ANSWER_BYTES} bytes, or not finished in time): an emit in it cannot be read"
            ));
        }
        Err(e) if body.windows(6).any(|w| w == b"\"emit\"") => {
            return refused(format!("invalid emit in the answer: {e}"));
        }
        Err(_) => None,
    };
    let Some(emit) = emit else {
        return Verdict::Ack;
    };
    match serde_json::from_str::<Vec<Emit>>(emit.get()) {
        Ok(emits) if emits.is_empty() => Verdict::Ack,
        Ok(_) if batch => {
            refused("an answer with emit needs a subscription with batch: 1".to_owned())
        }
        Ok(emits) => Verdict::AckEmit(emits),
        Err(e) => refused(format!("invalid emit in the answer: {e}")),
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
            complete: true,
        }
    }

    fn is_nack(v: &Verdict, delay: Option<u64>, text: &str) -> bool {
        matches!(v, Verdict::Nack { delay_ms, error } if *delay_ms == delay && error.contains(text))
    }

    #[test]
    fn the_answer_table() {
        assert!(matches!(judge(&answer(200, None, ""), false), Verdict::Ack));
        assert!(matches!(judge(&answer(204, None, ""), false), Verdict::Ack));
        assert!(matches!(
            judge(&answer(202, None, ""), false),
            Verdict::TakenOver
        ));
        for code in [400, 403, 410, 413, 415, 422] {
            assert!(
                matches!(judge(&answer(code, None, "x"), false), Verdict::Reject(_)),
                "{code}"
            );
        }
        for code in [404, 408, 409, 425, 429, 500, 502, 503, 504, 401, 302] {
            assert!(
                is_nack(&judge(&answer(code, None, ""), false), None, ""),
                "{code}"
            );
        }
        assert!(is_nack(
            &judge(&answer(503, Some(2), "busy"), false),
            Some(2000),
            "HTTP 503: busy"
        ));
    }

    #[test]
    fn a_success_body_with_emit_is_an_ack_with_emit() {
        let emit = r#"{"emit": [{"topic": "next", "payload": {"a": 1}}], "other": true}"#;
        let Verdict::AckEmit(emits) = judge(&answer(200, None, emit), false) else {
            panic!("ack with emit");
        };
        assert_eq!(emits.len(), 1);
        // Other bodies, an empty or null emit: a plain ack.
        for body in [
            "ok",
            "{}",
            r#"{"emit": []}"#,
            r#"{"emit": null}"#,
            "[1]",
            "{",
        ] {
            assert!(
                matches!(judge(&answer(200, None, body), false), Verdict::Ack),
                "{body}"
            );
        }
        // An emit the sidecar cannot use is nacked with the reason, and so
        // is an object that names `emit` but is not valid JSON.
        for body in [
            r#"{"emit": 3}"#,
            r#"{"emit": [{"payload": 1, "nope": 2}]}"#,
            r#"{"emit": [{"topic": "next", "payload": 1}]"#,
            r#"{"emit": [], "emit": [{"topic": "next", "payload": 1}]}"#,
        ] {
            assert!(
                is_nack(
                    &judge(&answer(200, None, body), false),
                    None,
                    "invalid emit"
                ),
                "{body}"
            );
        }
        assert!(is_nack(
            &judge(&answer(200, None, emit), true),
            None,
            "batch: 1"
        ));
        // An object not read whole (over the bound, or cut off) may hold an
        // emit in the rest: nacked. Anything else cut off is a plain ack.
        let cut = |body: &str| Answer {
            complete: false,
            ..answer(200, None, body)
        };
        assert!(is_nack(
            &judge(&cut(r#"{"result": "xxxx"#), false),
            None,
            "cut off"
        ));
        assert!(matches!(judge(&cut("<html>"), false), Verdict::Ack));
        assert!(matches!(
            judge(&cut(r#"{"emit": null}"#), false),
            Verdict::Ack
        ));
    }

    #[test]
    fn error_texts_are_short_single_lines() {
        assert!(matches!(
            judge(&answer(422, None, "bad\nthing"), false),
            Verdict::Reject(e) if e == "HTTP 422: bad thing"
        ));
        assert!(matches!(
            judge(&answer(422, None, ""), false),
            Verdict::Reject(e) if e == "HTTP 422: Unprocessable Entity"
        ));
        let Verdict::Reject(long) = judge(&answer(400, None, &"é".repeat(500)), false) else {
            panic!("reject");
        };
        assert!(long.len() <= 220, "{}", long.len());
    }
}

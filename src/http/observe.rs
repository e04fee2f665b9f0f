//! Middleware around every request: a tracing span (method, route template,
//! tenant, topic, group), the request duration histogram by route template,
//! method and status, and the optional bearer-token check on `/v1`.
//!
//! Every label of the histogram comes from a bounded set, whatever callers
//! send: route templates (or `unmatched`), the standard methods (others are
//! `other`) and the statuses the service answers. Anyone who can reach the
//! port, authenticated or not, would otherwise add a series (and a cache
//! entry) per made-up method.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::Histogram;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::error::Error;
use crate::telemetry;

/// Spans and times each request.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // MatchedPath is a shared string: cloning it does not allocate.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    // The span is DEBUG: its fields cost formatting on every request, so it
    // is only built when someone asked for it (RUST_LOG=streamcar=debug).
    let span = if request_spans() {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, &())
            .await
            .ok();
        let param = |name: &str| {
            params
                .as_ref()
                .and_then(|p| {
                    p.iter()
                        .find_map(|(k, v)| (k == name).then(|| v.to_owned()))
                })
                .unwrap_or_default()
        };
        let span = tracing::debug_span!(
            "request",
            %method,
            route = %route,
            tenant = %param("tenant"),
            topic = %param("topic"),
            group = %param("group"),
        );
        req = Request::from_parts(parts, body);
        span
    } else {
        tracing::Span::none()
    };
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    record_duration(route, &method, status, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = elapsed.as_millis() as u64,
            "request done"
        )
    });
    response
}

/// Whether each request gets a span (`RUST_LOG` asks for DEBUG of this
/// module, or of a parent such as `streamcar`). One check for every path a
/// request can take ([`super::dispatch`] too), so a filter naming this
/// module covers them all.
pub(super) fn request_spans() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// Counts one answered request in the request-duration histogram.
pub(super) fn record_duration(route: &str, method: &Method, status: u16, elapsed: Duration) {
    duration_histogram(route, method_label(method), status).record(elapsed.as_secs_f64());
}

/// The `method` label: one of the methods the API and its probes use, or
/// `other` for anything else (hyper accepts any token as a method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The request-duration histogram of one (route, method, status), cached:
/// building a labelled metric key per request costs allocations and a
/// registry lookup on the hot path. The cache is keyed by route so a lookup
/// borrows the route instead of allocating a key; each route sees a handful
/// of (method, status) pairs, all from bounded sets, so the cache is bounded.
fn duration_histogram(route: &str, method: &'static str, status: u16) -> Histogram {
    type Cache =
        RwLock<HashMap<String, Vec<(&'static str, u16, Histogram)>, foldhash::fast::RandomState>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let find = |seen: &[(&'static str, u16, Histogram)]| {
        seen.iter()
            .find(|(m, s, _)| *m == method && *s == status)
            .map(|(_, _, h)| h.clone())
    };
    if let Some(h) = cache
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(route)
        .and_then(|seen| find(seen))
    {
        return h;
    }
    let histogram = metrics::histogram!(
        telemetry::HTTP_DURATION,
        "method" => method,
        "route" => route.to_owned(),
        "status" => status.to_string()
    );
    let mut cache = cache
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = cache.entry(route.to_owned()).or_default();
    if let Some(h) = find(seen) {
        return h; // another request registered it meanwhile
    }
    seen.push((method, status, histogram.clone()));
    histogram
}

/// With `--api-token-file`, every `/v1` request needs `Authorization:
/// Bearer <token>` (compared in constant time); health and metrics stay open.
/// The layer is only installed when a token is configured.
pub async fn require_token(State(expected): State<Arc<str>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(req).await
    } else {
        let mut response = Error::Unauthorized.into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// Runs the request with its W3C `traceparent` as the caller's trace
/// context, so the spans it causes nest under the caller's (layered only
/// while traces are exported).
pub(super) async fn caller_trace(request: Request, next: Next) -> Response {
    let traceparent = super::extract::sole_traceparent(request.headers())
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    crate::traces::with_caller(traceparent.as_deref(), next.run(request)).await
}

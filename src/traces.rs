//! Traces: OpenTelemetry spans for the life of a message, exported over
//! OTLP/HTTP protobuf (`--otlp-endpoint`).
//!
//! A message carries its trace in its W3C `traceparent` header. Each step
//! the sidecar performs is one span: `publish` (its context is stored as the
//! message's `traceparent`), `deliver` (a fetch or a push handing the
//! message out; the delivery's `traceparent` names this span), `push`,
//! `ack`, `nack`, `reject`, `emit` (the emitted message's `traceparent`
//! names this span) and `join`. A span's parent is the caller's
//! `traceparent` (the HTTP request's, see [`with_caller`]) when it continues
//! the message's trace, else the message's own: a worker that sends the
//! delivery's `traceparent` back on its ack nests the ack and the emits under
//! its work; one that does not still lands them in the message's trace.
//!
//! Off by default. When off no span is made: every entry point first reads
//! one atomic flag. What this module must not do: block a request (spans are
//! queued to a bounded batch processor on the tokio runtime, dropped when it
//! is full), or hold message payloads (attributes are ids and names only).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::value::RawValue;

use crate::names::{Group, Tenant, Topic};

/// The message header (and HTTP header) that carries the trace.
pub const TRACEPARENT: &str = "traceparent";

/// True while an exporter is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    /// The `traceparent` of whoever asked for the current operation.
    static CALLER: String;
}

/// Whether spans are made (an exporter is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `work` with `traceparent` as the caller's trace context (a valid
/// one only; anything else is ignored, as W3C Trace Context asks).
pub async fn with_caller<F: Future>(traceparent: Option<&str>, work: F) -> F::Output {
    match traceparent.filter(|t| parse(t).is_some()) {
        Some(t) => CALLER.scope(t.to_owned(), work).await,
        None => work.await,
    }
}

/// The caller's `traceparent`, if one was given.
fn caller() -> Option<String> {
    CALLER.try_with(Clone::clone).ok()
}

/// The context a step on a message continues: the caller's when it is in
/// the message's trace (or the message has none), else the message's.
pub fn continued(message: Option<&str>) -> Option<String> {
    let message = message.filter(|m| parse(m).is_some());
    match (caller(), message) {
        (Some(c), Some(m)) if trace_id(&c) != trace_id(m) => Some(m.to_owned()),
        (Some(c), _) => Some(c),
        (None, m) => m.map(str::to_owned),
    }
}

/// `(trace id, span id, flags)` of a version-00 W3C `traceparent`
/// (lowercase hex; a later version's extra fields are ignored).
pub fn parse(traceparent: &str) -> Option<(u128, u64, u8)> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
        || version == "ff"
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    Some((trace, span, u8::from_str_radix(flags, 16).ok()?))
}

fn trace_id(traceparent: &str) -> Option<u128> {
    parse(traceparent).map(|(t, _, _)| t)
}

/// The `traceparent` field of a message's headers (stored JSON).
pub fn of_headers(headers: &RawValue) -> Option<String> {
    let map: BTreeMap<String, String> = serde_json::from_str(headers.get()).ok()?;
    map.get(TRACEPARENT).cloned()
}

/// `headers` (stored JSON) with `traceparent` set; left as they are if
/// they are not a string map (never dropped for the sake of a span).
pub fn set_in_headers(headers: &mut Box<RawValue>, traceparent: &str) {
    let Ok(mut map) = serde_json::from_str::<BTreeMap<String, String>>(headers.get()) else {
        return;
    };
    map.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Ok(text) = serde_json::to_string(&map)
        && let Ok(raw) = RawValue::from_string(text)
    {
        *headers = raw;
    }
}

/// What a span records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A message written to a topic.
    Publish,
    /// A message handed to a consumer (fetch or push).
    Deliver,
    /// A delivery POSTed to the app.
    Push,
    /// A delivery acked.
    Ack,
    /// A delivery given back for a retry (or dead-lettered on its last attempt).
    Nack,
    /// A delivery dead-lettered now.
    Reject,
    /// A message of the next step published by an ack with emit.
    Emit,
    /// A join part recorded.
    Join,
}

impl Step {
    /// The span name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Deliver => "deliver",
            Self::Push => "push",
            Self::Ack => "ack",
            Self::Nack => "nack",
            Self::Reject => "reject",
            Self::Emit => "emit",
            Self::Join => "join",
        }
    }
}

/// Attribute names (OpenTelemetry messaging conventions where one fits).
pub mod attr {
    /// The tenant.
    pub const TENANT: &str = "streamcar.tenant";
    /// The topic.
    pub const TOPIC: &str = "messaging.destination.name";
    /// The consumer group.
    pub const GROUP: &str = "messaging.consumer.group.name";
    /// The message id.
    pub const MESSAGE_ID: &str = "messaging.message.id";
    /// The delivery attempt (1 = first delivery).
    pub const ATTEMPT: &str = "streamcar.attempt";
    /// The workflow (correlation) id.
    pub const CORRELATION_ID: &str = "messaging.message.conversation_id";
    /// The id of the message that caused this one.
    pub const CAUSATION_ID: &str = "streamcar.causation_id";
    /// The consumer a fetch delivered to.
    pub const CONSUMER: &str = "streamcar.consumer";
    /// The push subscription.
    pub const SUBSCRIPTION: &str = "streamcar.subscription";
    /// What came of the step (acked, lease_lost, duplicate, nacked, …).
    pub const OUTCOME: &str = "streamcar.outcome";
    /// A realtime channel an emit went to.
    pub const CHANNEL: &str = "streamcar.channel";
    /// A join's id.
    pub const JOIN: &str = "streamcar.join";
    /// A join's part.
    pub const PART: &str = "streamcar.join.part";
}

/// One span, ended when dropped; does nothing when tracing is off.
pub struct MessageSpan {
    /// Boxed: a span lives in the futures of the hot paths (publish, ack),
    /// which are copied whole at each move; unboxed it would add a few
    /// hundred bytes to each of them, traced or not.
    #[cfg(feature = "otlp")]
    live: Option<Box<otel::Live>>,
}

impl MessageSpan {
    /// Starts a `step` span under `parent` (a `traceparent`; none = a new
    /// trace), or nothing when tracing is off.
    pub fn start(step: Step, parent: Option<&str>) -> Self {
        #[cfg(not(feature = "otlp"))]
        let _ = (step, parent);
        Self {
            #[cfg(feature = "otlp")]
            live: enabled()
                .then(|| otel::Live::start(step, parent))
                .flatten()
                .map(Box::new),
        }
    }

    /// Starts a `step` span about a topic (and group) of a tenant.
    pub fn on(
        step: Step,
        parent: Option<&str>,
        tenant: &Tenant,
        topic: &Topic,
        group: Option<&Group>,
    ) -> Self {
        let mut span = Self::start(step, parent);
        if span.is_recording() {
            span.set(attr::TENANT, tenant.as_str());
            span.set(attr::TOPIC, topic.as_str());
            if let Some(group) = group {
                span.set(attr::GROUP, group.as_str());
            }
        }
        span
    }

    /// Whether this span records anything (worth building attributes for).
    pub fn is_recording(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.live.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Sets a string attribute.
    pub fn set(&mut self, key: &'static str, value: &str) {
        #[cfg(feature = "otlp")]
        if let Some(live) = &mut self.live {
            live.set(key, value.to_owned());
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (key, value);
    }

    /// Sets an integer attribute.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        #[cfg(feature = "otlp")]
        if let Some(live) = &mut self.live {
            live.set_int(key, value);
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (key, value);
    }

    /// Marks the span failed with `error`.
    pub fn fail(&mut self, error: &str) {
        #[cfg(feature = "otlp")]
        if let Some(live) = &mut self.live {
            live.fail(error.to_owned());
        }
        #[cfg(not(feature = "otlp"))]
        let _ = error;
    }

    /// This span as a `traceparent` for what follows from it.
    pub fn traceparent(&self) -> Option<String> {
        #[cfg(feature = "otlp")]
        return self.live.as_deref().map(otel::Live::traceparent);
        #[cfg(not(feature = "otlp"))]
        None
    }
}

/// A running exporter; [`Exporter::shutdown`] flushes what is queued.
pub struct Exporter {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Set when the exporter stops: what is still queued then gets until
    /// this instant in all, not one export timeout per batch.
    #[cfg(feature = "otlp")]
    closing: otel::Closing,
}

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct ExportError {
    /// The configured endpoint.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

/// The URL spans are POSTed to: `endpoint` as given when its path names a
/// signal (ends in `/v1/traces`), else with `/v1/traces` appended to the
/// path (a query stays the query), as `OTEL_EXPORTER_OTLP_ENDPOINT` works.
/// Only `http://` (the sidecar talks to a collector next to it), and a port
/// must be a port: the HTTP client reads `:99999` or `:4318x` as no port
/// at all and would send to port 80.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: hyper::Uri = endpoint.parse().map_err(|e| format!("not a URL ({e})"))?;
    let Some(authority) = uri.authority().filter(|_| uri.scheme_str() == Some("http")) else {
        return Err("must be http://host[:port][/path] (send to a collector next to the sidecar; it may forward over TLS)".into());
    };
    let host_port = without_userinfo(authority.as_str());
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, p)| p);
    if after_host.contains(':') && authority.port_u16().is_none_or(|p| p == 0) {
        return Err("the port must be a number from 1 to 65535".into());
    }
    if uri.path().ends_with("/v1/traces") {
        return Ok(endpoint.to_owned());
    }
    let query = uri.query().map_or_else(String::new, |q| format!("?{q}"));
    Ok(format!(
        "http://{authority}{}/v1/traces{query}",
        uri.path().trim_end_matches('/')
    ))
}

/// An authority's `host[:port]`, without a `user:password@` before it.
fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// `url` fit for a log line: a `user:password@` in it shows as `***@`.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = without_userinfo(authority);
    if host.len() == authority.len() {
        url.to_owned()
    } else {
        format!("{scheme}://***@{host}{tail}")
    }
}

/// Starts exporting spans to `endpoint` (see [`traces_url`]); must run on
/// the tokio runtime (the batch processor is a task on it). Replaces an
/// exporter installed before (one per process).
pub fn install(endpoint: &str) -> Result<Exporter, ExportError> {
    let failed = |reason: String| ExportError {
        endpoint: without_credentials(endpoint),
        reason,
    };
    let url = traces_url(endpoint).map_err(failed)?;
    #[cfg(feature = "otlp")]
    {
        let closing = otel::Closing::default();
        let provider = otel::provider(&url, closing.clone()).map_err(failed)?;
        otel::set_tracer(Some(&provider));
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %without_credentials(&url), "exporting traces over OTLP/HTTP");
        Ok(Exporter {
            provider: Some(provider),
            closing,
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = url;
        Err(failed(
            "this streamcar was built without the `otlp` feature".into(),
        ))
    }
}

impl Exporter {
    /// Stops making spans, exports what is queued (within one export
    /// timeout in all, however many batches are queued behind a collector
    /// that does not answer) and stops the exporter.
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    pub async fn shutdown(mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            otel::set_tracer(None);
            let deadline = self.closing.start();
            // The processor answers from its task on this runtime while
            // shutdown blocks waiting for it: wait on a blocking thread.
            let done = tokio::time::timeout_at(
                deadline + otel::SHUTDOWN_GRACE,
                tokio::task::spawn_blocking(move || provider.shutdown()),
            )
            .await;
            match done {
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "traces: the last spans may not have been exported");
                }
                Err(_) => {
                    tracing::warn!("traces: the collector did not take the last spans in time")
                }
                Ok(_) => {}
            }
        }
    }
}

impl Drop for Exporter {
    /// Dropped without [`Exporter::shutdown`] (a start that failed later):
    /// stop making spans, and let a thread of its own stop the exporter, as
    /// blocking here could stall the runtime the processor runs on.
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            otel::set_tracer(None);
            self.closing.start();
            std::thread::spawn(move || drop(provider.shutdown()));
        }
    }
}

#[cfg(feature = "otlp")]
mod otel {
    //! The OpenTelemetry SDK behind [`super::MessageSpan`].

    use std::sync::{Arc, OnceLock, RwLock};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_http::{HttpClient, HttpError};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::runtime::Tokio;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    };

    use super::Step;

    /// Spans waiting for export; more are dropped (never unbounded).
    const MAX_QUEUE: usize = 4096;
    /// Longest one export request may take.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Waited past the closing deadline for the processor to report back.
    pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

    /// When the exporter stops, the instant by which what is queued must be
    /// sent: one export timeout from then.
    #[derive(Debug, Clone, Default)]
    pub(super) struct Closing(Arc<OnceLock<tokio::time::Instant>>);

    impl Closing {
        /// Starts closing (once); returns the deadline.
        pub(super) fn start(&self) -> tokio::time::Instant {
            *self
                .0
                .get_or_init(|| tokio::time::Instant::now() + EXPORT_TIMEOUT)
        }
    }

    /// The OTLP exporter under the closing deadline: once the exporter
    /// stops, the batches still queued share one export timeout (the batch
    /// processor gives each its own, one after another: behind a collector
    /// that takes the connection and never answers, stopping took one
    /// timeout per 512 queued spans); after it they fail at once.
    #[derive(Debug)]
    struct Bounded {
        inner: opentelemetry_otlp::SpanExporter,
        closing: Closing,
    }

    impl SpanExporter for Bounded {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let Some(deadline) = self.closing.0.get().copied() else {
                return self.inner.export(batch).await;
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(OTelSdkError::Timeout(EXPORT_TIMEOUT));
            }
            tokio::time::timeout_at(deadline, self.inner.export(batch))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(EXPORT_TIMEOUT)))
        }

        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.inner.shutdown_with_timeout(timeout)
        }

        fn force_flush(&self) -> OTelSdkResult {
            self.inner.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.inner.set_resource(resource);
        }
    }

    static TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);

    /// Most bytes of a collector's answer kept (it is a small protobuf).
    const MAX_ANSWER: usize = 64 * 1024;

    /// The exporter's HTTP client: HTTP/1 on the hyper client the sidecar
    /// already has (the crate's own hyper client needs HTTP/2 as well).
    #[derive(Debug)]
    struct Http1 {
        client: Client<HttpConnector, Full<Bytes>>,
    }

    #[async_trait::async_trait]
    impl HttpClient for Http1 {
        async fn send_bytes(
            &self,
            request: hyper::Request<Bytes>,
        ) -> Result<hyper::Response<Bytes>, HttpError> {
            let (parts, body) = request.into_parts();
            let request = hyper::Request::from_parts(parts, Full::new(body));
            let answer = tokio::time::timeout(EXPORT_TIMEOUT, async {
                let (parts, body) = self.client.request(request).await?.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(hyper::Response::from_parts(parts, body))
            });
            match answer.await {
                Ok(result) => result,
                Err(_) => Err("the collector did not answer in time".into()),
            }
        }
    }

    pub(super) fn provider(url: &str, closing: Closing) -> Result<SdkTracerProvider, String> {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Http1 { client })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let exporter = Bounded {
            inner: exporter,
            closing,
        };
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_timeout(EXPORT_TIMEOUT)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(config)
            .build();
        let resource = Resource::builder()
            .with_service_name("streamcar")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build())
    }

    pub(super) fn set_tracer(provider: Option<&SdkTracerProvider>) {
        let tracer = provider.map(|p| p.tracer("streamcar"));
        *TRACER
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tracer;
    }

    /// A recording span.
    pub(super) struct Live(opentelemetry_sdk::trace::Span);

    impl Live {
        pub(super) fn start(step: Step, parent: Option<&str>) -> Option<Self> {
            let guard = TRACER
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tracer = guard.as_ref()?;
            let cx = match parent.and_then(super::parse) {
                Some((trace, span, flags)) => {
                    Context::new().with_remote_span_context(SpanContext::new(
                        TraceId::from(trace),
                        SpanId::from(span),
                        TraceFlags::new(flags),
                        true,
                        TraceState::default(),
                    ))
                }
                None => Context::new(),
            };
            let kind = match step {
                Step::Publish | Step::Emit => SpanKind::Producer,
                Step::Deliver => SpanKind::Consumer,
                Step::Push => SpanKind::Client,
                Step::Ack | Step::Nack | Step::Reject | Step::Join => SpanKind::Internal,
            };
            let span = tracer
                .span_builder(step.name())
                .with_kind(kind)
                .with_attributes([
                    KeyValue::new("messaging.system", "streamcar"),
                    KeyValue::new("messaging.operation.name", step.name()),
                ])
                .start_with_context(tracer, &cx);
            Some(Self(span))
        }

        pub(super) fn set(&mut self, key: &'static str, value: String) {
            self.0.set_attribute(KeyValue::new(key, value));
        }

        pub(super) fn set_int(&mut self, key: &'static str, value: i64) {
            self.0.set_attribute(KeyValue::new(key, value));
        }

        pub(super) fn fail(&mut self, error: String) {
            self.0.set_status(Status::error(error));
        }

        pub(super) fn traceparent(&self) -> String {
            let cx = self.0.span_context();
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                u128::from_be_bytes(cx.trace_id().to_bytes()),
                u64::from_be_bytes(cx.span_id().to_bytes()),
                cx.trace_flags().to_u8()
            )
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_w3c_traceparents_only() {
        assert_eq!(
            parse(TP),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }

    #[tokio::test]
    async fn a_step_continues_the_caller_only_inside_the_message_trace() {
        let same = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        assert_eq!(continued(Some(TP)), Some(TP.to_owned()));
        assert_eq!(continued(None), None);
        let inside = with_caller(Some(same), async { continued(Some(TP)) }).await;
        assert_eq!(inside.as_deref(), Some(same));
        let foreign = with_caller(Some(other), async { continued(Some(TP)) }).await;
        assert_eq!(foreign.as_deref(), Some(TP));
        let alone = with_caller(Some(other), async { continued(None) }).await;
        assert_eq!(alone.as_deref(), Some(other));
        let junk = with_caller(Some("junk"), async { continued(None) }).await;
        assert_eq!(junk, None);
    }

    #[test]
    fn headers_keep_their_other_fields_when_the_traceparent_changes() {
        let mut headers = RawValue::from_string(r#"{"a":"1","traceparent":"x"}"#.into()).unwrap();
        set_in_headers(&mut headers, TP);
        assert_eq!(of_headers(&headers).as_deref(), Some(TP));
        assert!(headers.get().contains(r#""a":"1""#));
        let mut odd = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        set_in_headers(&mut odd, TP);
        assert_eq!(odd.get(), r#"{"a":1}"#, "not a string map: untouched");
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_unless_it_has_it() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/base/?tenant=a").unwrap(),
            "http://c:4318/base/v1/traces?tenant=a"
        );
        assert!(traces_url("https://c:4318").is_err());
        assert!(traces_url("c:4318").is_err());
        for bad in [
            "http://c:99999",
            "http://c:4318x",
            "http://c:",
            "http://[::1]:0",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
        assert!(traces_url("http://[::1]:4318").is_ok());
        assert!(traces_url("http://[::1]").is_ok());
    }

    #[test]
    fn credentials_in_an_endpoint_never_reach_the_log() {
        assert_eq!(
            without_credentials("http://user:secret@c:4318/v1/traces?k=a@b"),
            "http://***@c:4318/v1/traces?k=a@b"
        );
        assert_eq!(
            without_credentials("http://c:4318/v1/traces?k=a@b"),
            "http://c:4318/v1/traces?k=a@b"
        );
        assert_eq!(without_credentials("junk"), "junk");
    }
}

//! Ack with emit: check the lease, publish the next step's messages with
//! deterministic idempotency keys, then ack.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broker::Broker;
use crate::broker::delivery::{AckOutcome, CurrentDelivery, Emitted, parse_receipts};
use crate::broker::message::headers_schema;
use crate::broker::publish::PublishRequest;
use crate::channels::history::ChannelPublish;
use crate::channels::{ChannelName, Channels};
use crate::coord::Coord;
use crate::error::{Error, Result};
use crate::names::{Group, Tenant, Topic};
use crate::traces::{self, MessageSpan, TRACEPARENT, attr};

/// Most messages one ack may emit.
pub const MAX_EMITS: usize = 100;

/// One message of the next step.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The topic to publish to (of the same tenant).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub topic: Option<Topic>,
    /// A realtime channel of the same tenant (instead of `topic`): the
    /// message is appended to its history and fanned out live. `key`,
    /// `delay_ms` and `ttl_ms` apply to topics only.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub channel: Option<String>,
    /// Any JSON value.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Ordering key of the emitted message (1 to 256 bytes of UTF-8, no
    /// control characters).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub key: Option<String>,
    /// Headers of the emitted message.
    #[serde(default)]
    #[schema(schema_with = headers_schema)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Deliver no sooner than this (ms).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 31536000000_u64)]
    pub delay_ms: Option<u64>,
    /// Never deliver after this (ms).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 31536000000_u64)]
    pub ttl_ms: Option<u64>,
}

/// Where one emit goes, ready to publish.
enum Step {
    /// A message of a topic (with its idempotency key set).
    Topic(Topic, PublishRequest),
    /// A realtime channel message (with its idempotency key set).
    Channel(ChannelName, ChannelPublish),
}

/// The message of emit `index`, caused by message `source_id` (entry
/// `stream_id` of `topic`), checked field by field (`emit[i].…` in errors).
/// It carries the idempotency key `emit:<group>:<message id>:<index>`, and
/// its duplicates are detected within the source entry,
/// `emit:<topic>:<group>:<stream id>:<index>`: ids are the client's and need
/// not be unique (the same id in two topics, twice in one topic, or again
/// after the topic was deleted), and two such steps are two next steps. A
/// DLQ replay keeps the entry, so its redo emits nothing new.
fn next_step(
    (topic, group, stream_id): (&Topic, &Group, &str),
    (source_id, correlation): (&str, Option<&str>),
    index: usize,
    emit: Emit,
) -> Result<Step> {
    let prefix = format!("emit[{index}].");
    // Server-made, so not held to the client's length limit.
    let idempotency_key = format!("emit:{group}:{source_id}:{index}");
    // Starts with a control character, which a client's idempotency key
    // may not hold: no client publish can take an emit's place (a client
    // key spelling `emit:<topic>:<group>:<stream id>:<index>` made the
    // step's emit answer as its duplicate, and the emit was never written).
    let identity = format!("\u{1}emit:{topic}:{group}:{stream_id}:{index}");
    let correlation = correlation.unwrap_or(source_id);
    match (emit.topic, emit.channel) {
        (Some(_), Some(_)) => Err(Error::invalid_field(
            format!("{prefix}channel"),
            "give either topic or channel, not both",
        )),
        (None, None) => Err(Error::invalid_field(
            format!("{prefix}topic"),
            "is required (or channel)",
        )),
        (Some(topic), None) => {
            let mut request = PublishRequest {
                payload: emit.payload,
                id: None,
                key: emit.key,
                idempotency_key: None,
                causation_id: Some(source_id.to_owned()),
                correlation_id: Some(correlation.to_owned()),
                ttl_ms: emit.ttl_ms,
                delay_ms: emit.delay_ms,
                headers: emit.headers,
                schema_version: None,
                dedup_scope: None,
            };
            request.validate(&prefix)?;
            request.idempotency_key = Some(idempotency_key);
            request.dedup_scope = Some(identity);
            Ok(Step::Topic(topic, request))
        }
        (None, Some(channel)) => {
            for (field, given) in [
                ("key", emit.key.is_some()),
                ("delay_ms", emit.delay_ms.is_some()),
                ("ttl_ms", emit.ttl_ms.is_some()),
            ] {
                if given {
                    return Err(Error::invalid_field(
                        format!("{prefix}{field}"),
                        "applies to topics only, not to a channel",
                    ));
                }
            }
            let channel = ChannelName::parse(&channel)
                .map_err(|e| Error::invalid_field(format!("{prefix}channel"), e.to_string()))?;
            crate::validate::check_json_strings(
                format_args!("{prefix}payload"),
                emit.payload.get(),
            )?;
            let mut headers = emit.headers.unwrap_or_default();
            if let Some(h) = Some(&headers).filter(|h| !h.is_empty()) {
                crate::broker::message::check_headers(&format!("{prefix}headers"), h)?;
            }
            // A channel message has no envelope of its own: the step's
            // lineage travels in its headers (unless the app set them).
            headers
                .entry("causation_id".to_owned())
                .or_insert_with(|| source_id.to_owned());
            headers
                .entry("correlation_id".to_owned())
                .or_insert_with(|| correlation.to_owned());
            Ok(Step::Channel(
                channel,
                ChannelPublish {
                    payload: emit.payload,
                    // A channel message shows no idempotency key: the
                    // identity is its key.
                    idempotency_key: Some(identity),
                    headers: Some(headers),
                },
            ))
        }
    }
}

/// What an ack with emit needs: the broker, the quotas and the channels.
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    /// Topics and groups.
    pub broker: &'a Broker,
    /// Publish quotas.
    pub coord: &'a Coord,
    /// Realtime channels.
    pub channels: &'a Channels,
}

impl Steps<'_> {
    /// Acks one delivery and publishes `emits`, each exactly once however
    /// often the step is redone. A lost lease answers `lease_lost` (409 for
    /// the caller) and emits nothing; a refused publish (quota, backlog)
    /// fails the call before the ack, so the worker retries the whole step.
    pub async fn ack_with_emit(
        &self,
        (tenant, topic, group): (&Tenant, &Topic, &Group),
        receipts: &[String],
        emits: Vec<Emit>,
    ) -> Result<AckOutcome> {
        if receipts.len() != 1 {
            return Err(Error::invalid_field(
                "receipts",
                "an ack with emit takes exactly one receipt",
            ));
        }
        if emits.len() > MAX_EMITS {
            return Err(Error::invalid_field(
                "emit",
                format!("at most {MAX_EMITS} messages"),
            ));
        }
        let receipt = &parse_receipts(receipts)?[0];
        let Some(source) = self
            .broker
            .current_delivery(tenant, topic, group, receipt)
            .await?
        else {
            return Err(lease_lost(&receipts[0], "nothing was emitted"));
        };
        let source_id = source.id.as_str();
        let steps = emits
            .into_iter()
            .enumerate()
            .map(|(i, emit)| {
                next_step(
                    (topic, group, &receipt.stream_id),
                    (source_id, source.correlation_id.as_deref()),
                    i,
                    emit,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // The trace goes on: each emitted message continues the source's
        // (through the caller's span when that is in the same trace).
        let parent = traces::continued(source.traceparent.as_deref());
        let mut emitted = Vec::with_capacity(steps.len());
        for mut step in steps {
            let mut span = emit_span((tenant, group), &source, parent.as_deref(), &mut step);
            let result = self.emit_one(tenant, step).await;
            match &result {
                Ok(Emitted::Topic(p)) => span.set(attr::MESSAGE_ID, &p.id),
                Ok(Emitted::Channel(_)) => {}
                Err(e) => span.fail(e.code()),
            }
            emitted.push(result?);
        }
        let mut ack = self.broker.ack(tenant, topic, group, receipts).await?;
        if !ack.lease_lost.is_empty() {
            // The emits stand; whoever holds the lease now redoes the step
            // and its emits answer as duplicates.
            return Err(lease_lost(
                &receipts[0],
                "its emits are kept and a redo of the step emits nothing new",
            ));
        }
        ack.emitted = Some(emitted);
        Ok(ack)
    }
}

impl Steps<'_> {
    /// Publishes one emitted message.
    async fn emit_one(&self, tenant: &Tenant, step: Step) -> Result<Emitted> {
        Ok(match step {
            Step::Topic(target, request) => {
                let (published, _) = self
                    .broker
                    .publish_one_within_quota(self.coord, tenant, &target, &request)
                    .await?;
                let causation = request.causation_id.as_deref().unwrap_or_default();
                tracing::debug!(id = %published.id, causation_id = %causation, topic = %target, "emitted");
                Emitted::Topic(published)
            }
            Step::Channel(channel, message) => {
                let published = self.channels.append(tenant, &channel, &message).await?;
                tracing::debug!(offset = published.offset, channel = %channel, "emitted");
                Emitted::Channel(published)
            }
        })
    }
}

/// The `emit` span of one emitted message, under the message's own
/// `traceparent` when the worker set one, else under `parent`; the message
/// then carries the span's `traceparent` (or `parent` when tracing is off),
/// so the next step continues the trace.
fn emit_span(
    (tenant, group): (&Tenant, &Group),
    source: &CurrentDelivery,
    parent: Option<&str>,
    step: &mut Step,
) -> MessageSpan {
    let headers = match step {
        Step::Topic(_, request) => &mut request.headers,
        Step::Channel(_, message) => &mut message.headers,
    };
    let own = headers
        .as_ref()
        .and_then(|h| h.get(TRACEPARENT))
        .filter(|t| traces::parse(t).is_some())
        .cloned();
    let parent = own.as_deref().or(parent);
    let mut span = MessageSpan::start(traces::Step::Emit, parent);
    if let Some(traceparent) = span.traceparent().or_else(|| parent.map(str::to_owned)) {
        headers
            .get_or_insert_with(Default::default)
            .insert(TRACEPARENT.to_owned(), traceparent);
    }
    if span.is_recording() {
        span.set(attr::TENANT, tenant.as_str());
        span.set(attr::GROUP, group.as_str());
        span.set(attr::CAUSATION_ID, &source.id);
        let correlation = source.correlation_id.as_deref().unwrap_or(&source.id);
        span.set(attr::CORRELATION_ID, correlation);
        match step {
            Step::Topic(target, _) => span.set(attr::TOPIC, target.as_str()),
            Step::Channel(channel, _) => span.set(attr::CHANNEL, channel.as_str()),
        }
    }
    span
}

fn lease_lost(receipt: &str, emits: &str) -> Error {
    Error::Conflict {
        code: "lease_lost",
        detail: format!("the lease of receipt '{receipt}' was lost: do not commit; {emits}"),
    }
}

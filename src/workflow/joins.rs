//! Fan-in joins: a step fans out to N parts (models, tools, shards); each
//! part posts its result or error once; when the last one lands, one script
//! publishes the aggregate to the join's topic, exactly once. A join never
//! waits forever: at its deadline a sweep (in the retention pass) finishes
//! it as `timeout`, with the parts still `missing`, or dead-letters it.
//!
//! Peers' failures this avoids: BullMQ parents stuck in `waiting-children`
//! when a child fails, Celery chord callbacks lost on a timeout during the
//! counter increment. Here the record, the count and the publish are one
//! script, and every join has a deadline.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::broker::listing::Listing;
use crate::broker::publish::MAX_REF_LEN;
use crate::broker::{Broker, DEFAULT_DEDUP_WINDOW_MS};
use crate::error::{Error, NotFoundKind, Result};
use crate::keys::TopicKeys;
use crate::names::{Join, Part, Tenant, Topic};
use crate::traces::{self, MessageSpan, attr};
use crate::validate::{check_range, check_text};

/// Most parts of one join.
pub const MAX_PARTS: usize = 1000;
/// Longest join deadline: 7 days.
pub const MAX_JOIN_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How long a finished join stays readable through `GET`.
pub const KEEP_FINISHED_MS: u64 = 24 * 60 * 60 * 1000;
/// Due joins one sweep of a topic reads at a time.
const SWEEP_BATCH: usize = 100;
/// Batches one sweep of a topic takes at most (10,000 joins): the rest wait
/// for the next pass (a sweep finishing 100 per pass left 10,000 joins due
/// at once about 17 minutes late at the default 10 s interval).
const SWEEP_BATCHES: usize = 100;

/// What happens at the deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Publish the aggregate with `status: timeout` and the `missing` parts.
    #[default]
    Emit,
    /// Publish nothing; the join shows `state: dead_lettered`.
    DeadLetter,
}

impl OnTimeout {
    fn as_str(self) -> &'static str {
        match self {
            Self::Emit => "emit",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// Body of `PUT …/joins/{join}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The parts to wait for (1 to 1000 distinct names).
    #[schema(schema_with = parts_schema)]
    pub parts: Vec<Part>,
    /// Deadline from now, ms (1 to 7 days).
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 604800000_u64)]
    pub ttl_ms: u64,
    /// At the deadline: `emit` (default) or `dead_letter`.
    #[serde(default)]
    pub on_timeout: Option<OnTimeout>,
    /// The aggregate's ordering key (e.g. the user the fan-out serves), so
    /// a group with `ordering: key` takes the aggregates of one key in order.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub key: Option<String>,
    /// The aggregate's `correlation_id` (e.g. the request the fan-out serves).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub correlation_id: Option<String>,
}

/// The schema of a join's `parts`: 1 to 1000 distinct part names.
fn parts_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(<Part as utoipa::PartialSchema>::schema())
        .min_items(Some(1))
        .max_items(Some(MAX_PARTS))
        .unique_items(true)
        .description(Some("The parts to wait for: 1 to 1000 distinct names."))
        .build()
}

/// Body of `POST …/joins/{join}/parts/{part}`: exactly one of the two.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct PartRequest {
    /// The part's result (any JSON, `null` included).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// The part's error (any JSON, usually a string).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub error: Option<Box<RawValue>>,
}

/// A field that is present is `Some`, even when it is JSON `null` (a part
/// may well produce `null`); only a missing field is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// What recording a part came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartRecorded {
    /// False when the same part with the same body was already recorded.
    pub recorded: bool,
    /// The join's state now: `open`, `complete`, `failed`, `timeout` or
    /// `dead_lettered`.
    pub state: String,
    /// The aggregate's stream id, once published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

/// What `GET …/joins/{join}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JoinInfo {
    /// The join's name.
    pub join: String,
    /// `open`, `complete`, `failed`, `timeout` or `dead_lettered`.
    pub state: String,
    /// The parts, in declared order.
    pub parts: Vec<String>,
    /// Results by part.
    #[schema(value_type = Object)]
    pub results: BTreeMap<String, Box<RawValue>>,
    /// Errors by part.
    #[schema(value_type = Object)]
    pub errors: BTreeMap<String, Box<RawValue>>,
    /// Parts with neither.
    pub missing: Vec<String>,
    /// At the deadline (ms, Redis clock) an open join times out.
    pub deadline: u64,
    /// `emit` or `dead_letter`.
    pub on_timeout: OnTimeout,
    /// Declared at (ms, Redis clock).
    pub created_at: u64,
    /// The aggregate's ordering key, when declared with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The aggregate's `correlation_id`, when declared with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The aggregate's stream id, once published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

/// The `join` span of a part, under the caller's context when it continues
/// the join's trace (the declaring step's), else the join's. With neither
/// there is no trace to add to, and no span (never a stray one-span trace),
/// as for an ack.
fn part_span(
    (tenant, topic): (&Tenant, &Topic),
    (join, part): (&Join, &Part),
    traceparent: Option<&str>,
) -> Option<MessageSpan> {
    if !traces::enabled() {
        return None;
    }
    let parent = traces::continued(traceparent.filter(|t| !t.is_empty()))?;
    let mut span = MessageSpan::on(traces::Step::Join, Some(&parent), tenant, topic, None);
    span.set(attr::JOIN, join.as_str());
    span.set(attr::PART, part.as_str());
    Some(span)
}

fn join_not_found(join: &Join) -> Error {
    Error::NotFound {
        kind: NotFoundKind::Join,
        name: join.to_string(),
    }
}

impl Broker {
    /// Declares a join; true when created. The same declaration again is a
    /// no-op; other parts or `on_timeout` for a live join is a conflict.
    pub async fn declare_join(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        join: &Join,
        request: &JoinRequest,
    ) -> Result<bool> {
        if request.parts.is_empty() || request.parts.len() > MAX_PARTS {
            return Err(Error::invalid_field(
                "parts",
                format!("must hold between 1 and {MAX_PARTS} parts"),
            ));
        }
        let distinct: HashSet<&Part> = request.parts.iter().collect();
        if distinct.len() != request.parts.len() {
            return Err(Error::invalid_field("parts", "must not repeat a part"));
        }
        check_range("ttl_ms", Some(request.ttl_ms), 1, MAX_JOIN_TTL_MS)?;
        let lineage = [
            ("key", &request.key),
            ("correlation_id", &request.correlation_id),
        ];
        for (field, value) in lineage {
            if let Some(value) = value {
                check_text(field, value, MAX_REF_LEN)?;
            }
        }
        let parts: Vec<&str> = request.parts.iter().map(Part::as_str).collect();
        // The declaring step's trace (valid W3C text only), which the
        // aggregate carries on.
        let traceparent = traces::continued(None).unwrap_or_default();
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store().conn().await?;
        let listing = Listing::before_create(&mut conn, tenant, topic).await?;
        let (outcome, topic_created): (i64, i64) = self
            .store()
            .scripts()
            .join_declare
            .key(keys.join(join))
            .key(keys.joins())
            .key(keys.meta())
            .arg(DEFAULT_DEDUP_WINDOW_MS)
            .arg(join.as_str())
            .arg(parts.join("\n"))
            .arg(request.ttl_ms)
            .arg(request.on_timeout.unwrap_or_default().as_str())
            .arg(KEEP_FINISHED_MS)
            .arg(traceparent)
            .arg(request.key.as_deref().unwrap_or_default())
            .arg(request.correlation_id.as_deref().unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        listing.settle(topic_created == 1).await?;
        match outcome {
            -1 => Err(Error::Conflict {
                code: "join_config_conflict",
                detail: format!(
                    "join '{join}' exists with other parts, on_timeout, key or correlation_id; a join's declaration is fixed"
                ),
            }),
            created => Ok(created == 1),
        }
    }

    /// Records `part`'s result or error (`max_bytes`: the most a join's
    /// results and errors may hold together). The part that completes the
    /// join publishes the aggregate.
    pub async fn record_part(
        &self,
        (tenant, topic): (&Tenant, &Topic),
        (join, part): (&Join, &Part),
        request: &PartRequest,
        max_bytes: usize,
    ) -> Result<PartRecorded> {
        let (kind, value) = match (&request.result, &request.error) {
            (Some(r), None) => ("r", r.get()),
            (None, Some(e)) => ("e", e.get()),
            _ => {
                return Err(Error::bad_request(
                    "invalid_body",
                    "give exactly one of result and error",
                ));
            }
        };
        let called = self
            .join_call(tenant, topic, join, (part.as_str(), kind, value), max_bytes)
            .await;
        let (code, state, stream_id, traceparent) = match called {
            Ok(reply) => reply,
            Err(e) => {
                if let Some(mut span) = part_span((tenant, topic), (join, part), None) {
                    span.fail(e.code());
                }
                return Err(e);
            }
        };
        if let Some(mut span) = part_span((tenant, topic), (join, part), Some(&traceparent)) {
            span.set(attr::OUTCOME, &state);
            span.set_int("streamcar.join.code", code);
        }
        let conflict = |code: &'static str, detail: String| Err(Error::Conflict { code, detail });
        match code {
            1 | 0 => Ok(PartRecorded {
                recorded: code == 1,
                state,
                stream_id: (!stream_id.is_empty()).then_some(stream_id),
            }),
            -1 => Err(join_not_found(join)),
            -2 => Err(Error::NotFound {
                kind: NotFoundKind::JoinPart,
                name: part.to_string(),
            }),
            -3 => conflict(
                "part_conflict",
                format!("part '{part}' was already recorded with another result or error"),
            ),
            -4 => conflict(
                "join_finished",
                format!("join '{join}' is already {state}; part '{part}' came too late"),
            ),
            -7 => {
                metrics::counter!(
                    crate::telemetry::JOINS_TIMED_OUT,
                    crate::telemetry::topic_labels(tenant, topic)
                )
                .increment(1);
                conflict(
                    "join_finished",
                    format!(
                        "join '{join}' passed its deadline and is now {state}; part '{part}' came too late"
                    ),
                )
            }
            -5 => Err(Error::TooLarge {
                code: "join_too_large",
                detail: format!(
                    "the results and errors of join '{join}' would pass {max_bytes} bytes (--max-body)"
                ),
            }),
            other => Err(Error::Internal(format!("join_part.lua answered {other}"))),
        }
    }

    async fn join_call(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        join: &Join,
        (part, kind, value): (&str, &str, &str),
        max_bytes: usize,
    ) -> Result<(i64, String, String, String)> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store().conn().await?;
        Ok(self
            .store()
            .scripts()
            .join_part
            .key(keys.join(join))
            .key(keys.joins())
            .key(keys.meta())
            .key(keys.stream())
            .arg(join.as_str())
            .arg(part)
            .arg(kind)
            .arg(value)
            .arg(max_bytes)
            .arg(uuid::Uuid::now_v7().to_string())
            .arg(keys.wake_channel())
            .invoke_async(&mut conn)
            .await?)
    }

    /// Describes a join; 404 when it does not exist (or has expired).
    pub async fn join_info(&self, tenant: &Tenant, topic: &Topic, join: &Join) -> Result<JoinInfo> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store().conn().await?;
        let (meta_incarnation, mut fields): (Option<String>, HashMap<String, String>) =
            redis::pipe()
                .hget(keys.meta(), "incarnation")
                .hgetall(keys.join(join))
                .query_async(&mut conn)
                .await?;
        if fields.is_empty() || fields.get("incarnation") != meta_incarnation.as_ref() {
            return Err(join_not_found(join));
        }
        let parts: Vec<String> = fields
            .get("parts")
            .map(|p| p.split('\n').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut results = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut missing = Vec::new();
        for part in &parts {
            let raw =
                |v: String| RawValue::from_string(v).map_err(|e| Error::Internal(e.to_string()));
            if let Some(r) = fields.remove(&format!("r:{part}")) {
                results.insert(part.clone(), raw(r)?);
            } else if let Some(e) = fields.remove(&format!("e:{part}")) {
                errors.insert(part.clone(), raw(e)?);
            } else {
                missing.push(part.clone());
            }
        }
        let number = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(JoinInfo {
            join: join.to_string(),
            state: fields.get("state").cloned().unwrap_or_default(),
            deadline: number("deadline"),
            created_at: number("created_at"),
            on_timeout: if fields.get("on_timeout").is_some_and(|o| o == "dead_letter") {
                OnTimeout::DeadLetter
            } else {
                OnTimeout::Emit
            },
            stream_id: fields.get("stream_id").filter(|s| !s.is_empty()).cloned(),
            key: fields.remove("key").filter(|k| !k.is_empty()),
            correlation_id: fields.remove("correlation_id").filter(|c| !c.is_empty()),
            parts,
            results,
            errors,
            missing,
        })
    }

    /// Finishes the topic's joins whose deadline has passed (timeout or
    /// dead letter), [`SWEEP_BATCH`] at a time, up to [`SWEEP_BATCHES`]
    /// batches; returns how many. Each finish is one script that checks the
    /// join is still open, so sidecars sweeping at once finish each join
    /// once.
    pub async fn sweep_joins(&self, tenant: &Tenant, topic: &Topic) -> Result<u64> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store().conn().await?;
        let now: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let mut finished = 0;
        // Each batch reads from the front again: what the previous one
        // finished or found gone left the index.
        for _ in 0..SWEEP_BATCHES {
            let due: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys.joins())
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .query_async(&mut conn)
                .await?;
            let full = due.len() == SWEEP_BATCH;
            for name in due {
                let Ok(join) = Join::parse(&name) else {
                    continue;
                };
                let (code, state, _, _) = self
                    .join_call(tenant, topic, &join, ("", "", ""), 0)
                    .await?;
                // Gone (-1: expired or an older incarnation's): the script
                // dropped it from the index itself, atomically (a ZREM here
                // could drop the entry of a join declared again in between,
                // which then would never time out).
                if code == 1 {
                    tracing::debug!(%tenant, %topic, %join, %state, "join finished at its deadline");
                    finished += 1;
                }
            }
            if !full {
                break;
            }
        }
        Ok(finished)
    }
}

//! Publishing: validate a message envelope, then dedupe + sequence + append
//! it in one atomic step (`lua/publish.lua`).
//!
//! A batch is one script call: valid items are appended in order under one
//! sequence range, invalid items fail alone and never reach Redis. Each
//! message has its own outcome: written, a duplicate of an earlier
//! idempotency key, or refused (429) by the tenant's quota or the topic's
//! backlog, so a refusal never hides a duplicate and only written messages
//! spend the quota ([`Broker::publish_within_quota`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use redis::{FromRedisValue, ParsingError, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::listing::Listing;
use super::message::headers_schema;
use super::{Broker, DEFAULT_DEDUP_WINDOW_MS};
use crate::coord::Coord;
use crate::coord::limits::Admission;
use crate::error::{Error, RateLimitInfo, Result};
use crate::keys::TopicKeys;
use crate::names::{Tenant, Topic};
use crate::scripts::{Invocation, Scripts};
use crate::telemetry;
use crate::validate::check_text;

/// Longest accepted `id`, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted `key`, `idempotency_key`, `causation_id`, `correlation_id`.
pub const MAX_REF_LEN: usize = 256;
/// Longest accepted `schema_version`.
pub const MAX_SCHEMA_VERSION_LEN: usize = 64;
/// Most headers on one message.
pub const MAX_HEADERS: usize = 64;
/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Longest `ttl_ms` / `delay_ms`: 365 days.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// Reply of `lua/publish.lua`, one flat array: the created flag (1) or not
/// (0, or -2 when the backlog refused everything), the topic's max_backlog,
/// the seq of the first message written, then one value per message (see
/// [`Outcome`]).
struct PublishReply {
    created: i64,
    max_backlog: u64,
    first_seq: u64,
    outcomes: Vec<Outcome>,
}

/// What `lua/publish.lua` did with one message.
enum Outcome {
    /// Written under this stream id (its seq follows from the reply's
    /// `first_seq`, its id is the one sent).
    Written(String),
    /// A duplicate of the message written first: its id, stream id, seq.
    Duplicate(String, String, u64),
    /// Refused: the backlog is full.
    Refused,
}

impl FromRedisValue for PublishReply {
    fn from_redis_value(v: Value) -> std::result::Result<Self, ParsingError> {
        let mut items = Vec::<Value>::from_redis_value(v)?.into_iter();
        let (Some(created), Some(max_backlog), Some(first_seq)) =
            (items.next(), items.next(), items.next())
        else {
            return Err("publish.lua answered without its header".into());
        };
        let outcomes = items
            .map(|item| match item {
                Value::Int(REFUSED_BACKLOG) => Ok(Outcome::Refused),
                Value::Array(_) => {
                    let (id, stream_id, seq) = FromRedisValue::from_redis_value(item)?;
                    Ok(Outcome::Duplicate(id, stream_id, seq))
                }
                written => String::from_redis_value(written).map(Outcome::Written),
            })
            .collect::<std::result::Result<_, ParsingError>>()?;
        Ok(Self {
            created: i64::from_redis_value(created)?,
            max_backlog: u64::from_redis_value(max_backlog)?,
            first_seq: u64::from_redis_value(first_seq)?,
            outcomes,
        })
    }
}

/// One message's row of a publish: id, stream id, seq, outcome, and the
/// topic's max_backlog at the time (for a refusal's detail).
pub type PublishRow = (String, String, u64, i64, u64);

/// Combines concurrent publishes to one topic into one `publish.lua` call
/// (see [`super::commit`]), keyed by the topic's stream key.
/// Requests with at least this many messages skip group commit: they are a
/// batch already, and sending them at once keeps several script calls of
/// one topic in flight, so Redis never idles between two combined calls.
const COMBINE_BELOW: usize = 16;

pub(crate) type PublishCommits = super::commit::Batcher<String, Encoded, PublishRow>;

/// Per-message outcomes of `lua/publish.lua`.
const WRITTEN: i64 = 0;
const DUPLICATE: i64 = 1;
const REFUSED_BACKLOG: i64 = 2;

/// Raw reply of `lua/publish_dups.lua`: `(found, id, stream_id, seq)` per key.
type DupsReply = Vec<(i64, String, String, u64)>;

/// Most messages in one batch request.
pub const MAX_BATCH: usize = 1000;

/// One message as a publisher sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Any JSON value; stored verbatim.
    #[schema(value_type = serde_json::Value, example = json!({"prompt": "Summarize ticket 42"}))]
    pub payload: Box<RawValue>,
    /// Client-chosen message id; defaults to a UUIDv7.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub id: Option<String>,
    /// Ordering / partition key (e.g. a user id).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub key: Option<String>,
    /// Publishing the same key again inside the topic's window is a no-op.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub idempotency_key: Option<String>,
    /// Id of the message that caused this one.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub causation_id: Option<String>,
    /// Id shared by every message of one workflow.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub correlation_id: Option<String>,
    /// After this long the message is never delivered (dead-letters as `expired`).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 31536000000_u64)]
    pub ttl_ms: Option<u64>,
    /// Not delivered to any group before this long has passed.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 31536000000_u64)]
    pub delay_ms: Option<u64>,
    /// String map carried with the message (e.g. `traceparent`).
    #[serde(default)]
    #[schema(schema_with = headers_schema)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Version of the payload's schema, for consumers.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub schema_version: Option<String>,
    /// Set by the server only, never read from a request: the identity
    /// duplicates are detected by, when it is not `idempotency_key` itself
    /// (ack with emit scopes it to the source entry, see
    /// `crate::workflow::emit`).
    #[serde(skip)]
    pub dedup_scope: Option<String>,
}

/// What a publish answers for one message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Published {
    /// The message id (client's or generated).
    pub id: String,
    /// Redis stream entry id.
    pub stream_id: String,
    /// Per-topic sequence number.
    pub seq: u64,
    /// True when the idempotency key was seen before and nothing was written.
    pub duplicate: bool,
}

impl PublishRequest {
    /// What duplicates of this message are detected by: its dedup scope,
    /// else its idempotency key.
    pub fn dedup_key(&self) -> Option<&str> {
        self.dedup_scope
            .as_deref()
            .or(self.idempotency_key.as_deref())
    }

    /// Validates every field; `prefix` is prepended to field names in errors
    /// (`messages[3].` inside a batch).
    pub fn validate(&self, prefix: &dyn std::fmt::Display) -> Result<()> {
        let texts = [
            ("id", &self.id, MAX_ID_LEN),
            ("key", &self.key, MAX_REF_LEN),
            ("idempotency_key", &self.idempotency_key, MAX_REF_LEN),
            ("causation_id", &self.causation_id, MAX_REF_LEN),
            ("correlation_id", &self.correlation_id, MAX_REF_LEN),
            (
                "schema_version",
                &self.schema_version,
                MAX_SCHEMA_VERSION_LEN,
            ),
        ];
        for (name, value, max) in texts {
            if let Some(value) = value {
                check_text(format_args!("{prefix}{name}"), value, max)?;
            }
        }
        crate::validate::check_json_strings(format_args!("{prefix}payload"), self.payload.get())?;
        if let Some(ttl) = self.ttl_ms
            && !(1..=MAX_DURATION_MS).contains(&ttl)
        {
            return Err(Error::invalid_field(
                format!("{prefix}ttl_ms"),
                format!("must be between 1 and {MAX_DURATION_MS}"),
            ));
        }
        if let Some(delay) = self.delay_ms
            && delay > MAX_DURATION_MS
        {
            return Err(Error::invalid_field(
                format!("{prefix}delay_ms"),
                format!("must be between 0 and {MAX_DURATION_MS}"),
            ));
        }
        if let Some(headers) = &self.headers {
            super::message::check_headers(&format!("{prefix}headers"), headers)?;
        }
        Ok(())
    }

    /// The envelope fields stored with the stream entry, besides the ones the
    /// script adds (`id`, `seq`, `published_at`, `expires_at`, `deliver_at`).
    /// Borrowed, so a large payload is copied once, into the command.
    fn envelope_fields(&self) -> Vec<(&'static str, Cow<'_, str>)> {
        let mut fields = vec![("payload", Cow::Borrowed(self.payload.get()))];
        let optional = [
            ("key", &self.key),
            ("idempotency_key", &self.idempotency_key),
            ("causation_id", &self.causation_id),
            ("correlation_id", &self.correlation_id),
            ("schema_version", &self.schema_version),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| value.as_deref().map(|v| (name, Cow::Borrowed(v)))),
        );
        if let Some(headers) = self.headers.as_ref().filter(|h| !h.is_empty()) {
            // A string map always serializes.
            let json = serde_json::to_string(headers).unwrap_or_default();
            fields.push(("headers", Cow::Owned(json)));
        }
        fields
    }
}

/// What a publish came to, message by message.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Per message, in order: published (or a duplicate), or why it was
    /// refused (429 `rate_limited` or `backlog_full`).
    pub items: Vec<Result<Published>>,
    /// The tenant's quota after the publish, for `RateLimit-*` headers
    /// (None when the tenant has none).
    pub quota: Option<RateLimitInfo>,
}

impl Broker {
    /// Publishes `messages` to `topic` within the tenant's quota: charges
    /// them, publishes, and gives back to the quota what was not written.
    ///
    /// The quota (`{tenant}`) and the topic (`{tenant:topic}`) live under
    /// different hash tags, so they cannot share one script on Redis
    /// Cluster; charging first and refunding after keeps a concurrent
    /// publisher from slipping past the quota in between. When the quota
    /// refuses, nothing is charged or written, and messages whose
    /// idempotency key was already written still answer as duplicates.
    pub async fn publish_within_quota(
        &self,
        coord: &Coord,
        tenant: &Tenant,
        topic: &Topic,
        messages: &[PublishRequest],
    ) -> Result<PublishOutcome> {
        let charge = match coord.charge_publish(tenant, messages.len() as u64).await? {
            Admission::Unlimited => None,
            Admission::Charged(charge) => Some(charge),
            Admission::Refused(refusal) => {
                // Boxed here and below: rare paths with Redis calls of their
                // own, which inline would make every publish's future large.
                let duplicates = Box::pin(self.find_duplicates(tenant, topic, messages)).await?;
                let refused = duplicates.iter().filter(|d| d.is_none()).count() as u64;
                metrics::counter!(telemetry::RATE_LIMITED, "tenant" => tenant.to_string())
                    .increment(refused);
                let items = duplicates
                    .into_iter()
                    .map(|d| d.ok_or_else(|| refusal.error(tenant)))
                    .collect();
                return Ok(PublishOutcome {
                    items,
                    quota: Some(refusal.info()),
                });
            }
        };
        // A failed call may or may not have written: the charge stays.
        let (items, written) = self.publish(tenant, topic, messages).await?;
        let quota = match charge {
            Some(charge) => Box::pin(coord.settle_publish(tenant, charge, written)).await,
            None => None,
        };
        Ok(PublishOutcome { items, quota })
    }

    /// Publishes one message within the quota: its own outcome (published or
    /// a duplicate, or why it was refused) and the quota state after it.
    pub async fn publish_one_within_quota(
        &self,
        coord: &Coord,
        tenant: &Tenant,
        topic: &Topic,
        message: &PublishRequest,
    ) -> Result<(Published, Option<RateLimitInfo>)> {
        let outcome = self
            .publish_within_quota(coord, tenant, topic, std::slice::from_ref(message))
            .await?;
        let published = outcome
            .items
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("publish returned no result".into()))??;
        Ok((published, outcome.quota))
    }

    /// Publishes `messages` to `topic` in order, as one atomic step, with no
    /// regard to quotas. Declares the topic with defaults when it does not
    /// exist yet. Returns each message's outcome and how many were written.
    ///
    /// Publishes to one topic that arrive while a call for it is in flight
    /// go together in the next call (group commit); each caller still gets
    /// only its own messages' outcomes.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        messages: &[PublishRequest],
    ) -> Result<(Vec<Result<Published>>, u64)> {
        let encoded: Vec<Encoded> = messages.iter().map(Encoded::new).collect();
        let rows = if encoded.len() >= COMBINE_BELOW {
            Box::pin(self.publish_encoded(tenant, topic, encoded)).await?
        } else {
            let keys = TopicKeys::new(tenant, topic);
            let bytes = encoded.iter().map(Encoded::bytes).sum();
            let broker = self.clone();
            let (t, p) = (tenant.clone(), topic.clone());
            self.commits
                .submit(&keys.stream(), encoded, bytes, move |batch| {
                    let (broker, t, p) = (broker.clone(), t.clone(), p.clone());
                    async move { broker.publish_encoded(&t, &p, batch).await }
                })
                .await?
        };
        let written = rows.iter().filter(|row| row.3 == WRITTEN).count() as u64;
        let items: Vec<Result<Published>> = rows
            .into_iter()
            .map(|(id, stream_id, seq, outcome, max_backlog)| match outcome {
                REFUSED_BACKLOG => Err(backlog_full(topic, max_backlog)),
                _ => Ok(Published {
                    id,
                    stream_id,
                    seq,
                    duplicate: outcome == DUPLICATE,
                }),
            })
            .collect();
        for (item, m) in items.iter().zip(messages) {
            if let Ok(p) = item {
                tracing::debug!(id = %p.id, seq = p.seq, duplicate = p.duplicate,
                    correlation_id = ?m.correlation_id, causation_id = ?m.causation_id, "published");
            }
        }
        Ok((items, written))
    }

    /// One `publish.lua` call for `batch` (one caller's messages or several
    /// callers' together): a row per message, in order.
    async fn publish_encoded(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        batch: Vec<Encoded>,
    ) -> Result<Vec<PublishRow>> {
        let keys = TopicKeys::new(tenant, topic);
        let call = encoded_call(self.store.scripts(), &keys, &batch);
        let mut conn = self.store.conn().await?;
        let listing = Listing::before_create(&mut conn, tenant, topic).await?;
        let reply: PublishReply = call.invoke_async(&mut conn).await?;
        // The messages are written: a listing that fails now stays the
        // guard's business (it stays armed and a task of its own lists the
        // topic), never the caller's error, or a client retrying the 503
        // would publish them again.
        if let Err(e) = listing.settle(reply.created == 1).await {
            tracing::warn!(%tenant, %topic, error = %e, "listing a topic its publish created failed; a task retries it");
        }
        if reply.outcomes.len() != batch.len() {
            return Err(Error::Internal(format!(
                "publish.lua answered {} outcomes for {} messages",
                reply.outcomes.len(),
                batch.len()
            )));
        }
        let (max_backlog, mut next_seq) = (reply.max_backlog, reply.first_seq);
        let rows: Vec<PublishRow> = reply
            .outcomes
            .into_iter()
            .zip(batch)
            .map(|(outcome, sent)| match outcome {
                Outcome::Written(stream_id) => {
                    next_seq += 1;
                    (sent.id, stream_id, next_seq - 1, WRITTEN, max_backlog)
                }
                Outcome::Duplicate(id, stream_id, seq) => {
                    (id, stream_id, seq, DUPLICATE, max_backlog)
                }
                Outcome::Refused => (sent.id, String::new(), 0, REFUSED_BACKLOG, max_backlog),
            })
            .collect();
        count_outcomes(tenant, topic, &rows);
        Ok(rows)
    }

    /// For each of `messages`, the message already written under its
    /// idempotency key in this incarnation of the topic (as a duplicate), if
    /// any. Writes nothing.
    pub async fn find_duplicates(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        messages: &[PublishRequest],
    ) -> Result<Vec<Option<Published>>> {
        let keyed: Vec<(usize, &str)> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.dedup_key().map(|k| (i, k)))
            .collect();
        let mut found = vec![None; messages.len()];
        if keyed.is_empty() {
            return Ok(found);
        }
        let keys = TopicKeys::new(tenant, topic);
        let mut call = self.store.scripts().publish_dups.key(keys.meta());
        for (_, idem) in &keyed {
            call.key(keys.dedup(idem));
        }
        let mut conn = self.store.conn().await?;
        let rows: DupsReply = call.invoke_async(&mut conn).await?;
        for ((i, _), (hit, id, stream_id, seq)) in keyed.into_iter().zip(rows) {
            if hit == 1 {
                found[i] = Some(Published {
                    id,
                    stream_id,
                    seq,
                    duplicate: true,
                });
            }
        }
        let duplicates = found.iter().flatten().count() as u64;
        if duplicates > 0 {
            metrics::counter!(
                telemetry::PUBLISH_DUPLICATES,
                telemetry::topic_labels(tenant, topic)
            )
            .increment(duplicates);
        }
        Ok(found)
    }
}

/// Counts what one `publish.lua` call came to, once per call rather than
/// once per caller of a combined call (building a labelled metric key costs
/// allocations and a registry lookup).
fn count_outcomes(tenant: &Tenant, topic: &Topic, rows: &[PublishRow]) {
    let count = |wanted: i64| rows.iter().filter(|row| row.3 == wanted).count() as u64;
    let (written, duplicates, refused) = (count(WRITTEN), count(DUPLICATE), count(REFUSED_BACKLOG));
    let labels = telemetry::topic_labels(tenant, topic);
    metrics::counter!(telemetry::PUBLISHED, labels.clone()).increment(written);
    if duplicates > 0 {
        metrics::counter!(telemetry::PUBLISH_DUPLICATES, labels.clone()).increment(duplicates);
    }
    if refused > 0 {
        metrics::counter!(telemetry::BACKLOG_REFUSED, labels).increment(refused);
    }
}

/// The 429 for a message refused because a group of `topic` owes `max_backlog`.
fn backlog_full(topic: &Topic, max_backlog: u64) -> Error {
    Error::TooManyRequests {
        code: "backlog_full",
        detail: format!(
            "a group of topic '{topic}' has {max_backlog} messages not yet acked (its max_backlog); publish again once consumers catch up"
        ),
        retry_after: Duration::from_secs(1),
        limit: Some(RateLimitInfo {
            limit: max_backlog,
            remaining: 0,
            reset: Duration::from_secs(1),
        }),
    }
}

/// A message ready for `publish.lua`: what the script takes of it, owned,
/// so that it can join another caller's call (group commit).
pub struct Encoded {
    /// The dedup key, when the message has an idempotency key.
    dedup_key: Option<String>,
    id: String,
    ttl_ms: u64,
    delay_ms: u64,
    fields: Vec<(&'static str, String)>,
}

impl Encoded {
    /// Encodes `message` (a new UUIDv7 id when it has none).
    fn new(message: &PublishRequest) -> Self {
        Self {
            dedup_key: message.dedup_key().map(str::to_owned),
            id: message
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            ttl_ms: message.ttl_ms.unwrap_or(0),
            delay_ms: message.delay_ms.unwrap_or(0),
            fields: message
                .envelope_fields()
                .into_iter()
                .map(|(name, value)| (name, value.into_owned()))
                .collect(),
        }
    }

    /// Its weight in a combined call.
    fn bytes(&self) -> usize {
        self.id.len() + self.fields.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// The `lua/publish.lua` call that appends `messages` to the topic of
/// `keys`. Public so the benchmark's raw baseline sends exactly the same call.
pub fn publish_call<'a>(
    scripts: &'a Scripts,
    keys: &TopicKeys,
    messages: &[PublishRequest],
) -> Invocation<'a> {
    let encoded: Vec<Encoded> = messages.iter().map(Encoded::new).collect();
    encoded_call(scripts, keys, &encoded)
}

/// The `lua/publish.lua` call for encoded messages.
fn encoded_call<'a>(
    scripts: &'a Scripts,
    keys: &TopicKeys,
    messages: &[Encoded],
) -> Invocation<'a> {
    let mut call = scripts.publish.prepare_invoke();
    call.key(keys.meta())
        .key(keys.stream())
        .key(keys.groups())
        .key(keys.progress());
    call.arg(DEFAULT_DEDUP_WINDOW_MS)
        .arg(keys.wake_channel())
        .arg(messages.len());
    let mut next_dedup_key = 5; // KEYS index of the next dedup key (Lua is 1-based)
    for message in messages {
        let dedup_index = match &message.dedup_key {
            Some(idem) => {
                call.key(keys.dedup(idem));
                next_dedup_key += 1;
                next_dedup_key - 1
            }
            None => 0,
        };
        call.arg(dedup_index)
            .arg(&message.id)
            .arg(message.ttl_ms)
            .arg(message.delay_ms)
            .arg(message.fields.len());
        for (name, value) in &message.fields {
            call.arg(*name).arg(value.as_str());
        }
    }
    call
}

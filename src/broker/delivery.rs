//! Delivery: fetch under a lease (with long-poll), fenced ack, and lease
//! renewal. At-least-once: a message leaves a group only when a worker that
//! still holds its lease acks it.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Broker;
use super::groups::group_not_found;
use super::message::Message;
use super::publish::Published;
use super::receipt::{Receipt, ReceiptText};
use super::traced;
use crate::error::{Error, Result};
use crate::keys::TopicKeys;
use crate::names::{Consumer, Group, Tenant, Topic};
use crate::scripts::{Invocation, NamedScript, Scripts};
use crate::telemetry;
use crate::traces::{self, Step};

/// Most messages one fetch may return.
pub const MAX_FETCH: u32 = 1000;
/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most receipts in one ack/extend call.
pub const MAX_RECEIPTS: usize = 1000;
/// Default byte budget of one fetch answer (payloads and envelopes).
pub const DEFAULT_FETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Largest byte budget a fetch may ask for.
pub const MAX_FETCH_BYTES: u64 = 64 * 1024 * 1024;
/// Most fetch script calls one fetch round makes while they only park
/// messages of busy keys (each reads up to 1,000 entries).
const MAX_CALLS_PER_ROUND: u32 = 100;

/// Body of `POST …/fetch`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Who is fetching; leases are held per consumer.
    pub consumer: Consumer,
    /// Most messages to return (1..=1000, default 1).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u32")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<u32>,
    /// Long-poll: wait up to this long for something deliverable (0..=30000, default 0).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
    /// Byte budget of the answer: stop before a message that would take it
    /// past this (1..=67108864, default 4 MiB). The first message always
    /// comes, however large.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 67108864)]
    pub max_bytes: Option<u64>,
    /// Receipts to ack before fetching (one round trip per message for a
    /// worker that handles one at a time). Up to 1000.
    #[serde(default)]
    #[schema(max_items = 1000, inline, value_type = Option<Vec<ReceiptText>>)]
    pub ack: Option<Vec<String>>,
}

/// One delivered message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The message and its envelope.
    #[serde(flatten)]
    pub message: Message,
    /// Delivery count of this message in this group (1 = first delivery).
    pub attempt: u64,
    /// Hand this back to ack, extend, nack or reject this delivery.
    pub receipt: String,
    /// When the lease ends unless extended (ms, Redis clock).
    pub lease_expires_at: u64,
}

/// The message of a delivery that is still current.
#[derive(Debug, Clone)]
pub struct CurrentDelivery {
    /// The message id.
    pub id: String,
    /// Its correlation id, if it has one.
    pub correlation_id: Option<String>,
    /// Its stored W3C `traceparent`, if it has one.
    pub traceparent: Option<String>,
}

/// Outcome of an ack.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct AckOutcome {
    /// Receipts whose message is now done for this group.
    pub acked: Vec<String>,
    /// Receipts whose lease was lost: the message was (or may be) redelivered.
    pub lease_lost: Vec<String>,
    /// Ack with emit: what each emitted message's publish came to, in order
    /// (a redone step gets the first publish's ids, as duplicates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emitted: Option<Vec<Emitted>>,
}

/// What one emit of an ack with emit came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Emitted {
    /// Published to a topic: `{id, stream_id, seq, duplicate}`.
    Topic(Published),
    /// Appended to a realtime channel: `{offset, epoch, duplicate}`.
    Channel(crate::channels::history::ChannelPublished),
}

/// One renewed lease.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Extended {
    /// The receipt, still valid.
    pub receipt: String,
    /// New lease end (ms, Redis clock).
    pub lease_expires_at: u64,
}

/// Outcome of an extend.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ExtendOutcome {
    /// Leases renewed.
    pub extended: Vec<Extended>,
    /// Receipts whose lease was already lost.
    pub lease_lost: Vec<String>,
    /// The group's `lease_ms` as the extend read it (for the push
    /// keep-alive, which renews every half lease); not in the answer.
    #[serde(skip)]
    pub group_lease_ms: u64,
}

/// A call of a group script: the eleven keys every such script takes first
/// (`group_keys` in `lua/prelude.lua`: the group's, then the topic's
/// progress zset), then the group name and the topic's wake-up channel.
pub(crate) fn group_call<'a>(
    script: &'a NamedScript,
    keys: &TopicKeys,
    group: &Group,
) -> Invocation<'a> {
    let gk = keys.group(group);
    let mut call = script.key(keys.stream());
    call.key(gk.config())
        .key(gk.delayed())
        .key(gk.dlq())
        .key(keys.meta())
        .key(gk.leases())
        .key(gk.deliveries())
        .key(gk.dlq_index())
        .key(gk.heads())
        .key(gk.parked())
        .key(keys.progress())
        .arg(group.as_str())
        .arg(keys.wake_channel());
    call
}

/// The `lua/fetch.lua` call for one fetch round. Public so the benchmark's
/// raw baseline sends exactly the same call.
pub fn fetch_call<'a>(
    scripts: &'a Scripts,
    keys: &TopicKeys,
    group: &Group,
    consumer: &Consumer,
    max: u32,
    max_bytes: u64,
    acks: &[Receipt],
) -> Invocation<'a> {
    let mut call = group_call(&scripts.fetch, keys, group);
    call.arg(consumer.as_str()).arg(max).arg(max_bytes);
    receipt_args(&mut call, acks);
    call
}

/// The `lua/ack.lua` call for `receipts`. Public for the benchmark too.
pub fn ack_call<'a>(
    scripts: &'a Scripts,
    keys: &TopicKeys,
    group: &Group,
    receipts: &[Receipt],
) -> Invocation<'a> {
    let mut call = group_call(&scripts.ack, keys, group);
    receipt_args(&mut call, receipts);
    call
}

/// Appends `receipts` as the scripts take them: stream id, then
/// `<attempt>:<delivery>`.
fn receipt_args(call: &mut Invocation<'_>, receipts: &[Receipt]) {
    for r in receipts {
        call.arg(&r.stream_id).arg(r.fence());
    }
}

/// Parses receipts, refusing the whole call on the first malformed one.
pub fn parse_receipts(receipts: &[String]) -> Result<Vec<Receipt>> {
    parse_receipts_of("receipts", receipts)
}

/// Parses the receipts of a call that settles them (ack, nack, reject):
/// [`parse_receipts_of`] `field`, then [`distinct`].
pub(super) fn parse_settled_receipts(
    field: &str,
    texts: &[String],
) -> Result<(Vec<String>, Vec<Receipt>)> {
    Ok(distinct(texts, parse_receipts_of(field, texts)?))
}

/// A call's receipts without repeats (by the delivery they name; the first
/// text kept), with their parsed forms: a receipt given twice in one call
/// is settled once and reported once, never as both acked and lease_lost.
fn distinct(texts: &[String], parsed: Vec<Receipt>) -> (Vec<String>, Vec<Receipt>) {
    let firsts: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(parsed.len());
        parsed.iter().map(|r| seen.insert(r)).collect()
    };
    if firsts.iter().all(|first| *first) {
        return (texts.to_vec(), parsed);
    }
    texts
        .iter()
        .cloned()
        .zip(parsed)
        .zip(firsts)
        .filter_map(|(pair, first)| first.then_some(pair))
        .unzip()
}

/// [`parse_receipts`] of the request field `field` (errors name `field[i]`).
fn parse_receipts_of(field: &str, receipts: &[String]) -> Result<Vec<Receipt>> {
    if receipts.is_empty() || receipts.len() > MAX_RECEIPTS {
        return Err(Error::invalid_field(
            field,
            format!("must hold between 1 and {MAX_RECEIPTS} receipts"),
        ));
    }
    receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Receipt::parse(r).map_err(|e| Error::BadRequest {
                code: "invalid_receipt",
                detail: e.to_string(),
                field: Some(format!("{field}[{i}]")),
            })
        })
        .collect()
}

/// What one run of `lua/fetch.lua` found.
struct FetchRound {
    deliveries: Vec<Delivery>,
    /// The receipts acked first, when the round was given some.
    acked: Option<AckOutcome>,
    /// The round took as many entries as it was allowed (delivered or
    /// dead-lettered): more may be waiting. A round that took fewer drained
    /// everything deliverable at that moment.
    filled: bool,
    /// Redis time of the round.
    now: u64,
    /// Earliest moment something may become deliverable (0 = unknown/none).
    next_wake: u64,
}

/// A fetched entry's fields. foldhash rather than SipHash: about ten fields
/// are inserted and looked up per delivered message, and SipHash was 7% of
/// a fetch's instructions (names come from our own scripts).
pub type EntryFields = HashMap<String, String, foldhash::fast::RandomState>;

/// Raw reply of `lua/fetch.lua`: status, Redis now, lease_ms, next wake,
/// `(stream id, attempt, fields, delivery number)` per delivery, expired
/// and exhausted counts, whether the byte budget stopped the round, and
/// the results of the receipts acked first (as in [`AckReply`]).
/// Public for the benchmark's raw baseline.
pub type FetchReply = (
    i64,
    u64,
    u64,
    u64,
    Vec<(String, u64, EntryFields, u64)>,
    u64,
    u64,
    u8,
    Vec<Vec<redis::Value>>,
);

/// Raw reply of `lua/ack.lua`: status, Redis now, then per receipt either
/// `[1, published_at, id, correlation_id, causation_id]` or `[0]`.
type AckReply = (i64, u64, Vec<Vec<redis::Value>>);

/// One receipt's result of `lua/ack.lua`, with the call's Redis time.
pub type AckRow = (Vec<redis::Value>, u64);

/// Combines concurrent acks of one group into one `ack.lua` call (see
/// [`super::commit`]).
pub(crate) type AckCommits = super::commit::Batcher<String, Receipt, AckRow>;

/// Sorts the script's per-receipt ack `results` (see [`AckReply`]) into
/// acked and lost `receipts`, and counts them.
fn ack_outcome(
    (tenant, topic, group): (&Tenant, &Topic, &Group),
    receipts: &[String],
    now: u64,
    results: Vec<Vec<redis::Value>>,
) -> AckOutcome {
    let labels = telemetry::group_labels(tenant, topic, group);
    let to_ack = metrics::histogram!(telemetry::PUBLISH_TO_ACK, labels.clone());
    let mut outcome = AckOutcome::default();
    let tracing = traces::enabled();
    for (receipt, result) in receipts.iter().zip(results) {
        let text = |i: usize| {
            result
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default()
        };
        let acked = text(0) == "1";
        if acked {
            let published_at = text(1).parse().unwrap_or(now);
            to_ack.record(telemetry::seconds_between(published_at, now));
            tracing::debug!(id = %text(2), correlation_id = %text(3), causation_id = %text(4), "acked");
            outcome.acked.push(receipt.clone());
        } else {
            outcome.lease_lost.push(receipt.clone());
        }
        // Here, in the caller's task (a group commit may have run the
        // script in another's), so the span gets this caller's context.
        if tracing && let Ok(parsed) = Receipt::parse(receipt) {
            let (id, traceparent) = (text(2), text(5));
            let settled = traced::Settled {
                receipt: &parsed,
                message_id: Some(&id),
                traceparent: Some(&traceparent),
                outcome: if acked { "acked" } else { "lease_lost" },
            };
            traced::settled(Step::Ack, (tenant, topic, group), &settled);
        }
    }
    metrics::counter!(telemetry::ACKED, labels.clone()).increment(outcome.acked.len() as u64);
    if !outcome.lease_lost.is_empty() {
        metrics::counter!(telemetry::LEASE_LOST, labels).increment(outcome.lease_lost.len() as u64);
    }
    outcome
}

impl Broker {
    /// One fetch (a few script calls when an ordered group only parks),
    /// acking `acks` (their texts and parsed receipts) in the first call.
    async fn fetch_round(
        &self,
        (tenant, topic): (&Tenant, &Topic),
        keys: &TopicKeys,
        group: &Group,
        consumer: &Consumer,
        (max, max_bytes): (u32, u64),
        acks: Option<(&[String], &[Receipt])>,
    ) -> Result<FetchRound> {
        let mut conn = self.store.conn().await?;
        let (mut expired, mut exhausted) = (0, 0);
        let mut calls = 0;
        let mut acked = None;
        // An ordered group may read a long run of one busy key's messages
        // and park them all: such a call delivers nothing but says more may
        // follow. Go on (bounded), so messages of other keys behind the run
        // come out now rather than after the long-poll's next wake-up.
        let (status, now, lease_ms, next_wake, rows, budget_hit) = loop {
            let first = if calls == 0 { acks } else { None };
            let receipts = first.map_or(&[][..], |(_, parsed)| parsed);
            let (status, now, lease_ms, next_wake, rows, e, x, more, ack_results): FetchReply =
                fetch_call(
                    self.store.scripts(),
                    keys,
                    group,
                    consumer,
                    max,
                    max_bytes,
                    receipts,
                )
                .invoke_async(&mut conn)
                .await?;
            if let Some((texts, _)) = first.filter(|_| status >= 0) {
                acked = Some(ack_outcome((tenant, topic, group), texts, now, ack_results));
            }
            expired += e;
            exhausted += x;
            calls += 1;
            if status != 1 || !rows.is_empty() || more == 0 || calls >= MAX_CALLS_PER_ROUND {
                break (status, now, lease_ms, next_wake, rows, more);
            }
        };
        if status < 0 {
            return Err(group_not_found(group));
        }
        let labels = telemetry::group_labels(tenant, topic, group);
        if expired > 0 {
            metrics::counter!(telemetry::EXPIRED, labels.clone()).increment(expired);
            metrics::counter!(
                telemetry::DEAD_LETTERED,
                telemetry::with_reason(&labels, "expired")
            )
            .increment(expired);
        }
        if exhausted > 0 {
            metrics::counter!(
                telemetry::DEAD_LETTERED,
                telemetry::with_reason(&labels, "max_deliveries")
            )
            .increment(exhausted);
        }
        let mut deliveries: Vec<Delivery> = rows
            .into_iter()
            .map(|(stream_id, attempt, fields, delivery)| {
                let receipt = Receipt {
                    stream_id: stream_id.clone(),
                    attempt,
                    delivery,
                };
                Ok(Delivery {
                    message: Message::from_entry(stream_id, fields)?,
                    attempt,
                    receipt: receipt.to_string(),
                    lease_expires_at: now + lease_ms,
                })
            })
            .collect::<Result<_>>()?;
        if traces::enabled() {
            traced::deliver((tenant, topic, group), consumer, &mut deliveries);
        }
        if !deliveries.is_empty() {
            metrics::counter!(telemetry::DELIVERED, labels.clone())
                .increment(deliveries.len() as u64);
            let first_time = metrics::histogram!(telemetry::PUBLISH_TO_DELIVERY, labels.clone());
            let mut redelivered = 0;
            for d in &deliveries {
                let m = &d.message;
                tracing::debug!(id = %m.id, attempt = d.attempt, correlation_id = ?m.correlation_id,
                    causation_id = ?m.causation_id, %consumer, "delivered");
                if d.attempt == 1 {
                    first_time.record(telemetry::seconds_between(m.published_at, now));
                } else {
                    redelivered += 1;
                }
            }
            if redelivered > 0 {
                metrics::counter!(telemetry::REDELIVERED, labels).increment(redelivered);
            }
        }
        Ok(FetchRound {
            acked,
            filled: budget_hit == 1
                || deliveries.len() as u64 + expired + exhausted >= u64::from(max),
            deliveries,
            now,
            next_wake,
        })
    }

    /// Hands up to `max` messages to `consumer` under a lease, waiting up to
    /// `wait_ms` for something deliverable. Ends early, empty, on shutdown.
    pub async fn fetch(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        request: &FetchRequest,
    ) -> Result<Vec<Delivery>> {
        self.fetch_unless(tenant, topic, group, request, std::future::pending())
            .await
    }

    /// As [`Self::fetch`], but stops waiting (and ends empty) once `stop`
    /// completes. Only the wait is cut short: a script call already sent
    /// runs to its answer, so no delivery it makes is lost in this process.
    pub async fn fetch_unless(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        request: &FetchRequest,
        stop: impl Future<Output = ()>,
    ) -> Result<Vec<Delivery>> {
        let (_, deliveries) = self
            .fetch_acking(tenant, topic, group, request, None, stop)
            .await?;
        Ok(deliveries)
    }

    /// Acks `request.ack` (when given), then fetches, in one script call
    /// (the first, when the fetch waits): one round trip per message for a
    /// worker that handles one at a time. The request is checked whole
    /// before anything is acked.
    pub async fn ack_then_fetch(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        request: &FetchRequest,
    ) -> Result<(Option<AckOutcome>, Vec<Delivery>)> {
        match request.ack.as_deref() {
            Some(texts) if !texts.is_empty() => {
                let (texts, parsed) = parse_settled_receipts("ack", texts)?;
                let acks = Some((texts.as_slice(), parsed.as_slice()));
                self.fetch_acking(tenant, topic, group, request, acks, std::future::pending())
                    .await
            }
            _ => {
                self.fetch_acking(tenant, topic, group, request, None, std::future::pending())
                    .await
            }
        }
    }

    /// Fetch, acking `acks` in the first script call; the wait ends early,
    /// empty, once `stop` completes.
    async fn fetch_acking(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        request: &FetchRequest,
        acks: Option<(&[String], &[Receipt])>,
        stop: impl Future<Output = ()>,
    ) -> Result<(Option<AckOutcome>, Vec<Delivery>)> {
        let max = request.max.unwrap_or(1);
        if !(1..=MAX_FETCH).contains(&max) {
            return Err(Error::invalid_field(
                "max",
                format!("must be between 1 and {MAX_FETCH}"),
            ));
        }
        let wait_ms = request.wait_ms.unwrap_or(0);
        if wait_ms > MAX_WAIT_MS {
            return Err(Error::invalid_field(
                "wait_ms",
                format!("must be between 0 and {MAX_WAIT_MS}"),
            ));
        }
        let max_bytes = request.max_bytes.unwrap_or(DEFAULT_FETCH_BYTES);
        if !(1..=MAX_FETCH_BYTES).contains(&max_bytes) {
            return Err(Error::invalid_field(
                "max_bytes",
                format!("must be between 1 and {MAX_FETCH_BYTES}"),
            ));
        }
        let limits = (max, max_bytes);
        let keys = TopicKeys::new(tenant, topic);
        let fetch_round = |acks| {
            self.fetch_round(
                (tenant, topic),
                &keys,
                group,
                &request.consumer,
                limits,
                acks,
            )
        };
        if wait_ms == 0 {
            let round = fetch_round(acks).await?;
            return Ok((round.acked, round.deliveries));
        }

        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let waiter = self
            .store
            .wakeups()
            .waiter(keys.wake_channel(), group.as_str())
            .await;
        let mut shutdown = self.store.shutdown_signal();
        tokio::pin!(stop);
        let mut acks = acks;
        let mut acked = None;
        loop {
            // Enable before checking, so a wake-up between the check and the
            // wait is not lost.
            let notified = waiter.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let round = fetch_round(acks.take()).await?;
            acked = acked.or(round.acked);
            if !round.deliveries.is_empty() {
                // Wake the next waiter of the group only when there may be
                // more: a round that drained the group leaves nothing for it,
                // and whatever arrives later sends its own wake-up. (A wake-up
                // this waiter absorbed while fetching is not lost: `Notify`
                // hands a `notify_one` to the next waiter when the notified
                // future is dropped unpolled.)
                if round.filled {
                    waiter.pass_on();
                }
                return Ok((acked, round.deliveries));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || *shutdown.borrow() {
                return Ok((acked, Vec::new()));
            }
            let mut wake_at = deadline.min(now + self.store.wakeups().recheck());
            if round.next_wake > 0 {
                let until = Duration::from_millis(round.next_wake.saturating_sub(round.now));
                wake_at = wake_at.min(now + until);
            }
            tokio::select! {
                // A stop wins over a wake-up that came with it.
                biased;
                () = &mut stop => return Ok((acked, Vec::new())),
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok((acked, Vec::new())),
            }
        }
    }

    /// Acks deliveries whose lease is still held; the others are `lease_lost`.
    pub async fn ack(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipts: &[String],
    ) -> Result<AckOutcome> {
        let (receipts, parsed) = parse_settled_receipts("receipts", receipts)?;
        let receipts = receipts.as_slice();
        let keys = TopicKeys::new(tenant, topic);
        // Acks of one group that arrive while one of its ack calls is in
        // flight go together in the next call (group commit).
        let commit_key = format!("{}\n{group}", keys.stream());
        let bytes = parsed.iter().map(|r| r.stream_id.len() + 24).sum();
        let broker = self.clone();
        let (t, p, g) = (tenant.clone(), topic.clone(), group.clone());
        let rows = self
            .ack_commits
            .submit(&commit_key, parsed, bytes, move |batch| {
                let (broker, t, p, g) = (broker.clone(), t.clone(), p.clone(), g.clone());
                async move { broker.ack_receipts(&t, &p, &g, batch).await }
            })
            .await?;
        let now = rows.first().map_or(0, |(_, now)| *now);
        let results = rows.into_iter().map(|(result, _)| result).collect();
        Ok(ack_outcome((tenant, topic, group), receipts, now, results))
    }

    /// One `ack.lua` call for `batch` (one caller's receipts or several
    /// callers' together): per receipt, the script's result and Redis's now.
    async fn ack_receipts(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        batch: Vec<Receipt>,
    ) -> Result<Vec<AckRow>> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let (status, now, results): AckReply = ack_call(self.store.scripts(), &keys, group, &batch)
            .invoke_async(&mut conn)
            .await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        Ok(results.into_iter().map(|r| (r, now)).collect())
    }

    /// The message a receipt names, if its delivery is still current;
    /// `Ok(None)` when the lease is lost.
    pub async fn current_delivery(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipt: &Receipt,
    ) -> Result<Option<CurrentDelivery>> {
        let keys = TopicKeys::new(tenant, topic);
        let mut call = group_call(&self.store.scripts().delivery_peek, &keys, group);
        call.arg(&receipt.stream_id).arg(receipt.fence());
        let mut conn = self.store.conn().await?;
        let (status, current, id, correlation, traceparent): (i64, i64, String, String, String) =
            call.invoke_async(&mut conn).await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        let some = |s: String| (!s.is_empty()).then_some(s);
        Ok((current == 1).then(|| CurrentDelivery {
            id,
            correlation_id: some(correlation),
            traceparent: some(traceparent),
        }))
    }

    /// Renews leases still held, for `lease_ms` (default: the group's lease).
    pub async fn extend(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipts: &[String],
        lease_ms: Option<u64>,
    ) -> Result<ExtendOutcome> {
        let parsed = parse_receipts(receipts)?;
        if lease_ms == Some(0) {
            return Err(Error::invalid_field("lease_ms", "must be at least 1"));
        }
        let keys = TopicKeys::new(tenant, topic);
        let mut call = group_call(&self.store.scripts().extend, &keys, group);
        call.arg(lease_ms.unwrap_or(0));
        for r in &parsed {
            call.arg(&r.stream_id).arg(r.fence());
        }
        let mut conn = self.store.conn().await?;
        let (status, group_lease, results): (i64, u64, Vec<u64>) =
            call.invoke_async(&mut conn).await?;
        match status {
            -1 => return Err(group_not_found(group)),
            -2 => {
                return Err(Error::invalid_field(
                    "lease_ms",
                    format!("must be at most the group's lease_ms ({group_lease})"),
                ));
            }
            _ => {}
        }
        let mut outcome = ExtendOutcome {
            group_lease_ms: group_lease,
            ..ExtendOutcome::default()
        };
        for (receipt, expires) in receipts.iter().zip(results) {
            if expires > 0 {
                outcome.extended.push(Extended {
                    receipt: receipt.clone(),
                    lease_expires_at: expires,
                });
            } else {
                outcome.lease_lost.push(receipt.clone());
            }
        }
        if !outcome.lease_lost.is_empty() {
            metrics::counter!(
                telemetry::LEASE_LOST,
                telemetry::group_labels(tenant, topic, group)
            )
            .increment(outcome.lease_lost.len() as u64);
        }
        Ok(outcome)
    }
}

//! Failure paths of a delivery: `nack` (retry later with the group's
//! backoff or an explicit delay; dead-letter after the last allowed attempt)
//! and `reject` (dead-letter now). Every retry lives in Redis (the group's
//! schedule), never in sidecar memory.

use std::collections::HashMap;

use serde::Serialize;

use super::Broker;
use super::backoff::{random_spread, retry_delay_ms};
use super::delivery::{group_call, parse_settled_receipts};
use super::groups::{group_not_found, parse_config};
use super::publish::MAX_DURATION_MS;
use super::traced;
use crate::error::{Error, Result};
use crate::keys::TopicKeys;
use crate::names::{Group, Tenant, Topic};
use crate::telemetry;
use crate::traces::{self, Step};

/// Longest `error` text kept with a dead letter.
pub const MAX_ERROR_LEN: usize = 4096;

/// Outcome of a nack.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct NackOutcome {
    /// Receipts scheduled for a retry.
    pub nacked: Vec<String>,
    /// Receipts that were on their last attempt: now in the dead-letter stream.
    pub dead_lettered: Vec<String>,
    /// Receipts whose lease was already lost (nothing changed).
    pub lease_lost: Vec<String>,
}

/// Outcome of a reject.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct RejectOutcome {
    /// Receipts now in the dead-letter stream.
    pub rejected: Vec<String>,
    /// Receipts whose lease was already lost (nothing changed).
    pub lease_lost: Vec<String>,
}

/// Adds `n` to counter `name` (no series is created for 0).
fn count(name: &'static str, labels: &[metrics::Label], n: usize) {
    if n > 0 {
        metrics::counter!(name, labels.to_vec()).increment(n as u64);
    }
}

/// A span for a nacked or rejected receipt (the scripts do not read the
/// message: its parent is the caller's context, so there is a span only
/// when the caller sent one, or the sidecar itself settles a push).
fn settled_span(
    step: Step,
    scope: (&Tenant, &Topic, &Group),
    receipt: &super::receipt::Receipt,
    outcome: &'static str,
) {
    if traces::enabled() {
        let settled = traced::Settled {
            receipt,
            message_id: None,
            traceparent: None,
            outcome,
        };
        traced::settled(step, scope, &settled);
    }
}

fn check_error(error: Option<&str>) -> Result<&str> {
    let error = error.unwrap_or_default();
    if error.len() > MAX_ERROR_LEN {
        return Err(Error::invalid_field(
            "error",
            format!("must be at most {MAX_ERROR_LEN} bytes"),
        ));
    }
    Ok(error)
}

impl Broker {
    /// Gives deliveries back: retried after `delay_ms`, or after the group's
    /// backoff for their attempt when no delay is given.
    pub async fn nack(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipts: &[String],
        delay_ms: Option<u64>,
        error: Option<&str>,
    ) -> Result<NackOutcome> {
        let (receipts, parsed) = parse_settled_receipts("receipts", receipts)?;
        let receipts = receipts.as_slice();
        let error = check_error(error)?;
        if delay_ms.is_some_and(|d| d > MAX_DURATION_MS) {
            return Err(Error::invalid_field(
                "delay_ms",
                format!("must be between 0 and {MAX_DURATION_MS}"),
            ));
        }
        let keys = TopicKeys::new(tenant, topic);
        let gk = keys.group(group);
        let mut conn = self.store.conn().await?;
        let delays: Vec<u64> = match delay_ms {
            Some(d) => vec![d; parsed.len()],
            None => {
                let config: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(gk.config())
                    .query_async(&mut conn)
                    .await?;
                let (_, _, backoff, _) =
                    parse_config(&config).ok_or_else(|| group_not_found(group))?;
                parsed
                    .iter()
                    .map(|r| retry_delay_ms(&backoff, r.attempt, random_spread()))
                    .collect()
            }
        };
        let mut call = group_call(&self.store.scripts().nack, &keys, group);
        call.arg(error);
        for (r, delay) in parsed.iter().zip(&delays) {
            call.arg(&r.stream_id).arg(r.fence()).arg(delay);
        }
        let (status, results): (i64, Vec<i64>) = call.invoke_async(&mut conn).await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        let mut outcome = NackOutcome::default();
        for ((receipt, parsed), result) in receipts.iter().zip(&parsed).zip(results) {
            let (bucket, name) = match result {
                1 => (&mut outcome.nacked, "nacked"),
                2 => (&mut outcome.dead_lettered, "dead_lettered"),
                _ => (&mut outcome.lease_lost, "lease_lost"),
            };
            bucket.push(receipt.clone());
            settled_span(Step::Nack, (tenant, topic, group), parsed, name);
        }
        let labels = telemetry::group_labels(tenant, topic, group);
        count(telemetry::NACKED, &labels, outcome.nacked.len());
        count(
            telemetry::DEAD_LETTERED,
            &telemetry::with_reason(&labels, "max_deliveries"),
            outcome.dead_lettered.len(),
        );
        count(telemetry::LEASE_LOST, &labels, outcome.lease_lost.len());
        Ok(outcome)
    }

    /// Gives leased deliveries back, due now, without counting an attempt
    /// (so never dead-lettered): for deliveries a push never got to the
    /// app (it refused connections) when the sidecar stops. Receipts in
    /// `nacked` were given back, the rest had lost their lease.
    pub async fn release(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipts: &[String],
    ) -> Result<NackOutcome> {
        let (receipts, parsed) = parse_settled_receipts("receipts", receipts)?;
        let keys = TopicKeys::new(tenant, topic);
        let mut call = group_call(&self.store.scripts().nack, &keys, group);
        call.arg("");
        for r in &parsed {
            call.arg(&r.stream_id).arg(r.fence()).arg(-1);
        }
        let mut conn = self.store.conn().await?;
        let (status, results): (i64, Vec<i64>) = call.invoke_async(&mut conn).await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        let mut outcome = NackOutcome::default();
        for (receipt, result) in receipts.into_iter().zip(results) {
            if result == 1 {
                outcome.nacked.push(receipt);
            } else {
                outcome.lease_lost.push(receipt);
            }
        }
        Ok(outcome)
    }

    /// Dead-letters deliveries now, with reason `rejected`.
    pub async fn reject(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        receipts: &[String],
        error: Option<&str>,
    ) -> Result<RejectOutcome> {
        let (receipts, parsed) = parse_settled_receipts("receipts", receipts)?;
        let receipts = receipts.as_slice();
        let error = check_error(error)?;
        let keys = TopicKeys::new(tenant, topic);
        let mut call = group_call(&self.store.scripts().reject, &keys, group);
        call.arg(error);
        for r in &parsed {
            call.arg(&r.stream_id).arg(r.fence());
        }
        let mut conn = self.store.conn().await?;
        let (status, results): (i64, Vec<i64>) = call.invoke_async(&mut conn).await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        let mut outcome = RejectOutcome::default();
        for ((receipt, parsed), result) in receipts.iter().zip(&parsed).zip(results) {
            let name = if result == 1 {
                outcome.rejected.push(receipt.clone());
                "rejected"
            } else {
                outcome.lease_lost.push(receipt.clone());
                "lease_lost"
            };
            settled_span(Step::Reject, (tenant, topic, group), parsed, name);
        }
        let labels = telemetry::group_labels(tenant, topic, group);
        count(
            telemetry::DEAD_LETTERED,
            &telemetry::with_reason(&labels, "rejected"),
            outcome.rejected.len(),
        );
        count(telemetry::LEASE_LOST, &labels, outcome.lease_lost.len());
        Ok(outcome)
    }
}

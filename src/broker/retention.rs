//! Retention: a low-rate background pass that trims each topic with a
//! `retention_ms` down to what is both old enough and finished by every
//! group (`lua/trim.lua`). Entries some group still owes (undelivered,
//! pending, or scheduled for a retry) are never trimmed, unlike `MAXLEN ~`.
//! The same pass forgets consumers that own nothing and have been idle
//! longer than `--consumer-idle-ms` (`lua/prune_consumers.lua`), so worker
//! names that come and go do not pile up in a group.
//!
//! Many sidecars share one Redis: each tries to take a short lock
//! (`SET NX PX interval`) before a pass, so about one pass runs per interval
//! across all of them. The trim itself is idempotent and atomic, so an
//! overlapping pass (lock expired mid-pass) is harmless.

use std::time::Duration;

use redis::streams::StreamInfoConsumersReply;
use tokio::sync::watch;

use super::topics::{all_topics, read_groups};
use super::{Broker, listing};
use crate::error::Result;
use crate::keys::{self, TopicKeys};
use crate::names::{Tenant, Topic};
use crate::telemetry;

/// Most consumers one prune script call removes.
const PRUNE_CHUNK: usize = 1000;

impl Broker {
    /// Applies `topic`'s retention now; returns how many entries were
    /// trimmed, None when the topic does not exist.
    pub async fn trim_topic(&self, tenant: &Tenant, topic: &Topic) -> Result<Option<u64>> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let trimmed: i64 = self
            .store
            .scripts()
            .trim
            .key(keys.meta())
            .key(keys.stream())
            .key(keys.groups())
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(trimmed).ok())
    }

    /// Forgets the topic's consumers that own nothing and have been idle
    /// for `idle`; returns how many. Each group's consumers are listed by
    /// one XINFO CONSUMERS outside any script (a script that listed and
    /// removed them held Redis for 60 ms per pass at 50,000 consumers),
    /// and removed by script calls of at most [`PRUNE_CHUNK`] each.
    pub async fn prune_consumers(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        idle: Duration,
    ) -> Result<u64> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let idle_ms = usize::try_from(idle.as_millis()).unwrap_or(usize::MAX);
        let mut removed = 0;
        for (group, gk) in read_groups(&mut conn, &keys).await? {
            let listed: redis::RedisResult<StreamInfoConsumersReply> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(keys.stream())
                .arg(group.as_str())
                .query_async(&mut conn)
                .await;
            let consumers = match listed {
                Ok(reply) => reply.consumers,
                // The group or the topic is gone (deleted meanwhile).
                Err(e) if matches!(e.code(), Some("NOGROUP" | "ERR")) => continue,
                Err(e) => return Err(e.into()),
            };
            let idle: Vec<String> = consumers
                .into_iter()
                .filter(|c| c.pending == 0 && c.idle >= idle_ms)
                .map(|c| c.name)
                .collect();
            for chunk in idle.chunks(PRUNE_CHUNK) {
                let mut call = self.store.scripts().prune_consumers.key(keys.stream());
                call.key(gk.config()).arg(group.as_str());
                for name in chunk {
                    call.arg(name);
                }
                let n: u64 = call.invoke_async(&mut conn).await?;
                removed += n;
            }
        }
        Ok(removed)
    }

    /// Retention and consumer pruning for one topic.
    async fn tend_topic(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        consumer_idle: Duration,
    ) -> Result<u64> {
        let Some(trimmed) = self.trim_topic(tenant, topic).await? else {
            // Listed but gone: its sidecar died between deleting it and
            // unlisting it (or before a create it listed first ran).
            let mut conn = self.store.conn().await?;
            return listing::unlist_gone(&mut conn, tenant, topic)
                .await
                .map(|()| 0);
        };
        if trimmed > 0 {
            tracing::debug!(%tenant, %topic, trimmed, "retention trimmed entries");
            metrics::counter!(telemetry::TRIMMED, telemetry::topic_labels(tenant, topic))
                .increment(trimmed);
        }
        let pruned = self.prune_consumers(tenant, topic, consumer_idle).await?;
        let joins = self.sweep_joins(tenant, topic).await?;
        if joins > 0 {
            metrics::counter!(
                telemetry::JOINS_TIMED_OUT,
                telemetry::topic_labels(tenant, topic)
            )
            .increment(joins);
        }
        if pruned > 0 {
            tracing::debug!(%tenant, %topic, pruned, "removed idle consumers that owned nothing");
        }
        Ok(trimmed)
    }

    /// One retention pass over every tenant's topics, if this sidecar wins
    /// the pass lock. Returns entries trimmed.
    pub async fn retention_pass(&self, interval: Duration, consumer_idle: Duration) -> Result<u64> {
        let mut conn = self.store.conn().await?;
        let token = uuid::Uuid::now_v7().to_string();
        let won: Option<String> = redis::cmd("SET")
            .arg(keys::RETENTION_LOCK)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(
                u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .query_async(&mut conn)
            .await?;
        if won.is_none() {
            return Ok(0);
        }
        let mut trimmed = 0;
        for (tenant, topic) in all_topics(&mut conn).await? {
            // One topic's failure (a Redis error, a bad stored value) skips
            // that topic only, never the rest of the pass.
            match self.tend_topic(&tenant, &topic, consumer_idle).await {
                Ok(n) => trimmed += n,
                Err(e) => {
                    tracing::warn!(%tenant, %topic, error = %e, "retention skipped a topic");
                    metrics::counter!(
                        telemetry::RETENTION_FAILED,
                        telemetry::topic_labels(&tenant, &topic)
                    )
                    .increment(1);
                }
            }
        }
        Ok(trimmed)
    }
}

/// Runs retention passes every `interval` until shutdown.
pub async fn run(
    broker: Broker,
    interval: Duration,
    consumer_idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Spread sidecars that started together.
        let jitter = interval.mul_f64(fastrand::f64() * 0.2);
        tokio::select! {
            () = tokio::time::sleep(interval + jitter) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = broker.retention_pass(interval, consumer_idle).await {
            tracing::warn!(error = %e, "retention pass failed; will retry");
        }
    }
}

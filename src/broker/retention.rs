//! Retention: a low-rate background pass that trims each topic with a
//! `retention_ms` down to what is both old enough and finished by every
//! group (`lua/trim.lua`). Entries some group still owes (undelivered,
//! pending, or scheduled for a retry) are never trimmed, unlike `MAXLEN ~`.
//!
//! Many sidecars share one Redis: each tries to take a short lock
//! (`SET NX PX interval`) before a pass, so about one pass runs per interval
//! across all of them. The trim itself is idempotent and atomic, so an
//! overlapping pass (lock expired mid-pass) is harmless.

use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use super::topics::{all_topics, read_groups};
use crate::error::{Error, Result};
use crate::keys::{self, TopicKeys};
use crate::names::{Tenant, Topic};
use crate::telemetry;

impl Broker {
    /// Applies `topic`'s retention now; returns how many entries were trimmed.
    pub async fn trim_topic(&self, tenant: &Tenant, topic: &Topic) -> Result<u64> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        for _ in 0..8 {
            let groups = read_groups(&mut conn, &keys).await?;
            let mut call = self.store.scripts().trim.key(keys.meta());
            call.key(keys.stream()).key(keys.groups());
            for (name, gk) in &groups {
                call.key(gk.delayed()).arg(name.as_str());
            }
            let trimmed: i64 = call.invoke_async(&mut conn).await?;
            if let Ok(trimmed) = u64::try_from(trimmed) {
                return Ok(trimmed);
            }
        }
        Err(Error::Conflict {
            code: "concurrent_change",
            detail: "the topic's groups kept changing during trim".into(),
        })
    }

    /// One retention pass over every tenant's topics, if this sidecar wins
    /// the pass lock. Returns entries trimmed.
    pub async fn retention_pass(&self, interval: Duration) -> Result<u64> {
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
            let n = self.trim_topic(&tenant, &topic).await?;
            if n > 0 {
                tracing::debug!(%tenant, %topic, trimmed = n, "retention trimmed entries");
                metrics::counter!(telemetry::TRIMMED, telemetry::topic_labels(&tenant, &topic))
                    .increment(n);
            }
            trimmed += n;
        }
        Ok(trimmed)
    }
}

/// Runs retention passes every `interval` until shutdown.
pub async fn run(broker: Broker, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        // Spread sidecars that started together.
        let jitter = interval.mul_f64(fastrand::f64() * 0.2);
        tokio::select! {
            () = tokio::time::sleep(interval + jitter) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = broker.retention_pass(interval).await {
            tracing::warn!(error = %e, "retention pass failed; will retry");
        }
    }
}

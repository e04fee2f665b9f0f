//! Group gauges (lag, pending, scheduled retries, dead letters) refreshed by
//! a low-rate background task: one pipelined round trip per topic, so
//! thousands of groups cost a few hundred small reads per interval.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use super::groups::{InfoRow, info_text, info_u64};
use super::topics::{all_topics, read_groups};
use crate::error::Result;
use crate::keys::TopicKeys;
use crate::names::{Group, Tenant, Topic};
use crate::store::Conn;
use crate::telemetry;

impl Broker {
    /// Reads every group's numbers and sets the gauges.
    pub async fn refresh_gauges(&self) -> Result<()> {
        let mut conn = self.store.conn().await?;
        for (tenant, topic) in all_topics(&mut conn).await? {
            if let Err(e) = self.refresh_topic(&mut conn, &tenant, &topic).await {
                // A topic deleted mid-pass; the next pass sees it gone.
                tracing::debug!(%tenant, %topic, error = %e, "gauge refresh skipped a topic");
            }
        }
        Ok(())
    }

    async fn refresh_topic(&self, conn: &mut Conn, tenant: &Tenant, topic: &Topic) -> Result<()> {
        let keys = TopicKeys::new(tenant, topic);
        let groups = read_groups(conn, &keys).await?;
        if groups.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO").arg("GROUPS").arg(keys.stream());
        pipe.hgetall(keys.meta());
        for (_, gk) in &groups {
            pipe.xlen(gk.dlq());
        }
        let (info, meta, dlq_sizes): (Vec<InfoRow>, HashMap<String, String>, Vec<u64>) = {
            let mut values: Vec<redis::Value> = pipe.query_async(conn).await?;
            let dlq: Vec<u64> = values
                .split_off(2)
                .iter()
                .map(|v| redis::from_redis_value_ref(v).unwrap_or(0))
                .collect();
            let meta = redis::from_redis_value_ref(&values[1]).unwrap_or_default();
            let info = redis::from_redis_value_ref(&values[0]).unwrap_or_default();
            (info, meta, dlq)
        };
        for ((group, _), dlq_size) in groups.iter().zip(dlq_sizes) {
            let Some(row) = info
                .iter()
                .find(|r| info_text(r, "name").as_deref() == Some(group.as_str()))
            else {
                continue;
            };
            set_group_gauges(tenant, topic, group, row, &meta, dlq_size);
        }
        Ok(())
    }
}

fn set_group_gauges(
    tenant: &Tenant,
    topic: &Topic,
    group: &Group,
    row: &InfoRow,
    meta: &HashMap<String, String>,
    dlq_size: u64,
) {
    let labels = telemetry::group_labels(tenant, topic, group);
    if let Some(lag) = info_u64(row, "lag") {
        metrics::gauge!(telemetry::GROUP_LAG, labels.clone()).set(lag as f64);
    }
    let pending = info_u64(row, "pending").unwrap_or(0);
    metrics::gauge!(telemetry::GROUP_PENDING, labels.clone()).set(pending as f64);
    let delayed: u64 = meta
        .get(&format!("delayed:{group}"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    metrics::gauge!(telemetry::GROUP_DELAYED, labels.clone()).set(delayed as f64);
    metrics::gauge!(telemetry::GROUP_DLQ_SIZE, labels).set(dlq_size as f64);
}

/// Refreshes the gauges every `interval` until shutdown; also keeps
/// `streamcar_redis_up` current.
pub async fn run(broker: Broker, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        let up = match broker.refresh_gauges().await {
            Ok(()) => 1.0,
            Err(e) => {
                tracing::debug!(error = %e, "gauge refresh failed");
                0.0
            }
        };
        metrics::gauge!(telemetry::REDIS_UP).set(up);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

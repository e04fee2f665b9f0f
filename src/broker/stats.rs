//! Group gauges (lag, pending, scheduled retries, dead letters) refreshed by
//! a low-rate background task: one `lua/group_info.lua` call per group (the
//! counts GET group answers with, without the consumers), so
//! thousands of groups cost a few thousand small script calls per interval,
//! each independent of the number of groups.

use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use super::topics::{all_topics, read_groups};
use crate::error::Result;
use crate::keys::TopicKeys;
use crate::names::{Tenant, Topic};
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
        for (group, _) in read_groups(conn, &keys).await? {
            // The counts GET group answers with, in one consistent reading.
            let info = self.group_counts(tenant, topic, &group).await?;
            let labels = telemetry::group_labels(tenant, topic, &group);
            metrics::gauge!(telemetry::GROUP_LAG, labels.clone()).set(info.lag as f64);
            metrics::gauge!(telemetry::GROUP_PENDING, labels.clone()).set(info.pending as f64);
            metrics::gauge!(telemetry::GROUP_DELAYED, labels.clone()).set(info.delayed as f64);
            metrics::gauge!(telemetry::GROUP_PARKED, labels.clone()).set(info.parked as f64);
            metrics::gauge!(telemetry::GROUP_DLQ_SIZE, labels).set(info.dead_lettered as f64);
        }
        Ok(())
    }
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

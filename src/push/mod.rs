//! Push delivery: the sidecar fetches a group's messages itself and POSTs
//! each to the app (`serve --subscriptions FILE`); the app's answer acks,
//! nacks, rejects or takes over the delivery.
//!
//! * [`spec`]: the subscriptions file, checked at start.
//! * [`client`]: the keep-alive HTTP/1.1 client (TCP or Unix socket).
//! * [`request`]: the request built from deliveries; the verdict read from the answer.
//! * [`runner`]: fetch loop, request tasks with lease keep-alive, prober.
//! * [`status`]: counters and state for `GET /v1/subscriptions` and the metrics.
//!
//! Everything goes through the broker's domain API in-process (fetch, ack,
//! nack, reject, extend), never through the sidecar's own HTTP API.

pub mod client;
pub mod request;
pub mod runner;
pub mod spec;
pub mod status;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

pub use spec::{Subscription, load};
pub use status::Registry;

use crate::broker::Broker;
use crate::channels::Channels;
use crate::coord::Coord;
use runner::Runner;

/// What the push loops work with (cheap clones of the sidecar's own).
#[derive(Clone)]
pub struct Services {
    /// Fetch, ack, nack, reject, extend.
    pub broker: Broker,
    /// Publish quotas of emitted messages.
    pub coord: Coord,
    /// Channel targets of emitted messages.
    pub channels: Channels,
}

/// The push loops of every subscription.
pub struct Pusher {
    runners: Vec<Arc<Runner>>,
    loops: JoinSet<()>,
    watchers: Vec<AbortHandle>,
}

impl Pusher {
    /// Starts one fetch loop and one prober per subscription; the fetch
    /// loops stop when `shutdown` turns true.
    pub fn start(
        services: Services,
        subscriptions: &[Subscription],
        shutdown: &watch::Receiver<bool>,
    ) -> Self {
        let mut loops = JoinSet::new();
        let mut watchers = Vec::new();
        let runners: Vec<Arc<Runner>> = subscriptions
            .iter()
            .map(|spec| {
                let runner = Runner::new(spec.clone(), services.clone());
                tracing::info!(subscription = %spec.name, url = %spec.url, "pushing");
                loops.spawn(runner.clone().fetch_loop(shutdown.clone()));
                watchers.push(tokio::spawn(runner.clone().watch()).abort_handle());
                runner
            })
            .collect();
        Self {
            runners,
            loops,
            watchers,
        }
    }

    /// The statuses, for `GET /v1/subscriptions`.
    pub fn registry(&self) -> Registry {
        Registry::new(self.runners.iter().map(|r| r.status.clone()).collect())
    }

    /// After shutdown was signalled: lets the requests in flight finish
    /// until `deadline`, then stops the rest and nacks their deliveries with
    /// no delay, so another consumer gets them at once (without counting an
    /// attempt for those the app never got: it refused connections).
    pub async fn drain(mut self, deadline: tokio::time::Instant) {
        for r in &self.runners {
            r.status.set_flag(&r.status.draining, true);
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while self.loops.join_next().await.is_some() {}
        })
        .await;
        self.loops.abort_all();
        for r in &self.runners {
            // Every request holds a permit until it is settled: all permits
            // back means nothing is in flight.
            let all = r.spec.max_in_flight;
            let settled = tokio::time::timeout_at(deadline, r.permits.acquire_many(all)).await;
            if !matches!(settled, Ok(Ok(_))) {
                let (sent, unsent) = r.abort_outstanding();
                tracing::warn!(subscription = %r.spec.name, messages = sent.len() + unsent.len(),
                    "drain timeout passed; giving deliveries in flight back");
                r.give_back(sent, Some("sidecar shutting down")).await;
                // Those the app never got (it refused connections) cost no attempt.
                r.give_back(unsent, None).await;
            }
        }
    }
}

impl Drop for Pusher {
    /// The probers run until stopped: after a drain, or when the service
    /// failed to start after the pusher did.
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

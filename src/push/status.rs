//! How each subscription is doing: counters, state and last error, shown by
//! `GET /v1/subscriptions` and mirrored into the push metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::Label;
use serde::Serialize;

use super::spec::Subscription;
use crate::telemetry;

/// What a subscription is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Fetching and pushing.
    Running,
    /// Waiting after an error of Redis or the group before fetching again.
    BackingOff,
    /// The app refuses connections: no fetching, probing until it answers.
    AppUnreachable,
    /// Shutting down: no fetching, finishing the requests in flight.
    Draining,
}

impl SubscriptionState {
    const ALL: [SubscriptionState; 4] = [
        SubscriptionState::Running,
        SubscriptionState::BackingOff,
        SubscriptionState::AppUnreachable,
        SubscriptionState::Draining,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Running => "running",
            SubscriptionState::BackingOff => "backing_off",
            SubscriptionState::AppUnreachable => "app_unreachable",
            SubscriptionState::Draining => "draining",
        }
    }
}

/// One subscription as `GET /v1/subscriptions` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionStatus {
    /// Subscription name.
    pub name: String,
    /// Tenant of the topic.
    pub tenant: String,
    /// The topic.
    pub topic: String,
    /// The consumer group it pushes.
    pub group: String,
    /// `running`, `backing_off`, `app_unreachable` or `draining`.
    pub state: SubscriptionState,
    /// Requests to the app outstanding now.
    pub in_flight: u64,
    /// Messages sent to the app (a message resent after the app was
    /// unreachable counts once).
    pub delivered: u64,
    /// Messages acked after a 2xx answer.
    pub acked: u64,
    /// Messages given back for a retry (error answer, timeout, broken
    /// connection, or left at shutdown).
    pub nacked: u64,
    /// Messages dead-lettered because the app refused them.
    pub rejected: u64,
    /// The last failure seen, e.g. `HTTP 503: busy` (null: none yet).
    pub last_error: Option<String>,
}

/// `GET /v1/subscriptions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionList {
    /// Every subscription of this sidecar, in file order.
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// Live status of one subscription, shared by its tasks.
pub struct Status {
    name: String,
    tenant: String,
    topic: String,
    group: String,
    labels: Vec<Label>,
    pub(super) in_flight: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) backing_off: AtomicBool,
    pub(super) unreachable: AtomicBool,
    pub(super) draining: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Status {
    /// A fresh status for `spec`.
    pub fn new(spec: &Subscription) -> Self {
        Self {
            name: spec.name.clone(),
            tenant: spec.tenant.to_string(),
            topic: spec.topic.to_string(),
            group: spec.group.to_string(),
            labels: vec![Label::new("subscription", spec.name.clone())],
            in_flight: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            backing_off: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The metric labels of this subscription.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The state now (draining wins, then an unreachable app, then backoff).
    pub fn state(&self) -> SubscriptionState {
        if self.draining.load(Ordering::Relaxed) {
            SubscriptionState::Draining
        } else if self.unreachable.load(Ordering::Relaxed) {
            SubscriptionState::AppUnreachable
        } else if self.backing_off.load(Ordering::Relaxed) {
            SubscriptionState::BackingOff
        } else {
            SubscriptionState::Running
        }
    }

    /// Sets a state flag and brings the state gauge up to date.
    pub(super) fn set_flag(&self, flag: &AtomicBool, on: bool) {
        if flag.swap(on, Ordering::Relaxed) != on {
            self.export_gauges();
        }
    }

    /// Records a failure.
    pub(super) fn error(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::warn!(subscription = %self.name, error = %text, "push failed");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text);
        }
    }

    /// Adds `n` to a counter.
    pub(super) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One request more (`true`) or less outstanding.
    pub(super) fn request(&self, started: bool) {
        if started {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::gauge!(telemetry::PUSH_IN_FLIGHT, self.labels.clone())
            .set(self.in_flight.load(Ordering::Relaxed) as f64);
    }

    /// Sets the in-flight and state gauges (also periodically, so an idle
    /// subscription's gauges outlive the recorder's idle timeout).
    pub fn export_gauges(&self) {
        metrics::gauge!(telemetry::PUSH_IN_FLIGHT, self.labels.clone())
            .set(self.in_flight.load(Ordering::Relaxed) as f64);
        let now = self.state();
        for state in SubscriptionState::ALL {
            let mut labels = self.labels.clone();
            labels.push(Label::new("state", state.as_str()));
            metrics::gauge!(telemetry::PUSH_STATE, labels).set(if state == now {
                1.0
            } else {
                0.0
            });
        }
    }

    /// A snapshot for the API.
    pub fn snapshot(&self) -> SubscriptionStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriptionStatus {
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            state: self.state(),
            in_flight: n(&self.in_flight),
            delivered: n(&self.delivered),
            acked: n(&self.acked),
            nacked: n(&self.nacked),
            rejected: n(&self.rejected),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}

/// Every subscription's status; cheap to clone. Empty without `--subscriptions`.
#[derive(Clone, Default)]
pub struct Registry(Arc<Vec<Arc<Status>>>);

impl Registry {
    /// A registry of these statuses.
    pub fn new(statuses: Vec<Arc<Status>>) -> Self {
        Self(Arc::new(statuses))
    }

    /// What `GET /v1/subscriptions` answers.
    pub fn list(&self) -> SubscriptionList {
        SubscriptionList {
            subscriptions: self.0.iter().map(|s| s.snapshot()).collect(),
        }
    }
}

//! Topics, publishing, consumer groups and delivery: the domain logic of the
//! message broker.
//!
//! Everything here speaks Redis (through [`Broker`]) and the domain types of
//! [`crate::names`]; nothing here knows about HTTP. Each operation that changes
//! more than one key is one Lua script from [`crate::scripts`].

pub mod backoff;
pub mod commit;
pub mod delivery;
pub mod dlq;
pub mod groups;
pub(crate) mod listing;
pub mod message;
pub mod publish;
pub mod receipt;
pub mod retention;
pub mod retry;
pub mod stats;
pub mod topics;
mod traced;

use crate::store::Store;

/// Default publish idempotency window: 24 hours.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Handle for the broker operations. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    store: Store,
    /// Group commit of concurrent publishes, per topic.
    commits: std::sync::Arc<publish::PublishCommits>,
    /// Group commit of concurrent acks, per group.
    ack_commits: std::sync::Arc<delivery::AckCommits>,
}

impl Broker {
    /// A broker working through `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            commits: std::sync::Arc::default(),
            ack_commits: std::sync::Arc::default(),
        }
    }

    /// The Redis handle, for the workflow operations built on the broker.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

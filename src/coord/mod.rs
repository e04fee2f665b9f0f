//! Coordination primitives: consumer-side idempotency, sequence
//! checkpoints, compute reservations with fencing, and per-tenant publish
//! quotas. Each state change is one Lua script under the tenant's hash tag
//! `{tenant}`, with all times from Redis. No HTTP types here.

pub mod checkpoints;
pub mod idempotency;
pub mod limits;
pub mod reservations;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::Store;

/// Longest idempotency key or checkpoint name, in bytes.
pub const MAX_KEY_LEN: usize = 256;

type UnlimitedMemo = HashMap<String, std::time::Instant, foldhash::fast::RandomState>;

/// Handle for the coordination operations. Cheap to clone.
#[derive(Clone)]
pub struct Coord {
    store: Store,
    /// Tenants known to have no publish quota, and when that was last read
    /// (looked up on every publish: foldhash rather than SipHash).
    unlimited: Arc<Mutex<UnlimitedMemo>>,
}

impl Coord {
    /// Coordination working through `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            unlimited: Arc::default(),
        }
    }
}

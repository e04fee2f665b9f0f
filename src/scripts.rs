//! The Lua scripts that make every multi-step change atomic.
//!
//! Each `lua/*.lua` file is compiled into the binary with `include_str!`,
//! after `lua/prelude.lua` (shared helpers: Redis-clock time, topic
//! creation), and wrapped in a [`redis::Script`] once at start. Calls go by
//! EVALSHA; `redis::Script` loads the text and retries when Redis answers
//! NOSCRIPT (after a restart or `SCRIPT FLUSH`). The header comment of each
//! file documents its KEYS, ARGV, return shape and the invariant it protects.

use redis::Script;

/// Builds a script from `lua/<name>.lua` with the prelude in front.
macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("../lua/prelude.lua"),
            include_str!(concat!("../lua/", $name, ".lua"))
        ))
    };
}

/// Every script the service runs, built once and shared through the app state.
#[derive(Debug)]
pub struct Scripts {
    /// Dedupe + sequence + XADD for one or many messages.
    pub publish: Script,
    /// Create or update a topic's config.
    pub declare_topic: Script,
    /// Drop a topic and all of its groups' keys.
    pub delete_topic: Script,
    /// Create or update a consumer group.
    pub declare_group: Script,
    /// Drop a consumer group and its keys.
    pub delete_group: Script,
    /// Pause or resume a group.
    pub set_group_paused: Script,
    /// Hand messages to a consumer under a lease.
    pub fetch: Script,
    /// Fenced acknowledgement.
    pub ack: Script,
    /// Fenced lease renewal.
    pub extend: Script,
    /// Retry later, or dead-letter after the last attempt.
    pub nack: Script,
    /// Dead-letter now.
    pub reject: Script,
    /// Dead letters back to their group.
    pub dlq_replay: Script,
    /// Delete dead letters by message id.
    pub dlq_delete: Script,
    /// Retention that never trims what a group owes.
    pub trim: Script,
    /// Claim an idempotency key.
    pub idem_claim: Script,
    /// Complete or release an idempotency claim.
    pub idem_finish: Script,
    /// Advance a sequence checkpoint.
    pub checkpoint_advance: Script,
    /// Create or update a reservation pool.
    pub pool_declare: Script,
    /// Take a slot of a pool.
    pub pool_acquire: Script,
    /// Renew or release a reservation.
    pub pool_hold: Script,
    /// Describe a pool.
    pub pool_info: Script,
    /// A tenant's publish quota (GCRA).
    pub rate_limit: Script,
}

impl Scripts {
    /// Builds every script (hashes them; nothing is sent to Redis yet).
    pub fn new() -> Self {
        Self {
            publish: script!("publish"),
            declare_topic: script!("declare_topic"),
            delete_topic: script!("delete_topic"),
            declare_group: script!("declare_group"),
            delete_group: script!("delete_group"),
            set_group_paused: script!("set_group_paused"),
            fetch: script!("fetch"),
            ack: script!("ack"),
            extend: script!("extend"),
            nack: script!("nack"),
            reject: script!("reject"),
            dlq_replay: script!("dlq_replay"),
            dlq_delete: script!("dlq_delete"),
            trim: script!("trim"),
            idem_claim: script!("idem_claim"),
            idem_finish: script!("idem_finish"),
            checkpoint_advance: script!("checkpoint_advance"),
            pool_declare: script!("pool_declare"),
            pool_acquire: script!("pool_acquire"),
            pool_hold: script!("pool_hold"),
            pool_info: script!("pool_info"),
            rate_limit: script!("rate_limit"),
        }
    }

    /// All scripts, for loading and for readiness checks.
    pub fn all(&self) -> [&Script; 22] {
        [
            &self.publish,
            &self.declare_topic,
            &self.delete_topic,
            &self.declare_group,
            &self.delete_group,
            &self.set_group_paused,
            &self.fetch,
            &self.ack,
            &self.extend,
            &self.nack,
            &self.reject,
            &self.dlq_replay,
            &self.dlq_delete,
            &self.trim,
            &self.idem_claim,
            &self.idem_finish,
            &self.checkpoint_advance,
            &self.pool_declare,
            &self.pool_acquire,
            &self.pool_hold,
            &self.pool_info,
            &self.rate_limit,
        ]
    }

    /// Makes sure Redis has every script cached (SCRIPT EXISTS, then LOAD
    /// for the missing ones). Used at start and by `/readyz`.
    pub async fn ensure_loaded<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<()> {
        let mut exists = redis::cmd("SCRIPT");
        exists.arg("EXISTS");
        for script in self.all() {
            exists.arg(script.get_hash());
        }
        let present: Vec<bool> = exists.query_async(conn).await?;
        for (script, present) in self.all().into_iter().zip(present) {
            if !present {
                script.load_async(conn).await?;
            }
        }
        Ok(())
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

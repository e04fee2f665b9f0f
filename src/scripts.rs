//! The Lua scripts that make every multi-step change atomic.
//!
//! Each `lua/*.lua` file is compiled into the binary with `include_str!` and
//! wrapped in a [`redis::Script`] once at start. Calls go by EVALSHA;
//! `redis::Script` loads the text and retries when Redis answers NOSCRIPT
//! (after a restart or `SCRIPT FLUSH`). The header comment of each file
//! documents its KEYS, ARGV, return shape and the invariant it protects.

use redis::Script;

/// Every script the service runs, built once and shared through the app state.
#[derive(Debug)]
pub struct Scripts {
    /// `lua/publish.lua`: dedupe + sequence + XADD for one or many messages.
    pub publish: Script,
    /// `lua/declare_topic.lua`: create or update a topic's config.
    pub declare_topic: Script,
    /// `lua/delete_topic.lua`: drop a topic and all of its groups' keys.
    pub delete_topic: Script,
}

impl Scripts {
    /// Builds every script (hashes them; nothing is sent to Redis yet).
    pub fn new() -> Self {
        Self {
            publish: Script::new(include_str!("../lua/publish.lua")),
            declare_topic: Script::new(include_str!("../lua/declare_topic.lua")),
            delete_topic: Script::new(include_str!("../lua/delete_topic.lua")),
        }
    }

    /// All scripts, for loading and for readiness checks.
    pub fn all(&self) -> [&Script; 3] {
        [&self.publish, &self.declare_topic, &self.delete_topic]
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

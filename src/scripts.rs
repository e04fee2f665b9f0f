//! The Lua scripts that make every multi-step change atomic.
//!
//! Each `lua/*.lua` file is compiled into the binary with `include_str!`,
//! after `lua/prelude.lua` (shared helpers: Redis-clock time, topic
//! creation), and wrapped in a [`redis::Script`] once at start. Calls go by
//! EVALSHA; when Redis answers NOSCRIPT (after a restart, a `SCRIPT FLUSH`
//! or a failover) the call runs once by EVAL with the text, which caches
//! it on that node (see [`Invocation::invoke_async`]). The header comment of each
//! file documents its KEYS, ARGV, return shape and the invariant it protects.

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Gauge, Histogram};

use redis::{
    Arg, Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs,
};

use crate::telemetry;

/// Builds a script from `lua/<name>.lua` with the prelude in front.
macro_rules! script {
    ($name:literal) => {
        NamedScript::new(
            $name,
            concat!(
                include_str!("../lua/prelude.lua"),
                include_str!(concat!("../lua/", $name, ".lua"))
            ),
        )
    };
}

/// A script with its name, so every call is timed under that name
/// ([`telemetry::SCRIPT_DURATION`]).
#[derive(Debug)]
pub struct NamedScript {
    name: &'static str,
    /// The source (prelude included), for `EVAL` after a NOSCRIPT.
    code: &'static str,
    script: Script,
    /// Metric handles, registered on the first call (after the recorder is
    /// installed) so calls do not look them up in the registry each time.
    metrics: OnceLock<CallMetrics>,
}

/// The metrics every script call updates.
#[derive(Debug)]
struct CallMetrics {
    /// Round-trip time of this script's calls.
    duration: Histogram,
    /// Script calls awaiting Redis, all scripts together.
    in_flight: Gauge,
}

impl NamedScript {
    fn new(name: &'static str, code: &'static str) -> Self {
        Self {
            name,
            code,
            script: Script::new(code),
            metrics: OnceLock::new(),
        }
    }

    /// Starts a call with its first key.
    pub fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut call = self.prepare_invoke();
        call.key(key);
        call
    }

    /// Starts a call.
    pub fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            script: self,
            // Room for a typical call's keys and arguments (most calls fit, a
            // batch grows it), so writing them does not reallocate.
            keys: Cmd::with_capacity(8, 256),
            args: Cmd::with_capacity(32, 1024),
        }
    }

    /// The script's SHA1.
    pub fn get_hash(&self) -> &str {
        self.script.get_hash()
    }

    /// Its source, prelude included (what `EVAL` sends after a NOSCRIPT).
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// One call of a [`NamedScript`] being built.
///
/// Keys and arguments are written straight into two flat buffers (a
/// [`Cmd`] each: one byte vector and one offset vector), then copied once
/// into the `EVALSHA` command; redis-rs's `ScriptInvocation` allocates a
/// vector per key and per argument and copies them all again.
pub struct Invocation<'a> {
    script: &'a NamedScript,
    keys: Cmd,
    args: Cmd,
}

impl Invocation<'_> {
    /// Adds a key.
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The `EVALSHA` command of this call.
    fn eval_cmd(&self) -> Cmd {
        self.command("EVALSHA", self.script.script.get_hash())
    }

    /// `name` (`EVALSHA` or `EVAL`) with `script` (its SHA or its source),
    /// then this call's keys and arguments.
    fn command(&self, name: &str, script: &str) -> Cmd {
        let parts = || self.keys.args_iter().chain(self.args.args_iter());
        let (count, bytes) = parts().fold((0, 0), |(n, b), part| match part {
            Arg::Simple(bytes) => (n + 1, b + bytes.len()),
            _ => (n, b),
        });
        let mut cmd = Cmd::with_capacity(3 + count, name.len() + script.len() + 4 + bytes);
        cmd.arg(name).arg(script).arg(self.keys.args_iter().count());
        for part in parts() {
            if let Arg::Simple(bytes) = part {
                cmd.arg(bytes);
            }
        }
        cmd
    }

    /// Runs it by EVALSHA, timing the round trip. On NOSCRIPT (a Redis
    /// restarted or flushed, or a replica promoted: replicas do not get
    /// scripts) it runs once by `EVAL` with the source, which also caches
    /// the script on the node that ran it. (`SCRIPT LOAD` and `EVALSHA`
    /// again could load it elsewhere: on a cluster in mid-failover,
    /// `SCRIPT LOAD` goes to the primaries of a slot map that may not know
    /// the newly promoted one yet, and the call answered NOSCRIPT, a 500.)
    pub async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<T> {
        let metrics = self.script.metrics.get_or_init(|| CallMetrics {
            duration: metrics::histogram!(telemetry::SCRIPT_DURATION, "script" => self.script.name),
            in_flight: metrics::gauge!(telemetry::REDIS_IN_FLIGHT),
        });
        let started = Instant::now();
        let result = {
            let _in_flight = InFlight::enter(&metrics.in_flight);
            let cmd = self.eval_cmd();
            match cmd.query_async(conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    self.command("EVAL", self.script.code)
                        .query_async(conn)
                        .await
                }
                result => result,
            }
        };
        metrics.duration.record(started.elapsed().as_secs_f64());
        result
    }
}

/// Counts one call in the in-flight gauge for as long as it lives, so a
/// call abandoned mid-flight (its request was cancelled) still leaves it.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Every script the service runs, built once and shared through the app state.
#[derive(Debug)]
pub struct Scripts {
    /// Dedupe + sequence + XADD for one or many messages.
    pub publish: NamedScript,
    /// Create or update a topic's config.
    pub declare_topic: NamedScript,
    /// Drop a topic and all of its groups' keys.
    pub delete_topic: NamedScript,
    /// Create or update a consumer group.
    pub declare_group: NamedScript,
    /// Drop a consumer group and its keys.
    pub delete_group: NamedScript,
    /// Pause or resume a group.
    pub set_group_paused: NamedScript,
    /// Hand messages to a consumer under a lease.
    pub fetch: NamedScript,
    /// Fenced acknowledgement.
    pub ack: NamedScript,
    /// Fenced lease renewal.
    pub extend: NamedScript,
    /// Retry later, or dead-letter after the last attempt.
    pub nack: NamedScript,
    /// Dead-letter now.
    pub reject: NamedScript,
    /// Dead letters back to their group.
    pub dlq_replay: NamedScript,
    /// Delete dead letters by message id.
    pub dlq_delete: NamedScript,
    /// Retention that never trims what a group owes.
    pub trim: NamedScript,
    /// One consistent reading of a group.
    pub group_info: NamedScript,
    /// One consistent reading of a topic and its groups' numbers.
    pub topic_info: NamedScript,
    /// Forget long-idle consumers that own nothing.
    pub prune_consumers: NamedScript,
    /// Is a receipt current, and whose message is it (ack with emit).
    pub delivery_peek: NamedScript,
    /// Declare a fan-in join.
    pub join_declare: NamedScript,
    /// Record a join's part, or time it out; publish the aggregate once.
    pub join_part: NamedScript,
    /// Claim an idempotency key.
    pub idem_claim: NamedScript,
    /// Complete or release an idempotency claim.
    pub idem_finish: NamedScript,
    /// Advance a sequence checkpoint.
    pub checkpoint_advance: NamedScript,
    /// Create or update a reservation pool.
    pub pool_declare: NamedScript,
    /// Take a slot of a pool.
    pub pool_acquire: NamedScript,
    /// Renew or release a reservation.
    pub pool_hold: NamedScript,
    /// Describe a pool.
    pub pool_info: NamedScript,
    /// A tenant's publish quota (GCRA).
    pub rate_limit: NamedScript,
    /// Read-only: which idempotency keys of a publish were already written.
    pub publish_dups: NamedScript,
    /// Realtime channels: append to history and publish live.
    pub channel_publish: NamedScript,
    /// Realtime channels: epoch, top offset and a page of history.
    pub channel_read: NamedScript,
    /// Realtime channels: set config, trim to it.
    pub channel_declare: NamedScript,
    /// Client edge: one sidecar's presence heartbeat on a channel.
    pub presence_beat: NamedScript,
    /// Client edge: who is connected to a channel.
    pub presence_read: NamedScript,
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
            group_info: script!("group_info"),
            topic_info: script!("topic_info"),
            prune_consumers: script!("prune_consumers"),
            delivery_peek: script!("delivery_peek"),
            join_declare: script!("join_declare"),
            join_part: script!("join_part"),
            idem_claim: script!("idem_claim"),
            idem_finish: script!("idem_finish"),
            checkpoint_advance: script!("checkpoint_advance"),
            pool_declare: script!("pool_declare"),
            pool_acquire: script!("pool_acquire"),
            pool_hold: script!("pool_hold"),
            pool_info: script!("pool_info"),
            rate_limit: script!("rate_limit"),
            publish_dups: script!("publish_dups"),
            channel_publish: script!("channel_publish"),
            channel_read: script!("channel_read"),
            channel_declare: script!("channel_declare"),
            presence_beat: script!("presence_beat"),
            presence_read: script!("presence_read"),
        }
    }

    /// The scripts that never write (their calls need no replica
    /// confirmation under `--durability replicas:N`).
    pub fn read_only(&self) -> impl Iterator<Item = &NamedScript> {
        [
            &self.group_info,
            &self.topic_info,
            &self.delivery_peek,
            &self.publish_dups,
            &self.presence_read,
        ]
        .into_iter()
    }

    /// All scripts, for loading and for readiness checks.
    pub fn all(&self) -> Vec<&NamedScript> {
        vec![
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
            &self.group_info,
            &self.topic_info,
            &self.prune_consumers,
            &self.delivery_peek,
            &self.join_declare,
            &self.join_part,
            &self.idem_claim,
            &self.idem_finish,
            &self.checkpoint_advance,
            &self.pool_declare,
            &self.pool_acquire,
            &self.pool_hold,
            &self.pool_info,
            &self.rate_limit,
            &self.publish_dups,
            &self.channel_publish,
            &self.channel_read,
            &self.channel_declare,
            &self.presence_beat,
            &self.presence_read,
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
                script.script.load_async(conn).await?;
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

//! The only place Redis key names are built.
//!
//! Every key of one topic shares the hash tag `{tenant:topic}` and every
//! tenant-wide key shares `{tenant}`, so each Lua script touches exactly one
//! hash slot and runs unchanged on Redis Cluster. Names are validated
//! newtypes ([`crate::names`]), which cannot contain `{`, `}` or `:`, so no
//! name can break out of its tag.
//!
//! Layout (`groups` lets a topic delete find every group's keys without
//! scanning the keyspace):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sc:{T:P}:stream` | stream | the topic's messages |
//! | `sc:{T:P}:meta` | hash | topic config, `seq`, `incarnation`, `deliveries`, `done:<G>` |
//! | `sc:{T:P}:dedup:<key>` | string | publish idempotency record (PX = window) |
//! | `sc:{T:P}:groups` | set | names of the topic's consumer groups |
//! | `sc:{T:P}:progress` | zset | group name by its `done:<G>` counter (the slowest first, for `max_backlog`) |
//! | `sc:{T:P}:join:<J>` | hash | a fan-in join: parts, results, state (expires) |
//! | `sc:{T:P}:joins` | zset | open joins by deadline |
//! | `sc:{T:P}:g:<G>` | hash | group config |
//! | `sc:{T:P}:g:<G>:delayed` | zset | retry schedule |
//! | `sc:{T:P}:g:<G>:dlq` | stream | dead letters |
//! | `sc:{T:P}:g:<G>:dlq:index` | hash | message id → its dead letters' ids |
//! | `sc:{T:P}:g:<G>:leases` | zset | leased stream ids by promised expiry |
//! | `sc:{T:P}:g:<G>:deliveries` | hash | leased stream id → `<attempt>:<delivery>`; a retry nacked with an error → `~<error>` |
//! | `sc:{T:P}:g:<G>:heads` | hash | ordered groups: key → its message in progress |
//! | `sc:{T:P}:g:<G>:parked` | zset | ordered groups: messages waiting behind their key's head |
//! | `sc:{T}:topics` | set | the tenant's topic names |
//! | `sc:{T}:idem:<key>` | hash | consumer idempotency claim / result |
//! | `sc:{T}:checkpoint:<name>` | string | sequence high-water mark |
//! | `sc:{T}:pool:<P>` | hash | pool config, fencing counter, holder details |
//! | `sc:{T}:pool:<P>:holders` | zset | live reservations by expiry |
//! | `sc:{T}:rate` | hash | publish quota (GCRA) |
//! | `sc:tenants` | set | the tenants that have topics (see [`crate::tenants`]) |
//! | `sc:retention:lock` | string | which sidecar runs the current retention pass |
//! | `sc:tenants:lock` | string | held while one sidecar prunes `sc:tenants` |
//! | `sc:ch:{T:C}:history` | stream | a realtime channel's last messages, ids `<offset>-0` |
//! | `sc:ch:{T:C}:meta` | hash | a channel's `epoch` and `top` offset (expires) |
//! | `sc:ch:{T:C}:config` | hash | a channel's `history_size`, `history_ttl_ms` |
//! | `sc:ch:{T:C}:dedup:<key>` | string | a channel publish's idempotency record |
//! | `sc:ch:{T:C}:presence` | zset | edge clients of a channel: `<sidecar>\|<sub>` → expiry (TTL'd) |
//! | `sc:ch:{T:C}:presence:conns` | hash | the same members → their connection count (TTL'd) |

use crate::names::{Group, Join, Pool, Tenant, Topic};

/// The global set of tenant names.
pub const TENANTS: &str = "sc:tenants";

/// Short lock that lets one sidecar at a time run a retention pass.
pub const RETENTION_LOCK: &str = "sc:retention:lock";

/// Short lock that lets about one sidecar per interval prune [`TENANTS`].
pub const TENANTS_PRUNE_LOCK: &str = "sc:tenants:lock";

/// `parts` concatenated into a string of exactly their length: key names
/// are built on every request, and `format!` costs several times as much.
fn joined(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| key.push_str(p));
    key
}

/// Keys of one tenant (hash tag `{tenant}`).
#[derive(Debug, Clone)]
pub struct TenantKeys {
    prefix: String,
}

impl TenantKeys {
    /// Keys for `tenant`.
    pub fn new(tenant: &Tenant) -> Self {
        Self {
            prefix: joined(&["sc:{", tenant.as_str(), "}"]),
        }
    }

    /// Set of the tenant's topic names.
    pub fn topics(&self) -> String {
        joined(&[&self.prefix, ":topics"])
    }

    /// Consumer-side idempotency record of `key` (any text after the tag).
    pub fn idempotency(&self, key: &str) -> String {
        joined(&[&self.prefix, ":idem:", key])
    }

    /// Sequence checkpoint `name` (any text after the tag).
    pub fn checkpoint(&self, name: &str) -> String {
        joined(&[&self.prefix, ":checkpoint:", name])
    }

    /// The tenant's publish quota (GCRA state).
    pub fn rate(&self) -> String {
        joined(&[&self.prefix, ":rate"])
    }

    /// The quota's recent refunds, by the number of the charge refunded.
    pub fn rate_refunds(&self) -> String {
        joined(&[&self.prefix, ":rate:refunds"])
    }

    /// Keys of reservation pool `pool`.
    pub fn pool(&self, pool: &Pool) -> PoolKeys {
        PoolKeys {
            prefix: joined(&[&self.prefix, ":pool:", pool.as_str()]),
        }
    }
}

/// Keys of one reservation pool (hash tag `{tenant}`).
#[derive(Debug, Clone)]
pub struct PoolKeys {
    prefix: String,
}

impl PoolKeys {
    /// Config, fencing counter and holder details.
    pub fn pool(&self) -> String {
        self.prefix.clone()
    }

    /// Live reservations (zset id → expires_at).
    pub fn holders(&self) -> String {
        joined(&[&self.prefix, ":holders"])
    }

    /// Pub/sub channel (not a key) that wakes waiting acquirers.
    pub fn wake_channel(&self) -> String {
        joined(&[&self.prefix, ":wake"])
    }
}

/// Keys of one realtime channel (hash tag `{tenant:channel}` behind the
/// `sc:ch:` prefix, so a channel and a topic of the same name never share
/// a key).
#[derive(Debug, Clone)]
pub struct ChannelKeys {
    prefix: String,
}

impl ChannelKeys {
    /// Keys for `channel` (a validated channel name) of `tenant`.
    pub fn new(tenant: &Tenant, channel: &str) -> Self {
        Self {
            prefix: joined(&["sc:ch:{", tenant.as_str(), ":", channel, "}"]),
        }
    }

    /// The bounded history stream.
    pub fn history(&self) -> String {
        joined(&[&self.prefix, ":history"])
    }

    /// Epoch and top offset.
    pub fn meta(&self) -> String {
        joined(&[&self.prefix, ":meta"])
    }

    /// `history_size` and `history_ttl_ms`, as declared.
    pub fn config(&self) -> String {
        joined(&[&self.prefix, ":config"])
    }

    /// The idempotency record of a publish.
    pub fn dedup(&self, idempotency_key: &str) -> String {
        joined(&[&self.prefix, ":dedup:", idempotency_key])
    }

    /// Pub/sub channel (not a key) carrying live messages.
    pub fn live(&self) -> String {
        joined(&[&self.prefix, ":live"])
    }

    /// Edge presence: `<sidecar>|<sub>` → when the entry expires.
    pub fn presence(&self) -> String {
        joined(&[&self.prefix, ":presence"])
    }

    /// Edge presence: `<sidecar>|<sub>` → open connections.
    pub fn presence_connections(&self) -> String {
        joined(&[&self.prefix, ":presence:conns"])
    }
}

/// Keys of one topic (hash tag `{tenant:topic}`).
#[derive(Debug, Clone)]
pub struct TopicKeys {
    prefix: String,
}

impl TopicKeys {
    /// Keys for `topic` of `tenant`.
    pub fn new(tenant: &Tenant, topic: &Topic) -> Self {
        Self {
            prefix: joined(&["sc:{", tenant.as_str(), ":", topic.as_str(), "}"]),
        }
    }

    /// The topic's stream.
    pub fn stream(&self) -> String {
        joined(&[&self.prefix, ":stream"])
    }

    /// The topic's config and sequence hash.
    pub fn meta(&self) -> String {
        joined(&[&self.prefix, ":meta"])
    }

    /// The publish idempotency record of `idempotency_key`.
    ///
    /// The key text follows the hash tag, so it may hold any bytes: the tag
    /// is the first `{…}` of the key and is already closed.
    pub fn dedup(&self, idempotency_key: &str) -> String {
        joined(&[&self.prefix, ":dedup:", idempotency_key])
    }

    /// Pub/sub channel (not a key) that wakes long-polling fetches of the topic.
    pub fn wake_channel(&self) -> String {
        joined(&[&self.prefix, ":wake"])
    }

    /// The set of the topic's group names.
    pub fn groups(&self) -> String {
        joined(&[&self.prefix, ":groups"])
    }

    /// The topic's groups scored by their `done:<G>` counters (zset), so
    /// the backlog check finds the slowest group without reading them all.
    pub fn progress(&self) -> String {
        joined(&[&self.prefix, ":progress"])
    }

    /// A fan-in join of the topic (hash; expires after its deadline plus
    /// the keep time).
    pub fn join(&self, join: &Join) -> String {
        joined(&[&self.prefix, ":join:", join.as_str()])
    }

    /// The topic's open joins by deadline (zset), for the timeout sweep.
    pub fn joins(&self) -> String {
        joined(&[&self.prefix, ":joins"])
    }

    /// Keys of one group of this topic.
    pub fn group(&self, group: &Group) -> GroupKeys {
        GroupKeys {
            prefix: joined(&[&self.prefix, ":g:", group.as_str()]),
        }
    }
}

/// Keys of one consumer group (same hash tag as its topic).
#[derive(Debug, Clone)]
pub struct GroupKeys {
    prefix: String,
}

impl GroupKeys {
    /// The group's config hash.
    pub fn config(&self) -> String {
        self.prefix.clone()
    }

    /// The group's retry schedule (zset of stream id → due time).
    pub fn delayed(&self) -> String {
        joined(&[&self.prefix, ":delayed"])
    }

    /// The group's dead-letter stream.
    pub fn dlq(&self) -> String {
        joined(&[&self.prefix, ":dlq"])
    }

    /// Message id → ids of its dead letters (space-separated), so replaying
    /// or deleting the dead letters of one message never scans the DLQ.
    pub fn dlq_index(&self) -> String {
        joined(&[&self.prefix, ":dlq:index"])
    }

    /// Live leases: zset of stream id → the expiry (ms) its holder was told.
    pub fn leases(&self) -> String {
        joined(&[&self.prefix, ":leases"])
    }

    /// The current delivery of each leased entry: stream id →
    /// `<attempt>:<delivery number>`, the fencing half of a receipt.
    pub fn deliveries(&self) -> String {
        joined(&[&self.prefix, ":deliveries"])
    }

    /// Ordered groups: key → the stream id of its message in progress.
    pub fn heads(&self) -> String {
        joined(&[&self.prefix, ":heads"])
    }

    /// Ordered groups: messages waiting behind the one of their key in
    /// progress (zset ordered by member: key, then arrival).
    pub fn parked(&self) -> String {
        joined(&[&self.prefix, ":parked"])
    }

    /// Every key of the group, for deleting it.
    pub fn all(&self) -> [String; 8] {
        [
            self.config(),
            self.delayed(),
            self.dlq(),
            self.dlq_index(),
            self.leases(),
            self.deliveries(),
            self.heads(),
            self.parked(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_share_one_hash_tag() {
        let t = Tenant::parse("acme").unwrap();
        let p = Topic::parse("orders").unwrap();
        let k = TopicKeys::new(&t, &p);
        let g = k.group(&Group::parse("billing").unwrap());
        assert_eq!(k.stream(), "sc:{acme:orders}:stream");
        assert_eq!(k.meta(), "sc:{acme:orders}:meta");
        assert_eq!(k.dedup("x}{y"), "sc:{acme:orders}:dedup:x}{y");
        assert_eq!(g.config(), "sc:{acme:orders}:g:billing");
        assert_eq!(g.delayed(), "sc:{acme:orders}:g:billing:delayed");
        assert_eq!(g.dlq(), "sc:{acme:orders}:g:billing:dlq");
        assert_eq!(g.leases(), "sc:{acme:orders}:g:billing:leases");
        assert_eq!(TenantKeys::new(&t).topics(), "sc:{acme}:topics");
    }
}

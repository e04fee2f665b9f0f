//! Consumer group lifecycle: declare/update, describe, delete, pause and
//! resume. A group is a Redis consumer group on the topic stream plus a
//! config hash (`lua/declare_group.lua` keeps the two together).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::delivery::group_call;
use super::listing::Listing;
use super::topics::validate_stream_id;
use super::{Broker, DEFAULT_DEDUP_WINDOW_MS};
use crate::error::{Error, Result};
use crate::keys::TopicKeys;
use crate::names::{Group, Tenant, Topic};
use crate::validate::check_range;

/// Default lease: 30 s.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shortest lease accepted.
pub const MIN_LEASE_MS: u64 = 100;
/// Longest lease accepted: 12 h.
pub const MAX_LEASE_MS: u64 = 12 * 60 * 60 * 1000;
/// Default deliveries before dead-lettering.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Largest `max_deliveries`.
pub const MAX_MAX_DELIVERIES: u32 = 1000;
/// Longest backoff delay: 24 h.
pub const MAX_BACKOFF_MS: u64 = 24 * 60 * 60 * 1000;

/// Retry backoff: `initial_ms * multiplier^(attempt-1)`, capped at `max_ms`,
/// spread by ± `jitter` (a fraction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Random spread, 0.0..=1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_ms: 1000,
            max_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Partial backoff in a request: fields left out keep their value.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    /// Delay before the second attempt.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub initial_ms: Option<u64>,
    /// Largest delay.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub max_ms: Option<u64>,
    /// Growth per attempt.
    #[serde(default)]
    #[schema(minimum = 1.0, maximum = 100.0)]
    pub multiplier: Option<f64>,
    /// Random spread fraction.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub jitter: Option<f64>,
}

/// Body of `PUT …/groups/{group}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupConfigRequest {
    /// Where a new group starts: `earliest` (default), `latest` or a stream id.
    /// Ignored when the group exists: re-declaring never moves a live group.
    #[serde(default)]
    #[schema(pattern = "^(earliest|latest|(0|[1-9][0-9]{0,18})(-(0|[1-9][0-9]{0,18}))?)$")]
    pub start: Option<String>,
    /// Lease length in ms.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 100, maximum = 43200000)]
    pub lease_ms: Option<u64>,
    /// Deliveries before a message is dead-lettered.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u32")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_deliveries: Option<u32>,
    /// Retry backoff.
    #[serde(default, deserialize_with = "crate::validate::object")]
    pub backoff: Option<BackoffRequest>,
    /// Whether deliveries are paused.
    #[serde(default)]
    pub paused: Option<bool>,
    /// `none` (default) or `key`: at most one message per `key` in progress,
    /// in `seq` order. Fixed when the group is created.
    #[serde(default)]
    pub ordering: Option<Ordering>,
}

/// How a group orders deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any message may be delivered while others are in progress.
    #[default]
    None,
    /// Per key: one message in progress at a time, in `seq` order.
    Key,
}

impl Ordering {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Key => "key",
        }
    }
}

/// A consumer as Redis sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerInfo {
    /// Consumer name.
    pub name: String,
    /// Deliveries it holds.
    pub pending: u64,
    /// Time since its last interaction, ms.
    pub idle_ms: u64,
}

/// What `GET …/groups/{group}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Where the group started.
    pub start: String,
    /// Lease length in ms.
    pub lease_ms: u64,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u64,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Whether deliveries are paused.
    pub paused: bool,
    /// `none` or `key` (per-key ordering).
    pub ordering: Ordering,
    /// Creation time (ms, Redis clock).
    pub created_at: u64,
    /// Entries not yet delivered to the group (not counting parked ones).
    pub lag: u64,
    /// Ordered groups: entries waiting behind an earlier message of their key.
    pub parked: u64,
    /// Entries delivered and not yet acked.
    pub pending: u64,
    /// Entries waiting for a scheduled retry.
    pub delayed: u64,
    /// Entries in the group's dead-letter stream.
    pub dead_lettered: u64,
    /// Last entry id handed to the group.
    pub last_delivered_id: String,
    /// Consumers that have fetched.
    pub consumers: Vec<ConsumerInfo>,
}

impl GroupConfigRequest {
    /// Checks every field without touching Redis (what `declare_group`
    /// refuses before its script runs), for configs read at start.
    pub fn check(&self) -> Result<()> {
        self.validate()?;
        self.start_position().map(|_| ())
    }

    fn validate(&self) -> Result<()> {
        check_range("lease_ms", self.lease_ms, MIN_LEASE_MS, MAX_LEASE_MS)?;
        check_range("max_deliveries", self.max_deliveries, 1, MAX_MAX_DELIVERIES)?;
        if let Some(b) = &self.backoff {
            check_range("backoff.initial_ms", b.initial_ms, 1, MAX_BACKOFF_MS)?;
            check_range("backoff.max_ms", b.max_ms, 1, MAX_BACKOFF_MS)?;
            check_range("backoff.multiplier", b.multiplier, 1.0, 100.0)?;
            // No cross-field rule: `max_ms` caps every delay, even the first
            // (so `max_ms < initial_ms` means a constant `max_ms`).
            check_range("backoff.jitter", b.jitter, 0.0, 1.0)?;
        }
        Ok(())
    }

    /// The Redis start id for a new group, and how it is shown.
    fn start_position(&self) -> Result<(String, String)> {
        match self.start.as_deref() {
            None | Some("earliest") => Ok(("0".into(), "earliest".into())),
            Some("latest") => Ok(("$".into(), "latest".into())),
            Some(id) => {
                validate_stream_id("start", id).map_err(|_| {
                    Error::invalid_field(
                        "start",
                        format!("'{id}' is not earliest, latest or a stream id"),
                    )
                })?;
                Ok((id.to_owned(), id.to_owned()))
            }
        }
    }

    /// Config fields this request sets, as hash field/value pairs.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = self.lease_ms {
            out.push(("lease_ms", v.to_string()));
        }
        if let Some(v) = self.max_deliveries {
            out.push(("max_deliveries", v.to_string()));
        }
        if let Some(b) = &self.backoff {
            let pairs = [
                ("backoff_initial_ms", b.initial_ms.map(|v| v.to_string())),
                ("backoff_max_ms", b.max_ms.map(|v| v.to_string())),
                ("backoff_multiplier", b.multiplier.map(|v| v.to_string())),
                ("backoff_jitter", b.jitter.map(|v| v.to_string())),
            ];
            out.extend(pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        }
        if let Some(p) = self.paused {
            out.push(("paused", if p { "1" } else { "0" }.to_owned()));
        }
        out
    }
}

/// Config of a new group before the request's own fields apply.
fn default_fields(start: String) -> Vec<(&'static str, String)> {
    let b = Backoff::default();
    vec![
        ("start", start),
        ("lease_ms", DEFAULT_LEASE_MS.to_string()),
        ("max_deliveries", DEFAULT_MAX_DELIVERIES.to_string()),
        ("backoff_initial_ms", b.initial_ms.to_string()),
        ("backoff_max_ms", b.max_ms.to_string()),
        ("backoff_multiplier", b.multiplier.to_string()),
        ("backoff_jitter", b.jitter.to_string()),
        ("paused", "0".into()),
    ]
}

/// Parses a config hash; None when it is empty (no such group).
pub(crate) fn parse_config(map: &HashMap<String, String>) -> Option<(u64, u64, Backoff, bool)> {
    if map.is_empty() {
        return None;
    }
    let u = |k: &str, d: u64| map.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let f = |k: &str, d: f64| map.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let d = Backoff::default();
    Some((
        u("lease_ms", DEFAULT_LEASE_MS),
        u("max_deliveries", u64::from(DEFAULT_MAX_DELIVERIES)),
        Backoff {
            initial_ms: u("backoff_initial_ms", d.initial_ms),
            max_ms: u("backoff_max_ms", d.max_ms),
            multiplier: f("backoff_multiplier", d.multiplier),
            jitter: f("backoff_jitter", d.jitter),
        },
        map.get("paused").is_some_and(|p| p == "1"),
    ))
}

pub(crate) fn group_not_found(group: &Group) -> Error {
    Error::NotFound {
        kind: crate::error::NotFoundKind::Group,
        name: group.to_string(),
    }
}

impl Broker {
    /// Creates or updates a group; returns true when it was created.
    pub async fn declare_group(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        request: &GroupConfigRequest,
    ) -> Result<bool> {
        request.validate()?;
        let (start_id, start_shown) = request.start_position()?;
        let keys = TopicKeys::new(tenant, topic);
        let gk = keys.group(group);
        let mut call = self.store.scripts().declare_group.key(keys.meta());
        call.key(keys.stream())
            .key(keys.groups())
            .key(gk.config())
            .key(keys.progress())
            .arg(DEFAULT_DEDUP_WINDOW_MS)
            .arg(group.as_str())
            .arg(start_id)
            .arg(request.ordering.map_or("", Ordering::as_str));
        let defaults = default_fields(start_shown);
        call.arg(defaults.len());
        for (k, v) in defaults.into_iter().chain(request.fields()) {
            call.arg(k).arg(v);
        }
        let mut conn = self.store.conn().await?;
        let listing = Listing::before_create(&mut conn, tenant, topic).await?;
        let (created, topic_created, ordering): (i64, i64, String) =
            call.invoke_async(&mut conn).await?;
        if created == -2 {
            // Refused before anything was written: the topic may not exist.
            listing.settle_unwritten().await?;
            return Err(Error::invalid_field(
                "start",
                "must not be after both the topic's last message and the current time: \
                 the messages published before it would be owed and never delivered",
            ));
        }
        listing.settle(topic_created == 1).await?;
        if created < 0 {
            return Err(Error::Conflict {
                code: "group_config_conflict",
                detail: format!(
                    "group '{group}' exists with ordering '{ordering}'; ordering is fixed when a group is created"
                ),
            });
        }
        if created == 1 || request.paused == Some(false) {
            // A resume, or a group (maybe created again under fetches that
            // wait on its name) that owes messages: waiting fetches may
            // deliver now, as after `POST …/resume`.
            self.store.wake(&mut conn, &keys.wake_channel()).await?;
        }
        Ok(created == 1)
    }

    /// Describes a group; 404 when it does not exist.
    pub async fn group_info(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
    ) -> Result<GroupInfo> {
        self.read_group(tenant, topic, group, Detail::Full).await
    }

    /// A group's config and counts, without its consumers (none), which
    /// cost O(consumers of the group) to read: for passes over every group
    /// (gauges) and lease refreshes.
    pub async fn group_counts(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
    ) -> Result<GroupInfo> {
        self.read_group(tenant, topic, group, Detail::Counts).await
    }

    async fn read_group(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        detail: Detail,
    ) -> Result<GroupInfo> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let reading: Option<GroupReading> =
            group_call(&self.store.scripts().group_info, &keys, group)
                .arg(match detail {
                    Detail::Full => "0",
                    Detail::Counts => "1",
                })
                .invoke_async(&mut conn)
                .await?;
        let (config, lag, pending, delayed, dead_lettered, last_delivered_id, consumers, parked) =
            reading.ok_or_else(|| group_not_found(group))?;
        let (lease_ms, max_deliveries, backoff, paused) =
            parse_config(&config).ok_or_else(|| group_not_found(group))?;
        Ok(GroupInfo {
            name: group.to_string(),
            start: config.get("start").cloned().unwrap_or_default(),
            lease_ms,
            max_deliveries,
            backoff,
            paused,
            ordering: if config.get("ordering").is_some_and(|o| o == "key") {
                Ordering::Key
            } else {
                Ordering::None
            },
            created_at: config
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            lag,
            parked,
            pending,
            delayed,
            dead_lettered,
            last_delivered_id,
            consumers: consumers
                .into_iter()
                .map(|(name, pending, idle_ms)| ConsumerInfo {
                    name,
                    pending,
                    idle_ms,
                })
                .collect(),
        })
    }

    /// Deletes a group with its retry schedule and dead letters.
    pub async fn delete_group(&self, tenant: &Tenant, topic: &Topic, group: &Group) -> Result<()> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let deleted: i64 = group_call(&self.store.scripts().delete_group, &keys, group)
            .key(keys.groups())
            .invoke_async(&mut conn)
            .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(group_not_found(group))
        }
    }

    /// Pauses (true) or resumes (false) a group's deliveries.
    pub async fn set_paused(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        paused: bool,
    ) -> Result<()> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let done: i64 = self
            .store
            .scripts()
            .set_group_paused
            .key(keys.group(group).config())
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        if done != 1 {
            return Err(group_not_found(group));
        }
        if !paused {
            // Waiting fetches of this group may deliver now.
            self.store.wake(&mut conn, &keys.wake_channel()).await?;
        }
        Ok(())
    }
}

/// How much of a group `lua/group_info.lua` reads.
#[derive(Clone, Copy)]
enum Detail {
    /// Everything GET group shows.
    Full,
    /// Config and counts only (see [`Broker::group_counts`]).
    Counts,
}

/// Raw reply of `lua/group_info.lua` for an existing group: config, lag,
/// leased, scheduled, dead letters, last-delivered id,
/// `(name, pending, idle_ms)` per consumer, and parked.
type GroupReading = (
    HashMap<String, String>,
    u64,
    u64,
    u64,
    u64,
    String,
    Vec<(String, u64, u64)>,
    u64,
);

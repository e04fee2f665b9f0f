//! Topic lifecycle and history: declare/update, describe, list, delete, and
//! read past messages without touching any consumer group.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::listing::Listing;
use super::message::Message;
use super::{Broker, DEFAULT_DEDUP_WINDOW_MS};
use crate::error::{Error, Result};
use crate::keys::{GroupKeys, TenantKeys, TopicKeys};
use crate::names::{Group, Tenant, Topic};
use crate::store::Conn;
use crate::validate::{check_range, is_id_number};

/// Longest retention: 10 years (0 = keep until every group is done; no time limit).
pub const MAX_RETENTION_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;
/// Longest publish idempotency window: 30 days.
pub const MAX_DEDUP_WINDOW_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Largest `max_backlog`.
pub const MAX_BACKLOG: u64 = 1_000_000_000;
/// Default page size of history and dead-letter listings.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// Largest page of history and dead-letter listings.
pub const MAX_PAGE_LIMIT: usize = 1000;

/// Body of `PUT /topics/{topic}`: fields left out keep their current value.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicConfigRequest {
    /// Entries older than this, and done by every group, may be trimmed (0 = no time limit).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 315360000000_u64)]
    pub retention_ms: Option<u64>,
    /// Refuse publishes while the slowest group is this far behind (0 = unbounded).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 1000000000_u64)]
    pub max_backlog: Option<u64>,
    /// How long a publish idempotency key is remembered.
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 2592000000_u64)]
    pub dedup_window_ms: Option<u64>,
}

impl TopicConfigRequest {
    fn validate(&self) -> Result<()> {
        check_range("retention_ms", self.retention_ms, 0, MAX_RETENTION_MS)?;
        check_range("max_backlog", self.max_backlog, 0, MAX_BACKLOG)?;
        check_range(
            "dedup_window_ms",
            self.dedup_window_ms,
            1,
            MAX_DEDUP_WINDOW_MS,
        )
    }
}

/// A consumer group as seen from its topic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupSummary {
    /// Group name.
    pub name: String,
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: u64,
    /// Entries delivered but not yet acked.
    pub pending: u64,
    /// Last entry id handed to the group.
    pub last_delivered_id: String,
}

/// What `GET /topics/{topic}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Retention in ms (0 = no time limit).
    pub retention_ms: u64,
    /// Backlog limit (0 = unbounded).
    pub max_backlog: u64,
    /// Publish idempotency window in ms.
    pub dedup_window_ms: u64,
    /// When the topic was created (ms since epoch, Redis clock).
    pub created_at: u64,
    /// Entries currently in the stream.
    pub length: u64,
    /// Oldest entry id still stored.
    pub first_id: Option<String>,
    /// Newest entry id.
    pub last_id: Option<String>,
    /// Sequence number of the newest message (0 = none yet).
    pub last_seq: u64,
    /// Consumer groups with their lag.
    pub groups: Vec<GroupSummary>,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Messages in stream order.
    pub messages: Vec<Message>,
    /// Pass as `after` to read the next page (None when the page is empty).
    pub next_after: Option<String>,
}

/// Checks a stream id given by a client (`<ms>` or `<ms>-<seq>`, numbers
/// as Redis prints them).
pub fn validate_stream_id(field: &str, id: &str) -> Result<()> {
    let valid = match id.split_once('-') {
        Some((ms, seq)) => is_id_number(ms) && is_id_number(seq),
        None => is_id_number(id),
    };
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_field(
            field,
            format!("'{id}' is not a stream id such as 1718000000000-0"),
        ))
    }
}

fn field_u64(meta: &HashMap<String, String>, name: &str) -> u64 {
    meta.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One stream entry as XRANGE returns it, fields by name.
pub(crate) type Entry = (String, HashMap<String, String>);

impl Broker {
    /// Creates or updates a topic. Returns true when it was created.
    pub async fn declare_topic(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        config: &TopicConfigRequest,
    ) -> Result<bool> {
        config.validate()?;
        let keys = TopicKeys::new(tenant, topic);
        let mut call = self.store.scripts().declare_topic.key(keys.meta());
        call.arg(DEFAULT_DEDUP_WINDOW_MS);
        let fields = [
            ("retention_ms", config.retention_ms),
            ("max_backlog", config.max_backlog),
            ("dedup_window_ms", config.dedup_window_ms),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                call.arg(name).arg(v);
            }
        }
        let mut conn = self.store.conn().await?;
        let listing = Listing::before_create(&mut conn, tenant, topic).await?;
        let created: i64 = call.invoke_async(&mut conn).await?;
        // Listing again on update is idempotent and repairs a listing lost
        // to a crash between create and list.
        listing.settle(true).await?;
        Ok(created == 1)
    }

    /// Describes a topic; 404 when it does not exist.
    pub async fn topic_info(&self, tenant: &Tenant, topic: &Topic) -> Result<TopicInfo> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let reading: Option<TopicReading> = self
            .store
            .scripts()
            .topic_info
            .key(keys.meta())
            .key(keys.stream())
            .key(keys.groups())
            .invoke_async(&mut conn)
            .await?;
        let (meta, length, first_id, last_id, groups) = reading.ok_or_else(|| not_found(topic))?;
        let some = |id: String| (!id.is_empty()).then_some(id);
        let mut groups: Vec<GroupSummary> = groups
            .into_iter()
            .map(|(name, lag, pending, last_delivered_id)| GroupSummary {
                name,
                lag,
                pending,
                last_delivered_id,
            })
            .collect();
        groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(TopicInfo {
            name: topic.to_string(),
            retention_ms: field_u64(&meta, "retention_ms"),
            max_backlog: field_u64(&meta, "max_backlog"),
            dedup_window_ms: field_u64(&meta, "dedup_window_ms"),
            created_at: field_u64(&meta, "created_at"),
            length,
            first_id: some(first_id),
            last_id: some(last_id),
            last_seq: field_u64(&meta, "seq"),
            groups,
        })
    }

    /// Names of a tenant's topics, sorted.
    pub async fn list_topics(&self, tenant: &Tenant) -> Result<Vec<String>> {
        let mut conn = self.store.conn().await?;
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(TenantKeys::new(tenant).topics())
            .query_async(&mut conn)
            .await?;
        names.sort_unstable();
        Ok(names)
    }

    /// Deletes a topic with its messages and groups; 404 when it does not
    /// exist. Either way the topic leaves its tenant's listing (unless it
    /// is created again meanwhile), so a DELETE also clears the listing of
    /// a topic deleted by a call cut short before it could.
    pub async fn delete_topic(&self, tenant: &Tenant, topic: &Topic) -> Result<()> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        // The listing lives under the tenant's hash tag, so the script
        // cannot change it: the guard unlists the topic after the script,
        // also when this call is cut short once the script has run.
        let listing = Listing::guard(&conn, tenant, topic);
        // Optimistic: read the group set, delete with its keys; the script
        // refuses if the set changed in between, and we read it again.
        for _ in 0..8 {
            let groups = read_groups(&mut conn, &keys).await?;
            let mut call = self.store.scripts().delete_topic.key(keys.meta());
            call.key(keys.stream())
                .key(keys.groups())
                .key(keys.joins())
                .key(keys.progress());
            for (name, gk) in &groups {
                for key in gk.all() {
                    call.key(key);
                }
                call.arg(name.as_str());
            }
            let outcome: i64 = call.invoke_async(&mut conn).await?;
            match outcome {
                1 => return listing.settle_deleted().await,
                0 => {
                    listing.settle_deleted().await?;
                    return Err(not_found(topic));
                }
                _ => continue,
            }
        }
        listing.settle(false).await?;
        Err(Error::Conflict {
            code: "concurrent_change",
            detail: "the topic's groups kept changing during delete; retry".into(),
        })
    }

    /// Reads up to `limit` messages after stream id `after` (exclusive).
    pub async fn history(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<HistoryPage> {
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let (entries, next_after) =
            read_page(&mut conn, &keys.meta(), &keys.stream(), after, limit)
                .await?
                .ok_or_else(|| not_found(topic))?;
        let messages = entries
            .into_iter()
            .map(|(id, fields)| Message::from_entry(id, fields))
            .collect::<Result<_>>()?;
        Ok(HistoryPage {
            messages,
            next_after,
        })
    }
}

/// Byte budget of one page (history, dead letters): a page ends before the
/// entry that would take it past this; the first entry always comes.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Entries read per round trip while filling a page.
const PAGE_CHUNK: usize = 100;

/// One page of a stream: up to `limit` entries after id `after`, and at
/// most [`PAGE_BYTES`] of them, the first read in the same round trip as a
/// check that `owner_key` exists (None when it does not). Returns the
/// entries and the cursor for the next page.
pub(crate) async fn read_page(
    conn: &mut Conn,
    owner_key: &str,
    stream: &str,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Option<(Vec<Entry>, Option<String>)>> {
    if let Some(after) = after {
        validate_stream_id("after", after)?;
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(Error::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_PAGE_LIMIT}"),
        ));
    }
    let mut start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let mut entries: Vec<Entry> = Vec::new();
    let mut bytes = 0;
    loop {
        // Small reads sized by what the page has seen so far, so a page of
        // large entries never holds much more than its byte budget.
        let average = if entries.is_empty() {
            1
        } else {
            bytes / entries.len()
        };
        let want = (limit - entries.len())
            .min(PAGE_CHUNK)
            .min((PAGE_BYTES.saturating_sub(bytes) / average.max(1)).max(1));
        let mut pipe = redis::pipe();
        if entries.is_empty() {
            pipe.exists(owner_key);
        }
        pipe.cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(want);
        let chunk: Vec<Entry> = if entries.is_empty() {
            let (exists, chunk): (bool, Vec<Entry>) = pipe.query_async(conn).await?;
            if !exists {
                return Ok(None);
            }
            chunk
        } else {
            let (chunk,): (Vec<Entry>,) = pipe.query_async(conn).await?;
            chunk
        };
        let complete = chunk.len() < want;
        for entry in chunk {
            let size = entry.0.len()
                + entry
                    .1
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if !entries.is_empty() && bytes + size > PAGE_BYTES {
                let next_after = entries.last().map(|(id, _)| id.clone());
                return Ok(Some((entries, next_after)));
            }
            bytes += size;
            entries.push(entry);
        }
        if complete || entries.len() >= limit {
            break;
        }
        if let Some((id, _)) = entries.last() {
            start = format!("({id}");
        }
    }
    let next_after = entries.last().map(|(id, _)| id.clone());
    Ok(Some((entries, next_after)))
}

/// Every topic of every tenant, for the background passes (retention,
/// gauges). Names that do not validate (written by something else) are skipped.
pub(crate) async fn all_topics(conn: &mut Conn) -> Result<Vec<(Tenant, Topic)>> {
    let tenants: Vec<String> = redis::cmd("SMEMBERS")
        .arg(crate::keys::TENANTS)
        .query_async(conn)
        .await?;
    let mut all = Vec::new();
    for tenant in tenants.iter().filter_map(|t| Tenant::parse(t).ok()) {
        let topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(TenantKeys::new(&tenant).topics())
            .query_async(conn)
            .await?;
        all.extend(
            topics
                .iter()
                .filter_map(|t| Topic::parse(t).ok())
                .map(|topic| (tenant.clone(), topic)),
        );
    }
    Ok(all)
}

/// The groups of a topic as listed in its group set, with their keys.
pub(crate) async fn read_groups(
    conn: &mut Conn,
    keys: &TopicKeys,
) -> Result<Vec<(Group, GroupKeys)>> {
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.groups())
        .query_async(conn)
        .await?;
    names
        .iter()
        .map(|name| {
            // Names in the set were validated when the group was created.
            let group = Group::parse(name)
                .map_err(|e| Error::Internal(format!("stored group name {name:?}: {e}")))?;
            let gk = keys.group(&group);
            Ok((group, gk))
        })
        .collect()
}

fn not_found(topic: &Topic) -> Error {
    Error::NotFound {
        kind: crate::error::NotFoundKind::Topic,
        name: topic.to_string(),
    }
}

/// Raw reply of `lua/topic_info.lua` for an existing topic: meta, length,
/// first and last id ('' = none), `(name, lag, pending, last-delivered id)`
/// per group.
type TopicReading = (
    HashMap<String, String>,
    u64,
    String,
    String,
    Vec<(String, u64, u64, String)>,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        for ok in ["0", "0-0", "1718000000000-12", "9999999999999999999-1"] {
            assert!(validate_stream_id("after", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "+",
            "(1",
            "01-1",
            "18446744073709551615-1",
        ] {
            assert!(validate_stream_id("after", bad).is_err(), "{bad}");
        }
    }
}

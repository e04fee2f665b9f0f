//! Dead letters of a group: list, replay to this group only, delete.
//!
//! A dead letter is a copy of the original message (envelope and payload)
//! plus `reason` (`max_deliveries`, `rejected`, `expired`), `attempts`,
//! `last_error` and `dead_lettered_at`, in the group's own dead-letter
//! stream. Clients address dead letters by the original message `id`.

use std::collections::HashMap;

use serde::Serialize;

use super::Broker;
use super::delivery::group_call;
use super::groups::group_not_found;
use super::message::Message;
use super::publish::MAX_ID_LEN;
use super::topics::{read_page, validate_stream_id};
use crate::error::{Error, Result};
use crate::keys::TopicKeys;
use crate::names::{Group, Tenant, Topic};
use crate::validate::check_text;

/// Dead letters scanned per script call by replay and delete.
const SCAN_CHUNK: usize = 500;
/// Most dead letters one "replay all" request scans (the rest wait for the
/// next request; `more` says so), so one request never walks a huge DLQ.
pub const MAX_REPLAY_SCAN: usize = 10_000;
/// Most message ids in one replay request.
pub const MAX_REPLAY_IDS: usize = 1000;

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The original message (its `stream_id` is the topic entry).
    #[serde(flatten)]
    pub message: Message,
    /// Id of this entry in the dead-letter stream (the listing cursor).
    pub dlq_id: String,
    /// `max_deliveries`, `rejected` or `expired`.
    pub reason: String,
    /// Delivery attempts made before it was dead-lettered.
    pub attempts: u64,
    /// The last error reported (nack/reject `error`), if any.
    pub last_error: Option<String>,
    /// When it was dead-lettered (ms, Redis clock).
    pub dead_lettered_at: u64,
}

/// A page of dead letters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// Dead letters, oldest first.
    pub messages: Vec<DeadLetter>,
    /// Pass as `after` for the next page (None when the page is empty).
    pub next_after: Option<String>,
}

/// Outcome of a replay.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    /// Message ids sent back to the group (attempts start again at 1).
    pub replayed: Vec<String>,
    /// Message ids whose topic entry was already trimmed by retention (or
    /// that are being delivered again): they stay in the dead-letter stream.
    pub missing: Vec<String>,
    /// Replaying all stopped after scanning 10,000 dead letters and more
    /// may be left: send the request again with `after` = `next_after`.
    pub more: bool,
    /// With `more`: the last dead letter scanned, where the next request
    /// goes on (dead letters that stayed, such as `missing` ones, are not
    /// scanned again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

impl DeadLetter {
    fn from_entry(dlq_id: String, mut fields: HashMap<String, String>) -> Result<Self> {
        let reason = fields.remove("reason").unwrap_or_default();
        let attempts = fields
            .remove("attempts")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let last_error = fields.remove("last_error");
        let dead_lettered_at = fields
            .remove("dead_lettered_at")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stream_id = fields.remove("stream_id").unwrap_or_default();
        Ok(Self {
            message: Message::from_entry(stream_id, fields)?,
            dlq_id,
            reason,
            attempts,
            last_error,
            dead_lettered_at,
        })
    }
}

impl Broker {
    /// Lists dead letters after DLQ id `after`.
    pub async fn dead_letters(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<DeadLetterPage> {
        let gk = TopicKeys::new(tenant, topic).group(group);
        let mut conn = self.store.conn().await?;
        let (entries, next_after) = read_page(&mut conn, &gk.config(), &gk.dlq(), after, limit)
            .await?
            .ok_or_else(|| group_not_found(group))?;
        let messages = entries
            .into_iter()
            .map(|(id, fields)| DeadLetter::from_entry(id, fields))
            .collect::<Result<_>>()?;
        Ok(DeadLetterPage {
            messages,
            next_after,
        })
    }

    /// Replays dead letters (those of `ids`, or all, after DLQ id `after`
    /// when given) to this group only.
    pub async fn replay_dead_letters(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        ids: Option<&[String]>,
        after: Option<&str>,
    ) -> Result<ReplayOutcome> {
        if let Some(ids) = ids
            && (ids.is_empty() || ids.len() > MAX_REPLAY_IDS)
        {
            return Err(Error::invalid_field(
                "ids",
                format!(
                    "must hold between 1 and {MAX_REPLAY_IDS} ids (leave it out to replay all)"
                ),
            ));
        }
        for (i, id) in ids.unwrap_or_default().iter().enumerate() {
            check_text(format_args!("ids[{i}]"), id, MAX_ID_LEN)?;
        }
        if let Some(after) = after {
            validate_stream_id("after", after)?;
        }
        let keys = TopicKeys::new(tenant, topic);
        let mut conn = self.store.conn().await?;
        let mut outcome = ReplayOutcome::default();
        // A full id (`<ms>-<seq>`): the script compares ids by their parts.
        let mut cursor = match after {
            None => "-".to_owned(),
            Some(after) if after.contains('-') => after.to_owned(),
            Some(ms) => format!("{ms}-0"),
        };
        for round in 1.. {
            let mut call = group_call(&self.store.scripts().dlq_replay, &keys, group);
            call.arg(&cursor).arg(SCAN_CHUNK);
            for id in ids.unwrap_or_default() {
                call.arg(id);
            }
            let (status, replayed, missing, next): (i64, Vec<String>, Vec<String>, String) =
                call.invoke_async(&mut conn).await?;
            if status < 0 {
                return Err(group_not_found(group));
            }
            outcome.replayed.extend(replayed);
            outcome.missing.extend(missing);
            if next.is_empty() {
                break;
            }
            if round * SCAN_CHUNK >= MAX_REPLAY_SCAN {
                outcome.more = true;
                outcome.next_after = Some(next);
                break;
            }
            cursor = next;
        }
        Ok(outcome)
    }

    /// Deletes the dead letters of message `id`; 404 when there are none.
    pub async fn delete_dead_letter(
        &self,
        tenant: &Tenant,
        topic: &Topic,
        group: &Group,
        id: &str,
    ) -> Result<u64> {
        let gk = TopicKeys::new(tenant, topic).group(group);
        let mut conn = self.store.conn().await?;
        let (status, deleted): (i64, u64) = self
            .store
            .scripts()
            .dlq_delete
            .key(gk.config())
            .key(gk.dlq())
            .key(gk.dlq_index())
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        if status < 0 {
            return Err(group_not_found(group));
        }
        if deleted == 0 {
            return Err(Error::NotFound {
                kind: crate::error::NotFoundKind::DeadLetter,
                name: id.to_owned(),
            });
        }
        Ok(deleted)
    }
}

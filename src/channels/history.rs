//! A channel's Redis side: declare its config, publish (history append and
//! live PUBLISH in one script), and read epoch, top offset and history.
//!
//! Keys: [`crate::keys::ChannelKeys`]. History entries have the stream id
//! `<offset>-0`, so "everything after offset n" is one `XRANGE` from
//! `n+1`, bounded by a page size.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ChannelName, Channels};
use crate::broker::publish::MAX_REF_LEN;
use crate::error::{Error, Result};
use crate::keys::ChannelKeys;
use crate::names::Tenant;
use crate::scripts::{Invocation, Scripts};
use crate::validate::{check_range, check_text};

/// Default number of messages a channel keeps.
pub const DEFAULT_HISTORY_SIZE: u64 = 100;
/// Most messages a channel may keep.
pub const MAX_HISTORY_SIZE: u64 = 10_000;
/// Default time history (and the epoch) is kept after the last publish.
pub const DEFAULT_HISTORY_TTL_MS: u64 = 300_000;
/// Longest `history_ttl_ms`: 30 days.
pub const MAX_HISTORY_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// How long a declared config outlives the channel's last publish or PUT:
/// channel names come from clients, so no channel key may live forever.
pub const CONFIG_KEEP_MS: u64 = MAX_HISTORY_TTL_MS;
/// Most messages one read returns.
pub const MAX_PAGE: usize = 1000;
/// Default of `limit` on history reads.
pub const DEFAULT_PAGE: usize = 100;
/// Longest epoch text a client may send (ours are 16 to 17 digits).
const MAX_EPOCH_LEN: usize = 32;

/// `PUT` body: the channel's config (missing fields take their defaults).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfigRequest {
    /// Messages kept, 0 to 10000 (default 100).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 10000)]
    pub history_size: Option<u64>,
    /// How long history and epoch are kept after the last publish, 1 ms to
    /// 30 days (default 300000).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 1, maximum = 2592000000_u64)]
    pub history_ttl_ms: Option<u64>,
}

/// A channel's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelInfo {
    /// Changes whenever history was lost; offsets count within one epoch.
    pub epoch: String,
    /// Offset of the last message published in this epoch (0: none yet).
    pub top_offset: u64,
    /// Messages kept.
    pub history_size: u64,
    /// How long history is kept after the last publish.
    pub history_ttl_ms: u64,
}

/// `POST …/messages` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPublish {
    /// Any JSON.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// The same key again (within `history_ttl_ms`) answers the first
    /// publish's offset with `duplicate: true` and writes nothing. At most
    /// 256 bytes of UTF-8, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub idempotency_key: Option<String>,
    /// String map carried with the message (at most 64).
    #[serde(default)]
    #[schema(schema_with = crate::broker::message::headers_schema)]
    pub headers: Option<BTreeMap<String, String>>,
}

impl ChannelPublish {
    /// Checks the text limits (the same as a topic publish's).
    pub fn validate(&self) -> Result<()> {
        crate::validate::check_json_strings("payload", self.payload.get())?;
        if let Some(key) = &self.idempotency_key {
            check_text("idempotency_key", key, MAX_REF_LEN)?;
        }
        if let Some(headers) = &self.headers {
            crate::broker::message::check_headers("headers", headers)?;
        }
        Ok(())
    }
}

/// What a publish answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelPublished {
    /// The message's offset in its epoch.
    pub offset: u64,
    /// The epoch.
    pub epoch: String,
    /// True when the idempotency key was seen before (nothing written).
    pub duplicate: bool,
}

/// One message as subscribers and history readers see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ChannelMessage)]
pub struct Delivery {
    /// The epoch of `offset`.
    pub epoch: String,
    /// 1, 2, 3… within the epoch.
    pub offset: u64,
    /// The payload as published.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Header string map (`{}` when none).
    #[schema(value_type = BTreeMap<String, String>)]
    pub headers: Box<RawValue>,
    /// Publish time, ms since the epoch by the Redis clock.
    pub published_at: u64,
}

/// A position in a channel: `<epoch>:<offset>` (the SSE event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The epoch the offset belongs to.
    pub epoch: String,
    /// The last offset the client has.
    pub offset: u64,
}

impl Position {
    /// Parses `<epoch>:<offset>`; `field` names the input in the 400.
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        let bad = || {
            Error::invalid_field(
                field,
                "must be <epoch>:<offset> as given in an event id (epoch: 1 to 32 letters or digits; offset: a whole number)",
            )
        };
        let (epoch, offset) = text.rsplit_once(':').ok_or_else(bad)?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH_LEN
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
            || !crate::validate::is_id_number(offset)
        {
            return Err(bad());
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            offset: offset.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// One consistent reading of a channel.
#[derive(Debug)]
pub struct Reading {
    /// Config, epoch and top offset.
    pub info: ChannelInfo,
    /// History after the requested offset, oldest first.
    pub messages: Vec<Delivery>,
}

/// `GET …/messages` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ChannelHistoryPage)]
pub struct HistoryPage {
    /// The current epoch.
    pub epoch: String,
    /// The current top offset.
    pub top_offset: u64,
    /// True when `messages` continue right after `since` (same epoch, no
    /// message lost in between); false when the position is gone: start
    /// over from these.
    pub recovered: bool,
    /// Oldest first, at most `limit`.
    pub messages: Vec<Delivery>,
}

type RawReading = (
    String,
    u64,
    u64,
    u64,
    Vec<(String, HashMap<String, String>)>,
);

impl Channels {
    fn keys(tenant: &Tenant, channel: &ChannelName) -> ChannelKeys {
        ChannelKeys::new(tenant, channel.as_str())
    }

    /// Sets a channel's config; true if it had none before.
    pub async fn declare(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
        config: &ChannelConfigRequest,
    ) -> Result<bool> {
        check_range("history_size", config.history_size, 0, MAX_HISTORY_SIZE)?;
        check_range(
            "history_ttl_ms",
            config.history_ttl_ms,
            1,
            MAX_HISTORY_TTL_MS,
        )?;
        let keys = Self::keys(tenant, channel);
        let mut conn = self.store.conn().await?;
        let created: i64 = self
            .store
            .scripts()
            .channel_declare
            .key(keys.history())
            .key(keys.meta())
            .key(keys.config())
            .arg(config.history_size.unwrap_or(DEFAULT_HISTORY_SIZE))
            .arg(config.history_ttl_ms.unwrap_or(DEFAULT_HISTORY_TTL_MS))
            .arg(CONFIG_KEEP_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok(created == 1)
    }

    /// Appends to history and publishes live, in one script, after
    /// checking the client's `message` against the text limits.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
        message: &ChannelPublish,
    ) -> Result<ChannelPublished> {
        message.validate()?;
        self.append(tenant, channel, message).await
    }

    /// [`Self::publish`] of a message the server built and checked itself
    /// (an emit's idempotency key is longer than a client's may be).
    pub async fn append(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
        message: &ChannelPublish,
    ) -> Result<ChannelPublished> {
        let keys = Self::keys(tenant, channel);
        let mut conn = self.store.conn().await?;
        let (duplicate, offset, epoch): (u8, u64, String) =
            publish_call(self.store.scripts(), &keys, message, self.sharded)?
                .invoke_async(&mut conn)
                .await?;
        Ok(ChannelPublished {
            offset,
            epoch,
            duplicate: duplicate == 1,
        })
    }

    /// Config, epoch, top offset and up to `limit` messages after offset
    /// `after`, in one reading (a channel without an epoch gets one). The
    /// messages also stop before passing `--channel-queue-bytes` of stored
    /// text (at least one is returned), so one page is never much more than
    /// one connection's queue.
    pub async fn read(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Reading> {
        let keys = Self::keys(tenant, channel);
        let mut conn = self.store.conn().await?;
        let (epoch, top, size, ttl, entries): RawReading = self
            .store
            .scripts()
            .channel_read
            .key(keys.history())
            .key(keys.meta())
            .key(keys.config())
            .arg(after)
            .arg(limit.min(MAX_PAGE))
            .arg(DEFAULT_HISTORY_SIZE)
            .arg(DEFAULT_HISTORY_TTL_MS)
            .arg(self.queue_bytes)
            .invoke_async(&mut conn)
            .await?;
        let messages = entries
            .into_iter()
            .map(|(id, fields)| delivery(&epoch, &id, fields))
            .collect::<Result<_>>()?;
        Ok(Reading {
            info: ChannelInfo {
                epoch,
                top_offset: top,
                history_size: size,
                history_ttl_ms: ttl,
            },
            messages,
        })
    }

    /// History after `since` (or from the oldest kept message), with
    /// whether it continues `since` without a gap.
    pub async fn history(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let after = since.map_or(0, |p| p.offset);
        let mut reading = self.read(tenant, channel, after, limit).await?;
        let info = &reading.info;
        let same_epoch = since.is_none_or(|p| p.epoch == info.epoch);
        let recovered = same_epoch
            && after <= info.top_offset
            && (after == info.top_offset
                || reading
                    .messages
                    .first()
                    .is_some_and(|m| m.offset == after + 1));
        if !recovered && after > 0 {
            // The position is gone: hand out what is kept, from the start.
            reading = self.read(tenant, channel, 0, limit).await?;
        }
        Ok(HistoryPage {
            epoch: reading.info.epoch,
            top_offset: reading.info.top_offset,
            recovered,
            messages: reading.messages,
        })
    }
}

/// The `lua/channel_publish.lua` call that publishes a (validated)
/// `message` to the channel of `keys`; `sharded` on Redis Cluster. Public
/// so the benchmark's raw baseline sends exactly the same call.
pub fn publish_call<'a>(
    scripts: &'a Scripts,
    keys: &ChannelKeys,
    message: &ChannelPublish,
    sharded: bool,
) -> Result<Invocation<'a>> {
    let headers = match &message.headers {
        Some(h) => serde_json::to_string(h).map_err(|e| Error::Internal(e.to_string()))?,
        None => "{}".to_owned(),
    };
    let (dedup, idem) = match &message.idempotency_key {
        Some(key) => (keys.dedup(key), "1"),
        None => (keys.meta(), "0"),
    };
    let mut call = scripts.channel_publish.key(keys.history());
    call.key(keys.meta())
        .key(keys.config())
        .key(dedup)
        .arg(message.payload.get())
        .arg(headers)
        .arg(idem)
        .arg(keys.live())
        .arg(DEFAULT_HISTORY_SIZE)
        .arg(DEFAULT_HISTORY_TTL_MS)
        .arg(CONFIG_KEEP_MS)
        .arg(if sharded { "SPUBLISH" } else { "PUBLISH" });
    Ok(call)
}

/// A history entry (`<offset>-0`, fields `p`, `h`, `t`) as a delivery.
fn delivery(epoch: &str, id: &str, mut fields: HashMap<String, String>) -> Result<Delivery> {
    let offset = id
        .split_once('-')
        .and_then(|(o, _)| o.parse().ok())
        .ok_or_else(|| Error::Internal(format!("channel history id '{id}' is not <offset>-0")))?;
    let raw = |text: Option<String>, default: &str| {
        RawValue::from_string(text.unwrap_or_else(|| default.to_owned())).map_err(|source| {
            Error::Corrupt {
                what: format!("channel history entry {id}"),
                source,
            }
        })
    };
    Ok(Delivery {
        epoch: epoch.to_owned(),
        offset,
        payload: raw(fields.remove("p"), "null")?,
        headers: raw(fields.remove("h"), "{}")?,
        published_at: fields.get("t").and_then(|t| t.parse().ok()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        let p = Position::parse("1764134296123456:42", "since").unwrap();
        assert_eq!(p.epoch, "1764134296123456");
        assert_eq!(p.offset, 42);
        assert_eq!(p.to_string(), "1764134296123456:42");
        for bad in [
            "",
            "42",
            ":1",
            "e:",
            "e:-1",
            "e:01",
            "e:x",
            "e f:1",
            "e:99999999999999999999",
        ] {
            assert!(Position::parse(bad, "since").is_err(), "{bad}");
        }
    }
}

//! One subscriber's position in one channel, and how live messages and
//! history reads merge into one gap-free, duplicate-free sequence.
//!
//! The subscriber registers with the hub *before* its first history read,
//! so every message published after that read is either queued live or
//! (until the hub's subscription is confirmed) announced by a resync.
//! Then:
//!
//! * a live message of the cursor's epoch at `last + 1` is delivered;
//! * one at or below `last` was already delivered from history: skipped;
//! * anything else (a jump, another epoch) or a resync means something may
//!   be missing: [`Cursor::catch_up`] reads history after `last`, and
//!   either delivers what was missed or, when history no longer reaches
//!   back that far (other epoch, trimmed, expired, Redis lost data),
//!   answers one reset that moves the cursor to the current top.
//!
//! So a subscriber never skips a message silently: it sees every offset in
//! order or a reset that says where it now stands.

use std::time::{Duration, Instant};

use super::history::MAX_PAGE;
use super::{ChannelName, Channels, Delivery, Position};
use crate::error::{Error, Result};
use crate::names::Tenant;
use crate::telemetry;

/// How long a catch-up waits out a Redis outage before giving up (the
/// subscriber is then told, and resumes from its position later).
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(30);

/// One subscriber's position in one channel.
#[derive(Debug)]
pub struct Cursor {
    tenant: Tenant,
    channel: ChannelName,
    epoch: String,
    last: u64,
}

/// What a catch-up found.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// The position could not be recovered: the epoch and top offset the
    /// cursor now stands at.
    pub reset: Option<(String, u64)>,
    /// Messages after the old position, in order (empty after a reset).
    pub messages: Vec<Delivery>,
    /// More history remains to be read (call again).
    pub more: bool,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum LiveStep {
    /// Deliver it; the cursor moved past it.
    Deliver,
    /// Already delivered.
    Skip,
    /// Something may be missing before it: catch up from history.
    Gap,
}

/// The start of a subscription.
#[derive(Debug)]
pub struct Opened {
    /// The cursor, at the epoch and offset after `catch_up`.
    pub cursor: Cursor,
    /// The channel's epoch when it was read.
    pub epoch: String,
    /// The channel's top offset when it was read.
    pub top_offset: u64,
    /// A position was given and everything after it is being replayed.
    pub recovered: bool,
    /// What to send first: a reset, or the first page of missed messages.
    pub first: CatchUp,
}

impl Cursor {
    /// The cursor's position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.last,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Opens a subscription's cursor at `since` (replaying what follows it)
    /// or, without one, at the current top (live only). Call after
    /// registering with the hub.
    pub async fn open(
        channels: &Channels,
        tenant: &Tenant,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> Result<Opened> {
        let Some(since) = since else {
            let reading = channels.read(tenant, channel, 0, 0).await?;
            return Ok(Opened {
                cursor: Self {
                    tenant: tenant.clone(),
                    channel: channel.clone(),
                    epoch: reading.info.epoch.clone(),
                    last: reading.info.top_offset,
                },
                epoch: reading.info.epoch,
                top_offset: reading.info.top_offset,
                recovered: false,
                first: CatchUp::default(),
            });
        };
        let mut cursor = Self {
            tenant: tenant.clone(),
            channel: channel.clone(),
            epoch: since.epoch,
            last: since.offset,
        };
        let (first, top_offset) = cursor.read_after(channels).await?;
        Ok(Opened {
            epoch: cursor.epoch.clone(),
            top_offset,
            recovered: first.reset.is_none(),
            cursor,
            first,
        })
    }

    /// Reads history after the cursor's position (one page). A Redis
    /// outage is waited out for up to [`OUTAGE_PATIENCE`]: a resync usually
    /// comes right after Redis is back, when the shared connections may not
    /// have reconnected yet, and ending every stream then would make all
    /// clients reconnect at once.
    pub async fn catch_up(&mut self, channels: &Channels) -> Result<CatchUp> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match self.read_after(channels).await {
                Err(Error::Unavailable { .. }) if started.elapsed() < OUTAGE_PATIENCE => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                result => return result.map(|(catch_up, _)| catch_up),
            }
        }
    }

    async fn read_after(&mut self, channels: &Channels) -> Result<(CatchUp, u64)> {
        let reading = channels
            .read(&self.tenant, &self.channel, self.last, MAX_PAGE)
            .await?;
        let info = reading.info;
        let continues = info.epoch == self.epoch
            && self.last <= info.top_offset
            && (self.last == info.top_offset
                || reading
                    .messages
                    .first()
                    .is_some_and(|m| m.offset == self.last + 1));
        if !continues {
            metrics::counter!(telemetry::CHANNEL_RESUMES, "outcome" => "reset").increment(1);
            self.epoch = info.epoch.clone();
            self.last = info.top_offset;
            return Ok((
                CatchUp {
                    reset: Some((info.epoch, info.top_offset)),
                    ..CatchUp::default()
                },
                info.top_offset,
            ));
        }
        if !reading.messages.is_empty() {
            metrics::counter!(telemetry::CHANNEL_RESUMES, "outcome" => "recovered").increment(1);
        }
        if let Some(last) = reading.messages.last() {
            self.last = last.offset;
        }
        Ok((
            CatchUp {
                reset: None,
                messages: reading.messages,
                more: self.last < info.top_offset,
            },
            info.top_offset,
        ))
    }

    /// Where a live message goes (see the module docs).
    pub fn live(&mut self, delivery: &Delivery) -> LiveStep {
        if delivery.epoch == self.epoch {
            if delivery.offset <= self.last {
                return LiveStep::Skip;
            }
            if delivery.offset == self.last + 1 {
                self.last = delivery.offset;
                return LiveStep::Deliver;
            }
        }
        LiveStep::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(epoch: &str, offset: u64) -> Delivery {
        serde_json::from_str(&format!(
            r#"{{"epoch":"{epoch}","offset":{offset},"published_at":0,"headers":{{}},"payload":1}}"#
        ))
        .unwrap()
    }

    #[test]
    fn live_messages_continue_skip_or_gap() {
        let mut c = Cursor {
            tenant: Tenant::parse("t").unwrap(),
            channel: ChannelName::parse("c").unwrap(),
            epoch: "e".into(),
            last: 5,
        };
        assert_eq!(c.live(&delivery("e", 5)), LiveStep::Skip);
        assert_eq!(c.live(&delivery("e", 6)), LiveStep::Deliver);
        assert_eq!(c.live(&delivery("e", 8)), LiveStep::Gap);
        assert_eq!(c.live(&delivery("f", 7)), LiveStep::Gap);
        assert_eq!(c.position().to_string(), "e:6");
    }
}

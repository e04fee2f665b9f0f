//! The WebSocket protocol: JSON text frames, one object each.
//!
//! Client: `{"op":"subscribe","channel","since"?}`,
//! `{"op":"unsubscribe","channel"}`, `{"op":"publish","channel","payload"}`
//! (into a channel) or `{"op":"publish","topic","payload"}` (to a topic,
//! like `POST …/messages`), and on the client edge `{"op":"auth","token"}`
//! and `{"op":"refresh","token"}`.
//! Server: `subscribed`, `message`, `reset`, `published`, `refreshed`,
//! `error` (see [`ServerFrame`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::history::ChannelPublish;
use super::{ChannelName, Delivery, Position};
use crate::broker::publish::PublishRequest;
use crate::error::{Error, Result};
use crate::names::Topic;

/// Most channels one WebSocket connection may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// A client frame, before it is validated. Flat rather than a tagged enum:
/// serde buffers tagged content, and raw JSON (the payload) cannot pass
/// through that buffer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame {
    op: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    since: Option<String>,
    /// Present (even as `null`) or absent.
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A valid client frame.
#[derive(Debug)]
pub enum ClientFrame {
    /// Subscribe to `channel`, replaying after `since` when given.
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// Resume position.
        since: Option<Position>,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// The channel.
        channel: ChannelName,
    },
    /// Publish to a channel.
    Publish {
        /// The channel.
        channel: ChannelName,
        /// What to publish.
        message: ChannelPublish,
    },
    /// Publish to a topic (the normal publish path, quotas included).
    PublishTopic {
        /// The topic.
        topic: Topic,
        /// What to publish (payload, idempotency key, headers).
        message: Box<PublishRequest>,
    },
    /// Present a token (the edge's first frame, when the token did not
    /// come with the request).
    Auth {
        /// The JWT.
        token: String,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT.
        token: String,
    },
}

fn channel_name(text: &str) -> Result<ChannelName> {
    ChannelName::parse(text).map_err(|e| Error::BadRequest {
        code: "invalid_name",
        detail: format!("invalid channel name '{text}': {e}"),
        field: Some("channel".into()),
    })
}

impl ClientFrame {
    /// Parses and validates one text frame.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawFrame = serde_json::from_str(text)
            .map_err(|e| Error::bad_request("invalid_frame", format!("invalid frame: {e}")))?;
        let invalid = |detail: &str| Error::bad_request("invalid_frame", detail.to_owned());
        let channel = || -> Result<ChannelName> {
            channel_name(
                raw.channel
                    .as_deref()
                    .ok_or_else(|| invalid("channel is required"))?,
            )
        };
        Ok(match raw.op.as_str() {
            "subscribe" => Self::Subscribe {
                channel: channel()?,
                since: raw
                    .since
                    .as_deref()
                    .map(|s| Position::parse(s, "since"))
                    .transpose()?,
            },
            "unsubscribe" => Self::Unsubscribe {
                channel: channel()?,
            },
            "publish" if raw.topic.is_some() => {
                if raw.channel.is_some() {
                    return Err(invalid("publish names a channel or a topic, not both"));
                }
                let name = raw.topic.as_deref().unwrap_or_default();
                let topic = Topic::parse(name).map_err(|e| Error::BadRequest {
                    code: "invalid_name",
                    detail: format!("invalid topic name '{name}': {e}"),
                    field: Some("topic".into()),
                })?;
                let message = PublishRequest {
                    payload: raw.payload.ok_or_else(|| invalid("payload is required"))?,
                    id: None,
                    key: None,
                    idempotency_key: raw.idempotency_key,
                    causation_id: None,
                    correlation_id: None,
                    ttl_ms: None,
                    delay_ms: None,
                    headers: raw.headers,
                    schema_version: None,
                    dedup_scope: None,
                };
                message.validate(&"")?;
                Self::PublishTopic {
                    topic,
                    message: Box::new(message),
                }
            }
            "publish" => {
                let channel = channel()?;
                let message = ChannelPublish {
                    payload: raw.payload.ok_or_else(|| invalid("payload is required"))?,
                    idempotency_key: raw.idempotency_key,
                    headers: raw.headers,
                };
                message.validate()?;
                Self::Publish { channel, message }
            }
            "auth" | "refresh" => {
                let token = raw
                    .token
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid("token is required"))?;
                if raw.op == "auth" {
                    Self::Auth { token }
                } else {
                    Self::Refresh { token }
                }
            }
            _ => {
                return Err(invalid(
                    "op must be subscribe, unsubscribe, publish, auth or refresh",
                ));
            }
        })
    }
}

/// A server frame.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// A subscription started.
    Subscribed {
        /// The channel.
        channel: &'a str,
        /// Its epoch.
        epoch: &'a str,
        /// Its top offset when subscribed.
        top_offset: u64,
        /// `since` was given and everything after it follows.
        recovered: bool,
    },
    /// A message.
    Message {
        /// The channel.
        channel: &'a str,
        /// The epoch of `offset`.
        epoch: &'a str,
        /// The offset.
        offset: u64,
        /// The payload.
        payload: &'a RawValue,
        /// The headers.
        headers: &'a RawValue,
    },
    /// The position could not be recovered; live from here.
    Reset {
        /// The channel.
        channel: &'a str,
        /// The current epoch.
        epoch: &'a str,
        /// The current top offset.
        top_offset: u64,
    },
    /// A topic publish was accepted.
    Published {
        /// The topic.
        topic: &'a str,
        /// The message id.
        id: &'a str,
        /// Its per-topic sequence number.
        seq: u64,
        /// An earlier publish had the same idempotency key; nothing written.
        duplicate: bool,
    },
    /// The connection's token was replaced.
    Refreshed {
        /// The new expiry, seconds since the epoch.
        exp: u64,
    },
    /// Something went wrong with a frame or a subscription.
    Error {
        /// Stable code.
        code: &'a str,
        /// For a human.
        detail: &'a str,
        /// The channel concerned, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// The topic concerned, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        /// When a retry may succeed (rate limits, full backlogs), in ms.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// As JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (string keys, raw JSON values).
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl<'a> ServerFrame<'a> {
    /// A `message` frame for `delivery` on `channel`.
    pub fn message(channel: &'a str, delivery: &'a Delivery) -> Self {
        Self::Message {
            channel,
            epoch: &delivery.epoch,
            offset: delivery.offset,
            payload: &delivery.payload,
            headers: &delivery.headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_say_why() {
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"subscribe","channel":"a","since":"12:3"}"#),
            Ok(ClientFrame::Subscribe { since: Some(_), .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"publish","topic":"chat","payload":{"a":1}}"#),
            Ok(ClientFrame::PublishTopic { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"auth","token":"x.y.z"}"#),
            Ok(ClientFrame::Auth { .. })
        ));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"op":"dance"}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","channel":"a:b"}"#,
            r#"{"op":"subscribe","channel":"a","since":"x"}"#,
            r#"{"op":"publish","channel":"a"}"#,
            r#"{"op":"publish","topic":"a:b","payload":1}"#,
            r#"{"op":"publish","topic":"a","channel":"b","payload":1}"#,
            r#"{"op":"publish","topic":"a","payload":1,"idempotency_key":""}"#,
            r#"{"op":"auth"}"#,
            r#"{"op":"refresh","token":""}"#,
        ] {
            assert!(ClientFrame::parse(bad).is_err(), "{bad}");
        }
    }
}

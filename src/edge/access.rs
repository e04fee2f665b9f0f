//! What one realtime connection may do: the authorizer the channel
//! sessions ask before each subscribe and publish.
//!
//! On the loopback API ([`Access::Open`]) everything is allowed, as for
//! every other route there. On the edge ([`Access::Client`]) the verified
//! claims decide: a channel outside `channels` or a topic outside
//! `publish` is `forbidden`, a client never publishes into a channel,
//! publishes are rate limited per connection and keyed by `sub`, and the
//! connection ends at the token's `exp` unless refreshed. The connection
//! slot, the gauge and presence live as long as the value does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Edge;
use super::claims::Claims;
use super::limits::{PublishRate, SUBSCRIBE_BURST, SUBSCRIBE_RATE, Slot, UserSlot};
use super::presence::Joined;
use crate::channels::ChannelName;
use crate::error::Error;
use crate::names::{Tenant, Topic};
use crate::telemetry;

/// Longest a token's remaining life is taken to be (a longer `exp` is a
/// token that never expires in practice).
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Most channels one edge connection may subscribe to (prefix grants would
/// otherwise let one client hold thousands of subscriptions and presence
/// entries).
pub const EDGE_MAX_SUBSCRIPTIONS: usize = 256;

/// A connection's authorizer.
pub enum Access {
    /// The loopback API: anything goes.
    Open,
    /// An edge client.
    Client(Box<Client>),
}

/// An edge client's state.
pub struct Client {
    edge: Edge,
    claims: Claims,
    rate: PublishRate,
    transport: &'static str,
    _slot: Slot,
    _user: UserSlot,
}

fn forbidden(tenant: &Tenant, detail: String) -> Error {
    metrics::counter!(telemetry::EDGE_FORBIDDEN, "tenant" => tenant.to_string()).increment(1);
    Error::Forbidden {
        code: "forbidden",
        detail,
    }
}

impl Access {
    pub(super) fn client(
        edge: Edge,
        claims: Claims,
        slot: Slot,
        user: UserSlot,
        transport: &'static str,
    ) -> Self {
        let labels = [
            ("tenant", claims.tenant.to_string()),
            ("transport", transport.to_owned()),
        ];
        metrics::counter!(telemetry::EDGE_CONNECTIONS_OPENED, &labels).increment(1);
        metrics::gauge!(telemetry::EDGE_CONNECTIONS, &labels).increment(1.0);
        Self::Client(Box::new(Client {
            rate: PublishRate::new(edge.config().publish_rate),
            edge,
            claims,
            transport,
            _slot: slot,
            _user: user,
        }))
    }

    /// The client's claims (None on the loopback API).
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Self::Open => None,
            Self::Client(client) => Some(&client.claims),
        }
    }

    /// May the connection subscribe to `channel`? On the edge, the answer
    /// holds the user's presence on the channel while it lives.
    pub fn subscribe(
        &self,
        tenant: &Tenant,
        channel: &ChannelName,
    ) -> Result<Option<Joined>, Error> {
        let Self::Client(client) = self else {
            return Ok(None);
        };
        if !client.claims.channels.allows(channel.as_str()) {
            return Err(forbidden(
                tenant,
                format!("the token does not grant channel '{channel}'"),
            ));
        }
        client
            .edge
            .inner
            .limits
            .subscribe(tenant, &client.claims.sub)
            .map_err(|retry_after| Error::TooManyRequests {
                code: "rate_limited",
                detail: format!(
                    "a user starts at most {SUBSCRIBE_RATE} subscriptions per second (after {SUBSCRIBE_BURST} at once)"
                ),
                retry_after,
                limit: None,
            })?;
        Ok(Some(client.edge.presence().join(
            tenant,
            channel,
            &client.claims.sub,
        )))
    }

    /// Most channels the connection may subscribe to at once.
    pub fn max_subscriptions(&self) -> usize {
        match self {
            Self::Open => crate::channels::protocol::MAX_SUBSCRIPTIONS,
            Self::Client(_) => EDGE_MAX_SUBSCRIPTIONS,
        }
    }

    /// Whether `channel` is still granted (after a refresh).
    pub fn grants(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Open => true,
            Self::Client(client) => client.claims.channels.allows(channel.as_str()),
        }
    }

    /// May the connection publish into `channel`? Edge clients may not:
    /// their publishes go to topics, to the app.
    pub fn publish_to_channel(&self, tenant: &Tenant) -> Result<(), Error> {
        match self {
            Self::Open => Ok(()),
            Self::Client(_) => Err(forbidden(
                tenant,
                "edge clients publish to topics (the token's publish claim), not to channels"
                    .into(),
            )),
        }
    }

    /// May the connection publish to `topic` now? Some(key) is the
    /// message key it must carry (the client's `sub`).
    pub fn publish_to_topic(
        &mut self,
        tenant: &Tenant,
        topic: &Topic,
    ) -> Result<Option<String>, Error> {
        let Self::Client(client) = self else {
            return Ok(None);
        };
        if !client.claims.publish.allows(topic.as_str()) {
            return Err(forbidden(
                tenant,
                format!("the token does not grant publishing to topic '{topic}'"),
            ));
        }
        client
            .rate
            .take()
            .map_err(|retry_after| Error::TooManyRequests {
                code: "rate_limited",
                detail: format!(
                    "this connection publishes at most {} messages per second",
                    client.edge.config().publish_rate
                ),
                retry_after,
                limit: None,
            })?;
        Ok(Some(client.claims.sub.clone()))
    }

    /// When the connection's token expires (None: never).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        let Self::Client(client) = self else {
            return None;
        };
        let exp = Duration::from_secs(client.claims.exp);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // A far-future `exp` (up to u64::MAX seconds) must not overflow the clock.
        let left = exp.saturating_sub(now).min(FAR_FUTURE);
        Some(tokio::time::Instant::now() + left)
    }

    /// The token expired: counted once per connection.
    pub fn expired(&self) {
        if let Self::Client(client) = self {
            metrics::counter!(telemetry::EDGE_TOKEN_EXPIRIES, "tenant" => client.claims.tenant.to_string())
                .increment(1);
        }
    }

    /// Replaces the token of a live connection with `token`, which must be
    /// valid and name the same `sub` and `tenant`.
    pub fn refresh(&mut self, token: &str) -> Result<(), Error> {
        let Self::Client(client) = self else {
            return Err(Error::bad_request(
                "invalid_frame",
                "refresh is for edge connections (this API has no tokens per connection)",
            ));
        };
        let claims = client.edge.verify(Some(token))?;
        if claims.sub != client.claims.sub || claims.tenant != client.claims.tenant {
            return Err(forbidden(
                &client.claims.tenant,
                "a refresh token must name the same sub and tenant as the connection's".into(),
            ));
        }
        client.claims = claims;
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let labels = [
            ("tenant", self.claims.tenant.to_string()),
            ("transport", self.transport.to_owned()),
        ];
        metrics::gauge!(telemetry::EDGE_CONNECTIONS, &labels).decrement(1.0);
    }
}

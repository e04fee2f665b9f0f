//! The client edge: browsers and devices connect to streamcar directly
//! (`--edge-listen`) with a short-lived JWT instead of through a gateway
//! of their own.
//!
//! * [`jwt`]: verification with the configured algorithm and key (rotated
//!   on SIGHUP), and signing for `streamcar token`.
//! * [`claims`]: `sub`, `exp`, `tenant`, and the `channels` / `publish`
//!   grants (exact names or `prefix*`).
//! * [`access`]: what one connection may do; the realtime-channel sessions
//!   ask it before every subscribe and publish (on the loopback API it
//!   allows everything).
//! * [`limits`]: connection slots (sidecar, user) and per-connection
//!   publish rate.
//! * [`presence`]: who is subscribed where, across sidecars (TTL'd
//!   heartbeats in Redis).
//!
//! Knows nothing of HTTP: `crate::http::edge` serves it.

pub mod access;
pub mod claims;
pub mod jwt;
pub mod limits;
pub mod presence;
pub mod token;

use std::sync::Arc;

pub use access::Access;
pub use claims::Claims;

use crate::config::EdgeConfig;
use crate::error::Error;
use crate::store::Store;
use crate::telemetry;

/// The edge's services. Cheap to clone.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    config: EdgeConfig,
    verifier: jwt::Verifier,
    limits: Arc<limits::Limits>,
    presence: presence::Presence,
}

impl Edge {
    /// Loads the key (an unusable key file fails the start) and starts the
    /// presence heartbeats.
    pub fn start(
        config: &EdgeConfig,
        store: Store,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, String> {
        let verifier = jwt::Verifier::load(config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                verifier,
                limits: limits::Limits::new(
                    config.max_connections,
                    config.max_connections_per_user,
                ),
                presence: presence::Presence::start(store, config.presence_ttl, shutdown),
            }),
        })
    }

    /// The config.
    pub fn config(&self) -> &EdgeConfig {
        &self.inner.config
    }

    /// Re-reads the key file (SIGHUP); on failure the old key stays.
    pub fn reload_key(&self) -> Result<(), String> {
        self.inner.verifier.reload()
    }

    /// Verifies a token (None: none was presented), counting refusals.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, Error> {
        let verified = match token {
            Some(token) => self.inner.verifier.verify(token),
            None => Err(jwt::Refusal::Missing),
        };
        verified.map_err(|refusal| {
            metrics::counter!(telemetry::EDGE_AUTH_FAILURES, "reason" => refusal.code())
                .increment(1);
            refusal.into_error()
        })
    }

    /// Whether a browser from `origin` may connect (no Origin: not a
    /// browser, allowed).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.inner.config.allowed_origins;
        match origin {
            None => true,
            Some(_) if allowed.is_empty() => true,
            Some(origin) => allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
        }
    }

    /// Counts a refusal before upgrade.
    pub fn refused(&self, reason: &'static str) {
        metrics::counter!(telemetry::EDGE_REFUSED, "reason" => reason).increment(1);
    }

    /// A sidecar connection slot (429 when full).
    pub fn connection(&self) -> Result<limits::Slot, Error> {
        self.inner.limits.connection().inspect_err(|_| {
            self.refused("too_many_connections");
        })
    }

    /// Admits a verified client on `slot`: takes its user slot (429 when the
    /// user holds too many connections) and starts counting it.
    pub fn admit(
        &self,
        claims: Claims,
        slot: limits::Slot,
        transport: &'static str,
    ) -> Result<Access, Error> {
        let user = self
            .inner
            .limits
            .user(&claims.tenant, &claims.sub)
            .inspect_err(|_| self.refused("too_many_connections"))?;
        Ok(Access::client(self.clone(), claims, slot, user, transport))
    }

    fn presence(&self) -> &presence::Presence {
        &self.inner.presence
    }
}

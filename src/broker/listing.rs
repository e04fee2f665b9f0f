//! Listing topics: a tenant's topic set `sc:{T}:topics` and the tenant set
//! `sc:tenants`, which the listing and the background passes (retention,
//! group gauges) read instead of scanning the keyspace.
//!
//! Both sets live under other hash tags than a topic's keys, so the script
//! that creates or deletes a topic cannot change them, nor can one pipeline
//! on a Redis Cluster (each command goes to its own slot). The set commands
//! follow the script, and a [`Listing`] guards the gap: a caller whose
//! future is dropped while the script runs or before the set commands are
//! acknowledged (its client went away, Redis failed) would otherwise leave
//! a topic that exists but is never listed (retention and `GET …/topics`
//! never see it; a retried publish creates nothing and so lists nothing),
//! or a deleted topic that stays listed for good (a retried DELETE finds
//! nothing to delete). When a guard is dropped armed, a task of its own
//! makes the listing agree with the topic (listed if it exists, unlisted if
//! not), retrying for about two minutes while Redis fails.

use std::time::Duration;

use crate::error::Result;
use crate::keys::{self, TenantKeys, TopicKeys};
use crate::names::{Tenant, Topic};
use crate::store::Conn;

/// Pause after a failed attempt; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// See [`FIRST_PAUSE`].
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Attempts of a listing left to a task (about two minutes).
const ATTEMPTS: u32 = 30;

/// Armed around a script call that may create or delete a topic (see the
/// module docs); [`Listing::settle`] lists a created topic,
/// [`Listing::settle_deleted`] unlists a deleted one, and both disarm.
#[must_use = "a guard dropped at once lists nothing it should"]
pub(crate) struct Listing<'a> {
    /// Some while armed.
    conn: Option<Conn>,
    tenant: &'a Tenant,
    topic: &'a Topic,
}

impl<'a> Listing<'a> {
    /// Arms before a call that may create or delete `topic`.
    pub(crate) fn guard(conn: &Conn, tenant: &'a Tenant, topic: &'a Topic) -> Self {
        Self {
            conn: Some(conn.clone()),
            tenant,
            topic,
        }
    }

    /// After the call: lists the topic when `created` (or to repair a
    /// listing, which is idempotent), then disarms. When listing fails the
    /// guard stays armed, so a task keeps trying.
    pub(crate) async fn settle(mut self, created: bool) -> Result<()> {
        if created && let Some(conn) = self.conn.as_mut() {
            add(conn, self.tenant, self.topic).await?;
        }
        self.conn = None;
        Ok(())
    }

    /// After a call that deleted `topic` (or found it missing): unlists it
    /// unless it exists again by then, then disarms. When that fails the
    /// guard stays armed, so a task keeps trying.
    pub(crate) async fn settle_deleted(mut self) -> Result<()> {
        if let Some(conn) = self.conn.as_mut() {
            remove(conn, self.tenant, self.topic).await?;
        }
        self.conn = None;
        Ok(())
    }
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tenant, topic) = (self.tenant.clone(), self.topic.clone());
        runtime.spawn(reconcile(conn, tenant, topic));
    }
}

/// Lists `topic` if it exists and unlists it if not, retrying while Redis
/// fails.
async fn reconcile(mut conn: Conn, tenant: Tenant, topic: Topic) {
    let meta = TopicKeys::new(&tenant, &topic).meta();
    let mut pause = FIRST_PAUSE;
    for _ in 0..ATTEMPTS {
        let exists = redis::cmd("EXISTS")
            .arg(&meta)
            .query_async::<bool>(&mut conn)
            .await;
        let settled = match exists {
            Ok(true) => add(&mut conn, &tenant, &topic).await,
            Ok(false) => remove(&mut conn, &tenant, &topic).await,
            Err(e) => Err(e.into()),
        };
        match settled {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(%tenant, %topic, error = %e, "listing a topic failed; retrying")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
    tracing::warn!(
        %tenant, %topic,
        "a topic's listing could not be updated; a PUT or DELETE of the topic updates it"
    );
}

/// Adds `topic` to its tenant's topic set, then the tenant to the tenant
/// set (in this order: see `crate::tenants`); both are idempotent.
pub(crate) async fn add(conn: &mut Conn, tenant: &Tenant, topic: &Topic) -> Result<()> {
    redis::cmd("SADD")
        .arg(TenantKeys::new(tenant).topics())
        .arg(topic.as_str())
        .query_async::<()>(conn)
        .await?;
    redis::cmd("SADD")
        .arg(keys::TENANTS)
        .arg(tenant.as_str())
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Takes `topic` off its tenant's topic set, then lists it again if it
/// exists by then: a create racing this removal lists the topic after its
/// script, so either its add comes after this removal, or its script came
/// before the check here and the check sees the topic.
async fn remove(conn: &mut Conn, tenant: &Tenant, topic: &Topic) -> Result<()> {
    redis::cmd("SREM")
        .arg(TenantKeys::new(tenant).topics())
        .arg(topic.as_str())
        .query_async::<()>(conn)
        .await?;
    let recreated: bool = redis::cmd("EXISTS")
        .arg(TopicKeys::new(tenant, topic).meta())
        .query_async(conn)
        .await?;
    if recreated {
        add(conn, tenant, topic).await?;
    }
    Ok(())
}

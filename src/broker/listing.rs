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
//! not), retrying for about two minutes while Redis fails. One such task
//! at most runs per topic (a guard dropped while it runs makes it go once
//! more), and at most [`MAX_PENDING`] at once, so a Redis outage under load
//! (every publish failing, every guard dropped armed) costs a task per
//! topic, not one per failed request.
//!
//! No task survives a sidecar killed -9, so a call that may create a topic
//! lists it *before* its script ([`Listing::before_create`]), once per topic
//! per process: killed at any point, it leaves at worst a listed topic that
//! does not exist, and the next retention pass, which visits every listed
//! topic, unlists that ([`unlist_gone`]). A delete still unlists after its
//! script; killed in between, it leaves the same kind of ghost.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use crate::error::Result;
use crate::keys::{self, TenantKeys, TopicKeys};
use crate::names::{Tenant, Topic};
use crate::retry::Backoff;
use crate::store::Conn;

/// Most topics with a reconcile task at once; a guard dropped beyond this
/// leaves its topic's listing to the next PUT or DELETE of it (logged).
const MAX_PENDING: usize = 10_000;

/// Most topics [`LISTED`] remembers; it starts over when full (listing
/// again is idempotent).
const MAX_LISTED: usize = 100_000;

/// The topics this process listed, by tenant, so that only a topic's first
/// create call of the process pays a listing round trip before its script.
#[derive(Default)]
struct Listed {
    topics: HashMap<Tenant, HashSet<Topic>>,
    count: usize,
}

static LISTED: std::sync::LazyLock<Mutex<Listed>> = std::sync::LazyLock::new(Mutex::default);

impl Listed {
    fn contains(tenant: &Tenant, topic: &Topic) -> bool {
        let listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
        listed.topics.get(tenant).is_some_and(|t| t.contains(topic))
    }

    /// Remembers `topic` as listed (`listed`) or not.
    fn set(tenant: &Tenant, topic: &Topic, listed: bool) {
        let mut all = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
        if listed {
            if all.count >= MAX_LISTED {
                *all = Listed::default();
            }
            let added = all
                .topics
                .entry(tenant.clone())
                .or_default()
                .insert(topic.clone());
            all.count += usize::from(added);
        } else if let Some(topics) = all.topics.get_mut(tenant)
            && topics.remove(topic)
        {
            all.count -= 1;
        }
    }
}

/// The topics a reconcile task runs for, each with whether a guard of it
/// was dropped since that task began (it then reconciles once more).
type Pending = Mutex<HashMap<(Tenant, Topic), bool>>;
static PENDING: std::sync::LazyLock<Pending> = std::sync::LazyLock::new(Pending::default);

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
    /// Arms before a call that may create `topic`, listing it first unless
    /// this process already did (see the module docs).
    pub(crate) async fn before_create(
        conn: &mut Conn,
        tenant: &'a Tenant,
        topic: &'a Topic,
    ) -> Result<Self> {
        if !Listed::contains(tenant, topic) {
            add(conn, tenant, topic).await?;
            Listed::set(tenant, topic, true);
        }
        Ok(Self::guard(conn, tenant, topic))
    }

    /// Arms before a call that may create or delete `topic`.
    pub(crate) fn guard(conn: &Conn, tenant: &'a Tenant, topic: &'a Topic) -> Self {
        Self {
            conn: Some(conn.clone()),
            tenant,
            topic,
        }
    }

    /// After the call: lists the topic when `list` (the call created it, or
    /// repairs its listing: listing is idempotent), then disarms. When
    /// listing fails the guard stays armed, so a task keeps trying.
    pub(crate) async fn settle(mut self, list: bool) -> Result<()> {
        if list && let Some(conn) = self.conn.as_mut() {
            list_as(conn, self.tenant, self.topic, true).await?;
        }
        self.conn = None;
        Ok(())
    }

    /// After a call that may create `topic` but was refused before it
    /// wrote anything: [`Listing::before_create`] may have listed a topic
    /// that does not exist, so it is unlisted unless it exists (created by
    /// another call meanwhile); then disarms. When that fails the guard
    /// stays armed, so a task keeps trying.
    pub(crate) async fn settle_unwritten(mut self) -> Result<()> {
        if let Some(conn) = self.conn.as_mut() {
            let meta = TopicKeys::new(self.tenant, self.topic).meta();
            let exists: bool = redis::cmd("EXISTS").arg(&meta).query_async(conn).await?;
            if !exists {
                list_as(conn, self.tenant, self.topic, false).await?;
            }
        }
        self.conn = None;
        Ok(())
    }

    /// After a call that deleted `topic` (or found it missing): unlists it
    /// unless it exists again by then, then disarms. When that fails the
    /// guard stays armed, so a task keeps trying.
    pub(crate) async fn settle_deleted(mut self) -> Result<()> {
        if let Some(conn) = self.conn.as_mut() {
            list_as(conn, self.tenant, self.topic, false).await?;
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
        let key = (self.tenant.clone(), self.topic.clone());
        {
            let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(again) = pending.get_mut(&key) {
                *again = true;
                return;
            }
            if pending.len() >= MAX_PENDING {
                tracing::warn!(tenant = %key.0, topic = %key.1,
                    "too many topic listings to repair at once; a PUT or DELETE of the topic updates its listing");
                return;
            }
            pending.insert(key.clone(), false);
        }
        runtime.spawn(reconcile(conn, key));
    }
}

/// Makes the listing of `key`'s topic agree with it, again while guards of
/// it were dropped meanwhile; then the topic leaves [`PENDING`].
async fn reconcile(mut conn: Conn, key: (Tenant, Topic)) {
    loop {
        reconcile_once(&mut conn, &key.0, &key.1).await;
        let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(&key) {
            Some(again) if *again => *again = false,
            _ => {
                pending.remove(&key);
                return;
            }
        }
    }
}

/// Lists `topic` if it exists and unlists it if not, retrying while Redis
/// fails.
async fn reconcile_once(conn: &mut Conn, tenant: &Tenant, topic: &Topic) {
    let meta = TopicKeys::new(tenant, topic).meta();
    let mut backoff = Backoff::default();
    while backoff.attempt() {
        let exists = redis::cmd("EXISTS")
            .arg(&meta)
            .query_async::<bool>(conn)
            .await;
        let settled = match exists {
            Ok(exists) => list_as(conn, tenant, topic, exists).await,
            Err(e) => Err(e.into()),
        };
        match settled {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(%tenant, %topic, error = %e, "listing a topic failed; retrying")
            }
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
    tracing::warn!(
        %tenant, %topic,
        "a topic's listing could not be updated; a PUT or DELETE of the topic updates it"
    );
}

/// Unlists `topic`, which was found listed but gone (see
/// [`crate::broker::Broker::retention_pass`]), unless it exists again by
/// then.
pub(crate) async fn unlist_gone(conn: &mut Conn, tenant: &Tenant, topic: &Topic) -> Result<()> {
    list_as(conn, tenant, topic, false).await
}

/// Times [`list_as`] writes the listing at most: each write after the
/// first follows a create or delete that ran during the previous one.
const MAX_WRITES: u32 = 8;

/// Lists `topic` (adding it to its tenant's topic set, then the tenant to
/// the tenant set, in this order: see `crate::tenants`) when `listed`, else
/// takes it off its tenant's topic set; then checks that the topic exists
/// exactly when it is listed, and if not (a create or delete of it ran
/// since its caller's script), writes the listing again the other way, and
/// checks again. Every script that creates or deletes the topic is
/// followed by such a call, so the last listing write is checked after
/// any script it could contradict: the listing ends agreeing with the
/// topic. (Listing without the check let a delete that ran whole between a
/// create's script and its listing leave a deleted topic listed.)
async fn list_as(conn: &mut Conn, tenant: &Tenant, topic: &Topic, mut listed: bool) -> Result<()> {
    let meta = TopicKeys::new(tenant, topic).meta();
    for _ in 0..MAX_WRITES {
        if listed {
            add(conn, tenant, topic).await?;
        } else {
            redis::cmd("SREM")
                .arg(TenantKeys::new(tenant).topics())
                .arg(topic.as_str())
                .query_async::<()>(conn)
                .await?;
        }
        let exists: bool = redis::cmd("EXISTS").arg(&meta).query_async(conn).await?;
        if exists == listed {
            Listed::set(tenant, topic, listed);
            return Ok(());
        }
        listed = exists;
    }
    tracing::warn!(
        %tenant, %topic,
        "a topic kept being created and deleted while it was listed; a PUT or DELETE of the topic updates its listing"
    );
    Ok(())
}

/// Adds `topic` to its tenant's topic set, then the tenant to the tenant
/// set (in this order: see `crate::tenants`); both are idempotent.
async fn add(conn: &mut Conn, tenant: &Tenant, topic: &Topic) -> Result<()> {
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

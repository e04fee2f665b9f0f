//! The tenant list `sc:tenants`: which tenants have topics, so the
//! background passes (retention, group gauges) can find every topic without
//! scanning the keyspace. A tenant joins when it gets its first topic
//! (`broker::listing`); this module takes it off again once its
//! last topic is gone, so the list does not grow with every tenant that ever
//! existed.
//!
//! Pools, checkpoints, quotas and idempotency records never put a tenant on
//! the list (no background pass visits them), so they do not keep it there
//! either: the list means "tenants with topics".
//!
//! ## Race-free against a topic created meanwhile
//!
//! `sc:tenants` and a tenant's topic set `sc:{T}:topics` live in different
//! hash slots, so no script can change both. Registering a topic adds it to
//! `sc:{T}:topics` and *then* adds `T` to `sc:tenants`, each acknowledged
//! before the next is sent. A prune does the mirror image: it removes `T`
//! from `sc:tenants` and *then* reads `sc:{T}:topics`; if a topic is there,
//! it puts `T` back. Take any topic present at the end and the last
//! registration of it: its `SADD sc:tenants` came after its `SADD
//! sc:{T}:topics`. If some prune's `SREM` came after that `SADD sc:tenants`,
//! that prune's read came later still and saw the topic, so it put `T` back.
//! Either way `T` ends on the list. (Between a prune's `SREM` and its
//! re-add, a just-created tenant is briefly missing: a background pass may
//! skip its new topic once, and the next pass finds it.) The re-check is
//! retried while Redis fails; only a sidecar killed -9 between the two can
//! still leave such a tenant off the list, until another topic of it is
//! created.
//!
//! The pass runs every `--retention-interval` behind a short lock, so about
//! one sidecar does it per interval; overlapping passes are harmless.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Result;
use crate::keys::{self, TenantKeys};
use crate::names::Tenant;
use crate::retry::Backoff;
use crate::store::{Conn, Store};

/// Most tenants whose topic sets are read at once.
const BATCH: usize = 500;

/// Takes every tenant without topics off `sc:tenants`, if this sidecar wins
/// the pass lock. Returns how many tenants left the list.
pub async fn prune(store: &Store, interval: Duration) -> Result<usize> {
    let mut conn = store.conn().await?;
    let lock_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let won: Option<String> = redis::cmd("SET")
        .arg(keys::TENANTS_PRUNE_LOCK)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(lock_ms)
        .query_async(&mut conn)
        .await?;
    if won.is_none() {
        return Ok(0);
    }
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::TENANTS)
        .query_async(&mut conn)
        .await?;
    // A name that does not validate was not written by streamcar; leave it.
    let tenants: Vec<Tenant> = names.iter().filter_map(|t| Tenant::parse(t).ok()).collect();
    let mut removed = 0;
    for chunk in tenants.chunks(BATCH) {
        // Concurrent single reads rather than one pipeline: the topic sets
        // of different tenants live in different cluster slots, and a
        // cluster pipeline must stay in one. On one Redis the shared
        // connection pipelines them anyway.
        let mut reads = JoinSet::new();
        for tenant in chunk {
            let mut conn = conn.clone();
            let key = TenantKeys::new(tenant).topics();
            let tenant = tenant.clone();
            reads.spawn(async move {
                let count: redis::RedisResult<u64> =
                    redis::cmd("SCARD").arg(key).query_async(&mut conn).await;
                (tenant, count)
            });
        }
        let mut empty = Vec::new();
        while let Some(read) = reads.join_next().await {
            let Ok((tenant, count)) = read else {
                continue; // a read task cannot panic; nothing to prune then
            };
            if count? == 0 {
                empty.push(tenant);
            }
        }
        for tenant in &empty {
            if remove_if_empty(store, tenant).await? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The tenants that have topics, sorted (what `GET /v1/tenants` lists).
/// Names streamcar did not write (they do not validate) are left out.
pub async fn list(store: &Store) -> Result<Vec<String>> {
    let mut conn = store.conn().await?;
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::TENANTS)
        .query_async(&mut conn)
        .await?;
    let mut tenants: Vec<String> = names
        .into_iter()
        .filter(|t| Tenant::parse(t).is_ok())
        .collect();
    tenants.sort_unstable();
    Ok(tenants)
}

/// Removes `tenant` from the list, then puts it back if it has a topic by
/// now (see the module docs for why this order is race-free). Returns true
/// when it stayed off.
///
/// Once it is off, the check must happen: a topic created meanwhile would
/// otherwise leave its tenant off the list for good (its topics never
/// trimmed). So the check is retried while Redis fails, for about two
/// minutes, like a topic's listing (`broker::listing`).
async fn remove_if_empty(store: &Store, tenant: &Tenant) -> Result<bool> {
    let mut conn = store.conn().await?;
    redis::cmd("SREM")
        .arg(keys::TENANTS)
        .arg(tenant.as_str())
        .query_async::<()>(&mut conn)
        .await?;
    let mut backoff = Backoff::default();
    let mut shutdown = store.shutdown_signal();
    loop {
        backoff.attempt();
        // Shutting down: this attempt is the last (the drain must not wait
        // minutes on an outage).
        let last = backoff.exhausted() || *shutdown.borrow();
        match put_back_if_it_has_topics(&mut conn, tenant).await {
            Ok(stayed_off) => return Ok(stayed_off),
            Err(e) if !last => {
                tracing::debug!(%tenant, error = %e, "re-checking a pruned tenant failed; retrying");
            }
            Err(e) => {
                tracing::warn!(%tenant, error = %e,
                    "a pruned tenant could not be re-checked; a topic created for it meanwhile is not visited by retention until another topic of it is created");
                return Err(e);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The re-check of [`remove_if_empty`]: puts `tenant` back on the list if
/// it has a topic. Returns true when it stays off.
async fn put_back_if_it_has_topics(conn: &mut Conn, tenant: &Tenant) -> Result<bool> {
    let topics: u64 = redis::cmd("SCARD")
        .arg(TenantKeys::new(tenant).topics())
        .query_async(conn)
        .await?;
    if topics == 0 {
        tracing::debug!(%tenant, "tenant has no topics left; removed from the tenant list");
        return Ok(true);
    }
    redis::cmd("SADD")
        .arg(keys::TENANTS)
        .arg(tenant.as_str())
        .query_async::<()>(conn)
        .await?;
    Ok(false)
}

/// Runs [`prune`] every `interval` until shutdown. A pass that started
/// finishes before this returns, so a drained server leaves no half-done
/// prune behind.
pub async fn run(store: Store, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        // Spread sidecars that started together.
        let jitter = interval.mul_f64(fastrand::f64() * 0.2);
        tokio::select! {
            () = tokio::time::sleep(interval + jitter) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = prune(&store, interval).await {
            tracing::warn!(error = %e.chain(), "tenant list prune failed; will retry");
        }
    }
}

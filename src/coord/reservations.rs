//! Compute reservations: a pool of `capacity` slots with leases, so at most
//! `capacity` holders run at once (GPU slots, model-call concurrency). The
//! flow is reserve a slot → ack the message → run → release. Expired holders
//! free their slot by themselves; every reservation carries a fencing token
//! that strictly increases per pool, so a downstream system can refuse the
//! writes of a holder whose reservation expired.
//!
//! A pool can be deleted (its live reservations end with it) and created
//! again under the same name. Its tokens keep increasing across that: a new
//! pool's counter starts at the Redis clock in microseconds
//! (`lua/pool_declare.lua`), and no pool can have handed out more tokens than
//! microseconds have passed since it was created (each acquire is a script
//! call of its own on Redis's single thread, which takes longer than that).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Coord;
use crate::error::{Error, NotFoundKind, Result};
use crate::keys::{PoolKeys, TenantKeys};
use crate::names::{Pool, Tenant};
use crate::telemetry;
use crate::validate::{check_range, check_text};

/// Largest pool capacity.
pub const MAX_CAPACITY: u64 = 100_000;
/// Shortest reservation lease.
pub const MIN_LEASE_MS: u64 = 100;
/// Longest reservation lease: 24 h.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest wait for a slot.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Longest holder text.
pub const MAX_HOLDER_LEN: usize = 256;

/// Body of `PUT /pools/{pool}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfigRequest {
    /// Most live reservations at once.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 100000)]
    pub capacity: u64,
    /// Default reservation lease.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 100, maximum = 86400000)]
    pub lease_ms: u64,
}

/// Body of `POST /pools/{pool}/acquire`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Who holds the slot (shown in the pool's holders).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub holder: String,
    /// Lease for this reservation (default: the pool's).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 100, maximum = 86400000)]
    pub lease_ms: Option<u64>,
    /// Wait up to this long for a free slot (default 0: answer 429 at once).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// Body of `POST /pools/{pool}/renew`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// The reservation.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub reservation_id: String,
    /// New lease (default: the pool's).
    #[serde(default, deserialize_with = "crate::validate::whole::opt_u64")]
    #[schema(minimum = 100, maximum = 86400000)]
    pub lease_ms: Option<u64>,
}

/// Body of `POST /pools/{pool}/release`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseReservationRequest {
    /// The reservation.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub reservation_id: String,
}

/// A granted reservation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    /// Names this reservation for renew and release.
    pub reservation_id: String,
    /// Strictly increasing per pool: pass it to downstream writes.
    pub fencing_token: u64,
    /// When the slot frees itself unless renewed (ms, Redis clock).
    pub expires_at: u64,
}

/// One live holder of a pool.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Holder {
    /// The reservation.
    pub reservation_id: String,
    /// Who holds it.
    pub holder: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// When it expires (ms, Redis clock).
    pub expires_at: u64,
}

/// What `GET /pools/{pool}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Most live reservations.
    pub capacity: u64,
    /// Default lease.
    pub lease_ms: u64,
    /// Live reservations now.
    pub in_use: u64,
    /// The live reservations.
    pub holders: Vec<Holder>,
}

fn pool_not_found(pool: &Pool) -> Error {
    Error::not_found(NotFoundKind::Pool, pool.as_str())
}

fn reservation_lost() -> Error {
    Error::Conflict {
        code: "reservation_lost",
        detail: "this reservation is not live (it expired or was released); its slot may be someone else's now".into(),
    }
}

fn check_lease(lease_ms: Option<u64>) -> Result<()> {
    check_range("lease_ms", lease_ms, MIN_LEASE_MS, MAX_LEASE_MS)
}

/// Raw reply of `lua/pool_acquire.lua`: status, reservation id, then fencing
/// token and expiry (acquired) or earliest expiry and now (full), in use.
type AcquireReply = (i64, String, u64, u64, u64);

/// Reports a pool's live reservations.
fn record_in_use(tenant: &Tenant, pool: &Pool, in_use: u64) {
    metrics::gauge!(
        telemetry::RESERVATIONS_IN_USE,
        "tenant" => tenant.to_string(),
        "pool" => pool.to_string()
    )
    .set(in_use as f64);
}

impl Coord {
    /// Creates or updates a pool; returns true when created, and the pool as
    /// that same call left it (a delete racing the declare cannot make it
    /// answer 404).
    pub async fn declare_pool(
        &self,
        tenant: &Tenant,
        pool: &Pool,
        request: &PoolConfigRequest,
    ) -> Result<(bool, PoolInfo)> {
        check_range("capacity", Some(request.capacity), 1, MAX_CAPACITY)?;
        check_lease(Some(request.lease_ms))?;
        let keys = TenantKeys::new(tenant).pool(pool);
        let mut conn = self.store.conn().await?;
        let (created, info): (i64, redis::Value) = self
            .store
            .scripts()
            .pool_declare
            .key(keys.pool())
            .key(keys.holders())
            .arg(request.capacity)
            .arg(request.lease_ms)
            .invoke_async(&mut conn)
            .await?;
        let info = parse_pool_info(tenant, pool, info)?;
        // Raised capacity: waiting acquirers may fit now.
        self.store.wake(&mut conn, &keys.wake_channel()).await?;
        Ok((created == 1, info))
    }

    async fn try_acquire(
        &self,
        tenant: &Tenant,
        keys: &PoolKeys,
        pool: &Pool,
        request: &AcquireRequest,
    ) -> Result<Result<Reservation, (u64, u64)>> {
        let mut conn = self.store.conn().await?;
        let reply: AcquireReply = self
            .store
            .scripts()
            .pool_acquire
            .key(keys.pool())
            .key(keys.holders())
            .arg(&request.holder)
            .arg(request.lease_ms.unwrap_or(0))
            .arg(uuid::Uuid::now_v7().to_string())
            .invoke_async(&mut conn)
            .await?;
        let (status, reservation_id, a, b, in_use) = reply;
        if status >= 0 {
            record_in_use(tenant, pool, in_use);
        }
        match status {
            1 => Ok(Ok(Reservation {
                reservation_id,
                fencing_token: a,
                expires_at: b,
            })),
            0 => Ok(Err((a, b))),
            _ => Err(pool_not_found(pool)),
        }
    }

    /// Takes a slot, waiting up to `wait_ms` for one; 429 with `Retry-After`
    /// (the earliest expiry) when the pool stays full.
    pub async fn acquire(
        &self,
        tenant: &Tenant,
        pool: &Pool,
        request: &AcquireRequest,
    ) -> Result<Reservation> {
        check_text("holder", &request.holder, MAX_HOLDER_LEN)?;
        check_lease(request.lease_ms)?;
        check_range("wait_ms", request.wait_ms, 0, MAX_WAIT_MS)?;
        let keys = TenantKeys::new(tenant).pool(pool);
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = if wait.is_zero() {
            None
        } else {
            Some(self.store.wakeups().waiter(keys.wake_channel(), "").await)
        };
        let mut shutdown = self.store.shutdown_signal();
        loop {
            let notified = waiter.as_ref().map(|w| w.notify().notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let (earliest, now) = match self.try_acquire(tenant, &keys, pool, request).await? {
                Ok(reservation) => return Ok(reservation),
                Err(full) => full,
            };
            let until_free = Duration::from_millis(earliest.saturating_sub(now));
            let clock = tokio::time::Instant::now();
            let Some(notified) = notified.as_mut().as_pin_mut() else {
                return Err(pool_full(pool, until_free));
            };
            if clock >= deadline || *shutdown.borrow() {
                return Err(pool_full(pool, until_free));
            }
            let wake_at = deadline
                .min(clock + until_free)
                .min(clock + self.store.wakeups().recheck());
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(pool_full(pool, until_free)),
            }
        }
    }

    /// Renews a live reservation; 409 `reservation_lost` once it expired.
    pub async fn renew(&self, tenant: &Tenant, pool: &Pool, request: &HoldRequest) -> Result<u64> {
        check_lease(request.lease_ms)?;
        self.hold(
            tenant,
            pool,
            "renew",
            &request.reservation_id,
            request.lease_ms,
        )
        .await
    }

    /// Releases a live reservation, freeing its slot at once.
    pub async fn release_reservation(
        &self,
        tenant: &Tenant,
        pool: &Pool,
        request: &ReleaseReservationRequest,
    ) -> Result<()> {
        self.hold(tenant, pool, "release", &request.reservation_id, None)
            .await
            .map(|_| ())
    }

    async fn hold(
        &self,
        tenant: &Tenant,
        pool: &Pool,
        action: &str,
        reservation_id: &str,
        lease_ms: Option<u64>,
    ) -> Result<u64> {
        check_text("reservation_id", reservation_id, 64)?;
        let keys = TenantKeys::new(tenant).pool(pool);
        let mut conn = self.store.conn().await?;
        let reply: Vec<i64> = self
            .store
            .scripts()
            .pool_hold
            .key(keys.pool())
            .key(keys.holders())
            .arg(action)
            .arg(reservation_id)
            .arg(lease_ms.unwrap_or(0))
            .arg(keys.wake_channel())
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [1, expires_at, in_use] => {
                record_in_use(tenant, pool, u64::try_from(*in_use).unwrap_or(0));
                Ok(u64::try_from(*expires_at).unwrap_or(0))
            }
            [0, in_use] => {
                record_in_use(tenant, pool, u64::try_from(*in_use).unwrap_or(0));
                Err(reservation_lost())
            }
            _ => Err(pool_not_found(pool)),
        }
    }

    /// Deletes a pool and its live reservations; 404 when it does not exist.
    /// Waiting acquirers wake up and answer 404 too; holders' renew and
    /// release answer 404 from then on.
    pub async fn delete_pool(&self, tenant: &Tenant, pool: &Pool) -> Result<()> {
        let keys = TenantKeys::new(tenant).pool(pool);
        let mut conn = self.store.conn().await?;
        // Both keys share the tenant's hash tag, so one UNLINK removes them
        // atomically (a pool of 100,000 holders is freed in the background);
        // holders never exist without their pool hash.
        let deleted: u64 = redis::cmd("UNLINK")
            .arg(keys.pool())
            .arg(keys.holders())
            .query_async(&mut conn)
            .await?;
        if deleted == 0 {
            return Err(pool_not_found(pool));
        }
        record_in_use(tenant, pool, 0);
        self.store.wake(&mut conn, &keys.wake_channel()).await?;
        Ok(())
    }

    /// Describes a pool and its live holders.
    pub async fn pool_info(&self, tenant: &Tenant, pool: &Pool) -> Result<PoolInfo> {
        let keys = TenantKeys::new(tenant).pool(pool);
        let mut conn = self.store.conn().await?;
        let reply: redis::Value = self
            .store
            .scripts()
            .pool_info
            .key(keys.pool())
            .key(keys.holders())
            .invoke_async(&mut conn)
            .await?;
        parse_pool_info(tenant, pool, reply)
    }
}

/// A pool as `describe_pool` (lua/prelude.lua) returns it; 404 when the
/// script found no pool.
fn parse_pool_info(tenant: &Tenant, pool: &Pool, reply: redis::Value) -> Result<PoolInfo> {
    let (capacity, lease_ms, rows): (u64, u64, Vec<(String, String, u64)>) =
        match redis::from_redis_value(reply) {
            Ok(parsed) => parsed,
            Err(_) => return Err(pool_not_found(pool)),
        };
    let holders: Vec<Holder> = rows
        .into_iter()
        .map(|(reservation_id, detail, expires_at)| {
            let (holder, fence) = detail.rsplit_once('|').unwrap_or((&detail, "0"));
            Holder {
                reservation_id,
                holder: holder.to_owned(),
                fencing_token: fence.parse().unwrap_or(0),
                expires_at,
            }
        })
        .collect();
    record_in_use(tenant, pool, holders.len() as u64);
    Ok(PoolInfo {
        name: pool.to_string(),
        capacity,
        lease_ms,
        in_use: holders.len() as u64,
        holders,
    })
}

fn pool_full(pool: &Pool, until_free: Duration) -> Error {
    Error::TooManyRequests {
        code: "pool_full",
        detail: format!("every slot of pool '{pool}' is held; retry after the earliest lease ends"),
        retry_after: until_free,
        limit: None,
    }
}

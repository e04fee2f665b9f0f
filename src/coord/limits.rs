//! Per-tenant publish quotas: `publish_per_sec` with a `burst`, enforced by
//! GCRA in Lua (`lua/rate_limit.lua`) on the Redis clock, so every sidecar
//! enforces one shared budget. Over the limit a publish answers 429 with
//! `Retry-After` and `RateLimit-*` headers and nothing is written.
//!
//! A publish is charged before it runs and settled after it: what it did not
//! write (refused by the backlog, duplicates) goes back to the quota, so only
//! written messages spend it. The arithmetic is exact integer GCRA state on
//! the Redis clock in microseconds (see the script's header).
//!
//! Tenants without a quota cost no Redis round trip on publish: a sidecar
//! remembers "no quota" for [`NO_QUOTA_CACHE`]; a quota set through another
//! sidecar therefore takes effect here within that time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Coord;
use crate::error::{Error, RateLimitInfo, Result};
use crate::keys::TenantKeys;
use crate::names::Tenant;
use crate::scripts::{Invocation, Scripts};
use crate::validate::check_range;

/// How long a sidecar trusts that a tenant has no quota.
pub const NO_QUOTA_CACHE: Duration = Duration::from_secs(1);
/// Largest rate and burst.
pub const MAX_RATE: u64 = 1_000_000;
/// Most tenants remembered as unlimited before the memo is pruned.
const MEMO_PRUNE_AT: usize = 10_000;

/// A tenant's publish quota (`PUT/GET /limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained messages per second.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub publish_per_sec: u64,
    /// Messages that may be published at once after a quiet period.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub burst: u64,
}

/// Raw reply of `lua/rate_limit.lua`: status (1 charged, 0 refused, 2 no
/// quota, -1 above the burst), retry_after_ms, remaining, reset_ms, limit,
/// then the charge's receipt (tat_us, tat_frac, rate, shift, epoch, number).
pub type RateReply = (i64, u64, u64, u64, u64, u64, u64, u64, u64, String, u64);

/// The `lua/rate_limit.lua` call that charges `count` messages to `tenant`'s
/// quota.
fn charge_call<'a>(scripts: &'a Scripts, tenant: &Tenant, count: u64) -> Invocation<'a> {
    let mut call = scripts.rate_limit.key(TenantKeys::new(tenant).rate());
    call.arg("charge").arg(count);
    call
}

/// The same charge as [`charge_call`], as one EVALSHA command for a
/// pipeline (the script must be loaded). Public so tests and the benchmark
/// can drive the quota at rates no sidecar alone reaches, with the call the
/// sidecar sends.
pub fn charge_cmd(scripts: &Scripts, tenant: &Tenant, count: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(scripts.rate_limit.get_hash())
        .arg(1)
        .arg(TenantKeys::new(tenant).rate())
        .arg("charge")
        .arg(count);
    cmd
}

/// What a tenant's quota says to a publish.
#[derive(Debug)]
pub enum Admission {
    /// The tenant has no quota.
    Unlimited,
    /// The messages were charged; give back what is not written with
    /// [`Coord::settle_publish`].
    Charged(Charge),
    /// Over the quota: nothing was charged.
    Refused(Refusal),
}

/// A charge the quota accepted, with what the script needs to refund part
/// of it exactly.
#[derive(Debug)]
pub struct Charge {
    count: u64,
    receipt: ChargeReceipt,
    info: RateLimitInfo,
}

/// Where the charge left the tenant's GCRA state (see `lua/rate_limit.lua`).
#[derive(Debug)]
struct ChargeReceipt {
    tat_us: u64,
    tat_frac: u64,
    rate: u64,
    shift: u64,
    epoch: String,
    /// The charge's number (refunds of later charges do not move its slots).
    number: u64,
}

/// A publish the quota refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    retry_after: Duration,
    info: RateLimitInfo,
}

impl Refusal {
    /// The quota state for `RateLimit-*` headers.
    pub fn info(&self) -> RateLimitInfo {
        self.info
    }

    /// The 429 `rate_limited` problem for a message of `tenant` refused by it.
    pub fn error(&self, tenant: &Tenant) -> Error {
        Error::TooManyRequests {
            code: "rate_limited",
            detail: format!("tenant '{tenant}' is over its publish quota; nothing was written"),
            retry_after: self.retry_after,
            limit: Some(self.info),
        }
    }
}

impl Coord {
    /// Sets a tenant's quota.
    pub async fn set_limits(&self, tenant: &Tenant, limits: &Limits) -> Result<()> {
        check_range("publish_per_sec", Some(limits.publish_per_sec), 1, MAX_RATE)?;
        check_range("burst", Some(limits.burst), 1, MAX_RATE)?;
        let mut conn = self.store.conn().await?;
        // A new epoch with the config, in the same HSET: a refund of a charge
        // made under the old config must not apply to the new one.
        redis::cmd("HSET")
            .arg(TenantKeys::new(tenant).rate())
            .arg("publish_per_sec")
            .arg(limits.publish_per_sec)
            .arg("burst")
            .arg(limits.burst)
            .arg("epoch")
            .arg(fastrand::u64(..))
            .query_async::<()>(&mut conn)
            .await?;
        self.forget_unlimited(tenant);
        Ok(())
    }

    /// Removes a tenant's quota.
    pub async fn clear_limits(&self, tenant: &Tenant) -> Result<()> {
        let mut conn = self.store.conn().await?;
        let keys = TenantKeys::new(tenant);
        redis::cmd("DEL")
            .arg(keys.rate())
            .arg(keys.rate_refunds())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// A tenant's quota; None when it has none.
    pub async fn limits(&self, tenant: &Tenant) -> Result<Option<Limits>> {
        let mut conn = self.store.conn().await?;
        let (rate, burst): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(TenantKeys::new(tenant).rate())
            .arg("publish_per_sec")
            .arg("burst")
            .query_async(&mut conn)
            .await?;
        Ok(rate.zip(burst).map(|(publish_per_sec, burst)| Limits {
            publish_per_sec,
            burst,
        }))
    }

    /// Charges `count` publishes to the tenant's quota, or says it is over
    /// it (nothing charged then). A count above the burst can never pass
    /// and is a 400.
    pub async fn charge_publish(&self, tenant: &Tenant, count: u64) -> Result<Admission> {
        if self.known_unlimited(tenant) {
            return Ok(Admission::Unlimited);
        }
        // Boxed: a publish awaits this future inline, and the script call
        // would make every publish's future (copied whole at each move) as
        // large, unlimited tenants' too.
        Box::pin(self.charge_in_redis(tenant, count)).await
    }

    /// [`Self::charge_publish`] for a tenant that may have a quota.
    async fn charge_in_redis(&self, tenant: &Tenant, count: u64) -> Result<Admission> {
        let mut conn = self.store.conn().await?;
        let reply: RateReply = charge_call(self.store.scripts(), tenant, count)
            .invoke_async(&mut conn)
            .await?;
        let (
            status,
            retry_after_ms,
            remaining,
            reset_ms,
            limit,
            tat_us,
            tat_frac,
            rate,
            shift,
            epoch,
            number,
        ) = reply;
        let info = RateLimitInfo {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
        };
        match status {
            1 => Ok(Admission::Charged(Charge {
                count,
                receipt: ChargeReceipt {
                    tat_us,
                    tat_frac,
                    rate,
                    shift,
                    epoch,
                    number,
                },
                info,
            })),
            2 => {
                self.remember_unlimited(tenant);
                Ok(Admission::Unlimited)
            }
            -1 => Err(Error::invalid_field(
                "messages",
                format!(
                    "{count} messages exceed the tenant's burst of {limit}; send smaller batches"
                ),
            )),
            _ => Ok(Admission::Refused(Refusal {
                retry_after: Duration::from_millis(retry_after_ms),
                info,
            })),
        }
    }

    /// Settles `charge` once the publish wrote `written` of its messages:
    /// gives the rest back to the quota (refusals and duplicates spend
    /// nothing). Returns the quota state for `RateLimit-*` headers (None
    /// when the quota was removed meanwhile).
    ///
    /// Never fails: the messages are written by now, and a refund that
    /// cannot reach Redis only leaves the quota charged for them, which the
    /// caller must not turn into an error (the client would publish again).
    pub async fn settle_publish(
        &self,
        tenant: &Tenant,
        charge: Charge,
        written: u64,
    ) -> Option<RateLimitInfo> {
        let unwritten = charge.count.saturating_sub(written);
        if unwritten == 0 {
            return Some(charge.info);
        }
        match self.refund(tenant, &charge.receipt, unwritten).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(%tenant, unwritten, error = %e, "quota refund failed; the quota stays charged");
                Some(charge.info)
            }
        }
    }

    async fn refund(
        &self,
        tenant: &Tenant,
        receipt: &ChargeReceipt,
        count: u64,
    ) -> Result<Option<RateLimitInfo>> {
        let keys = TenantKeys::new(tenant);
        let mut conn = self.store.conn().await?;
        let (status, _, remaining, reset_ms, limit, ..): RateReply = self
            .store
            .scripts()
            .rate_limit
            .key(keys.rate())
            .key(keys.rate_refunds())
            .arg("refund")
            .arg(count)
            .arg(receipt.tat_us)
            .arg(receipt.tat_frac)
            .arg(receipt.rate)
            .arg(receipt.shift)
            .arg(&receipt.epoch)
            .arg(receipt.number)
            .invoke_async(&mut conn)
            .await?;
        // Status 2: the quota was removed meanwhile.
        Ok((status != 2).then_some(RateLimitInfo {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
        }))
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, super::UnlimitedMemo> {
        // Entries are plain timestamps: a poisoned lock holds nothing broken.
        self.unlimited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn known_unlimited(&self, tenant: &Tenant) -> bool {
        self.memo()
            .get(tenant.as_str())
            .is_some_and(|at| at.elapsed() < NO_QUOTA_CACHE)
    }

    fn remember_unlimited(&self, tenant: &Tenant) {
        let mut memo = self.memo();
        if memo.len() >= MEMO_PRUNE_AT {
            memo.retain(|_, at| at.elapsed() < NO_QUOTA_CACHE);
        }
        memo.insert(tenant.to_string(), Instant::now());
    }

    fn forget_unlimited(&self, tenant: &Tenant) {
        self.memo().remove(tenant.as_str());
    }
}

//! Per-tenant publish quotas: `publish_per_sec` with a `burst`, enforced by
//! GCRA in Lua (`lua/rate_limit.lua`) on the Redis clock, so every sidecar
//! enforces one shared budget. Over the limit a publish answers 429 with
//! `Retry-After` and `RateLimit-*` headers and nothing is written.
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
use crate::telemetry;
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

/// Raw reply of `lua/rate_limit.lua`.
type RateReply = (i64, u64, u64, u64, u64);

impl Coord {
    /// Sets a tenant's quota.
    pub async fn set_limits(&self, tenant: &Tenant, limits: &Limits) -> Result<()> {
        check_range("publish_per_sec", Some(limits.publish_per_sec), 1, MAX_RATE)?;
        check_range("burst", Some(limits.burst), 1, MAX_RATE)?;
        let mut conn = self.store.conn().await?;
        redis::cmd("HSET")
            .arg(TenantKeys::new(tenant).rate())
            .arg("publish_per_sec")
            .arg(limits.publish_per_sec)
            .arg("burst")
            .arg(limits.burst)
            .query_async::<()>(&mut conn)
            .await?;
        self.forget_unlimited(tenant);
        Ok(())
    }

    /// Removes a tenant's quota.
    pub async fn clear_limits(&self, tenant: &Tenant) -> Result<()> {
        let mut conn = self.store.conn().await?;
        redis::cmd("DEL")
            .arg(TenantKeys::new(tenant).rate())
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

    /// Charges `count` publishes to the tenant's quota; 429 `rate_limited`
    /// when over it (nothing is charged then). Returns the quota state for
    /// `RateLimit-*` headers, None when the tenant has no quota.
    pub async fn charge_publish(
        &self,
        tenant: &Tenant,
        count: u64,
    ) -> Result<Option<RateLimitInfo>> {
        if self.known_unlimited(tenant) {
            return Ok(None);
        }
        let mut conn = self.store.conn().await?;
        let (status, retry_after_ms, remaining, reset_ms, limit): RateReply = self
            .store
            .scripts()
            .rate_limit
            .key(TenantKeys::new(tenant).rate())
            .arg(count)
            .invoke_async(&mut conn)
            .await?;
        let info = RateLimitInfo {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
        };
        match status {
            1 => Ok(Some(info)),
            2 => {
                self.remember_unlimited(tenant);
                Ok(None)
            }
            -1 => Err(Error::invalid_field(
                "messages",
                format!(
                    "{count} messages exceed the tenant's burst of {limit}; send smaller batches"
                ),
            )),
            _ => {
                metrics::counter!(telemetry::RATE_LIMITED, "tenant" => tenant.to_string())
                    .increment(1);
                Err(Error::TooManyRequests {
                    code: "rate_limited",
                    detail: format!(
                        "tenant '{tenant}' is over its publish quota; nothing was written"
                    ),
                    retry_after: Duration::from_millis(retry_after_ms),
                    limit: Some(info),
                })
            }
        }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
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

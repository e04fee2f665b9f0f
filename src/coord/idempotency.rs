//! Consumer-side idempotency, Stripe-style: claim a key before running its
//! work, then complete it with the result (later claims replay the result)
//! or release it (a later claim runs the work again). A claim expires after
//! its ttl and can then be taken over; the old token is refused from then on.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Coord, MAX_KEY_LEN};
use crate::error::{Error, NotFoundKind, Result};
use crate::keys::TenantKeys;
use crate::names::Tenant;
use crate::validate::{check_range, check_text};

/// Longest claim ttl: 24 h.
pub const MAX_CLAIM_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest time a completed result is kept: 30 days.
pub const MAX_RESULT_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest owner text.
pub const MAX_OWNER_LEN: usize = 256;

/// Body of `POST /idempotency/{key}/claim`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// How long the claim holds unless completed or released.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub ttl_ms: u64,
    /// Who claims (shown to others who find it in progress).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub owner: String,
}

/// Body of `POST /idempotency/{key}/complete`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The claim's token.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub token: String,
    /// The work's result (any JSON), replayed to later claims.
    #[schema(value_type = serde_json::Value)]
    pub result: Box<RawValue>,
    /// How long the result is kept.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 1, maximum = 2592000000_u64)]
    pub ttl_ms: u64,
}

/// Body of `POST /idempotency/{key}/release`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The claim's token.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub token: String,
}

/// Outcome of a claim that did not conflict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Claim {
    /// You hold the key: run the work, then complete or release.
    Claimed {
        /// Proof of the claim for complete/release.
        token: String,
        /// When the claim ends unless completed (ms, Redis clock).
        expires_at: u64,
    },
    /// The work was done before: here is its result.
    Completed {
        /// The stored result.
        #[schema(value_type = serde_json::Value)]
        result: Box<RawValue>,
        /// When it was completed (ms, Redis clock).
        completed_at: u64,
    },
}

/// What `GET /idempotency/{key}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IdempotencyRecord {
    /// The key.
    pub key: String,
    /// `in_progress` or `completed`.
    pub state: String,
    /// Who claimed it.
    pub owner: Option<String>,
    /// When a live claim ends (in progress only).
    pub expires_at: Option<u64>,
    /// The result (completed only).
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// When it was completed (completed only).
    pub completed_at: Option<u64>,
}

fn stale_token() -> Error {
    Error::Conflict {
        code: "stale_token",
        detail:
            "this token does not hold the claim (it expired, was taken over, released or completed)"
                .into(),
    }
}

fn raw_result(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|source| Error::Corrupt {
        what: "a stored idempotency result".into(),
        source,
    })
}

impl Coord {
    /// Claims `key`: `Ok(Claimed)` to run the work, `Ok(Completed)` to replay
    /// the stored result, `Err(InProgress)` while someone else holds it.
    pub async fn claim(&self, tenant: &Tenant, key: &str, request: &ClaimRequest) -> Result<Claim> {
        check_text("key", key, MAX_KEY_LEN)?;
        check_text("owner", &request.owner, MAX_OWNER_LEN)?;
        check_range("ttl_ms", Some(request.ttl_ms), 1, MAX_CLAIM_TTL_MS)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.store.conn().await?;
        let (status, text, at): (i64, String, u64) = self
            .store
            .scripts()
            .idem_claim
            .key(TenantKeys::new(tenant).idempotency(key))
            .arg(request.ttl_ms)
            .arg(&request.owner)
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        match status {
            1 => Ok(Claim::Claimed {
                token: text,
                expires_at: at,
            }),
            2 => Ok(Claim::Completed {
                result: raw_result(text)?,
                completed_at: at,
            }),
            _ => Err(Error::InProgress {
                owner: text,
                expires_at: at,
            }),
        }
    }

    /// Stores the result of a claim; later claims get it. Returns completed_at.
    pub async fn complete(
        &self,
        tenant: &Tenant,
        key: &str,
        request: &CompleteRequest,
    ) -> Result<u64> {
        check_text("key", key, MAX_KEY_LEN)?;
        check_range("ttl_ms", Some(request.ttl_ms), 1, MAX_RESULT_TTL_MS)?;
        self.finish(
            tenant,
            key,
            "complete",
            &request.token,
            request.result.get(),
            request.ttl_ms,
        )
        .await
    }

    /// Frees a claimed key so a later claim runs the work again.
    pub async fn release(
        &self,
        tenant: &Tenant,
        key: &str,
        request: &ReleaseRequest,
    ) -> Result<()> {
        check_text("key", key, MAX_KEY_LEN)?;
        self.finish(tenant, key, "release", &request.token, "", 0)
            .await
            .map(|_| ())
    }

    async fn finish(
        &self,
        tenant: &Tenant,
        key: &str,
        action: &str,
        token: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<u64> {
        check_text("token", token, 64)?;
        let mut conn = self.store.conn().await?;
        let reply: Vec<u64> = self
            .store
            .scripts()
            .idem_finish
            .key(TenantKeys::new(tenant).idempotency(key))
            .arg(action)
            .arg(token)
            .arg(result)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [1, completed_at] => Ok(*completed_at),
            _ => Err(stale_token()),
        }
    }

    /// Reads the state of `key`; 404 when nobody holds or completed it.
    pub async fn idempotency_record(
        &self,
        tenant: &Tenant,
        key: &str,
    ) -> Result<IdempotencyRecord> {
        check_text("key", key, MAX_KEY_LEN)?;
        let mut conn = self.store.conn().await?;
        let mut h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(TenantKeys::new(tenant).idempotency(key))
            .query_async(&mut conn)
            .await?;
        let state = h
            .remove("state")
            .ok_or_else(|| Error::not_found(NotFoundKind::IdempotencyKey, key))?;
        let number = |v: Option<String>| v.and_then(|v| v.parse().ok());
        Ok(IdempotencyRecord {
            key: key.to_owned(),
            state,
            owner: h.remove("owner"),
            expires_at: number(h.remove("expires_at")),
            result: h.remove("result").map(raw_result).transpose()?,
            completed_at: number(h.remove("completed_at")),
        })
    }
}

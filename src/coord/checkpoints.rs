//! Sequence checkpoints: a per-name high-water mark that only moves forward.
//! A consumer that processes messages by sequence (per causation id, per
//! key…) advances it and skips anything at or below it: duplicates and
//! out-of-order replays. A checkpoint that is no longer needed is deleted;
//! one advanced again after that starts from nothing.

use serde::{Deserialize, Serialize};

use super::{Coord, MAX_KEY_LEN};
use crate::error::{Error, NotFoundKind, Result};
use crate::keys::TenantKeys;
use crate::names::Tenant;
use crate::validate::{check_range, check_text};

/// Largest sequence accepted: 2^53 − 1, exact in every JSON client.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Body of `POST /checkpoints/{name}/advance`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceRequest {
    /// The sequence just processed.
    #[serde(deserialize_with = "crate::validate::whole::u64")]
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    pub seq: u64,
}

/// A checkpoint's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// The checkpoint name.
    pub name: String,
    /// Whether this advance moved the mark (absent on reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// The high-water mark now.
    pub last: u64,
}

impl Coord {
    /// Moves checkpoint `name` to `seq` if that is above its mark.
    pub async fn advance(&self, tenant: &Tenant, name: &str, seq: u64) -> Result<Checkpoint> {
        check_text("name", name, MAX_KEY_LEN)?;
        check_range("seq", Some(seq), 0, MAX_SEQ)?;
        let mut conn = self.store.conn().await?;
        let (accepted, last): (i64, u64) = self
            .store
            .scripts()
            .checkpoint_advance
            .key(TenantKeys::new(tenant).checkpoint(name))
            .arg(seq)
            .invoke_async(&mut conn)
            .await?;
        Ok(Checkpoint {
            name: name.to_owned(),
            accepted: Some(accepted == 1),
            last,
        })
    }

    /// Reads checkpoint `name`; 404 when it was never advanced.
    pub async fn checkpoint(&self, tenant: &Tenant, name: &str) -> Result<Checkpoint> {
        check_text("name", name, MAX_KEY_LEN)?;
        let mut conn = self.store.conn().await?;
        let last: Option<u64> = redis::cmd("GET")
            .arg(TenantKeys::new(tenant).checkpoint(name))
            .query_async(&mut conn)
            .await?;
        let last = last.ok_or_else(|| Error::not_found(NotFoundKind::Checkpoint, name))?;
        Ok(Checkpoint {
            name: name.to_owned(),
            accepted: None,
            last,
        })
    }

    /// Deletes checkpoint `name`; 404 when it does not exist.
    pub async fn delete_checkpoint(&self, tenant: &Tenant, name: &str) -> Result<()> {
        check_text("name", name, MAX_KEY_LEN)?;
        let mut conn = self.store.conn().await?;
        let deleted: u64 = redis::cmd("DEL")
            .arg(TenantKeys::new(tenant).checkpoint(name))
            .query_async(&mut conn)
            .await?;
        if deleted == 0 {
            return Err(Error::not_found(NotFoundKind::Checkpoint, name));
        }
        Ok(())
    }
}

//! `streamcar token`: mints a development token for the edge, signed with
//! the same kind of key the edge verifies with (the HS256 secret, or the
//! RS256/ES256 private key whose public half the edge holds).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::claims::{Grants, MAX_SUB_LEN};
use super::jwt;
use crate::config::JwtAlg;
use crate::names::Tenant;

/// What to put in the token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Signing key file: the secret (HS256) or a private key PEM.
    pub key_file: PathBuf,
    /// Algorithm.
    pub alg: JwtAlg,
    /// `sub`.
    pub sub: String,
    /// `tenant`.
    pub tenant: String,
    /// `channels` grants.
    pub channels: Vec<String>,
    /// `publish` grants.
    pub publish: Vec<String>,
    /// Lifetime (`exp` = now + ttl).
    pub ttl: Duration,
    /// `aud`, when the edge requires one.
    pub audience: Option<String>,
    /// `iss`, when the edge requires one.
    pub issuer: Option<String>,
}

/// Signs the token the request describes, after checking its claims the
/// way the edge will.
pub fn mint(request: &TokenRequest) -> Result<String, String> {
    if request.sub.is_empty()
        || request.sub.len() > MAX_SUB_LEN
        || request.sub.chars().any(char::is_control)
    {
        return Err(format!(
            "--sub must be 1 to {MAX_SUB_LEN} bytes without control characters"
        ));
    }
    Tenant::parse(&request.tenant).map_err(|e| format!("--tenant: {e}"))?;
    Grants::parse("--channels", &request.channels)?;
    Grants::parse("--publish", &request.publish)?;
    if request.ttl.is_zero() {
        return Err("--ttl must be positive".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": request.sub,
        "tenant": request.tenant,
        "channels": request.channels,
        "publish": request.publish,
        "iat": now,
        "exp": now.saturating_add(request.ttl.as_secs().max(1)),
    });
    if let Some(aud) = &request.audience {
        claims["aud"] = aud.clone().into();
    }
    if let Some(iss) = &request.issuer {
        claims["iss"] = iss.clone().into();
    }
    let key = jwt::load_encoding_key(request.alg, &request.key_file)?;
    jwt::sign(request.alg, &key, &claims)
}

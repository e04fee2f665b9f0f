//! What a verified edge token grants: who (`sub`), in which tenant, until
//! when (`exp`), which channels it may subscribe to (`channels`) and which
//! topics it may publish to (`publish`).
//!
//! A grant is an exact name or a prefix ending in `*` (`user.*` grants
//! `user.1`; `*` alone grants every name of the tenant). Grants are checked
//! when the token is verified: a malformed grant refuses the whole token
//! rather than granting something by accident. Pure logic, no I/O.

use serde::Deserialize;

use crate::names::{Tenant, validate};

/// Longest `sub` accepted (it becomes a publish `key`, up to 256 bytes).
pub const MAX_SUB_LEN: usize = 256;
/// Most grants in one of `channels` or `publish`.
pub const MAX_GRANTS: usize = 256;

/// One grant: an exact name or a prefix (`user.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this text (possibly empty).
    Prefix(String),
}

impl Grant {
    /// Parses `text`: a valid name, or name characters followed by `*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('*') {
            Some(prefix) => {
                let ok = prefix.len() < 128
                    && prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    && prefix
                        .bytes()
                        .next()
                        .is_none_or(|b| b.is_ascii_alphanumeric());
                if ok {
                    Ok(Self::Prefix(prefix.to_owned()))
                } else {
                    Err(format!("grant '{text}' is not a name prefix followed by *"))
                }
            }
            None => validate(text)
                .map(|()| Self::Exact(text.to_owned()))
                .map_err(|e| format!("grant '{text}': {e}")),
        }
    }

    /// Whether this grant covers `name`.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// A list of grants; covers a name if any grant does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    /// Parses every grant of `list` (at most [`MAX_GRANTS`]).
    pub fn parse(claim: &str, list: &[String]) -> Result<Self, String> {
        if list.len() > MAX_GRANTS {
            return Err(format!("{claim}: at most {MAX_GRANTS} grants"));
        }
        list.iter()
            .map(|g| Grant::parse(g).map_err(|e| format!("{claim}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `name` is granted.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|g| g.matches(name))
    }
}

/// The claims as they come out of the token, before checking.
#[derive(Debug, Deserialize)]
pub(super) struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Verified claims of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user (subject).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The tenant every action of the connection is confined to.
    pub tenant: Tenant,
    /// Channels the client may subscribe to.
    pub channels: Grants,
    /// Topics the client may publish to.
    pub publish: Grants,
}

/// Why claims were refused: a required one is missing, or one is invalid.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClaimError {
    Missing(&'static str),
    Invalid(String),
}

impl RawClaims {
    pub(super) fn check(self) -> Result<Claims, ClaimError> {
        let sub = self.sub.ok_or(ClaimError::Missing("sub"))?;
        let exp = self.exp.ok_or(ClaimError::Missing("exp"))?;
        let tenant = self.tenant.ok_or(ClaimError::Missing("tenant"))?;
        if sub.is_empty() || sub.len() > MAX_SUB_LEN || sub.chars().any(char::is_control) {
            return Err(ClaimError::Invalid(format!(
                "sub must be 1 to {MAX_SUB_LEN} bytes without control characters"
            )));
        }
        let tenant = Tenant::parse(&tenant)
            .map_err(|e| ClaimError::Invalid(format!("tenant '{tenant}': {e}")))?;
        Ok(Claims {
            sub,
            exp,
            tenant,
            channels: Grants::parse("channels", &self.channels).map_err(ClaimError::Invalid)?,
            publish: Grants::parse("publish", &self.publish).map_err(ClaimError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_exactly_or_by_prefix() {
        let grants = Grants::parse(
            "channels",
            &["user.*".to_owned(), "news".to_owned(), "a-b_c.d".to_owned()],
        )
        .unwrap();
        assert!(grants.allows("user.1"));
        assert!(grants.allows("user.123.x"));
        assert!(grants.allows("news"));
        assert!(grants.allows("a-b_c.d"));
        assert!(!grants.allows("users"));
        assert!(!grants.allows("user"));
        assert!(!grants.allows("news2"));
        assert!(!grants.allows("new"));
        let all = Grants::parse("channels", &["*".to_owned()]).unwrap();
        assert!(all.allows("anything"));
        assert!(!Grants::default().allows("x"));
    }

    #[test]
    fn bad_grants_are_refused() {
        for bad in ["", "a*b*", "*a", "a:b*", "a b", "{x}", "-a*", ".*", "a**"] {
            assert!(Grant::parse(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_GRANTS).map(|i| format!("c{i}")).collect();
        assert!(Grants::parse("channels", &many).is_err());
    }

    #[test]
    fn required_claims() {
        let raw = |v: serde_json::Value| serde_json::from_value::<RawClaims>(v).unwrap().check();
        assert_eq!(
            raw(serde_json::json!({"exp": 1, "tenant": "t"})),
            Err(ClaimError::Missing("sub"))
        );
        assert_eq!(
            raw(serde_json::json!({"sub": "u", "tenant": "t"})),
            Err(ClaimError::Missing("exp"))
        );
        assert_eq!(
            raw(serde_json::json!({"sub": "u", "exp": 1})),
            Err(ClaimError::Missing("tenant"))
        );
        assert!(matches!(
            raw(serde_json::json!({"sub": "u", "exp": 1, "tenant": "a:b"})),
            Err(ClaimError::Invalid(_))
        ));
        assert!(matches!(
            raw(serde_json::json!({"sub": "u\n", "exp": 1, "tenant": "a"})),
            Err(ClaimError::Invalid(_))
        ));
        let ok = raw(serde_json::json!({"sub": "u1", "exp": 9, "tenant": "acme",
            "channels": ["user.u1"], "publish": ["chat.*"]}))
        .unwrap();
        assert!(ok.channels.allows("user.u1"));
        assert!(ok.publish.allows("chat.x"));
        assert!(!ok.publish.allows("user.u1"));
    }
}

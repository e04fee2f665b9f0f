//! Edge token verification with `jsonwebtoken`.
//!
//! The algorithm is the configured one (`--jwt-alg`) and nothing else: the
//! token's header only has to agree with it, so `alg: none` and algorithm
//! confusion (an HS256 token signed with the RS256 public key) are refused
//! like any other wrong algorithm. `exp` and `nbf` are checked with a small
//! leeway for clock skew; `aud` and `iss` when configured. The key is read
//! from `--jwt-key-file` at start and again on [`Verifier::reload`]
//! (SIGHUP), so keys rotate without a restart; a reload that fails keeps
//! the old key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};

use super::claims::{ClaimError, Claims, RawClaims};
use crate::config::{EdgeConfig, JwtAlg};
use crate::error::Error;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 8192;
/// Shortest HS256 secret (RFC 7518: at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Why a token was refused. Each has a stable code, also the `reason`
/// label of the auth-failure metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token was presented.
    Missing,
    /// Not a JWT (or too long, or not JSON inside).
    Malformed,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// The signature does not verify with the configured key.
    BadSignature,
    /// The header names another algorithm than the configured one.
    WrongAlgorithm,
    /// `aud` is not the configured audience.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has a wrong value.
    InvalidClaim(String),
}

impl Refusal {
    /// Every reason label, for documentation.
    pub const REASONS: [&'static str; 10] = [
        "token_missing",
        "token_malformed",
        "token_expired",
        "token_not_yet_valid",
        "invalid_signature",
        "invalid_algorithm",
        "invalid_audience",
        "invalid_issuer",
        "missing_claim",
        "invalid_claim",
    ];

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed => "token_malformed",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadSignature => "invalid_signature",
            Self::WrongAlgorithm => "invalid_algorithm",
            Self::WrongAudience => "invalid_audience",
            Self::WrongIssuer => "invalid_issuer",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// For a human (never echoes the token).
    pub fn detail(&self) -> String {
        match self {
            Self::Missing => "a token is required: Authorization: Bearer <jwt>, ?token=<jwt>, or a first WebSocket frame {\"op\":\"auth\",\"token\":…}".into(),
            Self::Malformed => "the token is not a well-formed JWT".into(),
            Self::Expired => "the token has expired".into(),
            Self::NotYetValid => "the token is not valid yet (nbf)".into(),
            Self::BadSignature => "the token's signature does not verify".into(),
            Self::WrongAlgorithm => "the token's algorithm is not the one this edge accepts".into(),
            Self::WrongAudience => "the token's audience (aud) is not accepted".into(),
            Self::WrongIssuer => "the token's issuer (iss) is not accepted".into(),
            Self::MissingClaim(claim) => format!("the token has no '{claim}' claim"),
            Self::InvalidClaim(why) => format!("invalid claim: {why}"),
        }
    }

    /// The 401 answer.
    pub fn into_error(self) -> Error {
        Error::Unauthenticated {
            code: self.code(),
            detail: self.detail(),
        }
    }
}

fn algorithm(alg: JwtAlg) -> Algorithm {
    match alg {
        JwtAlg::Hs256 => Algorithm::HS256,
        JwtAlg::Rs256 => Algorithm::RS256,
        JwtAlg::Es256 => Algorithm::ES256,
    }
}

/// Reads a key file (bounded).
fn read_key_file(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{flag} {} is larger than {MAX_KEY_FILE} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The HS256 secret of a key file: its bytes without surrounding
/// whitespace, at least [`MIN_SECRET_LEN`] of them, and not a PEM key (a
/// public key used as an HMAC secret is the algorithm-confusion attack).
fn secret(bytes: &[u8], path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let secret = bytes.trim_ascii();
    if secret.starts_with(b"-----BEGIN") {
        return Err(format!(
            "{flag} {} holds a PEM key, but HS256 needs a shared secret (use --jwt-alg RS256 or ES256 for a public key)",
            path.display()
        ));
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{flag} {}: an HS256 secret needs at least {MIN_SECRET_LEN} bytes",
            path.display()
        ));
    }
    Ok(secret.to_vec())
}

/// The verification key in `path` for `alg`.
pub fn load_decoding_key(alg: JwtAlg, path: &Path) -> Result<DecodingKey, String> {
    let bytes = read_key_file(path, "--jwt-key-file")?;
    let bad = |e: jsonwebtoken::errors::Error| {
        format!(
            "--jwt-key-file {} is not a {alg:?} public key PEM: {e}",
            path.display()
        )
    };
    match alg {
        JwtAlg::Hs256 => Ok(DecodingKey::from_secret(&secret(
            &bytes,
            path,
            "--jwt-key-file",
        )?)),
        JwtAlg::Rs256 => DecodingKey::from_rsa_pem(&bytes).map_err(bad),
        JwtAlg::Es256 => DecodingKey::from_ec_pem(&bytes).map_err(bad),
    }
}

/// The signing key in `path` for `alg` (the secret, or a private key PEM),
/// for `streamcar token`.
pub fn load_encoding_key(alg: JwtAlg, path: &Path) -> Result<EncodingKey, String> {
    let bytes = read_key_file(path, "--key-file")?;
    let bad = |e: jsonwebtoken::errors::Error| {
        format!(
            "--key-file {} is not a {alg:?} private key PEM (PKCS#8): {e}",
            path.display()
        )
    };
    match alg {
        JwtAlg::Hs256 => Ok(EncodingKey::from_secret(&secret(
            &bytes,
            path,
            "--key-file",
        )?)),
        JwtAlg::Rs256 => EncodingKey::from_rsa_pem(&bytes).map_err(bad),
        JwtAlg::Es256 => EncodingKey::from_ec_pem(&bytes).map_err(bad),
    }
}

/// Signs `claims` with `key` under `alg`.
pub fn sign(alg: JwtAlg, key: &EncodingKey, claims: &serde_json::Value) -> Result<String, String> {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm(alg)), claims, key)
        .map_err(|e| format!("cannot sign the token: {e}"))
}

/// Verifies edge tokens with the configured algorithm and key.
pub struct Verifier {
    alg: JwtAlg,
    key_file: PathBuf,
    key: RwLock<Arc<DecodingKey>>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.alg)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the key; fails on a missing or unusable key file.
    pub fn load(config: &EdgeConfig) -> Result<Self, String> {
        let key = load_decoding_key(config.alg, &config.key_file)?;
        let mut validation = Validation::new(algorithm(config.alg));
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // No audience configured: an `aud` claim is not checked.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            alg: config.alg,
            key_file: config.key_file.clone(),
            key: RwLock::new(Arc::new(key)),
            validation,
        })
    }

    /// Reads the key file again (key rotation); on failure the old key stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = load_decoding_key(self.alg, &self.key_file)?;
        *self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// Verifies `token` and checks its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::Malformed);
        }
        let key = self
            .key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let data = jsonwebtoken::decode::<RawClaims>(token, &key, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        data.claims.check().map_err(|e| match e {
            ClaimError::Missing(claim) => Refusal::MissingClaim(claim),
            ClaimError::Invalid(why) => Refusal::InvalidClaim(why),
        })
    }
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => Refusal::WrongAlgorithm,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "aud" => "aud",
            "iss" => "iss",
            "sub" => "sub",
            "nbf" => "nbf",
            _ => "a required claim",
        }),
        ErrorKind::InvalidClaimFormat(claim) => {
            Refusal::InvalidClaim(format!("'{claim}' has the wrong type"))
        }
        _ => Refusal::Malformed,
    }
}

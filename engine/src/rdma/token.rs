//! Peer authentication between the read role and the export role, with SeaweedFS's own read
//! key: the `key` of `[jwt.signing.read]` in its `security.toml` (`crate::security`).
//!
//! A reader puts a JWT (HS256, `{"exp": …, "iat": …}`, valid for [`TOKEN_LIFETIME`]) signed
//! with that key into every catalogue request; an exporter configured with the key answers
//! only a request whose token verifies and has not expired. No catalogue, hence no address
//! and no rkey, leaves the exporter before that. What this does not protect (UCX's software
//! transports let any connected peer reach the exporter's memory) is in
//! `docs/ucx-bindings.md`, "Security".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a reader's token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tolerated clock difference between reader and exporter hosts.
const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Longest token accepted.
const TOKEN_MAX_BYTES: usize = 4096;
/// The header of every token: `{"alg":"HS256","typ":"JWT"}`.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match the read key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

/// SeaweedFS's read signing key.
#[derive(Clone)]
pub struct ReadKey(Vec<u8>);

impl std::fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadKey(…)")
    }
}

impl ReadKey {
    pub fn from_bytes(key: &[u8]) -> ReadKey {
        ReadKey(key.to_vec())
    }

    /// The key's bytes (the stream transport's handshake proofs are keyed by them).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// A token valid from `now` for [`TOKEN_LIFETIME`].
    pub fn sign(&self, now: SystemTime) -> String {
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = format!("{{\"exp\":{},\"iat\":{issued}}}", issued + TOKEN_LIFETIME.as_secs());
        let signing_input = format!("{HEADER}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks a token: HS256 signature with this key (compared in constant time), then its
    /// expiry against `now`.
    pub fn verify(&self, token: Option<&str>, now: SystemTime) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        if token.len() > TOKEN_MAX_BYTES {
            return Err(TokenError::Malformed);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, claims) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?)
                .map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|_| TokenError::Malformed)?)
                .map_err(|_| TokenError::Malformed)?;
        let expires = claims.get("exp").and_then(|exp| exp.as_u64()).ok_or(TokenError::Malformed)?;
        let now_seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now_seconds > expires + CLOCK_SKEW.as_secs() {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_wrong_missing_and_expired_tokens() {
        let key = ReadKey::from_bytes(b"read-secret");
        let now = SystemTime::now();
        let token = key.sign(now);
        assert_eq!(key.verify(Some(&token), now), Ok(()));
        assert_eq!(ReadKey::from_bytes(b"other").verify(Some(&token), now), Err(TokenError::BadSignature));
        assert_eq!(key.verify(None, now), Err(TokenError::Missing));
        assert_eq!(key.verify(Some("a.b"), now), Err(TokenError::Malformed));
        let later = now + TOKEN_LIFETIME + CLOCK_SKEW + Duration::from_secs(2);
        assert_eq!(key.verify(Some(&token), later), Err(TokenError::Expired));
        // A token whose claims were changed after signing.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode("{\"exp\":99999999999}"));
        assert_eq!(key.verify(Some(&forged), now), Err(TokenError::BadSignature));
    }
}

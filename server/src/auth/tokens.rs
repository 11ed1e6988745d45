//! Access tokens (HS256 JWT) and refresh-token secrets.
//!
//! An access token names its user, tenant and role, and carries the user's token version:
//! bumping the version (logout-all, password change, deletion) invalidates every access token
//! issued before, without waiting for them to expire.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use switchboard_storage::Uuid;
use switchboard_storage::users::Role;

const ISSUER: &str = "switchboard";

/// What an access token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: Uuid,
    /// Tenant id.
    pub tid: Uuid,
    /// Role at issue time (the current role is read from the database per request).
    pub role: Role,
    /// Token version at issue time.
    pub ver: i32,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Issuer.
    pub iss: String,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    /// Keys for `secret`, issuing tokens valid for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// Lifetime of issued tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a token at `now` (seconds since the epoch).
    pub fn issue(&self, user: Uuid, tenant: Uuid, role: Role, version: i32, now: u64) -> String {
        let claims = Claims {
            sub: user,
            tid: tenant,
            role,
            ver: version,
            iat: now,
            exp: now + self.ttl.as_secs(),
            iss: ISSUER.into(),
        };
        // HS256 signing of a small serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of access-token claims")
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|t| t.claims)
    }
}

/// A new refresh-token secret: 32 random bytes, base64url.
pub fn new_refresh_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for a refresh token: its SHA-256.
pub fn refresh_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn issue_verify_and_reject() {
        let keys = TokenKeys::new(&[7; 32], Duration::from_secs(900));
        let (user, tenant) = (Uuid::now_v7(), Uuid::now_v7());
        let token = keys.issue(user, tenant, Role::Admin, 3, now());
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.sub, claims.tid, claims.role, claims.ver),
            (user, tenant, Role::Admin, 3)
        );
        assert_eq!(claims.exp - claims.iat, 900);

        let other = TokenKeys::new(&[8; 32], Duration::from_secs(900));
        assert!(other.verify(&token).is_none(), "wrong key");
        let expired = keys.issue(user, tenant, Role::Admin, 3, now() - 3600);
        assert!(keys.verify(&expired).is_none(), "expired");
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 3, 'A');
        assert!(keys.verify(&tampered).is_none(), "tampered");
        assert!(keys.verify("garbage").is_none());
    }

    #[test]
    fn refresh_secrets_are_random_and_hashed() {
        let (a, b) = (new_refresh_secret(), new_refresh_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(refresh_hash(&a), refresh_hash(&a));
        assert_ne!(refresh_hash(&a), refresh_hash(&b));
    }
}

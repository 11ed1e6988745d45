//! Password hashing with Argon2id (RFC 9106), OWASP's recommended parameters
//! (19 MiB, 2 passes, 1 lane). Hashing runs on the blocking pool: it takes tens of
//! milliseconds by design.

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};

fn argon2() -> Argon2<'static> {
    // 19 MiB, t=2, p=1 are valid parameters.
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` into a PHC string.
pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        argon2()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Checks `password` against a PHC string. A malformed hash verifies nothing.
pub async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        argon2()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A hash of a random password, verified against when the email is unknown so that a login
/// for a missing account takes as long as one for a real account.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut password = [0u8; 16];
        rand::fill(&mut password);
        argon2()
            .hash_password(&password)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hash = hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("correct horse".into(), hash.clone()).await);
        assert!(!verify("Correct horse".into(), hash).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
        assert!(!verify(String::new(), decoy_hash().to_owned()).await);
    }
}

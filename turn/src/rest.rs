//! Time-limited TURN credentials, compatible with coturn's `use-auth-secret` mode (the
//! "TURN REST API" draft, draft-uberti-behave-turn-rest-00 §2.2): the username is
//! `<expiry unix time>:<user>`, the password `base64(HMAC-SHA1(shared secret, username))`.
//! Anyone holding the shared secret can mint and check them without a database.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha1::Sha1;

/// A username and password for a TURN client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// The HMAC, base64.
    pub password: String,
}

/// Why a REST username was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not `<digits>:<user>`.
    Malformed,
    /// The expiry time has passed.
    Expired,
}

fn password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Mints a credential for `user` valid until `expires_at` (unix seconds).
pub fn mint(secret: &[u8], user: &str, expires_at: u64) -> Credential {
    let username = format!("{expires_at}:{user}");
    let password = password(secret, &username);
    Credential { username, password }
}

/// The password that goes with a REST `username`, if it is well formed and unexpired at
/// `now` (unix seconds). The TURN server uses it as the long-term credential password.
pub fn password_for(secret: &[u8], username: &str, now: u64) -> Result<String, Refusal> {
    let (expiry, user) = username.split_once(':').ok_or(Refusal::Malformed)?;
    if user.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| Refusal::Malformed)?;
    if expiry <= now {
        return Err(Refusal::Expired);
    }
    Ok(password(secret, username))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python: base64(hmac.new(b"benchsecret",
    /// b"1795305600:alice", sha1).digest()).
    #[test]
    fn matches_coturn_formula() {
        let credential = mint(b"benchsecret", "alice", 1_795_305_600);
        assert_eq!(credential.username, "1795305600:alice");
        assert_eq!(credential.password, "iko7bDFUMNoC3kquPpGk3n8KMzU=");
    }

    #[test]
    fn checks_expiry_and_shape() {
        let credential = mint(b"s", "bob", 1_000);
        assert_eq!(
            password_for(b"s", &credential.username, 999),
            Ok(credential.password)
        );
        assert_eq!(
            password_for(b"s", &credential.username, 1_000),
            Err(Refusal::Expired)
        );
        for bad in ["bob", ":bob", "12:", "x1:bob", "-5:bob"] {
            assert_eq!(password_for(b"s", bad, 0), Err(Refusal::Malformed), "{bad}");
        }
        assert_ne!(
            password_for(b"other", &credential.username, 0).unwrap(),
            mint(b"s", "bob", 1_000).password
        );
    }
}

//! Sealing secrets before they are stored: AES-256-GCM with a random 96-bit nonce.
//!
//! A sealed value is `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! Each value is bound to a context string (for example `extensions/<id>/sip_secret`) passed as
//! associated data, so a ciphertext copied into another row or column does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::Error;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
/// Length of a secret key in bytes.
pub const KEY_LEN: usize = 32;

/// Seals and opens secrets with one 256-bit key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box for `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: Aes256Gcm::new(&(*key).into()),
        }
    }

    /// A fresh random key.
    pub fn generate_key() -> [u8; KEY_LEN] {
        let mut key = [0; KEY_LEN];
        rand::fill(&mut key);
        key
    }

    /// Encrypts `plaintext`, binding it to `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and a 96-bit nonce cannot fail; only absurd lengths would.
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .expect("AES-GCM encryption of a bounded secret");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts a value sealed under `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let (&version, rest) = sealed.split_first().ok_or(Error::Decrypt)?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return Err(Error::Decrypt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Decrypt)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Error::Decrypt)
    }

    /// [`Self::open`] for text secrets.
    pub fn open_string(&self, context: &str, sealed: &[u8]) -> Result<String, Error> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| Error::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let secret_box = SecretBox::new(&SecretBox::generate_key());
        let sealed = secret_box.seal("extensions/1/sip_secret", b"hunter22");
        assert_eq!(
            secret_box.open("extensions/1/sip_secret", &sealed).unwrap(),
            b"hunter22"
        );
        assert!(
            !sealed.windows(8).any(|w| w == b"hunter22"),
            "plaintext leaked"
        );
        assert!(matches!(
            secret_box.open("extensions/2/sip_secret", &sealed),
            Err(Error::Decrypt)
        ));
    }

    #[test]
    fn wrong_key_and_tampering_fail_cleanly() {
        let a = SecretBox::new(&SecretBox::generate_key());
        let b = SecretBox::new(&SecretBox::generate_key());
        let mut sealed = a.seal("ctx", b"secret");
        assert!(b.open("ctx", &sealed).is_err());
        *sealed.last_mut().unwrap() ^= 1;
        assert!(a.open("ctx", &sealed).is_err());
        for junk in [&[][..], &[1], &[1; 20], &[2; 40]] {
            assert!(a.open("ctx", junk).is_err());
        }
    }

    #[test]
    fn nonces_differ() {
        let secret_box = SecretBox::new(&SecretBox::generate_key());
        assert_ne!(secret_box.seal("c", b"x"), secret_box.seal("c", b"x"));
    }
}

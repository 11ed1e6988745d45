//! Time-based one-time passwords (RFC 6238) over HOTP (RFC 4226): HMAC-SHA1, 30-second
//! steps, 6 digits, one step of tolerance either side for clock drift. Secrets are 20 random
//! bytes, shown to users in base32 (RFC 4648) inside an `otpauth://` URI.

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha1::Sha1;

/// Seconds per time step (RFC 6238 §4.1, the recommended X).
pub const STEP_SECS: u64 = 30;
const DIGITS: u32 = 6;

/// A fresh 160-bit secret (RFC 4226 §4 recommends 160 bits).
pub fn new_secret() -> [u8; 20] {
    let mut secret = [0u8; 20];
    rand::fill(&mut secret);
    secret
}

/// HOTP value for `counter` (RFC 4226 §5.3, dynamic truncation).
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let code = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    code % 10u32.pow(DIGITS)
}

/// The code for unix time `now_secs`.
pub fn code_at(secret: &[u8], now_secs: u64) -> u32 {
    hotp(secret, now_secs / STEP_SECS)
}

/// If `code` is valid at `now_secs` (±1 step), the step it belongs to.
pub fn check(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u32 = code.parse().ok()?;
    let step = now_secs / STEP_SECS;
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|&s| constant_time_eq(hotp(secret, s), code))
}

fn constant_time_eq(a: u32, b: u32) -> bool {
    (a ^ b) == 0
}

/// RFC 4648 base32 without padding, as authenticator apps expect.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://` URI that authenticator apps scan.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4226 Appendix D test values for the secret "12345678901234567890".
    #[test]
    fn rfc4226_vectors() {
        let secret = b"12345678901234567890";
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(secret, counter as u64), *code);
        }
    }

    /// RFC 6238 Appendix B, SHA-1 rows (last 6 of the 8 digits).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code_at(secret, time), code % 1_000_000, "t={time}");
        }
    }

    #[test]
    fn check_allows_one_step_of_drift() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let code = format!("{:06}", code_at(&secret, now));
        assert_eq!(check(&secret, &code, now), Some(now / STEP_SECS));
        assert_eq!(
            check(&secret, &code, now + STEP_SECS),
            Some(now / STEP_SECS)
        );
        assert_eq!(check(&secret, &code, now + 3 * STEP_SECS), None);
        assert_eq!(check(&secret, "12345", now), None);
        assert_eq!(check(&secret, "abcdef", now), None);
    }

    #[test]
    fn base32_matches_rfc4648() {
        for (input, output) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), output);
        }
        let uri = otpauth_uri("Switch board", "a@b.c", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Switch%20board:a@b.c?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Switch%20board&algorithm=SHA1&digits=6&period=30"
        );
    }
}

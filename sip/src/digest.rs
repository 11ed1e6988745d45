//! HTTP digest authentication for SIP (RFC 3261 §22, updated by RFC 8760): MD5, SHA-256 and
//! SHA-512/256, `qop=auth`, as server and as client.
//!
//! The server side issues stateless nonces: `base64url(issued_ms ‖ random ‖ MAC)`, where the
//! MAC is HMAC-SHA-256 over the time, the random part and the realm under a server key. A nonce
//! that verifies but is older than the lifetime is answered with a fresh challenge marked
//! `stale=true` (RFC 7616 §3.3), so clients retry without asking the user. Replays are refused
//! by remembering, per nonce, the highest nonce-count (`nc`) seen: every use must increase it
//! (RFC 7616 §3.4.5). That table is bounded; when full, the oldest nonces are forgotten and
//! their later uses answered `stale`.
//!
//! Sans-IO: the current time (`now_ms`, milliseconds since the Unix epoch) and random bytes are
//! arguments.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::Md5;
use sha2::{Digest as _, Sha256, Sha512_256};

use crate::header::split_outside_quotes;

/// A digest algorithm (RFC 8760 §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// MD5: still what most phones use.
    Md5,
    /// SHA-256.
    Sha256,
    /// SHA-512/256.
    Sha512_256,
}

impl Algorithm {
    /// The token in `algorithm=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
            Self::Sha512_256 => "SHA-512-256",
        }
    }

    /// Parses an `algorithm=` token (case-insensitive). `-sess` variants are not supported.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Md5, Self::Sha256, Self::Sha512_256]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(text))
    }

    /// Lowercase hex of the hash of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Self::Md5 => hex(&Md5::digest(data)),
            Self::Sha256 => hex(&Sha256::digest(data)),
            Self::Sha512_256 => hex(&Sha512_256::digest(data)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `H(username:realm:password)`.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// Short-lived SIP credentials for a browser, in the style of TURN REST credentials
/// (draft-uberti-behave-turn-rest): the username is `<expires unix seconds>:<extension
/// number>` and the password is `base64url(HMAC-SHA-256(key, username ‖ 0 ‖ extension_id ‖ 0
/// ‖ extension_secret))`. The server recomputes it from the username alone, so nothing is
/// stored; changing the extension's own password revokes every credential derived from it.
pub mod ephemeral {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, KeyInit as _, Mac as _};
    use sha2::Sha256;

    /// The username for `number` valid until `expires` (unix seconds).
    pub fn username(expires: u64, number: &str) -> String {
        format!("{expires}:{number}")
    }

    /// Splits a username of this form into its expiry and extension number.
    pub fn parse(username: &str) -> Option<(u64, &str)> {
        let (expires, number) = username.split_once(':')?;
        let expires = expires.parse().ok()?;
        (!number.is_empty()).then_some((expires, number))
    }

    /// The password for `username`, bound to the extension's id and current secret.
    pub fn password(key: &[u8], username: &str, extension_id: &str, secret: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        for part in [username, extension_id, secret] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// The `response` value for `qop=auth` (RFC 7616 §3.4.1): `H(HA1:nonce:nc:cnonce:auth:HA2)`
/// with `HA2 = H(method:uri)`.
pub fn response(
    algorithm: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha2 = algorithm.hex(format!("{method}:{uri}").as_bytes());
    algorithm.hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}").as_bytes())
}

/// A challenge, the value of `WWW-Authenticate` / `Proxy-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Realm.
    pub realm: String,
    /// Nonce.
    pub nonce: String,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Opaque value to echo, if any.
    pub opaque: Option<String>,
    /// Whether the previous nonce merely expired.
    pub stale: bool,
    /// Whether `qop=auth` is offered (always, when we challenge).
    pub qop_auth: bool,
}

impl Challenge {
    /// The header value.
    pub fn to_header(&self) -> String {
        let mut out = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.as_str()
        );
        if self.qop_auth {
            out.push_str(", qop=\"auth\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(out, ", opaque=\"{opaque}\"");
        }
        if self.stale {
            out.push_str(", stale=true");
        }
        out
    }

    /// Parses a `WWW-Authenticate` / `Proxy-Authenticate` value (as a client).
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let params = auth_params(value)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let algorithm = match get("algorithm") {
            Some(a) => Algorithm::parse(a).ok_or(DigestError::UnsupportedAlgorithm)?,
            None => Algorithm::Md5,
        };
        let qop_auth =
            get("qop").is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
        Ok(Self {
            realm: get("realm")
                .ok_or(DigestError::Missing("realm"))?
                .to_owned(),
            nonce: get("nonce")
                .ok_or(DigestError::Missing("nonce"))?
                .to_owned(),
            algorithm,
            opaque: get("opaque").map(str::to_owned),
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            qop_auth,
        })
    }

    /// Answers this challenge (as a client): the `Authorization` / `Proxy-Authorization`
    /// value. `cnonce` should be random; `nc` counts uses of this nonce from 1.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let ha1 = ha1(self.algorithm, username, &self.realm, password);
        let mut out = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.as_str()
        );
        if self.qop_auth {
            let nc = format!("{nc:08x}");
            let response = response(self.algorithm, &ha1, method, uri, &self.nonce, &nc, cnonce);
            let _ = write!(
                out,
                ", response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
            );
        } else {
            // RFC 2069 compatibility: response = H(HA1:nonce:HA2).
            let ha2 = self.algorithm.hex(format!("{method}:{uri}").as_bytes());
            let response = self
                .algorithm
                .hex(format!("{ha1}:{}:{ha2}", self.nonce).as_bytes());
            let _ = write!(out, ", response=\"{response}\"");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(out, ", opaque=\"{opaque}\"");
        }
        out
    }
}

/// Credentials from an `Authorization` / `Proxy-Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Realm.
    pub realm: String,
    /// Nonce echoed from the challenge.
    pub nonce: String,
    /// The digest-uri (the Request-URI as the client saw it).
    pub uri: String,
    /// The response hash, lowercase hex.
    pub response: String,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Client nonce.
    pub cnonce: Option<String>,
    /// Nonce count, 8 hex digits.
    pub nc: Option<String>,
    /// Whether `qop=auth` was used.
    pub qop_auth: bool,
    /// Opaque value echoed, if any.
    pub opaque: Option<String>,
}

/// Why credentials were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// Not a `Digest` header, or unbalanced quotes.
    #[error("malformed digest header")]
    Malformed,
    /// A required parameter is missing.
    #[error("digest parameter `{0}` is missing")]
    Missing(&'static str),
    /// An algorithm we don't implement.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The nonce is not one of ours.
    #[error("unknown nonce")]
    UnknownNonce,
    /// The nonce is ours but too old: challenge again with `stale=true`.
    #[error("stale nonce")]
    Stale,
    /// The nonce-count did not increase: a replay.
    #[error("replayed nonce-count")]
    Replay,
    /// The realm or digest-uri does not match the request.
    #[error("realm or uri mismatch")]
    Mismatch,
    /// Wrong password (the response hash differs).
    #[error("wrong credentials")]
    BadResponse,
}

/// Splits `Digest a=b, c="d"` into `(name, unquoted value)` pairs.
fn auth_params(value: &str) -> Result<Vec<(String, String)>, DigestError> {
    let value = value.trim();
    let scheme_end = value.find([' ', '\t']).ok_or(DigestError::Malformed)?;
    if !value[..scheme_end].eq_ignore_ascii_case("Digest") {
        return Err(DigestError::Malformed);
    }
    let mut out = Vec::new();
    for part in
        split_outside_quotes(&value[scheme_end..], b',').map_err(|_| DigestError::Malformed)?
    {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, raw) = part.split_once('=').ok_or(DigestError::Malformed)?;
        let raw = raw.trim();
        let unquoted = match raw.strip_prefix('"') {
            Some(inner) => unquote(inner.strip_suffix('"').ok_or(DigestError::Malformed)?),
            None => raw.to_owned(),
        };
        out.push((name.trim().to_ascii_lowercase(), unquoted));
    }
    Ok(out)
}

fn unquote(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Credentials {
    /// Parses an `Authorization` / `Proxy-Authorization` value.
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let params = auth_params(value)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let algorithm = match get("algorithm") {
            Some(a) => Algorithm::parse(&a).ok_or(DigestError::UnsupportedAlgorithm)?,
            None => Algorithm::Md5,
        };
        let qop_auth = match get("qop") {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => true,
            Some(_) => return Err(DigestError::Malformed),
            None => false,
        };
        let credentials = Self {
            username: get("username").ok_or(DigestError::Missing("username"))?,
            realm: get("realm").ok_or(DigestError::Missing("realm"))?,
            nonce: get("nonce").ok_or(DigestError::Missing("nonce"))?,
            uri: get("uri").ok_or(DigestError::Missing("uri"))?,
            response: get("response")
                .ok_or(DigestError::Missing("response"))?
                .to_ascii_lowercase(),
            algorithm,
            cnonce: get("cnonce"),
            nc: get("nc"),
            qop_auth,
            opaque: get("opaque"),
        };
        if credentials.qop_auth {
            let nc = credentials
                .nc
                .as_deref()
                .ok_or(DigestError::Missing("nc"))?;
            if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DigestError::Malformed);
            }
            credentials
                .cnonce
                .as_deref()
                .ok_or(DigestError::Missing("cnonce"))?;
        }
        Ok(credentials)
    }

    /// Whether the response matches `ha1` for `method` (constant-time comparison).
    pub fn check(&self, ha1: &str, method: &str) -> bool {
        let expected = match (&self.nc, &self.cnonce) {
            (Some(nc), Some(cnonce)) if self.qop_auth => response(
                self.algorithm,
                ha1,
                method,
                &self.uri,
                &self.nonce,
                nc,
                cnonce,
            ),
            _ => {
                let ha2 = self
                    .algorithm
                    .hex(format!("{method}:{}", self.uri).as_bytes());
                self.algorithm
                    .hex(format!("{ha1}:{}:{ha2}", self.nonce).as_bytes())
            }
        };
        constant_time_eq(expected.as_bytes(), self.response.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Length of the random part of a nonce.
pub const NONCE_RANDOM_LEN: usize = 12;
const MAC_LEN: usize = 16;

/// Issues and checks nonces for one server key. See the module docs.
#[derive(Debug)]
pub struct Nonces {
    key: [u8; 32],
    lifetime_ms: u64,
    max_tracked: usize,
    /// Highest nonce-count seen per nonce, and the order nonces were first seen in.
    counts: HashMap<String, u32>,
    order: VecDeque<String>,
}

impl Nonces {
    /// Nonces under `key`, valid for `lifetime_ms`, remembering nonce-counts for at most
    /// `max_tracked` nonces.
    pub fn new(key: [u8; 32], lifetime_ms: u64, max_tracked: usize) -> Self {
        Self {
            key,
            lifetime_ms,
            max_tracked: max_tracked.max(1),
            counts: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn mac(&self, issued_ms: u64, random: &[u8], realm: &str) -> [u8; MAC_LEN] {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&issued_ms.to_be_bytes());
        mac.update(random);
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A fresh nonce for `realm`.
    pub fn issue(&self, realm: &str, now_ms: u64, random: [u8; NONCE_RANDOM_LEN]) -> String {
        let mut raw = Vec::with_capacity(8 + NONCE_RANDOM_LEN + MAC_LEN);
        raw.extend_from_slice(&now_ms.to_be_bytes());
        raw.extend_from_slice(&random);
        raw.extend_from_slice(&self.mac(now_ms, &random, realm));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A challenge for `realm` with a fresh nonce.
    pub fn challenge(
        &self,
        realm: &str,
        algorithm: Algorithm,
        stale: bool,
        now_ms: u64,
        random: [u8; NONCE_RANDOM_LEN],
    ) -> Challenge {
        Challenge {
            realm: realm.to_owned(),
            nonce: self.issue(realm, now_ms, random),
            algorithm,
            opaque: None,
            stale,
            qop_auth: true,
        }
    }

    /// Verifies `credentials` for a request with `method` in `realm`, given the user's HA1 for
    /// the credentials' algorithm. On success the nonce-count is recorded.
    pub fn verify(
        &mut self,
        credentials: &Credentials,
        realm: &str,
        method: &str,
        ha1: &str,
        now_ms: u64,
    ) -> Result<(), DigestError> {
        if credentials.realm != realm {
            return Err(DigestError::Mismatch);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(&credentials.nonce)
            .map_err(|_| DigestError::UnknownNonce)?;
        if raw.len() != 8 + NONCE_RANDOM_LEN + MAC_LEN {
            return Err(DigestError::UnknownNonce);
        }
        let issued_ms =
            u64::from_be_bytes(raw[..8].try_into().map_err(|_| DigestError::UnknownNonce)?);
        let random = &raw[8..8 + NONCE_RANDOM_LEN];
        if !constant_time_eq(
            &self.mac(issued_ms, random, realm),
            &raw[8 + NONCE_RANDOM_LEN..],
        ) {
            return Err(DigestError::UnknownNonce);
        }
        if !credentials.check(ha1, method) {
            return Err(DigestError::BadResponse);
        }
        if now_ms.saturating_sub(issued_ms) > self.lifetime_ms
            || issued_ms > now_ms.saturating_add(60_000)
        {
            return Err(DigestError::Stale);
        }
        if !credentials.qop_auth {
            // Without qop there is no nonce-count: allow one use per nonce.
            return self.record(&credentials.nonce, 1);
        }
        let nc = credentials
            .nc
            .as_deref()
            .and_then(|nc| u32::from_str_radix(nc, 16).ok())
            .ok_or(DigestError::Malformed)?;
        self.record(&credentials.nonce, nc)
    }

    fn record(&mut self, nonce: &str, nc: u32) -> Result<(), DigestError> {
        if let Some(last) = self.counts.get_mut(nonce) {
            if nc <= *last {
                return Err(DigestError::Replay);
            }
            *last = nc;
            return Ok(());
        }
        if nc == 0 {
            return Err(DigestError::Replay);
        }
        while self.order.len() >= self.max_tracked {
            if let Some(oldest) = self.order.pop_front() {
                self.counts.remove(&oldest);
            }
        }
        self.counts.insert(nonce.to_owned(), nc);
        self.order.push_back(nonce.to_owned());
        Ok(())
    }

    /// Nonces whose counts are remembered (bounded by `max_tracked`).
    pub fn tracked(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_credentials_round_trip_and_bind_to_the_extension() {
        let user = ephemeral::username(1_800_000_000, "1001");
        assert_eq!(user, "1800000000:1001");
        assert_eq!(ephemeral::parse(&user), Some((1_800_000_000, "1001")));
        for bad in ["1001", ":1001", "x:1001", "1800000000:"] {
            assert_eq!(ephemeral::parse(bad), None, "{bad}");
        }
        let key = [7u8; 32];
        let password = ephemeral::password(&key, &user, "ext-a", "secret");
        assert_eq!(password.len(), 43);
        assert_eq!(
            password,
            ephemeral::password(&key, &user, "ext-a", "secret")
        );
        // Another expiry, extension, secret or key gives another password.
        let other = ephemeral::username(1_800_000_001, "1001");
        for different in [
            ephemeral::password(&key, &other, "ext-a", "secret"),
            ephemeral::password(&key, &user, "ext-b", "secret"),
            ephemeral::password(&key, &user, "ext-a", "rotated"),
            ephemeral::password(&[8u8; 32], &user, "ext-a", "secret"),
        ] {
            assert_ne!(password, different);
        }
    }

    /// RFC 2617 §3.5.
    #[test]
    fn rfc2617_example() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &ha1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    /// RFC 7616 §3.9.1, MD5 and SHA-256.
    #[test]
    fn rfc7616_examples() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (algorithm, expected) in [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let ha1 = ha1(
                algorithm,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
            );
            assert_eq!(
                response(
                    algorithm,
                    &ha1,
                    "GET",
                    "/dir/index.html",
                    nonce,
                    "00000001",
                    cnonce
                ),
                expected
            );
            let header = format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", algorithm={}, \
                 nonce=\"{nonce}\", nc=00000001, cnonce=\"{cnonce}\", qop=auth, response=\"{expected}\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
                algorithm.as_str()
            );
            let credentials = Credentials::parse(&header).unwrap();
            assert!(credentials.check(&ha1, "GET"));
            assert!(!credentials.check(&ha1, "POST"));
        }
    }

    #[test]
    fn server_and_client_agree_and_replays_fail() {
        let mut nonces = Nonces::new([7; 32], 300_000, 1_000);
        let challenge =
            nonces.challenge("example.com", Algorithm::Sha256, false, 1_000_000, [1; 12]);
        let parsed = Challenge::parse(&challenge.to_header()).unwrap();
        assert_eq!(parsed, challenge);
        let ha1 = ha1(Algorithm::Sha256, "1001", "example.com", "pw");
        let answer = |nc| {
            Credentials::parse(&parsed.answer(
                "1001",
                "pw",
                "REGISTER",
                "sip:example.com",
                "abc",
                nc,
            ))
            .unwrap()
        };
        assert_eq!(
            nonces.verify(&answer(1), "example.com", "REGISTER", &ha1, 1_001_000),
            Ok(())
        );
        assert_eq!(
            nonces.verify(&answer(1), "example.com", "REGISTER", &ha1, 1_001_000),
            Err(DigestError::Replay)
        );
        assert_eq!(
            nonces.verify(&answer(2), "example.com", "REGISTER", &ha1, 1_002_000),
            Ok(())
        );
        // Wrong password, wrong method, wrong realm, forged nonce, expired nonce.
        let wrong = Credentials::parse(&parsed.answer(
            "1001",
            "nope",
            "REGISTER",
            "sip:example.com",
            "abc",
            3,
        ))
        .unwrap();
        assert_eq!(
            nonces.verify(&wrong, "example.com", "REGISTER", &ha1, 1_002_000),
            Err(DigestError::BadResponse)
        );
        assert_eq!(
            nonces.verify(&answer(3), "example.com", "INVITE", &ha1, 1_002_000),
            Err(DigestError::BadResponse)
        );
        assert_eq!(
            nonces.verify(&answer(3), "other.com", "REGISTER", &ha1, 1_002_000),
            Err(DigestError::Mismatch)
        );
        let mut forged = answer(3);
        forged.nonce = Nonces::new([8; 32], 300_000, 10).issue("example.com", 1_000_000, [1; 12]);
        assert_eq!(
            nonces.verify(&forged, "example.com", "REGISTER", &ha1, 1_002_000),
            Err(DigestError::UnknownNonce)
        );
        assert_eq!(
            nonces.verify(&answer(4), "example.com", "REGISTER", &ha1, 1_400_000),
            Err(DigestError::Stale)
        );
        let stale = nonces.challenge("example.com", Algorithm::Sha256, true, 1_400_000, [2; 12]);
        assert!(stale.to_header().ends_with("stale=true"));
    }

    #[test]
    fn tracking_is_bounded() {
        let mut nonces = Nonces::new([7; 32], 300_000, 3);
        let ha1 = ha1(Algorithm::Md5, "u", "r", "p");
        for i in 0..10u8 {
            let challenge = nonces.challenge("r", Algorithm::Md5, false, 1_000, [i; 12]);
            let credentials =
                Credentials::parse(&challenge.answer("u", "p", "REGISTER", "sip:r", "c", 1))
                    .unwrap();
            nonces
                .verify(&credentials, "r", "REGISTER", &ha1, 2_000)
                .unwrap();
            assert!(nonces.tracked() <= 3);
        }
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Digest username=\"a\"",
            "Digest username=\"a, realm=\"r\"",
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth",
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", algorithm=SHA-1",
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, nc=1, cnonce=\"c\"",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
        let quoted = Credentials::parse(
            "Digest username=\"a\\\"b\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"AB\"",
        )
        .unwrap();
        assert_eq!(
            (quoted.username.as_str(), quoted.response.as_str()),
            ("a\"b", "ab")
        );
    }
}

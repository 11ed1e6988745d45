//! URIs: `sip:` and `sips:` (RFC 3261 §19.1, grammar in §25.1), `tel:` (RFC 3966), and any
//! other absolute URI kept as text.
//!
//! User, password, parameters and headers keep their escaped form, so a URI prints back
//! byte for byte; [`unescape`] gives the decoded text. Comparison follows §19.1.4 in
//! [`SipUri::equivalent`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a URI was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme:`.
    #[error("URI has no scheme")]
    NoScheme,
    /// A character the grammar does not allow in this part.
    #[error("invalid character in URI {0}")]
    InvalidChar(&'static str),
    /// Missing or malformed host.
    #[error("invalid host in URI")]
    InvalidHost,
    /// Port not a number up to 65535.
    #[error("invalid port in URI")]
    InvalidPort,
    /// A `%` not followed by two hex digits.
    #[error("invalid %-escape in URI")]
    InvalidEscape,
}

/// A host: a domain name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, as written.
    Domain(String),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written in brackets).
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Parses a host: a domain name, an IPv4 address, or an IPv6 reference in brackets.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(UriError::InvalidHost)?;
            // RFC 3261's IPv6address ABNF wrongly allows `:::` before an embedded IPv4 address;
            // peers built from it send `[2001:db8:::192.0.2.1]`, which RFC 5118 §4.8 asks us to
            // accept as the `::` form.
            let fixed;
            let inner = if inner.contains(":::") {
                fixed = inner.replacen(":::", "::", 1);
                fixed.as_str()
            } else {
                inner
            };
            return inner
                .parse()
                .map(Self::Ipv6)
                .map_err(|_| UriError::InvalidHost);
        }
        if text.is_empty() {
            return Err(UriError::InvalidHost);
        }
        let dotted_digits =
            text.bytes().all(|b| b.is_ascii_digit() || b == b'.') && text.contains('.');
        if dotted_digits && let Ok(ip) = text.parse() {
            return Ok(Self::Ipv4(ip));
        }
        // hostname = *( domainlabel "." ) toplabel [ "." ]; labels of alphanumerics and "-".
        // Underscores are accepted too: they are common in the wild (SRV-style names).
        let labels = text.strip_suffix('.').unwrap_or(text);
        let valid = labels.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if !valid {
            return Err(UriError::InvalidHost);
        }
        Ok(Self::Domain(text.to_owned()))
    }

    /// Hosts compare case-insensitively (§19.1.4).
    pub fn eq_ignore_case(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Domain(a), Self::Domain(b)) => a.eq_ignore_ascii_case(b),
            _ => self == other,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(name) => f.write_str(name),
            Self::Ipv4(ip) => write!(f, "{ip}"),
            Self::Ipv6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// User part, escaped as received.
    pub user: Option<String>,
    /// Password part, escaped as received (deprecated by RFC 3261 but legal).
    pub password: Option<String>,
    /// Host.
    pub host: Host,
    /// Port, if given.
    pub port: Option<u16>,
    /// `;name[=value]` parameters in order, escaped as received.
    pub params: Vec<(String, Option<String>)>,
    /// `?name=value&...` headers in order, escaped as received.
    pub headers: Vec<(String, String)>,
}

impl SipUri {
    /// A URI `sip:[user@]host[:port]`.
    pub fn new(user: Option<&str>, host: Host, port: Option<u16>) -> Self {
        Self {
            secure: false,
            user: user.map(str::to_owned),
            password: None,
            host,
            port,
            params: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The value of parameter `name` (case-insensitive): `Some(None)` for a flag parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The `transport` parameter, lowercased.
    pub fn transport(&self) -> Option<String> {
        self.param("transport")
            .flatten()
            .map(str::to_ascii_lowercase)
    }

    /// The user part, unescaped.
    pub fn user_unescaped(&self) -> Option<String> {
        self.user
            .as_deref()
            .map(|u| unescape(u).unwrap_or_else(|_| u.to_owned()))
    }

    /// URI equivalence per RFC 3261 §19.1.4: scheme, user and password compared exactly after
    /// unescaping; host case-insensitively; port, and the `user`, `ttl`, `method`, `maddr` and
    /// `transport` parameters must match when present in either; other parameters must match
    /// when present in both; headers must match.
    pub fn equivalent(&self, other: &Self) -> bool {
        let unesc = |s: &Option<String>| {
            s.as_deref()
                .map(|s| unescape(s).unwrap_or_else(|_| s.to_owned()))
        };
        if self.secure != other.secure
            || unesc(&self.user) != unesc(&other.user)
            || unesc(&self.password) != unesc(&other.password)
            || !self.host.eq_ignore_case(&other.host)
            || self.port != other.port
        {
            return false;
        }
        let norm = |v: Option<&str>| {
            v.map(|v| {
                unescape(v)
                    .unwrap_or_else(|_| v.to_owned())
                    .to_ascii_lowercase()
            })
        };
        for special in ["user", "ttl", "method", "maddr", "transport"] {
            if self.param(special).map(norm) != other.param(special).map(norm) {
                return false;
            }
        }
        for (name, value) in &self.params {
            if let Some(theirs) = other.param(name)
                && norm(value.as_deref()) != norm(theirs)
            {
                return false;
            }
        }
        let headers = |u: &Self| {
            let mut h: Vec<(String, String)> = u
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_ascii_lowercase(),
                        unescape(v).unwrap_or_else(|_| v.clone()),
                    )
                })
                .collect();
            h.sort();
            h
        };
        headers(self) == headers(other)
    }

    fn parse_after_scheme(secure: bool, rest: &str) -> Result<Self, UriError> {
        let (user, password, hostpart) = match rest.find('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if user.is_empty() || !user.bytes().all(is_user_char) {
                    return Err(UriError::InvalidChar("user"));
                }
                check_escapes(user)?;
                if let Some(p) = password {
                    if !p.bytes().all(is_password_char) {
                        return Err(UriError::InvalidChar("password"));
                    }
                    check_escapes(p)?;
                }
                (
                    Some(user.to_owned()),
                    password.map(str::to_owned),
                    &rest[at + 1..],
                )
            }
            None => (None, None, rest),
        };
        let (hostport, after) = match hostpart.find([';', '?']) {
            Some(i) => hostpart.split_at(i),
            None => (hostpart, ""),
        };
        let (host, port) = split_hostport(hostport)?;
        let (params_text, headers_text) = match after.find('?') {
            Some(i) => (&after[..i], Some(&after[i + 1..])),
            None => (after, None),
        };
        let mut params = Vec::new();
        for param in params_text.split(';').skip(1) {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (param, None),
            };
            if name.is_empty()
                || !name.bytes().all(is_param_char)
                || !value.is_none_or(|v| !v.is_empty() && v.bytes().all(is_param_char))
            {
                return Err(UriError::InvalidChar("parameter"));
            }
            check_escapes(name)?;
            if let Some(v) = value {
                check_escapes(v)?;
            }
            params.push((name.to_owned(), value.map(str::to_owned)));
        }
        let mut headers = Vec::new();
        if let Some(text) = headers_text {
            for header in text.split('&') {
                let (name, value) = header
                    .split_once('=')
                    .ok_or(UriError::InvalidChar("header"))?;
                if name.is_empty()
                    || !name.bytes().all(is_header_char)
                    || !value.bytes().all(is_header_char)
                {
                    return Err(UriError::InvalidChar("header"));
                }
                check_escapes(name)?;
                check_escapes(value)?;
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        Ok(Self {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(password) = &self.password {
                write!(f, ":{password}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            write!(f, "{}{name}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// A URI of any scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:` (RFC 3966), kept as text after the scheme.
    Tel(String),
    /// Another absolute URI (RFC 3986), kept as text.
    Other {
        /// Scheme, lowercased.
        scheme: String,
        /// Everything after `scheme:`.
        rest: String,
    },
}

impl Uri {
    /// Parses an absolute URI.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let colon = text.find(':').ok_or(UriError::NoScheme)?;
        let (scheme, rest) = (&text[..colon], &text[colon + 1..]);
        let scheme_ok = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err(UriError::NoScheme);
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            return SipUri::parse_after_scheme(scheme.len() == 4, rest).map(Self::Sip);
        }
        if rest.is_empty() || !rest.bytes().all(is_uric) {
            return Err(UriError::InvalidChar("absolute URI"));
        }
        check_escapes(rest)?;
        if scheme.eq_ignore_ascii_case("tel") {
            return Ok(Self::Tel(rest.to_owned()));
        }
        Ok(Self::Other {
            scheme: scheme.to_ascii_lowercase(),
            rest: rest.to_owned(),
        })
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Self::Sip(uri) => Some(uri),
            _ => None,
        }
    }
}

impl std::str::FromStr for Uri {
    type Err = UriError;
    fn from_str(text: &str) -> Result<Self, UriError> {
        Self::parse(text)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sip(uri) => uri.fmt(f),
            Self::Tel(rest) => write!(f, "tel:{rest}"),
            Self::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

fn split_hostport(text: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']').ok_or(UriError::InvalidHost)?;
        match &text[end + 1..] {
            "" => (&text[..=end], None),
            rest => (
                &text[..=end],
                Some(rest.strip_prefix(':').ok_or(UriError::InvalidHost)?),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| UriError::InvalidPort)?)
        }
        Some(_) => return Err(UriError::InvalidPort),
        None => None,
    };
    Ok((Host::parse(host)?, port))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// user = 1*( unreserved / escaped / user-unreserved )
fn is_user_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'%' | b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/'
        )
}

/// password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
fn is_password_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'%' | b'&' | b'=' | b'+' | b'$' | b',')
}

/// paramchar = param-unreserved / unreserved / escaped
fn is_param_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'%' | b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

/// hname / hvalue characters
fn is_header_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'%' | b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$')
}

/// uric = reserved / unreserved / escaped (RFC 2396)
fn is_uric(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'%' | b';'
                | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b','
                | b'#'
                | b'['
                | b']'
        )
}

fn check_escapes(text: &str) -> Result<(), UriError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(UriError::InvalidEscape);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes. Fails on a malformed escape or a result that is not UTF-8.
pub fn unescape(text: &str) -> Result<String, UriError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(UriError::InvalidEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::InvalidEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::InvalidEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(text: &str) -> SipUri {
        match Uri::parse(text).unwrap() {
            Uri::Sip(uri) => uri,
            other => panic!("not a SIP URI: {other:?}"),
        }
    }

    #[test]
    fn parses_the_rfc_3261_examples() {
        // RFC 3261 §19.1.3
        let uri = sip("sip:alice:secretword@atlanta.com;transport=tcp");
        assert_eq!(
            (uri.user.as_deref(), uri.password.as_deref()),
            (Some("alice"), Some("secretword"))
        );
        assert_eq!(uri.transport().as_deref(), Some("tcp"));
        let uri = sip("sips:alice@atlanta.com?subject=project%20x&priority=urgent");
        assert!(uri.secure);
        assert_eq!(uri.headers[0], ("subject".into(), "project%20x".into()));
        let uri = sip("sip:+1-212-555-1212:1234@gateway.com;user=phone");
        assert_eq!(uri.param("user"), Some(Some("phone")));
        let uri = sip("sips:1212@gateway.com");
        assert_eq!(uri.host, Host::Domain("gateway.com".into()));
        let uri = sip("sip:alice@192.0.2.4");
        assert_eq!(uri.host, Host::Ipv4("192.0.2.4".parse().unwrap()));
        let uri = sip("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com");
        assert_eq!(uri.user, None);
        assert_eq!(uri.param("method"), Some(Some("REGISTER")));
        let uri = sip("sip:alice;day=tuesday@atlanta.com");
        assert_eq!(uri.user.as_deref(), Some("alice;day=tuesday"));
        let uri = sip("sip:[2001:db8::10]:5070;lr");
        assert_eq!(
            (uri.host.clone(), uri.port, uri.param("lr")),
            (
                Host::Ipv6("2001:db8::10".parse().unwrap()),
                Some(5070),
                Some(None)
            )
        );
    }

    #[test]
    fn prints_back_exactly() {
        for text in [
            "sip:alice:secretword@atlanta.com;transport=tcp",
            "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            "sip:[2001:db8::10]:5070;lr",
            "sip:%61lice@atlanta.com;maddr=239.255.255.1;ttl=15",
            "tel:+1-201-555-0123",
            "mailto:alice@example.com",
        ] {
            assert_eq!(Uri::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "alice@atlanta.com",
            "sip:",
            "sip:alice@",
            "sip:alice@atlanta..com",
            "sip:alice@atlanta.com:99999",
            "sip:alice@atlanta.com:",
            "sip:alice@atlanta.com:12a",
            "sip:al ice@atlanta.com",
            "sip:alice@[2001:db8::1",
            "sip:alice@atlanta.com;=x",
            "sip:alice@atlanta.com;a=",
            "sip:alice@atlanta.com?noequals",
            "sip:%zz@atlanta.com",
            "sip:<alice@atlanta.com>",
            "1sip:alice@atlanta.com",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn equivalence_follows_19_1_4() {
        let eq = |a: &str, b: &str| sip(a).equivalent(&sip(b));
        // Equivalent pairs from §19.1.4.
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        assert!(eq(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
        ));
        // Non-equivalent pairs from §19.1.4.
        assert!(!eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eq(
            "sip:bob@biloxi.com:6000;transport=tcp",
            "sip:bob@biloxi.com"
        ));
        assert!(!eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com?Subject=next%20meeting"
        ));
        assert!(!eq("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"));
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("I%20have%20spaces").unwrap(), "I have spaces");
        assert_eq!(unescape("plain").unwrap(), "plain");
        assert!(unescape("bad%2").is_err());
        assert!(unescape("%ff").is_err());
    }
}

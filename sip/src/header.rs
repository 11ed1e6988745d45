//! Typed views of header values: borrowed from the message, parsed on demand, no allocation
//! unless a URI is decoded.
//!
//! Grammar references are to RFC 3261 §25.1. Header values arrive unfolded (continuation lines
//! joined with a space) and trimmed; separators (`;`, `=`, `,`, `/`, `:`, `<`, `>`) may be
//! surrounded by linear whitespace, which the views skip.

use crate::message::Method;
use crate::uri::{Uri, UriError};

/// Why a header value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The value does not follow the header's grammar; the text says what is wrong.
    #[error("{0}")]
    Syntax(&'static str),
    /// The URI inside is malformed.
    #[error("bad URI: {0}")]
    Uri(#[from] UriError),
}

fn syntax(what: &'static str) -> HeaderError {
    HeaderError::Syntax(what)
}

/// token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_token_char)
}

/// A byte of a `token`.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// Splits `text` at each `separator` that is outside double quotes and angle brackets.
/// Fails on an unterminated quoted string or bracket.
pub fn split_outside_quotes(text: &str, separator: u8) -> Result<Vec<&str>, HeaderError> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    let (mut quoted, mut angle) = (false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if quoted {
            match b {
                b'\\' => i += 1, // quoted-pair: skip the escaped byte
                b'"' => quoted = false,
                _ => {}
            }
        } else if angle {
            if b == b'>' {
                angle = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b'<' {
            angle = true;
        } else if b == separator {
            parts.push(&text[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    if quoted {
        return Err(syntax("unterminated quoted string"));
    }
    if angle {
        return Err(syntax("unterminated <"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// Parameters `;name[=value]`, as written after a header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Params<'a>(&'a str);

impl<'a> Params<'a> {
    /// Parses and checks `;`-separated generic-params (`text` starts at the first `;` or is
    /// empty): names are tokens, values tokens, hosts or quoted strings.
    pub fn parse(text: &'a str) -> Result<Self, HeaderError> {
        let text = text.trim_matches(|c| c == ' ' || c == '\t');
        if text.is_empty() {
            return Ok(Self(""));
        }
        let rest = text
            .strip_prefix(';')
            .ok_or(syntax("expected `;` before parameters"))?;
        for param in split_outside_quotes(rest, b';')? {
            let (name, value) = split_param(param);
            if !is_token(name) {
                return Err(syntax("parameter name is not a token"));
            }
            if let Some(value) = value
                && !is_gen_value(value)
            {
                return Err(syntax("malformed parameter value"));
            }
        }
        Ok(Self(text))
    }

    /// Every parameter in order: `(name, value)`, value without surrounding whitespace.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        let text = self.0.strip_prefix(';').unwrap_or("");
        // Validated in `parse`: quotes are balanced, so the split cannot fail.
        split_outside_quotes(text, b';')
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .map(split_param)
    }

    /// The value of parameter `name` (case-insensitive): `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The parameters as written, starting with `;` (or empty).
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

fn split_param(param: &str) -> (&str, Option<&str>) {
    match param.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (param.trim(), None),
    }
}

/// gen-value = token / host / quoted-string. A bare IPv6 address is accepted too: Via's
/// `received` is `IPv4address / IPv6address` without brackets (§20.42, RFC 5118 §4.5).
fn is_gen_value(value: &str) -> bool {
    if value.starts_with('"') {
        return quoted_string_len(value) == Some(value.len());
    }
    is_token(value)
        || value.parse::<std::net::Ipv6Addr>().is_ok()
        || crate::uri::Host::parse(value)
            .is_ok_and(|host| matches!(host, crate::uri::Host::Ipv6(_)))
}

/// Length in bytes of the quoted string at the start of `text` (including both quotes).
fn quoted_string_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            // qdtext excludes CR and LF (they only appear folded away).
            b'\r' | b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

/// A `Via` value (§20.42): `SIP/2.0/UDP host:port;branch=...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport, e.g. `UDP`, `TCP`, `TLS`, `WS`, `WSS` (as written).
    pub transport: &'a str,
    /// Host of `sent-by`, as written (IPv6 with brackets).
    pub host: &'a str,
    /// Port of `sent-by`.
    pub port: Option<u16>,
    /// Parameters: `branch`, `received`, `rport`, `maddr`, `ttl`, ...
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one Via value.
    pub fn parse(value: &'a str) -> Result<Self, HeaderError> {
        let (head, params) = match value.find(';') {
            Some(i) => value.split_at(i),
            None => (value, ""),
        };
        let mut parts = head.splitn(3, '/');
        let name = parts
            .next()
            .map(str::trim)
            .ok_or(syntax("missing protocol"))?;
        let version = parts
            .next()
            .map(str::trim)
            .ok_or(syntax("missing protocol version"))?;
        let rest = parts
            .next()
            .ok_or(syntax("missing transport"))?
            .trim_start();
        if !is_token(name) || !is_token(version) {
            return Err(syntax("malformed sent-protocol"));
        }
        let split = rest.find(is_lws_char).ok_or(syntax("missing sent-by"))?;
        let (transport, sent_by) = rest.split_at(split);
        if !is_token(transport) {
            return Err(syntax("malformed transport"));
        }
        let sent_by = sent_by.trim();
        let (host, port) = split_sent_by(sent_by)?;
        crate::uri::Host::parse(host).map_err(|_| syntax("malformed sent-by host"))?;
        let params = Params::parse(params)?;
        if let Some(Some(rport)) = params.get("rport")
            && rport.parse::<u16>().is_err()
        {
            return Err(syntax("malformed rport"));
        }
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }
}

fn is_lws_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits `host[ : port]` (whitespace around the colon allowed).
fn split_sent_by(text: &str) -> Result<(&str, Option<u16>), HeaderError> {
    let (host, port) = if text.starts_with('[') {
        let end = text
            .find(']')
            .ok_or(syntax("unterminated IPv6 reference"))?;
        let rest = text[end + 1..].trim();
        match rest.strip_prefix(':') {
            Some(port) => (&text[..=end], Some(port.trim())),
            None if rest.is_empty() => (&text[..=end], None),
            None => return Err(syntax("junk after sent-by")),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.trim(), Some(port.trim())),
            None => (text, None),
        }
    };
    if host.bytes().any(is_lws) {
        return Err(syntax("whitespace inside sent-by"));
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| syntax("port out of range"))?)
        }
        Some(_) => return Err(syntax("malformed port")),
        None => None,
    };
    Ok((host, port))
}

/// A `CSeq` value (§20.16): sequence number and method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number, below 2^31 (§8.1.1.5).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let mut parts = value.split(is_lws_char).filter(|p| !p.is_empty());
        let number = parts.next().ok_or(syntax("missing sequence number"))?;
        let method = parts.next().ok_or(syntax("missing method"))?;
        if parts.next().is_some() {
            return Err(syntax("junk after method"));
        }
        if !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax("sequence number is not a number"));
        }
        // Leading zeros are legal; the value must fit in 32 bits (§8.1.1.5 says < 2^31 for
        // new requests, but any 32-bit value is syntactically valid).
        let digits = number.trim_start_matches('0');
        let seq = if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .map_err(|_| syntax("sequence number too large"))?
        };
        let method = Method::parse(method).ok_or(syntax("malformed method"))?;
        Ok(Self { seq, method })
    }
}

/// Parses a non-negative decimal (leading zeros allowed) that must fit `max`.
pub fn parse_number(value: &str, max: u64) -> Result<u64, HeaderError> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax("not a number"));
    }
    let digits = value.trim_start_matches('0');
    if digits.len() > 19 {
        return Err(syntax("number too large"));
    }
    let number = if digits.is_empty() {
        0
    } else {
        digits
            .parse::<u64>()
            .map_err(|_| syntax("number too large"))?
    };
    if number > max {
        return Err(syntax("number too large"));
    }
    Ok(number)
}

/// A name-addr or addr-spec with header parameters: the value of `From`, `To`, `Contact`,
/// `Route`, `Record-Route`, `Reply-To`, `P-Asserted-Identity` (§20.10, §20.20, §20.39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (a quoted string keeps its quotes), if any.
    pub display_name: Option<&'a str>,
    /// The URI, without angle brackets.
    pub uri: &'a str,
    /// Whether the URI was in angle brackets.
    pub bracketed: bool,
    /// Header parameters after the URI (`tag`, `expires`, `q`, ...).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value and checks its URI.
    pub fn parse(value: &'a str) -> Result<Self, HeaderError> {
        let value = value.trim();
        let (display_name, after_display) = if value.starts_with('"') {
            let end = quoted_string_len(value).ok_or(syntax("unterminated display name"))?;
            (Some(&value[..end]), value[end..].trim_start())
        } else {
            match value.find('<') {
                Some(lt) => {
                    let display = value[..lt].trim();
                    // display-name = *(token LWS)
                    if !display
                        .split(is_lws_char)
                        .filter(|t| !t.is_empty())
                        .all(is_token)
                    {
                        return Err(syntax("display name must be tokens or a quoted string"));
                    }
                    ((!display.is_empty()).then_some(display), &value[lt..])
                }
                None => (None, value),
            }
        };
        if let Some(inner) = after_display.strip_prefix('<') {
            let end = inner.find('>').ok_or(syntax("missing >"))?;
            let uri = &inner[..end];
            if uri.starts_with(is_lws_char) || uri.ends_with(is_lws_char) {
                return Err(syntax("whitespace inside <>"));
            }
            Uri::parse(uri)?;
            let params = Params::parse(&inner[end + 1..])?;
            return Ok(Self {
                display_name,
                uri,
                bracketed: true,
                params,
            });
        }
        if display_name.is_some() {
            return Err(syntax("a display name needs a URI in <>"));
        }
        // addr-spec without brackets: parameters after `;` belong to the header, and the URI
        // itself may not contain `,`, `?` or `;` (§20.10).
        let (uri, params) = match value.find(';') {
            Some(i) => value.split_at(i),
            None => (value, ""),
        };
        let uri = uri.trim_end();
        if uri.contains([',', '?', ' ', '\t']) {
            return Err(syntax("a URI with `,`, `?` or `;` must be in <>"));
        }
        Uri::parse(uri)?;
        Ok(Self {
            display_name,
            uri,
            bracketed: false,
            params: Params::parse(params)?,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }

    /// The URI, parsed.
    pub fn parsed_uri(&self) -> Result<Uri, UriError> {
        Uri::parse(self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_everywhere() {
        // From RFC 4475 §3.1.1.1 (wsinv), after unfolding.
        let via = Via::parse("SIP  /   2.0  /UDP     192.0.2.2;rport;branch=390skdjuw").unwrap();
        assert_eq!(
            (via.transport, via.host, via.port),
            ("UDP", "192.0.2.2", None)
        );
        assert_eq!(via.branch(), Some("390skdjuw"));
        assert_eq!(via.params.get("rport"), Some(None));
        let via = Via::parse(
            "SIP/2.0/TCP [2001:db8::9:1]:5061 ;branch=z9hG4bKas3-111 ; received=192.0.2.1",
        )
        .unwrap();
        assert_eq!((via.host, via.port), ("[2001:db8::9:1]", Some(5061)));
        assert_eq!(via.params.get("received"), Some(Some("192.0.2.1")));
        for bad in [
            "SIP/2.0/UDP",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host;=1",
            "SIP/2.0/UDP [::1",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse("0009\t INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert_eq!(CSeq::parse("4294967295 OPTIONS").unwrap().seq, u32::MAX);
        assert!(CSeq::parse("4294967296 OPTIONS").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        assert!(CSeq::parse("1 INVITE x").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let to =
            NameAddr::parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(
            (to.uri, to.tag(), to.bracketed),
            (
                "sip:vivekg@chair-dnrc.example.com",
                Some("1918181833n"),
                false
            )
        );
        let from = NameAddr::parse(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>  ;  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(from.display_name, Some("\"J Rosenberg \\\\\\\"\""));
        assert_eq!(from.tag(), Some("98asjd8"));
        let contact =
            NameAddr::parse("Alice Smith <sip:alice@192.0.2.4;transport=tcp>;expires=3600;q=0.7")
                .unwrap();
        assert_eq!(
            (contact.display_name, contact.uri),
            (Some("Alice Smith"), "sip:alice@192.0.2.4;transport=tcp")
        );
        assert_eq!(contact.params.get("q"), Some(Some("0.7")));
        let quoted_param = NameAddr::parse("<sip:a@b>;x=\"semi;colon\";y").unwrap();
        assert_eq!(
            quoted_param.params.iter().collect::<Vec<_>>(),
            [("x", Some("\"semi;colon\"")), ("y", None)]
        );
        for bad in [
            "\"Watson, Thomas\" < sip:t.watson@example.org >",
            "\"unbalanced <sip:a@b>",
            "<sip:a@b",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "Bad, Display <sip:a@b>",
            "\"x\" sip:a@b",
            "<sip:a@b>;tag",
            "<sip:a@b>junk",
            "<not a uri>",
        ] {
            // `;tag` alone is a legal flag param; everything else here must fail.
            if bad == "<sip:a@b>;tag" {
                assert!(NameAddr::parse(bad).is_ok());
                continue;
            }
            assert!(NameAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn splitting_respects_quotes_and_brackets() {
        let parts = split_outside_quotes("\"a,b\" <sip:x@y;p=1,2>, <sip:z@w>", b',').unwrap();
        assert_eq!(parts, ["\"a,b\" <sip:x@y;p=1,2>", " <sip:z@w>"]);
        assert!(split_outside_quotes("\"open", b',').is_err());
        assert_eq!(
            split_outside_quotes("\"esc\\\"aped,\",x", b',')
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0068", 255), Ok(68));
        assert!(parse_number("300", 255).is_err());
        assert!(parse_number("", 255).is_err());
        assert!(parse_number("1a", 255).is_err());
        assert!(parse_number("99999999999999999999999", u64::MAX).is_err());
    }
}

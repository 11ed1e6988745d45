//! SDP (RFC 8866) for offer/answer (RFC 3264): parsed line by line and kept in order, so that
//! a B2BUA can rewrite what it must (connection address, media ports, direction, ICE and
//! crypto attributes) and pass everything else through untouched.
//!
//! Parsing is strict on structure (`v=0` first, `o=`, `s=`, well-formed `m=` and `c=` lines,
//! bounded size) and lenient on content: unknown line types and attributes are kept as text.

use std::fmt;
use std::net::IpAddr;

/// Most lines an SDP may have.
pub const MAX_LINES: usize = 512;

/// Why an SDP was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Not UTF-8.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// More than [`MAX_LINES`] lines.
    #[error("SDP has too many lines")]
    TooLarge,
    /// A line that is not `<letter>=<value>`.
    #[error("malformed SDP line {0}")]
    Line(usize),
    /// `v=0` missing or not first.
    #[error("SDP must start with v=0")]
    Version,
    /// A required session line is missing.
    #[error("SDP lacks an {0}= line")]
    Missing(char),
    /// A malformed `m=` line.
    #[error("malformed m= line")]
    Media,
    /// A malformed `c=` line.
    #[error("malformed c= line")]
    Connection,
}

/// One `<type>=<value>` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The type letter.
    pub kind: char,
    /// Everything after `=`.
    pub value: String,
}

/// Media direction (RFC 3264 §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Send and receive (the default).
    SendRecv,
    /// Send only (e.g. holding the other side).
    SendOnly,
    /// Receive only.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::SendRecv,
            Self::SendOnly,
            Self::RecvOnly,
            Self::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str() == name)
    }

    /// The direction the answerer uses for an offer with this direction (RFC 3264 §6.1).
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }
}

/// A media section: its `m=` line and the lines after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, ...
    pub kind: String,
    /// Transport port.
    pub port: u16,
    /// `/<count>` after the port, if given.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: String,
    /// Payload types (or other formats), in preference order.
    pub formats: Vec<String>,
    /// The other lines of the section, in order.
    pub lines: Vec<Line>,
}

/// An RTP payload mapping from `a=rtpmap` (or the static table of RFC 3551 §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub payload_type: u8,
    /// Encoding name as written, e.g. `PCMU`, `opus`, `telephone-event`.
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channels, if given.
    pub channels: Option<u8>,
}

/// A session description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level lines after `v=0`, in order.
    pub session: Vec<Line>,
    /// Media sections.
    pub media: Vec<Media>,
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    // c=<nettype> <addrtype> <connection-address>; a multicast address may carry /ttl.
    let mut parts = value.split(' ');
    let (Some("IN"), Some(kind), Some(address), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SdpError::Connection);
    };
    let address: IpAddr = address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| SdpError::Connection)?;
    match (kind, address) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(address),
        _ => Err(SdpError::Connection),
    }
}

fn connection_value(address: IpAddr) -> String {
    match address {
        IpAddr::V4(ip) => format!("IN IP4 {ip}"),
        IpAddr::V6(ip) => format!("IN IP6 {ip}"),
    }
}

fn parse_media(value: &str) -> Result<Media, SdpError> {
    let mut parts = value.split(' ');
    let kind = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or(SdpError::Media)?;
    let port = parts.next().ok_or(SdpError::Media)?;
    let proto = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or(SdpError::Media)?;
    let formats: Vec<String> = parts.map(str::to_owned).collect();
    if formats.is_empty() || formats.iter().any(String::is_empty) {
        return Err(SdpError::Media);
    }
    let (port, port_count) = match port.split_once('/') {
        Some((port, count)) => (port, Some(count.parse().map_err(|_| SdpError::Media)?)),
        None => (port, None),
    };
    Ok(Media {
        kind: kind.to_owned(),
        port: port.parse().map_err(|_| SdpError::Media)?,
        port_count,
        proto: proto.to_owned(),
        formats,
        lines: Vec::new(),
    })
}

impl Sdp {
    /// Parses an SDP body.
    pub fn parse(bytes: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(bytes).map_err(|_| SdpError::NotUtf8)?;
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty());
        if lines.next() != Some("v=0") {
            return Err(SdpError::Version);
        }
        let mut sdp = Self {
            session: Vec::new(),
            media: Vec::new(),
        };
        for (number, line) in lines.enumerate() {
            if number >= MAX_LINES {
                return Err(SdpError::TooLarge);
            }
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(SdpError::Line(number + 2));
            }
            let line = Line {
                kind: char::from(bytes[0]),
                value: line[2..].to_owned(),
            };
            match line.kind {
                'm' => sdp.media.push(parse_media(&line.value)?),
                'c' => {
                    parse_connection(&line.value)?;
                    sdp.push(line);
                }
                _ => sdp.push(line),
            }
        }
        for required in ['o', 's', 't'] {
            if !sdp.session.iter().any(|l| l.kind == required) {
                return Err(SdpError::Missing(required));
            }
        }
        Ok(sdp)
    }

    fn push(&mut self, line: Line) {
        match self.media.last_mut() {
            Some(media) => media.lines.push(line),
            None => self.session.push(line),
        }
    }

    /// The address media `index` is sent to: its own `c=`, else the session's.
    pub fn connection(&self, index: usize) -> Option<IpAddr> {
        let media = self.media.get(index)?;
        let line = media
            .lines
            .iter()
            .find(|l| l.kind == 'c')
            .or_else(|| self.session.iter().find(|l| l.kind == 'c'))?;
        parse_connection(&line.value).ok()
    }

    /// Points every connection line (session and media level) at `address`, and the origin too.
    pub fn set_connection(&mut self, address: IpAddr) {
        let value = connection_value(address);
        let mut session_has_c = false;
        for line in &mut self.session {
            if line.kind == 'c' {
                line.value.clone_from(&value);
                session_has_c = true;
            }
            if line.kind == 'o' {
                // o=<username> <sess-id> <sess-version> IN <addrtype> <address>
                let parts: Vec<&str> = line.value.splitn(4, ' ').collect();
                if parts.len() == 4 {
                    line.value = format!("{} {} {} {value}", parts[0], parts[1], parts[2]);
                }
            }
        }
        for media in &mut self.media {
            for line in &mut media.lines {
                if line.kind == 'c' {
                    line.value.clone_from(&value);
                }
            }
            if !session_has_c && !media.lines.iter().any(|l| l.kind == 'c') {
                media.lines.insert(
                    0,
                    Line {
                        kind: 'c',
                        value: value.clone(),
                    },
                );
            }
        }
    }

    /// Increments the session version in `o=`, as every new offer or answer from the same
    /// side must (RFC 3264 §8).
    pub fn bump_version(&mut self) {
        for line in &mut self.session {
            if line.kind == 'o' {
                let mut parts: Vec<String> = line.value.split(' ').map(str::to_owned).collect();
                if let Some(version) = parts
                    .get_mut(2)
                    .and_then(|v| v.parse::<u64>().ok().map(|n| (v, n)))
                {
                    *version.0 = (version.1 + 1).to_string();
                }
                line.value = parts.join(" ");
            }
        }
    }

    /// The direction of media `index`: its own attribute, else the session's, else sendrecv.
    pub fn direction(&self, index: usize) -> Direction {
        let find = |lines: &[Line]| {
            lines
                .iter()
                .filter(|l| l.kind == 'a')
                .find_map(|l| Direction::parse(&l.value))
        };
        self.media
            .get(index)
            .and_then(|m| find(&m.lines))
            .or_else(|| find(&self.session))
            .unwrap_or(Direction::SendRecv)
    }

    /// Sets the direction of media `index` (replacing any media- or session-level one).
    pub fn set_direction(&mut self, index: usize, direction: Direction) {
        self.session
            .retain(|l| !(l.kind == 'a' && Direction::parse(&l.value).is_some()));
        if let Some(media) = self.media.get_mut(index) {
            media
                .lines
                .retain(|l| !(l.kind == 'a' && Direction::parse(&l.value).is_some()));
            media.lines.push(Line {
                kind: 'a',
                value: direction.as_str().to_owned(),
            });
        }
    }
}

impl Media {
    /// The value of the first `a=name[:value]` attribute: `Some("")` for a flag.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.lines
            .iter()
            .filter(|l| l.kind == 'a')
            .find_map(|l| match l.value.split_once(':') {
                Some((n, v)) if n == name => Some(v),
                None if l.value == name => Some(""),
                _ => None,
            })
    }

    /// Removes every `a=` attribute named in `names`.
    pub fn remove_attributes(&mut self, names: &[&str]) {
        self.lines.retain(|l| {
            if l.kind != 'a' {
                return true;
            }
            let name = l.value.split_once(':').map_or(l.value.as_str(), |(n, _)| n);
            !names.contains(&name)
        });
    }

    /// The payload mapping of `payload_type`: its `a=rtpmap`, else the static RFC 3551 entry.
    pub fn rtpmap(&self, payload_type: u8) -> Option<RtpMap> {
        let prefix = format!("rtpmap:{payload_type} ");
        let written = self
            .lines
            .iter()
            .filter(|l| l.kind == 'a')
            .find_map(|l| l.value.strip_prefix(prefix.as_str()));
        if let Some(value) = written {
            let mut parts = value.trim().split('/');
            let encoding = parts.next()?.to_owned();
            let clock_rate = parts.next()?.parse().ok()?;
            let channels = parts.next().and_then(|c| c.parse().ok());
            return Some(RtpMap {
                payload_type,
                encoding,
                clock_rate,
                channels,
            });
        }
        let (encoding, clock_rate) = match payload_type {
            0 => ("PCMU", 8000),
            3 => ("GSM", 8000),
            4 => ("G723", 8000),
            8 => ("PCMA", 8000),
            9 => ("G722", 8000),
            13 => ("CN", 8000),
            18 => ("G729", 8000),
            _ => return None,
        };
        Some(RtpMap {
            payload_type,
            encoding: encoding.to_owned(),
            clock_rate,
            channels: None,
        })
    }

    /// Every payload mapping of the `m=` line, in preference order.
    pub fn rtpmaps(&self) -> Vec<RtpMap> {
        self.formats
            .iter()
            .filter_map(|f| f.parse().ok())
            .filter_map(|pt| self.rtpmap(pt))
            .collect()
    }

    /// Keeps only the formats for which `keep` returns true (and their `rtpmap`/`fmtp` lines).
    pub fn retain_formats(&mut self, mut keep: impl FnMut(&RtpMap) -> bool) {
        let kept: Vec<String> = self
            .formats
            .iter()
            .filter(|f| {
                f.parse()
                    .ok()
                    .and_then(|pt| self.rtpmap(pt))
                    .is_some_and(|m| keep(&m))
            })
            .cloned()
            .collect();
        self.lines.retain(|l| {
            let Some(rest) = l
                .value
                .strip_prefix("rtpmap:")
                .or_else(|| l.value.strip_prefix("fmtp:"))
            else {
                return true;
            };
            l.kind != 'a'
                || kept
                    .iter()
                    .any(|f| rest.split(' ').next() == Some(f.as_str()))
        });
        self.formats = kept;
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v=0\r\n")?;
        for line in &self.session {
            write!(f, "{}={}\r\n", line.kind, line.value)?;
        }
        for media in &self.media {
            write!(f, "m={} {}", media.kind, media.port)?;
            if let Some(count) = media.port_count {
                write!(f, "/{count}")?;
            }
            write!(f, " {} {}\r\n", media.proto, media.formats.join(" "))?;
            for line in &media.lines {
                write!(f, "{}={}\r\n", line.kind, line.value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3264 §10.1-style offer with a media-level direction and telephone-event.
    const OFFER: &str = "v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\n\
        s=\r\n\
        c=IN IP4 192.0.2.101\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 0 8 97 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:97 iLBC/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";

    #[test]
    fn parses_and_prints_back_exactly() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        assert_eq!(sdp.to_string(), OFFER);
        assert_eq!(sdp.connection(0), Some("192.0.2.101".parse().unwrap()));
        let audio = &sdp.media[0];
        assert_eq!((audio.port, audio.proto.as_str()), (49170, "RTP/AVP"));
        let names: Vec<String> = audio.rtpmaps().into_iter().map(|m| m.encoding).collect();
        assert_eq!(
            names,
            ["PCMU", "PCMA", "iLBC", "telephone-event"],
            "PCMA from the static table"
        );
        assert_eq!(audio.attribute("fmtp"), Some("101 0-16"));
        assert_eq!(sdp.direction(0), Direction::SendRecv);
    }

    #[test]
    fn rewrites_for_anchoring() {
        let mut sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        sdp.set_connection("203.0.113.5".parse().unwrap());
        sdp.media[0].port = 30000;
        sdp.set_direction(0, Direction::SendOnly);
        sdp.bump_version();
        sdp.media[0].retain_formats(|m| m.encoding == "PCMU" || m.encoding == "telephone-event");
        let text = sdp.to_string();
        assert!(
            text.contains("o=alice 2890844526 2890844527 IN IP4 203.0.113.5\r\n"),
            "{text}"
        );
        assert!(text.contains("c=IN IP4 203.0.113.5\r\n"));
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101\r\n"));
        assert!(!text.contains("iLBC") && text.contains("a=fmtp:101 0-16"));
        assert!(text.contains("a=sendonly") && !text.contains("a=sendrecv"));
        let again = Sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(again.direction(0), Direction::SendOnly);
        assert_eq!(again, sdp);
    }

    #[test]
    fn media_level_connection_and_session_direction() {
        let text = "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nt=0 0\r\na=recvonly\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\n";
        let mut sdp = Sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(sdp.connection(0), Some("2001:db8::5".parse().unwrap()));
        assert_eq!(sdp.direction(0), Direction::RecvOnly);
        assert_eq!(sdp.direction(0).reversed(), Direction::SendOnly);
        sdp.set_direction(0, Direction::Inactive);
        assert_eq!(sdp.direction(0), Direction::Inactive);
        // No session-level c= but a media-level one: set_connection rewrites it in place.
        sdp.set_connection("192.0.2.1".parse().unwrap());
        assert_eq!(sdp.connection(0), Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn refuses_malformed() {
        for (bad, error) in [
            ("o=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::Version),
            ("v=1\r\n", SdpError::Version),
            ("v=0\r\ns=x\r\nt=0 0\r\n", SdpError::Missing('o')),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\nm=audio x RTP/AVP 0\r\n",
                SdpError::Media,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\nm=audio 4000 RTP/AVP\r\n",
                SdpError::Media,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nc=IN IP4 300.1.1.1\r\nt=0 0\r\n",
                SdpError::Connection,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nc=IN IP6 1.2.3.4\r\nt=0 0\r\n",
                SdpError::Connection,
            ),
            ("v=0\r\nbogus\r\n", SdpError::Line(2)),
        ] {
            assert_eq!(Sdp::parse(bad.as_bytes()), Err(error), "{bad:?}");
        }
        assert_eq!(Sdp::parse(b"v=0\r\n\xff=x"), Err(SdpError::NotUtf8));
        let huge = format!(
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\n{}",
            "a=x\r\n".repeat(MAX_LINES + 1)
        );
        assert_eq!(Sdp::parse(huge.as_bytes()), Err(SdpError::TooLarge));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn line() -> impl Strategy<Value = Line> {
        (
            prop_oneof![Just('a'), Just('b'), Just('i'), Just('k')],
            "[ -~]{0,30}",
        )
            .prop_map(|(kind, value)| Line { kind, value })
    }

    fn media() -> impl Strategy<Value = Media> {
        (
            "[a-z]{3,8}",
            any::<u16>(),
            proptest::option::of(1u16..8),
            "[A-Z]{3}(/[A-Z]{3,5}){0,2}",
            proptest::collection::vec("[0-9]{1,3}", 1..6),
            proptest::collection::vec(line(), 0..6),
        )
            .prop_map(|(kind, port, port_count, proto, formats, lines)| Media {
                kind,
                port,
                port_count,
                proto,
                formats,
                lines,
            })
    }

    fn sdp() -> impl Strategy<Value = Sdp> {
        (
            any::<u64>(),
            any::<[u8; 4]>(),
            proptest::collection::vec(line(), 0..5),
            proptest::collection::vec(media(), 0..4),
        )
            .prop_map(|(version, address, extra, media)| {
                let address = IpAddr::from(address);
                let mut session = vec![
                    Line {
                        kind: 'o',
                        value: format!("- 1 {version} {}", connection_value(address)),
                    },
                    Line {
                        kind: 's',
                        value: "-".into(),
                    },
                    Line {
                        kind: 'c',
                        value: connection_value(address),
                    },
                    Line {
                        kind: 't',
                        value: "0 0".into(),
                    },
                ];
                session.extend(extra);
                Sdp { session, media }
            })
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(sdp in sdp()) {
            let text = sdp.to_string();
            prop_assert_eq!(Sdp::parse(text.as_bytes()), Ok(sdp));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut with_header = b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n".to_vec();
            with_header.extend_from_slice(&bytes);
            if let Ok(sdp) = Sdp::parse(&with_header) {
                prop_assert_eq!(Sdp::parse(sdp.to_string().as_bytes()), Ok(sdp));
            }
            let _ = Sdp::parse(&bytes);
        }
    }
}

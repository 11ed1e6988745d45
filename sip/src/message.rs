//! SIP messages (RFC 3261 §7): parsing with hard limits, validation of the headers every
//! element relies on (§8.1.1), and printing.
//!
//! Parsing accepts what §7 and §25 allow and real peers send: case-insensitive header names,
//! compact forms (§7.3.3), whitespace before the colon, folded lines (§7.3.1), several values
//! of a list header on one line (split into one [`Header`] each), bare-LF line ends. It refuses,
//! with a [`ParseError`] a server turns into `400 Bad Request`, anything over the [`Limits`],
//! malformed start lines, and malformed `Via`, `From`, `To`, `Call-ID`, `CSeq`,
//! `Max-Forwards` and `Content-Length`.
//!
//! Printing writes full header names, one value per line, and a `Content-Length` computed from
//! the body, so `parse(print(m)) == m` for every parsed `m`.

use std::fmt::{self, Write as _};

use bytes::Bytes;

use crate::header::{self, CSeq, HeaderError, NameAddr, Via, is_token};
use crate::uri::{Uri, UriError};

/// Hard limits on what a parser accepts from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole message, headers and body.
    pub max_message_len: usize,
    /// Number of header values (after splitting lists).
    pub max_headers: usize,
    /// One header line, after unfolding.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_len: 65_535,
            max_headers: 256,
            max_line_len: 16 * 1024,
        }
    }
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Over [`Limits::max_message_len`].
    #[error("message too large")]
    TooLarge,
    /// Over [`Limits::max_headers`].
    #[error("too many headers")]
    TooManyHeaders,
    /// A header line over [`Limits::max_line_len`].
    #[error("header line too long")]
    LineTooLong,
    /// No empty line ends the headers.
    #[error("incomplete message: no end of headers")]
    Incomplete,
    /// The header section is not UTF-8 (RFC 3261 §7.3: TEXT-UTF8).
    #[error("headers are not UTF-8")]
    NotUtf8,
    /// The request or status line is malformed; the text says which part.
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    /// The Request-URI is malformed.
    #[error("malformed Request-URI: {0}")]
    RequestUri(UriError),
    /// A header line without a colon, or with a name that is not a token.
    #[error("malformed header line")]
    HeaderLine,
    /// A header whose value breaks its grammar.
    #[error("malformed {name} header: {error}")]
    Header {
        /// Canonical header name.
        name: &'static str,
        /// What is wrong.
        error: HeaderError,
    },
    /// A header every request or response needs is missing.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A single-value header appears more than once.
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    /// The CSeq method differs from the request method (§8.1.1.5).
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    /// The body is shorter than Content-Length says.
    #[error("body shorter than Content-Length")]
    Truncated,
}

impl ParseError {
    fn header(name: &'static str) -> impl FnOnce(HeaderError) -> Self {
        move |error| Self::Header { name, error }
    }
}

macro_rules! methods {
    ($($variant:ident = $text:literal,)+) => {
        /// A request method. Unknown methods are kept (they are legal tokens).
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Method {
            $(#[doc = $text] $variant,)+
            /// Any other method (an extension-method token).
            Other(String),
        }

        impl Method {
            /// Parses a method token (case-sensitive, §7.1).
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    other if is_token(other) => Some(Self::Other(other.to_owned())),
                    _ => None,
                }
            }

            /// The method as written on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }
    };
}

methods! {
    Invite = "INVITE",
    Ack = "ACK",
    Bye = "BYE",
    Cancel = "CANCEL",
    Register = "REGISTER",
    Options = "OPTIONS",
    Info = "INFO",
    Update = "UPDATE",
    Prack = "PRACK",
    Subscribe = "SUBSCRIBE",
    Notify = "NOTIFY",
    Refer = "REFER",
    Message = "MESSAGE",
    Publish = "PUBLISH",
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! header_names {
    ($($variant:ident = $canonical:literal, $compact:expr, $list:expr;)+) => {
        /// A header name. Known names are matched case-insensitively and by compact form.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $(#[doc = $canonical] $variant,)+
            /// Any other header, with its name as received.
            Other(String),
        }

        impl HeaderName {
            /// Recognises `name` (any case, or the compact form).
            pub fn parse(name: &str) -> Self {
                if name.len() == 1 {
                    let c = name.as_bytes()[0].to_ascii_lowercase();
                    $(if $compact == Some(c) { return Self::$variant; })+
                }
                $(if name.eq_ignore_ascii_case($canonical) { return Self::$variant; })+
                Self::Other(name.to_owned())
            }

            /// The full name as printed.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $canonical,)+
                    Self::Other(name) => name,
                }
            }

            /// The full name of a known header (`"extension"` for others), for errors.
            pub fn canonical(&self) -> &'static str {
                match self {
                    $(Self::$variant => $canonical,)+
                    Self::Other(_) => "extension",
                }
            }

            /// Whether several values may share one line, comma-separated (§7.3.1).
            fn is_list(&self) -> bool {
                match self {
                    $(Self::$variant => $list,)+
                    Self::Other(_) => false,
                }
            }
        }
    };
}

header_names! {
    Accept = "Accept", None, true;
    AcceptEncoding = "Accept-Encoding", None, true;
    AcceptLanguage = "Accept-Language", None, true;
    AlertInfo = "Alert-Info", None, true;
    Allow = "Allow", None, true;
    AllowEvents = "Allow-Events", Some(b'u'), true;
    Authorization = "Authorization", None, false;
    CallId = "Call-ID", Some(b'i'), false;
    CallInfo = "Call-Info", None, true;
    Contact = "Contact", Some(b'm'), true;
    ContentDisposition = "Content-Disposition", None, false;
    ContentEncoding = "Content-Encoding", Some(b'e'), true;
    ContentLanguage = "Content-Language", None, true;
    ContentLength = "Content-Length", Some(b'l'), false;
    ContentType = "Content-Type", Some(b'c'), false;
    CSeq = "CSeq", None, false;
    Date = "Date", None, false;
    Diversion = "Diversion", None, true;
    ErrorInfo = "Error-Info", None, true;
    Event = "Event", Some(b'o'), false;
    Expires = "Expires", None, false;
    From = "From", Some(b'f'), false;
    InReplyTo = "In-Reply-To", None, true;
    MaxForwards = "Max-Forwards", None, false;
    MinExpires = "Min-Expires", None, false;
    MinSe = "Min-SE", None, false;
    Path = "Path", None, true;
    PAssertedIdentity = "P-Asserted-Identity", None, true;
    Privacy = "Privacy", None, false;
    ProxyAuthenticate = "Proxy-Authenticate", None, false;
    ProxyAuthorization = "Proxy-Authorization", None, false;
    ProxyRequire = "Proxy-Require", None, true;
    RAck = "RAck", None, false;
    Reason = "Reason", None, true;
    RecordRoute = "Record-Route", None, true;
    ReferTo = "Refer-To", Some(b'r'), false;
    ReferredBy = "Referred-By", Some(b'b'), false;
    ReplyTo = "Reply-To", None, false;
    Require = "Require", None, true;
    RetryAfter = "Retry-After", None, false;
    Route = "Route", None, true;
    RSeq = "RSeq", None, false;
    Server = "Server", None, false;
    SessionExpires = "Session-Expires", Some(b'x'), false;
    Subject = "Subject", Some(b's'), false;
    Supported = "Supported", Some(b'k'), true;
    Timestamp = "Timestamp", None, false;
    To = "To", Some(b't'), false;
    Unsupported = "Unsupported", None, true;
    UserAgent = "User-Agent", None, false;
    Via = "Via", Some(b'v'), true;
    Warning = "Warning", None, true;
    WwwAuthenticate = "WWW-Authenticate", None, false;
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Name.
    pub name: HeaderName,
    /// Value, unfolded and trimmed.
    pub value: String,
}

/// The headers of a message in order (`Content-Length` excluded: it is derived from the body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a value.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name,
            value: value.into(),
        });
    }

    /// Inserts a value before all others of the list (e.g. a new top `Via`).
    pub fn push_front(&mut self, name: HeaderName, value: impl Into<String>) {
        let at = self.0.iter().position(|h| h.name == name).unwrap_or(0);
        self.0.insert(
            at,
            Header {
                name,
                value: value.into(),
            },
        );
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Removes every value of `name`; returns how many there were.
    pub fn remove(&mut self, name: &HeaderName) -> usize {
        let before = self.0.len();
        self.0.retain(|h| &h.name != name);
        before - self.0.len()
    }

    /// Replaces every value of `name` with one value.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        match self.0.iter().position(|h| h.name == name) {
            Some(at) => {
                self.0[at].value = value.into();
                let mut seen = false;
                self.0.retain(|h| {
                    if h.name != name {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    /// Replaces the first value of `name` (e.g. the top Via), leaving the others.
    pub fn set_first(&mut self, name: &HeaderName, value: impl Into<String>) {
        if let Some(header) = self.0.iter_mut().find(|h| &h.name == name) {
            header.value = value.into();
        }
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Number of header values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request-URI.
    pub uri: Uri,
    /// SIP version (major, minor); only 2.0 is served (§8.2.? answers others 505).
    pub version: (u8, u8),
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// SIP version (major, minor).
    pub version: (u8, u8),
    /// Status code, 100 to 699.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// A request or a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// Parses a whole message from a datagram (UDP, or one WebSocket frame). Bytes beyond
    /// Content-Length are discarded (§18.3); without Content-Length the body is the rest of the
    /// datagram.
    pub fn parse(datagram: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        if datagram.len() > limits.max_message_len {
            return Err(ParseError::TooLarge);
        }
        let (head_end, body_start) = find_head_end(datagram).ok_or(ParseError::Incomplete)?;
        let head = std::str::from_utf8(&datagram[..head_end]).map_err(|_| ParseError::NotUtf8)?;
        let (start, headers, content_length) = parse_head(head, limits)?;
        let rest = &datagram[body_start..];
        let body = match content_length {
            Some(length) => rest.get(..length).ok_or(ParseError::Truncated)?,
            None => rest,
        };
        start.into_message(headers, Bytes::copy_from_slice(body))
    }

    /// Parses like [`Self::parse`] but without checking the core headers, so that a server can
    /// still answer a request whose headers are wrong with `400` and the reason. Never use the
    /// result for anything else.
    pub fn parse_for_error_response(datagram: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        if datagram.len() > limits.max_message_len {
            return Err(ParseError::TooLarge);
        }
        let (head_end, _) = find_head_end(datagram).ok_or(ParseError::Incomplete)?;
        let head = std::str::from_utf8(&datagram[..head_end]).map_err(|_| ParseError::NotUtf8)?;
        let (start, headers, _) = parse_head(head, limits)?;
        Ok(match start {
            StartLine::Request {
                method,
                uri,
                version,
            } => Self::Request(Request {
                method,
                uri,
                version,
                headers,
                body: Bytes::new(),
            }),
            StartLine::Response {
                version,
                status,
                reason,
            } => Self::Response(Response {
                version,
                status,
                reason,
                headers,
                body: Bytes::new(),
            }),
        })
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => &r.headers,
            Self::Response(r) => &r.headers,
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Self::Request(r) => &r.body,
            Self::Response(r) => &r.body,
        }
    }
}

/// Length of the message at the start of a stream buffer (TCP, TLS), once all of it has
/// arrived: `Ok(None)` means "read more". Leading CRLFs (keepalives, RFC 5626 §3.5.1) must be
/// consumed by the caller first. Streams need Content-Length (§18.3); a header section that
/// can't be framed is an error, and the connection should be closed.
pub fn frame_len(buffer: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    let Some((head_end, body_start)) = find_head_end(buffer) else {
        return if buffer.len() > limits.max_message_len {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let mut length = None;
    for line in unfolded_lines(head).skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if HeaderName::parse(name.trim_end()) == HeaderName::ContentLength {
            if length.is_some() {
                return Err(ParseError::Duplicate("Content-Length"));
            }
            let value = header::parse_number(value, limits.max_message_len as u64)
                .map_err(ParseError::header("Content-Length"))?;
            length = Some(value as usize);
        }
    }
    let length = length.ok_or(ParseError::Missing("Content-Length"))?;
    let total = body_start + length;
    if total > limits.max_message_len {
        return Err(ParseError::TooLarge);
    }
    Ok((buffer.len() >= total).then_some(total))
}

/// The end of the header section: `(end of last header line, start of body)`.
fn find_head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\n') {
        let newline = i + offset;
        let next = newline + 1;
        if bytes.get(next) == Some(&b'\n') {
            return Some((newline, next + 1));
        }
        if bytes.get(next) == Some(&b'\r') && bytes.get(next + 1) == Some(&b'\n') {
            return Some((newline, next + 2));
        }
        i = next;
    }
    None
}

/// Lines of the header section with continuation lines joined (§7.3.1: a line starting with
/// whitespace continues the previous one; the line break and leading whitespace become one
/// space).
fn unfolded_lines(head: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let mut lines = head
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .peekable();
    std::iter::from_fn(move || {
        let first = lines.next()?;
        if !lines
            .peek()
            .is_some_and(|next| next.starts_with([' ', '\t']))
        {
            return Some(std::borrow::Cow::Borrowed(first));
        }
        let mut joined = first.trim_end().to_owned();
        while let Some(next) = lines.next_if(|next| next.starts_with([' ', '\t'])) {
            joined.push(' ');
            joined.push_str(next.trim());
        }
        Some(std::borrow::Cow::Owned(joined))
    })
}

enum StartLine {
    Request {
        method: Method,
        uri: Uri,
        version: (u8, u8),
    },
    Response {
        version: (u8, u8),
        status: u16,
        reason: String,
    },
}

fn parse_version(text: &str) -> Option<(u8, u8)> {
    let rest = text
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .map(|_| &text[4..])?;
    let (major, minor) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    // `get`, not indexing: the line is UTF-8 and byte 4 may fall inside a character.
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (§7.2)
        let mut parts = line.splitn(3, ' ');
        let version = parts
            .next()
            .and_then(parse_version)
            .ok_or(ParseError::StartLine("version"))?;
        let code = parts.next().ok_or(ParseError::StartLine("status code"))?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StartLine("status code"));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ParseError::StartLine("status code"))?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::StartLine("status code"));
        }
        let reason = parts.next().unwrap_or("");
        if reason.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ParseError::StartLine("reason phrase"));
        }
        return Ok(StartLine::Response {
            version,
            status,
            reason: reason.to_owned(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (§7.1): exactly one space between
    // the parts and none at the end (RFC 4475 §3.1.2.9, §3.1.2.10).
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine(
            "request line must be `METHOD URI SIP/2.0`",
        ));
    };
    let method = Method::parse(method).ok_or(ParseError::StartLine("method"))?;
    let uri = Uri::parse(uri).map_err(ParseError::RequestUri)?;
    if uri.as_sip().is_some_and(|u| !u.headers.is_empty()) {
        // §19.1.1: URI headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        return Err(ParseError::StartLine(
            "headers are not allowed in the Request-URI",
        ));
    }
    let version = parse_version(version).ok_or(ParseError::StartLine("version"))?;
    Ok(StartLine::Request {
        method,
        uri,
        version,
    })
}

/// Parses the start line and headers. Returns the Content-Length separately.
fn parse_head(
    head: &str,
    limits: &Limits,
) -> Result<(StartLine, Headers, Option<usize>), ParseError> {
    let mut lines = unfolded_lines(head);
    let start = lines.next().ok_or(ParseError::Incomplete)?;
    let start = parse_start_line(&start)?;
    let mut headers = Headers::new();
    let mut content_length = None;
    for line in lines {
        if line.len() > limits.max_line_len {
            return Err(ParseError::LineTooLong);
        }
        // HCOLON = *( SP / HTAB ) ":" SWS
        let (name, value) = line.split_once(':').ok_or(ParseError::HeaderLine)?;
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::HeaderLine);
        }
        let name = HeaderName::parse(name);
        let value = value.trim_matches([' ', '\t']);
        if name == HeaderName::ContentLength {
            if content_length.is_some() {
                return Err(ParseError::Duplicate("Content-Length"));
            }
            let length = header::parse_number(value, limits.max_message_len as u64)
                .map_err(ParseError::header("Content-Length"))?;
            content_length = Some(length as usize);
            continue;
        }
        if name.is_list() && value != "*" {
            for part in
                header::split_outside_quotes(value, b',').map_err(|error| ParseError::Header {
                    name: name.canonical(),
                    error,
                })?
            {
                let part = part.trim_matches([' ', '\t']);
                // Empty elements in a list are allowed and ignored (RFC 7230-style #rule).
                if !part.is_empty() {
                    headers.push(name.clone(), part);
                }
            }
        } else {
            headers.push(name, value);
        }
        if headers.len() > limits.max_headers {
            return Err(ParseError::TooManyHeaders);
        }
    }
    Ok((start, headers, content_length))
}

impl StartLine {
    fn into_message(self, headers: Headers, body: Bytes) -> Result<Message, ParseError> {
        let message = match self {
            Self::Request {
                method,
                uri,
                version,
            } => Message::Request(Request {
                method,
                uri,
                version,
                headers,
                body,
            }),
            Self::Response {
                version,
                status,
                reason,
            } => Message::Response(Response {
                version,
                status,
                reason,
                headers,
                body,
            }),
        };
        validate(&message)?;
        Ok(message)
    }
}

/// Checks the headers every element relies on (§8.1.1): one `Call-ID`, `From`, `To` and
/// `CSeq`, at least one `Via`, all well formed; `Max-Forwards` (0-255) when present; the CSeq
/// method equal to the request method; list headers that carry URIs well formed.
fn validate(message: &Message) -> Result<(), ParseError> {
    let headers = message.headers();
    let single = |name: HeaderName, label: &'static str| -> Result<&str, ParseError> {
        let mut values = headers
            .0
            .iter()
            .filter(|h| h.name == name)
            .map(|h| h.value.as_str());
        let first = values.next().ok_or(ParseError::Missing(label))?;
        if values.next().is_some() {
            return Err(ParseError::Duplicate(label));
        }
        Ok(first)
    };
    let call_id = single(HeaderName::CallId, "Call-ID")?;
    // callid = word [ "@" word ]; a word is printable ASCII without spaces.
    let call_id_ok = !call_id.is_empty()
        && call_id.split('@').count() <= 2
        && call_id
            .split('@')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic()));
    if !call_id_ok {
        return Err(ParseError::Header {
            name: "Call-ID",
            error: HeaderError::Syntax("not a word[@word]"),
        });
    }
    NameAddr::parse(single(HeaderName::From, "From")?).map_err(ParseError::header("From"))?;
    NameAddr::parse(single(HeaderName::To, "To")?).map_err(ParseError::header("To"))?;
    let cseq =
        CSeq::parse(single(HeaderName::CSeq, "CSeq")?).map_err(ParseError::header("CSeq"))?;
    let mut vias = 0;
    for via in headers.get_all(&HeaderName::Via) {
        Via::parse(via).map_err(ParseError::header("Via"))?;
        vias += 1;
    }
    if vias == 0 {
        return Err(ParseError::Missing("Via"));
    }
    let mut max_forwards = headers.get_all(&HeaderName::MaxForwards);
    if let Some(value) = max_forwards.next() {
        if max_forwards.next().is_some() {
            return Err(ParseError::Duplicate("Max-Forwards"));
        }
        header::parse_number(value, 255).map_err(ParseError::header("Max-Forwards"))?;
    }
    for (name, label) in [
        (HeaderName::Route, "Route"),
        (HeaderName::RecordRoute, "Record-Route"),
    ] {
        for value in headers.get_all(&name) {
            let route = NameAddr::parse(value).map_err(ParseError::header(label))?;
            if !route.bracketed {
                return Err(ParseError::Header {
                    name: label,
                    error: HeaderError::Syntax("route URIs must be in <>"),
                });
            }
        }
    }
    for value in headers.get_all(&HeaderName::Contact) {
        if value != "*" {
            NameAddr::parse(value).map_err(ParseError::header("Contact"))?;
        }
    }
    if let Some(value) = headers.get(&HeaderName::Expires) {
        header::parse_number(value, u64::from(u32::MAX)).map_err(ParseError::header("Expires"))?;
    }
    if let Message::Request(request) = message
        && request.method != cseq.method
    {
        return Err(ParseError::CSeqMismatch);
    }
    Ok(())
}

fn write_headers(out: &mut String, headers: &Headers, body: &[u8]) {
    for header in headers.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{}: {}\r\n", header.name, header.value);
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
}

impl Request {
    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} SIP/{}.{}\r\n",
            self.method, self.uri, self.version.0, self.version.1
        );
        write_headers(&mut head, &self.headers, &self.body);
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl Response {
    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "SIP/{}.{} {} {}\r\n",
            self.version.0, self.version.1, self.status, self.reason
        );
        write_headers(&mut head, &self.headers, &self.body);
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl Message {
    /// The message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Request(r) => r.to_bytes(),
            Self::Response(r) => r.to_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        To: Bob <sip:bob@biloxi.com>\r\n\
        From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@pc33.atlanta.com>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\
        \r\n\
        v=0\r";

    fn parse(text: &str) -> Result<Message, ParseError> {
        Message::parse(text.as_bytes(), &Limits::default())
    }

    fn request(text: &str) -> Request {
        match parse(text).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }

    #[test]
    fn parses_the_rfc_3261_invite() {
        let r = request(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri.to_string(), "sip:bob@biloxi.com");
        assert_eq!(
            r.headers.get(&HeaderName::CallId),
            Some("a84b4c76e66710@pc33.atlanta.com")
        );
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(
            r.headers.get(&HeaderName::ContentLength),
            None,
            "Content-Length is derived"
        );
        assert_eq!(
            Message::parse(&r.to_bytes(), &Limits::default()).unwrap(),
            Message::Request(r)
        );
    }

    #[test]
    fn compact_forms_folding_and_lists() {
        let text = "OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h1;branch=z9hG4bK1, SIP/2.0/TCP h2;branch=z9hG4bK2\r\n\
            f: <sip:c@d>;tag=1\r\nt: sip:a@b\r\ni: x@y\r\nCSeq: 1\r\n  OPTIONS\r\nSupported: timer,\r\n 100rel\r\nl: 0\r\n\r\n";
        let r = request(text);
        let vias: Vec<&str> = r.headers.get_all(&HeaderName::Via).collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP h1;branch=z9hG4bK1",
                "SIP/2.0/TCP h2;branch=z9hG4bK2"
            ]
        );
        assert_eq!(r.headers.get(&HeaderName::CSeq), Some("1 OPTIONS"));
        let supported: Vec<&str> = r.headers.get_all(&HeaderName::Supported).collect();
        assert_eq!(supported, ["timer", "100rel"]);
        assert_eq!(r.headers.get(&HeaderName::From), Some("<sip:c@d>;tag=1"));
    }

    #[test]
    fn responses_and_udp_body_rules() {
        let text = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\nabEXTRA";
        let Message::Response(r) = parse(text).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(
            (r.status, r.reason.as_str(), &r.body[..]),
            (180, "Ringing", &b"ab"[..])
        );
        let no_length = text.replace("Content-Length: 2\r\n", "");
        assert_eq!(&parse(&no_length).unwrap().body()[..], b"abEXTRA");
        let short = text.replace("Content-Length: 2", "Content-Length: 20");
        assert_eq!(parse(&short), Err(ParseError::Truncated));
        let bare_lf = text.replace("\r\n", "\n");
        assert!(parse(&bare_lf).is_ok());
    }

    #[test]
    fn refuses_bad_messages() {
        let base = INVITE;
        let cases: &[(&str, &str, ParseError)] = &[
            (
                "INVITE sip:bob@biloxi.com SIP/2.0",
                "INVITE  sip:bob@biloxi.com SIP/2.0",
                ParseError::StartLine("request line must be `METHOD URI SIP/2.0`"),
            ),
            (
                "INVITE sip:bob@biloxi.com SIP/2.0",
                "INVITE sip:bob@biloxi.com SIP/2.0 ",
                ParseError::StartLine("request line must be `METHOD URI SIP/2.0`"),
            ),
            (
                "INVITE sip:bob@biloxi.com SIP/2.0",
                "INVITE <sip:bob@biloxi.com> SIP/2.0",
                ParseError::RequestUri(UriError::NoScheme),
            ),
            (
                "Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n",
                "",
                ParseError::Missing("Call-ID"),
            ),
            (
                "Max-Forwards: 70",
                "Max-Forwards: 300",
                ParseError::Header {
                    name: "Max-Forwards",
                    error: HeaderError::Syntax("number too large"),
                },
            ),
            (
                "CSeq: 314159 INVITE",
                "CSeq: 314159 BYE",
                ParseError::CSeqMismatch,
            ),
            (
                "Content-Length: 4",
                "Content-Length: -4",
                ParseError::Header {
                    name: "Content-Length",
                    error: HeaderError::Syntax("not a number"),
                },
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nBad Header: x\r\n",
                ParseError::HeaderLine,
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nno colon here\r\n",
                ParseError::HeaderLine,
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nContent-Length: 4\r\n",
                ParseError::Duplicate("Content-Length"),
            ),
        ];
        for (from, to, expected) in cases {
            let text = base.replace(from, to);
            assert_eq!(parse(&text).as_ref().err(), Some(expected), "{to:?}");
        }
        assert_eq!(
            parse("INVITE sip:a@b SIP/2.0\r\nVia: x"),
            Err(ParseError::Incomplete)
        );
        assert_eq!(
            Message::parse(&b"\xff\xfe\r\n\r\n"[..], &Limits::default()),
            Err(ParseError::NotUtf8)
        );
        // Found by the sip_message fuzz target: a multi-byte character across byte 4 of the
        // start line once panicked on a `&line[..4]` slice.
        assert!(Message::parse(" \u{14}*\u{1f5} \r\n\r\n".as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn limits_hold() {
        let limits = Limits {
            max_message_len: 1_000,
            max_headers: 12,
            max_line_len: 200,
        };
        assert_eq!(
            Message::parse(&[b'x'; 1_001], &limits),
            Err(ParseError::TooLarge)
        );
        let many = INVITE.replace("Max-Forwards: 70\r\n", &"Subject: x\r\n".repeat(20));
        assert_eq!(
            Message::parse(many.as_bytes(), &limits),
            Err(ParseError::TooManyHeaders)
        );
        let long = INVITE.replace(
            "Max-Forwards: 70\r\n",
            &format!("Subject: {}\r\n", "y".repeat(300)),
        );
        assert_eq!(
            Message::parse(long.as_bytes(), &limits),
            Err(ParseError::LineTooLong)
        );
    }

    #[test]
    fn framing_streams() {
        let limits = Limits::default();
        let bytes = INVITE.as_bytes();
        assert_eq!(frame_len(&bytes[..50], &limits), Ok(None));
        assert_eq!(frame_len(&bytes[..bytes.len() - 1], &limits), Ok(None));
        assert_eq!(frame_len(bytes, &limits), Ok(Some(bytes.len())));
        let mut two = bytes.to_vec();
        two.extend_from_slice(bytes);
        assert_eq!(frame_len(&two, &limits), Ok(Some(bytes.len())));
        let no_length = INVITE.replace("Content-Length: 4\r\n", "");
        assert_eq!(
            frame_len(no_length.as_bytes(), &limits),
            Err(ParseError::Missing("Content-Length"))
        );
        let huge = INVITE.replace("Content-Length: 4", "Content-Length: 999999");
        assert!(frame_len(huge.as_bytes(), &limits).is_err());
    }

    #[test]
    fn header_editing() {
        let mut headers = Headers::new();
        headers.push(HeaderName::Via, "SIP/2.0/UDP a");
        headers.push(HeaderName::To, "<sip:a@b>");
        headers.push_front(HeaderName::Via, "SIP/2.0/UDP b");
        assert_eq!(headers.get(&HeaderName::Via), Some("SIP/2.0/UDP b"));
        headers.set(HeaderName::Via, "SIP/2.0/UDP c");
        assert_eq!(
            headers.get_all(&HeaderName::Via).collect::<Vec<_>>(),
            ["SIP/2.0/UDP c"]
        );
        assert_eq!(headers.remove(&HeaderName::To), 1);
        assert_eq!(HeaderName::parse("cAlL-iD"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("X-Custom").as_str(), "X-Custom");
    }
}

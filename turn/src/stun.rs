//! The STUN message codec (RFC 8489) with the TURN attributes (RFC 8656 §18) and TURN's
//! ChannelData framing (RFC 8656 §12.4): sans-IO, zero-copy on decode, allocation-free on encode
//! once the caller's buffer has grown.
//!
//! - [`Message::decode`] checks the header (§5) and walks the attributes (§14) of one datagram,
//!   remembering up to [`MAX_ATTRIBUTES`] of them by offset; typed accessors such as
//!   [`Message::xor_peer_address`] parse a value only when asked.
//! - [`MessageBuilder`] writes a message into a reusable `Vec<u8>`, and appends
//!   MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT computed over what was written.
//! - [`Message::verify_integrity`] and [`Message::verify_fingerprint`] check them; MACs are
//!   compared in constant time. [`long_term_key`] derives the long-term credential key (§9.2.2).
//! - [`parse_channel_data`] and [`classify`] are the data-path helpers: ChannelData framing and
//!   the first-byte demultiplexing of RFC 7983.
//!
//! Nothing here panics on hostile input: every malformed message is a [`DecodeError`], and
//! decoding does bounded work (at most [`MAX_ATTRIBUTES`] attributes, one pass).
//!
//! Strings are taken as given: applying OpaqueString (RFC 8265) or SASLprep to usernames,
//! passwords and realms is the caller's job.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// The fixed value in bytes 4–7 of every STUN message (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN header: type, length, magic cookie, transaction id (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;

/// The most attributes [`Message::decode`] walks; a message with more is refused with
/// [`DecodeError::TooManyAttributes`]. The largest legitimate TURN messages carry about a dozen.
pub const MAX_ATTRIBUTES: usize = 32;

/// Largest message length field: the 16-bit field must also be a multiple of 4 (RFC 8489 §5).
const MAX_BODY_LEN: usize = 0xFFFC;

/// What FINGERPRINT's CRC-32 is XORed with (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Value length of MESSAGE-INTEGRITY: an HMAC-SHA1 (RFC 8489 §14.5).
const INTEGRITY_LEN: usize = 20;

/// Value length of an untruncated MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
const INTEGRITY_SHA256_LEN: usize = 32;

/// Value length of FINGERPRINT (RFC 8489 §14.7).
const FINGERPRINT_LEN: usize = 4;

/// A STUN method: the 12 method bits of the message type (RFC 8489 §5). Unknown methods decode
/// too, so that a server can answer them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    /// Binding (RFC 8489 §18.2).
    pub const BINDING: Self = Self(0x001);
    /// Allocate (RFC 8656 §17).
    pub const ALLOCATE: Self = Self(0x003);
    /// Refresh (RFC 8656 §17).
    pub const REFRESH: Self = Self(0x004);
    /// Send, an indication only (RFC 8656 §17).
    pub const SEND: Self = Self(0x006);
    /// Data, an indication only (RFC 8656 §17).
    pub const DATA: Self = Self(0x007);
    /// CreatePermission (RFC 8656 §17).
    pub const CREATE_PERMISSION: Self = Self(0x008);
    /// ChannelBind (RFC 8656 §17).
    pub const CHANNEL_BIND: Self = Self(0x009);

    /// The method numbered `value`, if it fits the 12 method bits.
    pub const fn new(value: u16) -> Option<Self> {
        if value <= 0x0FFF {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The method number.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// The RFC name of a method this crate knows.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x001 => "Binding",
            0x003 => "Allocate",
            0x004 => "Refresh",
            0x006 => "Send",
            0x007 => "Data",
            0x008 => "CreatePermission",
            0x009 => "ChannelBind",
            _ => return None,
        })
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Method({:#05x})", self.0),
        }
    }
}

/// The class of a STUN message: the two class bits of the message type (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// `0b00`.
    Request,
    /// `0b01`.
    Indication,
    /// `0b10`, a success response.
    Success,
    /// `0b11`, an error response.
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Self::Request => 0b00,
            Self::Indication => 0b01,
            Self::Success => 0b10,
            Self::Error => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Self::Request,
            0b01 => Self::Indication,
            0b10 => Self::Success,
            _ => Self::Error,
        }
    }
}

/// Interleaves method and class into the 14-bit message type (RFC 8489 §5, figure 3):
/// `M11..M7 C1 M6..M4 C0 M3..M0`.
const fn encode_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// The inverse of [`encode_type`]; the two leading zero bits are checked by the caller.
const fn decode_type(message_type: u16) -> (Method, Class) {
    let m =
        (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80);
    let c = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10);
    (Method(m), Class::from_bits(c))
}

/// The method, class and transaction id of bytes that start like a STUN message (leading
/// zero bits and the magic cookie), even when the rest does not decode: enough to answer a
/// malformed request with 400 (RFC 8489 §6.3).
pub fn peek_header(bytes: &[u8]) -> Option<(Method, Class, TransactionId)> {
    let header = bytes.first_chunk::<HEADER_LEN>()?;
    let message_type = u16::from_be_bytes([header[0], header[1]]);
    if message_type & 0xC000 != 0
        || u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE
    {
        return None;
    }
    let (method, class) = decode_type(message_type);
    let mut id = [0; 12];
    id.copy_from_slice(&header[8..]);
    Some((method, class, TransactionId(id)))
}

/// The 96-bit transaction id (RFC 8489 §5). Requests need a fresh random one: draw it from the
/// injected RNG, this crate never reads a global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// Attribute types and their comprehension ranges (RFC 8489 §14 and §18.3, RFC 8656 §18,
/// RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 §18.4).
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 §14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656 §18.7).
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH (RFC 8489 §14.4).
    pub const USERHASH: u16 = 0x001E;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// PRIORITY (ICE, RFC 8445 §7.1.1).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE, RFC 8445 §7.1.2).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// ICMP (RFC 8656 §18.13).
    pub const ICMP: u16 = 0x8004;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED (ICE, RFC 8445 §7.1.3).
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING (ICE, RFC 8445 §7.1.3).
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Whether this codec knows `attr_type`: the attributes above.
    pub const fn is_known(attr_type: u16) -> bool {
        matches!(
            attr_type,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
                | ADDITIONAL_ADDRESS_FAMILY
                | ADDRESS_ERROR_CODE
                | PASSWORD_ALGORITHMS
                | ALTERNATE_DOMAIN
                | ICMP
                | SOFTWARE
                | ALTERNATE_SERVER
                | FINGERPRINT
                | ICE_CONTROLLED
                | ICE_CONTROLLING
        )
    }

    /// Whether an agent that does not understand `attr_type` must refuse the message
    /// (0x0000–0x7FFF, RFC 8489 §14).
    pub const fn is_comprehension_required(attr_type: u16) -> bool {
        attr_type < 0x8000
    }
}

/// ERROR-CODE values used by STUN and TURN (RFC 8489 §14.8, RFC 8656 §19, RFC 8445 §7.3.1.1).
pub mod error_code {
    /// 300 Try Alternate (RFC 8489).
    pub const TRY_ALTERNATE: u16 = 300;
    /// 400 Bad Request (RFC 8489).
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated (RFC 8489).
    pub const UNAUTHENTICATED: u16 = 401;
    /// 403 Forbidden (RFC 8656).
    pub const FORBIDDEN: u16 = 403;
    /// 405 Mobility Forbidden (RFC 8656).
    pub const MOBILITY_FORBIDDEN: u16 = 405;
    /// 420 Unknown Attribute (RFC 8489); the response carries UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 437 Allocation Mismatch (RFC 8656).
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce (RFC 8489).
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported (RFC 8656).
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// 441 Wrong Credentials (RFC 8656).
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// 442 Unsupported Transport Protocol (RFC 8656).
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
    /// 443 Peer Address Family Mismatch (RFC 8656).
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// 486 Allocation Quota Reached (RFC 8656).
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// 487 Role Conflict (ICE, RFC 8445).
    pub const ROLE_CONFLICT: u16 = 487;
    /// 500 Server Error (RFC 8489).
    pub const SERVER_ERROR: u16 = 500;
    /// 508 Insufficient Capacity (RFC 8656).
    pub const INSUFFICIENT_CAPACITY: u16 = 508;
}

/// An address family number as carried by the address attributes (RFC 8489 §14.1) and by
/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.6, §18.11). Unknown
/// values decode, so that a server can answer 440 rather than 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressFamily(pub u8);

impl AddressFamily {
    /// IPv4, `0x01`.
    pub const IPV4: Self = Self(0x01);
    /// IPv6, `0x02`.
    pub const IPV6: Self = Self(0x02);
}

/// A password algorithm number (RFC 8489 §14.11, §18.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithm(pub u16);

impl PasswordAlgorithm {
    /// MD5, `0x0001`: the RFC 5389 key, and the default when no algorithm is negotiated.
    pub const MD5: Self = Self(0x0001);
    /// SHA-256, `0x0002`.
    pub const SHA256: Self = Self(0x0002);
}

/// An ERROR-CODE value (RFC 8489 §14.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// 300–699: class × 100 + number.
    pub code: u16,
    /// The UTF-8 reason phrase.
    pub reason: &'a str,
}

/// An ICMP value: an ICMP error a relay received for a peer (RFC 8656 §18.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// ICMP type, as in the ICMPv4 or ICMPv6 packet.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Type-specific error data, for example the MTU of a "packet too big".
    pub error_data: u32,
}

/// One attribute as it appears in a message, value without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type.
    pub attr_type: u16,
    /// The value, without padding.
    pub value: &'a [u8],
}

/// Why bytes are not an acceptable STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 20 header bytes.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The two leading bits of the message type are not zero (RFC 8489 §5).
    #[error("the two leading bits are not zero")]
    NotStun,
    /// Bytes 4–7 are not the magic cookie (RFC 8489 §5).
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The message length is not a multiple of 4 (RFC 8489 §5).
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(usize),
    /// The message length field disagrees with the bytes after the header.
    #[error("message length says {declared} bytes, {available} follow the header")]
    LengthMismatch {
        /// The length field.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// An attribute's value runs past the end of the message.
    #[error("attribute {attr_type:#06x} runs past the end of the message")]
    TruncatedAttribute {
        /// Its type.
        attr_type: u16,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    #[error("an attribute follows FINGERPRINT")]
    FingerprintNotLast,
    /// A typed accessor found a value of the wrong shape.
    #[error("malformed attribute {attr_type:#06x}")]
    MalformedAttribute {
        /// Its type.
        attr_type: u16,
    },
}

/// Why a message-integrity or fingerprint check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The attribute is absent (or ignored, per the ordering rules of RFC 8489 §14.5–§14.6).
    #[error("attribute absent")]
    Missing,
    /// The attribute has a length the RFC does not allow.
    #[error("attribute has an invalid length")]
    Malformed,
    /// The value does not match the message.
    #[error("value does not match")]
    Mismatch,
}

/// Which MAC [`Message::verify_integrity`] checked; a response should use the same one
/// (RFC 8489 §9.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityAlgorithm {
    /// MESSAGE-INTEGRITY, HMAC-SHA1.
    HmacSha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256.
    HmacSha256,
}

/// Why [`MessageBuilder`] refused an attribute. The message is left as it was before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message would exceed the 16-bit length field.
    #[error("message would exceed 65532 bytes after the header")]
    MessageTooLong,
    /// The value exceeds what the attribute allows (or 65535 bytes).
    #[error("value too long for attribute {attr_type:#06x}")]
    ValueTooLong {
        /// Its type.
        attr_type: u16,
    },
    /// The value is outside the attribute's range (an error code outside 300–699, a channel
    /// number outside 0x4000–0x4FFF).
    #[error("invalid value for attribute {attr_type:#06x}")]
    InvalidValue {
        /// Its type.
        attr_type: u16,
    },
    /// The attribute cannot follow MESSAGE-INTEGRITY(-SHA256) or FINGERPRINT
    /// (RFC 8489 §14.5–§14.7).
    #[error("attribute {attr_type:#06x} cannot follow the integrity or fingerprint attributes")]
    Misordered {
        /// Its type.
        attr_type: u16,
    },
    /// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are computed: add them with their own methods.
    #[error("attribute {attr_type:#06x} is computed; use its own builder method")]
    ComputedAttribute {
        /// Its type.
        attr_type: u16,
    },
}

/// Rounds an attribute value length up to the 4-byte boundary (RFC 8489 §14).
const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// A byte range of the message, established by [`Message::decode`].
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    attr_type: u16,
    /// Offset of the attribute header from the end of the STUN header.
    offset: u16,
    /// Value length, without padding.
    len: u16,
}

/// A decoded STUN message borrowing the datagram: header fields plus the offsets of the
/// attributes an agent must look at. Attributes after MESSAGE-INTEGRITY other than
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and after MESSAGE-INTEGRITY-SHA256 other than
/// FINGERPRINT, are ignored, as RFC 8489 §14.5–§14.6 require: no accessor sees them.
#[derive(Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    method: Method,
    class: Class,
    transaction_id: TransactionId,
    slots: [Slot; MAX_ATTRIBUTES],
    visible: usize,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("method", &self.method)
            .field("class", &self.class)
            .field("transaction_id", &self.transaction_id)
            .field(
                "attributes",
                &self
                    .attributes()
                    .map(|a| (a.attr_type, a.value.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'a> Message<'a> {
    /// Decodes one STUN message that fills `bytes` exactly (one UDP datagram, or one frame cut
    /// from a stream using the length field). Checks the header (RFC 8489 §5) and the attribute
    /// framing (§14), not the attribute values: the accessors do that.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort);
        };
        let message_type = u16::from_be_bytes([header[0], header[1]]);
        if message_type & 0xC000 != 0 {
            return Err(DecodeError::NotStun);
        }
        let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie);
        }
        if declared % 4 != 0 {
            return Err(DecodeError::UnalignedLength(declared));
        }
        let body = &bytes[HEADER_LEN..];
        if declared != body.len() {
            return Err(DecodeError::LengthMismatch {
                declared,
                available: body.len(),
            });
        }
        let mut transaction_id = [0; 12];
        transaction_id.copy_from_slice(&header[8..]);
        let (method, class) = decode_type(message_type);

        let mut slots = [Slot::default(); MAX_ATTRIBUTES];
        let mut visible = 0;
        let mut walked = 0;
        let (mut seen_integrity, mut seen_integrity_sha256, mut seen_fingerprint) =
            (false, false, false);
        let mut at = 0;
        while at < body.len() {
            // `body.len() - at` is a positive multiple of 4, so an attribute header is there.
            let Some(&[t0, t1, l0, l1]) = body.get(at..at + 4) else {
                return Err(DecodeError::TruncatedAttribute { attr_type: 0 });
            };
            let attr_type = u16::from_be_bytes([t0, t1]);
            let len = u16::from_be_bytes([l0, l1]);
            walked += 1;
            if walked > MAX_ATTRIBUTES {
                return Err(DecodeError::TooManyAttributes);
            }
            if seen_fingerprint {
                return Err(DecodeError::FingerprintNotLast);
            }
            if at + 4 + usize::from(len) > body.len() {
                return Err(DecodeError::TruncatedAttribute { attr_type });
            }
            let shown = match attr_type {
                attr::FINGERPRINT => true,
                _ if seen_integrity_sha256 => false,
                attr::MESSAGE_INTEGRITY_SHA256 => true,
                _ => !seen_integrity,
            };
            if shown {
                slots[visible] = Slot {
                    attr_type,
                    // `at < body.len() <= 0xFFFF`.
                    offset: at as u16,
                    len,
                };
                // `visible <= walked <= MAX_ATTRIBUTES` keeps the index above in bounds.
                visible += 1;
            }
            match attr_type {
                attr::MESSAGE_INTEGRITY => seen_integrity = true,
                attr::MESSAGE_INTEGRITY_SHA256 => seen_integrity_sha256 = true,
                attr::FINGERPRINT => seen_fingerprint = true,
                _ => {}
            }
            // The value ends inside a body whose length is a multiple of 4, so its padding does.
            at += 4 + padded(usize::from(len));
        }
        Ok(Self {
            bytes,
            method,
            class,
            transaction_id: TransactionId(transaction_id),
            slots,
            visible,
        })
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    fn slots(&self) -> &[Slot] {
        // `visible <= MAX_ATTRIBUTES`, checked while decoding.
        &self.slots[..self.visible]
    }

    fn raw(&self, slot: Slot) -> RawAttribute<'a> {
        let start = HEADER_LEN + usize::from(slot.offset) + 4;
        RawAttribute {
            attr_type: slot.attr_type,
            // `decode` checked that every remembered value lies inside the message.
            value: &self.bytes[start..start + usize::from(slot.len)],
        }
    }

    /// The attributes an agent must look at, in order (see [`Message`] for the ignored ones).
    pub fn attributes(&self) -> impl Iterator<Item = RawAttribute<'a>> + '_ {
        self.slots().iter().map(|&slot| self.raw(slot))
    }

    /// The value of the first `attr_type` attribute; later duplicates are for
    /// [`Message::get_all`] (RFC 8489 §14: "only the first occurrence needs to be processed").
    pub fn get(&self, attr_type: u16) -> Option<&'a [u8]> {
        self.get_all(attr_type).next()
    }

    /// The values of every `attr_type` attribute, in order.
    pub fn get_all(&self, attr_type: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attributes()
            .filter(move |a| a.attr_type == attr_type)
            .map(|a| a.value)
    }

    /// Whether an `attr_type` attribute is present.
    pub fn contains(&self, attr_type: u16) -> bool {
        self.slots().iter().any(|s| s.attr_type == attr_type)
    }

    /// Comprehension-required attributes (0x0000–0x7FFF) this codec does not know, in order:
    /// a server answers a request carrying any with 420 and UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).
    pub fn unknown_comprehension_required(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots()
            .iter()
            .map(|s| s.attr_type)
            .filter(|&t| attr::is_comprehension_required(t) && !attr::is_known(t))
    }

    fn typed<T>(
        &self,
        attr_type: u16,
        parse: impl FnOnce(&'a [u8]) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        self.get(attr_type)
            .map(|value| parse(value).ok_or(DecodeError::MalformedAttribute { attr_type }))
            .transpose()
    }

    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.typed(attr::MAPPED_ADDRESS, parse_address)
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn xor_mapped_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        let id = self.transaction_id;
        self.typed(attr::XOR_MAPPED_ADDRESS, |v| parse_xor_address(v, &id))
    }

    /// The first XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub fn xor_peer_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        let id = self.transaction_id;
        self.typed(attr::XOR_PEER_ADDRESS, |v| parse_xor_address(v, &id))
    }

    /// Every XOR-PEER-ADDRESS: a CreatePermission may carry several (RFC 8656 §9.1).
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + '_ {
        self.xor_addresses(attr::XOR_PEER_ADDRESS)
    }

    /// The first XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub fn xor_relayed_address(&self) -> Result<Option<SocketAddr>, DecodeError> {
        let id = self.transaction_id;
        self.typed(attr::XOR_RELAYED_ADDRESS, |v| parse_xor_address(v, &id))
    }

    /// Every XOR-RELAYED-ADDRESS: a dual-stack allocation has two (RFC 8656 §7).
    pub fn xor_relayed_addresses(
        &self,
    ) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + '_ {
        self.xor_addresses(attr::XOR_RELAYED_ADDRESS)
    }

    fn xor_addresses(
        &self,
        attr_type: u16,
    ) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + '_ {
        self.get_all(attr_type).map(move |v| {
            parse_xor_address(v, &self.transaction_id)
                .ok_or(DecodeError::MalformedAttribute { attr_type })
        })
    }

    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub fn alternate_server(&self) -> Result<Option<SocketAddr>, DecodeError> {
        self.typed(attr::ALTERNATE_SERVER, parse_address)
    }

    /// USERNAME (RFC 8489 §14.3): UTF-8, fewer than 509 bytes.
    pub fn username(&self) -> Result<Option<&'a str>, DecodeError> {
        self.typed(attr::USERNAME, |v| parse_text(v, MAX_USERNAME_BYTES))
    }

    /// USERHASH (RFC 8489 §14.4): 32 bytes, compare with [`userhash`].
    pub fn userhash(&self) -> Result<Option<&'a [u8; 32]>, DecodeError> {
        self.typed(attr::USERHASH, |v| v.try_into().ok())
    }

    /// REALM (RFC 8489 §14.9).
    pub fn realm(&self) -> Result<Option<&'a str>, DecodeError> {
        self.typed(attr::REALM, |v| parse_text(v, MAX_TEXT_DECODE_BYTES))
    }

    /// NONCE (RFC 8489 §14.10).
    pub fn nonce(&self) -> Result<Option<&'a str>, DecodeError> {
        self.typed(attr::NONCE, |v| parse_text(v, MAX_TEXT_DECODE_BYTES))
    }

    /// SOFTWARE (RFC 8489 §14.14).
    pub fn software(&self) -> Result<Option<&'a str>, DecodeError> {
        self.typed(attr::SOFTWARE, |v| parse_text(v, MAX_TEXT_DECODE_BYTES))
    }

    /// ERROR-CODE (RFC 8489 §14.8): the code must be 300–699.
    pub fn error_code(&self) -> Result<Option<ErrorCode<'a>>, DecodeError> {
        self.typed(attr::ERROR_CODE, parse_error_code)
    }

    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the attribute types listed.
    pub fn unknown_attributes(
        &self,
    ) -> Result<Option<impl Iterator<Item = u16> + 'a>, DecodeError> {
        self.typed(attr::UNKNOWN_ATTRIBUTES, |v| {
            (v.len() % 2 == 0).then(|| {
                v.chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            })
        })
    }

    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11): each algorithm with its parameters, in the
    /// server's order of preference.
    pub fn password_algorithms(
        &self,
    ) -> Result<Option<impl Iterator<Item = (PasswordAlgorithm, &'a [u8])> + 'a>, DecodeError> {
        self.typed(attr::PASSWORD_ALGORITHMS, |v| {
            let mut check = AlgorithmList(v);
            while !check.0.is_empty() {
                check.next_entry()?;
            }
            Some(AlgorithmList(v))
        })
    }

    /// PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm with its parameters.
    pub fn password_algorithm(&self) -> Result<Option<(PasswordAlgorithm, &'a [u8])>, DecodeError> {
        self.typed(attr::PASSWORD_ALGORITHM, |v| {
            let mut list = AlgorithmList(v);
            let entry = list.next_entry()?;
            list.0.is_empty().then_some(entry)
        })
    }

    /// CHANNEL-NUMBER (RFC 8656 §18.1), as sent: check it with [`is_channel_number`].
    pub fn channel_number(&self) -> Result<Option<u16>, DecodeError> {
        self.typed(attr::CHANNEL_NUMBER, |v| match *v {
            [a, b, _, _] => Some(u16::from_be_bytes([a, b])),
            _ => None,
        })
    }

    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub fn lifetime(&self) -> Result<Option<u32>, DecodeError> {
        self.typed(attr::LIFETIME, |v| {
            v.try_into().ok().map(u32::from_be_bytes)
        })
    }

    /// DATA (RFC 8656 §18.4).
    pub fn data(&self) -> Result<Option<&'a [u8]>, DecodeError> {
        self.typed(attr::DATA, Some)
    }

    /// REQUESTED-TRANSPORT (RFC 8656 §18.8): an IP protocol number, 17 for UDP.
    pub fn requested_transport(&self) -> Result<Option<u8>, DecodeError> {
        self.typed(attr::REQUESTED_TRANSPORT, |v| match *v {
            [protocol, _, _, _] => Some(protocol),
            _ => None,
        })
    }

    /// Whether DONT-FRAGMENT is present (RFC 8656 §18.9); it must be empty.
    pub fn dont_fragment(&self) -> Result<bool, DecodeError> {
        Ok(self
            .typed(attr::DONT_FRAGMENT, |v| v.is_empty().then_some(()))?
            .is_some())
    }

    /// EVEN-PORT's R bit (RFC 8656 §18.7): whether the next port up should be reserved too.
    pub fn even_port(&self) -> Result<Option<bool>, DecodeError> {
        self.typed(attr::EVEN_PORT, |v| match *v {
            [flags] => Some(flags & 0x80 != 0),
            _ => None,
        })
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub fn reservation_token(&self) -> Result<Option<[u8; 8]>, DecodeError> {
        self.typed(attr::RESERVATION_TOKEN, |v| v.try_into().ok())
    }

    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub fn requested_address_family(&self) -> Result<Option<AddressFamily>, DecodeError> {
        self.typed(attr::REQUESTED_ADDRESS_FAMILY, parse_family)
    }

    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11); only IPv6 is meaningful.
    pub fn additional_address_family(&self) -> Result<Option<AddressFamily>, DecodeError> {
        self.typed(attr::ADDITIONAL_ADDRESS_FAMILY, parse_family)
    }

    /// ICMP (RFC 8656 §18.13).
    pub fn icmp(&self) -> Result<Option<Icmp>, DecodeError> {
        self.typed(attr::ICMP, |v| match *v {
            [_, _, icmp_type, code, d0, d1, d2, d3] => Some(Icmp {
                icmp_type,
                code,
                error_data: u32::from_be_bytes([d0, d1, d2, d3]),
            }),
            _ => None,
        })
    }

    fn slot_of(&self, attr_type: u16) -> Option<Slot> {
        self.slots()
            .iter()
            .copied()
            .find(|s| s.attr_type == attr_type)
    }

    /// Feeds `mac` the message up to the attribute in `slot`, with the header's length field
    /// set as if that attribute ended the message (RFC 8489 §14.5, §14.6).
    fn feed_signed_prefix<M: hmac::Mac>(&self, mac: &mut M, slot: Slot) {
        let end = usize::from(slot.offset);
        let mut header = [0; HEADER_LEN];
        header.copy_from_slice(&self.bytes[..HEADER_LEN]);
        // The attribute lies inside the message, so this is at most the real length.
        let length = (end + 4 + usize::from(slot.len)) as u16;
        header[2..4].copy_from_slice(&length.to_be_bytes());
        mac.update(&header);
        mac.update(&self.bytes[HEADER_LEN..HEADER_LEN + end]);
    }

    /// Checks MESSAGE-INTEGRITY, HMAC-SHA1 keyed with `key` (RFC 8489 §14.5), in constant time.
    pub fn verify_message_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let slot = self
            .slot_of(attr::MESSAGE_INTEGRITY)
            .ok_or(IntegrityError::Missing)?;
        if usize::from(slot.len) != INTEGRITY_LEN {
            return Err(IntegrityError::Malformed);
        }
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        self.feed_signed_prefix(&mut mac, slot);
        mac.verify_slice(self.raw(slot).value)
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Checks MESSAGE-INTEGRITY-SHA256, HMAC-SHA256 keyed with `key` (RFC 8489 §14.6), in
    /// constant time. A value truncated to 16–28 bytes (a multiple of 4) is compared with the
    /// leading bytes of the HMAC.
    pub fn verify_message_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let slot = self
            .slot_of(attr::MESSAGE_INTEGRITY_SHA256)
            .ok_or(IntegrityError::Missing)?;
        if !matches!(slot.len, 16 | 20 | 24 | 28 | 32) {
            return Err(IntegrityError::Malformed);
        }
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        self.feed_signed_prefix(&mut mac, slot);
        mac.verify_truncated_left(self.raw(slot).value)
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, as a server does
    /// (RFC 8489 §9.2.4), and says which.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<IntegrityAlgorithm, IntegrityError> {
        if self.contains(attr::MESSAGE_INTEGRITY_SHA256) {
            self.verify_message_integrity_sha256(key)?;
            Ok(IntegrityAlgorithm::HmacSha256)
        } else {
            self.verify_message_integrity(key)?;
            Ok(IntegrityAlgorithm::HmacSha1)
        }
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7).
    pub fn verify_fingerprint(&self) -> Result<(), IntegrityError> {
        let slot = self
            .slot_of(attr::FINGERPRINT)
            .ok_or(IntegrityError::Missing)?;
        let Ok(value) = <[u8; 4]>::try_from(self.raw(slot).value) else {
            return Err(IntegrityError::Malformed);
        };
        // FINGERPRINT is last, so the length field already counts it.
        let expected =
            crc32(&self.bytes[..HEADER_LEN + usize::from(slot.offset)]) ^ FINGERPRINT_XOR;
        if u32::from_be_bytes(value) == expected {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }
}

/// USERNAME must be fewer than 509 bytes (RFC 8489 §14.3).
const MAX_USERNAME_BYTES: usize = 508;
/// REALM, NONCE, SOFTWARE and reason phrases: fewer than 128 characters, "as long as 763 bytes
/// when decoding them" (RFC 8489 §14.8–§14.10, §14.14).
const MAX_TEXT_DECODE_BYTES: usize = 763;
/// ... and fewer than 128 characters when encoding them.
const MAX_TEXT_CHARS: usize = 127;

fn parse_text(value: &[u8], max_bytes: usize) -> Option<&str> {
    if value.len() > max_bytes {
        return None;
    }
    std::str::from_utf8(value).ok()
}

fn parse_family(value: &[u8]) -> Option<AddressFamily> {
    match *value {
        [family, _, _, _] => Some(AddressFamily(family)),
        _ => None,
    }
}

fn parse_error_code(value: &[u8]) -> Option<ErrorCode<'_>> {
    let (&[_, _, class, number], reason) = value.split_first_chunk::<4>()?;
    let class = u16::from(class & 0x07);
    if !(3..=6).contains(&class) || number > 99 {
        return None;
    }
    Some(ErrorCode {
        code: class * 100 + u16::from(number),
        reason: parse_text(reason, MAX_TEXT_DECODE_BYTES)?,
    })
}

/// The entries of PASSWORD-ALGORITHMS / PASSWORD-ALGORITHM (RFC 8489 §14.11, §14.12).
struct AlgorithmList<'a>(&'a [u8]);

impl<'a> AlgorithmList<'a> {
    fn next_entry(&mut self) -> Option<(PasswordAlgorithm, &'a [u8])> {
        let (&[a0, a1, l0, l1], rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let parameters = rest.get(..len)?;
        // Parameters are padded to 4 bytes inside the value (RFC 8489 §14.11).
        self.0 = rest.get(padded(len)..)?;
        Some((PasswordAlgorithm(u16::from_be_bytes([a0, a1])), parameters))
    }
}

impl<'a> Iterator for AlgorithmList<'a> {
    type Item = (PasswordAlgorithm, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry()
    }
}

/// MAPPED-ADDRESS layout (RFC 8489 §14.1): zero byte, family, port, address.
fn parse_address(value: &[u8]) -> Option<SocketAddr> {
    let (&[_, family, p0, p1], address) = value.split_first_chunk::<4>()?;
    let port = u16::from_be_bytes([p0, p1]);
    let ip = match (AddressFamily(family), address.len()) {
        (AddressFamily::IPV4, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(address).ok()?)),
        (AddressFamily::IPV6, 16) => {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(address).ok()?))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn parse_xor_address(value: &[u8], id: &TransactionId) -> Option<SocketAddr> {
    parse_address(value).map(|a| xor_address(a, id))
}

/// XORs an address with the magic cookie and, for IPv6, the transaction id (RFC 8489 §14.2).
/// Its own inverse.
fn xor_address(address: SocketAddr, id: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = address.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match address.ip() {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) ^ MAGIC_COOKIE)),
        IpAddr::V6(ip) => {
            let mut octets = ip.octets();
            for (octet, mask) in octets.iter_mut().zip(cookie.iter().chain(&id.0)) {
                *octet ^= mask;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    SocketAddr::new(ip, port)
}

/// The MAPPED-ADDRESS value for `address`, and how many of the 20 bytes it uses.
fn encode_address(address: SocketAddr) -> ([u8; 20], usize) {
    let mut out = [0; 20];
    out[2..4].copy_from_slice(&address.port().to_be_bytes());
    match address.ip() {
        IpAddr::V4(ip) => {
            out[1] = AddressFamily::IPV4.0;
            out[4..8].copy_from_slice(&ip.octets());
            (out, 8)
        }
        IpAddr::V6(ip) => {
            out[1] = AddressFamily::IPV6.0;
            out[4..20].copy_from_slice(&ip.octets());
            (out, 20)
        }
    }
}

/// A long-term credential key (RFC 8489 §9.2.2): 16 bytes for MD5, 32 for SHA-256. Its
/// `Debug` hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct LongTermKey {
    bytes: [u8; 32],
    len: usize,
}

impl LongTermKey {
    /// The key bytes, for [`MessageBuilder::add_message_integrity`] and the verify methods.
    pub fn as_bytes(&self) -> &[u8] {
        // `len` is 16 or 32, set by `long_term_key`.
        &self.bytes[..self.len]
    }

    /// A key kept from an earlier [`long_term_key`] (16 bytes for MD5, 32 for SHA-256);
    /// `None` for any other length.
    pub fn from_bytes(key: &[u8]) -> Option<Self> {
        if key.len() != 16 && key.len() != 32 {
            return None;
        }
        let mut bytes = [0; 32];
        bytes[..key.len()].copy_from_slice(key);
        Some(Self {
            bytes,
            len: key.len(),
        })
    }
}

impl AsRef<[u8]> for LongTermKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LongTermKey(<redacted>)")
    }
}

/// The long-term credential key `H(username ":" realm ":" password)` with `H` chosen by
/// `algorithm`: MD5 (the RFC 5389 key) or SHA-256 (RFC 8489 §9.2.2, §18.5); `None` for other
/// algorithms. The inputs must already have been through OpaqueString (RFC 8265; SASLprep for
/// RFC 5389 peers) and the realm must be the REALM value as sent.
pub fn long_term_key(
    algorithm: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> Option<LongTermKey> {
    let parts = [
        username.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ];
    let mut bytes = [0; 32];
    let len = match algorithm {
        PasswordAlgorithm::MD5 => {
            let mut hash = Md5::new();
            parts.iter().for_each(|p| hash.update(p));
            bytes[..16].copy_from_slice(&hash.finalize());
            16
        }
        PasswordAlgorithm::SHA256 => {
            let mut hash = Sha256::new();
            parts.iter().for_each(|p| hash.update(p));
            bytes.copy_from_slice(&hash.finalize());
            32
        }
        _ => return None,
    };
    Some(LongTermKey { bytes, len })
}

/// The short-term credential key: the password itself, after OpaqueString (RFC 8489 §9.1.1).
/// ICE uses it with the remote ufrag's password.
pub const fn short_term_key(password: &str) -> &[u8] {
    password.as_bytes()
}

/// The USERHASH value `SHA-256(username ":" realm)` (RFC 8489 §14.4), inputs after
/// OpaqueString.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(username)
        .chain_update(":")
        .chain_update(realm)
        .finalize()
        .into()
}

/// CRC-32 as in ISO 3309 / ITU-T V.42 (reflected, polynomial 0xEDB88320), which FINGERPRINT
/// uses (RFC 8489 §14.7).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| {
        TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Any attribute may follow.
    Open,
    /// After MESSAGE-INTEGRITY: only MESSAGE-INTEGRITY-SHA256 or FINGERPRINT.
    AfterIntegrity,
    /// After MESSAGE-INTEGRITY-SHA256: only FINGERPRINT.
    AfterIntegritySha256,
    /// After FINGERPRINT: nothing.
    Finished,
}

/// Writes one STUN message into a caller's `Vec<u8>`, keeping the header's length field up to
/// date after every attribute. Reusing the same `Vec` means no allocation once it has grown to
/// the largest message sent.
///
/// ```
/// use switchboard_turn::stun::{Class, Message, MessageBuilder, Method, TransactionId};
///
/// let mut buf = Vec::new();
/// let id = TransactionId([7; 12]);
/// let mut builder = MessageBuilder::new(&mut buf, Method::BINDING, Class::Success, id);
/// builder.add_xor_mapped_address("192.0.2.1:32853".parse().unwrap())?;
/// builder.add_message_integrity(b"password")?;
/// builder.add_fingerprint()?;
/// let bytes = builder.finish();
///
/// let message = Message::decode(bytes)?;
/// assert_eq!(message.xor_mapped_address()?, Some("192.0.2.1:32853".parse().unwrap()));
/// assert!(message.verify_message_integrity(b"password").is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    transaction_id: TransactionId,
    stage: Stage,
    padding: u8,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message in `buf`, replacing what it held.
    pub fn new(
        buf: &'b mut Vec<u8>,
        method: Method,
        class: Class,
        transaction_id: TransactionId,
    ) -> Self {
        buf.clear();
        buf.extend_from_slice(&encode_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id.0);
        Self {
            buf,
            transaction_id,
            stage: Stage::Open,
            padding: 0,
        }
    }

    /// Uses `byte` to pad values instead of zero, as the RFC 5769 vectors do (RFC 8489 §14
    /// lets the padding be anything on the wire).
    #[cfg(test)]
    fn with_padding(mut self, byte: u8) -> Self {
        self.padding = byte;
        self
    }

    /// The transaction id in the header.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The message so far; it is complete and well-formed after every successful call.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf
    }

    /// The finished message.
    pub fn finish(self) -> &'b [u8] {
        self.buf
    }

    fn body_len(&self) -> usize {
        // `new` wrote the header and nothing ever shortens the buffer below it.
        self.buf.len().saturating_sub(HEADER_LEN)
    }

    fn set_body_len(&mut self, body_len: usize) {
        // Callers check `body_len <= MAX_BODY_LEN`.
        let length = (body_len as u16).to_be_bytes();
        self.buf[2..4].copy_from_slice(&length);
    }

    fn check_order(&self, attr_type: u16) -> Result<(), EncodeError> {
        let allowed = match self.stage {
            Stage::Open => true,
            Stage::AfterIntegrity => matches!(
                attr_type,
                attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
            ),
            Stage::AfterIntegritySha256 => attr_type == attr::FINGERPRINT,
            Stage::Finished => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(EncodeError::Misordered { attr_type })
        }
    }

    /// Appends an attribute whose value is the concatenation of `parts`.
    fn push(&mut self, attr_type: u16, parts: &[&[u8]]) -> Result<(), EncodeError> {
        self.check_order(attr_type)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let Ok(len16) = u16::try_from(len) else {
            return Err(EncodeError::ValueTooLong { attr_type });
        };
        let body_len = self.body_len() + 4 + padded(len);
        if body_len > MAX_BODY_LEN {
            return Err(EncodeError::MessageTooLong);
        }
        self.buf.extend_from_slice(&attr_type.to_be_bytes());
        self.buf.extend_from_slice(&len16.to_be_bytes());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        let padding = self.padding;
        self.buf
            .extend(std::iter::repeat_n(padding, padded(len) - len));
        self.set_body_len(body_len);
        Ok(())
    }

    /// Appends any attribute but the computed ones (MESSAGE-INTEGRITY, -SHA256, FINGERPRINT),
    /// value as given: for attributes without a typed method, or to copy one.
    pub fn add_raw(&mut self, attr_type: u16, value: &[u8]) -> Result<(), EncodeError> {
        if matches!(
            attr_type,
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT
        ) {
            return Err(EncodeError::ComputedAttribute { attr_type });
        }
        self.push(attr_type, &[value])
    }

    fn add_address(&mut self, attr_type: u16, address: SocketAddr) -> Result<(), EncodeError> {
        let (value, len) = encode_address(address);
        self.push(attr_type, &[&value[..len]])
    }

    fn add_xor_address(&mut self, attr_type: u16, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_address(attr_type, xor_address(address, &self.transaction_id))
    }

    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub fn add_mapped_address(&mut self, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_address(attr::MAPPED_ADDRESS, address)
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn add_xor_mapped_address(&mut self, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_xor_address(attr::XOR_MAPPED_ADDRESS, address)
    }

    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub fn add_xor_peer_address(&mut self, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_xor_address(attr::XOR_PEER_ADDRESS, address)
    }

    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub fn add_xor_relayed_address(&mut self, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_xor_address(attr::XOR_RELAYED_ADDRESS, address)
    }

    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub fn add_alternate_server(&mut self, address: SocketAddr) -> Result<(), EncodeError> {
        self.add_address(attr::ALTERNATE_SERVER, address)
    }

    /// USERNAME (RFC 8489 §14.3): fewer than 509 bytes.
    pub fn add_username(&mut self, username: &str) -> Result<(), EncodeError> {
        if username.len() > MAX_USERNAME_BYTES {
            return Err(EncodeError::ValueTooLong {
                attr_type: attr::USERNAME,
            });
        }
        self.push(attr::USERNAME, &[username.as_bytes()])
    }

    /// USERHASH (RFC 8489 §14.4), from [`userhash`].
    pub fn add_userhash(&mut self, hash: &[u8; 32]) -> Result<(), EncodeError> {
        self.push(attr::USERHASH, &[hash])
    }

    fn add_text(&mut self, attr_type: u16, text: &str) -> Result<(), EncodeError> {
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(EncodeError::ValueTooLong { attr_type });
        }
        self.push(attr_type, &[text.as_bytes()])
    }

    /// REALM (RFC 8489 §14.9): fewer than 128 characters.
    pub fn add_realm(&mut self, realm: &str) -> Result<(), EncodeError> {
        self.add_text(attr::REALM, realm)
    }

    /// NONCE (RFC 8489 §14.10): fewer than 128 characters.
    pub fn add_nonce(&mut self, nonce: &str) -> Result<(), EncodeError> {
        self.add_text(attr::NONCE, nonce)
    }

    /// SOFTWARE (RFC 8489 §14.14): fewer than 128 characters.
    pub fn add_software(&mut self, software: &str) -> Result<(), EncodeError> {
        self.add_text(attr::SOFTWARE, software)
    }

    /// ERROR-CODE (RFC 8489 §14.8): `code` in 300–699, `reason` fewer than 128 characters.
    pub fn add_error_code(&mut self, code: u16, reason: &str) -> Result<(), EncodeError> {
        let attr_type = attr::ERROR_CODE;
        if !(300..=699).contains(&code) {
            return Err(EncodeError::InvalidValue { attr_type });
        }
        if reason.chars().count() > MAX_TEXT_CHARS {
            return Err(EncodeError::ValueTooLong { attr_type });
        }
        // Both fit a byte: 3–6 and 0–99.
        let head = [0, 0, (code / 100) as u8, (code % 100) as u8];
        self.push(attr_type, &[&head, reason.as_bytes()])
    }

    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13), for example from
    /// [`Message::unknown_comprehension_required`].
    pub fn add_unknown_attributes(
        &mut self,
        attr_types: impl IntoIterator<Item = u16>,
    ) -> Result<(), EncodeError> {
        let attr_type = attr::UNKNOWN_ATTRIBUTES;
        self.check_order(attr_type)?;
        let start = self.buf.len();
        self.buf.extend_from_slice(&attr_type.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        for t in attr_types {
            self.buf.extend_from_slice(&t.to_be_bytes());
            if self.buf.len() - start > MAX_BODY_LEN {
                break;
            }
        }
        let len = self.buf.len() - start - 4;
        let body_len = start - HEADER_LEN + 4 + padded(len);
        let (Ok(len16), true) = (u16::try_from(len), body_len <= MAX_BODY_LEN) else {
            self.buf.truncate(start);
            return Err(EncodeError::MessageTooLong);
        };
        self.buf[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
        let padding = self.padding;
        self.buf
            .extend(std::iter::repeat_n(padding, padded(len) - len));
        self.set_body_len(body_len);
        Ok(())
    }

    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11), in order of preference, without parameters (the
    /// two defined algorithms take none).
    pub fn add_password_algorithms(
        &mut self,
        algorithms: &[PasswordAlgorithm],
    ) -> Result<(), EncodeError> {
        let attr_type = attr::PASSWORD_ALGORITHMS;
        let mut value = [0; 64];
        let Some(used) = value.get_mut(..algorithms.len() * 4) else {
            return Err(EncodeError::ValueTooLong { attr_type });
        };
        for (entry, algorithm) in used.chunks_exact_mut(4).zip(algorithms) {
            entry[..2].copy_from_slice(&algorithm.0.to_be_bytes());
        }
        self.push(attr_type, &[&value[..algorithms.len() * 4]])
    }

    /// PASSWORD-ALGORITHM (RFC 8489 §14.12), without parameters.
    pub fn add_password_algorithm(
        &mut self,
        algorithm: PasswordAlgorithm,
    ) -> Result<(), EncodeError> {
        let [a0, a1] = algorithm.0.to_be_bytes();
        self.push(attr::PASSWORD_ALGORITHM, &[&[a0, a1, 0, 0]])
    }

    /// CHANNEL-NUMBER (RFC 8656 §18.1): 0x4000–0x4FFF.
    pub fn add_channel_number(&mut self, channel: u16) -> Result<(), EncodeError> {
        if !is_channel_number(channel) {
            return Err(EncodeError::InvalidValue {
                attr_type: attr::CHANNEL_NUMBER,
            });
        }
        let [c0, c1] = channel.to_be_bytes();
        self.push(attr::CHANNEL_NUMBER, &[&[c0, c1, 0, 0]])
    }

    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub fn add_lifetime(&mut self, seconds: u32) -> Result<(), EncodeError> {
        self.push(attr::LIFETIME, &[&seconds.to_be_bytes()])
    }

    /// DATA (RFC 8656 §18.4).
    pub fn add_data(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        self.push(attr::DATA, &[data])
    }

    /// REQUESTED-TRANSPORT (RFC 8656 §18.8): an IP protocol number, 17 for UDP.
    pub fn add_requested_transport(&mut self, protocol: u8) -> Result<(), EncodeError> {
        self.push(attr::REQUESTED_TRANSPORT, &[&[protocol, 0, 0, 0]])
    }

    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub fn add_dont_fragment(&mut self) -> Result<(), EncodeError> {
        self.push(attr::DONT_FRAGMENT, &[])
    }

    /// EVEN-PORT (RFC 8656 §18.7), `reserve_next` being the R bit.
    pub fn add_even_port(&mut self, reserve_next: bool) -> Result<(), EncodeError> {
        self.push(attr::EVEN_PORT, &[&[if reserve_next { 0x80 } else { 0 }]])
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub fn add_reservation_token(&mut self, token: [u8; 8]) -> Result<(), EncodeError> {
        self.push(attr::RESERVATION_TOKEN, &[&token])
    }

    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub fn add_requested_address_family(
        &mut self,
        family: AddressFamily,
    ) -> Result<(), EncodeError> {
        self.push(attr::REQUESTED_ADDRESS_FAMILY, &[&[family.0, 0, 0, 0]])
    }

    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11); the RFC allows only IPv6.
    pub fn add_additional_address_family(
        &mut self,
        family: AddressFamily,
    ) -> Result<(), EncodeError> {
        self.push(attr::ADDITIONAL_ADDRESS_FAMILY, &[&[family.0, 0, 0, 0]])
    }

    /// ICMP (RFC 8656 §18.13).
    pub fn add_icmp(&mut self, icmp: Icmp) -> Result<(), EncodeError> {
        let head = [0, 0, icmp.icmp_type, icmp.code];
        self.push(attr::ICMP, &[&head, &icmp.error_data.to_be_bytes()])
    }

    /// Sets the length field to end after an attribute of `value_len` bytes about to be
    /// appended, and returns where it starts.
    fn begin_computed(&mut self, attr_type: u16, value_len: usize) -> Result<usize, EncodeError> {
        self.check_order(attr_type)?;
        let body_len = self.body_len() + 4 + value_len;
        if body_len > MAX_BODY_LEN {
            return Err(EncodeError::MessageTooLong);
        }
        self.set_body_len(body_len);
        Ok(self.buf.len())
    }

    fn end_computed(&mut self, attr_type: u16, value: &[u8], stage: Stage) {
        self.buf.extend_from_slice(&attr_type.to_be_bytes());
        // 20, 32 or 4 bytes.
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.stage = stage;
    }

    /// Appends MESSAGE-INTEGRITY, the HMAC-SHA1 of the message so far keyed with `key`
    /// (RFC 8489 §14.5). Afterwards only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may follow.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let attr_type = attr::MESSAGE_INTEGRITY;
        let end = self.begin_computed(attr_type, INTEGRITY_LEN)?;
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&self.buf[..end]);
        let tag = mac.finalize().into_bytes();
        self.end_computed(attr_type, &tag, Stage::AfterIntegrity);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256, the untruncated HMAC-SHA256 of the message so far
    /// keyed with `key` (RFC 8489 §14.6). Afterwards only FINGERPRINT may follow.
    pub fn add_message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let attr_type = attr::MESSAGE_INTEGRITY_SHA256;
        let end = self.begin_computed(attr_type, INTEGRITY_SHA256_LEN)?;
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&self.buf[..end]);
        let tag = mac.finalize().into_bytes();
        self.end_computed(attr_type, &tag, Stage::AfterIntegritySha256);
        Ok(())
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7); nothing may follow it.
    pub fn add_fingerprint(&mut self) -> Result<(), EncodeError> {
        let attr_type = attr::FINGERPRINT;
        let end = self.begin_computed(attr_type, FINGERPRINT_LEN)?;
        let value = crc32(&self.buf[..end]) ^ FINGERPRINT_XOR;
        self.end_computed(attr_type, &value.to_be_bytes(), Stage::Finished);
        Ok(())
    }
}

/// Length of the ChannelData header: channel number and length (RFC 8656 §12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Whether `channel` is a valid channel number, 0x4000–0x4FFF (RFC 8656 §12).
pub const fn is_channel_number(channel: u16) -> bool {
    matches!(channel, 0x4000..=0x4FFF)
}

/// Why bytes are not a ChannelData message, or data cannot be framed as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Fewer than the 4 header bytes.
    #[error("shorter than a ChannelData header")]
    TooShort,
    /// The channel number is outside 0x4000–0x4FFF.
    #[error("{0:#06x} is not a channel number")]
    InvalidChannel(u16),
    /// The length field exceeds the bytes that follow (RFC 8656 §12.6: discard).
    #[error("length says {declared} bytes, {available} follow the header")]
    Truncated {
        /// The length field.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// The data exceeds the 16-bit length field.
    #[error("data longer than 65535 bytes")]
    DataTooLong,
}

/// Splits a ChannelData message (RFC 8656 §12.4) into its channel number and application data,
/// without copying. Bytes after the data (padding, which UDP may carry and TCP must) are ignored.
pub fn parse_channel_data(bytes: &[u8]) -> Result<(u16, &[u8]), ChannelDataError> {
    let Some((&[c0, c1, l0, l1], rest)) = bytes.split_first_chunk::<CHANNEL_DATA_HEADER_LEN>()
    else {
        return Err(ChannelDataError::TooShort);
    };
    let channel = u16::from_be_bytes([c0, c1]);
    if !is_channel_number(channel) {
        return Err(ChannelDataError::InvalidChannel(channel));
    }
    let declared = usize::from(u16::from_be_bytes([l0, l1]));
    let data = rest.get(..declared).ok_or(ChannelDataError::Truncated {
        declared,
        available: rest.len(),
    })?;
    Ok((channel, data))
}

/// The 4-byte ChannelData header for `data_len` bytes on `channel`: write it in front of data
/// already in place (for example read into `buf[4..]`) to relay without copying.
pub fn channel_data_header(channel: u16, data_len: usize) -> Result<[u8; 4], ChannelDataError> {
    if !is_channel_number(channel) {
        return Err(ChannelDataError::InvalidChannel(channel));
    }
    let len = u16::try_from(data_len).map_err(|_| ChannelDataError::DataTooLong)?;
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    Ok([c0, c1, l0, l1])
}

/// Writes a ChannelData message into `out`, replacing what it held; `pad` rounds it up to a
/// multiple of 4, as stream transports require (RFC 8656 §12.5).
pub fn encode_channel_data(
    out: &mut Vec<u8>,
    channel: u16,
    data: &[u8],
    pad: bool,
) -> Result<(), ChannelDataError> {
    let header = channel_data_header(channel, data.len())?;
    out.clear();
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    if pad {
        out.resize(CHANNEL_DATA_HEADER_LEN + padded(data.len()), 0);
    }
    Ok(())
}

/// What a datagram on a multiplexed port is, by its first byte (RFC 7983 §7, RFC 8656 §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketKind {
    /// 0–3: STUN.
    Stun,
    /// 64–79: TURN ChannelData.
    ChannelData,
    /// 20–63: DTLS.
    Dtls,
    /// 128–191: RTP or RTCP.
    Rtp,
    /// Anything else, including an empty datagram: drop it.
    Other,
}

/// Classifies a datagram by its first byte (RFC 7983 §7).
pub fn classify(datagram: &[u8]) -> PacketKind {
    match datagram.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(64..=79) => PacketKind::ChannelData,
        Some(20..=63) => PacketKind::Dtls,
        Some(128..=191) => PacketKind::Rtp,
        _ => PacketKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads the hex listings the RFCs print (whitespace-separated bytes).
    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).expect("a hex byte"))
            .collect()
    }

    const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
    const RFC5769_ID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);
    const LONG_TERM_ID: TransactionId = TransactionId([
        0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
    ]);
    /// "マトリックス" (U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9), unchanged by SASLprep and
    /// OpaqueString.
    const MATRIX_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    /// "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep / OpaqueString.
    const MATRIX_PASSWORD: &str = "TheMatrIX";

    /// RFC 5769 §2.1, sample request (padding is 0x20, which the RFC allows).
    const SAMPLE_REQUEST: &str = "
        00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
        00 24 00 04  6e 00 01 ff
        80 29 00 08  93 2f f9 b1  51 26 3b 36
        00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20
        00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
        80 28 00 04  e5 7a 3b cf";

    /// RFC 5769 §2.2, sample IPv4 response.
    const SAMPLE_IPV4_RESPONSE: &str = "
        01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
        00 20 00 08  00 01 a1 47  e1 12 a6 43
        00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
        80 28 00 04  c0 7d 4c 96";

    /// RFC 5769 §2.3, sample IPv6 response.
    const SAMPLE_IPV6_RESPONSE: &str = "
        01 01 00 48  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
        00 20 00 14  00 02 a1 47  01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
        00 08 00 14  a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
        80 28 00 04  c8 fb 0b 4c";

    /// RFC 5769 §2.4, sample request with long-term authentication.
    const SAMPLE_LONG_TERM_REQUEST: &str = "
        00 01 00 60  21 12 a4 42  78 ad 34 33  c6 ad 72 c0  29 da 41 2e
        00 06 00 12  e3 83 9e e3  83 88 e3 83  aa e3 83 83  e3 82 af e3  82 b9 00 00
        00 15 00 1c  66 2f 2f 34  39 39 6b 39  35 34 64 36  4f 4c 33 34
                     6f 4c 39 46  53 54 76 79  36 34 73 41
        00 14 00 0b  65 78 61 6d  70 6c 65 2e  6f 72 67 00
        00 08 00 14  f6 70 24 65  6d d6 4a 3e  02 b8 e0 71  2e 85 c9 a2  8c a8 96 66";

    /// RFC 8489 Appendix B.1 as published: its length field (0x9c = 156) counts the 20-byte
    /// header too, so the message is refused; see `rfc8489_published_sample_has_a_wrong_length`.
    const PUBLISHED_SHA256_REQUEST: &str = "
        00 01 00 9c  21 12 a4 42  78 ad 34 33  c6 ad 72 c0  29 da 41 2e
        00 1e 00 20  4a 3c f3 8f  ef 69 92 bd  a9 52 c6 78  04 17 da 0f
                     24 81 94 15  56 9e 60 b2  05 c4 6e 41  40 7f 17 04
        00 15 00 29  6f 62 4d 61  74 4a 6f 73  32 41 41 41  43 66 2f 2f
                     34 39 39 6b  39 35 34 64  36 4f 4c 33  34 6f 4c 39
                     46 53 54 76  79 36 34 73  41 00 00 00
        00 14 00 0b  65 78 61 6d  70 6c 65 2e  6f 72 67 00
        00 1c 00 20  e4 68 6c 8f  0e de b5 90  13 e0 70 90  01 0a 93 ef
                     cc bc cc 54  4c 0a 45 d9  f8 30 aa 6d  6f 73 5a 01";

    /// RFC 8489 Appendix B.1 as corrected by its erratum: a consistent length field, and
    /// PASSWORD-ALGORITHM (SHA-256) added, so the key is SHA-256 of "user:realm:password".
    const SAMPLE_SHA256_REQUEST: &str = "
        00 01 00 90  21 12 a4 42  78 ad 34 33  c6 ad 72 c0  29 da 41 2e
        00 1e 00 20  4a 3c f3 8f  ef 69 92 bd  a9 52 c6 78  04 17 da 0f
                     24 81 94 15  56 9e 60 b2  05 c4 6e 41  40 7f 17 04
        00 15 00 29  6f 62 4d 61  74 4a 6f 73  32 41 41 41  43 66 2f 2f
                     34 39 39 6b  39 35 34 64  36 4f 4c 33  34 6f 4c 39
                     46 53 54 76  79 36 34 73  41 00 00 00
        00 14 00 0b  65 78 61 6d  70 6c 65 2e  6f 72 67 00
        00 1d 00 04  00 02 00 00
        00 1c 00 20  b5 c7 bf 00  5b 6c 52 a2  1c 51 c5 e8  92 f8 19 24
                     13 62 96 cb  92 7c 43 14  93 09 27 8c  c6 51 8e 65";

    #[test]
    fn rfc5769_sample_request() {
        let bytes = hex(SAMPLE_REQUEST);
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.method(), Method::BINDING);
        assert_eq!(message.class(), Class::Request);
        assert_eq!(message.transaction_id(), RFC5769_ID);
        assert_eq!(message.software(), Ok(Some("STUN test client")));
        assert_eq!(message.username(), Ok(Some("evtj:h6vY")));
        assert_eq!(
            message.get(attr::PRIORITY),
            Some(&[0x6e, 0x00, 0x01, 0xff][..])
        );
        assert_eq!(message.unknown_comprehension_required().count(), 0);
        let key = short_term_key(SHORT_TERM_PASSWORD);
        assert_eq!(
            message.verify_integrity(key),
            Ok(IntegrityAlgorithm::HmacSha1)
        );
        assert_eq!(message.verify_fingerprint(), Ok(()));
        assert_eq!(
            message.verify_message_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"),
            Err(IntegrityError::Mismatch)
        );

        // Re-encoding with the vector's padding byte reproduces it exactly, MAC and CRC included.
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, RFC5769_ID)
            .with_padding(0x20);
        b.add_software("STUN test client").unwrap();
        b.add_raw(attr::PRIORITY, &0x6e00_01ffu32.to_be_bytes())
            .unwrap();
        b.add_raw(
            attr::ICE_CONTROLLED,
            &0x932f_f9b1_5126_3b36u64.to_be_bytes(),
        )
        .unwrap();
        b.add_username("evtj:h6vY").unwrap();
        b.add_message_integrity(key).unwrap();
        b.add_fingerprint().unwrap();
        assert_eq!(b.finish(), bytes.as_slice());
    }

    fn check_sample_response(listing: &str, mapped: &str) {
        let bytes = hex(listing);
        let mapped: SocketAddr = mapped.parse().unwrap();
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.method(), Method::BINDING);
        assert_eq!(message.class(), Class::Success);
        assert_eq!(message.transaction_id(), RFC5769_ID);
        assert_eq!(message.software(), Ok(Some("test vector")));
        assert_eq!(message.xor_mapped_address(), Ok(Some(mapped)));
        let key = short_term_key(SHORT_TERM_PASSWORD);
        assert_eq!(message.verify_message_integrity(key), Ok(()));
        assert_eq!(message.verify_fingerprint(), Ok(()));

        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Success, RFC5769_ID)
            .with_padding(0x20);
        b.add_software("test vector").unwrap();
        b.add_xor_mapped_address(mapped).unwrap();
        b.add_message_integrity(key).unwrap();
        b.add_fingerprint().unwrap();
        assert_eq!(b.finish(), bytes.as_slice());
    }

    #[test]
    fn rfc5769_sample_ipv4_response() {
        check_sample_response(SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853");
    }

    #[test]
    fn rfc5769_sample_ipv6_response() {
        check_sample_response(
            SAMPLE_IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        );
    }

    #[test]
    fn rfc5769_sample_long_term_request() {
        let bytes = hex(SAMPLE_LONG_TERM_REQUEST);
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.transaction_id(), LONG_TERM_ID);
        assert_eq!(message.username(), Ok(Some(MATRIX_USERNAME)));
        assert_eq!(message.nonce(), Ok(Some("f//499k954d6OL34oL9FSTvy64sA")));
        assert_eq!(message.realm(), Ok(Some("example.org")));
        assert!(!message.contains(attr::FINGERPRINT));
        assert_eq!(message.verify_fingerprint(), Err(IntegrityError::Missing));
        let key = long_term_key(
            PasswordAlgorithm::MD5,
            MATRIX_USERNAME,
            "example.org",
            MATRIX_PASSWORD,
        )
        .unwrap();
        assert_eq!(key.as_bytes().len(), 16);
        assert_eq!(
            message.verify_integrity(key.as_bytes()),
            Ok(IntegrityAlgorithm::HmacSha1)
        );
        // The unprepared password gives another key.
        let raw = long_term_key(
            PasswordAlgorithm::MD5,
            MATRIX_USERNAME,
            "example.org",
            "The\u{00AD}M\u{00AA}tr\u{2168}",
        )
        .unwrap();
        assert_eq!(
            message.verify_integrity(raw.as_bytes()),
            Err(IntegrityError::Mismatch)
        );

        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, LONG_TERM_ID);
        b.add_username(MATRIX_USERNAME).unwrap();
        b.add_nonce("f//499k954d6OL34oL9FSTvy64sA").unwrap();
        b.add_realm("example.org").unwrap();
        b.add_message_integrity(key.as_bytes()).unwrap();
        assert_eq!(b.finish(), bytes.as_slice());
    }

    #[test]
    fn rfc8489_sha256_sample_request() {
        let bytes = hex(SAMPLE_SHA256_REQUEST);
        let message = Message::decode(&bytes).unwrap();
        let hash = userhash(MATRIX_USERNAME, "example.org");
        assert_eq!(message.userhash(), Ok(Some(&hash)));
        assert_eq!(
            message.nonce(),
            Ok(Some("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"))
        );
        assert_eq!(message.realm(), Ok(Some("example.org")));
        assert_eq!(
            message.password_algorithm(),
            Ok(Some((PasswordAlgorithm::SHA256, &[][..])))
        );
        let key = long_term_key(
            PasswordAlgorithm::SHA256,
            MATRIX_USERNAME,
            "example.org",
            MATRIX_PASSWORD,
        )
        .unwrap();
        assert_eq!(
            message.verify_integrity(key.as_bytes()),
            Ok(IntegrityAlgorithm::HmacSha256)
        );
        assert_eq!(
            message.verify_message_integrity(key.as_bytes()),
            Err(IntegrityError::Missing)
        );

        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, LONG_TERM_ID);
        b.add_userhash(&hash).unwrap();
        b.add_nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
            .unwrap();
        b.add_realm("example.org").unwrap();
        b.add_password_algorithm(PasswordAlgorithm::SHA256).unwrap();
        b.add_message_integrity_sha256(key.as_bytes()).unwrap();
        assert_eq!(b.finish(), bytes.as_slice());
    }

    /// The published B.1 is refused, and its HMAC is the SHA-256-keyed HMAC of the message with
    /// that wrong length: evidence the listing is transcribed right and only the length is off.
    #[test]
    fn rfc8489_published_sample_has_a_wrong_length() {
        let bytes = hex(PUBLISHED_SHA256_REQUEST);
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            DecodeError::LengthMismatch {
                declared: 156,
                available: 136
            }
        );
        let key = long_term_key(
            PasswordAlgorithm::SHA256,
            MATRIX_USERNAME,
            "example.org",
            MATRIX_PASSWORD,
        )
        .unwrap();
        let (signed, tag) = bytes.split_at(bytes.len() - 32);
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(&signed[..signed.len() - 4]);
        assert!(mac.verify_slice(tag).is_ok());
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn message_type_interleaving() {
        let cases = [
            (Method::BINDING, Class::Request, 0x0001),
            (Method::BINDING, Class::Indication, 0x0011),
            (Method::BINDING, Class::Success, 0x0101),
            (Method::BINDING, Class::Error, 0x0111),
            (Method::ALLOCATE, Class::Request, 0x0003),
            (Method::ALLOCATE, Class::Error, 0x0113),
            (Method::REFRESH, Class::Success, 0x0104),
            (Method::SEND, Class::Indication, 0x0016),
            (Method::DATA, Class::Indication, 0x0017),
            (Method::CREATE_PERMISSION, Class::Request, 0x0008),
            (Method::CHANNEL_BIND, Class::Success, 0x0109),
            (Method::new(0x0FFF).unwrap(), Class::Error, 0x3FFF),
        ];
        for (method, class, wire) in cases {
            assert_eq!(encode_type(method, class), wire, "{method:?} {class:?}");
            assert_eq!(decode_type(wire), (method, class));
        }
        assert_eq!(Method::new(0x1000), None);
        assert_eq!(format!("{:?}", Method::CHANNEL_BIND), "ChannelBind");
        assert_eq!(
            format!("{:?}", Method::new(0x0AB).unwrap()),
            "Method(0x0ab)"
        );
    }

    fn header(length: u16) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x01];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&[9; 12]);
        bytes
    }

    #[test]
    fn header_checks() {
        assert_eq!(Message::decode(&[]).unwrap_err(), DecodeError::TooShort);
        assert_eq!(
            Message::decode(&header(0)[..19]).unwrap_err(),
            DecodeError::TooShort
        );
        let empty = header(0);
        assert_eq!(Message::decode(&empty).unwrap().attributes().count(), 0);

        let mut not_stun = header(0);
        not_stun[0] = 0x40;
        assert_eq!(
            Message::decode(&not_stun).unwrap_err(),
            DecodeError::NotStun
        );
        let mut cookie = header(0);
        cookie[7] ^= 1;
        assert_eq!(
            Message::decode(&cookie).unwrap_err(),
            DecodeError::BadMagicCookie
        );

        let mut unaligned = header(2);
        unaligned.extend_from_slice(&[0, 0]);
        assert_eq!(
            Message::decode(&unaligned).unwrap_err(),
            DecodeError::UnalignedLength(2)
        );
        let short = header(4);
        assert_eq!(
            Message::decode(&short).unwrap_err(),
            DecodeError::LengthMismatch {
                declared: 4,
                available: 0
            }
        );
        let mut long = header(0);
        long.extend_from_slice(&[0; 4]);
        assert_eq!(
            Message::decode(&long).unwrap_err(),
            DecodeError::LengthMismatch {
                declared: 0,
                available: 4
            }
        );
    }

    #[test]
    fn attribute_framing_and_padding() {
        // Values of 0–5 bytes, each padded to 4.
        for len in 0..=5u16 {
            let mut bytes = header(4 + padded(len.into()) as u16);
            bytes.extend_from_slice(&attr::SOFTWARE.to_be_bytes());
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend(std::iter::repeat_n(b'a', len.into()));
            bytes.extend(std::iter::repeat_n(
                0xEE,
                padded(len.into()) - usize::from(len),
            ));
            let message = Message::decode(&bytes).unwrap();
            assert_eq!(message.software().unwrap().unwrap().len(), usize::from(len));
        }
        // A value running into the next word without its padding.
        let mut bytes = header(8);
        bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            DecodeError::TruncatedAttribute {
                attr_type: attr::SOFTWARE
            }
        );
        // A length beyond the message.
        let mut bytes = header(8);
        bytes.extend_from_slice(&[0x00, 0x13, 0xFF, 0xFF, 1, 2, 3, 4]);
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            DecodeError::TruncatedAttribute {
                attr_type: attr::DATA
            }
        );
    }

    #[test]
    fn attribute_count_is_bounded() {
        let build = |n: usize| {
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(
                &mut buf,
                Method::ALLOCATE,
                Class::Request,
                TransactionId([1; 12]),
            );
            for _ in 0..n {
                b.add_dont_fragment().unwrap();
            }
            b.finish().to_vec()
        };
        let most = build(MAX_ATTRIBUTES);
        assert_eq!(
            Message::decode(&most).unwrap().attributes().count(),
            MAX_ATTRIBUTES
        );
        assert_eq!(
            Message::decode(&build(MAX_ATTRIBUTES + 1)).unwrap_err(),
            DecodeError::TooManyAttributes
        );
        // Ignored attributes after MESSAGE-INTEGRITY count too: the work stays bounded.
        let mut bytes = build(2);
        let mut tail = Vec::new();
        let mut b = MessageBuilder::new(
            &mut tail,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([1; 12]),
        );
        b.add_message_integrity(b"k").unwrap();
        bytes.extend_from_slice(&b.finish()[HEADER_LEN..]);
        for _ in 0..MAX_ATTRIBUTES {
            bytes.extend_from_slice(&[0x00, 0x1A, 0x00, 0x00]);
        }
        let len = (bytes.len() - HEADER_LEN) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            DecodeError::TooManyAttributes
        );
    }

    #[test]
    fn ordering_rules() {
        let id = TransactionId([3; 12]);
        // Attributes after MESSAGE-INTEGRITY are ignored, except -SHA256 and FINGERPRINT.
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::REFRESH, Class::Request, id);
        b.add_lifetime(600).unwrap();
        b.add_message_integrity(b"key").unwrap();
        let mut bytes = b.finish().to_vec();
        bytes.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 1]); // LIFETIME 1
        bytes.extend_from_slice(&[0x7F, 0xFF, 0x00, 0x00]); // unknown, comprehension-required
        let len = (bytes.len() - HEADER_LEN) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.lifetime(), Ok(Some(600)));
        assert_eq!(message.get_all(attr::LIFETIME).count(), 1);
        assert_eq!(message.unknown_comprehension_required().count(), 0);
        assert_eq!(message.verify_message_integrity(b"key"), Ok(()));

        // Nothing may follow FINGERPRINT.
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, id);
        b.add_fingerprint().unwrap();
        let mut bytes = b.finish().to_vec();
        bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        bytes[2..4].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            DecodeError::FingerprintNotLast
        );

        // The builder enforces the same order.
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, id);
        b.add_message_integrity(b"k").unwrap();
        let software = EncodeError::Misordered {
            attr_type: attr::SOFTWARE,
        };
        assert_eq!(b.add_software("x"), Err(software));
        assert_eq!(
            b.add_message_integrity(b"k"),
            Err(EncodeError::Misordered {
                attr_type: attr::MESSAGE_INTEGRITY
            })
        );
        b.add_message_integrity_sha256(b"k").unwrap();
        b.add_fingerprint().unwrap();
        assert_eq!(
            b.add_fingerprint(),
            Err(EncodeError::Misordered {
                attr_type: attr::FINGERPRINT
            })
        );
        let message = Message::decode(b.as_bytes()).unwrap();
        assert_eq!(message.verify_message_integrity(b"k"), Ok(()));
        assert_eq!(message.verify_message_integrity_sha256(b"k"), Ok(()));
        assert_eq!(
            message.verify_integrity(b"k"),
            Ok(IntegrityAlgorithm::HmacSha256)
        );
        assert_eq!(message.verify_fingerprint(), Ok(()));
        assert_eq!(
            b.add_raw(attr::MESSAGE_INTEGRITY, &[0; 20]),
            Err(EncodeError::ComputedAttribute {
                attr_type: attr::MESSAGE_INTEGRITY
            })
        );
    }

    #[test]
    fn truncated_sha256_integrity() {
        let key = b"secret";
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(
            &mut buf,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([5; 12]),
        );
        b.add_requested_transport(17).unwrap();
        let prefix = b.as_bytes().to_vec();
        b.add_message_integrity_sha256(key).unwrap();
        let full = b.finish().to_vec();
        let tag = &full[full.len() - 32..];
        for keep in [16, 20, 24, 28, 32, 12, 18] {
            let mut bytes = prefix.clone();
            bytes.extend_from_slice(&[0x00, 0x1C, 0x00, keep as u8]);
            bytes.extend_from_slice(&tag[..keep]);
            bytes.extend(std::iter::repeat_n(0, padded(keep) - keep));
            let len = (bytes.len() - HEADER_LEN) as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
            let message = Message::decode(&bytes).unwrap();
            let result = message.verify_message_integrity_sha256(key);
            if keep % 4 == 0 && keep >= 16 {
                // The HMAC covers the length field, so only the full tag of a message whose
                // length counts 32 bytes matches: truncated tags must match the HMAC of the
                // message as sent.
                if keep == 32 {
                    assert_eq!(result, Ok(()));
                } else {
                    assert_eq!(result, Err(IntegrityError::Mismatch));
                }
            } else {
                assert_eq!(result, Err(IntegrityError::Malformed), "{keep}");
            }
        }
        // A correctly truncated tag: computed over the message whose length counts 16 bytes.
        let mut bytes = prefix.clone();
        let len = (bytes.len() - HEADER_LEN + 4 + 16) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&[0x00, 0x1C, 0x00, 16]);
        bytes.extend_from_slice(&tag[..16]);
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.verify_message_integrity_sha256(key), Ok(()));
        assert_eq!(
            message.verify_message_integrity_sha256(b"other"),
            Err(IntegrityError::Mismatch)
        );
    }

    /// Every single-bit change is caught: by the framing, by MESSAGE-INTEGRITY when the bit is
    /// in what it covers, and always by FINGERPRINT.
    #[test]
    fn integrity_fails_on_any_flipped_bit() {
        let key = b"a key";
        for sha256 in [false, true] {
            let mut buf = Vec::new();
            let id = TransactionId(*b"abcdefghijkl");
            let mut b = MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Request, id);
            b.add_username("user").unwrap();
            b.add_realm("example.org").unwrap();
            b.add_nonce("nonce-123").unwrap();
            b.add_requested_transport(17).unwrap();
            b.add_xor_peer_address("[2001:db8::1]:4000".parse().unwrap())
                .unwrap();
            if sha256 {
                b.add_message_integrity_sha256(key).unwrap();
            } else {
                b.add_message_integrity(key).unwrap();
            }
            let integrity_end = b.as_bytes().len();
            b.add_fingerprint().unwrap();
            let bytes = b.finish().to_vec();
            assert!(
                Message::decode(&bytes)
                    .unwrap()
                    .verify_integrity(key)
                    .is_ok()
            );
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let Ok(message) = Message::decode(&flipped) else {
                    continue;
                };
                assert!(message.verify_fingerprint().is_err(), "bit {bit}");
                if bit / 8 < integrity_end {
                    assert!(message.verify_integrity(key).is_err(), "bit {bit}");
                }
            }
        }
    }

    #[test]
    fn xor_addresses_match_rfc5769() {
        let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let (value, len) = encode_address(xor_address(v4, &RFC5769_ID));
        assert_eq!(&value[..len], hex("00 01 a1 47 e1 12 a6 43").as_slice());
        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let (value, len) = encode_address(xor_address(v6, &RFC5769_ID));
        assert_eq!(
            &value[..len],
            hex("00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9").as_slice()
        );
        assert_eq!(parse_address(&[0, 3, 0, 1, 1, 2, 3, 4]), None);
        assert_eq!(parse_address(&[0, 1, 0, 1, 1, 2, 3]), None);
        assert_eq!(parse_address(&[0, 2, 0, 1, 1, 2, 3, 4]), None);
    }

    #[test]
    fn typed_attributes() {
        let id = TransactionId([0x42; 12]);
        let peer_a: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let peer_b: SocketAddr = "[2001:db8::9]:40001".parse().unwrap();
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Error, id);
        b.add_error_code(error_code::UNKNOWN_ATTRIBUTE, "Unknown Attribute")
            .unwrap();
        b.add_unknown_attributes([0x7777, 0x0003, 0x1234]).unwrap();
        b.add_password_algorithms(&[PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5])
            .unwrap();
        b.add_xor_peer_address(peer_a).unwrap();
        b.add_xor_peer_address(peer_b).unwrap();
        b.add_xor_relayed_address(peer_b).unwrap();
        b.add_mapped_address(peer_a).unwrap();
        b.add_alternate_server(peer_b).unwrap();
        b.add_channel_number(0x4001).unwrap();
        b.add_lifetime(3600).unwrap();
        b.add_data(&[1, 2, 3]).unwrap();
        b.add_dont_fragment().unwrap();
        b.add_even_port(true).unwrap();
        b.add_reservation_token(*b"tokentok").unwrap();
        b.add_requested_address_family(AddressFamily::IPV6).unwrap();
        b.add_additional_address_family(AddressFamily::IPV6)
            .unwrap();
        let icmp = Icmp {
            icmp_type: 3,
            code: 4,
            error_data: 1400,
        };
        b.add_icmp(icmp).unwrap();
        let message = Message::decode(b.finish()).unwrap();
        assert_eq!(message.class(), Class::Error);
        assert_eq!(
            message.error_code(),
            Ok(Some(ErrorCode {
                code: 420,
                reason: "Unknown Attribute"
            }))
        );
        assert_eq!(
            message
                .unknown_attributes()
                .unwrap()
                .unwrap()
                .collect::<Vec<_>>(),
            [0x7777, 0x0003, 0x1234]
        );
        assert_eq!(
            message
                .password_algorithms()
                .unwrap()
                .unwrap()
                .collect::<Vec<_>>(),
            [
                (PasswordAlgorithm::SHA256, &[][..]),
                (PasswordAlgorithm::MD5, &[][..])
            ]
        );
        assert_eq!(message.xor_peer_address(), Ok(Some(peer_a)));
        assert_eq!(
            message.xor_peer_addresses().collect::<Vec<_>>(),
            [Ok(peer_a), Ok(peer_b)]
        );
        assert_eq!(message.xor_relayed_address(), Ok(Some(peer_b)));
        assert_eq!(message.xor_relayed_addresses().count(), 1);
        assert_eq!(message.mapped_address(), Ok(Some(peer_a)));
        assert_eq!(message.alternate_server(), Ok(Some(peer_b)));
        assert_eq!(message.channel_number(), Ok(Some(0x4001)));
        assert_eq!(message.lifetime(), Ok(Some(3600)));
        assert_eq!(message.data(), Ok(Some(&[1, 2, 3][..])));
        assert_eq!(message.dont_fragment(), Ok(true));
        assert_eq!(message.even_port(), Ok(Some(true)));
        assert_eq!(message.reservation_token(), Ok(Some(*b"tokentok")));
        assert_eq!(
            message.requested_address_family(),
            Ok(Some(AddressFamily::IPV6))
        );
        assert_eq!(
            message.additional_address_family(),
            Ok(Some(AddressFamily::IPV6))
        );
        assert_eq!(message.icmp(), Ok(Some(icmp)));
        assert_eq!(message.username(), Ok(None));
        assert_eq!(message.xor_mapped_address(), Ok(None));
        assert_eq!(message.requested_transport(), Ok(None));
        assert_eq!(message.verify_integrity(b"k"), Err(IntegrityError::Missing));
        // The 420 flow: a request's unknown comprehension-required types into the answer.
        let mut request = header(16);
        request.extend_from_slice(&[
            0x7F, 0x00, 0, 0, 0xC0, 0x00, 0, 0, 0x00, 0x19, 0, 4, 17, 0, 0, 0,
        ]);
        let request = Message::decode(&request).unwrap();
        assert_eq!(
            request.unknown_comprehension_required().collect::<Vec<_>>(),
            [0x7F00]
        );
        let mut answer = Vec::new();
        let mut b = MessageBuilder::new(
            &mut answer,
            request.method(),
            Class::Error,
            request.transaction_id(),
        );
        b.add_error_code(error_code::UNKNOWN_ATTRIBUTE, "Unknown Attribute")
            .unwrap();
        b.add_unknown_attributes(request.unknown_comprehension_required())
            .unwrap();
        let answer = Message::decode(b.finish()).unwrap();
        assert_eq!(
            answer
                .unknown_attributes()
                .unwrap()
                .unwrap()
                .collect::<Vec<_>>(),
            [0x7F00]
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        let id = TransactionId([1; 12]);
        let cases: [(u16, &[u8]); 14] = [
            (attr::MAPPED_ADDRESS, &[0, 1, 0, 80]),
            (attr::USERNAME, &[0xFF]),
            (attr::USERHASH, &[0; 31]),
            (attr::ERROR_CODE, &[0, 0, 2, 99]),
            (attr::ERROR_CODE, &[0, 0, 4, 100]),
            (attr::ERROR_CODE, &[0, 0, 4]),
            (attr::UNKNOWN_ATTRIBUTES, &[0, 1, 0]),
            (attr::PASSWORD_ALGORITHMS, &[0, 1, 0, 1, 9]),
            (attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0, 0, 2, 0, 0]),
            (attr::CHANNEL_NUMBER, &[0x40, 0x00]),
            (attr::LIFETIME, &[0, 0, 1]),
            (attr::DONT_FRAGMENT, &[0]),
            (attr::EVEN_PORT, &[0x80, 0]),
            (attr::ICMP, &[0; 7]),
        ];
        for (attr_type, value) in cases {
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Request, id);
            b.add_raw(attr_type, value).unwrap();
            let message = Message::decode(b.finish()).unwrap();
            let error = Err(DecodeError::MalformedAttribute { attr_type });
            let results = [
                message.mapped_address().map(|_| ()),
                message.username().map(|_| ()),
                message.userhash().map(|_| ()),
                message.error_code().map(|_| ()),
                message.unknown_attributes().map(|_| ()),
                message.password_algorithms().map(|_| ()),
                message.password_algorithm().map(|_| ()),
                message.channel_number().map(|_| ()),
                message.lifetime().map(|_| ()),
                message.dont_fragment().map(|_| ()),
                message.even_port().map(|_| ()),
                message.icmp().map(|_| ()),
            ];
            assert!(results.contains(&error), "{attr_type:#06x} {value:?}");
        }
    }

    #[test]
    fn builder_limits() {
        let id = TransactionId([1; 12]);
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Error, id);
        assert_eq!(
            b.add_error_code(299, ""),
            Err(EncodeError::InvalidValue {
                attr_type: attr::ERROR_CODE
            })
        );
        assert_eq!(
            b.add_error_code(700, ""),
            Err(EncodeError::InvalidValue {
                attr_type: attr::ERROR_CODE
            })
        );
        assert_eq!(
            b.add_channel_number(0x5000),
            Err(EncodeError::InvalidValue {
                attr_type: attr::CHANNEL_NUMBER
            })
        );
        assert_eq!(
            b.add_username(&"u".repeat(509)),
            Err(EncodeError::ValueTooLong {
                attr_type: attr::USERNAME
            })
        );
        b.add_username(&"u".repeat(508)).unwrap();
        assert_eq!(
            b.add_realm(&"\u{00e9}".repeat(128)),
            Err(EncodeError::ValueTooLong {
                attr_type: attr::REALM
            })
        );
        b.add_realm(&"\u{00e9}".repeat(127)).unwrap();
        assert_eq!(
            b.add_data(&vec![0; 70_000]),
            Err(EncodeError::ValueTooLong {
                attr_type: attr::DATA
            })
        );
        let before = b.as_bytes().to_vec();
        assert_eq!(
            b.add_data(&vec![0; 65_000]),
            Err(EncodeError::MessageTooLong)
        );
        assert_eq!(
            b.as_bytes(),
            before.as_slice(),
            "a refused attribute leaves no trace"
        );
        let room = MAX_BODY_LEN - (before.len() - HEADER_LEN) - 4 - 8;
        b.add_data(&vec![7; room]).unwrap();
        assert_eq!(b.add_fingerprint(), Ok(()));
        let bytes = b.finish();
        assert_eq!(bytes.len(), HEADER_LEN + MAX_BODY_LEN);
        let message = Message::decode(bytes).unwrap();
        assert_eq!(message.data().unwrap().unwrap().len(), room);
        assert_eq!(message.verify_fingerprint(), Ok(()));
    }

    #[test]
    fn keys_and_userhash() {
        assert_eq!(long_term_key(PasswordAlgorithm(3), "u", "r", "p"), None);
        let key = long_term_key(PasswordAlgorithm::SHA256, "u", "r", "p").unwrap();
        assert_eq!(key.as_bytes().len(), 32);
        assert_eq!(format!("{key:?}"), "LongTermKey(<redacted>)");
        assert_eq!(
            userhash(MATRIX_USERNAME, "example.org").to_vec(),
            hex("4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
                 24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04")
        );
    }

    #[test]
    fn channel_data() {
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0x00, 0x00]),
            Ok((0x4000, &[][..]))
        );
        assert_eq!(
            parse_channel_data(&[0x4F, 0xFF, 0x00, 0x02, 7, 8, 0, 0]),
            Ok((0x4FFF, &[7, 8][..]))
        );
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0x00]),
            Err(ChannelDataError::TooShort)
        );
        assert_eq!(
            parse_channel_data(&[0x3F, 0xFF, 0x00, 0x00]),
            Err(ChannelDataError::InvalidChannel(0x3FFF))
        );
        assert_eq!(
            parse_channel_data(&[0x50, 0x00, 0x00, 0x00]),
            Err(ChannelDataError::InvalidChannel(0x5000))
        );
        assert_eq!(
            parse_channel_data(&[0x40, 0x01, 0x00, 0x03, 1, 2]),
            Err(ChannelDataError::Truncated {
                declared: 3,
                available: 2
            })
        );
        let mut out = vec![9; 3];
        encode_channel_data(&mut out, 0x4001, &[1, 2, 3, 4, 5], true).unwrap();
        assert_eq!(out, [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        encode_channel_data(&mut out, 0x4001, &[1, 2, 3, 4, 5], false).unwrap();
        assert_eq!(out, [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert_eq!(parse_channel_data(&out), Ok((0x4001, &[1, 2, 3, 4, 5][..])));
        assert_eq!(
            channel_data_header(0x4000, 65_536),
            Err(ChannelDataError::DataTooLong)
        );
        assert_eq!(
            channel_data_header(0x1234, 1),
            Err(ChannelDataError::InvalidChannel(0x1234))
        );
    }

    #[test]
    fn demultiplexing() {
        let cases: [(&[u8], PacketKind); 10] = [
            (&[], PacketKind::Other),
            (&[0], PacketKind::Stun),
            (&[3], PacketKind::Stun),
            (&[4], PacketKind::Other),
            (&[20], PacketKind::Dtls),
            (&[63], PacketKind::Dtls),
            (&[64], PacketKind::ChannelData),
            (&[79], PacketKind::ChannelData),
            (&[80], PacketKind::Other),
            (&[128], PacketKind::Rtp),
        ];
        for (datagram, kind) in cases {
            assert_eq!(classify(datagram), kind, "{datagram:?}");
        }
        assert_eq!(classify(&hex(SAMPLE_REQUEST)), PacketKind::Stun);
        assert_eq!(classify(&[0x40, 0x00, 0, 0]), PacketKind::ChannelData);
    }

    /// Every accessor and check, results ignored: for the never-panics properties.
    fn exercise(message: &Message<'_>) {
        let _ = format!("{message:?}");
        let _ = message.attributes().count();
        let _ = message.unknown_comprehension_required().count();
        let _ = message.mapped_address();
        let _ = message.xor_mapped_address();
        let _ = message.xor_peer_addresses().count();
        let _ = message.xor_relayed_addresses().count();
        let _ = message.alternate_server();
        let _ = message.username();
        let _ = message.userhash();
        let _ = message.realm();
        let _ = message.nonce();
        let _ = message.software();
        let _ = message.error_code();
        if let Ok(Some(list)) = message.unknown_attributes() {
            let _ = list.count();
        }
        if let Ok(Some(list)) = message.password_algorithms() {
            let _ = list.count();
        }
        let _ = message.password_algorithm();
        let _ = message.channel_number();
        let _ = message.lifetime();
        let _ = message.data();
        let _ = message.requested_transport();
        let _ = message.dont_fragment();
        let _ = message.even_port();
        let _ = message.reservation_token();
        let _ = message.requested_address_family();
        let _ = message.additional_address_family();
        let _ = message.icmp();
        let _ = message.verify_integrity(b"key");
        let _ = message.verify_message_integrity(b"key");
        let _ = message.verify_message_integrity_sha256(b"key");
        let _ = message.verify_fingerprint();
    }

    /// A typed attribute to build, and what decoding it must give back.
    #[derive(Clone, Debug)]
    enum Attribute {
        Mapped(SocketAddr),
        XorMapped(SocketAddr),
        XorPeer(SocketAddr),
        XorRelayed(SocketAddr),
        Alternate(SocketAddr),
        Username(String),
        Userhash([u8; 32]),
        Realm(String),
        Nonce(String),
        Software(String),
        Error(u16, String),
        Unknown(Vec<u16>),
        Algorithms(Vec<u16>),
        Algorithm(u16),
        Channel(u16),
        Lifetime(u32),
        Data(Vec<u8>),
        Transport(u8),
        DontFragment,
        EvenPort(bool),
        Token([u8; 8]),
        Family(u8),
        AdditionalFamily(u8),
        Icmp(u8, u8, u32),
        Other(u16, Vec<u8>),
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    fn attribute() -> impl Strategy<Value = Attribute> {
        let text = "\\PC{0,60}";
        prop_oneof![
            socket_addr().prop_map(Attribute::Mapped),
            socket_addr().prop_map(Attribute::XorMapped),
            socket_addr().prop_map(Attribute::XorPeer),
            socket_addr().prop_map(Attribute::XorRelayed),
            socket_addr().prop_map(Attribute::Alternate),
            text.prop_map(Attribute::Username),
            any::<[u8; 32]>().prop_map(Attribute::Userhash),
            text.prop_map(Attribute::Realm),
            text.prop_map(Attribute::Nonce),
            text.prop_map(Attribute::Software),
            (300..=699u16, text).prop_map(|(code, reason)| Attribute::Error(code, reason)),
            prop::collection::vec(any::<u16>(), 0..8).prop_map(Attribute::Unknown),
            prop::collection::vec(any::<u16>(), 0..8).prop_map(Attribute::Algorithms),
            any::<u16>().prop_map(Attribute::Algorithm),
            (0x4000..=0x4FFFu16).prop_map(Attribute::Channel),
            any::<u32>().prop_map(Attribute::Lifetime),
            prop::collection::vec(any::<u8>(), 0..80).prop_map(Attribute::Data),
            any::<u8>().prop_map(Attribute::Transport),
            Just(Attribute::DontFragment),
            any::<bool>().prop_map(Attribute::EvenPort),
            any::<[u8; 8]>().prop_map(Attribute::Token),
            any::<u8>().prop_map(Attribute::Family),
            any::<u8>().prop_map(Attribute::AdditionalFamily),
            (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Attribute::Icmp(t, c, d)),
            (
                any::<u16>().prop_filter("unknown to the codec", |t| !attr::is_known(*t)),
                prop::collection::vec(any::<u8>(), 0..12)
            )
                .prop_map(|(t, v)| Attribute::Other(t, v)),
        ]
    }

    fn add(b: &mut MessageBuilder<'_>, a: &Attribute) -> Result<(), EncodeError> {
        match a {
            Attribute::Mapped(x) => b.add_mapped_address(*x),
            Attribute::XorMapped(x) => b.add_xor_mapped_address(*x),
            Attribute::XorPeer(x) => b.add_xor_peer_address(*x),
            Attribute::XorRelayed(x) => b.add_xor_relayed_address(*x),
            Attribute::Alternate(x) => b.add_alternate_server(*x),
            Attribute::Username(x) => b.add_username(x),
            Attribute::Userhash(x) => b.add_userhash(x),
            Attribute::Realm(x) => b.add_realm(x),
            Attribute::Nonce(x) => b.add_nonce(x),
            Attribute::Software(x) => b.add_software(x),
            Attribute::Error(code, reason) => b.add_error_code(*code, reason),
            Attribute::Unknown(x) => b.add_unknown_attributes(x.iter().copied()),
            Attribute::Algorithms(x) => {
                let list: Vec<_> = x.iter().map(|&a| PasswordAlgorithm(a)).collect();
                b.add_password_algorithms(&list)
            }
            Attribute::Algorithm(x) => b.add_password_algorithm(PasswordAlgorithm(*x)),
            Attribute::Channel(x) => b.add_channel_number(*x),
            Attribute::Lifetime(x) => b.add_lifetime(*x),
            Attribute::Data(x) => b.add_data(x),
            Attribute::Transport(x) => b.add_requested_transport(*x),
            Attribute::DontFragment => b.add_dont_fragment(),
            Attribute::EvenPort(x) => b.add_even_port(*x),
            Attribute::Token(x) => b.add_reservation_token(*x),
            Attribute::Family(x) => b.add_requested_address_family(AddressFamily(*x)),
            Attribute::AdditionalFamily(x) => b.add_additional_address_family(AddressFamily(*x)),
            Attribute::Icmp(t, c, d) => b.add_icmp(Icmp {
                icmp_type: *t,
                code: *c,
                error_data: *d,
            }),
            Attribute::Other(t, v) => b.add_raw(*t, v),
        }
    }

    /// Decodes `raw` the way the typed accessor for `a` does and compares.
    fn check(raw: RawAttribute<'_>, a: &Attribute, id: &TransactionId) {
        let v = raw.value;
        match a {
            Attribute::Mapped(x) | Attribute::Alternate(x) => {
                assert_eq!(parse_address(v), Some(*x));
            }
            Attribute::XorMapped(x) | Attribute::XorPeer(x) | Attribute::XorRelayed(x) => {
                assert_eq!(parse_xor_address(v, id), Some(*x));
            }
            Attribute::Username(x) => {
                assert_eq!(parse_text(v, MAX_USERNAME_BYTES), Some(x.as_str()));
            }
            Attribute::Realm(x) | Attribute::Nonce(x) | Attribute::Software(x) => {
                assert_eq!(parse_text(v, MAX_TEXT_DECODE_BYTES), Some(x.as_str()));
            }
            Attribute::Userhash(x) => assert_eq!(v, x),
            Attribute::Error(code, reason) => assert_eq!(
                parse_error_code(v),
                Some(ErrorCode {
                    code: *code,
                    reason
                })
            ),
            Attribute::Unknown(x) => {
                let got: Vec<u16> = v
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
                assert_eq!(&got, x);
            }
            Attribute::Algorithms(x) => {
                let got: Vec<u16> = AlgorithmList(v)
                    .map(|(a, p)| {
                        assert!(p.is_empty());
                        a.0
                    })
                    .collect();
                assert_eq!(&got, x);
            }
            Attribute::Algorithm(x) => {
                assert_eq!(
                    AlgorithmList(v).collect::<Vec<_>>(),
                    [(PasswordAlgorithm(*x), &[][..])]
                );
            }
            Attribute::Channel(x) => assert_eq!(v, [x.to_be_bytes().as_slice(), &[0, 0]].concat()),
            Attribute::Lifetime(x) => assert_eq!(v, x.to_be_bytes()),
            Attribute::Data(x) | Attribute::Other(_, x) => assert_eq!(v, x.as_slice()),
            Attribute::Transport(x) => assert_eq!(v, [*x, 0, 0, 0]),
            Attribute::DontFragment => assert!(v.is_empty()),
            Attribute::EvenPort(x) => assert_eq!(v, [if *x { 0x80 } else { 0 }]),
            Attribute::Token(x) => assert_eq!(v, x),
            Attribute::Family(x) | Attribute::AdditionalFamily(x) => {
                assert_eq!(parse_family(v), Some(AddressFamily(*x)));
            }
            Attribute::Icmp(t, c, d) => {
                let mut want = vec![0, 0, *t, *c];
                want.extend_from_slice(&d.to_be_bytes());
                assert_eq!(v, want.as_slice());
            }
        }
    }

    fn method() -> impl Strategy<Value = Method> {
        (0..=0x0FFFu16).prop_map(|m| Method::new(m).unwrap())
    }

    fn class() -> impl Strategy<Value = Class> {
        prop_oneof![
            Just(Class::Request),
            Just(Class::Indication),
            Just(Class::Success),
            Just(Class::Error)
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            method in method(),
            class in class(),
            id in any::<[u8; 12]>().prop_map(TransactionId),
            attributes in prop::collection::vec(attribute(), 0..20),
            integrity in 0..4u8,
            fingerprint in any::<bool>(),
            key in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, method, class, id);
            for a in &attributes {
                add(&mut b, a).unwrap();
            }
            if integrity & 1 != 0 {
                b.add_message_integrity(&key).unwrap();
            }
            if integrity & 2 != 0 {
                b.add_message_integrity_sha256(&key).unwrap();
            }
            if fingerprint {
                b.add_fingerprint().unwrap();
            }
            let bytes = b.finish().to_vec();
            prop_assert_eq!(bytes.len() % 4, 0);
            let message = Message::decode(&bytes).unwrap();
            prop_assert_eq!(message.method(), method);
            prop_assert_eq!(message.class(), class);
            prop_assert_eq!(message.transaction_id(), id);
            let raws: Vec<_> = message.attributes().collect();
            let computed = (integrity & 1) + ((integrity >> 1) & 1) + u8::from(fingerprint);
            prop_assert_eq!(raws.len(), attributes.len() + usize::from(computed));
            for (raw, a) in raws.iter().zip(&attributes) {
                check(*raw, a, &id);
            }
            let unknown: Vec<u16> = attributes.iter().filter_map(|a| match a {
                Attribute::Other(t, _) if *t < 0x8000 => Some(*t),
                _ => None,
            }).collect();
            prop_assert_eq!(message.unknown_comprehension_required().collect::<Vec<_>>(), unknown);
            let expected = match integrity {
                0 => Err(IntegrityError::Missing),
                1 => Ok(IntegrityAlgorithm::HmacSha1),
                _ => Ok(IntegrityAlgorithm::HmacSha256),
            };
            prop_assert_eq!(message.verify_integrity(&key), expected);
            if integrity == 3 {
                prop_assert_eq!(message.verify_message_integrity(&key), Ok(()));
            }
            let wrong = [key.as_slice(), b"x"].concat();
            if integrity != 0 {
                prop_assert_eq!(message.verify_integrity(&wrong), Err(IntegrityError::Mismatch));
            }
            prop_assert_eq!(
                message.verify_fingerprint(),
                if fingerprint { Ok(()) } else { Err(IntegrityError::Missing) }
            );
            exercise(&message);
        }

        #[test]
        fn xor_address_round_trip(address in socket_addr(), id in any::<[u8; 12]>()) {
            let id = TransactionId(id);
            let xored = xor_address(address, &id);
            prop_assert_eq!(xor_address(xored, &id), address);
            let (value, len) = encode_address(xored);
            prop_assert_eq!(parse_xor_address(&value[..len], &id), Some(address));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(message) = Message::decode(&bytes) {
                exercise(&message);
            }
            let _ = parse_channel_data(&bytes);
            let _ = classify(&bytes);
        }

        #[test]
        fn arbitrary_bodies_never_panic(
            message_type in 0..0x4000u16,
            words in prop::collection::vec(any::<[u8; 4]>(), 0..40),
            attr_types in prop::collection::vec(prop::sample::select(vec![
                attr::MAPPED_ADDRESS, attr::XOR_MAPPED_ADDRESS, attr::USERNAME, attr::ERROR_CODE,
                attr::UNKNOWN_ATTRIBUTES, attr::PASSWORD_ALGORITHMS, attr::PASSWORD_ALGORITHM,
                attr::MESSAGE_INTEGRITY, attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT,
                attr::ICMP, attr::EVEN_PORT, attr::DONT_FRAGMENT, attr::CHANNEL_NUMBER,
            ]), 0..40),
        ) {
            // Plausible framing with hostile contents: some words become attribute headers of
            // known types with small lengths.
            let mut body: Vec<u8> = words.concat();
            for (i, t) in attr_types.iter().enumerate() {
                let at = (i * 12) % body.len().max(1);
                if let Some(word) = body.get_mut(at..at + 4) {
                    word[..2].copy_from_slice(&t.to_be_bytes());
                    word[2] = 0;
                    word[3] %= 40;
                }
            }
            let mut bytes = message_type.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            bytes.extend_from_slice(&[0xA5; 12]);
            bytes.extend_from_slice(&body);
            if let Ok(message) = Message::decode(&bytes) {
                exercise(&message);
            }
        }

        #[test]
        fn mutated_messages_never_panic(
            attributes in prop::collection::vec(attribute(), 0..8),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Request, TransactionId([7; 12]));
            for a in &attributes {
                add(&mut b, a).unwrap();
            }
            b.add_message_integrity(b"key").unwrap();
            b.add_fingerprint().unwrap();
            let mut bytes = b.finish().to_vec();
            for (index, xor) in flips {
                let i = index.index(bytes.len());
                bytes[i] ^= xor;
            }
            if let Ok(message) = Message::decode(&bytes) {
                exercise(&message);
            }
        }

        #[test]
        fn channel_data_round_trip(
            channel in 0x4000..=0x4FFFu16,
            data in prop::collection::vec(any::<u8>(), 0..300),
            pad in any::<bool>(),
        ) {
            let mut out = Vec::new();
            encode_channel_data(&mut out, channel, &data, pad).unwrap();
            prop_assert_eq!(classify(&out), PacketKind::ChannelData);
            prop_assert_eq!(parse_channel_data(&out), Ok((channel, data.as_slice())));
        }
    }
}

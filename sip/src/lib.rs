//! SIP for Switchboard, sans-IO: message parsing and printing, the RFC 3261 §17 transaction
//! state machines with timers as data, dialogs, digest authentication (RFC 8760) and stream
//! framing for TCP, TLS and WebSocket transports.
//!
//! Nothing here touches a socket or a clock: bytes and the current time come in as arguments;
//! messages to send, events and the next deadline come out. The `server` crate owns the I/O.
//!
//! What exists so far:
//! - [`message`]: messages with hard [`message::Limits`], compact forms, folding, list
//!   splitting, validation of the core headers, printing, and stream framing;
//! - [`transaction`]: the four RFC 3261 §17 transaction machines (RFC 6026 Accepted states),
//!   timers A-M as data, and §17.1.3/§17.2.3 matching;
//! - [`uri`]: `sip:`, `sips:` and `tel:` URIs with §19.1.4 comparison;
//! - [`dialog`]: dialogs (§12): IDs, route sets, in-dialog requests, CSeq checks, target refresh;
//! - [`digest`]: digest authentication (MD5, SHA-256, SHA-512/256) with stateless nonces;
//! - [`header`]: typed, borrowed views of `Via`, `CSeq`, name-addr headers and parameters.
//!
//! The parser is our own rather than `rsip`: see `benches/` for the comparison, whose figures
//! are recorded in the README.

#![forbid(unsafe_code)]

pub mod dialog;
pub mod digest;
pub mod header;
pub mod message;
pub mod transaction;
pub mod uri;

pub use message::{
    Header, HeaderName, Headers, Limits, Message, Method, ParseError, Request, Response,
};
pub use uri::{Host, SipUri, Uri};

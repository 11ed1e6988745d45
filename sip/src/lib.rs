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
//! # Why our own parser, not `rsip`
//!
//! Measured on 2026-11-22 against rsip 0.4 (the last release), on the reference machine:
//!
//! - **Correctness.** On the 61 torture messages of RFC 4475 and RFC 5118
//!   (`tests/data/torture`), parsing and then reading Via, From, To and CSeq as typed values,
//!   rsip agrees with the RFCs' syntax verdict on 32. It refuses valid messages with line
//!   folding (`wsinv`), unusual token characters (`intmeth`), %-escapes (`esc01`), a `;` in the
//!   user part (`semiuri`) and every IPv6 message of RFC 5118, and it accepts a negative or
//!   too-large Content-Length (`ncl`, `clerr`), two Content-Lengths (`mcl01`), an unterminated
//!   quoted string (`quotbal`) and a Request-URI in `<>` (`ltgtruri`). This parser handles all
//!   61 as `tests/torture.rs` expects.
//! - **Speed** (`cargo bench -p switchboard-benches --bench sip_parse`, medians): this parser,
//!   which validates the core headers while parsing, takes 4.4 µs for the RFC 3261 INVITE,
//!   5.6 µs for a REGISTER and 7.4 µs for a 200 OK with three Vias; rsip takes 8.4, 13.6 and
//!   10.1 µs to parse the same messages and type the same headers (5.2, 5.2 and 2.5 µs to parse
//!   without typing anything).

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

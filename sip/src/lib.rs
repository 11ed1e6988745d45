//! SIP for Switchboard, sans-IO: message parsing and printing, the RFC 3261 §17 transaction
//! state machines with timers as data, dialogs, digest authentication (RFC 8760) and stream
//! framing for TCP, TLS and WebSocket transports.
//!
//! Nothing here touches a socket or a clock: bytes and the current time come in as arguments;
//! messages to send, events and the next deadline come out. The `server` crate owns the I/O.
//!
//! This crate is filled by the SIP core work (see the project's issues); it has no items yet.

#![forbid(unsafe_code)]

//! STUN/TURN server core for Switchboard, sans-IO (RFC 8489, RFC 8656): allocations,
//! permissions, channels and authentication, with lifetimes as deadlines.
//!
//! - [`stun`]: the STUN/TURN message and ChannelData codec (RFC 8489, RFC 8656 §12 and §18).
//! - [`server`]: the TURN server state machine: Allocate, Refresh, CreatePermission,
//!   ChannelBind, Send and Data indications, ChannelData, quotas, nonces.
//! - [`policy`]: which peer addresses relays may reach.
//! - [`rest`]: the time-limited credentials shared with the control plane.
//!
//! The `switchboard` binary owns the sockets and the clock; nothing here does I/O.

#![forbid(unsafe_code)]

pub mod policy;
pub mod rest;
pub mod server;
pub mod stun;

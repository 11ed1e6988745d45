//! STUN/TURN server core for Switchboard, sans-IO (RFC 8489, RFC 8656): allocations,
//! permissions, channels and authentication, with lifetimes as deadlines.
//!
//! What exists so far: [`stun`], the STUN/TURN message and ChannelData codec (RFC 8489,
//! RFC 8656 §12 and §18) the server will be built on, and [`rest`], the time-limited
//! credentials shared with the control plane.

#![forbid(unsafe_code)]

pub mod rest;
pub mod stun;

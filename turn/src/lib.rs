//! STUN/TURN server core for Switchboard, sans-IO (RFC 8489, RFC 8656): allocations,
//! permissions, channels and authentication, with lifetimes as deadlines.
//!
//! What exists so far: [`rest`], the time-limited credentials shared with the control plane.

#![forbid(unsafe_code)]

pub mod rest;

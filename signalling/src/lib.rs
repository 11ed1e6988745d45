//! Call control for Switchboard, sans-IO: the B2BUA, the registrar's location logic, routing
//! (extensions, ring groups, DIDs, trunks) and the IVR flow engine.
//!
//! Nothing here touches a socket, a clock or a task: inputs arrive as arguments (including the
//! current time), decisions come back as values. The `server` crate drives it.
//!
//! What exists so far:
//! - [`core`]: the signalling core the server's SIP task owns: parsing, transactions, request
//!   checks (§8.2), digest-authenticated REGISTER with failure limits, OPTIONS;
//! - [`registrar`]: the location service (RFC 3261 §10.3, RFC 5626 instance replacement);
//! - [`directory`]: tenants and extensions in memory;
//! - [`ivr`]: the IVR flow graph (the JSON documents the control plane stores and publishes)
//!   and its validation;
//! - [`e164`]: normalisation of dialled and presented numbers to E.164.

#![forbid(unsafe_code)]

pub mod core;
pub mod directory;
pub mod e164;
pub mod ivr;
pub mod media;
pub mod peer;
pub mod rate;
pub mod registrar;
pub mod stats;

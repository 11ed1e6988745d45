//! The `switchboard` server: configuration, start-up, and the HTTP control plane. This is the
//! only crate of the workspace that does I/O.

pub mod app;
pub mod auth;
pub mod config;
pub mod events;
pub mod http;
pub mod https;
pub mod media;
pub mod metrics;
pub mod recorder;
pub mod secrets;
pub mod sip;
pub mod turn;
mod worker;

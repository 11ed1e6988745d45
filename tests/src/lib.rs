//! End-to-end tests of the `switchboard` binary: each test starts the real server on free
//! loopback ports with a temporary data directory and talks to it over the network, as users
//! and third-party peers do.

#![forbid(unsafe_code)]

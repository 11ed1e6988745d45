//! Counters the signalling core keeps and the shell exports as metrics. Relaxed atomics: the
//! core is the only writer, the metrics endpoint reads a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// SIP counters and gauges (names in `docs/metrics.md`).
#[derive(Debug, Default)]
pub struct SipStats {
    /// Requests received and parsed.
    pub requests: AtomicU64,
    /// Responses received and parsed.
    pub responses: AtomicU64,
    /// Datagrams or stream messages that failed to parse.
    pub parse_errors: AtomicU64,
    /// Requests answered 400 because they failed to parse.
    pub bad_requests: AtomicU64,
    /// Credentials that failed verification.
    pub auth_failures: AtomicU64,
    /// Requests dropped because their source is blocked.
    pub blocked_requests: AtomicU64,
    /// Sources blocked for repeated authentication failures.
    pub blocks: AtomicU64,
    /// Requests refused with 503 because of overload.
    pub overloaded: AtomicU64,
    /// Successful REGISTER requests.
    pub registers: AtomicU64,
    /// Calls accepted (authenticated and routed to a registered callee).
    pub calls: AtomicU64,
    /// Calls that were answered.
    pub calls_answered: AtomicU64,
    /// New calls refused by a calls-per-second limit.
    pub rate_limited: AtomicU64,
    /// INVITEs accepted from a trunk's source address.
    pub trunk_calls: AtomicU64,
    /// Trunks registered with their carrier now.
    pub trunks_registered: AtomicU64,
    /// Trunk registrations that failed (refused, timed out).
    pub trunk_register_failures: AtomicU64,
    /// Trunk proxies that did not answer their last OPTIONS.
    pub trunk_proxies_down: AtomicU64,
    /// INVITEs for one of our numbers refused with 403: no credentials and not from a trunk.
    pub trunk_refused: AtomicU64,
    /// Live bindings.
    pub bindings: AtomicU64,
    /// Calls in progress (ringing or answered).
    pub active_calls: AtomicU64,
    /// Live transactions.
    pub transactions: AtomicU64,
    /// Open SIP WebSocket connections (the shell counts them).
    pub websocket_connections: AtomicU64,
}

impl SipStats {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Reads a value.
    pub fn get(value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }
}

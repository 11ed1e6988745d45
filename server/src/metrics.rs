//! Prometheus metrics. Every name is documented in `docs/metrics.md`.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use switchboard_signalling::stats::SipStats;

use crate::media::{MediaStats, WorkerStats};
use crate::recorder::RecorderStats;

/// Labels of HTTP request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: String,
    /// Route template, e.g. `/api/v1/extensions/{id}`, or `unmatched`.
    pub route: String,
    /// Response status.
    pub status: u16,
}

/// Labels of HTTP latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: String,
    /// Route template.
    pub route: String,
}

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome.
    pub result: &'static str,
}

/// A `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// State.
    pub state: &'static str,
}

/// A `version` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// Version.
    pub version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// `switchboard_http_requests_total`
    pub http_requests: Family<HttpLabels, Counter>,
    /// `switchboard_http_request_duration_seconds`
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `switchboard_auth_logins_total`
    pub logins: Family<ResultLabel, Counter>,
    /// `switchboard_auth_refreshes_total`
    pub refreshes: Family<ResultLabel, Counter>,
    /// `switchboard_db_pool_connections`
    pub db_connections: Family<StateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "switchboard_http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "switchboard_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route",
            http_duration.clone(),
        );
        let logins = Family::<ResultLabel, Counter>::default();
        registry.register(
            "switchboard_auth_logins",
            "Login attempts by result",
            logins.clone(),
        );
        let refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "switchboard_auth_refreshes",
            "Refresh-token exchanges by result",
            refreshes.clone(),
        );
        let db_connections = Family::<StateLabel, Gauge>::default();
        registry.register(
            "switchboard_db_pool_connections",
            "Database pool connections by state (idle, in_use)",
            db_connections.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "switchboard_build_info",
            "Always 1; the version is a label",
            build_info,
        );
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        registry.register(
            "switchboard_start_time_seconds",
            "Unix time the process started",
            started,
        );
        Self {
            registry,
            http_requests,
            http_duration,
            logins,
            refreshes,
            db_connections,
        }
    }

    /// Counts a login attempt.
    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a refresh attempt.
    pub fn refresh(&self, result: &'static str) {
        self.refreshes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Exports the signalling core's counters.
    pub fn register_sip(&mut self, stats: Arc<SipStats>) {
        self.registry
            .register_collector(Box::new(SipCollector(stats)));
    }

    /// Exports the media plane's counters.
    pub fn register_media(&mut self, stats: Arc<MediaStats>) {
        self.registry
            .register_collector(Box::new(MediaCollector(stats)));
    }

    /// Exports the TURN server's counters.
    pub fn register_turn(&mut self, stats: crate::turn::TurnStats) {
        self.registry
            .register_collector(Box::new(TurnCollector(stats)));
    }

    /// Exports the recording writer's counters.
    pub fn register_recorder(&mut self, stats: Arc<RecorderStats>) {
        self.registry
            .register_collector(Box::new(RecorderCollector(stats)));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics into a String");
        out
    }
}

/// Reads the signalling core's atomics at scrape time.
#[derive(Debug)]
struct SipCollector(Arc<SipStats>);

impl Collector for SipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counters = [
            (
                "switchboard_sip_requests",
                "SIP requests received and parsed",
                &s.requests,
            ),
            (
                "switchboard_sip_responses",
                "SIP responses received and parsed",
                &s.responses,
            ),
            (
                "switchboard_sip_parse_errors",
                "SIP messages dropped or refused because they did not parse",
                &s.parse_errors,
            ),
            (
                "switchboard_sip_bad_requests",
                "Requests answered 400 because they did not parse",
                &s.bad_requests,
            ),
            (
                "switchboard_sip_auth_failures",
                "Digest authentications that failed",
                &s.auth_failures,
            ),
            (
                "switchboard_sip_blocked_requests",
                "Requests dropped because their source is blocked",
                &s.blocked_requests,
            ),
            (
                "switchboard_sip_blocks",
                "Sources blocked after repeated authentication failures",
                &s.blocks,
            ),
            (
                "switchboard_sip_overloaded",
                "Requests answered 503 because too many transactions were live",
                &s.overloaded,
            ),
            (
                "switchboard_sip_registers",
                "Successful REGISTER requests",
                &s.registers,
            ),
            (
                "switchboard_calls",
                "Calls accepted and routed to a callee",
                &s.calls,
            ),
            (
                "switchboard_calls_answered",
                "Calls that were answered",
                &s.calls_answered,
            ),
            (
                "switchboard_calls_rate_limited",
                "New calls refused (503) by a calls-per-second limit",
                &s.rate_limited,
            ),
            (
                "switchboard_trunk_calls",
                "INVITEs accepted from a trunk's source address",
                &s.trunk_calls,
            ),
            (
                "switchboard_trunk_refused",
                "INVITEs for one of our numbers refused (403): no credentials, not from a trunk",
                &s.trunk_refused,
            ),
            (
                "switchboard_trunk_register_failures",
                "Trunk registrations refused by the carrier or unanswered",
                &s.trunk_register_failures,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(SipStats::get(value));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "switchboard_sip_bindings",
                "Live registration bindings",
                &s.bindings,
            ),
            (
                "switchboard_sip_transactions",
                "Live SIP transactions",
                &s.transactions,
            ),
            (
                "switchboard_calls_active",
                "Calls ringing or answered",
                &s.active_calls,
            ),
            (
                "switchboard_trunks_registered",
                "Trunks registered with their carrier",
                &s.trunks_registered,
            ),
            (
                "switchboard_trunk_proxies_down",
                "Trunk proxies that did not answer their last OPTIONS",
                &s.trunk_proxies_down,
            ),
            (
                "switchboard_sip_websocket_connections",
                "Open SIP over WebSocket connections (WS and WSS)",
                &s.websocket_connections,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(SipStats::get(value)).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Sums the media workers' atomics at scrape time.
#[derive(Debug)]
struct MediaCollector(Arc<MediaStats>);

impl Collector for MediaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        type Field = fn(&WorkerStats) -> &AtomicU64;
        let forwarded = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "switchboard_media_rtp_forwarded",
            "RTP packets relayed between call legs, by direction",
            None,
            forwarded.metric_type(),
        )?;
        let directions: [(&str, Field); 2] = [
            ("to_callee", |w| &w.rtp_to_callee),
            ("to_caller", |w| &w.rtp_to_caller),
        ];
        for (direction, field) in directions {
            ConstCounter::new(self.0.sum(field))
                .encode(family.encode_family(&[("direction", direction)])?)?;
        }
        let counters: [(&str, &str, Field); 7] = [
            (
                "switchboard_media_rtp_dropped",
                "RTP packets dropped (foreign source, malformed, no destination yet)",
                |w| &w.rtp_dropped,
            ),
            (
                "switchboard_media_rtcp_received",
                "RTCP packets received from call legs (terminated per leg)",
                |w| &w.rtcp_received,
            ),
            (
                "switchboard_media_rtcp_sent",
                "RTCP reports (SR or RR with SDES) sent to call legs",
                |w| &w.rtcp_sent,
            ),
            (
                "switchboard_media_bind_failures",
                "Media sessions whose RTP ports could not be bound",
                |w| &w.bind_failures,
            ),
            (
                "switchboard_media_inactive",
                "Media sessions ended for lack of RTP",
                |w| &w.inactive,
            ),
            (
                "switchboard_media_prompt_packets",
                "RTP packets of IVR prompts sent to callers",
                |w| &w.prompt_packets,
            ),
            (
                "switchboard_media_hold_music_packets",
                "RTP packets of music on hold sent to held legs",
                |w| &w.hold_music_packets,
            ),
        ];
        for (name, help, field) in counters {
            let counter = ConstCounter::new(self.0.sum(field));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Field); 3] = [
            (
                "switchboard_media_sessions",
                "Media sessions (calls with anchored media)",
                |w| &w.sessions,
            ),
            (
                "switchboard_media_webrtc_legs",
                "Browser legs (WebRTC through str0m) of live media sessions",
                |w| &w.webrtc_legs,
            ),
            (
                "switchboard_media_transcoded_legs",
                "Browser legs whose Opus is transcoded to and from G.711",
                |w| &w.transcoded_legs,
            ),
        ];
        for (name, help, field) in gauges {
            let gauge = ConstGauge::new(i64::try_from(self.0.sum(field)).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Reads the recording writer's atomics at scrape time.
#[derive(Debug)]
struct RecorderCollector(Arc<RecorderStats>);

impl Collector for RecorderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let load = |value: &AtomicU64| value.load(std::sync::atomic::Ordering::Relaxed);
        let counters = [
            (
                "switchboard_recordings_completed",
                "Recordings finished (stopped, or closed at the end of their call)",
                load(&self.0.completed),
            ),
            (
                "switchboard_recording_packets_dropped",
                "RTP packet copies dropped because the recording writer was behind",
                load(&self.0.taps_dropped),
            ),
            (
                "switchboard_recording_write_errors",
                "Recording files that could not be created or written",
                load(&self.0.write_errors),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauge = ConstGauge::new(i64::try_from(load(&self.0.active)).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "switchboard_recordings_active",
            "Recordings being written",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Sums the TURN workers' counters (each published at its one-second sweep) at scrape time.
struct TurnCollector(crate::turn::TurnStats);

impl std::fmt::Debug for TurnCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnCollector")
    }
}

impl Collector for TurnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.sum();
        let counters = [
            (
                "switchboard_turn_allocations_created",
                "TURN allocations created",
                s.allocations_created,
            ),
            (
                "switchboard_turn_allocations_expired",
                "TURN allocations that ran out of lifetime",
                s.allocations_expired,
            ),
            (
                "switchboard_turn_allocations_deleted",
                "TURN allocations deleted by their client or its connection closing",
                s.allocations_deleted,
            ),
            (
                "switchboard_turn_permissions_created",
                "TURN permissions installed",
                s.permissions_created,
            ),
            (
                "switchboard_turn_channels_bound",
                "TURN channels bound",
                s.channels_bound,
            ),
            (
                "switchboard_turn_auth_failures",
                "TURN requests refused for credentials (unknown user, wrong password, expired)",
                s.auth_failures,
            ),
            (
                "switchboard_turn_stale_nonces",
                "TURN requests answered 438 (stale or forged nonce)",
                s.stale_nonces,
            ),
            (
                "switchboard_turn_quota_denials",
                "TURN allocations refused by a quota (486 or 508)",
                s.quota_denials,
            ),
            (
                "switchboard_turn_policy_denials",
                "TURN permissions or channels refused by the peer policy (403)",
                s.policy_denials,
            ),
            (
                "switchboard_turn_no_permission_drops",
                "Packets dropped because their peer had no permission",
                s.no_permission_drops,
            ),
            (
                "switchboard_turn_bandwidth_drops",
                "Packets dropped by the per-allocation bandwidth limit",
                s.bandwidth_drops,
            ),
            (
                "switchboard_turn_malformed",
                "Packets that were not TURN, did not decode or had no allocation",
                s.malformed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let relayed = [
            (
                "switchboard_turn_relayed_packets",
                "Packets relayed, by direction",
                s.packets_to_peers,
                s.packets_to_clients,
            ),
            (
                "switchboard_turn_relayed_bytes",
                "Application bytes relayed, by direction",
                s.bytes_to_peers,
                s.bytes_to_clients,
            ),
        ];
        for (name, help, to_peer, to_client) in relayed {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            ConstCounter::new(to_peer)
                .encode(family.encode_family(&[("direction", "to_peer")])?)?;
            ConstCounter::new(to_client)
                .encode(family.encode_family(&[("direction", "to_client")])?)?;
        }
        let gauges = [
            (
                "switchboard_turn_allocations",
                "TURN allocations now",
                s.allocations,
            ),
            (
                "switchboard_turn_permissions",
                "TURN permissions now",
                s.permissions,
            ),
            (
                "switchboard_turn_channels",
                "TURN channel bindings now",
                s.channels,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

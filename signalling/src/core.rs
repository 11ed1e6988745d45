//! The signalling core: one sans-IO state machine that owns the SIP transaction layer, the
//! directory, the registrar and (as it grows) call control.
//!
//! The shell feeds it datagrams and stream messages ([`Core::handle_datagram`]), directory
//! changes ([`Core::apply`]) and the time ([`Core::handle_timeout`]); it drains
//! [`Core::poll_output`] until empty after every input and sleeps until
//! [`Core::poll_timeout`].
//!
//! Requests are checked in the order of RFC 3261 §8.2 (version 505, URI scheme 416, method
//! 501/405, `Require` 420) before they reach a handler. REGISTER is authenticated with digest
//! (realm = the tenant's SIP domain) and applied to the registrar. The challenge carries one
//! `WWW-Authenticate` per configured algorithm, most preferred first (RFC 8760 §2.4); the
//! default puts MD5 first because SIPp and many deployed phones answer only the first
//! challenge and support only MD5, with SHA-256 second for clients that pick the first
//! algorithm they support. Repeated authentication failures from one source IP block that source for
//! a while (its requests are dropped unanswered); repeated failures for one extension make it
//! answer 403 for the rest of the window. Both maps are bounded.

mod calls;
mod trunk_health;
mod trunk_reg;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use switchboard_sip::digest::{self, Algorithm, Credentials, DigestError, Nonces};
use switchboard_sip::header::{NameAddr, Via};
use switchboard_sip::message::{
    HeaderName, Limits, Message, Method, ParseError, Request, Response,
};
use switchboard_sip::transaction::{
    self, Event, Output as TxOutput, ServerKey, Timers, Transactions,
};
use switchboard_sip::uri::Uri;
use uuid::Uuid;

use self::calls::Caller;
pub use self::calls::{
    CallEnd, CallEvent, CallEventKind, CallStart, Disposition, HangupSide, IvrSummary,
    RecordingError, RecordingRequest, RecordingState,
};
pub use self::trunk_reg::{TrunkRegChange, TrunkRegState};
use crate::directory::{Directory, Extension, Tenant, Update};
use crate::media::{MediaCommand, PortAllocator};
use crate::peer::{Peer, Transport};
use crate::rate::{Bucket, Buckets};
use crate::registrar::{Change, RegisterError, Registrar, RegistrarConfig};
use crate::stats::SipStats;

/// Methods this core answers; others get 501 with this list in `Allow`.
pub const ALLOWED: &str = "INVITE, ACK, BYE, CANCEL, REGISTER, OPTIONS, UPDATE, INFO";

/// Limits and policies of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Parser limits.
    pub limits: Limits,
    /// T1, T2, T4.
    pub timers: Timers,
    /// Live transactions at most (beyond: 503).
    pub max_transactions: usize,
    /// Registrar limits.
    pub registrar: RegistrarConfig,
    /// `Server` / `User-Agent` header value.
    pub server_name: String,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Digest algorithms offered, most preferred first.
    pub digest_algorithms: Vec<Algorithm>,
    /// Failed authentications per source IP per window before the source is blocked.
    pub max_failures_per_source: u32,
    /// Failed authentications per extension per window before it answers 403.
    pub max_failures_per_extension: u32,
    /// The failure-counting window.
    pub failure_window: Duration,
    /// Calls at most, server-wide (beyond: 503 with Retry-After).
    pub max_calls: usize,
    /// Calls at most per tenant.
    pub max_calls_per_tenant: usize,
    /// New calls a second at most, server-wide (0: no limit; beyond: 503 with Retry-After).
    pub max_calls_per_second: u32,
    /// New calls a second at most per tenant (0: no limit).
    pub max_calls_per_second_per_tenant: u32,
    /// How long a call rings before the caller gets 480.
    pub ring_timeout: Duration,
    /// RTP port range (even ports for RTP, the next odd for RTCP).
    pub rtp_ports: (u16, u16),
    /// How long a blocked source stays blocked.
    pub block_duration: Duration,
    /// Limits on calls out through trunks.
    pub outbound: OutboundLimits,
}

/// Toll-fraud limits on calls out through trunks, per tenant.
#[derive(Clone, Debug, Default)]
pub struct OutboundLimits {
    /// E.164 digit prefixes calls may go to; empty allows every number.
    pub allowed_prefixes: Vec<String>,
    /// Calls out at once (0: none).
    pub max_concurrent_per_tenant: usize,
    /// Answered minutes out per UTC day (0: no cap).
    pub daily_minutes_per_tenant: u32,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            timers: Timers::default(),
            max_transactions: 100_000,
            registrar: RegistrarConfig::default(),
            server_name: format!("Switchboard/{}", env!("CARGO_PKG_VERSION")),
            nonce_lifetime: Duration::from_secs(300),
            digest_algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            max_failures_per_source: 20,
            max_failures_per_extension: 10,
            failure_window: Duration::from_secs(60),
            max_calls: 10_000,
            max_calls_per_tenant: 10_000,
            max_calls_per_second: 0,
            max_calls_per_second_per_tenant: 0,
            ring_timeout: Duration::from_secs(60),
            rtp_ports: (20_000, 39_999),
            block_duration: Duration::from_secs(600),
            outbound: OutboundLimits {
                max_concurrent_per_tenant: 100,
                ..OutboundLimits::default()
            },
        }
    }
}

/// What the core asks the shell to do.
#[derive(Debug)]
pub enum Output {
    /// Send `bytes` to `peer`.
    Transmit {
        /// Destination.
        peer: Peer,
        /// The message.
        bytes: Bytes,
    },
    /// A registration changed: persist it and announce it.
    Registration(Change),
    /// A command for the media plane.
    Media(MediaCommand),
    /// A call started: write its record (in progress).
    CallStarted(CallStart),
    /// A call ended: complete its record.
    CallEnded(CallEnd),
    /// A live call rang, was answered, held or resumed (for event subscribers).
    CallEvent(CallEvent),
    /// A trunk's registration with its carrier changed.
    TrunkRegistration(TrunkRegChange),
    /// An IVR flow asks for a URL: fetch it and hand the answer to
    /// [`Core::handle_http_done`].
    Http {
        /// The call's session.
        session: crate::media::SessionId,
        /// What to fetch.
        request: crate::ivr::HttpRequest,
    },
}

/// Failure counting with a bounded map and fixed windows.
struct FailureCounter<K> {
    limit: u32,
    window: Duration,
    max_keys: usize,
    counts: HashMap<K, (Instant, u32)>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureCounter<K> {
    fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys,
            counts: HashMap::new(),
        }
    }

    /// Counts a failure; returns true when the key just reached the limit.
    fn fail(&mut self, key: K, now: Instant) -> bool {
        if self.counts.len() >= self.max_keys && !self.counts.contains_key(&key) {
            let window = self.window;
            self.counts
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if self.counts.len() >= self.max_keys {
                // Still full of live windows: forget them all rather than grow.
                self.counts.clear();
            }
        }
        let entry = self.counts.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == self.limit
    }

    fn over_limit(&self, key: &K, now: Instant) -> bool {
        self.counts.get(key).is_some_and(|(start, count)| {
            now.saturating_duration_since(*start) < self.window && *count >= self.limit
        })
    }
}

/// Seconds between keepalives asked of RFC 5626 clients (`Flow-Timer`), well inside the
/// stream connections' idle timeout.
const FLOW_TIMER_SECS: u32 = 120;

/// The signalling core.
pub struct Core {
    config: CoreConfig,
    directory: Directory,
    registrar: Registrar,
    transactions: Transactions<Peer>,
    nonces: Nonces,
    rng: StdRng,
    outputs: VecDeque<Output>,
    source_failures: FailureCounter<IpAddr>,
    extension_failures: FailureCounter<Uuid>,
    blocked: HashMap<IpAddr, Instant>,
    stats: Arc<SipStats>,
    /// The time of the latest input, for events drained later.
    last_now: Option<Instant>,
    last_wall_ms: u64,
    calls: calls::Calls,
    ports: PortAllocator,
    /// New calls, server-wide and per tenant (`max_calls_per_second*`).
    call_rate: Bucket,
    tenant_call_rate: Buckets<Uuid>,
    /// The address we put in Via, Contact and SDP.
    advertised: IpAddr,
    /// Our listening port per transport.
    local_ports: HashMap<Transport, u16>,
    /// Our registrations with carriers.
    trunk_regs: trunk_reg::TrunkRegs,
    /// Whether trunk proxies answer.
    trunk_health: trunk_health::TrunkHealth,
    /// The key of browser credentials (`digest::ephemeral`); none accepted without it.
    credential_key: Option<[u8; 32]>,
    /// The DTLS certificate of WebRTC legs; without it browsers' calls are refused.
    webrtc_cert: Option<crate::media::Certificate>,
}

impl Core {
    /// A core with `config`; `nonce_key` authenticates nonces, `seed` seeds tags, branches and
    /// nonce randomness (the shell passes fresh random bytes; tests a constant).
    pub fn new(config: CoreConfig, nonce_key: [u8; 32], seed: [u8; 32]) -> Self {
        let lifetime = u64::try_from(config.nonce_lifetime.as_millis()).unwrap_or(u64::MAX);
        Self {
            directory: Directory::new(),
            registrar: Registrar::new(config.registrar),
            transactions: Transactions::new(config.timers, config.max_transactions),
            nonces: Nonces::new(nonce_key, lifetime, 100_000),
            rng: StdRng::from_seed(seed),
            outputs: VecDeque::new(),
            source_failures: FailureCounter::new(
                config.max_failures_per_source,
                config.failure_window,
                100_000,
            ),
            extension_failures: FailureCounter::new(
                config.max_failures_per_extension,
                config.failure_window,
                100_000,
            ),
            blocked: HashMap::new(),
            stats: Arc::new(SipStats::default()),
            last_now: None,
            last_wall_ms: 0,
            calls: calls::Calls::default(),
            call_rate: Bucket::new(),
            tenant_call_rate: Buckets::new(100_000),
            ports: PortAllocator::new(config.rtp_ports.0, config.rtp_ports.1),
            advertised: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_ports: HashMap::new(),
            trunk_regs: trunk_reg::TrunkRegs::default(),
            trunk_health: trunk_health::TrunkHealth::default(),
            credential_key: None,
            webrtc_cert: None,
            config,
        }
    }

    /// The address to advertise in Via, Contact and SDP, and where each transport listens.
    pub fn set_local(&mut self, advertised: IpAddr, ports: &[(Transport, u16)]) {
        self.advertised = advertised;
        self.local_ports = ports.iter().copied().collect();
    }

    /// `address:port` of our listener for `transport` (UDP's if that transport has none).
    fn local_for(&self, transport: Transport) -> String {
        let port = self
            .local_ports
            .get(&transport)
            .or_else(|| self.local_ports.get(&Transport::Udp))
            .copied()
            .unwrap_or(5060);
        match self.advertised {
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
            IpAddr::V4(ip) => format!("{ip}:{port}"),
        }
    }

    /// Accepts short-lived browser credentials minted under `key` (see
    /// [`switchboard_sip::digest::ephemeral`]): every node sharing the database must use the
    /// same key.
    pub fn set_credential_key(&mut self, key: [u8; 32]) {
        self.credential_key = Some(key);
    }

    /// Lets browsers call and be called: WebRTC legs use `cert` for DTLS.
    pub fn set_webrtc_certificate(&mut self, cert: crate::media::Certificate) {
        self.webrtc_cert = Some(cert);
    }

    /// Live calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// The counters, shared with the shell's metrics.
    pub fn stats(&self) -> Arc<SipStats> {
        self.stats.clone()
    }

    /// Applies a directory change.
    ///
    /// A trunk that registers with its carrier sends its first REGISTER at the next
    /// [`Self::handle_timeout`] (the shell runs one after applying changes).
    pub fn apply(&mut self, update: Update) {
        if let Update::ExtensionRemove(id) = &update {
            self.registrar.remove_extension(*id);
        }
        let trunk = match &update {
            Update::TrunkUpsert(trunk) => Some(trunk.id),
            Update::TrunkRemove(id) => Some(*id),
            _ => None,
        };
        self.directory.apply(update);
        if let Some(id) = trunk {
            let current = self.directory.trunk(id).cloned();
            self.trunk_changed(current.as_ref(), id);
            self.trunk_proxies_changed();
        }
    }

    /// Sets the tenant whose domain takes requests for unknown hosts.
    pub fn set_default_domain(&mut self, domain: &str) {
        self.directory.set_default_domain(domain);
    }

    /// The registrar (read-only), e.g. for the registrations API.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Re-installs bindings loaded from storage at start-up.
    pub fn registrar_mut(&mut self) -> &mut Registrar {
        &mut self.registrar
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(now) = self.last_now {
            self.drain_transactions(now, self.last_wall_ms);
        }
        self.outputs.pop_front()
    }

    /// When to call [`Self::handle_timeout`].
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.transactions.poll_timeout(),
            self.registrar.poll_timeout(),
            self.calls.poll_timeout(),
            self.trunk_regs.poll_timeout(),
            self.trunk_health.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.transactions.handle_timeout(now);
        self.drain_transactions(now, self.last_wall_ms);
        self.call_timers(now, self.last_wall_ms);
        self.trunk_reg_timers(now);
        self.trunk_health_timers(now);
        for change in self.registrar.expire(now) {
            self.outputs.push_back(Output::Registration(change));
        }
        self.blocked.retain(|_, until| *until > now);
        SipStats::set(&self.stats.bindings, self.registrar.len() as u64);
        let (clients, servers) = self.transactions.len();
        SipStats::set(&self.stats.transactions, (clients + servers) as u64);
    }

    /// The shell could not open (or lost) a connection to `peer` (TCP or TLS, opened by
    /// us): requests waiting on it fail at once, as if timed out, so a call fails over to
    /// the next proxy or route without waiting for Timer B.
    pub fn transport_failed(&mut self, now: Instant, wall_ms: u64, peer: Peer) {
        self.last_now = Some(now);
        self.transactions.transport_failed(&peer);
        self.drain_transactions(now, wall_ms);
    }

    /// Handles one SIP message from `peer`. `wall_ms` is the wall-clock time (milliseconds
    /// since the epoch), which nonces carry across restarts.
    pub fn handle_datagram(&mut self, now: Instant, wall_ms: u64, peer: Peer, bytes: &[u8]) {
        self.last_now = Some(now);
        self.last_wall_ms = wall_ms;
        if self
            .blocked
            .get(&peer.addr.ip())
            .is_some_and(|until| *until > now)
        {
            SipStats::inc(&self.stats.blocked_requests);
            return;
        }
        let message = match Message::parse(bytes, &self.config.limits) {
            Ok(message) => message,
            Err(error) => {
                SipStats::inc(&self.stats.parse_errors);
                self.answer_unparsable(peer, bytes, &error);
                return;
            }
        };
        let message = match message {
            Message::Request(mut request) => {
                SipStats::inc(&self.stats.requests);
                fix_top_via(&mut request, peer);
                Message::Request(request)
            }
            response @ Message::Response(_) => {
                SipStats::inc(&self.stats.responses);
                response
            }
        };
        self.transactions
            .handle_message(now, message, peer, peer.transport.is_reliable());
        self.drain_transactions(now, wall_ms);
    }

    /// Moves transaction-layer outputs into ours, handling events as the transaction user.
    fn drain_transactions(&mut self, now: Instant, wall_ms: u64) {
        while let Some(output) = self.transactions.poll_output() {
            match output {
                TxOutput::Transmit { to, bytes } => {
                    self.outputs.push_back(Output::Transmit { peer: to, bytes });
                }
                TxOutput::Event(event) => self.handle_event(now, wall_ms, event),
            }
        }
    }

    fn handle_event(&mut self, now: Instant, wall_ms: u64, event: Event<Peer>) {
        match event {
            Event::Request { key, request, from } => {
                self.handle_request(now, wall_ms, key, request, from);
            }
            Event::Overloaded { request, from } => {
                SipStats::inc(&self.stats.overloaded);
                if request.method != Method::Ack {
                    let mut response =
                        transaction::response_to(&request, 503, "Service Unavailable");
                    response.headers.push(HeaderName::RetryAfter, "5");
                    self.send_stateless(from, response);
                }
            }
            Event::Response { key, response } => {
                if !self.trunk_reg_response(now, &key, &response)
                    && !self.trunk_health_response(now, &key, response.status)
                {
                    self.call_response(now, wall_ms, &key, response);
                }
            }
            Event::Timeout { key } => {
                if !self.trunk_reg_timeout(now, &key) && !self.trunk_health_timeout(now, &key) {
                    self.call_timeout(now, wall_ms, &key);
                }
            }
            Event::AckTimeout { .. } => {}
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: ServerKey,
        request: Request,
        from: Peer,
    ) {
        let in_dialog = request
            .headers
            .get(&HeaderName::To)
            .and_then(|to| NameAddr::parse(to).ok())
            .is_some_and(|to| to.tag().is_some());
        if in_dialog && request.method != Method::Cancel {
            let handled = self.dialog_request(now, wall_ms, key.clone(), request.clone());
            if !handled && request.method != Method::Ack {
                self.respond(
                    now,
                    &key,
                    &request,
                    481,
                    "Call/Transaction Does Not Exist",
                    |_| {},
                );
            }
            return;
        }
        if request.method == Method::Ack {
            return; // an ACK for no dialog of ours: nothing to acknowledge
        }
        if request.version != (2, 0) {
            return self.respond(now, &key, &request, 505, "Version Not Supported", |_| {});
        }
        if !matches!(request.uri, Uri::Sip(_)) {
            return self.respond(now, &key, &request, 416, "Unsupported URI Scheme", |_| {});
        }
        // Extensions a request may require of us: session timers (RFC 4028).
        let required: Vec<String> = request
            .headers
            .get_all(&HeaderName::Require)
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|option| !option.is_empty() && !option.eq_ignore_ascii_case("timer"))
            .map(str::to_owned)
            .collect();
        if !required.is_empty() && request.method != Method::Cancel {
            return self.respond(now, &key, &request, 420, "Bad Extension", |r| {
                r.headers.push(HeaderName::Unsupported, required.join(", "));
            });
        }
        match request.method {
            Method::Register => self.handle_register(now, wall_ms, key, request, from),
            Method::Invite => {
                if self.is_own_invite(&request) {
                    // Our own forked INVITE came back (a contact that points at us): RFC 3261
                    // §16.3 step 4's loop check, by the branch we created it with.
                    return self.respond(now, &key, &request, 482, "Loop Detected", |_| {});
                }
                // An INVITE with credentials is an extension's; one without, from a trunk's
                // source, is the carrier's. A number of ours from anywhere else is refused.
                let has_credentials = request.headers.get(&HeaderName::Authorization).is_some();
                if !has_credentials
                    && let Some(trunk) = self.directory.trunk_for_source(from.addr.ip()).cloned()
                {
                    return self.trunk_call(now, wall_ms, key, request, from, &trunk);
                }
                if !has_credentials && self.dialled_number(&request).is_some() {
                    SipStats::inc(&self.stats.trunk_refused);
                    return self.respond(now, &key, &request, 403, "Forbidden", |_| {});
                }
                if let Some((tenant, caller)) =
                    self.authenticate(now, wall_ms, &key, &request, from)
                {
                    let caller = Caller::Extension(caller);
                    self.start_call(now, wall_ms, key, request, from, (tenant, caller));
                }
            }
            Method::Options => self.respond(now, &key, &request, 200, "OK", |r| {
                r.headers.push(HeaderName::Allow, ALLOWED);
                r.headers.push(HeaderName::Accept, "application/sdp");
            }),
            Method::Cancel => {
                if !self.cancel_call(now, wall_ms, &key, &request) {
                    self.respond(
                        now,
                        &key,
                        &request,
                        481,
                        "Call/Transaction Does Not Exist",
                        |_| {},
                    );
                }
            }
            _ => self.respond(now, &key, &request, 501, "Not Implemented", |r| {
                r.headers.push(HeaderName::Allow, ALLOWED);
            }),
        }
    }

    /// The number of ours (DID) a request's URI names, in any of its forms.
    fn dialled_number(&self, request: &Request) -> Option<&crate::directory::Number> {
        let user = request.uri.as_sip()?.user_unescaped()?;
        let e164 = crate::e164::normalize(&user).ok()?;
        self.directory.number(&e164)
    }

    /// A new INVITE from a trunk's source address (RFC 3261 trusts the carrier by address;
    /// an IP trunk is authenticated by nothing else).
    fn trunk_call(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: ServerKey,
        request: Request,
        from: Peer,
        trunk: &crate::directory::Trunk,
    ) {
        let Some(tenant) = self.directory.tenant(trunk.tenant_id).cloned() else {
            return self.respond(now, &key, &request, 404, "Not Found", |_| {});
        };
        SipStats::inc(&self.stats.trunk_calls);
        let from_header = request.headers.get(&HeaderName::From).unwrap_or_default();
        let (number, display) = NameAddr::parse(from_header)
            .ok()
            .map(|f| {
                let number = f
                    .parsed_uri()
                    .ok()
                    .and_then(|u| u.as_sip().and_then(|u| u.user_unescaped()))
                    .unwrap_or_default();
                let display = f
                    .display_name
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned();
                (number, display)
            })
            .unwrap_or_default();
        let caller = Caller::Trunk {
            trunk: trunk.id,
            number,
            display,
        };
        self.start_call(now, wall_ms, key, request, from, (tenant, caller));
    }

    /// Digest-authenticates a request against its tenant (realm = the tenant's SIP domain).
    /// Answers 401 (challenge), 403 (refused) or 404 (unknown domain) itself and returns
    /// `None`; on success returns the tenant and the authenticated extension.
    fn authenticate(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: &ServerKey,
        request: &Request,
        from: Peer,
    ) -> Option<(Tenant, Extension)> {
        let host = match &request.uri {
            Uri::Sip(uri) => uri.host.to_string(),
            _ => String::new(),
        };
        let Some(tenant) = self
            .directory
            .tenant_for_host(host.trim_start_matches('[').trim_end_matches(']'))
            .cloned()
        else {
            self.respond(now, key, request, 404, "Not Found", |_| {});
            return None;
        };
        let credentials = request
            .headers
            .get_all(&HeaderName::Authorization)
            .filter_map(|value| Credentials::parse(value).ok())
            .find(|c| c.realm == tenant.domain);
        let Some(credentials) = credentials else {
            self.challenge(now, wall_ms, key, request, (&tenant.domain, from), false);
            return None;
        };
        // Browser credentials (`<expires>:<number>`, see `digest::ephemeral`) name the
        // extension after the colon; anything else is the extension's number itself.
        let ephemeral = self
            .credential_key
            .and_then(|key| Some((key, digest::ephemeral::parse(&credentials.username)?)));
        let number = ephemeral.map_or(credentials.username.as_str(), |(_, (_, number))| number);
        let Some(extension) = self
            .directory
            .extension_by_number(tenant.id, number)
            .cloned()
        else {
            self.auth_failed(now, from, None);
            self.respond(now, key, request, 403, "Forbidden", |_| {});
            return None;
        };
        if self.extension_failures.over_limit(&extension.id, now) {
            self.respond(now, key, request, 403, "Too Many Failed Attempts", |_| {});
            return None;
        }
        let password = match ephemeral {
            None => extension.secret.clone(),
            Some((_, (expires, _))) if expires.saturating_mul(1000) <= wall_ms => {
                // Not a guess: the client should fetch new credentials.
                self.respond(now, key, request, 403, "Credentials Expired", |_| {});
                return None;
            }
            Some((key, _)) => digest::ephemeral::password(
                &key,
                &credentials.username,
                &extension.id.to_string(),
                &extension.secret,
            ),
        };
        let ha1 = digest::ha1(
            credentials.algorithm,
            &credentials.username,
            &tenant.domain,
            &password,
        );
        match self.nonces.verify(
            &credentials,
            &tenant.domain,
            request.method.as_str(),
            &ha1,
            wall_ms,
        ) {
            Ok(()) => Some((tenant, extension)),
            Err(DigestError::Stale) => {
                self.challenge(now, wall_ms, key, request, (&tenant.domain, from), true);
                None
            }
            Err(DigestError::UnknownNonce) => {
                self.challenge(now, wall_ms, key, request, (&tenant.domain, from), false);
                None
            }
            Err(_) => {
                self.auth_failed(now, from, Some(extension.id));
                self.respond(now, key, request, 403, "Forbidden", |_| {});
                None
            }
        }
    }

    fn handle_register(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: ServerKey,
        request: Request,
        from: Peer,
    ) {
        let Some((tenant, extension)) = self.authenticate(now, wall_ms, &key, &request, from)
        else {
            return;
        };
        let aor_user = request
            .headers
            .get(&HeaderName::To)
            .and_then(|to| NameAddr::parse(to).ok())
            .and_then(|to| to.parsed_uri().ok())
            .and_then(|uri| uri.as_sip().and_then(|u| u.user_unescaped()));
        if aor_user.as_deref() != Some(extension.number.as_str()) {
            return self.respond(
                now,
                &key,
                &request,
                403,
                "Forbidden: not your address of record",
                |_| {},
            );
        }
        let rng = &mut self.rng;
        match self
            .registrar
            .register(now, tenant.id, extension.id, &request, from, || {
                uuid_from(rng)
            }) {
            Ok(changes) => {
                SipStats::inc(&self.stats.registers);
                let contacts: Vec<String> = self
                    .registrar
                    .bindings(extension.id)
                    .iter()
                    .map(|b| {
                        format!(
                            "<{}>;expires={}",
                            b.contact,
                            b.expires_at.saturating_duration_since(now).as_secs()
                        )
                    })
                    .collect();
                // RFC 5626 §6: we are the edge proxy and the registrar, so a client asking
                // for outbound (flows identified by reg-id) gets it, and is told how often
                // to send keepalives.
                let outbound = request
                    .headers
                    .get_all(&HeaderName::Supported)
                    .flat_map(|v| v.split(','))
                    .any(|option| option.trim().eq_ignore_ascii_case("outbound"))
                    && request
                        .headers
                        .get_all(&HeaderName::Contact)
                        .any(|c| c.contains("reg-id="));
                self.respond(now, &key, &request, 200, "OK", |r| {
                    for contact in contacts {
                        r.headers.push(HeaderName::Contact, contact);
                    }
                    if outbound {
                        r.headers.push(HeaderName::Require, "outbound");
                        r.headers.push(
                            HeaderName::Other("Flow-Timer".into()),
                            FLOW_TIMER_SECS.to_string(),
                        );
                    }
                });
                for change in changes {
                    self.outputs.push_back(Output::Registration(change));
                }
                SipStats::set(&self.stats.bindings, self.registrar.len() as u64);
            }
            Err(RegisterError::IntervalTooBrief { min_expires }) => {
                self.respond(now, &key, &request, 423, "Interval Too Brief", |r| {
                    r.headers
                        .push(HeaderName::MinExpires, min_expires.to_string());
                });
            }
            Err(RegisterError::Invalid(why)) => self.respond(now, &key, &request, 400, why, |_| {}),
            Err(RegisterError::OutOfOrder) => {
                self.respond(now, &key, &request, 500, "Out Of Order", |_| {});
            }
        }
    }

    fn auth_failed(&mut self, now: Instant, from: Peer, extension: Option<Uuid>) {
        SipStats::inc(&self.stats.auth_failures);
        if self.source_failures.fail(from.addr.ip(), now) {
            SipStats::inc(&self.stats.blocks);
            self.blocked
                .insert(from.addr.ip(), now + self.config.block_duration);
        }
        if let Some(extension) = extension {
            self.extension_failures.fail(extension, now);
        }
    }

    /// Answers 401 with one challenge per configured algorithm, for `realm`. A WebSocket
    /// peer is a browser library (SIP.js, JsSIP), which knows only MD5 and, in SIP.js's
    /// case, answers the last challenge rather than the first it supports: it is offered MD5
    /// alone when MD5 is configured.
    fn challenge(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: &ServerKey,
        request: &Request,
        (realm, from): (&str, Peer),
        stale: bool,
    ) {
        let browser = matches!(from.transport, Transport::Ws | Transport::Wss);
        let md5_only = [digest::Algorithm::Md5];
        let algorithms = if browser && self.config.digest_algorithms.contains(&md5_only[0]) {
            &md5_only[..]
        } else {
            &self.config.digest_algorithms[..]
        };
        let mut values = Vec::with_capacity(algorithms.len());
        for &algorithm in algorithms {
            let random: [u8; digest::NONCE_RANDOM_LEN] = self.rng.random();
            values.push(
                self.nonces
                    .challenge(realm, algorithm, stale, wall_ms, random)
                    .to_header(),
            );
        }
        self.respond(now, key, request, 401, "Unauthorized", |r| {
            for value in values {
                r.headers.push(HeaderName::WwwAuthenticate, value);
            }
        });
    }

    /// Answers `request` through its transaction, adding a To tag and our Server header.
    fn respond(
        &mut self,
        now: Instant,
        key: &ServerKey,
        request: &Request,
        status: u16,
        reason: &str,
        extra: impl FnOnce(&mut Response),
    ) {
        let mut response = transaction::response_to(request, status, reason);
        self.add_to_tag(&mut response);
        response
            .headers
            .push(HeaderName::Server, self.config.server_name.clone());
        extra(&mut response);
        // The transaction exists: it was created for this request and answered at most once.
        if let Err(error) = self.transactions.send_response(now, key, response) {
            debug_assert!(false, "respond on a finished transaction: {error}");
        }
    }

    fn add_to_tag(&mut self, response: &mut Response) {
        let Some(to) = response.headers.get(&HeaderName::To) else {
            return;
        };
        if NameAddr::parse(to).ok().and_then(|t| t.tag()).is_none() {
            let tag: u64 = self.rng.random();
            let value = format!("{to};tag={tag:x}");
            response.headers.set(HeaderName::To, value);
        }
    }

    fn send_stateless(&mut self, peer: Peer, mut response: Response) {
        self.add_to_tag(&mut response);
        response
            .headers
            .push(HeaderName::Server, self.config.server_name.clone());
        self.outputs.push_back(Output::Transmit {
            peer,
            bytes: Bytes::from(response.to_bytes()),
        });
    }

    /// Answers a request that failed to parse with 400 and the reason, when its headers allow
    /// a response at all (§8.2: a response needs Via, From, To, Call-ID and CSeq to be useful).
    fn answer_unparsable(&mut self, peer: Peer, bytes: &[u8], error: &ParseError) {
        let Ok(Message::Request(mut request)) =
            Message::parse_for_error_response(bytes, &self.config.limits)
        else {
            return;
        };
        if request.method == Method::Ack {
            return;
        }
        let usable = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]
        .iter()
        .all(|name| request.headers.get(name).is_some())
            && request
                .headers
                .get(&HeaderName::Via)
                .is_some_and(|v| Via::parse(v).is_ok());
        if !usable {
            return;
        }
        fix_top_via(&mut request, peer);
        SipStats::inc(&self.stats.bad_requests);
        // Reason phrases are TEXT-UTF8 without line breaks; the error text qualifies.
        let reason = format!("Bad Request ({error})");
        self.send_stateless(peer, transaction::response_to(&request, 400, &reason));
    }
}

/// Adds `received` and fills `rport` in the top Via (RFC 3261 §18.2.1, RFC 3581 §4), so that
/// responses carry where the request really came from.
fn fix_top_via(request: &mut Request, peer: Peer) {
    let Some(top) = request.headers.get(&HeaderName::Via) else {
        return;
    };
    let Ok(via) = Via::parse(top) else { return };
    let source_ip = peer.addr.ip().to_string();
    let host = via.host.trim_start_matches('[').trim_end_matches(']');
    let mut value = top.to_owned();
    let rport_empty = matches!(via.params.get("rport"), Some(None));
    if rport_empty {
        // Replace the flag `rport` with `rport=<port>`.
        let mut rebuilt = value.split(';').next().unwrap_or_default().to_owned();
        for (name, v) in via.params.iter() {
            match (name.eq_ignore_ascii_case("rport"), v) {
                (true, _) => rebuilt.push_str(&format!(";rport={}", peer.addr.port())),
                (false, Some(v)) => rebuilt.push_str(&format!(";{name}={v}")),
                (false, None) => rebuilt.push_str(&format!(";{name}")),
            }
        }
        value = rebuilt;
    }
    if host != source_ip && via.params.get("received").is_none() {
        value.push_str(&format!(";received={source_ip}"));
    }
    if value != top {
        request.headers.set_first(&HeaderName::Via, value);
    }
}

fn uuid_from(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

#[cfg(test)]
mod call_tests;
#[cfg(test)]
mod tests;

//! The TURN server state machine (RFC 8656), sans-IO.
//!
//! One [`Server`] owns the allocations of the clients that reach it: a media worker of the
//! `switchboard` binary owns one per core, and the kernel keeps a client on one worker
//! (SO_REUSEPORT hashes the 5-tuple). Bytes and the time come in; what to send comes out as an
//! [`Output`] that borrows either the input or the server's one reused scratch buffer, so the
//! data path (ChannelData in both directions) neither allocates nor copies.
//!
//! What the core cannot do itself it asks of a [`Host`]: the long-term key of a user, a
//! per-user and server-wide allocation quota shared by every worker, and relay sockets.
//!
//! Lifetimes are deadlines: [`Server::poll_timeout`] says when [`Server::handle_timeout`]
//! must run next (a one-second sweep while any allocation exists). Permissions and channel
//! bindings are also checked against `now` on every packet, so a late sweep never extends
//! them.
//!
//! Authentication follows RFC 8489 §9.2 (long-term credentials) with stateless nonces: a
//! nonce is the RFC 8489 §9.2 cookie, its expiry, and an HMAC of the expiry and the client's
//! IP, so no nonce table grows with the number of clients and a forged or expired nonce is
//! answered 438. Usernames are either `<expiry>:<user>` REST credentials checked against the
//! shared secret ([`crate::rest`]), or users the [`Host`] knows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::policy::PeerPolicy;
use crate::rest;
use crate::stun::{
    self, AddressFamily, CHANNEL_DATA_HEADER_LEN, Class, EncodeError, IntegrityAlgorithm,
    LongTermKey, Message, MessageBuilder, Method, PacketKind, PasswordAlgorithm, TransactionId,
    attr, error_code,
};

/// How long a permission lives without a refresh (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lives without a refresh (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, neither its number nor its peer may be bound to something else
/// for this long (RFC 8656 §12).
pub const REBIND_GUARD: Duration = Duration::from_secs(300);
/// How often expired allocations, permissions and channels are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes a peer datagram needs in front of it in the buffer given to
/// [`Server::handle_peer`]: the ChannelData header is written there in place.
pub const PEER_HEADROOM: usize = CHANNEL_DATA_HEADER_LEN;
/// Bytes a peer datagram needs after it: ChannelData on a stream is padded to 4 bytes.
pub const PEER_TAILROOM: usize = 3;
/// The longest message on a TCP or TLS stream: a STUN message of the largest length.
pub const MAX_FRAME: usize = stun::HEADER_LEN + 65_532;
/// Channel numbers accepted. RFC 8656 §12 narrowed them to 0x4000–0x4FFF so that ChannelData
/// cannot be mistaken for DTLS or RTP on a shared port (RFC 7983); clients written for RFC 5766
/// §11, coturn's among them, still pick numbers up to 0x7FFF. A TURN port carries nothing
/// else to confuse them with, so the server accepts the RFC 5766 range.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// Splits ChannelData into channel number and application data (RFC 8656 §12.4); `None`
/// unless the number is in [`CHANNELS`] and the length fits.
fn parse_channel_data(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<CHANNEL_DATA_HEADER_LEN>()?;
    let number = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    CHANNELS
        .contains(&number)
        .then(|| rest.get(..len))
        .flatten()
        .map(|data| (number, data))
}

/// REQUESTED-TRANSPORT value for UDP, the only relay transport (RFC 8656 §18.11).
const UDP: u8 = 17;
/// RFC 8489 §9.2: a nonce starting with this cookie carries a security feature set.
const NONCE_COOKIE: &str = "obMatJos2";
/// The feature set: bit 0 (the most significant), password algorithms.
const NONCE_FEATURES: &str = "gAAA";
/// The password algorithms offered, preferred first (RFC 8489 §14.11).
const ALGORITHMS: [PasswordAlgorithm; 2] = [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5];

/// The transport between a client and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Protocol {
    /// Whether messages travel on a byte stream (ChannelData is then padded, RFC 8656 §12.5).
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// What identifies an allocation: client address, server address and transport
/// (RFC 8656 §2, "5-tuple").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The server address the client talks to.
    pub server: SocketAddr,
    /// The transport.
    pub protocol: Protocol,
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct Config {
    /// The REALM of the long-term credentials.
    pub realm: String,
    /// The shared secret of REST credentials; `None` accepts only users the host knows.
    pub rest_secret: Option<Vec<u8>>,
    /// Key of the nonce HMAC; every worker of one server should share it.
    pub nonce_secret: [u8; 32],
    /// How long a nonce is accepted.
    pub nonce_lifetime: Duration,
    /// Lifetime granted when a client asks for none, or for less (RFC 8656 §7.2: 10 minutes).
    pub default_lifetime: Duration,
    /// Longest lifetime granted (RFC 8656 recommends one hour).
    pub max_lifetime: Duration,
    /// Permissions per allocation at most; beyond it CreatePermission gets 508.
    pub max_permissions: usize,
    /// Channel bindings per allocation at most; beyond it ChannelBind gets 508.
    pub max_channels: usize,
    /// Bytes a second an allocation may relay in each direction together; 0: no limit.
    pub max_bandwidth: u64,
    /// Which peers relays may reach.
    pub policy: PeerPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            realm: "switchboard".into(),
            rest_secret: None,
            nonce_secret: [0; 32],
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_permissions: 64,
            max_channels: 64,
            max_bandwidth: 0,
            policy: PeerPolicy::default(),
        }
    }
}

/// Why the host refused another allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaDenial {
    /// The user holds as many allocations as allowed (answered 486).
    User,
    /// The server holds as many allocations as allowed (answered 508).
    Total,
}

/// What the state machine asks of the code around it.
pub trait Host {
    /// The long-term key of `username` for `algorithm`, if the user exists (usernames of the
    /// REST form are resolved by the core itself).
    fn user_key(&self, username: &str, algorithm: PasswordAlgorithm) -> Option<LongTermKey>;
    /// Counts one more allocation for `user`, unless a quota forbids it.
    fn acquire(&mut self, user: &str) -> Result<(), QuotaDenial>;
    /// Gives back an allocation counted by [`Host::acquire`].
    fn release(&mut self, user: &str);
    /// Opens a relay socket of `family` for the allocation of `five` (an even port when
    /// `even_port`) and returns the relayed transport address clients are told; `None` when
    /// no port is free or the family is not served.
    fn bind_relay(
        &mut self,
        five: &FiveTuple,
        family: AddressFamily,
        even_port: bool,
    ) -> Option<SocketAddr>;
    /// Closes a relay socket opened by [`Host::bind_relay`].
    fn close_relay(&mut self, relay: SocketAddr);
}

/// What to send after a client's packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Nothing (the packet was handled or dropped).
    Nothing,
    /// Send these bytes back to the client on the same 5-tuple.
    Reply(&'a [u8]),
    /// Send `data` from the relay socket `relay` to `peer`.
    Relay {
        /// The relayed address of the allocation.
        relay: SocketAddr,
        /// The peer.
        peer: SocketAddr,
        /// The application data.
        data: &'a [u8],
    },
}

/// Counters of one server; totals since it was created, except the gauges at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that ran out of lifetime.
    pub allocations_expired: u64,
    /// Allocations deleted by the client or by its connection closing.
    pub allocations_deleted: u64,
    /// Permissions installed (refreshes not counted).
    pub permissions_created: u64,
    /// Channels bound (refreshes not counted).
    pub channels_bound: u64,
    /// Requests refused for credentials: unknown user, wrong password, expired REST username.
    pub auth_failures: u64,
    /// Requests answered 438 (stale or forged nonce).
    pub stale_nonces: u64,
    /// Allocations refused by a quota.
    pub quota_denials: u64,
    /// Permissions or channels refused by the peer policy.
    pub policy_denials: u64,
    /// Packets dropped because the peer had no permission.
    pub no_permission_drops: u64,
    /// Packets dropped by the bandwidth limit.
    pub bandwidth_drops: u64,
    /// Packets that were not STUN or ChannelData, or did not decode, or had no allocation.
    pub malformed: u64,
    /// Packets relayed from clients to peers.
    pub packets_to_peers: u64,
    /// Application bytes relayed from clients to peers.
    pub bytes_to_peers: u64,
    /// Packets relayed from peers to clients.
    pub packets_to_clients: u64,
    /// Application bytes relayed from peers to clients.
    pub bytes_to_clients: u64,
    /// Allocations now.
    pub allocations: u64,
    /// Permissions now (as of the last sweep).
    pub permissions: u64,
    /// Channel bindings now (as of the last sweep).
    pub channels: u64,
}

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    /// Usable until then; kept for [`REBIND_GUARD`] longer to block rebinding.
    expires: Instant,
}

/// A token bucket over bytes, refilled continuously, holding at most one second's worth.
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, bytes: usize, rate: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let refill =
                u64::try_from(elapsed.as_micros().saturating_mul(u128::from(rate)) / 1_000_000)
                    .unwrap_or(u64::MAX);
            self.tokens = self.tokens.saturating_add(refill).min(rate);
            self.last = now;
        }
        let bytes = bytes as u64;
        if self.tokens < bytes {
            return false;
        }
        self.tokens -= bytes;
        true
    }
}

#[derive(Debug)]
struct Allocation {
    relay: SocketAddr,
    username: Box<str>,
    quota_user: Box<str>,
    expires: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// The Allocate that created it and what it was granted, to answer a retransmission.
    allocate: (TransactionId, u32),
    bucket: Bucket,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|permission| permission.ip == ip && permission.expires > now)
    }
}

/// Credentials that passed the check of a request.
struct Authenticated {
    username: String,
    quota_user: String,
    key: LongTermKey,
    integrity: IntegrityAlgorithm,
}

/// A refusal, with the ERROR-CODE to answer and whether the response carries integrity.
struct Refusal {
    code: u16,
    reason: &'static str,
}

impl Refusal {
    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// The TURN server state machine. See the module documentation.
#[derive(Debug)]
pub struct Server {
    config: Config,
    /// An instant and the unix time at that instant, to tell REST expiries and nonce ages.
    origin: (Instant, u64),
    allocations: HashMap<FiveTuple, Allocation>,
    relays: HashMap<SocketAddr, FiveTuple>,
    scratch: Vec<u8>,
    indications: u64,
    next_sweep: Option<Instant>,
    stats: Stats,
}

impl Server {
    /// A server with no allocations. `unix_now` is the wall-clock time at `now`, in seconds.
    pub fn new(config: Config, now: Instant, unix_now: u64) -> Self {
        Self {
            config,
            origin: (now, unix_now),
            allocations: HashMap::new(),
            relays: HashMap::new(),
            scratch: Vec::with_capacity(1500),
            indications: 0,
            next_sweep: None,
            stats: Stats::default(),
        }
    }

    /// Replaces the REST shared secret (credentials minted with the old one stop working).
    pub fn set_rest_secret(&mut self, secret: Option<Vec<u8>>) {
        self.config.rest_secret = secret;
    }

    /// The counters, with the allocation gauge up to date.
    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len() as u64,
            ..self.stats.clone()
        }
    }

    /// When [`Server::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    fn unix(&self, now: Instant) -> u64 {
        self.origin.1 + now.saturating_duration_since(self.origin.0).as_secs()
    }

    /// Expires allocations, permissions and channels whose time has come.
    pub fn handle_timeout(&mut self, now: Instant, host: &mut impl Host) {
        if self.next_sweep.is_none_or(|at| at > now) {
            return;
        }
        let (mut permissions, mut channels) = (0, 0);
        let relays = &mut self.relays;
        let stats = &mut self.stats;
        self.allocations.retain(|_, allocation| {
            if allocation.expires <= now {
                host.close_relay(allocation.relay);
                host.release(&allocation.quota_user);
                relays.remove(&allocation.relay);
                stats.allocations_expired += 1;
                return false;
            }
            allocation.permissions.retain(|p| p.expires > now);
            allocation
                .channels
                .retain(|c| c.expires + REBIND_GUARD > now);
            permissions += allocation.permissions.len() as u64;
            channels += allocation
                .channels
                .iter()
                .filter(|c| c.expires > now)
                .count() as u64;
            true
        });
        self.stats.permissions = permissions;
        self.stats.channels = channels;
        self.next_sweep = (!self.allocations.is_empty()).then(|| now + SWEEP_INTERVAL);
    }

    /// The client of a stream transport went away: its allocation goes with it
    /// (RFC 8656 §3.1, an allocation lives on its 5-tuple).
    pub fn connection_closed(&mut self, five: &FiveTuple, host: &mut impl Host) {
        if let Some(allocation) = self.allocations.remove(five) {
            self.forget(&allocation, host);
        }
    }

    fn forget(&mut self, allocation: &Allocation, host: &mut impl Host) {
        host.close_relay(allocation.relay);
        host.release(&allocation.quota_user);
        self.relays.remove(&allocation.relay);
        self.stats.allocations_deleted += 1;
    }

    /// Handles one STUN message or ChannelData message from a client.
    pub fn handle_client<'a>(
        &'a mut self,
        now: Instant,
        five: FiveTuple,
        packet: &'a [u8],
        host: &mut impl Host,
    ) -> Output<'a> {
        match packet.first() {
            Some(0x40..=0x7F) => self.channel_data(now, &five, packet),
            Some(_) if stun::classify(packet) == PacketKind::Stun => {
                self.stun(now, five, packet, host)
            }
            _ => {
                self.stats.malformed += 1;
                Output::Nothing
            }
        }
    }

    /// The zero-copy path: ChannelData from a client (RFC 8656 §12.6).
    fn channel_data<'a>(&mut self, now: Instant, five: &FiveTuple, packet: &'a [u8]) -> Output<'a> {
        let Some((number, data)) = parse_channel_data(packet) else {
            self.stats.malformed += 1;
            return Output::Nothing;
        };
        let Some(allocation) = self.allocations.get_mut(five) else {
            self.stats.malformed += 1;
            return Output::Nothing;
        };
        let Some(peer) = allocation
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
        else {
            self.stats.no_permission_drops += 1;
            return Output::Nothing;
        };
        relay_out(&mut self.stats, &self.config, allocation, now, peer, data)
    }

    fn stun<'a>(
        &'a mut self,
        now: Instant,
        five: FiveTuple,
        packet: &'a [u8],
        host: &mut impl Host,
    ) -> Output<'a> {
        let Ok(message) = Message::decode(packet) else {
            self.stats.malformed += 1;
            // RFC 8489 §6.3: a request that does not parse gets 400 when it can be told
            // apart; anything else is dropped.
            return match stun::peek_header(packet) {
                Some((method, Class::Request, id)) => self.reply_error(
                    now,
                    method,
                    id,
                    Refusal::new(error_code::BAD_REQUEST, "Malformed message"),
                    None,
                    five.client,
                ),
                _ => Output::Nothing,
            };
        };
        if message.contains(attr::FINGERPRINT) && message.verify_fingerprint().is_err() {
            self.stats.malformed += 1;
            return Output::Nothing;
        }
        match message.class() {
            Class::Request => self.request(now, five, &message, host),
            Class::Indication if message.method() == Method::SEND => {
                self.send_indication(now, &five, &message)
            }
            _ => {
                self.stats.malformed += 1;
                Output::Nothing
            }
        }
    }

    fn request<'a>(
        &'a mut self,
        now: Instant,
        five: FiveTuple,
        message: &Message<'_>,
        host: &mut impl Host,
    ) -> Output<'a> {
        let method = message.method();
        let id = message.transaction_id();
        let mut unknown = message.unknown_comprehension_required().peekable();
        if unknown.peek().is_some() {
            let unknown: Vec<u16> = unknown.collect();
            return self.build(method, Class::Error, id, None, |b| {
                b.add_error_code(error_code::UNKNOWN_ATTRIBUTE, "Unknown Attribute")?;
                b.add_unknown_attributes(unknown)
            });
        }
        if method == Method::BINDING {
            // RFC 8489 §7.3.1: no authentication for Binding.
            return self.build(method, Class::Success, id, None, |b| {
                b.add_xor_mapped_address(five.client)
            });
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return self.reply_error(
                now,
                method,
                id,
                Refusal::new(error_code::BAD_REQUEST, "Unsupported method"),
                None,
                five.client,
            );
        }
        let auth = match self.authenticate(now, five.client.ip(), message, host) {
            Ok(auth) => auth,
            Err(refusal) => return self.reply_error(now, method, id, refusal, None, five.client),
        };
        // RFC 8656 §5: requests about an allocation must come from the user that made it.
        if let Some(allocation) = self.allocations.get(&five)
            && *allocation.username != *auth.username
        {
            return self.reply_error(
                now,
                method,
                id,
                Refusal::new(error_code::WRONG_CREDENTIALS, "Wrong Credentials"),
                Some(&auth),
                five.client,
            );
        }
        let result = match method {
            Method::ALLOCATE => self.allocate(now, &five, message, &auth, host),
            Method::REFRESH => self.refresh(now, &five, message, host),
            Method::CREATE_PERMISSION => self.create_permission(now, &five, message),
            _ => self.channel_bind(now, &five, message),
        };
        match result {
            Ok(success) => self.success(method, id, &auth, five.client, &success),
            Err(refusal) => self.reply_error(now, method, id, refusal, Some(&auth), five.client),
        }
    }

    /// RFC 8489 §9.2.4 (server side of the long-term credential mechanism).
    fn authenticate(
        &mut self,
        now: Instant,
        client: IpAddr,
        message: &Message<'_>,
        host: &impl Host,
    ) -> Result<Authenticated, Refusal> {
        let unauthenticated = Refusal::new(error_code::UNAUTHENTICATED, "Unauthenticated");
        let bad = Refusal::new(error_code::BAD_REQUEST, "Bad Request");
        if !message.contains(attr::MESSAGE_INTEGRITY)
            && !message.contains(attr::MESSAGE_INTEGRITY_SHA256)
        {
            return Err(unauthenticated);
        }
        let (Ok(Some(username)), Ok(Some(_realm)), Ok(Some(nonce))) =
            (message.username(), message.realm(), message.nonce())
        else {
            // USERHASH alone cannot be resolved here: ask for a USERNAME.
            return Err(
                if message.contains(attr::USERHASH) && !message.contains(attr::USERNAME) {
                    unauthenticated
                } else {
                    bad
                },
            );
        };
        let unix = self.unix(now);
        if !self.nonce_valid(nonce, client, unix) {
            self.stats.stale_nonces += 1;
            return Err(Refusal::new(error_code::STALE_NONCE, "Stale Nonce"));
        }
        let algorithm = self.password_algorithm(message).ok_or(bad)?;
        let rest = self
            .config
            .rest_secret
            .as_deref()
            .map(|secret| rest::password_for(secret, username, unix));
        let (key, quota_user) = match rest {
            Some(Ok(password)) => (
                stun::long_term_key(algorithm, username, &self.config.realm, &password),
                username.split_once(':').map_or(username, |(_, user)| user),
            ),
            Some(Err(rest::Refusal::Expired)) => (None, username),
            Some(Err(rest::Refusal::Malformed)) | None => {
                (host.user_key(username, algorithm), username)
            }
        };
        let Some(key) = key else {
            self.stats.auth_failures += 1;
            return Err(unauthenticated);
        };
        let Ok(integrity) = message.verify_integrity(key.as_bytes()) else {
            self.stats.auth_failures += 1;
            return Err(unauthenticated);
        };
        Ok(Authenticated {
            username: username.to_owned(),
            quota_user: quota_user.to_owned(),
            key,
            integrity,
        })
    }

    /// The PASSWORD-ALGORITHM a request uses: MD5 when it names none; `None` when it names
    /// one we do not offer or does not echo our PASSWORD-ALGORITHMS (RFC 8489 §9.2.4).
    fn password_algorithm(&self, message: &Message<'_>) -> Option<PasswordAlgorithm> {
        let chosen = message.password_algorithm().ok()?;
        let echoed = message.password_algorithms().ok()?;
        match (chosen, echoed) {
            (None, None) => Some(PasswordAlgorithm::MD5),
            (Some((algorithm, _)), Some(echoed)) => {
                let mut echoed = echoed.map(|(algorithm, _)| algorithm);
                let same = ALGORITHMS.iter().all(|ours| echoed.next() == Some(*ours))
                    && echoed.next().is_none();
                (same && ALGORITHMS.contains(&algorithm)).then_some(algorithm)
            }
            _ => None,
        }
    }

    fn nonce_mac(&self, client: IpAddr, expiry: u32) -> [u8; 8] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.config.nonce_secret)
            .expect("HMAC takes any key length");
        match client {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        mac.update(&expiry.to_be_bytes());
        let mut out = [0; 8];
        out.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        out
    }

    fn nonce(&self, now: Instant, client: IpAddr) -> String {
        let expiry = u32::try_from(self.unix(now) + self.config.nonce_lifetime.as_secs())
            .unwrap_or(u32::MAX);
        let mac = u64::from_be_bytes(self.nonce_mac(client, expiry));
        format!("{NONCE_COOKIE}{NONCE_FEATURES}{expiry:08x}{mac:016x}")
    }

    fn nonce_valid(&self, nonce: &str, client: IpAddr, unix: u64) -> bool {
        let Some(rest) = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|rest| rest.strip_prefix(NONCE_FEATURES))
        else {
            return false;
        };
        let (Some(expiry), Some(mac), 24) = (rest.get(..8), rest.get(8..), rest.len()) else {
            return false;
        };
        let (Ok(expiry), Ok(mac)) = (
            u32::from_str_radix(expiry, 16),
            u64::from_str_radix(mac, 16),
        ) else {
            return false;
        };
        u64::from(expiry) > unix && self.nonce_mac(client, expiry) == mac.to_be_bytes()
    }

    /// RFC 8656 §7.2.
    fn allocate(
        &mut self,
        now: Instant,
        five: &FiveTuple,
        message: &Message<'_>,
        auth: &Authenticated,
        host: &mut impl Host,
    ) -> Result<Success, Refusal> {
        let bad = || Refusal::new(error_code::BAD_REQUEST, "Bad Request");
        if let Some(existing) = self.allocations.get(five) {
            // A retransmitted Allocate gets the same answer again.
            return if existing.allocate.0 == message.transaction_id() {
                Ok(Success::Allocated {
                    relay: existing.relay,
                    lifetime: existing.allocate.1,
                    ipv6_refused: false,
                })
            } else {
                Err(Refusal::new(
                    error_code::ALLOCATION_MISMATCH,
                    "Allocation Mismatch",
                ))
            };
        }
        match message.requested_transport() {
            Ok(Some(UDP)) => {}
            Ok(Some(_)) => {
                return Err(Refusal::new(
                    error_code::UNSUPPORTED_TRANSPORT_PROTOCOL,
                    "Unsupported Transport Protocol",
                ));
            }
            _ => return Err(bad()),
        }
        let even_port = message.even_port().map_err(|_| bad())?;
        let token = message.reservation_token().map_err(|_| bad())?;
        if even_port.is_some() && token.is_some() {
            return Err(bad());
        }
        // No port is ever reserved here, so no token can be redeemed and no reservation made.
        if token.is_some() || even_port == Some(true) {
            return Err(Refusal::new(
                error_code::INSUFFICIENT_CAPACITY,
                "Reservations are not supported",
            ));
        }
        let requested = message.requested_address_family().map_err(|_| bad())?;
        let additional = message.additional_address_family().map_err(|_| bad())?;
        if requested.is_some() && additional.is_some()
            || additional.is_some_and(|family| family != AddressFamily::IPV6)
        {
            return Err(bad());
        }
        let requested_lifetime = message.lifetime().map_err(|_| bad())?;
        let family = requested.unwrap_or(AddressFamily::IPV4);
        if family != AddressFamily::IPV4 && family != AddressFamily::IPV6 {
            return Err(Refusal::new(
                error_code::ADDRESS_FAMILY_NOT_SUPPORTED,
                "Address Family not Supported",
            ));
        }
        if let Err(denial) = host.acquire(&auth.quota_user) {
            self.stats.quota_denials += 1;
            return Err(match denial {
                QuotaDenial::User => Refusal::new(
                    error_code::ALLOCATION_QUOTA_REACHED,
                    "Allocation Quota Reached",
                ),
                QuotaDenial::Total => {
                    Refusal::new(error_code::INSUFFICIENT_CAPACITY, "Insufficient Capacity")
                }
            });
        }
        let Some(relay) = host.bind_relay(five, family, even_port.is_some()) else {
            host.release(&auth.quota_user);
            return Err(if family == AddressFamily::IPV6 {
                Refusal::new(
                    error_code::ADDRESS_FAMILY_NOT_SUPPORTED,
                    "Address Family not Supported",
                )
            } else {
                Refusal::new(error_code::INSUFFICIENT_CAPACITY, "Insufficient Capacity")
            });
        };
        let lifetime = self
            .lifetime(requested_lifetime)
            .max(self.default_lifetime());
        self.allocations.insert(
            *five,
            Allocation {
                relay,
                username: auth.username.clone().into(),
                quota_user: auth.quota_user.clone().into(),
                expires: now + Duration::from_secs(lifetime.into()),
                permissions: Vec::new(),
                channels: Vec::new(),
                allocate: (message.transaction_id(), lifetime),
                bucket: Bucket {
                    tokens: self.config.max_bandwidth,
                    last: now,
                },
            },
        );
        self.relays.insert(relay, *five);
        self.stats.allocations_created += 1;
        self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
        Ok(Success::Allocated {
            relay,
            lifetime,
            // Dual allocation (RFC 8656 §7.2) is not offered: the IPv6 half is refused.
            ipv6_refused: additional.is_some(),
        })
    }

    fn default_lifetime(&self) -> u32 {
        u32::try_from(self.config.default_lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    /// The lifetime granted for a request's LIFETIME: capped at the maximum, the default
    /// when absent.
    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let max = u32::try_from(self.config.max_lifetime.as_secs()).unwrap_or(u32::MAX);
        requested.map_or(self.default_lifetime().min(max), |asked| asked.min(max))
    }

    /// RFC 8656 §7.3.
    fn refresh(
        &mut self,
        now: Instant,
        five: &FiveTuple,
        message: &Message<'_>,
        host: &mut impl Host,
    ) -> Result<Success, Refusal> {
        let bad = Refusal::new(error_code::BAD_REQUEST, "Bad Request");
        let requested = message.lifetime().map_err(|_| bad)?;
        // RFC 8656 §7.3: a non-zero lifetime is never shorter than the default.
        let lifetime = match self.lifetime(requested) {
            0 => 0,
            granted => granted.max(self.default_lifetime()),
        };
        let Some(allocation) = self.allocations.get_mut(five) else {
            return Err(Refusal::new(
                error_code::ALLOCATION_MISMATCH,
                "Allocation Mismatch",
            ));
        };
        if let Ok(Some(family)) = message.requested_address_family()
            && family != family_of(allocation.relay)
        {
            return Err(Refusal::new(
                error_code::PEER_ADDRESS_FAMILY_MISMATCH,
                "Peer Address Family Mismatch",
            ));
        }
        if lifetime == 0 {
            if let Some(allocation) = self.allocations.remove(five) {
                self.forget(&allocation, host);
            }
        } else {
            allocation.expires = now + Duration::from_secs(lifetime.into());
        }
        Ok(Success::Refreshed { lifetime })
    }

    /// The peers of a CreatePermission or ChannelBind, checked against the allocation's
    /// family and the peer policy.
    fn peers(
        &mut self,
        message: &Message<'_>,
        relay: SocketAddr,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let bad = Refusal::new(error_code::BAD_REQUEST, "Bad Request");
        let peers = message
            .xor_peer_addresses()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad)?;
        if peers.is_empty() {
            return Err(Refusal::new(error_code::BAD_REQUEST, "Bad Request"));
        }
        if peers.iter().any(|peer| peer.is_ipv4() != relay.is_ipv4()) {
            return Err(Refusal::new(
                error_code::PEER_ADDRESS_FAMILY_MISMATCH,
                "Peer Address Family Mismatch",
            ));
        }
        if !peers
            .iter()
            .all(|peer| self.config.policy.permits(peer.ip()))
        {
            self.stats.policy_denials += 1;
            return Err(Refusal::new(error_code::FORBIDDEN, "Forbidden"));
        }
        Ok(peers)
    }

    /// RFC 8656 §9.2: all the permissions or none.
    fn create_permission(
        &mut self,
        now: Instant,
        five: &FiveTuple,
        message: &Message<'_>,
    ) -> Result<Success, Refusal> {
        let relay = self.allocation_relay(five)?;
        let peers = self.peers(message, relay)?;
        let max = self.config.max_permissions;
        let allocation = self.allocations.get_mut(five).ok_or_else(mismatch)?;
        allocation.permissions.retain(|p| p.expires > now);
        let new = peers
            .iter()
            .filter(|peer| !allocation.permissions.iter().any(|p| p.ip == peer.ip()))
            .count();
        if allocation.permissions.len() + new > max {
            return Err(Refusal::new(
                error_code::INSUFFICIENT_CAPACITY,
                "Too many permissions",
            ));
        }
        for peer in peers {
            self.stats.permissions_created += u64::from(install(allocation, peer.ip(), now));
        }
        Ok(Success::Empty)
    }

    fn allocation_relay(&self, five: &FiveTuple) -> Result<SocketAddr, Refusal> {
        self.allocations
            .get(five)
            .map(|allocation| allocation.relay)
            .ok_or_else(mismatch)
    }

    /// RFC 8656 §11.2.
    fn channel_bind(
        &mut self,
        now: Instant,
        five: &FiveTuple,
        message: &Message<'_>,
    ) -> Result<Success, Refusal> {
        let bad = || Refusal::new(error_code::BAD_REQUEST, "Bad Request");
        let relay = self.allocation_relay(five)?;
        let number = match message.channel_number() {
            Ok(Some(number)) if CHANNELS.contains(&number) => number,
            _ => return Err(bad()),
        };
        let peers = self.peers(message, relay)?;
        let [peer] = peers[..] else {
            return Err(bad());
        };
        let max = self.config.max_channels;
        let allocation = self.allocations.get_mut(five).ok_or_else(mismatch)?;
        // Bindings past their guard are gone, whether or not the sweep has run yet.
        allocation
            .channels
            .retain(|c| c.expires + REBIND_GUARD > now);
        // The number and the peer must either be unbound or bound to each other, counting
        // bindings that expired less than REBIND_GUARD ago.
        let conflict = allocation
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return Err(bad());
        }
        match allocation.channels.iter_mut().find(|c| c.number == number) {
            Some(channel) => channel.expires = now + CHANNEL_LIFETIME,
            None => {
                if allocation.channels.len() >= max {
                    return Err(Refusal::new(
                        error_code::INSUFFICIENT_CAPACITY,
                        "Too many channels",
                    ));
                }
                allocation.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME,
                });
                self.stats.channels_bound += 1;
            }
        }
        self.stats.permissions_created += u64::from(install(allocation, peer.ip(), now));
        Ok(Success::Empty)
    }

    /// RFC 8656 §10.2: a Send indication, relayed if the peer has a permission.
    fn send_indication<'a>(
        &mut self,
        now: Instant,
        five: &FiveTuple,
        message: &Message<'a>,
    ) -> Output<'a> {
        let Some(allocation) = self.allocations.get_mut(five) else {
            self.stats.malformed += 1;
            return Output::Nothing;
        };
        let (Ok(Some(peer)), Ok(Some(data))) = (message.xor_peer_address(), message.data()) else {
            self.stats.malformed += 1;
            return Output::Nothing;
        };
        relay_out(&mut self.stats, &self.config, allocation, now, peer, data)
    }

    /// Handles a datagram from `peer` on the relay socket `relay`. The datagram is
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]`, and `buf` has [`PEER_TAILROOM`] bytes after
    /// it. Returns the client's 5-tuple and what to send it: ChannelData built in place in
    /// `buf` when a channel is bound to the peer, else a Data indication (RFC 8656 §10.3,
    /// §12.7). `None`: drop (no allocation or no permission, RFC 8656 §10.3).
    pub fn handle_peer<'a>(
        &'a mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Option<(FiveTuple, &'a [u8])> {
        let five = *self.relays.get(&relay)?;
        let allocation = self.allocations.get_mut(&five)?;
        if !allocation.permitted(peer.ip(), now) {
            self.stats.no_permission_drops += 1;
            return None;
        }
        if !allocation.bucket.take(now, len, self.config.max_bandwidth) {
            self.stats.bandwidth_drops += 1;
            return None;
        }
        self.stats.packets_to_clients += 1;
        self.stats.bytes_to_clients += len as u64;
        let channel = allocation
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number);
        if let Some(number) = channel {
            let [l0, l1] = u16::try_from(len).ok()?.to_be_bytes();
            let [c0, c1] = number.to_be_bytes();
            let header = [c0, c1, l0, l1];
            let mut end = PEER_HEADROOM + len;
            if five.protocol.is_stream() {
                let padded = end.next_multiple_of(4);
                buf.get_mut(end..padded)?.fill(0);
                end = padded;
            }
            let frame = buf.get_mut(..end)?;
            frame[..PEER_HEADROOM].copy_from_slice(&header);
            return Some((five, frame));
        }
        self.indications += 1;
        // Indications get no answer: a counter is as good a transaction id as any.
        let mut id = [0; 12];
        id[..8].copy_from_slice(&self.indications.to_be_bytes());
        let data = buf.get(PEER_HEADROOM..PEER_HEADROOM + len)?;
        let mut builder = MessageBuilder::new(
            &mut self.scratch,
            Method::DATA,
            Class::Indication,
            TransactionId(id),
        );
        builder.add_xor_peer_address(peer).ok()?;
        builder.add_data(data).ok()?;
        Some((five, builder.finish()))
    }

    fn build<'a>(
        &'a mut self,
        method: Method,
        class: Class,
        id: TransactionId,
        integrity: Option<&Authenticated>,
        attributes: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), EncodeError>,
    ) -> Output<'a> {
        let mut builder = MessageBuilder::new(&mut self.scratch, method, class, id);
        let built = attributes(&mut builder).and_then(|()| {
            if let Some(auth) = integrity {
                match auth.integrity {
                    IntegrityAlgorithm::HmacSha1 => {
                        builder.add_message_integrity(auth.key.as_bytes())?;
                    }
                    IntegrityAlgorithm::HmacSha256 => {
                        builder.add_message_integrity_sha256(auth.key.as_bytes())?;
                    }
                }
            }
            builder.add_fingerprint()
        });
        match built {
            Ok(()) => Output::Reply(&self.scratch),
            // Every attribute added here is small; nothing to send if one did not fit.
            Err(_) => Output::Nothing,
        }
    }

    fn success<'a>(
        &'a mut self,
        method: Method,
        id: TransactionId,
        auth: &Authenticated,
        client: SocketAddr,
        success: &Success,
    ) -> Output<'a> {
        self.build(method, Class::Success, id, Some(auth), |b| match *success {
            Success::Allocated {
                relay,
                lifetime,
                ipv6_refused,
            } => {
                b.add_xor_relayed_address(relay)?;
                b.add_lifetime(lifetime)?;
                b.add_xor_mapped_address(client)?;
                if ipv6_refused {
                    // ADDRESS-ERROR-CODE (RFC 8656 §18.14): family, reserved, class, number.
                    let mut value = vec![AddressFamily::IPV6.0, 0, 4, 40];
                    value.extend_from_slice(b"Address Family not Supported");
                    b.add_raw(attr::ADDRESS_ERROR_CODE, &value)?;
                }
                Ok(())
            }
            Success::Refreshed { lifetime } => b.add_lifetime(lifetime),
            Success::Empty => Ok(()),
        })
    }

    /// An error response. 401 and 438 carry REALM, a fresh NONCE and PASSWORD-ALGORITHMS
    /// and no integrity (RFC 8489 §9.2.4); the rest are signed when the request was.
    fn reply_error<'a>(
        &'a mut self,
        now: Instant,
        method: Method,
        id: TransactionId,
        refusal: Refusal,
        auth: Option<&Authenticated>,
        client: SocketAddr,
    ) -> Output<'a> {
        let challenge = [error_code::UNAUTHENTICATED, error_code::STALE_NONCE]
            .contains(&refusal.code)
            .then(|| (self.config.realm.clone(), self.nonce(now, client.ip())));
        self.build(method, Class::Error, id, auth, |b| {
            b.add_error_code(refusal.code, refusal.reason)?;
            if let Some((realm, nonce)) = &challenge {
                b.add_realm(realm)?;
                b.add_nonce(nonce)?;
                b.add_password_algorithms(&ALGORITHMS)?;
            }
            Ok(())
        })
    }
}

/// What a successful request answers.
enum Success {
    Allocated {
        relay: SocketAddr,
        lifetime: u32,
        ipv6_refused: bool,
    },
    Refreshed {
        lifetime: u32,
    },
    Empty,
}

fn mismatch() -> Refusal {
    Refusal::new(error_code::ALLOCATION_MISMATCH, "Allocation Mismatch")
}

fn family_of(address: SocketAddr) -> AddressFamily {
    if address.is_ipv4() {
        AddressFamily::IPV4
    } else {
        AddressFamily::IPV6
    }
}

/// Installs or refreshes a permission; true when it is new.
fn install(allocation: &mut Allocation, ip: IpAddr, now: Instant) -> bool {
    let expires = now + PERMISSION_LIFETIME;
    match allocation.permissions.iter_mut().find(|p| p.ip == ip) {
        Some(permission) => {
            permission.expires = expires;
            false
        }
        None => {
            allocation.permissions.push(Permission { ip, expires });
            true
        }
    }
}

/// Client-to-peer data through an allocation, if the peer has a permission and the
/// bandwidth allows.
fn relay_out<'a>(
    stats: &mut Stats,
    config: &Config,
    allocation: &mut Allocation,
    now: Instant,
    peer: SocketAddr,
    data: &'a [u8],
) -> Output<'a> {
    if !allocation.permitted(peer.ip(), now) {
        stats.no_permission_drops += 1;
        return Output::Nothing;
    }
    if !allocation
        .bucket
        .take(now, data.len(), config.max_bandwidth)
    {
        stats.bandwidth_drops += 1;
        return Output::Nothing;
    }
    stats.packets_to_peers += 1;
    stats.bytes_to_peers += data.len() as u64;
    Output::Relay {
        relay: allocation.relay,
        peer,
        data,
    }
}

/// Why a byte stream cannot be split into TURN messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("neither STUN nor ChannelData on a TURN stream")]
pub struct FramingError;

/// How long the message at the start of a TCP or TLS stream is (RFC 8656 §12.5): a STUN
/// message, or ChannelData padded to 4 bytes. `Ok(None)`: more bytes are needed to tell.
pub fn frame_len(stream: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(head) = stream.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] {
        0..=3 if len % 4 == 0 => Ok(Some(stun::HEADER_LEN + len)),
        0x40..=0x7F => Ok(Some(CHANNEL_DATA_HEADER_LEN + len.next_multiple_of(4))),
        _ => Err(FramingError),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // Virtual time needs one real origin.

    use super::*;
    use crate::policy::Cidr;
    use proptest::prelude::*;

    const REALM: &str = "example.org";
    const PEER: &str = "203.0.113.9:4000";

    struct FakeHost {
        users: HashMap<String, String>,
        counts: HashMap<String, u32>,
        per_user: u32,
        total: u32,
        next_port: u16,
        closed: Vec<SocketAddr>,
    }

    impl FakeHost {
        fn new() -> Self {
            Self {
                users: HashMap::from([("alice".into(), "secret".into())]),
                counts: HashMap::new(),
                per_user: 10,
                total: 100,
                next_port: 50_000,
                closed: Vec::new(),
            }
        }
    }

    impl Host for FakeHost {
        fn user_key(&self, username: &str, algorithm: PasswordAlgorithm) -> Option<LongTermKey> {
            let password = self.users.get(username)?;
            stun::long_term_key(algorithm, username, REALM, password)
        }
        fn acquire(&mut self, user: &str) -> Result<(), QuotaDenial> {
            if self.counts.values().sum::<u32>() >= self.total {
                return Err(QuotaDenial::Total);
            }
            let count = self.counts.entry(user.into()).or_default();
            if *count >= self.per_user {
                return Err(QuotaDenial::User);
            }
            *count += 1;
            Ok(())
        }
        fn release(&mut self, user: &str) {
            *self.counts.get_mut(user).unwrap() -= 1;
        }
        fn bind_relay(
            &mut self,
            _five: &FiveTuple,
            family: AddressFamily,
            even_port: bool,
        ) -> Option<SocketAddr> {
            if family != AddressFamily::IPV4 {
                return None;
            }
            self.next_port += if even_port { 2 } else { 1 };
            Some(SocketAddr::from(([198, 51, 100, 1], self.next_port)))
        }
        fn close_relay(&mut self, relay: SocketAddr) {
            self.closed.push(relay);
        }
    }

    fn five(port: u16) -> FiveTuple {
        FiveTuple {
            client: SocketAddr::from(([192, 0, 2, 7], port)),
            server: "192.0.2.1:3478".parse().unwrap(),
            protocol: Protocol::Udp,
        }
    }

    fn config() -> Config {
        Config {
            realm: REALM.into(),
            rest_secret: Some(b"shared".to_vec()),
            nonce_secret: [9; 32],
            ..Config::default()
        }
    }

    /// A TURN client's view: credentials and the last nonce.
    struct Client {
        five: FiveTuple,
        username: String,
        password: String,
        nonce: String,
        next_id: u8,
    }

    /// The attributes a test request carries besides the credentials.
    type Attributes<'a> = &'a dyn Fn(&mut MessageBuilder<'_>) -> Result<(), EncodeError>;

    struct Harness {
        server: Server,
        host: FakeHost,
        now: Instant,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let now = Instant::now();
            Self {
                server: Server::new(config, now, 1_000_000),
                host: FakeHost::new(),
                now,
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.server.handle_timeout(self.now, &mut self.host);
        }

        fn client(&self, port: u16, username: &str, password: &str) -> Client {
            Client {
                five: five(port),
                username: username.into(),
                password: password.into(),
                nonce: String::new(),
                next_id: 0,
            }
        }

        /// Sends raw bytes from a client; the reply's bytes, if any.
        fn send(&mut self, five: FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
            match self
                .server
                .handle_client(self.now, five, bytes, &mut self.host)
            {
                Output::Reply(reply) => Some(reply.to_vec()),
                Output::Nothing => None,
                Output::Relay { .. } => panic!("relayed a request"),
            }
        }

        /// Sends an authenticated request, fetching a nonce first when the client has none,
        /// and answering one 438 with a new nonce. Returns the final response.
        fn request(
            &mut self,
            client: &mut Client,
            method: Method,
            attributes: Attributes<'_>,
        ) -> Vec<u8> {
            for _ in 0..3 {
                let bytes = build_request(client, method, attributes, true);
                let reply = self.send(client.five, &bytes).expect("a response");
                let message = Message::decode(&reply).unwrap();
                let code = message.error_code().unwrap().map(|e| e.code);
                if matches!(code, Some(401 | 438)) && code.is_some() {
                    let nonce = message.nonce().unwrap().unwrap().to_owned();
                    if nonce != client.nonce && (client.nonce.is_empty() || code == Some(438)) {
                        client.nonce = nonce;
                        continue;
                    }
                }
                return reply;
            }
            panic!("no answer past the challenges")
        }
    }

    fn build_request(
        client: &mut Client,
        method: Method,
        attributes: Attributes<'_>,
        credentials: bool,
    ) -> Vec<u8> {
        client.next_id += 1;
        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(
            &mut buf,
            method,
            Class::Request,
            TransactionId([client.next_id; 12]),
        );
        attributes(&mut builder).unwrap();
        if credentials && !client.nonce.is_empty() {
            builder.add_username(&client.username).unwrap();
            builder.add_realm(REALM).unwrap();
            builder.add_nonce(&client.nonce).unwrap();
            let key = stun::long_term_key(
                PasswordAlgorithm::MD5,
                &client.username,
                REALM,
                &client.password,
            )
            .unwrap();
            builder.add_message_integrity(key.as_bytes()).unwrap();
        }
        builder.add_fingerprint().unwrap();
        buf
    }

    fn udp(b: &mut MessageBuilder<'_>) -> Result<(), EncodeError> {
        b.add_requested_transport(UDP)
    }

    fn code(reply: &[u8]) -> Option<u16> {
        Message::decode(reply)
            .unwrap()
            .error_code()
            .unwrap()
            .map(|e| e.code)
    }

    fn key(client: &Client) -> LongTermKey {
        stun::long_term_key(
            PasswordAlgorithm::MD5,
            &client.username,
            REALM,
            &client.password,
        )
        .unwrap()
    }

    /// Allocates for `client` and returns the relayed address.
    fn allocate(h: &mut Harness, client: &mut Client) -> SocketAddr {
        let reply = h.request(client, Method::ALLOCATE, &udp);
        let message = Message::decode(&reply).unwrap();
        assert_eq!(message.class(), Class::Success, "{:?}", code(&reply));
        message
            .verify_message_integrity(key(client).as_bytes())
            .unwrap();
        message.verify_fingerprint().unwrap();
        message.xor_relayed_address().unwrap().unwrap()
    }

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn permit(h: &mut Harness, client: &mut Client, peer: SocketAddr) -> Option<u16> {
        code(&h.request(client, Method::CREATE_PERMISSION, &move |b| {
            b.add_xor_peer_address(peer)
        }))
    }

    fn bind(h: &mut Harness, client: &mut Client, number: u16, peer: SocketAddr) -> Option<u16> {
        code(&h.request(client, Method::CHANNEL_BIND, &move |b| {
            b.add_channel_number(number)?;
            b.add_xor_peer_address(peer)
        }))
    }

    /// Peer data through `relay`; what reaches the client.
    fn from_peer(
        h: &mut Harness,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = vec![0xEE; PEER_HEADROOM + data.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        h.server
            .handle_peer(h.now, relay, peer, &mut buf, data.len())
            .map(|(_, bytes)| bytes.to_vec())
    }

    #[test]
    fn binding_needs_no_credentials() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let request = build_request(&mut client, Method::BINDING, &|_| Ok(()), false);
        let reply = h.send(client.five, &request).unwrap();
        let message = Message::decode(&reply).unwrap();
        assert_eq!(message.class(), Class::Success);
        assert_eq!(
            message.xor_mapped_address().unwrap(),
            Some(client.five.client)
        );
    }

    #[test]
    fn allocate_challenges_then_allocates() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let first = build_request(&mut client, Method::ALLOCATE, &udp, true);
        let challenge = h.send(client.five, &first).unwrap();
        let message = Message::decode(&challenge).unwrap();
        assert_eq!(code(&challenge), Some(401));
        assert_eq!(message.realm().unwrap(), Some(REALM));
        let nonce = message.nonce().unwrap().unwrap();
        assert!(nonce.starts_with("obMatJos2"), "{nonce}");
        let offered: Vec<_> = message
            .password_algorithms()
            .unwrap()
            .unwrap()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(offered, ALGORITHMS);
        assert!(!message.contains(attr::MESSAGE_INTEGRITY));

        let relay = allocate(&mut h, &mut client);
        let stats = h.server.stats();
        assert_eq!((stats.allocations_created, stats.allocations), (1, 1));
        assert_eq!(h.host.counts["alice"], 1);

        // A retransmission of the same Allocate gets the same relay; a new one gets 437.
        client.next_id -= 1;
        let again = h.request(&mut client, Method::ALLOCATE, &udp);
        assert_eq!(
            Message::decode(&again)
                .unwrap()
                .xor_relayed_address()
                .unwrap(),
            Some(relay)
        );
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &udp)),
            Some(437)
        );
        let lifetime = Message::decode(&again).unwrap().lifetime().unwrap();
        assert_eq!(lifetime, Some(600));
    }

    #[test]
    fn wrong_password_and_unknown_user_are_refused() {
        let mut h = Harness::new(config());
        for (user, password) in [("alice", "wrong"), ("mallory", "secret")] {
            let mut client = h.client(1000, user, password);
            let reply = h.request(&mut client, Method::ALLOCATE, &udp);
            assert_eq!(code(&reply), Some(401), "{user}");
        }
        assert_eq!(h.server.stats().auth_failures, 2);
        assert_eq!(h.server.stats().allocations, 0);
    }

    #[test]
    fn stale_and_forged_nonces_get_438() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let _ = h.request(&mut client, Method::ALLOCATE, &udp);
        let old = client.nonce.clone();
        h.advance(Duration::from_secs(601));
        let stale = build_request(&mut client, Method::REFRESH, &|_| Ok(()), true);
        let reply = h.send(client.five, &stale).unwrap();
        assert_eq!(code(&reply), Some(438));
        let fresh = Message::decode(&reply)
            .unwrap()
            .nonce()
            .unwrap()
            .unwrap()
            .to_owned();
        assert_ne!(fresh, old);

        // A nonce made for another IP address, or tampered with, is not accepted.
        let mut other = h.client(1000, "alice", "secret");
        other.five.client = "192.0.2.8:1000".parse().unwrap();
        other.nonce = fresh.clone();
        let reply = h.send(
            other.five,
            &build_request(&mut other, Method::ALLOCATE, &udp, true),
        );
        assert_eq!(code(&reply.unwrap()), Some(438));
        let mut forged = fresh.into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        client.nonce = String::from_utf8(forged).unwrap();
        let reply = h.send(
            client.five,
            &build_request(&mut client, Method::ALLOCATE, &udp, true),
        );
        assert_eq!(code(&reply.unwrap()), Some(438));
        assert_eq!(h.server.stats().stale_nonces, 3);
    }

    #[test]
    fn rest_credentials_work_until_they_expire() {
        let mut h = Harness::new(config());
        let credential = rest::mint(b"shared", "u-42", 1_000_100);
        let mut client = h.client(1000, &credential.username, &credential.password);
        allocate(&mut h, &mut client);
        assert_eq!(h.host.counts["u-42"], 1, "quota counted for the user part");

        let wrong_secret = rest::mint(b"other", "u-42", 1_000_100);
        let mut forger = h.client(1001, &wrong_secret.username, &wrong_secret.password);
        assert_eq!(
            code(&h.request(&mut forger, Method::ALLOCATE, &udp)),
            Some(401)
        );

        h.advance(Duration::from_secs(100));
        let mut late = h.client(1002, &credential.username, &credential.password);
        assert_eq!(
            code(&h.request(&mut late, Method::ALLOCATE, &udp)),
            Some(401)
        );
    }

    #[test]
    fn allocate_checks_its_attributes() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let tcp = |b: &mut MessageBuilder<'_>| b.add_requested_transport(6);
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &tcp)),
            Some(442)
        );
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &|_| Ok(()))),
            Some(400)
        );
        let reserve = |b: &mut MessageBuilder<'_>| {
            udp(b)?;
            b.add_even_port(true)
        };
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &reserve)),
            Some(508)
        );
        let v6 = |b: &mut MessageBuilder<'_>| {
            udp(b)?;
            b.add_requested_address_family(AddressFamily::IPV6)
        };
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &v6)),
            Some(440)
        );
        let bad_lifetime = |b: &mut MessageBuilder<'_>| {
            udp(b)?;
            b.add_raw(attr::LIFETIME, &[0; 8])
        };
        assert_eq!(
            code(&h.request(&mut client, Method::ALLOCATE, &bad_lifetime)),
            Some(400)
        );
        assert_eq!(
            h.host.next_port, 50_000,
            "no relay bound for a refused Allocate"
        );
        let unknown = |b: &mut MessageBuilder<'_>| {
            udp(b)?;
            b.add_raw(0x7F00, &[1, 2, 3, 4])
        };
        let reply = h.request(&mut client, Method::ALLOCATE, &unknown);
        assert_eq!(code(&reply), Some(420));
        let listed: Vec<u16> = Message::decode(&reply)
            .unwrap()
            .unknown_attributes()
            .unwrap()
            .unwrap()
            .collect();
        assert_eq!(listed, [0x7F00]);
        assert_eq!(h.server.stats().allocations, 0);
        assert!(h.host.counts.values().all(|&count| count == 0));

        // EVEN-PORT without reservation is honoured; the host picked an even port.
        let even = |b: &mut MessageBuilder<'_>| {
            udp(b)?;
            b.add_even_port(false)
        };
        let reply = h.request(&mut client, Method::ALLOCATE, &even);
        let relay = Message::decode(&reply)
            .unwrap()
            .xor_relayed_address()
            .unwrap()
            .unwrap();
        assert_eq!(relay.port() % 2, 0);
    }

    #[test]
    fn malformed_requests_get_400_and_garbage_is_dropped() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let mut request = build_request(&mut client, Method::ALLOCATE, &udp, false);
        request.truncate(request.len() - 4); // now the length field lies
        assert_eq!(code(&h.send(client.five, &request).unwrap()), Some(400));
        assert_eq!(h.send(client.five, b"\x80garbage"), None);
        assert_eq!(h.send(client.five, &[]), None);
        assert_eq!(h.server.stats().malformed, 3);
    }

    #[test]
    fn quotas_refuse_allocations() {
        let mut h = Harness::new(config());
        h.host.per_user = 1;
        let mut first = h.client(1000, "alice", "secret");
        allocate(&mut h, &mut first);
        let mut second = h.client(1001, "alice", "secret");
        assert_eq!(
            code(&h.request(&mut second, Method::ALLOCATE, &udp)),
            Some(486)
        );
        h.host.per_user = 10;
        h.host.total = 1;
        assert_eq!(
            code(&h.request(&mut second, Method::ALLOCATE, &udp)),
            Some(508)
        );
        assert_eq!(h.server.stats().quota_denials, 2);
    }

    #[test]
    fn send_indication_and_data_indication_need_a_permission() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let relay = allocate(&mut h, &mut client);
        let send = |data: &'static [u8]| {
            move |b: &mut MessageBuilder<'_>| {
                b.add_xor_peer_address(peer())?;
                b.add_data(data)
            }
        };
        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(
            &mut buf,
            Method::SEND,
            Class::Indication,
            TransactionId([1; 12]),
        );
        send(b"hello")(&mut builder).unwrap();
        let indication = builder.finish().to_vec();

        assert_eq!(h.send(client.five, &indication), None, "no permission yet");
        assert_eq!(from_peer(&mut h, relay, peer(), b"back"), None);
        assert_eq!(h.server.stats().no_permission_drops, 2);

        assert_eq!(permit(&mut h, &mut client, peer()), None);
        let output = h
            .server
            .handle_client(h.now, client.five, &indication, &mut h.host);
        assert_eq!(
            output,
            Output::Relay {
                relay,
                peer: peer(),
                data: b"hello"
            }
        );
        // Any port of a permitted IP address may answer (RFC 8656 §9).
        let other_port = SocketAddr::new(peer().ip(), 9999);
        let reply = from_peer(&mut h, relay, other_port, b"back").unwrap();
        let message = Message::decode(&reply).unwrap();
        assert_eq!(
            (message.method(), message.class()),
            (Method::DATA, Class::Indication)
        );
        assert_eq!(message.xor_peer_address().unwrap(), Some(other_port));
        assert_eq!(message.data().unwrap(), Some(&b"back"[..]));

        // Permissions last five minutes unless refreshed.
        h.advance(PERMISSION_LIFETIME);
        assert_eq!(from_peer(&mut h, relay, peer(), b"late"), None);
        assert_eq!(h.server.stats().permissions, 0);
        let stats = h.server.stats();
        assert_eq!((stats.packets_to_peers, stats.packets_to_clients), (1, 1));
    }

    #[test]
    fn channels_carry_data_in_place_both_ways() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let relay = allocate(&mut h, &mut client);
        assert_eq!(bind(&mut h, &mut client, 0x4001, peer()), None);
        assert_eq!(h.server.stats().channels_bound, 1);

        let mut frame = Vec::new();
        stun::encode_channel_data(&mut frame, 0x4001, b"rtp!", false).unwrap();
        match h
            .server
            .handle_client(h.now, client.five, &frame, &mut h.host)
        {
            Output::Relay {
                relay: from,
                peer: to,
                data,
            } => {
                assert_eq!((from, to, data), (relay, peer(), &b"rtp!"[..]));
                assert!(
                    std::ptr::eq(data.as_ptr(), frame[4..].as_ptr()),
                    "not copied"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            from_peer(&mut h, relay, peer(), b"pong!").unwrap(),
            b"\x40\x01\x00\x05pong!"
        );
        // An unbound channel number carries nothing.
        stun::encode_channel_data(&mut frame, 0x4002, b"x", false).unwrap();
        assert_eq!(h.send(client.five, &frame), None);
    }

    #[test]
    fn channel_data_on_streams_is_padded() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        client.five.protocol = Protocol::Tcp;
        let relay = allocate(&mut h, &mut client);
        assert_eq!(bind(&mut h, &mut client, 0x4000, peer()), None);
        let framed = from_peer(&mut h, relay, peer(), b"pong!").unwrap();
        assert_eq!(framed, b"\x40\x00\x00\x05pong!\0\0\0");
        assert_eq!(frame_len(&framed), Ok(Some(12)));
    }

    #[test]
    fn channel_rebinding_is_guarded() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let _relay = allocate(&mut h, &mut client);
        let other: SocketAddr = "203.0.113.10:5000".parse().unwrap();
        assert_eq!(bind(&mut h, &mut client, 0x4000, peer()), None);
        assert_eq!(bind(&mut h, &mut client, 0x4000, other), Some(400));
        assert_eq!(bind(&mut h, &mut client, 0x4001, peer()), Some(400));
        let bad_number = |b: &mut MessageBuilder<'_>| {
            b.add_raw(attr::CHANNEL_NUMBER, &[0x3F, 0xFF, 0, 0])?;
            b.add_xor_peer_address("203.0.113.10:5000".parse().unwrap())
        };
        let reply = h.request(&mut client, Method::CHANNEL_BIND, &bad_number);
        assert_eq!(code(&reply), Some(400));
        assert_eq!(bind(&mut h, &mut client, 0x4000, peer()), None, "a refresh");
        // RFC 5766 numbers above 0x4FFF still work (coturn's clients use them).
        let legacy = |b: &mut MessageBuilder<'_>| {
            b.add_raw(attr::CHANNEL_NUMBER, &[0x73, 0x53, 0, 0])?;
            b.add_xor_peer_address("203.0.113.11:5000".parse().unwrap())
        };
        assert_eq!(
            code(&h.request(&mut client, Method::CHANNEL_BIND, &legacy)),
            None
        );
        let frame = [0x73, 0x53, 0, 2, b'h', b'i'];
        assert!(matches!(
            h.server
                .handle_client(h.now, client.five, &frame, &mut h.host),
            Output::Relay { data: b"hi", .. }
        ));

        // Keep the allocation alive, let the binding lapse: still guarded for 5 minutes.
        let refresh = |b: &mut MessageBuilder<'_>| b.add_lifetime(3600);
        assert_eq!(
            code(&h.request(&mut client, Method::REFRESH, &refresh)),
            None
        );
        h.advance(CHANNEL_LIFETIME);
        assert_eq!(bind(&mut h, &mut client, 0x4000, other), Some(400));
        h.advance(REBIND_GUARD);
        assert_eq!(bind(&mut h, &mut client, 0x4000, other), None);
    }

    #[test]
    fn the_peer_policy_refuses_special_addresses() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        allocate(&mut h, &mut client);
        for denied in ["127.0.0.1:9", "10.1.2.3:9", "169.254.169.254:80"] {
            assert_eq!(
                permit(&mut h, &mut client, denied.parse().unwrap()),
                Some(403)
            );
        }
        assert_eq!(
            bind(
                &mut h,
                &mut client,
                0x4000,
                "192.168.0.1:9".parse().unwrap()
            ),
            Some(403)
        );
        assert_eq!(h.server.stats().policy_denials, 4);
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(permit(&mut h, &mut client, v6), Some(443));

        let mut open = Harness::new(Config {
            policy: PeerPolicy::new(vec![Cidr::new([127, 0, 0, 0].into(), 8).unwrap()], vec![]),
            ..config()
        });
        let mut client = open.client(1000, "alice", "secret");
        allocate(&mut open, &mut client);
        assert_eq!(
            permit(&mut open, &mut client, "127.0.0.1:9".parse().unwrap()),
            None
        );
    }

    #[test]
    fn allocations_expire_and_refresh() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let relay = allocate(&mut h, &mut client);
        assert!(h.server.poll_timeout().is_some());
        h.advance(Duration::from_secs(599));
        // Asked for less than the default, a refresh still gets the default (RFC 8656 §7.3).
        let short = |b: &mut MessageBuilder<'_>| b.add_lifetime(60);
        let reply = h.request(&mut client, Method::REFRESH, &short);
        assert_eq!(
            Message::decode(&reply).unwrap().lifetime().unwrap(),
            Some(600)
        );
        let refresh = |b: &mut MessageBuilder<'_>| b.add_lifetime(900);
        let reply = h.request(&mut client, Method::REFRESH, &refresh);
        assert_eq!(
            Message::decode(&reply).unwrap().lifetime().unwrap(),
            Some(900)
        );
        h.advance(Duration::from_secs(899));
        assert_eq!(h.server.stats().allocations, 1);
        h.advance(Duration::from_secs(1));
        assert_eq!(h.server.stats().allocations, 0);
        assert_eq!(h.server.stats().allocations_expired, 1);
        assert_eq!(h.host.closed, [relay]);
        assert_eq!(h.host.counts["alice"], 0);
        assert_eq!(h.server.poll_timeout(), None);
        assert_eq!(
            code(&h.request(&mut client, Method::REFRESH, &refresh)),
            Some(437)
        );
    }

    #[test]
    fn refresh_zero_deletes_and_others_cannot_touch_it() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let relay = allocate(&mut h, &mut client);
        h.host.users.insert("bob".into(), "pw".into());
        let mut bob = h.client(1000, "bob", "pw");
        let zero = |b: &mut MessageBuilder<'_>| b.add_lifetime(0);
        assert_eq!(
            code(&h.request(&mut bob, Method::REFRESH, &zero)),
            Some(441)
        );
        let reply = h.request(&mut client, Method::REFRESH, &zero);
        assert_eq!(
            Message::decode(&reply).unwrap().lifetime().unwrap(),
            Some(0)
        );
        assert_eq!(h.host.closed, [relay]);
        assert_eq!(h.server.stats().allocations_deleted, 1);
        // The 5-tuple is free again.
        allocate(&mut h, &mut client);
    }

    #[test]
    fn closing_a_connection_deletes_its_allocation() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        client.five.protocol = Protocol::Tls;
        let relay = allocate(&mut h, &mut client);
        h.server.connection_closed(&client.five, &mut h.host);
        assert_eq!(h.host.closed, [relay]);
        assert_eq!(h.server.stats().allocations, 0);
    }

    #[test]
    fn bandwidth_is_limited_per_allocation() {
        let mut h = Harness::new(Config {
            max_bandwidth: 1000,
            ..config()
        });
        let mut client = h.client(1000, "alice", "secret");
        let relay = allocate(&mut h, &mut client);
        assert_eq!(bind(&mut h, &mut client, 0x4000, peer()), None);
        let payload = [0u8; 300];
        let relayed = (0..5)
            .filter(|_| from_peer(&mut h, relay, peer(), &payload).is_some())
            .count();
        assert_eq!(relayed, 3, "1000 bytes of budget");
        h.now += Duration::from_millis(300);
        assert!(from_peer(&mut h, relay, peer(), &payload).is_some());
        assert!(from_peer(&mut h, relay, peer(), &payload).is_none());
        assert_eq!(h.server.stats().bandwidth_drops, 3);
    }

    #[test]
    fn sha256_password_algorithm_is_accepted() {
        let mut h = Harness::new(config());
        let mut client = h.client(1000, "alice", "secret");
        let _ = h.request(&mut client, Method::ALLOCATE, &udp); // fetch a nonce
        client.five = five(1001); // nonces are per IP address: valid on another port
        let key = stun::long_term_key(PasswordAlgorithm::SHA256, "alice", REALM, "secret").unwrap();
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(
            &mut buf,
            Method::ALLOCATE,
            Class::Request,
            TransactionId([77; 12]),
        );
        udp(&mut b).unwrap();
        b.add_username("alice").unwrap();
        b.add_realm(REALM).unwrap();
        b.add_nonce(&client.nonce).unwrap();
        b.add_password_algorithms(&ALGORITHMS).unwrap();
        b.add_password_algorithm(PasswordAlgorithm::SHA256).unwrap();
        b.add_message_integrity_sha256(key.as_bytes()).unwrap();
        let reply = h.send(client.five, b.finish()).unwrap();
        let message = Message::decode(&reply).unwrap();
        assert_eq!(message.class(), Class::Success, "{:?}", code(&reply));
        message
            .verify_message_integrity_sha256(key.as_bytes())
            .unwrap();
        assert!(!message.contains(attr::MESSAGE_INTEGRITY));
    }

    #[test]
    fn stream_framing() {
        assert_eq!(frame_len(&[0, 1]), Ok(None));
        assert_eq!(frame_len(&[0, 1, 0, 8]), Ok(Some(28)));
        assert_eq!(frame_len(&[0, 1, 0, 7]), Err(FramingError));
        assert_eq!(frame_len(&[0x40, 0, 0, 5]), Ok(Some(12)));
        assert_eq!(frame_len(&[0x7F, 0xFF, 0, 5]), Ok(Some(12)));
        assert_eq!(frame_len(&[0x80, 0, 0, 5]), Err(FramingError));
    }

    proptest! {
        /// Whatever a client or a peer sends, the server answers or drops it without
        /// panicking, and never grows past one allocation for one 5-tuple.
        #[test]
        fn arbitrary_packets_never_panic(packets in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..120), 1..20)) {
            let mut h = Harness::new(config());
            let mut client = h.client(1000, "alice", "secret");
            let relay = allocate(&mut h, &mut client);
            let _ = bind(&mut h, &mut client, 0x4000, peer());
            for mut packet in packets {
                if packet.len() > 4 && packet[0] & 1 == 1 {
                    packet[0] = 0x40; // steer some into the ChannelData path
                }
                let _ = h.server.handle_client(h.now, client.five, &packet, &mut h.host);
                let _ = from_peer(&mut h, relay, peer(), &packet);
            }
            prop_assert!(h.server.stats().allocations <= 1);
        }
    }
}

//! The TURN server's shell: sockets, threads and the clock around the sans-IO
//! [`switchboard_turn::server::Server`].
//!
//! - **Workers**: one thread per core (`turn.workers`), each a current-thread runtime owning
//!   one `Server` (its allocations), its UDP listener socket and its relay sockets. Every
//!   worker binds the same UDP, TCP and TLS listening addresses with SO_REUSEPORT, so the
//!   kernel spreads clients over workers by 5-tuple and keeps a client on its worker.
//! - **UDP**: `recvmmsg` through quinn-udp into a per-worker batch shared by the worker's
//!   sockets. ChannelData from a client goes out of the relay socket straight from the receive
//!   buffer; data from a peer gets its 4-byte ChannelData header written in front of it in
//!   a per-worker buffer. Nothing on the relay path allocates.
//! - **TCP and TLS**: a task per connection reads and frames (RFC 8656 §12.5); a writer task
//!   drains a bounded per-connection output buffer, so relayed data never waits on a slow
//!   client (it is dropped once the buffer is full).
//! - **Credentials**: users' long-term keys (derived from their login password for
//!   `turn.realm`, sealed in the database) are loaded into a map shared by the workers and
//!   reloaded when the control plane changes a user, and every 30 s; REST credentials need
//!   only the shared secret. Quotas are counted across workers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use switchboard_storage::crypto::SecretBox;
use switchboard_storage::{Db, Uuid, settings, users};
use switchboard_turn::policy::{Cidr, PeerPolicy};
use switchboard_turn::server::{
    self as core, FiveTuple, Host, Output, PEER_HEADROOM, PEER_TAILROOM, Protocol, QuotaDenial,
    Server, Stats,
};
use switchboard_turn::stun::{AddressFamily, LongTermKey, PasswordAlgorithm, long_term_key};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TurnConfig};

/// How often users' keys are reloaded even without a change notice (other nodes' changes).
const RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// A TCP or TLS connection that sends nothing for this long is closed (a client refreshes
/// its allocation well within it).
const STREAM_IDLE: Duration = Duration::from_secs(600);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes waiting to be written to one TCP or TLS client at most; beyond, relayed data drops.
const STREAM_OUT_MAX: usize = 256 << 10;
/// A connection's read buffer starts this small and grows only when a frame needs it, so
/// idle or unauthenticated connections hold little memory.
const STREAM_READ_START: usize = 4096;
/// Datagrams received per system call.
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Receive buffer per datagram (GRO may coalesce several into one).
const DATAGRAM: usize = 65_535;

/// A user's long-term keys, both algorithms.
struct UserKeys {
    md5: LongTermKey,
    sha256: LongTermKey,
}

/// The sealed form of a user's keys: MD5 key (16 bytes) then SHA-256 key (32 bytes).
fn derive_keys(username: &str, realm: &str, password: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(48);
    for algorithm in [PasswordAlgorithm::MD5, PasswordAlgorithm::SHA256] {
        if let Some(key) = long_term_key(algorithm, username, realm, password) {
            bytes.extend_from_slice(key.as_bytes());
        }
    }
    bytes
}

fn parse_keys(bytes: &[u8]) -> Option<UserKeys> {
    let (md5, sha256) = (bytes.get(..16)?, bytes.get(16..48)?);
    Some(UserKeys {
        md5: LongTermKey::from_bytes(md5)?,
        sha256: LongTermKey::from_bytes(sha256)?,
    })
}

/// Derives and stores a user's TURN keys from their password (called wherever a password is
/// set or checked), so their email and password work as TURN long-term credentials.
pub(crate) async fn store_user_key(
    db: &Db,
    secret_box: &SecretBox,
    realm: &str,
    id: Uuid,
    email: &str,
    password: &str,
) -> Result<(), switchboard_storage::Error> {
    let sealed = secret_box.seal(
        &users::turn_key_context(id),
        &derive_keys(email, realm, password),
    );
    users::set_turn_key(db, id, realm, sealed).await
}

/// Allocation counts across workers.
#[derive(Default)]
struct Quota {
    per_user: HashMap<String, u32>,
    total: u32,
}

/// What the workers share.
struct Shared {
    users: RwLock<HashMap<String, UserKeys>>,
    quota: Mutex<Quota>,
    max_per_user: u32,
    max_total: u32,
    next_port: AtomicU32,
    ports: (u16, u16),
    relay_bind: IpAddr,
    relay_advertised: IpAddr,
    stats: Vec<Mutex<Stats>>,
    connections: AtomicUsize,
    max_connections: usize,
    reload: Notify,
}

/// TURN counters summed over the workers, for `/metrics`.
pub struct TurnStats(Arc<Shared>);

impl TurnStats {
    /// The sum of every worker's counters (as of each worker's last one-second sweep).
    pub fn sum(&self) -> Stats {
        let mut total = Stats::default();
        for worker in &self.0.stats {
            let s = worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            macro_rules! add {
                ($($field:ident),*) => { $(total.$field += s.$field;)* };
            }
            add!(
                allocations_created,
                allocations_expired,
                allocations_deleted,
                permissions_created,
                channels_bound,
                auth_failures,
                stale_nonces,
                quota_denials,
                policy_denials,
                no_permission_drops,
                bandwidth_drops,
                malformed,
                packets_to_peers,
                bytes_to_peers,
                packets_to_clients,
                bytes_to_clients,
                allocations,
                permissions,
                channels
            );
        }
        total
    }
}

/// What the control plane needs of the TURN server.
#[derive(Clone)]
pub struct TurnHandle {
    shared: Arc<Shared>,
    /// The REST shared secret.
    pub secret: Arc<[u8]>,
    /// Where clients reach each listener (advertised address, bound port).
    pub udp: Option<SocketAddr>,
    /// TCP listener, as clients reach it.
    pub tcp: Option<SocketAddr>,
    /// TLS listeners, as clients reach them.
    pub tls: Vec<SocketAddr>,
}

impl TurnHandle {
    /// Reload users' keys now (a user was created, changed a password, was disabled...).
    pub fn users_changed(&self) {
        self.shared.reload.notify_one();
    }

    /// The workers' counters.
    pub fn stats(&self) -> TurnStats {
        TurnStats(self.shared.clone())
    }
}

/// The shared secret: configured, else stored sealed in the database (generated once).
async fn shared_secret(
    config: &TurnConfig,
    db: &Db,
    secret_box: &SecretBox,
) -> anyhow::Result<Vec<u8>> {
    const KEY: &str = "turn_shared_secret";
    if let Some(secret) = &config.shared_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let fresh = secret_box.seal(KEY, &SecretBox::generate_key());
    let sealed = settings::get_or_insert(db, KEY, &fresh).await?;
    secret_box.open(KEY, &sealed).context(
        "the stored TURN shared secret cannot be decrypted: is this the secret key it was created with?",
    )
}

/// Binds `count` sockets to `address` with SO_REUSEPORT (the first picks the port when it
/// is 0, the others take the same).
fn reuseport_sockets(
    address: SocketAddr,
    count: usize,
    kind: socket2::Type,
    key: &str,
) -> anyhow::Result<Vec<socket2::Socket>> {
    let protocol = if kind == socket2::Type::STREAM {
        socket2::Protocol::TCP
    } else {
        socket2::Protocol::UDP
    };
    let new_socket = |address: SocketAddr| {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            kind.nonblocking(),
            Some(protocol),
        )?;
        // For TCP, so a restart does not wait for TIME_WAIT; never for UDP, where it would
        // let another socket share the port.
        if kind == socket2::Type::STREAM {
            socket.set_reuse_address(true)?;
        }
        Ok::<_, std::io::Error>(socket)
    };
    // SO_REUSEPORT would let this group share the port with another process holding it
    // (an old instance, coturn): bind it once alone first, so that is an error instead.
    if address.port() != 0 {
        new_socket(address)?
            .bind(&address.into())
            .with_context(|| format!("binding {address} (config key {key})"))?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count {
        let socket = new_socket(address)?;
        socket.set_reuse_port(true)?;
        if kind == socket2::Type::DGRAM {
            // Room for bursts from many clients; the kernel caps it at rmem_max.
            let _ = socket.set_recv_buffer_size(4 << 20);
            let _ = socket.set_send_buffer_size(4 << 20);
        }
        socket
            .bind(&address.into())
            .with_context(|| format!("binding {address} (config key {key})"))?;
        if kind == socket2::Type::STREAM {
            socket.listen(1024)?;
        }
        if let Some(bound) = socket.local_addr()?.as_socket() {
            address = bound;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// The listening sockets of one worker.
#[derive(Default)]
struct WorkerSockets {
    udp: Option<std::net::UdpSocket>,
    streams: Vec<(std::net::TcpListener, Protocol)>,
}

/// Starts the TURN workers; `None` when `turn.enabled` is false.
pub(crate) async fn start(
    config: &Config,
    db: &Db,
    secret_box: &SecretBox,
    advertised: IpAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<(TurnHandle, Vec<std::thread::JoinHandle<()>>)>> {
    let turn = &config.turn;
    if !turn.enabled {
        return Ok(None);
    }
    let secret = shared_secret(turn, db, secret_box).await?;
    let count = if turn.workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        turn.workers
    };
    let mut per_worker: Vec<WorkerSockets> = (0..count).map(|_| WorkerSockets::default()).collect();
    let reachable = |bound: SocketAddr| SocketAddr::new(advertised, bound.port());
    let mut udp = None;
    if turn.udp {
        let sockets =
            reuseport_sockets(turn.udp_bind, count, socket2::Type::DGRAM, "turn.udp_bind")?;
        udp = sockets[0].local_addr()?.as_socket().map(reachable);
        for (worker, socket) in per_worker.iter_mut().zip(sockets) {
            worker.udp = Some(socket.into());
        }
    }
    let mut streams = Vec::new();
    if turn.tcp {
        streams.push((turn.tcp_bind, Protocol::Tcp, "turn.tcp_bind"));
    }
    if turn.tls {
        streams.push((turn.tls_bind, Protocol::Tls, "turn.tls_bind"));
    }
    if let Some(extra) = turn.tls_extra_bind {
        streams.push((extra, Protocol::Tls, "turn.tls_extra_bind"));
    }
    let (mut tcp, mut tls) = (None, Vec::new());
    for (address, protocol, key) in streams {
        let sockets = reuseport_sockets(address, count, socket2::Type::STREAM, key)?;
        let bound = sockets[0]
            .local_addr()?
            .as_socket()
            .map(reachable)
            .context("a TCP listener without an address")?;
        match protocol {
            Protocol::Tcp => tcp = Some(bound),
            _ => tls.push(bound),
        }
        for (worker, socket) in per_worker.iter_mut().zip(sockets) {
            worker.streams.push((socket.into(), protocol));
        }
    }
    let acceptor = if tls.is_empty() {
        None
    } else {
        Some(crate::sip::tls::acceptor(config, advertised)?)
    };
    let policy = PeerPolicy::new(cidrs(&turn.allow_peers), cidrs(&turn.deny_peers));
    let mut nonce_secret = [0; 32];
    rand::fill(&mut nonce_secret);
    let core_config = core::Config {
        realm: turn.realm.clone(),
        rest_secret: Some(secret.clone()),
        nonce_secret,
        nonce_lifetime: Duration::from_secs(600),
        default_lifetime: turn.default_lifetime,
        max_lifetime: turn.max_lifetime,
        max_permissions: turn.max_permissions_per_allocation,
        max_channels: turn.max_channels_per_allocation,
        max_bandwidth: turn.max_bandwidth_per_allocation,
        policy,
    };
    let range = u32::from(turn.relay_port_max - turn.relay_port_min) + 1;
    let mut start_port = [0u8; 4];
    rand::fill(&mut start_port);
    let shared = Arc::new(Shared {
        users: RwLock::new(HashMap::new()),
        quota: Mutex::new(Quota::default()),
        max_per_user: turn.max_allocations_per_user,
        max_total: turn.max_allocations,
        next_port: AtomicU32::new(u32::from_le_bytes(start_port) % range),
        ports: (turn.relay_port_min, turn.relay_port_max),
        relay_bind: turn.relay_ip,
        relay_advertised: if turn.relay_ip.is_unspecified() {
            advertised
        } else {
            turn.relay_ip
        },
        stats: (0..count).map(|_| Mutex::new(Stats::default())).collect(),
        connections: AtomicUsize::new(0),
        max_connections: turn.max_tcp_connections,
        reload: Notify::new(),
    });
    load_users(db, secret_box, &turn.realm, &shared).await?;
    tokio::spawn(reload_users(
        db.clone(),
        secret_box.clone(),
        turn.realm.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    let mut threads = Vec::with_capacity(count);
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let (shared, shutdown, acceptor) = (shared.clone(), shutdown.clone(), acceptor.clone());
        let core_config = core_config.clone();
        let thread = crate::worker::spawn(format!("turn-{index}"), "TURN", move || {
            run_worker(index, shared, core_config, sockets, acceptor, shutdown)
        })?;
        threads.push(thread);
    }
    let handle = TurnHandle {
        shared,
        secret: secret.into(),
        udp,
        tcp,
        tls,
    };
    Ok(Some((handle, threads)))
}

/// Ranges already validated with the configuration.
fn cidrs(texts: &[String]) -> Vec<Cidr> {
    texts.iter().filter_map(|text| text.parse().ok()).collect()
}

async fn load_users(
    db: &Db,
    secret_box: &SecretBox,
    realm: &str,
    shared: &Shared,
) -> anyhow::Result<()> {
    let rows = users::turn_keys(db).await?;
    let mut map = HashMap::with_capacity(rows.len());
    for row in rows.into_iter().filter(|row| row.realm == realm) {
        let keys = secret_box
            .open(&users::turn_key_context(row.id), &row.sealed)
            .ok()
            .and_then(|bytes| parse_keys(&bytes));
        match keys {
            Some(keys) => {
                map.insert(row.email, keys);
            }
            None => tracing::warn!(user = %row.id, "a TURN key does not decrypt; skipped"),
        }
    }
    *shared
        .users
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
    Ok(())
}

async fn reload_users(
    db: Db,
    secret_box: SecretBox,
    realm: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = shared.reload.notified() => {}
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        if let Err(error) = load_users(&db, &secret_box, &realm, &shared).await {
            tracing::warn!(%error, "could not reload TURN users");
        }
    }
}

/// A relay socket and the task reading it.
struct Relay {
    socket: Rc<UdpSocket>,
    task: Option<tokio::task::AbortHandle>,
}

/// The worker's side of [`Host`]: relay sockets it owns, quotas and keys it shares.
struct WorkerHost {
    shared: Arc<Shared>,
    relays: HashMap<SocketAddr, Relay>,
    /// Relays bound while handling packets, whose reader tasks are not started yet.
    opened: Vec<SocketAddr>,
}

impl Host for WorkerHost {
    fn user_key(&self, username: &str, algorithm: PasswordAlgorithm) -> Option<LongTermKey> {
        let users = self
            .shared
            .users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = users.get(username)?;
        match algorithm {
            PasswordAlgorithm::SHA256 => Some(keys.sha256.clone()),
            _ => Some(keys.md5.clone()),
        }
    }

    fn acquire(&mut self, user: &str) -> Result<(), QuotaDenial> {
        let mut quota = self
            .shared
            .quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shared.max_total != 0 && quota.total >= self.shared.max_total {
            return Err(QuotaDenial::Total);
        }
        let max_per_user = self.shared.max_per_user;
        let count = quota.per_user.entry(user.to_owned()).or_default();
        if max_per_user != 0 && *count >= max_per_user {
            return Err(QuotaDenial::User);
        }
        *count += 1;
        quota.total += 1;
        Ok(())
    }

    fn release(&mut self, user: &str) {
        let mut quota = self
            .shared
            .quota
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        quota.total = quota.total.saturating_sub(1);
        if let Some(count) = quota.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                quota.per_user.remove(user);
            }
        }
    }

    fn bind_relay(
        &mut self,
        _five: &FiveTuple,
        family: AddressFamily,
        even_port: bool,
    ) -> Option<SocketAddr> {
        let shared = &self.shared;
        if (family == AddressFamily::IPV6) != shared.relay_bind.is_ipv6() {
            return None;
        }
        let (min, max) = shared.ports;
        let range = u32::from(max - min) + 1;
        // Try a bounded number of ports from the shared cursor; a busy range fails fast.
        for _ in 0..range.min(256) {
            let offset = shared.next_port.fetch_add(1, Ordering::Relaxed) % range;
            let mut port = u32::from(min) + offset;
            if even_port && port % 2 == 1 {
                port += 1;
            }
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if port > max {
                continue;
            }
            let Some(socket) = bind_udp(SocketAddr::new(shared.relay_bind, port)) else {
                continue;
            };
            let relay = SocketAddr::new(shared.relay_advertised, port);
            self.relays.insert(
                relay,
                Relay {
                    socket: Rc::new(socket),
                    task: None,
                },
            );
            self.opened.push(relay);
            return Some(relay);
        }
        tracing::warn!(min, max, "no free TURN relay port");
        None
    }

    fn close_relay(&mut self, relay: SocketAddr) {
        if let Some(Relay {
            task: Some(task), ..
        }) = self.relays.remove(&relay)
        {
            task.abort();
        }
    }
}

fn bind_udp(address: SocketAddr) -> Option<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )
    .ok()?;
    socket.bind(&address.into()).ok()?;
    UdpSocket::from_std(socket.into()).ok()
}

/// Output waiting for one TCP or TLS client.
#[derive(Default)]
struct StreamOut {
    buf: RefCell<Vec<u8>>,
    ready: Notify,
    closed: Cell<bool>,
}

impl StreamOut {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.borrow_mut();
        if buf.len() + bytes.len() > STREAM_OUT_MAX {
            return;
        }
        buf.extend_from_slice(bytes);
        drop(buf);
        self.ready.notify_one();
    }
}

/// A worker's receive buffers, shared by its sockets' tasks (never borrowed across an
/// await).
struct Batch {
    buffers: Box<[[u8; DATAGRAM]; BATCH]>,
    meta: [quinn_udp::RecvMeta; BATCH],
}

/// One worker: a TURN core and everything it reads and writes.
struct Worker {
    index: usize,
    core: RefCell<Server>,
    host: RefCell<WorkerHost>,
    udp: Option<Rc<UdpSocket>>,
    batch: RefCell<Batch>,
    /// A peer datagram with room for the ChannelData header before and padding after.
    peer_buf: RefCell<Box<[u8]>>,
    streams: RefCell<HashMap<FiveTuple, Rc<StreamOut>>>,
}

impl Worker {
    /// Handles a client's message and sends what it produced (replies on UDP go back out of
    /// the listener; replies on streams into `reply_to`).
    fn client_packet(
        &self,
        now: Instant,
        five: FiveTuple,
        packet: &[u8],
        reply_to: Option<&StreamOut>,
    ) {
        let mut core = self.core.borrow_mut();
        let mut host = self.host.borrow_mut();
        match core.handle_client(now, five, packet, &mut *host) {
            Output::Nothing => {}
            Output::Reply(bytes) => match (reply_to, &self.udp) {
                (Some(out), _) => out.push(bytes),
                (None, Some(udp)) => {
                    let _ = udp.try_send_to(bytes, five.client);
                }
                (None, None) => {}
            },
            Output::Relay { relay, peer, data } => {
                if let Some(relay) = host.relays.get(&relay) {
                    // A full socket buffer drops: relayed media tolerates loss, never waits.
                    let _ = relay.socket.try_send_to(data, peer);
                }
            }
        }
    }

    /// Starts reader tasks for relays bound while handling packets.
    fn start_relays(self: &Rc<Self>) {
        let mut host = self.host.borrow_mut();
        let opened = std::mem::take(&mut host.opened);
        for address in opened {
            let Some(relay) = host.relays.get_mut(&address) else {
                continue; // closed again in the same batch
            };
            let task =
                tokio::task::spawn_local(read_relay(self.clone(), address, relay.socket.clone()));
            relay.task = Some(task.abort_handle());
        }
    }

    fn publish_stats(&self) {
        let stats = self.core.borrow().stats();
        if let Some(slot) = self.host.borrow().shared.stats.get(self.index) {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = stats;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn run_worker(
    index: usize,
    shared: Arc<Shared>,
    config: core::Config,
    sockets: WorkerSockets,
    acceptor: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let udp = sockets
        .udp
        .and_then(|socket| UdpSocket::from_std(socket).ok())
        .map(Rc::new);
    let buffers: Box<[[u8; DATAGRAM]; BATCH]> = vec![[0u8; DATAGRAM]; BATCH]
        .into_boxed_slice()
        .try_into()
        // The vector has exactly BATCH elements.
        .unwrap_or_else(|_| unreachable!());
    let worker = Rc::new(Worker {
        index,
        core: RefCell::new(Server::new(config, Instant::now(), unix_now())),
        host: RefCell::new(WorkerHost {
            shared,
            relays: HashMap::new(),
            opened: Vec::new(),
        }),
        udp: udp.clone(),
        batch: RefCell::new(Batch {
            buffers,
            meta: [quinn_udp::RecvMeta::default(); BATCH],
        }),
        peer_buf: RefCell::new(
            vec![0; PEER_HEADROOM + DATAGRAM + PEER_TAILROOM].into_boxed_slice(),
        ),
        streams: RefCell::new(HashMap::new()),
    });
    if let Some(udp) = udp {
        tokio::task::spawn_local(read_udp(worker.clone(), udp));
    }
    for (listener, protocol) in sockets.streams {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                let acceptor = acceptor.clone().filter(|_| protocol == Protocol::Tls);
                tokio::task::spawn_local(accept(worker.clone(), listener, protocol, acceptor));
            }
            Err(error) => tracing::error!(%error, "TURN listener could not start"),
        }
    }
    let mut tick = tokio::time::interval(core::SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = Instant::now();
                let mut core = worker.core.borrow_mut();
                core.handle_timeout(now, &mut *worker.host.borrow_mut());
                drop(core);
                worker.publish_stats();
            }
        }
    }
}

/// Receives batches of datagrams on `socket` and hands each (each GRO segment) to `handle`.
async fn receive_batches(
    worker: &Worker,
    socket: &UdpSocket,
    mut handle: impl FnMut(Instant, SocketAddr, &[u8]),
) {
    let Ok(state) = quinn_udp::UdpSocketState::new(socket.into()) else {
        tracing::error!("could not set up batched receive on a TURN socket");
        return;
    };
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let _ = socket.try_io(Interest::READABLE, || {
            let now = Instant::now();
            let mut batch = worker.batch.borrow_mut();
            let Batch { buffers, meta } = &mut *batch;
            let count = {
                let mut slices = buffers.each_mut().map(|b| IoSliceMut::new(b));
                state.recv(socket.into(), &mut slices, meta)?
            };
            for (meta, buffer) in meta.iter().zip(buffers.iter()).take(count) {
                let stride = meta.stride.max(1);
                for packet in buffer[..meta.len].chunks(stride) {
                    handle(now, meta.addr, packet);
                }
            }
            if count < BATCH {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
    }
}

async fn read_udp(worker: Rc<Worker>, socket: Rc<UdpSocket>) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let inner = worker.clone();
    receive_batches(&worker, &socket, move |now, from, packet| {
        let five = FiveTuple {
            client: from,
            server: local,
            protocol: Protocol::Udp,
        };
        inner.client_packet(now, five, packet, None);
        inner.start_relays();
    })
    .await;
}

async fn read_relay(worker: Rc<Worker>, relay: SocketAddr, socket: Rc<UdpSocket>) {
    let inner = worker.clone();
    receive_batches(&worker, &socket, move |now, peer, packet| {
        let mut buf = inner.peer_buf.borrow_mut();
        let Some(slot) = buf.get_mut(PEER_HEADROOM..PEER_HEADROOM + packet.len()) else {
            return;
        };
        slot.copy_from_slice(packet);
        let mut core = inner.core.borrow_mut();
        let Some((five, bytes)) = core.handle_peer(now, relay, peer, &mut buf, packet.len()) else {
            return;
        };
        match five.protocol {
            Protocol::Udp => {
                if let Some(udp) = &inner.udp {
                    let _ = udp.try_send_to(bytes, five.client);
                }
            }
            Protocol::Tcp | Protocol::Tls => {
                if let Some(out) = inner.streams.borrow().get(&five) {
                    out.push(bytes);
                }
            }
        }
    })
    .await;
}

async fn accept(
    worker: Rc<Worker>,
    listener: TcpListener,
    protocol: Protocol,
    acceptor: Option<TlsAcceptor>,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(%error, "TURN accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = worker.host.borrow().shared.clone();
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.max_connections {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%client, "TURN connection refused: turn.max_tcp_connections reached");
            continue;
        }
        let five = FiveTuple {
            client,
            server: local,
            protocol,
        };
        let (worker, acceptor) = (worker.clone(), acceptor.clone());
        tokio::task::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            connection(&worker, stream, five, acceptor).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    worker: &Rc<Worker>,
    stream: TcpStream,
    five: FiveTuple,
    acceptor: Option<TlsAcceptor>,
) {
    match acceptor {
        None => serve_stream(worker, stream, five).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_stream(worker, tls, five).await,
                _ => tracing::debug!(client = %five.client, "TURN TLS handshake failed"),
            }
        }
    }
}

/// Reads framed messages from a TCP or TLS client until it closes, errs, sends something
/// that is not TURN, or idles; then its allocation goes.
async fn serve_stream<S: AsyncRead + AsyncWrite + 'static>(
    worker: &Rc<Worker>,
    stream: S,
    five: FiveTuple,
) {
    let (mut reader, writer) = tokio::io::split(stream);
    let out = Rc::new(StreamOut::default());
    worker.streams.borrow_mut().insert(five, out.clone());
    let writing = tokio::task::spawn_local(write_stream(writer, out.clone()));
    // Twice the longest frame: after compaction a partial frame always has room.
    let max = 2 * (core::MAX_FRAME + 4);
    let mut buf = vec![0u8; STREAM_READ_START];
    let (mut start, mut end) = (0, 0);
    'read: loop {
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            } else {
                buf.resize((buf.len() * 2).min(max), 0);
            }
        }
        let read = tokio::time::timeout(STREAM_IDLE, reader.read(&mut buf[end..])).await;
        match read {
            Ok(Ok(n)) if n > 0 => end += n,
            _ => break,
        }
        loop {
            match core::frame_len(&buf[start..end]) {
                Ok(Some(len)) if start + len <= end => {
                    worker.client_packet(
                        Instant::now(),
                        five,
                        &buf[start..start + len],
                        Some(&out),
                    );
                    worker.start_relays();
                    start += len;
                }
                Ok(_) => break,
                Err(_) => break 'read,
            }
        }
        if start == end {
            (start, end) = (0, 0);
        }
    }
    worker.streams.borrow_mut().remove(&five);
    worker
        .core
        .borrow_mut()
        .connection_closed(&five, &mut *worker.host.borrow_mut());
    out.closed.set(true);
    out.ready.notify_one();
    let _ = writing.await;
}

async fn write_stream<W: AsyncWrite>(mut writer: tokio::io::WriteHalf<W>, out: Rc<StreamOut>)
where
    tokio::io::WriteHalf<W>: Unpin,
{
    let mut pending = Vec::new();
    loop {
        if out.buf.borrow().is_empty() {
            if out.closed.get() {
                break;
            }
            out.ready.notified().await;
            continue;
        }
        std::mem::swap(&mut pending, &mut *out.buf.borrow_mut());
        if writer.write_all(&pending).await.is_err() {
            break;
        }
        pending.clear();
        // A burst does not pin its buffer for the rest of the connection.
        pending.shrink_to(STREAM_READ_START);
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_round_trip_through_their_sealed_form() {
        let bytes = derive_keys("alice@example.com", "realm", "pw");
        assert_eq!(bytes.len(), 48);
        let keys = parse_keys(&bytes).unwrap();
        assert_eq!(
            keys.md5,
            long_term_key(PasswordAlgorithm::MD5, "alice@example.com", "realm", "pw").unwrap()
        );
        assert_eq!(
            keys.sha256,
            long_term_key(
                PasswordAlgorithm::SHA256,
                "alice@example.com",
                "realm",
                "pw"
            )
            .unwrap()
        );
        assert!(parse_keys(&bytes[..40]).is_none());
    }
}

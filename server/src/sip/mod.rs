//! The SIP shell: sockets and connections, the signalling task that owns the sans-IO core,
//! the registration writer, and the handle the control plane uses to keep the core's
//! directory in step with the database.

mod directory;
mod dns;
mod http_node;
pub(crate) mod persist;
mod task;
mod tcp;
pub(crate) mod tls;
mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use switchboard_signalling::core::{
    Core, CoreConfig, OutboundLimits, RecordingError, RecordingRequest, RecordingState,
};
use switchboard_signalling::directory::Update;
use switchboard_signalling::peer::{Peer, Transport};
use switchboard_signalling::registrar::RegistrarConfig;
use switchboard_signalling::stats::SipStats;
use switchboard_sip::message::Limits;
use switchboard_sip::transaction::Timers;
use switchboard_storage::crypto::SecretBox;
use switchboard_storage::{Db, Engine, Scope, Timestamp, Uuid, calls, registrations};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::EventHub;
use crate::media::{MediaPlane, MediaStats};
use crate::recorder::{self, Recorder, RecorderStats};

/// Messages queued for the signalling task before senders wait.
const INBOX: usize = 4096;
/// Records (registration changes, call starts and ends) queued for the writer before new
/// ones are dropped.
const RECORD_QUEUE: usize = 10_000;
/// How long the control plane waits for the signalling task to take a directory change.
const DIRECTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Media events queued for the signalling task.
const MEDIA_EVENTS: usize = 4096;

/// Inputs of the signalling task.
#[derive(Debug)]
pub(crate) enum Command {
    /// The answer to an IVR `http` node's fetch.
    HttpDone {
        session: switchboard_signalling::media::SessionId,
        id: u32,
        result: Result<serde_json::Value, String>,
    },
    /// A framed message from a stream connection.
    Inbound { peer: Peer, bytes: Bytes },
    /// A stream connection opened; replies for it go to `sender`.
    Connected {
        conn: u64,
        sender: mpsc::Sender<Bytes>,
    },
    /// A stream connection closed.
    Disconnected { conn: u64 },
    /// A connection we were opening to `peer` could not be opened.
    DialFailed { conn: u64, peer: Peer },
    /// The directory changed; `applied` is told once the core has it.
    Directory {
        update: Update,
        applied: oneshot::Sender<()>,
    },
    /// The control plane asks for a change to a live call's recording.
    Recording {
        call: Uuid,
        request: RecordingRequest,
        reply: oneshot::Sender<Result<(Uuid, RecordingState), RecordingError>>,
    },
}

/// Where each trunk's registration with its carrier stands, and since when: written by the
/// signalling task on every change, read by the control plane.
pub(crate) type TrunkRegistrations =
    Arc<std::sync::Mutex<HashMap<Uuid, (switchboard_signalling::core::TrunkRegState, Timestamp)>>>;

/// What the rest of the server holds of SIP: cheap to clone.
#[derive(Clone)]
pub struct SipHandle {
    inbox: mpsc::Sender<Command>,
    trunk_registrations: TrunkRegistrations,
    stats: Arc<SipStats>,
    media_stats: Arc<MediaStats>,
    recorder_stats: Arc<RecorderStats>,
    db: Db,
    secret_box: SecretBox,
    /// What SIP WebSocket connections share.
    websockets: tcp::Shared,
    /// The key of browser credentials.
    credential_key: [u8; 32],
    /// `ws://` and `wss://` URLs of `/sip` at the advertised address.
    websocket_urls: Vec<String>,
    /// Resolves trunk proxies.
    dns: Arc<dns::Dns>,
    /// Held while a trunk is read and handed to the core, so a re-resolution never hands
    /// it an older state of a trunk than a change made through the control plane.
    trunk_sync: Arc<tokio::sync::Mutex<()>>,
}

impl SipHandle {
    /// Takes a WebSocket upgrade of `/sip` from `addr` (RFC 7118); `secure` when it came
    /// over HTTPS. Refusals are a status and a reason.
    pub fn websocket(
        &self,
        secure: bool,
        addr: SocketAddr,
        upgrade: axum::extract::ws::WebSocketUpgrade,
    ) -> Result<axum::response::Response, (axum::http::StatusCode, &'static str)> {
        ws::upgrade((&self.websockets, &self.stats), secure, addr, upgrade)
    }

    /// Short-lived SIP credentials for extension `id` (its `number` and current `secret`),
    /// valid until `expires` (unix seconds): username and password.
    pub fn mint_credentials(
        &self,
        id: Uuid,
        number: &str,
        secret: &str,
        expires: u64,
    ) -> (String, String) {
        use switchboard_sip::digest::ephemeral;
        let username = ephemeral::username(expires, number);
        let password =
            ephemeral::password(&self.credential_key, &username, &id.to_string(), secret);
        (username, password)
    }

    /// Where clients reach SIP over WebSocket: `ws://` and `wss://` URLs of `/sip` at the
    /// advertised address.
    pub fn websocket_urls(&self) -> &[String] {
        &self.websocket_urls
    }

    /// Where trunk `id`'s registration stands, and since when (`None`: it does not register).
    pub fn trunk_registration(
        &self,
        id: Uuid,
    ) -> Option<(switchboard_signalling::core::TrunkRegState, Timestamp)> {
        self.trunk_registrations
            .lock()
            .ok()
            .and_then(|map| map.get(&id).cloned())
    }

    /// The core's counters.
    pub fn stats(&self) -> Arc<SipStats> {
        self.stats.clone()
    }

    /// The media workers' counters.
    pub fn media_stats(&self) -> Arc<MediaStats> {
        self.media_stats.clone()
    }

    /// Hands a directory change to the core and waits (bounded) until it is applied: a phone
    /// that registers right after the control plane answered is judged by the new directory.
    async fn send(&self, update: Update) {
        let (applied, done) = oneshot::channel();
        let sent = self
            .inbox
            .send_timeout(Command::Directory { update, applied }, DIRECTORY_WAIT);
        if let Err(error) = sent.await {
            tracing::warn!(%error, "signalling task busy: directory update dropped");
            return;
        }
        if tokio::time::timeout(DIRECTORY_WAIT, done).await.is_err() {
            tracing::warn!("signalling task slow to apply a directory update");
        }
    }

    /// Re-reads an extension (after the control plane changed or deleted it) into the core.
    pub async fn sync_extension(&self, id: Uuid) {
        match directory::extension(&self.db, &self.secret_box, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync extension to signalling"),
        }
    }

    /// Starts, pauses, resumes or stops the recording of live call `call` (its record id).
    /// `None` if the signalling task did not answer (busy or stopping).
    pub async fn control_recording(
        &self,
        call: Uuid,
        request: RecordingRequest,
    ) -> Option<Result<(Uuid, RecordingState), RecordingError>> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Command::Recording {
                call,
                request,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// The recording writer's counters.
    pub fn recorder_stats(&self) -> Arc<RecorderStats> {
        self.recorder_stats.clone()
    }

    /// Re-reads a tenant into the core.
    pub async fn sync_tenant(&self, id: Uuid) {
        match directory::tenant(&self.db, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync tenant to signalling"),
        }
    }

    /// Re-reads a trunk (its proxies and sources resolved again) into the core.
    pub async fn sync_trunk(&self, id: Uuid) {
        let _serial = self.trunk_sync.lock().await;
        match directory::trunk(&self.db, (&self.secret_box, &self.dns), id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync trunk to signalling"),
        }
    }

    /// Resolves every trunk again each `period` (DNS records move; a carrier's proxies are
    /// not fixed) and hands the core the trunks whose addresses changed, until shutdown.
    async fn refresh_trunks(self, period: std::time::Duration, shutdown: CancellationToken) {
        let mut known: HashMap<Uuid, Update> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let ids = match switchboard_storage::trunks::all(&self.db).await {
                Ok(trunks) => trunks.into_iter().map(|t| t.id).collect::<Vec<_>>(),
                Err(error) => {
                    tracing::warn!(%error, "could not list trunks to resolve them again");
                    continue;
                }
            };
            known.retain(|id, _| ids.contains(id));
            for id in ids {
                let _serial = self.trunk_sync.lock().await;
                let update =
                    match directory::trunk(&self.db, (&self.secret_box, &self.dns), id).await {
                        Ok(update) => update,
                        Err(error) => {
                            tracing::warn!(%error, %id, "could not resolve trunk again");
                            continue;
                        }
                    };
                if known.get(&id) == Some(&update) {
                    continue;
                }
                // A name that did not resolve this time (a DNS hiccup) keeps the addresses it
                // had: the trunk must not lose its proxies and sources until the next round.
                if lost_proxies(known.get(&id), &update) {
                    tracing::warn!(%id, "trunk hosts did not resolve; keeping their last addresses");
                    continue;
                }
                self.send(update.clone()).await;
                known.insert(id, update);
            }
        }
    }

    /// Re-reads a flow's published version into the core.
    pub async fn sync_flow(&self, id: Uuid) {
        match directory::flow(&self.db, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync IVR flow to signalling"),
        }
    }

    /// Re-reads a ring group into the core.
    pub async fn sync_ring_group(&self, id: Uuid) {
        match directory::ring_group(&self.db, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync ring group to signalling"),
        }
    }

    /// Re-reads an outbound route into the core.
    pub async fn sync_route(&self, id: Uuid) {
        match directory::route(&self.db, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => {
                tracing::warn!(%error, %id, "could not sync outbound route to signalling");
            }
        }
    }

    /// Re-reads a number into the core.
    pub async fn sync_number(&self, id: Uuid) {
        match directory::number(&self.db, id).await {
            Ok(update) => self.send(update).await,
            Err(error) => tracing::warn!(%error, %id, "could not sync number to signalling"),
        }
    }
}

/// Whether `new` is trunk `old` with no proxy left where it had some.
fn lost_proxies(old: Option<&Update>, new: &Update) -> bool {
    let proxies = |update: &Update| match update {
        Update::TrunkUpsert(trunk) => trunk.outbound.as_ref().map_or(0, |o| o.proxies.len()),
        _ => 0,
    };
    matches!(new, Update::TrunkUpsert(_))
        && proxies(new) == 0
        && old.is_some_and(|old| proxies(old) > 0)
}

/// The running SIP service.
pub struct SipService {
    /// The handle for the control plane.
    pub handle: SipHandle,
    /// Where SIP over UDP is bound, if enabled.
    pub udp: Option<SocketAddr>,
    /// Where SIP over TCP is bound, if enabled.
    pub tcp: Option<SocketAddr>,
    /// Where SIP over TLS is bound, if enabled.
    pub tls: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl SipService {
    /// Waits for every task to end (after shutdown was cancelled).
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn core_config(config: &Config) -> CoreConfig {
    let sip = &config.sip;
    CoreConfig {
        limits: Limits {
            max_message_len: sip.max_message_bytes,
            ..Limits::default()
        },
        timers: Timers {
            t1: sip.t1,
            t2: sip.t2,
            t4: sip.t4,
        },
        max_transactions: sip.max_transactions,
        registrar: RegistrarConfig {
            min_expires: sip.min_expires,
            max_expires: sip.max_expires,
            default_expires: sip.default_expires,
            max_contacts: sip.max_contacts_per_extension,
        },
        max_failures_per_source: sip.max_auth_failures_per_source,
        max_failures_per_extension: sip.max_auth_failures_per_extension,
        failure_window: sip.auth_failure_window,
        block_duration: sip.block_duration,
        // Validated when the configuration was loaded.
        digest_algorithms: sip
            .digest_algorithms
            .iter()
            .filter_map(|a| switchboard_sip::digest::Algorithm::parse(a))
            .collect(),
        max_calls: config.media.max_calls,
        max_calls_per_tenant: config.media.max_calls_per_tenant,
        max_calls_per_second: config.media.max_calls_per_second,
        max_calls_per_second_per_tenant: config.media.max_calls_per_second_per_tenant,
        ring_timeout: config.media.ring_timeout,
        outbound: OutboundLimits {
            allowed_prefixes: config.outbound.allowed_prefixes.clone(),
            max_concurrent_per_tenant: config.outbound.max_concurrent_per_tenant,
            daily_minutes_per_tenant: config.outbound.daily_minutes_per_tenant,
        },
        rtp_ports: (config.media.rtp_port_min, config.media.rtp_port_max),
        ..CoreConfig::default()
    }
}

/// Asks for `bytes` of kernel buffer each way on the SIP UDP socket. The kernel may grant less
/// (`net.core.rmem_max`); that is logged, not fatal.
fn set_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
    // Linux reports twice the usable size (it counts its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < bytes {
        tracing::warn!(
            asked = bytes,
            granted,
            "SIP UDP receive buffer is smaller than sip.udp_buffer_bytes; raise net.core.rmem_max"
        );
    }
}

/// Binds a stream listener (TCP, or TLS when `shared` has an acceptor) and starts accepting.
async fn listen(
    bind: SocketAddr,
    key: &str,
    shared: tcp::Shared,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding SIP to {bind} (config key {key})"))?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(tcp::accept(listener, shared)));
    Ok(addr)
}

/// Where the HTTP listeners that carry SIP over WebSocket are, and the key of browser
/// credentials.
pub struct WebSockets {
    /// The HTTP listener's port (`ws:`).
    pub ws_port: Option<u16>,
    /// The HTTPS listener's port (`wss:`).
    pub wss_port: Option<u16>,
    /// The key `POST /api/v1/sip/credentials` mints passwords under.
    pub credential_key: [u8; 32],
}

/// Loads the directory and live registrations, binds the sockets and starts the tasks.
pub async fn start(
    config: &Config,
    db: &Db,
    secret_box: &SecretBox,
    advertised: IpAddr,
    websockets: WebSockets,
    events: EventHub,
    shutdown: CancellationToken,
) -> anyhow::Result<SipService> {
    // One node owns every call of an SQLite database, so what is still in progress was cut
    // off by the last run. PostgreSQL may be shared by nodes whose calls are live: records do
    // not yet say which node owns them, so they are left alone there.
    if db.engine() == Engine::Sqlite {
        let interrupted = calls::close_interrupted(db, Timestamp::now()).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "closed call records left in progress by the last run"
            );
        }
        recorder::repair_interrupted(db, &config.data_dir.join("recordings")).await?;
    }
    let mut nonce_key = [0u8; 32];
    let mut seed = [0u8; 32];
    rand::fill(&mut nonce_key);
    rand::fill(&mut seed);
    let mut core = Core::new(core_config(config), nonce_key, seed);
    core.set_credential_key(websockets.credential_key);
    // One DTLS certificate for every browser leg of this process.
    let certificate = switchboard_signalling::media::Certificate::generate()
        .map_err(|e| anyhow::anyhow!("generating the WebRTC DTLS certificate: {e}"))?;
    core.set_webrtc_certificate(certificate);
    let dns = Arc::new(dns::Dns::new(&config.sip.dns_servers)?);
    for update in directory::load(db, secret_box, &dns).await? {
        core.apply(update);
    }
    core.set_default_domain(&config.bootstrap.tenant_domain);
    // Minutes out already used today count against the daily cap.
    let wall_ms = u64::try_from(Timestamp::now().0).unwrap_or(0);
    let midnight = wall_ms - wall_ms % 86_400_000;
    let since = Timestamp(i64::try_from(midnight).unwrap_or(0));
    for (tenant, ms) in calls::outbound_ms_since(db, since).await? {
        core.seed_outbound_usage(tenant, wall_ms, u64::try_from(ms).unwrap_or(0));
    }
    let (wall_now, now) = (Timestamp::now(), Instant::now());
    let live = registrations::live(db, Scope::All, None, wall_now).await?;
    let restored = live.len();
    for registration in &live {
        // A WebSocket binding lived on a connection of the last run: the browser registers
        // again over a new one. With SQLite this node owned it, so its row goes too.
        if let Some(Transport::Ws | Transport::Wss) = Transport::parse(&registration.transport) {
            if db.engine() == Engine::Sqlite {
                registrations::remove(db, registration.extension_id, &registration.contact).await?;
            }
            continue;
        }
        if let Some(binding) = persist::binding(registration, wall_now, now) {
            core.registrar_mut().restore(
                registration.tenant_id,
                registration.extension_id,
                binding,
            );
        }
    }
    // Publishes the restored count to the gauges (no timer is due yet).
    core.handle_timeout(now);
    tracing::info!(restored, "registrations restored");

    let (inbox_tx, inbox) = mpsc::channel(INBOX);
    let (records_tx, records_rx) = mpsc::channel(RECORD_QUEUE);
    let (media_events_tx, media_events) = mpsc::channel(MEDIA_EVENTS);
    let mut tasks = Vec::new();

    let udp = if config.sip.udp {
        let std_socket = std::net::UdpSocket::bind(config.sip.udp_bind).with_context(|| {
            format!(
                "binding SIP UDP to {} (config key sip.udp_bind)",
                config.sip.udp_bind
            )
        })?;
        std_socket.set_nonblocking(true)?;
        set_buffers(&std_socket, config.sip.udp_buffer_bytes);
        let state = quinn_udp::UdpSocketState::new((&std_socket).into())?;
        Some(task::Udp {
            socket: tokio::net::UdpSocket::from_std(std_socket)?,
            state,
        })
    } else {
        None
    };
    let udp_addr = udp.as_ref().map(|u| u.socket.local_addr()).transpose()?;

    let stream = tcp::Shared {
        inbox: inbox_tx.clone(),
        limits: Limits {
            max_message_len: config.sip.max_message_bytes,
            ..Limits::default()
        },
        idle_timeout: config.sip.tcp_idle_timeout,
        max_connections: config.sip.max_tcp_connections,
        open: Arc::new(AtomicUsize::new(0)),
        // One id space for TCP, TLS and WebSocket connections.
        next_id: Arc::new(AtomicU64::new(1)),
        shutdown: shutdown.clone(),
        tls: None,
    };
    let tcp_addr = if config.sip.tcp {
        Some(
            listen(
                config.sip.tcp_bind,
                "sip.tcp_bind",
                stream.clone(),
                &mut tasks,
            )
            .await?,
        )
    } else {
        None
    };
    let ws_shared = tcp::Shared {
        open: Arc::new(AtomicUsize::new(0)),
        ..stream.clone()
    };
    let dialer = tcp::Dialer {
        shared: tcp::Shared {
            open: Arc::new(AtomicUsize::new(0)),
            ..stream.clone()
        },
        connector: tls::connector(config)?,
        dns: dns.clone(),
    };
    let tls_addr = if config.sip.tls {
        let acceptor = tls::acceptor(config, advertised)?;
        let shared = tcp::Shared {
            open: Arc::new(AtomicUsize::new(0)),
            tls: Some(acceptor),
            ..stream
        };
        Some(listen(config.sip.tls_bind, "sip.tls_bind", shared, &mut tasks).await?)
    } else {
        None
    };

    let mut ports = Vec::new();
    ports.extend(udp_addr.map(|a| (Transport::Udp, a.port())));
    ports.extend(tcp_addr.map(|a| (Transport::Tcp, a.port())));
    ports.extend(tls_addr.map(|a| (Transport::Tls, a.port())));
    ports.extend(websockets.ws_port.map(|p| (Transport::Ws, p)));
    ports.extend(websockets.wss_port.map(|p| (Transport::Wss, p)));
    let host = match advertised {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let websocket_urls = [("ws", websockets.ws_port), ("wss", websockets.wss_port)]
        .into_iter()
        .filter_map(|(scheme, port)| Some(format!("{scheme}://{host}:{}/sip", port?)))
        .collect();
    core.set_local(advertised, &ports);

    let recordings_dir = config.data_dir.join("recordings");
    let (recorder, recorder_thread) =
        Recorder::start(recordings_dir, records_tx.clone(), media_events_tx.clone())
            .context("starting the recording writer")?;
    let recorder_stats = recorder.stats();
    let (media, threads) = MediaPlane::start(
        &config.media,
        &recorder,
        &records_tx,
        media_events_tx,
        shutdown.clone(),
    )
    .context("starting the media workers")?;
    // The writer ends when the last worker lets go of it, finishing the open files.
    drop(recorder);
    tasks.push(tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
        let _ = recorder_thread.join();
    }));
    let stats = core.stats();
    let media_stats = media.stats();
    tasks.push(tokio::spawn(persist::run(db.clone(), records_rx)));
    let trunk_registrations = TrunkRegistrations::default();
    let shutdown_refresh = shutdown.clone();
    let io = task::Io {
        udp,
        inbox,
        records: records_tx,
        media,
        media_events,
        events,
        shutdown,
        db: db.clone(),
        trunk_registrations: trunk_registrations.clone(),
        commands: inbox_tx.clone(),
        http_allow_private: config.ivr.http_allow_private,
        dialer,
    };
    tasks.push(tokio::spawn(task::run(core, io)));
    let handle = SipHandle {
        inbox: inbox_tx,
        trunk_registrations,
        stats,
        media_stats,
        recorder_stats,
        db: db.clone(),
        secret_box: secret_box.clone(),
        websockets: ws_shared,
        credential_key: websockets.credential_key,
        websocket_urls,
        dns,
        trunk_sync: Arc::default(),
    };
    tasks.push(tokio::spawn(
        handle
            .clone()
            .refresh_trunks(config.sip.dns_refresh, shutdown_refresh),
    ));
    Ok(SipService {
        handle,
        udp: udp_addr,
        tcp: tcp_addr,
        tls: tls_addr,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use switchboard_signalling::directory::{Outbound, Trunk};
    use switchboard_signalling::peer::Transport;

    use super::*;

    fn trunk(proxies: Vec<SocketAddr>) -> Update {
        Update::TrunkUpsert(Trunk {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            name: "carrier".into(),
            sources: Vec::new(),
            outbound: Some(Box::new(Outbound {
                proxies,
                transport: Transport::Udp,
                host: "sip.carrier.example".into(),
                credentials: None,
                tech_prefix: String::new(),
                headers: Vec::new(),
                register: None,
            })),
        })
    }

    #[test]
    fn a_trunk_that_stops_resolving_keeps_its_last_addresses() {
        let up = trunk(vec![SocketAddr::from(([192, 0, 2, 1], 5060))]);
        let lost = trunk(Vec::new());
        assert!(lost_proxies(Some(&up), &lost));
        // Never resolved: nothing to keep. Removed or disabled: the removal goes through.
        assert!(!lost_proxies(None, &lost));
        assert!(!lost_proxies(Some(&up), &Update::TrunkRemove(Uuid::nil())));
        assert!(!lost_proxies(Some(&lost), &up));
    }
}

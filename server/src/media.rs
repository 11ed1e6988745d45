//! The media plane: worker threads that own calls' RTP sockets and forward packets between
//! the legs through the sans-IO [`Bridge`].
//!
//! Each worker is an OS thread with its own single-threaded runtime (one per core by
//! default): a session lives on one worker for its whole life, so its state needs no lock and
//! no task ever migrates. A session has four sockets (RTP and RTCP on each side); each socket
//! is read by a local task that drains everything readable, forwards it with no allocation
//! (the buffer is the task's own), and sends it from the other side's socket. Sessions are
//! assigned to workers by id. The signalling task talks to workers through bounded channels;
//! workers report inactivity and bind failures back. Each socket is read with one `recvfrom`
//! per packet, draining the socket per wake-up; `recvmmsg` batching is a planned refinement.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_media::relay::{Bridge, Latching, Leg, Side};
use switchboard_media::rtp;
use switchboard_signalling::media::{MediaCommand, MediaEvent, SessionId};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{LatchingMode, MediaConfig};

/// Commands queued per worker before the signalling task's sends fail.
const QUEUE: usize = 4096;
/// How often workers look for inactive sessions.
const SWEEP: Duration = Duration::from_secs(1);

/// One worker's counters. Only the worker writes them (relaxed atomics, each worker on its
/// own cache lines); the metrics endpoint sums them at scrape time.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// Sessions on this worker.
    pub sessions: AtomicU64,
    /// RTP packets forwarded from the caller to the callee.
    pub rtp_to_callee: AtomicU64,
    /// RTP packets forwarded from the callee to the caller.
    pub rtp_to_caller: AtomicU64,
    /// RTP packets dropped (foreign source, malformed, no destination yet, on hold).
    pub rtp_dropped: AtomicU64,
    /// RTCP packets forwarded.
    pub rtcp_forwarded: AtomicU64,
    /// Sessions whose ports could not be bound.
    pub bind_failures: AtomicU64,
    /// Sessions reported inactive.
    pub inactive: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The media plane's counters, one set per worker.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Per worker.
    pub workers: Vec<WorkerStats>,
}

impl MediaStats {
    /// The sum of one counter over the workers.
    pub fn sum(&self, counter: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| counter(w).load(Ordering::Relaxed))
            .sum()
    }
}

/// A worker's handle on its own counters.
#[derive(Clone)]
struct Counters(Arc<MediaStats>, usize);

impl std::ops::Deref for Counters {
    type Target = WorkerStats;

    fn deref(&self) -> &WorkerStats {
        &self.0.workers[self.1]
    }
}

/// The signalling task's handle on the workers.
#[derive(Clone)]
pub struct MediaPlane {
    workers: Vec<mpsc::Sender<MediaCommand>>,
    stats: Arc<MediaStats>,
}

impl MediaPlane {
    /// Starts the workers; events go to `events`.
    pub fn start(
        config: &MediaConfig,
        events: mpsc::Sender<MediaEvent>,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Self, Vec<std::thread::JoinHandle<()>>)> {
        let count = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            config.workers
        };
        let stats = Arc::new(MediaStats {
            workers: (0..count).map(|_| WorkerStats::default()).collect(),
        });
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (config, events, shutdown) = (config.clone(), events.clone(), shutdown.clone());
            let counters = Counters(stats.clone(), index);
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            tracing::error!(%error, "media worker could not start");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, worker(config, rx, events, counters, shutdown));
                })?;
            workers.push(tx);
            threads.push(thread);
        }
        Ok((Self { workers, stats }, threads))
    }

    /// The workers' counters.
    pub fn stats(&self) -> Arc<MediaStats> {
        self.stats.clone()
    }

    /// Sends a command to the session's worker without waiting.
    pub fn send(&self, command: MediaCommand) {
        let session = match &command {
            MediaCommand::Create { session, .. }
            | MediaCommand::Update { session, .. }
            | MediaCommand::Destroy { session } => *session,
        };
        let worker = &self.workers[(session as usize) % self.workers.len()];
        if let Err(error) = worker.try_send(command) {
            tracing::warn!(%error, session, "media worker queue full; command dropped");
        }
    }
}

struct Session {
    bridge: Rc<RefCell<Bridge>>,
    tasks: Vec<JoinHandle<()>>,
}

fn latching(mode: LatchingMode) -> Latching {
    match mode {
        LatchingMode::FirstSource => Latching::FirstSource,
        LatchingMode::SameAddress => Latching::SameAddress,
        LatchingMode::Strict => Latching::Strict,
    }
}

async fn worker(
    config: MediaConfig,
    mut commands: mpsc::Receiver<MediaCommand>,
    events: mpsc::Sender<MediaEvent>,
    counters: Counters,
    shutdown: CancellationToken,
) {
    let mut sessions: HashMap<SessionId, Session> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                for (session, state) in &sessions {
                    let event = state.bridge.borrow_mut().handle_timeout(now);
                    if event.is_some() {
                        inc(&counters.inactive);
                        let _ = events.try_send(MediaEvent::Inactive { session: *session });
                    }
                }
            }
            command = commands.recv() => match command {
                None => break,
                Some(MediaCommand::Create { session, a_port, b_port, a_expected, b_expected }) => {
                    match create(&config, &counters, a_port, b_port, a_expected, b_expected).await {
                        Ok(state) => {
                            sessions.insert(session, state);
                            counters.sessions.store(sessions.len() as u64, Ordering::Relaxed);
                        }
                        Err(error) => {
                            inc(&counters.bind_failures);
                            tracing::warn!(%error, session, a_port, b_port, "could not bind RTP ports");
                            let _ = events.try_send(MediaEvent::Failed { session });
                        }
                    }
                }
                Some(MediaCommand::Update { session, a_side, expected, hold }) => {
                    if let Some(state) = sessions.get(&session) {
                        let mut bridge = state.bridge.borrow_mut();
                        let side = if a_side { Side::A } else { Side::B };
                        bridge.leg_mut(side).update_expected(expected);
                        bridge.set_hold(Instant::now(), hold);
                    }
                }
                Some(MediaCommand::Destroy { session }) => {
                    if let Some(state) = sessions.remove(&session) {
                        counters.sessions.store(sessions.len() as u64, Ordering::Relaxed);
                        for task in state.tasks {
                            task.abort();
                        }
                    }
                }
            },
        }
    }
    for state in sessions.into_values() {
        for task in state.tasks {
            task.abort();
        }
    }
}

async fn bind(config: &MediaConfig, port: u16) -> std::io::Result<Rc<UdpSocket>> {
    Ok(Rc::new(
        UdpSocket::bind(SocketAddr::new(config.bind_ip, port)).await?,
    ))
}

async fn create(
    config: &MediaConfig,
    counters: &Counters,
    a_port: u16,
    b_port: u16,
    a_expected: Option<SocketAddr>,
    b_expected: Option<SocketAddr>,
) -> std::io::Result<Session> {
    let (a_rtp, a_rtcp) = (bind(config, a_port).await?, bind(config, a_port + 1).await?);
    let (b_rtp, b_rtcp) = (bind(config, b_port).await?, bind(config, b_port + 1).await?);
    let mode = latching(config.latching);
    let ssrc = |port: u16| 0x5B00_0000 | u32::from(port);
    let bridge = Rc::new(RefCell::new(Bridge::new(
        Instant::now(),
        Leg::new(a_expected, mode, ssrc(a_port), 8000),
        Leg::new(b_expected, mode, ssrc(b_port), 8000),
        config.inactivity_timeout,
    )));
    let tasks = vec![
        tokio::task::spawn_local(forward_rtp(
            counters.clone(),
            bridge.clone(),
            Side::A,
            a_rtp.clone(),
            b_rtp.clone(),
        )),
        tokio::task::spawn_local(forward_rtp(
            counters.clone(),
            bridge.clone(),
            Side::B,
            b_rtp,
            a_rtp,
        )),
        tokio::task::spawn_local(forward_rtcp(
            counters.clone(),
            bridge.clone(),
            Side::A,
            a_rtcp.clone(),
            b_rtcp.clone(),
        )),
        tokio::task::spawn_local(forward_rtcp(
            counters.clone(),
            bridge.clone(),
            Side::B,
            b_rtcp,
            a_rtcp,
        )),
    ];
    Ok(Session { bridge, tasks })
}

/// Reads RTP arriving on `side`'s socket and sends it out of the other side's socket.
async fn forward_rtp(
    counters: Counters,
    bridge: Rc<RefCell<Bridge>>,
    side: Side,
    from: Rc<UdpSocket>,
    to: Rc<UdpSocket>,
) {
    let mut buffer = [0u8; 2048];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        // Drain everything queued: one wake-up for a burst of packets.
        loop {
            let (len, source) = match from.try_recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            let packet = &mut buffer[..len];
            if rtp::is_rtcp(packet) {
                // RTCP multiplexed on the RTP port (RFC 5761): pass it to the other side.
                let destination = bridge.borrow().leg(side.other()).destination();
                if let Some(destination) = destination {
                    inc(&counters.rtcp_forwarded);
                    let _ = to.try_send_to(packet, destination);
                }
                continue;
            }
            let forwarded = bridge
                .borrow_mut()
                .forward(Instant::now(), side, source, packet);
            match forwarded {
                Ok(destination) => {
                    inc(match side {
                        Side::A => &counters.rtp_to_callee,
                        Side::B => &counters.rtp_to_caller,
                    });
                    // A full socket buffer drops the packet: RTP tolerates loss, it never waits.
                    let _ = to.try_send_to(packet, destination);
                }
                Err(_) => inc(&counters.rtp_dropped),
            }
        }
    }
}

/// Forwards RTCP between the RTCP sockets (RTP port + 1) to the other side's RTP
/// destination port + 1, unchanged. (Generating our own reports per leg is future work.)
async fn forward_rtcp(
    counters: Counters,
    bridge: Rc<RefCell<Bridge>>,
    side: Side,
    from: Rc<UdpSocket>,
    to: Rc<UdpSocket>,
) {
    let mut buffer = [0u8; 2048];
    loop {
        let Ok((len, _source)) = from.recv_from(&mut buffer).await else {
            return;
        };
        let destination = bridge.borrow().leg(side.other()).destination();
        if let Some(destination) = destination {
            let rtcp_destination =
                SocketAddr::new(destination.ip(), destination.port().wrapping_add(1));
            inc(&counters.rtcp_forwarded);
            let _ = to.try_send_to(&buffer[..len], rtcp_destination);
        }
    }
}

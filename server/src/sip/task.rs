//! The signalling task: the one owner of the signalling core. Its loop is the STYLE.md shape:
//! drain outputs, re-arm the one timer, wait for exactly one input, feed it to the core.
//! UDP is read in batches with `recvmmsg` (quinn-udp), up to 32 datagrams per system call.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_signalling::core::{Core, Output, TrunkRegState};
use switchboard_signalling::media::{MediaCommand, MediaEvent};
use switchboard_signalling::peer::{Peer, Transport};
use switchboard_storage::Timestamp;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Command;
use super::persist::{Persist, Record};
use crate::events::EventHub;
use crate::media::MediaPlane;

/// Datagrams read per system call.
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Receive buffer per datagram: the largest UDP payload (a GRO-coalesced read also fits).
const DATAGRAM: usize = 65_535;

/// A UDP socket with its batching state.
pub(crate) struct Udp {
    pub(crate) socket: tokio::net::UdpSocket,
    pub(crate) state: quinn_udp::UdpSocketState,
}

/// Everything the task owns besides the core.
pub(crate) struct Io {
    pub(crate) udp: Option<Udp>,
    pub(crate) inbox: mpsc::Receiver<Command>,
    pub(crate) records: mpsc::Sender<Record>,
    pub(crate) media: MediaPlane,
    pub(crate) media_events: mpsc::Receiver<MediaEvent>,
    pub(crate) events: EventHub,
    pub(crate) shutdown: CancellationToken,
    /// Prompts are read from here (by a task of their own: the signalling task never waits).
    pub(crate) db: switchboard_storage::Db,
    /// Trunk registration states, for the control plane.
    pub(crate) trunk_registrations: super::TrunkRegistrations,
    /// Where IVR fetches send their answers (this task's own inbox).
    pub(crate) commands: mpsc::Sender<Command>,
    /// `ivr.http_allow_private`.
    pub(crate) http_allow_private: bool,
    /// Opens connections to trunk proxies over TCP and TLS.
    pub(crate) dialer: super::tcp::Dialer,
}

/// Loads a prompt for a [`MediaCommand::Play`] and hands it to the media plane; a prompt that
/// cannot be read is reported as played, so the flow goes on.
fn load_and_play(io: &Io, command: MediaCommand) {
    let MediaCommand::Play {
        session,
        id,
        tenant,
        ref prompt,
        ..
    } = command
    else {
        return;
    };
    let (db, media, prompt) = (io.db.clone(), io.media.clone(), prompt.clone());
    tokio::spawn(async move {
        match switchboard_storage::prompts::audio_by_name(&db, tenant, &prompt).await {
            Ok(pcm) => {
                let samples: Arc<[i16]> = pcm
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                media.play(command, samples);
            }
            Err(error) => {
                tracing::warn!(%error, %tenant, %prompt, "IVR prompt not played");
                media.play_failed(session, id);
            }
        }
    });
}

fn wall_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millis()).unwrap_or(0)
}

/// Runs until shutdown.
pub(crate) async fn run(mut core: Core, mut io: Io) {
    let mut connections = Connections::default();
    let mut buffers = vec![[0u8; DATAGRAM]; BATCH].into_boxed_slice();
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    // Trunks loaded at start register now.
    core.handle_timeout(Instant::now());
    loop {
        while let Some(output) = core.poll_output() {
            match output {
                Output::Transmit { peer, bytes } => transmit(&io, &mut connections, peer, &bytes),
                Output::Registration(change) => {
                    io.events.registration(&change);
                    record(
                        &io,
                        Record::Registration(Persist {
                            change,
                            wall_now: Timestamp::now(),
                            now: Instant::now(),
                        }),
                    );
                }
                Output::CallStarted(start) => {
                    io.events.call_started(&start);
                    record(&io, Record::CallStart(start));
                }
                Output::CallEnded(end) => {
                    io.events.call_ended(&end);
                    record(&io, Record::CallEnd(end));
                }
                Output::CallEvent(event) => io.events.call_updated(&event),
                Output::Http { session, request } => {
                    let commands = io.commands.clone();
                    super::http_node::spawn(session, request, io.http_allow_private, commands);
                }
                Output::TrunkRegistration(change) => {
                    if let Ok(mut map) = io.trunk_registrations.lock() {
                        if change.state == TrunkRegState::Unregistered {
                            map.remove(&change.trunk);
                        } else {
                            map.insert(change.trunk, (change.state, Timestamp::now()));
                        }
                    }
                }
                Output::Media(command @ MediaCommand::Play { .. }) => load_and_play(&io, command),
                Output::Media(command) => io.media.send(command),
            }
        }
        let deadline = core
            .poll_timeout()
            .map_or_else(far, tokio::time::Instant::from_std);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            () = io.shutdown.cancelled() => return,
            () = &mut sleep => core.handle_timeout(Instant::now()),
            readable = readable(io.udp.as_ref()) => {
                if let Err(error) = readable {
                    tracing::error!(%error, "SIP UDP socket failed");
                    return;
                }
                if let Some(udp) = &io.udp {
                    receive_batch(&mut core, udp, &mut buffers);
                }
            }
            Some(event) = io.media_events.recv() => core.handle_media_event(Instant::now(), wall_ms(), event),
            command = io.inbox.recv() => match command {
                None => return,
                Some(Command::Inbound { peer, bytes }) => core.handle_datagram(Instant::now(), wall_ms(), peer, &bytes),
                Some(Command::Connected { conn, sender }) => {
                    connections.open.insert(conn, sender);
                }
                Some(Command::Disconnected { conn }) => {
                    // A connection of ours to a proxy: what waits on it fails now, not at
                    // Timer B; the next request opens a new one.
                    let dialled = connections.closed(conn);
                    core.connection_closed(Instant::now(), wall_ms(), conn);
                    if let Some(peer) = dialled {
                        core.transport_failed(Instant::now(), wall_ms(), peer);
                    }
                }
                Some(Command::DialFailed { conn, peer }) => {
                    let _ = connections.closed(conn);
                    core.transport_failed(Instant::now(), wall_ms(), peer);
                }
                Some(Command::Directory { update, applied }) => {
                    core.apply(update);
                    // A trunk that registers sends its REGISTER at once.
                    core.handle_timeout(Instant::now());
                    let _ = applied.send(());
                }
                Some(Command::HttpDone { session, id, result }) => {
                    core.handle_http_done(Instant::now(), wall_ms(), session, (id, result));
                }
                Some(Command::Recording { call, request, reply }) => {
                    let _ = reply.send(core.control_recording(wall_ms(), call, request));
                }
            },
        }
    }
}

/// Queues a record for the writer without waiting.
fn record(io: &Io, record: Record) {
    if let Err(error) = io.records.try_send(record) {
        tracing::warn!(%error, "record writer is behind; record not persisted");
    }
}

async fn readable(udp: Option<&Udp>) -> std::io::Result<()> {
    match udp {
        Some(udp) => udp.socket.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads what the socket has (up to one batch) and hands every datagram to the core.
fn receive_batch(core: &mut Core, udp: &Udp, buffers: &mut [[u8; DATAGRAM]]) {
    let mut meta = [quinn_udp::RecvMeta::default(); BATCH];
    let mut slices: Vec<IoSliceMut<'_>> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
    let received = udp.socket.try_io(Interest::READABLE, || {
        udp.state.recv((&udp.socket).into(), &mut slices, &mut meta)
    });
    let count = match received {
        Ok(count) => count,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(error) => {
            tracing::debug!(%error, "SIP UDP receive failed");
            return;
        }
    };
    let (now, wall) = (Instant::now(), wall_ms());
    for (meta, buffer) in meta.iter().zip(buffers.iter()).take(count) {
        let peer = Peer {
            transport: Transport::Udp,
            addr: meta.addr,
            conn: None,
        };
        let stride = meta.stride.max(1);
        for datagram in buffer[..meta.len].chunks(stride) {
            core.handle_datagram(now, wall, peer, datagram);
        }
    }
}

/// The stream connections messages can be sent on.
#[derive(Default)]
struct Connections {
    /// Every open connection (accepted, or opened by us and maybe still connecting).
    open: HashMap<u64, mpsc::Sender<Bytes>>,
    /// The connections we opened, by where they go (one per proxy and transport).
    dialled: HashMap<(Transport, SocketAddr), u64>,
}

impl Connections {
    /// Forgets connection `conn`; returns the peer it went to if we had opened it.
    fn closed(&mut self, conn: u64) -> Option<Peer> {
        self.open.remove(&conn);
        let key = self
            .dialled
            .iter()
            .find_map(|(key, c)| (*c == conn).then_some(*key))?;
        self.dialled.remove(&key);
        Some(Peer {
            transport: key.0,
            addr: key.1,
            conn: None,
        })
    }
}

fn transmit(io: &Io, connections: &mut Connections, peer: Peer, bytes: &Bytes) {
    match peer.transport {
        Transport::Udp => {
            let Some(udp) = &io.udp else { return };
            // Never wait on a send: UDP is lossy and transactions retransmit.
            if let Err(error) = udp.socket.try_send_to(bytes, peer.addr) {
                tracing::debug!(to = %peer.addr, %error, "dropped outgoing SIP datagram");
            }
        }
        transport => {
            // A request to a trunk's proxy names no connection: ours to it, opened now if
            // there is none (RFC 3261 §18.1.1).
            let conn = match peer.conn {
                Some(conn) => Some(conn),
                None if matches!(transport, Transport::Tcp | Transport::Tls) => {
                    let key = (transport, peer.addr);
                    Some(match connections.dialled.get(&key) {
                        Some(conn) => *conn,
                        None => {
                            let (conn, sender, outbound) = io.dialer.next();
                            connections.open.insert(conn, sender);
                            connections.dialled.insert(key, conn);
                            io.dialer.dial(peer, conn, outbound);
                            conn
                        }
                    })
                }
                None => None,
            };
            let Some(sender) = conn.and_then(|conn| connections.open.get(&conn)) else {
                tracing::debug!(to = %peer.addr, "no connection for outgoing SIP message");
                return;
            };
            if sender.try_send(bytes.clone()).is_err() {
                tracing::debug!(to = %peer.addr, "connection queue full; SIP message dropped");
            }
        }
    }
}

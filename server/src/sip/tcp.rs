//! SIP over TCP and TLS (RFC 3261 §18.3, §26.2): one task per connection frames messages by
//! Content-Length and forwards them to the signalling task; replies come back through a
//! bounded channel. A TLS connection completes its handshake (within [`HANDSHAKE_TIMEOUT`])
//! and is then served the same way.
//! A double CRLF is a keepalive ping answered with a single CRLF (RFC 5626 §3.5.1, §4.4.1);
//! a connection idle for `idle_timeout`, over the message limit, or that can't be framed is
//! closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use rustls_pki_types::ServerName;
use switchboard_signalling::peer::{Peer, Transport};
use switchboard_sip::message::{Limits, frame_len};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::Command;
use super::dns::Dns;

/// Outbound messages queued per connection before new ones are dropped.
const OUTBOUND_QUEUE: usize = 256;
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection task shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) inbox: mpsc::Sender<Command>,
    pub(crate) limits: Limits,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) open: Arc<AtomicUsize>,
    pub(crate) next_id: Arc<AtomicU64>,
    pub(crate) shutdown: CancellationToken,
    /// For a TLS listener, its acceptor.
    pub(crate) tls: Option<TlsAcceptor>,
}

impl Shared {
    fn transport(&self) -> Transport {
        if self.tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept(listener: TcpListener, shared: Shared) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "SIP {} accept failed", shared.transport().as_str());
                continue;
            }
        };
        if shared.open.load(Ordering::Relaxed) >= shared.max_connections {
            tracing::warn!(%addr, "refusing SIP connection: sip.max_tcp_connections reached");
            continue;
        }
        let _ = stream.set_nodelay(true);
        shared.open.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            serve(stream, addr, id, &shared).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Runs one accepted connection (after its TLS handshake, for TLS).
async fn serve(stream: TcpStream, addr: SocketAddr, id: u64, shared: &Shared) {
    match &shared.tls {
        None => connection(stream, addr, id, shared).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => connection(stream, addr, id, shared).await,
                Ok(Err(error)) => {
                    tracing::debug!(%addr, %error, "SIP TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "SIP TLS handshake timed out");
                    return;
                }
            }
        }
    }
    let _ = shared.inbox.send(Command::Disconnected { conn: id }).await;
}

async fn connection<S>(stream: S, addr: SocketAddr, id: u64, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sender, outbound) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
    if shared
        .inbox
        .send(Command::Connected { conn: id, sender })
        .await
        .is_err()
    {
        return;
    }
    let peer = Peer {
        transport: shared.transport(),
        addr,
        conn: Some(id),
    };
    exchange(stream, peer, shared, outbound).await;
}

/// Frames what `peer`'s connection sends for the signalling task, and writes what the task
/// queues in `outbound`, until either side ends.
async fn exchange<S>(stream: S, peer: Peer, shared: &Shared, mut outbound: mpsc::Receiver<Bytes>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let addr = peer.addr;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buffer = BytesMut::with_capacity(8 * 1024);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            read = tokio::time::timeout(shared.idle_timeout, reader.read_buf(&mut buffer)) => {
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::debug!(%addr, "closing idle SIP TCP connection");
                        return;
                    }
                    Ok(Ok(_)) => {}
                }
                loop {
                    // Keepalives between messages: "\r\n\r\n" is a ping, a lone "\r\n" a pong.
                    if buffer.starts_with(b"\r\n\r\n") {
                        buffer.advance(4);
                        if writer.write_all(b"\r\n").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if buffer.starts_with(b"\r\n") {
                        if buffer.len() < 4 && buffer.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                            break; // maybe the start of a ping: wait for more
                        }
                        buffer.advance(2);
                        continue;
                    }
                    match frame_len(&buffer, &shared.limits) {
                        Ok(Some(length)) => {
                            let bytes = buffer.split_to(length).freeze();
                            if shared.inbox.send(Command::Inbound { peer, bytes }).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(%addr, %error, "closing SIP TCP connection: cannot frame");
                            return;
                        }
                    }
                }
            }
            message = outbound.recv() => match message {
                Some(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

/// Opens the connections of requests we send over TCP or TLS to a peer we have no
/// connection with (a trunk's proxy): RFC 3261 §18.1.1. A connection it opens is served like
/// an accepted one; it counts against no listener's limit (there is one per proxy).
#[derive(Clone)]
pub(crate) struct Dialer {
    /// What connections share (`tls` unused: the dialer has its own connector).
    pub(crate) shared: Shared,
    pub(crate) connector: TlsConnector,
    pub(crate) dns: Arc<Dns>,
}

/// Longest a connection to a proxy may take to open (TCP and TLS handshakes together).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Dialer {
    /// A new connection id and the queue of what is to be sent on it: the caller routes
    /// messages for the peer to the sender from now on, then calls [`Self::dial`].
    pub(crate) fn next(&self) -> (u64, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
        let (sender, outbound) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
        (
            self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            outbound,
        )
    }

    /// Opens connection `id` to `peer` (TCP or TLS) and serves it; what was queued in
    /// `outbound` meanwhile is sent once it is up. A connection that cannot be opened is
    /// reported as [`Command::DialFailed`], its end as [`Command::Disconnected`].
    pub(crate) fn dial(&self, peer: Peer, id: u64, outbound: mpsc::Receiver<Bytes>) {
        let dialer = self.clone();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, dialer.open(peer)).await;
            let stream = match opened {
                Ok(Ok(stream)) => stream,
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("no connection within {CONNECT_TIMEOUT:?}"),
                    };
                    tracing::warn!(to = %peer.addr, transport = peer.transport.as_str(), %error, "SIP connection to a trunk failed");
                    let _ = dialer
                        .shared
                        .inbox
                        .send(Command::DialFailed { conn: id, peer })
                        .await;
                    return;
                }
            };
            let peer = Peer {
                conn: Some(id),
                ..peer
            };
            match stream {
                Opened::Tcp(stream) => exchange(stream, peer, &dialer.shared, outbound).await,
                Opened::Tls(stream) => exchange(*stream, peer, &dialer.shared, outbound).await,
            }
            let _ = dialer
                .shared
                .inbox
                .send(Command::Disconnected { conn: id })
                .await;
        });
    }

    async fn open(&self, peer: Peer) -> anyhow::Result<Opened> {
        let stream = TcpStream::connect(peer.addr).await?;
        let _ = stream.set_nodelay(true);
        if peer.transport != Transport::Tls {
            return Ok(Opened::Tcp(stream));
        }
        // The trunk's host name, else the address itself.
        let name = self
            .dns
            .tls_name(peer.addr)
            .unwrap_or_else(|| peer.addr.ip().to_string());
        let server_name = ServerName::try_from(name)?;
        let stream = self.connector.connect(server_name, stream).await?;
        Ok(Opened::Tls(Box::new(stream)))
    }
}

/// A connection we opened.
enum Opened {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

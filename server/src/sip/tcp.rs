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
use switchboard_signalling::peer::{Peer, Transport};
use switchboard_sip::message::{Limits, frame_len};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Command;

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
    let (sender, mut outbound) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
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

//! SIP over WebSocket (RFC 7118) at `/sip` on the HTTP and HTTPS listeners: browsers (SIP.js,
//! JsSIP) and mobile softphones register and call through it.
//!
//! - The client must offer the `sip` subprotocol, which is echoed (§4); anything else gets
//!   400.
//! - Every text or binary frame carries exactly one SIP message (§5), handed to the
//!   signalling task like a message framed off a TCP connection. Replies go out as text
//!   frames, or binary where a body is not UTF-8.
//! - The connection's transport is `WS`, or `WSS` on the HTTPS listener. The core answers
//!   and sends requests down the connection the client registered on, never to the
//!   `.invalid` host in its Via or Contact.
//! - A frame holding only `CRLF CRLF` is an RFC 5626 keepalive, answered with `CRLF`.
//!   WebSocket pings are answered by the WebSocket layer.
//! - When the connection closes, the core drops its bindings and ends its calls.
//!
//! Connections share `sip.max_tcp_connections`, counted apart from TCP and TLS, and close
//! after `sip.tcp_idle_timeout` without a frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use switchboard_signalling::peer::{Peer, Transport};
use switchboard_signalling::stats::SipStats;
use tokio::sync::mpsc;

use super::Command;
use super::tcp::Shared;

/// Outbound messages queued per connection before new ones are dropped.
const OUTBOUND_QUEUE: usize = 256;

/// The WebSocket subprotocol of RFC 7118 §4.
const SUBPROTOCOL: &str = "sip";

/// Answers a WebSocket upgrade of `/sip` from `addr`; `secure` for the HTTPS listener.
pub(crate) fn upgrade(
    (shared, stats): (&Shared, &Arc<SipStats>),
    secure: bool,
    addr: SocketAddr,
    upgrade: WebSocketUpgrade,
) -> Result<Response, (StatusCode, &'static str)> {
    let upgrade = upgrade.protocols([SUBPROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            "SIP over WebSocket needs the `sip` subprotocol (RFC 7118 §4)",
        ));
    }
    if shared.open.fetch_add(1, Ordering::Relaxed) >= shared.max_connections {
        shared.open.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(%addr, "refusing SIP WebSocket: sip.max_tcp_connections reached");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many SIP connections (sip.max_tcp_connections)",
        ));
    }
    let transport = if secure {
        Transport::Wss
    } else {
        Transport::Ws
    };
    let (shared, stats) = (shared.clone(), stats.clone());
    let max = shared.limits.max_message_len;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let peer = Peer {
                transport,
                addr,
                conn: Some(id),
            };
            stats.websocket_connections.fetch_add(1, Ordering::Relaxed);
            connection(socket, peer, &shared).await;
            stats.websocket_connections.fetch_sub(1, Ordering::Relaxed);
            let _ = shared.inbox.send(Command::Disconnected { conn: id }).await;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        })
        .into_response())
}

/// What one received frame asks of the connection.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A SIP message for the core.
    Sip(Bytes),
    /// An RFC 5626 ping (`CRLF CRLF`): answer `CRLF`.
    Ping,
    /// Nothing to do (a pong, an empty frame, WebSocket control frames).
    Ignore,
    /// The peer closed.
    Close,
}

fn classify(message: Message) -> Frame {
    let bytes = match message {
        Message::Text(text) => Bytes::from(text),
        Message::Binary(bytes) => bytes,
        Message::Ping(_) | Message::Pong(_) => return Frame::Ignore,
        Message::Close(_) => return Frame::Close,
    };
    if bytes.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return if bytes.as_ref() == b"\r\n\r\n" {
            Frame::Ping
        } else {
            Frame::Ignore
        };
    }
    Frame::Sip(bytes)
}

/// A message of ours as a frame: text when it is UTF-8 (SIP is, but for odd bodies).
fn frame(bytes: Bytes) -> Message {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}

async fn connection(mut socket: WebSocket, peer: Peer, shared: &Shared) {
    let (sender, mut outbound) = mpsc::channel::<Bytes>(OUTBOUND_QUEUE);
    let conn = peer.conn.unwrap_or_default();
    if shared
        .inbox
        .send(Command::Connected { conn, sender })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(addr = %peer.addr, conn, transport = peer.transport.as_str(), "SIP WebSocket open");
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            received = tokio::time::timeout(shared.idle_timeout, socket.recv()) => {
                let message = match received {
                    Err(_) => {
                        tracing::debug!(addr = %peer.addr, "closing idle SIP WebSocket");
                        return;
                    }
                    Ok(None | Some(Err(_))) => return,
                    Ok(Some(Ok(message))) => message,
                };
                match classify(message) {
                    Frame::Sip(bytes) => {
                        if shared.inbox.send(Command::Inbound { peer, bytes }).await.is_err() {
                            return;
                        }
                    }
                    Frame::Ping => {
                        if socket.send(Message::Text("\r\n".into())).await.is_err() {
                            return;
                        }
                    }
                    Frame::Ignore => {}
                    Frame::Close => return,
                }
            }
            message = outbound.recv() => match message {
                Some(bytes) => {
                    if socket.send(frame(bytes)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_messages_keepalives_or_nothing() {
        let register = "REGISTER sip:example.com SIP/2.0\r\n\r\n";
        assert_eq!(
            classify(Message::Text(register.into())),
            Frame::Sip(Bytes::from_static(register.as_bytes()))
        );
        assert_eq!(
            classify(Message::Binary(Bytes::from_static(
                b"OPTIONS x SIP/2.0\r\n\r\n"
            ))),
            Frame::Sip(Bytes::from_static(b"OPTIONS x SIP/2.0\r\n\r\n"))
        );
        assert_eq!(classify(Message::Text("\r\n\r\n".into())), Frame::Ping);
        assert_eq!(classify(Message::Text("\r\n".into())), Frame::Ignore);
        assert_eq!(classify(Message::Text("".into())), Frame::Ignore);
        assert_eq!(classify(Message::Ping(Bytes::new())), Frame::Ignore);
        assert_eq!(classify(Message::Close(None)), Frame::Close);
    }

    #[test]
    fn our_messages_go_as_text_unless_they_are_not_utf8() {
        assert!(matches!(
            frame(Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n")),
            Message::Text(_)
        ));
        assert!(matches!(
            frame(Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n\xff")),
            Message::Binary(_)
        ));
    }
}

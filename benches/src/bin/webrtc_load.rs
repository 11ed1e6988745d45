//! WebRTC load for Switchboard: `calls` browser-like callers, each a str0m peer (full ICE,
//! DTLS-SRTP, PCMU) that signals over SIP over WebSocket, call a plain SIP phone whose RTP is
//! echoed, and stream 20 ms of audio every 20 ms for `secs`.
//!
//! ```text
//! webrtc-load --ws ws://127.0.0.1:8080/sip --sip 127.0.0.1:5060 --domain localhost \
//!     --caller 7001:secret-7001 --callee 7002:secret-7002 --calls 100 --secs 20 [--rate 50] \
//!     [--codec pcmu|opus]
//! ```
//!
//! With `--codec opus` the callers offer Opus alone (one 20 ms frame of a tone, encoded once
//! with libopus and sent every 20 ms), so Switchboard transcodes every call both ways.
//!
//! The callee is a SIP UA inside this process: it registers over UDP with digest, answers
//! every INVITE with PCMU on one echo socket, which sends each packet back where it came
//! from. Every packet a caller sends thus crosses Switchboard twice each way (browser leg
//! DTLS-SRTP in, plain RTP out to the echo, back in, SRTP out to the caller).
//!
//! Prints one JSON line: calls answered and connected (ICE and DTLS done), media packets
//! sent and received by the callers over the steady window, and set-up failures. Loopback
//! only; every call ends with BYE and the process exits when done.

// A command-line tool: its report is stdout, its complaints stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard_sip::digest::Challenge;
use switchboard_sip::message::{HeaderName, Limits, Message, Response};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[derive(Clone)]
struct Args {
    ws: String,
    sip: SocketAddr,
    domain: String,
    caller: (String, String),
    callee: (String, String),
    calls: usize,
    secs: u64,
    rate: f64,
    opus: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut map = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(key) = args.next() {
        let value = args.next().ok_or(format!("{key} needs a value"))?;
        map.insert(key.trim_start_matches("--").to_owned(), value);
    }
    let get = |k: &str| map.get(k).cloned().ok_or(format!("--{k} is required"));
    let pair = |v: String| -> Result<(String, String), String> {
        let (a, b) = v.split_once(':').ok_or("expected number:password")?;
        Ok((a.to_owned(), b.to_owned()))
    };
    Ok(Args {
        ws: get("ws")?,
        sip: get("sip")?.parse().map_err(|e| format!("--sip: {e}"))?,
        domain: get("domain").unwrap_or_else(|_| "localhost".into()),
        caller: pair(get("caller")?)?,
        callee: pair(get("callee")?)?,
        calls: get("calls")?.parse().map_err(|e| format!("--calls: {e}"))?,
        secs: get("secs")?.parse().map_err(|e| format!("--secs: {e}"))?,
        rate: get("rate")
            .unwrap_or_else(|_| "50".into())
            .parse()
            .map_err(|e| format!("--rate: {e}"))?,
        opus: match get("codec").unwrap_or_else(|_| "pcmu".into()).as_str() {
            "pcmu" => false,
            "opus" => true,
            other => return Err(format!("--codec: pcmu or opus, not {other}")),
        },
    })
}

#[derive(Default)]
struct Counters {
    answered: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("webrtc-load: {error}");
            std::process::exit(2);
        }
    };
    str0m::crypto::from_feature_flags().install_process_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(run(args));
    println!("{result}");
}

async fn run(args: Args) -> serde_json::Value {
    let counters = Arc::new(Counters::default());
    // The callee: register, then answer and echo until the end.
    let callee = UdpSocket::bind("127.0.0.1:0").await.expect("callee socket");
    let echo = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("echo socket"));
    register(&callee, &args).await;
    let callee = Arc::new(callee);
    tokio::spawn(answer(callee.clone(), echo.local_addr().unwrap(), args.sip));
    tokio::spawn(run_echo(echo));

    let started = Instant::now();
    let end = started
        + Duration::from_secs_f64(args.calls as f64 / args.rate)
        + Duration::from_secs(args.secs);
    // The steady window: every call set up, until the first hang-up.
    let window = (
        started + Duration::from_secs_f64(args.calls as f64 / args.rate) + Duration::from_secs(3),
        end - Duration::from_secs(1),
    );
    let mut tasks = Vec::new();
    let mut window_counts = None;
    for n in 0..args.calls {
        let at = started + Duration::from_secs_f64(n as f64 / args.rate);
        tokio::time::sleep_until(at.into()).await;
        tasks.push(tokio::spawn(call(args.clone(), n, end, counters.clone())));
    }
    tokio::time::sleep_until(window.0.into()).await;
    let before = (
        counters.sent.load(Ordering::Relaxed),
        counters.received.load(Ordering::Relaxed),
    );
    tokio::time::sleep_until(window.1.into()).await;
    let after = (
        counters.sent.load(Ordering::Relaxed),
        counters.received.load(Ordering::Relaxed),
    );
    window_counts.get_or_insert((before, after));
    for task in tasks {
        let _ = task.await;
    }
    let secs = (window.1 - window.0).as_secs_f64();
    let ((s0, r0), (s1, r1)) = window_counts.unwrap_or_default();
    let (sent, received) = (s1 - s0, r1 - r0);
    serde_json::json!({
        "calls": args.calls,
        "answered": counters.answered.load(Ordering::Relaxed),
        "connected": counters.connected.load(Ordering::Relaxed),
        "failed": counters.failed.load(Ordering::Relaxed),
        "window_secs": (secs * 10.0).round() / 10.0,
        "sent_pps": (sent as f64 / secs).round(),
        "received_pps": (received as f64 / secs).round(),
        "loss": if sent == 0 { 1.0 } else { (1.0 - received as f64 / sent as f64).max(0.0) },
    })
}

fn parse(bytes: &[u8]) -> Option<Message> {
    Message::parse(bytes, &Limits::default()).ok()
}

fn digest(response: &Response, (user, password): (&str, &str), method: &str, uri: &str) -> String {
    let value = response
        .headers
        .get(&HeaderName::WwwAuthenticate)
        .unwrap_or_default();
    let challenge = Challenge::parse(value).expect("a digest challenge");
    challenge.answer(user, password, method, uri, "bench", 1)
}

/// The callee's REGISTER, through its challenge.
async fn register(socket: &UdpSocket, args: &Args) {
    let local = socket.local_addr().unwrap();
    let (number, password) = (&args.callee.0, &args.callee.1);
    let text = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:{number}@{domain}>;tag=r\r\nTo: <sip:{number}@{domain}>\r\nCall-ID: reg-bench\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{number}@{local}>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n",
            domain = args.domain
        )
    };
    let mut buffer = vec![0u8; 65_535];
    socket
        .send_to(text(1, "").as_bytes(), args.sip)
        .await
        .unwrap();
    let (len, _) = socket.recv_from(&mut buffer).await.unwrap();
    let Some(Message::Response(challenge)) = parse(&buffer[..len]) else {
        panic!("no answer to REGISTER")
    };
    let uri = format!("sip:{}", args.domain);
    let auth = digest(&challenge, (number, password), "REGISTER", &uri);
    socket
        .send_to(
            text(2, &format!("Authorization: {auth}\r\n")).as_bytes(),
            args.sip,
        )
        .await
        .unwrap();
    let (len, _) = socket.recv_from(&mut buffer).await.unwrap();
    match parse(&buffer[..len]) {
        Some(Message::Response(ok)) if ok.status == 200 => {}
        other => panic!("REGISTER failed: {other:?}"),
    }
}

/// Answers every INVITE to the callee with PCMU on the echo socket; takes BYEs.
async fn answer(socket: Arc<UdpSocket>, echo: SocketAddr, server: SocketAddr) {
    let mut buffer = vec![0u8; 65_535];
    let mut tag = 0u64;
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let Some(Message::Request(request)) = parse(&buffer[..len]) else {
            continue;
        };
        let reply = |status: u16, reason: &str, to_tag: &str, body: &str| {
            let mut text = format!("SIP/2.0 {status} {reason}\r\n");
            for name in [
                HeaderName::Via,
                HeaderName::From,
                HeaderName::CallId,
                HeaderName::CSeq,
            ] {
                for value in request.headers.get_all(&name) {
                    text.push_str(&format!("{}: {value}\r\n", name.as_str()));
                }
            }
            let to = request.headers.get(&HeaderName::To).unwrap_or_default();
            let to = if to.contains("tag=") || to_tag.is_empty() {
                to.to_owned()
            } else {
                format!("{to};tag={to_tag}")
            };
            text.push_str(&format!(
                "To: {to}\r\nContact: <sip:echo@{}>\r\n",
                socket.local_addr().unwrap()
            ));
            if body.is_empty() {
                text.push_str("Content-Length: 0\r\n\r\n");
            } else {
                text.push_str(&format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            text
        };
        let response = match request.method.as_str() {
            "INVITE" => {
                tag += 1;
                let sdp = format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
                    echo.port()
                );
                reply(200, "OK", &format!("echo{tag}"), &sdp)
            }
            "ACK" => continue,
            _ => reply(200, "OK", "", ""),
        };
        let _ = socket.send_to(response.as_bytes(), from).await;
        let _ = server;
    }
}

/// Sends every datagram back to where it came from.
async fn run_echo(socket: Arc<UdpSocket>) {
    let mut buffer = vec![0u8; 2048];
    while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
        let _ = socket.send_to(&buffer[..len], from).await;
    }
}

/// One browser-like caller: INVITE over WebSocket, str0m media until `end`, BYE.
async fn call(args: Args, n: usize, end: Instant, counters: Arc<Counters>) {
    match call_inner(&args, n, end, &counters).await {
        Ok(()) => {}
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("call {n}: {error}");
        }
    }
}

async fn call_inner(
    args: &Args,
    n: usize,
    end: Instant,
    counters: &Counters,
) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = Rtc::builder().clear_codecs().set_rtp_mode(true);
    if args.opus {
        rtc.codec_config().enable_opus(true, false);
    } else {
        rtc.codec_config().enable_pcmu(true, false);
    }
    let mut rtc = rtc.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().ok_or("no offer")?;
    let offer = offer.to_sdp_string();

    let mut request = args
        .ws
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    let (number, password) = (&args.caller.0, &args.caller.1);
    let (domain, callee) = (&args.domain, &args.callee.0);
    let host = format!("c{n}.invalid");
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:{callee}@{domain} SIP/2.0\r\nVia: SIP/2.0/WS {host};branch=z9hG4bKi{n}x{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:{number}@{domain}>;tag=c{n}\r\nTo: <sip:{callee}@{domain}>\r\nCall-ID: bench-{n}\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:c{n}@{host};transport=ws>\r\nContent-Type: application/sdp\r\n{auth}\
             Content-Length: {}\r\n\r\n{offer}",
            offer.len()
        )
    };
    let uri = format!("sip:{callee}@{domain}");
    ws.send(Frame::text(invite(1, "")))
        .await
        .map_err(|e| e.to_string())?;
    let challenge = final_response(&mut ws).await?;
    ack(&mut ws, &challenge, (n, 1, &host)).await?;
    let auth = digest(&challenge, (number, password), "INVITE", &uri);
    ws.send(Frame::text(invite(
        2,
        &format!("Authorization: {auth}\r\n"),
    )))
    .await
    .map_err(|e| e.to_string())?;
    let ok = final_response(&mut ws).await?;
    if ok.status != 200 {
        return Err(format!("INVITE answered {}", ok.status));
    }
    ack(&mut ws, &ok, (n, 2, &host)).await?;
    counters.answered.fetch_add(1, Ordering::Relaxed);
    accept(&mut rtc, pending, &ok)?;

    let (pt, payload, ticks) = frame(&rtc, args.opus)?;
    media(&mut rtc, &socket, (mid, pt, payload, ticks), end, counters).await;

    let to = ok.headers.get(&HeaderName::To).unwrap_or_default();
    let bye = format!(
        "BYE sip:switchboard@{domain} SIP/2.0\r\nVia: SIP/2.0/WS {host};branch=z9hG4bKb{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:{number}@{domain}>;tag=c{n}\r\nTo: {to}\r\nCall-ID: bench-{n}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    ws.send(Frame::text(bye)).await.map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(5), final_response(&mut ws)).await;
    let _ = ws.close(None).await;
    Ok(())
}

fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, ok: &Response) -> Result<(), String> {
    let answer = SdpAnswer::from_sdp_string(&String::from_utf8_lossy(&ok.body))
        .map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next final response on the WebSocket.
async fn final_response(ws: &mut Socket) -> Result<Response, String> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .map_err(|_| "no response in 15 s".to_owned())?
            .ok_or("WebSocket closed")?
            .map_err(|e| e.to_string())?;
        let Frame::Text(text) = frame else { continue };
        if let Some(Message::Response(response)) = parse(text.as_bytes())
            && response.status >= 200
        {
            return Ok(response);
        }
    }
}

async fn ack(
    ws: &mut Socket,
    response: &Response,
    (n, cseq, host): (usize, u32, &str),
) -> Result<(), String> {
    let to = response.headers.get(&HeaderName::To).unwrap_or_default();
    let from = response.headers.get(&HeaderName::From).unwrap_or_default();
    let call_id = response
        .headers
        .get(&HeaderName::CallId)
        .unwrap_or_default();
    let ack = format!(
        "ACK sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS {host};branch=z9hG4bKa{n}x{cseq}\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    );
    ws.send(Frame::text(ack)).await.map_err(|e| e.to_string())
}

/// The frame a caller sends every 20 ms: its payload type, payload and RTP clock ticks.
fn frame(rtc: &Rtc, opus: bool) -> Result<(str0m::media::Pt, Arc<[u8]>, u64), String> {
    if !opus {
        return Ok((0.into(), vec![0xff_u8; 160].into(), 160));
    }
    let pt = rtc
        .codec_config()
        .find(|p| p.spec().codec == str0m::format::Codec::Opus)
        .map(|p| p.pt())
        .ok_or("no Opus negotiated")?;
    let mut encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .map_err(|e| e.to_string())?;
    let tone: Vec<i16> = (0..960)
        .map(|i| ((f64::from(i) * 400.0 * std::f64::consts::TAU / 48_000.0).sin() * 8000.0) as i16)
        .collect();
    let mut out = vec![0u8; 1275];
    let length = encoder.encode(&tone, &mut out).map_err(|e| e.to_string())?;
    out.truncate(length);
    Ok((pt, out.into(), 960))
}

/// Runs the call's str0m peer: one frame every 20 ms once connected, until `end`.
async fn media(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    (mid, pt, payload, ticks): (Mid, str0m::media::Pt, Arc<[u8]>, u64),
    end: Instant,
    counters: &Counters,
) {
    let mut buffer = vec![0u8; 2048];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let (mut seq, mut connected) = (0u64, false);
    loop {
        // Drain str0m until it waits.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(at)) => break at,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::Connected)) => {
                    connected = true;
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Output::Event(Event::RtpPacket(_))) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        };
        if Instant::now() >= end {
            return;
        }
        let timeout = timeout.min(end);
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let Ok((len, from)) = received else { return };
                let local = socket.local_addr().unwrap();
                if let Ok(receive) = Receive::new(Protocol::Udp, from, local, &buffer[..len]) {
                    let _ = rtc.handle_input(Input::Receive(Instant::now(), receive));
                }
            }
            () = tokio::time::sleep_until(timeout.into()) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
            _ = tick.tick() => {
                if connected {
                    seq += 1;
                    let now = Instant::now();
                    let mut direct = rtc.direct_api();
                    if let Some(stream) = direct.stream_tx_by_mid(mid, None) {
                        let time = u32::try_from(seq * ticks % (1 << 32)).unwrap_or(0);
                        stream.write_rtp(RtpWrite::new(pt, seq.into(), time, now, payload.clone()));
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
}

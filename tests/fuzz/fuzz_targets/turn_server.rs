//! The TURN server state machine under hostile clients and peers. The harness allocates
//! (with valid credentials), opens a permission and binds a channel, then plays the input as a
//! script: raw client packets, requests whose attributes come from the input but which the
//! harness signs (so the fuzzer reaches every authenticated path), peer datagrams, and time
//! steps. Nothing may panic; every relay the core opens is closed exactly once; the quota it
//! takes is given back.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard_turn::policy::PeerPolicy;
use switchboard_turn::server::{
    Config, FiveTuple, Host, Output, PEER_HEADROOM, PEER_TAILROOM, Protocol, QuotaDenial, Server,
};
use switchboard_turn::stun::{
    self, AddressFamily, Class, LongTermKey, Message, MessageBuilder, Method, PasswordAlgorithm,
    TransactionId,
};

const REALM: &str = "fuzz";

#[derive(Default)]
struct FuzzHost {
    open: HashSet<SocketAddr>,
    held: u32,
    next_port: u16,
}

impl Host for FuzzHost {
    fn user_key(&self, username: &str, algorithm: PasswordAlgorithm) -> Option<LongTermKey> {
        (username == "user").then(|| stun::long_term_key(algorithm, "user", REALM, "pw"))?
    }
    fn acquire(&mut self, _user: &str) -> Result<(), QuotaDenial> {
        if self.held >= 4 {
            return Err(QuotaDenial::User);
        }
        self.held += 1;
        Ok(())
    }
    fn release(&mut self, _user: &str) {
        assert!(self.held > 0, "released more than acquired");
        self.held -= 1;
    }
    fn bind_relay(&mut self, _: &FiveTuple, family: AddressFamily, _: bool) -> Option<SocketAddr> {
        if family != AddressFamily::IPV4 {
            return None;
        }
        self.next_port = self.next_port.wrapping_add(1);
        let relay = SocketAddr::from(([198, 51, 100, 1], self.next_port));
        assert!(self.open.insert(relay), "relay opened twice");
        Some(relay)
    }
    fn close_relay(&mut self, relay: SocketAddr) {
        assert!(self.open.remove(&relay), "closed a relay that was not open");
    }
}

fn five(which: u8) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::from(([192, 0, 2, 1 + which % 2], 5000)),
        server: "192.0.2.100:3478".parse().unwrap(),
        protocol: if which & 4 == 0 { Protocol::Udp } else { Protocol::Tcp },
    }
}

/// A request of `method` with `attributes` (raw TLVs from the input) signed for the test user.
fn signed(method: Method, id: u8, attributes: &[u8], nonce: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut builder = MessageBuilder::new(&mut buf, method, Class::Request, TransactionId([id; 12]));
    let mut rest = attributes;
    while let [t0, t1, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let _ = builder.add_raw(u16::from_be_bytes([*t0, *t1]), &tail[..len]);
        rest = &tail[len..];
    }
    let key = stun::long_term_key(PasswordAlgorithm::MD5, "user", REALM, "pw").unwrap();
    let _ = builder.add_username("user");
    let _ = builder.add_realm(REALM);
    let _ = builder.add_nonce(nonce);
    let _ = builder.add_message_integrity(key.as_bytes());
    buf
}

/// The nonce of a 401/438 answer, if it is one.
fn nonce_of(reply: &[u8]) -> Option<String> {
    Some(Message::decode(reply).ok()?.nonce().ok()??.to_owned())
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let config = Config {
        realm: REALM.into(),
        rest_secret: Some(b"secret".to_vec()),
        max_bandwidth: 5_000,
        policy: PeerPolicy::new(vec!["192.0.2.0/24".parse().unwrap()], vec![]),
        ..Config::default()
    };
    let mut server = Server::new(config, now, 1_700_000_000);
    let mut host = FuzzHost::default();
    let mut nonce = String::new();
    let mut id = 0u8;
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();

    let mut request = |server: &mut Server,
                       host: &mut FuzzHost,
                       now: Instant,
                       which: u8,
                       method: Method,
                       attrs: &[u8]| {
        for _ in 0..2 {
            id = id.wrapping_add(1);
            let bytes = signed(method, id, attrs, &nonce);
            match server.handle_client(now, five(which), &bytes, host) {
                Output::Reply(reply) => match nonce_of(reply) {
                    Some(fresh) if fresh != nonce => nonce = fresh,
                    _ => return,
                },
                _ => return,
            }
        }
    };
    // Allocate, permit the peer and bind 0x4000 to it, for the first client.
    request(&mut server, &mut host, now, 0, Method::ALLOCATE, &[0, 0x19, 4, 17, 0, 0, 0]);
    let peer_attr = {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Method::BINDING, Class::Request, TransactionId([0; 12]));
        b.add_xor_peer_address(peer).unwrap();
        buf[20..].to_vec()
    };
    let mut channel = vec![0, 0x0C, 4, 0x40, 0, 0, 0];
    channel.extend([peer_attr[0], peer_attr[1], 8]);
    channel.extend(&peer_attr[4..12]);
    request(&mut server, &mut host, now, 0, Method::CHANNEL_BIND, &channel);

    let mut buf = vec![0u8; PEER_HEADROOM + 600 + PEER_TAILROOM];
    let mut script = data;
    while let [op, which, len, rest @ ..] = script {
        let len = usize::from(*len).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        script = tail;
        match op % 6 {
            0 => {
                let _ = server.handle_client(now, five(*which), chunk, &mut host);
            }
            1 => {
                let method = [
                    Method::ALLOCATE,
                    Method::REFRESH,
                    Method::CREATE_PERMISSION,
                    Method::CHANNEL_BIND,
                    Method::BINDING,
                ][usize::from(*which) % 5];
                request(&mut server, &mut host, now, which / 5, method, chunk);
            }
            2 => {
                buf[PEER_HEADROOM..PEER_HEADROOM + chunk.len()].copy_from_slice(chunk);
                let relay = host.open.iter().next().copied();
                if let Some(relay) = relay {
                    let from = if which % 2 == 0 { peer } else { "203.0.113.1:9".parse().unwrap() };
                    let _ = server.handle_peer(now, relay, from, &mut buf, chunk.len());
                }
            }
            3 => {
                now += Duration::from_millis(u64::from(*which) * 1000 + len as u64);
                server.handle_timeout(now, &mut host);
            }
            4 => server.connection_closed(&five(*which), &mut host),
            _ => {
                // ChannelData on the bound channel with the chunk as payload.
                let mut frame = vec![0x40, 0, 0, chunk.len() as u8];
                frame.extend_from_slice(chunk);
                let _ = server.handle_client(now, five(*which), &frame, &mut host);
            }
        }
        if let Some(deadline) = server.poll_timeout() {
            assert!(deadline >= start);
        }
    }
    // Every allocation expires within the longest lifetime: nothing is left behind.
    now += Duration::from_secs(3_601 + 600);
    server.handle_timeout(now, &mut host);
    now += Duration::from_secs(1);
    server.handle_timeout(now, &mut host);
    assert!(host.open.is_empty(), "relays left open");
    assert_eq!(host.held, 0, "quota not given back");
    assert_eq!(server.stats().allocations, 0);
});

//! Calls through the B2BUA on virtual time: Alice (1001) calls Bob (1002), whose phones are
//! simulated peers. Each test reads what the core sends to whom.

// Virtual time needs one real origin.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;

use switchboard_media::sdp::{Direction, Sdp};
use switchboard_sip::digest::Challenge;
use switchboard_sip::message::{Limits, Message};

use super::*;
use crate::directory::{Extension, Forwarding, Tenant};
use crate::media::MediaEvent;

const WALL: u64 = 1_795_305_600_000;

fn peer(last: u8) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from(([192, 0, 2, last], 5060)),
        conn: None,
    }
}

fn sdp(ip: &str, port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
}

struct World {
    core: Core,
    now: Instant,
    alice: Peer,
    bob: Vec<Peer>,
    /// Everything the core output, in order.
    outputs: Vec<Output>,
    /// Numbers Alice's calls (branches and Call-IDs).
    calls: u32,
}

impl World {
    fn new(bob_phones: u8, config: CoreConfig) -> Self {
        let mut core = Core::new(config, [1; 32], [2; 32]);
        let tenant = Uuid::new_v4();
        core.apply(Update::TenantUpsert(Tenant {
            id: tenant,
            domain: "example.com".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: None,
            daily_outbound_minutes: None,
        }));
        core.set_default_domain("example.com");
        core.set_local("203.0.113.1".parse().unwrap(), &[(Transport::Udp, 5060)]);
        core.set_webrtc_certificate(crate::media::Certificate::generate().unwrap());
        for (number, secret) in [("1001", "alice-pass"), ("1002", "bob-pass")] {
            core.apply(Update::ExtensionUpsert(Extension {
                id: Uuid::new_v4(),
                tenant_id: tenant,
                number: number.into(),
                display_name: format!("Ext {number}"),
                secret: secret.into(),
                record_calls: false,
                outbound_allowed: number == "1001",
                caller_id: None,
                forward: Forwarding::default(),
            }));
        }
        let mut world = Self {
            core,
            now: Instant::now(),
            alice: peer(10),
            bob: (0..bob_phones).map(|i| peer(20 + i)).collect(),
            outputs: Vec::new(),
            calls: 0,
        };
        for (i, phone) in world.bob.clone().into_iter().enumerate() {
            world.register(phone, "1002", "bob-pass", i);
        }
        world.outputs.clear();
        world
    }

    fn send(&mut self, from: Peer, text: &str) {
        self.core
            .handle_datagram(self.now, WALL, from, text.as_bytes());
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.core.poll_output() {
            self.outputs.push(output);
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= end) {
            self.now = at.max(self.now);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    /// Messages the core sent to `to` since the last call, parsed.
    fn take_sent(&mut self, to: Peer) -> Vec<Message> {
        let mut out = Vec::new();
        self.outputs.retain(|o| match o {
            Output::Transmit { peer, bytes } if *peer == to => {
                out.push(Message::parse(bytes, &Limits::default()).unwrap());
                false
            }
            _ => true,
        });
        out
    }

    fn responses(&mut self, to: Peer) -> Vec<Response> {
        self.take_sent(to)
            .into_iter()
            .filter_map(|m| match m {
                Message::Response(r) => Some(r),
                Message::Request(_) => None,
            })
            .collect()
    }

    fn statuses(&mut self, to: Peer) -> Vec<u16> {
        self.responses(to).into_iter().map(|r| r.status).collect()
    }

    fn requests(&mut self, to: Peer) -> Vec<Request> {
        self.take_sent(to)
            .into_iter()
            .filter_map(|m| {
                if let Message::Request(r) = m {
                    Some(r)
                } else {
                    None
                }
            })
            .collect()
    }

    fn register(&mut self, phone: Peer, number: &str, password: &str, index: usize) {
        let text = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKreg{number}{index}{cseq}\r\nMax-Forwards: 70\r\n\
                 From: <sip:{number}@example.com>;tag=r{index}\r\nTo: <sip:{number}@example.com>\r\nCall-ID: reg-{number}-{index}\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <sip:{number}@{}>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n",
                phone.addr, phone.addr
            )
        };
        self.send(phone, &text(1, ""));
        let challenge = self.challenge(phone);
        let answer = challenge.answer(number, password, "REGISTER", "sip:example.com", "cn", 1);
        self.send(phone, &text(2, &format!("Authorization: {answer}\r\n")));
        assert_eq!(self.statuses(phone).last(), Some(&200));
    }

    fn challenge(&mut self, to: Peer) -> Challenge {
        let responses: Vec<Response> = self.responses(to);
        let last = responses.last().expect("a challenge");
        assert_eq!(last.status, 401);
        Challenge::parse(last.headers.get(&HeaderName::WwwAuthenticate).unwrap()).unwrap()
    }

    fn invite_text(&self, cseq: u32, auth: &str, to_number: &str) -> String {
        let body = sdp("192.0.2.10", 4000, "sendrecv");
        let n = self.calls;
        format!(
            "INVITE sip:{to_number}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv{n}x{cseq}\r\nMax-Forwards: 70\r\n\
             From: \"Alice\" <sip:1001@example.com>;tag=alice\r\nTo: <sip:{to_number}@example.com>\r\nCall-ID: call-{n}@alice\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:1001@192.0.2.10:5060>\r\nContent-Type: application/sdp\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The ACK Alice sends for a 3xx-6xx to her INVITE (§17.1.1.3).
    fn ack_failure(&mut self, cseq: u32, to_number: &str, response: &Response) {
        let n = self.calls;
        let to = response.headers.get(&HeaderName::To).unwrap();
        let ack = format!(
            "ACK sip:{to_number}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv{n}x{cseq}\r\nMax-Forwards: 70\r\n\
             From: \"Alice\" <sip:1001@example.com>;tag=alice\r\nTo: {to}\r\nCall-ID: call-{n}@alice\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let alice = self.alice;
        self.core
            .handle_datagram(self.now, WALL, alice, ack.as_bytes());
        self.drain();
    }

    /// Alice INVITEs `to_number`, through the challenge (which she acknowledges).
    fn call(&mut self, to_number: &str) {
        self.calls += 1;
        let alice = self.alice;
        self.send(alice, &self.invite_text(1, "", to_number));
        let responses: Vec<Response> = self.responses(alice);
        let unauthorized = responses.last().expect("a challenge").clone();
        assert_eq!(unauthorized.status, 401);
        self.ack_failure(1, to_number, &unauthorized);
        let challenge = Challenge::parse(
            unauthorized
                .headers
                .get(&HeaderName::WwwAuthenticate)
                .unwrap(),
        )
        .unwrap();
        let answer = challenge.answer(
            "1001",
            "alice-pass",
            "INVITE",
            &format!("sip:{to_number}@example.com"),
            "cn",
            1,
        );
        self.send(
            alice,
            &self.invite_text(2, &format!("Authorization: {answer}\r\n"), to_number),
        );
    }

    /// A response from Bob's phone to `request`, with Bob's tag, contact and optional SDP.
    fn answer_from(&mut self, phone: Peer, request: &Request, status: u16, body: Option<String>) {
        self.answer_with(phone, request, (status, body), &[]);
    }

    /// Like `answer_from`, with `extra` headers.
    fn answer_with(
        &mut self,
        phone: Peer,
        request: &Request,
        (status, body): (u16, Option<String>),
        extra: &[(&str, &str)],
    ) {
        let mut response = transaction::response_to(request, status, "Whatever");
        for (name, value) in extra {
            response.headers.push(HeaderName::parse(name), *value);
        }
        let to = response.headers.get(&HeaderName::To).unwrap().to_owned();
        if !to.contains("tag=") {
            response
                .headers
                .set(HeaderName::To, format!("{to};tag=bob{}", phone.addr.ip()));
        }
        response
            .headers
            .push(HeaderName::Contact, format!("<sip:1002@{}>", phone.addr));
        if let Some(body) = body {
            response
                .headers
                .push(HeaderName::ContentType, "application/sdp");
            response.body = Bytes::from(body);
        }
        let bytes = response.to_bytes();
        self.core.handle_datagram(self.now, WALL, phone, &bytes);
        self.drain();
    }

    fn ended(&self) -> Option<&CallEnd> {
        self.outputs.iter().find_map(|o| {
            if let Output::CallEnded(end) = o {
                Some(end)
            } else {
                None
            }
        })
    }

    fn media(&self) -> Vec<&MediaCommand> {
        self.outputs
            .iter()
            .filter_map(|o| {
                if let Output::Media(m) = o {
                    Some(m)
                } else {
                    None
                }
            })
            .collect()
    }

    /// The tenant of example.com.
    fn tenant(&self) -> Uuid {
        self.core
            .directory
            .tenant_for_host("example.com")
            .unwrap()
            .id
    }

    /// The id of extension `number`.
    fn extension_id(&self, number: &str) -> Uuid {
        let tenant = self.tenant();
        self.core
            .directory
            .extension_by_number(tenant, number)
            .unwrap()
            .id
    }

    /// The session of the first call the core opened.
    fn session(&self) -> crate::media::SessionId {
        self.media()
            .iter()
            .find_map(|m| match m {
                MediaCommand::Create { session, .. } => Some(*session),
                _ => None,
            })
            .expect("a media session")
    }

    /// The start of the first call record.
    fn started(&self) -> CallStart {
        self.outputs
            .iter()
            .find_map(|o| match o {
                Output::CallStarted(start) => Some(start.clone()),
                _ => None,
            })
            .expect("a call record")
    }

    /// An in-dialog request from Alice for the answered call.
    fn alice_in_dialog(&self, method: &str, cseq: u32, to_tag: &str, body: &str) -> String {
        format!(
            "{method} sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\n\
             From: \"Alice\" <sip:1001@example.com>;tag=alice\r\nTo: <sip:1002@example.com>;tag={to_tag}\r\nCall-ID: call-{}@alice\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:1001@192.0.2.10:5060>\r\n{}Content-Length: {}\r\n\r\n{body}",
            self.calls,
            if body.is_empty() {
                ""
            } else {
                "Content-Type: application/sdp\r\n"
            },
            body.len()
        )
    }
}

/// Alice calls, Bob answers; returns the To tag Alice sees.
fn answered_call(world: &mut World) -> String {
    world.call("1002");
    answer(world)
}

/// Bob answers Alice's call; returns the To tag Alice sees.
fn answer(world: &mut World) -> String {
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 180, None);
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    alice_acks(world)
}

#[test]
fn call_is_anchored_answered_and_hung_up_by_the_caller() {
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let alice = world.alice;
    assert_eq!(world.statuses(alice), [100]);
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    // Our own dialog and our own media address towards Bob.
    assert_ne!(
        invite.headers.get(&HeaderName::CallId),
        Some("call-1@alice")
    );
    let offer = Sdp::parse(&invite.body).unwrap();
    assert_eq!(
        crate::media::audio_address(&offer)
            .map(|a| a.ip().to_string())
            .as_deref(),
        Some("203.0.113.1")
    );
    assert!(
        invite
            .headers
            .get(&HeaderName::From)
            .unwrap()
            .contains("sip:1001@example.com")
    );
    assert!(
        matches!(world.outputs.iter().find(|o| matches!(o, Output::CallStarted(_))), Some(Output::CallStarted(start)) if start.to_number == "1002")
    );

    world.answer_from(bob, &invite, 180, None);
    assert_eq!(world.statuses(alice), [180]);
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    // Bob gets an ACK from us; Alice gets our 200 with our address.
    assert_eq!(
        world
            .requests(bob)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Ack]
    );
    let ok: Vec<Message> = world.take_sent(alice);
    let Some(Message::Response(ok)) = ok.last() else {
        panic!("no 200")
    };
    assert_eq!(ok.status, 200);
    let answer = Sdp::parse(&ok.body).unwrap();
    let a_port = crate::media::audio_address(&answer).unwrap().port();
    let Some(&&MediaCommand::Create {
        a_port: created,
        a_expected,
        ..
    }) = world.media().first()
    else {
        panic!()
    };
    assert_eq!(
        (created, a_expected),
        (a_port, Some("192.0.2.10:4000".parse().unwrap()))
    );
    assert!(world.media().iter().any(|m| matches!(m, MediaCommand::Update { a_side: false, expected: Some(e), .. } if e.to_string() == "192.0.2.20:6000")));

    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = world.alice_in_dialog("ACK", 2, &tag, "");
    world.send(alice, &ack);
    world.advance(Duration::from_secs(5));
    assert!(
        world.take_sent(alice).is_empty(),
        "no 200 retransmissions after the ACK"
    );

    let bye = world.alice_in_dialog("BYE", 3, &tag, "");
    world.send(alice, &bye);
    assert_eq!(world.statuses(alice), [200]);
    let to_bob = world.requests(bob);
    assert_eq!(
        to_bob.iter().map(|r| r.method.clone()).collect::<Vec<_>>(),
        [Method::Bye]
    );
    let end = world.ended().expect("CDR end");
    assert_eq!(
        (end.disposition, end.cause, end.side),
        (Disposition::Answered, "normal_clearing", HangupSide::Caller)
    );
    assert!(end.answered_wall_ms.is_some());
    assert!(matches!(
        world.media().last(),
        Some(MediaCommand::Destroy { .. })
    ));
    assert_eq!(world.core.call_count(), 0);
}

#[test]
fn callee_hangs_up() {
    let mut world = World::new(1, CoreConfig::default());
    let tag = answered_call(&mut world);
    let bob = world.bob[0];
    // Bob's BYE in his dialog with us: From=Bob(tag), To=us(our B-side tag).
    let session = world.core.calls.any_session().unwrap();
    let b_from_tag = world.core.calls.b_dialog(session).unwrap();
    let bye = format!(
        "BYE sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbobbye\r\nMax-Forwards: 70\r\n\
         From: <sip:1002@example.com>;tag={}\r\nTo: <sip:1001@example.com>;tag={}\r\nCall-ID: {}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        bob.addr, b_from_tag.remote_tag, b_from_tag.local_tag, b_from_tag.call_id
    );
    world.send(bob, &bye);
    assert_eq!(world.statuses(bob), [200]);
    let to_alice = world.requests(world.alice);
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0].method, Method::Bye);
    assert_eq!(
        to_alice[0]
            .headers
            .get(&HeaderName::From)
            .map(|f| f.contains(&tag)),
        Some(true)
    );
    assert_eq!(world.ended().map(|e| e.side), Some(HangupSide::Callee));
}

#[test]
fn busy_callee_gives_486_and_a_busy_record() {
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().unwrap();
    world.answer_from(bob, &invite, 486, None);
    assert_eq!(world.statuses(world.alice), [100, 486]);
    let end = world.ended().unwrap();
    assert_eq!(
        (end.disposition, end.cause),
        (Disposition::Busy, "user_busy")
    );
    assert!(end.answered_wall_ms.is_none());
}

#[test]
fn forks_race_the_first_answer_wins_and_the_others_are_cancelled() {
    let mut world = World::new(2, CoreConfig::default());
    world.call("1002");
    let (desk, soft) = (world.bob[0], world.bob[1]);
    let to_desk = world
        .requests(desk)
        .pop()
        .expect("INVITE to the desk phone");
    let to_soft = world.requests(soft).pop().expect("INVITE to the softphone");
    world.answer_from(desk, &to_desk, 180, None);
    world.answer_from(soft, &to_soft, 180, None);
    world.answer_from(
        soft,
        &to_soft,
        200,
        Some(sdp("192.0.2.21", 7000, "sendrecv")),
    );
    assert_eq!(
        world
            .requests(soft)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Ack]
    );
    assert_eq!(
        world
            .requests(desk)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Cancel],
        "the loser is cancelled"
    );
    // The desk phone answered at the same moment: it is acknowledged and hung up.
    world.answer_from(
        desk,
        &to_desk,
        200,
        Some(sdp("192.0.2.20", 6000, "sendrecv")),
    );
    assert_eq!(
        world
            .requests(desk)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Ack, Method::Bye]
    );
    assert!(world.statuses(world.alice).contains(&200));
    assert!(world.ended().is_none(), "the call itself is up");
}

#[test]
fn caller_cancel_ends_with_487_and_cancels_the_forks() {
    let mut world = World::new(2, CoreConfig::default());
    world.call("1002");
    let invites: Vec<Request> = world
        .bob
        .clone()
        .into_iter()
        .map(|phone| world.requests(phone).pop().expect("INVITE"))
        .collect();
    // The first phone rings; the second has not answered anything yet.
    world.answer_from(world.bob[0], &invites[0], 180, None);
    world.take_sent(world.alice);
    let cancel = "CANCEL sip:1002@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1x2\r\nMax-Forwards: 70\r\n\
                  From: \"Alice\" <sip:1001@example.com>;tag=alice\r\nTo: <sip:1002@example.com>\r\nCall-ID: call-1@alice\r\n\
                  CSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n";
    world.send(world.alice, cancel);
    let mut statuses = world.statuses(world.alice);
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 487]);
    let methods = |world: &mut World, phone| {
        world
            .requests(phone)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>()
    };
    let (ringing, silent) = (world.bob[0], world.bob[1]);
    assert_eq!(methods(&mut world, ringing), [Method::Cancel]);
    // §9.1: the silent phone's CANCEL waits for its provisional response.
    assert_eq!(methods(&mut world, silent), []);
    world.answer_from(silent, &invites[1], 100, None);
    assert_eq!(methods(&mut world, silent), [Method::Cancel]);
    let end = world.ended().unwrap();
    assert_eq!(
        (end.disposition, end.side),
        (Disposition::Cancelled, HangupSide::Caller)
    );
}

#[test]
fn ring_timeout_gives_480_and_no_answer() {
    let config = CoreConfig {
        ring_timeout: Duration::from_secs(20),
        ..CoreConfig::default()
    };
    let mut world = World::new(1, config);
    world.call("1002");
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().unwrap();
    world.answer_from(bob, &invite, 180, None);
    world.take_sent(world.alice);
    world.advance(Duration::from_secs(21));
    let statuses = world.statuses(world.alice);
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 480),
        "{statuses:?} (480, and its retransmissions until ACK)"
    );
    assert!(
        world
            .requests(bob)
            .iter()
            .any(|r| r.method == Method::Cancel)
    );
    let end = world.ended().unwrap();
    assert_eq!(
        (end.disposition, end.cause, end.side),
        (Disposition::NoAnswer, "no_answer", HangupSide::System)
    );
}

#[test]
fn refused_calls_get_their_status_and_a_record_that_says_why() {
    let mut world = World::new(0, CoreConfig::default());
    world.call("1002");
    assert_eq!(
        world.statuses(world.alice).last(),
        Some(&480),
        "Bob has no phone registered"
    );
    let end = world.ended().expect("a CDR").clone();
    assert_eq!(
        (end.disposition, end.cause, end.side),
        (
            Disposition::Failed,
            "user_not_registered",
            HangupSide::System
        )
    );
    assert_eq!(end.start.to_number, "1002");
    assert_eq!(end.start.id.get_version_num(), 7, "time-ordered record ids");
    assert!(end.start.to_extension.is_some() && end.answered_wall_ms.is_none());
    world.outputs.clear();

    world.call("7777");
    assert_eq!(world.statuses(world.alice).last(), Some(&404));
    let end = world.ended().expect("a CDR");
    assert_eq!(end.cause, "unallocated_number");
    assert_eq!(
        (end.start.to_number.as_str(), end.start.to_extension),
        ("7777", None)
    );
    world.outputs.clear();

    // An INVITE without credentials is only challenged: no call, no record.
    let alice = world.alice;
    world.calls += 1;
    world.send(alice, &world.invite_text(9, "", "1002"));
    assert_eq!(world.statuses(alice).last(), Some(&401));
    assert!(
        world
            .outputs
            .iter()
            .all(|o| !matches!(o, Output::CallStarted(_) | Output::CallEnded(_))),
        "no CDR for a challenge"
    );
}

#[test]
fn hold_is_a_relayed_reinvite_with_anchored_sdp() {
    let mut world = World::new(1, CoreConfig::default());
    let tag = answered_call(&mut world);
    world.outputs.clear();
    let bob = world.bob[0];
    let hold = sdp("192.0.2.10", 4000, "sendonly");
    let reinvite = world.alice_in_dialog("INVITE", 3, &tag, &hold);
    world.send(world.alice, &reinvite);
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::Update {
            a_side: true,
            hold: true,
            ..
        }
    )));
    // Bob, who is held, hears music whenever Alice sends nothing.
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::HoldMusic {
            to_a_side: Some(false),
            payload_type: 0,
            ..
        }
    )));
    let relayed = world.requests(bob).pop().expect("re-INVITE to Bob");
    world.outputs.clear();
    assert_eq!(relayed.method, Method::Invite);
    let offer = Sdp::parse(&relayed.body).unwrap();
    assert_eq!(offer.direction(0), Direction::SendOnly);
    assert_eq!(
        crate::media::audio_address(&offer)
            .map(|a| a.ip().to_string())
            .as_deref(),
        Some("203.0.113.1")
    );
    // A second re-INVITE while the first is pending: 491.
    let again = world.alice_in_dialog("INVITE", 4, &tag, &hold);
    world.send(world.alice, &again);
    assert_eq!(world.statuses(world.alice).last(), Some(&491));
    world.answer_from(
        bob,
        &relayed,
        200,
        Some(sdp("192.0.2.20", 6000, "recvonly")),
    );
    assert_eq!(
        world
            .requests(bob)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Ack]
    );
    let to_alice: Vec<Response> = world.responses(world.alice);
    let ok = to_alice.last().unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        Sdp::parse(&ok.body).unwrap().direction(0),
        Direction::RecvOnly
    );
    // Bob's recvonly answer leaves the call held for the media plane.
    assert!(
        world
            .media()
            .iter()
            .all(|m| !matches!(m, MediaCommand::Update { hold: false, .. }))
    );
    // Resumed: the music stops.
    world.outputs.clear();
    let resume = world.alice_in_dialog("INVITE", 5, &tag, &sdp("192.0.2.10", 4000, "sendrecv"));
    world.send(world.alice, &resume);
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::HoldMusic {
            to_a_side: None,
            ..
        }
    )));
}

#[test]
fn a_lost_ack_means_retransmissions_then_the_call_ends() {
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().unwrap();
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    world.take_sent(world.alice);
    world.advance(Duration::from_secs(40));
    let retransmitted = world.statuses(world.alice);
    assert!(
        retransmitted.len() >= 7 && retransmitted.iter().all(|s| *s == 200),
        "{retransmitted:?}"
    );
    let end = world.ended().unwrap();
    assert_eq!((end.cause, end.side), ("ack_timeout", HangupSide::System));
    assert!(world.requests(bob).iter().any(|r| r.method == Method::Bye));
}

#[test]
fn media_inactivity_hangs_up_both_sides() {
    let mut world = World::new(1, CoreConfig::default());
    answered_call(&mut world);
    world.outputs.clear();
    let session = world.core.calls.any_session().unwrap();
    world
        .core
        .handle_media_event(world.now, WALL, MediaEvent::Inactive { session });
    world.drain();
    assert_eq!(
        world
            .requests(world.alice)
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Bye]
    );
    assert_eq!(
        world
            .requests(world.bob[0])
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::Bye]
    );
    let end = world.ended().unwrap();
    assert_eq!(
        (end.disposition, end.cause, end.side),
        (Disposition::Answered, "media_timeout", HangupSide::System)
    );
}

#[test]
fn call_limits_answer_503() {
    let config = CoreConfig {
        max_calls: 1,
        ..CoreConfig::default()
    };
    let mut world = World::new(1, config);
    world.call("1002");
    assert_eq!(world.core.call_count(), 1);
    let alice = world.alice;
    world.take_sent(alice);
    world.call("1002");
    let responses: Vec<Response> = world.responses(alice);
    let refused = responses.last().unwrap();
    assert_eq!(
        (refused.status, refused.headers.get(&HeaderName::RetryAfter)),
        (503, Some("5"))
    );
}

#[test]
fn calls_per_second_limits_answer_503_and_refill() {
    let config = CoreConfig {
        max_calls_per_second_per_tenant: 2,
        ..CoreConfig::default()
    };
    let mut world = World::new(1, config);
    world.call("1002");
    world.call("1002");
    assert_eq!(world.core.call_count(), 2, "a burst of one second's worth");
    world.outputs.clear();
    let alice = world.alice;
    world.call("1002");
    let refused = world.responses(alice).pop().unwrap();
    assert_eq!(
        (refused.status, refused.headers.get(&HeaderName::RetryAfter)),
        (503, Some("1"))
    );
    assert_eq!(world.ended().expect("a CDR").cause, "call_rate_limit");
    assert_eq!(world.core.call_count(), 2);
    // Half a second later one more call fits.
    world.advance(Duration::from_millis(500));
    world.call("1002");
    assert_eq!(world.core.call_count(), 3);
}

#[test]
fn a_contact_pointing_back_at_us_is_a_loop_482() {
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let bob = world.bob[0];
    // Bob's registered address forwards our INVITE straight back to us.
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.send(bob, &String::from_utf8(invite.to_bytes()).unwrap());
    assert_eq!(
        world.statuses(bob),
        vec![100, 482],
        "refused as a loop, not challenged"
    );
    // The fork got 482: the call fails, and the caller is told.
    world.answer_from(bob, &invite, 482, None);
    let status = world.statuses(world.alice).into_iter().max().unwrap();
    assert!(status >= 400, "{status}");
    assert_eq!(
        world.ended().expect("a CDR").disposition,
        Disposition::Failed
    );
}

#[test]
fn recording_follows_policy_and_the_control_plane() {
    use crate::core::{RecordingError, RecordingRequest, RecordingState};
    use crate::media::RecordAction;

    let recordings = |world: &World| -> Vec<RecordAction> {
        world
            .media()
            .into_iter()
            .filter_map(|m| match m {
                MediaCommand::Record { action, .. } => Some(*action),
                _ => None,
            })
            .collect()
    };
    // No policy: nothing is recorded until the control plane asks.
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let record_id = world
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::CallStarted(start) => Some(start.id),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        world
            .core
            .control_recording(WALL, record_id, RecordingRequest::Start),
        Err(RecordingError::NotAnswered)
    );
    answer(&mut world);
    assert!(recordings(&world).is_empty());
    let (id, state) = world
        .core
        .control_recording(WALL, record_id, RecordingRequest::Start)
        .unwrap();
    assert_eq!(state, RecordingState::Recording);
    world.drain();
    assert!(matches!(
        recordings(&world)[..],
        [RecordAction::Start { recording, call, .. }] if recording == id && call == record_id
    ));
    let control =
        |world: &mut World, request| world.core.control_recording(WALL, record_id, request);
    assert_eq!(
        control(&mut world, RecordingRequest::Start),
        Err(RecordingError::AlreadyRecorded)
    );
    assert_eq!(
        control(&mut world, RecordingRequest::Resume),
        Err(RecordingError::Conflict("recording"))
    );
    assert_eq!(
        control(&mut world, RecordingRequest::Pause),
        Ok((id, RecordingState::Paused))
    );
    assert_eq!(
        control(&mut world, RecordingRequest::Resume),
        Ok((id, RecordingState::Recording))
    );
    assert_eq!(
        control(&mut world, RecordingRequest::Stop),
        Ok((id, RecordingState::Stopped))
    );
    world.drain();
    assert_eq!(
        recordings(&world)[1..],
        [
            RecordAction::Pause,
            RecordAction::Resume,
            RecordAction::Stop
        ]
    );
    assert_eq!(
        world
            .core
            .control_recording(WALL, Uuid::new_v4(), RecordingRequest::Stop),
        Err(RecordingError::NoSuchCall)
    );
    // Hang up: the record names the recording.
    world.core.handle_media_event(
        world.now,
        WALL,
        MediaEvent::Inactive {
            session: world.core.calls.any_session().unwrap(),
        },
    );
    world.drain();
    assert_eq!(world.ended().and_then(|e| e.recording), Some(id));

    // The callee's extension records its calls: the answer starts a recording.
    let mut world = World::new(1, CoreConfig::default());
    let tenant = world.tenant();
    let mut bob = world
        .core
        .directory
        .extension_by_number(tenant, "1002")
        .unwrap()
        .clone();
    bob.record_calls = true;
    world.core.apply(Update::ExtensionUpsert(bob));
    answered_call(&mut world);
    assert!(matches!(
        recordings(&world)[..],
        [RecordAction::Start { .. }]
    ));
}

#[test]
fn dtmf_from_info_and_rtp_reaches_call_control_and_converts_to_rfc4733() {
    let dtmf_events = |world: &World| -> Vec<CallEventKind> {
        world
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::CallEvent(event) if matches!(event.kind, CallEventKind::Dtmf { .. }) => {
                    Some(event.kind)
                }
                _ => None,
            })
            .collect()
    };
    let info = |world: &World, tag: &str, cseq: u32, body: &str| {
        let text = world.alice_in_dialog("INFO", cseq, tag, "");
        let text = text.replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(text.contains("dtmf-relay"));
        text
    };
    // Bob's answer has telephone-event: Alice's INFO is answered here and becomes RFC 4733
    // events in Bob's stream.
    let mut world = World::new(1, CoreConfig::default());
    let tag = answered_call(&mut world);
    world.outputs.clear();
    let text = info(&world, &tag, 3, "Signal=5\r\nDuration=160\r\n");
    world.send(world.alice, &text);
    assert_eq!(world.statuses(world.alice), [200]);
    assert!(world.requests(world.bob[0]).is_empty(), "not relayed");
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::SendDtmf {
            a_side: false,
            digit: '5',
            duration_ms: 160,
            ..
        }
    )));
    assert_eq!(
        dtmf_events(&world),
        [CallEventKind::Dtmf {
            digit: '5',
            from_caller: true,
            duration_ms: 160
        }]
    );
    // RFC 4733 from Bob's RTP, reported by the media plane.
    world.outputs.clear();
    let session = world.core.calls.any_session().unwrap();
    world.core.handle_media_event(
        world.now,
        WALL,
        MediaEvent::Dtmf {
            session,
            a_side: false,
            digit: '#',
            duration_ms: 100,
        },
    );
    world.drain();
    assert_eq!(
        dtmf_events(&world),
        [CallEventKind::Dtmf {
            digit: '#',
            from_caller: false,
            duration_ms: 100
        }]
    );

    // Bob has no telephone-event: the INFO goes to him as it is (and is still reported).
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().unwrap();
    let plain = "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    world.answer_from(bob, &invite, 200, Some(plain.to_owned()));
    let tag = alice_acks(&mut world);
    world.outputs.clear();
    let text = info(&world, &tag, 3, "Signal=7\r\nDuration=100\r\n");
    world.send(world.alice, &text);
    let relayed = world.requests(bob);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].method, Method::Info);
    assert_eq!(&relayed[0].body[..], b"Signal=7\r\nDuration=100\r\n");
    assert_eq!(dtmf_events(&world).len(), 1);
}

/// Alice takes the 200 and ACKs it; returns its To tag.
fn alice_acks(world: &mut World) -> String {
    let ok = world
        .responses(world.alice)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200 to Alice");
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = world.alice_in_dialog("ACK", 2, &tag, "");
    world.send(world.alice, &ack);
    tag
}

/// A carrier at 192.0.2.50 behind an IP trunk; number +15551230002 rings Bob, +15551230009
/// goes to a ring group.
fn with_trunk(world: &mut World) -> (Uuid, Uuid) {
    use crate::directory::{Network, Number, NumberTarget, Trunk};
    let tenant = world.tenant();
    let bob = world.extension_id("1002");
    let trunk = Uuid::new_v4();
    world.core.apply(Update::TrunkUpsert(Trunk {
        id: trunk,
        tenant_id: tenant,
        name: "carrier".into(),
        sources: vec![Network {
            addr: "192.0.2.48".parse().unwrap(),
            prefix: 29,
        }],
        outbound: None,
    }));
    for (e164, target) in [
        ("+15551230002", NumberTarget::Extension(bob)),
        ("+15551230009", NumberTarget::RingGroup(Uuid::new_v4())),
    ] {
        world.core.apply(Update::NumberUpsert(Number {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            e164: e164.into(),
            target,
        }));
    }
    (trunk, bob)
}

fn carrier_invite(n: u32, to: &str) -> String {
    let body = sdp("192.0.2.50", 7000, "sendrecv");
    format!(
        "INVITE sip:{to}@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcarrier{n}\r\nMax-Forwards: 70\r\n\
         From: \"Carol\" <sip:+15550001111@carrier.example>;tag=carol{n}\r\nTo: <sip:{to}@203.0.113.1>\r\nCall-ID: carrier-{n}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:+15550001111@192.0.2.50:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn a_trunk_call_to_a_number_rings_its_extension() {
    let mut world = World::new(1, CoreConfig::default());
    let (trunk, bob_id) = with_trunk(&mut world);
    let carrier = peer(50);
    // The national form of the number: normalised to +15551230002.
    world.send(carrier, &carrier_invite(1, "5551230002"));
    assert_eq!(
        world.statuses(carrier),
        [100],
        "no challenge for the carrier"
    );
    let start = world.started();
    assert_eq!(start.trunk_id, Some(trunk));
    assert_eq!(start.did.as_deref(), Some("+15551230002"));
    assert_eq!(
        (start.from_extension, start.to_extension),
        (None, Some(bob_id))
    );
    assert_eq!(
        (start.from_number.as_str(), start.to_number.as_str()),
        ("+15550001111", "1002")
    );
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    let from = invite.headers.get(&HeaderName::From).unwrap();
    assert!(
        from.starts_with("\"Carol\" <sip:+15550001111@example.com>"),
        "{from}"
    );
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    assert_eq!(world.statuses(carrier), [200]);
    assert_eq!(SipStats::get(&world.core.stats().trunk_calls), 1);
}

/// A request from the carrier inside the dialog of its call `n` (our To tag `tag`).
fn carrier_in_dialog(n: u32, (method, cseq): (&str, u32), tag: &str, extra: &str) -> String {
    format!(
        "{method} sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcarrier{n}{method}{cseq}\r\nMax-Forwards: 70\r\n\
         From: \"Carol\" <sip:+15550001111@carrier.example>;tag=carol{n}\r\nTo: <sip:+15551230002@203.0.113.1>;tag={tag}\r\nCall-ID: carrier-{n}\r\n\
         CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_carriers_session_timer_is_granted_refreshed_and_enforced() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    let (carrier, bob) = (peer(50), world.bob[0]);
    let asks = |n: u32, interval: u32| {
        carrier_invite(n, "+15551230002").replace(
            "Max-Forwards: 70\r\n",
            &format!(
                "Max-Forwards: 70\r\nSupported: timer\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n\
                 Session-Expires: {interval}\r\n"
            ),
        )
    };
    // Below our Min-SE: 422 with it, and a record that says why (RFC 4028 §9).
    world.send(carrier, &asks(1, 60));
    let refused = world.responses(carrier).pop().expect("422");
    assert_eq!(refused.status, 422);
    assert_eq!(refused.headers.get(&HeaderName::MinSe), Some("90"));
    assert_eq!(world.ended().unwrap().cause, "session_interval_too_small");
    world.outputs.clear();

    // 120 s: granted, the carrier refreshing (it named no refresher).
    world.send(carrier, &asks(2, 120));
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    let ok = world.responses(carrier).pop().expect("200 to the carrier");
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.headers.get(&HeaderName::SessionExpires),
        Some("120;refresher=uac")
    );
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("timer"));
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    world.send(carrier, &carrier_in_dialog(2, ("ACK", 1), &tag, ""));

    // The carrier refreshes with an UPDATE at half time: no offer in it, so we answer it
    // (Bob's leg has a session of its own), with the timer.
    world.advance(Duration::from_secs(60));
    world.send(
        carrier,
        &carrier_in_dialog(
            2,
            ("UPDATE", 2),
            &tag,
            "Session-Expires: 120;refresher=uac\r\n",
        ),
    );
    assert!(
        world
            .requests(bob)
            .iter()
            .all(|r| r.method != Method::Update)
    );
    let ok = world.responses(carrier).pop().expect("200 to the UPDATE");
    assert_eq!(
        (ok.status, ok.headers.get(&HeaderName::SessionExpires)),
        (200, Some("120;refresher=uac"))
    );

    // No refresh after that: the session ends 32 s before the interval runs out.
    world.advance(Duration::from_secs(87));
    assert!(world.ended().is_none(), "still within the interval");
    world.advance(Duration::from_secs(2));
    assert!(
        world
            .requests(carrier)
            .iter()
            .any(|r| r.method == Method::Bye)
    );
    assert!(world.requests(bob).iter().any(|r| r.method == Method::Bye));
    let ended = world.ended().expect("a record");
    assert_eq!(ended.cause, "session_timer_expired");
    assert_eq!(ended.disposition, Disposition::Answered);
}

#[test]
fn a_callee_that_wants_us_to_refresh_gets_updates_until_it_forgets_the_dialog() {
    let mut world = World::new(1, CoreConfig::default());
    let bob = world.bob[0];
    world.call("1002");
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    assert_eq!(
        invite.headers.get(&HeaderName::SessionExpires),
        Some("1800;refresher=uas")
    );
    assert!(
        invite
            .headers
            .get_all(&HeaderName::Supported)
            .any(|o| o == "timer")
    );
    // Bob wants at least an hour (RFC 4028 §7.3): the INVITE again, CSeq 2, asking for it.
    world.answer_with(bob, &invite, (422, None), &[("Min-SE", "3600")]);
    let again = world
        .requests(bob)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("the INVITE again");
    assert_eq!(again.headers.get(&HeaderName::CSeq), Some("2 INVITE"));
    assert_eq!(
        again.headers.get(&HeaderName::SessionExpires),
        Some("3600;refresher=uas")
    );
    // Bob answers with a shorter interval (§9 lets it), naming us refresher; it takes UPDATE.
    world.answer_with(
        bob,
        &again,
        (200, Some(sdp("192.0.2.20", 6000, "sendrecv"))),
        &[
            ("Session-Expires", "300;refresher=uac"),
            ("Require", "timer"),
            ("Allow", "INVITE, ACK, BYE, UPDATE"),
        ],
    );
    alice_acks(&mut world);
    world.requests(bob);
    // Half the interval: our UPDATE, no body.
    world.advance(Duration::from_secs(150));
    let update = world
        .requests(bob)
        .into_iter()
        .find(|r| r.method == Method::Update)
        .expect("our refresh");
    assert!(update.body.is_empty());
    assert_eq!(
        update.headers.get(&HeaderName::SessionExpires),
        Some("300;refresher=uac")
    );
    world.answer_from(bob, &update, 200, None);
    assert!(world.ended().is_none());
    // The next one gets 481: Bob lost the dialog, the call ends (RFC 4028 §10).
    world.advance(Duration::from_secs(150));
    let update = world
        .requests(bob)
        .into_iter()
        .find(|r| r.method == Method::Update)
        .expect("the next refresh");
    world.answer_from(bob, &update, 481, None);
    assert!(
        world
            .requests(world.alice)
            .iter()
            .any(|r| r.method == Method::Bye)
    );
    assert_eq!(
        world.ended().expect("a record").cause,
        "session_refresh_failed"
    );
}

#[test]
fn a_relayed_offer_carries_the_other_legs_timer_and_a_2xx_without_one_ends_it() {
    let mut world = World::new(1, CoreConfig::default());
    let bob = world.bob[0];
    world.call("1002");
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_with(
        bob,
        &invite,
        (200, Some(sdp("192.0.2.20", 6000, "sendrecv"))),
        &[
            ("Session-Expires", "600;refresher=uac"),
            ("Allow", "UPDATE"),
        ],
    );
    let tag = alice_acks(&mut world);
    world.requests(bob);
    // Alice holds: the re-INVITE relayed to Bob is a refresh of Bob's session too.
    let hold = world.alice_in_dialog("INVITE", 3, &tag, &sdp("192.0.2.10", 4000, "sendonly"));
    world.send(world.alice, &hold);
    let relayed = world.requests(bob).pop().expect("re-INVITE to Bob");
    assert_eq!(
        relayed.headers.get(&HeaderName::SessionExpires),
        Some("600;refresher=uac")
    );
    // Bob's 2xx says nothing of it: its session has no timer from now on (RFC 4028 §10).
    world.answer_from(
        bob,
        &relayed,
        200,
        Some(sdp("192.0.2.20", 6000, "recvonly")),
    );
    let ack = world.alice_in_dialog("ACK", 3, &tag, "");
    world.send(world.alice, &ack);
    world.advance(Duration::from_secs(700));
    assert!(
        world
            .requests(bob)
            .iter()
            .all(|r| r.method != Method::Update)
    );
    assert_eq!(world.ended().map(|e| e.cause), None, "the call goes on");
}

#[test]
fn reliable_provisional_responses_are_pracked_once_and_in_order() {
    let mut world = World::new(1, CoreConfig::default());
    let bob = world.bob[0];
    world.call("1002");
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    assert_eq!(
        invite
            .headers
            .get_all(&HeaderName::Supported)
            .collect::<Vec<_>>(),
        ["100rel", "timer"]
    );
    let reliable = |rseq: &'static str| [("Require", "100rel"), ("RSeq", rseq)];
    let early = Some(sdp("192.0.2.20", 6000, "sendrecv"));
    world.answer_with(bob, &invite, (183, early.clone()), &reliable("7"));
    let pracks = |world: &mut World| -> Vec<Request> {
        world
            .requests(bob)
            .into_iter()
            .filter(|r| r.method == Method::Prack)
            .collect()
    };
    let prack = pracks(&mut world).pop().expect("a PRACK");
    assert_eq!(prack.headers.get(&HeaderName::RAck), Some("7 1 INVITE"));
    assert_eq!(prack.headers.get(&HeaderName::CSeq), Some("2 PRACK"));
    assert!(prack.headers.get(&HeaderName::To).unwrap().contains("tag="));
    assert_eq!(world.statuses(world.alice), [100, 183]);
    // Sent again (our PRACK was slow): not acknowledged twice, not relayed twice.
    world.answer_with(bob, &invite, (183, early.clone()), &reliable("7"));
    assert!(pracks(&mut world).is_empty());
    assert!(world.statuses(world.alice).is_empty());
    // One that skips ahead waits for the missing one.
    world.answer_with(bob, &invite, (180, None), &reliable("9"));
    assert!(pracks(&mut world).is_empty());
    world.answer_with(bob, &invite, (180, None), &reliable("8"));
    let prack = pracks(&mut world).pop().expect("the next PRACK");
    assert_eq!(prack.headers.get(&HeaderName::RAck), Some("8 1 INVITE"));
    assert_eq!(prack.headers.get(&HeaderName::CSeq), Some("3 PRACK"));
    // The 200 has no SDP: the reliable 183's answer stands (RFC 3262 §5). The dialog's
    // requests continue after the PRACKs.
    world.answer_from(bob, &invite, 200, None);
    let ok = world
        .responses(world.alice)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200 to Alice");
    assert!(!ok.body.is_empty(), "Alice gets our answer");
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = world.alice_in_dialog("ACK", 2, &tag, "");
    world.send(world.alice, &ack);
    let bye = world.alice_in_dialog("BYE", 3, &tag, "");
    world.send(world.alice, &bye);
    let bye = world
        .requests(bob)
        .into_iter()
        .find(|r| r.method == Method::Bye)
        .expect("BYE to Bob");
    assert_eq!(bye.headers.get(&HeaderName::CSeq), Some("4 BYE"));
}

/// Sets extension `number`'s forwarding and outbound permission.
fn forwards(world: &mut World, number: &str, forward: Forwarding, outbound_allowed: bool) {
    let id = world.extension_id(number);
    let mut extension = world.core.directory.extension(id).unwrap().clone();
    extension.forward = forward;
    extension.outbound_allowed = outbound_allowed;
    world.core.apply(Update::ExtensionUpsert(extension));
}

fn diversion_of(request: &Request) -> Option<&str> {
    request.headers.get(&HeaderName::Diversion)
}

#[test]
fn a_busy_or_unanswered_extension_forwards_with_diversion() {
    let config = CoreConfig {
        ring_timeout: Duration::from_secs(20),
        ..CoreConfig::default()
    };
    let mut world = World::new(1, config);
    let trunk = with_outbound_trunk(&mut world, "1");
    let (bob, proxy) = (world.bob[0], peer(60));
    forwards(
        &mut world,
        "1002",
        Forwarding {
            busy: Some("(555) 765-4321".into()),
            no_answer: Some("1001".into()),
            ..Forwarding::default()
        },
        true,
    );

    // Busy: out through the trunk, Alice's number presented, Diversion naming Bob.
    world.call("1002");
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 486, None);
    let out = world
        .requests(proxy)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("the call forwarded outside");
    assert_eq!(out.uri.to_string(), "sip:+15557654321@sip.carrier.example");
    assert_eq!(
        diversion_of(&out),
        Some("<sip:1002@example.com>;reason=user-busy")
    );
    assert!(
        out.headers
            .get(&HeaderName::From)
            .unwrap()
            .contains("sip:1001@")
    );
    assert!(world.statuses(world.alice).iter().all(|s| *s < 300));
    world.answer_from(proxy, &out, 200, Some(sdp("192.0.2.60", 7000, "sendrecv")));
    let tag = alice_acks(&mut world);
    let bye = world.alice_in_dialog("BYE", 3, &tag, "");
    world.send(world.alice, &bye);
    let ended = world.ended().expect("a record");
    assert_eq!(ended.start.to_number, "+15557654321");
    assert_eq!(ended.start.trunk_id, Some(trunk));
    assert_eq!(ended.disposition, Disposition::Answered);

    // No answer in the ring time: Bob's calls go to extension 1001 (Alice's phone here).
    let alice = world.alice;
    world.register(alice, "1001", "alice-pass", 9);
    world.outputs.clear();
    world.call("1002");
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 180, None);
    world.advance(Duration::from_secs(21));
    assert!(
        world
            .requests(bob)
            .iter()
            .any(|r| r.method == Method::Cancel)
    );
    let forwarded = world
        .requests(world.alice)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("the call forwarded to 1001");
    assert_eq!(
        diversion_of(&forwarded),
        Some("<sip:1002@example.com>;reason=no-answer")
    );
    // Forwarded once: nobody answers there either, and the call ends.
    world.advance(Duration::from_secs(21));
    let ended = world.ended().expect("a record");
    assert_eq!(
        (ended.disposition, ended.cause),
        (Disposition::NoAnswer, "no_answer")
    );
    assert_eq!(ended.start.to_number, "1001");
}

#[test]
fn forwarding_always_or_with_no_phone_needs_the_extensions_permission() {
    let mut world = World::new(0, CoreConfig::default());
    with_outbound_trunk(&mut world, "1");
    let proxy = peer(60);
    // No phone registered: forwarded as unavailable.
    forwards(
        &mut world,
        "1002",
        Forwarding {
            no_answer: Some("+15557654321".into()),
            ..Forwarding::default()
        },
        true,
    );
    world.call("1002");
    let out = world.requests(proxy).pop().expect("forwarded outside");
    assert_eq!(
        diversion_of(&out),
        Some("<sip:1002@example.com>;reason=unavailable")
    );
    world.answer_from(proxy, &out, 486, None);
    assert_eq!(world.statuses(world.alice).last(), Some(&486));
    assert!(
        world
            .requests(proxy)
            .iter()
            .all(|r| r.method != Method::Invite)
    );

    // Always, but Bob may not call outside: refused, with a record that says so.
    forwards(
        &mut world,
        "1002",
        Forwarding {
            always: Some("+15557654321".into()),
            ..Forwarding::default()
        },
        false,
    );
    world.outputs.clear();
    world.call("1002");
    assert!(world.requests(proxy).is_empty());
    assert_eq!(world.statuses(world.alice).last(), Some(&480));
    assert_eq!(world.ended().expect("a record").cause, "forward_failed");
}

#[test]
fn trunk_refusals_say_why() {
    let mut world = World::new(1, CoreConfig::default());
    let (trunk, _) = with_trunk(&mut world);
    let carrier = peer(50);
    // A number we do not have.
    world.send(carrier, &carrier_invite(1, "+15559999999"));
    assert_eq!(world.statuses(carrier).last(), Some(&404));
    let end = world.ended().expect("a CDR").clone();
    assert_eq!(end.cause, "unallocated_number");
    assert_eq!((end.start.trunk_id, end.start.did), (Some(trunk), None));
    world.outputs.clear();
    // A number routed to a ring group that is gone.
    world.send(carrier, &carrier_invite(2, "+15551230009"));
    assert_eq!(world.statuses(carrier).last(), Some(&404));
    assert_eq!(world.ended().expect("a CDR").cause, "unallocated_number");
    world.outputs.clear();

    // The same number from an address no trunk lists: 403, counted, no record.
    let stranger = peer(99);
    let invite = carrier_invite(3, "+15551230002").replace("192.0.2.50", "192.0.2.99");
    world.send(stranger, &invite);
    assert_eq!(world.statuses(stranger).last(), Some(&403));
    assert_eq!(SipStats::get(&world.core.stats().trunk_refused), 1);
    assert!(world.ended().is_none());
    // Extensions dialling from anywhere are still challenged as before.
    let extension_call = carrier_invite(4, "1002").replace("192.0.2.50", "192.0.2.99");
    world.send(stranger, &extension_call);
    assert_eq!(world.statuses(stranger).last(), Some(&401));
}

/// The caller presses `digit` (an RFC 4733 event the media plane reports).
fn caller_presses(world: &mut World, session: crate::media::SessionId, digit: char) {
    let event = MediaEvent::Dtmf {
        session,
        a_side: true,
        digit,
        duration_ms: 100,
    };
    world.core.handle_media_event(world.now, WALL, event);
}

/// The carrier calls the flow's number; returns the flow's 200 and its To tag.
fn ivr_call_answered(world: &mut World) -> (Response, String) {
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230003"));
    let ok = world
        .responses(carrier)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("the flow answers");
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    (ok, tag)
}

/// Publishes `graph` as `version` of a new flow and routes `number` to it; returns its id.
fn publish_flow(world: &mut World, graph: serde_json::Value, version: u32, number: &str) -> Uuid {
    use crate::directory::{Number, NumberTarget, PublishedFlow};
    let tenant = world.tenant();
    let flow = crate::ivr::Flow::parse(&graph).unwrap();
    let id = Uuid::new_v4();
    world.core.apply(Update::FlowUpsert(PublishedFlow {
        id,
        tenant_id: tenant,
        version,
        flow: std::sync::Arc::new(flow),
    }));
    world.core.apply(Update::NumberUpsert(Number {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        e164: number.into(),
        target: NumberTarget::IvrFlow(id),
    }));
    id
}

/// A flow on number +15551230003: a menu whose 2 dials Bob, then hangs up.
fn with_ivr(world: &mut World) -> Uuid {
    publish_flow(
        world,
        serde_json::json!({
            "entry": "menu",
            "nodes": {
                "menu": {"verb": "gather", "prompt": "menu", "transitions": {"match.2": "bob"}},
                "bob": {"verb": "dial", "extension": "1002", "transitions": {"answered": "bye"}},
                "bye": {"verb": "hangup"}
            }
        }),
        3,
        "+15551230003",
    )
}

#[test]
fn an_ivr_answers_plays_takes_a_key_and_bridges_the_extension() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    let flow_id = with_ivr(&mut world);
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230003"));
    let responses = world.responses(carrier);
    let ok = responses
        .iter()
        .find(|r| r.status == 200)
        .expect("the flow answers");
    let answer = Sdp::parse(&ok.body).unwrap();
    assert_eq!(
        answer.media[0].formats,
        ["0", "101"],
        "G.711 and telephone-event"
    );
    let (session, a_port) = world
        .media()
        .iter()
        .find_map(|m| match m {
            MediaCommand::Create {
                session, a_port, ..
            } => Some((*session, *a_port)),
            _ => None,
        })
        .unwrap();
    assert_eq!(answer.media[0].port, a_port);
    assert!(world.media().iter().any(|m| matches!(m,
        MediaCommand::Play { id: 1, prompt, payload_type: 0, .. } if prompt == "menu")));
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = format!(
        "ACK sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcarrierack1\r\nMax-Forwards: 70\r\n\
         From: \"Carol\" <sip:+15550001111@carrier.example>;tag=carol1\r\nTo: <sip:+15551230003@203.0.113.1>;tag={tag}\r\n\
         Call-ID: carrier-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    world.send(carrier, &ack);
    world.outputs.clear();

    // The prompt ends; the caller presses 2 (RFC 4733): the flow dials Bob.
    world
        .core
        .handle_media_event(world.now, WALL, MediaEvent::PlayDone { session, id: 1 });
    caller_presses(&mut world, session, '2');
    world.drain();
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    let offer = Sdp::parse(&invite.body).unwrap();
    assert_eq!(
        offer.media[0].formats,
        ["0", "101"],
        "the caller's codec, untouched"
    );
    world.answer_from(bob, &invite, 180, None);
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    assert!(
        world.requests(bob).iter().any(|r| r.method == Method::Ack),
        "Bob's answer is acknowledged"
    );
    assert!(
        world.responses(carrier).is_empty(),
        "the caller was answered already"
    );

    // Bob hangs up: the flow takes `answered` and hangs up on the caller.
    let from = invite.headers.get(&HeaderName::From).unwrap();
    let bye = format!(
        "BYE sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {}:5060;branch=z9hG4bKbobbye\r\nMax-Forwards: 70\r\n\
         From: <sip:1002@example.com>;tag=bob{}\r\nTo: {from}\r\nCall-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        bob.addr.ip(),
        bob.addr.ip(),
        invite.headers.get(&HeaderName::CallId).unwrap()
    );
    world.send(bob, &bye);
    assert_eq!(world.statuses(bob), [200]);
    assert!(
        world
            .requests(carrier)
            .iter()
            .any(|r| r.method == Method::Bye)
    );
    let end = world.ended().expect("a CDR").clone();
    assert_eq!(end.disposition, Disposition::Answered);
    assert_eq!(end.start.did.as_deref(), Some("+15551230003"));
    assert_eq!(end.start.to_number, "1002");
    assert!(end.start.to_extension.is_some());
    let ivr = end.ivr.expect("the flow's summary");
    assert_eq!((ivr.flow_id, ivr.version), (flow_id, 3));
    assert_eq!(ivr.path, ["menu", "bob", "bye"]);
    assert_eq!(ivr.ended, Some("completed"));
}

#[test]
fn the_caller_hanging_up_on_a_bridged_ivr_call_hangs_up_the_callee() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    with_ivr(&mut world);
    let carrier = peer(50);
    let (_, tag) = ivr_call_answered(&mut world);
    let session = world.session();
    // A key during the prompt stops it and dials.
    caller_presses(&mut world, session, '2');
    world.drain();
    assert!(
        world
            .media()
            .iter()
            .any(|m| matches!(m, MediaCommand::StopPlay { id: 1, .. }))
    );
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    world.requests(bob);
    let bye = format!(
        "BYE sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcarrierbye\r\nMax-Forwards: 70\r\n\
         From: \"Carol\" <sip:+15550001111@carrier.example>;tag=carol1\r\nTo: <sip:+15551230003@203.0.113.1>;tag={tag}\r\n\
         Call-ID: carrier-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    world.send(carrier, &bye);
    assert_eq!(world.statuses(carrier), [200]);
    assert!(
        world.requests(bob).iter().any(|r| r.method == Method::Bye),
        "Bob is hung up"
    );
    assert!(
        world.requests(carrier).is_empty(),
        "nothing goes back to the caller"
    );
    let end = world.ended().expect("a CDR");
    assert_eq!(
        (end.disposition, end.side),
        (Disposition::Answered, HangupSide::Caller)
    );
    assert_eq!(end.ivr.as_ref().unwrap().ended, Some("caller_hung_up"));
}

#[test]
fn an_ivr_hangs_up_when_nobody_presses_a_key_and_tells_a_busy_dial() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    with_ivr(&mut world);
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230003"));
    let session = world.session();
    // Three attempts of 5 s after each prompt, then the flow hangs up: BYE to the caller.
    for id in 1..=3 {
        world
            .core
            .handle_media_event(world.now, WALL, MediaEvent::PlayDone { session, id });
        world.advance(Duration::from_secs(5));
    }
    world.drain();
    assert!(
        world
            .requests(carrier)
            .iter()
            .any(|r| r.method == Method::Bye)
    );
    let end = world.ended().expect("a CDR");
    assert_eq!(end.cause, "ivr_max_attempts");
    assert_eq!(end.ivr.as_ref().unwrap().path, ["menu", "menu", "menu"]);
    // Nothing was dialled.
    assert!(world.requests(world.bob[0]).is_empty());
}

#[test]
fn an_unpublished_flow_refuses_the_call() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    let flow_id = with_ivr(&mut world);
    world.core.apply(Update::FlowRemove(flow_id));
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230003"));
    assert_eq!(world.statuses(carrier).last(), Some(&480));
    assert_eq!(world.ended().expect("a CDR").cause, "flow_not_published");
}

#[test]
fn an_ivr_takes_keys_from_sip_info_and_answers_refreshes_itself() {
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    with_ivr(&mut world);
    let carrier = peer(50);
    let (ok, tag) = ivr_call_answered(&mut world);
    let in_dialog = |method: &str, cseq: u32, content_type: &str, body: &str| {
        format!(
            "{method} sip:switchboard@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKc{method}{cseq}\r\nMax-Forwards: 70\r\n\
             From: \"Carol\" <sip:+15550001111@carrier.example>;tag=carol1\r\nTo: <sip:+15551230003@203.0.113.1>;tag={tag}\r\n\
             Call-ID: carrier-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:+15550001111@192.0.2.50:5060>\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // A session refresh while the menu plays: our answer again, on the same port.
    let offer = sdp("192.0.2.50", 7000, "sendrecv");
    world.send(carrier, &in_dialog("INVITE", 2, "application/sdp", &offer));
    let refreshed = world
        .responses(carrier)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200 to the re-INVITE");
    assert_eq!(
        Sdp::parse(&refreshed.body).unwrap().media[0].port,
        Sdp::parse(&ok.body).unwrap().media[0].port
    );
    // Our 200 is retransmitted until the ACK.
    world.advance(Duration::from_millis(500));
    assert_eq!(world.statuses(carrier), [200], "retransmitted");
    let ack = in_dialog("ACK", 2, "application/sdp", "");
    world.send(carrier, &ack);
    world.advance(Duration::from_secs(2));
    assert_eq!(
        world.statuses(carrier),
        Vec::<u16>::new(),
        "not after the ACK"
    );
    // Hold: the answer is recvonly and the media plane knows.
    world.outputs.clear();
    let hold = sdp("192.0.2.50", 7000, "sendonly");
    world.send(carrier, &in_dialog("INVITE", 4, "application/sdp", &hold));
    let held = world
        .responses(carrier)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200 to the hold");
    assert_eq!(
        Sdp::parse(&held.body).unwrap().direction(0),
        Direction::RecvOnly
    );
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::Update {
            a_side: true,
            hold: true,
            ..
        }
    )));
    // A key as SIP INFO (application/dtmf-relay, as SIP.js and desk phones send it).
    let info = in_dialog(
        "INFO",
        5,
        "application/dtmf-relay",
        "Signal=2\r\nDuration=160\r\n",
    );
    world.send(carrier, &info);
    assert_eq!(world.statuses(carrier), [200]);
    assert!(
        world
            .requests(world.bob[0])
            .iter()
            .any(|r| r.method == Method::Invite),
        "the flow dials Bob"
    );
}

/// A credential trunk whose proxy is at 192.0.2.60, and a route for North American numbers.
fn with_outbound_trunk(world: &mut World, prefix: &str) -> Uuid {
    trunk_route(world, prefix, (60, 10), "")
}

/// A credential trunk with one proxy at 192.0.2.`proxy` over UDP, its tech prefix, and a
/// route for `prefix` at `priority`.
fn trunk_route(
    world: &mut World,
    prefix: &str,
    (proxy, priority): (u8, i32),
    tech_prefix: &str,
) -> Uuid {
    use crate::directory::{Outbound, Route, Trunk};
    let tenant = world.tenant();
    let trunk = Uuid::new_v4();
    world.core.apply(Update::TrunkUpsert(Trunk {
        id: trunk,
        tenant_id: tenant,
        name: format!("carrier-{proxy}"),
        sources: Vec::new(),
        outbound: Some(Box::new(Outbound {
            proxies: vec![SocketAddr::from(([192, 0, 2, proxy], 5060))],
            transport: Transport::Udp,
            host: "sip.carrier.example".into(),
            credentials: Some(("acme".into(), "trunk-pass".into())),
            tech_prefix: tech_prefix.into(),
            headers: vec![("X-Telnyx-Username".into(), "acme".into())],
            register: None,
        })),
    }));
    world.core.apply(Update::RouteUpsert(Route {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        prefix: prefix.into(),
        trunk_id: trunk,
        priority,
    }));
    trunk
}

#[test]
fn a_trunk_that_fails_hands_the_call_to_the_next_route() {
    let mut world = World::new(0, CoreConfig::default());
    let first = trunk_route(&mut world, "1", (60, 1), "");
    let second = trunk_route(&mut world, "1", (62, 2), "77#");
    // A longer prefix elsewhere does not take part: it is not a route for this number.
    trunk_route(&mut world, "44", (63, 1), "");
    let (first_proxy, second_proxy) = (peer(60), peer(62));

    // The first trunk's proxy is down (503): the call goes out through the second route.
    world.call("5551234567");
    let invite = world
        .requests(first_proxy)
        .pop()
        .expect("INVITE to the first");
    carrier_answers_from(&mut world, first_proxy, &invite, 503);
    let again = world
        .requests(second_proxy)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("the call through the second route's trunk");
    assert_eq!(
        again.uri.to_string(),
        "sip:77%23+15551234567@sip.carrier.example"
    );
    assert!(world.statuses(world.alice).iter().all(|s| *s < 300));
    world.answer_from(
        second_proxy,
        &again,
        200,
        Some(sdp("192.0.2.62", 40000, "sendrecv")),
    );
    let tag = alice_acks(&mut world);
    assert!(world.requests(peer(63)).is_empty());
    // The record started with the first trunk; its end names the one that took the call.
    assert_eq!(world.started().trunk_id, Some(first));
    let bye = world.alice_in_dialog("BYE", 3, &tag, "");
    world.send(world.alice, &bye);
    let ended = world.ended().expect("a call record");
    assert_eq!(ended.start.trunk_id, Some(second));
    assert_eq!(ended.cause, "normal_clearing");

    // A busy callee is the callee's answer, not the carrier's failure: no second try.
    world.outputs.clear();
    world.call("5557654321");
    let invite = world
        .requests(first_proxy)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("INVITE to the first");
    carrier_answers_from(&mut world, first_proxy, &invite, 486);
    assert!(
        world
            .requests(second_proxy)
            .iter()
            .all(|r| r.method != Method::Invite)
    );
    assert_eq!(world.statuses(world.alice).last(), Some(&486));
}

#[test]
fn a_call_out_through_a_trunk_answers_its_407_once() {
    use switchboard_sip::digest::Credentials;
    let mut world = World::new(1, CoreConfig::default());
    with_outbound_trunk(&mut world, "44");
    // No route for North America yet.
    world.call("5551234567");
    assert_eq!(world.statuses(world.alice).last(), Some(&404));
    assert_eq!(world.ended().expect("a CDR").cause, "no_route");
    world.outputs.clear();

    let trunk = with_outbound_trunk(&mut world, "1");
    world.call("5551234567");
    let proxy = peer(60);
    let invite = world.requests(proxy).pop().expect("INVITE to the carrier");
    assert_eq!(
        invite.uri.to_string(),
        "sip:+15551234567@sip.carrier.example"
    );
    assert_eq!(
        invite.headers.get(&HeaderName::parse("X-Telnyx-Username")),
        Some("acme")
    );
    assert_eq!(
        invite
            .headers
            .get(&HeaderName::parse("P-Asserted-Identity")),
        Some("<sip:1001@example.com>")
    );
    assert!(
        invite
            .headers
            .get(&HeaderName::From)
            .unwrap()
            .contains("<sip:1001@example.com>")
    );
    let start = world.started();
    assert_eq!(start.trunk_id, Some(trunk));
    assert_eq!(start.to_number, "+15551234567");
    assert!(start.from_extension.is_some());

    // The carrier challenges; we answer once, in a new transaction with CSeq 2.
    let mut challenge = transaction::response_to(&invite, 407, "Proxy Authentication Required");
    let to = challenge.headers.get(&HeaderName::To).unwrap().to_owned();
    challenge
        .headers
        .set(HeaderName::To, format!("{to};tag=carrier"));
    challenge.headers.push(
        HeaderName::ProxyAuthenticate,
        "Digest realm=\"sip.carrier.example\", nonce=\"abc123\", algorithm=MD5, qop=\"auth\"",
    );
    world
        .core
        .handle_datagram(world.now, WALL, proxy, &challenge.to_bytes());
    world.drain();
    let sent = world.requests(proxy);
    assert!(
        sent.iter().any(|r| r.method == Method::Ack),
        "the 407 is acknowledged"
    );
    let again = sent
        .iter()
        .find(|r| r.method == Method::Invite)
        .expect("the INVITE again");
    assert_eq!(again.headers.get(&HeaderName::CSeq), Some("2 INVITE"));
    assert_eq!(
        again.headers.get(&HeaderName::CallId),
        invite.headers.get(&HeaderName::CallId)
    );
    let credentials =
        Credentials::parse(again.headers.get(&HeaderName::ProxyAuthorization).unwrap()).unwrap();
    let ha1 = switchboard_sip::digest::ha1(
        switchboard_sip::digest::Algorithm::Md5,
        "acme",
        "sip.carrier.example",
        "trunk-pass",
    );
    assert!(credentials.check(&ha1, "INVITE"), "the answer verifies");
    // A second challenge is not answered again: the call fails.
    let mut second = transaction::response_to(again, 407, "Proxy Authentication Required");
    second
        .headers
        .set(HeaderName::To, format!("{to};tag=carrier2"));
    second.headers.push(
        HeaderName::ProxyAuthenticate,
        "Digest realm=\"sip.carrier.example\", nonce=\"def456\", algorithm=MD5",
    );
    world
        .core
        .handle_datagram(world.now, WALL, proxy, &second.to_bytes());
    world.drain();
    assert!(
        world
            .requests(proxy)
            .iter()
            .all(|r| r.method != Method::Invite)
    );
    assert!(world.statuses(world.alice).contains(&480));
}

#[test]
fn an_extension_without_outbound_permission_is_refused() {
    let mut world = World::new(1, CoreConfig::default());
    with_outbound_trunk(&mut world, "");
    let tenant = world.tenant();
    let mut alice = world
        .core
        .directory
        .extension_by_number(tenant, "1001")
        .unwrap()
        .clone();
    alice.outbound_allowed = false;
    world.core.apply(Update::ExtensionUpsert(alice));
    world.call("+442071234567");
    assert_eq!(world.statuses(world.alice).last(), Some(&403));
    let end = world.ended().expect("a CDR");
    assert_eq!(end.cause, "outbound_not_allowed");
    assert_eq!(end.start.to_number, "+442071234567");
    assert!(world.requests(peer(60)).is_empty());
}

fn registrations(world: &World) -> Vec<crate::core::TrunkRegState> {
    world
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::TrunkRegistration(change) => Some(change.state.clone()),
            _ => None,
        })
        .collect()
}

/// The carrier answers `request` with `status`, adding `extra` headers.
fn carrier_answers(
    world: &mut World,
    request: &Request,
    status: u16,
    extra: &[(HeaderName, &str)],
) {
    let mut response = transaction::response_to(request, status, "Whatever");
    for (name, value) in extra {
        response.headers.push(name.clone(), *value);
    }
    let bytes = response.to_bytes();
    world
        .core
        .handle_datagram(world.now, WALL, peer(60), &bytes);
    world.drain();
}

#[test]
fn a_trunk_registers_through_a_challenge_and_refreshes_before_expiry() {
    use switchboard_sip::header::CSeq;

    use crate::core::TrunkRegState;
    use crate::directory::{Outbound, Trunk};
    let mut world = World::new(0, CoreConfig::default());
    let tenant = world.tenant();
    let trunk = Trunk {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        name: "telnyx".into(),
        sources: Vec::new(),
        outbound: Some(Box::new(Outbound {
            proxies: vec![SocketAddr::from(([192, 0, 2, 60], 5060))],
            transport: Transport::Udp,
            host: "sip.carrier.example".into(),
            credentials: Some(("acme".into(), "trunk-pass".into())),
            tech_prefix: String::new(),
            headers: Vec::new(),
            register: Some("acme".into()),
        })),
    };
    world.core.apply(Update::TrunkUpsert(trunk.clone()));
    world.advance(Duration::ZERO);
    world.core.handle_timeout(world.now);
    world.drain();
    let proxy = peer(60);
    // The proxy is asked OPTIONS too: only REGISTERs count here.
    let last_register = |world: &mut World| {
        world
            .requests(proxy)
            .into_iter()
            .rfind(|r| r.method == Method::Register)
    };
    let challenge = "Digest realm=\"carrier\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"";
    for round in 0..2 {
        let register = last_register(&mut world).expect("a REGISTER");
        assert_eq!(register.method, Method::Register);
        assert_eq!(register.uri.to_string(), "sip:sip.carrier.example");
        assert!(
            register
                .headers
                .get(&HeaderName::To)
                .unwrap()
                .contains("sip:acme@sip.carrier.example")
        );
        assert!(register.headers.get(&HeaderName::Authorization).is_none());
        carrier_answers(
            &mut world,
            &register,
            401,
            &[(HeaderName::WwwAuthenticate, challenge)],
        );
        let again = world
            .requests(proxy)
            .pop()
            .expect("the REGISTER with credentials");
        let (first, second) = (
            CSeq::parse(register.headers.get(&HeaderName::CSeq).unwrap())
                .unwrap()
                .seq,
            CSeq::parse(again.headers.get(&HeaderName::CSeq).unwrap())
                .unwrap()
                .seq,
        );
        assert_eq!(second, first + 1);
        assert!(
            again
                .headers
                .get(&HeaderName::Authorization)
                .unwrap()
                .contains("username=\"acme\"")
        );
        let contact = again.headers.get(&HeaderName::Contact).unwrap().to_owned();
        let granted = format!("{contact};expires=60");
        carrier_answers(
            &mut world,
            &again,
            200,
            &[(HeaderName::Contact, granted.as_str())],
        );
        assert_eq!(
            registrations(&world).last(),
            Some(&TrunkRegState::Registered { expires: 60 }),
            "round {round}"
        );
        assert_eq!(SipStats::get(&world.core.stats().trunks_registered), 1);
        world.outputs.clear();
        // Refreshed at half the granted time, well before it runs out.
        world.advance(Duration::from_secs(29));
        assert!(last_register(&mut world).is_none());
        world.advance(Duration::from_secs(1));
    }
    // A refusal is retried after 30 s.
    let register = last_register(&mut world).expect("a REGISTER");
    carrier_answers(&mut world, &register, 403, &[]);
    assert!(
        matches!(registrations(&world).last(), Some(TrunkRegState::Failed { reason }) if reason.starts_with("403"))
    );
    assert_eq!(
        SipStats::get(&world.core.stats().trunk_register_failures),
        1
    );
    world.advance(Duration::from_secs(29));
    assert!(last_register(&mut world).is_none());
    world.advance(Duration::from_secs(1));
    let register = last_register(&mut world).expect("the retry");
    carrier_answers(&mut world, &register, 200, &[(HeaderName::Expires, "120")]);
    assert_eq!(
        registrations(&world).last(),
        Some(&TrunkRegState::Registered { expires: 120 })
    );
    // Removing the trunk unregisters it.
    world.core.apply(Update::TrunkRemove(trunk.id));
    world.drain();
    let bye = last_register(&mut world).expect("the unregister");
    assert_eq!(bye.headers.get(&HeaderName::Expires), Some("0"));
    assert_eq!(
        registrations(&world).last(),
        Some(&TrunkRegState::Unregistered)
    );
    assert_eq!(SipStats::get(&world.core.stats().trunks_registered), 0);
}

#[test]
fn a_sequential_ring_group_rings_members_in_turn_and_records_who_answered() {
    use crate::directory::{Number, NumberTarget, RingGroup};
    let mut world = World::new(1, CoreConfig::default());
    with_trunk(&mut world);
    let tenant = world.tenant();
    let id_of = |world: &World, n: &str| {
        world
            .core
            .directory
            .extension_by_number(tenant, n)
            .unwrap()
            .id
    };
    let (alice, bob) = (id_of(&world, "1001"), id_of(&world, "1002"));
    // Alice's phone registers too; 1003 has none and is skipped.
    let alice_phone = world.alice;
    world.register(alice_phone, "1001", "alice-pass", 9);
    world
        .core
        .apply(Update::ExtensionUpsert(crate::directory::Extension {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            number: "1003".into(),
            display_name: String::new(),
            secret: "x".into(),
            record_calls: false,
            outbound_allowed: false,
            caller_id: None,
            forward: Forwarding::default(),
        }));
    let nobody = id_of(&world, "1003");
    let group = Uuid::new_v4();
    world.core.apply(Update::RingGroupUpsert(RingGroup {
        id: group,
        tenant_id: tenant,
        name: "sales".into(),
        members: vec![nobody, bob, alice],
        sequential: true,
        ring_timeout: Duration::from_secs(5),
    }));
    world.core.apply(Update::NumberUpsert(Number {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        e164: "+15551230007".into(),
        target: NumberTarget::RingGroup(group),
    }));
    world.outputs.clear();
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230007"));
    let bob_phone = world.bob[0];
    let bob_invite = world
        .requests(bob_phone)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("1003 skipped, Bob first");
    assert!(world.requests(alice_phone).is_empty());
    // Bob's phone rings, so its CANCEL can go at once when his turn is over.
    world.answer_from(bob_phone, &bob_invite, 180, None);
    world.advance(Duration::from_secs(5));
    assert!(
        world
            .requests(bob_phone)
            .iter()
            .any(|r| r.method == Method::Cancel)
    );
    let invite = world
        .requests(alice_phone)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("then Alice");
    world.answer_from(
        alice_phone,
        &invite,
        200,
        Some(sdp("192.0.2.10", 4000, "sendrecv")),
    );
    assert!(world.statuses(carrier).contains(&200));
    world
        .core
        .handle_media_event(world.now, WALL, MediaEvent::Inactive { session: 1 });
    world.drain();
    let end = world.ended().expect("a CDR");
    assert_eq!(end.start.to_extension, Some(alice));
    assert_eq!(end.start.to_number, "sales");
}

#[test]
fn a_simultaneous_ring_group_rings_everyone_and_fails_when_nobody_answers() {
    use crate::directory::{Number, NumberTarget, RingGroup};
    let mut world = World::new(2, CoreConfig::default());
    with_trunk(&mut world);
    let tenant = world.tenant();
    let bob = world.extension_id("1002");
    let group = Uuid::new_v4();
    world.core.apply(Update::RingGroupUpsert(RingGroup {
        id: group,
        tenant_id: tenant,
        name: "support".into(),
        members: vec![bob],
        sequential: false,
        ring_timeout: Duration::from_secs(8),
    }));
    world.core.apply(Update::NumberUpsert(Number {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        e164: "+15551230008".into(),
        target: NumberTarget::RingGroup(group),
    }));
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230008"));
    for phone in world.bob.clone() {
        assert!(
            world
                .requests(phone)
                .iter()
                .any(|r| r.method == Method::Invite)
        );
    }
    world.advance(Duration::from_secs(8));
    assert_eq!(world.statuses(carrier).last(), Some(&480));
    assert_eq!(world.ended().expect("a CDR").cause, "no_answer");
}

#[test]
fn an_ivr_passes_a_call_on_to_a_number_through_a_trunk() {
    let mut world = World::new(0, CoreConfig::default());
    with_trunk(&mut world);
    let out_trunk = with_outbound_trunk(&mut world, "1");
    publish_flow(
        &mut world,
        serde_json::json!({
            "entry": "forward",
            "nodes": {"forward": {"verb": "dial", "number": "5551112222", "next": "bye"},
                      "bye": {"verb": "hangup"}}
        }),
        1,
        "+15551230006",
    );
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230006"));
    assert_eq!(world.statuses(carrier), [100], "the flow has not answered");
    let proxy = peer(60);
    let invite = world.requests(proxy).pop().expect("INVITE to the carrier");
    assert_eq!(
        invite.uri.to_string(),
        "sip:+15551112222@sip.carrier.example"
    );
    assert!(
        invite
            .headers
            .get(&HeaderName::From)
            .unwrap()
            .contains("+15550001111")
    );
    assert_eq!(
        invite.headers.get(&HeaderName::parse("Diversion")),
        Some("<sip:+15551230006@example.com>;reason=unconditional")
    );
    world.answer_from(proxy, &invite, 180, None);
    assert_eq!(world.statuses(carrier), [180], "the caller hears ringing");
    // Early media (a carrier's announcement or ringback) reaches the caller before the answer.
    world.answer_from(
        proxy,
        &invite,
        183,
        Some(sdp("192.0.2.60", 9000, "sendrecv")),
    );
    let early = world.responses(carrier);
    assert_eq!(early.iter().map(|r| r.status).collect::<Vec<_>>(), [183]);
    assert_eq!(
        Sdp::parse(&early[0].body).unwrap().media[0].formats,
        ["0", "101"]
    );
    assert!(world.media().iter().any(|m| matches!(
        m,
        MediaCommand::Update { a_side: false, expected: Some(e), .. } if e.port() == 9000
    )));
    world.answer_from(
        proxy,
        &invite,
        200,
        Some(sdp("192.0.2.60", 9000, "sendrecv")),
    );
    let ok = world.responses(carrier);
    assert_eq!(
        ok.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200],
        "answered with the callee"
    );
    assert_eq!(
        Sdp::parse(&ok[0].body).unwrap().media[0].formats,
        ["0", "101"]
    );
    // The record names the trunk the dial went out through, beside the one it came in on.
    let session = world.session();
    world
        .core
        .end_by_system(world.now, WALL, session, ("test", 503));
    world.drain();
    let end = world.ended().expect("a CDR");
    let ivr = end.ivr.as_ref().expect("the flow's summary");
    assert_eq!(ivr.out_trunk, Some(out_trunk));
    assert_ne!(end.start.trunk_id, Some(out_trunk));
}

#[test]
fn toll_fraud_limits_refuse_calls_out_with_a_record_that_says_why() {
    use crate::core::OutboundLimits;
    let limits = OutboundLimits {
        allowed_prefixes: vec!["1".into()],
        max_concurrent_per_tenant: 1,
        daily_minutes_per_tenant: 1,
    };
    let config = CoreConfig {
        outbound: limits,
        ..CoreConfig::default()
    };
    let mut world = World::new(0, config.clone());
    with_outbound_trunk(&mut world, "");
    let refused = |world: &mut World, number: &str| {
        world.outputs.clear();
        world.call(number);
        assert_eq!(world.statuses(world.alice).last(), Some(&403), "{number}");
        world.ended().expect("a CDR").cause
    };
    assert_eq!(
        refused(&mut world, "+442071234567"),
        "destination_not_allowed"
    );
    // One call out at a time.
    world.outputs.clear();
    world.call("5551234567");
    assert!(
        world
            .requests(peer(60))
            .iter()
            .any(|r| r.method == Method::Invite)
    );
    assert_eq!(refused(&mut world, "5551234568"), "outbound_call_limit");

    // A minute out already used today (counted from the records at start).
    let mut world = World::new(0, config);
    with_outbound_trunk(&mut world, "");
    let tenant = world.tenant();
    world.core.seed_outbound_usage(tenant, WALL, 60_000);
    assert_eq!(refused(&mut world, "5551234567"), "daily_minutes_exceeded");
}

#[test]
fn trunk_proxies_are_qualified_and_a_failing_one_hands_the_call_on() {
    use crate::directory::{Outbound, Route, Trunk};
    let mut world = World::new(0, CoreConfig::default());
    let tenant = world.tenant();
    let trunk = Uuid::new_v4();
    world.core.apply(Update::TrunkUpsert(Trunk {
        id: trunk,
        tenant_id: tenant,
        name: "carrier".into(),
        sources: Vec::new(),
        outbound: Some(Box::new(Outbound {
            proxies: vec![
                SocketAddr::from(([192, 0, 2, 60], 5060)),
                SocketAddr::from(([192, 0, 2, 61], 5060)),
            ],
            transport: Transport::Udp,
            host: "sip.carrier.example".into(),
            credentials: None,
            tech_prefix: String::new(),
            headers: Vec::new(),
            register: None,
        })),
    }));
    world.core.apply(Update::RouteUpsert(Route {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        prefix: String::new(),
        trunk_id: trunk,
        priority: 1,
    }));
    let (primary, secondary) = (peer(60), peer(61));
    // The shell runs the timers after every directory change; the proxies are first asked
    // one period later.
    world.core.handle_timeout(world.now);
    world.drain();
    assert!(world.requests(primary).is_empty());
    world.advance(Duration::from_secs(30));
    let options = |world: &mut World, to| {
        world
            .requests(to)
            .into_iter()
            .rfind(|r| r.method == Method::Options)
    };
    // The primary never answers; the secondary does.
    assert!(options(&mut world, primary).is_some());
    let asked = options(&mut world, secondary).expect("OPTIONS to the secondary");
    carrier_answers_from(&mut world, secondary, &asked, 200);
    world.advance(Duration::from_secs(33));
    assert_eq!(SipStats::get(&world.core.stats().trunk_proxies_down), 1);

    // A call goes to the proxy that answers; its 503 hands the call to the other one.
    world.call("5551234567");
    let invite = world
        .requests(secondary)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("INVITE to the proxy that is up");
    assert!(
        world
            .requests(primary)
            .iter()
            .all(|r| r.method != Method::Invite)
    );
    carrier_answers_from(&mut world, secondary, &invite, 503);
    let again = world
        .requests(primary)
        .into_iter()
        .find(|r| r.method == Method::Invite)
        .expect("the INVITE again, to the other proxy");
    assert_eq!(again.headers.get(&HeaderName::CSeq), Some("2 INVITE"));
    assert_eq!(
        again.headers.get(&HeaderName::CallId),
        invite.headers.get(&HeaderName::CallId)
    );
}

fn carrier_answers_from(world: &mut World, from: Peer, request: &Request, status: u16) {
    let mut response = transaction::response_to(request, status, "Whatever");
    let to = response.headers.get(&HeaderName::To).unwrap().to_owned();
    if !to.contains("tag=") {
        response
            .headers
            .set(HeaderName::To, format!("{to};tag=proxy"));
    }
    world
        .core
        .handle_datagram(world.now, WALL, from, &response.to_bytes());
    world.drain();
}

#[test]
fn a_carriers_record_route_is_mirrored_and_followed() {
    let mut world = World::new(0, CoreConfig::default());
    with_trunk(&mut world);
    with_ivr(&mut world);
    let carrier = peer(50);
    let invite = carrier_invite(1, "+15551230003").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRecord-Route: <sip:192.0.2.51;lr>\r\n",
    );
    world.send(carrier, &invite);
    let ok = world
        .responses(carrier)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("the flow answers");
    assert_eq!(
        ok.headers.get(&HeaderName::RecordRoute),
        Some("<sip:192.0.2.51;lr>")
    );
    // Nobody presses a key: the flow hangs up, and its BYE follows the route set.
    let session = world.session();
    for id in 1..=3 {
        world
            .core
            .handle_media_event(world.now, WALL, MediaEvent::PlayDone { session, id });
        world.advance(Duration::from_secs(5));
    }
    world.drain();
    let bye = world
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Transmit { bytes, .. } => match Message::parse(bytes, &Limits::default()) {
                Ok(Message::Request(r)) if r.method == Method::Bye => Some(r),
                _ => None,
            },
            _ => None,
        })
        .expect("a BYE");
    assert_eq!(
        bye.headers.get(&HeaderName::Route),
        Some("<sip:192.0.2.51;lr>")
    );
}

#[test]
fn a_late_cancel_leaves_a_flows_call_up_and_a_flows_dial_obeys_the_toll_fraud_limits() {
    use crate::core::OutboundLimits;
    let config = CoreConfig {
        outbound: OutboundLimits {
            allowed_prefixes: vec!["1".into()],
            max_concurrent_per_tenant: 10,
            daily_minutes_per_tenant: 0,
        },
        ..CoreConfig::default()
    };
    let mut world = World::new(0, config);
    with_trunk(&mut world);
    with_outbound_trunk(&mut world, "");
    publish_flow(
        &mut world,
        serde_json::json!({
            "entry": "hello",
            "nodes": {"hello": {"verb": "play", "prompt": "hello", "next": "abroad"},
                      "abroad": {"verb": "dial", "number": "+442071234567",
                                 "transitions": {"failed": "sorry"}},
                      "sorry": {"verb": "play", "prompt": "sorry"}}
        }),
        1,
        "+15551230010",
    );
    let carrier = peer(50);
    world.send(carrier, &carrier_invite(1, "+15551230010"));
    assert!(world.statuses(carrier).contains(&200));
    // A CANCEL that crosses the 200 gets its own 200 and changes nothing.
    let cancel = carrier_invite(1, "+15551230010")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    world.send(carrier, &cancel);
    assert!(world.ended().is_none(), "the call is still up");
    // The prompt ends; the flow's dial abroad is outside the allowed prefixes: `failed`.
    let session = world.session();
    world
        .core
        .handle_media_event(world.now, WALL, MediaEvent::PlayDone { session, id: 1 });
    world.drain();
    assert!(
        world
            .requests(peer(60))
            .iter()
            .all(|r| r.method != Method::Invite)
    );
    assert!(
        world
            .media()
            .iter()
            .any(|m| matches!(m, MediaCommand::Play { prompt, .. } if prompt == "sorry"))
    );
}

#[test]
fn a_2xx_that_crosses_our_cancel_is_acknowledged_and_hung_up() {
    let mut world = World::new(1, CoreConfig::default());
    world.call("1002");
    let bob = world.bob[0];
    let invite = world.requests(bob).pop().expect("INVITE to Bob");
    world.answer_from(bob, &invite, 180, None);
    // Alice gives up: the call ends at once, and Bob's INVITE is cancelled.
    let cancel = world
        .invite_text(2, "", "1002")
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL");
    world.send(world.alice, &cancel);
    assert!(world.ended().is_some());
    assert!(
        world
            .requests(bob)
            .iter()
            .any(|r| r.method == Method::Cancel)
    );
    // Bob answered just before the CANCEL arrived.
    world.answer_from(bob, &invite, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    let sent = world.requests(bob);
    assert!(sent.iter().any(|r| r.method == Method::Ack), "{sent:?}");
    assert!(sent.iter().any(|r| r.method == Method::Bye), "{sent:?}");
}

/// A browser's REGISTER over WebSocket connection `conn` with `username`'s credentials.
fn browser_register(world: &mut World, conn: u64, username: &str, password: &str) -> Response {
    let browser = Peer {
        transport: Transport::Ws,
        addr: SocketAddr::from(([192, 0, 2, 40], 50_000 + u16::try_from(conn).unwrap())),
        conn: Some(conn),
    };
    let text = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS h7k2.invalid;branch=z9hG4bKws{conn}{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:1002@example.com>;tag=ws{conn}\r\nTo: <sip:1002@example.com>\r\nCall-ID: ws-{conn}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:k3j@h7k2.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance=\"<urn:uuid:{conn}>\"\r\n\
             Supported: path, outbound, gruu\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    world.send(browser, &text(1, ""));
    // Browser libraries know MD5 only (SIP.js answers the last challenge, whatever it is).
    let unauthorized = world.responses(browser).pop().expect("a challenge");
    let offered: Vec<&str> = unauthorized
        .headers
        .get_all(&HeaderName::WwwAuthenticate)
        .collect();
    assert!(
        matches!(&offered[..], [md5] if md5.contains("algorithm=MD5")),
        "{offered:?}"
    );
    let challenge = Challenge::parse(offered[0]).unwrap();
    let answer = challenge.answer(username, password, "REGISTER", "sip:example.com", "cn", 1);
    world.send(browser, &text(2, &format!("Authorization: {answer}\r\n")));
    world.responses(browser).pop().expect("an answer")
}

#[test]
fn a_browsers_short_lived_credentials_register_until_they_expire() {
    let mut world = World::new(0, CoreConfig::default());
    let key = [9u8; 32];
    let bob = world.extension_id("1002");
    let expires = WALL / 1000 + 3600;
    let username = digest::ephemeral::username(expires, "1002");
    let password = digest::ephemeral::password(&key, &username, &bob.to_string(), "bob-pass");
    // Without the key the form is just an unknown username.
    assert_eq!(
        browser_register(&mut world, 1, &username, &password).status,
        403
    );
    world.core.set_credential_key(key);
    let ok = browser_register(&mut world, 2, &username, &password);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("outbound"));
    assert_eq!(
        ok.headers.get(&HeaderName::Other("Flow-Timer".into())),
        Some("120")
    );
    assert_eq!(world.core.registrar.bindings(bob).len(), 1);
    // A wrong password, an expired username, and credentials of another extension fail.
    assert_eq!(
        browser_register(&mut world, 3, &username, "guess").status,
        403
    );
    let old = digest::ephemeral::username(WALL / 1000 - 1, "1002");
    let old_password = digest::ephemeral::password(&key, &old, &bob.to_string(), "bob-pass");
    let expired = browser_register(&mut world, 4, &old, &old_password);
    assert_eq!(
        (expired.status, expired.reason.as_str()),
        (403, "Credentials Expired")
    );
    let alice = world.extension_id("1001");
    let theirs = digest::ephemeral::username(expires, "1001");
    let theirs_password =
        digest::ephemeral::password(&key, &theirs, &alice.to_string(), "alice-pass");
    let response = browser_register(&mut world, 5, &theirs, &theirs_password);
    assert_eq!(
        (response.status, response.reason.as_str()),
        (403, "Forbidden: not your address of record")
    );
}

#[test]
fn a_closed_websocket_ends_its_calls_and_its_registration() {
    let mut world = World::new(0, CoreConfig::default());
    let (browser, invite) = alice_calls_browser_bob(&mut world, 7);
    let offer = String::from_utf8_lossy(&invite.body).into_owned();
    let answer = browser_answers(&offer);
    world.answer_from(browser, &invite, 200, Some(answer));
    alice_acks(&mut world);
    world.outputs.clear();
    world.core.connection_closed(world.now, WALL, 7);
    world.drain();
    let methods =
        |requests: Vec<Request>| requests.into_iter().map(|r| r.method).collect::<Vec<_>>();
    assert_eq!(methods(world.requests(world.alice)), [Method::Bye]);
    let end = world.ended().unwrap();
    assert_eq!(
        (end.disposition, end.cause, end.side),
        (Disposition::Answered, "connection_lost", HangupSide::System)
    );
    assert!(world.outputs.iter().any(|o| matches!(
        o,
        Output::Registration(crate::registrar::Change::Remove { contact, .. }) if contact.contains("h7k2.invalid")
    )));
    assert!(
        world
            .core
            .registrar
            .bindings(world.extension_id("1002"))
            .is_empty()
    );
}

/// Bob registers a browser over WebSocket connection `conn`, and Alice (a phone) calls him;
/// returns the browser's peer and the INVITE it got.
fn alice_calls_browser_bob(world: &mut World, conn: u64) -> (Peer, Request) {
    let registered = browser_register(world, conn, "1002", "bob-pass");
    assert_eq!(registered.status, 200);
    let browser = world.core.registrar.bindings(world.extension_id("1002"))[0].peer;
    world.call("1002");
    let invite = world
        .requests(browser)
        .pop()
        .expect("INVITE to the browser");
    (browser, invite)
}

/// A browser stand-in's answer to our WebRTC `offer`.
fn browser_answers(offer: &str) -> String {
    let offer = str0m::change::SdpOffer::from_sdp_string(offer).unwrap();
    browser_rtc()
        .sdp_api()
        .accept_offer(offer)
        .unwrap()
        .to_sdp_string()
}

/// `browser` (over WebSocket connection `conn`) calls 1002 as 1001, through the challenge;
/// returns its peer, its offer and the pending offer to complete with our answer.
fn browser_calls_1002(
    world: &mut World,
    browser: &mut str0m::Rtc,
    conn: u64,
) -> (Peer, String, str0m::change::SdpPendingOffer) {
    let mut change = browser.sdp_api();
    let (audio, both) = (
        str0m::media::MediaKind::Audio,
        str0m::media::Direction::SendRecv,
    );
    change.add_media(audio, both, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let offer = offer.to_sdp_string();
    let ws = Peer {
        transport: Transport::Ws,
        addr: SocketAddr::from(([192, 0, 2, 40], 51_000 + u16::try_from(conn).unwrap())),
        conn: Some(conn),
    };
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:1002@example.com SIP/2.0\r\nVia: SIP/2.0/WSS b{conn}.invalid;branch=z9hG4bKbr{conn}x{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@example.com>;tag=br{conn}\r\nTo: <sip:1002@example.com>\r\n\
             Call-ID: browser-{conn}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:x@b{conn}.invalid;transport=ws>\r\n\
             Content-Type: application/sdp\r\n{auth}Content-Length: {}\r\n\r\n{offer}",
            offer.len()
        )
    };
    world.send(ws, &invite(1, ""));
    let challenge = world.challenge(ws);
    let uri = "sip:1002@example.com";
    let answer = challenge.answer("1001", "alice-pass", "INVITE", uri, "cn", 1);
    world.send(ws, &invite(2, &format!("Authorization: {answer}\r\n")));
    (ws, offer, pending)
}

/// A browser stand-in (str0m, full ICE) that offers audio as Chromium does: Opus first, then
/// PCMU, PCMA and telephone-event.
fn browser_rtc() -> str0m::Rtc {
    let mut config = str0m::Rtc::builder().set_rtp_mode(true).clear_codecs();
    let codecs = config.codec_config();
    codecs.enable_opus(true, false);
    codecs.enable_pcmu(true, false);
    codecs.enable_pcma(true, false);
    codecs.add_config(
        126.into(),
        None,
        str0m::format::Codec::Tele,
        str0m::media::Frequency::EIGHT_KHZ,
        None,
        str0m::format::FormatParams::parse_line("0-16"),
    );
    let mut rtc = config.build(Instant::now());
    let host = str0m::Candidate::host("192.0.2.40:50000".parse().unwrap(), "udp").unwrap();
    rtc.add_local_candidate(host);
    rtc
}

#[test]
fn a_browser_calls_a_phone_with_webrtc_on_its_side_and_plain_rtp_on_the_other() {
    let mut world = World::new(1, CoreConfig::default());
    let mut browser = browser_rtc();
    let (ws, offer, pending) = browser_calls_1002(&mut world, &mut browser, 3);

    // The phone is offered plain RTP with the one G.711 codec the browser's leg will carry.
    let bob = world.bob[0];
    let to_bob = world.requests(bob).pop().expect("INVITE to Bob");
    let plain = String::from_utf8_lossy(&to_bob.body).into_owned();
    assert!(
        plain.contains("m=audio ") && plain.contains(" RTP/AVP 0 126\r\n"),
        "{plain}"
    );
    for webrtc in [
        "fingerprint",
        "ice-ufrag",
        "candidate",
        "SAVPF",
        "opus",
        "a=mid",
    ] {
        assert!(!plain.contains(webrtc), "{webrtc} in {plain}");
    }
    assert!(
        world
            .media()
            .iter()
            .any(|m| matches!(m, MediaCommand::WebRtc { a_side: true, .. }))
    );
    world.answer_from(bob, &to_bob, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));

    // The browser gets the WebRTC answer of its leg, which str0m (as the browser) accepts.
    let ok = world
        .responses(ws)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200");
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(
        answer.contains("a=ice-lite") && answer.contains("a=fingerprint:"),
        "{answer}"
    );
    assert!(
        answer.contains("203.0.113.1 "),
        "our advertised address: {answer}"
    );
    browser
        .sdp_api()
        .accept_answer(
            pending,
            str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap(),
        )
        .unwrap();

    // The browser holds (SIP.js re-offers sendonly): we answer it ourselves, recvonly, with
    // the same transport, and the phone's leg is left alone.
    let tag = NameAddr::parse(ok.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .params
        .get("tag")
        .flatten()
        .unwrap()
        .to_owned();
    let held = offer.replace("a=sendrecv", "a=sendonly");
    let reinvite = format!(
        "INVITE sip:switchboard@203.0.113.1:5060;transport=ws SIP/2.0\r\nVia: SIP/2.0/WSS b3.invalid;branch=z9hG4bKhold\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@example.com>;tag=br3\r\nTo: <sip:1002@example.com>;tag={tag}\r\n\
         Call-ID: browser-3\r\nCSeq: 3 INVITE\r\nContact: <sip:x@b3.invalid;transport=ws>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{held}",
        held.len()
    );
    world.outputs.clear();
    world.send(ws, &reinvite);
    let refreshed = world.responses(ws).pop().expect("an answer to the hold");
    assert_eq!(refreshed.status, 200);
    let body = String::from_utf8_lossy(&refreshed.body).into_owned();
    assert!(
        body.contains("a=recvonly") && body.contains("a=ice-lite"),
        "{body}"
    );
    let fingerprint = answer
        .lines()
        .find(|l| l.starts_with("a=fingerprint"))
        .unwrap();
    assert!(body.contains(fingerprint), "{body}");
    assert!(
        world.requests(bob).is_empty(),
        "the phone's leg is not renegotiated"
    );
}

#[test]
fn a_phone_calls_a_browser_that_answers_our_webrtc_offer() {
    let mut world = World::new(0, CoreConfig::default());
    let (browser_peer, to_browser) = alice_calls_browser_bob(&mut world, 9);
    let offer = String::from_utf8_lossy(&to_browser.body).into_owned();
    // G.711 from the caller's offer, Opus after it for a browser without G.711.
    assert!(offer.contains("UDP/TLS/RTP/SAVPF 0 111 101"), "{offer}");
    assert!(!offer.contains("a=crypto"), "{offer}");
    world.answer_from(
        browser_peer,
        &to_browser,
        200,
        Some(browser_answers(&offer)),
    );
    assert!(
        world
            .media()
            .iter()
            .any(|m| matches!(m, MediaCommand::WebRtc { a_side: false, .. }))
    );
    // Alice, a phone, is answered with plain RTP.
    let ok = world
        .responses(world.alice)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200");
    let plain = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(plain.contains(" RTP/AVP 0 101\r\n"), "{plain}");
    assert!(
        !plain.contains("fingerprint") && !plain.contains("SAVPF"),
        "{plain}"
    );
}

#[test]
fn a_browser_offering_only_opus_gets_opus_and_the_phone_g711() {
    let mut world = World::new(1, CoreConfig::default());
    let mut config = str0m::Rtc::builder().set_rtp_mode(true).clear_codecs();
    config.codec_config().enable_opus(true, false);
    let mut browser = config.build(Instant::now());
    let host = str0m::Candidate::host("192.0.2.41:50000".parse().unwrap(), "udp").unwrap();
    browser.add_local_candidate(host);
    let (ws, _, pending) = browser_calls_1002(&mut world, &mut browser, 4);
    // The phone is offered PCMU and PCMA; the browser's leg carries Opus (transcoded).
    let bob = world.bob[0];
    let to_bob = world.requests(bob).pop().expect("INVITE to Bob");
    let plain = String::from_utf8_lossy(&to_bob.body).into_owned();
    assert!(plain.contains(" RTP/AVP 0 8\r\n"), "{plain}");
    assert!(
        plain.contains("a=rtpmap:0 PCMU/8000") && !plain.contains("opus"),
        "{plain}"
    );
    let opus = world.media().iter().find_map(|m| match m {
        MediaCommand::WebRtc {
            a_side: true, leg, ..
        } => Some(leg.opus()),
        _ => None,
    });
    assert!(matches!(opus, Some(Some(_))), "{opus:?}");
    world.answer_from(bob, &to_bob, 200, Some(sdp("192.0.2.20", 6000, "sendrecv")));
    let ok = world
        .responses(ws)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("200");
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(answer.contains("opus/48000/2"), "{answer}");
    browser
        .sdp_api()
        .accept_answer(
            pending,
            str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap(),
        )
        .unwrap();
}

#[test]
fn star_67_withholds_the_callers_number_from_the_callee_but_not_the_carrier() {
    let mut world = World::new(1, CoreConfig::default());
    with_outbound_trunk(&mut world, "1");
    world.call("*675551234567");
    let invite = world
        .requests(peer(60))
        .pop()
        .expect("INVITE to the carrier");
    // RFC 3323: an anonymous From; RFC 3325: the real identity asserted, with Privacy: id.
    assert_eq!(
        invite.uri.to_string(),
        "sip:+15551234567@sip.carrier.example"
    );
    let from = invite.headers.get(&HeaderName::From).unwrap();
    assert!(
        from.starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="),
        "{from}"
    );
    assert_eq!(
        invite
            .headers
            .get(&HeaderName::parse("P-Asserted-Identity")),
        Some("<sip:1001@example.com>")
    );
    assert_eq!(
        invite.headers.get(&HeaderName::parse("Privacy")),
        Some("id")
    );
    // The record names the number dialled, without the prefix.
    assert_eq!(world.started().to_number, "+15551234567");
}

#[test]
fn the_tenants_number_is_presented_when_the_extension_has_none() {
    let mut world = World::new(1, CoreConfig::default());
    let tenant = world.tenant();
    world.core.apply(Update::TenantUpsert(Tenant {
        id: tenant,
        domain: "example.com".into(),
        record_calls: false,
        caller_id: Some("+15550001000".into()),
        max_outbound_calls: None,
        daily_outbound_minutes: None,
    }));
    with_outbound_trunk(&mut world, "1");
    world.call("5551234567");
    let invite = world
        .requests(peer(60))
        .pop()
        .expect("INVITE to the carrier");
    assert_eq!(
        invite
            .headers
            .get(&HeaderName::parse("P-Asserted-Identity")),
        Some("<sip:+15550001000@example.com>")
    );
    let from = invite.headers.get(&HeaderName::From).unwrap();
    assert!(from.contains("<sip:+15550001000@example.com>"), "{from}");
}

#[test]
fn a_tenants_own_outbound_limits_replace_the_servers() {
    let mut world = World::new(0, CoreConfig::default());
    with_outbound_trunk(&mut world, "1");
    let tenant = world.tenant();
    let limited = |calls: Option<usize>| {
        Update::TenantUpsert(Tenant {
            id: tenant,
            domain: "example.com".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: calls,
            daily_outbound_minutes: None,
        })
    };
    // No calls out at all for this tenant, whatever the server allows.
    world.core.apply(limited(Some(0)));
    world.call("5551234567");
    assert_eq!(world.statuses(world.alice).last(), Some(&403));
    assert_eq!(world.ended().expect("a CDR").cause, "outbound_call_limit");
    // Without its own limit, the server's (100 at once) applies again.
    world.outputs.clear();
    world.core.apply(limited(None));
    world.call("5551234567");
    assert!(
        world.requests(peer(60)).pop().is_some(),
        "the call goes out"
    );
}

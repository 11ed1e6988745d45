//! Transaction machines on virtual time over a simulated link: exact retransmission schedules,
//! loss, reordering of retransmissions, absorption, forking, overload.

// Virtual time needs one real origin; everything after it is computed.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;
use crate::message::{Limits, Message};

const ALICE: u8 = 1;
const BOB: u8 = 2;
const LATENCY: Duration = Duration::from_millis(20);

/// A deterministic xorshift generator for loss decisions.
struct Rng(u64);

impl Rng {
    fn chance(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 < percent
    }
}

/// What the server's transaction user does with a new request.
#[derive(Clone, Copy)]
enum Answer {
    /// Nothing at all.
    Ignore,
    /// A final response with this status right away (after a 180 for INVITEs).
    Final(u16),
}

/// Two transaction layers joined by a link with latency and seeded loss.
struct Net {
    now: Instant,
    start: Instant,
    alice: Transactions<u8>,
    bob: Transactions<u8>,
    in_flight: VecDeque<(Instant, u8, Bytes)>,
    rng: Rng,
    loss_percent: u64,
    /// Drop everything sent from this side.
    blackhole: Option<u8>,
    reliable: bool,
    answer: Answer,
    /// (time since start, from, first line) of every datagram sent.
    sent: Vec<(Duration, u8, String)>,
    alice_events: Vec<Event<u8>>,
    bob_events: Vec<Event<u8>>,
}

impl Net {
    fn new(answer: Answer) -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            alice: Transactions::new(Timers::default(), 1_000),
            bob: Transactions::new(Timers::default(), 1_000),
            in_flight: VecDeque::new(),
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            loss_percent: 0,
            blackhole: None,
            reliable: false,
            answer,
            sent: Vec::new(),
            alice_events: Vec::new(),
            bob_events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(output) = self.alice.poll_output() {
                progressed = true;
                match output {
                    Output::Transmit { to, bytes } => self.send(ALICE, to, bytes),
                    Output::Event(event) => self.alice_event(event),
                }
            }
            while let Some(output) = self.bob.poll_output() {
                progressed = true;
                match output {
                    Output::Transmit { to, bytes } => self.send(BOB, to, bytes),
                    Output::Event(event) => self.bob_event(event),
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn send(&mut self, from: u8, to: u8, bytes: Bytes) {
        let line = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        self.sent.push((self.now - self.start, from, line));
        if self.blackhole == Some(from) || (!self.reliable && self.rng.chance(self.loss_percent)) {
            return;
        }
        self.in_flight.push_back((self.now + LATENCY, to, bytes));
    }

    fn alice_event(&mut self, event: Event<u8>) {
        if let Event::Response { response, .. } = &event
            && (200..300).contains(&response.status)
            && let Some(invite) = self.last_invite()
        {
            // The TU acknowledges 2xx itself (§13.2.2.4), outside any transaction.
            let ack = ack_for(&invite, response);
            self.send(ALICE, BOB, Bytes::from(ack.to_bytes()));
        }
        self.alice_events.push(event);
    }

    fn bob_event(&mut self, event: Event<u8>) {
        if let (Event::Request { key, request, .. }, Answer::Final(status)) = (&event, self.answer)
            && request.method != Method::Ack
        {
            if request.method == Method::Invite {
                self.bob
                    .send_response(
                        self.now,
                        key,
                        with_tag(response_to(request, 180, "Ringing")),
                    )
                    .unwrap();
            }
            self.bob
                .send_response(
                    self.now,
                    key,
                    with_tag(response_to(request, status, "Done")),
                )
                .unwrap();
        }
        self.bob_events.push(event);
    }

    fn last_invite(&self) -> Option<Request> {
        self.sent
            .iter()
            .rev()
            .find(|(_, from, line)| *from == ALICE && line.starts_with("INVITE"))
            .map(|_| invite(0))
    }

    /// Runs until nothing is scheduled or `limit` of virtual time passes.
    fn run(&mut self, limit: Duration) {
        let end = self.start + limit;
        loop {
            self.drain();
            let next_delivery = self.in_flight.iter().map(|(at, _, _)| *at).min();
            let next = [
                self.alice.poll_timeout(),
                self.bob.poll_timeout(),
                next_delivery,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { return };
            if next > end {
                return;
            }
            self.now = next;
            let due: Vec<_> = {
                let (due, rest): (Vec<_>, Vec<_>) = self
                    .in_flight
                    .drain(..)
                    .partition(|(at, _, _)| *at <= self.now);
                self.in_flight = rest.into();
                due
            };
            for (_, to, bytes) in due {
                let message =
                    Message::parse(&bytes, &Limits::default()).expect("valid message on the wire");
                let (layer, from) = if to == BOB {
                    (&mut self.bob, ALICE)
                } else {
                    (&mut self.alice, BOB)
                };
                layer.handle_message(self.now, message, from, self.reliable);
            }
            self.alice.handle_timeout(self.now);
            self.bob.handle_timeout(self.now);
        }
    }

    fn times(&self, from: u8, prefix: &str) -> Vec<f64> {
        self.sent
            .iter()
            .filter(|(_, f, line)| *f == from && line.starts_with(prefix))
            .map(|(t, _, _)| t.as_secs_f64())
            .collect()
    }
}

fn with_tag(mut response: Response) -> Response {
    if response.status > 100 {
        let to = response
            .headers
            .get(&HeaderName::To)
            .unwrap_or_default()
            .to_owned();
        response
            .headers
            .set(HeaderName::To, format!("{to};tag=bob1"));
    }
    response
}

fn request(method: Method, branch: &str, seq: u32) -> Request {
    let mut headers = Headers::new();
    headers.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP alice.example.com:5060;branch={branch}"),
    );
    headers.push(HeaderName::MaxForwards, "70");
    headers.push(HeaderName::From, "<sip:alice@example.com>;tag=a1");
    headers.push(HeaderName::To, "<sip:bob@example.com>");
    headers.push(HeaderName::CallId, "call-1@alice");
    headers.push(HeaderName::CSeq, format!("{seq} {method}"));
    Request {
        method,
        uri: "sip:bob@example.com".parse().unwrap(),
        version: (2, 0),
        headers,
        body: Bytes::new(),
    }
}

fn invite(n: u32) -> Request {
    request(Method::Invite, &format!("z9hG4bKinv{n}"), 1)
}

fn close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 0.001, "{actual:?} vs {expected:?}");
    }
}

#[test]
fn timer_a_doubles_and_timer_b_gives_up() {
    let mut net = Net::new(Answer::Ignore);
    net.blackhole = Some(ALICE);
    net.alice
        .send_request(net.now, invite(0), BOB, false)
        .unwrap();
    net.run(Duration::from_secs(60));
    // §17.1.1.2: A = T1, 2·T1, 4·T1, ... until B = 64·T1 = 32 s.
    close(
        &net.times(ALICE, "INVITE"),
        &[0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5],
    );
    assert_eq!(
        net.alice_events,
        [Event::Timeout {
            key: ClientKey {
                branch: "z9hG4bKinv0".into(),
                method: Method::Invite
            }
        }]
    );
    assert!(net.alice.is_empty());
}

#[test]
fn timer_e_caps_at_t2_and_timer_f_gives_up() {
    let mut net = Net::new(Answer::Ignore);
    net.blackhole = Some(ALICE);
    net.alice
        .send_request(
            net.now,
            request(Method::Register, "z9hG4bKreg", 1),
            BOB,
            false,
        )
        .unwrap();
    net.run(Duration::from_secs(60));
    // §17.1.2.2: E = T1, 2·T1, 4·T1, then T2 (4 s) until F = 32 s.
    close(
        &net.times(ALICE, "REGISTER"),
        &[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5],
    );
    assert!(matches!(net.alice_events[..], [Event::Timeout { .. }]));
}

#[test]
fn non_invite_in_proceeding_retransmits_every_t2() {
    let mut net = Net::new(Answer::Ignore);
    net.alice
        .send_request(
            net.now,
            request(Method::Options, "z9hG4bKopt", 1),
            BOB,
            false,
        )
        .unwrap();
    net.drain();
    net.run(Duration::from_millis(100));
    let Some(Event::Request { key, request, .. }) = net.bob_events.first().cloned() else {
        panic!("no request")
    };
    net.bob
        .send_response(net.now, &key, response_to(&request, 183, "Working"))
        .unwrap();
    net.run(Duration::from_secs(40));
    // The 1xx arrives at 0.04 s; E still fires at T1 (0.5 s), then, in Proceeding, every T2,
    // until F at 32 s. Echoed 1xx responses don't move it.
    close(
        &net.times(ALICE, "OPTIONS"),
        &[0.0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5],
    );
    assert!(matches!(
        net.alice_events.last(),
        Some(Event::Timeout { .. })
    ));
}

#[test]
fn reliable_transports_never_retransmit() {
    let mut net = Net::new(Answer::Ignore);
    net.reliable = true;
    net.alice
        .send_request(net.now, invite(0), BOB, true)
        .unwrap();
    net.alice
        .send_request(
            net.now,
            request(Method::Register, "z9hG4bKreg", 1),
            BOB,
            true,
        )
        .unwrap();
    net.run(Duration::from_secs(60));
    assert_eq!(net.times(ALICE, "INVITE").len(), 1);
    assert_eq!(net.times(ALICE, "REGISTER").len(), 1);
    // The INVITE got a 100 Trying (Proceeding, waits up to Timer C); the REGISTER timed out.
    assert!(
        net.alice_events
            .iter()
            .any(|e| matches!(e, Event::Timeout { key } if key.method == Method::Register))
    );
}

#[test]
fn rejected_invite_is_acked_and_transactions_end_on_time() {
    let mut net = Net::new(Answer::Final(486));
    let key = net
        .alice
        .send_request(net.now, invite(0), BOB, false)
        .unwrap();
    net.run(Duration::from_secs(1));
    let statuses: Vec<u16> = net
        .alice_events
        .iter()
        .map(|e| match e {
            Event::Response { response, .. } => response.status,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [100, 180, 486]);
    // The transaction layer sent the ACK (§17.1.1.3) with the To tag of the 486.
    assert_eq!(net.times(ALICE, "ACK").len(), 1);
    net.run(Duration::from_secs(60));
    // Client: Timer D (32 s) ends it; server: Timer I (T4) after the ACK.
    assert!(net.alice.is_empty() && net.bob.is_empty());
    assert!(
        !net.alice_events
            .iter()
            .any(|e| matches!(e, Event::Timeout { .. })),
        "{key:?}"
    );
    assert!(
        !net.bob_events
            .iter()
            .any(|e| matches!(e, Event::AckTimeout { .. }))
    );
}

#[test]
fn lost_ack_gets_the_final_response_retransmitted_then_timer_h() {
    let mut net = Net::new(Answer::Final(603));
    net.alice
        .send_request(net.now, invite(0), BOB, false)
        .unwrap();
    net.run(Duration::from_millis(30));
    // From now on nothing Alice sends arrives: the ACK is lost every time.
    net.blackhole = Some(ALICE);
    net.run(Duration::from_secs(60));
    // Timer G: 603 at 0.02 s, then T1, 2·T1, 4·T1, capped at T2, until H = 32 s.
    let finals = net.times(BOB, "SIP/2.0 603");
    assert!(finals.len() >= 9, "{finals:?}");
    let gaps: Vec<f64> = finals.windows(2).map(|w| w[1] - w[0]).collect();
    close(&gaps[..4], &[0.5, 1.0, 2.0, 4.0]);
    assert!(
        gaps[4..].iter().all(|g| (g - 4.0).abs() < 0.001),
        "{gaps:?}"
    );
    // Alice re-ACKs each retransmission it receives (none arrive, she sees all of them).
    assert_eq!(net.times(ALICE, "ACK").len(), finals.len());
    assert!(matches!(
        net.bob_events.last(),
        Some(Event::AckTimeout { .. })
    ));
    assert!(net.bob.is_empty());
}

#[test]
fn server_absorbs_retransmissions_and_resends_last_response() {
    let mut net = Net::new(Answer::Ignore);
    let key = net
        .alice
        .send_request(net.now, request(Method::Bye, "z9hG4bKbye", 2), BOB, false)
        .unwrap();
    net.run(Duration::from_secs(2));
    // Three copies arrived (0, 0.5, 1.5 s) but the TU saw one request.
    assert_eq!(net.bob_events.len(), 1);
    let Event::Request {
        key: server,
        request,
        ..
    } = net.bob_events[0].clone()
    else {
        panic!()
    };
    net.bob
        .send_response(net.now, &server, with_tag(response_to(&request, 200, "OK")))
        .unwrap();
    net.run(Duration::from_secs(3));
    assert!(
        matches!(&net.alice_events[..], [Event::Response { response, .. }] if response.status == 200)
    );
    // A late retransmission of the BYE is answered from the transaction, not the TU.
    let bye = request.clone();
    net.bob
        .handle_message(net.now, Message::Request(bye), ALICE, false);
    net.drain();
    assert_eq!(net.bob_events.len(), 1);
    assert_eq!(net.times(BOB, "SIP/2.0 200").len(), 2);
    assert_eq!(key.method, Method::Bye);
    // The TU can't answer twice.
    assert_eq!(
        net.bob
            .send_response(net.now, &server, response_to(&request, 500, "x")),
        Err(TransactionError::AlreadyFinal)
    );
}

#[test]
fn forked_2xx_responses_all_reach_the_tu() {
    // RFC 6026 §8.4: after the first 2xx the client transaction stays (Accepted, Timer M) and
    // passes later 2xx from other forks to the TU.
    let mut layer = Transactions::<u8>::new(Timers::default(), 10);
    let now = Instant::now();
    let invite = invite(0);
    let key = layer.send_request(now, invite.clone(), BOB, false).unwrap();
    while layer.poll_output().is_some() {}
    for tag in ["fork-a", "fork-b", "fork-a"] {
        let mut ok = response_to(&invite, 200, "OK");
        ok.headers
            .set(HeaderName::To, format!("<sip:bob@example.com>;tag={tag}"));
        layer.handle_message(now, Message::Response(ok), BOB, false);
    }
    let responses = std::iter::from_fn(|| layer.poll_output())
        .filter(|o| matches!(o, Output::Event(Event::Response { .. })))
        .count();
    assert_eq!(
        responses, 3,
        "each 2xx (new fork or retransmission) goes to the TU to ACK"
    );
    assert!(layer.poll_timeout().is_some());
    layer.handle_timeout(now + Duration::from_secs(32));
    assert!(layer.is_empty(), "Timer M ended {key:?}");
}

#[test]
fn matching_follows_17_1_3_and_17_2_3() {
    let mut layer = Transactions::<u8>::new(Timers::default(), 10);
    let now = Instant::now();
    let invite = invite(7);
    layer.handle_message(now, Message::Request(invite.clone()), ALICE, false);
    // Same branch and sent-by but another method (CANCEL): a separate transaction.
    let mut cancel = invite.clone();
    cancel.method = Method::Cancel;
    cancel.headers.set(HeaderName::CSeq, "1 CANCEL");
    layer.handle_message(now, Message::Request(cancel), ALICE, false);
    // Same branch from another sent-by: another transaction.
    let mut other_host = invite.clone();
    other_host.headers.set(
        HeaderName::Via,
        "SIP/2.0/UDP mallory.example.com;branch=z9hG4bKinv7",
    );
    layer.handle_message(now, Message::Request(other_host), ALICE, false);
    assert_eq!(layer.len(), (0, 3));
    let events: Vec<_> = std::iter::from_fn(|| layer.poll_output())
        .filter_map(|o| match o {
            Output::Event(Event::Request { key, .. }) => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 3);
    // The response to the INVITE ends in Completed; its ACK matches the INVITE transaction.
    let key = events[0].clone();
    layer
        .send_response(now, &key, with_tag(response_to(&invite, 404, "Not Found")))
        .unwrap();
    let ack = ack_for(&invite, &with_tag(response_to(&invite, 404, "Not Found")));
    layer.handle_message(now, Message::Request(ack), ALICE, false);
    assert!(
        std::iter::from_fn(|| layer.poll_output()).all(|o| !matches!(o, Output::Event(_))),
        "ACK absorbed"
    );
    // RFC 2543 peers (no magic cookie): ACK still finds the INVITE.
    let mut old = invite.clone();
    old.headers
        .set(HeaderName::Via, "SIP/2.0/UDP old.example.com;branch=1234");
    let old_key = server_key(&old).unwrap();
    let old_ack = ack_for(&old, &with_tag(response_to(&old, 486, "Busy")));
    assert_eq!(server_key(&old_ack), Some(old_key));
}

#[test]
fn overload_is_bounded_and_reported() {
    let mut layer = Transactions::<u8>::new(Timers::default(), 2);
    let now = Instant::now();
    for n in 0..3 {
        layer.handle_message(
            now,
            Message::Request(request(Method::Options, &format!("z9hG4bKo{n}"), 1)),
            ALICE,
            false,
        );
    }
    assert_eq!(layer.len(), (0, 2));
    let overloaded = std::iter::from_fn(|| layer.poll_output())
        .filter(|o| matches!(o, Output::Event(Event::Overloaded { .. })))
        .count();
    assert_eq!(overloaded, 1);
    assert_eq!(
        layer.send_request(
            now,
            Request {
                method: Method::Ack,
                ..invite(1)
            },
            BOB,
            false
        ),
        Err(TransactionError::Ack)
    );
}

#[test]
fn timer_c_bounds_a_ringing_invite() {
    let mut net = Net::new(Answer::Ignore);
    net.alice
        .send_request(net.now, invite(0), BOB, false)
        .unwrap();
    net.run(Duration::from_secs(1));
    // 100 Trying arrived: no more retransmissions, and no end but Timer C.
    assert_eq!(net.times(ALICE, "INVITE").len(), 1);
    net.run(Duration::from_secs(200));
    assert!(matches!(
        net.alice_events.last(),
        Some(Event::Timeout { .. })
    ));
    assert_eq!(net.alice.len().0, 0);
}

#[test]
fn lossy_link_completes_every_transaction() {
    // 30% loss in both directions on every datagram, seeded: every REGISTER and every INVITE
    // gets its final response well within Timer F/B, the 486s get their ACKs (no Timer H),
    // and all transactions end.
    let mut net = Net::new(Answer::Final(486));
    net.loss_percent = 30;
    for n in 0..100 {
        net.alice
            .send_request(
                net.now,
                request(Method::Register, &format!("z9hG4bKr{n}"), n + 1),
                BOB,
                false,
            )
            .unwrap();
        net.alice
            .send_request(net.now, invite(n), BOB, false)
            .unwrap();
    }
    net.run(Duration::from_secs(120));
    let finals = net
        .alice_events
        .iter()
        .filter(|e| matches!(e, Event::Response { response, .. } if response.status >= 400))
        .count();
    let timeouts = net
        .alice_events
        .iter()
        .filter(|e| matches!(e, Event::Timeout { .. }))
        .count();
    let ack_timeouts = net
        .bob_events
        .iter()
        .filter(|e| matches!(e, Event::AckTimeout { .. }))
        .count();
    assert_eq!((finals, timeouts, ack_timeouts), (200, 0, 0));
    assert!(net.alice.is_empty() && net.bob.is_empty());
    // The TU saw each request once despite retransmissions.
    let requests = net
        .bob_events
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .count();
    assert_eq!(requests, 200);
}

#[test]
fn a_transport_failure_ends_the_transactions_to_that_peer_at_once() {
    let mut net = Net::new(Answer::Ignore);
    net.blackhole = Some(ALICE);
    net.reliable = true;
    let key = net
        .alice
        .send_request(net.now, invite(0), BOB, true)
        .unwrap();
    let other = net
        .alice
        .send_request(net.now, request(Method::Options, "z9hG4bKopt", 1), 3, true)
        .unwrap();
    net.drain();
    net.alice.transport_failed(&BOB);
    net.drain();
    // The INVITE to BOB is over, reported as a timeout; the OPTIONS to someone else is not.
    assert_eq!(net.alice_events, [Event::Timeout { key: key.clone() }]);
    assert_eq!(net.alice.len().0, 1);
    net.alice.transport_failed(&BOB);
    net.drain();
    assert_eq!(net.alice_events.len(), 1, "reported once");
    net.run(Duration::from_secs(60));
    assert!(
        net.alice_events
            .iter()
            .any(|e| matches!(e, Event::Timeout { key } if *key == other))
    );
}

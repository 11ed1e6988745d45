//! The core as a phone and an attacker see it: REGISTER with digest, request checks, stateless
//! 400s, failure limits and blocking, expiry on virtual time.

// Virtual time needs one real origin.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;

use switchboard_sip::digest::Challenge;

use super::*;
use crate::directory::{Extension, Forwarding, Tenant};
use crate::peer::Transport;

const WALL: u64 = 1_795_305_600_000;

struct Phone {
    core: Core,
    now: Instant,
    tenant: Uuid,
    extension: Uuid,
    peer: Peer,
    cseq: u32,
}

impl Phone {
    fn new() -> Self {
        Self::with_config(CoreConfig::default())
    }

    fn with_config(config: CoreConfig) -> Self {
        let mut core = Core::new(config, [1; 32], [2; 32]);
        let tenant = Uuid::new_v4();
        let extension = Uuid::new_v4();
        core.apply(Update::TenantUpsert(Tenant {
            id: tenant,
            domain: "example.com".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: None,
            daily_outbound_minutes: None,
        }));
        core.set_default_domain("example.com");
        core.apply(Update::ExtensionUpsert(Extension {
            id: extension,
            tenant_id: tenant,
            number: "1001".into(),
            display_name: "Alice".into(),
            secret: "s3cret-pass".into(),
            record_calls: false,
            outbound_allowed: false,
            caller_id: None,
            forward: Forwarding::default(),
        }));
        let peer = Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([198, 51, 100, 7], 40_000)),
            conn: None,
        };
        Self {
            core,
            now: Instant::now(),
            tenant,
            extension,
            peer,
            cseq: 0,
        }
    }

    fn register_text(&mut self, expires: u32, authorization: Option<&str>) -> String {
        self.cseq += 1;
        let mut text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.5:5060;rport;branch=z9hG4bKr{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@example.com>;tag=ph1\r\nTo: <sip:1001@example.com>\r\n\
             Call-ID: reg-1@192.168.1.5\r\nCSeq: {} REGISTER\r\nContact: <sip:1001@192.168.1.5:5060>\r\nExpires: {expires}\r\n",
            self.cseq, self.cseq
        );
        if let Some(authorization) = authorization {
            text.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text
    }

    /// Sends `text` and returns every output.
    fn send(&mut self, text: &str) -> Vec<Output> {
        self.core
            .handle_datagram(self.now, WALL, self.peer, text.as_bytes());
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn responses(outputs: &[Output]) -> Vec<Response> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Transmit { bytes, .. } => match Message::parse(bytes, &Limits::default()) {
                    Ok(Message::Response(r)) => Some(r),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn last_status(outputs: &[Output]) -> u16 {
        Self::responses(outputs).last().map_or(0, |r| r.status)
    }

    /// REGISTER, take the challenge, answer it with `password` using `algorithm`.
    fn register(&mut self, expires: u32, password: &str, algorithm: Algorithm) -> Vec<Output> {
        let text = self.register_text(expires, None);
        let challenge = Self::responses(&self.send(&text)).pop().expect("401");
        assert_eq!(challenge.status, 401);
        let challenge = challenge
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| Challenge::parse(v).unwrap())
            .find(|c| c.algorithm == algorithm)
            .expect("challenge for the algorithm");
        let authorization =
            challenge.answer("1001", password, "REGISTER", "sip:example.com", "c0ffee", 1);
        let text = self.register_text(expires, Some(&authorization));
        self.send(&text)
    }
}

#[test]
fn register_is_challenged_in_the_configured_order() {
    let challenge_algorithms = |config: CoreConfig| {
        let mut phone = Phone::with_config(config);
        let text = phone.register_text(600, None);
        let challenge = Phone::responses(&phone.send(&text)).pop().unwrap();
        assert_eq!(challenge.status, 401);
        challenge
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| Challenge::parse(v).unwrap().algorithm)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        challenge_algorithms(CoreConfig::default()),
        [Algorithm::Md5, Algorithm::Sha256]
    );
    let sha_first = CoreConfig {
        digest_algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..CoreConfig::default()
    };
    assert_eq!(
        challenge_algorithms(sha_first),
        [Algorithm::Sha256, Algorithm::Md5]
    );

    let mut phone = Phone::new();
    let text = phone.register_text(600, None);
    let responses = Phone::responses(&phone.send(&text));
    let challenge = responses.last().unwrap();
    assert!(
        Challenge::parse(challenge.headers.get(&HeaderName::WwwAuthenticate).unwrap())
            .unwrap()
            .qop_auth
    );
    assert!(
        challenge
            .headers
            .get(&HeaderName::To)
            .unwrap()
            .contains(";tag=")
    );
    // RFC 3581: the Via carries where the request really came from.
    let via = challenge.headers.get(&HeaderName::Via).unwrap();
    assert!(
        via.contains("rport=40000") && via.contains("received=198.51.100.7"),
        "{via}"
    );
}

#[test]
fn register_with_md5_and_sha256_and_unregister() {
    for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
        let mut phone = Phone::new();
        let outputs = phone.register(600, "s3cret-pass", algorithm);
        let ok = Phone::responses(&outputs).pop().unwrap();
        assert_eq!(ok.status, 200, "{algorithm:?}");
        assert_eq!(
            ok.headers.get(&HeaderName::Contact),
            Some("<sip:1001@192.168.1.5:5060>;expires=600")
        );
        let change = outputs.iter().find_map(|o| match o {
            Output::Registration(Change::Upsert {
                extension_id,
                binding,
                ..
            }) => Some((*extension_id, binding.clone())),
            _ => None,
        });
        let (extension_id, binding) = change.expect("registration change");
        assert_eq!(extension_id, phone.extension);
        assert_eq!(
            binding.peer, phone.peer,
            "calls go to the NAT-facing source"
        );
        assert_eq!(phone.core.registrar().bindings(phone.extension).len(), 1);

        let outputs = phone.register(0, "s3cret-pass", algorithm);
        assert_eq!(Phone::last_status(&outputs), 200);
        assert!(outputs.iter().any(|o| matches!(
            o,
            Output::Registration(Change::Remove { expired: false, .. })
        )));
        assert!(phone.core.registrar().is_empty());
        assert_eq!(SipStats::get(&phone.core.stats().registers), 2);
    }
}

#[test]
fn wrong_password_is_refused_and_repeated_failures_block_the_source() {
    let config = CoreConfig {
        max_failures_per_source: 3,
        max_failures_per_extension: 100,
        ..CoreConfig::default()
    };
    let mut phone = Phone::with_config(config);
    for _ in 0..3 {
        assert_eq!(
            Phone::last_status(&phone.register(600, "guess", Algorithm::Md5)),
            403
        );
    }
    // Blocked: not even a challenge comes back.
    let text = phone.register_text(600, None);
    assert!(phone.send(&text).is_empty());
    let stats = phone.core.stats();
    assert_eq!(
        (
            SipStats::get(&stats.auth_failures),
            SipStats::get(&stats.blocks),
            SipStats::get(&stats.blocked_requests)
        ),
        (3, 1, 1)
    );
    // Another source is unaffected, and the block lapses.
    phone.peer.addr = SocketAddr::from(([198, 51, 100, 8], 40_000));
    assert_eq!(
        Phone::last_status(&phone.register(600, "s3cret-pass", Algorithm::Md5)),
        200
    );
    phone.peer.addr = SocketAddr::from(([198, 51, 100, 7], 40_000));
    phone.now += Duration::from_secs(601);
    phone.core.handle_timeout(phone.now);
    assert_eq!(
        Phone::last_status(&phone.register(600, "s3cret-pass", Algorithm::Md5)),
        200
    );
}

#[test]
fn repeated_failures_for_one_extension_lock_it_for_the_window() {
    let config = CoreConfig {
        max_failures_per_source: 1_000,
        max_failures_per_extension: 2,
        ..CoreConfig::default()
    };
    let mut phone = Phone::with_config(config);
    for n in 0..2 {
        phone.peer.addr = SocketAddr::from(([203, 0, 113, n], 5060));
        assert_eq!(
            Phone::last_status(&phone.register(600, "guess", Algorithm::Md5)),
            403
        );
    }
    // Even the right password gets 403 until the window passes.
    let last = Phone::responses(&phone.register(600, "s3cret-pass", Algorithm::Md5))
        .pop()
        .unwrap();
    assert_eq!(
        (last.status, last.reason.as_str()),
        (403, "Too Many Failed Attempts")
    );
    phone.now += Duration::from_secs(61);
    assert_eq!(
        Phone::last_status(&phone.register(600, "s3cret-pass", Algorithm::Md5)),
        200
    );
}

#[test]
fn unknown_user_wrong_realm_and_foreign_aor() {
    let mut phone = Phone::new();
    let text = phone.register_text(600, None);
    let challenge = Phone::responses(&phone.send(&text)).pop().unwrap();
    let challenge =
        Challenge::parse(challenge.headers.get(&HeaderName::WwwAuthenticate).unwrap()).unwrap();
    // A user that does not exist: 403, indistinguishable in status from a wrong password.
    let ghost = challenge.answer("9999", "x", "REGISTER", "sip:example.com", "c", 1);
    let text = phone.register_text(600, Some(&ghost));
    assert_eq!(Phone::last_status(&phone.send(&text)), 403);
    // Credentials for another realm are ignored: a new challenge.
    let other = Challenge {
        realm: "other.example".into(),
        ..challenge.clone()
    }
    .answer("1001", "s3cret-pass", "REGISTER", "sip:example.com", "c", 1);
    let text = phone.register_text(600, Some(&other));
    assert_eq!(Phone::last_status(&phone.send(&text)), 401);
    // 1001's credentials for 1002's address of record: 403.
    phone.core.apply(Update::ExtensionUpsert(Extension {
        id: Uuid::new_v4(),
        tenant_id: phone.tenant,
        number: "1002".into(),
        display_name: String::new(),
        secret: "other-pass".into(),
        record_calls: false,
        outbound_allowed: false,
        caller_id: None,
        forward: Forwarding::default(),
    }));
    let good = challenge.answer("1001", "s3cret-pass", "REGISTER", "sip:example.com", "c", 2);
    let text = phone
        .register_text(600, Some(&good))
        .replace("To: <sip:1001@example.com>", "To: <sip:1002@example.com>");
    let forbidden = Phone::responses(&phone.send(&text)).pop().unwrap();
    assert_eq!(
        (forbidden.status, forbidden.reason.as_str()),
        (403, "Forbidden: not your address of record")
    );
}

#[test]
fn too_brief_registration_gets_423_with_min_expires() {
    let mut phone = Phone::new();
    let outputs = phone.register(30, "s3cret-pass", Algorithm::Md5);
    let response = Phone::responses(&outputs).pop().unwrap();
    assert_eq!(
        (
            response.status,
            response.headers.get(&HeaderName::MinExpires)
        ),
        (423, Some("60"))
    );
    assert!(phone.core.registrar().is_empty());
}

#[test]
fn bindings_expire_on_virtual_time() {
    let mut phone = Phone::new();
    assert_eq!(
        Phone::last_status(&phone.register(60, "s3cret-pass", Algorithm::Md5)),
        200
    );
    let deadline = phone.core.poll_timeout().unwrap();
    assert!(deadline <= phone.now + Duration::from_secs(60));
    phone
        .core
        .handle_timeout(phone.now + Duration::from_secs(60));
    let outputs: Vec<Output> = std::iter::from_fn(|| phone.core.poll_output()).collect();
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Registration(Change::Remove { expired: true, .. })
    )));
    assert!(phone.core.registrar().is_empty());
}

#[test]
fn retransmitted_register_is_answered_once() {
    let mut phone = Phone::new();
    let text = phone.register_text(600, None);
    let first = phone.send(&text);
    let again = phone.send(&text);
    assert_eq!(Phone::responses(&first).len(), 1);
    // The retransmission is answered from the transaction with the same 401 (same nonce).
    assert_eq!(Phone::responses(&again), Phone::responses(&first));
}

#[test]
fn request_checks_follow_8_2() {
    let mut phone = Phone::new();
    let branch = std::cell::Cell::new(0);
    let request = |method: &str, uri: &str, extra: &str| {
        branch.set(branch.get() + 1);
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{}\r\nMax-Forwards: 70\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c-{method}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
            branch.get()
        )
    };
    let options = Phone::responses(&phone.send(&request("OPTIONS", "sip:example.com", "")))
        .pop()
        .unwrap();
    assert_eq!(options.status, 200);
    assert_eq!(
        options
            .headers
            .get_all(&HeaderName::Allow)
            .collect::<Vec<_>>()
            .join(", "),
        ALLOWED
    );
    assert_eq!(
        Phone::last_status(&phone.send(&request("MESSAGE", "sip:b@example.com", ""))),
        501
    );
    assert_eq!(
        Phone::last_status(&phone.send(&request("OPTIONS", "tel:+15551234567", ""))),
        416
    );
    let unsupported = |phone: &mut Phone, require: &str| {
        let header = format!("Require: {require}\r\n");
        let response =
            Phone::responses(&phone.send(&request("OPTIONS", "sip:x@example.com", &header)))
                .pop()
                .unwrap();
        assert_eq!(response.status, 420);
        response
            .headers
            .get_all(&HeaderName::Unsupported)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(unsupported(&mut phone, "foo, bar"), ["foo", "bar"]);
    // Session timers are ours to support (RFC 4028): only the rest is refused.
    assert_eq!(unsupported(&mut phone, "timer, foo"), ["foo"]);
    let v3 = request("OPTIONS", "sip:y@example.com", "").replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1);
    assert_eq!(Phone::last_status(&phone.send(&v3)), 505);
    assert_eq!(
        Phone::last_status(&phone.send(&request("CANCEL", "sip:b@example.com", ""))),
        481
    );
}

#[test]
fn malformed_requests_get_a_stateless_400_and_garbage_nothing() {
    let mut phone = Phone::new();
    let bad_cseq = phone
        .register_text(600, None)
        .replace("CSeq: 1 REGISTER", "CSeq: 1 INVITE");
    let response = Phone::responses(&phone.send(&bad_cseq)).pop().unwrap();
    assert_eq!(response.status, 400);
    assert!(response.reason.contains("CSeq"), "{}", response.reason);
    assert!(phone.send("\x00\x01garbage\r\n\r\n").is_empty());
    assert!(phone.send("").is_empty());
    let stats = phone.core.stats();
    assert_eq!(
        (
            SipStats::get(&stats.parse_errors),
            SipStats::get(&stats.bad_requests)
        ),
        (3, 1)
    );
}

#[test]
fn overload_answers_503_with_retry_after() {
    let config = CoreConfig {
        max_transactions: 1,
        ..CoreConfig::default()
    };
    let mut phone = Phone::with_config(config);
    let first = phone.register_text(600, None);
    phone.send(&first);
    let second = phone
        .register_text(600, None)
        .replace("Call-ID: reg-1", "Call-ID: reg-2");
    let response = Phone::responses(&phone.send(&second)).pop().unwrap();
    assert_eq!(
        (
            response.status,
            response.headers.get(&HeaderName::RetryAfter)
        ),
        (503, Some("5"))
    );
}

//! The SIP torture test messages of RFC 4475 and RFC 5118 (byte-exact copies of the RFCs'
//! archives, see `data/torture/README.md`) through `Message::parse`.
//!
//! `Message::parse` checks syntax and framing *and* the core-header rules every element must
//! enforce with `400 Bad Request` (§8.1.1, §8.2.2): the required headers, one value each, a
//! CSeq method equal to the request method, Max-Forwards ≤ 255. So where RFC 4475 calls a
//! message syntactically valid but says elements must answer 400 (insuf, multi01, scalar02,
//! mismatch01), the parser refuses it here. Semantic refusals with other codes (505 for
//! badvers, 416 for unknown schemes, 420 for unknown extensions, 483 for Max-Forwards 0, ...)
//! belong to the transaction user, so those messages must parse.

use std::path::Path;

use switchboard_sip::message::{Limits, Message, ParseError};

#[derive(Debug)]
enum Expect {
    Accept,
    /// Refused; the string names what the RFC says is wrong.
    Reject(&'static str),
}

use Expect::{Accept, Reject};

/// Our expected outcome for every message, with the reason where it differs from "valid".
const EXPECTED: &[(&str, Expect)] = &[
    // RFC 4475 §3.1.1: valid messages.
    ("wsinv", Accept),
    ("intmeth", Accept),
    ("esc01", Accept),
    ("escnull", Accept),
    ("esc02", Accept),
    ("lwsdisp", Accept),
    ("longreq", Accept),
    ("dblreq", Accept),
    ("semiuri", Accept),
    ("transports", Accept),
    ("mpart01", Accept),
    ("unreason", Accept),
    ("noreason", Accept),
    // RFC 4475 §3.1.2: invalid messages.
    ("badinv01", Reject("empty Via and Contact parameters")),
    ("clerr", Reject("Content-Length larger than the body")),
    ("ncl", Reject("negative Content-Length")),
    (
        "scalar02",
        Reject("CSeq over 2^32-1, Max-Forwards over 255"),
    ),
    ("scalarlg", Reject("CSeq over 2^32-1 in a response")),
    ("quotbal", Reject("unterminated quoted display name")),
    ("ltgtruri", Reject("Request-URI in <>")),
    ("lwsruri", Reject("whitespace inside the Request-URI")),
    (
        "lwsstart",
        Reject("several spaces between Request-Line elements"),
    ),
    ("trws", Reject("trailing spaces on the Request-Line")),
    ("escruri", Reject("URI headers in the Request-URI")),
    ("baddate", Accept), // §3.1.2.14: don't reject unless the Date matters
    ("regbadct", Reject("URI with ? in a Contact without <>")),
    ("badaspec", Reject("spaces inside <> around the addr-spec")),
    ("baddn", Reject("unquoted display name with a comma")),
    ("badvers", Accept), // SIP/7.0: the transaction user answers 505
    (
        "mismatch01",
        Reject("CSeq method differs from the request method"),
    ),
    (
        "mismatch02",
        Reject("CSeq method differs from the (unknown) request method"),
    ),
    ("bigcode", Reject("status code over 699")),
    // RFC 4475 §3.2: transaction layer.
    ("badbranch", Accept),
    // RFC 4475 §3.3: application layer.
    ("insuf", Reject("missing Call-ID, From and To")),
    ("unkscm", Accept),
    ("novelsc", Accept),
    ("unksm2", Accept),
    ("bext01", Accept),
    ("invut", Accept),
    ("regaut01", Accept),
    ("multi01", Reject("several values in single-value headers")),
    ("mcl01", Reject("two Content-Length headers")),
    ("bcast", Accept),
    ("zeromf", Accept),
    ("cparam01", Accept),
    ("cparam02", Accept),
    ("regescrt", Accept),
    ("sdp01", Accept),
    // RFC 4475 §3.4: backward compatibility.
    ("inv2543", Accept),
    // RFC 5118 §4.
    ("rfc5118-ipv6-good", Accept),
    (
        "rfc5118-ipv6-bad",
        Reject("IPv6 address without [] in the Request-URI"),
    ),
    ("rfc5118-port-ambiguous", Accept),
    ("rfc5118-port-unambiguous", Accept),
    ("rfc5118-via-received-param-with-delim", Accept),
    ("rfc5118-via-received-param-no-delim", Accept),
    // The RFC prints Content-Length 268 for a 251-byte body (see the data README).
    (
        "rfc5118-ipv6-in-sdp",
        Reject("Content-Length larger than the body"),
    ),
    ("rfc5118-mult-ip-in-header", Accept),
    ("rfc5118-mult-ip-in-sdp", Accept),
    ("rfc5118-ipv4-mapped-ipv6", Accept),
    ("rfc5118-ipv6-bug-abnf-3-colons", Accept),
    ("rfc5118-ipv6-correct-abnf-2-colons", Accept),
];

fn data_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torture"))
}

#[test]
fn every_torture_message_has_an_expectation() {
    let manifest = std::fs::read_to_string(data_dir().join("MANIFEST.tsv")).expect("manifest");
    let names: Vec<&str> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(names.len(), 61);
    for name in &names {
        assert!(
            EXPECTED.iter().any(|(n, _)| n == name),
            "{name} has no expectation"
        );
    }
    assert_eq!(EXPECTED.len(), names.len());
}

#[test]
fn torture_messages() {
    let limits = Limits::default();
    let mut failures = Vec::new();
    for (name, expect) in EXPECTED {
        let bytes = std::fs::read(data_dir().join(format!("{name}.dat"))).expect("message file");
        let result = Message::parse(&bytes, &limits);
        match (expect, &result) {
            (Accept, Ok(message)) => {
                // Whatever we accept prints and reparses to the same message.
                let again = Message::parse(&message.to_bytes(), &limits);
                if again.as_ref() != Ok(message) {
                    failures.push(format!("{name}: reprint differs: {again:?}"));
                }
            }
            (Reject(_), Err(_)) => {}
            (Accept, Err(error)) => failures.push(format!("{name}: should parse, got {error}")),
            (Reject(why), Ok(_)) => failures.push(format!("{name}: should be refused ({why})")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refusals_say_why() {
    let parse = |name: &str| {
        Message::parse(
            &std::fs::read(data_dir().join(format!("{name}.dat"))).unwrap(),
            &Limits::default(),
        )
    };
    assert_eq!(parse("clerr").unwrap_err(), ParseError::Truncated);
    assert_eq!(
        parse("mcl01").unwrap_err(),
        ParseError::Duplicate("Content-Length")
    );
    assert_eq!(parse("mismatch01").unwrap_err(), ParseError::CSeqMismatch);
    assert_eq!(parse("insuf").unwrap_err(), ParseError::Missing("Call-ID"));
    assert!(matches!(
        parse("ltgtruri").unwrap_err(),
        ParseError::RequestUri(_)
    ));
    assert!(matches!(
        parse("quotbal").unwrap_err(),
        ParseError::Header { name: "To", .. }
    ));
    assert!(matches!(
        parse("scalar02").unwrap_err(),
        ParseError::Header {
            name: "CSeq" | "Max-Forwards",
            ..
        }
    ));
}

#[test]
fn accepted_messages_read_right() {
    let parse = |name: &str| {
        Message::parse(
            &std::fs::read(data_dir().join(format!("{name}.dat"))).unwrap(),
            &Limits::default(),
        )
        .unwrap()
    };
    // dblreq: the 450 octets after Content-Length 0 are discarded (§18.3).
    assert!(parse("dblreq").body().is_empty());
    // inv2543: no Content-Length over UDP, so the body is the rest of the datagram.
    assert!(parse("inv2543").body().starts_with(b"v=0"));
    // semiuri: the user part holds the semicolon.
    let Message::Request(semi) = parse("semiuri") else {
        panic!()
    };
    assert_eq!(
        semi.uri.as_sip().unwrap().user.as_deref(),
        Some("user;par=u%40example.net")
    );
    // The 3-colon IPv6 form reads as the 2-colon one.
    let Message::Request(three) = parse("rfc5118-ipv6-bug-abnf-3-colons") else {
        panic!()
    };
    let Message::Request(two) = parse("rfc5118-ipv6-correct-abnf-2-colons") else {
        panic!()
    };
    assert_eq!(
        three.uri.as_sip().unwrap().host,
        two.uri.as_sip().unwrap().host
    );
}

//! Property tests of the message layer: `parse ∘ print` is the identity on messages, printing
//! is a fixed point after one parse, and no input makes the parser panic.

use proptest::prelude::*;
use switchboard_sip::message::{HeaderName, Headers, Limits, Message, Method, Request, Response};
use switchboard_sip::uri::{Host, SipUri, Uri};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-z]([a-z0-9-]{0,7}[a-z0-9])?(\\.[a-z][a-z0-9]{0,8}){0,3}".prop_map(Host::Domain),
        any::<[u8; 4]>().prop_map(|o| Host::Ipv4(o.into())),
        any::<[u16; 8]>().prop_map(|s| Host::Ipv6(s.into())),
    ]
}

fn sip_uri() -> impl Strategy<Value = SipUri> {
    (
        any::<bool>(),
        proptest::option::of("[a-zA-Z0-9_.!~*'()&=+$,;?/-]{1,12}|%[0-9A-F]{2}[a-z]{1,4}"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(
            (token(), proptest::option::of("[a-zA-Z0-9:+$/-]{1,8}")),
            0..3,
        ),
    )
        .prop_map(|(secure, user, host, port, params)| SipUri {
            secure,
            user,
            password: None,
            host,
            port,
            params: params
                .into_iter()
                .map(|(name, value)| (name.replace(['!', '%', '`', '+'], "x"), value))
                .collect(),
            headers: Vec::new(),
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Invite),
        Just(Method::Register),
        Just(Method::Options),
        Just(Method::Bye),
        Just(Method::Cancel),
        "[A-Z]{3,10}".prop_map(|m| Method::parse(&m).expect("a token")),
    ]
}

/// Headers every message needs, valid for `method`, plus random extra headers.
fn headers(method: Method) -> impl Strategy<Value = Headers> {
    (
        sip_uri(),
        sip_uri(),
        token(),
        token(),
        0u32..=u32::MAX,
        1usize..4,
        proptest::collection::vec(("X-[A-Za-z]{1,8}", "[ -~]{0,20}"), 0..4),
        0u8..=255,
    )
        .prop_map(
            move |(from, to, call_id, tag, seq, vias, extra, max_forwards)| {
                let mut headers = Headers::new();
                for i in 0..vias {
                    headers.push(
                        HeaderName::Via,
                        format!("SIP/2.0/UDP host{i}.example.com:5060;branch=z9hG4bK{tag}{i}"),
                    );
                }
                headers.push(HeaderName::MaxForwards, max_forwards.to_string());
                headers.push(HeaderName::From, format!("\"Caller\" <{from}>;tag={tag}"));
                headers.push(HeaderName::To, format!("<{to}>"));
                headers.push(HeaderName::CallId, format!("{call_id}@example.com"));
                headers.push(HeaderName::CSeq, format!("{seq} {method}"));
                for (name, value) in extra {
                    // An extension header keeps its text exactly (minus edge whitespace).
                    headers.push(HeaderName::parse(&name), value.trim().to_owned());
                }
                headers
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (method(), sip_uri(), body.clone()).prop_flat_map(|(method, uri, body)| {
            headers(method.clone()).prop_map(move |headers| {
                Message::Request(Request {
                    method: method.clone(),
                    uri: Uri::Sip(uri.clone()),
                    version: (2, 0),
                    headers,
                    body: body.clone().into(),
                })
            })
        }),
        (100u16..700, "[A-Za-z ]{0,20}", body).prop_flat_map(|(status, reason, body)| {
            headers(Method::Invite).prop_map(move |headers| {
                Message::Response(Response {
                    version: (2, 0),
                    status,
                    reason: reason.clone(),
                    headers,
                    body: body.clone().into(),
                })
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_then_parse_is_identity(message in message()) {
        let bytes = message.to_bytes();
        let parsed = Message::parse(&bytes, &Limits::default());
        prop_assert_eq!(parsed.as_ref(), Ok(&message), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn printing_is_a_fixed_point(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(first) = Message::parse(&bytes, &Limits::default()) {
            let printed = first.to_bytes();
            prop_assert_eq!(Message::parse(&printed, &Limits::default()), Ok(first));
        }
    }

    /// Mutations of a valid message: whatever the parser says, it says it without panicking,
    /// and anything it accepts prints and reparses to the same message.
    #[test]
    fn mutated_messages_never_panic(message in message(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = message.to_bytes();
        for (at, byte) in edits {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Ok(parsed) = Message::parse(&bytes, &Limits::default()) {
            prop_assert_eq!(Message::parse(&parsed.to_bytes(), &Limits::default()), Ok(parsed));
        }
    }
}

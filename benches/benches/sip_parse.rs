//! SIP parsing: Switchboard's parser against rsip 0.4 on the same messages.
//!
//! Switchboard's `Message::parse` validates `Via`, `From`, `To`, `CSeq`, `Call-ID` and
//! `Max-Forwards` while parsing, so the fair comparison is with rsip parsing the message *and*
//! converting those headers to typed values (`rsip/parse+typed`); `rsip/parse` alone leaves
//! every header as text.
//!
//!     cargo bench -p switchboard-benches --bench sip_parse

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rsip::prelude::*;
use switchboard_sip::message::{Limits, Message};

const INVITE: &str = "INVITE sip:bob@biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 141\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const REGISTER: &str = "REGISTER sip:registrar.biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Bob <sip:bob@biloxi.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Expires: 7200\r\n\
User-Agent: bench/1.0\r\n\
Content-Length: 0\r\n\
\r\n";

const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP server10.biloxi.com;branch=z9hG4bKnashds8;received=192.0.2.3\r\n\
Via: SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2\r\n\
Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n\
To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Length: 0\r\n\
\r\n";

fn rsip_typed(bytes: &[u8]) -> usize {
    let message = rsip::SipMessage::try_from(bytes).expect("rsip parses");
    let via = message
        .via_header()
        .expect("via")
        .typed()
        .expect("typed via");
    let from = message
        .from_header()
        .expect("from")
        .typed()
        .expect("typed from");
    let to = message.to_header().expect("to").typed().expect("typed to");
    let cseq = message
        .cseq_header()
        .expect("cseq")
        .typed()
        .expect("typed cseq");
    let call_id = message.call_id_header().expect("call-id");
    black_box((&via, &from, &to, &cseq, call_id));
    message.body().len()
}

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("sip_parse");
    for (name, text) in [("invite", INVITE), ("register", REGISTER), ("200_ok", OK)] {
        let bytes = text.as_bytes();
        // Both parsers must accept the message before it is timed.
        Message::parse(bytes, &limits).expect("switchboard parses");
        rsip_typed(bytes);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("switchboard/{name}"), |b| {
            b.iter(|| Message::parse(black_box(bytes), &limits).expect("parses"));
        });
        group.bench_function(format!("rsip/parse/{name}"), |b| {
            b.iter(|| rsip::SipMessage::try_from(black_box(bytes)).expect("parses"));
        });
        group.bench_function(format!("rsip/parse+typed/{name}"), |b| {
            b.iter(|| rsip_typed(black_box(bytes)));
        });
    }
    group.finish();

    let invite = Message::parse(INVITE.as_bytes(), &limits).expect("parses");
    c.bench_function("sip_print/invite", |b| {
        b.iter(|| black_box(&invite).to_bytes());
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);

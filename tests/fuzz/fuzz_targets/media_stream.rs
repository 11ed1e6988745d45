//! Any bytes, cut into a sequence of packets with arrival times: the jitter buffer, the DTMF
//! receiver, the G.722 decoder and the recording timeline take them without panicking, and
//! the jitter buffer's memory stays bounded.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard_media::dtmf::{DtmfInfo, DtmfReceiver, TelephoneEvent};
use switchboard_media::g722::G722Decoder;
use switchboard_media::jitter::{Config, JitterBuffer};
use switchboard_media::recording::StereoTimeline;
use switchboard_media::relay::Side;
use switchboard_media::rtp::RtpHeader;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut jitter = JitterBuffer::new(Config::default());
    let mut dtmf = DtmfReceiver::new(101);
    let mut timeline = StereoTimeline::new(start, 8000, 16_000);
    let mut decoder = G722Decoder::new();
    let mut pcm = [0i16; 4096];
    let mut out = Vec::new();
    let mut now = start;
    // Each record: one byte of time step (ms), one byte of length, then the packet.
    let mut rest = data;
    while let [step, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*step));
        let _ = jitter.push(now, packet);
        while jitter.pop(now).is_some() {}
        assert!(jitter.stats().buffered <= Config::default().capacity);
        if let Ok(header) = RtpHeader::parse(packet) {
            let payload = &packet[header.payload_offset..][..header.payload_len];
            let _ = dtmf.receive(now, &header, payload);
            while dtmf.poll_event().is_some() {}
            let _ = TelephoneEvent::parse(payload);
            decoder.decode(payload, &mut pcm);
        }
        let side = if step % 2 == 0 { Side::A } else { Side::B };
        timeline.push(now, side, packet);
        out.clear();
        timeline.advance(now, &mut out);
        let _ = DtmfInfo::parse("application/dtmf-relay", packet);
    }
    let _ = dtmf.handle_timeout(now + Duration::from_secs(1));
});

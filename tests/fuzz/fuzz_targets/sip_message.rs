//! Any bytes: the SIP parser must not panic, and a message it accepts must print and reparse
//! to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_sip::message::{Limits, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data, &Limits::default()) {
        let printed = message.to_bytes();
        let reparsed = Message::parse(&printed, &Limits::default()).expect("printed message parses");
        assert_eq!(reparsed, message);
    }
});

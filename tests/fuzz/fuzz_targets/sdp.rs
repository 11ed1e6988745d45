//! Any bytes: the SDP parser must not panic, and an accepted SDP must print and reparse equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_media::sdp::Sdp;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        let printed = sdp.to_string();
        assert_eq!(Sdp::parse(printed.as_bytes()).as_ref(), Ok(&sdp));
    }
});

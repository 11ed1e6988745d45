//! Any bytes as an uploaded prompt: the WAV reader must refuse or convert without panicking,
//! and a conversion must be no longer than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_media::prompt::{self, MAX_SECONDS, RATE};

fuzz_target!(|data: &[u8]| {
    // Half the inputs get a valid RIFF header so the fuzzer reaches the chunks at once.
    let mut file;
    let input = if data.first().is_some_and(|b| b & 1 == 1) {
        file = b"RIFF\0\0\0\0WAVE".to_vec();
        file.extend_from_slice(&data[1..]);
        &file[..]
    } else {
        data
    };
    if let Ok(converted) = prompt::convert(input) {
        assert!(!converted.samples.is_empty());
        // Resampling may round up by a sample.
        assert!(converted.samples.len() as u64 <= u64::from(MAX_SECONDS * RATE) + 1);
    }
});

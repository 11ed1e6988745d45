//! Any text: the URI parser must not panic, and an accepted URI must print and reparse equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_sip::uri::Uri;

fuzz_target!(|text: &str| {
    if let Ok(uri) = Uri::parse(text) {
        let printed = uri.to_string();
        assert_eq!(Uri::parse(&printed).as_ref(), Ok(&uri), "{printed}");
    }
});

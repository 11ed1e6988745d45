//! Any JSON: IVR graph validation must not panic, and an accepted graph must serialise and
//! validate again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_signalling::ivr::Graph;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(graph) = Graph::parse(&document) {
        let again = serde_json::to_value(&graph).expect("graph serialises");
        assert_eq!(Graph::parse(&again).as_ref(), Ok(&graph));
    }
});

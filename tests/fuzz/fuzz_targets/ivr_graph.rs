//! Any JSON: IVR graph validation must not panic, and an accepted graph must serialise and
//! validate again. An accepted graph is then run: the bytes after the first NUL are a script
//! of call events and time steps. The run must not panic, must issue nothing after its
//! hangup, and must stay within its step cap.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard_signalling::ivr::{Action, CallInfo, DialFailure, Event, Flow, FlowRun, Graph};

const STEPS: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, script) = data.split_at(split);
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(json) else { return };
    let Ok(graph) = Graph::parse(&document) else { return };
    let again = serde_json::to_value(&graph).expect("graph serialises");
    assert_eq!(Graph::parse(&again).as_ref(), Ok(&graph));

    let flow = Arc::new(Flow::compile(&graph).expect("a valid graph compiles"));
    let mut now = Instant::now();
    let wall = monday_afternoon();
    let call = CallInfo { caller: "+15550001111".into(), did: "+15557654321".into() };
    let mut run = FlowRun::start(flow, call, STEPS, now, wall);
    let mut hung_up = false;
    let mut http_id = 0;
    for pair in script.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        match op % 12 {
            0 => {
                now += Duration::from_millis(u64::from(arg) * 100);
                while run.poll_timeout().is_some_and(|d| d <= now) {
                    run.handle_timeout(now);
                }
            }
            1 => run.handle_event(Event::PlayDone, now),
            2 => run.handle_event(Event::Digit(char::from(arg)), now),
            3 => run.handle_event(Event::DialAnswered, now),
            4 => run.handle_event(Event::DialFailed(DialFailure::Busy), now),
            5 => run.handle_event(Event::DialFailed(DialFailure::Failed), now),
            6 => run.handle_event(Event::BridgeEnded, now),
            7 => run.handle_event(
                Event::RecordDone { duration: Duration::from_secs(u64::from(arg)), heard: arg % 2 == 0 },
                now,
            ),
            8 => {
                let result = serde_json::from_slice(&script[..usize::from(arg).min(script.len())])
                    .map_err(|e| e.to_string());
                run.handle_event(Event::HttpDone { id: http_id, result }, now);
            }
            9 => run.handle_event(Event::CallerHungUp, now),
            _ => run.handle_event(Event::Digit(['1', '2', '#', '*'][usize::from(arg % 4)]), now),
        }
        while let Some(action) = run.poll_action() {
            assert!(!hung_up, "{action:?} after the hangup");
            match action {
                Action::Hangup { .. } => hung_up = true,
                Action::Http(request) => http_id = request.id,
                _ => {}
            }
        }
        assert!(run.path().count() <= STEPS as usize);
        if run.ended().is_some() {
            assert_eq!(run.poll_timeout(), None);
        }
    }
});

/// Monday 2026-11-23 15:00 UTC.
fn monday_afternoon() -> switchboard_signalling::ivr::Timestamp {
    "2026-11-23T15:00:00Z".parse().expect("a valid timestamp")
}

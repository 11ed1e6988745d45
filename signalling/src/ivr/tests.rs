//! The flow engine on virtual time: every verb and transition.

#![allow(clippy::disallowed_methods)] // Virtual time needs one real origin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// Monday 2026-11-23 15:00 UTC.
const MONDAY_3PM: &str = "2026-11-23T15:00:00Z";

struct Call {
    run: FlowRun,
    now: Instant,
}

fn start_at(doc: Value, wall: &str) -> Call {
    let flow = Arc::new(Flow::parse(&doc).unwrap());
    let now = Instant::now();
    let call = CallInfo {
        caller: "+15550001111".into(),
        did: "+15557654321".into(),
    };
    let run = FlowRun::start(flow, call, 50, now, wall.parse().unwrap());
    Call { run, now }
}

fn start(doc: Value) -> Call {
    start_at(doc, MONDAY_3PM)
}

impl Call {
    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.run.poll_action()).collect()
    }

    /// Moves virtual time on by `by`, running every timer that falls due on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(deadline) = self.run.poll_timeout().filter(|d| *d <= until) {
            self.now = self.now.max(deadline);
            self.run.handle_timeout(self.now);
        }
        self.now = until;
    }

    fn secs(&mut self, secs: f64) {
        self.advance(Duration::from_secs_f64(secs));
    }

    fn send(&mut self, event: Event) {
        self.run.handle_event(event, self.now);
    }

    fn press(&mut self, keys: &str) {
        for key in keys.chars() {
            self.send(Event::Digit(key));
        }
    }

    fn path(&self) -> Vec<&str> {
        self.run.path().collect()
    }
}

fn play(prompt: &str) -> Action {
    Action::Play {
        prompt: prompt.into(),
    }
}

fn hangup(reason: EndReason) -> Action {
    Action::Hangup { reason }
}

fn dial_ext(ext: &str, secs: u64) -> Action {
    Action::Dial {
        target: DialTarget::Extension(ext.into()),
        timeout: Duration::from_secs(secs),
    }
}

#[test]
fn answer_play_hangup() {
    let mut call = start(json!({"entry": "a", "nodes": {
        "a": {"verb": "answer", "next": "p"},
        "p": {"verb": "play", "prompt": "welcome", "next": "bye"},
        "bye": {"verb": "hangup"}
    }}));
    assert_eq!(call.actions(), [Action::Answer, play("welcome")]);
    assert_eq!(call.run.current(), "p");
    call.secs(60.0);
    assert_eq!(call.actions(), [], "a prompt ends when the host says so");
    call.send(Event::PlayDone);
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
    assert_eq!(call.run.ended(), Some(EndReason::Completed));
    assert_eq!(call.path(), ["a", "p", "bye"]);
    // Nothing moves a finished run.
    call.send(Event::PlayDone);
    call.send(Event::CallerHungUp);
    assert_eq!(call.actions(), []);
    assert_eq!(call.run.ended(), Some(EndReason::Completed));
}

#[test]
fn a_lost_end_of_prompt_or_recording_does_not_leave_the_call_stuck() {
    let mut call = start(json!({"entry": "p", "nodes": {
        "p": {"verb": "play", "prompt": "hello", "next": "r"},
        "r": {"verb": "record", "max_seconds": 5, "next": "bye",
              "transitions": {"no_input": "bye"}},
        "bye": {"verb": "hangup"}
    }}));
    call.actions();
    call.secs(659.0);
    assert_eq!(call.run.current(), "p");
    call.secs(1.0);
    assert!(matches!(call.actions().as_slice(), [Action::Record(_)]));
    call.secs(5.0);
    assert_eq!(call.actions(), [Action::StopRecord]);
    // No RecordDone ever comes.
    call.secs(10.0);
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
}

#[test]
fn play_answers_first_and_the_end_of_the_graph_hangs_up() {
    let mut call = start(json!({"entry": "p", "nodes": {
        "p": {"verb": "play", "prompt": "hello", "next": "q"},
        "q": {"verb": "play", "prompt": "again"}
    }}));
    assert_eq!(call.actions(), [Action::Answer, play("hello")]);
    call.send(Event::PlayDone);
    assert_eq!(call.actions(), [play("again")], "answered only once");
    call.send(Event::PlayDone);
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
}

#[test]
fn pause_waits_on_the_timer_without_answering() {
    let mut call = start(json!({"entry": "wait", "nodes": {
        "wait": {"verb": "pause", "seconds": 2.5, "next": "p"},
        "p": {"verb": "play", "prompt": "hi"}
    }}));
    assert_eq!(call.actions(), []);
    assert_eq!(
        call.run.poll_timeout(),
        Some(call.now + Duration::from_millis(2500))
    );
    call.secs(2.4);
    assert_eq!(call.actions(), []);
    call.secs(0.1);
    assert_eq!(call.actions(), [Action::Answer, play("hi")]);
}

fn menu(extra: Value) -> Value {
    let mut doc = json!({"entry": "menu", "nodes": {
        "menu": {"verb": "gather", "prompt": "menu", "timeout": 5, "inter_digit_timeout": 2,
                 "transitions": {"match.1": "sales", "match.2": "support"}},
        "sales": {"verb": "dial", "extension": "1001"},
        "support": {"verb": "dial", "extension": "1002", "timeout": 20},
        "bye": {"verb": "play", "prompt": "goodbye"},
        "sorry": {"verb": "play", "prompt": "sorry", "next": "menu"}
    }});
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            doc["nodes"]["menu"]["transitions"][k] = v;
        }
    }
    doc
}

#[test]
fn gather_routes_on_a_match_and_a_key_stops_the_prompt() {
    let mut call = start(menu(json!({})));
    assert_eq!(call.actions(), [Action::Answer, play("menu")]);
    assert_eq!(
        call.run.poll_timeout(),
        Some(call.now + Duration::from_secs(660)),
        "no digit timer during the prompt, only the guard against a lost end"
    );
    call.press("2");
    assert_eq!(call.actions(), [Action::StopPlay, dial_ext("1002", 20)]);
    assert_eq!(call.path(), ["menu", "support"]);
    assert_eq!(call.run.var("digits", call.now).as_deref(), Some("2"));
}

#[test]
fn gather_timeout_starts_when_the_prompt_ends() {
    let mut call = start(menu(json!({"timeout": "bye"})));
    call.actions();
    call.secs(30.0);
    call.send(Event::PlayDone);
    call.secs(4.9);
    call.press("1");
    assert_eq!(call.actions(), [dial_ext("1001", 30)]);

    let mut call = start(menu(json!({"timeout": "bye"})));
    call.actions();
    call.send(Event::PlayDone);
    call.secs(5.0);
    assert_eq!(call.actions(), [play("goodbye")]);
    assert_eq!(call.path(), ["menu", "bye"]);
}

#[test]
fn nomatch_retries_the_gather_then_takes_max_attempts() {
    let mut call = start(menu(json!({"max_attempts": "bye"})));
    assert_eq!(call.actions(), [Action::Answer, play("menu")]);
    call.send(Event::PlayDone);
    call.press("9");
    assert_eq!(
        call.actions(),
        [play("menu")],
        "tried again: prompt replayed"
    );
    call.send(Event::PlayDone);
    call.secs(5.0);
    assert_eq!(
        call.actions(),
        [play("menu")],
        "a timeout is an attempt too"
    );
    call.press("7");
    assert_eq!(call.actions(), [Action::StopPlay, play("goodbye")]);
    assert_eq!(call.path(), ["menu", "menu", "menu", "bye"]);
}

#[test]
fn without_max_attempts_the_call_ends() {
    let mut call = start(json!({"entry": "g", "nodes": {
        "g": {"verb": "gather", "attempts": 2, "timeout": 1,
              "transitions": {"match.1": "x"}},
        "x": {"verb": "hangup"}
    }}));
    assert_eq!(call.actions(), [Action::Answer]);
    call.secs(1.0);
    call.secs(1.0);
    assert_eq!(call.actions(), [hangup(EndReason::MaxAttempts)]);
    assert_eq!(call.path(), ["g", "g"]);
}

#[test]
fn attempts_count_across_a_detour_and_reset_on_success() {
    let mut call = start(menu(json!({"nomatch": "sorry", "max_attempts": "bye"})));
    call.actions();
    for _ in 0..2 {
        call.press("5");
        assert_eq!(call.actions(), [Action::StopPlay, play("sorry")]);
        call.send(Event::PlayDone);
        assert_eq!(call.actions(), [play("menu")]);
    }
    call.press("5");
    assert_eq!(call.actions(), [Action::StopPlay, play("goodbye")]);

    // A success resets the count: the next visit has all its attempts again.
    let mut call = start(json!({"entry": "g", "nodes": {
        "g": {"verb": "gather", "attempts": 2, "transitions": {"match.1": "g", "match.2": "x"}},
        "x": {"verb": "hangup"}
    }}));
    call.actions();
    call.press("9");
    call.press("1");
    call.press("9");
    assert_eq!(
        call.actions(),
        [],
        "after a success, one failure is not the last"
    );
    call.press("9");
    assert_eq!(call.actions(), [hangup(EndReason::MaxAttempts)]);
}

#[test]
fn multi_digit_entry_ends_at_terminator_max_digits_or_timeouts() {
    let doc = |extra: Value| {
        let mut g = json!({"verb": "gather", "max_digits": 4, "timeout": 10,
                           "inter_digit_timeout": 3, "next": "call"});
        for (k, v) in extra.as_object().unwrap() {
            g[k] = v.clone();
        }
        json!({"entry": "g", "nodes": {
            "g": g,
            "call": {"verb": "dial", "extension": "${digits}", "timeout": 15}
        }})
    };
    // Terminator.
    let mut call = start(doc(json!({})));
    call.press("12#");
    assert_eq!(call.actions(), [Action::Answer, dial_ext("12", 15)]);
    // max_digits.
    let mut call = start(doc(json!({})));
    call.press("1234");
    assert_eq!(call.actions(), [Action::Answer, dial_ext("1234", 15)]);
    // Inter-digit timeout.
    let mut call = start(doc(json!({})));
    call.press("10");
    call.secs(2.9);
    call.press("0");
    call.secs(2.9);
    assert_eq!(call.actions(), [Action::Answer]);
    call.secs(0.1);
    assert_eq!(call.actions(), [dial_ext("100", 15)]);
    // Overall timeout caps a slow entry.
    let mut call = start(doc(json!({})));
    call.secs(8.0);
    call.press("1");
    call.secs(1.5);
    call.press("2");
    call.secs(0.5);
    assert_eq!(call.actions(), [Action::Answer, dial_ext("12", 15)]);
    // Only the terminator: no input, so a timeout (and no terminator at all when disabled).
    let mut call = start(doc(json!({"terminator": "", "attempts": 1})));
    call.press("#");
    call.secs(3.0);
    assert_eq!(call.actions(), [Action::Answer, dial_ext("#", 15)]);
    let mut call = start(doc(json!({"attempts": 1})));
    call.press("#");
    assert_eq!(
        call.actions(),
        [Action::Answer, hangup(EndReason::MaxAttempts)]
    );
}

#[test]
fn dial_outcomes() {
    let doc = json!({"entry": "d", "nodes": {
        "d": {"verb": "dial", "ring_group": "sales", "timeout": 20,
              "transitions": {"answered": "done", "busy": "b", "no_answer": "n"},
              "next": "fallback"},
        "done": {"verb": "hangup"},
        "b": {"verb": "play", "prompt": "busy"},
        "n": {"verb": "play", "prompt": "noanswer"},
        "fallback": {"verb": "play", "prompt": "fallback"}
    }});
    let dial = Action::Dial {
        target: DialTarget::RingGroup("sales".into()),
        timeout: Duration::from_secs(20),
    };
    // Answered, bridged, then the far end hangs up.
    let mut call = start(doc.clone());
    assert_eq!(call.actions(), [dial], "dialling does not answer");
    call.send(Event::DialAnswered);
    call.secs(3600.0);
    assert_eq!(call.actions(), [], "no timer while bridged");
    call.send(Event::BridgeEnded);
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
    assert_eq!(call.path(), ["d", "done"]);
    // Busy.
    let mut call = start(doc.clone());
    call.actions();
    call.send(Event::DialFailed(DialFailure::Busy));
    assert_eq!(call.actions(), [Action::Answer, play("busy")]);
    // Ringing too long: the engine cancels.
    let mut call = start(doc.clone());
    call.actions();
    call.secs(19.9);
    call.send(Event::BridgeEnded);
    assert_eq!(call.actions(), [], "a bridge that never was is ignored");
    call.secs(0.1);
    assert_eq!(
        call.actions(),
        [Action::CancelDial, Action::Answer, play("noanswer")]
    );
    // Far-side no answer is the same outcome.
    let mut call = start(doc.clone());
    call.actions();
    call.send(Event::DialFailed(DialFailure::NoAnswer));
    assert_eq!(call.actions(), [Action::Answer, play("noanswer")]);
    // An outcome without a transition falls through to `next`.
    let mut call = start(doc);
    call.actions();
    call.send(Event::DialFailed(DialFailure::Failed));
    assert_eq!(call.actions(), [Action::Answer, play("fallback")]);
}

#[test]
fn dial_number_through_a_trunk_and_an_empty_target_fails() {
    let mut call = start(json!({"entry": "s", "nodes": {
        "s": {"verb": "set", "vars": {"who": "+1555${digits}"}, "next": "d"},
        "d": {"verb": "dial", "number": "${who}", "trunk": "telnyx",
              "transitions": {"failed": "f"}},
        "f": {"verb": "hangup"}
    }}));
    assert_eq!(
        call.actions(),
        [Action::Dial {
            target: DialTarget::Number {
                number: "+1555".into(),
                trunk: Some("telnyx".into())
            },
            timeout: Duration::from_secs(30),
        }]
    );
    let mut call = start(json!({"entry": "d", "nodes": {
        "d": {"verb": "dial", "extension": "${nothing}", "transitions": {"failed": "f"}},
        "f": {"verb": "hangup"}
    }}));
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
    assert_eq!(call.path(), ["d", "f"]);
}

#[test]
fn record_voicemail() {
    let doc = json!({"entry": "r", "nodes": {
        "r": {"verb": "record", "max_seconds": 60, "silence_seconds": 4, "mailbox": "1002",
              "transitions": {"no_input": "empty"}, "next": "thanks"},
        "thanks": {"verb": "play", "prompt": "thanks"},
        "empty": {"verb": "hangup"}
    }});
    let request = Action::Record(RecordRequest {
        max_length: Duration::from_secs(60),
        silence: Some(Duration::from_secs(4)),
        beep: true,
        mailbox: Some("1002".into()),
    });
    // Ended by the host's silence detection.
    let mut call = start(doc.clone());
    assert_eq!(call.actions(), [Action::Answer, request.clone()]);
    call.press("1");
    assert_eq!(call.actions(), [], "only the finish key stops a recording");
    call.send(Event::RecordDone {
        duration: Duration::from_secs(12),
        heard: true,
    });
    assert_eq!(call.actions(), [play("thanks")]);
    assert_eq!(
        call.run.var("recording_seconds", call.now).as_deref(),
        Some("12")
    );
    // The finish key.
    let mut call = start(doc.clone());
    call.actions();
    call.press("#");
    assert_eq!(call.actions(), [Action::StopRecord]);
    call.send(Event::RecordDone {
        duration: Duration::from_secs(3),
        heard: true,
    });
    assert_eq!(call.actions(), [play("thanks")]);
    // The longest recording, then nothing heard.
    let mut call = start(doc);
    call.actions();
    call.secs(60.0);
    assert_eq!(call.actions(), [Action::StopRecord]);
    call.send(Event::RecordDone {
        duration: Duration::from_secs(60),
        heard: false,
    });
    assert_eq!(call.actions(), [hangup(EndReason::Completed)]);
    assert_eq!(call.path(), ["r", "empty"]);
}

#[test]
fn set_and_switch() {
    let doc = json!({"entry": "s", "nodes": {
        "s": {"verb": "set", "vars": {"lang": "fr", "greeting": "hi ${caller} on ${did}"}, "next": "sw"},
        "sw": {"verb": "switch", "var": "lang",
               "transitions": {"case.en": "en", "case.fr": "fr", "default": "en"}},
        "en": {"verb": "play", "prompt": "en"},
        "fr": {"verb": "play", "prompt": "fr"},
        "who": {"verb": "switch", "var": "caller", "transitions": {"case.+15550001111": "fr"}, "next": "en"}
    }});
    let mut call = start(doc.clone());
    assert_eq!(call.actions(), [Action::Answer, play("fr")]);
    assert_eq!(
        call.run.var("greeting", call.now).as_deref(),
        Some("hi +15550001111 on +15557654321")
    );
    // `default`, then `next` when there is no default.
    let mut doc2 = doc.clone();
    doc2["nodes"]["s"]["vars"]["lang"] = json!("de");
    assert_eq!(start(doc2).actions(), [Action::Answer, play("en")]);
    let mut doc3 = doc;
    doc3["entry"] = json!("who");
    assert_eq!(start(doc3).actions(), [Action::Answer, play("fr")]);
    // Built-in time variables are in UTC.
    let call = start(json!({"entry": "h", "nodes": {"h": {"verb": "hangup"}}}));
    assert_eq!(call.run.var("weekday", call.now).as_deref(), Some("mon"));
    assert_eq!(call.run.var("time", call.now).as_deref(), Some("15:00"));
    assert_eq!(
        call.run.var("date", call.now).as_deref(),
        Some("2026-11-23")
    );
    assert_eq!(call.run.var("nope", call.now), None);
}

fn office(entry: &str) -> Value {
    json!({"entry": entry, "nodes": {
        "hours": {"verb": "schedule", "timezone": "America/New_York",
                  "hours": [{"days": ["mon", "tue", "wed", "thu", "fri"], "open": "09:00", "close": "17:00"},
                            {"days": ["sat"], "open": "22:00", "close": "02:00"}],
                  "holidays": ["2026-12-25"],
                  "transitions": {"open": "open", "closed": "closed", "holiday": "holiday"}},
        "early": {"verb": "schedule", "timezone": "America/New_York",
                  "hours": [{"days": ["sun"], "open": "03:00", "close": "04:00"}],
                  "transitions": {"open": "open", "closed": "closed"}},
        "wait": {"verb": "pause", "seconds": 120, "next": "early"},
        "open": {"verb": "play", "prompt": "open"},
        "closed": {"verb": "play", "prompt": "closed"},
        "holiday": {"verb": "play", "prompt": "holiday"}
    }})
}

fn schedule_at(entry: &str, wall: &str) -> String {
    let mut call = start_at(office(entry), wall);
    call.secs(200.0);
    call.actions()
        .into_iter()
        .find_map(|a| match a {
            Action::Play { prompt } => Some(prompt),
            _ => None,
        })
        .unwrap()
}

#[test]
fn schedule_open_closed_holiday_and_overnight() {
    // Monday 2026-11-23, EST (UTC-5): 09:00 local is 14:00 UTC.
    assert_eq!(schedule_at("hours", "2026-11-23T13:59:59Z"), "closed");
    assert_eq!(schedule_at("hours", "2026-11-23T14:00:00Z"), "open");
    assert_eq!(schedule_at("hours", "2026-11-23T21:59:59Z"), "open");
    assert_eq!(schedule_at("hours", "2026-11-23T22:00:00Z"), "closed");
    // Christmas is a Friday in 2026.
    assert_eq!(schedule_at("hours", "2026-12-25T15:00:00Z"), "holiday");
    // Saturday 22:00 to Sunday 02:00 local.
    assert_eq!(schedule_at("hours", "2026-11-29T03:00:00Z"), "open"); // Sat 22:00
    assert_eq!(schedule_at("hours", "2026-11-29T06:59:00Z"), "open"); // Sun 01:59
    assert_eq!(schedule_at("hours", "2026-11-29T07:00:00Z"), "closed"); // Sun 02:00
    assert_eq!(schedule_at("hours", "2026-11-30T06:00:00Z"), "closed"); // Mon 01:00
    // Without a holiday branch, a holiday is closed.
    let mut doc = office("hours");
    doc["nodes"]["hours"]["transitions"]
        .as_object_mut()
        .unwrap()
        .remove("holiday");
    let mut call = start_at(doc, "2026-12-25T15:00:00Z");
    assert_eq!(call.actions(), [Action::Answer, play("closed")]);
}

#[test]
fn schedule_across_daylight_saving_changes() {
    // Friday 2026-03-06 is EST (UTC-5), Monday 2026-03-09 is EDT (UTC-4): 09:00 local moves.
    assert_eq!(schedule_at("hours", "2026-03-06T13:30:00Z"), "closed");
    assert_eq!(schedule_at("hours", "2026-03-06T14:00:00Z"), "open");
    assert_eq!(schedule_at("hours", "2026-03-09T13:00:00Z"), "open");
    assert_eq!(schedule_at("hours", "2026-03-09T12:59:00Z"), "closed");
    // A call that starts at 01:59 EST on 2026-03-08 and waits two minutes is evaluated at
    // 03:01 EDT: clocks skipped 02:00-03:00, so the 03:00-04:00 window is open.
    assert_eq!(schedule_at("wait", "2026-03-08T06:59:00Z"), "open");
    // Without the jump it would still be before 03:00: the same wait a week earlier is closed.
    assert_eq!(schedule_at("wait", "2026-03-01T06:59:00Z"), "closed");
    // 2026-11-01: clocks fall back 02:00 EDT -> 01:00 EST; 03:00 local is 08:00 UTC.
    assert_eq!(schedule_at("early", "2026-11-01T07:30:00Z"), "closed"); // 02:30 EST
    assert_eq!(schedule_at("early", "2026-11-01T08:00:00Z"), "open");
}

fn only_http(call: &mut Call) -> HttpRequest {
    match call.actions().as_slice() {
        [Action::Http(request)] => request.clone(),
        other => panic!("expected one http action, got {other:?}"),
    }
}

#[test]
fn http_fetch_saves_variables_and_branches() {
    let doc = json!({"entry": "h", "nodes": {
        "h": {"verb": "http", "url": "https://crm.example/lookup?from=${caller}&x=1", "timeout": 2,
              "save": {"tier": "/customer/tier", "open": "/open"},
              "transitions": {"success": "sw", "error": "err"}},
        "sw": {"verb": "switch", "var": "tier", "transitions": {"case.gold": "vip"}, "next": "std"},
        "vip": {"verb": "play", "prompt": "vip"},
        "std": {"verb": "play", "prompt": "std"},
        "err": {"verb": "play", "prompt": "err"}
    }});
    let mut call = start(doc.clone());
    let request = only_http(&mut call);
    assert_eq!(
        request.url, "https://crm.example/lookup?from=%2B15550001111&x=1",
        "values are percent-encoded"
    );
    assert_eq!(request.method, Method::Get);
    assert_eq!(request.body, None);
    call.send(Event::HttpDone {
        id: request.id + 1,
        result: Ok(json!({})),
    });
    assert_eq!(call.actions(), [], "another request's answer is ignored");
    call.send(Event::HttpDone {
        id: request.id,
        result: Ok(json!({"customer": {"tier": "gold"}, "open": true})),
    });
    assert_eq!(call.actions(), [Action::Answer, play("vip")]);
    assert_eq!(call.run.var("open", call.now).as_deref(), Some("true"));

    // Error reply.
    let mut call = start(doc.clone());
    let request = only_http(&mut call);
    call.send(Event::HttpDone {
        id: request.id,
        result: Err("HTTP 500".into()),
    });
    assert_eq!(call.actions(), [Action::Answer, play("err")]);

    // Timeout; the late answer changes nothing.
    let mut call = start(doc);
    let request = only_http(&mut call);
    call.secs(2.0);
    assert_eq!(call.actions(), [Action::Answer, play("err")]);
    call.send(Event::HttpDone {
        id: request.id,
        result: Ok(json!({"customer": {"tier": "gold"}})),
    });
    assert_eq!(call.actions(), []);
    assert_eq!(call.run.var("tier", call.now), None);

    // POST sends the variables.
    let mut call = start(json!({"entry": "s", "nodes": {
        "s": {"verb": "set", "vars": {"lang": "en"}, "next": "h"},
        "h": {"verb": "http", "method": "POST", "url": "http://hook.example/ivr"}
    }}));
    let request = only_http(&mut call);
    assert_eq!(
        request.body,
        Some(json!({"caller": "+15550001111", "did": "+15557654321", "digits": "", "lang": "en"}))
    );
}

#[test]
fn goto_loops_hit_the_step_cap() {
    let mut call = start(json!({"entry": "a", "nodes": {
        "a": {"verb": "goto", "next": "b"},
        "b": {"verb": "goto", "next": "a"}
    }}));
    assert_eq!(call.actions(), [hangup(EndReason::StepCap)]);
    assert_eq!(call.path().len(), 50);
    // A loop through a failing dial is capped too, one event at a time.
    let mut call = start(json!({"entry": "d", "nodes": {
        "d": {"verb": "dial", "extension": "1001", "next": "d"}
    }}));
    let mut dials = 0;
    while call.run.ended().is_none() {
        dials += call.actions().len();
        call.send(Event::DialFailed(DialFailure::Busy));
    }
    assert_eq!(dials, 50);
    assert_eq!(call.actions(), [hangup(EndReason::StepCap)]);
}

#[test]
fn caller_hangup_ends_the_run_quietly() {
    let mut call = start(menu(json!({})));
    call.actions();
    call.send(Event::CallerHungUp);
    assert_eq!(call.actions(), []);
    assert_eq!(call.run.ended(), Some(EndReason::CallerHungUp));
    assert_eq!(call.run.poll_timeout(), None);
}

#[test]
fn publishing_checks_every_parameter() {
    let node = |n: Value| json!({"entry": "n", "nodes": {"n": n, "x": {"verb": "hangup"}}});
    let refused = |n: Value| match Graph::parse(&node(n)) {
        Err(Error::Param { field, message, .. }) => format!("{field} {message}"),
        other => panic!("expected a parameter error, got {other:?}"),
    };
    assert!(
        refused(json!({"verb": "gather", "max_digit": 3}))
            .starts_with("max_digit is not a parameter")
    );
    assert!(refused(json!({"verb": "gather", "max_digits": 0})).contains("between 1 and 32"));
    assert!(refused(json!({"verb": "gather", "timeout": "5"})).contains("number of seconds"));
    assert!(refused(json!({"verb": "gather", "terminator": "##"})).starts_with("terminator"));
    assert!(refused(json!({"verb": "play"})).starts_with("prompt is required"));
    assert!(refused(json!({"verb": "play", "prompt": "a b"})).starts_with("prompt must be"));
    assert!(refused(json!({"verb": "pause", "seconds": 1000})).contains("between"));
    assert!(refused(json!({"verb": "dial"})).contains("exactly one"));
    assert!(
        refused(json!({"verb": "dial", "extension": "1", "number": "2"})).contains("exactly one")
    );
    assert!(
        refused(json!({"verb": "dial", "extension": "1", "trunk": "t"}))
            .contains("only to dialling")
    );
    assert!(refused(json!({"verb": "dial", "extension": "${1x}"})).contains("not a variable name"));
    assert!(refused(json!({"verb": "dial", "extension": "${open"})).contains("without a closing"));
    assert!(refused(json!({"verb": "record", "beep": "yes"})).contains("true or false"));
    assert!(refused(json!({"verb": "set"})).starts_with("vars is required"));
    assert!(refused(json!({"verb": "set", "vars": {"a-b": "x"}})).contains("not a variable name"));
    assert!(refused(json!({"verb": "set", "vars": {"a": 1}})).contains("to a string"));
    assert!(refused(json!({"verb": "switch"})).starts_with("var is required"));
    assert!(
        refused(json!({"verb": "schedule", "timezone": "Mars/Olympus"})).contains("not a known")
    );
    assert!(refused(json!({"verb": "schedule", "timezone": "UTC", "hours": [{"days": ["mon"], "open": "9:00", "close": "17:00"}]})).starts_with("hours entries"));
    assert!(refused(json!({"verb": "schedule", "timezone": "UTC", "hours": [{"days": ["moon"], "open": "09:00", "close": "17:00"}]})).starts_with("hours entries"));
    assert!(
        refused(json!({"verb": "schedule", "timezone": "UTC", "holidays": ["25/12/2026"]}))
            .starts_with("holidays")
    );
    assert!(refused(json!({"verb": "http", "url": "ftp://x"})).contains("http://"));
    assert!(
        refused(json!({"verb": "http", "url": "http://x", "method": "PUT"}))
            .contains("GET or POST")
    );
    assert!(
        refused(json!({"verb": "http", "url": "http://x", "save": {"a": "b"}}))
            .contains("JSON pointer")
    );
    assert!(
        refused(json!({"verb": "hangup", "cause": 486})).starts_with("cause is not a parameter")
    );
    // The message names the node and the field.
    let err = Graph::parse(&node(json!({"verb": "gather", "attempts": 99}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node `n`: `attempts` must be between 1 and 10"
    );
    // Everything at once is accepted.
    Flow::parse(&office("hours")).unwrap();
}

proptest! {
    /// Any sequence of events and timer runs leaves the run consistent: nothing after the
    /// hangup, a bounded path, and a timer only while the run is alive.
    #[test]
    fn any_event_sequence_is_safe(events in proptest::collection::vec((0u8..12, 0u16..8000), 0..80)) {
        let mut call = start(menu(json!({"nomatch": "sorry", "timeout": "menu", "max_attempts": "bye"})));
        let mut hangups = 0;
        for (kind, millis) in events {
            call.advance(Duration::from_millis(u64::from(millis)));
            let event = match kind {
                0 => Event::PlayDone,
                1 => Event::Digit('1'),
                2 => Event::Digit('2'),
                3 => Event::Digit('9'),
                4 => Event::Digit('#'),
                5 => Event::DialAnswered,
                6 => Event::DialFailed(DialFailure::Busy),
                7 => Event::BridgeEnded,
                8 => Event::RecordDone { duration: Duration::ZERO, heard: false },
                9 => Event::HttpDone { id: 1, result: Ok(Value::Null) },
                10 => Event::Digit('x'),
                _ => Event::CallerHungUp,
            };
            call.send(event);
            for action in call.actions() {
                prop_assert_eq!(hangups, 0, "an action after the hangup: {:?}", action);
                if matches!(action, Action::Hangup { .. }) {
                    hangups += 1;
                }
            }
            prop_assert!(call.run.path().count() <= 50);
            if call.run.ended().is_some() {
                prop_assert_eq!(call.run.poll_timeout(), None);
            }
        }
    }
}

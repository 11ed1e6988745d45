//! The IVR flow engine: runs one call through a compiled [`Flow`], sans-IO.
//!
//! The host (the server's call task) feeds a [`FlowRun`] the call's [`Event`]s and the time, and
//! carries out the [`Action`]s it polls: answer, play a prompt, dial, record, fetch a URL, hang
//! up. Timers (pauses, digit timeouts, dial and HTTP timeouts, the longest recording) live in
//! the engine: the host calls [`FlowRun::handle_timeout`] at [`FlowRun::poll_timeout`]. The
//! wall clock needed by `schedule` nodes is derived from the one given at the start, so a test
//! drives a whole call, across a daylight-saving change if it likes, on virtual time.
//!
//! Semantics, where a verb has a choice to make:
//! - `play`, `gather` and `record` answer the call first if nothing has yet (a `pause` or a
//!   `dial` do not: they can run while the caller hears ringing).
//! - An outcome with no transition falls through to `next`; a node with nowhere to go ends the
//!   call. The exception is `gather`: a `nomatch` or `timeout` without a transition tries the
//!   same gather again, and after its `attempts` the flow takes `max_attempts`, or hangs up.
//!   The attempt count belongs to the node for the whole call, so a `nomatch` that goes to a
//!   "sorry" prompt and back to the menu still counts; a successful entry resets it.
//! - A gather with `match.<digits>` transitions routes on the digits (`nomatch` for others);
//!   one without keeps the digits in `${digits}` and goes to `next`. Digits end at
//!   `max_digits`, at the terminator (not kept), after `inter_digit_timeout` without a key, or
//!   when `timeout` since the prompt ended runs out. A key during the prompt stops it.
//! - A `dial` that is answered bridges the caller; when the bridge ends the flow takes
//!   `answered`. `timeout` without an answer cancels the dial (`no_answer`).
//! - `record` ends at `max_seconds`, at `finish_on_key`, or when the host's silence detection
//!   ends it; a recording with nothing heard takes `no_input`.
//! - Every node entered counts as a step; past the run's step cap the call is hung up, so a
//!   loop of `goto`s or of failing dials cannot run forever.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::step::{self, DialTo, Method, Step, Template};
use super::{Error, Graph};

/// Most variables a call may hold.
pub const MAX_VARS: usize = 64;
/// Longest variable value, in bytes; longer values are cut.
pub const MAX_VALUE_LEN: usize = 1024;
/// Default step cap per call.
pub const DEFAULT_MAX_STEPS: u32 = 256;
/// How long the engine waits for the host to report a prompt's end before taking it as
/// ended (longer than any prompt: a lost report must not leave the call stuck).
const PLAY_GUARD: Duration = Duration::from_secs(660);
/// How long it waits for a stopped recording's end.
const RECORD_STOP_GUARD: Duration = Duration::from_secs(10);

/// A flow graph checked and compiled for running: nodes by index, typed parameters.
#[derive(Clone, Debug)]
pub struct Flow {
    entry: usize,
    names: Vec<String>,
    nodes: Vec<Compiled>,
}

#[derive(Clone, Debug)]
struct Compiled {
    step: Step,
    next: Option<usize>,
    transitions: BTreeMap<String, usize>,
}

impl Flow {
    /// Checks `graph` completely (structure and every node's parameters) and compiles it.
    pub fn compile(graph: &Graph) -> Result<Self, Error> {
        graph.validate_structure()?;
        let names: Vec<String> = graph.nodes.keys().cloned().collect();
        // Node names are the graph's BTreeMap keys, so the sorted list finds them.
        let index = |name: &String| names.binary_search(name).ok();
        let nodes = graph
            .nodes
            .iter()
            .map(|(name, node)| {
                let has_matches = node.transitions.keys().any(|o| o.starts_with("match."));
                Ok(Compiled {
                    step: Step::compile(name, node.verb, &node.params, has_matches)?,
                    next: node.next.as_ref().and_then(index),
                    transitions: node
                        .transitions
                        .iter()
                        .filter_map(|(outcome, target)| Some((outcome.clone(), index(target)?)))
                        .collect(),
                })
            })
            .collect::<Result<_, Error>>()?;
        let entry = index(&graph.entry).ok_or_else(|| Error::MissingEntry(graph.entry.clone()))?;
        Ok(Self {
            entry,
            names,
            nodes,
        })
    }

    /// Parses, checks and compiles a flow document.
    pub fn parse(document: &Value) -> Result<Self, Error> {
        Self::compile(&Graph::parse(document)?)
    }
}

/// The call a flow runs for.
#[derive(Clone, Debug, Default)]
pub struct CallInfo {
    /// The caller's number or user (`${caller}`).
    pub caller: String,
    /// The number that was called (`${did}`).
    pub did: String,
}

/// Whom a `dial` calls, with variables filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialTarget {
    /// An extension of the call's tenant.
    Extension(String),
    /// A ring group of the call's tenant, by name.
    RingGroup(String),
    /// A number through a trunk (the routes pick one unless `trunk` names it).
    Number {
        /// The number as dialled.
        number: String,
        /// A trunk by name.
        trunk: Option<String>,
    },
}

/// What a `record` node asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRequest {
    /// Longest recording; the engine sends [`Action::StopRecord`] when it runs out.
    pub max_length: Duration,
    /// End the recording after this much silence (host-side detection).
    pub silence: Option<Duration>,
    /// Play a beep before recording.
    pub beep: bool,
    /// Extension whose voicemail box gets the recording, if any.
    pub mailbox: Option<String>,
}

/// What an `http` node asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Matches the answer in [`Event::HttpDone`].
    pub id: u32,
    /// Method.
    pub method: Method,
    /// URL with variables filled in (percent-encoded).
    pub url: String,
    /// For `POST`: the call's variables as a JSON object.
    pub body: Option<Value>,
    /// The engine gives up (taking `error`) after this long.
    pub timeout: Duration,
}

/// Something the host must do for the flow.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Answer the call (200 OK) if not yet answered.
    Answer,
    /// Play a prompt of the call's tenant; report [`Event::PlayDone`] when it ends.
    Play {
        /// Prompt name.
        prompt: String,
    },
    /// Stop the prompt playing (a key was pressed); no [`Event::PlayDone`] is expected.
    StopPlay,
    /// Call someone; report [`Event::DialAnswered`] or [`Event::DialFailed`], and
    /// [`Event::BridgeEnded`] after an answer.
    Dial {
        /// Whom.
        target: DialTarget,
        /// The engine cancels after this long.
        timeout: Duration,
    },
    /// Give up the dial in progress (ringing too long); no event is expected.
    CancelDial,
    /// Record the caller; report [`Event::RecordDone`].
    Record(RecordRequest),
    /// End the recording in progress; [`Event::RecordDone`] is still expected.
    StopRecord,
    /// Fetch a URL; report [`Event::HttpDone`].
    Http(HttpRequest),
    /// End the call. The last action of a run.
    Hangup {
        /// Why.
        reason: EndReason,
    },
}

/// Why a dial failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialFailure {
    /// Busy (486, 600) or declined (603).
    Busy,
    /// Nobody answered (480, 408, a ring timeout on the far side).
    NoAnswer,
    /// Anything else: no such target, no route, an error response.
    Failed,
}

impl DialFailure {
    fn outcome(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Failed => "failed",
        }
    }
}

/// Something that happened to the call.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt from [`Action::Play`] finished (or could not be played).
    PlayDone,
    /// The caller pressed a key (RFC 4733 or SIP INFO).
    Digit(char),
    /// The dialled party answered; the caller is bridged to them.
    DialAnswered,
    /// The dial failed.
    DialFailed(DialFailure),
    /// The bridged call ended (the far side hung up).
    BridgeEnded,
    /// The recording ended.
    RecordDone {
        /// How long it is.
        duration: Duration,
        /// Whether anything but silence was heard.
        heard: bool,
    },
    /// The answer to [`Action::Http`]: the JSON body of a 2xx, or why there is none.
    HttpDone {
        /// The request's id.
        id: u32,
        /// The JSON, or an error text.
        result: Result<Value, String>,
    },
    /// The caller hung up. The host tears down whatever the flow had started.
    CallerHungUp,
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A `hangup` node, or a node with nowhere to go.
    Completed,
    /// A gather ran out of attempts and has no `max_attempts` transition.
    MaxAttempts,
    /// The step cap stopped a loop.
    StepCap,
    /// The caller hung up.
    CallerHungUp,
}

impl EndReason {
    /// A short name for CDRs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::MaxAttempts => "max_attempts",
            Self::StepCap => "step_cap",
            Self::CallerHungUp => "caller_hung_up",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Wait {
    /// Between steps (only while the engine itself is running).
    None,
    Playing,
    Pausing,
    GatherPrompt,
    /// Collecting digits; the entry ends at `overall` at the latest.
    Gathering {
        overall: Instant,
    },
    Dialing,
    Bridged,
    Recording,
    RecordStopping,
    Http {
        id: u32,
    },
    Done(EndReason),
}

/// One call's run through a flow.
#[derive(Debug)]
pub struct FlowRun {
    flow: Arc<Flow>,
    call: CallInfo,
    origin: (Instant, jiff::Timestamp),
    vars: BTreeMap<String, String>,
    digits: String,
    /// The node being run.
    at: usize,
    wait: Wait,
    deadline: Option<Instant>,
    attempts: BTreeMap<usize, u32>,
    steps: u32,
    max_steps: u32,
    path: Vec<usize>,
    answered: bool,
    next_http: u32,
    actions: VecDeque<Action>,
}

/// What entering a node leads to.
enum Then {
    /// Wait for an event or a timer.
    Wait,
    /// Go on to a node at once (or end the call with `None`).
    Go(Option<usize>),
}

impl FlowRun {
    /// Starts `call` at the flow's entry node. `wall` is the wall-clock time at `now`.
    pub fn start(
        flow: Arc<Flow>,
        call: CallInfo,
        max_steps: u32,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Self {
        let entry = flow.entry;
        let mut run = Self {
            flow,
            call,
            origin: (now, wall),
            vars: BTreeMap::new(),
            digits: String::new(),
            at: entry,
            wait: Wait::None,
            deadline: None,
            attempts: BTreeMap::new(),
            steps: 0,
            max_steps,
            path: Vec::new(),
            answered: false,
            next_http: 0,
            actions: VecDeque::new(),
        };
        run.go(Some(entry), now);
        run
    }

    /// The next thing the host must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the run has ended, and why.
    pub fn ended(&self) -> Option<EndReason> {
        match self.wait {
            Wait::Done(reason) => Some(reason),
            _ => None,
        }
    }

    /// The names of the nodes entered so far, in order (for the CDR).
    pub fn path(&self) -> impl Iterator<Item = &str> + '_ {
        self.path.iter().map(|&i| self.flow.names[i].as_str())
    }

    /// The node being run.
    pub fn current(&self) -> &str {
        &self.flow.names[self.at]
    }

    /// A variable's value: those set by the flow, then `caller`, `did`, `digits`, and `date`
    /// (`YYYY-MM-DD`), `time` (`HH:MM`) and `weekday` (`mon`…`sun`) in UTC.
    pub fn var(&self, name: &str, now: Instant) -> Option<String> {
        if let Some(v) = self.vars.get(name) {
            return Some(v.clone());
        }
        let utc = || self.wall(now).to_zoned(jiff::tz::TimeZone::UTC);
        Some(match name {
            "caller" => self.call.caller.clone(),
            "did" => self.call.did.clone(),
            "digits" => self.digits.clone(),
            "date" => utc().date().to_string(),
            "time" => utc().strftime("%H:%M").to_string(),
            "weekday" => utc().strftime("%a").to_string().to_ascii_lowercase(),
            _ => return None,
        })
    }

    /// The wall-clock time at `now`.
    fn wall(&self, now: Instant) -> jiff::Timestamp {
        let elapsed = now.saturating_duration_since(self.origin.0);
        let elapsed = jiff::SignedDuration::try_from(elapsed).unwrap_or(jiff::SignedDuration::MAX);
        self.origin
            .1
            .checked_add(elapsed)
            .unwrap_or(jiff::Timestamp::MAX)
    }

    /// Feeds the run a call event.
    pub fn handle_event(&mut self, event: Event, now: Instant) {
        match (event, self.wait.clone()) {
            (_, Wait::Done(_)) => {}
            (Event::CallerHungUp, _) => self.finish(EndReason::CallerHungUp),
            (Event::PlayDone, Wait::Playing) => self.leave(None, now),
            (Event::PlayDone, Wait::GatherPrompt) => {
                let timeout = self.gather().timeout;
                self.wait = Wait::Gathering {
                    overall: now + timeout,
                };
                self.deadline = Some(now + timeout);
            }
            (Event::Digit(key), Wait::GatherPrompt) if step::is_dtmf(key) => {
                self.actions.push_back(Action::StopPlay);
                let timeout = self.gather().timeout;
                self.wait = Wait::Gathering {
                    overall: now + timeout,
                };
                self.digit(key, now);
            }
            (Event::Digit(key), Wait::Gathering { .. }) if step::is_dtmf(key) => {
                self.digit(key, now);
            }
            (Event::Digit(key), Wait::Recording) => {
                let Step::Record(record) = &self.flow.nodes[self.at].step else {
                    return;
                };
                if record.finish_on_key == Some(key) {
                    self.actions.push_back(Action::StopRecord);
                    self.wait = Wait::RecordStopping;
                    self.deadline = Some(now + RECORD_STOP_GUARD);
                }
            }
            (Event::DialAnswered, Wait::Dialing) => {
                self.wait = Wait::Bridged;
                self.deadline = None;
            }
            (Event::DialFailed(why), Wait::Dialing) => self.leave(Some(why.outcome()), now),
            (Event::BridgeEnded, Wait::Bridged) => self.leave(Some("answered"), now),
            (Event::RecordDone { duration, heard }, Wait::Recording | Wait::RecordStopping) => {
                self.set_var("recording_seconds", duration.as_secs().to_string());
                self.leave((!heard).then_some("no_input"), now);
            }
            (Event::HttpDone { id, result }, Wait::Http { id: waiting }) if id == waiting => {
                self.http_done(result, now);
            }
            // Anything else is stale or does not apply to the node being run.
            _ => {}
        }
    }

    /// Runs the timer that [`Self::poll_timeout`] asked for.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        self.deadline = None;
        match self.wait {
            Wait::Pausing => self.leave(None, now),
            Wait::Gathering { .. } if self.digits.is_empty() => self.gather_failed("timeout", now),
            Wait::Gathering { .. } => self.gather_done(now),
            Wait::Dialing => {
                self.actions.push_back(Action::CancelDial);
                self.leave(Some("no_answer"), now);
            }
            Wait::Recording => {
                self.actions.push_back(Action::StopRecord);
                self.wait = Wait::RecordStopping;
                self.deadline = Some(now + RECORD_STOP_GUARD);
            }
            Wait::Http { .. } => self.leave(Some("error"), now),
            // The host never reported the end: take it as it would have come.
            Wait::Playing => self.leave(None, now),
            Wait::GatherPrompt => {
                let timeout = self.gather().timeout;
                self.wait = Wait::Gathering {
                    overall: now + timeout,
                };
                self.deadline = Some(now + timeout);
            }
            Wait::RecordStopping => self.leave(Some("no_input"), now),
            _ => {}
        }
    }

    fn gather(&self) -> &step::Gather {
        match &self.flow.nodes[self.at].step {
            Step::Gather(g) => g,
            // Only called while waiting in a gather node.
            _ => unreachable!("gather state outside a gather node"),
        }
    }

    fn digit(&mut self, key: char, now: Instant) {
        let g = self.gather();
        let (terminator, max, inter) = (g.terminator, g.max_digits, g.inter_digit_timeout);
        if terminator == Some(key) {
            return self.gather_done(now);
        }
        self.digits.push(key);
        if self.digits.len() >= max {
            return self.gather_done(now);
        }
        if let Wait::Gathering { overall } = self.wait {
            self.deadline = Some((now + inter).min(overall));
        }
    }

    fn gather_done(&mut self, now: Instant) {
        self.deadline = None;
        if self.digits.is_empty() {
            return self.gather_failed("timeout", now);
        }
        let node = &self.flow.nodes[self.at];
        let has_matches = node.transitions.keys().any(|o| o.starts_with("match."));
        let matched = node
            .transitions
            .get(&format!("match.{}", self.digits))
            .copied();
        match (has_matches, matched) {
            (true, None) => self.gather_failed("nomatch", now),
            (_, target) => {
                self.attempts.remove(&self.at);
                let target = target.or(node.next);
                self.go(target, now);
            }
        }
    }

    fn gather_failed(&mut self, why: &'static str, now: Instant) {
        self.deadline = None;
        let node = &self.flow.nodes[self.at];
        let used = self.attempts.get(&self.at).copied().unwrap_or(0);
        if used >= self.gather().attempts {
            self.attempts.remove(&self.at);
            match node.transitions.get("max_attempts") {
                Some(&target) => self.go(Some(target), now),
                None => self.finish(EndReason::MaxAttempts),
            }
        } else {
            let target = node.transitions.get(why).copied().unwrap_or(self.at);
            self.go(Some(target), now);
        }
    }

    fn http_done(&mut self, result: Result<Value, String>, now: Instant) {
        let Ok(json) = result else {
            return self.leave(Some("error"), now);
        };
        let Step::Http(http) = &self.flow.nodes[self.at].step else {
            return;
        };
        let saved: Vec<(String, String)> = http
            .save
            .iter()
            .map(|(var, pointer)| {
                let value = match json.pointer(pointer) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                (var.clone(), value)
            })
            .collect();
        for (var, value) in saved {
            self.set_var(&var, value);
        }
        self.leave(Some("success"), now);
    }

    /// The current node finished with `outcome` (or plainly, with `None`).
    fn leave(&mut self, outcome: Option<&str>, now: Instant) {
        self.deadline = None;
        let node = &self.flow.nodes[self.at];
        let target = outcome
            .and_then(|o| node.transitions.get(o).copied())
            .or(node.next);
        self.go(target, now);
    }

    fn go(&mut self, mut target: Option<usize>, now: Instant) {
        self.wait = Wait::None;
        self.deadline = None;
        loop {
            let Some(index) = target else {
                return self.finish(EndReason::Completed);
            };
            self.steps += 1;
            if self.steps > self.max_steps {
                return self.finish(EndReason::StepCap);
            }
            self.at = index;
            self.path.push(index);
            match self.enter(now) {
                Then::Wait => return,
                Then::Go(next) => target = next,
            }
        }
    }

    fn answer(&mut self) {
        if !self.answered {
            self.answered = true;
            self.actions.push_back(Action::Answer);
        }
    }

    fn enter(&mut self, now: Instant) -> Then {
        let flow = Arc::clone(&self.flow);
        let node = &flow.nodes[self.at];
        match &node.step {
            Step::Answer => {
                self.answer();
                Then::Go(node.next)
            }
            Step::Play { prompt } => {
                self.answer();
                self.actions.push_back(Action::Play {
                    prompt: prompt.clone(),
                });
                self.wait = Wait::Playing;
                self.deadline = Some(now + PLAY_GUARD);
                Then::Wait
            }
            Step::Pause { duration } => {
                self.wait = Wait::Pausing;
                self.deadline = Some(now + *duration);
                Then::Wait
            }
            Step::Gather(g) => {
                self.answer();
                *self.attempts.entry(self.at).or_default() += 1;
                self.digits.clear();
                if let Some(prompt) = &g.prompt {
                    self.actions.push_back(Action::Play {
                        prompt: prompt.clone(),
                    });
                    self.wait = Wait::GatherPrompt;
                    self.deadline = Some(now + PLAY_GUARD);
                } else {
                    self.wait = Wait::Gathering {
                        overall: now + g.timeout,
                    };
                    self.deadline = Some(now + g.timeout);
                }
                Then::Wait
            }
            Step::Dial(dial) => {
                let render = |t: &Template| t.render(|name| self.var(name, now));
                let target = match &dial.to {
                    DialTo::Extension(t) => DialTarget::Extension(render(t)),
                    DialTo::RingGroup(t) => DialTarget::RingGroup(render(t)),
                    DialTo::Number { number, trunk } => DialTarget::Number {
                        number: render(number),
                        trunk: trunk.clone(),
                    },
                };
                let empty = match &target {
                    DialTarget::Extension(s) | DialTarget::RingGroup(s) => s.is_empty(),
                    DialTarget::Number { number, .. } => number.is_empty(),
                };
                if empty {
                    return Then::Go(node.transitions.get("failed").copied().or(node.next));
                }
                self.actions.push_back(Action::Dial {
                    target,
                    timeout: dial.timeout,
                });
                self.wait = Wait::Dialing;
                self.deadline = Some(now + dial.timeout);
                Then::Wait
            }
            Step::Record(record) => {
                self.answer();
                let mailbox = record
                    .mailbox
                    .as_ref()
                    .map(|t| t.render(|name| self.var(name, now)))
                    .filter(|m| !m.is_empty());
                self.actions.push_back(Action::Record(RecordRequest {
                    max_length: record.max_length,
                    silence: record.silence,
                    beep: record.beep,
                    mailbox,
                }));
                self.wait = Wait::Recording;
                self.deadline = Some(now + record.max_length);
                Then::Wait
            }
            Step::Set { vars } => {
                for (name, template) in vars {
                    let value = template.render(|n| self.var(n, now));
                    self.set_var(name, value);
                }
                Then::Go(node.next)
            }
            Step::Switch { var } => {
                let value = self.var(var, now).unwrap_or_default();
                let case = node.transitions.get(&format!("case.{value}"));
                Then::Go(
                    case.or_else(|| node.transitions.get("default"))
                        .copied()
                        .or(node.next),
                )
            }
            Step::Schedule(schedule) => {
                let state = schedule.state(self.wall(now));
                let target = node.transitions.get(state).or_else(|| {
                    // Without a `holiday` branch, a holiday is closed.
                    (state == "holiday")
                        .then(|| node.transitions.get("closed"))
                        .flatten()
                });
                Then::Go(target.copied().or(node.next))
            }
            Step::Http(http) => {
                self.next_http = self.next_http.wrapping_add(1);
                let id = self.next_http;
                let url = http
                    .url
                    .render(|name| self.var(name, now).map(|v| percent_encode(&v)));
                let body = (http.method == Method::Post).then(|| self.body(now));
                self.actions.push_back(Action::Http(HttpRequest {
                    id,
                    method: http.method,
                    url,
                    body,
                    timeout: http.timeout,
                }));
                self.wait = Wait::Http { id };
                self.deadline = Some(now + http.timeout);
                Then::Wait
            }
            Step::Goto => Then::Go(node.next),
            Step::Hangup => {
                self.finish(EndReason::Completed);
                Then::Wait
            }
        }
    }

    /// The call's variables as a JSON object (an `http` POST body).
    fn body(&self, now: Instant) -> Value {
        let mut body = serde_json::Map::new();
        for name in ["caller", "did", "digits"] {
            body.insert(name.into(), self.var(name, now).unwrap_or_default().into());
        }
        for (name, value) in &self.vars {
            body.insert(name.clone(), value.clone().into());
        }
        Value::Object(body)
    }

    fn set_var(&mut self, name: &str, mut value: String) {
        if value.len() > MAX_VALUE_LEN {
            let mut cut = MAX_VALUE_LEN;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        if self.vars.len() < MAX_VARS || self.vars.contains_key(name) {
            self.vars.insert(name.to_owned(), value);
        }
    }

    fn finish(&mut self, reason: EndReason) {
        self.deadline = None;
        if reason != EndReason::CallerHungUp {
            self.actions.push_back(Action::Hangup { reason });
        }
        self.wait = Wait::Done(reason);
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

//! Calls answered by an IVR flow: a number routed to a flow runs its published version for
//! the caller. The flow ([`FlowRun`]) decides; this carries out its actions on the call:
//!
//! - `Answer`: 200 OK to the caller with our own answer (G.711, µ-law if offered, and
//!   telephone-event), anchored on the caller-facing port;
//! - `Play`/`StopPlay`: the media plane streams the tenant's prompt into the caller's leg;
//! - `Dial`: INVITEs of our own to every registered contact of the extension (the B side of
//!   the call), offering the caller's codec so media is relayed untouched once it answers;
//!   busy, unanswered and failed dials go back to the flow, and so does the end of the
//!   bridge when the callee hangs up;
//! - `Hangup`: BYE to the caller (or a final response if the flow never answered).
//!
//! - `Record`: a voicemail, the caller's side alone in a mono file of the mailbox
//!   extension's box (the writer ends it after the flow's silence; the flow's timer ends it
//!   at its longest).
//!
//! - `Http`: the shell fetches the URL and hands the answer back
//!   ([`Core::handle_http_done`]); the flow's own timer gives up on a slow one.
//!
//! Keys reach the flow from RFC 4733 events in the caller's RTP and from SIP INFO.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use switchboard_media::sdp::Sdp;
use switchboard_sip::message::{HeaderName, Method, Request};
use switchboard_sip::transaction::ServerKey;

use rand::RngExt as _;

use super::outbound::TrunkDial;
use super::{
    CallStart, Disposition, Forking, NO_OFFER, NO_PORTS, RecordingState, Refusal, Refused, Side,
    media, retry_later,
};
use crate::core::{Core, Output};
use crate::directory::Outbound;
use crate::directory::Tenant;
use crate::ivr::{
    Action, CallInfo, DialFailure, DialTarget, EndReason, Event, FlowRun, RecordRequest,
};
use crate::media::{MediaCommand, RecordAction, SessionId, Voicemail};
use crate::peer::Peer;
use crate::stats::SipStats;

/// Steps a flow may take per call before it is hung up.
const MAX_STEPS: u32 = 256;

/// The number routes to a flow that has no published version.
const FLOW_UNAVAILABLE: Refusal = Refusal {
    status: 480,
    reason: "Temporarily Unavailable",
    disposition: Disposition::Failed,
    cause: "flow_not_published",
};

/// An IVR flow driving a call.
pub(super) struct App {
    run: FlowRun,
    flow_id: uuid::Uuid,
    flow_version: u32,
    /// Our answer to the caller's offer, before anchoring.
    answer: Sdp,
    /// The G.711 payload type of the answer.
    payload_type: u8,
    /// The latest play's id.
    play: u32,
    /// The voicemail being recorded.
    recording: Option<uuid::Uuid>,
    /// The trunk its latest dial to a number went out through.
    pub(super) out_trunk: Option<uuid::Uuid>,
}

/// What a finished flow leaves in the call record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IvrSummary {
    /// Flow id.
    pub flow_id: uuid::Uuid,
    /// The version that ran.
    pub version: u32,
    /// Nodes entered, in order.
    pub path: Vec<String>,
    /// Why the flow ended (`completed`, `max_attempts`, `step_cap`, `caller_hung_up`), if it
    /// did before the call.
    pub ended: Option<&'static str>,
    /// The trunk its latest dial to a number went out through (the record's `trunk_id` is
    /// the one the call came in on).
    pub out_trunk: Option<uuid::Uuid>,
}

impl App {
    /// Whether `id` is the latest play (an older one ending changes nothing).
    pub(super) fn is_current_play(&self, id: u32) -> bool {
        id == self.play
    }

    /// The flow's answer to the caller's offer (before anchoring).
    pub(super) fn answer(&self) -> &Sdp {
        &self.answer
    }

    pub(super) fn summary(&self) -> IvrSummary {
        IvrSummary {
            flow_id: self.flow_id,
            version: self.flow_version,
            path: self.run.path().map(str::to_owned).collect(),
            ended: self.run.ended().map(EndReason::as_str),
            out_trunk: self.out_trunk,
        }
    }
}

fn cause_of(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Completed | EndReason::CallerHungUp => "normal_clearing",
        EndReason::MaxAttempts => "ivr_max_attempts",
        EndReason::StepCap => "ivr_step_cap",
    }
}

impl Core {
    /// A call for a number routed to flow `flow_id`: answer it ourselves and run the flow.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_app(
        &mut self,
        now: Instant,
        wall_ms: u64,
        (key, request, from): (ServerKey, Request, Peer),
        tenant: Tenant,
        record: CallStart,
        flow_id: uuid::Uuid,
    ) {
        let refused = Refused {
            key: &key,
            request: &request,
            caller: from,
        };
        let published = self
            .directory
            .flow(flow_id)
            .filter(|f| f.tenant_id == tenant.id)
            .map(|f| (Arc::clone(&f.flow), f.version));
        let Some((flow, flow_version)) = published else {
            return self.refuse(now, refused, record, FLOW_UNAVAILABLE, |_| {});
        };
        // A browser's WebRTC offer is answered by its own leg; the flow sees plain G.711.
        let offer = match super::sdp_of(&request.body, &request.headers) {
            Some(Ok(sdp)) if media::audio_address(&sdp).is_some() || media::is_webrtc(&sdp) => {
                super::caller_offer(sdp, &request)
            }
            _ => None,
        };
        let Some(((offer, browser), (answer, payload_type))) =
            offer.and_then(|o| media::answer_g711(&o.0).map(|a| (o, a)))
        else {
            return self.refuse(now, refused, record, NO_OFFER, |r| {
                r.headers.push(
                    HeaderName::Warning,
                    "399 switchboard \"an SDP offer with PCMU or PCMA audio is required\"",
                );
            });
        };
        let Some(opened) = self.open_session(&record, &offer, &answer) else {
            return self.refuse(now, refused, record, NO_PORTS, retry_later);
        };
        let session = opened.session;
        let call_info = CallInfo {
            caller: record.from_number.clone(),
            did: record.did.clone().unwrap_or_default(),
        };
        let wall = jiff::Timestamp::from_millisecond(i64::try_from(wall_ms).unwrap_or(0))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let run = FlowRun::start(flow, call_info, MAX_STEPS, now, wall);
        let mut call = self.new_call(opened, record, tenant, (key, request, from), &answer);
        call.app = Some(Box::new(App {
            run,
            flow_id,
            flow_version,
            answer,
            payload_type,
            play: 0,
            recording: None,
            out_trunk: None,
        }));
        self.calls.insert(session, call);
        SipStats::set(&self.stats.active_calls, self.calls.calls.len() as u64);
        if !self.answer_browser(now, wall_ms, session, browser) {
            return;
        }
        self.drive_app(now, wall_ms, session);
    }

    /// Whether `session` is driven by a flow.
    pub(super) fn is_app(&self, session: SessionId) -> bool {
        self.calls
            .calls
            .get(&session)
            .is_some_and(|c| c.app.is_some())
    }

    /// Feeds the call's flow an event, then carries out what it asks.
    pub(super) fn app_event(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        event: Event,
    ) {
        let Some(app) = self.app_mut(session) else {
            return;
        };
        app.run.handle_event(event, now);
        self.drive_app(now, wall_ms, session);
    }

    /// Runs the flow's timer if it is due.
    pub(super) fn app_timer(&mut self, now: Instant, wall_ms: u64, session: SessionId) {
        let Some(app) = self.app_mut(session) else {
            return;
        };
        if app.run.poll_timeout().is_some_and(|at| at <= now) {
            app.run.handle_timeout(now);
            self.drive_app(now, wall_ms, session);
        }
    }

    fn app_mut(&mut self, session: SessionId) -> Option<&mut App> {
        self.calls.calls.get_mut(&session)?.app.as_deref_mut()
    }

    /// Carries out the flow's actions until it waits, and arms its timer.
    fn drive_app(&mut self, now: Instant, wall_ms: u64, session: SessionId) {
        loop {
            let Some(call) = self.calls.calls.get_mut(&session) else {
                return;
            };
            let tenant = call.tenant.id;
            let Some(app) = call.app.as_deref_mut() else {
                return;
            };
            let Some(action) = app.run.poll_action() else {
                break;
            };
            tracing::debug!(session, node = app.run.current(), ?action, "IVR action");
            match action {
                Action::Answer => self.app_answer(now, wall_ms, session),
                Action::Play { prompt } => {
                    app.play += 1;
                    let command = MediaCommand::Play {
                        session,
                        id: app.play,
                        tenant,
                        prompt,
                        payload_type: app.payload_type,
                    };
                    self.outputs.push_back(Output::Media(command));
                }
                Action::StopPlay => {
                    let id = app.play;
                    self.outputs
                        .push_back(Output::Media(MediaCommand::StopPlay { session, id }));
                }
                Action::Dial { target, .. } => self.app_dial(now, wall_ms, session, target),
                Action::CancelDial => self.drop_forks(now, session),
                Action::Record(request) => self.app_record(now, wall_ms, session, request),
                Action::StopRecord => {
                    let action = RecordAction::Stop;
                    self.outputs
                        .push_back(Output::Media(MediaCommand::Record { session, action }));
                }
                Action::Http(request) => {
                    self.outputs.push_back(Output::Http { session, request });
                }
                Action::Hangup { reason } => {
                    return self.app_hangup(now, wall_ms, session, reason);
                }
            }
        }
        if let Some(deadline) = self.app_mut(session).and_then(|a| a.run.poll_timeout()) {
            self.calls.timers.push(Reverse((deadline, session)));
        }
    }

    /// 200 OK to the caller with our answer; the caller's side of the dialog is confirmed.
    pub(super) fn app_answer(&mut self, now: Instant, wall_ms: u64, session: SessionId) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        if call.a_dialog.is_some() {
            // Answered already (a dial the callee answered before the flow did).
            return;
        }
        let Some(answer) = call.app.as_ref().map(|a| a.answer.clone()) else {
            return;
        };
        call.answered_wall_ms = Some(wall_ms);
        let a_dialog = switchboard_sip::dialog::Dialog::from_uas(
            &call.a_invite,
            &call.a_tag,
            switchboard_sip::dialog::DialogState::Confirmed,
        );
        if let Ok(a_dialog) = a_dialog {
            self.calls
                .by_dialog
                .insert(a_dialog.id.clone(), (session, Side::A));
            if let Some(call) = self.calls.calls.get_mut(&session) {
                call.a_dialog = Some(a_dialog);
            }
        }
        self.call_event(session, super::CallEventKind::Answered);
        self.respond_to_caller(now, session, 200, Some(&answer));
    }

    /// Starts a voicemail: the caller alone, for the mailbox extension's box.
    fn app_record(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        request: RecordRequest,
    ) {
        let recording =
            uuid::Builder::from_unix_timestamp_millis(wall_ms, &self.rng.random()).into_uuid();
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let mailbox = request.mailbox.as_deref().and_then(|number| {
            self.directory
                .extension_by_number(call.tenant.id, number)
                .map(|e| e.id)
        });
        let Some(app) = call.app.as_deref_mut() else {
            return;
        };
        if call.recording.is_some() {
            // The call is recorded already (through the API): one recording per call.
            tracing::warn!(
                session,
                "IVR record node on a call already recorded: nothing kept"
            );
            let done = Event::RecordDone {
                duration: std::time::Duration::ZERO,
                heard: false,
            };
            return app.run.handle_event(done, now);
        }
        app.recording = Some(recording);
        call.recording = Some((recording, RecordingState::Recording));
        let action = RecordAction::Start {
            recording,
            tenant: call.tenant.id,
            call: call.record.id,
            wall_ms,
            wideband: false,
            voicemail: Some(Voicemail {
                mailbox,
                silence: request.silence,
                beep: request.beep.then_some(app.payload_type),
            }),
        };
        self.outputs
            .push_back(Output::Media(MediaCommand::Record { session, action }));
    }

    /// The media plane finished a voicemail.
    pub(super) fn app_record_done(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        recording: uuid::Uuid,
        (duration_ms, heard): (u64, bool),
    ) {
        let Some(app) = self.app_mut(session) else {
            return;
        };
        if app.recording != Some(recording) {
            return;
        }
        app.recording = None;
        if let Some(call) = self.calls.calls.get_mut(&session) {
            call.recording = Some((recording, RecordingState::Stopped));
        }
        // Silence may have ended it: the worker stops copying packets.
        let action = RecordAction::Stop;
        self.outputs
            .push_back(Output::Media(MediaCommand::Record { session, action }));
        let done = Event::RecordDone {
            duration: std::time::Duration::from_millis(duration_ms),
            heard,
        };
        self.app_event(now, wall_ms, session, done);
    }

    /// Calls the dial's target: every registered contact of an extension.
    fn app_dial(&mut self, now: Instant, wall_ms: u64, session: SessionId, target: DialTarget) {
        let failed = |core: &mut Self, why| {
            if let Some(app) = core.app_mut(session) {
                app.run.handle_event(Event::DialFailed(why), now);
            }
        };
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let number = match target {
            DialTarget::Extension(number) => number,
            DialTarget::RingGroup(name) => {
                let group = self
                    .directory
                    .ring_group_by_name(call.tenant.id, &name)
                    .cloned();
                let (Some(group), Some(answer)) =
                    (group, call.app.as_ref().map(|a| a.answer.clone()))
                else {
                    return failed(self, DialFailure::Failed);
                };
                let offer = media::anchor(&answer, self.advertised, call.b_port);
                let caller = (String::new(), call.record.from_number.clone());
                if let Some(call) = self.calls.calls.get_mut(&session) {
                    call.record.to_number = group.name.clone();
                }
                if !self.ring_group(now, session, &group, offer, caller) {
                    failed(self, DialFailure::NoAnswer);
                }
                return;
            }
            DialTarget::Number { number, trunk } => {
                return self.app_dial_number((now, wall_ms), session, &number, trunk.as_deref());
            }
        };
        let Some(callee) = self
            .directory
            .extension_by_number(call.tenant.id, &number)
            .cloned()
        else {
            return failed(self, DialFailure::Failed);
        };
        let bindings: Vec<(String, Peer)> = self
            .registrar
            .bindings(callee.id)
            .iter()
            .map(|b| (b.contact.clone(), b.peer))
            .collect();
        if bindings.is_empty() {
            return failed(self, DialFailure::NoAnswer);
        }
        let (Some(answer), caller, domain, b_port) = (
            call.app.as_ref().map(|a| a.answer.clone()),
            call.record.from_number.clone(),
            call.tenant.domain.clone(),
            call.b_port,
        ) else {
            return;
        };
        let offer = media::anchor(&answer, self.advertised, b_port);
        let forks = self.fork_to(
            now,
            session,
            bindings,
            Forking {
                caller: ("", &caller),
                callee: &callee.number,
                callee_id: Some(callee.id),
                domain: &domain,
                to_domain: &domain,
                offer: &offer,
                max_forwards: 69,
                headers: &[],
            },
        );
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        call.record.to_extension = Some(callee.id);
        call.record.to_number = callee.number.clone();
        call.forks = forks;
        call.winner = None;
        call.rang = false;
        if call.forks.is_empty() {
            failed(self, DialFailure::Failed);
        }
    }

    /// Passes the call on to a number outside: through the named trunk, or the one the
    /// outbound routes pick; the caller's number is presented, with the number they called
    /// in Diversion.
    fn app_dial_number(
        &mut self,
        (now, wall_ms): (Instant, u64),
        session: SessionId,
        number: &str,
        trunk: Option<&str>,
    ) {
        let failed = |core: &mut Self| {
            if let Some(app) = core.app_mut(session) {
                app.run
                    .handle_event(Event::DialFailed(DialFailure::Failed), now);
            }
        };
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let Ok(e164) = crate::e164::normalize(number) else {
            return failed(self);
        };
        let tenant = call.tenant.id;
        // The number may come from the caller's keys or an HTTP answer: the toll-fraud
        // limits apply as to an extension's call.
        if let Some(refusal) = self.outbound_refusal(tenant, e164.trim_start_matches('+'), wall_ms)
        {
            tracing::warn!(session, number = %e164, cause = refusal.cause, "IVR dial refused");
            return failed(self);
        }
        // A named trunk is the only one tried; else the routes', in turn.
        let mut trunks: Vec<(uuid::Uuid, Outbound)> = match trunk {
            Some(name) => self
                .directory
                .trunk_by_name(tenant, name)
                .and_then(|t| Some((t.id, (*t.outbound.clone()?))))
                .into_iter()
                .collect(),
            None => self.route_trunks(tenant, e164.trim_start_matches('+')),
        };
        let Some(answer) = call.app.as_ref().map(|a| a.answer.clone()) else {
            return failed(self);
        };
        if trunks.is_empty() {
            return failed(self);
        }
        let (out_trunk, outbound) = trunks.remove(0);
        let dial = TrunkDial {
            e164: e164.clone(),
            display: String::new(),
            number: call.record.from_number.clone(),
            domain: call.tenant.domain.clone(),
            diversion: call.record.did.clone().map(|did| (did, "unconditional")),
            anonymous: false,
            offer: media::anchor(&answer, self.advertised, call.b_port),
            next_trunks: trunks.into_iter().map(|(id, _)| id).collect(),
        };
        self.dial_trunk(now, session, &outbound, dial);
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        call.record.to_number = e164;
        if let Some(app) = call.app.as_mut() {
            app.out_trunk = Some(out_trunk);
        }
        if call.forks.is_empty() && !self.next_route(now, session, &[503]) {
            failed(self);
        }
    }

    /// Cancels the dial in progress and forgets its forks.
    fn drop_forks(&mut self, now: Instant, session: SessionId) {
        self.cancel_forks(now, session, None);
        if let Some(call) = self.calls.calls.get_mut(&session) {
            for fork in call.forks.drain(..) {
                self.calls.by_fork.remove(&fork.key);
            }
            call.winner = None;
            call.hunt = None;
            call.ring_deadline = None;
            // A later dial (to a phone) must not reuse a trunk's credentials or proxies.
            call.trunk_auth = None;
            call.trunk_dial = None;
            // The callee's leg is gone: so is its session timer.
            call.session_timers[super::Side::B.index()] = None;
            call.failover.clear();
        }
    }

    /// Every fork of the flow's dial failed: `status` is the one that counts.
    pub(super) fn app_dial_failed(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        status: u16,
    ) {
        self.drop_forks(now, session);
        let why = match status {
            486 | 600 | 603 => DialFailure::Busy,
            408 | 480 | 487 => DialFailure::NoAnswer,
            _ => DialFailure::Failed,
        };
        self.app_event(now, wall_ms, session, Event::DialFailed(why));
    }

    /// The bridged callee hung up: the flow goes on.
    pub(super) fn app_bridge_ended(&mut self, now: Instant, wall_ms: u64, session: SessionId) {
        if let Some(call) = self.calls.calls.get_mut(&session) {
            if let Some(dialog) = call.b_dialog.take() {
                self.calls.by_dialog.remove(&dialog.id);
            }
            for fork in call.forks.drain(..) {
                self.calls.by_fork.remove(&fork.key);
            }
            call.winner = None;
            call.trunk_auth = None;
            call.trunk_dial = None;
            // The callee's leg is gone: so is its session timer.
            call.session_timers[super::Side::B.index()] = None;
            call.failover.clear();
        }
        self.outputs.push_back(Output::Media(MediaCommand::Update {
            session,
            a_side: false,
            expected: None,
            hold: false,
            dtmf: None,
        }));
        self.app_event(now, wall_ms, session, Event::BridgeEnded);
    }

    /// The flow hung up: BYE to the caller (or a final response if it never answered).
    fn app_hangup(&mut self, now: Instant, wall_ms: u64, session: SessionId, reason: EndReason) {
        let cause = cause_of(reason);
        self.drop_forks(now, session);
        self.end_by_system(now, wall_ms, session, (cause, 480));
    }

    /// An in-dialog request from the caller while no callee is bridged: a key in a SIP INFO
    /// goes to the flow; a re-INVITE or UPDATE (a session refresh, hold) gets our answer
    /// again.
    pub(super) fn app_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        key: &ServerKey,
        request: &Request,
    ) {
        if request.method == Method::Info {
            let Some((digit, _)) = self.info_key(session, Side::A, request) else {
                return self.respond(now, key, request, 415, "Unsupported Media Type", |_| {});
            };
            self.respond(now, key, request, 200, "OK", |_| {});
            return self.app_event(now, wall_ms, session, Event::Digit(digit));
        }
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let Some(answer) = call.app.as_ref().map(|a| a.answer.clone()) else {
            return;
        };
        // A browser gets its WebRTC leg's answer again, a phone the flow's.
        let ours = match call
            .a_webrtc
            .as_deref()
            .map(|text| Sdp::parse(text.as_bytes()))
        {
            Some(Ok(webrtc)) => webrtc,
            _ => media::anchor(&answer, self.advertised, call.a_port),
        };
        self.answer_refresh(now, session, Side::A, key, request, ours);
    }

    /// The answer to an [`Output::Http`]: the JSON of a 2xx, or why there is none.
    pub fn handle_http_done(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        (id, result): (u32, Result<serde_json::Value, String>),
    ) {
        self.last_now = Some(now);
        self.last_wall_ms = wall_ms;
        self.app_event(now, wall_ms, session, Event::HttpDone { id, result });
    }

    /// The caller hung up or the call failed under the flow: cancel its dial, hang up a
    /// bridged callee, tell the flow.
    pub(super) fn app_caller_gone(&mut self, now: Instant, session: SessionId) {
        // A bridged callee keeps its fork: it is hung up with a BYE by the caller's side.
        let bridged = self
            .calls
            .calls
            .get(&session)
            .is_some_and(|c| c.winner.is_some());
        if !bridged {
            self.drop_forks(now, session);
        }
        if let Some(app) = self.app_mut(session) {
            app.run.handle_event(Event::CallerHungUp, now);
        }
    }
}

//! The B2BUA: calls between extensions of a tenant.
//!
//! An authenticated INVITE to an extension forks to every registered contact of the callee,
//! each fork a new INVITE of our own (a new dialog: Call-ID, tags and SDP are ours, pointing
//! media at our ports). Provisional responses are relayed to the caller; the first 2xx wins,
//! the other forks are cancelled (or, if they answered too, acknowledged and hung up); the 2xx
//! is relayed to the caller and retransmitted until the caller's ACK (RFC 3261 §13.3.1.4).
//! Failures map to one final response: a 6xx or 486 from any fork wins, otherwise 480.
//!
//! Once up, requests in one dialog are relayed to the other: BYE ends the call; re-INVITE,
//! UPDATE and INFO are forwarded with their SDP re-anchored and their responses relayed back,
//! which is how hold and resume work. ACK, CANCEL and the timers (ring timeout, ACK wait,
//! media inactivity) are handled here. Every call produces a CDR start and exactly one end.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt as _;
use switchboard_media::dtmf::DtmfInfo;
use switchboard_media::sdp::Sdp;
use switchboard_sip::dialog::{Dialog, DialogId, DialogState};
use switchboard_sip::header::{CSeq, Via};
use switchboard_sip::message::{HeaderName, Headers, Method, Request, Response};
use switchboard_sip::transaction::{self, ClientKey, ServerKey};
use switchboard_sip::uri::Uri;
use uuid::Uuid;

mod app;
mod forward;
mod hunt;
mod outbound;
mod prack;
mod timer;

pub use self::app::IvrSummary;
use super::{Core, Output};
use crate::directory::{Extension, Forwarding, NumberTarget, Tenant};
use crate::media::{self, MediaCommand, MediaEvent, SessionId};
use crate::peer::{Peer, Transport};
use crate::stats::SipStats;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Answered, then hung up.
    Answered,
    /// The callee was busy.
    Busy,
    /// Nobody answered.
    NoAnswer,
    /// The caller gave up.
    Cancelled,
    /// Refused or failed.
    Failed,
}

/// Who ended a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupSide {
    /// The caller.
    Caller,
    /// The callee.
    Callee,
    /// Switchboard (timeouts, failures).
    System,
}

/// The start of a call record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallStart {
    /// CDR id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Call-ID of the caller's INVITE.
    pub sip_call_id: String,
    /// From URI of the caller's INVITE.
    pub from_uri: String,
    /// Request-URI of the caller's INVITE.
    pub to_uri: String,
    /// Caller extension (none for a call from a trunk).
    pub from_extension: Option<Uuid>,
    /// Caller number.
    pub from_number: String,
    /// Called extension, if the number was one.
    pub to_extension: Option<Uuid>,
    /// Called number.
    pub to_number: String,
    /// The trunk an inbound call came through.
    pub trunk_id: Option<Uuid>,
    /// The number (DID, E.164) an inbound call was for.
    pub did: Option<String>,
    /// Wall time of the INVITE (ms since the epoch).
    pub started_wall_ms: u64,
}

/// Something that happened to a live call, for live event subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// The call's record id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Caller extension (none for a call from a trunk).
    pub from_extension: Option<Uuid>,
    /// Called extension.
    pub to_extension: Option<Uuid>,
    /// What happened.
    pub kind: CallEventKind,
}

/// What happened to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEventKind {
    /// The callee's phone rings (its first 180 or 183).
    Ringing,
    /// The callee answered.
    Answered,
    /// A side put the call on hold (an SDP offer with sendonly, inactive or 0.0.0.0).
    Held,
    /// The call came off hold.
    Resumed,
    /// A side pressed a DTMF key (RFC 4733 in its RTP, or SIP INFO).
    Dtmf {
        /// The key: `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
        /// True if the caller pressed it.
        from_caller: bool,
        /// How long it was held, in milliseconds.
        duration_ms: u32,
    },
}

/// The end of a call record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEnd {
    /// The start of the record (its id is the CDR id).
    pub start: CallStart,
    /// Wall time of the answer, if any.
    pub answered_wall_ms: Option<u64>,
    /// Wall time of the end.
    pub ended_wall_ms: u64,
    /// How it ended.
    pub disposition: Disposition,
    /// Why, e.g. `normal_clearing`, `user_busy`, `no_answer`, `media_timeout`.
    pub cause: &'static str,
    /// Who ended it.
    pub side: HangupSide,
    /// The caller's address and the callee contact that answered.
    pub caller: Peer,
    /// The contact that answered, if any.
    pub callee: Option<Peer>,
    /// The call's recording, if it was recorded.
    pub recording: Option<Uuid>,
    /// The IVR flow that answered the call, and the path it took.
    pub ivr: Option<Box<IvrSummary>>,
}

/// What the control plane asks of a live call's recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingRequest {
    /// Start recording (once per call).
    Start,
    /// Leave what follows out of the file until resumed.
    Pause,
    /// Record again after a pause.
    Resume,
    /// Close the file.
    Stop,
}

/// Where a call's recording stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingState {
    /// Audio is being written.
    Recording,
    /// Paused.
    Paused,
    /// Closed.
    Stopped,
}

impl RecordingState {
    /// The state's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }
}

/// Why a recording request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// No live call has that record id.
    #[error("no such live call")]
    NoSuchCall,
    /// The call is not answered yet.
    #[error("the call is not answered yet")]
    NotAnswered,
    /// The call has (or had) a recording: one per call.
    #[error("the call is already recorded")]
    AlreadyRecorded,
    /// The request does not fit the recording's state (pause while not recording, …).
    #[error("the recording is {0}")]
    Conflict(&'static str),
}

/// A new INVITE being refused.
#[derive(Clone, Copy)]
struct Refused<'a> {
    key: &'a ServerKey,
    request: &'a Request,
    caller: Peer,
}

/// Why a new call is refused: the response and what its record says.
#[derive(Clone, Copy)]
struct Refusal {
    status: u16,
    reason: &'static str,
    disposition: Disposition,
    cause: &'static str,
}

/// The caller asked for a session interval below our Min-SE (RFC 4028 §9).
const SESSION_TOO_SMALL: Refusal = Refusal {
    status: 422,
    reason: "Session Interval Too Small",
    disposition: Disposition::Failed,
    cause: "session_interval_too_small",
};

/// Max-Forwards reached zero (RFC 3261 §16.3 step 3).
const LOOP: Refusal = Refusal {
    status: 483,
    reason: "Too Many Hops",
    disposition: Disposition::Failed,
    cause: "too_many_hops",
};
/// `media.max_calls` or `media.max_calls_per_tenant` reached.
const CALL_LIMIT: Refusal = Refusal {
    status: 503,
    reason: "Service Unavailable",
    disposition: Disposition::Failed,
    cause: "call_limit",
};
/// `media.max_calls_per_second` or `media.max_calls_per_second_per_tenant` reached.
const CALL_RATE: Refusal = Refusal {
    status: 503,
    reason: "Service Unavailable",
    disposition: Disposition::Failed,
    cause: "call_rate_limit",
};
/// No extension has the dialled number.
const UNKNOWN_NUMBER: Refusal = Refusal {
    status: 404,
    reason: "Not Found",
    disposition: Disposition::Failed,
    cause: "unallocated_number",
};
/// Dialled before a number outside, withholds the caller's number (`Privacy: id`).
const ANONYMOUS_PREFIX: &str = "*67";

/// The callee has no registered contact.
const NOT_REGISTERED: Refusal = Refusal {
    status: 480,
    reason: "Temporarily Unavailable",
    disposition: Disposition::Failed,
    cause: "user_not_registered",
};
/// No SDP offer with audio (late offer is not supported yet).
const NO_OFFER: Refusal = Refusal {
    status: 488,
    reason: "Not Acceptable Here",
    disposition: Disposition::Failed,
    cause: "incompatible_destination",
};
/// The RTP port range is used up.
const NO_PORTS: Refusal = Refusal {
    status: 503,
    reason: "Service Unavailable",
    disposition: Disposition::Failed,
    cause: "no_media_ports",
};

fn retry_later(response: &mut Response) {
    response.headers.push(HeaderName::RetryAfter, "5");
}

/// Who is calling: an authenticated extension, or a carrier through a trunk.
#[derive(Clone, Debug)]
pub(super) enum Caller {
    /// An extension that authenticated with digest.
    Extension(Extension),
    /// A trunk whose source address matched.
    Trunk {
        /// The trunk.
        trunk: Uuid,
        /// The caller's number as presented (From user).
        number: String,
        /// The caller's display name, if any.
        display: String,
    },
}

impl Caller {
    fn number(&self) -> &str {
        match self {
            Self::Extension(e) => &e.number,
            Self::Trunk { number, .. } => number,
        }
    }

    fn display(&self) -> &str {
        match self {
            Self::Extension(e) => &e.display_name,
            Self::Trunk { display, .. } => display,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForkState {
    Trying,
    Early,
    Answered,
    Done(u16),
}

struct Fork {
    key: ClientKey,
    invite: Request,
    peer: Peer,
    state: ForkState,
    /// The extension it rings, if it rings one.
    callee: Option<Uuid>,
    /// A browser's fork: the WebRTC leg our offer came from, until it answers.
    webrtc: Option<Box<media::WebRtcLeg>>,
    /// The RSeq of the last reliable provisional response we acknowledged (RFC 3262).
    rseq: Option<u32>,
    /// The CSeq of our last PRACK: the dialog's requests continue after it.
    prack_seq: u32,
    /// The SDP answer of a reliable provisional response (RFC 3262 §5): binding, so a 2xx
    /// without SDP uses it.
    early_answer: Option<Sdp>,
}

/// What a client transaction of a call is for.
#[derive(Clone, Debug)]
enum Pending {
    /// An in-dialog request relayed from the other side: relay its response back.
    Relay {
        side: Side,
        key: ServerKey,
        request: Box<Request>,
    },
    /// Our session refresh (RFC 4028) on `side`: an UPDATE, or a re-INVITE (`invite`).
    Refresh { side: Side, invite: bool },
    /// Nothing to do with the response (BYE, CANCEL).
    Ignore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    /// The side's slot in per-side arrays.
    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// A media session [`Core::open_session`] opened for a new call.
#[derive(Clone, Copy, Debug)]
struct Opened {
    session: SessionId,
    a_port: u16,
    b_port: u16,
}

/// What the INVITEs of a fork say.
struct Forking<'a> {
    /// Display name and number of the caller (our From).
    caller: (&'a str, &'a str),
    /// The callee's number (our To).
    callee: &'a str,
    /// The callee's extension, if it is one.
    callee_id: Option<Uuid>,
    /// The domain of our From (the tenant's).
    domain: &'a str,
    /// The domain of our To (the tenant's, or a trunk's host).
    to_domain: &'a str,
    /// Our offer, anchored on the callee-facing port.
    offer: &'a Sdp,
    max_forwards: u8,
    /// More headers (a trunk's custom headers, P-Asserted-Identity).
    headers: &'a [(String, String)],
}

/// A 2xx to an INVITE, retransmitted until its ACK (§13.3.1.4).
struct OkRetransmit {
    side: Side,
    cseq: u32,
    peer: Peer,
    bytes: Bytes,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

struct Call {
    /// The start of its record (repeated in the end, so a lost start can be rewritten).
    record: CallStart,
    tenant: Tenant,
    /// The caller's INVITE and its server transaction.
    a_key: ServerKey,
    a_invite: Request,
    a_peer: Peer,
    a_tag: String,
    a_dialog: Option<Dialog>,
    /// Our outgoing side.
    forks: Vec<Fork>,
    winner: Option<usize>,
    b_dialog: Option<Dialog>,
    a_port: u16,
    b_port: u16,
    answered_wall_ms: Option<u64>,
    ring_deadline: Option<Instant>,
    ok: Option<OkRetransmit>,
    /// An in-dialog INVITE/UPDATE is being relayed (a second one gets 491).
    relaying: bool,
    /// Whether the caller heard ringing already (one `Ringing` event per call).
    rang: bool,
    /// Whether the call is on hold.
    held: bool,
    /// Whether policy (tenant, caller or callee extension) records the call once answered.
    record_policy: bool,
    /// The recording and its state.
    recording: Option<(Uuid, RecordingState)>,
    /// The telephone-event payload type each leg's SDP negotiated (RFC 4733), if any.
    a_dtmf: Option<u8>,
    b_dtmf: Option<u8>,
    /// Whether each leg's SDP prefers a wideband codec.
    wideband: [bool; 2],
    /// The G.711 payload type each leg's last SDP prefers (music on hold is sent in it).
    g711: [u8; 2],
    /// The IVR flow answering the call, if a number routed it to one.
    app: Option<Box<app::App>>,
    /// For a call out through a trunk: the credentials for its challenge, and whether they
    /// were sent already.
    trunk_auth: Option<Box<(String, String, bool)>>,
    /// A sequential ring group's members still to ring.
    hunt: Option<Box<hunt::Hunt>>,
    /// A trunk's other proxies, for when the one tried fails.
    failover: Vec<std::net::SocketAddr>,
    /// A call out through a trunk while it rings: the other routes' trunks.
    trunk_dial: Option<Box<outbound::TrunkDial>>,
    /// A fork of the current dial got a provisional response: it reached the callee, so a
    /// failure is not handed to another route (which would ring them again).
    dial_rang: bool,
    /// It goes out through a trunk: the toll-fraud limits count it.
    out: bool,
    /// The caller is a browser: our WebRTC answer to its offer (sent instead of anchored
    /// SDP).
    a_webrtc: Option<String>,
    /// The SDP we last sent the caller (answered again on a refresh when a browser is in
    /// the call, and our session refresh by re-INVITE).
    a_sent: Option<String>,
    /// Each leg's session timer (RFC 4028), if it negotiated one.
    session_timers: [Option<timer::SessionTimer>; 2],
    /// A call for an extension that forwards, until it is forwarded.
    forward: Option<Box<forward::Forwards>>,
}

/// Every live call, with the indexes that find a call from a message.
#[derive(Default)]
pub(super) struct Calls {
    calls: HashMap<SessionId, Call>,
    by_invite: HashMap<ServerKey, SessionId>,
    by_fork: HashMap<ClientKey, SessionId>,
    by_dialog: HashMap<DialogId, (SessionId, Side)>,
    pending: HashMap<ClientKey, (SessionId, Pending)>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    next_session: SessionId,
    /// Live calls per tenant (for the per-tenant limit without scanning every call).
    per_tenant: HashMap<Uuid, usize>,
    /// Answered milliseconds of calls out per tenant, for the UTC day they are counted in.
    outbound_used: HashMap<Uuid, (u64, u64)>,
    /// INVITEs we cancelled, until their final response: a 2xx that crossed the CANCEL is
    /// acknowledged and hung up (RFC 3261 §9.1), whether or not its call is still there.
    cancelled: HashMap<ClientKey, Cancelled>,
}

/// An INVITE of ours that was cancelled.
#[derive(Clone, Debug)]
struct Cancelled {
    invite: Request,
    peer: Peer,
    /// Its CANCEL waits for a provisional response (RFC 3261 §9.1: a CANCEL must not be sent
    /// before one).
    owed: bool,
}

/// Cancelled INVITEs remembered at most (each leaves at its final response or timeout).
const MAX_CANCELLED: usize = 10_000;

impl Calls {
    /// Answered milliseconds out of `tenant` on the UTC day of `wall_ms`.
    pub(super) fn outbound_used_ms(&self, tenant: Uuid, wall_ms: u64) -> u64 {
        let today = wall_ms / outbound::DAY_MS;
        self.outbound_used
            .get(&tenant)
            .filter(|(day, _)| *day == today)
            .map_or(0, |(_, ms)| *ms)
    }

    /// Counts `ms` answered out of `tenant` on the UTC day of `wall_ms`.
    fn count_outbound(&mut self, tenant: Uuid, wall_ms: u64, ms: u64) {
        let today = wall_ms / outbound::DAY_MS;
        let entry = self.outbound_used.entry(tenant).or_insert((today, 0));
        if entry.0 != today {
            *entry = (today, 0);
        }
        entry.1 += ms;
    }

    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether `branch` is the branch of one of our own outgoing INVITEs.
    fn is_fork(&self, branch: &str) -> bool {
        self.by_fork.contains_key(&ClientKey {
            branch: branch.to_owned(),
            method: Method::Invite,
        })
    }

    pub(super) fn tenant_calls(&self, tenant: Uuid) -> usize {
        self.per_tenant.get(&tenant).copied().unwrap_or(0)
    }

    /// Adds a call, counting it for its tenant.
    fn insert(&mut self, session: SessionId, call: Call) {
        *self.per_tenant.entry(call.tenant.id).or_default() += 1;
        self.calls.insert(session, call);
    }

    /// Removes a call and its count.
    fn remove(&mut self, session: SessionId) -> Option<Call> {
        let call = self.calls.remove(&session)?;
        if let Some(count) = self.per_tenant.get_mut(&call.tenant.id) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(&call.tenant.id);
            }
        }
        Some(call)
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// A live call's session (tests).
    #[cfg(test)]
    pub(super) fn any_session(&self) -> Option<SessionId> {
        self.calls.keys().next().copied()
    }

    /// The callee-side dialog of a call (tests).
    #[cfg(test)]
    pub(super) fn b_dialog(&self, session: SessionId) -> Option<DialogId> {
        self.calls
            .get(&session)?
            .b_dialog
            .as_ref()
            .map(|d| d.id.clone())
    }
}

fn status_reason(status: u16) -> &'static str {
    match status {
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        404 => "Not Found",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Unknown",
    }
}

fn sdp_of(body: &[u8], headers: &Headers) -> Option<Result<Sdp, ()>> {
    if body.is_empty() {
        return None;
    }
    let is_sdp = headers
        .get(&HeaderName::ContentType)
        .is_none_or(|t| t.trim().eq_ignore_ascii_case("application/sdp"));
    Some(if is_sdp {
        Sdp::parse(body).map_err(|_| ())
    } else {
        Err(())
    })
}

/// The caller's SDP offer when it has audio we can anchor (or, with `hold`, puts the call on
/// hold). No offer (late offer), a body that isn't SDP, or no audio: none (we anchor audio
/// only).
fn audio_offer(request: &Request, hold: bool) -> Option<Sdp> {
    match sdp_of(&request.body, &request.headers) {
        Some(Ok(sdp))
            if media::audio_address(&sdp).is_some()
                || (hold && media::is_hold(&sdp))
                // A browser's address is in its ICE candidates, not in c= (0.0.0.0).
                || media::is_webrtc(&sdp) =>
        {
            Some(sdp)
        }
        _ => None,
    }
}

/// A browser's WebRTC offer, kept to answer once its call is set up: the offer as sent, and
/// what its leg must carry.
struct BrowserOffer {
    offer: String,
    formats: media::AudioFormats,
}

/// The caller's offer as the rest of the call sees it: a WebRTC offer becomes plain RTP with
/// one G.711 codec (the browser's leg passes payloads through unchanged), or PCMU and PCMA
/// for a browser that offers only Opus (transcoded), and is kept to be answered. `None`: a
/// WebRTC offer with neither.
fn caller_offer(offer: Sdp, request: &Request) -> Option<(Sdp, Option<BrowserOffer>)> {
    if !media::is_webrtc(&offer) {
        return Some((offer, None));
    }
    let (plain, formats) = media::plain_from_webrtc(&offer)?;
    let browser = BrowserOffer {
        offer: String::from_utf8_lossy(&request.body).into_owned(),
        formats,
    };
    Some((plain, Some(browser)))
}

/// The CANCEL of one of our INVITEs (§9.1): the same Request-URI, Call-ID, To, From, CSeq
/// number and top Via.
fn cancel_for(invite: &Request) -> Request {
    let mut headers = Headers::new();
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
    ] {
        if let Some(value) = invite.headers.get(&name) {
            headers.push(name, value);
        }
    }
    headers.push(HeaderName::MaxForwards, "70");
    // The INVITE's number: 2 after a trunk's challenge was answered.
    let seq = cseq_of(&invite.headers).map_or(1, |c| c.seq);
    headers.push(HeaderName::CSeq, format!("{seq} CANCEL"));
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        version: (2, 0),
        headers,
        body: Bytes::new(),
    }
}

fn cseq_of(headers: &Headers) -> Option<CSeq> {
    headers
        .get(&HeaderName::CSeq)
        .and_then(|c| CSeq::parse(c).ok())
}

impl Core {
    pub(super) fn random_token(&mut self) -> String {
        let value: u64 = self.rng.random();
        format!("{value:016x}")
    }

    /// Our Via for a new request over `transport`.
    pub(super) fn our_via(&mut self, peer: Peer) -> String {
        let branch = self.random_token();
        let sent_by = self.local_for(peer.transport);
        format!(
            "SIP/2.0/{} {sent_by};branch={}{branch};rport",
            peer.transport.as_str(),
            transaction::MAGIC_COOKIE
        )
    }

    /// Our Contact URI for a peer on `transport`.
    fn our_contact(&self, peer: Peer) -> String {
        let at = self.local_for(peer.transport);
        match peer.transport {
            crate::peer::Transport::Udp => format!("sip:switchboard@{at}"),
            other => format!(
                "sip:switchboard@{at};transport={}",
                other.as_str().to_ascii_lowercase()
            ),
        }
    }

    fn next_session(&mut self) -> SessionId {
        self.calls.next_session += 1;
        self.calls.next_session
    }

    /// Handles a new INVITE (no To tag) from `caller`: an authenticated extension dialling an
    /// extension, or a trunk delivering a call for one of the tenant's numbers.
    pub(super) fn start_call(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: ServerKey,
        request: Request,
        from: Peer,
        (tenant, caller): (Tenant, Caller),
    ) {
        let dialled = request
            .uri
            .as_sip()
            .and_then(|u| u.user_unescaped())
            .unwrap_or_default();
        let (from_extension, trunk_id, caller_records) = match &caller {
            Caller::Extension(e) => (Some(e.id), None, e.record_calls),
            Caller::Trunk { trunk, .. } => (None, Some(*trunk), false),
        };
        // A trunk call is for a number (DID) of the trunk's tenant, in any of its forms.
        let did = match caller {
            Caller::Trunk { .. } => crate::e164::normalize(&dialled).ok().filter(|e164| {
                self.directory
                    .number(e164)
                    .is_some_and(|n| n.tenant_id == tenant.id)
            }),
            Caller::Extension(_) => None,
        };
        let mut record = CallStart {
            // UUIDv7 from the call's wall time, like every stored id: records list in time order.
            id: uuid::Builder::from_unix_timestamp_millis(wall_ms, &self.rng.random()).into_uuid(),
            tenant_id: tenant.id,
            sip_call_id: request
                .headers
                .get(&HeaderName::CallId)
                .unwrap_or_default()
                .to_owned(),
            from_uri: request
                .headers
                .get(&HeaderName::From)
                .unwrap_or_default()
                .to_owned(),
            to_uri: request.uri.to_string(),
            from_extension,
            from_number: caller.number().to_owned(),
            to_extension: None,
            to_number: dialled.clone(),
            trunk_id,
            did: did.clone(),
            started_wall_ms: wall_ms,
        };
        let refused = Refused {
            key: &key,
            request: &request,
            caller: from,
        };
        if let Some(max_forwards) = request.headers.get(&HeaderName::MaxForwards)
            && max_forwards.trim().trim_start_matches('0').is_empty()
        {
            return self.refuse(now, refused, record, LOOP, |_| {});
        }
        if self.calls.len() >= self.config.max_calls
            || self.calls.tenant_calls(tenant.id) >= self.config.max_calls_per_tenant
        {
            SipStats::inc(&self.stats.overloaded);
            return self.refuse(now, refused, record, CALL_LIMIT, retry_later);
        }
        if !self.call_rate.take(now, self.config.max_calls_per_second)
            || !self.tenant_call_rate.take(
                &tenant.id,
                now,
                self.config.max_calls_per_second_per_tenant,
            )
        {
            SipStats::inc(&self.stats.rate_limited);
            return self.refuse(now, refused, record, CALL_RATE, |r| {
                r.headers.push(HeaderName::RetryAfter, "1");
            });
        }
        if let Some((interval, _)) = timer::session_expires(&request.headers)
            && interval < timer::MIN_SE
        {
            return self.refuse(now, refused, record, SESSION_TOO_SMALL, |r| {
                r.headers.push(HeaderName::MinSe, timer::MIN_SE.to_string());
            });
        }
        let callee = match (&caller, &did) {
            (Caller::Extension(_), _) => self
                .directory
                .extension_by_number(tenant.id, &dialled)
                .cloned(),
            (Caller::Trunk { .. }, Some(did)) => {
                match self.directory.number(did).map(|n| n.target) {
                    Some(NumberTarget::Extension(id)) => self.directory.extension(id).cloned(),
                    Some(NumberTarget::IvrFlow(flow)) => {
                        let call = (key.clone(), request.clone(), from);
                        return self.start_app(now, wall_ms, call, tenant, record, flow);
                    }
                    Some(NumberTarget::RingGroup(id)) => {
                        let Some(group) = self.directory.ring_group(id).cloned() else {
                            return self.refuse(now, refused, record, UNKNOWN_NUMBER, |_| {});
                        };
                        let call = (key.clone(), request.clone(), from);
                        let who = (caller.display().to_owned(), caller.number().to_owned());
                        return self.start_group(now, wall_ms, call, (tenant, who), record, group);
                    }
                    None => None,
                }
            }
            (Caller::Trunk { .. }, None) => None,
        };
        let Some(callee) = callee else {
            // No extension has it: a number outside, through a trunk. `*67` before it
            // withholds the caller's number (as on North American phone lines).
            let (number, anonymous) = match dialled.strip_prefix(ANONYMOUS_PREFIX) {
                Some(number) => (number, true),
                None => (dialled.as_str(), false),
            };
            if let Caller::Extension(extension) = &caller
                && let Ok(e164) = crate::e164::normalize(number)
            {
                let call = (key.clone(), request.clone(), from);
                let caller = extension.clone();
                let out = (e164, anonymous);
                return self.start_outbound(now, wall_ms, call, (tenant, caller), record, out);
            }
            return self.refuse(now, refused, record, UNKNOWN_NUMBER, |_| {});
        };
        record.to_extension = Some(callee.id);
        record.to_number = callee.number.clone();
        let bindings = self.contacts(callee.id);
        let forwarding = callee.forward.clone();
        if bindings.is_empty() && forwarding.always.is_none() && forwarding.no_answer.is_none() {
            return self.refuse(now, refused, record, NOT_REGISTERED, |_| {});
        }
        let Some(offer) = audio_offer(&request, true) else {
            return self.refuse_without_offer(now, refused, record);
        };
        let Some((offer, browser)) = caller_offer(offer, &request) else {
            return self.refuse_browser_without_g711(now, refused, record);
        };
        let Some(opened) = self.open_session(&record, &offer, &offer) else {
            return self.refuse(now, refused, record, NO_PORTS, retry_later);
        };
        let session = opened.session;
        let b_offer = media::anchor(&offer, self.advertised, opened.b_port);
        let max_forwards = request
            .headers
            .get(&HeaderName::MaxForwards)
            .and_then(|m| m.trim().parse::<u8>().ok())
            .map_or(70, |m| m.saturating_sub(1));
        let domain = tenant.domain.clone();
        let caller_id = (caller.display(), caller.number().to_owned());
        let record_policy = tenant.record_calls || caller_records || callee.record_calls;
        let mut call = self.new_call(opened, record, tenant, (key, request, from), &offer);
        call.record_policy = record_policy;
        if forwarding != Forwarding::default() {
            call.forward = Some(Box::new(forward::Forwards {
                from: callee.clone(),
                caller: (caller_id.0.to_owned(), caller_id.1.clone()),
                offer: b_offer.clone(),
            }));
        }
        self.calls.insert(session, call);
        SipStats::set(&self.stats.active_calls, self.calls.calls.len() as u64);
        if !self.answer_browser(now, wall_ms, session, browser) {
            return;
        }
        // Forwarded at once: always, or no phone to ring.
        let why = match (&forwarding.always, bindings.is_empty()) {
            (Some(_), _) => Some(forward::Why::Always),
            (None, true) => Some(forward::Why::Unavailable),
            (None, false) => None,
        };
        if let Some(why) = why {
            if !self.forward(now, wall_ms, session, why) {
                let cause = "forward_failed";
                self.fail_call(now, wall_ms, session, 480, Disposition::Failed, cause);
            }
            return;
        }
        let forks = self.fork_to(
            now,
            session,
            bindings,
            Forking {
                caller: (caller_id.0, &caller_id.1),
                callee: &callee.number,
                callee_id: Some(callee.id),
                domain: &domain,
                to_domain: &domain,
                offer: &b_offer,
                max_forwards,
                headers: &[],
            },
        );
        let ring_deadline = now + self.config.ring_timeout;
        self.calls.timers.push(Reverse((ring_deadline, session)));
        if let Some(call) = self.calls.calls.get_mut(&session) {
            call.forks = forks;
            call.ring_deadline = Some(ring_deadline);
        }
        if self.calls.calls[&session].forks.is_empty() {
            self.fail_call(
                now,
                wall_ms,
                session,
                480,
                Disposition::Failed,
                "no_usable_contact",
            );
        }
    }

    /// Where extension `id`'s phones are registered: each contact and the peer it came from.
    fn contacts(&self, id: Uuid) -> Vec<(String, Peer)> {
        self.registrar
            .bindings(id)
            .iter()
            .map(|b| (b.contact.clone(), b.peer))
            .collect()
    }

    /// Opens the media session of a new call: both ports, the worker's session (the caller's
    /// side from `offer`, telephone-event from `dtmf_from`), and the call's record. Returns
    /// the session and its ports; `None` when the port range is used up.
    fn open_session(&mut self, record: &CallStart, offer: &Sdp, dtmf_from: &Sdp) -> Option<Opened> {
        let a_port = self.ports.allocate()?;
        let Some(b_port) = self.ports.allocate() else {
            self.ports.release(a_port);
            return None;
        };
        let session = self.next_session();
        self.outputs.push_back(Output::Media(MediaCommand::Create {
            session,
            a_port,
            b_port,
            a_expected: media::audio_address(offer),
            b_expected: None,
            a_dtmf: media::telephone_event(dtmf_from),
            call: record.id,
        }));
        SipStats::inc(&self.stats.calls);
        self.outputs.push_back(Output::CallStarted(record.clone()));
        Some(Opened {
            session,
            a_port,
            b_port,
        })
    }

    /// A call for the session [`Self::open_session`] just opened, with nothing forked yet;
    /// its INVITE's server transaction finds it from now on.
    fn new_call(
        &mut self,
        opened: Opened,
        record: CallStart,
        tenant: Tenant,
        (key, request, from): (ServerKey, Request, Peer),
        offer: &Sdp,
    ) -> Call {
        let Opened {
            session,
            a_port,
            b_port,
        } = opened;
        self.calls.by_invite.insert(key.clone(), session);
        Call {
            record,
            tenant,
            a_key: key,
            a_invite: request,
            a_peer: from,
            a_tag: self.random_token(),
            a_dialog: None,
            forks: Vec::new(),
            winner: None,
            b_dialog: None,
            a_port,
            b_port,
            answered_wall_ms: None,
            ring_deadline: None,
            ok: None,
            relaying: false,
            rang: false,
            held: false,
            record_policy: false,
            recording: None,
            a_dtmf: media::telephone_event(offer),
            b_dtmf: None,
            wideband: [media::is_wideband(offer), false],
            g711: [media::g711_payload_type(offer), 0],
            app: None,
            trunk_auth: None,
            hunt: None,
            failover: Vec::new(),
            trunk_dial: None,
            dial_rang: false,
            out: false,
            a_webrtc: None,
            a_sent: None,
            session_timers: [None, None],
            forward: None,
        }
    }

    /// Counts minutes out that calls of `tenant` used earlier on the UTC day of `wall_ms` (the
    /// shell reads them from the call records at start, so a restart does not reset the
    /// day's cap).
    pub fn seed_outbound_usage(&mut self, tenant: Uuid, wall_ms: u64, ms: u64) {
        self.calls.count_outbound(tenant, wall_ms, ms);
    }

    /// Retransmits a 2xx to an INVITE of `side` until its ACK (§13.3.1.4; RFC 6026 leaves it
    /// to us).
    fn retransmit_ok(
        &mut self,
        now: Instant,
        session: SessionId,
        (side, cseq, peer): (Side, u32, Peer),
        bytes: Bytes,
    ) {
        let t1 = self.config.timers.t1;
        if let Some(call) = self.calls.calls.get_mut(&session) {
            call.ok = Some(OkRetransmit {
                side,
                cseq,
                peer,
                bytes,
                next: now + t1,
                interval: t1,
                give_up: now + t1 * 64,
            });
            self.calls.timers.push(Reverse((now + t1, session)));
        }
    }

    /// Sends an INVITE of our own (a new dialog) to each of `bindings`, registered as forks
    /// of `session`.
    fn fork_to(
        &mut self,
        now: Instant,
        session: SessionId,
        bindings: Vec<(String, Peer)>,
        forking: Forking<'_>,
    ) -> Vec<Fork> {
        let b_call_id = format!("{}@switchboard", self.random_token());
        let b_tag = self.random_token();
        let (display, number) = forking.caller;
        let display = display.replace(['"', '\\'], "");
        let mut forks = Vec::with_capacity(bindings.len());
        for (contact, peer) in bindings {
            let Ok(uri) = Uri::parse(&contact) else {
                continue;
            };
            // A browser (registered over WebSocket) gets a WebRTC offer from a leg of its
            // own; a phone gets the anchored offer.
            let (body, webrtc) = if matches!(peer.transport, Transport::Ws | Transport::Wss) {
                match self.offer_browser(now, forking.offer) {
                    Some((leg, offer)) => (Bytes::from(offer), Some(Box::new(leg))),
                    None => continue,
                }
            } else {
                (Bytes::from(forking.offer.to_string()), None)
            };
            let mut headers = Headers::new();
            headers.push(HeaderName::Via, self.our_via(peer));
            headers.push(HeaderName::MaxForwards, forking.max_forwards.to_string());
            headers.push(
                HeaderName::From,
                format!(
                    "\"{display}\" <sip:{number}@{}>;tag={b_tag}",
                    forking.domain
                ),
            );
            headers.push(
                HeaderName::To,
                format!("<sip:{}@{}>", forking.callee, forking.to_domain),
            );
            for (name, value) in forking.headers {
                headers.push(HeaderName::parse(name), value.clone());
            }
            headers.push(HeaderName::CallId, b_call_id.clone());
            headers.push(HeaderName::CSeq, "1 INVITE");
            headers.push(HeaderName::Contact, format!("<{}>", self.our_contact(peer)));
            headers.push(
                HeaderName::Allow,
                "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO",
            );
            // Reliable provisional responses (RFC 3262): we PRACK them. Session timers
            // (RFC 4028 §7.1): the callee is asked to refresh; we watch.
            headers.push(HeaderName::Supported, "100rel, timer");
            headers.push(
                HeaderName::SessionExpires,
                format!("{};refresher=uas", timer::SESSION_EXPIRES),
            );
            headers.push(HeaderName::MinSe, timer::MIN_SE.to_string());
            headers.push(HeaderName::UserAgent, self.config.server_name.clone());
            headers.push(HeaderName::ContentType, "application/sdp");
            let invite = Request {
                method: Method::Invite,
                uri,
                version: (2, 0),
                headers,
                body,
            };
            match self.transactions.send_request(
                now,
                invite.clone(),
                peer,
                peer.transport.is_reliable(),
            ) {
                Ok(fork_key) => {
                    self.calls.by_fork.insert(fork_key.clone(), session);
                    forks.push(Fork {
                        key: fork_key,
                        invite,
                        peer,
                        state: ForkState::Trying,
                        callee: forking.callee_id,
                        webrtc,
                        rseq: None,
                        prack_seq: 0,
                        early_answer: None,
                    });
                }
                Err(error) => tracing::debug!(%error, "could not fork INVITE"),
            }
        }
        forks
    }

    /// A WebRTC leg offering a browser what `offer` (the anchored offer for the callee's
    /// side) carries, on the same port. `None` (the browser is skipped) when the offer has
    /// no G.711 or str0m refused.
    fn offer_browser(&mut self, now: Instant, offer: &Sdp) -> Option<(media::WebRtcLeg, String)> {
        let cert = self.webrtc_cert.as_ref()?;
        let local = media::audio_address(offer)?;
        let formats = media::g711_formats(offer);
        match media::WebRtcLeg::offer(now, cert, &formats, local) {
            Ok(offered) => Some(offered),
            Err(error) => {
                tracing::debug!(%error, "not ringing a browser: nothing to offer it");
                None
            }
        }
    }

    /// Whether a response belongs to a call; if so, handles it.
    pub(super) fn call_response(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: &ClientKey,
        response: Response,
    ) -> bool {
        // A final response ends what a cancelled INVITE is remembered for.
        let crossed = if response.status >= 200 {
            self.calls.cancelled.remove(key)
        } else {
            if let Some(entry) = self.calls.cancelled.get_mut(key)
                && entry.owed
            {
                // The provisional response the CANCEL was waiting for.
                entry.owed = false;
                let (cancel, peer) = (cancel_for(&entry.invite), entry.peer);
                let _ =
                    self.transactions
                        .send_request(now, cancel, peer, peer.transport.is_reliable());
            }
            None
        };
        if let Some(&session) = self.calls.by_fork.get(key) {
            self.fork_response(now, wall_ms, session, key, response);
            return true;
        }
        if let Some(crossed) = crossed {
            if (200..300).contains(&response.status) {
                self.hang_up_crossed(now, &crossed.invite, &response, crossed.peer);
            }
            return true;
        }
        if self.calls.cancelled.contains_key(key) {
            return true;
        }
        if let Some((session, pending)) = self.calls.pending.get(key).cloned() {
            if response.status >= 200 {
                self.calls.pending.remove(key);
            }
            match pending {
                Pending::Relay {
                    side,
                    key: server_key,
                    request,
                } => self.relay_response(now, session, side, &server_key, &request, response),
                Pending::Refresh { side, invite } => {
                    self.refresh_answered(now, wall_ms, session, (side, invite), Some(&response));
                }
                Pending::Ignore => {}
            }
            return true;
        }
        false
    }

    /// A 2xx to an INVITE we had cancelled: ACK it, then BYE (§9.1, §13.2.2.4).
    fn hang_up_crossed(&mut self, now: Instant, invite: &Request, response: &Response, peer: Peer) {
        let Ok(mut dialog) = Dialog::from_uac(invite, response) else {
            return;
        };
        let contact = self.our_contact(peer);
        let via = self.our_via(peer);
        let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
        self.outputs.push_back(Output::Transmit {
            peer,
            bytes: Bytes::from(ack.to_bytes()),
        });
        let via = self.our_via(peer);
        let bye = dialog.request(Method::Bye, &via, &contact, Bytes::new(), None);
        let _ = self
            .transactions
            .send_request(now, bye, peer, peer.transport.is_reliable());
    }

    /// A client transaction of a call timed out (treated as 408).
    pub(super) fn call_timeout(&mut self, now: Instant, wall_ms: u64, key: &ClientKey) {
        // A cancelled INVITE that never got a final response is forgotten.
        self.calls.cancelled.remove(key);
        if let Some(&session) = self.calls.by_fork.get(key) {
            let mut timeout = transaction::response_to(
                &self.calls.calls[&session].a_invite,
                408,
                "Request Timeout",
            );
            timeout.headers.set(HeaderName::CSeq, "1 INVITE");
            self.fork_response(now, wall_ms, session, key, timeout);
        } else if let Some((session, pending)) = self.calls.pending.remove(key) {
            match pending {
                Pending::Relay {
                    side,
                    key: server_key,
                    request,
                } => {
                    let timeout = transaction::response_to(&request, 408, "Request Timeout");
                    self.relay_response(now, session, side, &server_key, &request, timeout);
                }
                Pending::Refresh { side, invite } => {
                    self.refresh_answered(now, wall_ms, session, (side, invite), None);
                }
                Pending::Ignore => {}
            }
        }
    }

    fn fork_response(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        key: &ClientKey,
        response: Response,
    ) {
        if response.status == 422 && self.retry_session_interval(now, session, key, &response) {
            return;
        }
        if (101..200).contains(&response.status) && !self.prack(now, session, key, &response) {
            return;
        }
        if matches!(response.status, 401 | 407 | 408 | 503) {
            let index = self
                .calls
                .calls
                .get(&session)
                .and_then(|c| c.forks.iter().position(|f| &f.key == key));
            let handled = index.is_some_and(|index| match response.status {
                401 | 407 => self.answer_trunk_challenge(now, session, index, &response),
                // A proxy that never got as far as a provisional response; past that, the
                // failure is the callee's, and a second proxy would ring them again.
                _ => {
                    let untried = self
                        .calls
                        .calls
                        .get(&session)
                        .is_some_and(|c| c.forks[index].state == ForkState::Trying);
                    untried && self.fail_over(now, session, index)
                }
            });
            if handled {
                return;
            }
        }
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let Some(index) = call.forks.iter().position(|f| &f.key == key) else {
            return;
        };
        let status = response.status;
        if status == 100 {
            return;
        }
        if status < 200 {
            if call.winner.is_some() || matches!(call.forks[index].state, ForkState::Done(_)) {
                return;
            }
            call.forks[index].state = ForkState::Early;
            call.dial_rang = true;
            let browser = call.forks[index].webrtc.is_some();
            if let Some(app) = &call.app {
                // A flow's dial before the flow answered: the caller hears the callee's early
                // media (183 with the flow's own answer, which is what the dial offered the
                // callee), else ringing. Once the flow answered, the caller hears the flow.
                if call.a_dialog.is_some() {
                    return;
                }
                let early = match sdp_of(&response.body, &response.headers) {
                    Some(Ok(sdp)) if !browser => Some((sdp, app.answer().clone())),
                    _ => None,
                };
                match early {
                    Some((sdp, answer)) => {
                        call.rang = true;
                        self.media_update(session, Side::B, &sdp, false);
                        self.respond_to_caller(now, session, 183, Some(&answer));
                    }
                    None if !call.rang => {
                        call.rang = true;
                        self.respond_to_caller(now, session, 180, None);
                    }
                    None => {}
                }
                return;
            }
            if !call.rang {
                call.rang = true;
                self.call_event(session, CallEventKind::Ringing);
            }
            // A browser's early answer stays unused (its leg takes the final one).
            let sdp = match sdp_of(&response.body, &response.headers) {
                Some(Ok(sdp)) if !browser => Some(sdp),
                _ => None,
            };
            if let Some(sdp) = &sdp {
                self.media_update(session, Side::B, sdp, false);
            }
            let relayed = if sdp.is_some() { 183 } else { 180 };
            self.respond_to_caller(now, session, relayed, sdp.as_ref());
            return;
        }
        if status < 300 {
            self.fork_answered(now, wall_ms, session, index, response);
            return;
        }

        call.forks[index].state = ForkState::Done(status);
        self.calls.by_fork.remove(key);
        self.fork_ended(now, wall_ms, session);
    }

    /// After a fork failed: if every fork is done and none answered, the call fails.
    fn fork_ended(&mut self, now: Instant, wall_ms: u64, session: SessionId) {
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        if call.winner.is_some()
            || call
                .forks
                .iter()
                .any(|f| matches!(f.state, ForkState::Trying | ForkState::Early))
        {
            return;
        }
        let statuses: Vec<u16> = call
            .forks
            .iter()
            .filter_map(|f| {
                if let ForkState::Done(s) = f.state {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        let (status, disposition, cause) =
            if let Some(&decline) = statuses.iter().find(|s| **s >= 600) {
                (decline, Disposition::Busy, "call_rejected")
            } else if statuses.contains(&486) {
                (486, Disposition::Busy, "user_busy")
            } else {
                (480, Disposition::Failed, "no_user_response")
            };
        if self.hunt_next(now, session) || self.next_route(now, session, &statuses) {
            return;
        }
        let why = match status {
            486 => Some(forward::Why::Busy),
            480 => Some(forward::Why::NoAnswer),
            _ => None,
        };
        if why.is_some_and(|why| self.forward(now, wall_ms, session, why)) {
            return;
        }
        if self.is_app(session) {
            return self.app_dial_failed(now, wall_ms, session, status);
        }
        self.fail_call(now, wall_ms, session, status, disposition, cause);
    }

    /// The SDP answer in a fork's 2xx, as the rest of the call sees it: a browser's
    /// WebRTC answer completes its leg, which goes to the media plane, and becomes plain RTP.
    fn fork_answer(
        &mut self,
        session: SessionId,
        index: usize,
        response: &Response,
    ) -> Option<Sdp> {
        let call = self.calls.calls.get_mut(&session)?;
        let answer = match sdp_of(&response.body, &response.headers) {
            Some(Ok(answer)) => answer,
            // The answer came in a reliable provisional response (RFC 3261 §13.3.1.4).
            _ => call.forks[index].early_answer.clone()?,
        };
        let Some(mut leg) = call.forks[index].webrtc.take() else {
            return Some(answer);
        };
        if let Err(error) = leg.accept_answer(&String::from_utf8_lossy(&response.body)) {
            tracing::debug!(%error, session, "a browser's answer is unusable");
            return None;
        }
        let (plain, _) = media::plain_from_webrtc(&answer)?;
        self.outputs.push_back(Output::Media(MediaCommand::WebRtc {
            session,
            a_side: false,
            leg,
        }));
        Some(plain)
    }

    fn fork_answered(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        index: usize,
        response: Response,
    ) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let fork_peer = call.forks[index].peer;
        let Ok(mut dialog) = Dialog::from_uac(&call.forks[index].invite, &response) else {
            return;
        };
        // Our PRACKs were requests of this dialog: what follows continues their CSeq.
        dialog.local_seq = dialog.local_seq.max(call.forks[index].prack_seq);
        if call.winner == Some(index) || call.winner.is_some() {
            // A retransmitted 2xx of the winner gets its ACK again; a 2xx from another fork is
            // acknowledged and hung up (§13.2.2.4).
            let late = call.winner != Some(index);
            let contact = self.our_contact(fork_peer);
            let via = self.our_via(fork_peer);
            let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
            self.outputs.push_back(Output::Transmit {
                peer: fork_peer,
                bytes: Bytes::from(ack.to_bytes()),
            });
            if late {
                let via = self.our_via(fork_peer);
                let bye = dialog.request(Method::Bye, &via, &contact, Bytes::new(), None);
                self.send_unwatched(now, session, bye, fork_peer);
            }
            return;
        }
        call.winner = Some(index);
        call.forks[index].state = ForkState::Answered;
        call.ring_deadline = None;
        call.hunt = None;
        if let Some(callee) = call.forks[index].callee {
            call.record.to_extension = Some(callee);
        }
        call.answered_wall_ms.get_or_insert(wall_ms);
        let Some(answer) = self.fork_answer(session, index, &response) else {
            // A 2xx without an answer to our offer: acknowledge, hang up, fail the call.
            let contact = self.our_contact(fork_peer);
            let via = self.our_via(fork_peer);
            let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
            self.outputs.push_back(Output::Transmit {
                peer: fork_peer,
                bytes: Bytes::from(ack.to_bytes()),
            });
            let via = self.our_via(fork_peer);
            let bye = dialog.request(Method::Bye, &via, &contact, Bytes::new(), None);
            let _ = self.transactions.send_request(
                now,
                bye,
                fork_peer,
                fork_peer.transport.is_reliable(),
            );
            if self.is_app(session) {
                // The flow keeps the caller: its dial failed.
                if let Some(call) = self.calls.calls.get_mut(&session) {
                    call.winner = None;
                }
                return self.app_dial_failed(now, wall_ms, session, 488);
            }
            return self.fail_call(
                now,
                wall_ms,
                session,
                488,
                Disposition::Failed,
                "no_sdp_answer",
            );
        };
        // ACK the winner, cancel the others.
        let contact = self.our_contact(fork_peer);
        let via = self.our_via(fork_peer);
        let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
        self.outputs.push_back(Output::Transmit {
            peer: fork_peer,
            bytes: Bytes::from(ack.to_bytes()),
        });
        self.calls
            .by_dialog
            .insert(dialog.id.clone(), (session, Side::B));
        self.cancel_forks(now, session, Some(index));
        self.call_event(session, CallEventKind::Answered);
        self.media_update(session, Side::B, &answer, media::is_hold(&answer));
        self.arm_callee_timer(now, session, &response);
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        call.b_dialog = Some(dialog);
        if call.app.is_some() {
            if call.a_dialog.is_none() {
                // The flow dialled before answering: the callee's answer answers the caller.
                self.app_answer(now, wall_ms, session);
            }
            return self.app_event(now, wall_ms, session, crate::ivr::Event::DialAnswered);
        }
        let a_dialog = Dialog::from_uas(&call.a_invite, &call.a_tag, DialogState::Confirmed);
        if let Ok(a_dialog) = a_dialog {
            self.calls
                .by_dialog
                .insert(a_dialog.id.clone(), (session, Side::A));
            if let Some(call) = self.calls.calls.get_mut(&session) {
                call.a_dialog = Some(a_dialog);
            }
        }
        self.respond_to_caller(now, session, 200, Some(&answer));
        if self
            .calls
            .calls
            .get(&session)
            .is_some_and(|c| c.record_policy)
        {
            let _ = self.start_recording(wall_ms, session);
        }
    }

    /// An INFO carrying a DTMF key (`application/dtmf-relay` as SIP.js, JsSIP and desk phones
    /// send it, or `application/dtmf`): reported as a call event; when the other leg
    /// negotiated RFC 4733 telephone-event, answered here and converted into RTP events for it
    /// (returns true); otherwise relayed as it is (returns false).
    fn dtmf_info(
        &mut self,
        now: Instant,
        session: SessionId,
        side: Side,
        key: &ServerKey,
        request: &Request,
    ) -> bool {
        let Some((digit, duration_ms)) = self.info_key(session, side, request) else {
            return false;
        };
        let Some(call) = self.calls.calls.get(&session) else {
            return false;
        };
        let other_has_rfc4733 = match side.other() {
            Side::A => call.a_dtmf.is_some(),
            Side::B => call.b_dtmf.is_some(),
        };
        if !other_has_rfc4733 {
            return false;
        }
        self.respond(now, key, request, 200, "OK", |_| {});
        self.outputs
            .push_back(Output::Media(MediaCommand::SendDtmf {
                session,
                a_side: side.other() == Side::A,
                digit,
                duration_ms,
            }));
        true
    }

    /// The key an INFO carries (`application/dtmf-relay` or `application/dtmf`), reported as
    /// a call event: the key and how long it was held, in milliseconds.
    fn info_key(
        &mut self,
        session: SessionId,
        side: Side,
        request: &Request,
    ) -> Option<(char, u32)> {
        let content_type = request
            .headers
            .get(&HeaderName::ContentType)
            .unwrap_or_default();
        let info = DtmfInfo::parse(content_type, &request.body).ok()?;
        let digit = info.digit.as_char();
        let duration_ms = u32::try_from(info.duration.as_millis()).unwrap_or(u32::MAX);
        self.call_event(
            session,
            CallEventKind::Dtmf {
                digit,
                from_caller: side == Side::A,
                duration_ms,
            },
        );
        Some((digit, duration_ms))
    }

    /// A leg's SDP changed: tells the media plane where it now wants media, whether the call
    /// is held, and its telephone-event payload type.
    fn media_update(&mut self, session: SessionId, side: Side, sdp: &Sdp, hold: bool) {
        let dtmf = media::telephone_event(sdp);
        if let Some(call) = self.calls.calls.get_mut(&session) {
            match side {
                Side::A => call.a_dtmf = dtmf,
                Side::B => call.b_dtmf = dtmf,
            }
            call.wideband[usize::from(side == Side::B)] = media::is_wideband(sdp);
            call.g711[side.index()] = media::g711_payload_type(sdp);
        }
        // The call stays held while the answer to a hold (recvonly) goes by.
        let held = self.calls.calls.get(&session).is_some_and(|c| c.held);
        self.outputs.push_back(Output::Media(MediaCommand::Update {
            session,
            a_side: side == Side::A,
            expected: media::audio_address(sdp),
            hold: hold || held,
            dtmf,
        }));
    }

    /// Starts recording an answered call.
    fn start_recording(
        &mut self,
        wall_ms: u64,
        session: SessionId,
    ) -> Result<Uuid, RecordingError> {
        let id = uuid::Builder::from_unix_timestamp_millis(wall_ms, &self.rng.random()).into_uuid();
        let call = self
            .calls
            .calls
            .get_mut(&session)
            .ok_or(RecordingError::NoSuchCall)?;
        if call.answered_wall_ms.is_none() {
            return Err(RecordingError::NotAnswered);
        }
        if call.recording.is_some() {
            return Err(RecordingError::AlreadyRecorded);
        }
        call.recording = Some((id, RecordingState::Recording));
        let action = media::RecordAction::Start {
            recording: id,
            tenant: call.tenant.id,
            call: call.record.id,
            wall_ms,
            wideband: call.wideband.contains(&true),
            voicemail: None,
        };
        self.outputs
            .push_back(Output::Media(MediaCommand::Record { session, action }));
        Ok(id)
    }

    /// Starts, pauses, resumes or stops the recording of the live call whose record id is
    /// `call`. Returns the recording's id and its new state.
    pub fn control_recording(
        &mut self,
        wall_ms: u64,
        call: Uuid,
        request: RecordingRequest,
    ) -> Result<(Uuid, RecordingState), RecordingError> {
        let session = self
            .calls
            .calls
            .iter()
            .find_map(|(session, c)| (c.record.id == call).then_some(*session))
            .ok_or(RecordingError::NoSuchCall)?;
        if request == RecordingRequest::Start {
            let id = self.start_recording(wall_ms, session)?;
            return Ok((id, RecordingState::Recording));
        }
        let live = self
            .calls
            .calls
            .get_mut(&session)
            .ok_or(RecordingError::NoSuchCall)?;
        let Some((id, state)) = live.recording.as_mut() else {
            return Err(RecordingError::Conflict("not started"));
        };
        let (action, next) = match (request, *state) {
            (RecordingRequest::Pause, RecordingState::Recording) => {
                (media::RecordAction::Pause, RecordingState::Paused)
            }
            (RecordingRequest::Resume, RecordingState::Paused) => {
                (media::RecordAction::Resume, RecordingState::Recording)
            }
            (RecordingRequest::Stop, RecordingState::Recording | RecordingState::Paused) => {
                (media::RecordAction::Stop, RecordingState::Stopped)
            }
            (_, current) => return Err(RecordingError::Conflict(current.as_str())),
        };
        *state = next;
        let id = *id;
        self.outputs
            .push_back(Output::Media(MediaCommand::Record { session, action }));
        Ok((id, next))
    }

    /// Sends a response to the caller's INVITE, anchoring `sdp` (the callee's) on the caller's
    /// port. A 2xx is retransmitted until the ACK.
    fn respond_to_caller(
        &mut self,
        now: Instant,
        session: SessionId,
        status: u16,
        sdp: Option<&Sdp>,
    ) {
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let mut response = transaction::response_to(&call.a_invite, status, status_reason(status));
        let to = response
            .headers
            .get(&HeaderName::To)
            .unwrap_or_default()
            .to_owned();
        response
            .headers
            .set(HeaderName::To, format!("{to};tag={}", call.a_tag));
        response.headers.push(
            HeaderName::Contact,
            format!("<{}>", self.our_contact(call.a_peer)),
        );
        // A response that makes the dialog carries the request's Record-Route back
        // (RFC 3261 §12.1.1): proxies on the way (a carrier's) stay in its path.
        if (101..300).contains(&status) {
            for route in call.a_invite.headers.get_all(&HeaderName::RecordRoute) {
                response.headers.push(HeaderName::RecordRoute, route);
            }
        }
        response
            .headers
            .push(HeaderName::Server, self.config.server_name.clone());
        if let Some(sdp) = sdp {
            // A browser gets the answer of its WebRTC leg, a phone the anchored SDP.
            let body = match &call.a_webrtc {
                Some(answer) => answer.clone(),
                None => media::anchor(sdp, self.advertised, call.a_port).to_string(),
            };
            response
                .headers
                .push(HeaderName::ContentType, "application/sdp");
            response.body = Bytes::from(body);
        }
        let (key, peer) = (call.a_key.clone(), call.a_peer);
        let cseq = cseq_of(&call.a_invite.headers).map_or(0, |c| c.seq);
        if sdp.is_some()
            && let Some(call) = self.calls.calls.get_mut(&session)
        {
            call.a_sent = std::str::from_utf8(&response.body).ok().map(str::to_owned);
        }
        if (200..300).contains(&status) {
            self.arm_caller_timer(now, session, &mut response);
            let bytes = Bytes::from(response.to_bytes());
            self.retransmit_ok(now, session, (Side::A, cseq, peer), bytes);
        }
        if let Err(error) = self.transactions.send_response(now, &key, response) {
            tracing::debug!(%error, "caller's INVITE transaction is gone");
        }
    }

    /// CANCELs every fork still trying or ringing, except `except`.
    fn cancel_forks(&mut self, now: Instant, session: SessionId, except: Option<usize>) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let mut cancels = Vec::new();
        for (index, fork) in call.forks.iter_mut().enumerate() {
            if Some(index) == except || !matches!(fork.state, ForkState::Trying | ForkState::Early)
            {
                continue;
            }
            // §9.1: no CANCEL before a provisional response; it waits for one.
            let owed = fork.state == ForkState::Trying;
            fork.state = ForkState::Done(487);
            if self.calls.cancelled.len() < MAX_CANCELLED {
                let entry = Cancelled {
                    invite: fork.invite.clone(),
                    peer: fork.peer,
                    owed,
                };
                self.calls.cancelled.insert(fork.key.clone(), entry);
            } else if owed {
                // Nothing left to remember it by: cancel at once rather than never.
                cancels.push((cancel_for(&fork.invite), fork.peer));
                continue;
            }
            if !owed {
                cancels.push((cancel_for(&fork.invite), fork.peer));
            }
        }
        for (cancel, peer) in cancels {
            self.send_unwatched(now, session, cancel, peer);
        }
    }

    /// Sends a request of `session` whose responses need no action (CANCEL, BYE): they are
    /// only absorbed so that they end their transaction.
    fn send_unwatched(&mut self, now: Instant, session: SessionId, request: Request, peer: Peer) {
        if let Ok(key) =
            self.transactions
                .send_request(now, request, peer, peer.transport.is_reliable())
        {
            self.calls.pending.insert(key, (session, Pending::Ignore));
        }
    }

    /// Whether `request` is an INVITE we sent ourselves (one of its Vias carries the branch of
    /// one of our live forks).
    pub(super) fn is_own_invite(&self, request: &Request) -> bool {
        request
            .headers
            .get_all(&HeaderName::Via)
            .filter_map(|value| Via::parse(value).ok())
            .filter_map(|via| via.branch())
            .any(|branch| self.calls.is_fork(branch))
    }

    /// Tells event subscribers that `kind` happened to `session`.
    fn call_event(&mut self, session: SessionId, kind: CallEventKind) {
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let record = &call.record;
        self.outputs.push_back(Output::CallEvent(CallEvent {
            id: record.id,
            tenant_id: record.tenant_id,
            from_extension: record.from_extension,
            to_extension: record.to_extension,
            kind,
        }));
    }

    /// Refuses a browser's call whose offer has neither G.711 nor Opus (488).
    fn refuse_browser_without_g711(
        &mut self,
        now: Instant,
        refused: Refused<'_>,
        record: CallStart,
    ) {
        self.refuse(now, refused, record, NO_OFFER, |r| {
            r.headers.push(
                HeaderName::Warning,
                "399 switchboard \"a WebRTC offer with PCMU, PCMA or Opus audio is required\"",
            );
        });
    }

    /// Answers a browser caller's WebRTC offer (if the caller is one) on the call's
    /// caller-side port: the answer goes with our first response that carries SDP, the leg
    /// to the media plane now (it answers the browser's ICE checks from the start). If str0m
    /// refuses the offer, the call fails with 488 and this returns false.
    fn answer_browser(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        browser: Option<BrowserOffer>,
    ) -> bool {
        let Some(browser) = browser else {
            return true;
        };
        let answered = match (&self.webrtc_cert, self.calls.calls.get(&session)) {
            (Some(cert), Some(call)) => {
                let local = std::net::SocketAddr::new(self.advertised, call.a_port);
                media::WebRtcLeg::answer(now, cert, &browser.offer, &browser.formats, local)
                    .map_err(|error| error.to_string())
            }
            _ => Err("WebRTC is not set up".to_owned()),
        };
        match answered {
            Ok((leg, answer)) => {
                if let Some(call) = self.calls.calls.get_mut(&session) {
                    call.a_webrtc = Some(answer);
                }
                self.outputs.push_back(Output::Media(MediaCommand::WebRtc {
                    session,
                    a_side: true,
                    leg: Box::new(leg),
                }));
                true
            }
            Err(error) => {
                tracing::debug!(%error, session, "refusing a browser's WebRTC offer");
                let cause = "incompatible_destination";
                self.fail_call(now, wall_ms, session, 488, Disposition::Failed, cause);
                false
            }
        }
    }

    /// Refuses a new call that has no SDP offer with audio (488).
    fn refuse_without_offer(&mut self, now: Instant, refused: Refused<'_>, record: CallStart) {
        self.refuse(now, refused, record, NO_OFFER, |r| {
            r.headers.push(
                HeaderName::Warning,
                "399 switchboard \"an SDP offer with audio is required\"",
            );
        });
    }

    /// Refuses a new call: the final response, and its complete record (a refused call gets a
    /// CDR that says why, like any other).
    fn refuse(
        &mut self,
        now: Instant,
        refused: Refused<'_>,
        start: CallStart,
        refusal: Refusal,
        extra: impl FnOnce(&mut Response),
    ) {
        let Refusal {
            status,
            reason,
            disposition,
            cause,
        } = refusal;
        self.respond(now, refused.key, refused.request, status, reason, extra);
        let ended_wall_ms = start.started_wall_ms;
        self.outputs.push_back(Output::CallEnded(CallEnd {
            start,
            answered_wall_ms: None,
            ended_wall_ms,
            disposition,
            cause,
            side: HangupSide::System,
            caller: refused.caller,
            callee: None,
            recording: None,
            ivr: None,
        }));
    }

    /// Ends a call that was never answered: final response to the caller, forks cancelled.
    fn fail_call(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        status: u16,
        disposition: Disposition,
        cause: &'static str,
    ) {
        self.cancel_forks(now, session, None);
        if let Some(call) = self.calls.calls.get(&session) {
            let (key, request, tag) = (
                call.a_key.clone(),
                call.a_invite.clone(),
                call.a_tag.clone(),
            );
            let mut response = transaction::response_to(&request, status, status_reason(status));
            let to = response
                .headers
                .get(&HeaderName::To)
                .unwrap_or_default()
                .to_owned();
            response
                .headers
                .set(HeaderName::To, format!("{to};tag={tag}"));
            response
                .headers
                .push(HeaderName::Server, self.config.server_name.clone());
            let _ = self.transactions.send_response(now, &key, response);
        }
        let side = if disposition == Disposition::Cancelled {
            HangupSide::Caller
        } else if cause == "no_answer" {
            HangupSide::System
        } else {
            HangupSide::Callee
        };
        self.end_call(wall_ms, session, disposition, cause, side);
    }

    /// Removes a call, releases its media and writes its end.
    fn end_call(
        &mut self,
        wall_ms: u64,
        session: SessionId,
        disposition: Disposition,
        cause: &'static str,
        side: HangupSide,
    ) {
        let Some(call) = self.calls.remove(session) else {
            return;
        };
        self.calls.by_invite.remove(&call.a_key);
        for fork in &call.forks {
            self.calls.by_fork.remove(&fork.key);
        }
        for dialog in [&call.a_dialog, &call.b_dialog].into_iter().flatten() {
            self.calls.by_dialog.remove(&dialog.id);
        }
        self.calls.pending.retain(|_, (s, _)| *s != session);
        self.ports.release(call.a_port);
        self.ports.release(call.b_port);
        self.outputs
            .push_back(Output::Media(MediaCommand::Destroy { session }));
        if let Some(answered) = call.answered_wall_ms {
            SipStats::inc(&self.stats.calls_answered);
            if call.out {
                let ms = wall_ms.saturating_sub(answered);
                self.calls.count_outbound(call.tenant.id, wall_ms, ms);
            }
        }
        SipStats::set(&self.stats.active_calls, self.calls.calls.len() as u64);
        self.outputs.push_back(Output::CallEnded(CallEnd {
            start: call.record,
            answered_wall_ms: call.answered_wall_ms,
            ended_wall_ms: wall_ms,
            disposition,
            cause,
            side,
            caller: call.a_peer,
            callee: call.winner.map(|w| call.forks[w].peer),
            recording: call.recording.map(|(id, _)| id),
            ivr: call.app.as_ref().map(|app| Box::new(app.summary())),
        }));
    }

    /// A CANCEL from the caller (§9.2): 200 for the CANCEL, 487 for the INVITE.
    pub(super) fn cancel_call(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: &ServerKey,
        request: &Request,
    ) -> bool {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..key.clone()
        };
        let Some(&session) = self.calls.by_invite.get(&invite_key) else {
            return false;
        };
        self.respond(now, key, request, 200, "OK", |_| {});
        // A call a flow answered has no winner but a confirmed dialog with the caller.
        let answered = self
            .calls
            .calls
            .get(&session)
            .is_some_and(|c| c.winner.is_some() || c.a_dialog.is_some());
        if !answered {
            self.fail_call(
                now,
                wall_ms,
                session,
                487,
                Disposition::Cancelled,
                "originator_cancel",
            );
        }
        true
    }

    /// A request inside a call's dialog (BYE, ACK, re-INVITE, UPDATE, INFO, ...). Returns
    /// false if it belongs to no call.
    pub(super) fn dialog_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        key: ServerKey,
        request: Request,
    ) -> bool {
        let Some(id) = DialogId::of_incoming(&request) else {
            return false;
        };
        let Some(&(session, side)) = self.calls.by_dialog.get(&id) else {
            return false;
        };
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        let dialog = match side {
            Side::A => call.a_dialog.as_mut(),
            Side::B => call.b_dialog.as_mut(),
        };
        let Some(dialog) = dialog else { return false };
        if request.method == Method::Ack {
            let seq = cseq_of(&request.headers).map_or(0, |c| c.seq);
            if call
                .ok
                .as_ref()
                .is_some_and(|ok| ok.side == side && ok.cseq == seq)
            {
                call.ok = None;
            }
            return true;
        }
        if dialog.handle_request(&request).is_err() {
            self.respond(now, &key, &request, 500, "Server Internal Error", |r| {
                r.headers.push(HeaderName::RetryAfter, "1");
            });
            return true;
        }
        match request.method {
            Method::Bye => {
                self.respond(now, &key, &request, 200, "OK", |_| {});
                if self.is_app(session) {
                    if side == Side::B {
                        self.app_bridge_ended(now, wall_ms, session);
                        return true;
                    }
                    self.app_caller_gone(now, session);
                }
                self.hang_up_other(now, session, side);
                let hangup = if side == Side::A {
                    HangupSide::Caller
                } else {
                    HangupSide::Callee
                };
                self.end_call(
                    wall_ms,
                    session,
                    Disposition::Answered,
                    "normal_clearing",
                    hangup,
                );
            }
            Method::Invite | Method::Update | Method::Info
                if call.app.is_some() && call.b_dialog.is_none() =>
            {
                self.app_request(now, wall_ms, session, &key, &request);
            }
            Method::Invite | Method::Update | Method::Info => {
                if call.relaying && request.method != Method::Info {
                    return {
                        self.respond(now, &key, &request, 491, "Request Pending", |_| {});
                        true
                    };
                }
                if request.method == Method::Info
                    && self.dtmf_info(now, session, side, &key, &request)
                {
                    return true;
                }
                if request.method != Method::Info
                    && let Some(ours) = self.browser_refresh(session, side)
                {
                    self.answer_refresh(now, session, side, &key, &request, ours);
                    return true;
                }
                if request.method == Method::Update && request.body.is_empty() {
                    // A session refresh without an offer (RFC 4028 §10): ours to answer; the
                    // other leg has a session of its own.
                    self.session_refreshed(now, session, side);
                    let mut ok = transaction::response_to(&request, 200, "OK");
                    self.timer_headers(
                        session,
                        side,
                        timer::supports_timer(&request.headers),
                        &mut ok,
                    );
                    let _ = self.transactions.send_response(now, &key, ok);
                    return true;
                }
                self.relay_request(now, session, side, key, request);
            }
            _ => self.respond(now, &key, &request, 501, "Not Implemented", |r| {
                r.headers.push(
                    HeaderName::Allow,
                    "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO",
                );
            }),
        }
        true
    }

    /// Sends BYE on the other side of `side`.
    fn hang_up_other(&mut self, now: Instant, session: SessionId, side: Side) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let (dialog, peer) = match side.other() {
            Side::A => (call.a_dialog.as_mut(), call.a_peer),
            Side::B => (
                call.b_dialog.as_mut(),
                call.winner.map_or(call.a_peer, |w| call.forks[w].peer),
            ),
        };
        let Some(dialog) = dialog else { return };
        let mut dialog = dialog.clone();
        let via = self.our_via(peer);
        let contact = self.our_contact(peer);
        let bye = dialog.request(Method::Bye, &via, &contact, Bytes::new(), None);
        if let Some(call) = self.calls.calls.get_mut(&session) {
            match side.other() {
                Side::A => call.a_dialog = Some(dialog),
                Side::B => call.b_dialog = Some(dialog),
            }
        }
        self.send_unwatched(now, session, bye, peer);
    }

    /// Answers an in-dialog INVITE or UPDATE (a refresh, hold, resume) from `side` ourselves
    /// with `ours`, the SDP that side already has from us, its direction the reverse of the
    /// offer's (a hold gets recvonly or inactive back); the media plane follows the offer.
    /// A 2xx to an INVITE is retransmitted until the ACK.
    fn answer_refresh(
        &mut self,
        now: Instant,
        session: SessionId,
        side: Side,
        key: &ServerKey,
        request: &Request,
        mut ours: Sdp,
    ) {
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        let peer = match side {
            Side::A => call.a_peer,
            Side::B => call.winner.map_or(call.a_peer, |w| call.forks[w].peer),
        };
        if let Some(Ok(offer)) = sdp_of(&request.body, &request.headers) {
            if let Some(index) = offer.media.iter().position(|m| m.kind == "audio") {
                ours.set_direction(index, offer.direction(index).reversed());
            }
            ours.bump_version();
            self.offer_changed(session, side, &offer);
        }
        let mut response = transaction::response_to(request, 200, "OK");
        response
            .headers
            .push(HeaderName::Contact, format!("<{}>", self.our_contact(peer)));
        response
            .headers
            .push(HeaderName::Server, self.config.server_name.clone());
        if request.method == Method::Invite || !request.body.is_empty() {
            response
                .headers
                .push(HeaderName::ContentType, "application/sdp");
            response.body = Bytes::from(ours.to_string());
        }
        self.session_refreshed(now, session, side);
        self.timer_headers(
            session,
            side,
            timer::supports_timer(&request.headers),
            &mut response,
        );
        let bytes = Bytes::from(response.to_bytes());
        if self.transactions.send_response(now, key, response).is_ok()
            && request.method == Method::Invite
        {
            // Our 2xx is ours to retransmit until the ACK.
            let cseq = cseq_of(&request.headers).map_or(0, |c| c.seq);
            self.retransmit_ok(now, session, (side, cseq, peer), bytes);
        }
    }

    /// `side` sent a new offer: the call is held or resumed (told once per change), and the
    /// media plane follows it. Returns whether it holds.
    fn offer_changed(&mut self, session: SessionId, side: Side, offer: &Sdp) -> bool {
        let hold = media::is_hold(offer);
        if let Some(call) = self.calls.calls.get_mut(&session)
            && call.held != hold
        {
            call.held = hold;
            let kind = if hold {
                CallEventKind::Held
            } else {
                CallEventKind::Resumed
            };
            // The held leg's own codec.
            let payload_type = call.g711[side.other().index()];
            self.call_event(session, kind);
            // The held side hears music whenever the side that holds sends nothing: a
            // carrier's RTP timeout never fires on a held call.
            self.outputs
                .push_back(Output::Media(MediaCommand::HoldMusic {
                    session,
                    to_a_side: hold.then_some(side.other() == Side::A),
                    payload_type,
                }));
        }
        self.media_update(session, side, offer, hold);
        hold
    }

    /// The SDP `side` has from us, when a browser is in the call: its session is answered
    /// by us rather than renegotiated end to end (a browser's WebRTC leg lives in the media
    /// plane). `None` for calls between phones, whose offers are relayed.
    fn browser_refresh(&self, session: SessionId, side: Side) -> Option<Sdp> {
        let call = self.calls.calls.get(&session)?;
        let winner = call.winner.and_then(|w| call.forks.get(w))?;
        let b_browser = matches!(winner.peer.transport, Transport::Ws | Transport::Wss);
        if call.a_webrtc.is_none() && !b_browser {
            return None;
        }
        let (text, browser) = match side {
            Side::A => (call.a_sent.as_deref()?, call.a_webrtc.is_some()),
            Side::B => (std::str::from_utf8(&winner.invite.body).ok()?, b_browser),
        };
        // Our offer to a browser said actpass; it answered active, so we are passive now.
        let text = if browser {
            text.replace("a=setup:actpass", "a=setup:passive")
        } else {
            text.to_owned()
        };
        Sdp::parse(text.as_bytes()).ok()
    }

    /// Relays an in-dialog request to the other side, SDP re-anchored.
    fn relay_request(
        &mut self,
        now: Instant,
        session: SessionId,
        side: Side,
        key: ServerKey,
        request: Request,
    ) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let (port, peer) = match side.other() {
            Side::A => (call.a_port, call.a_peer),
            Side::B => (
                call.b_port,
                call.winner.map_or(call.a_peer, |w| call.forks[w].peer),
            ),
        };
        let (body, content_type, hold) = match sdp_of(&request.body, &request.headers) {
            Some(Ok(sdp)) => {
                let hold = self.offer_changed(session, side, &sdp);
                (
                    Bytes::from(media::anchor(&sdp, self.advertised, port).to_string()),
                    Some("application/sdp".to_owned()),
                    hold,
                )
            }
            Some(Err(())) => (
                request.body.clone(),
                request
                    .headers
                    .get(&HeaderName::ContentType)
                    .map(str::to_owned),
                false,
            ),
            None => (Bytes::new(), None, false),
        };
        let _ = hold;
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        if matches!(request.method, Method::Invite | Method::Update) {
            call.relaying = true;
        }
        if side.other() == Side::A && content_type.as_deref() == Some("application/sdp") {
            // What the caller has from us now (our refresh re-INVITE sends it again).
            call.a_sent = std::str::from_utf8(&body).ok().map(str::to_owned);
        }
        let dialog = match side.other() {
            Side::A => call.a_dialog.as_mut(),
            Side::B => call.b_dialog.as_mut(),
        };
        let Some(dialog) = dialog else { return };
        let mut dialog = dialog.clone();
        let via = self.our_via(peer);
        let contact = self.our_contact(peer);
        let mut relayed = dialog.request(
            request.method.clone(),
            &via,
            &contact,
            body,
            content_type.as_deref(),
        );
        // A re-INVITE or UPDATE is a refresh of the other leg's session too: it says so, or
        // the other side would turn its timer off (RFC 4028 §9).
        if matches!(request.method, Method::Invite | Method::Update)
            && let Some(timer) = self.session_timer(session, side.other())
        {
            relayed.headers.push(
                HeaderName::SessionExpires,
                timer.header(side.other() == Side::A),
            );
            relayed.headers.push(HeaderName::Supported, "timer");
        }
        if let Some(call) = self.calls.calls.get_mut(&session) {
            match side.other() {
                Side::A => call.a_dialog = Some(dialog),
                Side::B => call.b_dialog = Some(dialog),
            }
        }
        match self
            .transactions
            .send_request(now, relayed, peer, peer.transport.is_reliable())
        {
            Ok(client) => {
                self.calls.pending.insert(
                    client,
                    (
                        session,
                        Pending::Relay {
                            side,
                            key,
                            request: Box::new(request),
                        },
                    ),
                );
            }
            Err(_) => self.respond(now, &key, &request, 500, "Server Internal Error", |_| {}),
        }
    }

    /// Relays the other side's response to a relayed request back to `side`.
    fn relay_response(
        &mut self,
        now: Instant,
        session: SessionId,
        side: Side,
        key: &ServerKey,
        request: &Request,
        response: Response,
    ) {
        let status = response.status;
        if status < 200 && status != 183 && status != 180 {
            return;
        }
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        if status >= 200 && matches!(request.method, Method::Invite | Method::Update) {
            call.relaying = false;
        }
        let (port, other_peer) = match side {
            Side::A => (
                call.a_port,
                call.winner.map_or(call.a_peer, |w| call.forks[w].peer),
            ),
            Side::B => (call.b_port, call.a_peer),
        };
        // A 2xx to a relayed INVITE: acknowledge it on the other side now.
        if request.method == Method::Invite && (200..300).contains(&status) {
            let dialog = match side.other() {
                Side::A => call.a_dialog.as_mut(),
                Side::B => call.b_dialog.as_mut(),
            };
            if let Some(dialog) = dialog {
                dialog.handle_response(&Method::Invite, &response);
                let mut dialog = dialog.clone();
                let via = self.our_via(other_peer);
                let contact = self.our_contact(other_peer);
                let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
                self.outputs.push_back(Output::Transmit {
                    peer: other_peer,
                    bytes: Bytes::from(ack.to_bytes()),
                });
            }
        }
        let mut relayed = transaction::response_to(request, status, &response.reason);
        let our_peer = match side {
            Side::A => self
                .calls
                .calls
                .get(&session)
                .map_or(other_peer, |c| c.a_peer),
            Side::B => other_peer,
        };
        relayed.headers.push(
            HeaderName::Contact,
            format!("<{}>", self.our_contact(our_peer)),
        );
        if (200..300).contains(&status) && matches!(request.method, Method::Invite | Method::Update)
        {
            // A 2xx to a re-INVITE or UPDATE refreshes both legs' sessions (RFC 4028 §10);
            // one without Session-Expires turns the answering leg's timer off.
            if response.headers.get(&HeaderName::SessionExpires).is_some() {
                self.session_refreshed(now, session, side.other());
            } else if let Some(call) = self.calls.calls.get_mut(&session) {
                call.session_timers[side.other().index()] = None;
            }
            self.session_refreshed(now, session, side);
            self.timer_headers(
                session,
                side,
                timer::supports_timer(&request.headers),
                &mut relayed,
            );
        }
        if let Some(Ok(sdp)) = sdp_of(&response.body, &response.headers) {
            self.media_update(session, side.other(), &sdp, media::is_hold(&sdp));
            relayed
                .headers
                .push(HeaderName::ContentType, "application/sdp");
            relayed.body = Bytes::from(media::anchor(&sdp, self.advertised, port).to_string());
            if side == Side::A
                && let Some(call) = self.calls.calls.get_mut(&session)
            {
                call.a_sent = std::str::from_utf8(&relayed.body).ok().map(str::to_owned);
            }
        }
        if request.method == Method::Invite && (200..300).contains(&status) {
            let cseq = cseq_of(&request.headers).map_or(0, |c| c.seq);
            let bytes = Bytes::from(relayed.to_bytes());
            self.retransmit_ok(now, session, (side, cseq, our_peer), bytes);
        }
        let _ = self.transactions.send_response(now, key, relayed);
    }

    /// Fires due call timers: ring timeouts, 2xx retransmissions and the ACK wait.
    pub(super) fn call_timers(&mut self, now: Instant, wall_ms: u64) {
        while let Some(Reverse((at, session))) = self.calls.timers.peek().copied() {
            if at > now {
                break;
            }
            self.calls.timers.pop();
            if self.is_app(session) {
                self.app_timer(now, wall_ms, session);
            }
            let Some(call) = self.calls.calls.get_mut(&session) else {
                continue;
            };
            if call.ring_deadline.is_some_and(|deadline| deadline <= now) && call.winner.is_none() {
                call.ring_deadline = None;
                if self.ring_timed_out(now, wall_ms, session) {
                    continue;
                }
                self.fail_call(
                    now,
                    wall_ms,
                    session,
                    480,
                    Disposition::NoAnswer,
                    "no_answer",
                );
                continue;
            }
            if self.session_timers_due(now, wall_ms, session) {
                continue;
            }
            let Some(call) = self.calls.calls.get_mut(&session) else {
                continue;
            };
            let t2 = self.config.timers.t2;
            let Some(ok) = call.ok.as_mut() else { continue };
            if ok.give_up <= now {
                // §13.3.1.4: no ACK after 64·T1: confirm the dialog, then end it.
                let side = ok.side;
                call.ok = None;
                self.hang_up_other(now, session, side);
                self.hang_up_other(now, session, side.other());
                self.end_call(
                    wall_ms,
                    session,
                    Disposition::Failed,
                    "ack_timeout",
                    HangupSide::System,
                );
                continue;
            }
            if ok.next <= now {
                self.outputs.push_back(Output::Transmit {
                    peer: ok.peer,
                    bytes: ok.bytes.clone(),
                });
                ok.interval = (ok.interval * 2).min(t2);
                ok.next = now + ok.interval;
            }
            let next = ok.next.min(ok.give_up);
            self.calls.timers.push(Reverse((next, session)));
        }
    }

    /// An event from the media plane.
    pub fn handle_media_event(&mut self, now: Instant, wall_ms: u64, event: MediaEvent) {
        self.last_now = Some(now);
        self.last_wall_ms = wall_ms;
        let (session, cause) = match event {
            MediaEvent::Inactive { session } => (session, "media_timeout"),
            MediaEvent::Failed { session } => (session, "media_failure"),
            MediaEvent::RecordDone {
                session,
                recording,
                duration_ms,
                heard,
            } => {
                return self.app_record_done(
                    now,
                    wall_ms,
                    session,
                    recording,
                    (duration_ms, heard),
                );
            }
            MediaEvent::PlayDone { session, id } => {
                let current = self
                    .calls
                    .calls
                    .get(&session)
                    .and_then(|c| c.app.as_ref())
                    .is_some_and(|app| app.is_current_play(id));
                if current {
                    self.app_event(now, wall_ms, session, crate::ivr::Event::PlayDone);
                }
                return;
            }
            MediaEvent::Dtmf {
                session,
                a_side,
                digit,
                duration_ms,
            } => {
                if self.calls.calls.contains_key(&session) {
                    let kind = CallEventKind::Dtmf {
                        digit,
                        from_caller: a_side,
                        duration_ms,
                    };
                    self.call_event(session, kind);
                    if a_side && self.is_app(session) {
                        let event = crate::ivr::Event::Digit(digit);
                        self.app_event(now, wall_ms, session, event);
                    }
                }
                return;
            }
        };
        if self.is_app(session) {
            self.app_caller_gone(now, session);
        }
        self.end_by_system(now, wall_ms, session, (cause, 503));
    }

    /// Stream connection `conn` (TCP, TLS or WebSocket) closed. Its bindings go (RFC 5626
    /// §5.2), and calls with an answered or calling leg over it end: nothing can reach that
    /// leg any more, so waiting for its BYE or the media timeout would only keep the other
    /// side on a dead call. Scans the live calls once per closed connection.
    pub fn connection_closed(&mut self, now: Instant, wall_ms: u64, conn: u64) {
        self.last_now = Some(now);
        self.last_wall_ms = wall_ms;
        for change in self.registrar.connection_closed(conn) {
            self.outputs.push_back(Output::Registration(change));
        }
        SipStats::set(&self.stats.bindings, self.registrar.len() as u64);
        let over = |peer: &Peer| peer.conn == Some(conn);
        let cut: Vec<(SessionId, bool)> = self
            .calls
            .calls
            .iter()
            .filter_map(|(session, call)| {
                let caller = over(&call.a_peer);
                let callee = call
                    .winner
                    .and_then(|w| call.forks.get(w))
                    .is_some_and(|fork| over(&fork.peer));
                (caller || callee).then_some((*session, caller))
            })
            .collect();
        for (session, caller) in cut {
            if caller && self.is_app(session) {
                self.app_caller_gone(now, session);
            }
            self.end_by_system(now, wall_ms, session, ("connection_lost", 480));
        }
    }

    /// Ends a call on our side: BYE to whoever is answered, or `status` to the caller if it
    /// was not answered yet.
    pub(super) fn end_by_system(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        (cause, status): (&'static str, u16),
    ) {
        let Some(call) = self.calls.calls.get(&session) else {
            return;
        };
        if call.winner.is_some() || call.a_dialog.is_some() {
            self.hang_up_other(now, session, Side::A);
            self.hang_up_other(now, session, Side::B);
            let answered = Disposition::Answered;
            self.end_call(wall_ms, session, answered, cause, HangupSide::System);
        } else {
            self.fail_call(now, wall_ms, session, status, Disposition::Failed, cause);
        }
    }
}

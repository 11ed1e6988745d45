//! Session timers (RFC 4028), on each leg of a call on its own.
//!
//! - **As UAS** (the caller's leg): an INVITE whose `Session-Expires` is below our `Min-SE`
//!   gets 422 (§9); otherwise, when the caller supports `timer`, our 2xx says
//!   `Session-Expires` with the refresher the caller asked for, else the caller (`uac`), and
//!   `Require: timer`.
//! - **As UAC** (our INVITEs): `Supported: timer`, `Session-Expires` asking the callee to
//!   refresh (`refresher=uas`) and `Min-SE`; a 422 is followed once with the interval its
//!   `Min-SE` asks for (§7.3); the 2xx says who refreshes.
//! - **Refreshing**: a leg we refresh gets an UPDATE without a body (re-INVITE with the SDP it
//!   has from us when it does not allow UPDATE) every half interval (§10); 408 or 481 to it
//!   ends the call.
//! - **Watching**: a 2xx to any re-INVITE or UPDATE of a leg's dialog, in either direction,
//!   is a refresh (§10). A leg that is not refreshed in time (the interval less a third of it,
//!   at most 32 s, §10) ends the call: BYE both ways, cause `session_timer_expired`.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_sip::message::{HeaderName, Headers, Method, Response};
use switchboard_sip::transaction::ClientKey;

use super::{Disposition, HangupSide, Output, Pending, Side, cseq_of};
use crate::core::Core;
use crate::media::SessionId;

/// The shortest interval we accept (`Min-SE`): the RFC's minimum, 90 s (§4).
pub(super) const MIN_SE: u32 = 90;
/// The interval we ask for on our INVITEs: 30 minutes (§4 recommends it).
pub(super) const SESSION_EXPIRES: u32 = 1800;

/// A leg's session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SessionTimer {
    /// Session interval, seconds.
    pub(super) interval: u32,
    /// Whether we refresh (else the peer does).
    pub(super) we_refresh: bool,
    /// Whether the peer takes UPDATE (our refreshes then carry no SDP).
    pub(super) update: bool,
    /// When our next refresh is due; `None` while one is in flight or when the peer
    /// refreshes.
    pub(super) refresh_at: Option<Instant>,
    /// When the session ends unless refreshed.
    pub(super) expires_at: Instant,
}

impl SessionTimer {
    /// A timer started (or refreshed) at `now`.
    pub(super) fn new(now: Instant, interval: u32, we_refresh: bool, update: bool) -> Self {
        let mut timer = Self {
            interval,
            we_refresh,
            update,
            refresh_at: None,
            expires_at: now,
        };
        timer.refreshed(now);
        timer
    }

    /// A refresh succeeded at `now`.
    pub(super) fn refreshed(&mut self, now: Instant) {
        let interval = Duration::from_secs(u64::from(self.interval));
        if self.we_refresh {
            // §10: the refresher sends its refresh at half the interval; the session lasts
            // the whole interval.
            self.refresh_at = Some(now + interval / 2);
            self.expires_at = now + interval;
        } else {
            // §10: the other side ends the session a third of the interval (at most 32 s)
            // before it expires, so a refresh that is late but on its way still counts.
            self.refresh_at = None;
            self.expires_at = now + interval - (interval / 3).min(Duration::from_secs(32));
        }
    }

    /// The next instant the timer needs attention.
    pub(super) fn next(&self) -> Instant {
        self.refresh_at
            .map_or(self.expires_at, |at| at.min(self.expires_at))
    }

    /// `Session-Expires` for a message on this leg, the refresher named from the side of
    /// `uac`: the leg's UAC is the peer (`true`, the caller's leg) or we are (`false`).
    pub(super) fn header(&self, peer_is_uac: bool) -> String {
        let uac_refreshes = self.we_refresh != peer_is_uac;
        let refresher = if uac_refreshes { "uac" } else { "uas" };
        format!("{};refresher={refresher}", self.interval)
    }
}

/// Who a `Session-Expires` value names as refresher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refresher {
    /// The dialog's UAC.
    Uac,
    /// The dialog's UAS.
    Uas,
}

/// `Session-Expires` (or its compact form `x`) of a message: the interval and the
/// refresher, if named. `None` when absent or malformed.
pub(super) fn session_expires(headers: &Headers) -> Option<(u32, Option<Refresher>)> {
    let value = headers.get(&HeaderName::SessionExpires)?;
    let mut parts = value.split(';');
    let interval = parts.next()?.trim().parse::<u32>().ok()?;
    let refresher = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((interval, refresher))
}

/// `Min-SE` of a message, in seconds.
pub(super) fn min_se(headers: &Headers) -> Option<u32> {
    headers
        .get(&HeaderName::MinSe)?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether a message's `Supported` (or `k`) or `Require` lists `option`.
pub(super) fn lists(headers: &Headers, name: &HeaderName, option: &str) -> bool {
    headers
        .get_all(name)
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case(option))
}

/// Whether a request supports session timers (`timer` in `Supported` or `Require`).
pub(super) fn supports_timer(headers: &Headers) -> bool {
    lists(headers, &HeaderName::Supported, "timer") || lists(headers, &HeaderName::Require, "timer")
}

/// Whether a message's `Allow` lists UPDATE.
pub(super) fn allows_update(headers: &Headers) -> bool {
    lists(headers, &HeaderName::Allow, "UPDATE")
}

impl Core {
    /// Our 2xx to the caller: the caller's leg gets a session timer when its INVITE asked
    /// for one and it supports `timer` (RFC 4028 §9), said in the response.
    pub(super) fn arm_caller_timer(&mut self, now: Instant, session: SessionId, ok: &mut Response) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let headers = &call.a_invite.headers;
        let Some((interval, refresher)) = session_expires(headers) else {
            return;
        };
        if !supports_timer(headers) {
            return;
        }
        // The caller refreshes unless it asked us to.
        let we_refresh = refresher == Some(Refresher::Uas);
        let timer = SessionTimer::new(
            now,
            interval.max(MIN_SE),
            we_refresh,
            allows_update(headers),
        );
        call.session_timers[Side::A.index()] = Some(timer);
        self.calls.timers.push(Reverse((timer.next(), session)));
        self.timer_headers(session, Side::A, true, ok);
    }

    /// The callee's 2xx: its leg gets a session timer when the 2xx says `Session-Expires`
    /// (RFC 4028 §7.2); we refresh when it names us (`uac`) or no one.
    pub(super) fn arm_callee_timer(&mut self, now: Instant, session: SessionId, ok: &Response) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let Some((interval, refresher)) = session_expires(&ok.headers) else {
            call.session_timers[Side::B.index()] = None;
            return;
        };
        let timer = SessionTimer::new(
            now,
            interval.max(MIN_SE),
            refresher != Some(Refresher::Uas),
            allows_update(&ok.headers),
        );
        call.session_timers[Side::B.index()] = Some(timer);
        self.calls.timers.push(Reverse((timer.next(), session)));
    }

    /// A 422 to one of our INVITEs (RFC 4028 §7.3): sends it again, once, with the interval
    /// its `Min-SE` asks for. False when there is nothing to retry with.
    pub(super) fn retry_session_interval(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &ClientKey,
        response: &Response,
    ) -> bool {
        let Some(call) = self.calls.calls.get(&session) else {
            return false;
        };
        let Some(index) = call.forks.iter().position(|f| &f.key == key) else {
            return false;
        };
        let fork = &call.forks[index];
        let asked = min_se(&response.headers).unwrap_or(0);
        let sent = session_expires(&fork.invite.headers).map_or(MIN_SE, |(interval, _)| interval);
        // Only a larger interval helps; at most a day, whatever the callee says.
        if asked <= sent || asked > 86_400 {
            return false;
        }
        let (peer, mut invite) = (fork.peer, fork.invite.clone());
        let seq = cseq_of(&invite.headers).map_or(1, |c| c.seq) + 1;
        invite.headers.set(HeaderName::Via, self.our_via(peer));
        invite
            .headers
            .set(HeaderName::CSeq, format!("{seq} INVITE"));
        invite
            .headers
            .set(HeaderName::SessionExpires, format!("{asked};refresher=uas"));
        invite.headers.set(HeaderName::MinSe, asked.to_string());
        self.resend_fork(now, session, index, invite, peer)
    }

    /// `side`'s session was refreshed (a 2xx to a re-INVITE or UPDATE of its dialog).
    pub(super) fn session_refreshed(&mut self, now: Instant, session: SessionId, side: Side) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        if let Some(timer) = call.session_timers[side.index()].as_mut() {
            timer.refreshed(now);
            let next = timer.next();
            self.calls.timers.push(Reverse((next, session)));
        }
    }

    /// `side`'s session timer in `session`, if it has one.
    pub(super) fn session_timer(&self, session: SessionId, side: Side) -> Option<SessionTimer> {
        self.calls
            .calls
            .get(&session)
            .and_then(|c| c.session_timers[side.index()])
    }

    /// `Session-Expires` on a 2xx we send on `side`'s leg, when the leg has a session timer,
    /// with `Require: timer` when the request it answers `supported` timers (RFC 4028 §9).
    pub(super) fn timer_headers(
        &self,
        session: SessionId,
        side: Side,
        supported: bool,
        response: &mut Response,
    ) {
        let Some(timer) = self.session_timer(session, side) else {
            return;
        };
        if supported {
            response.headers.push(HeaderName::Require, "timer");
        }
        // The caller's leg: the peer is the dialog's UAC. The callee's: we are.
        response
            .headers
            .push(HeaderName::SessionExpires, timer.header(side == Side::A));
    }

    /// Fires the session timers of `session` that are due: our refreshes, and the end of a
    /// session nobody refreshed (BYE both ways). True when the call ended.
    pub(super) fn session_timers_due(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
    ) -> bool {
        for side in [Side::A, Side::B] {
            let Some(timer) = self.session_timer(session, side) else {
                continue;
            };
            if timer.expires_at <= now {
                tracing::info!(session, ?side, "session not refreshed in time; hanging up");
                self.end_both(wall_ms, session, "session_timer_expired", now);
                return true;
            }
            if timer.refresh_at.is_some_and(|at| at <= now) {
                self.send_session_refresh(now, session, side);
            }
        }
        false
    }

    /// Sends BYE on both legs and ends the call's record (answered) with `cause`.
    fn end_both(&mut self, wall_ms: u64, session: SessionId, cause: &'static str, now: Instant) {
        self.hang_up_other(now, session, Side::A);
        self.hang_up_other(now, session, Side::B);
        self.end_call(
            wall_ms,
            session,
            Disposition::Answered,
            cause,
            HangupSide::System,
        );
    }

    /// Our refresh on `side` (RFC 4028 §10): UPDATE without a body when the peer takes it,
    /// else a re-INVITE with the SDP the leg has from us. Waits while another offer is in
    /// flight on the call.
    fn send_session_refresh(&mut self, now: Instant, session: SessionId, side: Side) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let Some(timer) = call.session_timers[side.index()].as_mut() else {
            return;
        };
        if call.relaying {
            let retry = now + Duration::from_secs(2);
            timer.refresh_at = Some(retry);
            self.calls.timers.push(Reverse((retry, session)));
            return;
        }
        timer.refresh_at = None;
        let (update, header) = (timer.update, timer.header(side == Side::A));
        // Whatever becomes of the refresh, the session ends on time without one.
        self.calls.timers.push(Reverse((timer.expires_at, session)));
        let (dialog, peer, sdp) = match side {
            Side::A => (
                call.a_dialog.as_mut(),
                call.a_peer,
                call.a_sent.clone().map(Bytes::from),
            ),
            Side::B => {
                let fork = call.winner.and_then(|w| call.forks.get(w));
                (
                    call.b_dialog.as_mut(),
                    fork.map_or(call.a_peer, |f| f.peer),
                    fork.map(|f| f.invite.body.clone()),
                )
            }
        };
        let Some(dialog) = dialog else { return };
        let mut dialog = dialog.clone();
        let (method, body, content_type) = match (update, sdp) {
            (false, Some(sdp)) => (Method::Invite, sdp, Some("application/sdp")),
            _ => (Method::Update, Bytes::new(), None),
        };
        let via = self.our_via(peer);
        let contact = self.our_contact(peer);
        let mut request = dialog.request(method.clone(), &via, &contact, body, content_type);
        request.headers.push(HeaderName::SessionExpires, header);
        request.headers.push(HeaderName::Supported, "timer");
        if let Some(call) = self.calls.calls.get_mut(&session) {
            match side {
                Side::A => call.a_dialog = Some(dialog),
                Side::B => call.b_dialog = Some(dialog),
            }
        }
        let invite = method == Method::Invite;
        if let Ok(key) =
            self.transactions
                .send_request(now, request, peer, peer.transport.is_reliable())
        {
            self.calls
                .pending
                .insert(key, (session, Pending::Refresh { side, invite }));
        }
    }

    /// The answer to our refresh on `side` (`None`: it timed out). A 2xx refreshes (its
    /// re-INVITE acknowledged); 408 or 481 ends the call (RFC 4028 §10); anything else is
    /// tried again shortly, while the session lasts.
    pub(super) fn refresh_answered(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        (side, invite): (Side, bool),
        response: Option<&Response>,
    ) {
        let status = response.map_or(408, |r| r.status);
        if status < 200 {
            return;
        }
        if (200..300).contains(&status) {
            if let (true, Some(response)) = (invite, response) {
                self.ack_refresh(session, side, response);
            }
            return self.session_refreshed(now, session, side);
        }
        if matches!(status, 408 | 481) {
            tracing::info!(session, ?side, status, "session refresh failed; hanging up");
            return self.end_both(wall_ms, session, "session_refresh_failed", now);
        }
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        if let Some(timer) = call.session_timers[side.index()].as_mut() {
            let retry = now + Duration::from_secs(2);
            if retry < timer.expires_at {
                timer.refresh_at = Some(retry);
                self.calls.timers.push(Reverse((retry, session)));
            }
        }
    }

    /// Acknowledges the 2xx to our refresh re-INVITE on `side`.
    fn ack_refresh(&mut self, session: SessionId, side: Side, response: &Response) {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        let peer = match side {
            Side::A => call.a_peer,
            Side::B => call.winner.map_or(call.a_peer, |w| call.forks[w].peer),
        };
        let dialog = match side {
            Side::A => call.a_dialog.as_mut(),
            Side::B => call.b_dialog.as_mut(),
        };
        let Some(dialog) = dialog else { return };
        dialog.handle_response(&Method::Invite, response);
        let mut dialog = dialog.clone();
        let via = self.our_via(peer);
        let contact = self.our_contact(peer);
        let ack = dialog.request(Method::Ack, &via, &contact, Bytes::new(), None);
        self.outputs.push_back(Output::Transmit {
            peer,
            bytes: Bytes::from(ack.to_bytes()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in lines {
            headers.push(HeaderName::parse(name), *value);
        }
        headers
    }

    #[test]
    fn session_expires_reads_interval_and_refresher_in_either_form() {
        let h = headers(&[("Session-Expires", "1800;refresher=uac")]);
        assert_eq!(session_expires(&h), Some((1800, Some(Refresher::Uac))));
        let h = headers(&[("x", "600 ; REFRESHER = UAS")]);
        assert_eq!(session_expires(&h), Some((600, Some(Refresher::Uas))));
        let h = headers(&[("Session-Expires", "90")]);
        assert_eq!(session_expires(&h), Some((90, None)));
        for bad in ["", "soon", "-5;refresher=uac", "99999999999"] {
            let h = headers(&[("Session-Expires", bad)]);
            assert_eq!(session_expires(&h), None, "{bad}");
        }
        assert_eq!(session_expires(&Headers::new()), None);
        assert_eq!(min_se(&headers(&[("Min-SE", "120")])), Some(120));
    }

    #[test]
    fn a_refresher_refreshes_at_half_and_a_watcher_gives_up_early() {
        // Virtual time needs one real origin; everything after it is computed.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let ours = SessionTimer::new(t0, 1800, true, true);
        assert_eq!(ours.refresh_at, Some(t0 + Duration::from_secs(900)));
        assert_eq!(ours.expires_at, t0 + Duration::from_secs(1800));
        assert_eq!(ours.next(), t0 + Duration::from_secs(900));
        let theirs = SessionTimer::new(t0, 1800, false, true);
        assert_eq!(theirs.refresh_at, None);
        assert_eq!(theirs.expires_at, t0 + Duration::from_secs(1800 - 32));
        // A short interval: a third of it, under 32 s.
        let short = SessionTimer::new(t0, 90, false, true);
        assert_eq!(short.expires_at, t0 + Duration::from_secs(60));
        // The refresher is named from the leg's UAC: on the caller's leg the peer is the
        // UAC; on ours we are.
        assert_eq!(theirs.header(true), "1800;refresher=uac");
        assert_eq!(ours.header(true), "1800;refresher=uas");
        assert_eq!(theirs.header(false), "1800;refresher=uas");
    }
}

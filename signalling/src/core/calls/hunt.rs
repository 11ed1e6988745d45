//! Ring groups: a number (or an IVR `dial`) that rings a group rings every member's
//! registered phones at once (simultaneous), or one member after another in the group's order
//! for the group's ring time each (sequential), skipping members with no phone registered.
//! The first to answer is bridged; its extension goes in the call record.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use switchboard_media::sdp::Sdp;
use switchboard_sip::message::Request;
use switchboard_sip::transaction::ServerKey;

use super::{CallStart, Disposition, Fork, Forking, NO_PORTS, Refused, media, retry_later};
use crate::core::Core;
use crate::directory::{Extension, RingGroup, Tenant};
use crate::media::SessionId;
use crate::peer::Peer;

/// What a sequential group still has to ring.
pub(super) struct Hunt {
    /// Members not rung yet, in order.
    members: Vec<Extension>,
    timeout: Duration,
    /// Our offer to the members, anchored on the callee-facing port.
    offer: Sdp,
    /// The caller's display name and number, for our From.
    caller: (String, String),
}

impl Core {
    /// A call for a number routed to `group`.
    pub(super) fn start_group(
        &mut self,
        now: Instant,
        wall_ms: u64,
        (key, request, from): (ServerKey, Request, Peer),
        (tenant, caller): (Tenant, (String, String)),
        mut record: CallStart,
        group: RingGroup,
    ) {
        let refused = Refused {
            key: &key,
            request: &request,
            caller: from,
        };
        record.to_number = group.name.clone();
        let Some(offer) = super::audio_offer(&request, false) else {
            return self.refuse_without_offer(now, refused, record);
        };
        let Some((offer, browser)) = super::caller_offer(offer, &request) else {
            return self.refuse_browser_without_g711(now, refused, record);
        };
        let Some(opened) = self.open_session(&record, &offer, &offer) else {
            return self.refuse(now, refused, record, NO_PORTS, retry_later);
        };
        let session = opened.session;
        let b_offer = media::anchor(&offer, self.advertised, opened.b_port);
        let mut call = self.new_call(opened, record, tenant, (key, request, from), &offer);
        call.record_policy = call.tenant.record_calls;
        self.calls.insert(session, call);
        crate::stats::SipStats::set(&self.stats.active_calls, self.calls.calls.len() as u64);
        if !self.answer_browser(now, wall_ms, session, browser) {
            return;
        }
        if !self.ring_group(now, session, &group, b_offer, caller) {
            let cause = "user_not_registered";
            self.fail_call(now, wall_ms, session, 480, Disposition::Failed, cause);
        }
    }

    /// Rings `group` for `session`, offering `offer`. False when no member has a phone
    /// registered.
    pub(super) fn ring_group(
        &mut self,
        now: Instant,
        session: SessionId,
        group: &RingGroup,
        offer: Sdp,
        caller: (String, String),
    ) -> bool {
        let members: Vec<Extension> = group
            .members
            .iter()
            .filter_map(|id| self.directory.extension(*id).cloned())
            .collect();
        if group.sequential {
            if let Some(call) = self.calls.calls.get_mut(&session) {
                call.hunt = Some(Box::new(Hunt {
                    members,
                    timeout: group.ring_timeout,
                    offer,
                    caller,
                }));
            }
            return self.hunt_next(now, session);
        }
        let mut forks = Vec::new();
        for member in &members {
            forks.extend(self.fork_member(now, session, member, &offer, &caller));
        }
        self.ring(now, session, forks, group.ring_timeout)
    }

    /// Rings `forks` for `timeout`. False when there are none.
    fn ring(
        &mut self,
        now: Instant,
        session: SessionId,
        forks: Vec<Fork>,
        timeout: Duration,
    ) -> bool {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        if forks.is_empty() {
            return false;
        }
        call.forks.extend(forks);
        let deadline = now + timeout;
        call.ring_deadline = Some(deadline);
        self.calls.timers.push(Reverse((deadline, session)));
        true
    }

    /// INVITEs to every registered phone of `member`.
    fn fork_member(
        &mut self,
        now: Instant,
        session: SessionId,
        member: &Extension,
        offer: &Sdp,
        (display, number): &(String, String),
    ) -> Vec<Fork> {
        let bindings = self.contacts(member.id);
        let Some(domain) = self
            .directory
            .tenant(member.tenant_id)
            .map(|t| t.domain.clone())
        else {
            return Vec::new();
        };
        self.fork_to(
            now,
            session,
            bindings,
            Forking {
                caller: (display, number),
                callee: &member.number,
                callee_id: Some(member.id),
                domain: &domain,
                to_domain: &domain,
                offer,
                max_forwards: 69,
                headers: &[],
            },
        )
    }

    /// A sequential group moves on to its next member with a phone registered. False when
    /// the call has no group or none is left.
    pub(super) fn hunt_next(&mut self, now: Instant, session: SessionId) -> bool {
        loop {
            let Some(call) = self.calls.calls.get_mut(&session) else {
                return false;
            };
            let Some(hunt) = call.hunt.as_deref_mut() else {
                return false;
            };
            if hunt.members.is_empty() {
                call.hunt = None;
                return false;
            }
            let member = hunt.members.remove(0);
            let (offer, caller, timeout) = (hunt.offer.clone(), hunt.caller.clone(), hunt.timeout);
            let forks = self.fork_member(now, session, &member, &offer, &caller);
            if self.ring(now, session, forks, timeout) {
                return true;
            }
        }
    }

    /// The ring time ran out with nobody answering: a sequential group rings its next member
    /// (returns true); a flow's dial reports no answer (true); otherwise the call fails (false:
    /// the caller fails it).
    pub(super) fn ring_timed_out(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
    ) -> bool {
        self.cancel_forks(now, session, None);
        if self.hunt_next(now, session)
            || self.forward(now, wall_ms, session, super::forward::Why::NoAnswer)
        {
            return true;
        }
        if self.is_app(session) {
            self.app_dial_failed(now, wall_ms, session, 480);
            return true;
        }
        false
    }
}

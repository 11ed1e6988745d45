//! Call forwarding, as an extension sets it (`forward_always`, `forward_busy`,
//! `forward_no_answer`): a call for the extension goes on to another extension of the tenant
//! or to a number outside, once (a forwarded call is not forwarded again, so two extensions
//! forwarding to each other never loop).
//!
//! - **Always**: at once, whether or not a phone is registered (reason `unconditional`).
//! - **Busy**: when every phone answered 486 (reason `user-busy`).
//! - **No answer**: when the ring time runs out or every phone fails otherwise (reason
//!   `no-answer`), and at once when no phone is registered (reason `unavailable`).
//!
//! The forwarded INVITE says who the call was for in `Diversion` (RFC 5806), with the
//! reason; the callee sees the original caller. A number outside is dialled as the
//! forwarding extension would dial it: its `outbound_allowed` and the tenant's toll-fraud
//! limits apply, and the call leaves through the outbound routes (with their failover). The
//! call record names the new target (`to_number`, and `to_extension` for an extension).

use std::cmp::Reverse;
use std::time::Instant;

use switchboard_media::sdp::Sdp;

use super::outbound::TrunkDial;
use super::{ForkState, Forking};
use crate::core::Core;
use crate::directory::Extension;
use crate::media::SessionId;

/// What a call for a forwarding extension keeps, until it is forwarded (once).
pub(super) struct Forwards {
    /// The extension the call was for.
    pub(super) from: Extension,
    /// The caller's display name and number, which the new callee sees.
    pub(super) caller: (String, String),
    /// Our offer, anchored on the callee-facing port.
    pub(super) offer: Sdp,
}

/// Why a call is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    /// `forward_always`.
    Always,
    /// `forward_busy`.
    Busy,
    /// `forward_no_answer`, after ringing.
    NoAnswer,
    /// `forward_no_answer`, with no phone registered.
    Unavailable,
}

impl Why {
    /// The Diversion reason (RFC 5806 §3).
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Always => "unconditional",
            Self::Busy => "user-busy",
            Self::NoAnswer => "no-answer",
            Self::Unavailable => "unavailable",
        }
    }
}

impl Core {
    /// Forwards `session` for `why`, if its extension forwards for that. True when the call
    /// rings somewhere new.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        why: Why,
    ) -> bool {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        let Some(forwards) = call.forward.as_ref() else {
            return false;
        };
        let rules = &forwards.from.forward;
        let target = match why {
            Why::Always => rules.always.clone(),
            Why::Busy => rules.busy.clone(),
            Why::NoAnswer | Why::Unavailable => rules.no_answer.clone(),
        };
        let Some(target) = target else {
            return false;
        };
        // Once: whatever happens to the forwarded call is final.
        let Some(forwards) = call.forward.take() else {
            return false;
        };
        let forwarded = match self.directory.extension_by_number(call.tenant.id, &target) {
            Some(extension) => {
                let extension = extension.clone();
                self.forward_to_extension(now, session, &forwards, (&extension, why))
            }
            None => self.forward_outside(now, wall_ms, session, &forwards, (&target, why)),
        };
        if forwarded {
            tracing::info!(session, from = %forwards.from.number, to = %target, ?why, "call forwarded");
            let deadline = now + self.config.ring_timeout;
            self.calls.timers.push(Reverse((deadline, session)));
            if let Some(call) = self.calls.calls.get_mut(&session) {
                call.ring_deadline = Some(deadline);
            }
        } else {
            tracing::info!(session, from = %forwards.from.number, to = %target, ?why, "call not forwarded");
        }
        forwarded
    }

    /// Rings `extension`'s phones for `session`, with Diversion.
    fn forward_to_extension(
        &mut self,
        now: Instant,
        session: SessionId,
        forwards: &Forwards,
        (extension, why): (&Extension, Why),
    ) -> bool {
        let bindings = self.contacts(extension.id);
        let Some(domain) = self
            .calls
            .calls
            .get(&session)
            .map(|c| c.tenant.domain.clone())
        else {
            return false;
        };
        let diversion = diversion(&forwards.from.number, &domain, why.reason());
        let forks = self.fork_to(
            now,
            session,
            bindings,
            Forking {
                caller: (&forwards.caller.0, &forwards.caller.1),
                callee: &extension.number,
                callee_id: Some(extension.id),
                domain: &domain,
                to_domain: &domain,
                offer: &forwards.offer,
                max_forwards: 70,
                headers: &[("Diversion".to_owned(), diversion)],
            },
        );
        if forks.is_empty() {
            return false;
        }
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        for fork in call.forks.drain(..) {
            self.calls.by_fork.remove(&fork.key);
        }
        call.forks = forks;
        call.winner = None;
        call.session_timers[super::Side::B.index()] = None;
        call.record.to_extension = Some(extension.id);
        call.record.to_number = extension.number.clone();
        call.record_policy |= extension.record_calls;
        true
    }

    /// Sends `session` out to `number`, as the forwarding extension would dial it.
    fn forward_outside(
        &mut self,
        now: Instant,
        wall_ms: u64,
        session: SessionId,
        forwards: &Forwards,
        (number, why): (&str, Why),
    ) -> bool {
        let Ok(e164) = crate::e164::normalize(number) else {
            return false;
        };
        let Some(tenant) = self.calls.calls.get(&session).map(|c| c.tenant.clone()) else {
            return false;
        };
        let digits = e164.trim_start_matches('+');
        if !forwards.from.outbound_allowed {
            tracing::warn!(session, extension = %forwards.from.number, "forwarding outside refused: the extension may not call out");
            return false;
        }
        if let Some(refusal) = self.outbound_refusal(tenant.id, digits, wall_ms) {
            tracing::warn!(session, cause = refusal.cause, "forwarding outside refused");
            return false;
        }
        let mut trunks = self.route_trunks(tenant.id, digits);
        if trunks.is_empty() {
            return false;
        }
        let (trunk, outbound) = trunks.remove(0);
        let dial = TrunkDial {
            e164: e164.clone(),
            display: forwards.caller.0.clone(),
            number: forwards.caller.1.clone(),
            domain: tenant.domain.clone(),
            diversion: Some((forwards.from.number.clone(), why.reason())),
            anonymous: false,
            offer: forwards.offer.clone(),
            next_trunks: trunks.into_iter().map(|(id, _)| id).collect(),
        };
        self.dial_trunk(now, session, &outbound, dial);
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        call.record.to_number = e164;
        call.record.trunk_id = Some(trunk);
        call.record_policy |= forwards.from.record_calls;
        call.forks
            .iter()
            .any(|f| matches!(f.state, ForkState::Trying))
            || self.next_route(now, session, &[503])
    }
}

/// `Diversion` naming `number` of `domain` as the one the call was for, and why (RFC 5806).
pub(super) fn diversion(number: &str, domain: &str, reason: &str) -> String {
    format!("<sip:{number}@{domain}>;reason={reason}")
}

//! Calls out through a trunk: an extension dials a number no extension has; the outbound
//! routes pick a trunk by the longest prefix of the number's E.164 digits, then priority; one
//! INVITE of ours goes to the trunk's proxy, with the trunk's tech prefix, custom headers and
//! our caller ID in From and P-Asserted-Identity (RFC 3325). A 401 or 407 is answered once
//! with the trunk's credentials (a new transaction, CSeq + 1, RFC 3261 §22.2); the transaction
//! layer acknowledges the challenge itself. From there the call is an ordinary fork: its 2xx
//! is acknowledged along the route set the response's Record-Route gave (§12.1.2).

use std::net::SocketAddr;
use std::time::Instant;

use switchboard_sip::digest::Challenge;
use switchboard_sip::message::{HeaderName, Request, Response};
use switchboard_sip::transaction::ServerKey;
use uuid::Uuid;

use super::{CallStart, Disposition, NO_PORTS, Refusal, Refused, cseq_of, media, retry_later};
use crate::core::Core;
use crate::directory::{Extension, Outbound, Tenant};
use crate::media::SessionId;
use crate::peer::Peer;
use crate::stats::SipStats;
use switchboard_media::sdp::Sdp;

/// The caller may not call outside (`outbound_allowed` is off).
const OUTBOUND_FORBIDDEN: Refusal = Refusal {
    status: 403,
    reason: "Forbidden",
    disposition: Disposition::Failed,
    cause: "outbound_not_allowed",
};
/// The number is outside `outbound.allowed_prefixes`.
const DESTINATION_FORBIDDEN: Refusal = Refusal {
    status: 403,
    reason: "Forbidden",
    disposition: Disposition::Failed,
    cause: "destination_not_allowed",
};
/// The tenant has `outbound.max_concurrent_per_tenant` calls out already.
const OUTBOUND_LIMIT: Refusal = Refusal {
    status: 403,
    reason: "Forbidden",
    disposition: Disposition::Failed,
    cause: "outbound_call_limit",
};
/// The tenant used its `outbound.daily_minutes_per_tenant` today.
const MINUTES_USED: Refusal = Refusal {
    status: 403,
    reason: "Forbidden",
    disposition: Disposition::Failed,
    cause: "daily_minutes_exceeded",
};
/// No outbound route matches the number (or its trunk has no reachable proxy).
const NO_ROUTE: Refusal = Refusal {
    status: 404,
    reason: "Not Found",
    disposition: Disposition::Failed,
    cause: "no_route",
};

/// Milliseconds in a day: outbound minutes are counted per UTC day.
pub(super) const DAY_MS: u64 = 86_400_000;

/// A call out through a trunk, kept while it rings: what its INVITE says, and the trunks
/// of the other matching routes, tried in turn when one fails (408 or 5xx once every proxy
/// of the trunk was tried).
pub(super) struct TrunkDial {
    /// The number, E.164.
    pub(super) e164: String,
    /// Display name.
    pub(super) display: String,
    /// Caller ID number.
    pub(super) number: String,
    /// Our domain for From, P-Asserted-Identity and Diversion.
    pub(super) domain: String,
    /// The number the call was for, when it is passed on, and why (a Diversion reason).
    pub(super) diversion: Option<(String, &'static str)>,
    /// Withhold the number from the callee (RFC 3323): From says `Anonymous`, the carrier
    /// still gets it in P-Asserted-Identity, with `Privacy: id`.
    pub(super) anonymous: bool,
    /// Our offer, anchored on the callee-facing port.
    pub(super) offer: Sdp,
    /// Trunks not tried yet, best first.
    pub(super) next_trunks: Vec<Uuid>,
}

impl Core {
    /// Which toll-fraud limit (`[outbound]`, or the tenant's own) a call out of `tenant` to
    /// `digits` (E.164 without `+`) would break, if any.
    pub(super) fn outbound_refusal(
        &self,
        tenant: Uuid,
        digits: &str,
        wall_ms: u64,
    ) -> Option<Refusal> {
        let limits = &self.config.outbound;
        if !limits.allowed_prefixes.is_empty()
            && !limits
                .allowed_prefixes
                .iter()
                .any(|p| digits.starts_with(p.as_str()))
        {
            return Some(DESTINATION_FORBIDDEN);
        }
        // The tenant's own limits, where it has them, else the server's.
        let own = self.directory.tenant(tenant);
        let max_concurrent = own
            .and_then(|t| t.max_outbound_calls)
            .unwrap_or(limits.max_concurrent_per_tenant);
        let daily_minutes = own
            .and_then(|t| t.daily_outbound_minutes)
            .unwrap_or(limits.daily_minutes_per_tenant);
        let live = self
            .calls
            .calls
            .values()
            .filter(|c| c.tenant.id == tenant && c.out)
            .count();
        if live >= max_concurrent {
            return Some(OUTBOUND_LIMIT);
        }
        let cap_ms = u64::from(daily_minutes) * 60_000;
        (cap_ms > 0 && self.calls.outbound_used_ms(tenant, wall_ms) >= cap_ms)
            .then_some(MINUTES_USED)
    }

    /// An extension dialled `e164`, which no extension has: out through a trunk.
    pub(super) fn start_outbound(
        &mut self,
        now: Instant,
        wall_ms: u64,
        (key, request, from): (ServerKey, Request, Peer),
        (tenant, caller): (Tenant, Extension),
        mut record: CallStart,
        (e164, anonymous): (String, bool),
    ) {
        let refused = Refused {
            key: &key,
            request: &request,
            caller: from,
        };
        record.to_number = e164.clone();
        if !caller.outbound_allowed {
            return self.refuse(now, refused, record, OUTBOUND_FORBIDDEN, |_| {});
        }
        let digits = e164.trim_start_matches('+');
        if let Some(refusal) = self.outbound_refusal(tenant.id, digits, wall_ms) {
            return self.refuse(now, refused, record, refusal, |_| {});
        }
        let mut trunks = self.route_trunks(tenant.id, digits);
        if trunks.is_empty() {
            return self.refuse(now, refused, record, NO_ROUTE, |_| {});
        }
        let (trunk_id, outbound) = trunks.remove(0);
        record.trunk_id = Some(trunk_id);
        let Some(offer) = super::audio_offer(&request, false) else {
            return self.refuse_without_offer(now, refused, record);
        };
        let Some((offer, browser)) = super::caller_offer(offer, &request) else {
            return self.refuse_browser_without_g711(now, refused, record);
        };
        let Some(opened) = self.open_session(&record, &offer, &offer) else {
            return self.refuse(now, refused, record, NO_PORTS, retry_later);
        };
        let (session, b_port) = (opened.session, opened.b_port);

        // The extension's caller ID, else the tenant's, else the extension's own number.
        let caller_id = caller
            .caller_id
            .clone()
            .or_else(|| tenant.caller_id.clone())
            .unwrap_or(caller.number.clone());
        let b_offer = media::anchor(&offer, self.advertised, b_port);
        let domain = tenant.domain.clone();
        let record_policy = tenant.record_calls || caller.record_calls;
        let mut call = self.new_call(opened, record, tenant, (key, request, from), &offer);
        call.out = true;
        call.record_policy = record_policy;
        self.calls.insert(session, call);
        SipStats::set(&self.stats.active_calls, self.calls.calls.len() as u64);
        if !self.answer_browser(now, wall_ms, session, browser) {
            return;
        }
        let dial = TrunkDial {
            e164,
            display: caller.display_name.clone(),
            number: caller_id,
            domain,
            diversion: None,
            anonymous,
            offer: b_offer,
            next_trunks: trunks.into_iter().map(|(id, _)| id).collect(),
        };
        self.dial_trunk(now, session, &outbound, dial);
        let ring_deadline = now + self.config.ring_timeout;
        self.calls
            .timers
            .push(std::cmp::Reverse((ring_deadline, session)));
        if let Some(call) = self.calls.calls.get_mut(&session) {
            call.ring_deadline = Some(ring_deadline);
        }
        if self.calls.calls[&session].forks.is_empty() && !self.next_route(now, session, &[503]) {
            let cause = "no_usable_contact";
            self.fail_call(now, wall_ms, session, 503, Disposition::Failed, cause);
        }
    }

    /// The trunks a number of `tenant` (E.164 digits) may leave through, best route first,
    /// with how calls go out through each.
    pub(super) fn route_trunks(&self, tenant: Uuid, digits: &str) -> Vec<(Uuid, Outbound)> {
        self.directory
            .routes(tenant, digits)
            .into_iter()
            .filter_map(|(_, trunk)| Some((trunk.id, (*trunk.outbound.clone()?))))
            .collect()
    }

    /// Places `dial` through `outbound`: the call's forks, proxies to fail over to and
    /// credentials become this trunk's. The call has no fork when the trunk has no proxy.
    pub(super) fn dial_trunk(
        &mut self,
        now: Instant,
        session: SessionId,
        outbound: &Outbound,
        dial: TrunkDial,
    ) {
        let (forks, failover) = self.fork_trunk(now, session, outbound, &dial);
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return;
        };
        for fork in call.forks.drain(..) {
            self.calls.by_fork.remove(&fork.key);
        }
        call.forks = forks;
        call.failover = failover;
        call.winner = None;
        call.out = true;
        call.dial_rang = false;
        call.session_timers[super::Side::B.index()] = None;
        call.trunk_auth = outbound
            .credentials
            .clone()
            .map(|(user, password)| Box::new((user, password, false)));
        call.trunk_dial = Some(Box::new(dial));
    }

    /// The call's trunk failed with `statuses` (408 or 5xx, each of its proxies tried) before
    /// anything rang: the next route's trunk takes the call. False when none is left, when
    /// the callee was reached already (a provisional response: another carrier would ring
    /// them again), or the failure was the callee's (busy, rejected, not found…).
    pub(super) fn next_route(
        &mut self,
        now: Instant,
        session: SessionId,
        statuses: &[u16],
    ) -> bool {
        if statuses.is_empty() || !statuses.iter().all(|s| matches!(s, 408 | 500..=599)) {
            return false;
        }
        if self.calls.calls.get(&session).is_none_or(|c| c.dial_rang) {
            return false;
        }
        loop {
            let Some(call) = self.calls.calls.get_mut(&session) else {
                return false;
            };
            let Some(mut dial) = call.trunk_dial.take() else {
                return false;
            };
            if dial.next_trunks.is_empty() {
                return false;
            }
            let trunk = dial.next_trunks.remove(0);
            let Some(outbound) = self
                .directory
                .trunk(trunk)
                .and_then(|t| t.outbound.as_deref().cloned())
            else {
                // The trunk went since: the next one.
                if let Some(call) = self.calls.calls.get_mut(&session) {
                    call.trunk_dial = Some(dial);
                }
                continue;
            };
            tracing::info!(session, %trunk, "trunk failed; trying the next route");
            self.dial_trunk(now, session, &outbound, *dial);
            let Some(call) = self.calls.calls.get_mut(&session) else {
                return false;
            };
            if call.forks.is_empty() {
                continue;
            }
            match call.app.as_mut() {
                Some(app) => app.out_trunk = Some(trunk),
                None => call.record.trunk_id = Some(trunk),
            }
            return true;
        }
    }

    /// The INVITE through a trunk (its proxy, tech prefix and custom headers) for the dialled
    /// number, with the caller ID in From and P-Asserted-Identity (RFC 3325) and, for a call
    /// passed on, a Diversion header naming the number that was called (RFC 5806).
    fn fork_trunk(
        &mut self,
        now: Instant,
        session: SessionId,
        outbound: &Outbound,
        caller: &TrunkDial,
    ) -> (Vec<super::Fork>, Vec<SocketAddr>) {
        // Proxies that answer their OPTIONS first; the others are kept for failover.
        let mut proxies = outbound.proxies.clone();
        proxies.sort_by_key(|p| !self.trunk_health.is_up(*p));
        if proxies.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let proxy = proxies.remove(0);
        // `#` (allowed in a tech prefix) is not allowed in a URI's user part: escaped
        // (RFC 3261 §25.1).
        let user = format!("{}{}", outbound.tech_prefix, caller.e164).replace('#', "%23");
        let host = match outbound.host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => outbound.host.clone(),
        };
        let mut headers = outbound.headers.clone();
        headers.push((
            "P-Asserted-Identity".into(),
            format!("<sip:{}@{}>", caller.number, caller.domain),
        ));
        if let Some((diverted, reason)) = &caller.diversion {
            headers.push((
                "Diversion".into(),
                super::forward::diversion(diverted, &caller.domain, reason),
            ));
        }
        // RFC 3323 §4.1.1.3 and RFC 3325 §9.3: the anonymous From of RFC 3323, the real
        // identity asserted to the carrier, which must not pass it on.
        let (from_caller, from_domain) = if caller.anonymous {
            headers.push(("Privacy".into(), "id".into()));
            (("Anonymous", "anonymous"), "anonymous.invalid")
        } else {
            (
                (caller.display.as_str(), caller.number.as_str()),
                caller.domain.as_str(),
            )
        };
        let peer = outbound.peer(proxy);
        let forks = self.fork_to(
            now,
            session,
            vec![(format!("sip:{user}@{host}"), peer)],
            super::Forking {
                caller: from_caller,
                callee: &user,
                callee_id: None,
                domain: from_domain,
                to_domain: &host,
                offer: &caller.offer,
                max_forwards: 70,
                headers: &headers,
            },
        );
        (forks, proxies)
    }

    /// A trunk's proxy answered our INVITE with 503, or not at all: the same INVITE goes to
    /// the next proxy (a new transaction, CSeq + 1). False when there is none left.
    pub(super) fn fail_over(&mut self, now: Instant, session: SessionId, index: usize) -> bool {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        if call.failover.is_empty() {
            return false;
        }
        let next = call.failover.remove(0);
        let fork = &call.forks[index];
        // The trunk's other proxies are reached over the same transport.
        let peer = Peer {
            conn: None,
            addr: next,
            ..fork.peer
        };
        let mut invite = fork.invite.clone();
        let seq = cseq_of(&invite.headers).map_or(1, |c| c.seq) + 1;
        invite.headers.set(HeaderName::Via, self.our_via(peer));
        invite
            .headers
            .set(HeaderName::CSeq, format!("{seq} INVITE"));
        // The other proxy challenges afresh: its answer is owed, not the first one's.
        invite.headers.remove(&HeaderName::ProxyAuthorization);
        invite.headers.remove(&HeaderName::Authorization);
        if let Some(auth) = self
            .calls
            .calls
            .get_mut(&session)
            .and_then(|c| c.trunk_auth.as_deref_mut())
        {
            auth.2 = false;
        }
        tracing::info!(session, proxy = %next, "trunk proxy failed; trying the next one");
        self.resend_fork(now, session, index, invite, peer)
    }

    /// A 401/407 to our INVITE through a trunk: sends it again with the trunk's credentials,
    /// once. Returns false when there is nothing to answer with (the challenge then fails the
    /// call like any final response).
    pub(super) fn answer_trunk_challenge(
        &mut self,
        now: Instant,
        session: SessionId,
        index: usize,
        response: &Response,
    ) -> bool {
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        let Some(auth) = call.trunk_auth.as_deref_mut() else {
            return false;
        };
        if auth.2 {
            return false;
        }
        let (header, answer_header) = if response.status == 407 {
            (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            )
        } else {
            (HeaderName::WwwAuthenticate, HeaderName::Authorization)
        };
        let Some(challenge) = response
            .headers
            .get_all(&header)
            .find_map(|value| Challenge::parse(value).ok())
        else {
            return false;
        };
        auth.2 = true;
        let (user, password) = (auth.0.clone(), auth.1.clone());
        let fork = &call.forks[index];
        let peer = fork.peer;
        let mut invite = fork.invite.clone();
        let uri = invite.uri.to_string();
        let cnonce = self.random_token();
        let answer = challenge.answer(&user, &password, "INVITE", &uri, &cnonce, 1);
        let seq = cseq_of(&invite.headers).map_or(1, |c| c.seq) + 1;
        invite.headers.set(HeaderName::Via, self.our_via(peer));
        invite
            .headers
            .set(HeaderName::CSeq, format!("{seq} INVITE"));
        invite.headers.push(answer_header, answer);
        self.resend_fork(now, session, index, invite, peer)
    }

    /// Sends fork `index` of `session` again as `invite` to `peer`, in a new transaction that
    /// takes the fork's place. False if it cannot be sent.
    pub(super) fn resend_fork(
        &mut self,
        now: Instant,
        session: SessionId,
        index: usize,
        invite: Request,
        peer: Peer,
    ) -> bool {
        let Some(old_key) = self
            .calls
            .calls
            .get(&session)
            .map(|c| c.forks[index].key.clone())
        else {
            return false;
        };
        match self.transactions.send_request(
            now,
            invite.clone(),
            peer,
            peer.transport.is_reliable(),
        ) {
            Ok(key) => {
                self.calls.by_fork.remove(&old_key);
                self.calls.by_fork.insert(key.clone(), session);
                if let Some(call) = self.calls.calls.get_mut(&session) {
                    let fork = &mut call.forks[index];
                    fork.key = key;
                    fork.invite = invite;
                    fork.peer = peer;
                    fork.state = super::ForkState::Trying;
                    // A new transaction: its reliable provisional responses count afresh.
                    fork.rseq = None;
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, "could not send the INVITE again");
                false
            }
        }
    }
}

//! Reliable provisional responses (RFC 3262), as UAC: our INVITEs say `Supported: 100rel`,
//! and a provisional response that requires it (`Require: 100rel`, `RSeq`) is acknowledged
//! with a PRACK in its early dialog (`RAck: <rseq> <cseq> INVITE`, §7.2). Responses are taken
//! in RSeq order: a retransmission of one already acknowledged, or one that skips ahead, is
//! not passed on (§4). We never send reliable provisional responses ourselves, so a caller
//! that requires `100rel` still gets 420.

use std::time::Instant;

use switchboard_sip::dialog::Dialog;
use switchboard_sip::message::{HeaderName, Method, Response};
use switchboard_sip::transaction::ClientKey;

use super::cseq_of;
use super::timer::lists;
use crate::core::Core;
use crate::media::SessionId;

impl Core {
    /// A provisional response to fork `key` of `session`: PRACKs it if it is reliable.
    /// False when it must go no further (a retransmission, or out of order).
    pub(super) fn prack(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &ClientKey,
        response: &Response,
    ) -> bool {
        if !lists(&response.headers, &HeaderName::Require, "100rel") {
            return true;
        }
        let Some(rseq) = response
            .headers
            .get(&HeaderName::RSeq)
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            // No usable RSeq: nothing to acknowledge it with; taken as unreliable.
            return true;
        };
        let Some(call) = self.calls.calls.get_mut(&session) else {
            return false;
        };
        let Some(fork) = call.forks.iter_mut().find(|f| &f.key == key) else {
            return false;
        };
        if let Some(last) = fork.rseq
            && rseq != last.wrapping_add(1)
        {
            // Already acknowledged (its PRACK was lost or is on its way), or one is missing
            // before it: the UAS sends it again.
            return false;
        }
        let Ok(mut dialog) = Dialog::from_uac(&fork.invite, response) else {
            return false;
        };
        let invite_seq = cseq_of(&fork.invite.headers).map_or(1, |c| c.seq);
        dialog.local_seq = dialog.local_seq.max(fork.prack_seq);
        let peer = fork.peer;
        let via = self.our_via(peer);
        let contact = self.our_contact(peer);
        let mut prack = dialog.request(Method::Prack, &via, &contact, bytes::Bytes::new(), None);
        prack
            .headers
            .push(HeaderName::RAck, format!("{rseq} {invite_seq} INVITE"));
        if let Some(fork) = self
            .calls
            .calls
            .get_mut(&session)
            .and_then(|c| c.forks.iter_mut().find(|f| &f.key == key))
        {
            fork.rseq = Some(rseq);
            fork.prack_seq = dialog.local_seq;
            // Its SDP answers our offer for good (RFC 3262 §5).
            if let Some(Ok(answer)) = super::sdp_of(&response.body, &response.headers) {
                fork.early_answer = Some(answer);
            }
        }
        self.send_unwatched(now, session, prack, peer);
        true
    }
}

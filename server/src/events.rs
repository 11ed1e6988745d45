//! Live events: registrations coming and going and calls ringing, answered, held and ended,
//! published by the signalling task and fanned out to WebSocket subscribers
//! (`GET /api/v1/events`).
//!
//! Events are serialised once, on the signalling task, and only while someone listens: with
//! no subscriber, publishing costs one atomic load. The fan-out is a bounded broadcast
//! channel; a subscriber that falls more than [`CAPACITY`] events behind skips what it missed
//! and is told how many (`events.lagged`), so a slow client never holds the server back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use switchboard_signalling::core::{CallEnd, CallEvent, CallEventKind, CallStart};
use switchboard_signalling::registrar::Change;
use switchboard_storage::{Timestamp, Uuid};
use tokio::sync::broadcast;

use crate::sip::persist;

/// Events buffered per subscriber before the oldest are skipped.
pub const CAPACITY: usize = 4096;

/// One event, as subscribers receive it (JSON, `type` first).
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum Event<'a> {
    /// A phone registered a new contact for an extension.
    #[serde(rename = "registration.up")]
    RegistrationUp {
        /// When (RFC 3339).
        at: String,
        /// Tenant.
        tenant_id: Uuid,
        /// Extension.
        extension_id: Uuid,
        /// Contact URI.
        contact: &'a str,
        /// `UDP`, `TCP`, ...
        transport: &'a str,
        /// Where the REGISTER came from.
        source: String,
        /// User-Agent.
        user_agent: &'a str,
    },
    /// A contact went away: un-registered, replaced, or expired.
    #[serde(rename = "registration.down")]
    RegistrationDown {
        /// When.
        at: String,
        /// Tenant.
        tenant_id: Uuid,
        /// Extension.
        extension_id: Uuid,
        /// Contact URI.
        contact: &'a str,
        /// `expired` or `removed`.
        reason: &'static str,
    },
    /// A call was accepted and is being put through (`call.ringing` follows when the callee
    /// rings).
    #[serde(rename = "call.started")]
    CallStarted {
        /// When.
        at: String,
        /// The call's record (`GET /api/v1/calls/{id}`).
        call_id: Uuid,
        /// Tenant.
        tenant_id: Uuid,
        /// Caller extension (null for a call from a trunk).
        from_extension_id: Option<Uuid>,
        /// Caller number.
        from_number: &'a str,
        /// Called extension, if the number is one.
        to_extension_id: Option<Uuid>,
        /// Dialled number.
        to_number: &'a str,
        /// The number (DID) a call from a trunk was for.
        #[serde(skip_serializing_if = "Option::is_none")]
        did: Option<&'a str>,
    },
    /// The callee's phone rings.
    #[serde(rename = "call.ringing")]
    CallRinging(CallRef),
    /// The callee answered.
    #[serde(rename = "call.answered")]
    CallAnswered(CallRef),
    /// A side put the call on hold.
    #[serde(rename = "call.held")]
    CallHeld(CallRef),
    /// The call came off hold.
    #[serde(rename = "call.resumed")]
    CallResumed(CallRef),
    /// A side pressed a DTMF key (RFC 4733 in its RTP, or SIP INFO), reported when the key
    /// goes up.
    #[serde(rename = "call.dtmf")]
    CallDtmf {
        /// Which call.
        #[serde(flatten)]
        call: CallRef,
        /// The key: `0`-`9`, `*`, `#`, `A`-`D`.
        digit: String,
        /// `caller` or `callee`.
        side: &'static str,
        /// How long it was held, in milliseconds.
        duration_ms: u32,
    },
    /// The call ended (its record is complete).
    #[serde(rename = "call.ended")]
    CallEnded {
        /// Which call.
        #[serde(flatten)]
        call: CallRef,
        /// `answered`, `busy`, `no_answer`, `cancelled` or `failed`.
        disposition: &'static str,
        /// Why, e.g. `normal_clearing`.
        hangup_cause: &'static str,
        /// `caller`, `callee` or `system`.
        hangup_side: &'static str,
    },
}

/// The fields every call event has.
#[derive(Debug, Serialize)]
pub struct CallRef {
    /// When (RFC 3339).
    pub at: String,
    /// The call's record (`GET /api/v1/calls/{id}`).
    pub call_id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Caller extension (null for a call from a trunk).
    pub from_extension_id: Option<Uuid>,
    /// Called extension.
    pub to_extension_id: Option<Uuid>,
}

impl CallRef {
    fn new(id: Uuid, tenant_id: Uuid, from: Option<Uuid>, to: Option<Uuid>) -> Self {
        Self {
            at: Timestamp::now().to_rfc3339(),
            call_id: id,
            tenant_id,
            from_extension_id: from,
            to_extension_id: to,
        }
    }
}

/// A serialised event with what decides who may see it.
#[derive(Debug)]
pub struct Published {
    /// Tenant of the event.
    pub tenant_id: Uuid,
    /// Extensions it concerns (a `user` sees events of their own extensions only).
    pub extensions: [Option<Uuid>; 2],
    /// The JSON text.
    pub json: String,
}

/// The publishing side, shared by the signalling task and the HTTP handlers.
#[derive(Clone, Debug)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Published>>,
    /// Open subscriber connections (bounded by the HTTP handler).
    pub connections: Arc<AtomicUsize>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.sender.subscribe()
    }

    /// Whether anyone listens (publishing is skipped otherwise).
    pub fn active(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Open subscriber connections.
    pub fn open(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn send(&self, tenant_id: Uuid, extensions: [Option<Uuid>; 2], event: &Event<'_>) {
        match serde_json::to_string(event) {
            Ok(json) => {
                // No receiver left between `active` and here is fine: the event is dropped.
                let _ = self.sender.send(Arc::new(Published {
                    tenant_id,
                    extensions,
                    json,
                }));
            }
            Err(error) => tracing::error!(%error, "could not serialise an event"),
        }
    }

    /// Publishes a registration change.
    pub fn registration(&self, change: &Change) {
        if !self.active() {
            return;
        }
        let at = Timestamp::now().to_rfc3339();
        match change {
            Change::Upsert {
                tenant_id,
                extension_id,
                binding,
                new: true,
            } => self.send(
                *tenant_id,
                [Some(*extension_id), None],
                &Event::RegistrationUp {
                    at,
                    tenant_id: *tenant_id,
                    extension_id: *extension_id,
                    contact: &binding.contact,
                    transport: binding.peer.transport.as_str(),
                    source: binding.peer.addr.to_string(),
                    user_agent: &binding.user_agent,
                },
            ),
            // A refresh changes nothing a subscriber sees.
            Change::Upsert { new: false, .. } => {}
            Change::Remove {
                tenant_id,
                extension_id,
                contact,
                expired,
            } => self.send(
                *tenant_id,
                [Some(*extension_id), None],
                &Event::RegistrationDown {
                    at,
                    tenant_id: *tenant_id,
                    extension_id: *extension_id,
                    contact,
                    reason: if *expired { "expired" } else { "removed" },
                },
            ),
        }
    }

    /// Publishes a call start.
    pub fn call_started(&self, start: &CallStart) {
        if !self.active() {
            return;
        }
        self.send(
            start.tenant_id,
            [start.from_extension, start.to_extension],
            &Event::CallStarted {
                at: Timestamp::now().to_rfc3339(),
                call_id: start.id,
                tenant_id: start.tenant_id,
                from_extension_id: start.from_extension,
                from_number: &start.from_number,
                to_extension_id: start.to_extension,
                to_number: &start.to_number,
                did: start.did.as_deref(),
            },
        );
    }

    /// Publishes a change of a live call.
    pub fn call_updated(&self, event: &CallEvent) {
        if !self.active() {
            return;
        }
        let call = CallRef::new(
            event.id,
            event.tenant_id,
            event.from_extension,
            event.to_extension,
        );
        let event_out = match event.kind {
            CallEventKind::Ringing => Event::CallRinging(call),
            CallEventKind::Answered => Event::CallAnswered(call),
            CallEventKind::Held => Event::CallHeld(call),
            CallEventKind::Resumed => Event::CallResumed(call),
            CallEventKind::Dtmf {
                digit,
                from_caller,
                duration_ms,
            } => Event::CallDtmf {
                call,
                digit: digit.to_string(),
                side: if from_caller { "caller" } else { "callee" },
                duration_ms,
            },
        };
        self.send(
            event.tenant_id,
            [event.from_extension, event.to_extension],
            &event_out,
        );
    }

    /// Publishes a call end.
    pub fn call_ended(&self, end: &CallEnd) {
        if !self.active() {
            return;
        }
        let start = &end.start;
        self.send(
            start.tenant_id,
            [start.from_extension, start.to_extension],
            &Event::CallEnded {
                call: CallRef::new(
                    start.id,
                    start.tenant_id,
                    start.from_extension,
                    start.to_extension,
                ),
                disposition: persist::disposition(end.disposition).as_str(),
                hangup_cause: end.cause,
                hangup_side: persist::hangup_side(end.side).as_str(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use switchboard_signalling::core::CallEventKind;

    use super::*;

    #[test]
    fn events_are_published_only_to_subscribers_with_their_audience() {
        let hub = EventHub::new();
        let (tenant, caller, callee) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let event = CallEvent {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            from_extension: Some(caller),
            to_extension: Some(callee),
            kind: CallEventKind::Held,
        };
        hub.call_updated(&event); // nobody listens: dropped
        let mut rx = hub.subscribe();
        hub.call_updated(&event);
        let published = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "the first event was never sent");
        assert_eq!(published.tenant_id, tenant);
        assert_eq!(published.extensions, [Some(caller), Some(callee)]);
        let json: serde_json::Value = serde_json::from_str(&published.json).unwrap();
        assert_eq!(json["type"], "call.held");
        assert_eq!(json["call_id"], event.id.to_string());
    }
}

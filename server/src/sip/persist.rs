//! The record writer: persists registration changes and call records off the signalling
//! task, so a slow database never delays SIP. Records queue in a bounded channel, in order, and
//! whatever has queued is written in one transaction (one commit for a burst). If the queue is
//! full a record is dropped (logged): a binding still works, it would only be
//! forgotten by a restart; a call still connects. A call's end repeats its start, so a call
//! whose start record was lost (full queue or database error) is written whole when it ends.

use std::time::{Duration, Instant};

use switchboard_signalling::core::{CallEnd, CallStart, Disposition, HangupSide};
use switchboard_signalling::peer::Peer;
use switchboard_signalling::registrar::{Binding, Change};
use switchboard_storage::batch::{self, Write};
use switchboard_storage::calls::{self, Call, Direction, Ending};
use switchboard_storage::registrations::Registration;
use switchboard_storage::{Db, Timestamp, Uuid};
use tokio::sync::mpsc;

/// What the writer persists.
#[derive(Debug)]
pub(crate) enum Record {
    /// A registration changed.
    Registration(Persist),
    /// A call started.
    CallStart(CallStart),
    /// A call ended.
    CallEnd(CallEnd),
    /// A write prepared elsewhere (media statistics, recordings).
    Write(Write),
}

/// A change with the wall-clock time its expiry maps to.
#[derive(Debug)]
pub(crate) struct Persist {
    pub(crate) change: Change,
    /// Wall time of `Instant::now()` when the change was made.
    pub(crate) wall_now: Timestamp,
    pub(crate) now: Instant,
}

fn row(
    tenant_id: Uuid,
    extension_id: Uuid,
    binding: &Binding,
    wall_now: Timestamp,
    now: Instant,
) -> Registration {
    let expires_at = wall_now.after(binding.expires_at.saturating_duration_since(now));
    Registration {
        id: binding.id,
        tenant_id,
        extension_id,
        contact: binding.contact.clone(),
        instance_id: binding.instance.clone(),
        reg_id: binding.reg_id.and_then(|r| i32::try_from(r).ok()),
        transport: binding.peer.transport.as_str().to_owned(),
        source: binding.peer.addr.to_string(),
        user_agent: binding.user_agent.clone(),
        call_id: binding.call_id.clone(),
        cseq: i64::from(binding.cseq),
        expires_at,
        created_at: wall_now,
        updated_at: wall_now,
    }
}

/// Records applied in one transaction at most.
const BATCH: usize = 512;

/// Applies records until the channel closes: whatever is queued goes in one transaction.
pub(crate) async fn run(db: Db, mut records: mpsc::Receiver<Record>) {
    let mut queued = Vec::with_capacity(BATCH);
    while records.recv_many(&mut queued, BATCH).await > 0 {
        let writes: Vec<Write> = queued.drain(..).map(write).collect();
        if let Err(error) = batch::apply(&db, &writes).await {
            // One bad write fails its batch: apply them one by one so that only it is lost.
            tracing::warn!(%error, count = writes.len(), "a record batch failed; writing one by one");
            for write in &writes {
                if let Err(error) = batch::apply(&db, std::slice::from_ref(write)).await {
                    tracing::error!(%error, ?write, "could not persist a record");
                }
            }
        }
    }
}

fn write(record: Record) -> Write {
    match record {
        Record::Registration(Persist {
            change,
            wall_now,
            now,
        }) => match change {
            Change::Upsert {
                tenant_id,
                extension_id,
                binding,
                ..
            } => Write::Registration(row(tenant_id, extension_id, &binding, wall_now, now)),
            Change::Remove {
                extension_id,
                contact,
                ..
            } => Write::Unregistration {
                extension_id,
                contact,
            },
        },
        Record::CallStart(start) => Write::CallStart(started(&start)),
        Record::CallEnd(end) => Write::CallEnd {
            start: Box::new(started(&end.start)),
            ending: Box::new(ending(&end)),
        },
        Record::Write(write) => write,
    }
}

fn timestamp(wall_ms: u64) -> Timestamp {
    Timestamp(i64::try_from(wall_ms).unwrap_or(i64::MAX))
}

/// The in-progress record of a call that just started.
fn started(start: &CallStart) -> Call {
    Call {
        id: start.id,
        tenant_id: start.tenant_id,
        sip_call_id: start.sip_call_id.clone(),
        direction: match (start.trunk_id, start.from_extension) {
            (Some(_), Some(_)) => Direction::Outbound,
            (Some(_), None) => Direction::Inbound,
            (None, _) => Direction::Internal,
        },
        from_uri: start.from_uri.clone(),
        to_uri: start.to_uri.clone(),
        from_number: start.from_number.clone(),
        to_number: start.to_number.clone(),
        did: start.did.clone(),
        from_extension_id: start.from_extension,
        to_extension_id: start.to_extension,
        trunk_id: start.trunk_id,
        legs: serde_json::Value::Array(Vec::new()),
        started_at: timestamp(start.started_wall_ms),
        answered_at: None,
        ended_at: None,
        duration_ms: None,
        billsec: None,
        disposition: calls::Disposition::InProgress,
        hangup_cause: None,
        hangup_side: None,
        recording_id: None,
        media_stats: serde_json::Value::Object(serde_json::Map::new()),
    }
}

fn leg(role: &str, peer: &Peer) -> serde_json::Value {
    serde_json::json!({
        "role": role,
        "transport": peer.transport.as_str(),
        "address": peer.addr.to_string(),
    })
}

/// How a call ended, as stored.
pub(crate) fn disposition(disposition: Disposition) -> calls::Disposition {
    match disposition {
        Disposition::Answered => calls::Disposition::Answered,
        Disposition::Busy => calls::Disposition::Busy,
        Disposition::NoAnswer => calls::Disposition::NoAnswer,
        Disposition::Cancelled => calls::Disposition::Cancelled,
        Disposition::Failed => calls::Disposition::Failed,
    }
}

/// Who ended a call, as stored.
pub(crate) fn hangup_side(side: HangupSide) -> calls::HangupSide {
    match side {
        HangupSide::Caller => calls::HangupSide::Caller,
        HangupSide::Callee => calls::HangupSide::Callee,
        HangupSide::System => calls::HangupSide::System,
    }
}

fn ending(end: &CallEnd) -> Ending {
    let mut legs = vec![leg("caller", &end.caller)];
    legs.extend(end.callee.as_ref().map(|callee| leg("callee", callee)));
    // The IVR flow that answered the call: which version, the nodes it went through, and why
    // it ended (null when the call ended under it).
    legs.extend(end.ivr.as_ref().map(|ivr| {
        serde_json::json!({
            "role": "ivr",
            "flow_id": ivr.flow_id,
            "version": ivr.version,
            "path": ivr.path,
            "ended": ivr.ended,
            "out_trunk_id": ivr.out_trunk,
        })
    }));
    Ending {
        answered_at: end.answered_wall_ms.map(timestamp),
        ended_at: timestamp(end.ended_wall_ms),
        disposition: disposition(end.disposition),
        hangup_cause: end.cause.to_owned(),
        hangup_side: hangup_side(end.side),
        // A flow's dial names the callee only after the call started.
        to_extension_id: end.start.to_extension,
        // A call out that failed over names the trunk that took it.
        trunk_id: end.start.trunk_id,
        legs: serde_json::Value::Array(legs),
        media_stats: serde_json::Value::Object(serde_json::Map::new()),
        recording_id: end.recording,
    }
}

/// Converts a stored registration into a binding for the registrar, expiring at the same wall
/// time.
pub(crate) fn binding(
    registration: &Registration,
    wall_now: Timestamp,
    now: Instant,
) -> Option<Binding> {
    let transport = switchboard_signalling::peer::Transport::parse(&registration.transport)?;
    let addr = registration.source.parse().ok()?;
    let left = u64::try_from(registration.expires_at.as_millis() - wall_now.as_millis()).ok()?;
    Some(Binding {
        id: registration.id,
        contact: registration.contact.clone(),
        instance: registration.instance_id.clone(),
        reg_id: registration.reg_id.and_then(|r| u32::try_from(r).ok()),
        peer: switchboard_signalling::peer::Peer {
            transport,
            addr,
            conn: None,
        },
        call_id: registration.call_id.clone(),
        cseq: u32::try_from(registration.cseq).unwrap_or(u32::MAX),
        expires_at: now + Duration::from_millis(left),
        user_agent: registration.user_agent.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use switchboard_signalling::peer::Transport;
    use switchboard_storage::{ConnectOptions, Scope, tenants};

    use super::*;

    async fn db() -> (tempfile::TempDir, Db, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/test.db", dir.path().display());
        let db = Db::connect(&url, &ConnectOptions::default()).await.unwrap();
        let tenant = tenants::create(&db, "Acme", "acme.test").await.unwrap();
        (dir, db, tenant.id)
    }

    fn start(tenant_id: Uuid) -> CallStart {
        CallStart {
            id: Uuid::new_v4(),
            tenant_id,
            sip_call_id: "abc@phone".into(),
            from_uri: "sip:1001@acme.test".into(),
            to_uri: "sip:1002@acme.test".into(),
            from_extension: Some(Uuid::new_v4()),
            from_number: "1001".into(),
            to_extension: Some(Uuid::new_v4()),
            to_number: "1002".into(),
            trunk_id: None,
            did: None,
            started_wall_ms: 1_000_000,
        }
    }

    fn end(start: CallStart) -> CallEnd {
        let peer = |port| Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conn: None,
        };
        CallEnd {
            start,
            answered_wall_ms: Some(1_002_000),
            ended_wall_ms: 1_065_500,
            disposition: Disposition::Answered,
            cause: "normal_clearing",
            side: HangupSide::Callee,
            caller: peer(5060),
            callee: Some(peer(5070)),
            recording: None,
            ivr: None,
        }
    }

    async fn write(db: &Db, records: Vec<Record>) {
        let (tx, rx) = mpsc::channel(8);
        for record in records {
            tx.send(record).await.unwrap();
        }
        drop(tx);
        run(db.clone(), rx).await;
    }

    fn check(call: &Call) {
        assert_eq!(call.disposition, calls::Disposition::Answered);
        assert_eq!(call.hangup_side, Some(calls::HangupSide::Callee));
        assert_eq!(call.hangup_cause.as_deref(), Some("normal_clearing"));
        assert_eq!(call.duration_ms, Some(65_500));
        assert_eq!(call.billsec, Some(63));
        assert_eq!(call.legs[1]["address"], "127.0.0.1:5070");
        assert_eq!(call.legs[0]["role"], "caller");
    }

    #[tokio::test]
    async fn a_call_is_written_at_start_and_completed_at_end() {
        let (_dir, db, tenant) = db().await;
        let start = start(tenant);
        let id = start.id;
        write(&db, vec![Record::CallStart(start.clone())]).await;
        let call = calls::get(&db, Scope::All, None, id).await.unwrap();
        assert_eq!(call.disposition, calls::Disposition::InProgress);
        write(&db, vec![Record::CallEnd(end(start))]).await;
        check(&calls::get(&db, Scope::All, None, id).await.unwrap());
    }

    #[tokio::test]
    async fn a_call_whose_start_was_lost_is_written_whole_at_its_end() {
        let (_dir, db, tenant) = db().await;
        let start = start(tenant);
        let id = start.id;
        // The start never reached the writer (its queue was full).
        write(&db, vec![Record::CallEnd(end(start))]).await;
        let call = calls::get(&db, Scope::All, None, id).await.unwrap();
        check(&call);
        assert_eq!(call.to_number, "1002");
        assert_eq!(call.started_at, Timestamp(1_000_000));
    }
}

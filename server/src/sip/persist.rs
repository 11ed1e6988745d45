//! The registration writer: persists binding changes off the signalling task, so a slow
//! database never delays SIP. Changes queue in a bounded channel; if it is full the change is
//! dropped (and logged): the binding still works, it would only be forgotten by a restart.

use std::time::{Duration, Instant};

use switchboard_signalling::registrar::{Binding, Change};
use switchboard_storage::registrations::{self, Registration};
use switchboard_storage::{Db, Timestamp, Uuid};
use tokio::sync::mpsc;

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

/// Applies changes until the channel closes.
pub(crate) async fn run(db: Db, mut changes: mpsc::Receiver<Persist>) {
    while let Some(Persist {
        change,
        wall_now,
        now,
    }) = changes.recv().await
    {
        let result = match &change {
            Change::Upsert {
                tenant_id,
                extension_id,
                binding,
            } => {
                registrations::upsert(&db, &row(*tenant_id, *extension_id, binding, wall_now, now))
                    .await
            }
            Change::Remove {
                extension_id,
                contact,
                ..
            } => registrations::remove(&db, *extension_id, contact)
                .await
                .map(|_| ()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?change, "could not persist a registration change");
        }
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

//! Many writes in one transaction: the signalling plane's record writer drains its queue
//! into a batch, so a burst of calls and registrations costs one commit instead of one each.

use uuid::Uuid;

use crate::calls::{self, Call, Ending, finish_query, insert_query};
use crate::recordings::{self, Recording, RecordingStatus};
use crate::registrations::{self, Registration, upsert_query};
use crate::{Db, Error, Timestamp, run};

/// One write of a batch.
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or refresh a registration binding.
    Registration(Registration),
    /// Remove the binding of `extension_id` to `contact`.
    Unregistration {
        /// Extension.
        extension_id: Uuid,
        /// Contact URI.
        contact: String,
    },
    /// Insert a call record (in progress, or complete).
    CallStart(Call),
    /// Complete the record that `start` began; if it was never written (its start was lost),
    /// insert it complete.
    CallEnd {
        /// The record as it started.
        start: Box<Call>,
        /// How the call ended.
        ending: Box<Ending>,
    },
    /// Set the media statistics of call `call_id`.
    MediaStats {
        /// The call record.
        call_id: Uuid,
        /// Its statistics.
        stats: serde_json::Value,
    },
    /// Insert a recording row (a recording that started).
    RecordingStart(Box<Recording>),
    /// Mark a recording finished.
    RecordingEnd {
        /// The recording.
        id: Uuid,
        /// Complete or interrupted.
        status: RecordingStatus,
        /// Length.
        duration_ms: i64,
        /// File size.
        size_bytes: i64,
        /// When it was closed.
        at: Timestamp,
    },
}

/// Applies `writes` in order in one transaction: all of them, or (on any error) none.
pub async fn apply(db: &Db, writes: &[Write]) -> Result<(), Error> {
    run!(db, |pool| {
        let mut tx = pool.begin().await?;
        for write in writes {
            match write {
                Write::Registration(registration) => {
                    upsert_query!(registration).execute(&mut *tx).await?;
                }
                Write::Unregistration {
                    extension_id,
                    contact,
                } => {
                    sqlx::query(registrations::REMOVE)
                        .bind(extension_id)
                        .bind(contact)
                        .execute(&mut *tx)
                        .await?;
                }
                Write::CallStart(call) => {
                    let (legs, stats) = (call.legs.to_string(), call.media_stats.to_string());
                    insert_query!(call, &legs, &stats).execute(&mut *tx).await?;
                }
                Write::CallEnd { start, ending } => {
                    let (legs, stats) = (ending.legs.to_string(), ending.media_stats.to_string());
                    let updated = finish_query!(start.id, ending, &legs, &stats)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if updated == 0 {
                        let call = calls::completed(start, ending);
                        insert_query!(&call, &legs, &stats)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Write::MediaStats { call_id, stats } => {
                    sqlx::query(calls::SET_MEDIA_STATS)
                        .bind(call_id)
                        .bind(stats.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                Write::RecordingStart(r) => {
                    sqlx::query(recordings::INSERT)
                        .bind(r.id)
                        .bind(r.tenant_id)
                        .bind(r.call_id)
                        .bind(r.extension_id)
                        .bind(r.kind.as_str())
                        .bind(r.status.as_str())
                        .bind(&r.path)
                        .bind(r.duration_ms)
                        .bind(r.channels)
                        .bind(r.sample_rate)
                        .bind(r.size_bytes)
                        .bind(r.created_at)
                        .bind(r.completed_at)
                        .execute(&mut *tx)
                        .await?;
                }
                Write::RecordingEnd {
                    id,
                    status,
                    duration_ms,
                    size_bytes,
                    at,
                } => {
                    sqlx::query(recordings::COMPLETE)
                        .bind(id)
                        .bind(status.as_str())
                        .bind(duration_ms)
                        .bind(size_bytes)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::calls::{Direction, Disposition, HangupSide};
    use crate::testing::each_db;
    use crate::{Scope, Timestamp, tenants};

    fn call(tenant_id: Uuid) -> Call {
        Call {
            id: Uuid::now_v7(),
            tenant_id,
            sip_call_id: "c@x".into(),
            direction: Direction::Internal,
            from_uri: "sip:1001@x".into(),
            to_uri: "sip:1002@x".into(),
            from_number: "1001".into(),
            to_number: "1002".into(),
            did: None,
            from_extension_id: None,
            to_extension_id: None,
            trunk_id: None,
            legs: json!([]),
            started_at: Timestamp(10_000),
            answered_at: None,
            ended_at: None,
            duration_ms: None,
            billsec: None,
            disposition: Disposition::InProgress,
            hangup_cause: None,
            hangup_side: None,
            recording_id: None,
            media_stats: json!({}),
        }
    }

    fn ending() -> Ending {
        Ending {
            answered_at: Some(Timestamp(12_000)),
            ended_at: Timestamp(75_500),
            disposition: Disposition::Answered,
            hangup_cause: "normal_clearing".into(),
            hangup_side: HangupSide::Caller,
            to_extension_id: None,
            trunk_id: None,
            legs: json!([{"role": "caller"}]),
            media_stats: json!({"packets": 1}),
            recording_id: None,
        }
    }

    #[tokio::test]
    async fn a_batch_starts_ends_and_rewrites_lost_starts() {
        each_db(|db| async move {
            let tenant = tenants::create(&db, "T", "t.test").await.unwrap().id;
            let (kept, lost, open) = (call(tenant), call(tenant), call(tenant));
            let end = |start: &Call| Write::CallEnd {
                start: Box::new(start.clone()),
                ending: Box::new(ending()),
            };
            apply(
                &db,
                &[
                    Write::CallStart(kept.clone()),
                    Write::CallStart(open.clone()),
                ],
            )
            .await
            .unwrap();
            // `lost` never had its start written: its end writes it whole.
            apply(&db, &[end(&kept), end(&lost)]).await.unwrap();
            for start in [&kept, &lost] {
                let stored = calls::get(&db, Scope::All, None, start.id).await.unwrap();
                assert_eq!(stored, calls::completed(start, &ending()));
                assert_eq!(
                    (stored.duration_ms, stored.billsec),
                    (Some(65_500), Some(63))
                );
            }
            let open = calls::get(&db, Scope::All, None, open.id).await.unwrap();
            assert_eq!(open.disposition, Disposition::InProgress);

            // Media statistics may land before the end; an end without statistics keeps them.
            let recording = Recording {
                id: Uuid::now_v7(),
                tenant_id: tenant,
                call_id: Some(open.id),
                extension_id: None,
                kind: recordings::RecordingKind::Call,
                status: RecordingStatus::Recording,
                path: "r.wav".into(),
                duration_ms: 0,
                channels: 2,
                sample_rate: 8000,
                size_bytes: 0,
                created_at: Timestamp(11_000),
                completed_at: None,
            };
            let stats = json!({"caller": {"packets": 10}});
            let started = Box::new(open.clone());
            apply(
                &db,
                &[
                    Write::RecordingStart(Box::new(recording.clone())),
                    Write::MediaStats {
                        call_id: open.id,
                        stats: stats.clone(),
                    },
                ],
            )
            .await
            .unwrap();
            assert_eq!(
                recordings::in_progress(&db).await.unwrap(),
                std::slice::from_ref(&recording)
            );
            apply(
                &db,
                &[
                    Write::CallEnd {
                        start: started,
                        ending: Box::new(Ending {
                            media_stats: json!({}),
                            ..ending()
                        }),
                    },
                    Write::RecordingEnd {
                        id: recording.id,
                        status: RecordingStatus::Complete,
                        duration_ms: 4_000,
                        size_bytes: 64_044,
                        at: Timestamp(80_000),
                    },
                ],
            )
            .await
            .unwrap();
            let closed = calls::get(&db, Scope::All, None, open.id).await.unwrap();
            assert_eq!(closed.media_stats, stats);
            assert!(recordings::in_progress(&db).await.unwrap().is_empty());
            let stored = recordings::get(&db, Scope::All, None, recording.id)
                .await
                .unwrap();
            assert_eq!(
                (stored.status, stored.duration_ms, stored.size_bytes),
                (RecordingStatus::Complete, 4_000, 64_044)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_failing_write_rolls_back_its_whole_batch() {
        each_db(|db| async move {
            let tenant = tenants::create(&db, "T", "t.test").await.unwrap().id;
            let good = call(tenant);
            let orphan = call(Uuid::now_v7()); // no such tenant: the foreign key refuses it
            let result = apply(
                &db,
                &[Write::CallStart(good.clone()), Write::CallStart(orphan)],
            )
            .await;
            assert!(result.is_err());
            assert!(calls::get(&db, Scope::All, None, good.id).await.is_err());
        })
        .await;
    }
}

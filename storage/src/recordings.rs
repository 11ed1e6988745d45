//! Recordings: call recordings (stereo WAV) and voicemail messages. The audio lives in a file
//! under the data directory; the row says where, what format and whether it is complete.

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

text_enum! {
    /// What was recorded.
    pub enum RecordingKind {
        /// A call, caller left and callee right.
        Call = "call",
        /// A voicemail message left for an extension.
        Voicemail = "voicemail",
    }
}

text_enum! {
    /// Whether the file is finished.
    pub enum RecordingStatus {
        /// Being written.
        Recording = "recording",
        /// Closed normally.
        Complete = "complete",
        /// The server stopped mid-recording; the header was repaired at the next start.
        Interrupted = "interrupted",
    }
}

/// A recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Recording {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// The recorded call, if any.
    pub call_id: Option<Uuid>,
    /// The voicemail box (extension), for voicemail.
    pub extension_id: Option<Uuid>,
    /// Kind.
    #[sqlx(try_from = "String")]
    pub kind: RecordingKind,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: RecordingStatus,
    /// File path on the server (not exposed by the API).
    #[serde(skip)]
    pub path: String,
    /// Length in milliseconds.
    pub duration_ms: i64,
    /// Channels (2 for calls).
    pub channels: i32,
    /// Sample rate in Hz.
    pub sample_rate: i32,
    /// File size in bytes.
    pub size_bytes: i64,
    /// When recording started.
    pub created_at: Timestamp,
    /// When the file was closed.
    pub completed_at: Option<Timestamp>,
}

const COLUMNS: &str = "id, tenant_id, call_id, extension_id, kind, status, path, duration_ms, \
    channels, sample_rate, size_bytes, created_at, completed_at";

/// Which recordings a `user` may see: those of calls involving their extensions and the
/// voicemail of their extensions. `$U` is replaced by the parameter holding the user id.
const OWNER_CLAUSE: &str = "($U IS NULL \
    OR extension_id IN (SELECT id FROM extensions WHERE user_id = $U) \
    OR call_id IN (SELECT c.id FROM calls c WHERE \
        c.from_extension_id IN (SELECT id FROM extensions WHERE user_id = $U) \
        OR c.to_extension_id IN (SELECT id FROM extensions WHERE user_id = $U)))";

pub(crate) const INSERT: &str = "INSERT INTO recordings (id, tenant_id, call_id, extension_id, \
    kind, status, path, duration_ms, channels, sample_rate, size_bytes, created_at, completed_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

pub(crate) const COMPLETE: &str = "UPDATE recordings SET status = $2, duration_ms = $3, \
    size_bytes = $4, completed_at = $5 WHERE id = $1";

/// Inserts `recording`.
pub async fn insert(db: &Db, recording: &Recording) -> Result<(), Error> {
    exec!(db, |pool| sqlx::query(INSERT)
        .bind(recording.id)
        .bind(recording.tenant_id)
        .bind(recording.call_id)
        .bind(recording.extension_id)
        .bind(recording.kind.as_str())
        .bind(recording.status.as_str())
        .bind(&recording.path)
        .bind(recording.duration_ms)
        .bind(recording.channels)
        .bind(recording.sample_rate)
        .bind(recording.size_bytes)
        .bind(recording.created_at)
        .bind(recording.completed_at))?;
    Ok(())
}

/// Marks a recording finished (or interrupted) with its final length and size.
pub async fn complete(
    db: &Db,
    id: Uuid,
    status: RecordingStatus,
    duration_ms: i64,
    size_bytes: i64,
    at: Timestamp,
) -> Result<(), Error> {
    one_row(exec!(db, |pool| sqlx::query(COMPLETE)
        .bind(id)
        .bind(status.as_str())
        .bind(duration_ms)
        .bind(size_bytes)
        .bind(at))?)
}

/// Filters for [`list`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Only recordings of this call.
    pub call_id: Option<Uuid>,
    /// Only this kind (e.g. voicemail).
    pub kind: Option<RecordingKind>,
    /// Only the voicemail box of this extension.
    pub extension_id: Option<Uuid>,
    /// Only recordings this user may see (see the module docs).
    pub owner: Option<Uuid>,
}

/// Recordings visible in `scope` matching `filter`, newest first.
pub async fn list(
    db: &Db,
    scope: Scope,
    filter: Filter,
    page: &PageRequest,
) -> Result<Page<Recording>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM recordings WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR call_id = $2) AND {} AND ($4 IS NULL OR id < $4) \
         AND ($6 IS NULL OR kind = $6) AND ($7 IS NULL OR extension_id = $7) \
         ORDER BY id DESC LIMIT $5",
        OWNER_CLAUSE.replace("$U", "$3")
    );
    let rows: Vec<Recording> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(filter.call_id)
        .bind(filter.owner)
        .bind(page.cursor)
        .bind(page.fetch())
        .bind(filter.kind.map(RecordingKind::as_str))
        .bind(filter.extension_id)
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |r| r.id))
}

/// One recording visible in `scope` (and to `owner`, when given).
pub async fn get(db: &Db, scope: Scope, owner: Option<Uuid>, id: Uuid) -> Result<Recording, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM recordings WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) AND {}",
        OWNER_CLAUSE.replace("$U", "$3")
    );
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .bind(owner)
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// Every recording still being written, in any tenant: at start-up these are the files a
/// stopped server left open.
pub async fn in_progress(db: &Db) -> Result<Vec<Recording>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM recordings WHERE status = 'recording' ORDER BY id");
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .fetch_all(pool)
    .await)?)
}

/// Deletes the row of a recording visible in `scope`; the caller removes the file.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "DELETE FROM recordings WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(scope.tenant()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{calls, extensions, new_id, tenants, users};

    #[tokio::test]
    async fn owners_see_their_calls_and_voicemail_only() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let owner = users::create(
                &db,
                users::NewUser {
                    tenant_id: a.id,
                    email: "o@a.example".into(),
                    display_name: String::new(),
                    password_hash: "x".into(),
                    role: users::Role::User,
                },
            )
            .await
            .unwrap();
            let mut mine = sample_extension(a.id, "1001");
            mine.user_id = Some(owner.id);
            let other = sample_extension(a.id, "1002");
            let third = sample_extension(a.id, "1003");
            for e in [&mine, &other, &third] {
                extensions::create(&db, e, b"s").await.unwrap();
            }
            let my_call = calls::tests::sample(a.id, &other, "1001", 1);
            let my_call = calls::Call {
                to_extension_id: Some(mine.id),
                ..my_call
            };
            let their_call = calls::tests::sample(a.id, &other, "1003", 2);
            calls::insert(&db, &my_call).await.unwrap();
            calls::insert(&db, &their_call).await.unwrap();

            let rec = |call_id: Option<Uuid>, extension_id: Option<Uuid>, kind| Recording {
                id: new_id(),
                tenant_id: a.id,
                call_id,
                extension_id,
                kind,
                status: RecordingStatus::Recording,
                path: "/tmp/x.wav".into(),
                duration_ms: 0,
                channels: 2,
                sample_rate: 8000,
                size_bytes: 44,
                created_at: Timestamp::now(),
                completed_at: None,
            };
            let r_mine = rec(Some(my_call.id), None, RecordingKind::Call);
            let r_theirs = rec(Some(their_call.id), None, RecordingKind::Call);
            let r_vm = rec(None, Some(mine.id), RecordingKind::Voicemail);
            for r in [&r_mine, &r_theirs, &r_vm] {
                insert(&db, r).await.unwrap();
            }
            let visible = list(
                &db,
                Scope::Tenant(a.id),
                Filter {
                    owner: Some(owner.id),
                    ..Filter::default()
                },
                &PageRequest::default(),
            )
            .await
            .unwrap();
            let mut ids: Vec<_> = visible.items.iter().map(|r| r.id).collect();
            ids.sort();
            let mut expected = vec![r_mine.id, r_vm.id];
            expected.sort();
            assert_eq!(ids, expected);
            assert!(matches!(
                get(&db, Scope::Tenant(a.id), Some(owner.id), r_theirs.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(
                get(&db, Scope::Tenant(a.id), None, r_theirs.id)
                    .await
                    .unwrap()
                    .id,
                r_theirs.id
            );
            let by_call = list(
                &db,
                Scope::All,
                Filter {
                    call_id: Some(their_call.id),
                    ..Filter::default()
                },
                &PageRequest::default(),
            )
            .await
            .unwrap();
            assert_eq!(by_call.items.len(), 1);
            let voicemail_box = list(
                &db,
                Scope::All,
                Filter {
                    kind: Some(RecordingKind::Voicemail),
                    extension_id: Some(mine.id),
                    ..Filter::default()
                },
                &PageRequest::default(),
            )
            .await
            .unwrap();
            assert_eq!(
                voicemail_box.items.iter().map(|r| r.id).collect::<Vec<_>>(),
                [r_vm.id]
            );

            complete(
                &db,
                r_mine.id,
                RecordingStatus::Complete,
                5_000,
                80_044,
                Timestamp(9),
            )
            .await
            .unwrap();
            let done = get(&db, Scope::All, None, r_mine.id).await.unwrap();
            assert_eq!(
                (done.status, done.duration_ms, done.size_bytes),
                (RecordingStatus::Complete, 5_000, 80_044)
            );
            delete(&db, Scope::Tenant(a.id), r_mine.id).await.unwrap();
            assert!(matches!(
                get(&db, Scope::All, None, r_mine.id).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}

//! Call detail records. A row is written when a call starts (disposition `in_progress`) and
//! completed when it ends, so a crash leaves a row that the next start closes as `interrupted`.

use std::sync::LazyLock;

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

text_enum! {
    /// Where a call came from and went.
    pub enum Direction {
        /// From a trunk to the tenant.
        Inbound = "inbound",
        /// From an extension out through a trunk.
        Outbound = "outbound",
        /// Between extensions of the tenant.
        Internal = "internal",
    }
}

text_enum! {
    /// How a call ended.
    pub enum Disposition {
        /// Still up (or the node died; see `interrupted`).
        InProgress = "in_progress",
        /// Answered and then hung up.
        Answered = "answered",
        /// The callee was busy.
        Busy = "busy",
        /// Nobody answered in time.
        NoAnswer = "no_answer",
        /// The caller gave up before an answer.
        Cancelled = "cancelled",
        /// Refused or failed (routing, limits, permissions, errors).
        Failed = "failed",
        /// The server stopped while the call was up; closed at the next start.
        Interrupted = "interrupted",
    }
}

text_enum! {
    /// Which side ended a call.
    pub enum HangupSide {
        /// The calling party.
        Caller = "caller",
        /// The called party.
        Callee = "callee",
        /// Switchboard itself (timeouts, limits, shutdown).
        System = "system",
    }
}

/// A call detail record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Call {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// SIP Call-ID of the inbound leg.
    pub sip_call_id: String,
    /// Direction.
    pub direction: Direction,
    /// From URI of the inbound leg.
    pub from_uri: String,
    /// Request URI of the inbound leg.
    pub to_uri: String,
    /// Calling number (extension number or E.164).
    pub from_number: String,
    /// Called number (extension number or E.164).
    pub to_number: String,
    /// The DID the call arrived on, for inbound calls.
    pub did: Option<String>,
    /// Calling extension, if any.
    pub from_extension_id: Option<Uuid>,
    /// Called extension that answered (or was tried), if any.
    pub to_extension_id: Option<Uuid>,
    /// Trunk used, if any.
    pub trunk_id: Option<Uuid>,
    /// The legs of the call (one object per leg).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub legs: serde_json::Value,
    /// When the INVITE arrived.
    pub started_at: Timestamp,
    /// When it was answered.
    pub answered_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Milliseconds from start to end.
    pub duration_ms: Option<i64>,
    /// Whole seconds from answer to end (what carriers bill).
    pub billsec: Option<i64>,
    /// How it ended.
    pub disposition: Disposition,
    /// Why it ended, e.g. `normal_clearing`, `user_busy`, `no_route`.
    pub hangup_cause: Option<String>,
    /// Who ended it.
    pub hangup_side: Option<HangupSide>,
    /// Recording of the call, if any.
    pub recording_id: Option<Uuid>,
    /// Media statistics per leg (packets, loss, jitter, RTT, MOS).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub media_stats: serde_json::Value,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    sip_call_id: String,
    direction: String,
    from_uri: String,
    to_uri: String,
    from_number: String,
    to_number: String,
    did: Option<String>,
    from_extension_id: Option<Uuid>,
    to_extension_id: Option<Uuid>,
    trunk_id: Option<Uuid>,
    legs: String,
    started_at: Timestamp,
    answered_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    duration_ms: Option<i64>,
    billsec: Option<i64>,
    disposition: String,
    hangup_cause: Option<String>,
    hangup_side: Option<String>,
    recording_id: Option<Uuid>,
    media_stats: String,
}

impl TryFrom<Row> for Call {
    type Error = Error;
    fn try_from(row: Row) -> Result<Self, Error> {
        let json = |text: &str| {
            serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("call JSON: {e}")))
        };
        Ok(Self {
            id: row.id,
            tenant_id: row.tenant_id,
            sip_call_id: row.sip_call_id,
            direction: row.direction.parse()?,
            from_uri: row.from_uri,
            to_uri: row.to_uri,
            from_number: row.from_number,
            to_number: row.to_number,
            did: row.did,
            from_extension_id: row.from_extension_id,
            to_extension_id: row.to_extension_id,
            trunk_id: row.trunk_id,
            legs: json(&row.legs)?,
            started_at: row.started_at,
            answered_at: row.answered_at,
            ended_at: row.ended_at,
            duration_ms: row.duration_ms,
            billsec: row.billsec,
            disposition: row.disposition.parse()?,
            hangup_cause: row.hangup_cause,
            hangup_side: row.hangup_side.map(|s| s.parse()).transpose()?,
            recording_id: row.recording_id,
            media_stats: json(&row.media_stats)?,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, sip_call_id, direction, from_uri, to_uri, from_number, \
    to_number, did, from_extension_id, to_extension_id, trunk_id, legs, started_at, answered_at, \
    ended_at, duration_ms, billsec, disposition, hangup_cause, hangup_side, recording_id, \
    media_stats";

pub(crate) static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO calls ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
    )
});

/// The INSERT of `$call` (a [`Call`]) with its JSON columns as text, for either backend.
macro_rules! insert_query {
    ($call:expr, $legs:expr, $stats:expr) => {{
        let call: &$crate::calls::Call = $call;
        sqlx::query($crate::calls::INSERT.as_str())
            .bind(call.id)
            .bind(call.tenant_id)
            .bind(&call.sip_call_id)
            .bind(call.direction.as_str())
            .bind(&call.from_uri)
            .bind(&call.to_uri)
            .bind(&call.from_number)
            .bind(&call.to_number)
            .bind(&call.did)
            .bind(call.from_extension_id)
            .bind(call.to_extension_id)
            .bind(call.trunk_id)
            .bind($legs)
            .bind(call.started_at)
            .bind(call.answered_at)
            .bind(call.ended_at)
            .bind(call.duration_ms)
            .bind(call.billsec)
            .bind(call.disposition.as_str())
            .bind(&call.hangup_cause)
            .bind(call.hangup_side.map($crate::calls::HangupSide::as_str))
            .bind(call.recording_id)
            .bind($stats)
    }};
}
pub(crate) use insert_query;

/// Writes a whole call record (at call start, or a complete record after the fact).
pub async fn insert(db: &Db, call: &Call) -> Result<(), Error> {
    let (legs, stats) = (call.legs.to_string(), call.media_stats.to_string());
    exec!(db, |pool| insert_query!(call, &legs, &stats))?;
    Ok(())
}

/// How a call ended, for [`finish`].
#[derive(Clone, Debug)]
pub struct Ending {
    /// When it was answered, if it was.
    pub answered_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Timestamp,
    /// How it ended.
    pub disposition: Disposition,
    /// Why.
    pub hangup_cause: String,
    /// Who ended it.
    pub hangup_side: HangupSide,
    /// The callee extension that answered, if any.
    pub to_extension_id: Option<Uuid>,
    /// The trunk the call went through, if any (a call out may fail over to another route's
    /// trunk after it started); absent keeps what is stored.
    pub trunk_id: Option<Uuid>,
    /// Legs of the call.
    pub legs: serde_json::Value,
    /// Media statistics; an empty object keeps what is stored (the media plane may report its
    /// statistics before or after the call's end is written).
    pub media_stats: serde_json::Value,
    /// Recording, if any.
    pub recording_id: Option<Uuid>,
}

pub(crate) const FINISH: &str = "UPDATE calls SET answered_at = $2, ended_at = $3, \
    duration_ms = $3 - started_at, billsec = CASE WHEN $2 IS NULL THEN 0 ELSE ($3 - $2) / 1000 END, \
    disposition = $4, hangup_cause = $5, hangup_side = $6, \
    to_extension_id = COALESCE($7, to_extension_id), legs = $8, \
    media_stats = CASE WHEN $9 = '{}' THEN media_stats ELSE $9 END, \
    recording_id = COALESCE($10, recording_id), trunk_id = COALESCE($11, trunk_id) \
    WHERE id = $1 AND ended_at IS NULL";

/// The UPDATE completing call `$id` with `$ending` (an [`Ending`]), for either backend.
macro_rules! finish_query {
    ($id:expr, $ending:expr, $legs:expr, $stats:expr) => {{
        let ending: &$crate::calls::Ending = $ending;
        sqlx::query($crate::calls::FINISH)
            .bind($id)
            .bind(ending.answered_at)
            .bind(ending.ended_at)
            .bind(ending.disposition.as_str())
            .bind(&ending.hangup_cause)
            .bind(ending.hangup_side.as_str())
            .bind(ending.to_extension_id)
            .bind($legs)
            .bind($stats)
            .bind(ending.recording_id)
            .bind(ending.trunk_id)
    }};
}
pub(crate) use finish_query;

/// Sets the media statistics of a call record.
pub(crate) const SET_MEDIA_STATS: &str = "UPDATE calls SET media_stats = $2 WHERE id = $1";

/// Completes the record of a call that is still in progress.
pub async fn finish(db: &Db, id: Uuid, ending: &Ending) -> Result<(), Error> {
    let (legs, stats) = (ending.legs.to_string(), ending.media_stats.to_string());
    one_row(exec!(db, |pool| finish_query!(id, ending, &legs, &stats))?)
}

/// The complete record of a call that started as `start` and ended as `ending` (what
/// [`finish`] makes of the stored row).
pub fn completed(start: &Call, ending: &Ending) -> Call {
    let ended = ending.ended_at;
    Call {
        answered_at: ending.answered_at,
        ended_at: Some(ended),
        duration_ms: Some(ended.as_millis() - start.started_at.as_millis()),
        billsec: Some(ending.answered_at.map_or(0, |answered| {
            (ended.as_millis() - answered.as_millis()) / 1000
        })),
        disposition: ending.disposition,
        hangup_cause: Some(ending.hangup_cause.clone()),
        hangup_side: Some(ending.hangup_side),
        to_extension_id: ending.to_extension_id.or(start.to_extension_id),
        trunk_id: ending.trunk_id.or(start.trunk_id),
        legs: ending.legs.clone(),
        media_stats: ending.media_stats.clone(),
        recording_id: ending.recording_id.or(start.recording_id),
        ..start.clone()
    }
}

/// Closes every record still in progress as `interrupted` (the server stopped mid-call; run
/// at start-up), linking the call's recording if one was started. Returns how many were
/// closed.
pub async fn close_interrupted(db: &Db, at: Timestamp) -> Result<u64, Error> {
    const SQL: &str = "UPDATE calls SET ended_at = $1, duration_ms = $1 - started_at, \
        billsec = CASE WHEN answered_at IS NULL THEN 0 ELSE ($1 - answered_at) / 1000 END, \
        disposition = 'interrupted', hangup_cause = 'server_stopped', hangup_side = 'system', \
        recording_id = COALESCE(recording_id, \
            (SELECT r.id FROM recordings r WHERE r.call_id = calls.id ORDER BY r.id LIMIT 1)) \
        WHERE ended_at IS NULL";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(at))?)
}

/// Filters for [`list`]; every field narrows the result.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Started at or after.
    pub since: Option<Timestamp>,
    /// Started before.
    pub until: Option<Timestamp>,
    /// Involving the extension with this number (as caller or callee).
    pub extension: Option<String>,
    /// Involving this number (calling, called or DID).
    pub number: Option<String>,
    /// In this direction.
    pub direction: Option<Direction>,
    /// With this disposition.
    pub disposition: Option<Disposition>,
    /// Only calls of extensions owned by this user (a `user` sees only their own calls).
    pub owner: Option<Uuid>,
}

/// Answered milliseconds of calls out through trunks per tenant, of calls answered since
/// `since` (what the daily cap on minutes out counts).
pub async fn outbound_ms_since(db: &Db, since: Timestamp) -> Result<Vec<(Uuid, i64)>, Error> {
    const SQL: &str = "SELECT tenant_id, CAST(SUM(ended_at - answered_at) AS BIGINT) FROM calls \
        WHERE direction = 'outbound' AND answered_at >= $1 AND ended_at IS NOT NULL \
        GROUP BY tenant_id";
    Ok(run!(db, |pool| sqlx::query_as(SQL)
        .bind(since)
        .fetch_all(pool)
        .await)?)
}

/// Call records visible in `scope` matching `filter`, newest first.
pub async fn list(
    db: &Db,
    scope: Scope,
    filter: &Filter,
    page: &PageRequest,
) -> Result<Page<Call>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR started_at >= $2) AND ($3 IS NULL OR started_at < $3) \
         AND ($4 IS NULL OR from_extension_id IN (SELECT id FROM extensions WHERE number = $4 \
              AND ($1 IS NULL OR tenant_id = $1)) \
              OR to_extension_id IN (SELECT id FROM extensions WHERE number = $4 \
              AND ($1 IS NULL OR tenant_id = $1))) \
         AND ($5 IS NULL OR from_number = $5 OR to_number = $5 OR did = $5) \
         AND ($6 IS NULL OR direction = $6) AND ($7 IS NULL OR disposition = $7) \
         AND ($8 IS NULL OR from_extension_id IN (SELECT id FROM extensions WHERE user_id = $8) \
              OR to_extension_id IN (SELECT id FROM extensions WHERE user_id = $8)) \
         AND ($9 IS NULL OR id < $9) ORDER BY id DESC LIMIT $10"
    );
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(filter.since)
        .bind(filter.until)
        .bind(&filter.extension)
        .bind(&filter.number)
        .bind(filter.direction.map(Direction::as_str))
        .bind(filter.disposition.map(Disposition::as_str))
        .bind(filter.owner)
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    let calls = rows
        .into_iter()
        .map(Call::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(calls, page, |c| c.id))
}

/// One call record visible in `scope` (and, with `owner`, involving that user's extensions).
pub async fn get(db: &Db, scope: Scope, owner: Option<Uuid>, id: Uuid) -> Result<Call, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) \
         AND ($3 IS NULL OR from_extension_id IN (SELECT id FROM extensions WHERE user_id = $3) \
              OR to_extension_id IN (SELECT id FROM extensions WHERE user_id = $3))"
    );
    let row: Option<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .bind(owner)
        .fetch_optional(pool)
        .await)?;
    row.ok_or(Error::NotFound)?.try_into()
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{extensions, new_id, tenants, users};

    pub(crate) fn sample(
        tenant_id: Uuid,
        from: &extensions::Extension,
        to_number: &str,
        at: i64,
    ) -> Call {
        Call {
            id: new_id(),
            tenant_id,
            sip_call_id: format!("{}@test", new_id()),
            direction: Direction::Internal,
            from_uri: format!("sip:{}@a.example", from.number),
            to_uri: format!("sip:{to_number}@a.example"),
            from_number: from.number.clone(),
            to_number: to_number.into(),
            did: None,
            from_extension_id: Some(from.id),
            to_extension_id: None,
            trunk_id: None,
            legs: json!([]),
            started_at: Timestamp(at),
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

    #[tokio::test]
    async fn outbound_minutes_are_summed_per_tenant_since_a_time() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let e1 = sample_extension(a.id, "1001");
            extensions::create(&db, &e1, b"s").await.unwrap();
            let call = |answered: i64, ended: i64, direction: Direction| Call {
                direction,
                answered_at: Some(Timestamp(answered)),
                ended_at: Some(Timestamp(ended)),
                disposition: Disposition::Answered,
                ..sample(a.id, &e1, "+15551234567", answered - 1000)
            };
            for c in [
                call(10_000, 70_000, Direction::Outbound),
                call(100_000, 130_000, Direction::Outbound),
                // Before the day began, and not out: not counted.
                call(1_000, 5_000, Direction::Outbound),
                call(100_000, 900_000, Direction::Internal),
            ] {
                insert(&db, &c).await.unwrap();
            }
            let used = outbound_ms_since(&db, Timestamp(9_000)).await.unwrap();
            assert_eq!(used, [(a.id, 90_000)]);
        })
        .await;
    }

    #[tokio::test]
    async fn finish_computes_durations_and_filters_work() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
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
            let mut e1 = sample_extension(a.id, "1001");
            e1.user_id = Some(owner.id);
            let e2 = sample_extension(a.id, "1002");
            extensions::create(&db, &e1, b"s").await.unwrap();
            extensions::create(&db, &e2, b"s").await.unwrap();

            let answered = sample(a.id, &e1, "1002", 1_000_000);
            insert(&db, &answered).await.unwrap();
            // The trunk a call out failed over to replaces the one it started with.
            let trunk = crate::new_id();
            finish(
                &db,
                answered.id,
                &Ending {
                    answered_at: Some(Timestamp(1_002_000)),
                    ended_at: Timestamp(1_065_500),
                    disposition: Disposition::Answered,
                    hangup_cause: "normal_clearing".into(),
                    hangup_side: HangupSide::Callee,
                    to_extension_id: Some(e2.id),
                    trunk_id: Some(trunk),
                    legs: json!([{"leg": "a"}, {"leg": "b"}]),
                    media_stats: json!({"mos": 4.3}),
                    recording_id: None,
                },
            )
            .await
            .unwrap();
            let done = get(&db, Scope::Tenant(a.id), None, answered.id)
                .await
                .unwrap();
            assert_eq!((done.duration_ms, done.billsec), (Some(65_500), Some(63)));
            assert_eq!(done.disposition, Disposition::Answered);
            assert_eq!(done.to_extension_id, Some(e2.id));
            assert_eq!(done.trunk_id, Some(trunk));
            // A finished call can't be finished again.
            let again = Ending {
                ended_at: Timestamp(2_000_000),
                ..ending_failed()
            };
            assert!(matches!(
                finish(&db, answered.id, &again).await,
                Err(Error::NotFound)
            ));

            let busy = Call {
                to_extension_id: Some(e1.id),
                ..sample(a.id, &e2, "1001", 2_000_000)
            };
            insert(&db, &busy).await.unwrap();
            finish(
                &db,
                busy.id,
                &Ending {
                    to_extension_id: Some(e1.id),
                    trunk_id: None,
                    ..ending_failed()
                },
            )
            .await
            .unwrap();
            assert_eq!(
                get(&db, Scope::All, None, busy.id).await.unwrap().billsec,
                Some(0)
            );

            let page = |filter: Filter| {
                let db = db.clone();
                async move {
                    list(&db, Scope::Tenant(a.id), &filter, &PageRequest::default())
                        .await
                        .unwrap()
                        .items
                        .into_iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(page(Filter::default()).await, [busy.id, answered.id]);
            assert_eq!(
                page(Filter {
                    since: Some(Timestamp(1_500_000)),
                    ..Filter::default()
                })
                .await,
                [busy.id]
            );
            assert_eq!(
                page(Filter {
                    until: Some(Timestamp(1_500_000)),
                    ..Filter::default()
                })
                .await,
                [answered.id]
            );
            assert_eq!(
                page(Filter {
                    disposition: Some(Disposition::Failed),
                    ..Filter::default()
                })
                .await,
                [busy.id]
            );
            assert_eq!(
                page(Filter {
                    extension: Some("1002".into()),
                    ..Filter::default()
                })
                .await,
                [busy.id, answered.id]
            );
            assert_eq!(
                page(Filter {
                    number: Some("1001".into()),
                    ..Filter::default()
                })
                .await,
                [busy.id, answered.id]
            );
            assert_eq!(
                page(Filter {
                    direction: Some(Direction::Inbound),
                    ..Filter::default()
                })
                .await,
                Vec::<Uuid>::new()
            );
            // The owner of 1001 sees both: 1001 called in one and was called in the other.
            assert_eq!(
                page(Filter {
                    owner: Some(owner.id),
                    ..Filter::default()
                })
                .await
                .len(),
                2
            );
            assert_eq!(
                page(Filter {
                    owner: Some(new_id()),
                    ..Filter::default()
                })
                .await,
                Vec::<Uuid>::new()
            );
            assert!(matches!(
                get(&db, Scope::Tenant(b.id), None, busy.id).await,
                Err(Error::NotFound)
            ));
            assert!(matches!(
                get(&db, Scope::All, Some(new_id()), busy.id).await,
                Err(Error::NotFound)
            ));

            // Paging newest first.
            let first = list(
                &db,
                Scope::All,
                &Filter::default(),
                &PageRequest {
                    limit: 1,
                    cursor: None,
                },
            )
            .await
            .unwrap();
            assert_eq!(first.items[0].id, busy.id);
            let second = list(
                &db,
                Scope::All,
                &Filter::default(),
                &PageRequest {
                    limit: 1,
                    cursor: first.next_cursor,
                },
            )
            .await
            .unwrap();
            assert_eq!(
                (second.items[0].id, second.next_cursor),
                (answered.id, None)
            );
            // A record left open by a crash is closed as interrupted.
            let open = sample(a.id, &e1, "1002", 3_000_000);
            insert(&db, &open).await.unwrap();
            assert_eq!(
                close_interrupted(&db, Timestamp(3_010_000)).await.unwrap(),
                1
            );
            let closed = get(&db, Scope::All, None, open.id).await.unwrap();
            assert_eq!(
                (
                    closed.disposition,
                    closed.duration_ms,
                    closed.hangup_cause.as_deref()
                ),
                (
                    Disposition::Interrupted,
                    Some(10_000),
                    Some("server_stopped")
                )
            );
            assert_eq!(
                close_interrupted(&db, Timestamp(3_020_000)).await.unwrap(),
                0
            );
        })
        .await;
    }

    fn ending_failed() -> Ending {
        Ending {
            answered_at: None,
            ended_at: Timestamp(2_001_000),
            disposition: Disposition::Failed,
            hangup_cause: "user_busy".into(),
            hangup_side: HangupSide::Callee,
            to_extension_id: None,
            trunk_id: None,
            legs: json!([]),
            media_stats: json!({}),
            recording_id: None,
        }
    }
}

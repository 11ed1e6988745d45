//! SIP registrations (bindings of an extension to contact addresses), persisted so that a
//! restart loses none: the registrar writes each change here and reloads the live ones at start.

use std::sync::LazyLock;

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Scope, Timestamp, exec, run};

/// One contact binding of an extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registration {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// The registered extension.
    pub extension_id: Uuid,
    /// Contact URI as registered.
    pub contact: String,
    /// RFC 5626 `+sip.instance`, if sent.
    pub instance_id: Option<String>,
    /// RFC 5626 `reg-id`, if sent.
    pub reg_id: Option<i32>,
    /// Transport the REGISTER came over (`udp`, `tcp`, `tls`, `ws`, `wss`).
    pub transport: String,
    /// Source address of the REGISTER, `ip:port`.
    pub source: String,
    /// User-Agent header.
    pub user_agent: String,
    /// Call-ID of the REGISTER dialog.
    pub call_id: String,
    /// Highest CSeq seen for that Call-ID.
    pub cseq: i64,
    /// When the binding lapses.
    pub expires_at: Timestamp,
    /// First registered.
    pub created_at: Timestamp,
    /// Last refreshed.
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, tenant_id, extension_id, contact, instance_id, reg_id, transport, \
    source, user_agent, call_id, cseq, expires_at, created_at, updated_at";

pub(crate) static UPSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO registrations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14) ON CONFLICT (extension_id, contact) DO UPDATE SET \
         instance_id = excluded.instance_id, reg_id = excluded.reg_id, \
         transport = excluded.transport, source = excluded.source, \
         user_agent = excluded.user_agent, call_id = excluded.call_id, cseq = excluded.cseq, \
         expires_at = excluded.expires_at, updated_at = excluded.updated_at"
    )
});

/// The upsert of `$registration` (a [`Registration`]), for either backend.
macro_rules! upsert_query {
    ($registration:expr) => {{
        let registration: &$crate::registrations::Registration = $registration;
        sqlx::query($crate::registrations::UPSERT.as_str())
            .bind(registration.id)
            .bind(registration.tenant_id)
            .bind(registration.extension_id)
            .bind(&registration.contact)
            .bind(&registration.instance_id)
            .bind(registration.reg_id)
            .bind(&registration.transport)
            .bind(&registration.source)
            .bind(&registration.user_agent)
            .bind(&registration.call_id)
            .bind(registration.cseq)
            .bind(registration.expires_at)
            .bind(registration.created_at)
            .bind(registration.updated_at)
    }};
}
pub(crate) use upsert_query;

pub(crate) const REMOVE: &str =
    "DELETE FROM registrations WHERE extension_id = $1 AND contact = $2";

/// Inserts or refreshes the binding of `registration.extension_id` to `registration.contact`.
pub async fn upsert(db: &Db, registration: &Registration) -> Result<(), Error> {
    exec!(db, |pool| upsert_query!(registration))?;
    Ok(())
}

/// Removes one binding (un-REGISTER of a contact). Returns whether it existed.
pub async fn remove(db: &Db, extension_id: Uuid, contact: &str) -> Result<bool, Error> {
    Ok(exec!(db, |pool| sqlx::query(REMOVE)
        .bind(extension_id)
        .bind(contact))?
        > 0)
}

/// Removes every binding of an extension (`Contact: *`). Returns how many there were.
pub async fn remove_all(db: &Db, extension_id: Uuid) -> Result<u64, Error> {
    const SQL: &str = "DELETE FROM registrations WHERE extension_id = $1";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(extension_id))?)
}

/// Deletes bindings that lapsed before `now`. Returns how many.
pub async fn purge_expired(db: &Db, now: Timestamp) -> Result<u64, Error> {
    const SQL: &str = "DELETE FROM registrations WHERE expires_at <= $1";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(now))?)
}

/// Bindings still live at `now` visible in `scope`, optionally of one extension, oldest first.
pub async fn live(
    db: &Db,
    scope: Scope,
    extension_id: Option<Uuid>,
    now: Timestamp,
) -> Result<Vec<Registration>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM registrations WHERE expires_at > $1 \
         AND ($2 IS NULL OR tenant_id = $2) AND ($3 IS NULL OR extension_id = $3) ORDER BY id"
    );
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(now)
    .bind(scope.tenant())
    .bind(extension_id)
    .fetch_all(pool)
    .await)?)
}

/// Filters for [`list`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Only this extension's bindings.
    pub extension_id: Option<Uuid>,
    /// Only bindings of extensions this user owns.
    pub owner: Option<Uuid>,
}

/// Live bindings visible in `scope` matching `filter`, oldest first, one page at a time.
pub async fn list(
    db: &Db,
    scope: Scope,
    filter: Filter,
    now: Timestamp,
    page: &crate::PageRequest,
) -> Result<crate::Page<Registration>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM registrations WHERE expires_at > $1 AND ($2 IS NULL OR tenant_id = $2) \
         AND ($3 IS NULL OR extension_id = $3) \
         AND ($4 IS NULL OR extension_id IN (SELECT id FROM extensions WHERE user_id = $4)) \
         AND ($5 IS NULL OR id > $5) ORDER BY id LIMIT $6"
    );
    let rows: Vec<Registration> =
        run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(now)
            .bind(scope.tenant())
            .bind(filter.extension_id)
            .bind(filter.owner)
            .bind(page.cursor)
            .bind(page.fetch())
            .fetch_all(pool)
            .await)?;
    Ok(crate::Page::from_rows(rows, page, |r| r.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{extensions, new_id, tenants};

    #[tokio::test]
    async fn upsert_refreshes_and_expiry_purges() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let ext = sample_extension(a.id, "1001");
            extensions::create(&db, &ext, b"s").await.unwrap();
            let reg = Registration {
                id: new_id(),
                tenant_id: a.id,
                extension_id: ext.id,
                contact: "sip:1001@192.0.2.10:5060".into(),
                instance_id: None,
                reg_id: None,
                transport: "udp".into(),
                source: "192.0.2.10:5060".into(),
                user_agent: "test".into(),
                call_id: "c1".into(),
                cseq: 1,
                expires_at: Timestamp(10_000),
                created_at: Timestamp(1_000),
                updated_at: Timestamp(1_000),
            };
            upsert(&db, &reg).await.unwrap();
            let refreshed = Registration {
                id: new_id(),
                cseq: 2,
                expires_at: Timestamp(20_000),
                updated_at: Timestamp(5_000),
                ..reg.clone()
            };
            upsert(&db, &refreshed).await.unwrap();
            let second = Registration {
                id: new_id(),
                contact: "sip:1001@192.0.2.11".into(),
                expires_at: Timestamp(12_000),
                ..reg.clone()
            };
            upsert(&db, &second).await.unwrap();

            let now_live = live(&db, Scope::Tenant(a.id), Some(ext.id), Timestamp(11_000))
                .await
                .unwrap();
            assert_eq!(now_live.len(), 2);
            let first = list(
                &db,
                Scope::Tenant(a.id),
                Filter::default(),
                Timestamp(11_000),
                &crate::PageRequest {
                    limit: 1,
                    cursor: None,
                },
            )
            .await
            .unwrap();
            assert_eq!((first.items.len(), first.next_cursor.is_some()), (1, true));
            let owned = list(
                &db,
                Scope::All,
                Filter {
                    owner: Some(new_id()),
                    ..Filter::default()
                },
                Timestamp(11_000),
                &crate::PageRequest::default(),
            )
            .await
            .unwrap();
            assert!(owned.items.is_empty());
            let other = list(
                &db,
                Scope::Tenant(new_id()),
                Filter::default(),
                Timestamp(11_000),
                &crate::PageRequest::default(),
            )
            .await
            .unwrap();
            assert!(other.items.is_empty());
            let first = now_live.iter().find(|r| r.contact == reg.contact).unwrap();
            // The row keeps its id and creation time; the refresh updates the rest.
            assert_eq!(
                (first.id, first.cseq, first.expires_at, first.created_at),
                (reg.id, 2, Timestamp(20_000), Timestamp(1_000))
            );

            assert_eq!(purge_expired(&db, Timestamp(15_000)).await.unwrap(), 1);
            assert!(remove(&db, ext.id, &reg.contact).await.unwrap());
            assert!(!remove(&db, ext.id, &reg.contact).await.unwrap());
            upsert(&db, &second).await.unwrap();
            assert_eq!(remove_all(&db, ext.id).await.unwrap(), 1);

            // Deleting the extension deletes its bindings.
            upsert(&db, &second).await.unwrap();
            extensions::delete(&db, Scope::All, ext.id).await.unwrap();
            assert!(
                live(&db, Scope::All, None, Timestamp(0))
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .await;
    }
}

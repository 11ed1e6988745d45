//! Extensions: the dialable numbers of a tenant, each with SIP credentials.
//!
//! The SIP password is sealed with [`crate::crypto::SecretBox`] under
//! [`secret_context`] and never returned by the API; the SIP layer opens it to check digests
//! (MD5 and SHA-256 need the plaintext or a per-algorithm HA1, and the realm may change).

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

/// An extension, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Extension {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Dialable number, unique within the tenant.
    pub number: String,
    /// Name shown to callees.
    pub display_name: String,
    /// Owning user, if any.
    pub user_id: Option<Uuid>,
    /// Caller-ID name for outbound calls.
    pub caller_id_name: Option<String>,
    /// Caller-ID number for outbound calls (E.164).
    pub caller_id_number: Option<String>,
    /// Whether it may call out through trunks.
    pub outbound_allowed: bool,
    /// Whether unanswered calls go to voicemail.
    pub voicemail_enabled: bool,
    /// Whether its answered calls (made or received) are recorded.
    pub record_calls: bool,
    /// Where every call for it goes instead (an extension number or a number outside).
    pub forward_always: Option<String>,
    /// Where its calls go when it is busy.
    pub forward_busy: Option<String>,
    /// Where its calls go when it does not answer in time or has no phone registered.
    pub forward_no_answer: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Live SIP registrations (contacts) right now; 0 means no phone is registered. Read-only.
    #[sqlx(default)]
    pub registered_contacts: i64,
}

/// The context string that binds an extension's sealed SIP secret to its row.
pub fn secret_context(id: Uuid) -> String {
    format!("extensions/{id}/sip_secret")
}

/// Filters for [`list`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Only extensions owned by this user.
    pub user_id: Option<Uuid>,
}

const COLUMNS: &str = "id, tenant_id, number, display_name, user_id, caller_id_name, \
                       caller_id_number, outbound_allowed, voicemail_enabled, record_calls, created_at, \
                       updated_at, forward_always, forward_busy, forward_no_answer";

/// The live-registration count as a column (the query binds `now` as `$now`).
fn registered_contacts(now: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM registrations r WHERE r.extension_id = extensions.id \
         AND r.expires_at > {now}) AS registered_contacts"
    )
}

fn number_taken(number: &str) -> String {
    format!("extension number `{number}` already exists in this tenant")
}

/// Inserts `extension` (its id chosen by the caller, so the secret can be sealed to it) with its
/// sealed SIP secret.
pub async fn create(db: &Db, extension: &Extension, sealed_secret: &[u8]) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO extensions (id, tenant_id, number, display_name, user_id, \
        caller_id_name, caller_id_number, outbound_allowed, voicemail_enabled, sip_secret, \
        created_at, updated_at, record_calls, forward_always, forward_busy, forward_no_answer) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";
    exec!(db, |pool| sqlx::query(SQL)
        .bind(extension.id)
        .bind(extension.tenant_id)
        .bind(&extension.number)
        .bind(&extension.display_name)
        .bind(extension.user_id)
        .bind(&extension.caller_id_name)
        .bind(&extension.caller_id_number)
        .bind(extension.outbound_allowed)
        .bind(extension.voicemail_enabled)
        .bind(sealed_secret)
        .bind(extension.created_at)
        .bind(extension.updated_at)
        .bind(extension.record_calls)
        .bind(&extension.forward_always)
        .bind(&extension.forward_busy)
        .bind(&extension.forward_no_answer))
    .map_err(|e| Error::conflict_on_unique(e, || number_taken(&extension.number)))?;
    Ok(())
}

/// An extension visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<Extension, Error> {
    let sql = format!(
        "SELECT {COLUMNS}, {} FROM extensions WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)",
        registered_contacts("$3")
    );
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .bind(Timestamp::now())
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// The extension with `number` in `tenant_id`.
pub async fn find_by_number(
    db: &Db,
    tenant_id: Uuid,
    number: &str,
) -> Result<Option<Extension>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM extensions WHERE tenant_id = $1 AND number = $2");
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(tenant_id)
    .bind(number)
    .fetch_optional(pool)
    .await)?)
}

/// Extensions visible in `scope`, oldest first.
pub async fn list(
    db: &Db,
    scope: Scope,
    filter: Filter,
    page: &PageRequest,
) -> Result<Page<Extension>, Error> {
    let sql = format!(
        "SELECT {COLUMNS}, {} FROM extensions WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR user_id = $2) AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4",
        registered_contacts("$5")
    );
    let rows: Vec<Extension> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(filter.user_id)
        .bind(page.cursor)
        .bind(page.fetch())
        .bind(Timestamp::now())
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |e| e.id))
}

/// Every extension with its sealed SIP secret (for loading the signalling directory).
pub async fn all_with_secrets(db: &Db) -> Result<Vec<(Extension, Vec<u8>)>, Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        extension: Extension,
        sip_secret: Vec<u8>,
    }
    let sql = format!("SELECT {COLUMNS}, sip_secret FROM extensions ORDER BY id");
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.extension, r.sip_secret))
        .collect())
}

/// Writes every field of `extension` but its id, tenant and secret.
pub async fn update(db: &Db, extension: &Extension) -> Result<Extension, Error> {
    const SQL: &str = "UPDATE extensions SET number = $3, display_name = $4, user_id = $5, \
        caller_id_name = $6, caller_id_number = $7, outbound_allowed = $8, voicemail_enabled = $9, \
        updated_at = $10, record_calls = $11, forward_always = $12, forward_busy = $13, \
        forward_no_answer = $14 WHERE id = $1 AND tenant_id = $2";
    let now = Timestamp::now();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(extension.id)
        .bind(extension.tenant_id)
        .bind(&extension.number)
        .bind(&extension.display_name)
        .bind(extension.user_id)
        .bind(&extension.caller_id_name)
        .bind(&extension.caller_id_number)
        .bind(extension.outbound_allowed)
        .bind(extension.voicemail_enabled)
        .bind(now)
        .bind(extension.record_calls)
        .bind(&extension.forward_always)
        .bind(&extension.forward_busy)
        .bind(&extension.forward_no_answer))
    .map_err(|e| Error::conflict_on_unique(e, || number_taken(&extension.number)))?;
    one_row(done)?;
    Ok(Extension {
        updated_at: now,
        ..extension.clone()
    })
}

/// Replaces the sealed SIP secret.
pub async fn set_secret(db: &Db, id: Uuid, sealed_secret: &[u8]) -> Result<(), Error> {
    const SQL: &str = "UPDATE extensions SET sip_secret = $2, updated_at = $3 WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(sealed_secret)
        .bind(Timestamp::now()))?)
}

/// The sealed SIP secret (open it with [`secret_context`]).
pub async fn sealed_secret(db: &Db, id: Uuid) -> Result<Vec<u8>, Error> {
    const SQL: &str = "SELECT sip_secret FROM extensions WHERE id = $1";
    run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// Deletes an extension visible in `scope`, unless a number routes to it.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    let extension = get(db, scope, id).await?;
    crate::numbers::ensure_not_target(db, id, "extension").await?;
    const SQL: &str = "DELETE FROM extensions WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL).bind(extension.id))?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::each_db;
    use crate::{new_id, tenants};

    pub(crate) fn sample(tenant_id: Uuid, number: &str) -> Extension {
        let now = Timestamp::now();
        Extension {
            id: new_id(),
            tenant_id,
            number: number.into(),
            display_name: format!("Ext {number}"),
            user_id: None,
            caller_id_name: None,
            caller_id_number: Some("+15550001000".into()),
            outbound_allowed: true,
            voicemail_enabled: false,
            record_calls: false,
            forward_always: None,
            forward_busy: Some("+15557654321".into()),
            forward_no_answer: Some("1002".into()),
            created_at: now,
            updated_at: now,
            registered_contacts: 0,
        }
    }

    #[tokio::test]
    async fn crud_scoping_and_secret() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let ext = sample(a.id, "1001");
            create(&db, &ext, b"sealed").await.unwrap();
            assert_eq!(get(&db, Scope::Tenant(a.id), ext.id).await.unwrap(), ext);
            assert!(matches!(
                get(&db, Scope::Tenant(b.id), ext.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(
                find_by_number(&db, a.id, "1001").await.unwrap(),
                Some(ext.clone())
            );
            assert_eq!(find_by_number(&db, b.id, "1001").await.unwrap(), None);

            // Same number in another tenant is fine, twice in one tenant is not.
            create(&db, &sample(b.id, "1001"), b"x").await.unwrap();
            assert!(matches!(
                create(&db, &sample(a.id, "1001"), b"x").await,
                Err(Error::Conflict(_))
            ));

            assert_eq!(sealed_secret(&db, ext.id).await.unwrap(), b"sealed");
            let all = all_with_secrets(&db).await.unwrap();
            assert_eq!(all.len(), 2);
            assert!(all.contains(&(ext.clone(), b"sealed".to_vec())));
            set_secret(&db, ext.id, b"resealed").await.unwrap();
            assert_eq!(sealed_secret(&db, ext.id).await.unwrap(), b"resealed");

            let changed = Extension {
                display_name: "Reception".into(),
                caller_id_name: None,
                ..ext.clone()
            };
            update(&db, &changed).await.unwrap();
            assert_eq!(
                get(&db, Scope::All, ext.id).await.unwrap().display_name,
                "Reception"
            );
            // An update can't move an extension to another tenant.
            assert!(matches!(
                update(
                    &db,
                    &Extension {
                        tenant_id: b.id,
                        ..changed
                    }
                )
                .await,
                Err(Error::NotFound)
            ));

            // Registration state: live bindings count, lapsed ones do not.
            let now = Timestamp::now();
            for (contact, expires_at) in [
                (
                    "sip:1001@192.0.2.1",
                    now.after(std::time::Duration::from_secs(600)),
                ),
                ("sip:1001@192.0.2.2", Timestamp(now.as_millis() - 1)),
            ] {
                let binding = crate::registrations::Registration {
                    id: new_id(),
                    tenant_id: a.id,
                    extension_id: ext.id,
                    contact: contact.into(),
                    instance_id: None,
                    reg_id: None,
                    transport: "UDP".into(),
                    source: "192.0.2.1:5060".into(),
                    user_agent: "test".into(),
                    call_id: contact.into(),
                    cseq: 1,
                    expires_at,
                    created_at: now,
                    updated_at: now,
                };
                crate::registrations::upsert(&db, &binding).await.unwrap();
            }
            assert_eq!(
                get(&db, Scope::All, ext.id)
                    .await
                    .unwrap()
                    .registered_contacts,
                1
            );

            let page = list(
                &db,
                Scope::Tenant(a.id),
                Filter::default(),
                &PageRequest::default(),
            )
            .await
            .unwrap();
            assert_eq!(page.items.len(), 1);
            assert_eq!(page.items[0].registered_contacts, 1);
            let all = list(&db, Scope::All, Filter::default(), &PageRequest::default())
                .await
                .unwrap();
            assert_eq!(all.items.len(), 2);

            assert!(matches!(
                delete(&db, Scope::Tenant(b.id), ext.id).await,
                Err(Error::NotFound)
            ));
            delete(&db, Scope::Tenant(a.id), ext.id).await.unwrap();
            assert!(matches!(
                get(&db, Scope::All, ext.id).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}

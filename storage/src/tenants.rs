//! Tenants: each one a customer with its own SIP domain (the digest realm of its extensions).

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Timestamp, exec, new_id, one_row, run};

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// SIP domain, unique among live tenants; the realm its extensions authenticate in.
    pub sip_domain: String,
    /// Whether every answered call of the tenant is recorded.
    pub record_calls: bool,
    /// The number (E.164) its extensions present on calls out when they have no caller ID
    /// of their own.
    pub caller_id_number: Option<String>,
    /// Calls out at once for this tenant (overrides `outbound.max_concurrent_per_tenant`).
    pub max_outbound_calls: Option<i32>,
    /// Answered minutes out per UTC day for this tenant (overrides
    /// `outbound.daily_minutes_per_tenant`; 0: no cap).
    pub daily_outbound_minutes: Option<i32>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

fn domain_taken(domain: &str) -> String {
    format!("SIP domain `{domain}` is already used by another tenant")
}

/// Creates a tenant.
pub async fn create(db: &Db, name: &str, sip_domain: &str) -> Result<Tenant, Error> {
    let now = Timestamp::now();
    let tenant = Tenant {
        id: new_id(),
        name: name.to_owned(),
        sip_domain: sip_domain.to_owned(),
        record_calls: false,
        caller_id_number: None,
        max_outbound_calls: None,
        daily_outbound_minutes: None,
        created_at: now,
        updated_at: now,
    };
    exec!(db, |pool| sqlx::query(
        "INSERT INTO tenants (id, name, sip_domain, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)"
    )
    .bind(tenant.id)
    .bind(&tenant.name)
    .bind(&tenant.sip_domain)
    .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || domain_taken(sip_domain)))?;
    Ok(tenant)
}

/// A live tenant by id.
pub async fn get(db: &Db, id: Uuid) -> Result<Tenant, Error> {
    const SQL: &str = "SELECT id, name, sip_domain, record_calls, caller_id_number, max_outbound_calls, \
                       daily_outbound_minutes, created_at, updated_at \
                       FROM tenants \
                       WHERE id = $1 AND deleted_at IS NULL";
    run!(db, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// The live tenant that owns `sip_domain`, if any.
pub async fn find_by_domain(db: &Db, sip_domain: &str) -> Result<Option<Tenant>, Error> {
    const SQL: &str = "SELECT id, name, sip_domain, record_calls, caller_id_number, max_outbound_calls, \
                       daily_outbound_minutes, created_at, updated_at \
                       FROM tenants \
                       WHERE sip_domain = $1 AND deleted_at IS NULL";
    Ok(run!(db, |pool| sqlx::query_as(SQL)
        .bind(sip_domain)
        .fetch_optional(pool)
        .await)?)
}

/// Every live tenant (for loading the signalling directory).
pub async fn all(db: &Db) -> Result<Vec<Tenant>, Error> {
    const SQL: &str = "SELECT id, name, sip_domain, record_calls, caller_id_number, max_outbound_calls, \
                       daily_outbound_minutes, created_at, updated_at \
                       FROM tenants \
                       WHERE deleted_at IS NULL ORDER BY id";
    Ok(run!(db, |pool| sqlx::query_as(SQL).fetch_all(pool).await)?)
}

/// Live tenants, oldest first.
pub async fn list(db: &Db, page: &PageRequest) -> Result<Page<Tenant>, Error> {
    const SQL: &str = "SELECT id, name, sip_domain, record_calls, caller_id_number, max_outbound_calls, \
                       daily_outbound_minutes, created_at, updated_at \
                       FROM tenants \
                       WHERE deleted_at IS NULL AND ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2";
    let rows: Vec<Tenant> = run!(db, |pool| sqlx::query_as(SQL)
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |t| t.id))
}

/// Writes `tenant`'s name, domain, recording policy, caller ID and limits.
pub async fn update(db: &Db, tenant: &Tenant) -> Result<Tenant, Error> {
    const SQL: &str = "UPDATE tenants SET name = $2, sip_domain = $3, updated_at = $4, \
                       record_calls = $5, caller_id_number = $6, max_outbound_calls = $7, \
                       daily_outbound_minutes = $8 WHERE id = $1 AND deleted_at IS NULL";
    let now = Timestamp::now();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(tenant.id)
        .bind(&tenant.name)
        .bind(&tenant.sip_domain)
        .bind(now)
        .bind(tenant.record_calls)
        .bind(&tenant.caller_id_number)
        .bind(tenant.max_outbound_calls)
        .bind(tenant.daily_outbound_minutes))
    .map_err(|e| Error::conflict_on_unique(e, || domain_taken(&tenant.sip_domain)))?;
    if done == 0 {
        return Err(Error::NotFound);
    }
    Ok(Tenant {
        updated_at: now,
        ..tenant.clone()
    })
}

/// Soft-deletes an empty tenant. A tenant that still has users, extensions, trunks or numbers
/// is [`Error::InUse`].
pub async fn delete(db: &Db, id: Uuid) -> Result<(), Error> {
    const IN_USE: &str = "SELECT \
        (SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND deleted_at IS NULL) + \
        (SELECT COUNT(*) FROM extensions WHERE tenant_id = $1) + \
        (SELECT COUNT(*) FROM trunks WHERE tenant_id = $1) + \
        (SELECT COUNT(*) FROM numbers WHERE tenant_id = $1)";
    const SQL: &str = "UPDATE tenants SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL";
    get(db, id).await?;
    let used: i64 = run!(db, |pool| sqlx::query_scalar(IN_USE)
        .bind(id)
        .fetch_one(pool)
        .await)?;
    if used > 0 {
        return Err(Error::InUse(
            "tenant still has users, extensions, trunks or numbers; delete them first".into(),
        ));
    }
    let done = exec!(db, |pool| sqlx::query(SQL).bind(id).bind(Timestamp::now()))?;
    one_row(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_db;

    #[tokio::test]
    async fn crud_and_unique_domain() {
        each_db(|db| async move {
            let a = create(&db, "Acme", "acme.example").await.unwrap();
            assert_eq!(get(&db, a.id).await.unwrap(), a);
            assert!(matches!(
                create(&db, "Other", "acme.example").await,
                Err(Error::Conflict(_))
            ));
            let b = create(&db, "Beta", "beta.example").await.unwrap();
            assert_eq!(
                find_by_domain(&db, "beta.example").await.unwrap(),
                Some(b.clone())
            );

            let renamed = update(
                &db,
                &Tenant {
                    name: "Acme Ltd".into(),
                    record_calls: true,
                    caller_id_number: Some("+15550001000".into()),
                    max_outbound_calls: Some(3),
                    daily_outbound_minutes: Some(600),
                    ..a.clone()
                },
            )
            .await
            .unwrap();
            let stored = get(&db, a.id).await.unwrap();
            assert_eq!(
                (
                    stored.name.as_str(),
                    stored.record_calls,
                    stored.caller_id_number.as_deref()
                ),
                ("Acme Ltd", true, Some("+15550001000"))
            );
            assert_eq!(
                (stored.max_outbound_calls, stored.daily_outbound_minutes),
                (Some(3), Some(600))
            );
            assert!(matches!(
                update(
                    &db,
                    &Tenant {
                        sip_domain: "beta.example".into(),
                        ..renamed
                    }
                )
                .await,
                Err(Error::Conflict(_))
            ));

            assert_eq!(all(&db).await.unwrap().len(), 2);
            let page = list(
                &db,
                &PageRequest {
                    limit: 1,
                    cursor: None,
                },
            )
            .await
            .unwrap();
            assert_eq!(page.items, [get(&db, a.id).await.unwrap()]);
            let rest = list(
                &db,
                &PageRequest {
                    limit: 1,
                    cursor: page.next_cursor,
                },
            )
            .await
            .unwrap();
            assert_eq!(rest.items, std::slice::from_ref(&b));
            assert_eq!(rest.next_cursor, None);

            delete(&db, b.id).await.unwrap();
            assert!(matches!(get(&db, b.id).await, Err(Error::NotFound)));
            assert!(matches!(delete(&db, b.id).await, Err(Error::NotFound)));
            // The domain of a deleted tenant can be reused.
            create(&db, "Beta again", "beta.example").await.unwrap();
        })
        .await;
    }
}

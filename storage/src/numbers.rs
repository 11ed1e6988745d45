//! Numbers (DIDs): an E.164 number routed to an extension, a ring group or an IVR flow of the
//! same tenant. A number is unique across all tenants: one DID routes to one place.

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

text_enum! {
    /// What a number routes to.
    pub enum TargetType {
        /// An extension: ring its registered contacts.
        Extension = "extension",
        /// A ring group.
        RingGroup = "ring_group",
        /// An IVR flow (its published version).
        IvrFlow = "ivr_flow",
    }
}

impl TargetType {
    /// The table holding targets of this type.
    fn table(self) -> &'static str {
        match self {
            Self::Extension => "extensions",
            Self::RingGroup => "ring_groups",
            Self::IvrFlow => "ivr_flows",
        }
    }
}

/// A number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Number {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// The number in E.164, e.g. `+15551234567`.
    pub e164: String,
    /// What it routes to.
    #[sqlx(try_from = "String")]
    pub target_type: TargetType,
    /// Id of the target, in the same tenant.
    pub target_id: Uuid,
    /// Free text.
    pub description: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

const COLUMNS: &str =
    "id, tenant_id, e164, target_type, target_id, description, created_at, updated_at";

fn number_taken(e164: &str) -> String {
    format!("number `{e164}` is already assigned")
}

/// Fails with [`Error::InvalidReference`] unless the target exists in the tenant.
async fn check_target(db: &Db, number: &Number) -> Result<(), Error> {
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE id = $1 AND tenant_id = $2",
        number.target_type.table()
    );
    let found: i64 = run!(db, |pool| sqlx::query_scalar(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(number.target_id)
    .bind(number.tenant_id)
    .fetch_one(pool)
    .await)?;
    if found == 0 {
        return Err(Error::InvalidReference(format!(
            "{} {} does not exist in this tenant",
            number.target_type, number.target_id
        )));
    }
    Ok(())
}

/// Creates `number` after checking its target.
pub async fn create(db: &Db, number: &Number) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO numbers (id, tenant_id, e164, target_type, target_id, \
        description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    check_target(db, number).await?;
    exec!(db, |pool| sqlx::query(SQL)
        .bind(number.id)
        .bind(number.tenant_id)
        .bind(&number.e164)
        .bind(number.target_type.as_str())
        .bind(number.target_id)
        .bind(&number.description)
        .bind(number.created_at)
        .bind(number.updated_at))
    .map_err(|e| Error::conflict_on_unique(e, || number_taken(&number.e164)))?;
    Ok(())
}

/// A number visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<Number, Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM numbers WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// The number with this E.164 form, whatever its tenant (inbound routing).
pub async fn find_by_e164(db: &Db, e164: &str) -> Result<Option<Number>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM numbers WHERE e164 = $1");
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(e164)
    .fetch_optional(pool)
    .await)?)
}

/// Every number of every tenant (what the signalling core loads at start).
pub async fn all(db: &Db) -> Result<Vec<Number>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM numbers ORDER BY id");
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .fetch_all(pool)
    .await)?)
}

/// Numbers visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<Number>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM numbers WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Number> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |n| n.id))
}

/// Writes the number, target and description of `number`.
pub async fn update(db: &Db, number: &Number) -> Result<Number, Error> {
    const SQL: &str = "UPDATE numbers SET e164 = $3, target_type = $4, target_id = $5, \
        description = $6, updated_at = $7 WHERE id = $1 AND tenant_id = $2";
    check_target(db, number).await?;
    let now = Timestamp::now();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(number.id)
        .bind(number.tenant_id)
        .bind(&number.e164)
        .bind(number.target_type.as_str())
        .bind(number.target_id)
        .bind(&number.description)
        .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || number_taken(&number.e164)))?;
    one_row(done)?;
    Ok(Number {
        updated_at: now,
        ..number.clone()
    })
}

/// Deletes a number visible in `scope`.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "DELETE FROM numbers WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(scope.tenant()))?)
}

/// Fails with [`Error::InUse`] if a number routes to `target_id`.
pub(crate) async fn ensure_not_target(db: &Db, target_id: Uuid, what: &str) -> Result<(), Error> {
    const SQL: &str = "SELECT e164 FROM numbers WHERE target_id = $1 LIMIT 1";
    let used: Option<String> = run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(target_id)
        .fetch_optional(pool)
        .await)?;
    match used {
        Some(e164) => Err(Error::InUse(format!("number {e164} routes to this {what}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{extensions, new_id, tenants};

    #[tokio::test]
    async fn targets_must_exist_in_tenant_and_block_deletion() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let ext = sample_extension(a.id, "1001");
            extensions::create(&db, &ext, b"s").await.unwrap();
            let now = Timestamp::now();
            let number = Number {
                id: new_id(),
                tenant_id: a.id,
                e164: "+15551230001".into(),
                target_type: TargetType::Extension,
                target_id: ext.id,
                description: "main line".into(),
                created_at: now,
                updated_at: now,
            };
            create(&db, &number).await.unwrap();
            assert_eq!(
                find_by_e164(&db, "+15551230001").await.unwrap(),
                Some(number.clone())
            );

            // The DID is unique across tenants.
            let ext_b = sample_extension(b.id, "2001");
            extensions::create(&db, &ext_b, b"s").await.unwrap();
            let dup = Number {
                id: new_id(),
                tenant_id: b.id,
                target_id: ext_b.id,
                ..number.clone()
            };
            assert!(matches!(create(&db, &dup).await, Err(Error::Conflict(_))));

            // A target in another tenant, or of the wrong type, is refused.
            let cross = Number {
                id: new_id(),
                e164: "+15551230002".into(),
                target_id: ext_b.id,
                ..number.clone()
            };
            assert!(matches!(
                create(&db, &cross).await,
                Err(Error::InvalidReference(_))
            ));
            let wrong_type = Number {
                id: new_id(),
                e164: "+15551230003".into(),
                target_type: TargetType::IvrFlow,
                ..number.clone()
            };
            assert!(matches!(
                create(&db, &wrong_type).await,
                Err(Error::InvalidReference(_))
            ));

            // The extension can't be deleted while the number routes to it.
            assert!(matches!(
                extensions::delete(&db, Scope::All, ext.id).await,
                Err(Error::InUse(_))
            ));
            assert!(matches!(
                delete(&db, Scope::Tenant(b.id), number.id).await,
                Err(Error::NotFound)
            ));
            delete(&db, Scope::Tenant(a.id), number.id).await.unwrap();
            extensions::delete(&db, Scope::All, ext.id).await.unwrap();
        })
        .await;
    }
}

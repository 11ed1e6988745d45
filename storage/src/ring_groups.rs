//! Ring groups: a set of extensions rung together (simultaneous) or one after another
//! (sequential), in member order.

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

text_enum! {
    /// How members are rung.
    pub enum Strategy {
        /// All members at once; the first to answer wins.
        Simultaneous = "simultaneous",
        /// One member at a time, in order, each for the ring timeout.
        Sequential = "sequential",
    }
}

/// A ring group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RingGroup {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name, unique within the tenant.
    pub name: String,
    /// Ringing strategy.
    pub strategy: Strategy,
    /// Seconds to ring (each member, for sequential groups) before giving up.
    pub ring_timeout_secs: u32,
    /// Member extension ids, in ringing order.
    pub members: Vec<Uuid>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    strategy: String,
    ring_timeout_secs: i32,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl Row {
    fn into_group(self, members: Vec<Uuid>) -> Result<RingGroup, Error> {
        Ok(RingGroup {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            strategy: self.strategy.parse()?,
            ring_timeout_secs: u32::try_from(self.ring_timeout_secs).unwrap_or(0),
            members,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, name, strategy, ring_timeout_secs, created_at, updated_at";

fn name_taken(name: &str) -> String {
    format!("a ring group named `{name}` already exists in this tenant")
}

/// Fails with [`Error::InvalidReference`] unless every member is an extension of the tenant.
async fn check_members(db: &Db, group: &RingGroup) -> Result<(), Error> {
    const SQL: &str = "SELECT COUNT(*) FROM extensions WHERE id = $1 AND tenant_id = $2";
    for (i, member) in group.members.iter().enumerate() {
        if group.members[..i].contains(member) {
            return Err(Error::InvalidReference(format!(
                "extension {member} is listed twice"
            )));
        }
        let found: i64 = run!(db, |pool| sqlx::query_scalar(SQL)
            .bind(member)
            .bind(group.tenant_id)
            .fetch_one(pool)
            .await)?;
        if found == 0 {
            return Err(Error::InvalidReference(format!(
                "extension {member} does not exist in this tenant"
            )));
        }
    }
    Ok(())
}

/// Creates `group` and its members.
pub async fn create(db: &Db, group: &RingGroup) -> Result<(), Error> {
    const GROUP: &str = "INSERT INTO ring_groups (id, tenant_id, name, strategy, \
        ring_timeout_secs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    check_members(db, group).await?;
    let timeout = i32::try_from(group.ring_timeout_secs).unwrap_or(i32::MAX);
    run!(db, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(GROUP)
            .bind(group.id)
            .bind(group.tenant_id)
            .bind(&group.name)
            .bind(group.strategy.as_str())
            .bind(timeout)
            .bind(group.created_at)
            .bind(group.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::conflict_on_unique(e, || name_taken(&group.name)))?;
        for (position, member) in group.members.iter().enumerate() {
            sqlx::query(INSERT_MEMBER)
                .bind(group.id)
                .bind(member)
                .bind(i32::try_from(position).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    })
}

const INSERT_MEMBER: &str =
    "INSERT INTO ring_group_members (ring_group_id, extension_id, position) VALUES ($1, $2, $3)";

async fn members(db: &Db, id: Uuid) -> Result<Vec<Uuid>, Error> {
    const SQL: &str =
        "SELECT extension_id FROM ring_group_members WHERE ring_group_id = $1 ORDER BY position";
    Ok(run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_all(pool)
        .await)?)
}

/// A ring group visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<RingGroup, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ring_groups WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
    );
    let row: Option<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    let row = row.ok_or(Error::NotFound)?;
    let members = members(db, row.id).await?;
    row.into_group(members)
}

/// Ring groups visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<RingGroup>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ring_groups WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in rows {
        let members = members(db, row.id).await?;
        groups.push(row.into_group(members)?);
    }
    Ok(Page::from_rows(groups, page, |g| g.id))
}

/// Every ring group of every tenant (what the signalling core loads at start).
pub async fn all(db: &Db) -> Result<Vec<RingGroup>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM ring_groups ORDER BY id");
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await)?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in rows {
        let members = members(db, row.id).await?;
        groups.push(row.into_group(members)?);
    }
    Ok(groups)
}

/// Writes the name, strategy, timeout and members of `group`.
pub async fn update(db: &Db, group: &RingGroup) -> Result<RingGroup, Error> {
    const GROUP: &str = "UPDATE ring_groups SET name = $3, strategy = $4, ring_timeout_secs = $5, \
        updated_at = $6 WHERE id = $1 AND tenant_id = $2";
    const CLEAR: &str = "DELETE FROM ring_group_members WHERE ring_group_id = $1";
    check_members(db, group).await?;
    let now = Timestamp::now();
    let timeout = i32::try_from(group.ring_timeout_secs).unwrap_or(i32::MAX);
    let done = run!(db, |pool| {
        let mut tx = pool.begin().await?;
        let done = sqlx::query(GROUP)
            .bind(group.id)
            .bind(group.tenant_id)
            .bind(&group.name)
            .bind(group.strategy.as_str())
            .bind(timeout)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::conflict_on_unique(e, || name_taken(&group.name)))?
            .rows_affected();
        sqlx::query(CLEAR).bind(group.id).execute(&mut *tx).await?;
        for (position, member) in group.members.iter().enumerate() {
            sqlx::query(INSERT_MEMBER)
                .bind(group.id)
                .bind(member)
                .bind(i32::try_from(position).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        done
    });
    one_row(done)?;
    Ok(RingGroup {
        updated_at: now,
        ..group.clone()
    })
}

/// Deletes a ring group visible in `scope`, unless a number routes to it.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    let group = get(db, scope, id).await?;
    crate::numbers::ensure_not_target(db, group.id, "ring group").await?;
    const SQL: &str = "DELETE FROM ring_groups WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL).bind(group.id))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{extensions, new_id, tenants};

    #[tokio::test]
    async fn members_keep_order_and_follow_extension_deletion() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let (e1, e2) = (
                sample_extension(a.id, "1001"),
                sample_extension(a.id, "1002"),
            );
            let foreign = sample_extension(b.id, "2001");
            for e in [&e1, &e2, &foreign] {
                extensions::create(&db, e, b"s").await.unwrap();
            }
            let now = Timestamp::now();
            let group = RingGroup {
                id: new_id(),
                tenant_id: a.id,
                name: "sales".into(),
                strategy: Strategy::Sequential,
                ring_timeout_secs: 20,
                members: vec![e2.id, e1.id],
                created_at: now,
                updated_at: now,
            };
            create(&db, &group).await.unwrap();
            assert_eq!(
                get(&db, Scope::Tenant(a.id), group.id).await.unwrap(),
                group
            );

            let bad = RingGroup {
                id: new_id(),
                name: "x".into(),
                members: vec![foreign.id],
                ..group.clone()
            };
            assert!(matches!(
                create(&db, &bad).await,
                Err(Error::InvalidReference(_))
            ));
            let twice = RingGroup {
                id: new_id(),
                name: "y".into(),
                members: vec![e1.id, e1.id],
                ..group.clone()
            };
            assert!(matches!(
                create(&db, &twice).await,
                Err(Error::InvalidReference(_))
            ));
            let dup = RingGroup {
                id: new_id(),
                ..group.clone()
            };
            assert!(matches!(create(&db, &dup).await, Err(Error::Conflict(_))));

            let reordered = RingGroup {
                members: vec![e1.id, e2.id],
                strategy: Strategy::Simultaneous,
                ..group.clone()
            };
            update(&db, &reordered).await.unwrap();
            assert_eq!(
                get(&db, Scope::All, group.id).await.unwrap().members,
                [e1.id, e2.id]
            );

            extensions::delete(&db, Scope::All, e1.id).await.unwrap();
            assert_eq!(
                get(&db, Scope::All, group.id).await.unwrap().members,
                [e2.id]
            );
            assert_eq!(
                list(&db, Scope::Tenant(b.id), &PageRequest::default())
                    .await
                    .unwrap()
                    .items,
                Vec::new()
            );
            delete(&db, Scope::Tenant(a.id), group.id).await.unwrap();
        })
        .await;
    }
}

//! The audit log: who changed what, from where. Written for every change made through the
//! control plane; read by admins (their tenant) and superadmins (everything).

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, new_id, run};

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Id.
    pub id: Uuid,
    /// Tenant the change concerns, if any.
    pub tenant_id: Option<Uuid>,
    /// Who made it (absent for the system itself).
    pub actor_user_id: Option<Uuid>,
    /// What was done: `create`, `update`, `delete`, `publish`, `login`, ...
    pub action: String,
    /// Kind of object: `tenant`, `user`, `extension`, ...
    pub object_type: String,
    /// Id of the object.
    pub object_id: String,
    /// Details (never secrets).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
    /// Client address.
    pub source_ip: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Option<Uuid>,
    actor_user_id: Option<Uuid>,
    action: String,
    object_type: String,
    object_id: String,
    details: String,
    source_ip: Option<String>,
    created_at: Timestamp,
}

impl TryFrom<Row> for AuditEntry {
    type Error = Error;
    fn try_from(row: Row) -> Result<Self, Error> {
        Ok(Self {
            id: row.id,
            tenant_id: row.tenant_id,
            actor_user_id: row.actor_user_id,
            action: row.action,
            object_type: row.object_type,
            object_id: row.object_id,
            details: serde_json::from_str(&row.details)
                .map_err(|e| Error::Corrupt(format!("audit details: {e}")))?,
            source_ip: row.source_ip,
            created_at: row.created_at,
        })
    }
}

/// What to record.
#[derive(Clone, Debug)]
pub struct NewEntry<'a> {
    /// Tenant concerned.
    pub tenant_id: Option<Uuid>,
    /// Actor.
    pub actor_user_id: Option<Uuid>,
    /// Action.
    pub action: &'a str,
    /// Object kind.
    pub object_type: &'a str,
    /// Object id.
    pub object_id: String,
    /// Details (never secrets).
    pub details: serde_json::Value,
    /// Client address.
    pub source_ip: Option<String>,
}

/// Appends an entry.
pub async fn record(db: &Db, entry: NewEntry<'_>) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO audit_log (id, tenant_id, actor_user_id, action, object_type, \
        object_id, details, source_ip, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    let details = entry.details.to_string();
    exec!(db, |pool| sqlx::query(SQL)
        .bind(new_id())
        .bind(entry.tenant_id)
        .bind(entry.actor_user_id)
        .bind(entry.action)
        .bind(entry.object_type)
        .bind(&entry.object_id)
        .bind(&details)
        .bind(&entry.source_ip)
        .bind(Timestamp::now()))?;
    Ok(())
}

/// Entries visible in `scope`, newest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<AuditEntry>, Error> {
    const SQL: &str = "SELECT id, tenant_id, actor_user_id, action, object_type, object_id, \
        details, source_ip, created_at FROM audit_log WHERE ($1 IS NULL OR tenant_id = $1) \
        AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3";
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(SQL)
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    let entries = rows
        .into_iter()
        .map(AuditEntry::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(entries, page, |e| e.id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::each_db;

    #[tokio::test]
    async fn records_and_scopes() {
        each_db(|db| async move {
            let (a, b) = (new_id(), new_id());
            for (tenant, object) in [(Some(a), "1"), (Some(b), "2"), (None, "3")] {
                record(
                    &db,
                    NewEntry {
                        tenant_id: tenant,
                        actor_user_id: None,
                        action: "create",
                        object_type: "extension",
                        object_id: object.into(),
                        details: json!({"number": "1001"}),
                        source_ip: Some("127.0.0.1".into()),
                    },
                )
                .await
                .unwrap();
            }
            let mine = list(&db, Scope::Tenant(a), &PageRequest::default())
                .await
                .unwrap();
            assert_eq!(mine.items.len(), 1);
            assert_eq!(mine.items[0].details, json!({"number": "1001"}));
            let all = list(&db, Scope::All, &PageRequest::default())
                .await
                .unwrap();
            assert_eq!(
                all.items
                    .iter()
                    .map(|e| e.object_id.as_str())
                    .collect::<Vec<_>>(),
                ["3", "2", "1"]
            );
        })
        .await;
    }
}

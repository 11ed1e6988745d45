//! IVR flows: a draft graph that admins edit, and immutable published versions. Publishing
//! copies the draft into version N+1; calls run the published version a number points at.
//! Graphs are stored as JSON text; their meaning and validation live in
//! `switchboard_signalling::ivr`.

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

/// An IVR flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IvrFlow {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name, unique within the tenant.
    pub name: String,
    /// The graph being edited.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub draft: serde_json::Value,
    /// The newest published version, if any.
    pub published_version: Option<u32>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// One immutable published version of a flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IvrFlowVersion {
    /// Flow id.
    pub flow_id: Uuid,
    /// Version number, from 1.
    pub version: u32,
    /// The graph as published.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub graph: serde_json::Value,
    /// When it was published.
    pub published_at: Timestamp,
    /// Who published it.
    pub published_by: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    draft: String,
    published_version: Option<i32>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl TryFrom<Row> for IvrFlow {
    type Error = Error;
    fn try_from(row: Row) -> Result<Self, Error> {
        Ok(Self {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            draft: parse_graph(&row.draft)?,
            published_version: row.published_version.and_then(|v| u32::try_from(v).ok()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    flow_id: Uuid,
    version: i32,
    graph: String,
    published_at: Timestamp,
    published_by: Option<Uuid>,
}

impl TryFrom<VersionRow> for IvrFlowVersion {
    type Error = Error;
    fn try_from(row: VersionRow) -> Result<Self, Error> {
        Ok(Self {
            flow_id: row.flow_id,
            version: u32::try_from(row.version).unwrap_or(0),
            graph: parse_graph(&row.graph)?,
            published_at: row.published_at,
            published_by: row.published_by,
        })
    }
}

fn parse_graph(text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("IVR graph: {e}")))
}

const COLUMNS: &str = "id, tenant_id, name, draft, published_version, created_at, updated_at";

fn name_taken(name: &str) -> String {
    format!("an IVR flow named `{name}` already exists in this tenant")
}

/// Creates `flow` (its draft only; nothing is published).
pub async fn create(db: &Db, flow: &IvrFlow) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO ivr_flows (id, tenant_id, name, draft, published_version, \
        created_at, updated_at) VALUES ($1, $2, $3, $4, NULL, $5, $6)";
    let draft = flow.draft.to_string();
    exec!(db, |pool| sqlx::query(SQL)
        .bind(flow.id)
        .bind(flow.tenant_id)
        .bind(&flow.name)
        .bind(&draft)
        .bind(flow.created_at)
        .bind(flow.updated_at))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&flow.name)))?;
    Ok(())
}

/// A flow visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<IvrFlow, Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM ivr_flows WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
    let row: Option<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    row.ok_or(Error::NotFound)?.try_into()
}

/// Flows visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<IvrFlow>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ivr_flows WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    let flows = rows
        .into_iter()
        .map(IvrFlow::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(flows, page, |f| f.id))
}

/// Writes the name and draft of `flow`.
pub async fn update(db: &Db, flow: &IvrFlow) -> Result<IvrFlow, Error> {
    const SQL: &str = "UPDATE ivr_flows SET name = $3, draft = $4, updated_at = $5 \
        WHERE id = $1 AND tenant_id = $2";
    let now = Timestamp::now();
    let draft = flow.draft.to_string();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(flow.id)
        .bind(flow.tenant_id)
        .bind(&flow.name)
        .bind(&draft)
        .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&flow.name)))?;
    one_row(done)?;
    Ok(IvrFlow {
        updated_at: now,
        ..flow.clone()
    })
}

/// Publishes the current draft of a flow visible in `scope` as its next version.
pub async fn publish(
    db: &Db,
    scope: Scope,
    id: Uuid,
    by: Option<Uuid>,
) -> Result<IvrFlowVersion, Error> {
    const DRAFT: &str =
        "SELECT draft FROM ivr_flows WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    const NEXT: &str = "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) FROM ivr_flow_versions WHERE flow_id = $1";
    const INSERT: &str = "INSERT INTO ivr_flow_versions (flow_id, version, graph, published_at, \
        published_by) VALUES ($1, $2, $3, $4, $5)";
    const MARK: &str = "UPDATE ivr_flows SET published_version = $2, updated_at = $3 WHERE id = $1";
    let now = Timestamp::now();
    let (draft, version): (String, i32) = run!(db, |pool| {
        let mut tx = pool.begin().await?;
        let draft: Option<String> = sqlx::query_scalar(DRAFT)
            .bind(id)
            .bind(scope.tenant())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(draft) = draft else {
            return Err(Error::NotFound);
        };
        // Cast to BIGINT so both backends decode it as i64.
        let next: i64 = sqlx::query_scalar(NEXT)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let version = i32::try_from(next).map_err(|_| Error::Corrupt("version overflow".into()))?;
        sqlx::query(INSERT)
            .bind(id)
            .bind(version)
            .bind(&draft)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                Error::conflict_on_unique(e, || "flow was published concurrently".into())
            })?;
        sqlx::query(MARK)
            .bind(id)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, Error>((draft, version))
    })?;
    Ok(IvrFlowVersion {
        flow_id: id,
        version: u32::try_from(version).unwrap_or(0),
        graph: parse_graph(&draft)?,
        published_at: now,
        published_by: by,
    })
}

/// A flow's latest published version, with its tenant (what calls run).
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// Flow id.
    pub flow_id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Version number.
    pub version: u32,
    /// The graph.
    pub graph: serde_json::Value,
}

const PUBLISHED: &str = "SELECT f.id, f.tenant_id, v.version, v.graph FROM ivr_flows f \
    JOIN ivr_flow_versions v ON v.flow_id = f.id AND v.version = f.published_version";

fn published_row(
    (flow_id, tenant_id, version, graph): (Uuid, Uuid, i32, String),
) -> Result<Published, Error> {
    Ok(Published {
        flow_id,
        tenant_id,
        version: u32::try_from(version).unwrap_or(0),
        graph: parse_graph(&graph)?,
    })
}

/// The latest published version of every flow (what the signalling core loads at start).
pub async fn all_published(db: &Db) -> Result<Vec<Published>, Error> {
    let rows: Vec<(Uuid, Uuid, i32, String)> =
        run!(db, |pool| sqlx::query_as(PUBLISHED).fetch_all(pool).await)?;
    rows.into_iter().map(published_row).collect()
}

/// The latest published version of flow `id`, if it has one.
pub async fn published(db: &Db, id: Uuid) -> Result<Option<Published>, Error> {
    let sql = format!("{PUBLISHED} WHERE f.id = $1");
    let row: Option<(Uuid, Uuid, i32, String)> =
        run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_optional(pool)
            .await)?;
    row.map(published_row).transpose()
}

/// Published versions of a flow visible in `scope`, newest first.
pub async fn versions(db: &Db, scope: Scope, id: Uuid) -> Result<Vec<IvrFlowVersion>, Error> {
    const SQL: &str = "SELECT v.flow_id, v.version, v.graph, v.published_at, v.published_by \
        FROM ivr_flow_versions v JOIN ivr_flows f ON f.id = v.flow_id \
        WHERE v.flow_id = $1 AND ($2 IS NULL OR f.tenant_id = $2) ORDER BY v.version DESC";
    get(db, scope, id).await?;
    let rows: Vec<VersionRow> = run!(db, |pool| sqlx::query_as(SQL)
        .bind(id)
        .bind(scope.tenant())
        .fetch_all(pool)
        .await)?;
    rows.into_iter().map(IvrFlowVersion::try_from).collect()
}

/// One published version of a flow visible in `scope`.
pub async fn version(
    db: &Db,
    scope: Scope,
    id: Uuid,
    version: u32,
) -> Result<IvrFlowVersion, Error> {
    const SQL: &str = "SELECT v.flow_id, v.version, v.graph, v.published_at, v.published_by \
        FROM ivr_flow_versions v JOIN ivr_flows f ON f.id = v.flow_id \
        WHERE v.flow_id = $1 AND v.version = $2 AND ($3 IS NULL OR f.tenant_id = $3)";
    let version = i32::try_from(version).map_err(|_| Error::NotFound)?;
    let row: Option<VersionRow> = run!(db, |pool| sqlx::query_as(SQL)
        .bind(id)
        .bind(version)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    row.ok_or(Error::NotFound)?.try_into()
}

/// Deletes a flow visible in `scope` and its versions, unless a number routes to it.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    let flow = get(db, scope, id).await?;
    crate::numbers::ensure_not_target(db, flow.id, "IVR flow").await?;
    const SQL: &str = "DELETE FROM ivr_flows WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL).bind(flow.id))?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::each_db;
    use crate::{new_id, tenants};

    #[tokio::test]
    async fn publishing_freezes_versions() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let now = Timestamp::now();
            let v1 = json!({"entry": "start", "nodes": {"start": {"verb": "hangup"}}});
            let flow = IvrFlow {
                id: new_id(),
                tenant_id: a.id,
                name: "main".into(),
                draft: v1.clone(),
                published_version: None,
                created_at: now,
                updated_at: now,
            };
            create(&db, &flow).await.unwrap();
            assert!(matches!(
                publish(&db, Scope::Tenant(b.id), flow.id, None).await,
                Err(Error::NotFound)
            ));
            let first = publish(&db, Scope::Tenant(a.id), flow.id, None)
                .await
                .unwrap();
            assert_eq!((first.version, &first.graph), (1, &v1));

            let v2 = json!({"entry": "start", "nodes": {"start": {"verb": "answer"}}});
            update(
                &db,
                &IvrFlow {
                    draft: v2.clone(),
                    ..flow.clone()
                },
            )
            .await
            .unwrap();
            // Editing the draft doesn't touch the published version.
            assert_eq!(
                version(&db, Scope::All, flow.id, 1).await.unwrap().graph,
                v1
            );
            assert_eq!(
                publish(&db, Scope::All, flow.id, None)
                    .await
                    .unwrap()
                    .version,
                2
            );
            let latest = published(&db, flow.id).await.unwrap().unwrap();
            assert_eq!(
                (latest.version, &latest.graph, latest.tenant_id),
                (2, &v2, a.id)
            );
            assert_eq!(all_published(&db).await.unwrap(), [latest]);
            let all = versions(&db, Scope::Tenant(a.id), flow.id).await.unwrap();
            assert_eq!(all.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
            assert_eq!(all[0].graph, v2);
            assert_eq!(
                get(&db, Scope::All, flow.id)
                    .await
                    .unwrap()
                    .published_version,
                Some(2)
            );
            assert!(matches!(
                version(&db, Scope::Tenant(b.id), flow.id, 1).await,
                Err(Error::NotFound)
            ));

            delete(&db, Scope::Tenant(a.id), flow.id).await.unwrap();
            assert!(matches!(
                version(&db, Scope::All, flow.id, 1).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}

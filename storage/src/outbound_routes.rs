//! Outbound routes: which trunk a number dialled by an extension leaves through. A route
//! matches when its `prefix` starts the number's E.164 digits (without `+`; an empty prefix
//! matches every number); the longest matching prefix wins, then the lowest `priority`.

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

/// An outbound route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutboundRoute {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name, unique within the tenant.
    pub name: String,
    /// Leading digits of the E.164 number (without `+`), e.g. `1` for North America; empty
    /// for every number.
    pub prefix: String,
    /// The trunk calls leave through.
    pub trunk_id: Uuid,
    /// Among routes with the same prefix length, lower goes first.
    pub priority: i32,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, tenant_id, name, prefix, trunk_id, priority, created_at, updated_at";

fn name_taken(name: &str) -> String {
    format!("an outbound route named `{name}` already exists in this tenant")
}

/// Fails with [`Error::InvalidReference`] unless the route's trunk is in its tenant.
async fn check_trunk(db: &Db, route: &OutboundRoute) -> Result<(), Error> {
    const SQL: &str = "SELECT COUNT(*) FROM trunks WHERE id = $1 AND tenant_id = $2";
    let found: i64 = run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(route.trunk_id)
        .bind(route.tenant_id)
        .fetch_one(pool)
        .await)?;
    if found == 0 {
        return Err(Error::InvalidReference(format!(
            "trunk {} does not exist in this tenant",
            route.trunk_id
        )));
    }
    Ok(())
}

/// Creates `route` after checking its trunk.
pub async fn create(db: &Db, route: &OutboundRoute) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO outbound_routes (id, tenant_id, name, prefix, trunk_id, \
        priority, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    check_trunk(db, route).await?;
    exec!(db, |pool| sqlx::query(SQL)
        .bind(route.id)
        .bind(route.tenant_id)
        .bind(&route.name)
        .bind(&route.prefix)
        .bind(route.trunk_id)
        .bind(route.priority)
        .bind(route.created_at)
        .bind(route.updated_at))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&route.name)))?;
    Ok(())
}

/// A route visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<OutboundRoute, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM outbound_routes WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
    );
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// Routes visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<OutboundRoute>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM outbound_routes WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<OutboundRoute> =
        run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(scope.tenant())
            .bind(page.cursor)
            .bind(page.fetch())
            .fetch_all(pool)
            .await)?;
    Ok(Page::from_rows(rows, page, |r| r.id))
}

/// Every route of every tenant (what the signalling core loads at start).
pub async fn all(db: &Db) -> Result<Vec<OutboundRoute>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM outbound_routes ORDER BY id");
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .fetch_all(pool)
    .await)?)
}

/// Writes the name, prefix, trunk and priority of `route`.
pub async fn update(db: &Db, route: &OutboundRoute) -> Result<OutboundRoute, Error> {
    const SQL: &str = "UPDATE outbound_routes SET name = $3, prefix = $4, trunk_id = $5, \
        priority = $6, updated_at = $7 WHERE id = $1 AND tenant_id = $2";
    check_trunk(db, route).await?;
    let now = Timestamp::now();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(route.id)
        .bind(route.tenant_id)
        .bind(&route.name)
        .bind(&route.prefix)
        .bind(route.trunk_id)
        .bind(route.priority)
        .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&route.name)))?;
    one_row(done)?;
    Ok(OutboundRoute {
        updated_at: now,
        ..route.clone()
    })
}

/// Deletes a route visible in `scope`.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const SQL: &str =
        "DELETE FROM outbound_routes WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(scope.tenant()))?)
}

/// Fails with [`Error::InUse`] while a route sends calls through `trunk`.
pub(crate) async fn ensure_no_route_uses(db: &Db, trunk: Uuid) -> Result<(), Error> {
    const SQL: &str = "SELECT name FROM outbound_routes WHERE trunk_id = $1 LIMIT 1";
    let used: Option<String> = run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(trunk)
        .fetch_optional(pool)
        .await)?;
    match used {
        Some(name) => Err(Error::InUse(format!(
            "outbound route `{name}` uses this trunk"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_db;
    use crate::trunks::{self, Transport, Trunk, TrunkKind};
    use crate::{new_id, tenants};

    fn trunk(tenant: Uuid) -> Trunk {
        let now = Timestamp::now();
        Trunk {
            id: new_id(),
            tenant_id: tenant,
            name: format!("t-{}", new_id()),
            kind: TrunkKind::Ip,
            host: "192.0.2.1".into(),
            port: None,
            transport: Transport::Udp,
            secondary_host: None,
            username: None,
            auth_username: None,
            password_set: false,
            register: false,
            allowed_sources: vec!["192.0.2.1".into()],
            tech_prefix: String::new(),
            custom_headers: Default::default(),
            enabled: true,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn routes_need_a_trunk_of_their_tenant_and_hold_it() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let (mine, theirs) = (trunk(a.id), trunk(b.id));
            trunks::create(&db, &mine, None).await.unwrap();
            trunks::create(&db, &theirs, None).await.unwrap();
            let now = Timestamp::now();
            let route = OutboundRoute {
                id: new_id(),
                tenant_id: a.id,
                name: "north-america".into(),
                prefix: "1".into(),
                trunk_id: theirs.id,
                priority: 10,
                created_at: now,
                updated_at: now,
            };
            assert!(matches!(
                create(&db, &route).await,
                Err(Error::InvalidReference(_))
            ));
            let route = OutboundRoute {
                trunk_id: mine.id,
                ..route
            };
            create(&db, &route).await.unwrap();
            assert_eq!(
                get(&db, Scope::Tenant(a.id), route.id).await.unwrap(),
                route
            );
            assert!(matches!(
                get(&db, Scope::Tenant(b.id), route.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(all(&db).await.unwrap(), std::slice::from_ref(&route));
            let changed = update(
                &db,
                &OutboundRoute {
                    prefix: "44".into(),
                    ..route.clone()
                },
            )
            .await
            .unwrap();
            assert_eq!(
                list(&db, Scope::All, &PageRequest::default())
                    .await
                    .unwrap()
                    .items,
                [changed]
            );
            // The trunk cannot go while the route uses it.
            assert!(matches!(
                trunks::delete(&db, Scope::All, mine.id).await,
                Err(Error::InUse(_))
            ));
            delete(&db, Scope::Tenant(a.id), route.id).await.unwrap();
            trunks::delete(&db, Scope::All, mine.id).await.unwrap();
        })
        .await;
    }
}

//! SIP trunks: connections to carriers (Telnyx first). A credential trunk registers and answers
//! digest challenges with a username and password; an IP trunk is trusted by source address.
//! The password is sealed under [`password_context`] and never returned by the API.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

text_enum! {
    /// How the carrier authenticates us and we it.
    pub enum TrunkKind {
        /// Username and password (digest), optionally with outbound REGISTER.
        Credential = "credential",
        /// Source-address trust: inbound accepted only from the allowed sources.
        Ip = "ip",
    }
}

text_enum! {
    /// SIP transport towards the carrier.
    pub enum Transport {
        /// UDP.
        Udp = "udp",
        /// TCP.
        Tcp = "tcp",
        /// TLS over TCP.
        Tls = "tls",
    }
}

/// A trunk, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trunk {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name, unique within the tenant.
    pub name: String,
    /// Authentication kind.
    pub kind: TrunkKind,
    /// Primary proxy host name or address.
    pub host: String,
    /// Port; absent means the transport's default or DNS SRV.
    pub port: Option<u16>,
    /// Transport.
    pub transport: Transport,
    /// Secondary proxy for failover.
    pub secondary_host: Option<String>,
    /// Username (credential trunks).
    pub username: Option<String>,
    /// Digest username when it differs from `username`.
    pub auth_username: Option<String>,
    /// Whether a password is stored (it is never shown).
    pub password_set: bool,
    /// Whether we send REGISTER to the carrier.
    pub register: bool,
    /// Addresses, CIDRs or host names inbound calls may come from (IP trunks).
    pub allowed_sources: Vec<String>,
    /// Digits put in front of every dialled number.
    pub tech_prefix: String,
    /// Extra headers added to outbound INVITEs.
    pub custom_headers: BTreeMap<String, String>,
    /// Whether the trunk is used.
    pub enabled: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The context string that binds a trunk's sealed password to its row.
pub fn password_context(id: Uuid) -> String {
    format!("trunks/{id}/password")
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    kind: String,
    host: String,
    port: Option<i32>,
    transport: String,
    secondary_host: Option<String>,
    username: Option<String>,
    auth_username: Option<String>,
    password: Option<Vec<u8>>,
    register: bool,
    allowed_sources: String,
    tech_prefix: String,
    custom_headers: String,
    enabled: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl TryFrom<Row> for Trunk {
    type Error = Error;
    fn try_from(row: Row) -> Result<Self, Error> {
        let json = |what: &str, e: serde_json::Error| Error::Corrupt(format!("trunk {what}: {e}"));
        Ok(Self {
            id: row.id,
            tenant_id: row.tenant_id,
            name: row.name,
            kind: row.kind.parse()?,
            host: row.host,
            port: row.port.and_then(|p| u16::try_from(p).ok()),
            transport: row.transport.parse()?,
            secondary_host: row.secondary_host,
            username: row.username,
            auth_username: row.auth_username,
            password_set: row.password.is_some(),
            register: row.register,
            allowed_sources: serde_json::from_str(&row.allowed_sources)
                .map_err(|e| json("allowed_sources", e))?,
            tech_prefix: row.tech_prefix,
            custom_headers: serde_json::from_str(&row.custom_headers)
                .map_err(|e| json("custom_headers", e))?,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, name, kind, host, port, transport, secondary_host, username, \
    auth_username, password, register, allowed_sources, tech_prefix, custom_headers, enabled, \
    created_at, updated_at";

fn name_taken(name: &str) -> String {
    format!("a trunk named `{name}` already exists in this tenant")
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Vec<String> and BTreeMap<String, String> always serialise.
    serde_json::to_string(value).expect("string collections serialise")
}

/// Inserts `trunk` with its sealed password, if any.
pub async fn create(db: &Db, trunk: &Trunk, sealed_password: Option<&[u8]>) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO trunks (id, tenant_id, name, kind, host, port, transport, \
        secondary_host, username, auth_username, password, register, allowed_sources, tech_prefix, \
        custom_headers, enabled, created_at, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";
    let (sources, headers) = (
        to_json(&trunk.allowed_sources),
        to_json(&trunk.custom_headers),
    );
    exec!(db, |pool| sqlx::query(SQL)
        .bind(trunk.id)
        .bind(trunk.tenant_id)
        .bind(&trunk.name)
        .bind(trunk.kind.as_str())
        .bind(&trunk.host)
        .bind(trunk.port.map(i32::from))
        .bind(trunk.transport.as_str())
        .bind(&trunk.secondary_host)
        .bind(&trunk.username)
        .bind(&trunk.auth_username)
        .bind(sealed_password)
        .bind(trunk.register)
        .bind(&sources)
        .bind(&trunk.tech_prefix)
        .bind(&headers)
        .bind(trunk.enabled)
        .bind(trunk.created_at)
        .bind(trunk.updated_at))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&trunk.name)))?;
    Ok(())
}

/// A trunk visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<Trunk, Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM trunks WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
    let row: Option<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    row.ok_or(Error::NotFound)?.try_into()
}

/// Every trunk of every tenant (what the signalling core loads at start).
pub async fn all(db: &Db) -> Result<Vec<Trunk>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM trunks ORDER BY id");
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await)?;
    rows.into_iter().map(Trunk::try_from).collect()
}

/// Trunks visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<Trunk>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM trunks WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    let trunks = rows
        .into_iter()
        .map(Trunk::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(trunks, page, |t| t.id))
}

/// Writes every field of `trunk` but its id, tenant and password.
pub async fn update(db: &Db, trunk: &Trunk) -> Result<Trunk, Error> {
    const SQL: &str = "UPDATE trunks SET name = $3, kind = $4, host = $5, port = $6, \
        transport = $7, secondary_host = $8, username = $9, auth_username = $10, register = $11, \
        allowed_sources = $12, tech_prefix = $13, custom_headers = $14, enabled = $15, \
        updated_at = $16 WHERE id = $1 AND tenant_id = $2";
    let now = Timestamp::now();
    let (sources, headers) = (
        to_json(&trunk.allowed_sources),
        to_json(&trunk.custom_headers),
    );
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(trunk.id)
        .bind(trunk.tenant_id)
        .bind(&trunk.name)
        .bind(trunk.kind.as_str())
        .bind(&trunk.host)
        .bind(trunk.port.map(i32::from))
        .bind(trunk.transport.as_str())
        .bind(&trunk.secondary_host)
        .bind(&trunk.username)
        .bind(&trunk.auth_username)
        .bind(trunk.register)
        .bind(&sources)
        .bind(&trunk.tech_prefix)
        .bind(&headers)
        .bind(trunk.enabled)
        .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&trunk.name)))?;
    one_row(done)?;
    Ok(Trunk {
        updated_at: now,
        ..trunk.clone()
    })
}

/// Replaces (or, with `None`, clears) the sealed password.
pub async fn set_password(db: &Db, id: Uuid, sealed: Option<&[u8]>) -> Result<(), Error> {
    const SQL: &str = "UPDATE trunks SET password = $2, updated_at = $3 WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(sealed)
        .bind(Timestamp::now()))?)
}

/// The sealed password, if one is set (open it with [`password_context`]).
pub async fn sealed_password(db: &Db, id: Uuid) -> Result<Option<Vec<u8>>, Error> {
    const SQL: &str = "SELECT password FROM trunks WHERE id = $1";
    run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// Deletes a trunk visible in `scope`, unless an outbound route uses it.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "DELETE FROM trunks WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    crate::outbound_routes::ensure_no_route_uses(db, id).await?;
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(scope.tenant()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_db;
    use crate::{new_id, tenants};

    #[tokio::test]
    async fn round_trips_json_fields_and_hides_password() {
        each_db(|db| async move {
            let tenant = tenants::create(&db, "A", "a.example").await.unwrap();
            let now = Timestamp::now();
            let trunk = Trunk {
                id: new_id(),
                tenant_id: tenant.id,
                name: "telnyx".into(),
                kind: TrunkKind::Credential,
                host: "sip.telnyx.com".into(),
                port: Some(5060),
                transport: Transport::Udp,
                secondary_host: None,
                username: Some("acme".into()),
                auth_username: None,
                password_set: true,
                register: true,
                allowed_sources: vec!["192.0.2.0/24".into()],
                tech_prefix: String::new(),
                custom_headers: BTreeMap::from([("X-Telnyx-Username".into(), "acme".into())]),
                enabled: true,
                created_at: now,
                updated_at: now,
            };
            create(&db, &trunk, Some(b"sealed")).await.unwrap();
            assert_eq!(
                get(&db, Scope::Tenant(tenant.id), trunk.id).await.unwrap(),
                trunk
            );
            assert_eq!(
                sealed_password(&db, trunk.id).await.unwrap(),
                Some(b"sealed".to_vec())
            );
            set_password(&db, trunk.id, None).await.unwrap();
            assert!(!get(&db, Scope::All, trunk.id).await.unwrap().password_set);

            let dup = Trunk {
                id: new_id(),
                ..trunk.clone()
            };
            assert!(matches!(
                create(&db, &dup, None).await,
                Err(Error::Conflict(_))
            ));
            let ip = Trunk {
                kind: TrunkKind::Ip,
                name: "ip".into(),
                password_set: false,
                ..dup
            };
            create(&db, &ip, None).await.unwrap();
            assert_eq!(
                list(&db, Scope::All, &PageRequest::default())
                    .await
                    .unwrap()
                    .items
                    .len(),
                2
            );
            delete(&db, Scope::All, ip.id).await.unwrap();
            assert!(matches!(
                get(&db, Scope::All, ip.id).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}

//! Runs one storage test on every backend: SQLite always, PostgreSQL when
//! `SWITCHBOARD_TEST_POSTGRES_URL` names a server (the README test command starts one and sets
//! `SWITCHBOARD_TEST_REQUIRE_POSTGRES=1`, which turns a missing URL into a failure).

use std::future::Future;

use sqlx::Connection as _;

use crate::{ConnectOptions, Db};

/// Runs `test` on a fresh SQLite database, then on a fresh PostgreSQL database.
pub(crate) async fn each_db<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let (_dir, db) = fresh_sqlite().await;
    test(db.clone()).await;
    db.close().await;
    if let Some(db) = fresh_postgres_if_configured().await {
        test(db.clone()).await;
        db.close().await;
    }
}

/// A fresh SQLite database in a temp dir (deleted when the returned guard drops).
async fn fresh_sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/test.db", dir.path().display());
    let db = Db::connect(&url, &ConnectOptions::default())
        .await
        .expect("sqlite opens");
    (dir, db)
}

/// A fresh PostgreSQL database when `SWITCHBOARD_TEST_POSTGRES_URL` is set.
async fn fresh_postgres_if_configured() -> Option<Db> {
    match std::env::var("SWITCHBOARD_TEST_POSTGRES_URL") {
        Ok(admin_url) => Some(fresh_postgres(&admin_url).await),
        Err(_) if std::env::var_os("SWITCHBOARD_TEST_REQUIRE_POSTGRES").is_some() => {
            panic!(
                "SWITCHBOARD_TEST_REQUIRE_POSTGRES is set but SWITCHBOARD_TEST_POSTGRES_URL is not"
            )
        }
        Err(_) => None,
    }
}

/// Creates an empty database on the server behind `admin_url` and connects to it.
async fn fresh_postgres(admin_url: &str) -> Db {
    let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("postgres admin connects");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base
        .rsplit_once('/')
        .expect("postgres URL has a database path");
    let url = match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    };
    Db::connect(&url, &ConnectOptions::default())
        .await
        .expect("test database opens")
}

/// Columns (table, column, NOT NULL) and explicitly created indexes of a database.
async fn shape(db: &Db) -> (Vec<(String, String, bool)>, Vec<String>) {
    use crate::Backend;
    match db.backend() {
        Backend::Sqlite(pool) => {
            let columns: Vec<(String, String, bool, i64)> = sqlx::query_as(
                "SELECT m.name, p.name, p.\"notnull\", p.pk FROM sqlite_master m \
                 JOIN pragma_table_info(m.name) p WHERE m.type = 'table' \
                 AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )
            .fetch_all(pool)
            .await
            .expect("sqlite schema");
            let indexes: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
            )
            .fetch_all(pool)
            .await
            .expect("sqlite indexes");
            // SQLite lets non-INTEGER primary keys hold NULL unless declared NOT NULL; the
            // application never writes one, so primary keys count as NOT NULL.
            let columns = columns
                .into_iter()
                .map(|(t, c, nn, pk)| (t, c, nn || pk > 0))
                .collect();
            (columns, indexes)
        }
        Backend::Postgres(pool) => {
            let columns: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text, is_nullable::text \
                 FROM information_schema.columns WHERE table_schema = 'public' \
                 AND table_name NOT LIKE '\\_sqlx%'",
            )
            .fetch_all(pool)
            .await
            .expect("postgres schema");
            let indexes: Vec<String> = sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' \
                 AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
            )
            .fetch_all(pool)
            .await
            .expect("postgres indexes");
            let columns = columns
                .into_iter()
                .map(|(t, c, n)| (t, c, n == "NO"))
                .collect();
            (columns, indexes)
        }
    }
}

/// The SQLite and PostgreSQL migrations must describe the same tables, columns, nullability
/// and indexes.
#[tokio::test]
async fn schemas_match() {
    let (_dir, sqlite) = fresh_sqlite().await;
    let Some(postgres) = fresh_postgres_if_configured().await else {
        return;
    };
    let (mut sqlite, mut postgres) = (shape(&sqlite).await, shape(&postgres).await);
    for (columns, indexes) in [&mut sqlite, &mut postgres] {
        columns.sort();
        indexes.sort();
    }
    assert!(sqlite.0.len() > 100, "schema looks empty: {:?}", sqlite.0);
    assert_eq!(
        sqlite.0, postgres.0,
        "columns differ between the SQLite and PostgreSQL migrations"
    );
    assert_eq!(
        sqlite.1, postgres.1,
        "indexes differ between the SQLite and PostgreSQL migrations"
    );
}

//! Storage for Switchboard: the only crate that speaks SQL.
//!
//! One API over two backends:
//!
//! - **SQLite** (default): an embedded file, `sqlite://./data/switchboard.db`, created on first
//!   use, in WAL mode with foreign keys on.
//! - **PostgreSQL** when the URL starts with `postgres://` or `postgresql://`, for several nodes
//!   sharing one database.
//!
//! Every query is written once, with `$1`-style placeholders that both backends accept, and
//! compiled for both through the [`run!`] macro, which matches on the pool and instantiates the
//! same body twice. We chose this over sqlx's `Any` driver because `Any` cannot decode UUIDs and
//! converts every row through an intermediate representation; here each backend gets its native
//! types and codecs. The two dialects differ only in the migrations (`migrations/sqlite` and
//! `migrations/postgres`); the test `schemas_match` checks that they describe the same tables.
//!
//! Conventions: ids are UUIDv7 (time ordered, so they double as pagination cursors); times are
//! [`Timestamp`]s, milliseconds since the Unix epoch; secrets (extension SIP passwords, trunk
//! passwords, TOTP seeds, the JWT signing key) are sealed with [`crypto::SecretBox`]
//! (AES-256-GCM) before they reach a row.

#![forbid(unsafe_code)]

pub mod audit;
pub mod batch;
pub mod calls;
pub mod crypto;
pub mod extensions;
pub mod ivr_flows;
pub mod numbers;
pub mod outbound_routes;
pub mod prompts;
pub mod recordings;
pub mod registrations;
pub mod ring_groups;
pub mod settings;
pub mod tenants;
pub mod tokens;
pub mod trunks;
pub mod users;

mod types;

#[cfg(test)]
mod testing;

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use types::{Page, PageRequest, Scope, Timestamp};
pub use uuid::Uuid;

/// Migrations for the SQLite dialect.
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// Migrations for the PostgreSQL dialect.
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Runs `$body` against whichever pool `$db` holds, binding it to `$pool`.
///
/// The body is compiled once per backend, so it must only use types both backends can encode
/// and decode (UUIDs, integers, booleans, text, bytes). It is a plain block, not a closure:
/// `?` and `return` inside it leave the enclosing function.
macro_rules! run {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db.backend() {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use run;

/// Executes the query built by `$query` (which names the pool `$pool`) on whichever backend `$db`
/// holds and returns the number of rows it touched.
macro_rules! exec {
    ($db:expr, |$pool:ident| $query:expr) => {
        match $db.backend() {
            $crate::Backend::Sqlite($pool) => {
                $query.execute($pool).await.map(|done| done.rows_affected())
            }
            $crate::Backend::Postgres($pool) => {
                $query.execute($pool).await.map(|done| done.rows_affected())
            }
        }
    };
}
pub(crate) use exec;

/// Turns an UPDATE or DELETE row count into [`Error::NotFound`] when nothing matched.
pub(crate) fn one_row(done: u64) -> Result<(), Error> {
    if done == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}

/// The pool behind a [`Db`].
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which database engine a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A handle to the database. Cheap to clone: it is a connection pool.
#[derive(Clone, Debug)]
pub struct Db {
    backend: Backend,
}

/// Options for [`Db::connect`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long to wait for a free connection before failing a query.
    pub acquire_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl Db {
    /// Connects to `url`, creating a SQLite file (and its directory) if missing, and runs the
    /// migrations.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, Error> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url).map_err(Error::Database)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            POSTGRES_MIGRATOR.run(&pool).await?;
            Backend::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(Error::Database)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(options.acquire_timeout);
            if let Some(dir) = Path::new(connect.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|error| {
                    Error::Io(format!(
                        "creating database directory {}: {error}",
                        dir.display()
                    ))
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            SQLITE_MIGRATOR.run(&pool).await?;
            Backend::Sqlite(pool)
        } else {
            return Err(Error::UnsupportedUrl);
        };
        Ok(Self { backend })
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The engine behind this handle.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
        }
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), Error> {
        exec!(self, |pool| sqlx::query("SELECT 1"))?;
        Ok(())
    }

    /// Connections currently open and idle in the pool, for metrics.
    pub fn pool_stats(&self) -> (u32, usize) {
        run!(self, |pool| (pool.size(), pool.num_idle()))
    }

    /// Closes every connection, waiting for queries in flight.
    pub async fn close(&self) {
        run!(self, |pool| pool.close().await);
    }
}

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No row matched (or it belongs to another tenant).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken: the message names what is already taken.
    #[error("{0}")]
    Conflict(String),
    /// The row is still referenced and cannot be removed; the message says by what.
    #[error("{0}")]
    InUse(String),
    /// The row names another row that does not exist (in the same tenant).
    #[error("{0}")]
    InvalidReference(String),
    /// The database URL is neither `sqlite:` nor `postgres://`.
    #[error("database URL must start with `sqlite:` or `postgres://`")]
    UnsupportedUrl,
    /// A sealed secret could not be opened: wrong key or corrupted data.
    #[error("a stored secret cannot be decrypted (wrong secret key?)")]
    Decrypt,
    /// A row holds a value this version does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A filesystem error around the database.
    #[error("{0}")]
    Io(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// Turns a unique-constraint violation into [`Error::Conflict`] with `what` as its message;
    /// passes other errors through.
    pub(crate) fn conflict_on_unique(error: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(what()),
            _ => Self::Database(error),
        }
    }
}

/// A fresh time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

//! Server-wide settings that must survive restarts and be shared by every node using the
//! database, such as the sealed JWT signing key.

use crate::{Db, Error, Timestamp, exec, run};

/// The value stored under `key`, if any.
pub async fn get(db: &Db, key: &str) -> Result<Option<Vec<u8>>, Error> {
    const SQL: &str = "SELECT value FROM settings WHERE key = $1";
    Ok(run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(key)
        .fetch_optional(pool)
        .await)?)
}

/// Stores `value` under `key` unless a value is already there, and returns the stored value.
/// When several nodes start at once, they all end up with the first one's value.
pub async fn get_or_insert(db: &Db, key: &str, value: &[u8]) -> Result<Vec<u8>, Error> {
    const SQL: &str = "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) \
        ON CONFLICT (key) DO NOTHING";
    exec!(db, |pool| sqlx::query(SQL)
        .bind(key)
        .bind(value)
        .bind(Timestamp::now()))?;
    get(db, key).await?.ok_or(Error::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_db;

    #[tokio::test]
    async fn first_value_wins() {
        each_db(|db| async move {
            assert_eq!(get(&db, "k").await.unwrap(), None);
            assert_eq!(get_or_insert(&db, "k", b"one").await.unwrap(), b"one");
            assert_eq!(get_or_insert(&db, "k", b"two").await.unwrap(), b"one");
        })
        .await;
    }
}

//! Refresh tokens. Only a SHA-256 hash of each token is stored. Tokens form families: each
//! refresh spends the presented token and issues the next one of the same family; presenting
//! a spent token again means it was stolen or replayed, and the whole family is revoked.

use uuid::Uuid;

use crate::{Db, Error, Timestamp, exec, run};

/// A stored refresh token.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshToken {
    /// Id.
    pub id: Uuid,
    /// Family: every token descended from one login.
    pub family_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Issued.
    pub created_at: Timestamp,
    /// Expires.
    pub expires_at: Timestamp,
    /// When it was exchanged for a new one.
    pub used_at: Option<Timestamp>,
    /// When it (or its family) was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// Stores a new token.
pub async fn insert(db: &Db, token: &RefreshToken, hash: &[u8]) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, \
        expires_at, used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)";
    exec!(db, |pool| sqlx::query(SQL)
        .bind(token.id)
        .bind(token.family_id)
        .bind(token.user_id)
        .bind(hash)
        .bind(token.created_at)
        .bind(token.expires_at))?;
    Ok(())
}

/// The token with this hash, if any.
pub async fn find(db: &Db, hash: &[u8]) -> Result<Option<RefreshToken>, Error> {
    const SQL: &str = "SELECT id, family_id, user_id, created_at, expires_at, used_at, revoked_at \
        FROM refresh_tokens WHERE token_hash = $1";
    Ok(run!(db, |pool| sqlx::query_as(SQL)
        .bind(hash)
        .fetch_optional(pool)
        .await)?)
}

/// Spends a token. Returns `false` if it was already spent or revoked (including by a
/// concurrent request: only one of two simultaneous refreshes wins).
pub async fn spend(db: &Db, id: Uuid, now: Timestamp) -> Result<bool, Error> {
    const SQL: &str = "UPDATE refresh_tokens SET used_at = $2 \
        WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(id).bind(now))? == 1)
}

/// Revokes every token of a family.
pub async fn revoke_family(db: &Db, family_id: Uuid, now: Timestamp) -> Result<(), Error> {
    const SQL: &str = "UPDATE refresh_tokens SET revoked_at = $2 \
        WHERE family_id = $1 AND revoked_at IS NULL";
    exec!(db, |pool| sqlx::query(SQL).bind(family_id).bind(now))?;
    Ok(())
}

/// Revokes every token of a user.
pub async fn revoke_user(db: &Db, user_id: Uuid, now: Timestamp) -> Result<(), Error> {
    const SQL: &str = "UPDATE refresh_tokens SET revoked_at = $2 \
        WHERE user_id = $1 AND revoked_at IS NULL";
    exec!(db, |pool| sqlx::query(SQL).bind(user_id).bind(now))?;
    Ok(())
}

/// Deletes tokens that expired before `before`. Returns how many.
pub async fn purge_expired(db: &Db, before: Timestamp) -> Result<u64, Error> {
    const SQL: &str = "DELETE FROM refresh_tokens WHERE expires_at < $1";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(before))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::each_db;
    use crate::{new_id, tenants, users};

    #[tokio::test]
    async fn spend_once_and_revoke_family() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let user = users::create(
                &db,
                users::NewUser {
                    tenant_id: a.id,
                    email: "u@a.example".into(),
                    display_name: String::new(),
                    password_hash: "x".into(),
                    role: users::Role::User,
                },
            )
            .await
            .unwrap();
            let family = new_id();
            let token = |expires| RefreshToken {
                id: new_id(),
                family_id: family,
                user_id: user.id,
                created_at: Timestamp(0),
                expires_at: Timestamp(expires),
                used_at: None,
                revoked_at: None,
            };
            let first = token(1_000);
            insert(&db, &first, b"hash-1").await.unwrap();
            assert_eq!(find(&db, b"hash-1").await.unwrap(), Some(first.clone()));
            assert_eq!(find(&db, b"nope").await.unwrap(), None);
            assert!(spend(&db, first.id, Timestamp(5)).await.unwrap());
            assert!(
                !spend(&db, first.id, Timestamp(6)).await.unwrap(),
                "spent twice"
            );

            let second = token(2_000);
            insert(&db, &second, b"hash-2").await.unwrap();
            revoke_family(&db, family, Timestamp(7)).await.unwrap();
            assert!(
                !spend(&db, second.id, Timestamp(8)).await.unwrap(),
                "revoked"
            );
            assert_eq!(
                find(&db, b"hash-2").await.unwrap().unwrap().revoked_at,
                Some(Timestamp(7))
            );

            let other = RefreshToken {
                family_id: new_id(),
                ..token(3_000)
            };
            insert(&db, &other, b"hash-3").await.unwrap();
            revoke_user(&db, user.id, Timestamp(9)).await.unwrap();
            assert!(!spend(&db, other.id, Timestamp(10)).await.unwrap());
            assert_eq!(purge_expired(&db, Timestamp(2_500)).await.unwrap(), 2);
        })
        .await;
    }
}

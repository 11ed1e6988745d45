//! Users of the control plane: email (unique, stored lowercase), argon2 password hash, role,
//! status, optional TOTP second factor, login-failure counter and lockout. Deleting a user is a
//! soft delete: the row stays for the audit log, the email becomes free again.

use serde::Serialize;
use uuid::Uuid;

use crate::types::text_enum;
use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, new_id, one_row, run};

text_enum! {
    /// What a user may do.
    pub enum Role {
        /// Everything, across all tenants.
        Superadmin = "superadmin",
        /// Everything within their tenant.
        Admin = "admin",
        /// Their own extensions, calls and recordings.
        User = "user",
    }
}

text_enum! {
    /// Whether a user may log in.
    pub enum UserStatus {
        /// May log in.
        Active = "active",
        /// May not log in; existing sessions stop working.
        Disabled = "disabled",
    }
}

/// A user, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Tenant the user belongs to.
    pub tenant_id: Uuid,
    /// Login email, lowercase.
    pub email: String,
    /// Name shown in UIs.
    pub display_name: String,
    /// Role.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// Status.
    #[sqlx(try_from = "String")]
    pub status: UserStatus,
    /// Whether a TOTP second factor is required at login.
    pub totp_enabled: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A user with the fields only authentication needs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserAuth {
    /// The user.
    #[sqlx(flatten)]
    pub user: User,
    /// PHC-format argon2 hash.
    pub password_hash: String,
    /// Sealed TOTP seed (pending enrolment or enabled).
    pub totp_secret: Option<Vec<u8>>,
    /// Consecutive failed logins since the last success or lock.
    pub failed_logins: i32,
    /// Logins are refused until then.
    pub locked_until: Option<Timestamp>,
    /// Access tokens carrying another version are no longer valid.
    pub token_version: i32,
}

/// What the per-request authentication check needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// User id.
    pub id: Uuid,
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Role.
    pub role: Role,
    /// Current token version.
    pub token_version: i32,
}

/// A user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// Tenant.
    pub tenant_id: Uuid,
    /// Login email (lowercased on the way in).
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// PHC-format password hash.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// The context string for a user's sealed TOTP seed.
pub fn totp_context(id: Uuid) -> String {
    format!("users/{id}/totp_secret")
}

const USER: &str = "u.id, u.tenant_id, u.email, u.display_name, u.role, u.status, u.totp_enabled, \
                    u.created_at, u.updated_at";

fn email_taken(email: &str) -> String {
    format!("email `{email}` is already registered")
}

/// Creates a user.
pub async fn create(db: &Db, new: NewUser) -> Result<User, Error> {
    let now = Timestamp::now();
    let user = User {
        id: new_id(),
        tenant_id: new.tenant_id,
        email: new.email.to_lowercase(),
        display_name: new.display_name,
        role: new.role,
        status: UserStatus::Active,
        totp_enabled: false,
        created_at: now,
        updated_at: now,
    };
    exec!(db, |pool| sqlx::query(
        "INSERT INTO users (id, tenant_id, email, display_name, password_hash, role, status, \
         totp_enabled, failed_logins, token_version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, 0, 0, $8, $8)"
    )
    .bind(user.id)
    .bind(user.tenant_id)
    .bind(&user.email)
    .bind(&user.display_name)
    .bind(&new.password_hash)
    .bind(user.role.as_str())
    .bind(user.status.as_str())
    .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || email_taken(&user.email)))?;
    Ok(user)
}

/// A live user visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<User, Error> {
    let sql = format!(
        "SELECT {USER} FROM users u WHERE u.id = $1 AND u.deleted_at IS NULL \
         AND ($2 IS NULL OR u.tenant_id = $2)"
    );
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// A live user by email, with authentication fields.
pub async fn get_auth_by_email(db: &Db, email: &str) -> Result<Option<UserAuth>, Error> {
    let sql = format!(
        "SELECT {USER}, u.password_hash, u.totp_secret, u.failed_logins, u.locked_until, \
         u.token_version FROM users u JOIN tenants t ON t.id = u.tenant_id \
         WHERE u.email = $1 AND u.deleted_at IS NULL AND t.deleted_at IS NULL"
    );
    Ok(run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(
        sql.clone()
    ))
    .bind(email.to_lowercase())
    .fetch_optional(pool)
    .await)?)
}

/// A live user by id, with authentication fields.
pub async fn get_auth(db: &Db, id: Uuid) -> Result<UserAuth, Error> {
    let sql = format!(
        "SELECT {USER}, u.password_hash, u.totp_secret, u.failed_logins, u.locked_until, \
         u.token_version FROM users u WHERE u.id = $1 AND u.deleted_at IS NULL"
    );
    run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .fetch_optional(pool)
        .await)?
    .ok_or(Error::NotFound)
}

/// The principal behind an access token, if the user is live, active and in a live tenant.
pub async fn principal(db: &Db, id: Uuid) -> Result<Option<Principal>, Error> {
    const SQL: &str = "SELECT u.tenant_id, u.role, u.token_version FROM users u \
                       JOIN tenants t ON t.id = u.tenant_id \
                       WHERE u.id = $1 AND u.deleted_at IS NULL AND u.status = 'active' \
                       AND t.deleted_at IS NULL";
    let row: Option<(Uuid, String, i32)> = run!(db, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await)?;
    row.map(|(tenant_id, role, token_version)| {
        Ok(Principal {
            id,
            tenant_id,
            role: role.parse()?,
            token_version,
        })
    })
    .transpose()
}

/// Live users visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<User>, Error> {
    let sql = format!(
        "SELECT {USER} FROM users u WHERE u.deleted_at IS NULL AND ($1 IS NULL OR u.tenant_id = $1) \
         AND ($2 IS NULL OR u.id > $2) ORDER BY u.id LIMIT $3"
    );
    let rows: Vec<User> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |u| u.id))
}

/// Writes a user's email, display name, role and status.
pub async fn update(db: &Db, user: &User) -> Result<User, Error> {
    const SQL: &str = "UPDATE users SET email = $2, display_name = $3, role = $4, status = $5, \
                       updated_at = $6 WHERE id = $1 AND deleted_at IS NULL";
    let now = Timestamp::now();
    let email = user.email.to_lowercase();
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(user.id)
        .bind(&email)
        .bind(&user.display_name)
        .bind(user.role.as_str())
        .bind(user.status.as_str())
        .bind(now))
    .map_err(|e| Error::conflict_on_unique(e, || email_taken(&email)))?;
    if done == 0 {
        return Err(Error::NotFound);
    }
    Ok(User {
        email,
        updated_at: now,
        ..user.clone()
    })
}

/// Replaces a user's password hash.
pub async fn set_password_hash(db: &Db, id: Uuid, hash: &str) -> Result<(), Error> {
    const SQL: &str = "UPDATE users SET password_hash = $2, updated_at = $3 \
                       WHERE id = $1 AND deleted_at IS NULL";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(hash)
        .bind(Timestamp::now()))?)
}

/// Stores (or clears) a sealed TOTP seed and whether it is enforced.
pub async fn set_totp(
    db: &Db,
    id: Uuid,
    sealed: Option<Vec<u8>>,
    enabled: bool,
) -> Result<(), Error> {
    const SQL: &str = "UPDATE users SET totp_secret = $2, totp_enabled = $3, totp_last_step = NULL, \
                       updated_at = $4 WHERE id = $1 AND deleted_at IS NULL";
    let done = exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(sealed.clone())
        .bind(enabled)
        .bind(Timestamp::now()))?;
    one_row(done)
}

/// Records that the TOTP code of time step `step` was used. Returns `false` if a code of this
/// or a later step was already used, so that an observed code can't be replayed (RFC 6238 §5.2).
pub async fn use_totp_step(db: &Db, id: Uuid, step: i64) -> Result<bool, Error> {
    const SQL: &str = "UPDATE users SET totp_last_step = $2 \
                       WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)";
    Ok(exec!(db, |pool| sqlx::query(SQL).bind(id).bind(step))? == 1)
}

/// Counts a failed login. When the count reaches `threshold`, the account is locked until
/// `lock_until` and the count starts again. Returns whether this failure locked the account.
pub async fn record_login_failure(
    db: &Db,
    id: Uuid,
    threshold: u32,
    lock_until: Timestamp,
) -> Result<bool, Error> {
    const COUNT: &str =
        "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins";
    const LOCK: &str = "UPDATE users SET failed_logins = 0, locked_until = $2 WHERE id = $1";
    let count: i32 = run!(db, |pool| sqlx::query_scalar(COUNT)
        .bind(id)
        .fetch_one(pool)
        .await)?;
    if u32::try_from(count).unwrap_or(0) >= threshold {
        exec!(db, |pool| sqlx::query(LOCK).bind(id).bind(lock_until))?;
        return Ok(true);
    }
    Ok(false)
}

/// Clears the failure count and any lock after a successful login.
pub async fn record_login_success(db: &Db, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1";
    exec!(db, |pool| sqlx::query(SQL).bind(id))?;
    Ok(())
}

/// Invalidates every access token issued to the user so far.
pub async fn bump_token_version(db: &Db, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "UPDATE users SET token_version = token_version + 1, updated_at = $2 \
                       WHERE id = $1";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(Timestamp::now()))?)
}

/// Soft-deletes a user visible in `scope`: frees the email, detaches their extensions, ends
/// their sessions.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const USER: &str = "UPDATE users SET deleted_at = $2, token_version = token_version + 1 \
                        WHERE id = $1 AND deleted_at IS NULL AND ($3 IS NULL OR tenant_id = $3)";
    const EXTENSIONS: &str = "UPDATE extensions SET user_id = NULL WHERE user_id = $1";
    const TOKENS: &str =
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL";
    let now = Timestamp::now();
    run!(db, |pool| {
        let mut tx = pool.begin().await?;
        let done = sqlx::query(USER)
            .bind(id)
            .bind(now)
            .bind(scope.tenant())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done == 0 {
            return Err(Error::NotFound);
        }
        sqlx::query(EXTENSIONS).bind(id).execute(&mut *tx).await?;
        sqlx::query(TOKENS)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })?;
    Ok(())
}

/// The context string for a user's sealed TURN key.
pub fn turn_key_context(id: Uuid) -> String {
    format!("users/{id}/turn_key")
}

/// A user's sealed TURN long-term key, as [`turn_keys`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TurnKey {
    /// User id (the sealing context is [`turn_key_context`]).
    pub id: Uuid,
    /// Login email: the TURN username.
    pub email: String,
    /// The realm the key was derived for.
    pub realm: String,
    /// The sealed key.
    pub sealed: Vec<u8>,
}

/// Stores a user's sealed TURN key, derived for `realm`.
pub async fn set_turn_key(db: &Db, id: Uuid, realm: &str, sealed: Vec<u8>) -> Result<(), Error> {
    const SQL: &str = "UPDATE users SET turn_key = $2, turn_realm = $3 \
                       WHERE id = $1 AND deleted_at IS NULL";
    one_row(exec!(db, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(sealed.clone())
        .bind(realm))?)
}

/// The TURN keys of every active, undeleted user that has one.
pub async fn turn_keys(db: &Db) -> Result<Vec<TurnKey>, Error> {
    const SQL: &str = "SELECT id, email, turn_realm AS realm, turn_key AS sealed FROM users \
                       WHERE deleted_at IS NULL AND status = 'active' AND turn_key IS NOT NULL \
                       AND turn_realm IS NOT NULL";
    Ok(run!(db, |pool| sqlx::query_as(SQL).fetch_all(pool).await)?)
}

/// Whether any live superadmin exists (bootstrap creates one when not).
pub async fn any_superadmin(db: &Db) -> Result<bool, Error> {
    const SQL: &str = "SELECT COUNT(*) FROM users WHERE role = 'superadmin' AND deleted_at IS NULL";
    let count: i64 = run!(db, |pool| sqlx::query_scalar(SQL).fetch_one(pool).await)?;
    Ok(count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::tests::sample as sample_extension;
    use crate::testing::each_db;
    use crate::{extensions, tenants, tokens};

    fn new_user(tenant_id: Uuid, email: &str, role: Role) -> NewUser {
        NewUser {
            tenant_id,
            email: email.into(),
            display_name: "Someone".into(),
            password_hash: "$argon2id$fake".into(),
            role,
        }
    }

    #[tokio::test]
    async fn email_is_unique_case_insensitively_until_deleted() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let user = create(&db, new_user(a.id, "Alice@Example.com", Role::Admin))
                .await
                .unwrap();
            assert_eq!(user.email, "alice@example.com");
            assert!(matches!(
                create(&db, new_user(b.id, "ALICE@example.com", Role::User)).await,
                Err(Error::Conflict(_))
            ));
            let auth = get_auth_by_email(&db, "alice@EXAMPLE.com")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (auth.user.id, auth.password_hash.as_str()),
                (user.id, "$argon2id$fake")
            );
            assert!(matches!(
                get(&db, Scope::Tenant(b.id), user.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(
                list(&db, Scope::Tenant(a.id), &PageRequest::default())
                    .await
                    .unwrap()
                    .items,
                std::slice::from_ref(&user)
            );

            // Soft delete: the user disappears, their extensions are detached, tokens revoked,
            // and the email can be registered again.
            let mut ext = sample_extension(a.id, "1001");
            ext.user_id = Some(user.id);
            extensions::create(&db, &ext, b"s").await.unwrap();
            let token = tokens::RefreshToken {
                id: crate::new_id(),
                family_id: crate::new_id(),
                user_id: user.id,
                created_at: Timestamp(0),
                expires_at: Timestamp(i64::MAX),
                used_at: None,
                revoked_at: None,
            };
            tokens::insert(&db, &token, b"h").await.unwrap();
            assert!(matches!(
                delete(&db, Scope::Tenant(b.id), user.id).await,
                Err(Error::NotFound)
            ));
            delete(&db, Scope::Tenant(a.id), user.id).await.unwrap();
            assert!(matches!(
                get(&db, Scope::All, user.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(principal(&db, user.id).await.unwrap(), None);
            assert_eq!(
                extensions::get(&db, Scope::All, ext.id)
                    .await
                    .unwrap()
                    .user_id,
                None
            );
            assert!(!tokens::spend(&db, token.id, Timestamp(1)).await.unwrap());
            create(&db, new_user(b.id, "alice@example.com", Role::User))
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn turn_keys_of_active_users_are_listed() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let alice = create(&db, new_user(a.id, "alice@example.com", Role::User))
                .await
                .unwrap();
            let bob = create(&db, new_user(a.id, "bob@example.com", Role::User))
                .await
                .unwrap();
            let carol = create(&db, new_user(a.id, "carol@example.com", Role::User))
                .await
                .unwrap();
            assert_eq!(turn_keys(&db).await.unwrap(), []);
            for user in [&alice, &bob, &carol] {
                set_turn_key(&db, user.id, "realm", user.email.as_bytes().to_vec())
                    .await
                    .unwrap();
            }
            update(
                &db,
                &User {
                    status: UserStatus::Disabled,
                    ..bob.clone()
                },
            )
            .await
            .unwrap();
            delete(&db, Scope::All, carol.id).await.unwrap();
            let keys = turn_keys(&db).await.unwrap();
            assert_eq!(
                keys,
                [TurnKey {
                    id: alice.id,
                    email: alice.email.clone(),
                    realm: "realm".into(),
                    sealed: b"alice@example.com".to_vec(),
                }]
            );
            assert!(matches!(
                set_turn_key(&db, carol.id, "realm", vec![1]).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn lockout_totp_and_principal() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let user = create(&db, new_user(a.id, "bob@example.com", Role::User))
                .await
                .unwrap();
            for _ in 0..2 {
                assert!(
                    !record_login_failure(&db, user.id, 3, Timestamp(99))
                        .await
                        .unwrap()
                );
            }
            assert!(
                record_login_failure(&db, user.id, 3, Timestamp(99))
                    .await
                    .unwrap()
            );
            let auth = get_auth(&db, user.id).await.unwrap();
            assert_eq!(
                (auth.failed_logins, auth.locked_until),
                (0, Some(Timestamp(99)))
            );
            assert!(
                !record_login_failure(&db, user.id, 3, Timestamp(99))
                    .await
                    .unwrap()
            );
            record_login_success(&db, user.id).await.unwrap();
            let auth = get_auth(&db, user.id).await.unwrap();
            assert_eq!((auth.failed_logins, auth.locked_until), (0, None));

            set_totp(&db, user.id, Some(b"sealed".to_vec()), true)
                .await
                .unwrap();
            assert!(get(&db, Scope::All, user.id).await.unwrap().totp_enabled);
            assert!(use_totp_step(&db, user.id, 100).await.unwrap());
            assert!(
                !use_totp_step(&db, user.id, 100).await.unwrap(),
                "replayed step"
            );
            assert!(
                !use_totp_step(&db, user.id, 99).await.unwrap(),
                "older step"
            );
            assert!(use_totp_step(&db, user.id, 101).await.unwrap());

            let p = principal(&db, user.id).await.unwrap().unwrap();
            assert_eq!(
                (p.tenant_id, p.role, p.token_version),
                (a.id, Role::User, 0)
            );
            bump_token_version(&db, user.id).await.unwrap();
            assert_eq!(
                principal(&db, user.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .token_version,
                1
            );
            update(
                &db,
                &User {
                    status: UserStatus::Disabled,
                    ..user.clone()
                },
            )
            .await
            .unwrap();
            assert_eq!(
                principal(&db, user.id).await.unwrap(),
                None,
                "disabled users have no principal"
            );
            assert!(!any_superadmin(&db).await.unwrap());
            set_password_hash(&db, user.id, "$argon2id$new")
                .await
                .unwrap();
            assert_eq!(
                get_auth(&db, user.id).await.unwrap().password_hash,
                "$argon2id$new"
            );
        })
        .await;
    }
}

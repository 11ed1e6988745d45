//! IVR prompts: audio a flow's `play` and `gather` nodes name, per tenant. The audio is stored
//! converted (8 kHz mono 16-bit little-endian PCM) in the row itself, so every node of a
//! cluster reads the same prompt; the conversion lives in `switchboard_media::prompt`.

use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error, Page, PageRequest, Scope, Timestamp, exec, one_row, run};

/// A prompt's description (its audio is read separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prompt {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name, unique within the tenant; flows refer to prompts by name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// What was uploaded, e.g. `pcm16 44100 Hz stereo`.
    pub source: String,
    /// Length in milliseconds.
    pub duration_ms: i64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its audio or description last changed.
    pub updated_at: Timestamp,
}

const COLUMNS: &str =
    "id, tenant_id, name, description, source, duration_ms, created_at, updated_at";

fn name_taken(name: &str) -> String {
    format!("a prompt named `{name}` already exists in this tenant")
}

/// Stores `prompt` with its converted `audio`.
pub async fn create(db: &Db, prompt: &Prompt, audio: &[u8]) -> Result<(), Error> {
    const SQL: &str = "INSERT INTO prompts (id, tenant_id, name, description, source, \
        duration_ms, audio, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    exec!(db, |pool| sqlx::query(SQL)
        .bind(prompt.id)
        .bind(prompt.tenant_id)
        .bind(&prompt.name)
        .bind(&prompt.description)
        .bind(&prompt.source)
        .bind(prompt.duration_ms)
        .bind(audio)
        .bind(prompt.created_at)
        .bind(prompt.updated_at))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&prompt.name)))?;
    Ok(())
}

/// A prompt visible in `scope`.
pub async fn get(db: &Db, scope: Scope, id: Uuid) -> Result<Prompt, Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM prompts WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
    let row: Option<Prompt> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    row.ok_or(Error::NotFound)
}

/// The converted audio of a prompt visible in `scope`.
pub async fn audio(db: &Db, scope: Scope, id: Uuid) -> Result<Vec<u8>, Error> {
    const SQL: &str = "SELECT audio FROM prompts WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
    let audio: Option<Vec<u8>> = run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(pool)
        .await)?;
    audio.ok_or(Error::NotFound)
}

/// The converted audio of a tenant's prompt by name (what a call plays).
pub async fn audio_by_name(db: &Db, tenant_id: Uuid, name: &str) -> Result<Vec<u8>, Error> {
    const SQL: &str = "SELECT audio FROM prompts WHERE tenant_id = $1 AND name = $2";
    let audio: Option<Vec<u8>> = run!(db, |pool| sqlx::query_scalar(SQL)
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(pool)
        .await)?;
    audio.ok_or(Error::NotFound)
}

/// Prompts visible in `scope`, oldest first.
pub async fn list(db: &Db, scope: Scope, page: &PageRequest) -> Result<Page<Prompt>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM prompts WHERE ($1 IS NULL OR tenant_id = $1) \
         AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Prompt> = run!(db, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(scope.tenant())
        .bind(page.cursor)
        .bind(page.fetch())
        .fetch_all(pool)
        .await)?;
    Ok(Page::from_rows(rows, page, |p| p.id))
}

/// Writes the name and description of `prompt`, and its audio when `audio` is given (with
/// `prompt.source` and `prompt.duration_ms` describing it).
pub async fn update(db: &Db, prompt: &Prompt, audio: Option<&[u8]>) -> Result<Prompt, Error> {
    const META: &str = "UPDATE prompts SET name = $3, description = $4, updated_at = $5 \
        WHERE id = $1 AND tenant_id = $2";
    const ALL: &str = "UPDATE prompts SET name = $3, description = $4, updated_at = $5, \
        source = $6, duration_ms = $7, audio = $8 WHERE id = $1 AND tenant_id = $2";
    let now = Timestamp::now();
    let done = exec!(db, |pool| sqlx::query(if audio.is_some() {
        ALL
    } else {
        META
    })
    .bind(prompt.id)
    .bind(prompt.tenant_id)
    .bind(&prompt.name)
    .bind(&prompt.description)
    .bind(now)
    .bind(&prompt.source)
    .bind(prompt.duration_ms)
    .bind(audio))
    .map_err(|e| Error::conflict_on_unique(e, || name_taken(&prompt.name)))?;
    one_row(done)?;
    Ok(Prompt {
        updated_at: now,
        ..prompt.clone()
    })
}

/// Deletes a prompt visible in `scope`.
pub async fn delete(db: &Db, scope: Scope, id: Uuid) -> Result<(), Error> {
    const SQL: &str = "DELETE FROM prompts WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)";
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
    async fn prompts_are_per_tenant_with_their_audio() {
        each_db(|db| async move {
            let a = tenants::create(&db, "A", "a.example").await.unwrap();
            let b = tenants::create(&db, "B", "b.example").await.unwrap();
            let now = Timestamp::now();
            let prompt = Prompt {
                id: new_id(),
                tenant_id: a.id,
                name: "menu".into(),
                description: "main menu".into(),
                source: "pcm16 8000 Hz mono".into(),
                duration_ms: 1,
                created_at: now,
                updated_at: now,
            };
            let pcm: Vec<u8> = (0..=255).collect();
            create(&db, &prompt, &pcm).await.unwrap();
            // Names are unique per tenant only.
            let taken = create(
                &db,
                &Prompt {
                    id: new_id(),
                    ..prompt.clone()
                },
                &[],
            )
            .await;
            assert!(matches!(taken, Err(Error::Conflict(_))), "{taken:?}");
            let other = Prompt {
                id: new_id(),
                tenant_id: b.id,
                ..prompt.clone()
            };
            create(&db, &other, &[1, 2]).await.unwrap();

            assert_eq!(
                get(&db, Scope::Tenant(a.id), prompt.id).await.unwrap(),
                prompt
            );
            assert!(matches!(
                get(&db, Scope::Tenant(b.id), prompt.id).await,
                Err(Error::NotFound)
            ));
            assert_eq!(audio_by_name(&db, a.id, "menu").await.unwrap(), pcm);
            assert_eq!(audio_by_name(&db, b.id, "menu").await.unwrap(), [1, 2]);
            assert!(matches!(
                audio_by_name(&db, a.id, "other").await,
                Err(Error::NotFound)
            ));
            let listed = list(&db, Scope::Tenant(a.id), &PageRequest::default())
                .await
                .unwrap();
            assert_eq!(listed.items, std::slice::from_ref(&prompt));

            // Renaming keeps the audio; replacing the audio changes it.
            let renamed = update(
                &db,
                &Prompt {
                    name: "menu2".into(),
                    ..prompt.clone()
                },
                None,
            )
            .await
            .unwrap();
            assert_eq!(audio(&db, Scope::All, prompt.id).await.unwrap(), pcm);
            let replaced = Prompt {
                duration_ms: 2,
                ..renamed
            };
            update(&db, &replaced, Some(&[9, 9])).await.unwrap();
            assert_eq!(audio(&db, Scope::All, prompt.id).await.unwrap(), [9, 9]);
            assert_eq!(
                get(&db, Scope::All, prompt.id).await.unwrap().duration_ms,
                2
            );

            assert!(matches!(
                delete(&db, Scope::Tenant(b.id), prompt.id).await,
                Err(Error::NotFound)
            ));
            delete(&db, Scope::Tenant(a.id), prompt.id).await.unwrap();
            assert!(matches!(
                audio(&db, Scope::All, prompt.id).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}

//! `/prompts`: audio that IVR flows play (admins). An upload is a WAV file as the request
//! body (PCM, float, A-law or µ-law, any common rate, mono or stereo); it is checked and
//! converted to 8 kHz mono 16-bit PCM before it is stored (`switchboard_media::prompt`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use switchboard_media::prompt::{self as convert, PromptError};
use switchboard_storage::prompts::{self, Prompt};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_prompts, upload_prompt))
        .routes(routes!(get_prompt, update_prompt, delete_prompt))
        .routes(routes!(download_audio, replace_audio))
}

/// Where and how to store an upload.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    /// Name flows use in `prompt`: 1-64 letters, digits, `_`, `-` and `.`, unique in the tenant.
    name: String,
    /// Free text.
    description: Option<String>,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a prompt's name or description; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdatePrompt {
    name: Option<String>,
    description: Option<String>,
}

fn check_name(name: &str) -> ApiResult<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ApiError::invalid(
            "name",
            "must be 1-64 characters of letters, digits, `_`, `-` and `.`",
        ))
    }
}

/// Reads the request body (up to `http.max_upload_bytes`) and converts the WAV file in it.
async fn read_wav(state: &AppState, body: Body) -> ApiResult<convert::Prompt> {
    let limit = state.config.http.max_upload_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("uploads are limited to {limit} bytes (http.max_upload_bytes)"),
        )
    })?;
    tokio::task::spawn_blocking(move || convert::convert(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e: PromptError| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_audio",
                e.to_string(),
            )
        })
}

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// List prompts.
#[utoipa::path(get, path = "/prompts", tag = "prompts", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Prompt>), (status = 403, body = ErrorBody)))]
async fn list_prompts(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Prompt>>> {
    who.require_admin()?;
    Ok(Json(
        prompts::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Upload a prompt: the request body is a WAV file, converted to 8 kHz mono.
#[utoipa::path(post, path = "/prompts", tag = "prompts", security(("bearer" = [])), params(UploadParams),
    request_body(content = Vec<u8>, content_type = "audio/wav"),
    responses((status = 201, body = Prompt), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upload_prompt(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Query(params): Query<UploadParams>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Prompt>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(params.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let name = check_name(&params.name)?;
    let description = validate::optional_text(
        "description",
        params.description.as_deref().unwrap_or(""),
        256,
    )?;
    let audio = read_wav(&state, body).await?;
    let now = Timestamp::now();
    let prompt = Prompt {
        id: new_id(),
        tenant_id,
        name,
        description,
        source: audio.source.clone(),
        duration_ms: i64::try_from(audio.duration_ms()).unwrap_or(i64::MAX),
        created_at: now,
        updated_at: now,
    };
    prompts::create(&state.db, &prompt, &pcm_bytes(&audio.samples)).await?;
    audit(&state, &who, &ip, &prompt, "create").await;
    Ok((StatusCode::CREATED, Json(prompt)))
}

async fn audit(state: &AppState, who: &Auth, ip: &ClientIp, prompt: &Prompt, action: &'static str) {
    state
        .audit(
            who,
            ip,
            AuditEvent {
                tenant_id: Some(prompt.tenant_id),
                action,
                object_type: "prompt",
                object_id: prompt.id.to_string(),
                details: json!({"name": prompt.name, "duration_ms": prompt.duration_ms}),
            },
        )
        .await;
}

/// Read a prompt's description.
#[utoipa::path(get, path = "/prompts/{id}", tag = "prompts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Prompt), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_prompt(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Prompt>> {
    who.require_admin()?;
    Ok(Json(prompts::get(&state.db, who.scope(), id).await?))
}

/// Rename a prompt or change its description (flows refer to prompts by name).
#[utoipa::path(patch, path = "/prompts/{id}", tag = "prompts", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdatePrompt,
    responses((status = 200, body = Prompt), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_prompt(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdatePrompt>,
) -> ApiResult<Json<Prompt>> {
    who.require_admin()?;
    let mut prompt = prompts::get(&state.db, who.scope(), id).await?;
    if let Some(name) = &body.name {
        prompt.name = check_name(name)?;
    }
    if let Some(description) = &body.description {
        prompt.description = validate::optional_text("description", description, 256)?;
    }
    let prompt = prompts::update(&state.db, &prompt, None).await?;
    audit(&state, &who, &ip, &prompt, "update").await;
    Ok(Json(prompt))
}

/// Delete a prompt. Flows that still name it play nothing in its place.
#[utoipa::path(delete, path = "/prompts/{id}", tag = "prompts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_prompt(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let prompt = prompts::get(&state.db, who.scope(), id).await?;
    prompts::delete(&state.db, who.scope(), id).await?;
    audit(&state, &who, &ip, &prompt, "delete").await;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a prompt's audio as stored: an 8 kHz mono 16-bit WAV file.
#[utoipa::path(get, path = "/prompts/{id}/audio", tag = "prompts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "audio/wav", body = Vec<u8>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download_audio(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    who.require_admin()?;
    let pcm = prompts::audio(&state.db, who.scope(), id).await?;
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "audio/wav")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}.wav\""),
        )
        .body(Body::from(convert::wav(&samples)))
        .map_err(ApiError::internal)
}

/// Replace a prompt's audio, keeping its name (flows play the new audio from their next call).
#[utoipa::path(put, path = "/prompts/{id}/audio", tag = "prompts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body(content = Vec<u8>, content_type = "audio/wav"),
    responses((status = 200, body = Prompt), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn replace_audio(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    body: Body,
) -> ApiResult<Json<Prompt>> {
    who.require_admin()?;
    let prompt = prompts::get(&state.db, who.scope(), id).await?;
    let audio = read_wav(&state, body).await?;
    let prompt = Prompt {
        source: audio.source.clone(),
        duration_ms: i64::try_from(audio.duration_ms()).unwrap_or(i64::MAX),
        ..prompt
    };
    let prompt = prompts::update(&state.db, &prompt, Some(&pcm_bytes(&audio.samples))).await?;
    audit(&state, &who, &ip, &prompt, "replace_audio").await;
    Ok(Json(prompt))
}

//! `/recordings`: call recordings and voicemail. Downloads honour single-range HTTP `Range`
//! requests (RFC 9110 §14) so players can seek.

use std::path::{Component, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_storage::recordings::{self, Filter, Recording, RecordingKind};
use switchboard_storage::{Page, Uuid};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_recordings))
        .routes(routes!(get_recording, delete_recording))
        .routes(routes!(download_recording))
}

/// Filters and paging for the recording list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RecordingQuery {
    /// Only recordings of this call.
    call_id: Option<Uuid>,
    /// Only `call` recordings or `voicemail`.
    #[param(value_type = Option<String>)]
    kind: Option<RecordingKind>,
    /// Only the voicemail box of this extension.
    extension_id: Option<Uuid>,
    /// Items per page, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// List recordings, newest first.
#[utoipa::path(get, path = "/recordings", tag = "recordings", security(("bearer" = [])), params(RecordingQuery),
    responses((status = 200, body = Page<Recording>), (status = 401, body = ErrorBody)))]
async fn list_recordings(
    State(state): State<AppState>,
    who: Auth,
    Query(query): Query<RecordingQuery>,
) -> ApiResult<Json<Page<Recording>>> {
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    }
    .request()?;
    let filter = Filter {
        call_id: query.call_id,
        kind: query.kind,
        extension_id: query.extension_id,
        owner: who.owner_filter(),
    };
    Ok(Json(
        recordings::list(&state.db, who.scope(), filter, &page).await?,
    ))
}

/// Read a recording's metadata.
#[utoipa::path(get, path = "/recordings/{id}", tag = "recordings", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Recording), (status = 404, body = ErrorBody)))]
async fn get_recording(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Recording>> {
    Ok(Json(
        recordings::get(&state.db, who.scope(), who.owner_filter(), id).await?,
    ))
}

/// Where a recording's file is: its stored path, relative to the recordings directory.
fn file_path(state: &AppState, recording: &Recording) -> ApiResult<PathBuf> {
    let relative = std::path::Path::new(&recording.path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(ApiError::internal(anyhow::anyhow!(
            "recording {} has an unsafe path {:?}",
            recording.id,
            recording.path
        )));
    }
    Ok(state.recordings_dir.join(relative))
}

/// Download a recording (WAV). Supports `Range: bytes=...` (one range).
#[utoipa::path(get, path = "/recordings/{id}/download", tag = "recordings", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The whole file", content_type = "audio/wav", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "audio/wav", body = Vec<u8>),
        (status = 404, body = ErrorBody),
        (status = 416, description = "Range not satisfiable"),
    ))]
async fn download_recording(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let recording = recordings::get(&state.db, who.scope(), who.owner_filter(), id).await?;
    let path = file_path(&state, &recording)?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "file_missing",
                "the recording's file is missing",
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| parse_range(h, length));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, length),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(Err(())) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            let value =
                HeaderValue::from_str(&format!("bytes */{length}")).map_err(ApiError::internal)?;
            response.headers_mut().insert(header::CONTENT_RANGE, value);
            return Ok(response);
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "audio/wav")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{id}.wav\""),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{length}", start + count - 1),
        );
    }
    response.body(body).map_err(ApiError::internal)
}

/// Parses a `Range` header against a representation of `length` bytes (RFC 9110 §14.1.2).
/// `None`: ignore the header and send everything (not bytes, several ranges, or malformed);
/// `Some(Err)`: unsatisfiable; `Some(Ok((first, last)))`: inclusive byte positions.
fn parse_range(header: &str, length: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if first.is_empty() {
        let suffix = number(last)?;
        if suffix == 0 || length == 0 {
            return Some(Err(()));
        }
        return Some(Ok((length - suffix.min(length), length - 1)));
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        u64::MAX
    } else {
        number(last)?
    };
    if last < first {
        return None;
    }
    if first >= length {
        return Some(Err(()));
    }
    Some(Ok((first, last.min(length - 1))))
}

/// Delete a recording and its file (admins).
#[utoipa::path(delete, path = "/recordings/{id}", tag = "recordings", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_recording(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let recording = recordings::get(&state.db, who.scope(), None, id).await?;
    let path = file_path(&state, &recording)?;
    recordings::delete(&state.db, who.scope(), id).await?;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove recording file");
        }
    }
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(recording.tenant_id),
                action: "delete",
                object_type: "recording",
                object_id: id.to_string(),
                details: json!({"call_id": recording.call_id}),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Some(Ok((0, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=a-b", 1000), None);
        assert_eq!(parse_range("bytes=0-0", 0), Some(Err(())));
    }
}

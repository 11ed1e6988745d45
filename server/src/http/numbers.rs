//! `/numbers`: DIDs and where they route (admins).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchboard_signalling::e164;
use switchboard_storage::numbers::{self, Number, TargetType};
use switchboard_storage::{Page, Timestamp, Uuid, new_id, tenants};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Json, PageParams, Path, Query};
use super::{ApiError, ApiResult, AppState, AuditEvent, Auth, ClientIp, validate};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_numbers, create_number))
        .routes(routes!(get_number, update_number, delete_number))
}

/// Where a number routes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Target {
    /// `extension`, `ring_group` or `ivr_flow`.
    #[serde(rename = "type")]
    kind: TargetType,
    /// Id of the target, in the number's tenant.
    id: Uuid,
}

/// A new number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateNumber {
    /// The number: E.164 (`+15551234567`) or a North American 10/11-digit form.
    number: String,
    /// Where calls to it go.
    target: Target,
    /// Free text.
    #[serde(default)]
    description: String,
    /// Tenant (superadmins only; default: the caller's).
    tenant_id: Option<Uuid>,
}

/// Changes to a number; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateNumber {
    number: Option<String>,
    target: Option<Target>,
    description: Option<String>,
}

fn normalize(number: &str) -> ApiResult<String> {
    e164::normalize(number).map_err(|e| ApiError::invalid("number", e))
}

fn audit_details(number: &Number) -> serde_json::Value {
    json!({"e164": number.e164, "target_type": number.target_type, "target_id": number.target_id})
}

/// List numbers.
#[utoipa::path(get, path = "/numbers", tag = "numbers", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Number>), (status = 403, body = ErrorBody)))]
async fn list_numbers(
    State(state): State<AppState>,
    who: Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Number>>> {
    who.require_admin()?;
    Ok(Json(
        numbers::list(&state.db, who.scope(), &page.request()?).await?,
    ))
}

/// Add a number.
#[utoipa::path(post, path = "/numbers", tag = "numbers", security(("bearer" = [])), request_body = CreateNumber,
    responses((status = 201, body = Number), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_number(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Json(body): Json<CreateNumber>,
) -> ApiResult<(StatusCode, Json<Number>)> {
    who.require_admin()?;
    let tenant_id = who.tenant_for_create(body.tenant_id)?;
    tenants::get(&state.db, tenant_id)
        .await
        .map_err(|_| ApiError::invalid("tenant_id", "no such tenant"))?;
    let now = Timestamp::now();
    let number = Number {
        id: new_id(),
        tenant_id,
        e164: normalize(&body.number)?,
        target_type: body.target.kind,
        target_id: body.target.id,
        description: validate::optional_text("description", &body.description, 200)?,
        created_at: now,
        updated_at: now,
    };
    numbers::create(&state.db, &number).await?;
    state.sync_number(number.id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(tenant_id),
                action: "create",
                object_type: "number",
                object_id: number.id.to_string(),
                details: audit_details(&number),
            },
        )
        .await;
    Ok((StatusCode::CREATED, Json(number)))
}

/// Read a number.
#[utoipa::path(get, path = "/numbers/{id}", tag = "numbers", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Number), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_number(
    State(state): State<AppState>,
    who: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Number>> {
    who.require_admin()?;
    Ok(Json(numbers::get(&state.db, who.scope(), id).await?))
}

/// Change a number or where it routes.
#[utoipa::path(patch, path = "/numbers/{id}", tag = "numbers", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateNumber,
    responses((status = 200, body = Number), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_number(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateNumber>,
) -> ApiResult<Json<Number>> {
    who.require_admin()?;
    let mut number = numbers::get(&state.db, who.scope(), id).await?;
    if let Some(e164) = &body.number {
        number.e164 = normalize(e164)?;
    }
    if let Some(target) = body.target {
        number.target_type = target.kind;
        number.target_id = target.id;
    }
    if let Some(description) = &body.description {
        number.description = validate::optional_text("description", description, 200)?;
    }
    let number = numbers::update(&state.db, &number).await?;
    state.sync_number(number.id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(number.tenant_id),
                action: "update",
                object_type: "number",
                object_id: id.to_string(),
                details: audit_details(&number),
            },
        )
        .await;
    Ok(Json(number))
}

/// Remove a number.
#[utoipa::path(delete, path = "/numbers/{id}", tag = "numbers", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_number(
    State(state): State<AppState>,
    who: Auth,
    ip: ClientIp,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    let number = numbers::get(&state.db, who.scope(), id).await?;
    numbers::delete(&state.db, who.scope(), id).await?;
    state.sync_number(id).await;
    state
        .audit(
            &who,
            &ip,
            AuditEvent {
                tenant_id: Some(number.tenant_id),
                action: "delete",
                object_type: "number",
                object_id: id.to_string(),
                details: audit_details(&number),
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

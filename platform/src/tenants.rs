//! Tenants: the top of the hierarchy (tenant → project → stage). Staff create and delete them;
//! a developer sees the tenants it holds a grant in.

use crate::audit::{self, Change};
use crate::catalog::tenant;
use crate::deployed::{count_live, Within};
use crate::error::{ApiError, Json};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{check_alias, check_name, AsStaff, Principal, TenantPath, TenantScope};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, StorageError};
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{CreateTenant, ErrorBody, Tenant, TenantList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, delete_tenant))
}

/// Maps a unique violation on an alias to 409 `alias_taken`.
pub fn alias_conflict(error: impl Into<StorageError>, alias: Option<&str>) -> ApiError {
    ApiError::conflict_on_duplicate(error, "alias_taken", || {
        format!(
            "the alias {:?} is already in use here",
            alias.unwrap_or_default()
        )
    })
}

/// Create a tenant (admin, support).
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = CreateTenant,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Tenant), (status = "4XX", body = ErrorBody)))]
async fn create_tenant(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<CreateTenant>>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    check_name(&request.name)?;
    if let Some(alias) = &request.alias {
        check_alias(alias)?;
    }
    let tenant = Tenant {
        id: new_id(),
        alias: request.alias,
        name: request.name,
        created_at: now_millis(),
    };
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query("INSERT INTO tenants (id, alias, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&tenant.id)
        .bind(&tenant.alias)
        .bind(&tenant.name)
        .bind(tenant.created_at)
        .execute(&mut *transaction)
        .await
        .map_err(|error| alias_conflict(error, tenant.alias.as_deref()))?;
    audit::record(
        &mut *transaction,
        &principal,
        Change {
            action: "tenant.create",
            target_kind: "tenant",
            target_id: &tenant.id,
            tenant_id: Some(&tenant.id),
            project_id: None,
            details: serde_json::json!({"name": tenant.name, "alias": tenant.alias}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Tenants the caller can see: all for staff, those with a grant for a developer.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants",
    security(("bearer" = [])),
    responses((status = 200, body = TenantList), (status = "4XX", body = ErrorBody)))]
async fn list_tenants(
    principal: Principal,
    State(state): State<AppState>,
) -> Result<Json<TenantList>, ApiError> {
    let rows = if principal.is_staff() {
        sqlx::query("SELECT id, alias, name, created_at FROM tenants ORDER BY created_at")
            .fetch_all(state.database.reader())
            .await
    } else {
        sqlx::query(
            "SELECT id, alias, name, created_at FROM tenants WHERE id IN \
             (SELECT tenant_id FROM grants WHERE account_id = $1) ORDER BY created_at",
        )
        .bind(&principal.account_id)
        .fetch_all(state.database.reader())
        .await
    }?;
    Ok(Json(TenantList {
        tenants: rows.iter().map(tenant).collect(),
    }))
}

/// One tenant (staff, or a developer with any grant in it).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}", tag = "tenants",
    params(TenantPath),
    security(("bearer" = [])),
    responses((status = 200, body = Tenant), (status = "4XX", body = ErrorBody)))]
async fn get_tenant(scope: TenantScope) -> Json<Tenant> {
    Json(scope.tenant)
}

/// Delete a tenant and everything in it (admin, support). Refused while a deployment in it is
/// active or draining.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}", tag = "tenants",
    params(TenantPath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_tenant(
    AsStaff(scope): AsStaff<TenantScope>,
    State(state): State<AppState>,
) -> Result<StatusCode, ApiError> {
    let tenant = &scope.tenant;
    let mut transaction = state.database.writer().begin().await?;
    let live = count_live(&mut *transaction, Within::Tenant(&tenant.id)).await?;
    if live > 0 {
        return Err(ApiError::conflict(
            "tenant_has_live_deployments",
            format!("tenant has {live} active or draining deployments; close them first"),
        ));
    }
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(&tenant.id)
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "tenant.delete",
            target_kind: "tenant",
            target_id: &tenant.id,
            tenant_id: Some(&tenant.id),
            project_id: None,
            details: serde_json::json!({"name": tenant.name, "alias": tenant.alias}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Permission grants and revocations (admin, support): a developer gets `viewer` or `manager` on a
//! tenant, one of its projects, or one stage.

use crate::accounts;
use crate::audit::{self, Change};
use crate::catalog;
use crate::error::{ApiError, Json};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{AsStaff, TenantPath, TenantScope};
use crate::state::AppState;
use crate::storage::now_millis;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{ErrorBody, Grant, GrantList, GrantRequest, GrantRole, Role, ScopeKind};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(grant, list_grants))
        .routes(routes!(revoke))
}

/// The account and scope id a request names, checked against the tenant.
struct Resolved {
    account_id: String,
    username: String,
    scope_id: String,
}

async fn resolve(
    state: &AppState,
    scope: &TenantScope,
    request: &GrantRequest,
) -> Result<Resolved, ApiError> {
    let account = accounts::find(&state.database, &request.developer)
        .await?
        .ok_or(ApiError::NotFound { what: "developer" })?;
    if account.role != Role::Developer {
        return Err(ApiError::bad_request(
            "not_a_developer",
            "grants are for developer accounts; admin and support see everything already",
        ));
    }
    let needs = |field: &Option<String>, name: &str| {
        field.clone().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_scope",
                format!("a {} grant needs `{name}`", request.scope.as_str()),
            )
        })
    };
    let scope_id = match request.scope {
        ScopeKind::Tenant => scope.tenant.id.clone(),
        ScopeKind::Project | ScopeKind::Stage => {
            let project_segment = needs(&request.project, "project")?;
            let project =
                catalog::find_project(&state.database, &scope.tenant.id, &project_segment)
                    .await?
                    .ok_or(ApiError::NotFound { what: "project" })?;
            if request.scope == ScopeKind::Project {
                project.id
            } else {
                let stage_segment = needs(&request.stage, "stage")?;
                catalog::find_stage(&state.database, &project.id, &stage_segment)
                    .await?
                    .ok_or(ApiError::NotFound { what: "stage" })?
                    .id
            }
        }
    };
    Ok(Resolved {
        account_id: account.id,
        username: account.username,
        scope_id,
    })
}

/// Grant a developer a role on the tenant, a project or a stage (admin, support).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/grants", tag = "permissions",
    request_body = GrantRequest,
    params(TenantPath, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Grant), (status = "4XX", body = ErrorBody)))]
async fn grant(
    AsStaff(scope): AsStaff<TenantScope>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<GrantRequest>>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    let resolved = resolve(&state, &scope, &request).await?;
    let now = now_millis();
    let mut transaction = state.database.writer().begin().await?;
    // Granting what is already held changes nothing and answers with the grant.
    let inserted = sqlx::query(
        "INSERT INTO grants (account_id, scope_kind, scope_id, role, tenant_id, granted_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(&resolved.account_id)
    .bind(request.scope.as_str())
    .bind(&resolved.scope_id)
    .bind(request.role.as_str())
    .bind(&scope.tenant.id)
    .bind(&scope.access.principal.account_id)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    if inserted.rows_affected() == 1 {
        audit::record(
            &mut *transaction,
            &scope.access.principal,
            Change {
                action: "grant.create",
                target_kind: request.scope.as_str(),
                target_id: &resolved.scope_id,
                tenant_id: Some(&scope.tenant.id),
                project_id: None,
                details: serde_json::json!({
                    "developer": resolved.account_id, "username": resolved.username,
                    "role": request.role.as_str(),
                }),
            },
        )
        .await?;
    }
    let created_at: i64 = sqlx::query_scalar(
        "SELECT created_at FROM grants WHERE account_id = $1 AND scope_kind = $2 \
         AND scope_id = $3 AND role = $4",
    )
    .bind(&resolved.account_id)
    .bind(request.scope.as_str())
    .bind(&resolved.scope_id)
    .bind(request.role.as_str())
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Grant {
            account_id: resolved.account_id,
            username: resolved.username,
            tenant_id: scope.tenant.id.clone(),
            scope: request.scope,
            scope_id: resolved.scope_id,
            role: request.role,
            created_at,
        }),
    ))
}

/// Revoke a grant (admin, support).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/grants/revoke", tag = "permissions",
    request_body = GrantRequest,
    params(TenantPath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn revoke(
    AsStaff(scope): AsStaff<TenantScope>,
    State(state): State<AppState>,
    Json(request): Json<GrantRequest>,
) -> Result<StatusCode, ApiError> {
    let resolved = resolve(&state, &scope, &request).await?;
    let mut transaction = state.database.writer().begin().await?;
    let deleted = sqlx::query(
        "DELETE FROM grants WHERE account_id = $1 AND scope_kind = $2 AND scope_id = $3 \
         AND role = $4 AND tenant_id = $5",
    )
    .bind(&resolved.account_id)
    .bind(request.scope.as_str())
    .bind(&resolved.scope_id)
    .bind(request.role.as_str())
    .bind(&scope.tenant.id)
    .execute(&mut *transaction)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::NotFound { what: "grant" });
    }
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "grant.revoke",
            target_kind: request.scope.as_str(),
            target_id: &resolved.scope_id,
            tenant_id: Some(&scope.tenant.id),
            project_id: None,
            details: serde_json::json!({
                "developer": resolved.account_id, "username": resolved.username,
                "role": request.role.as_str(),
            }),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every grant in the tenant (admin, support).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/grants", tag = "permissions",
    params(TenantPath),
    security(("bearer" = [])),
    responses((status = 200, body = GrantList), (status = "4XX", body = ErrorBody)))]
async fn list_grants(
    AsStaff(scope): AsStaff<TenantScope>,
    State(state): State<AppState>,
) -> Result<Json<GrantList>, ApiError> {
    let rows = sqlx::query(
        "SELECT g.account_id, a.username, g.scope_kind, g.scope_id, g.role, g.created_at \
         FROM grants g JOIN accounts a ON a.id = g.account_id \
         WHERE g.tenant_id = $1 ORDER BY a.username, g.scope_kind, g.scope_id",
    )
    .bind(&scope.tenant.id)
    .fetch_all(state.database.reader())
    .await?;
    let grants = rows
        .iter()
        .map(|row| {
            let kind: String = row.get(2);
            let role: String = row.get(4);
            Grant {
                account_id: row.get(0),
                username: row.get(1),
                tenant_id: scope.tenant.id.clone(),
                scope: match kind.as_str() {
                    "tenant" => ScopeKind::Tenant,
                    "project" => ScopeKind::Project,
                    _ => ScopeKind::Stage,
                },
                scope_id: row.get(3),
                role: if role == "manager" {
                    GrantRole::Manager
                } else {
                    GrantRole::Viewer
                },
                created_at: row.get(5),
            }
        })
        .collect();
    Ok(Json(GrantList { grants }))
}

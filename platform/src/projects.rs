//! Projects: a game inside a tenant. Creating one also creates its `default` stage and makes the
//! creator its manager.

use crate::audit::{self, Change};
use crate::catalog::{project, PROJECT_COLUMNS};
use crate::deployed::{count_live, Within};
use crate::error::{ApiError, Json};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{
    check_alias, check_name, Managing, ProjectPath, ProjectScope, TenantPath, TenantScope,
};
use crate::state::AppState;
use crate::storage::{new_id, now_millis};
use crate::tenants::alias_conflict;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{CreateNamed, ErrorBody, Project, ProjectList, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const DEFAULT_STAGE: &str = "default";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, delete_project))
}

/// Create a project (tenant managers). It gets a `default` stage, and a developer who creates
/// it becomes its manager.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects", tag = "projects",
    request_body = CreateNamed,
    params(TenantPath, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Project), (status = "4XX", body = ErrorBody)))]
async fn create_project(
    Managing(scope): Managing<TenantScope>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<CreateNamed>>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    check_name(&request.name)?;
    if let Some(alias) = &request.alias {
        check_alias(alias)?;
    }
    let principal = &scope.access.principal;
    let now = now_millis();
    let project = Project {
        id: new_id(),
        tenant_id: scope.tenant.id.clone(),
        alias: request.alias,
        name: request.name,
        created_at: now,
    };
    let stage_id = new_id();
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query(
        "INSERT INTO projects (id, tenant_id, alias, name, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&project.id)
    .bind(&project.tenant_id)
    .bind(&project.alias)
    .bind(&project.name)
    .bind(now)
    .execute(&mut *transaction)
    .await
    .map_err(|error| alias_conflict(error, project.alias.as_deref()))?;
    sqlx::query(
        "INSERT INTO stages (id, project_id, alias, name, created_at) VALUES ($1, $2, $3, $3, $4)",
    )
    .bind(&stage_id)
    .bind(&project.id)
    .bind(DEFAULT_STAGE)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    if principal.role == Role::Developer {
        sqlx::query(
            "INSERT INTO grants (account_id, scope_kind, scope_id, role, tenant_id, granted_by, created_at) \
             VALUES ($1, 'project', $2, 'manager', $3, $1, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&principal.account_id)
        .bind(&project.id)
        .bind(&project.tenant_id)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
    }
    audit::record(
        &mut *transaction,
        principal,
        Change {
            action: "project.create",
            target_kind: "project",
            target_id: &project.id,
            tenant_id: Some(&project.tenant_id),
            project_id: Some(&project.id),
            details: serde_json::json!({"name": project.name, "alias": project.alias, "default_stage_id": stage_id}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// Projects of the tenant the caller can see.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects", tag = "projects",
    params(TenantPath),
    security(("bearer" = [])),
    responses((status = 200, body = ProjectList), (status = "4XX", body = ErrorBody)))]
async fn list_projects(
    scope: TenantScope,
    State(state): State<AppState>,
) -> Result<Json<ProjectList>, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE tenant_id = $1 ORDER BY created_at"
    ))
    .bind(&scope.tenant.id)
    .fetch_all(state.database.reader())
    .await?;
    let projects = rows
        .iter()
        .map(project)
        .filter(|project| scope.access.project_visible(&project.id))
        .collect();
    Ok(Json(ProjectList { projects }))
}

/// One project.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}", tag = "projects",
    params(ProjectPath),
    security(("bearer" = [])),
    responses((status = 200, body = Project), (status = "4XX", body = ErrorBody)))]
async fn get_project(scope: ProjectScope) -> Json<Project> {
    Json(scope.project)
}

/// Delete a project with its stages, versions and deployments (project managers). Refused
/// while one of its deployments is active or draining.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/projects/{project}", tag = "projects",
    params(ProjectPath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_project(
    Managing(scope): Managing<ProjectScope>,
    State(state): State<AppState>,
) -> Result<StatusCode, ApiError> {
    let project = &scope.project;
    let mut transaction = state.database.writer().begin().await?;
    let live = count_live(&mut *transaction, Within::Project(&project.id)).await?;
    if live > 0 {
        return Err(ApiError::conflict(
            "project_has_live_deployments",
            format!("project has {live} active or draining deployments; stop them first"),
        ));
    }
    sqlx::query(
        "DELETE FROM grants WHERE (scope_kind = 'project' AND scope_id = $1) \
         OR (scope_kind = 'stage' AND scope_id IN (SELECT id FROM stages WHERE project_id = $1))",
    )
    .bind(&project.id)
    .execute(&mut *transaction)
    .await?;
    sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(&project.id)
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "project.delete",
            target_kind: "project",
            target_id: &project.id,
            tenant_id: Some(&project.tenant_id),
            project_id: Some(&project.id),
            details: serde_json::json!({"name": project.name, "alias": project.alias}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

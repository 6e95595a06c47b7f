//! Stages of a project (`default`, `staging`, `production`...): where versions are deployed.

use crate::audit::{self, Change};
use crate::catalog::{stage, STAGE_SELECT};
use crate::deployed::{count_live, Within};
use crate::error::{ApiError, Json};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{
    check_alias, check_name, require, Level, Managing, ProjectPath, ProjectScope, StagePath,
    StageScope,
};
use crate::state::AppState;
use crate::storage::{new_id, now_millis};
use crate::tenants::alias_conflict;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{CreateNamed, ErrorBody, Stage, StageList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_stage, list_stages))
        .routes(routes!(get_stage, delete_stage))
}

/// Create a stage (project managers).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/stages", tag = "stages",
    request_body = CreateNamed,
    params(ProjectPath, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Stage), (status = "4XX", body = ErrorBody)))]
async fn create_stage(
    Managing(scope): Managing<ProjectScope>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<CreateNamed>>,
) -> Result<(StatusCode, Json<Stage>), ApiError> {
    check_name(&request.name)?;
    if let Some(alias) = &request.alias {
        check_alias(alias)?;
    }
    let stage = Stage {
        id: new_id(),
        project_id: scope.project.id.clone(),
        alias: request.alias,
        name: request.name,
        current_deployment_id: None,
        pool: crate::pools::registry::LOCAL_POOL.to_owned(),
        created_at: now_millis(),
    };
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query(
        "INSERT INTO stages (id, project_id, alias, name, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&stage.id)
    .bind(&stage.project_id)
    .bind(&stage.alias)
    .bind(&stage.name)
    .bind(stage.created_at)
    .execute(&mut *transaction)
    .await
    .map_err(|error| alias_conflict(error, stage.alias.as_deref()))?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "stage.create",
            target_kind: "stage",
            target_id: &stage.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&stage.project_id),
            details: serde_json::json!({"name": stage.name, "alias": stage.alias}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok((StatusCode::CREATED, Json(stage)))
}

/// Stages of the project the caller can see.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages", tag = "stages",
    params(ProjectPath),
    security(("bearer" = [])),
    responses((status = 200, body = StageList), (status = "4XX", body = ErrorBody)))]
async fn list_stages(
    scope: ProjectScope,
    State(state): State<AppState>,
) -> Result<Json<StageList>, ApiError> {
    let rows = sqlx::query(&format!(
        "{STAGE_SELECT} WHERE s.project_id = $1 ORDER BY s.created_at"
    ))
    .bind(&scope.project.id)
    .fetch_all(state.database.reader())
    .await?;
    let stages = rows
        .iter()
        .map(stage)
        .filter(|stage| scope.access.stage_level(&scope.project.id, &stage.id) >= Level::Viewer)
        .collect();
    Ok(Json(StageList { stages }))
}

/// One stage, with its current deployment.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}", tag = "stages",
    params(StagePath),
    security(("bearer" = [])),
    responses((status = 200, body = Stage), (status = "4XX", body = ErrorBody)))]
async fn get_stage(scope: StageScope) -> Json<Stage> {
    Json(scope.stage)
}

/// Delete a stage and its deployment history (project managers). Refused while one of its
/// deployments is active or draining.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}", tag = "stages",
    params(StagePath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_stage(
    scope: StageScope,
    State(state): State<AppState>,
) -> Result<StatusCode, ApiError> {
    require(
        scope.access.project_level(&scope.project.id),
        Level::Manager,
    )?;
    let stage = &scope.stage;
    let mut transaction = state.database.writer().begin().await?;
    let live = count_live(&mut *transaction, Within::Stage(&stage.id)).await?;
    if live > 0 {
        return Err(ApiError::conflict(
            "stage_has_live_deployments",
            "the stage has an active or draining deployment; stop it first",
        ));
    }
    sqlx::query("DELETE FROM grants WHERE scope_kind = 'stage' AND scope_id = $1")
        .bind(&stage.id)
        .execute(&mut *transaction)
        .await?;
    sqlx::query("DELETE FROM stages WHERE id = $1")
        .bind(&stage.id)
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "stage.delete",
            target_kind: "stage",
            target_id: &stage.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&scope.project.id),
            details: serde_json::json!({"name": stage.name, "alias": stage.alias}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Deployments: a version running on a stage. Deploying makes the new deployment the stage's
//! current (active) one and marks the previous one draining: its existing matches finish while
//! new clients go to the new one, then it closes.

use crate::audit::{self, Change};
use crate::deployed::{stored_config, LoadError};
use crate::error::{ApiError, Json, Path};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{Managing, StagePath, StageScope};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, Database};
use crate::versions;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::manifest::{DeploymentOverrides, Manifest};
use rally_sdk::wire::{CreateDeployment, Deployment, DeploymentList, DeploymentStatus, ErrorBody};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(get_deployment))
        .routes(routes!(stop_deployment))
}

const SELECT: &str =
    "SELECT d.id, d.stage_id, d.version_id, v.number AS version_number, d.status, \
     d.config, d.created_by, d.created_at, d.draining_at, d.closed_at \
     FROM deployments d JOIN versions v ON v.id = d.version_id";

fn deployment(row: &AnyRow) -> Result<Deployment, LoadError> {
    let id: String = row.get("id");
    let status: String = row.get("status");
    Ok(Deployment {
        config: stored_config(&id, &row.get::<String, _>("config"))?,
        id,
        stage_id: row.get("stage_id"),
        version_id: row.get("version_id"),
        version_number: row.get("version_number"),
        status: match status.as_str() {
            "active" => DeploymentStatus::Active,
            "draining" => DeploymentStatus::Draining,
            _ => DeploymentStatus::Closed,
        },
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        draining_at: row.get("draining_at"),
        closed_at: row.get("closed_at"),
    })
}

/// The deployment `deployment_id` if it is one of the stage's.
pub async fn find(
    database: &Database,
    stage_id: &str,
    deployment_id: &str,
) -> Result<Option<Deployment>, LoadError> {
    let row = sqlx::query(&format!("{SELECT} WHERE d.stage_id = $1 AND d.id = $2"))
        .bind(stage_id)
        .bind(deployment_id)
        .fetch_optional(database.reader())
        .await?;
    row.as_ref().map(deployment).transpose()
}

/// Deploy a version of the stage's project (stage managers). It becomes the stage's current
/// deployment; the previous one drains.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments",
    tag = "deployments", request_body = CreateDeployment,
    params(StagePath, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Deployment), (status = "4XX", body = ErrorBody)))]
async fn create_deployment(
    Managing(scope): Managing<StageScope>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<CreateDeployment>>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let version = versions::find(&state.database, &scope.project.id, &request.version)
        .await?
        // Not found, like any other unknown id the request names.
        .ok_or_else(|| ApiError::Rejected {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "version_not_in_project",
            message: format!(
                "{:?} is not a version of this stage's project; upload it to the project first",
                request.version
            ),
        })?;
    let manifest: Manifest =
        serde_json::from_value(version.manifest.clone()).map_err(ApiError::internal)?;
    let overrides: DeploymentOverrides = if request.config.is_null() {
        DeploymentOverrides::default()
    } else {
        serde_json::from_value(request.config).map_err(|error| {
            ApiError::bad_request("invalid_deployment_config", format!("config: {error}"))
        })?
    };
    let config = overrides.apply(&manifest.deployment);
    config
        .validate(&manifest.modes)
        .map_err(|problems| ApiError::Invalid {
            code: "invalid_deployment_config",
            message: problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            details: serde_json::json!({ "problems": problems }),
        })?;
    check_runnable(&state, &scope, &version, &manifest, &config)?;
    check_capacity(&state, &scope.stage.pool, &config).await?;
    let config = serde_json::to_string(&config).map_err(ApiError::internal)?;
    let principal = &scope.access.principal;
    let id = new_id();
    let now = now_millis();

    let mut transaction = state.database.writer().begin().await?;
    let replaced: Vec<String> = sqlx::query_scalar(
        "UPDATE deployments SET status = 'draining', draining_at = $2 \
         WHERE stage_id = $1 AND status = 'active' RETURNING id",
    )
    .bind(&scope.stage.id)
    .bind(now)
    .fetch_all(&mut *transaction)
    .await?;
    sqlx::query(
        "INSERT INTO deployments (id, stage_id, version_id, status, config, created_by, created_at) \
         VALUES ($1, $2, $3, 'active', $4, $5, $6)",
    )
    .bind(&id)
    .bind(&scope.stage.id)
    .bind(&version.id)
    .bind(&config)
    .bind(&principal.account_id)
    .bind(now)
    .execute(&mut *transaction)
    .await
    .map_err(|error| {
        ApiError::conflict_on_duplicate(error, "deployment_conflict", || {
            "another deployment to this stage happened at the same moment; retry".to_owned()
        })
    })?;
    audit::record(
        &mut *transaction,
        principal,
        Change {
            action: "deployment.create",
            target_kind: "deployment",
            target_id: &id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&scope.project.id),
            details: serde_json::json!({
                "stage_id": scope.stage.id, "version_id": version.id,
                "version_number": version.number, "replaced": replaced,
            }),
        },
    )
    .await?;
    transaction.commit().await?;
    // New matches form on it from now on, not from the supervisor's next pass. (With several
    // nodes, the node running the stage learns it at its next pass.)
    state
        .dispatcher
        .deployed(crate::dispatcher::DeploymentFacts {
            id: id.clone(),
            stage_id: scope.stage.id.clone(),
            active: true,
            modes: manifest.modes.clone(),
        });
    // A version bound for a Docker pool without its image yet gets it built.
    let built_here = manifest.runtime.image == rally_sdk::manifest::ImageSource::Build;
    if built_here
        && version.image.is_none()
        && crate::pools::registry::kind_of_pool(&scope.stage.pool) == crate::pools::PoolKind::Docker
        && state.config.registry_address.is_some()
    {
        crate::builds::queue::queue(
            &state,
            &scope.project.id,
            &version.id,
            &principal.account_id,
        )
        .await?;
    }
    let deployment = find(&state.database, &scope.stage.id, &id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("new deployment vanished")))?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

/// Whether the stage's pool can run the version as deployed: a program runtime runs in a
/// container of its own, a version whose image is pushed needs that image on a Docker pool,
/// and one without a program cannot run on the local pool.
fn check_runnable(
    state: &AppState,
    scope: &StageScope,
    version: &rally_sdk::wire::Version,
    manifest: &Manifest,
    config: &rally_sdk::manifest::DeploymentConfig,
) -> Result<(), ApiError> {
    use rally_sdk::manifest::{DockerPlacement, ImageSource, RuntimeKind};
    let runtime = &manifest.runtime;
    if runtime.kind == RuntimeKind::Program && config.docker_placement == DockerPlacement::Launcher
    {
        return Err(ApiError::bad_request(
            "invalid_deployment_config",
            "docker_placement = \"launcher\" forks rally-runtime; a program runtime runs in a \
             container of its own (docker_placement = \"container\")",
        ));
    }
    let local =
        crate::pools::registry::kind_of_pool(&scope.stage.pool) == crate::pools::PoolKind::Process;
    if local && runtime.kind == RuntimeKind::Program && runtime.program.is_none() {
        return Err(ApiError::conflict(
            "image_only_version",
            format!(
                "version {} has no program in its bundle (its image is pushed), so it runs only \
                 on Docker pools; this stage uses the local pool",
                version.number
            ),
        ));
    }
    if !local && runtime.image == ImageSource::Push && version.image.is_none() {
        let registry = state
            .config
            .registry_address
            .as_deref()
            .unwrap_or("<registry>");
        return Err(ApiError::conflict(
            "image_missing",
            format!(
                "version {} takes its image from a push, and none is linked yet: push \
                 {registry}/{}:v{} first",
                version.number,
                crate::catalog::repository(&scope.tenant, &scope.project),
                version.number
            ),
        ));
    }
    Ok(())
}

/// Deployments of the stage, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments",
    tag = "deployments",
    params(StagePath),
    security(("bearer" = [])),
    responses((status = 200, body = DeploymentList), (status = "4XX", body = ErrorBody)))]
async fn list_deployments(
    scope: StageScope,
    State(state): State<AppState>,
) -> Result<Json<DeploymentList>, ApiError> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE d.stage_id = $1 ORDER BY d.created_at DESC, d.id DESC"
    ))
    .bind(&scope.stage.id)
    .fetch_all(state.database.reader())
    .await?;
    Ok(Json(DeploymentList {
        deployments: rows.iter().map(deployment).collect::<Result<_, _>>()?,
    }))
}

#[derive(Debug, Deserialize)]
struct DeploymentPath {
    deployment: String,
}

/// One deployment.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}",
    tag = "deployments",
    params(StagePath, ("deployment" = String, Path, description = "deployment id")),
    security(("bearer" = [])),
    responses((status = 200, body = Deployment), (status = "4XX", body = ErrorBody)))]
async fn get_deployment(
    scope: StageScope,
    State(state): State<AppState>,
    Path(path): Path<DeploymentPath>,
) -> Result<Json<Deployment>, ApiError> {
    find(&state.database, &scope.stage.id, &path.deployment)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound { what: "deployment" })
}

/// Take the stage's current deployment offline (stage managers): it drains, and the stage has
/// no current deployment until the next deploy.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}/stop",
    tag = "deployments",
    params(StagePath, ("deployment" = String, Path, description = "deployment id")),
    security(("bearer" = [])),
    responses((status = 200, body = Deployment), (status = "4XX", body = ErrorBody)))]
async fn stop_deployment(
    Managing(scope): Managing<StageScope>,
    State(state): State<AppState>,
    Path(path): Path<DeploymentPath>,
) -> Result<Json<Deployment>, ApiError> {
    let deployment = find(&state.database, &scope.stage.id, &path.deployment)
        .await?
        .ok_or(ApiError::NotFound { what: "deployment" })?;
    if deployment.status != DeploymentStatus::Active {
        return Err(ApiError::conflict(
            "deployment_not_active",
            format!(
                "the deployment is {}, not active",
                deployment.status.as_str()
            ),
        ));
    }
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query(
        "UPDATE deployments SET status = 'draining', draining_at = $2 WHERE id = $1 AND status = 'active'",
    )
    .bind(&deployment.id)
    .bind(now_millis())
    .execute(&mut *transaction)
    .await?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "deployment.stop",
            target_kind: "deployment",
            target_id: &deployment.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&scope.project.id),
            details: serde_json::json!({"stage_id": scope.stage.id}),
        },
    )
    .await?;
    transaction.commit().await?;
    find(&state.database, &scope.stage.id, &deployment.id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound { what: "deployment" })
}

/// A deployment to a Docker pool whose runtimes no server of the pool could ever hold (its
/// limits above every server's capacity) is refused before anything changes.
async fn check_capacity(
    state: &AppState,
    pool: &str,
    config: &rally_sdk::manifest::DeploymentConfig,
) -> Result<(), ApiError> {
    if pool == crate::pools::registry::LOCAL_POOL {
        return Ok(());
    }
    let limits = rally_sdk::runtime::launch::ResourceLimits {
        cpu_millis: config.runtime_cpu_millis,
        memory_mb: config.runtime_memory_mb,
    };
    let servers = crate::pools::registry::servers(&state.database, Some(pool)).await?;
    if crate::pools::schedule::could_ever_fit(&servers, limits) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "no_capacity",
            format!(
                "no server of pool {pool:?} can hold a runtime of {} CPU millis and {} MiB; \
                 lower runtime_cpu_millis / runtime_memory_mb or add a bigger server",
                limits.cpu_millis, limits.memory_mb
            ),
        ))
    }
}

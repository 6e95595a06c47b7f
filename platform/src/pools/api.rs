//! Pools and servers through the API (staff: admin and support): pools, the Docker servers in
//! them with their capacity and what runs on each, drain and disable, and which pool a stage
//! uses. The local pool and its process server exist from the start.

use super::docker;
use super::registry::{self, LOCAL_POOL};
use crate::audit::{self, Change};
use crate::error::{ApiError, Json};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{AsStaff, Principal, StagePath, StageScope};
use crate::state::AppState;
use crate::storage::{now_millis, StorageError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rally_sdk::wire::{
    CreatePool, ErrorBody, Pool, PoolList, RegisterServer, RuntimeList, Server, ServerList,
    ServerStatus, SetServerStatus, SetStagePool, SetStrategy, Stage,
};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(get_pool, delete_pool))
        .routes(routes!(set_strategy))
        .routes(routes!(register_server, list_pool_servers))
        .routes(routes!(get_server, remove_server))
        .routes(routes!(set_server_status))
        .routes(routes!(server_runtimes))
        .routes(routes!(list_servers))
        .routes(routes!(set_stage_pool))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct PoolPath {
    /// Pool name.
    pool: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct ServerPath {
    /// Pool name.
    pool: String,
    /// Server name.
    server: String,
}

/// Create a pool (admin, support).
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = CreatePool,
    params(IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Pool), (status = "4XX", body = ErrorBody)))]
async fn create_pool(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Idempotent(Json(request)): Idempotent<Json<CreatePool>>,
) -> Result<(StatusCode, Json<Pool>), ApiError> {
    registry::check_slug("pool", &request.name)?;
    let pool = Pool {
        name: request.name,
        strategy: request.strategy,
        created_at: now_millis(),
    };
    audited(
        &state,
        &principal,
        sqlx::query("INSERT INTO pools (name, strategy, created_at) VALUES ($1, $2, $3)")
            .bind(&pool.name)
            .bind(pool.strategy.as_str())
            .bind(pool.created_at),
        pool_change(
            "pool.create",
            &pool.name,
            serde_json::json!({"strategy": pool.strategy}),
        ),
    )
    .await
    .map_err(|error| {
        ApiError::conflict_on_duplicate(error, "pool_exists", || {
            format!("a pool named {:?} exists", pool.name)
        })
    })?;
    Ok((StatusCode::CREATED, Json(pool)))
}

/// Runs `statement` and records `change` in the audit log, in one transaction.
async fn audited<'q>(
    state: &AppState,
    principal: &Principal,
    statement: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    change: Change<'_>,
) -> Result<(), StorageError> {
    let mut transaction = state.database.writer().begin().await?;
    statement.execute(&mut *transaction).await?;
    audit::record(&mut *transaction, principal, change).await?;
    transaction.commit().await?;
    Ok(())
}

fn pool_change<'a>(action: &'static str, name: &'a str, details: serde_json::Value) -> Change<'a> {
    Change {
        action,
        target_kind: "pool",
        target_id: name,
        tenant_id: None,
        project_id: None,
        details,
    }
}

fn server_change<'a>(
    action: &'static str,
    name: &'a str,
    details: serde_json::Value,
) -> Change<'a> {
    Change {
        action,
        target_kind: "server",
        target_id: name,
        tenant_id: None,
        project_id: None,
        details,
    }
}

/// Every pool (admin, support).
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    security(("bearer" = [])),
    responses((status = 200, body = PoolList), (status = "4XX", body = ErrorBody)))]
async fn list_pools(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
) -> Result<Json<PoolList>, ApiError> {
    Ok(Json(PoolList {
        pools: registry::pools(&state.database).await?,
    }))
}

/// One pool (admin, support).
#[utoipa::path(get, path = "/api/v1/pools/{pool}", tag = "pools",
    params(PoolPath),
    security(("bearer" = [])),
    responses((status = 200, body = Pool), (status = "4XX", body = ErrorBody)))]
async fn get_pool(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<PoolPath>,
) -> Result<Json<Pool>, ApiError> {
    Ok(Json(
        registry::find_pool(&state.database, &path.pool).await?,
    ))
}

/// Delete an empty pool that no stage uses (admin, support). The local pool stays.
#[utoipa::path(delete, path = "/api/v1/pools/{pool}", tag = "pools",
    params(PoolPath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_pool(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<PoolPath>,
) -> Result<StatusCode, ApiError> {
    let pool = registry::find_pool(&state.database, &path.pool).await?;
    if pool.name == LOCAL_POOL {
        return Err(ApiError::conflict(
            "pool_is_built_in",
            "the local pool is every stage's default and cannot be deleted",
        ));
    }
    let mut transaction = state.database.writer().begin().await?;
    let servers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM servers WHERE pool = $1")
        .bind(&pool.name)
        .fetch_one(&mut *transaction)
        .await?;
    let stages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stages WHERE pool = $1")
        .bind(&pool.name)
        .fetch_one(&mut *transaction)
        .await?;
    if servers > 0 || stages > 0 {
        return Err(ApiError::conflict(
            "pool_in_use",
            format!(
                "pool {:?} holds {servers} servers and is used by {stages} stages; remove or move them first",
                pool.name
            ),
        ));
    }
    sqlx::query("DELETE FROM pools WHERE name = $1")
        .bind(&pool.name)
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut *transaction,
        &principal,
        pool_change("pool.delete", &pool.name, serde_json::json!({})),
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change how the pool picks servers for new runtimes (admin, support).
#[utoipa::path(put, path = "/api/v1/pools/{pool}/strategy", tag = "pools", request_body = SetStrategy,
    params(PoolPath),
    security(("bearer" = [])),
    responses((status = 200, body = Pool), (status = "4XX", body = ErrorBody)))]
async fn set_strategy(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<PoolPath>,
    Json(request): Json<SetStrategy>,
) -> Result<Json<Pool>, ApiError> {
    let mut pool = registry::find_pool(&state.database, &path.pool).await?;
    pool.strategy = request.strategy;
    audited(
        &state,
        &principal,
        sqlx::query("UPDATE pools SET strategy = $2 WHERE name = $1")
            .bind(&pool.name)
            .bind(pool.strategy.as_str()),
        pool_change(
            "pool.strategy",
            &pool.name,
            serde_json::json!({"strategy": pool.strategy}),
        ),
    )
    .await?;
    Ok(Json(pool))
}

/// Register a Docker daemon as a server of the pool (admin, support). The daemon must answer
/// (its API version is negotiated down to what it speaks) before anything is recorded.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/servers", tag = "pools", request_body = RegisterServer,
    params(PoolPath, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Server), (status = "4XX", body = ErrorBody)))]
async fn register_server(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<PoolPath>,
    Idempotent(Json(request)): Idempotent<Json<RegisterServer>>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    let pool = registry::find_pool(&state.database, &path.pool).await?;
    registry::check_slug("server", &request.name)?;
    registry::check_docker_server(&request)?;
    docker::check_daemon(&request.docker)
        .await
        .map_err(|problem| {
            ApiError::bad_request(
                "docker_unreachable",
                format!(
                    "the Docker daemon at {} does not answer: {problem}",
                    request.docker.url
                ),
            )
        })?;
    let server = registry::new_docker_server(&pool.name, request);
    audited(
        &state,
        &principal,
        registry::insert_server(&server),
        server_change(
            "server.register",
            &server.name,
            serde_json::json!({"pool": server.pool, "docker": server.docker, "capacity": server.capacity}),
        ),
    )
    .await
    .map_err(|error| {
        ApiError::conflict_on_duplicate(error, "server_exists", || {
            format!("a server named {:?} exists", server.name)
        })
    })?;
    Ok((StatusCode::CREATED, Json(server)))
}

/// The servers of a pool, with what their runtimes hold of their capacity (admin, support).
#[utoipa::path(get, path = "/api/v1/pools/{pool}/servers", tag = "pools",
    params(PoolPath),
    security(("bearer" = [])),
    responses((status = 200, body = ServerList), (status = "4XX", body = ErrorBody)))]
async fn list_pool_servers(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<PoolPath>,
) -> Result<Json<ServerList>, ApiError> {
    let pool = registry::find_pool(&state.database, &path.pool).await?;
    Ok(Json(ServerList {
        servers: registry::servers(&state.database, Some(&pool.name)).await?,
    }))
}

/// Every server of every pool, with its usage (admin, support).
#[utoipa::path(get, path = "/api/v1/servers", tag = "pools",
    security(("bearer" = [])),
    responses((status = 200, body = ServerList), (status = "4XX", body = ErrorBody)))]
async fn list_servers(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
) -> Result<Json<ServerList>, ApiError> {
    Ok(Json(ServerList {
        servers: registry::servers(&state.database, None).await?,
    }))
}

/// One server (admin, support).
#[utoipa::path(get, path = "/api/v1/pools/{pool}/servers/{server}", tag = "pools",
    params(ServerPath),
    security(("bearer" = [])),
    responses((status = 200, body = Server), (status = "4XX", body = ErrorBody)))]
async fn get_server(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<ServerPath>,
) -> Result<Json<Server>, ApiError> {
    Ok(Json(
        registry::find_server(&state.database, &path.pool, &path.server).await?,
    ))
}

/// Remove a Docker server with nothing running on it (admin, support): drain or disable it
/// first.
#[utoipa::path(delete, path = "/api/v1/pools/{pool}/servers/{server}", tag = "pools",
    params(ServerPath),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn remove_server(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<ServerPath>,
) -> Result<StatusCode, ApiError> {
    let server = registry::find_server(&state.database, &path.pool, &path.server).await?;
    if server.kind == rally_sdk::wire::ServerKind::Process {
        return Err(ApiError::conflict(
            "server_is_built_in",
            "the process server is the platform's own machine and cannot be removed",
        ));
    }
    if server.usage.runtimes > 0 {
        return Err(ApiError::conflict(
            "server_in_use",
            format!(
                "{} runtimes run on server {:?}; drain or disable it and wait for them to end",
                server.usage.runtimes, server.name
            ),
        ));
    }
    audited(
        &state,
        &principal,
        sqlx::query("DELETE FROM servers WHERE name = $1").bind(&server.name),
        server_change(
            "server.remove",
            &server.name,
            serde_json::json!({"pool": server.pool}),
        ),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable, drain or disable a server (admin, support). A draining server takes no new
/// runtimes and lets those on it finish; a disabled one also has them stopped and replaced.
#[utoipa::path(put, path = "/api/v1/pools/{pool}/servers/{server}/status", tag = "pools",
    request_body = SetServerStatus,
    params(ServerPath),
    security(("bearer" = [])),
    responses((status = 200, body = Server), (status = "4XX", body = ErrorBody)))]
async fn set_server_status(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<ServerPath>,
    Json(request): Json<SetServerStatus>,
) -> Result<Json<Server>, ApiError> {
    let mut server = registry::find_server(&state.database, &path.pool, &path.server).await?;
    server.status = request.status;
    audited(
        &state,
        &principal,
        sqlx::query("UPDATE servers SET status = $2 WHERE name = $1")
            .bind(&server.name)
            .bind(server.status.as_str()),
        server_change(
            "server.status",
            &server.name,
            serde_json::json!({"status": server.status}),
        ),
    )
    .await?;
    if server.status != ServerStatus::Enabled {
        // Waiting clients and formed matches go elsewhere at once.
        state.dispatcher.lobby_wanted.notify_one();
    }
    Ok(Json(server))
}

/// The runtimes on a server that are not over, oldest first (admin, support).
#[utoipa::path(get, path = "/api/v1/pools/{pool}/servers/{server}/runtimes", tag = "pools",
    params(ServerPath),
    security(("bearer" = [])),
    responses((status = 200, body = RuntimeList), (status = "4XX", body = ErrorBody)))]
async fn server_runtimes(
    AsStaff(_principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(path): Path<ServerPath>,
) -> Result<Json<RuntimeList>, ApiError> {
    let server = registry::find_server(&state.database, &path.pool, &path.server).await?;
    Ok(Json(RuntimeList {
        runtimes: crate::runtimes::on_server(&state.database, &server).await?,
    }))
}

/// Move a stage to a pool (admin, support): its new runtimes start there; those running
/// finish where they are.
#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/pool",
    tag = "pools", request_body = SetStagePool,
    params(StagePath),
    security(("bearer" = [])),
    responses((status = 200, body = Stage), (status = "4XX", body = ErrorBody)))]
async fn set_stage_pool(
    AsStaff(scope): AsStaff<StageScope>,
    State(state): State<AppState>,
    Json(request): Json<SetStagePool>,
) -> Result<Json<Stage>, ApiError> {
    let pool = registry::find_pool(&state.database, &request.pool).await?;
    let mut stage = scope.stage;
    audited(
        &state,
        &scope.access.principal,
        sqlx::query("UPDATE stages SET pool = $2 WHERE id = $1")
            .bind(&stage.id)
            .bind(&pool.name),
        Change {
            action: "stage.pool",
            target_kind: "stage",
            target_id: &stage.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&stage.project_id),
            details: serde_json::json!({"from": stage.pool, "to": pool.name}),
        },
    )
    .await?;
    stage.pool = pool.name;
    Ok(Json(stage))
}

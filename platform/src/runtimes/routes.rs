//! The runtime routes: a runtime's token exchange, and what the stage's viewers may see of
//! a deployment's runtimes (the list, a runtime's log). The runtime socket is in
//! `connection`.

use super::lifecycle::placement;
use crate::auth::{hash_secret, refresh};
use crate::deployed::qualifier;
use crate::error::{ApiError, Json, Path};
use crate::permissions::StageScope;
use crate::state::AppState;
use crate::storage::now_millis;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use rally_sdk::runtime::RuntimeTokenRequest;
use rally_sdk::wire::{ErrorBody, Role, RuntimeInfo, RuntimeList, TokenPair};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;

const COLUMNS: &str = "id, deployment_id, qualifier, mode, status, node_id, pool_kind, pool, \
     server, handle, created_at, connected_at, stopped_at, exit_code, failure";

fn runtime(row: &AnyRow) -> RuntimeInfo {
    RuntimeInfo {
        id: row.get("id"),
        deployment_id: row.get("deployment_id"),
        qualifier: qualifier(&row.get::<String, _>("qualifier")),
        mode: row.get("mode"),
        status: row.get("status"),
        node_id: row.get("node_id"),
        pid: placement(row)
            .and_then(|placement| placement.pid())
            .map(i64::from),
        pool_kind: row.get("pool_kind"),
        pool: row.get("pool"),
        server: row.get("server"),
        handle: row.get("handle"),
        created_at: row.get("created_at"),
        connected_at: row.get("connected_at"),
        stopped_at: row.get("stopped_at"),
        exit_code: row.get("exit_code"),
        failure: row.get("failure"),
    }
}

/// The runtime's one-time secret for tokens (role `runtime`). A second exchange of the same
/// secret is refused: a runtime renews its access with the refresh token it got.
#[utoipa::path(post, path = "/api/v1/runtime/token", tag = "runtimes",
    request_body = RuntimeTokenRequest,
    responses((status = 200, body = TokenPair), (status = "4XX", body = ErrorBody)))]
pub(super) async fn runtime_token(
    State(state): State<AppState>,
    Json(request): Json<RuntimeTokenRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let refused = || ApiError::unauthorized("invalid_credentials", "wrong runtime id or secret");
    if uuid::Uuid::parse_str(&request.runtime_id).is_err() || request.secret.len() > 256 {
        return Err(refused());
    }
    let spent = sqlx::query(
        "UPDATE runtimes SET secret_used_at = $3 \
         WHERE id = $1 AND secret_hash = $2 AND secret_used_at IS NULL \
         AND status IN ('starting', 'running') RETURNING id",
    )
    .bind(&request.runtime_id)
    .bind(hash_secret(&request.secret))
    .bind(now_millis())
    .fetch_optional(state.database.writer())
    .await?;
    if spent.is_none() {
        let used: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT secret_used_at FROM runtimes WHERE id = $1 AND secret_hash = $2",
        )
        .bind(&request.runtime_id)
        .bind(hash_secret(&request.secret))
        .fetch_optional(state.database.reader())
        .await?;
        return Err(match used {
            Some(Some(_)) => {
                tracing::warn!(runtime_id = %request.runtime_id, "runtime secret replayed");
                ApiError::unauthorized(
                    "runtime_secret_used",
                    "this runtime secret was already exchanged; renew with the refresh token",
                )
            }
            _ => refused(),
        });
    }
    let pair = refresh::issue_pair(
        &state.database,
        &state.tokens,
        &request.runtime_id,
        Role::Runtime,
        None,
    )
    .await?;
    Ok(Json(pair))
}

#[derive(Debug, Deserialize)]
pub(super) struct DeploymentPath {
    deployment: String,
}

/// Runtimes of a deployment, newest first (viewers of the stage).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}/runtimes",
    tag = "runtimes",
    params(crate::permissions::StagePath, ("deployment" = String, Path, description = "deployment id")),
    security(("bearer" = [])),
    responses((status = 200, body = RuntimeList), (status = "4XX", body = ErrorBody)))]
pub(super) async fn list_runtimes(
    scope: StageScope,
    State(state): State<AppState>,
    Path(path): Path<DeploymentPath>,
) -> Result<Json<RuntimeList>, ApiError> {
    // A deployment of another stage is as unknown here as any foreign id.
    crate::deployments::find(&state.database, &scope.stage.id, &path.deployment)
        .await?
        .ok_or(ApiError::NotFound { what: "deployment" })?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM runtimes WHERE deployment_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(&path.deployment)
    .fetch_all(state.database.reader())
    .await?;
    Ok(Json(RuntimeList {
        runtimes: rows.iter().map(runtime).collect(),
    }))
}

/// The runtimes on `server` that are not over, oldest first: every local-process runtime for
/// the process server.
pub async fn on_server(
    database: &crate::storage::Database,
    server: &rally_sdk::wire::Server,
) -> Result<Vec<RuntimeInfo>, crate::storage::StorageError> {
    let live = "status IN ('starting', 'running', 'stopping')";
    let rows = match server.kind {
        rally_sdk::wire::ServerKind::Process => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM runtimes WHERE pool_kind = 'process' AND {live} \
                 ORDER BY created_at, id"
            ))
            .fetch_all(database.reader())
            .await?
        }
        rally_sdk::wire::ServerKind::Docker => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM runtimes WHERE pool_kind = 'docker' AND server = $1 \
                 AND {live} ORDER BY created_at, id"
            ))
            .bind(&server.name)
            .fetch_all(database.reader())
            .await?
        }
    };
    Ok(rows.iter().map(runtime).collect())
}

#[derive(Debug, Deserialize)]
pub(super) struct RuntimePath {
    deployment: String,
    runtime: String,
}

/// What a runtime printed, newest at the end (viewers of the stage). Kept on the node that ran
/// it, capped in size.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}/runtimes/{runtime}/logs",
    tag = "runtimes",
    params(crate::permissions::StagePath, ("deployment" = String, Path, description = "deployment id"),
           ("runtime" = String, Path, description = "runtime id")),
    security(("bearer" = [])),
    responses((status = 200, description = "the log as text", content_type = "text/plain"), (status = "4XX", body = ErrorBody)))]
pub(super) async fn runtime_logs(
    scope: StageScope,
    State(state): State<AppState>,
    Path(path): Path<RuntimePath>,
) -> Result<impl IntoResponse, ApiError> {
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT r.node_id FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
         WHERE r.id = $1 AND r.deployment_id = $2 AND d.stage_id = $3",
    )
    .bind(&path.runtime)
    .bind(&path.deployment)
    .bind(&scope.stage.id)
    .fetch_optional(state.database.reader())
    .await?;
    let owner = owner.ok_or(ApiError::NotFound { what: "runtime" })?;
    if owner != state.runtimes.node_id {
        return Err(ApiError::conflict(
            "runtime_on_other_node",
            format!("the runtime ran on node {owner}; ask that node for its logs"),
        ));
    }
    // The id was matched against the database above, so it is a plain UUID.
    let log = state.runtimes.pool.logs(&path.runtime).await;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], log))
}

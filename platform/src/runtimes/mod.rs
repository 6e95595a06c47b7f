//! Runtimes: running instances of a deployment's lobby or match logic. This module keeps their
//! records, exchanges a runtime's one-time secret for tokens, holds each runtime's WebSocket,
//! and runs the supervisor that keeps every active deployment's lobbies up, replaces runtimes
//! that die, stops those of draining deployments and cleans up after a platform crash.

mod connection;
pub mod process_pool;

use crate::auth::{hash_secret, new_secret, refresh};
use crate::error::{ApiError, Json, Path};
use crate::permissions::{StagePath, StageScope};
use crate::server::AppState;
use crate::storage::{new_id, now_millis, Database, StorageError};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use process_pool::{Exited, ProcessPool, ProcessSpec};
use rally_sdk::manifest::DeploymentConfig;
use rally_sdk::runtime::{PlatformMessage, Qualifier, RuntimeTokenRequest};
use rally_sdk::wire::{ErrorBody, Role, RuntimeInfo, RuntimeList, TokenPair};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(runtime_token))
        .routes(routes!(connection::runtime_socket))
        .routes(routes!(list_runtimes))
        .routes(routes!(runtime_logs))
}

const COLUMNS: &str = "id, deployment_id, qualifier, mode, status, node_id, pool_kind, pid, \
     created_at, connected_at, stopped_at, exit_code, failure";

fn runtime(row: &AnyRow) -> RuntimeInfo {
    let qualifier: String = row.get("qualifier");
    RuntimeInfo {
        id: row.get("id"),
        deployment_id: row.get("deployment_id"),
        qualifier: if qualifier == "match" {
            Qualifier::Match
        } else {
            Qualifier::Lobby
        },
        mode: row.get("mode"),
        status: row.get("status"),
        node_id: row.get("node_id"),
        pool_kind: row.get("pool_kind"),
        pid: row.get("pid"),
        created_at: row.get("created_at"),
        connected_at: row.get("connected_at"),
        stopped_at: row.get("stopped_at"),
        exit_code: row.get("exit_code"),
        failure: row.get("failure"),
    }
}

/// Runtime state of one platform node.
#[derive(Debug)]
pub struct Runtimes {
    pub node_id: String,
    pool: ProcessPool,
    exits: Mutex<Option<mpsc::UnboundedReceiver<Exited>>>,
    /// When each runtime's socket last closed (ms): a runtime gets the start timeout to come back.
    disconnected_at: Mutex<HashMap<String, i64>>,
    /// When this node started (ms): runtimes of a previous run get the start timeout to reconnect.
    started_at: i64,
    /// The URL runtimes use to reach this node, known once the listener is bound.
    platform_url: OnceLock<String>,
    bundle_dir: PathBuf,
    start_timeout: Duration,
    stop_grace: Duration,
    /// Held while a pass decides how many match runtimes to start, so that the supervisor and
    /// the match starter never both start runtimes for the same matches.
    providing: tokio::sync::Mutex<()>,
    /// The deployments as the last supervision pass found them, for the match starter.
    deployments: Mutex<Vec<DeploymentToRun>>,
}

impl Runtimes {
    pub fn new(config: &crate::config::Config) -> std::io::Result<Self> {
        let node_id = node_id(&config.data_dir)?;
        let (exits_sender, exits) = mpsc::unbounded_channel();
        let binary = config
            .runtime_binary
            .clone()
            .unwrap_or_else(process_pool::default_runtime_binary);
        Ok(Self {
            node_id,
            pool: ProcessPool::new(
                binary,
                config.data_dir.join("runtimes"),
                config.runtime_log_max_bytes,
                exits_sender,
                config.runtime_starts_at_once,
                Duration::from_secs(config.runtime_start_timeout_secs),
            ),
            exits: Mutex::new(Some(exits)),
            disconnected_at: Mutex::default(),
            started_at: now_millis(),
            platform_url: OnceLock::new(),
            bundle_dir: config.data_dir.join("bundles"),
            start_timeout: Duration::from_secs(config.runtime_start_timeout_secs),
            stop_grace: Duration::from_secs(config.runtime_stop_grace_secs),
            providing: tokio::sync::Mutex::new(()),
            deployments: Mutex::default(),
        })
    }

    /// The runtime's socket is up: its start is over.
    pub fn connected(&self, runtime_id: &str) {
        self.pool.connected(runtime_id);
    }

    /// The `rally-runtime` program of this node, which also checks uploaded logic.
    pub fn runtime_binary(&self) -> &std::path::Path {
        self.pool.binary()
    }

    /// Where runtimes reach this node; set once when serving starts.
    pub fn set_platform_url(&self, url: String) {
        let _ = self.platform_url.set(url);
    }
}

/// This node's id, made once and kept in the data directory.
fn node_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = new_id();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// The runtime's one-time secret for tokens (role `runtime`). A second exchange of the same
/// secret is refused: a runtime renews its access with the refresh token it got.
#[utoipa::path(post, path = "/api/v1/runtime/token", tag = "runtimes",
    request_body = RuntimeTokenRequest,
    responses((status = 200, body = TokenPair), (status = "4XX", body = ErrorBody)))]
async fn runtime_token(
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
struct DeploymentPath {
    deployment: String,
}

/// Runtimes of a deployment, newest first (viewers of the stage).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}/runtimes",
    tag = "runtimes",
    params(StagePath, ("deployment" = String, Path, description = "deployment id")),
    security(("bearer" = [])),
    responses((status = 200, body = RuntimeList), (status = "4XX", body = ErrorBody)))]
async fn list_runtimes(
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

#[derive(Debug, Deserialize)]
struct RuntimePath {
    deployment: String,
    runtime: String,
}

/// What a runtime printed, newest at the end (viewers of the stage). Kept on the node that ran
/// it, capped in size.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/deployments/{deployment}/runtimes/{runtime}/logs",
    tag = "runtimes",
    params(StagePath, ("deployment" = String, Path, description = "deployment id"),
           ("runtime" = String, Path, description = "runtime id")),
    security(("bearer" = [])),
    responses((status = 200, description = "the log as text", content_type = "text/plain"), (status = "4XX", body = ErrorBody)))]
async fn runtime_logs(
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
    let log = tokio::fs::read(state.runtimes.pool.log_path(&path.runtime))
        .await
        .unwrap_or_default();
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], log))
}

// ---- the supervisor ----

/// At most this many failed runtimes of a deployment in the window before restarts pause.
const MAX_FAILURES_PER_WINDOW: i64 = 5;
const RESTART_WINDOW_MILLIS: i64 = 60_000;

/// An active or draining deployment with what starting its runtimes needs.
#[derive(Debug, Clone)]
struct DeploymentToRun {
    id: String,
    status: String,
    bundle_sha256: String,
    min_lobbies: i64,
    max_clients_per_lobby: i64,
    idle_timeout_secs: u64,
    /// Idle match runtimes kept started, per mode.
    warm_matches: Vec<(String, i64)>,
    /// What each of its runtimes may use.
    limits: rally_sdk::runtime::launch::ResourceLimits,
}

/// Most lobbies started for waiting clients in one pass.
const MAX_LOBBIES_AT_ONCE: i64 = 4;

/// Keeps runtimes as the deployments want them, until shutdown. On shutdown it stops every
/// runtime of this node, with the grace period, so that stopping the platform stops its games.
pub async fn supervise(state: AppState, shutdown: CancellationToken) {
    let runtimes = &state.runtimes;
    let Some(mut exits) = runtimes.exits.lock().expect("exits lock").take() else {
        return;
    };
    if let Err(error) = recover_after_restart(&state).await {
        tracing::error!(%error, "cannot check runtimes left by a previous run");
    }
    tokio::spawn(start_matches(state.clone(), shutdown.clone()));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {
                state.dispatcher.sweep();
                if let Err(error) = reconcile(&state).await {
                    tracing::warn!(%error, "runtime supervision pass failed");
                }
            }
            // Clients wait for a lobby: start one now rather than at the next tick.
            () = state.dispatcher.lobby_wanted.notified() => {
                if let Err(error) = reconcile(&state).await {
                    tracing::warn!(%error, "runtime supervision pass failed");
                }
            }
            Some(exited) = exits.recv() => {
                if let Err(error) = record_exit(&state, &exited).await {
                    tracing::warn!(%error, "cannot record a runtime exit");
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    stop_all(&state, &mut exits).await;
}

/// Marks a runtime that ended: `stopped` if it was asked to stop, else `failed`. Its clients
/// go to another lobby.
async fn record_exit(state: &AppState, exited: &Exited) -> Result<(), StorageError> {
    let database = &state.database;
    let now = now_millis();
    let result = sqlx::query(
        "UPDATE runtimes SET status = CASE WHEN status = 'stopping' THEN 'stopped' ELSE 'failed' END, \
         stopped_at = $2, exit_code = $3, \
         failure = CASE WHEN status = 'stopping' THEN failure ELSE $4 END \
         WHERE id = $1 AND status IN ('starting', 'running', 'stopping') RETURNING status",
    )
    .bind(&exited.runtime_id)
    .bind(now)
    .bind(exited.exit_code.map(i64::from))
    .bind(match &exited.reason {
        Some(reason) => format!("killed: {reason}"),
        None => exit_failure(exited.exit_code),
    })
    .fetch_optional(database.writer())
    .await?;
    if let Some(row) = result {
        let status: String = row.get(0);
        state
            .dispatcher
            .runtime_ended(&exited.runtime_id, status == "failed");
        if status == "failed" {
            tracing::warn!(runtime_id = %exited.runtime_id, exit_code = ?exited.exit_code, "runtime failed; it will be replaced");
        } else {
            tracing::info!(runtime_id = %exited.runtime_id, "runtime stopped");
        }
    }
    Ok(())
}

/// What a runtime's exit code says, for operators (`rally-runtime`'s documented codes).
fn exit_failure(exit_code: Option<i32>) -> String {
    match exit_code {
        None => "killed by a signal".to_owned(),
        Some(code) => match rally_sdk::runtime::Exit::from_code(code) {
            Some(exit) => format!("exited with code {code}: {}", exit.meaning()),
            None => format!("exited with code {code}"),
        },
    }
}

/// After a crash of this node: runtimes it started are no longer its children. Those still
/// alive get the reconnect window to come back; the rest are marked failed. Processes that do
/// not reconnect in time are killed by the next passes.
async fn recover_after_restart(state: &AppState) -> Result<(), StorageError> {
    let rows = sqlx::query(
        "SELECT id, pid FROM runtimes WHERE node_id = $1 AND status IN ('starting', 'running', 'stopping')",
    )
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for row in rows {
        let runtime_id: String = row.get(0);
        let pid: Option<i64> = row.get(1);
        let alive =
            pid.is_some_and(|pid| process_pool::is_runtime_process(pid as u32, &runtime_id));
        if alive {
            tracing::info!(runtime_id = %runtime_id, "runtime from a previous run is alive; waiting for it to reconnect");
            continue;
        }
        record_exit(
            state,
            &Exited {
                runtime_id,
                exit_code: None,
                reason: None,
            },
        )
        .await?;
    }
    Ok(())
}

async fn reconcile(state: &AppState) -> anyhow::Result<()> {
    let runtimes = &state.runtimes;
    let now = now_millis();
    let deployments = sqlx::query(
        "SELECT d.id, d.status, v.bundle_sha256, d.config, d.stage_id, v.manifest \
         FROM deployments d JOIN versions v ON v.id = d.version_id \
         WHERE d.status IN ('active', 'draining')",
    )
    .fetch_all(state.database.reader())
    .await?;
    state.dispatcher.set_deployments(
        deployments
            .iter()
            .map(|row| {
                let manifest: serde_json::Value =
                    serde_json::from_str(&row.get::<String, _>(5)).unwrap_or_default();
                crate::dispatcher::DeploymentFacts {
                    id: row.get(0),
                    stage_id: row.get(4),
                    active: row.get::<String, _>(1) == "active",
                    modes: serde_json::from_value(manifest["modes"].clone()).unwrap_or_default(),
                }
            })
            .collect(),
    );
    let deployments: Vec<DeploymentToRun> = deployments
        .iter()
        .filter_map(|row| {
            let id: String = row.get(0);
            // A stored config that does not parse is a fault to report, never a set of defaults.
            let config: DeploymentConfig = match serde_json::from_str(&row.get::<String, _>(3)) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(deployment_id = %id, %error, "the deployment's stored config does not parse; its runtimes are left alone");
                    return None;
                }
            };
            Some(DeploymentToRun {
                id,
                status: row.get(1),
                bundle_sha256: row.get(2),
                min_lobbies: i64::from(config.min_lobbies),
                max_clients_per_lobby: i64::from(config.max_clients_per_lobby),
                idle_timeout_secs: u64::from(config.idle_timeout_secs),
                limits: rally_sdk::runtime::launch::ResourceLimits {
                    cpu_millis: config.runtime_cpu_millis,
                    memory_mb: config.runtime_memory_mb,
                },
                warm_matches: config
                    .warm_matches
                    .into_iter()
                    .map(|(mode, count)| (mode, i64::from(count)))
                    .collect(),
            })
        })
        .collect();
    *runtimes.deployments.lock().expect("deployments lock") = deployments.clone();

    // Runtimes of this node that are late to connect, or whose process is gone.
    let mine = sqlx::query(
        "SELECT id, status, pid, created_at, connected_at FROM runtimes \
         WHERE node_id = $1 AND status IN ('starting', 'running', 'stopping')",
    )
    .bind(&runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for row in &mine {
        let id: String = row.get(0);
        let status: String = row.get(1);
        let pid: Option<i64> = row.get(2);
        let created_at: i64 = row.get(3);
        process_pool::trim_log(&runtimes.pool.log_path(&id), runtimes.pool.log_max_bytes());
        let child = runtimes.pool.is_running(&id);
        let alive =
            child || pid.is_some_and(|pid| process_pool::is_runtime_process(pid as u32, &id));
        let connected = state.dispatcher.runtime_is_connected(&id);
        let disconnected_at = runtimes
            .disconnected_at
            .lock()
            .expect("disconnect lock")
            .get(&id)
            .copied()
            .unwrap_or(0);
        let waiting_since = created_at.max(runtimes.started_at).max(disconnected_at);
        let late = now - waiting_since > runtimes.start_timeout.as_millis() as i64;
        if !alive {
            record_exit(
                state,
                &Exited {
                    runtime_id: id,
                    exit_code: None,
                    reason: None,
                },
            )
            .await?;
        } else if late && !connected && status != "stopping" {
            // Never connected, or lost and not back within the start timeout.
            tracing::warn!(runtime_id = %id, "runtime did not connect in time; stopping it");
            mark_stopping(&state.database, &id, Some("did not connect in time")).await?;
            stop_process(state, &id, pid);
        }
    }

    let demand = state.dispatcher.lobby_demand();
    let match_demand = state.dispatcher.match_demand();
    for deployment in &deployments {
        let lobbies = sqlx::query(
            "SELECT id FROM runtimes WHERE deployment_id = $1 AND qualifier = 'lobby' \
             AND status IN ('starting', 'running')",
        )
        .bind(&deployment.id)
        .fetch_all(state.database.reader())
        .await?;
        let live = lobbies.len() as i64;
        // On the way: every lobby not (yet, or any longer) holding its socket. That covers
        // `starting` ones, and `running` ones between their row's update and their socket's
        // registration, which would otherwise look full to waiting clients and get a twin.
        let starting = lobbies
            .iter()
            .filter(|row| {
                !state
                    .dispatcher
                    .runtime_is_connected(&row.get::<String, _>(0))
            })
            .count() as i64;
        // Clients waiting for a lobby: enough new lobbies for them, unless some are on the way.
        let waiting = demand
            .iter()
            .find(|demand| demand.deployment_id == deployment.id)
            .map_or(0, |demand| demand.waiting as i64);
        let wanted_for_waiting = if waiting > 0 && starting == 0 {
            let per_lobby = deployment.max_clients_per_lobby.max(1);
            live + ((waiting + per_lobby - 1) / per_lobby).min(MAX_LOBBIES_AT_ONCE)
        } else {
            0
        };
        if deployment.status == "active" || waiting > 0 {
            // A version whose runtimes keep dying is not restarted in a tight loop.
            let recent_failures: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM runtimes WHERE deployment_id = $1 AND status = 'failed' \
                 AND stopped_at > $2",
            )
            .bind(&deployment.id)
            .bind(now - RESTART_WINDOW_MILLIS)
            .fetch_one(state.database.reader())
            .await?;
            if recent_failures >= MAX_FAILURES_PER_WINDOW {
                tracing::debug!(deployment_id = %deployment.id, recent_failures, "runtimes keep failing; waiting before restarting");
                continue;
            }
            let min_lobbies = if deployment.status == "active" {
                deployment.min_lobbies
            } else {
                0
            };
            for _ in live..min_lobbies.max(wanted_for_waiting) {
                if let Err(error) = start_runtime(state, deployment, Qualifier::Lobby, None).await {
                    tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a lobby runtime");
                    break;
                }
            }
        }
        // (While the match starter is at work, matches are its business.)
        if let Ok(_providing) = runtimes.providing.try_lock() {
            if let Err(error) = provide_matches(state, deployment, &match_demand).await {
                tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a match runtime");
            }
        }
        if deployment.status == "active" {
            close_idle_lobbies(state, deployment, live).await?;
        } else if waiting == 0 {
            // (Clients back from a match of this deployment wait for the lobby started above.)
            drain(state, &deployment.id).await?;
        }
    }
    for runtime_id in state.dispatcher.take_finished() {
        tracing::info!(runtime_id = %runtime_id, "match over; stopping its runtime");
        stop_runtime(state, &runtime_id).await?;
    }
    crate::deployments::close_drained(&state.database).await?;
    Ok(())
}

/// Most match runtimes started for one deployment and mode in one pass.
const MAX_MATCHES_AT_ONCE: i64 = 64;

/// Formed matches that wait for a runtime get one started at once, without waiting for the
/// supervisor's next pass (which is busy with everything else and may take a while under load).
async fn start_matches(state: AppState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = state.dispatcher.match_wanted.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let providing = async {
            let _providing = state.runtimes.providing.lock().await;
            // Read under the lock: a pass that held it may have started some already.
            let demand = state.dispatcher.match_demand();
            let deployments: Vec<DeploymentToRun> = state
                .runtimes
                .deployments
                .lock()
                .expect("deployments lock")
                .iter()
                .filter(|deployment| {
                    demand
                        .iter()
                        .any(|wanted| wanted.deployment_id == deployment.id && wanted.pending > 0)
                })
                .cloned()
                .collect();
            for deployment in &deployments {
                if let Err(error) = provide_matches(&state, deployment, &demand).await {
                    tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a match runtime");
                }
            }
        };
        tokio::select! {
            () = providing => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Match runtimes: one for each formed match waiting for a runtime, plus `warm_matches` idle
/// ones per mode (active deployments only), counting those already starting or idle.
async fn provide_matches(
    state: &AppState,
    deployment: &DeploymentToRun,
    demand: &[crate::dispatcher::MatchDemand],
) -> anyhow::Result<()> {
    let mut modes: Vec<(String, i64)> = if deployment.status == "active" {
        deployment.warm_matches.clone()
    } else {
        Vec::new()
    };
    for wanted in demand.iter().filter(|d| d.deployment_id == deployment.id) {
        if !modes.iter().any(|(mode, _)| *mode == wanted.mode) {
            modes.push((wanted.mode.clone(), 0));
        }
    }
    for (mode, warm) in modes {
        let (pending, idle) = demand
            .iter()
            .find(|d| d.deployment_id == deployment.id && d.mode == mode)
            .map_or((0, 0), |d| (d.pending as i64, d.idle as i64));
        let starting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM runtimes WHERE deployment_id = $1 AND qualifier = 'match' \
             AND mode = $2 AND status = 'starting'",
        )
        .bind(&deployment.id)
        .bind(&mode)
        .fetch_one(state.database.reader())
        .await?;
        let wanted = warm + pending - idle - starting;
        if wanted > MAX_MATCHES_AT_ONCE {
            // More next pass, straight away rather than at the next tick.
            state.dispatcher.match_wanted.notify_one();
        }
        let missing = wanted.min(MAX_MATCHES_AT_ONCE);
        // Started side by side, each in a task of its own: players wait for these.
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..missing.max(0) {
            let state = state.clone();
            let deployment = deployment.clone();
            let mode = mode.clone();
            starts.spawn(async move {
                start_runtime(&state, &deployment, Qualifier::Match, Some(&mode)).await
            });
        }
        let mut failure = None;
        while let Some(started) = starts.join_next().await {
            if let Err(error) = started
                .map_err(anyhow::Error::from)
                .and_then(|started| started)
            {
                failure.get_or_insert(error);
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
    }
    Ok(())
}

/// Lobbies started for a crowd that has gone: those above `min_lobbies` that have been empty
/// for the deployment's idle timeout are stopped, emptiest-longest first.
async fn close_idle_lobbies(
    state: &AppState,
    deployment: &DeploymentToRun,
    live: i64,
) -> Result<(), StorageError> {
    let surplus = live - deployment.min_lobbies;
    if surplus <= 0 {
        return Ok(());
    }
    let idle = Duration::from_secs(deployment.idle_timeout_secs);
    for runtime_id in state
        .dispatcher
        .idle_lobbies(&deployment.id, idle)
        .into_iter()
        .take(surplus as usize)
    {
        if state.dispatcher.retire_if_empty(&runtime_id) {
            tracing::info!(runtime_id = %runtime_id, "idle lobby above min_lobbies; stopping it");
            stop_runtime(state, &runtime_id).await?;
        }
    }
    Ok(())
}

/// Asks the empty runtimes of a draining deployment to stop. Lobbies with clients keep them
/// until they leave (new clients go to the new deployment); matches run to their end.
async fn drain(state: &AppState, deployment_id: &str) -> Result<(), StorageError> {
    let rows = sqlx::query(
        "SELECT id FROM runtimes WHERE deployment_id = $1 AND node_id = $2 \
         AND status IN ('starting', 'running')",
    )
    .bind(deployment_id)
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for row in rows {
        let id: String = row.get(0);
        if state.dispatcher.retire_if_empty(&id) {
            stop_runtime(state, &id).await?;
        }
    }
    Ok(())
}

/// Marks a runtime stopping, asks it to stop, and ends its process after the grace period.
async fn stop_runtime(state: &AppState, runtime_id: &str) -> Result<(), StorageError> {
    let pid: Option<Option<i64>> = sqlx::query_scalar("SELECT pid FROM runtimes WHERE id = $1")
        .bind(runtime_id)
        .fetch_optional(state.database.reader())
        .await?;
    mark_stopping(&state.database, runtime_id, None).await?;
    let deadline_ms = state.runtimes.stop_grace.as_millis() as u64;
    state
        .dispatcher
        .send_runtime(runtime_id, PlatformMessage::StopRequested { deadline_ms });
    stop_process(state, runtime_id, pid.flatten());
    Ok(())
}

async fn mark_stopping(
    database: &Database,
    runtime_id: &str,
    failure: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE runtimes SET status = 'stopping', failure = COALESCE($2, failure) \
         WHERE id = $1 AND status IN ('starting', 'running')",
    )
    .bind(runtime_id)
    .bind(failure)
    .execute(database.writer())
    .await?;
    Ok(())
}

/// SIGTERM after the grace period (the runtime was told to stop), SIGKILL after another.
fn stop_process(state: &AppState, runtime_id: &str, pid: Option<i64>) {
    let runtimes = state.runtimes.clone();
    let runtime_id = runtime_id.to_owned();
    let grace = runtimes.stop_grace;
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if runtimes.pool.is_running(&runtime_id) {
            runtimes.pool.terminate(&runtime_id, grace);
        } else if let Some(pid) = pid {
            // Left by a previous run of this node: not our child, end it by pid.
            if process_pool::is_runtime_process(pid as u32, &runtime_id) {
                process_pool::kill_orphan(pid as u32);
            }
        }
    });
}

/// Creates the runtime's record and starts its process.
async fn start_runtime(
    state: &AppState,
    deployment: &DeploymentToRun,
    qualifier: Qualifier,
    mode: Option<&str>,
) -> anyhow::Result<String> {
    let runtimes = &state.runtimes;
    let platform_url = runtimes
        .platform_url
        .get()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the platform URL is not known yet"))?;
    let bundle = cached_bundle(state, &deployment.bundle_sha256).await?;
    let slot = runtimes.pool.start_slot().await;
    let id = new_id();
    let secret = new_secret();
    sqlx::query(
        "INSERT INTO runtimes (id, deployment_id, qualifier, mode, status, secret_hash, node_id, pool_kind, created_at) \
         VALUES ($1, $2, $3, $4, 'starting', $5, $6, 'process', $7)",
    )
    .bind(&id)
    .bind(&deployment.id)
    .bind(qualifier.as_str())
    .bind(mode)
    .bind(hash_secret(&secret))
    .bind(&runtimes.node_id)
    .bind(now_millis())
    .execute(state.database.writer())
    .await?;
    let spec = ProcessSpec {
        runtime_id: id.clone(),
        secret,
        qualifier,
        platform_url,
        bundle,
        limits: deployment.limits,
    };
    match runtimes.pool.spawn(spec, slot).await {
        Ok(pid) => {
            sqlx::query("UPDATE runtimes SET pid = $2 WHERE id = $1")
                .bind(&id)
                .bind(i64::from(pid))
                .execute(state.database.writer())
                .await?;
            tracing::info!(runtime_id = %id, deployment_id = %deployment.id, qualifier = qualifier.as_str(), pid, "runtime started");
            Ok(id)
        }
        Err(error) => {
            sqlx::query(
                "UPDATE runtimes SET status = 'failed', stopped_at = $2, failure = $3 WHERE id = $1",
            )
            .bind(&id)
            .bind(now_millis())
            .bind(format!("cannot start the runtime process: {error}"))
            .execute(state.database.writer())
            .await?;
            Err(anyhow::anyhow!("cannot start the runtime process: {error}"))
        }
    }
}

/// The bundle archive on local disk, written from the database the first time it is needed.
async fn cached_bundle(state: &AppState, sha256: &str) -> anyhow::Result<PathBuf> {
    let path = state.runtimes.bundle_dir.join(format!("{sha256}.tar.gz"));
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    let content: Vec<u8> = sqlx::query_scalar("SELECT content FROM bundles WHERE sha256 = $1")
        .bind(sha256)
        .fetch_one(state.database.reader())
        .await?;
    tokio::fs::create_dir_all(&state.runtimes.bundle_dir).await?;
    // Write then rename, so a half-written file is never taken for the bundle.
    let partial = path.with_extension(format!("partial-{}", new_id()));
    tokio::fs::write(&partial, content).await?;
    tokio::fs::rename(&partial, &path).await?;
    Ok(path)
}

/// Platform shutdown: every runtime of this node is asked to stop, then terminated: children
/// through the pool, runtimes adopted from a previous run by pid.
async fn stop_all(state: &AppState, exits: &mut mpsc::UnboundedReceiver<Exited>) {
    let runtimes = &state.runtimes;
    let rows = sqlx::query(
        "SELECT id, pid FROM runtimes WHERE node_id = $1 AND status IN ('starting', 'running', 'stopping')",
    )
    .bind(&runtimes.node_id)
    .fetch_all(state.database.reader())
    .await
    .unwrap_or_default();
    let mut adopted = Vec::new();
    for row in &rows {
        let id: String = row.get(0);
        let pid: Option<i64> = row.get(1);
        let _ = mark_stopping(&state.database, &id, None).await;
        let deadline_ms = runtimes.stop_grace.as_millis() as u64;
        state
            .dispatcher
            .send_runtime(&id, PlatformMessage::StopRequested { deadline_ms });
        if runtimes.pool.is_running(&id) {
            runtimes.pool.terminate(&id, runtimes.stop_grace);
        } else if let Some(pid) = pid {
            adopted.push((id, pid as u32));
        }
    }
    let deadline = tokio::time::Instant::now() + runtimes.stop_grace * 2;
    while !runtimes.pool.pids().is_empty() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some(exited)) => {
                let _ = record_exit(state, &exited).await;
            }
            _ => break,
        }
    }
    runtimes.pool.kill_all();
    for (runtime_id, pid) in adopted {
        while process_pool::is_runtime_process(pid, &runtime_id)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if process_pool::is_runtime_process(pid, &runtime_id) {
            process_pool::kill_orphan(pid);
        }
        let _ = record_exit(
            state,
            &Exited {
                runtime_id,
                exit_code: None,
                reason: None,
            },
        )
        .await;
    }
}

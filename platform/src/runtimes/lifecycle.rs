//! One runtime's life as its record and its pool see it: started (record, then pool), asked to
//! stop (record, message, then pool after the grace period), ended (record from the pool's
//! exit), found again after a restart, and every one stopped at shutdown.

use super::scaling::DeploymentToRun;
use crate::auth::{hash_secret, new_secret};
use crate::pools::{Artifact, Exited, Placement, PoolKind, RuntimeSpec};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, Database, StorageError};
use rally_sdk::runtime::{PlatformMessage, Qualifier};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// The placement columns of a runtime row.
pub(super) const PLACEMENT: &str = "pool_kind, pool, server, handle";

/// Where a runtime row says it runs; `None` before its pool placed it.
pub(super) fn placement(row: &AnyRow) -> Option<Placement> {
    Some(Placement {
        kind: PoolKind::parse(&row.get::<String, _>("pool_kind"))?,
        pool: row.get("pool"),
        server: row.get::<Option<String>, _>("server")?,
        handle: row.get::<Option<String>, _>("handle")?,
    })
}

async fn placement_of(
    database: &Database,
    runtime_id: &str,
) -> Result<Option<Placement>, StorageError> {
    let row = sqlx::query(&format!("SELECT {PLACEMENT} FROM runtimes WHERE id = $1"))
        .bind(runtime_id)
        .fetch_optional(database.reader())
        .await?;
    Ok(row.as_ref().and_then(placement))
}

/// Creates the runtime's record and has the pool start it.
pub(super) async fn start_runtime(
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
    let id = new_id();
    // Before the record exists: the wait for a turn does not count against its start timeout.
    // A platform that stops waits for no turn.
    tokio::select! {
        () = runtimes.take_start_turn(&id) => {}
        () = state.dispatcher.shutdown.cancelled() => {
            runtimes.start_over(&id);
            anyhow::bail!("the platform is stopping");
        }
    }
    let secret = new_secret();
    let pool = &runtimes.pool;
    let recorded = sqlx::query(
        "INSERT INTO runtimes (id, deployment_id, qualifier, mode, status, secret_hash, node_id, \
         pool_kind, pool, cpu_millis, memory_mb, created_at) \
         VALUES ($1, $2, $3, $4, 'starting', $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&deployment.id)
    .bind(qualifier.as_str())
    .bind(mode)
    .bind(hash_secret(&secret))
    .bind(&runtimes.node_id)
    .bind(crate::pools::registry::kind_of_pool(&deployment.pool).as_str())
    .bind(&deployment.pool)
    .bind(i64::from(deployment.limits.cpu_millis))
    .bind(i64::from(deployment.limits.memory_mb))
    .bind(now_millis())
    .execute(state.database.writer())
    .await;
    if let Err(error) = recorded {
        runtimes.start_over(&id);
        return Err(error.into());
    }
    let spec = RuntimeSpec {
        runtime_id: id.clone(),
        secret,
        qualifier,
        platform_url,
        artifact: Artifact::Bundle {
            path: bundle,
            sha256: deployment.bundle_sha256.clone(),
            image: deployment.image.clone(),
            program: deployment.program.clone(),
            image_pushed: deployment.image_pushed,
        },
        limits: deployment.limits,
        pool: deployment.pool.clone(),
        docker_placement: deployment.docker_placement,
        labels: deployment.labels.clone(),
    };
    let placement = match pool.start(spec).await {
        Ok(placement) => placement,
        Err(error) => {
            runtimes.start_over(&id);
            mark_failed(state, &id, &error.to_string()).await?;
            return Err(error.into());
        }
    };
    let placed: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
        "UPDATE runtimes SET pool_kind = $2, pool = $3, server = $4, handle = $5 WHERE id = $1 \
         RETURNING status",
    )
    .bind(&id)
    .bind(placement.kind.as_str())
    .bind(&placement.pool)
    .bind(&placement.server)
    .bind(&placement.handle)
    .fetch_optional(state.database.writer())
    .await;
    match placed {
        Ok(Some(status)) => {
            tracing::info!(runtime_id = %id, deployment_id = %deployment.id, qualifier = qualifier.as_str(),
                server = %placement.server, handle = %placement.handle, "runtime started");
            if status == "stopping" {
                // Asked to stop while its pool was starting it: the stop found no placement
                // to end, so it is ended from here.
                pool.stop(&id, &placement, runtimes.stop_grace);
            }
            Ok(id)
        }
        unrecorded => {
            // A runtime whose record does not say where it runs could never be stopped.
            pool.kill(&id, &placement);
            runtimes.start_over(&id);
            let error = match unrecorded {
                Err(error) => anyhow::Error::from(error),
                Ok(_) => anyhow::anyhow!("the runtime's record is gone"),
            };
            let _ = mark_failed(state, &id, &format!("cannot record where it runs: {error}")).await;
            Err(error.context("cannot record where the runtime runs"))
        }
    }
}

/// Marks a runtime that could not be started.
async fn mark_failed(
    state: &AppState,
    runtime_id: &str,
    failure: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE runtimes SET status = 'failed', stopped_at = $2, failure = $3 \
         WHERE id = $1 AND status IN ('starting', 'running', 'stopping')",
    )
    .bind(runtime_id)
    .bind(now_millis())
    .bind(failure)
    .execute(state.database.writer())
    .await?;
    Ok(())
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

/// Marks a runtime stopping, asks it to stop, and has its pool end it after the grace period.
pub(super) async fn stop_runtime(
    state: &AppState,
    runtime_id: &str,
    failure: Option<&str>,
) -> Result<(), StorageError> {
    mark_stopping(&state.database, runtime_id, failure).await?;
    let grace = state.runtimes.stop_grace;
    state.dispatcher.send_runtime(
        runtime_id,
        PlatformMessage::StopRequested {
            deadline_ms: grace.as_millis() as u64,
        },
    );
    let state = state.clone();
    let runtime_id = runtime_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        // Read after the grace period. A runtime with no placement yet is still being
        // started: its start sees the `stopping` status once it is placed, and ends it.
        match placement_of(&state.database, &runtime_id).await {
            Ok(Some(placement)) => state.runtimes.pool.stop(&runtime_id, &placement, grace),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(runtime_id = %runtime_id, %error, "cannot read where a runtime runs to stop it")
            }
        }
    });
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

/// Marks a runtime that ended: `stopped` if it was asked to stop, else `failed`. Its clients
/// go to another lobby.
pub(super) async fn record_exit(state: &AppState, exited: &Exited) -> Result<(), StorageError> {
    let runtimes = &state.runtimes;
    runtimes.start_over(&exited.runtime_id);
    runtimes.disconnected_at.lock().remove(&exited.runtime_id);
    let failure = match &exited.reason {
        Some(reason) => format!("killed: {reason}"),
        None => exit_failure(exited.exit_code),
    };
    let result = sqlx::query(
        "UPDATE runtimes SET status = CASE WHEN status = 'stopping' THEN 'stopped' ELSE 'failed' END, \
         stopped_at = $2, exit_code = $3, \
         failure = CASE WHEN status = 'stopping' THEN failure ELSE $4 END \
         WHERE id = $1 AND status IN ('starting', 'running', 'stopping') RETURNING status",
    )
    .bind(&exited.runtime_id)
    .bind(now_millis())
    .bind(exited.exit_code.map(i64::from))
    .bind(&failure)
    .fetch_optional(state.database.writer())
    .await?;
    if let Some(row) = result {
        let status: String = row.get(0);
        state
            .dispatcher
            .runtime_ended(&exited.runtime_id, status == "failed");
        if status == "failed" {
            // Its log says why it ended, next to what it printed last.
            runtimes.pool.append_log(
                &exited.runtime_id,
                &format!("[platform] the runtime failed: {failure}\n"),
            );
            tracing::warn!(runtime_id = %exited.runtime_id, exit_code = ?exited.exit_code, "runtime failed; it will be replaced");
        } else {
            tracing::info!(runtime_id = %exited.runtime_id, "runtime stopped");
        }
    }
    Ok(())
}

/// An end found rather than reported: no exit code is known.
pub(super) fn found_gone(runtime_id: String) -> Exited {
    Exited {
        runtime_id,
        exit_code: None,
        reason: None,
    }
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

/// One of this node's runtimes that is not over.
pub(super) struct Live {
    pub id: String,
    pub status: String,
    pub created_at: i64,
    /// `None` until its pool has placed it.
    pub placement: Option<Placement>,
}

/// This node's runtimes that are not over, with where they run.
pub(super) async fn live_on_this_node(state: &AppState) -> Result<Vec<Live>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT id, status, created_at, {PLACEMENT} FROM runtimes WHERE node_id = $1 \
         AND status IN ('starting', 'running', 'stopping')"
    ))
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    Ok(rows
        .iter()
        .map(|row| Live {
            id: row.get("id"),
            status: row.get("status"),
            created_at: row.get("created_at"),
            placement: placement(row),
        })
        .collect())
}

/// This node's runtimes that are not over, each with where it runs.
async fn placed_on_this_node(
    state: &AppState,
) -> Result<Vec<(String, Option<Placement>)>, StorageError> {
    let live = live_on_this_node(state).await?;
    Ok(live
        .into_iter()
        .map(|live| (live.id, live.placement))
        .collect())
}

/// After a crash of this node: runtimes it started are no longer its children. Those still
/// alive get the reconnect window to come back; the rest are marked failed. Those that do not
/// reconnect in time are stopped by the next passes.
pub(super) async fn recover_after_restart(state: &AppState) -> Result<(), StorageError> {
    let known = placed_on_this_node(state).await?;
    let gone = state.runtimes.pool.reconcile(&known).await;
    for (runtime_id, _) in known {
        if gone.contains(&runtime_id) {
            record_exit(state, &found_gone(runtime_id)).await?;
        } else {
            tracing::info!(runtime_id = %runtime_id, "runtime from a previous run is alive; waiting for it to reconnect");
        }
    }
    Ok(())
}

/// Platform shutdown: every runtime of this node is asked to stop and ended by its pool, those
/// still there after twice the grace period by force.
pub(super) async fn stop_all(state: &AppState, exits: &mut mpsc::Receiver<Exited>) {
    let runtimes = &state.runtimes;
    let pool = &runtimes.pool;
    let live = placed_on_this_node(state).await.unwrap_or_default();
    let deadline_ms = runtimes.stop_grace.as_millis() as u64;
    for (runtime_id, placement) in &live {
        let _ = mark_stopping(&state.database, runtime_id, None).await;
        state
            .dispatcher
            .send_runtime(runtime_id, PlatformMessage::StopRequested { deadline_ms });
        if let Some(placement) = placement {
            pool.stop(runtime_id, placement, runtimes.stop_grace);
        }
    }
    let still_there = || {
        live.iter().any(|(runtime_id, placement)| {
            placement
                .as_ref()
                .is_some_and(|placement| pool.is_alive(runtime_id, placement))
        })
    };
    let deadline = tokio::time::Instant::now() + runtimes.stop_grace * 2;
    while (pool.running() > 0 || still_there()) && tokio::time::Instant::now() < deadline {
        let next_look = tokio::time::Instant::now() + Duration::from_millis(50);
        if let Ok(Some(exited)) =
            tokio::time::timeout_at(next_look.min(deadline), exits.recv()).await
        {
            let _ = record_exit(state, &exited).await;
        }
    }
    for (runtime_id, placement) in &live {
        if let Some(placement) = placement {
            pool.kill(runtime_id, placement);
        }
    }
    pool.kill_all().await;
    while let Ok(exited) = exits.try_recv() {
        let _ = record_exit(state, &exited).await;
    }
    for (runtime_id, _) in live {
        let _ = record_exit(state, &found_gone(runtime_id)).await;
    }
}

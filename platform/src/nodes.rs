//! Platform nodes (`docs/nodes.md`): every `rally server` has a row in `nodes`, written when it
//! starts, kept fresh by its heartbeat and marked when it stops gracefully. A node not heard
//! from for `node_dead_after_secs` is dead. The embedded SQLite default runs one node: a
//! second node on the same database file is refused at start while the first is alive.

use crate::config::Config;
use crate::error::{ApiError, Json};
use crate::permissions::{AsStaff, Principal};
use crate::state::AppState;
use crate::storage::{now_millis, Backend, Database, StorageError};
use rally_sdk::wire::{ErrorBody, Node, NodeList};
use sqlx::Row;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_nodes))
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "node {other} ({url}) is using this SQLite database, last heard from {seconds} s ago. \
         The embedded SQLite default runs one node: stop that node, or run several nodes on \
         PostgreSQL (docs/nodes.md). If it is gone without stopping, it counts as dead after \
         node_dead_after_secs ({dead_after} s) and this node may start then."
    )]
    SqliteInUse {
        other: String,
        url: String,
        seconds: i64,
        dead_after: u64,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for JoinError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

/// Writes this node's row at start, with `url` for now (the advertised URL is known once the
/// listener is bound: [`advertise`] writes it). On SQLite, refuses when another node of the
/// same database is alive.
pub async fn join(
    database: &Database,
    node_id: &str,
    url: &str,
    config: &Config,
) -> Result<(), JoinError> {
    let now = now_millis();
    let dead_after_ms = config.node_dead_after_secs as i64 * 1000;
    if database.backend() == Backend::Sqlite {
        let other = sqlx::query(
            "SELECT id, url, heartbeat_at FROM nodes \
             WHERE id <> $1 AND stopped_at IS NULL AND heartbeat_at > $2 \
             ORDER BY heartbeat_at DESC LIMIT 1",
        )
        .bind(node_id)
        .bind(now - dead_after_ms)
        .fetch_optional(database.reader())
        .await?;
        if let Some(other) = other {
            return Err(JoinError::SqliteInUse {
                other: other.get("id"),
                url: other.get("url"),
                seconds: (now - other.get::<i64, _>("heartbeat_at")) / 1000,
                dead_after: config.node_dead_after_secs,
            });
        }
    }
    sqlx::query(
        "INSERT INTO nodes (id, url, started_at, heartbeat_at, stopped_at) \
         VALUES ($1, $2, $3, $3, NULL) \
         ON CONFLICT (id) DO UPDATE SET url = $2, started_at = $3, heartbeat_at = $3, stopped_at = NULL",
    )
    .bind(node_id)
    .bind(url)
    .bind(now)
    .execute(database.writer())
    .await?;
    Ok(())
}

/// Keeps this node's row fresh every `node_heartbeat_secs` until `shutdown` ([`leave`] marks
/// it stopped). A heartbeat the database refuses is retried at the next beat.
pub async fn heartbeat(
    database: Database,
    node_id: String,
    url: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut beats = tokio::time::interval(every);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beats.tick() => {}
            () = shutdown.cancelled() => break,
        }
        if let Err(error) = advertise(&database, &node_id, &url).await {
            tracing::warn!(%error, "cannot write this node's heartbeat");
        }
    }
}

/// Writes the URL this node is reached at, with a heartbeat.
pub async fn advertise(database: &Database, node_id: &str, url: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE nodes SET url = $1, heartbeat_at = $2 WHERE id = $3")
        .bind(url)
        .bind(now_millis())
        .bind(node_id)
        .execute(database.writer())
        .await?;
    Ok(())
}

/// Marks this node stopped (a graceful stop).
pub async fn leave(database: &Database, node_id: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE nodes SET stopped_at = $1 WHERE id = $2")
        .bind(now_millis())
        .bind(node_id)
        .execute(database.writer())
        .await?;
    Ok(())
}

/// Every node, with what runs on it.
pub async fn list(database: &Database, dead_after: Duration) -> Result<Vec<Node>, StorageError> {
    let rows = sqlx::query(
        "SELECT n.id, n.url, n.started_at, n.heartbeat_at, n.stopped_at, \
           (SELECT COUNT(*) FROM runtimes r WHERE r.node_id = n.id \
              AND r.status IN ('starting', 'running', 'stopping')) AS runtimes, \
           (SELECT COUNT(*) FROM clients c WHERE c.node_id = n.id AND c.status = 'active') AS clients \
         FROM nodes n ORDER BY n.started_at, n.id",
    )
    .fetch_all(database.reader())
    .await?;
    let now = now_millis();
    Ok(rows
        .iter()
        .map(|row| {
            let heartbeat_at: i64 = row.get("heartbeat_at");
            let stopped_at: Option<i64> = row.get("stopped_at");
            let status = if stopped_at.is_some() {
                "stopped"
            } else if now - heartbeat_at > dead_after.as_millis() as i64 {
                "dead"
            } else {
                "alive"
            };
            Node {
                id: row.get("id"),
                url: row.get("url"),
                status: status.to_owned(),
                started_at: row.get("started_at"),
                heartbeat_at,
                stopped_at,
                runtimes: row.get("runtimes"),
                clients: row.get("clients"),
            }
        })
        .collect())
}

/// The platform's nodes: alive, dead or stopped, with their runtimes and clients (admin,
/// support).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    security(("bearer" = [])),
    responses((status = 200, body = NodeList), (status = "4XX", body = ErrorBody)))]
async fn list_nodes(
    AsStaff(_principal): AsStaff<Principal>,
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<NodeList>, ApiError> {
    let dead_after = Duration::from_secs(state.config.node_dead_after_secs);
    Ok(Json(NodeList {
        nodes: list(&state.database, dead_after).await?,
    }))
}

//! Platform nodes (`docs/nodes.md`): every `rally server` has a row in `nodes`, written when it
//! starts, kept fresh by its heartbeat and marked when it stops gracefully. A node not heard
//! from for `node_dead_after_secs` is dead. The embedded SQLite default runs one node: a
//! second node on the same database file is refused at start while the first is alive.

use crate::audit::{self, Change};
use crate::config::Config;
use crate::error::{ApiError, Json};
use crate::leases::MoveError;
use crate::permissions::{AsStaff, Principal, StagePath, StageScope};
use crate::state::AppState;
use crate::storage::{now_millis, Backend, Database, StorageError};
use axum::http::StatusCode;
use rally_sdk::wire::{ErrorBody, Node, NodeList, NodeStage, SetStageNode, StageMove};
use sqlx::Row;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(move_stage))
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
    let mut stages = held_stages(database).await?;
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
            let id: String = row.get("id");
            // (On SQLite, the one live node runs every stage.)
            let stages = match stages.remove(&id) {
                Some(held) => held,
                None if status == "alive" => stages.remove("").unwrap_or_default(),
                None => Vec::new(),
            };
            Node {
                id,
                stages,
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

/// The stages each node runs, by node id: the stage leases, or on SQLite (no leases) every
/// stage with a running deployment, under the key `""`.
async fn held_stages(
    database: &Database,
) -> Result<std::collections::HashMap<String, Vec<NodeStage>>, StorageError> {
    const PATH: &str = "COALESCE(t.alias, t.id) || '/' || COALESCE(p.alias, p.id) || '/' || \
                        COALESCE(s.alias, s.id)";
    let rows = if database.backend() == Backend::Sqlite {
        sqlx::query(&format!(
            "SELECT DISTINCT '' AS holder, NULL AS moving_to, s.id, {PATH} AS path \
             FROM deployments d JOIN stages s ON s.id = d.stage_id \
             JOIN projects p ON p.id = s.project_id JOIN tenants t ON t.id = p.tenant_id \
             WHERE d.status IN ('active', 'draining') ORDER BY path"
        ))
        .fetch_all(database.reader())
        .await?
    } else {
        sqlx::query(&format!(
            "SELECT l.holder, l.moving_to, s.id, {PATH} AS path \
             FROM leases l JOIN stages s ON l.name = 'stage:' || s.id \
             JOIN projects p ON p.id = s.project_id JOIN tenants t ON t.id = p.tenant_id \
             ORDER BY path"
        ))
        .fetch_all(database.reader())
        .await?
    };
    let mut held: std::collections::HashMap<String, Vec<NodeStage>> = Default::default();
    for row in rows {
        held.entry(row.get("holder")).or_default().push(NodeStage {
            stage_id: row.get("id"),
            path: row.get("path"),
            moving_to: row.get("moving_to"),
        });
    }
    Ok(held)
}

/// Moves a stage to another node (admin, support): the node running it stops its runtimes
/// there, then hands the stage and its clients over; players reconnect to the new node
/// (`docs/nodes.md`). Several nodes need PostgreSQL.
#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/node",
    tag = "nodes", request_body = SetStageNode, params(StagePath),
    security(("bearer" = [])),
    responses((status = 202, body = StageMove), (status = "4XX", body = ErrorBody)))]
async fn move_stage(
    AsStaff(scope): AsStaff<StageScope>,
    axum::extract::State(state): axum::extract::State<AppState>,
    Json(request): Json<SetStageNode>,
) -> Result<(StatusCode, Json<StageMove>), ApiError> {
    let stage = &scope.stage;
    let ttl = crate::leases::ttl(&state.config);
    let moved = crate::leases::request_move(&state.database, &stage.id, &request.node, ttl)
        .await
        .map_err(|error| match error {
            MoveError::OneNode => ApiError::conflict("one_node", error.to_string()),
            MoveError::NotRunning => ApiError::conflict("stage_not_running", error.to_string()),
            MoveError::NodeNotAlive(_) => ApiError::conflict("node_not_alive", error.to_string()),
            MoveError::AlreadyMoving(_) => ApiError::conflict("stage_moving", error.to_string()),
            MoveError::Storage(error) => error.into(),
        })?;
    audit::record(
        state.database.writer(),
        &scope.access.principal,
        Change {
            action: "stage.move",
            target_kind: "stage",
            target_id: &stage.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&stage.project_id),
            details: serde_json::json!({"from": moved.from_node, "to": moved.to_node}),
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(StageMove {
            stage_id: stage.id.clone(),
            from_node: moved.from_node,
            to_node: moved.to_node,
        }),
    ))
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

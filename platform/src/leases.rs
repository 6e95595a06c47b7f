//! Leases (`docs/nodes.md`): which node runs a stage's lobbies, matchmaking and match
//! runtimes, and which runs the cluster-wide jobs. A lease is a row in `leases` (`stage:<id>`,
//! `global`) with its holder and an expiry, renewed on every supervision pass and lasting
//! `node_dead_after_secs`: a node that dies loses its leases when it counts as dead, and
//! another node takes them over. A graceful stop gives them back at once.
//!
//! On SQLite there is one node (`nodes::join` sees to it), and it holds everything without
//! writing leases.

use crate::config::Config;
use crate::storage::{now_millis, Backend, Database, StorageError};
use sqlx::Row;
use std::collections::HashSet;
use std::time::Duration;

pub const GLOBAL: &str = "global";

/// How long a lease lasts: as long as a silent node takes to count as dead.
pub fn ttl(config: &Config) -> Duration {
    Duration::from_secs(config.node_dead_after_secs)
}

fn stage_lease(stage_id: &str) -> String {
    format!("stage:{stage_id}")
}

/// Takes the lease `name` for `node_id` if it is free, expired or already this node's, for
/// `ttl` from now. True when this node holds it afterwards.
pub async fn take(
    database: &Database,
    node_id: &str,
    name: &str,
    ttl: Duration,
) -> Result<bool, StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(true);
    }
    let now = now_millis();
    let holder: Option<String> = sqlx::query_scalar(
        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3 \
         WHERE leases.holder = $2 OR leases.expires_at < $4 \
         RETURNING holder",
    )
    .bind(name)
    .bind(node_id)
    .bind(now + ttl.as_millis() as i64)
    .bind(now)
    .fetch_optional(database.writer())
    .await?;
    Ok(holder.as_deref() == Some(node_id))
}

/// Which node serves a stage's players.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageHolder {
    Here,
    /// Another live node, and its advertised URL.
    Node {
        id: String,
        url: String,
    },
    /// Its node stopped answering and no other has taken it over yet (within a supervision
    /// pass once the lease has expired).
    Moving,
}

/// The node serving `stage_id`'s players: the holder of its lease, or this node, which takes
/// the lease when nobody holds it (a stage's first player arrives before any supervision pass
/// took it). An expired lease is left to the supervision passes, which take over what its
/// node left.
pub async fn serve_stage(
    database: &Database,
    node_id: &str,
    stage_id: &str,
    ttl: Duration,
) -> Result<StageHolder, StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(StageHolder::Here);
    }
    let name = stage_lease(stage_id);
    for _ in 0..3 {
        let now = now_millis();
        let holder = sqlx::query(
            "SELECT l.holder, l.expires_at, n.url FROM leases l \
             LEFT JOIN nodes n ON n.id = l.holder WHERE l.name = $1",
        )
        .bind(&name)
        .fetch_optional(database.reader())
        .await?;
        match holder {
            Some(row) if row.get::<String, _>("holder") == node_id => return Ok(StageHolder::Here),
            Some(row) if row.get::<i64, _>("expires_at") < now => return Ok(StageHolder::Moving),
            Some(row) => {
                return Ok(match row.get::<Option<String>, _>("url") {
                    Some(url) => StageHolder::Node {
                        id: row.get("holder"),
                        url,
                    },
                    None => StageHolder::Moving,
                })
            }
            None => {
                let taken: Option<String> = sqlx::query_scalar(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING RETURNING holder",
                )
                .bind(&name)
                .bind(node_id)
                .bind(now + ttl.as_millis() as i64)
                .fetch_optional(database.writer())
                .await?;
                if taken.is_some() {
                    return Ok(StageHolder::Here);
                }
                // Another node took it meanwhile: read who.
            }
        }
    }
    Err(StorageError::from(sqlx::Error::Protocol(format!(
        "the lease of stage {stage_id} keeps changing hands"
    ))))
}

/// What a stage assignment pass decided: the stages this node runs, and the nodes it took
/// stages over from (whose runtimes there must be replaced).
#[derive(Debug, Default)]
pub struct Assignment {
    pub stages: HashSet<String>,
    pub taken_from: Vec<(String, String)>,
}

/// Renews this node's stage leases and takes free or expired ones for `stages` (the stages
/// with running deployments) while it holds fewer than its share: the stages divided by the
/// live nodes, rounded up. Leases of stages no longer in `stages` are given back.
pub async fn assign_stages(
    database: &Database,
    node_id: &str,
    stages: &HashSet<String>,
    ttl: Duration,
) -> Result<Assignment, StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(Assignment {
            stages: stages.clone(),
            taken_from: Vec::new(),
        });
    }
    let now = now_millis();
    let expires_at = now + ttl.as_millis() as i64;
    sqlx::query("UPDATE leases SET expires_at = $1 WHERE holder = $2 AND name LIKE 'stage:%'")
        .bind(expires_at)
        .bind(node_id)
        .execute(database.writer())
        .await?;
    let rows = sqlx::query("SELECT name, holder, expires_at FROM leases WHERE name LIKE 'stage:%'")
        .fetch_all(database.reader())
        .await?;
    let mut assignment = Assignment::default();
    let mut held_elsewhere = HashSet::new();
    let mut expired = std::collections::HashMap::new();
    for row in &rows {
        let name: String = row.get("name");
        let Some(stage) = name.strip_prefix("stage:") else {
            continue;
        };
        let holder: String = row.get("holder");
        if !stages.contains(stage) {
            if holder == node_id {
                give_back(database, node_id, &name).await?;
            }
            continue;
        }
        if holder == node_id {
            assignment.stages.insert(stage.to_owned());
        } else if row.get::<i64, _>("expires_at") >= now {
            held_elsewhere.insert(stage.to_owned());
        } else {
            expired.insert(stage.to_owned(), holder);
        }
    }
    let live_nodes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $1",
    )
    .bind(now - ttl.as_millis() as i64)
    .fetch_one(database.reader())
    .await?;
    let share = (stages.len() as i64 + live_nodes.max(1) - 1) / live_nodes.max(1);
    let mut free: Vec<&String> = stages
        .iter()
        .filter(|stage| !assignment.stages.contains(*stage) && !held_elsewhere.contains(*stage))
        .collect();
    free.sort();
    for stage in free {
        if assignment.stages.len() as i64 >= share {
            break;
        }
        if take(database, node_id, &stage_lease(stage), ttl).await? {
            assignment.stages.insert(stage.clone());
            if let Some(previous) = expired.remove(stage) {
                assignment.taken_from.push((stage.clone(), previous));
            }
        }
    }
    Ok(assignment)
}

/// Gives one lease back.
async fn give_back(database: &Database, node_id: &str, name: &str) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(node_id)
        .execute(database.writer())
        .await?;
    Ok(())
}

/// Gives every lease of this node back (a graceful stop): other nodes take them at once.
pub async fn give_back_all(database: &Database, node_id: &str) -> Result<(), StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(());
    }
    sqlx::query("DELETE FROM leases WHERE holder = $1")
        .bind(node_id)
        .execute(database.writer())
        .await?;
    Ok(())
}

/// The runtimes `dead_node` left on `stage_id` are recorded failed: that node is gone, and
/// the stage's new holder replaces them. Returns how many.
pub async fn fail_runtimes_left_by(
    database: &Database,
    stage_id: &str,
    dead_node: &str,
) -> Result<u64, StorageError> {
    let result = sqlx::query(
        "UPDATE runtimes SET status = 'failed', stopped_at = $1, \
           failure = 'its node stopped answering; replaced on another node' \
         WHERE node_id = $2 AND status IN ('starting', 'running', 'stopping') \
           AND deployment_id IN (SELECT id FROM deployments WHERE stage_id = $3)",
    )
    .bind(now_millis())
    .bind(dead_node)
    .bind(stage_id)
    .execute(database.writer())
    .await?;
    Ok(result.rows_affected())
}

/// The live clients of `stage_id` recorded on nodes that are not alive any more (stopped, or
/// dead) are recorded on `node_id`, which has just taken the stage: they reconnect there within
/// the grace period, or are deleted. Returns how many.
pub async fn take_orphaned_clients(
    database: &Database,
    node_id: &str,
    stage_id: &str,
    ttl: Duration,
) -> Result<u64, StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE clients SET node_id = $1 WHERE status = 'active' AND node_id <> $1 \
           AND deployment_id IN (SELECT id FROM deployments WHERE stage_id = $2) \
           AND node_id NOT IN (SELECT id FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $3)",
    )
    .bind(node_id)
    .bind(stage_id)
    .bind(now_millis() - ttl.as_millis() as i64)
    .execute(database.writer())
    .await?;
    Ok(result.rows_affected())
}

/// The base URL of each stage's holder, for stages held by live nodes other than `node_id`.
pub async fn held_elsewhere(
    database: &Database,
    node_id: &str,
) -> Result<std::collections::HashMap<String, String>, StorageError> {
    if database.backend() == Backend::Sqlite {
        return Ok(Default::default());
    }
    let rows = sqlx::query(
        "SELECT l.name, n.url FROM leases l JOIN nodes n ON n.id = l.holder \
         WHERE l.name LIKE 'stage:%' AND l.holder <> $1 AND l.expires_at >= $2",
    )
    .bind(node_id)
    .bind(now_millis())
    .fetch_all(database.reader())
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: String = row.get("name");
            let stage = name.strip_prefix("stage:")?.to_owned();
            Some((stage, row.get("url")))
        })
        .collect())
}

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

/// Nodes heard from after this instant (ms) are alive: a lease's lifetime is a node's.
fn alive_since(ttl: Duration) -> i64 {
    now_millis() - ttl.as_millis() as i64
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
    /// pass once the lease has expired), or it is being handed over to another node.
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
            "SELECT l.holder, l.expires_at, l.moving_to, n.url FROM leases l \
             LEFT JOIN nodes n ON n.id = l.holder WHERE l.name = $1",
        )
        .bind(&name)
        .fetch_optional(database.reader())
        .await?;
        match holder {
            Some(row) if row.get::<Option<String>, _>("moving_to").is_some() => {
                return Ok(StageHolder::Moving)
            }
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

/// What a stage assignment pass decided: the stages this node runs, the nodes it took
/// stages over from (whose runtimes there must be replaced), and the stages it is handing
/// over to another node.
#[derive(Debug, Default)]
pub struct Assignment {
    pub stages: HashSet<String>,
    pub taken_from: Vec<(String, String)>,
    pub handing_over: Vec<Handover>,
    /// Stages of this node an operator moved here: balancing leaves them.
    pub pinned: HashSet<String>,
}

/// A stage this node holds and hands over to another node (`moving_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub stage_id: String,
    pub to_node: String,
    pub to_url: String,
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
            ..Assignment::default()
        });
    }
    let now = now_millis();
    let expires_at = now + ttl.as_millis() as i64;
    sqlx::query("UPDATE leases SET expires_at = $1 WHERE holder = $2 AND name LIKE 'stage:%'")
        .bind(expires_at)
        .bind(node_id)
        .execute(database.writer())
        .await?;
    // A move to a node that is gone (or to this one) is called off.
    sqlx::query(
        "UPDATE leases SET moving_to = NULL WHERE holder = $1 AND moving_to IS NOT NULL \
           AND (moving_to = $1 OR moving_to NOT IN \
             (SELECT id FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $2))",
    )
    .bind(node_id)
    .bind(alive_since(ttl))
    .execute(database.writer())
    .await?;
    let rows = sqlx::query(
        "SELECT l.name, l.holder, l.expires_at, l.moving_to, l.pinned, n.url AS moving_url \
         FROM leases l \
         LEFT JOIN nodes n ON n.id = l.moving_to WHERE l.name LIKE 'stage:%'",
    )
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
            if row.get::<i64, _>("pinned") != 0 {
                assignment.pinned.insert(stage.to_owned());
            }
            match row.get::<Option<String>, _>("moving_to") {
                Some(to_node) => assignment.handing_over.push(Handover {
                    stage_id: stage.to_owned(),
                    to_node,
                    to_url: row
                        .get::<Option<String>, _>("moving_url")
                        .unwrap_or_default(),
                }),
                None => {
                    assignment.stages.insert(stage.to_owned());
                }
            }
        } else if row.get::<i64, _>("expires_at") >= now {
            held_elsewhere.insert(stage.to_owned());
        } else {
            expired.insert(stage.to_owned(), holder);
        }
    }
    let live_nodes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $1",
    )
    .bind(alive_since(ttl))
    .fetch_one(database.reader())
    .await?;
    let share = (stages.len() as i64 + live_nodes.max(1) - 1) / live_nodes.max(1);
    let mut free: Vec<&String> = stages
        .iter()
        .filter(|stage| !assignment.stages.contains(*stage) && !held_elsewhere.contains(*stage))
        .collect();
    free.sort();
    for stage in free {
        if (assignment.stages.len() + assignment.handing_over.len()) as i64 >= share {
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
        "UPDATE clients SET node_id = $1, moved_at = $4 WHERE status = 'active' AND node_id <> $1 \
           AND deployment_id IN (SELECT id FROM deployments WHERE stage_id = $2) \
           AND node_id NOT IN (SELECT id FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $3)",
    )
    .bind(node_id)
    .bind(stage_id)
    .bind(alive_since(ttl))
    .bind(now_millis())
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

/// Why a stage cannot be moved.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("the embedded SQLite default runs one node; stages move between nodes on PostgreSQL")]
    OneNode,
    #[error("no node runs this stage now (it has no running deployment)")]
    NotRunning,
    #[error("node {0} is not alive")]
    NodeNotAlive(String),
    #[error("the stage is already moving to node {0}")]
    AlreadyMoving(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a move asked for: the stage's node now and the one it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub from_node: String,
    pub to_node: String,
}

/// Asks the node running `stage_id` to hand it over to `to_node` (a live node). Moving a
/// stage to the node that runs it is a no-op.
pub async fn request_move(
    database: &Database,
    stage_id: &str,
    to_node: &str,
    ttl: Duration,
) -> Result<Move, MoveError> {
    if database.backend() == Backend::Sqlite {
        return Err(MoveError::OneNode);
    }
    let now = now_millis();
    let alive: Option<String> = sqlx::query_scalar(
        "SELECT id FROM nodes WHERE id = $1 AND stopped_at IS NULL AND heartbeat_at > $2",
    )
    .bind(to_node)
    .bind(alive_since(ttl))
    .fetch_optional(database.reader())
    .await
    .map_err(StorageError::from)?;
    if alive.is_none() {
        return Err(MoveError::NodeNotAlive(to_node.to_owned()));
    }
    let lease =
        sqlx::query("SELECT holder, moving_to FROM leases WHERE name = $1 AND expires_at >= $2")
            .bind(stage_lease(stage_id))
            .bind(now)
            .fetch_optional(database.reader())
            .await
            .map_err(StorageError::from)?
            .ok_or(MoveError::NotRunning)?;
    let from_node: String = lease.get("holder");
    if let Some(moving_to) = lease.get::<Option<String>, _>("moving_to") {
        return Err(MoveError::AlreadyMoving(moving_to));
    }
    if from_node != to_node {
        let asked = sqlx::query(
            "UPDATE leases SET moving_to = $1, pinned = 1 \
             WHERE name = $2 AND holder = $3 AND moving_to IS NULL",
        )
        .bind(to_node)
        .bind(stage_lease(stage_id))
        .bind(&from_node)
        .execute(database.writer())
        .await
        .map_err(StorageError::from)?;
        if asked.rows_affected() == 0 {
            return Err(MoveError::NotRunning);
        }
    }
    Ok(Move {
        from_node,
        to_node: to_node.to_owned(),
    })
}

/// Balancing by count: when this node runs more than one stage more than the least loaded
/// live node, it hands one stage over to that node, one at a time, picking a stage without a
/// match in progress here (so that balancing never ends a match) that no operator put here.
pub async fn rebalance(
    database: &Database,
    node_id: &str,
    assignment: &Assignment,
    ttl: Duration,
) -> Result<Option<Handover>, StorageError> {
    // With fewer than two stages here there is nothing to even out.
    if database.backend() == Backend::Sqlite
        || !assignment.handing_over.is_empty()
        || assignment.stages.len() < 2
    {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT n.id, n.url, \
           (SELECT COUNT(*) FROM leases l WHERE l.holder = n.id AND l.name LIKE 'stage:%') AS held \
         FROM nodes n WHERE n.stopped_at IS NULL AND n.heartbeat_at > $1 AND n.id <> $2 \
         ORDER BY held, n.id LIMIT 1",
    )
    .bind(alive_since(ttl))
    .bind(node_id)
    .fetch_optional(database.reader())
    .await?;
    let Some(least) = rows else {
        return Ok(None);
    };
    let held = assignment.stages.len() as i64;
    if held <= least.get::<i64, _>("held") + 1 {
        return Ok(None);
    }
    let in_play = stages_in_play(database, node_id).await?;
    let mut candidates: Vec<&String> = assignment
        .stages
        .iter()
        .filter(|stage| !in_play.contains(*stage) && !assignment.pinned.contains(*stage))
        .collect();
    candidates.sort();
    let Some(stage_id) = candidates.first() else {
        return Ok(None);
    };
    let to_node: String = least.get("id");
    let asked = sqlx::query(
        "UPDATE leases SET moving_to = $1, pinned = 0 \
         WHERE name = $2 AND holder = $3 AND moving_to IS NULL",
    )
    .bind(&to_node)
    .bind(stage_lease(stage_id))
    .bind(node_id)
    .execute(database.writer())
    .await?;
    Ok((asked.rows_affected() == 1).then(|| Handover {
        stage_id: (*stage_id).clone(),
        to_node,
        to_url: least.get("url"),
    }))
}

/// Completes a handover once this node's runtimes of the stage have ended and what they wrote
/// is in the database: the stage's clients recorded here become the new node's (which greets
/// them as resumed), and the lease is that node's. False when the move was called off meanwhile.
pub async fn hand_over(
    database: &Database,
    node_id: &str,
    handover: &Handover,
    ttl: Duration,
) -> Result<bool, StorageError> {
    let mut transaction = database.writer().begin().await?;
    let lease = sqlx::query(
        "UPDATE leases SET holder = $1, moving_to = NULL, expires_at = $2 \
         WHERE name = $3 AND holder = $4 AND moving_to = $1",
    )
    .bind(&handover.to_node)
    .bind(now_millis() + ttl.as_millis() as i64)
    .bind(stage_lease(&handover.stage_id))
    .bind(node_id)
    .execute(&mut *transaction)
    .await?;
    if lease.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE clients SET node_id = $1, moved_at = $4 WHERE node_id = $2 AND status = 'active' \
           AND deployment_id IN (SELECT id FROM deployments WHERE stage_id = $3)",
    )
    .bind(&handover.to_node)
    .bind(node_id)
    .bind(&handover.stage_id)
    .bind(now_millis())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(true)
}

/// The stages with a match runtime of this node in progress.
async fn stages_in_play(
    database: &Database,
    node_id: &str,
) -> Result<HashSet<String>, StorageError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT d.stage_id FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
         WHERE r.node_id = $1 AND r.qualifier = 'match' \
           AND r.status IN ('starting', 'running', 'stopping')",
    )
    .bind(node_id)
    .fetch_all(database.reader())
    .await?;
    Ok(rows.into_iter().collect())
}

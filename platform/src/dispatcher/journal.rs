//! The dispatcher's changes to durable state, written in order by one task and batched into
//! transactions, so that relaying messages never waits for the database. A batch the database
//! refuses (it is down, locked, restarting) is written again, with backoff, until it goes in:
//! changes wait in order meanwhile, and none is dropped.

use crate::storage::{now_millis, Database, StorageError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One change the dispatcher made to a client or player.
#[derive(Debug)]
pub enum Change {
    Assigned {
        client_id: String,
        runtime_id: Option<String>,
        group: Option<String>,
    },
    Deleted {
        client_id: String,
        reason: String,
    },
    /// The client moved to a newer deployment of its stage (through a match).
    Moved {
        client_id: String,
        deployment_id: String,
    },
    Profile {
        player_id: String,
        /// JSON text.
        profile: String,
    },
    /// Answered once every change before it is written.
    Flush(oneshot::Sender<()>),
}

/// Most changes written in one transaction.
const BATCH: usize = 512;

/// Writes changes until every sender is gone.
pub async fn write_changes(database: Database, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut batch = Vec::with_capacity(BATCH);
    while changes.recv_many(&mut batch, BATCH).await > 0 {
        write_until_done(&database, &batch).await;
        for change in batch.drain(..) {
            if let Change::Flush(done) = change {
                let _ = done.send(());
            }
        }
    }
}

/// First wait after a failed batch; it doubles up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MOST_BACKOFF: Duration = Duration::from_secs(2);

/// Writes `batch`, again and again with backoff until the database takes it.
async fn write_until_done(database: &Database, batch: &[Change]) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        match write_batch(database, batch).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        changes = batch.len(),
                        failures,
                        "client changes recorded after the database came back"
                    );
                }
                return;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, changes = batch.len(), failures, retry_in_ms = backoff.as_millis() as u64, "cannot record client changes yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MOST_BACKOFF);
            }
        }
    }
}

async fn write_batch(database: &Database, batch: &[Change]) -> Result<(), StorageError> {
    let now = now_millis();
    let mut transaction = database.writer().begin().await?;
    for change in batch {
        match change {
            Change::Assigned {
                client_id,
                runtime_id,
                group,
            } => {
                sqlx::query(
                    "UPDATE clients SET runtime_id = $2, group_name = $3 \
                     WHERE id = $1 AND status = 'active'",
                )
                .bind(client_id)
                .bind(runtime_id)
                .bind(group)
                .execute(&mut *transaction)
                .await?;
            }
            Change::Deleted { client_id, reason } => {
                sqlx::query(
                    "UPDATE clients SET status = 'deleted', reason = $2, deleted_at = $3, \
                     runtime_id = NULL WHERE id = $1 AND status = 'active'",
                )
                .bind(client_id)
                .bind(reason)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
            }
            Change::Moved {
                client_id,
                deployment_id,
            } => {
                sqlx::query(
                    "UPDATE clients SET deployment_id = $2 WHERE id = $1 AND status = 'active'",
                )
                .bind(client_id)
                .bind(deployment_id)
                .execute(&mut *transaction)
                .await?;
            }
            Change::Profile { player_id, profile } => {
                sqlx::query("UPDATE players SET profile = $2, updated_at = $3 WHERE id = $1")
                    .bind(player_id)
                    .bind(profile)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await?;
            }
            Change::Flush(_) => {}
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// Deleted clients are kept a day so that a late reconnect learns why; then they go.
pub async fn purge_deleted(database: &Database) -> Result<u64, StorageError> {
    let result = sqlx::query("DELETE FROM clients WHERE status = 'deleted' AND deleted_at < $1")
        .bind(now_millis() - 24 * 3600 * 1000)
        .execute(database.writer())
        .await?;
    Ok(result.rows_affected())
}

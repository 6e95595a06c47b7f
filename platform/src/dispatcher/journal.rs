//! The dispatcher's changes to durable state, written by one task in batched transactions, so
//! that relaying messages never waits for the database.
//!
//! The queue is bounded by what it holds: at most one pending change per client and column
//! (its assignment, its deletion) and one per player (the profile). A change to
//! something that already waits replaces the waiting value and keeps its place in line, since
//! only the newest value matters once written. So the queue never holds more entries than
//! there are clients and players on this node, however long the database is away, and nothing
//! is dropped: a batch the database refuses (down, locked, restarting) is written again, with
//! backoff, until it goes in, and the newest state of everything reaches the database.
//!
//! Each change gets a sequence number; [`Journal::written`] waits until everything recorded up
//! to a number is committed (causal durability: a runtime's messages after a profile write wait
//! for it, see the runtime socket).

use crate::storage::{now_millis, Database, StorageError};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// One change the dispatcher made to a client or player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The client's runtime (none while it waits for a lobby) and group, with the deployment
    /// it belongs to: a match of a newer deployment takes a client along, and its runtime and
    /// deployment change in one write, never one without the other.
    Assigned {
        client_id: String,
        runtime_id: Option<String>,
        group: Option<String>,
        deployment_id: String,
    },
    Deleted {
        client_id: String,
        reason: String,
    },
    Profile {
        player_id: String,
        /// JSON text.
        profile: String,
    },
}

/// What a change sets: a newer change with the same key supersedes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Runtime(String),
    Deletion(String),
    Profile(String),
}

impl Change {
    fn key(&self) -> Key {
        match self {
            Change::Assigned { client_id, .. } => Key::Runtime(client_id.clone()),
            Change::Deleted { client_id, .. } => Key::Deletion(client_id.clone()),
            Change::Profile { player_id, .. } => Key::Profile(player_id.clone()),
        }
    }
}

/// Most changes written in one transaction.
const BATCH: usize = 512;

#[derive(Debug, Default)]
struct Pending {
    /// The number of the last change recorded.
    last: u64,
    /// Each waiting change with the number of the first record it stands for.
    changes: HashMap<Key, (u64, Change)>,
    /// The waiting changes in line, by that number.
    line: BTreeMap<u64, Key>,
}

/// The queue between the dispatcher and the task that writes its changes.
#[derive(Debug)]
pub struct Journal {
    pending: Mutex<Pending>,
    /// Wakes the writer.
    recorded: Notify,
    /// Every change numbered up to this is in the database.
    written: watch::Sender<u64>,
    /// Set when its dispatcher is gone: the writer ends once nothing waits.
    closed: CancellationToken,
}

impl Journal {
    /// A journal with its writer task, which writes to `database` for node `node_id`: the
    /// changes to a client apply only while its record is this node's (a client another node
    /// took on, after a move or a database pause, is that node's to change).
    pub fn start(database: Database, node_id: String) -> Arc<Self> {
        let journal = Arc::new(Self::new());
        tokio::spawn(write_changes(database, node_id, journal.clone()));
        journal
    }

    fn new() -> Self {
        Self {
            pending: Mutex::default(),
            recorded: Notify::new(),
            written: watch::Sender::new(0),
            closed: CancellationToken::new(),
        }
    }

    /// No more changes come: the writer ends once those waiting are written.
    pub fn close(&self) {
        self.closed.cancel();
    }

    fn pending(&self) -> parking_lot::MutexGuard<'_, Pending> {
        self.pending.lock()
    }

    /// Queues a change; returns its number.
    pub fn record(&self, change: Change) -> u64 {
        let mut pending = self.pending();
        pending.last += 1;
        let number = pending.last;
        let key = change.key();
        match pending.changes.get_mut(&key) {
            // Newer state for something already waiting: it keeps its place.
            Some((_, waiting)) => *waiting = change,
            None => {
                pending.changes.insert(key.clone(), (number, change));
                pending.line.insert(number, key);
            }
        }
        drop(pending);
        self.recorded.notify_one();
        number
    }

    /// The number of the last change recorded.
    pub fn last_recorded(&self) -> u64 {
        self.pending().last
    }

    /// Changes waiting to be written.
    pub fn backlog(&self) -> usize {
        self.pending().changes.len()
    }

    /// Waits until every change numbered up to `number` is in the database.
    pub async fn written(&self, number: u64) {
        let mut written = self.written.subscribe();
        let _ = written.wait_for(|written| *written >= number).await;
    }

    /// The first changes in line, at most [`BATCH`].
    fn take(&self) -> Vec<Change> {
        let mut pending = self.pending();
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some((_, key)) = pending.line.pop_first() else {
                break;
            };
            let (_, change) = pending.changes.remove(&key).expect("in line, so waiting");
            batch.push(change);
        }
        batch
    }

    /// A batch is in: everything numbered before the first change still waiting is written.
    fn committed(&self) {
        let pending = self.pending();
        let written = match pending.line.first_key_value() {
            Some((first_waiting, _)) => first_waiting - 1,
            None => pending.last,
        };
        drop(pending);
        self.written.send_if_modified(|current| {
            let advanced = written > *current;
            if advanced {
                *current = written;
            }
            advanced
        });
    }
}

/// Writes changes as they come, until the journal is closed and nothing waits.
async fn write_changes(database: Database, node_id: String, journal: Arc<Journal>) {
    loop {
        let batch = journal.take();
        if batch.is_empty() {
            if journal.closed.is_cancelled() {
                return;
            }
            // (A record made since `take` left a wake-up behind.)
            tokio::select! {
                () = journal.recorded.notified() => {}
                () = journal.closed.cancelled() => {}
            }
            continue;
        }
        write_until_done(&database, &node_id, &batch).await;
        journal.committed();
    }
}

/// First wait after a failed batch; it doubles up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MOST_BACKOFF: Duration = Duration::from_secs(2);

/// Writes `batch`, again and again with backoff until the database takes it.
async fn write_until_done(database: &Database, node_id: &str, batch: &[Change]) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        match write_batch(database, node_id, batch).await {
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

async fn write_batch(
    database: &Database,
    node_id: &str,
    batch: &[Change],
) -> Result<(), StorageError> {
    let now = now_millis();
    let mut transaction = database.writer().begin().await?;
    for change in batch {
        match change {
            Change::Assigned {
                client_id,
                runtime_id,
                group,
                deployment_id,
            } => {
                sqlx::query(
                    "UPDATE clients SET runtime_id = $2, group_name = $3, deployment_id = $4 \
                     WHERE id = $1 AND status = 'active' AND node_id = $5",
                )
                .bind(client_id)
                .bind(runtime_id)
                .bind(group)
                .bind(deployment_id)
                .bind(node_id)
                .execute(&mut *transaction)
                .await?;
            }
            Change::Deleted { client_id, reason } => {
                sqlx::query(
                    "UPDATE clients SET status = 'deleted', reason = $2, deleted_at = $3, \
                     runtime_id = NULL WHERE id = $1 AND status = 'active' AND node_id = $4",
                )
                .bind(client_id)
                .bind(reason)
                .bind(now)
                .bind(node_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(client_id: &str, runtime_id: &str) -> Change {
        Change::Assigned {
            client_id: client_id.to_owned(),
            runtime_id: Some(runtime_id.to_owned()),
            group: None,
            deployment_id: "d1".to_owned(),
        }
    }

    fn profile(player_id: &str, profile: &str) -> Change {
        Change::Profile {
            player_id: player_id.to_owned(),
            profile: profile.to_owned(),
        }
    }

    #[test]
    fn a_newer_change_replaces_the_waiting_one_and_keeps_its_place() {
        let journal = Journal::new();
        journal.record(assigned("c1", "lobby"));
        journal.record(profile("p1", "{\"wins\":1}"));
        for wins in 2..=1000 {
            journal.record(profile("p1", &format!("{{\"wins\":{wins}}}")));
        }
        journal.record(assigned("c1", "match"));
        // However long the database is away: one entry per client column and per player.
        assert_eq!(journal.backlog(), 2);
        assert_eq!(
            journal.take(),
            [assigned("c1", "match"), profile("p1", "{\"wins\":1000}")]
        );
        assert_eq!(journal.backlog(), 0);
    }

    #[tokio::test]
    async fn written_waits_for_every_change_up_to_its_number() {
        let journal = Journal::new();
        let first = journal.record(assigned("c1", "lobby"));
        let taken = journal.take();
        assert_eq!(taken.len(), 1);
        // Recorded while the first batch is being written: not covered by its commit.
        let second = journal.record(profile("p1", "{}"));
        journal.committed();
        tokio::time::timeout(Duration::from_secs(1), journal.written(first))
            .await
            .expect("the first change is written");
        let waiting = tokio::time::timeout(Duration::from_millis(50), journal.written(second));
        assert!(
            waiting.await.is_err(),
            "the second change is not written yet"
        );
        assert_eq!(journal.take().len(), 1);
        journal.committed();
        tokio::time::timeout(Duration::from_secs(1), journal.written(second))
            .await
            .expect("the second change is written");
    }
}

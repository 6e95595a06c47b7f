//! Clients that come from the database rather than from a creation on this node: after a
//! restart, the clients this node held; with several nodes, a client created on another node
//! for this one, or left by a node that stopped answering (`docs/nodes.md`). They come back as
//! disconnected, with the runtime they were on when it still runs here, so that they reconnect
//! within the grace period; the others go to a lobby when they do.

use super::runtimes::{RuntimeDescription, RuntimeSlot};
use super::{Dispatcher, NewClient};
use crate::storage::{Database, StorageError};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

/// The columns [`Dispatcher::take_on`] reads, for `WHERE` clauses on `c` (clients).
const CLIENTS: &str = "SELECT c.id, c.user_id, c.player_id, c.deployment_id, c.runtime_id, \
     c.group_name, p.profile, r.status, r.node_id, c.moved_at FROM clients c \
     JOIN players p ON p.id = c.player_id LEFT JOIN runtimes r ON r.id = c.runtime_id";

impl Dispatcher {
    /// After a restart: the clients this node held.
    pub async fn restore(&self, database: &Database, node_id: &str) -> Result<usize, StorageError> {
        let rows = sqlx::query(&format!(
            "{CLIENTS} WHERE c.node_id = $1 AND c.status = 'active'"
        ))
        .bind(node_id)
        .fetch_all(database.reader())
        .await?;
        self.take_on(database, node_id, rows, true).await
    }

    /// A live client recorded elsewhere, taken on by this node (which serves its stage): it is
    /// recorded as this node's. False when it is not live any more. A client this dispatcher
    /// has already is left as it is.
    pub async fn adopt(
        &self,
        database: &Database,
        node_id: &str,
        client_id: &str,
    ) -> Result<bool, StorageError> {
        if self.state().clients.contains_key(client_id) {
            return Ok(true);
        }
        // Taken from another node: greeted as resumed.
        sqlx::query(
            "UPDATE clients SET node_id = $1, \
               moved_at = CASE WHEN node_id = $1 THEN moved_at ELSE $3 END \
             WHERE id = $2 AND status = 'active'",
        )
        .bind(node_id)
        .bind(client_id)
        .bind(crate::storage::now_millis())
        .execute(database.writer())
        .await?;
        let rows = sqlx::query(&format!(
            "{CLIENTS} WHERE c.id = $1 AND c.node_id = $2 AND c.status = 'active'"
        ))
        .bind(client_id)
        .bind(node_id)
        .fetch_all(database.reader())
        .await?;
        self.take_on(database, node_id, rows, false).await?;
        // (Present either way when a supervision pass took it on meanwhile.)
        Ok(self.state().clients.contains_key(client_id))
    }

    /// Clients recorded for this node since `since` (milliseconds) that it does not have yet:
    /// created by another node for a stage this one serves. Returns how many were taken on.
    pub async fn adopt_recent(
        &self,
        database: &Database,
        node_id: &str,
        since: i64,
    ) -> Result<usize, StorageError> {
        let rows = sqlx::query(&format!(
            "{CLIENTS} WHERE c.node_id = $1 AND c.status = 'active' AND c.created_at >= $2"
        ))
        .bind(node_id)
        .bind(since)
        .fetch_all(database.reader())
        .await?;
        self.take_on(database, node_id, rows, false).await
    }

    /// Adds the clients of `rows` ([`CLIENTS`]) that this dispatcher does not have. Their
    /// greeting says `resumed` when they were held before: by this node's previous run
    /// (`held`), or by another node (on a runtime, or moved here from there).
    async fn take_on(
        &self,
        database: &Database,
        node_id: &str,
        rows: Vec<AnyRow>,
        held: bool,
    ) -> Result<usize, StorageError> {
        let mut descriptions: HashMap<String, Option<Arc<RuntimeDescription>>> = HashMap::new();
        let mut count = 0;
        for row in rows {
            let client_id: String = row.get(0);
            if self.state().clients.contains_key(client_id.as_str()) {
                continue;
            }
            let runtime_status: Option<String> = row.get(7);
            let runtime_node: Option<String> = row.get(8);
            let mut runtime_id: Option<String> = row.get(4);
            let resumed = held || runtime_id.is_some() || row.get::<Option<i64>, _>(9).is_some();
            let live = matches!(
                runtime_status.as_deref(),
                Some("starting" | "running" | "stopping")
            ) && runtime_node.as_deref() == Some(node_id);
            if let Some(id) = runtime_id.clone().filter(|_| live) {
                if !descriptions.contains_key(&id) {
                    let description = RuntimeDescription::load(database, &id).await?;
                    descriptions.insert(id.clone(), description.map(Arc::new));
                }
                if let Some(Some(description)) = descriptions.get(&id) {
                    self.state()
                        .runtimes
                        .entry(Arc::from(id.as_str()))
                        .or_insert_with(|| RuntimeSlot::new(description.clone()));
                } else {
                    runtime_id = None;
                }
            } else {
                runtime_id = None;
            }
            let added = self.add_client_if_new(NewClient {
                client_id,
                user_id: row.get(1),
                player_id: row.get(2),
                deployment_id: row.get(3),
                group: if runtime_id.is_some() {
                    row.get(5)
                } else {
                    None
                },
                runtime_id,
                profile: serde_json::from_str(&row.get::<String, _>(6)).unwrap_or_default(),
                restored: resumed,
            });
            count += usize::from(added);
        }
        Ok(count)
    }
}

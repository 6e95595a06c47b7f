//! After a restart: the clients this node held come back as disconnected, with the runtimes
//! they were on, so that they can reconnect within the grace period.

use super::runtimes::{RuntimeDescription, RuntimeSlot};
use super::{Dispatcher, NewClient};
use crate::storage::{Database, StorageError};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;

impl Dispatcher {
    /// After a restart: the clients this node held, as disconnected, so that they can
    /// reconnect within the grace period; those assigned to a runtime that has ended go back to
    /// a lobby when they do.
    pub async fn restore(&self, database: &Database, node_id: &str) -> Result<usize, StorageError> {
        let rows = sqlx::query(
            "SELECT c.id, c.user_id, c.player_id, c.deployment_id, c.runtime_id, c.group_name, \
             p.profile, r.status FROM clients c JOIN players p ON p.id = c.player_id \
             LEFT JOIN runtimes r ON r.id = c.runtime_id \
             WHERE c.node_id = $1 AND c.status = 'active'",
        )
        .bind(node_id)
        .fetch_all(database.reader())
        .await?;
        let mut descriptions: HashMap<String, Option<Arc<RuntimeDescription>>> = HashMap::new();
        let count = rows.len();
        for row in rows {
            let runtime_status: Option<String> = row.get(7);
            let mut runtime_id: Option<String> = row.get(4);
            let live = matches!(
                runtime_status.as_deref(),
                Some("starting" | "running" | "stopping")
            );
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
            self.add_client(NewClient {
                client_id: row.get(0),
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
                restored: true,
            });
        }
        Ok(count)
    }
}

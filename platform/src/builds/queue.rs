//! Queueing builds, below the routes that start them: an upload queues one itself.

use crate::state::AppState;
use crate::storage::{new_id, now_millis, StorageError};

/// Queues a build of version `version_id` unless one is under way; the build's id either way.
pub async fn queue(
    state: &AppState,
    project_id: &str,
    version_id: &str,
    created_by: &str,
) -> Result<String, StorageError> {
    let live: Option<String> = sqlx::query_scalar(
        "SELECT id FROM builds WHERE version_id = $1 AND status IN ('queued', 'building', 'pushing') \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(version_id)
    .fetch_optional(state.database.reader())
    .await?;
    let id = match live {
        Some(id) => id,
        None => {
            let id = new_id();
            sqlx::query(
                "INSERT INTO builds (id, project_id, version_id, status, created_by, created_at) \
                 VALUES ($1, $2, $3, 'queued', $4, $5)",
            )
            .bind(&id)
            .bind(project_id)
            .bind(version_id)
            .bind(created_by)
            .bind(now_millis())
            .execute(state.database.writer())
            .await?;
            state.builds.notify_one();
            id
        }
    };
    Ok(id)
}

/// Whether uploads to this project are built at once: the platform has a registry and a
/// stage of the project runs on a Docker pool.
pub async fn builds_on_upload(state: &AppState, project_id: &str) -> Result<bool, StorageError> {
    if state.config.registry_address.is_none() {
        return Ok(false);
    }
    let docker: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT 1 FROM stages WHERE project_id = $1 AND pool <> '{}' LIMIT 1",
        crate::pools::registry::LOCAL_POOL
    ))
    .bind(project_id)
    .fetch_optional(state.database.reader())
    .await?;
    Ok(docker.is_some())
}

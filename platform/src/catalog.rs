//! Tenants, projects and stages as records: found by id or alias, read from rows. Below both
//! the permission checks (which find what a path names) and the routes that manage them.

use crate::storage::{Database, StorageError};
use rally_sdk::wire::{Project, Stage, Tenant};
use sqlx::any::AnyRow;
use sqlx::Row;

/// True when `segment` is an id rather than an alias.
pub fn is_id(segment: &str) -> bool {
    uuid::Uuid::parse_str(segment).is_ok()
}

pub fn tenant(row: &AnyRow) -> Tenant {
    Tenant {
        id: row.get("id"),
        alias: row.get("alias"),
        name: row.get("name"),
        created_at: row.get("created_at"),
    }
}

/// The tenant named by `segment`, an id or an alias.
pub async fn find_tenant(
    database: &Database,
    segment: &str,
) -> Result<Option<Tenant>, StorageError> {
    let column = if is_id(segment) { "id" } else { "alias" };
    let row = sqlx::query(&format!(
        "SELECT id, alias, name, created_at FROM tenants WHERE {column} = $1"
    ))
    .bind(segment)
    .fetch_optional(database.reader())
    .await?;
    Ok(row.as_ref().map(tenant))
}

pub fn project(row: &AnyRow) -> Project {
    Project {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        alias: row.get("alias"),
        name: row.get("name"),
        created_at: row.get("created_at"),
    }
}

pub const PROJECT_COLUMNS: &str = "id, tenant_id, alias, name, created_at";

/// The project of `tenant_id` named by `segment`, an id or an alias.
pub async fn find_project(
    database: &Database,
    tenant_id: &str,
    segment: &str,
) -> Result<Option<Project>, StorageError> {
    let column = if is_id(segment) { "id" } else { "alias" };
    let row = sqlx::query(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE tenant_id = $1 AND {column} = $2"
    ))
    .bind(tenant_id)
    .bind(segment)
    .fetch_optional(database.reader())
    .await?;
    Ok(row.as_ref().map(project))
}

/// Stage columns plus the id of its active deployment.
pub const STAGE_SELECT: &str = "SELECT s.id, s.project_id, s.alias, s.name, s.pool, s.created_at, \
     (SELECT d.id FROM deployments d WHERE d.stage_id = s.id AND d.status = 'active') AS current_deployment_id \
     FROM stages s";

pub fn stage(row: &AnyRow) -> Stage {
    Stage {
        id: row.get("id"),
        project_id: row.get("project_id"),
        alias: row.get("alias"),
        name: row.get("name"),
        current_deployment_id: row.get("current_deployment_id"),
        pool: row.get("pool"),
        created_at: row.get("created_at"),
    }
}

/// The stage of `project_id` named by `segment`, an id or an alias.
pub async fn find_stage(
    database: &Database,
    project_id: &str,
    segment: &str,
) -> Result<Option<Stage>, StorageError> {
    let column = if is_id(segment) { "id" } else { "alias" };
    let row = sqlx::query(&format!(
        "{STAGE_SELECT} WHERE s.project_id = $1 AND s.{column} = $2"
    ))
    .bind(project_id)
    .bind(segment)
    .fetch_optional(database.reader())
    .await?;
    Ok(row.as_ref().map(stage))
}

/// The project's repository in the studio's registry: `<tenant>/<project>`, each its alias,
/// or its id when it has none.
pub fn repository(tenant: &Tenant, project: &Project) -> String {
    format!(
        "{}/{}",
        tenant.alias.as_deref().unwrap_or(&tenant.id),
        project.alias.as_deref().unwrap_or(&project.id)
    )
}

/// A slug: 1–63 of `a-z 0-9 -`, starting with a letter, not ending with `-` (aliases, and the
/// names of pools and servers).
pub fn is_slug(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

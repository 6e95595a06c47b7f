//! The audit log: one row for every management change (who, what, when), written in the same
//! transaction as the change, and read-only through the API.

use crate::error::{ApiError, Json, Query};
use crate::permissions::{
    require, Level, Principal, ProjectPath, ProjectScope, Scope, TenantPath, TenantScope,
};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, StorageError};
use axum::extract::State;
use rally_sdk::wire::{AuditEntry, AuditList, ErrorBody};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_all))
        .routes(routes!(list_tenant))
        .routes(routes!(list_project))
}

/// What changed, for [`record`].
#[derive(Debug)]
pub struct Change<'a> {
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    pub tenant_id: Option<&'a str>,
    pub project_id: Option<&'a str>,
    pub details: serde_json::Value,
}

/// Writes one audit row; pass the transaction that makes the change.
pub async fn record<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    actor: &Principal,
    change: Change<'_>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO audit_log \
         (id, at, actor_id, actor_role, action, target_kind, target_id, tenant_id, project_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(new_id())
    .bind(now_millis())
    .bind(&actor.account_id)
    .bind(actor.role.as_str())
    .bind(change.action)
    .bind(change.target_kind)
    .bind(change.target_id)
    .bind(change.tenant_id)
    .bind(change.project_id)
    .bind(change.details.to_string())
    .execute(executor)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// At most this many entries (1–500, default 100), newest first.
    limit: Option<i64>,
    /// Only entries older than this entry id (for paging).
    before: Option<String>,
}

/// An entry, with the actor's username and the target's alias (or name) while they exist.
const COLUMNS: &str = "id, at, actor_id, actor_role, action, target_kind, target_id, tenant_id, \
     project_id, details, \
     (SELECT username FROM accounts WHERE accounts.id = audit_log.actor_id) AS actor_username, \
     CASE target_kind \
       WHEN 'tenant' THEN (SELECT COALESCE(alias, name) FROM tenants WHERE tenants.id = target_id) \
       WHEN 'project' THEN (SELECT COALESCE(alias, name) FROM projects WHERE projects.id = target_id) \
       WHEN 'stage' THEN (SELECT COALESCE(alias, name) FROM stages WHERE stages.id = target_id) \
       WHEN 'version' THEN (SELECT 'v' || CAST(number AS TEXT) FROM versions WHERE versions.id = target_id) \
       WHEN 'account' THEN (SELECT username FROM accounts WHERE accounts.id = target_id) \
     END AS target_name";

fn entry(row: &AnyRow) -> Result<AuditEntry, ApiError> {
    let role: String = row.get("actor_role");
    let details: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>("details")).unwrap_or(serde_json::Value::Null);
    // A target that is gone keeps the alias or name its entry recorded, if any.
    let target_name = row.get::<Option<String>, _>("target_name").or_else(|| {
        ["alias", "username", "name"]
            .iter()
            .find_map(|key| details.get(key).and_then(|value| value.as_str()))
            .map(str::to_owned)
    });
    Ok(AuditEntry {
        id: row.get("id"),
        at: row.get("at"),
        actor_id: row.get("actor_id"),
        actor_username: row.get("actor_username"),
        actor_role: role.parse().map_err(ApiError::internal)?,
        action: row.get("action"),
        target_kind: row.get("target_kind"),
        target_id: row.get("target_id"),
        target_name,
        tenant_id: row.get("tenant_id"),
        project_id: row.get("project_id"),
        details,
    })
}

/// Entries matching `column = value` (or all when `filter` is None), newest first.
/// The most entries one page holds.
pub const MAX_LIMIT: i64 = 500;

async fn query(
    state: &AppState,
    filter: Option<(&str, &str)>,
    page: Page,
) -> Result<Json<AuditList>, ApiError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be 1 to 500",
        ));
    }
    // Ids are UUIDv7, so they sort by time; `before` pages backwards through them.
    let before = page.before.unwrap_or_else(|| "~".to_owned());
    let rows = match filter {
        Some((column, value)) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE {column} = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            ))
            .bind(value)
            .bind(&before)
            .bind(limit)
            .fetch_all(state.database.reader())
            .await
        }
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2"
            ))
            .bind(&before)
            .bind(limit)
            .fetch_all(state.database.reader())
            .await
        }
    }?;
    let entries = rows.iter().map(entry).collect::<Result<_, _>>()?;
    Ok(Json(AuditList { entries }))
}

/// Every management change on the platform (admin, support).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(Page),
    security(("bearer" = [])),
    responses((status = 200, body = AuditList), (status = "4XX", body = ErrorBody)))]
async fn list_all(
    principal: Principal,
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<AuditList>, ApiError> {
    principal.require_staff()?;
    query(&state, None, page).await
}

/// Changes in one tenant (viewers of the tenant).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/audit", tag = "audit",
    params(TenantPath, Page),
    security(("bearer" = [])),
    responses((status = 200, body = AuditList), (status = "4XX", body = ErrorBody)))]
async fn list_tenant(
    scope: TenantScope,
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<AuditList>, ApiError> {
    require(scope.access.tenant_level(), Level::Viewer)?;
    query(&state, Some(("tenant_id", &scope.tenant.id)), page).await
}

/// Changes in one project (viewers of the project).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/audit", tag = "audit",
    params(ProjectPath, Page),
    security(("bearer" = [])),
    responses((status = 200, body = AuditList), (status = "4XX", body = ErrorBody)))]
async fn list_project(
    scope: ProjectScope,
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<AuditList>, ApiError> {
    require(scope.level(), Level::Viewer)?;
    query(&state, Some(("project_id", &scope.project.id)), page).await
}

//! Deployments as records, below the routes: a deployment as the runtime plane uses it (its
//! version's [`Manifest`] and its effective [`DeploymentConfig`], typed, read in one place: a
//! stored manifest or config that does not parse is an error that names the deployment, never a
//! set of defaults), what counts live deployments, and closing drained ones.

use crate::storage::{now_millis, Database, StorageError};
use rally_sdk::manifest::{DeploymentConfig, Manifest};
use rally_sdk::player::ClientConfig;
use rally_sdk::runtime::Qualifier;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A deployment with its version's manifest and its effective config.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub id: String,
    pub stage_id: String,
    /// `active`, `draining` or `closed`.
    pub status: String,
    /// The version's number within its project.
    pub version: i64,
    pub bundle_sha256: String,
    pub manifest: Manifest,
    pub config: DeploymentConfig,
    /// Where its new runtimes start: its stage's pool.
    pub pool: String,
    pub tenant_id: String,
    pub project_id: String,
    pub version_id: String,
    /// The version's runtime image in the studio's registry (`<registry>/<repo>@<digest>`),
    /// once one is linked: Docker pools pull and run it.
    pub image: Option<String>,
}

impl Deployed {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// What `runtime_assigned` tells a client about the logic it talks to.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            user_data: self.manifest.user_data.clone(),
            tick_rate: self.manifest.runtime.tick_rate,
        }
    }
}

/// A runtime's record with its deployment.
#[derive(Debug, Clone)]
pub struct RuntimeOf {
    pub status: String,
    pub connected_at: Option<i64>,
    pub qualifier: Qualifier,
    pub mode: Option<String>,
    pub deployment: Deployed,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the stored {what} of deployment {deployment_id} does not parse: {problem}")]
    Unreadable {
        deployment_id: String,
        what: &'static str,
        problem: String,
    },
}

impl From<sqlx::Error> for LoadError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

const SELECT: &str = "SELECT d.id, d.stage_id, d.status, v.number, v.bundle_sha256, \
     v.manifest, d.config, s.pool, p.tenant_id, s.project_id, d.version_id, v.image_reference \
     FROM deployments d JOIN versions v ON v.id = d.version_id \
     JOIN stages s ON s.id = d.stage_id JOIN projects p ON p.id = s.project_id";

/// The deployments whose runtimes run or may run: active and draining ones. Each one that
/// cannot be read is an error of its own, so that one bad record stops nothing else.
pub async fn running(
    database: &Database,
) -> Result<Vec<Result<Deployed, LoadError>>, StorageError> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE d.status IN ('active', 'draining') ORDER BY d.created_at, d.id"
    ))
    .fetch_all(database.reader())
    .await?;
    Ok(rows.iter().map(deployed).collect())
}

/// Runtime `runtime_id` with its deployment; `None` when there is no such runtime.
pub async fn of_runtime(
    database: &Database,
    runtime_id: &str,
) -> Result<Option<RuntimeOf>, LoadError> {
    let row = sqlx::query(
        "SELECT d.id, d.stage_id, d.status, v.number, v.bundle_sha256, v.manifest, d.config, \
         s.pool, p.tenant_id, s.project_id, d.version_id, v.image_reference, \
         r.status AS runtime_status, r.connected_at, r.qualifier, r.mode \
         FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
         JOIN versions v ON v.id = d.version_id \
         JOIN stages s ON s.id = d.stage_id JOIN projects p ON p.id = s.project_id \
         WHERE r.id = $1",
    )
    .bind(runtime_id)
    .fetch_optional(database.reader())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(RuntimeOf {
        status: row.get("runtime_status"),
        connected_at: row.get("connected_at"),
        qualifier: qualifier(&row.get::<String, _>("qualifier")),
        mode: row.get("mode"),
        deployment: deployed(&row)?,
    }))
}

/// A runtime row's qualifier (the schema allows only `lobby` and `match`).
pub fn qualifier(stored: &str) -> Qualifier {
    Qualifier::parse(stored).unwrap_or(Qualifier::Lobby)
}

/// A deployment's stored config.
pub fn stored_config(deployment_id: &str, stored: &str) -> Result<DeploymentConfig, LoadError> {
    parse_stored(deployment_id, "config", stored)
}

/// A JSON record of deployment `deployment_id`; `what` names it in the error.
fn parse_stored<T: serde::de::DeserializeOwned>(
    deployment_id: &str,
    what: &'static str,
    stored: &str,
) -> Result<T, LoadError> {
    serde_json::from_str(stored).map_err(|problem| LoadError::Unreadable {
        deployment_id: deployment_id.to_owned(),
        what,
        problem: problem.to_string(),
    })
}

fn deployed(row: &AnyRow) -> Result<Deployed, LoadError> {
    let id: String = row.get(0);
    let manifest: Manifest = parse_stored(&id, "manifest", &row.get::<String, _>(5))?;
    let config = stored_config(&id, &row.get::<String, _>(6))?;
    Ok(Deployed {
        stage_id: row.get(1),
        status: row.get(2),
        version: row.get(3),
        bundle_sha256: row.get(4),
        manifest,
        config,
        pool: row.get(7),
        tenant_id: row.get(8),
        project_id: row.get(9),
        version_id: row.get(10),
        image: row.get(11),
        id,
    })
}

/// What [`count_live`] counts in.
#[derive(Debug, Clone, Copy)]
pub enum Within<'a> {
    Tenant(&'a str),
    Project(&'a str),
    Stage(&'a str),
    Version(&'a str),
}

/// Active and draining deployments in a tenant, project or stage, or of a version: what keeps
/// them from being deleted.
pub async fn count_live<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    within: Within<'_>,
) -> Result<i64, sqlx::Error> {
    let (column, id) = match within {
        Within::Tenant(id) => ("p.tenant_id", id),
        Within::Project(id) => ("s.project_id", id),
        Within::Stage(id) => ("d.stage_id", id),
        Within::Version(id) => ("d.version_id", id),
    };
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM deployments d JOIN stages s ON s.id = d.stage_id \
         JOIN projects p ON p.id = s.project_id \
         WHERE {column} = $1 AND d.status IN ('active', 'draining')"
    ))
    .bind(id)
    .fetch_one(executor)
    .await
}

/// Closes draining deployments whose runtimes have all ended.
pub async fn close_drained(database: &Database) -> Result<u64, StorageError> {
    let result = sqlx::query(
        "UPDATE deployments SET status = 'closed', closed_at = $1 WHERE status = 'draining' \
         AND NOT EXISTS (SELECT 1 FROM runtimes r WHERE r.deployment_id = deployments.id \
         AND r.status IN ('starting', 'running', 'stopping'))",
    )
    .bind(now_millis())
    .execute(database.writer())
    .await?;
    Ok(result.rows_affected())
}

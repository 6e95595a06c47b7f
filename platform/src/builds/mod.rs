//! The builder: a version's runtime image made from its bundle and pushed to the studio's
//! registry, as a job (`docs/registry.md`). A build is queued (by `POST .../builds`, or on
//! upload when a stage of the project runs on a Docker pool), claimed by a node, and goes
//! `building` → `pushing` → `done`, or `failed` with the reason; its log is kept with it. At
//! most `builds_at_once` run on a node. A build interrupted by a restart is queued again when
//! its node starts (and fails after [`MAX_ATTEMPTS`]), so none stays `building`.
//!
//! Images are assembled here, not by a Docker daemon ([`crate::images`]): the same bundle and
//! runtime program always give the same digest. The push carries a token the platform signs
//! for itself, and the registry's notification of it links the image to the version like any
//! push; the builder also links it at once, so that a registry without notifications still
//! works.

pub mod queue;
mod worker;

use crate::error::{ApiError, Json, Path};
use crate::permissions::{Managing, ProjectPath, ProjectScope};
use crate::state::AppState;
use crate::storage::{Database, StorageError};
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{Build, BuildList, BuildStatus, ErrorBody};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use worker::{requeue_interrupted, run};

/// A build interrupted this many times fails rather than starting again.
pub const MAX_ATTEMPTS: i64 = 3;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_build, list_builds))
        .routes(routes!(get_build))
}

const SELECT: &str = "SELECT b.id, b.project_id, b.version_id, v.number, b.status, b.error, \
     b.reference, b.digest, b.log, b.created_by, b.created_at, b.started_at, b.finished_at \
     FROM builds b JOIN versions v ON v.id = b.version_id";

fn build(row: &AnyRow) -> Build {
    Build {
        id: row.get("id"),
        project_id: row.get("project_id"),
        version_id: row.get("version_id"),
        version: row.get("number"),
        status: BuildStatus::parse(&row.get::<String, _>("status")).unwrap_or(BuildStatus::Failed),
        error: row.get("error"),
        reference: row.get("reference"),
        digest: row.get("digest"),
        log: row.get("log"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    }
}

pub async fn find(database: &Database, build_id: &str) -> Result<Option<Build>, StorageError> {
    let row = sqlx::query(&format!("{SELECT} WHERE b.id = $1"))
        .bind(build_id)
        .fetch_optional(database.reader())
        .await?;
    Ok(row.as_ref().map(build))
}

#[derive(Debug, Deserialize)]
struct VersionPath {
    version: String,
}

#[derive(Debug, Deserialize)]
struct BuildPath {
    build: String,
}

/// Build the version's runtime image and push it to the studio's registry (project managers).
/// Answers the build under way if there is one.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/versions/{version}/builds", tag = "builds",
    params(ProjectPath, ("version" = String, Path, description = "version id or number")),
    security(("bearer" = [])),
    responses((status = 202, body = Build), (status = "4XX", body = ErrorBody)))]
async fn start_build(
    Managing(scope): Managing<ProjectScope>,
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    if state.config.registry_address.is_none() {
        return Err(ApiError::conflict(
            "registry_not_configured",
            "this platform has no registry to push images to (its operator sets registry_address)",
        ));
    }
    let version = crate::versions::find(&state.database, &scope.project.id, &path.version)
        .await?
        .ok_or(ApiError::NotFound { what: "version" })?;
    if version.manifest["runtime"]["image"] == "push" {
        return Err(ApiError::conflict(
            "version_image_pushed",
            format!(
                "version {} takes its image from a push (runtime.image = \"push\"): push it tagged v{}",
                version.number, version.number
            ),
        ));
    }
    if let Some(image) = &version.image {
        if image.source == "push" {
            return Err(ApiError::conflict(
                "version_has_image",
                format!(
                    "version {} runs the image {} pushed by {}; a version's image is set once",
                    version.number,
                    image.reference,
                    image.pushed_by.as_deref().unwrap_or("a developer")
                ),
            ));
        }
    }
    let id = queue::queue(
        &state,
        &scope.project.id,
        &version.id,
        &scope.access.principal.account_id,
    )
    .await?;
    let build = find(&state.database, &id)
        .await?
        .ok_or(ApiError::NotFound { what: "build" })?;
    Ok((StatusCode::ACCEPTED, Json(build)))
}

/// The version's builds, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/versions/{version}/builds", tag = "builds",
    params(ProjectPath, ("version" = String, Path, description = "version id or number")),
    security(("bearer" = [])),
    responses((status = 200, body = BuildList), (status = "4XX", body = ErrorBody)))]
async fn list_builds(
    scope: ProjectScope,
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<Json<BuildList>, ApiError> {
    let version = crate::versions::find(&state.database, &scope.project.id, &path.version)
        .await?
        .ok_or(ApiError::NotFound { what: "version" })?;
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE b.version_id = $1 ORDER BY b.created_at DESC, b.id DESC LIMIT 50"
    ))
    .bind(&version.id)
    .fetch_all(state.database.reader())
    .await?;
    Ok(Json(BuildList {
        builds: rows.iter().map(build).collect(),
    }))
}

/// One build, with its log.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/builds/{build}", tag = "builds",
    params(ProjectPath, ("build" = String, Path, description = "build id")),
    security(("bearer" = [])),
    responses((status = 200, body = Build), (status = "4XX", body = ErrorBody)))]
async fn get_build(
    scope: ProjectScope,
    State(state): State<AppState>,
    Path(path): Path<BuildPath>,
) -> Result<Json<Build>, ApiError> {
    match find(&state.database, &path.build).await? {
        Some(build) if build.project_id == scope.project.id => Ok(Json(build)),
        _ => Err(ApiError::NotFound { what: "build" }),
    }
}

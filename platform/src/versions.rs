//! Versions: immutable uploads of a project's server logic. The archive (tar.gz of a bundle
//! directory with `rally.toml` at its root) is checked completely before anything is stored,
//! then kept content-addressed (sha256) in the database so that every node reads the same bytes.

use crate::audit::{self, Change};
use crate::deployed::{count_live, Within};
use crate::error::{ApiError, Json, Path, Query};
use crate::idempotency::{IdempotencyKey, Idempotent};
use crate::permissions::{Managing, ProjectPath, ProjectScope};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, Database, StorageError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use rally_sdk::bundle::{inspect, Bundle, BundleError};
use rally_sdk::runtime::Exit;
use rally_sdk::wire::{ErrorBody, Version, VersionImage, VersionList};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_versions))
        .routes(routes!(get_version, delete_version))
        .routes(routes!(download_bundle))
}

/// The upload route, kept apart because its body limit is the bundle limit.
pub fn upload_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload_version))
}

const SELECT: &str =
    "SELECT v.id, v.project_id, v.number, v.bundle_sha256, b.size AS bundle_size, \
     v.manifest, v.note, v.created_by, v.created_at, v.image_reference, v.image_digest, \
     v.image_source, v.image_pushed_by, v.image_linked_at \
     FROM versions v JOIN bundles b ON b.sha256 = v.bundle_sha256";

fn version(row: &AnyRow) -> Version {
    let manifest: String = row.get("manifest");
    Version {
        id: row.get("id"),
        project_id: row.get("project_id"),
        number: row.get("number"),
        bundle_sha256: row.get("bundle_sha256"),
        bundle_size: row.get("bundle_size"),
        manifest: serde_json::from_str(&manifest).unwrap_or(serde_json::Value::Null),
        note: row.get("note"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        image: version_image(row),
    }
}

fn version_image(row: &AnyRow) -> Option<VersionImage> {
    Some(VersionImage {
        reference: row.get::<Option<String>, _>("image_reference")?,
        digest: row.get::<Option<String>, _>("image_digest")?,
        source: row
            .get::<Option<String>, _>("image_source")
            .unwrap_or_default(),
        pushed_by: row.get("image_pushed_by"),
        linked_at: row
            .get::<Option<i64>, _>("image_linked_at")
            .unwrap_or_default(),
    })
}

/// The live (not deleted) version of `project_id` named by `segment`: an id or a number.
pub async fn find(
    database: &Database,
    project_id: &str,
    segment: &str,
) -> Result<Option<Version>, StorageError> {
    let row = if let Ok(number) = segment.parse::<i64>() {
        sqlx::query(&format!(
            "{SELECT} WHERE v.project_id = $1 AND v.number = $2 AND v.deleted_at IS NULL"
        ))
        .bind(project_id)
        .bind(number)
        .fetch_optional(database.reader())
        .await?
    } else {
        sqlx::query(&format!(
            "{SELECT} WHERE v.project_id = $1 AND v.id = $2 AND v.deleted_at IS NULL"
        ))
        .bind(project_id)
        .bind(segment)
        .fetch_optional(database.reader())
        .await?
    };
    Ok(row.as_ref().map(version))
}

/// A bundle refused: the stable code, what to fix, and every manifest problem.
fn bundle_refused(error: BundleError) -> ApiError {
    if error.problems().is_empty() {
        return ApiError::bad_request(error.code(), error.to_string());
    }
    ApiError::Invalid {
        code: error.code(),
        message: error.to_string(),
        details: serde_json::json!({ "problems": error.problems() }),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadOptions {
    /// A note kept with the version (what changed), at most 500 characters.
    note: Option<String>,
}

/// The longest `rally-runtime check` may take: loading is bounded by the runtime's own limits
/// (a second per entry, then its watchdog), so this only catches a wedged process.
const LOGIC_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A version's note: at most 500 characters, line breaks but no other control or format
/// character.
pub fn check_note(note: &str) -> Result<(), ApiError> {
    let hidden = |c: char| c != '\n' && crate::permissions::is_hidden_char(c);
    if note.chars().count() <= crate::rules::NOTE_MAX_CHARS && !note.chars().any(hidden) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_note",
            format!(
                "note must be at most {} characters without control or invisible format characters",
                crate::rules::NOTE_MAX_CHARS
            ),
        ))
    }
}

/// Loads the bundle's lobby and match logic with `rally-runtime check`, the code a runtime
/// starts with, so that a version that could never start is refused at upload: a Lua syntax
/// error or a top level that fails, a WASM module that does not compile, lacks an export or
/// imports what the host does not offer, asks for more memory than the cap, or whose start
/// function does not return within its fuel.
async fn check_logic(state: &AppState, archive: &Bytes) -> Result<(), ApiError> {
    let directory = state.config.data_dir.join("uploads");
    let archive = archive.clone();
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        std::fs::create_dir_all(&directory)?;
        let mut file = tempfile::Builder::new()
            .suffix(".tar.gz")
            .tempfile_in(&directory)?;
        std::io::Write::write_all(&mut file, &archive)?;
        Ok(file.into_temp_path())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let binary = state.runtimes.runtime_binary();
    let checked = tokio::process::Command::new(binary)
        .arg("check")
        .arg(&*file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LOGIC_CHECK_TIMEOUT, checked)
        .await
        .map_err(|_| {
            ApiError::internal(anyhow::anyhow!(
                "rally-runtime check took longer than {LOGIC_CHECK_TIMEOUT:?}"
            ))
        })?
        .map_err(|error| {
            ApiError::internal(anyhow::anyhow!(
                "cannot run {} check: {error}",
                binary.display()
            ))
        })?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(i32::from(Exit::BadBundle.code())) {
        // One line for each entry that does not load.
        let problem = rally_sdk::runtime::check::problems(&said)
            .collect::<Vec<_>>()
            .join("\n")
            .chars()
            .take(4000)
            .collect::<String>();
        return Err(ApiError::bad_request("bundle_logic_invalid", problem));
    }
    Err(ApiError::internal(anyhow::anyhow!(
        "rally-runtime check failed ({}): {said}",
        output.status
    )))
}

/// Waits for one of the node's `bundle_uploads_at_once` turns to read and check an upload:
/// each holds a few times the archive in memory, so their number is what bounds that memory.
/// An upload that gets no turn within [`UPLOAD_TURN_WAIT`] is refused (503 `uploads_busy`).
#[derive(Debug)]
pub struct UploadTurn(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

const UPLOAD_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl axum::extract::FromRequestParts<AppState> for UploadTurn {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let turn = tokio::time::timeout(UPLOAD_TURN_WAIT, state.uploads.clone().acquire_owned());
        match turn.await {
            Ok(Ok(permit)) => Ok(UploadTurn(permit)),
            _ => Err(ApiError::Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "uploads_busy",
                message: "other uploads are being checked; retry in a few seconds".to_owned(),
            }),
        }
    }
}

/// Upload a version (project managers): the body is the bundle as tar.gz. The archive is
/// checked whole (manifest, modes, entry files, paths, links, sizes) before anything is stored.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/projects/{project}/versions", tag = "versions",
    request_body(content = Vec<u8>, content_type = "application/gzip", description = "tar.gz of the bundle directory"),
    params(ProjectPath, UploadOptions, IdempotencyKey),
    security(("bearer" = [])),
    responses((status = 201, body = Version), (status = "4XX", body = ErrorBody)))]
async fn upload_version(
    Managing(scope): Managing<ProjectScope>,
    State(state): State<AppState>,
    Query(options): Query<UploadOptions>,
    _turn: UploadTurn,
    Idempotent(archive): Idempotent<Bytes>,
) -> Result<(StatusCode, Json<Version>), ApiError> {
    if let Some(note) = &options.note {
        check_note(note)?;
    }
    let limits = state.config.bundle_limits();
    let checked = archive.clone();
    // Decompressing and reading the archive is CPU work: off the async threads.
    let bundle: Bundle = tokio::task::spawn_blocking(move || inspect(&checked, &limits))
        .await
        .map_err(ApiError::internal)?
        .map_err(bundle_refused)?;
    // A program runtime's logic is its program's: nothing here can load it.
    if bundle.manifest.runtime.kind != rally_sdk::manifest::RuntimeKind::Program {
        check_logic(&state, &archive).await?;
    }
    let manifest = serde_json::to_string(&bundle.manifest).map_err(ApiError::internal)?;
    let principal = &scope.access.principal;
    let id = new_id();
    let now = now_millis();

    let mut transaction = state.database.writer().begin().await?;
    sqlx::query(
        "INSERT INTO bundles (sha256, content, size, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(&bundle.sha256)
    .bind(archive.to_vec())
    .bind(archive.len() as i64)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    // Numbers count up per project; the unique index refuses a duplicate from a racing upload.
    let number: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE project_id = $1",
    )
    .bind(&scope.project.id)
    .fetch_one(&mut *transaction)
    .await?;
    sqlx::query(
        "INSERT INTO versions (id, project_id, number, bundle_sha256, manifest, note, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&scope.project.id)
    .bind(number)
    .bind(&bundle.sha256)
    .bind(&manifest)
    .bind(&options.note)
    .bind(&principal.account_id)
    .bind(now)
    .execute(&mut *transaction)
    .await
    .map_err(|error| {
        ApiError::conflict_on_duplicate(error, "version_number_conflict", || {
            "another version of this project was uploaded at the same moment; retry".to_owned()
        })
    })?;
    audit::record(
        &mut *transaction,
        principal,
        Change {
            action: "version.upload",
            target_kind: "version",
            target_id: &id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&scope.project.id),
            details: serde_json::json!({
                "number": number, "bundle_sha256": bundle.sha256,
                "bundle_size": archive.len(), "files": bundle.files.len(),
            }),
        },
    )
    .await?;
    transaction.commit().await?;
    if bundle.manifest.runtime.image == rally_sdk::manifest::ImageSource::Build
        && crate::builds::queue::builds_on_upload(&state, &scope.project.id).await?
    {
        crate::builds::queue::queue(&state, &scope.project.id, &id, &principal.account_id).await?;
    }
    let version = find(&state.database, &scope.project.id, &id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("uploaded version vanished")))?;
    Ok((StatusCode::CREATED, Json(version)))
}

/// Versions of the project, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/versions", tag = "versions",
    params(ProjectPath),
    security(("bearer" = [])),
    responses((status = 200, body = VersionList), (status = "4XX", body = ErrorBody)))]
async fn list_versions(
    scope: ProjectScope,
    State(state): State<AppState>,
) -> Result<Json<VersionList>, ApiError> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE v.project_id = $1 AND v.deleted_at IS NULL ORDER BY v.number DESC"
    ))
    .bind(&scope.project.id)
    .fetch_all(state.database.reader())
    .await?;
    Ok(Json(VersionList {
        versions: rows.iter().map(version).collect(),
    }))
}

/// The path of one version: `{version}` is its id or number.
#[derive(Debug, Deserialize)]
struct VersionPath {
    version: String,
}

async fn version_in_path(
    state: &AppState,
    scope: &ProjectScope,
    segment: &str,
) -> Result<Version, ApiError> {
    find(&state.database, &scope.project.id, segment)
        .await?
        .ok_or(ApiError::NotFound { what: "version" })
}

/// One version.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/versions/{version}", tag = "versions",
    params(ProjectPath, ("version" = String, Path, description = "version id or number")),
    security(("bearer" = [])),
    responses((status = 200, body = Version), (status = "4XX", body = ErrorBody)))]
async fn get_version(
    scope: ProjectScope,
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<Json<Version>, ApiError> {
    Ok(Json(version_in_path(&state, &scope, &path.version).await?))
}

/// The version's bundle archive, as uploaded.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/versions/{version}/bundle", tag = "versions",
    params(ProjectPath, ("version" = String, Path, description = "version id or number")),
    security(("bearer" = [])),
    responses((status = 200, description = "tar.gz", content_type = "application/gzip"), (status = "4XX", body = ErrorBody)))]
async fn download_bundle(
    scope: ProjectScope,
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<impl IntoResponse, ApiError> {
    let version = version_in_path(&state, &scope, &path.version).await?;
    let content: Vec<u8> = sqlx::query_scalar("SELECT content FROM bundles WHERE sha256 = $1")
        .bind(&version.bundle_sha256)
        .fetch_one(state.database.reader())
        .await?;
    let filename = format!("attachment; filename=\"version-{}.tar.gz\"", version.number);
    Ok((
        [
            (CONTENT_TYPE, "application/gzip".to_owned()),
            (CONTENT_DISPOSITION, filename),
        ],
        content,
    ))
}

/// Delete a version (project managers). A version that an active or draining deployment runs
/// cannot be deleted; deployment history keeps naming it.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/projects/{project}/versions/{version}", tag = "versions",
    params(ProjectPath, ("version" = String, Path, description = "version id or number")),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn delete_version(
    Managing(scope): Managing<ProjectScope>,
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<StatusCode, ApiError> {
    let version = version_in_path(&state, &scope, &path.version).await?;
    let mut transaction = state.database.writer().begin().await?;
    let live = count_live(&mut *transaction, Within::Version(&version.id)).await?;
    if live > 0 {
        return Err(ApiError::conflict(
            "version_deployed",
            format!(
                "version {} is deployed; deploy another version to its stages first",
                version.number
            ),
        ));
    }
    sqlx::query("UPDATE versions SET deleted_at = $2 WHERE id = $1")
        .bind(&version.id)
        .bind(now_millis())
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut *transaction,
        &scope.access.principal,
        Change {
            action: "version.delete",
            target_kind: "version",
            target_id: &version.id,
            tenant_id: Some(&scope.tenant.id),
            project_id: Some(&scope.project.id),
            details: serde_json::json!({"number": version.number}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

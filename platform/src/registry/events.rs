//! The registry's push notifications. The registry posts each event (with the shared secret
//! `rally registry setup` wrote into its configuration); a manifest push whose tag names a
//! version of the repository's project (`v<number>`, or the version's id) links that image to
//! the version, by digest. Every push is recorded with its outcome, which
//! `GET .../projects/{project}/image-pushes` shows. The registry retries an event until it is
//! answered 2xx, so every well-formed event is answered 200 whatever came of it.

use super::access::project_of_repository;
use crate::auth::{hash_secret, new_secret, secret_matches};
use crate::error::{ApiError, Json};
use crate::permissions::{ProjectPath, ProjectScope};
use crate::state::AppState;
use crate::storage::{now_millis, Database, StorageError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use rally_sdk::wire::{ErrorBody, ImagePush, ImagePushList};
use serde::Deserialize;
use sqlx::Row;

const SECRET_SETTING: &str = "registry_webhook_secret_sha256";

/// Events one notification may carry (distribution sends one).
const MAX_EVENTS: usize = 100;

/// A new notification secret, whose hash replaces the one kept; the secret itself is only
/// returned, for the registry's configuration.
pub async fn rotate_secret(database: &Database) -> Result<String, StorageError> {
    let secret = new_secret();
    sqlx::query(
        "INSERT INTO settings (key, value, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(SECRET_SETTING)
    .bind(hash_secret(&secret))
    .bind(now_millis())
    .execute(database.writer())
    .await?;
    Ok(secret)
}

#[derive(Debug, Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    action: String,
    target: Target,
    #[serde(default)]
    actor: Actor,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    digest: String,
    repository: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Actor {
    #[serde(default)]
    name: Option<String>,
}

/// Manifest media types a version's image may have.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// Receive the registry's notifications (the registry only: `Authorization: Bearer` with the
/// secret of `rally registry setup`).
#[utoipa::path(post, path = "/api/v1/registry/events", tag = "registry",
    request_body(content = Object, content_type = "application/vnd.docker.distribution.events.v1+json"),
    responses((status = 200), (status = "4XX", body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let stored = state.database.setting(SECRET_SETTING).await?;
    let trusted = match (presented, stored) {
        (Some(presented), Some(stored)) => secret_matches(presented.trim(), &stored),
        _ => false,
    };
    if !trusted {
        return Err(ApiError::unauthorized(
            "invalid_webhook_secret",
            "registry notifications need the secret of `rally registry setup`",
        ));
    }
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "invalid_notification",
            format!("not a registry notification envelope: {error}"),
        )
    })?;
    if envelope.events.len() > MAX_EVENTS {
        return Err(ApiError::bad_request(
            "too_many_events",
            format!("a notification may carry at most {MAX_EVENTS} events"),
        ));
    }
    for event in envelope.events {
        if event.action == "push"
            && MANIFEST_TYPES.contains(&event.target.media_type.as_str())
            && event.target.tag.is_some()
        {
            record_push(&state, event).await?;
        }
    }
    Ok(StatusCode::OK)
}

/// What came of a push.
struct Outcome {
    kind: &'static str,
    detail: String,
    project_id: Option<String>,
    version_id: Option<String>,
}

async fn record_push(state: &AppState, event: Event) -> Result<(), ApiError> {
    let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM image_pushes WHERE id = $1")
        .bind(&event.id)
        .fetch_optional(state.database.reader())
        .await?;
    if seen.is_some() {
        return Ok(());
    }
    let target = &event.target;
    let tag = target.tag.clone().unwrap_or_default();
    let actor = event.actor.name.clone();
    let outcome = link(state, target, &tag, actor.as_deref()).await?;
    tracing::info!(
        repository = %target.repository,
        %tag,
        digest = %target.digest,
        outcome = outcome.kind,
        detail = %outcome.detail,
        "image push"
    );
    sqlx::query(
        "INSERT INTO image_pushes \
         (id, received_at, repository, tag, digest, actor, project_id, version_id, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(now_millis())
    .bind(&target.repository)
    .bind(&tag)
    .bind(&target.digest)
    .bind(&actor)
    .bind(&outcome.project_id)
    .bind(&outcome.version_id)
    .bind(outcome.kind)
    .bind(&outcome.detail)
    .execute(state.database.writer())
    .await?;
    Ok(())
}

/// Links the pushed image to the version its tag names, if it names one and that version has
/// no image yet.
async fn link(
    state: &AppState,
    target: &Target,
    tag: &str,
    actor: Option<&str>,
) -> Result<Outcome, StorageError> {
    let ignored = |detail: String, project_id: Option<String>| Outcome {
        kind: "ignored",
        detail,
        project_id,
        version_id: None,
    };
    let Some((_, project)) = project_of_repository(&state.database, &target.repository).await?
    else {
        return Ok(ignored(
            format!(
                "repository {:?} is not <tenant>/<project> of a project",
                target.repository
            ),
            None,
        ));
    };
    let version = match tag.strip_prefix('v').and_then(|n| n.parse::<i64>().ok()) {
        Some(number) => {
            crate::versions::find(&state.database, &project.id, &number.to_string()).await?
        }
        None if crate::catalog::is_id(tag) => {
            crate::versions::find(&state.database, &project.id, tag).await?
        }
        None => None,
    };
    let Some(version) = version else {
        return Ok(ignored(
            format!(
                "tag {tag:?} names no version of {}: tag an image v<number> or with the version's id",
                target.repository
            ),
            Some(project.id),
        ));
    };
    let Some(address) = &state.config.registry_address else {
        return Ok(ignored(
            "this platform has no registry_address".to_owned(),
            Some(project.id),
        ));
    };
    let reference = format!("{address}/{}@{}", target.repository, target.digest);
    let outcome = |kind, detail| Outcome {
        kind,
        detail,
        project_id: Some(project.id.clone()),
        version_id: Some(version.id.clone()),
    };
    Ok(
        match link_image(&state.database, &version.id, &reference, &target.digest, actor).await? {
            Linked::Now => outcome(
                "linked",
                format!("version {} runs {reference}", version.number),
            ),
            Linked::Already => outcome(
                "already_linked",
                format!("version {} already runs this image", version.number),
            ),
            Linked::Other(current) => outcome(
                "ignored",
                format!(
                    "version {} already has image {current}; a version's image is set once: push to a new version",
                    version.number
                ),
            ),
        },
    )
}

/// What linking an image to a version came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// The version runs it now.
    Now,
    /// The version ran it already.
    Already,
    /// The version has another image (its digest), and keeps it.
    Other(String),
}

/// Links image `digest` (pulled as `reference`) to version `version_id` unless the version
/// has an image: a version's image is set once. Pushed by the builder (`pushed_by`
/// [`BUILDER_SUBJECT`](super::BUILDER_SUBJECT)) it counts as built, else as pushed.
pub async fn link_image(
    database: &Database,
    version_id: &str,
    reference: &str,
    digest: &str,
    pushed_by: Option<&str>,
) -> Result<Linked, StorageError> {
    let source = if pushed_by == Some(super::BUILDER_SUBJECT) {
        "build"
    } else {
        "push"
    };
    let linked = sqlx::query(
        "UPDATE versions SET image_reference = $2, image_digest = $3, image_source = $4, \
         image_pushed_by = $5, image_linked_at = $6 WHERE id = $1 AND image_digest IS NULL",
    )
    .bind(version_id)
    .bind(reference)
    .bind(digest)
    .bind(source)
    .bind(pushed_by)
    .bind(now_millis())
    .execute(database.writer())
    .await?
    .rows_affected();
    if linked == 1 {
        return Ok(Linked::Now);
    }
    let current: Option<String> =
        sqlx::query_scalar("SELECT image_digest FROM versions WHERE id = $1")
            .bind(version_id)
            .fetch_optional(database.reader())
            .await?
            .flatten();
    Ok(match current {
        Some(current) if current == digest => Linked::Already,
        current => Linked::Other(current.unwrap_or_default()),
    })
}

/// The project's image pushes the registry reported, newest first (at most 100), with what
/// came of each.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/projects/{project}/image-pushes", tag = "registry",
    params(ProjectPath),
    security(("bearer" = [])),
    responses((status = 200, body = ImagePushList), (status = "4XX", body = ErrorBody)))]
pub async fn list_pushes(
    scope: ProjectScope,
    State(state): State<AppState>,
) -> Result<Json<ImagePushList>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, received_at, repository, tag, digest, actor, version_id, outcome, detail \
         FROM image_pushes WHERE project_id = $1 ORDER BY received_at DESC, id DESC LIMIT 100",
    )
    .bind(&scope.project.id)
    .fetch_all(state.database.reader())
    .await?;
    let pushes = rows
        .iter()
        .map(|row| ImagePush {
            id: row.get("id"),
            received_at: row.get("received_at"),
            repository: row.get("repository"),
            tag: row.get("tag"),
            digest: row.get("digest"),
            actor: row.get("actor"),
            version_id: row.get("version_id"),
            outcome: row.get("outcome"),
            detail: row.get("detail"),
        })
        .collect();
    Ok(Json(ImagePushList { pushes }))
}

/// Forgets pushes older than 30 days.
pub async fn purge_old(database: &Database) -> Result<u64, StorageError> {
    const KEPT_FOR_MILLIS: i64 = 30 * 24 * 60 * 60 * 1000;
    Ok(
        sqlx::query("DELETE FROM image_pushes WHERE received_at < $1")
            .bind(now_millis() - KEPT_FOR_MILLIS)
            .execute(database.writer())
            .await?
            .rows_affected(),
    )
}

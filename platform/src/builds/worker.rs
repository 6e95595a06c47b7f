//! Running builds: claiming queued ones (at most `builds_at_once` on this node), making and
//! pushing each image, and putting back what a stop or a crash interrupted.

use super::MAX_ATTEMPTS;
use crate::catalog;
use crate::images::{self, Pusher, RunConfig, APP_DIR, BUNDLE_PATH, PROGRAM_PATH};
use crate::registry::events::{link_image, Linked};
use crate::registry::signing::Granted;
use crate::registry::BUILDER_SUBJECT;
use crate::state::AppState;
use crate::storage::{now_millis, StorageError};
use rally_sdk::manifest::{Manifest, RuntimeKind};
use rally_sdk::runtime::env;
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The most of a build's log kept: its last 64 KiB.
const LOG_MAX_BYTES: usize = 64 * 1024;
/// Lifetime of the token a push carries.
const PUSH_TOKEN_TTL_SECS: u64 = 900;

/// The layer of the `rally-runtime` program, kept while the file is unchanged: every Lua and
/// WASM image starts with it, and compressing it takes seconds.
#[derive(Debug, Clone, Default)]
struct ProgramLayers(Arc<parking_lot::Mutex<Option<ProgramLayer>>>);

#[derive(Debug)]
struct ProgramLayer {
    /// Size and modification time: a replaced file is read again.
    file: (u64, std::time::SystemTime),
    sha256: String,
    layer: images::Layer,
}

impl ProgramLayers {
    /// The program's SHA-256 and its layer (blocking work).
    fn get(&self, program: &std::path::Path) -> std::io::Result<(String, images::Layer)> {
        let metadata = std::fs::metadata(program)?;
        let file = (metadata.len(), metadata.modified()?);
        let mut cached = self.0.lock();
        if let Some(kept) = cached.as_ref().filter(|kept| kept.file == file) {
            return Ok((kept.sha256.clone(), kept.layer.clone()));
        }
        let sha256 = images::file_digest(program)?;
        let layer = images::layer(
            "the rally-runtime program",
            &images::program_layer(program)?,
        )?;
        *cached = Some(ProgramLayer {
            file,
            sha256: sha256.clone(),
            layer: layer.clone(),
        });
        Ok((sha256, layer))
    }
}

/// A claimed build, with what making its image needs.
struct Job {
    id: String,
    version_id: String,
    number: i64,
    bundle_sha256: String,
    manifest: String,
    repository: String,
    /// Its log so far (a build put back and claimed again goes on with it).
    log: String,
}

/// Claims and runs builds until `shutdown`; builds under way are then put back in the queue.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let at_once = state.config.builds_at_once.max(1) as usize;
    let permits = Arc::new(Semaphore::new(at_once));
    let programs = ProgramLayers::default();
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = state.builds.notified() => {}
            _ = every_second.tick() => {}
            () = shutdown.cancelled() => break,
        }
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            match claim(&state).await {
                Ok(Some(job)) => {
                    tokio::spawn(build(
                        state.clone(),
                        programs.clone(),
                        job,
                        permit,
                        shutdown.clone(),
                    ));
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a build");
                    break;
                }
            }
        }
    }
    // Builds under way see the same cancellation and put themselves back.
    let _ = tokio::time::timeout(
        state.config.shutdown_grace(),
        permits.acquire_many(at_once as u32),
    )
    .await;
}

/// Builds this node was running when it stopped without putting them back (a crash) go back
/// to the queue, or fail after [`MAX_ATTEMPTS`]. Done before the node serves, so that nobody
/// sees such a build as still running.
pub async fn requeue_interrupted(state: &AppState) -> Result<(), StorageError> {
    let node = &state.runtimes.node_id;
    let rows = sqlx::query(
        "SELECT id, attempts FROM builds WHERE node_id = $1 AND status IN ('building', 'pushing')",
    )
    .bind(node)
    .fetch_all(state.database.reader())
    .await?;
    for row in rows {
        let id: String = row.get("id");
        let attempts: i64 = row.get("attempts");
        if attempts >= MAX_ATTEMPTS {
            fail(
                state,
                &id,
                &format!("interrupted {attempts} times by platform restarts"),
            )
            .await?;
        } else {
            put_back(
                state,
                &id,
                "interrupted by a platform restart; queued again",
            )
            .await?;
        }
    }
    Ok(())
}

/// The oldest queued build, now this node's; `None` when none is queued.
async fn claim(state: &AppState) -> Result<Option<Job>, StorageError> {
    loop {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM builds WHERE status = 'queued' ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(state.database.reader())
        .await?;
        let Some(id) = next else {
            return Ok(None);
        };
        let claimed = sqlx::query(
            "UPDATE builds SET status = 'building', node_id = $2, attempts = attempts + 1, \
             started_at = $3 WHERE id = $1 AND status = 'queued'",
        )
        .bind(&id)
        .bind(&state.runtimes.node_id)
        .bind(now_millis())
        .execute(state.database.writer())
        .await?
        .rows_affected();
        if claimed == 0 {
            // Another node took it first.
            continue;
        }
        let row = sqlx::query(
            "SELECT b.version_id, b.project_id, p.tenant_id, b.log, v.number, v.bundle_sha256, \
             v.manifest FROM builds b JOIN versions v ON v.id = b.version_id \
             JOIN projects p ON p.id = b.project_id WHERE b.id = $1",
        )
        .bind(&id)
        .fetch_optional(state.database.reader())
        .await?;
        let Some(row) = row else {
            continue;
        };
        let tenant_id: String = row.get("tenant_id");
        let tenant = catalog::find_tenant(&state.database, &tenant_id).await?;
        let project = catalog::find_project(
            &state.database,
            &tenant_id,
            &row.get::<String, _>("project_id"),
        )
        .await?;
        let (Some(tenant), Some(project)) = (tenant, project) else {
            continue;
        };
        return Ok(Some(Job {
            version_id: row.get("version_id"),
            number: row.get("number"),
            bundle_sha256: row.get("bundle_sha256"),
            manifest: row.get("manifest"),
            repository: catalog::repository(&tenant, &project),
            log: row.get("log"),
            id,
        }));
    }
}

/// The build's log, written through to its record as it grows.
struct Log<'a> {
    state: &'a AppState,
    build_id: &'a str,
    text: String,
}

impl Log<'_> {
    async fn line(&mut self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(build_id = %self.build_id, "{line}");
        self.text.push_str(&line);
        self.text.push('\n');
        if self.text.len() > LOG_MAX_BYTES {
            let mut cut = self.text.len() - LOG_MAX_BYTES;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
        let written = sqlx::query("UPDATE builds SET log = $2 WHERE id = $1")
            .bind(self.build_id)
            .bind(&self.text)
            .execute(self.state.database.writer())
            .await;
        if let Err(error) = written {
            tracing::warn!(build_id = %self.build_id, %error, "cannot write the build log");
        }
    }
}

async fn build(
    state: AppState,
    programs: ProgramLayers,
    job: Job,
    _permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let mut log = Log {
        state: &state,
        build_id: &job.id,
        text: job.log.clone(),
    };
    let outcome = tokio::select! {
        outcome = make_and_push(&state, &programs, &job, &mut log) => Some(outcome),
        () = stop.cancelled() => None,
    };
    let recorded = match outcome {
        None => {
            put_back(
                &state,
                &job.id,
                "interrupted: the platform is stopping; queued again",
            )
            .await
        }
        Some(Ok((reference, digest))) => done(&state, &job, &reference, &digest).await,
        Some(Err(error)) => {
            log.line(format!("failed: {error}")).await;
            fail(&state, &job.id, &error).await
        }
    };
    if let Err(error) = recorded {
        tracing::error!(build_id = %job.id, %error, "cannot record how the build ended");
    }
}

async fn set_status(state: &AppState, build_id: &str, status: &str) -> Result<(), String> {
    sqlx::query("UPDATE builds SET status = $2 WHERE id = $1")
        .bind(build_id)
        .bind(status)
        .execute(state.database.writer())
        .await
        .map(drop)
        .map_err(|error| format!("cannot record the build's progress: {error}"))
}

/// Makes the image and pushes it; its reference and digest.
async fn make_and_push(
    state: &AppState,
    programs: &ProgramLayers,
    job: &Job,
    log: &mut Log<'_>,
) -> Result<(String, String), String> {
    let address = state
        .config
        .registry_address
        .clone()
        .ok_or("this platform has no registry_address")?;
    let manifest: Manifest = serde_json::from_str(&job.manifest)
        .map_err(|error| format!("the version's manifest does not parse: {error}"))?;
    log.line(format!(
        "building {}:v{} ({} runtime) from bundle {}",
        job.repository,
        job.number,
        manifest.runtime.kind,
        &job.bundle_sha256[..12]
    ))
    .await;
    let bundle: Vec<u8> = sqlx::query_scalar("SELECT content FROM bundles WHERE sha256 = $1")
        .bind(&job.bundle_sha256)
        .fetch_one(state.database.reader())
        .await
        .map_err(|error| format!("cannot read the bundle: {error}"))?;
    let runtime_program = state.runtimes.runtime_binary().to_owned();
    let bundle_sha256 = job.bundle_sha256.clone();
    let own_program = match manifest.runtime.kind {
        RuntimeKind::Program => Some(
            manifest
                .runtime
                .program
                .clone()
                .ok_or("the version's image is pushed, not built (runtime.image = \"push\")")?,
        ),
        RuntimeKind::Lua | RuntimeKind::Wasm => None,
    };
    let base = match (&own_program, &state.config.program_base_image) {
        (Some(_), Some(base)) => {
            let docker = bollard::Docker::connect_with_local_defaults()
                .map_err(|error| format!("cannot reach the local Docker daemon: {error}"))?
                .negotiate_version()
                .await
                .map_err(|error| format!("cannot reach the local Docker daemon: {error}"))?;
            let (layers, env) = images::saved_layers(&docker, base).await?;
            log.line(format!("on base image {base} ({} layers)", layers.len()))
                .await;
            Some((layers, env))
        }
        _ => None,
    };
    let assembling = std::time::Instant::now();
    let program_layers = programs.clone();
    let image = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut labels = BTreeMap::from([
            ("rally.managed".to_owned(), "true".to_owned()),
            ("rally.bundle".to_owned(), bundle_sha256),
        ]);
        match own_program {
            // A program runtime: its files, its program the entrypoint, nothing else.
            Some(program) => {
                let (base_layers, mut environment) = base.unwrap_or_default();
                environment.push(format!("{}={APP_DIR}", env::BUNDLE));
                let run = RunConfig {
                    entrypoint: vec![format!("{APP_DIR}/{program}")],
                    env: environment,
                    working_dir: Some(APP_DIR.to_owned()),
                    labels,
                };
                let mut layers = base_layers
                    .iter()
                    .map(|tar| images::layer("the base image", tar))
                    .collect::<std::io::Result<Vec<_>>>()?;
                layers.push(images::layer(
                    "the bundle's files",
                    &images::app_layer(&bundle)?,
                )?);
                images::assemble(layers, &run)
            }
            None => {
                let (program_sha256, program_layer) = program_layers.get(&runtime_program)?;
                labels.insert("rally.program".to_owned(), program_sha256);
                let run = RunConfig {
                    entrypoint: vec![PROGRAM_PATH.to_owned()],
                    env: vec![format!("{}={BUNDLE_PATH}", env::BUNDLE)],
                    working_dir: None,
                    labels,
                };
                let layers = vec![
                    program_layer,
                    images::layer("the version's bundle", &images::bundle_layer(&bundle)?)?,
                ];
                images::assemble(layers, &run)
            }
        }
    })
    .await
    .map_err(|error| format!("the image assembly stopped: {error}"))?
    .map_err(|error| format!("cannot assemble the image: {error}"))?;
    let size: usize = image.layers.iter().map(|layer| layer.bytes.len()).sum();
    log.line(format!(
        "image {} ({} layers, {:.1} MiB compressed), assembled in {} ms",
        image.manifest.digest,
        image.layers.len(),
        size as f64 / (1024.0 * 1024.0),
        assembling.elapsed().as_millis()
    ))
    .await;
    set_status(state, &job.id, "pushing").await?;
    let token = state.registry.registry_token(
        BUILDER_SUBJECT,
        &[Granted {
            kind: "repository".to_owned(),
            name: job.repository.clone(),
            actions: vec!["push".to_owned(), "pull".to_owned()],
        }],
        PUSH_TOKEN_TTL_SECS,
    );
    let pusher = Pusher::new(&address, &job.repository, token);
    let pushing = std::time::Instant::now();
    for blob in image.layers.iter().chain(std::iter::once(&image.config)) {
        let sent = pusher.blob(blob).await.map_err(|error| error.to_string())?;
        log.line(format!(
            "{} {} ({:.1} KiB)",
            if sent {
                "sent"
            } else {
                "already in the registry:"
            },
            blob.digest,
            blob.bytes.len() as f64 / 1024.0
        ))
        .await;
    }
    let tag = format!("v{}", job.number);
    let digest = pusher
        .manifest(&tag, &image.manifest)
        .await
        .map_err(|error| error.to_string())?;
    let reference = format!("{address}/{}@{digest}", job.repository);
    log.line(format!(
        "pushed {address}/{}:{tag} as {digest} in {} ms",
        job.repository,
        pushing.elapsed().as_millis()
    ))
    .await;
    Ok((reference, digest))
}

/// A pushed build: the version runs its image unless one was linked before.
async fn done(
    state: &AppState,
    job: &Job,
    reference: &str,
    digest: &str,
) -> Result<(), StorageError> {
    let linked = link_image(
        &state.database,
        &job.version_id,
        reference,
        digest,
        Some(BUILDER_SUBJECT),
    )
    .await?;
    let line = match linked {
        // `Already`: the registry's notification of the push came first.
        Linked::Now | Linked::Already => format!("version {} runs {reference}\n", job.number),
        Linked::Other(current) => {
            format!("version {} already had image {current}; kept\n", job.number)
        }
    };
    sqlx::query(
        "UPDATE builds SET status = 'done', reference = $2, digest = $3, finished_at = $4, \
         log = log || $5 WHERE id = $1",
    )
    .bind(&job.id)
    .bind(reference)
    .bind(digest)
    .bind(now_millis())
    .bind(line)
    .execute(state.database.writer())
    .await?;
    Ok(())
}

async fn fail(state: &AppState, build_id: &str, error: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE builds SET status = 'failed', error = $2, finished_at = $3 WHERE id = $1")
        .bind(build_id)
        .bind(error)
        .bind(now_millis())
        .execute(state.database.writer())
        .await?;
    Ok(())
}

async fn put_back(state: &AppState, build_id: &str, why: &str) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE builds SET status = 'queued', node_id = NULL, log = log || $2 WHERE id = $1",
    )
    .bind(build_id)
    .bind(format!("{why}\n"))
    .execute(state.database.writer())
    .await?;
    state.builds.notify_one();
    Ok(())
}

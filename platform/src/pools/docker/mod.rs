//! Docker pools: runtimes in containers on the pool's Docker servers, with a read-only root
//! file system and no capabilities, in one of two placements the deployment chooses
//! (`docker_placement`): each runtime in a container of its own with its deployment's CPU and
//! memory limits, or forked in its version's launcher container on the server
//! ([`launcher`]). Containers carry labels (`rally.node`, `rally.runtime` or `rally.launcher`,
//! the tenant, project, stage, version and deployment), by which a restarted platform finds
//! them again.
//!
//! - Images: one per version and runtime program, made here without pulling anything: a base
//!   image imported from a tar of the `rally-runtime` program and the shared libraries it needs
//!   (none for the static build), and on top of it one layer with the version's bundle
//!   (`docker commit`). Tags derive from the program's and the bundle's SHA-256, so making an
//!   image twice is a no-op and a version's runtimes share one.
//! - Exits: a watcher per server follows the daemon's `die` events; the container's output is
//!   kept (bounded) and the container removed. A server whose daemon stops answering takes no
//!   new runtimes, and after `lost_after` its runtimes are reported ended, to be replaced.
//! - Debian's engine 20.10 speaks Engine API 1.41 at most: every client negotiates its version
//!   with the daemon before its first call.

mod launcher;

use super::registry;
use super::schedule;
use super::{Exited, Placement, PoolKind, RuntimePool, RuntimeSpec, StartError, EXITS_QUEUE};
use crate::images::{self, BUNDLE_PATH, PROGRAM_PATH, RUNTIME_USER};
use crate::registry::signing::{server_username, Holder, TokenSigner};
use crate::storage::Database;
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, CreateImageOptions, EventsOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    UploadToContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rally_sdk::manifest::DockerPlacement;
use rally_sdk::runtime::env;
use rally_sdk::wire::{DockerEndpoint, Server, ServerKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Seconds a call to a daemon may take before it counts as not answering.
const CALL_TIMEOUT_SECS: u64 = 10;

/// How long registering a server waits for its daemon.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Label every container and image this platform makes carries.
pub const MANAGED_LABEL: &str = "rally.managed";
/// Label naming the platform node that placed a container.
pub const NODE_LABEL: &str = "rally.node";
/// Label naming the runtime a container runs.
pub const RUNTIME_LABEL: &str = "rally.runtime";
/// Label naming the server (of the pool) a container was placed on.
pub const SERVER_LABEL: &str = "rally.server";
/// Label of the container an image is committed from (never run): the node making it.
pub const SCRATCH_LABEL: &str = "rally.scratch";
/// Label of a launcher container: the image it runs.
pub const LAUNCHER_LABEL: &str = "rally.launcher";

/// Processes and threads a runtime container may have.
const PIDS_LIMIT: i64 = 256;
/// How long after a SIGKILL exit the daemon may still record that the kernel's OOM killer did it.
const OOM_NOTICE: Duration = Duration::from_millis(300);

/// How long the credential a server pulls an image with is valid.
const PULL_CREDENTIAL_TTL: Duration = Duration::from_secs(600);

/// Lines of a container's output kept when it ends.
const LOG_TAIL_LINES: &str = "5000";

/// A client for the daemon at `endpoint`, speaking the daemon's API version.
pub async fn connect(endpoint: &DockerEndpoint) -> Result<Docker, bollard::errors::Error> {
    let docker = match &endpoint.tls {
        None => Docker::connect_with_unix(
            &endpoint.url,
            CALL_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )?,
        Some(tls) => Docker::connect_with_ssl(
            &endpoint.url,
            Path::new(&tls.key),
            Path::new(&tls.cert),
            Path::new(&tls.ca),
            CALL_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )?,
    };
    docker.negotiate_version().await
}

/// Whether the daemon at `endpoint` answers; the problem in words when it does not.
pub async fn check_daemon(endpoint: &DockerEndpoint) -> Result<(), String> {
    let check = async {
        let docker = connect(endpoint).await.map_err(|error| error.to_string())?;
        docker.ping().await.map_err(|error| error.to_string())?;
        Ok(())
    };
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

/// Runtimes in containers on the Docker servers of every Docker pool.
#[derive(Debug, Clone)]
pub struct DockerPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_id: String,
    database: Database,
    /// The `rally-runtime` program that goes into images.
    program: PathBuf,
    /// Where the images go: `<repository>:<bundle>-<program>`, `<repository>-base:<program>`.
    repository: String,
    /// What program runtimes' images are made on (`program_base_image`); none: nothing.
    program_base_image: Option<String>,
    /// Kept output of ended containers and the platform's lines about each runtime.
    log_dir: PathBuf,
    log_max_bytes: u64,
    /// A server silent this long has its runtimes reported ended.
    lost_after: Duration,
    daemons: Mutex<HashMap<String, Arc<Daemon>>>,
    /// Runtimes running in a container of this node, by runtime id.
    live: Mutex<HashMap<String, Live>>,
    /// Launcher containers of this node.
    launchers: launcher::Launchers,
    /// One launcher container is made at a time.
    launching: tokio::sync::Mutex<()>,
    /// Set once a restart's reconcile has adopted what it could: before, a container nothing
    /// here knows may still be adopted, and no resync removes it.
    reconciled: std::sync::atomic::AtomicBool,
    /// Choosing a server and recording the choice happen one runtime at a time.
    scheduling: tokio::sync::Mutex<()>,
    /// One image is made at a time.
    imaging: tokio::sync::Mutex<()>,
    program_digest: tokio::sync::OnceCell<String>,
    /// Signs the credentials servers pull versions' images with: the platform's registry key.
    registry_signer: Arc<TokenSigner>,
    exits: mpsc::Sender<Exited>,
    exits_receiver: Mutex<Option<mpsc::Receiver<Exited>>>,
    closed: CancellationToken,
}

#[derive(Debug, Clone)]
struct Live {
    server: String,
    /// Its own container, or its launcher's.
    container: String,
    /// Its pid in its launcher container, for a runtime placed in one.
    pid: Option<u32>,
}

impl Live {
    /// Where a placement handle says the runtime runs on `server`: a container of its own, or
    /// `<launcher container>/<pid>`.
    fn placed(server: &str, handle: &str) -> Live {
        let (container, pid) = match launcher::parse_handle(handle) {
            Some((container, pid)) => (container, Some(pid)),
            None => (handle, None),
        };
        Live {
            server: server.to_owned(),
            container: container.to_owned(),
            pid,
        }
    }

    /// Its placement handle: the inverse of [`Live::placed`].
    fn handle(&self) -> String {
        match self.pid {
            Some(pid) => launcher::handle(&self.container, pid),
            None => self.container.clone(),
        }
    }
}

/// One server's daemon.
#[derive(Debug)]
struct Daemon {
    server: String,
    docker: Docker,
    endpoint: DockerEndpoint,
    /// Since when it has not answered.
    silent_since: Mutex<Option<Instant>>,
    /// The CPUs of the daemon's host, when it said: a container's CPU quota cannot exceed
    /// them, while a server's capacity (or a deployment's limit) may.
    cpus: Option<i64>,
}

impl Daemon {
    /// `millis` thousandths of a core as a container's `NanoCpus`, at most the host's CPUs.
    fn nano_cpus(&self, millis: u32) -> i64 {
        let asked = i64::from(millis) * 1_000_000;
        self.cpus
            .filter(|cpus| *cpus > 0)
            .map_or(asked, |cpus| asked.min(cpus * 1_000_000_000))
    }

    /// What every runtime container and launcher container on this server runs with: its
    /// limits, a read-only root file system, no capabilities, no new privileges, the server's
    /// network, bounded logs.
    fn confined(&self, cpu_millis: Option<u32>, memory: Option<i64>, pids: i64) -> HostConfig {
        HostConfig {
            nano_cpus: cpu_millis.map(|millis| self.nano_cpus(millis)),
            memory,
            memory_swap: memory,
            pids_limit: Some(pids),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            network_mode: Some(self.endpoint.network.clone()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "1m".to_owned()),
                    ("max-file".to_owned(), "2".to_owned()),
                ])),
            }),
            ..Default::default()
        }
    }
}

impl DockerPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        database: Database,
        program: PathBuf,
        repository: String,
        program_base_image: Option<String>,
        registry_signer: Arc<TokenSigner>,
        log_dir: PathBuf,
        log_max_bytes: u64,
        lost_after: Duration,
    ) -> Self {
        let (exits, exits_receiver) = mpsc::channel(EXITS_QUEUE);
        Self {
            inner: Arc::new(Inner {
                node_id,
                database,
                program,
                repository,
                program_base_image,
                log_dir,
                log_max_bytes,
                lost_after,
                daemons: Mutex::default(),
                live: Mutex::default(),
                launchers: Mutex::default(),
                launching: tokio::sync::Mutex::new(()),
                reconciled: std::sync::atomic::AtomicBool::new(false),
                scheduling: tokio::sync::Mutex::new(()),
                imaging: tokio::sync::Mutex::new(()),
                program_digest: tokio::sync::OnceCell::new(),
                registry_signer,
                exits,
                exits_receiver: Mutex::new(Some(exits_receiver)),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Whether this pool has (or had) the runtime: it runs here, or its log is kept here.
    pub fn knows(&self, runtime_id: &str) -> bool {
        self.inner.live.lock().contains_key(runtime_id)
            || self.inner.output_path(runtime_id).exists()
            || self.inner.platform_lines_path(runtime_id).exists()
    }
}

fn start_error(what: &str, error: impl std::fmt::Display) -> StartError {
    StartError(format!("{what}: {error}"))
}

impl Inner {
    fn output_path(&self, runtime_id: &str) -> PathBuf {
        self.log_dir.join(format!("{runtime_id}.log"))
    }

    fn platform_lines_path(&self, runtime_id: &str) -> PathBuf {
        self.log_dir.join(format!("{runtime_id}.platform.log"))
    }

    /// The daemon of `server`, connected on first use (and its watcher started).
    async fn daemon(self: &Arc<Self>, server: &Server) -> Result<Arc<Daemon>, String> {
        if let Some(daemon) = self.daemons.lock().get(&server.name) {
            return Ok(daemon.clone());
        }
        let endpoint = server
            .docker
            .clone()
            .ok_or_else(|| format!("server {:?} is not a Docker server", server.name))?;
        let docker = tokio::time::timeout(CHECK_TIMEOUT, connect(&endpoint))
            .await
            .map_err(|_| format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))?
            .map_err(|error| error.to_string())?;
        let cpus = tokio::time::timeout(CHECK_TIMEOUT, docker.info())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|info| info.ncpu);
        let daemon = Arc::new(Daemon {
            server: server.name.clone(),
            docker,
            endpoint,
            silent_since: Mutex::new(None),
            cpus,
        });
        let daemon = self
            .daemons
            .lock()
            .entry(server.name.clone())
            .or_insert_with(|| {
                tokio::spawn(watch(self.clone(), daemon.clone()));
                daemon
            })
            .clone();
        Ok(daemon)
    }

    /// The daemon of the server named `name`, from its record.
    async fn daemon_named(self: &Arc<Self>, name: &str) -> Result<Arc<Daemon>, String> {
        if let Some(daemon) = self.daemons.lock().get(name) {
            return Ok(daemon.clone());
        }
        let servers = registry::servers(&self.database, None)
            .await
            .map_err(|error| error.to_string())?;
        let server = servers
            .iter()
            .find(|server| server.name == name)
            .ok_or_else(|| format!("no server named {name:?}"))?;
        self.daemon(server).await
    }

    fn answering(&self, server: &str) -> bool {
        self.daemons
            .lock()
            .get(server)
            .is_some_and(|daemon| daemon.silent_since.lock().is_none())
    }

    /// SHA-256 of the runtime program, computed once.
    async fn program_digest(&self) -> Result<&str, StartError> {
        self.program_digest
            .get_or_try_init(|| async {
                let program = self.program.clone();
                tokio::task::spawn_blocking(move || images::file_digest(&program))
                    .await
                    .map_err(|error| start_error("cannot read the runtime program", error))?
                    .map_err(|error| start_error("cannot read the runtime program", error))
            })
            .await
            .map(String::as_str)
    }

    /// The image for bundle `bundle` (SHA-256 `bundle_digest`) on `daemon`, made if it is not
    /// there yet; the bundle is read only then.
    async fn image(
        &self,
        daemon: &Daemon,
        bundle: &Path,
        bundle_digest: &str,
    ) -> Result<String, StartError> {
        let program = self.program_digest().await?.to_owned();
        let tag = format!(
            "{}:{}-{}",
            self.repository,
            &bundle_digest[..16],
            &program[..12]
        );
        let docker = &daemon.docker;
        let Some(_turn) = self.turn_to_make(docker, &tag).await else {
            return Ok(tag);
        };
        let base = format!("{}-base:{}", self.repository, &program[..16]);
        if docker.inspect_image(&base).await.is_err() {
            let program_path = self.program.clone();
            let root = tokio::task::spawn_blocking(move || images::program_layer(&program_path))
                .await
                .map_err(|error| start_error("cannot pack the runtime program", error))?
                .map_err(|error| start_error("cannot pack the runtime program", error))?;
            import(
                docker,
                &base,
                root,
                vec![
                    format!("ENTRYPOINT [\"{PROGRAM_PATH}\"]"),
                    format!("LABEL {MANAGED_LABEL}=true"),
                ],
            )
            .await
            .map_err(|error| start_error("cannot import the runtime image", error))?;
        }
        // The version's layer: the bundle, on top of the base.
        let bundle_bytes = tokio::fs::read(bundle)
            .await
            .map_err(|error| start_error("cannot read the bundle", error))?;
        let layer = images::bundle_layer(&bundle_bytes)
            .map_err(|error| start_error("cannot pack the bundle", error))?;
        let config = ContainerConfig {
            entrypoint: Some(vec![PROGRAM_PATH.to_owned()]),
            env: Some(vec![format!("{}={BUNDLE_PATH}", env::BUNDLE)]),
            user: Some(RUNTIME_USER.to_owned()),
            labels: Some(HashMap::from([
                (MANAGED_LABEL.to_owned(), "true".to_owned()),
                ("rally.bundle".to_owned(), bundle_digest.to_owned()),
                ("rally.program".to_owned(), program.clone()),
            ])),
            ..Default::default()
        };
        self.commit_layer(docker, &base, layer, &tag, config)
            .await?;
        tracing::info!(server = %daemon.server, image = %tag, "runtime image made");
        Ok(tag)
    }

    /// `None` when image `tag` is on `docker`; else this node's turn to make images, once the
    /// image is still missing with it held (another start may have made it meanwhile).
    async fn turn_to_make(
        &self,
        docker: &Docker,
        tag: &str,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if docker.inspect_image(tag).await.is_ok() {
            return None;
        }
        let turn = self.imaging.lock().await;
        if docker.inspect_image(tag).await.is_ok() {
            return None;
        }
        Some(turn)
    }

    /// Image `tag`: `layer` (a tar) on top of image `base`, run as `config` says, committed
    /// from a container that never runs; the container goes either way.
    async fn commit_layer(
        &self,
        docker: &Docker,
        base: &str,
        layer: Vec<u8>,
        tag: &str,
        mut config: ContainerConfig,
    ) -> Result<(), StartError> {
        // A commit keeps the container's labels the config does not name: without this, the
        // image, and every runtime container made from it, would carry the scratch label, and
        // `remove_scratch` would remove live runtimes.
        config
            .labels
            .get_or_insert_with(HashMap::new)
            .insert(SCRATCH_LABEL.to_owned(), String::new());
        let scratch = docker
            .create_container(
                None::<CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(base.to_owned()),
                    // Never run; a base without a command of its own needs one to be made.
                    entrypoint: config.entrypoint.clone(),
                    // Named by node, so that one left behind by a stop in the middle can be
                    // found (`docker ps --filter label=rally.scratch=<node>`).
                    labels: Some(HashMap::from([
                        (MANAGED_LABEL.to_owned(), "true".to_owned()),
                        (SCRATCH_LABEL.to_owned(), self.node_id.clone()),
                    ])),
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| start_error("cannot make the version's image", error))?
            .id;
        let layered = async {
            docker
                .upload_to_container(
                    &scratch,
                    Some(UploadToContainerOptions {
                        path: "/".to_owned(),
                        ..Default::default()
                    }),
                    bollard::body_full(layer.into()),
                )
                .await
                .map_err(|error| start_error("cannot add the version's files", error))?;
            let (repo, version_tag) = tag.rsplit_once(':').expect("a tag");
            docker
                .commit_container(
                    CommitContainerOptions {
                        container: Some(scratch.clone()),
                        repo: Some(repo.to_owned()),
                        tag: Some(version_tag.to_owned()),
                        ..Default::default()
                    },
                    config,
                )
                .await
                .map_err(|error| start_error("cannot commit the version's image", error))?;
            Ok::<(), StartError>(())
        }
        .await;
        remove(docker, &scratch).await;
        layered
    }

    /// The version's image `reference` (`<registry>/<repository>@<digest>`) on `daemon`,
    /// pulled if it is not there yet, with a short-lived credential of the server's own: the
    /// platform's token endpoint lets a server pull the projects that have a stage on its pool.
    async fn pulled(&self, daemon: &Daemon, reference: &str) -> Result<String, StartError> {
        let docker = &daemon.docker;
        let Some(_turn) = self.turn_to_make(docker, reference).await else {
            return Ok(reference.to_owned());
        };
        let username = server_username(&daemon.server);
        let (password, _) = self.registry_signer.issue_login(
            &Holder::Server(daemon.server.clone()),
            &username,
            PULL_CREDENTIAL_TTL,
        );
        let registry = reference.split('/').next().unwrap_or_default().to_owned();
        let credentials = bollard::auth::DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry),
            ..Default::default()
        };
        let options = CreateImageOptions {
            from_image: Some(reference.to_owned()),
            ..Default::default()
        };
        let started = Instant::now();
        let mut progress = docker.create_image(Some(options), None, Some(credentials));
        while let Some(step) = progress.next().await {
            step.map_err(|error| start_error(&format!("cannot pull {reference}"), error))?;
        }
        tracing::info!(server = %daemon.server, image = %reference,
            millis = started.elapsed().as_millis() as u64, "runtime image pulled");
        Ok(reference.to_owned())
    }

    /// The image of a program runtime made on `daemon` from its bundle, if it is not there
    /// yet: the bundle's files under `/app`, on the configured `program_base_image` or on
    /// nothing (the program brings what it needs), `program` the entrypoint.
    async fn program_image(
        &self,
        daemon: &Daemon,
        bundle: &Path,
        bundle_digest: &str,
        program: &str,
    ) -> Result<String, StartError> {
        let docker = &daemon.docker;
        let base = match &self.program_base_image {
            Some(base) => {
                let id = docker
                    .inspect_image(base)
                    .await
                    .map_err(|error| {
                        start_error(
                            &format!(
                                "program_base_image {base} is not on server {}",
                                daemon.server
                            ),
                            error,
                        )
                    })?
                    .id
                    .unwrap_or_default();
                Some((
                    base.clone(),
                    id.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect::<String>(),
                ))
            }
            None => None,
        };
        let tag = match &base {
            Some((_, id)) => format!("{}:{}-program-{id}", self.repository, &bundle_digest[..16]),
            None => format!("{}:{}-program", self.repository, &bundle_digest[..16]),
        };
        let Some(_turn) = self.turn_to_make(docker, &tag).await else {
            return Ok(tag);
        };
        let bundle = tokio::fs::read(bundle)
            .await
            .map_err(|error| start_error("cannot read the bundle", error))?;
        let layer = tokio::task::spawn_blocking(move || images::app_layer(&bundle))
            .await
            .map_err(|error| start_error("cannot unpack the bundle", error))?
            .map_err(|error| start_error("cannot unpack the bundle", error))?;
        let entrypoint = format!("{}/{program}", images::APP_DIR);
        let bundle_env = format!("{}={}", env::BUNDLE, images::APP_DIR);
        match base {
            Some((base, _)) => {
                let config = ContainerConfig {
                    entrypoint: Some(vec![entrypoint]),
                    working_dir: Some(images::APP_DIR.to_owned()),
                    env: Some(vec![bundle_env]),
                    user: Some(RUNTIME_USER.to_owned()),
                    labels: Some(HashMap::from([
                        (MANAGED_LABEL.to_owned(), "true".to_owned()),
                        ("rally.bundle".to_owned(), bundle_digest.to_owned()),
                    ])),
                    ..Default::default()
                };
                self.commit_layer(docker, &base, layer, &tag, config)
                    .await?;
            }
            None => {
                let entrypoint = serde_json::to_string(&[entrypoint])
                    .map_err(|error| start_error("cannot name the program", error))?;
                import(
                    docker,
                    &tag,
                    layer,
                    vec![
                        format!("ENTRYPOINT {entrypoint}"),
                        format!("WORKDIR {}", images::APP_DIR),
                        format!("USER {RUNTIME_USER}"),
                        format!("ENV {bundle_env}"),
                        format!("LABEL {MANAGED_LABEL}=true"),
                    ],
                )
                .await
                .map_err(|error| start_error("cannot import the program's image", error))?;
            }
        }
        tracing::info!(server = %daemon.server, image = %tag, "program runtime image made");
        Ok(tag)
    }

    /// Creates and starts the runtime's container; nothing is left behind when it fails.
    async fn run(
        &self,
        daemon: &Daemon,
        spec: &RuntimeSpec,
        image: String,
    ) -> Result<String, StartError> {
        let platform_url = daemon
            .endpoint
            .platform_url
            .clone()
            .unwrap_or_else(|| spec.platform_url.clone());
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.extend([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (NODE_LABEL.to_owned(), self.node_id.clone()),
            (RUNTIME_LABEL.to_owned(), spec.runtime_id.clone()),
            (
                "rally.qualifier".to_owned(),
                spec.qualifier.as_str().to_owned(),
            ),
            ("rally.pool".to_owned(), spec.pool.clone()),
            (SERVER_LABEL.to_owned(), daemon.server.clone()),
        ]);
        let memory = i64::from(spec.limits.memory_mb) * 1024 * 1024;
        let body = ContainerCreateBody {
            image: Some(image),
            env: Some(vec![
                format!("{}={}", env::RUNTIME_ID, spec.runtime_id),
                format!("{}={}", env::RUNTIME_SECRET, spec.secret),
                format!("{}={}", env::QUALIFIER, spec.qualifier.as_str()),
                format!("{}={platform_url}", env::PLATFORM_URL),
                // RALLY_BUNDLE is the image's own: where its files are.
            ]),
            user: Some(RUNTIME_USER.to_owned()),
            labels: Some(labels),
            host_config: Some(daemon.confined(
                Some(spec.limits.cpu_millis),
                Some(memory),
                PIDS_LIMIT,
            )),
            ..Default::default()
        };
        let docker = &daemon.docker;
        let container = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(format!("rally-{}", spec.runtime_id)),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|error| start_error("cannot create the container", error))?
            .id;
        // Known before it starts, so that a `die` right after the start finds it.
        self.live.lock().insert(
            spec.runtime_id.clone(),
            Live {
                server: daemon.server.clone(),
                container: container.clone(),
                pid: None,
            },
        );
        if let Err(error) = docker.start_container(&container, None).await {
            self.live.lock().remove(&spec.runtime_id);
            remove(docker, &container).await;
            return Err(start_error("cannot start the container", error));
        }
        Ok(container)
    }

    /// A runtime's container ended: its output is kept, the container removed, the end
    /// reported (once).
    async fn ended(
        &self,
        daemon: &Daemon,
        runtime_id: &str,
        container: &str,
        reason: Option<String>,
    ) {
        let docker = &daemon.docker;
        let inspect = || async {
            docker
                .inspect_container(container, None)
                .await
                .ok()
                .and_then(|inspected| inspected.state)
        };
        let mut state = inspect().await;
        let killed_unexplained = state
            .as_ref()
            .is_some_and(|state| state.exit_code == Some(137) && state.oom_killed != Some(true));
        if killed_unexplained {
            // The daemon may record the kernel's OOM kill just after the exit: look again.
            tokio::time::sleep(OOM_NOTICE).await;
            state = inspect().await.or(state);
        }
        let exit_code = state
            .as_ref()
            .and_then(|state| state.exit_code)
            .map(|code| code as i32);
        let oom = state
            .as_ref()
            .and_then(|state| state.oom_killed)
            .unwrap_or(false);
        self.keep_output(docker, runtime_id, container).await;
        remove(docker, container).await;
        let ours = self
            .live
            .lock()
            .get(runtime_id)
            .is_some_and(|entry| entry.container == container);
        if ours {
            let reason = reason.or_else(|| {
                oom.then(|| "its memory limit was reached and the kernel ended it".to_owned())
            });
            // A killed container reports 137; the code says a signal ended it.
            let exit_code = exit_code.filter(|code| *code < 128);
            self.report_exit(runtime_id.to_owned(), exit_code, reason)
                .await;
        }
    }

    /// The runtime is no longer this pool's: its exit is reported, once, if it was live here.
    async fn report_exit(
        &self,
        runtime_id: String,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) {
        if self.live.lock().remove(&runtime_id).is_some() {
            let _ = self
                .exits
                .send(Exited {
                    runtime_id,
                    exit_code,
                    reason,
                })
                .await;
        }
    }

    /// The container's last output, kept on this node for the log API.
    async fn keep_output(&self, docker: &Docker, runtime_id: &str, container: &str) {
        let output = container_output(docker, container).await;
        if output.is_empty() {
            return;
        }
        let keep = output.len().saturating_sub(self.log_max_bytes as usize);
        let _ = tokio::fs::create_dir_all(&self.log_dir).await;
        let _ = tokio::fs::write(self.output_path(runtime_id), &output[keep..]).await;
    }
}

/// A container's output (standard output and error), its last lines.
async fn container_output(docker: &Docker, container: &str) -> Vec<u8> {
    let mut output = Vec::new();
    let mut lines = docker.logs(
        container,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_TAIL_LINES.to_owned(),
            ..Default::default()
        }),
    );
    while let Some(Ok(line)) = lines.next().await {
        output.extend_from_slice(&line.into_bytes());
    }
    output
}

/// Follows one server's daemon: its `die` events, and what ended while it was not watched.
async fn watch(inner: Arc<Inner>, daemon: Arc<Daemon>) {
    let mut backoff = Duration::from_millis(200);
    let mut reported_lost = false;
    loop {
        if inner.closed.is_cancelled() {
            return;
        }
        let since = (crate::storage::now_millis() / 1000).to_string();
        match resync(&inner, &daemon).await {
            Ok(()) => {
                *daemon.silent_since.lock() = None;
                backoff = Duration::from_millis(200);
                reported_lost = false;
                let options = EventsOptions {
                    since: Some(since),
                    filters: Some(HashMap::from([
                        ("type".to_owned(), vec!["container".to_owned()]),
                        ("event".to_owned(), vec!["die".to_owned()]),
                        (
                            "label".to_owned(),
                            // One daemon may hold several servers (with different
                            // capacities): each watcher takes its own server's containers.
                            vec![
                                format!("{NODE_LABEL}={}", inner.node_id),
                                format!("{SERVER_LABEL}={}", daemon.server),
                            ],
                        ),
                    ])),
                    ..Default::default()
                };
                let mut events = daemon.docker.events(Some(options));
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        () = inner.closed.cancelled() => return,
                    };
                    let Some(Ok(event)) = event else { break };
                    let Some(actor) = event.actor else { continue };
                    let (Some(container), Some(attributes)) = (actor.id, actor.attributes) else {
                        continue;
                    };
                    if let Some(runtime_id) = attributes.get(RUNTIME_LABEL) {
                        inner.ended(&daemon, runtime_id, &container, None).await;
                    }
                }
                tracing::warn!(server = %daemon.server, "lost the Docker daemon's events; watching again");
            }
            Err(error) => {
                let silent_for = {
                    let mut silent_since = daemon.silent_since.lock();
                    silent_since.get_or_insert_with(Instant::now).elapsed()
                };
                tracing::warn!(server = %daemon.server, %error, "the Docker daemon does not answer");
                if silent_for >= inner.lost_after && !reported_lost {
                    reported_lost = true;
                    lost(&inner, &daemon, silent_for).await;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = inner.closed.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What the daemon runs for this node, against what this pool thinks runs there: containers
/// of runtimes that ended unseen are handled as ends; a launcher container that runs but is not
/// attached to (its server was silent) is attached to again; and a container of this node and
/// server that nothing here knows (left while the server was silent) is removed once it is
/// older than `lost_after`, past any start in progress.
async fn resync(inner: &Arc<Inner>, daemon: &Arc<Daemon>) -> Result<(), bollard::errors::Error> {
    let containers = ours(&daemon.docker, &inner.node_id).await?;
    let on_this_server: Vec<(String, Live)> = inner
        .live
        .lock()
        .iter()
        .filter(|(_, live)| live.server == daemon.server)
        .map(|(id, live)| (id.clone(), live.clone()))
        .collect();
    let attached: Vec<String> = inner
        .launchers
        .lock()
        .values()
        .map(|launcher| launcher.container.clone())
        .collect();
    let mut to_attach: HashMap<String, Vec<(String, Option<Placement>)>> = HashMap::new();
    for (runtime_id, live) in on_this_server {
        let running = containers
            .iter()
            .any(|found| found.id == live.container && found.running);
        match live.pid {
            None if !running => {
                inner
                    .ended(daemon, &runtime_id, &live.container, None)
                    .await;
            }
            Some(_) if !running => {
                inner
                    .report_exit(
                        runtime_id,
                        None,
                        Some("its launcher container ended".to_owned()),
                    )
                    .await;
            }
            Some(_) if !attached.contains(&live.container) => {
                to_attach.entry(live.container.clone()).or_default().push((
                    runtime_id,
                    Some(Placement {
                        kind: PoolKind::Docker,
                        pool: String::new(),
                        server: daemon.server.clone(),
                        handle: live.handle(),
                    }),
                ));
            }
            _ => {}
        }
    }
    for (container, known) in to_attach {
        let version = containers
            .iter()
            .find(|found| found.id == container)
            .and_then(|found| found.version.clone())
            .unwrap_or_default();
        let adopted = inner
            .adopt_launcher(daemon, &version, &container, &known)
            .await
            .unwrap_or_default();
        for (runtime_id, _) in known {
            if !adopted.contains(&runtime_id) {
                inner
                    .report_exit(
                        runtime_id,
                        None,
                        Some("its launcher no longer runs it".to_owned()),
                    )
                    .await;
            }
        }
    }
    remove_scratch(inner, daemon).await?;
    // What nothing here knows: left by runtimes reported ended while the server was silent.
    if !inner.reconciled.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    let known: Vec<String> = inner
        .live
        .lock()
        .values()
        .map(|live| live.container.clone())
        .chain(
            inner
                .launchers
                .lock()
                .values()
                .map(|launcher| launcher.container.clone()),
        )
        .collect();
    // Younger than the time a server may be silent, it may be a start in progress.
    let settled = crate::storage::now_millis() / 1000 - inner.lost_after.as_secs() as i64;
    for found in containers {
        let stray = found.server.as_deref() == Some(daemon.server.as_str())
            && found.created < settled
            && !known.contains(&found.id);
        if stray {
            tracing::warn!(server = %daemon.server, container = %found.id, "removing a container of this node that runs nothing it knows");
            remove(&daemon.docker, &found.id).await;
        }
    }
    Ok(())
}

/// Removes the scratch containers of images this node stopped making midway (a stop or a crash
/// between making one and removing it). None is in use while this node makes no image.
async fn remove_scratch(inner: &Inner, daemon: &Daemon) -> Result<(), bollard::errors::Error> {
    let Ok(_making_none) = inner.imaging.try_lock() else {
        return Ok(());
    };
    let left = daemon
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{SCRATCH_LABEL}={}", inner.node_id)],
            )])),
            ..Default::default()
        }))
        .await?;
    for container in left.into_iter().filter_map(|container| container.id) {
        tracing::info!(server = %daemon.server, %container, "removing a scratch container left by an image not finished");
        remove(&daemon.docker, &container).await;
    }
    Ok(())
}

/// One container of this node on a daemon.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    /// The runtime it runs (`rally.runtime`), for a container of its own.
    runtime: Option<String>,
    /// The version it serves (`rally.version`), for a launcher container.
    version: Option<String>,
    /// The server it was placed on (`rally.server`).
    server: Option<String>,
    running: bool,
    /// When it was made, in seconds since the epoch.
    created: i64,
}

impl Found {
    fn is_launcher(&self) -> bool {
        self.runtime.is_none()
    }
}

/// The runtime and launcher containers of node `node_id` on a daemon.
async fn ours(docker: &Docker, node_id: &str) -> Result<Vec<Found>, bollard::errors::Error> {
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{NODE_LABEL}={node_id}")],
            )])),
            ..Default::default()
        }))
        .await?;
    Ok(containers
        .into_iter()
        .filter_map(|container| {
            let labels = container.labels?;
            let runtime = labels.get(RUNTIME_LABEL).cloned();
            let launcher = labels.contains_key(LAUNCHER_LABEL);
            if runtime.is_none() && !launcher {
                return None;
            }
            let running = container
                .state
                .is_some_and(|state| state == bollard::models::ContainerSummaryStateEnum::RUNNING);
            Some(Found {
                id: container.id?,
                version: launcher
                    .then(|| labels.get(launcher::VERSION_LABEL).cloned())
                    .flatten(),
                server: labels.get(SERVER_LABEL).cloned(),
                runtime,
                running,
                created: container.created.unwrap_or(0),
            })
        })
        .collect())
}

/// A server silent past `lost_after`: its runtimes are reported ended (the supervisor replaces
/// them elsewhere); their containers are removed if the daemon comes back (see [`resync`]).
async fn lost(inner: &Inner, daemon: &Daemon, silent_for: Duration) {
    inner.let_go_of_launchers(&daemon.server);
    let gone: Vec<String> = inner
        .live
        .lock()
        .iter()
        .filter(|(_, entry)| entry.server == daemon.server)
        .map(|(id, _)| id.clone())
        .collect();
    let reason = format!(
        "server {} has not answered for {} s",
        daemon.server,
        silent_for.as_secs()
    );
    for runtime_id in gone {
        inner
            .report_exit(runtime_id, None, Some(reason.clone()))
            .await;
    }
}

#[async_trait::async_trait]
impl RuntimePool for DockerPool {
    fn kind(&self) -> PoolKind {
        PoolKind::Docker
    }

    fn name(&self) -> &str {
        "docker"
    }

    async fn start(&self, spec: RuntimeSpec) -> Result<Placement, StartError> {
        let inner = &self.inner;
        let super::Artifact::Bundle {
            path: bundle,
            sha256,
            image: linked,
            program,
            image_pushed,
        } = &spec.artifact;
        let (server, daemon) = {
            let _one_at_a_time = inner.scheduling.lock().await;
            let servers = registry::servers(&inner.database, Some(&spec.pool))
                .await
                .map_err(|error| start_error("cannot read the pool's servers", error))?;
            let strategy = registry::find_pool(&inner.database, &spec.pool)
                .await
                .map(|pool| pool.strategy)
                .unwrap_or_default();
            for server in &servers {
                if server.kind == ServerKind::Docker
                    && !inner.daemons.lock().contains_key(&server.name)
                {
                    if let Err(error) = inner.daemon(server).await {
                        tracing::warn!(server = %server.name, %error, "the Docker daemon does not answer");
                    }
                }
            }
            let docker_servers: Vec<Server> = servers
                .into_iter()
                .filter(|server| server.kind == ServerKind::Docker)
                .collect();
            let chosen = schedule::choose(
                &spec.pool,
                &docker_servers,
                spec.limits,
                strategy,
                |server| inner.answering(&server.name),
            )
            .map_err(|error| StartError(format!("no_capacity: {error}")))?;
            // From here on the runtime counts against the server's capacity.
            sqlx::query("UPDATE runtimes SET server = $2 WHERE id = $1")
                .bind(&spec.runtime_id)
                .bind(&chosen.name)
                .execute(inner.database.writer())
                .await
                .map_err(|error| start_error("cannot record the chosen server", error))?;
            let daemon = inner
                .daemon(chosen)
                .await
                .map_err(|error| start_error("the Docker daemon does not answer", error))?;
            (chosen.clone(), daemon)
        };
        let image = match linked {
            Some(reference) => inner.pulled(&daemon, reference).await?,
            None if *image_pushed => {
                return Err(StartError(
                    "the version takes its image from a push, and none is linked yet".to_owned(),
                ))
            }
            None => match program {
                Some(program) => {
                    inner
                        .program_image(&daemon, bundle, sha256, program)
                        .await?
                }
                None => inner.image(&daemon, bundle, sha256).await?,
            },
        };
        // A program is not `rally-runtime`: no launcher forks it.
        let placement = match program {
            Some(_) => DockerPlacement::Container,
            None => spec.docker_placement,
        };
        let handle = match placement {
            DockerPlacement::Container => inner.run(&daemon, &spec, image).await?,
            DockerPlacement::Launcher => inner.launch(&daemon, &server, &spec, image).await?,
        };
        Ok(Placement {
            kind: PoolKind::Docker,
            pool: spec.pool.clone(),
            server: server.name,
            handle,
        })
    }

    fn stop(&self, runtime_id: &str, placement: &Placement, grace: Duration) {
        let inner = self.inner.clone();
        let runtime_id = runtime_id.to_owned();
        let placement = placement.clone();
        tokio::spawn(async move {
            if let Some((container, pid)) = launcher::parse_handle(&placement.handle) {
                inner
                    .stop_launched(&runtime_id, container, pid, grace)
                    .await;
                return;
            }
            let daemon = match inner.daemon_named(&placement.server).await {
                Ok(daemon) => daemon,
                Err(error) => {
                    tracing::warn!(runtime_id = %runtime_id, %error, "cannot reach the server to stop a runtime");
                    return;
                }
            };
            let stopped = daemon
                .docker
                .stop_container(
                    &placement.handle,
                    Some(StopContainerOptions {
                        t: Some(grace.as_secs().max(1) as i32),
                        ..Default::default()
                    }),
                )
                .await;
            if let Err(error) = stopped {
                tracing::debug!(runtime_id = %runtime_id, %error, "stopping a container");
            }
            if !inner.live.lock().contains_key(&runtime_id) {
                // Not ours to report (left by a previous run): removed here.
                remove(&daemon.docker, &placement.handle).await;
            }
        });
    }

    fn kill(&self, runtime_id: &str, placement: &Placement) {
        let inner = self.inner.clone();
        let runtime_id = runtime_id.to_owned();
        let placement = placement.clone();
        tokio::spawn(async move {
            if let Some((container, pid)) = launcher::parse_handle(&placement.handle) {
                inner
                    .stop_launched(&runtime_id, container, pid, Duration::ZERO)
                    .await;
                return;
            }
            if let Ok(daemon) = inner.daemon_named(&placement.server).await {
                let _ = daemon
                    .docker
                    .kill_container(
                        &placement.handle,
                        None::<bollard::query_parameters::KillContainerOptions>,
                    )
                    .await;
                if !inner.live.lock().contains_key(&runtime_id) {
                    remove(&daemon.docker, &placement.handle).await;
                }
            }
        });
    }

    fn is_alive(&self, runtime_id: &str, _placement: &Placement) -> bool {
        self.inner.live.lock().contains_key(runtime_id)
    }

    async fn reconcile(&self, known: &[(String, Option<Placement>)]) -> Vec<String> {
        let inner = &self.inner;
        let mut adopted = std::collections::HashSet::new();
        let servers = registry::servers(&inner.database, None)
            .await
            .unwrap_or_default();
        for server in servers
            .iter()
            .filter(|server| server.kind == ServerKind::Docker)
        {
            let daemon = match inner.daemon(server).await {
                Ok(daemon) => daemon,
                Err(error) => {
                    // Its runtimes are taken as running: the watcher reports them ended if the
                    // server stays silent.
                    tracing::warn!(server = %server.name, %error, "the Docker daemon does not answer; its runtimes wait for it");
                    for (runtime_id, placement) in known {
                        if let Some(placement) = placement.as_ref().filter(|placement| {
                            placement.kind == PoolKind::Docker && placement.server == server.name
                        }) {
                            inner.live.lock().insert(
                                runtime_id.clone(),
                                Live::placed(&server.name, &placement.handle),
                            );
                            adopted.insert(runtime_id.clone());
                        }
                    }
                    continue;
                }
            };
            let containers = match ours(&daemon.docker, &inner.node_id).await {
                Ok(containers) => containers,
                Err(error) => {
                    tracing::warn!(server = %server.name, %error, "cannot list the server's containers");
                    continue;
                }
            };
            for found in containers {
                if found.is_launcher() {
                    if found.server.as_deref() != Some(server.name.as_str()) {
                        continue;
                    }
                    let version = found.version.clone().unwrap_or_default();
                    let attached = if found.running {
                        inner
                            .adopt_launcher(&daemon, &version, &found.id, known)
                            .await
                    } else {
                        Err("it is not running".to_owned())
                    };
                    match attached {
                        Ok(runtimes) => adopted.extend(runtimes),
                        Err(error) => {
                            tracing::warn!(server = %server.name, container = %found.id, %error, "removing a launcher container from a previous run");
                            remove(&daemon.docker, &found.id).await;
                        }
                    }
                    continue;
                }
                let Some(runtime_id) = found.runtime else {
                    continue;
                };
                let container = found.id;
                let placed = known.iter().find_map(|(id, placement)| {
                    placement.as_ref().filter(|placement| {
                        *id == runtime_id
                            && placement.kind == PoolKind::Docker
                            && placement.handle == container
                    })
                });
                if placed.is_some_and(|placement| placement.server != server.name) {
                    // Another server on the same daemon: its own listing takes it.
                    continue;
                }
                let known_here = placed.is_some();
                if known_here && found.running {
                    tracing::info!(runtime_id = %runtime_id, server = %server.name, "container from a previous run adopted");
                    inner.live.lock().insert(
                        runtime_id.clone(),
                        Live {
                            server: server.name.clone(),
                            container,
                            pid: None,
                        },
                    );
                    adopted.insert(runtime_id);
                } else {
                    if known_here {
                        inner
                            .keep_output(&daemon.docker, &runtime_id, &container)
                            .await;
                    } else {
                        tracing::warn!(runtime_id = %runtime_id, container = %container, server = %server.name, "removing a container no record knows as live");
                    }
                    remove(&daemon.docker, &container).await;
                }
            }
        }
        inner
            .reconciled
            .store(true, std::sync::atomic::Ordering::Release);
        known
            .iter()
            .filter(|(runtime_id, _)| !adopted.contains(runtime_id))
            .map(|(runtime_id, _)| runtime_id.clone())
            .collect()
    }

    async fn logs(&self, runtime_id: &str) -> Vec<u8> {
        let inner = &self.inner;
        // A container of its own keeps its output until it ends; a launcher relays it here.
        let live = inner
            .live
            .lock()
            .get(runtime_id)
            .filter(|live| live.pid.is_none())
            .cloned();
        let mut log = match live {
            Some(live) => match inner.daemon_named(&live.server).await {
                Ok(daemon) => container_output(&daemon.docker, &live.container).await,
                Err(error) => {
                    format!("[platform] cannot read the container's output: {error}\n").into_bytes()
                }
            },
            None => tokio::fs::read(inner.output_path(runtime_id))
                .await
                .unwrap_or_default(),
        };
        log.extend(
            tokio::fs::read(inner.platform_lines_path(runtime_id))
                .await
                .unwrap_or_default(),
        );
        log
    }

    fn append_log(&self, runtime_id: &str, line: &str) {
        super::process::append_to_log(&self.inner.platform_lines_path(runtime_id), line);
    }

    fn tend(&self, runtime_id: &str) {
        for path in [
            self.inner.platform_lines_path(runtime_id),
            self.inner.output_path(runtime_id),
        ] {
            super::process::trim_log(&path, self.inner.log_max_bytes);
        }
    }

    fn take_exits(&self) -> Option<mpsc::Receiver<Exited>> {
        self.inner.exits_receiver.lock().take()
    }

    fn running(&self) -> usize {
        self.inner.live.lock().len()
    }

    async fn kill_all(&self) {
        let inner = &self.inner;
        let live: Vec<(String, Live)> = inner.live.lock().drain().collect();
        let launchers: Vec<(String, String)> = inner
            .launchers
            .lock()
            .drain()
            .map(|((server, _), launcher)| (server, launcher.container.clone()))
            .collect();
        let daemons = inner.daemons.lock().clone();
        inner.closed.cancel();
        let mut containers: Vec<(String, String)> = live
            .into_iter()
            .map(|(_, entry)| (entry.server, entry.container))
            .chain(launchers)
            .collect();
        containers.sort();
        containers.dedup();
        let removals = containers.into_iter().filter_map(|(server, container)| {
            let daemon = daemons.get(&server).cloned()?;
            Some(async move {
                tracing::warn!(server = %server, container = %container, "removing a runtime container at shutdown");
                remove(&daemon.docker, &container).await;
            })
        });
        futures_util::future::join_all(removals).await;
    }
}

/// Removes a container, running or not; one already gone is no error worth telling.
/// Image `tag` (`repo:tag`) imported from `root`, the tar of its one layer, with Dockerfile
/// `changes` (`ENTRYPOINT`, `ENV`, ...): nothing is pulled.
async fn import(
    docker: &Docker,
    tag: &str,
    root: Vec<u8>,
    changes: Vec<String>,
) -> Result<(), bollard::errors::Error> {
    let (repo, tag) = tag.rsplit_once(':').expect("a tag");
    let options = CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(repo.to_owned()),
        tag: Some(tag.to_owned()),
        changes,
        ..Default::default()
    };
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_full(root.into())), None);
    while let Some(step) = progress.next().await {
        step?;
    }
    Ok(())
}

async fn remove(docker: &Docker, container: &str) {
    let removed = docker
        .remove_container(
            container,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    if let Err(error) = removed {
        tracing::debug!(container, %error, "removing a container");
    }
}

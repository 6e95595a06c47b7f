//! Pools: where runtimes run. The supervisor decides which runtimes should exist; a
//! [`RuntimePool`] makes them exist somewhere and reports when they end. The local-process
//! pool ([`process::ProcessPool`]) is the embedded default; container pools plug in behind the
//! same trait.
//!
//! A runtime's [`Placement`] (the pool's kind and name, the server in it, and the pool's own
//! handle: a pid, a container id) is kept on its row, so that a platform that restarts can
//! find, watch and stop the runtimes it left running.

pub mod api;
pub mod docker;
pub mod process;
pub mod registry;
pub mod schedule;

use rally_sdk::runtime::launch::ResourceLimits;
use rally_sdk::runtime::Qualifier;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Exits a pool may have reported and the supervisor not yet recorded. When it is full the
/// pool's reporting waits (the launcher's pipe fills, the launcher waits): no exit is dropped.
/// Starts wait with it (their reports come down the same pipe) and fail after the start wait
/// if the supervisor does not catch up; the supervisor frees each exit's start turn as soon as
/// the exit leaves this queue.
pub const EXITS_QUEUE: usize = 1024;

/// Kinds of pool; the names are what the runtime rows store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Runtimes are processes on the platform's own machine.
    Process,
    /// Runtimes are containers on Docker servers.
    Docker,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "process" => Some(Self::Process),
            "docker" => Some(Self::Docker),
            _ => None,
        }
    }
}

/// Where one runtime runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub kind: PoolKind,
    /// The pool's name.
    pub pool: String,
    /// The server in the pool (for the local-process pool, this node's id).
    pub server: String,
    /// The pool's handle on the runtime: a pid, a container id.
    pub handle: String,
}

impl Placement {
    /// The process id, for a runtime of a local-process pool.
    pub fn pid(&self) -> Option<u32> {
        (self.kind == PoolKind::Process)
            .then(|| self.handle.parse().ok())
            .flatten()
    }
}

/// What a runtime is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// A version's bundle archive on this node's disk, run by `rally-runtime`, and its SHA-256
    /// (hex), which names what is made from it; and the version's image in the studio's
    /// registry (`<registry>/<repository>@<digest>`) once one is linked, which Docker pools
    /// pull and run instead of making one.
    Bundle {
        path: PathBuf,
        sha256: String,
        image: Option<String>,
        /// A program runtime's program, relative to the bundle root: it is run instead of
        /// `rally-runtime`.
        program: Option<String>,
        /// The image comes from a developer's push: none is made from the bundle.
        image_pushed: bool,
    },
}

/// Everything a pool needs to start one runtime.
#[derive(Debug, Clone)]
pub struct RuntimeSpec {
    pub runtime_id: String,
    /// The one-time secret the runtime exchanges for its tokens.
    pub secret: String,
    pub qualifier: Qualifier,
    /// Where the runtime reaches the platform.
    pub platform_url: String,
    pub artifact: Artifact,
    /// The deployment's CPU and memory limits, which the pool enforces.
    pub limits: ResourceLimits,
    /// The pool to run it in: the stage's.
    pub pool: String,
    /// How a Docker pool places it: a container of its own, or forked in its version's
    /// launcher container.
    pub docker_placement: rally_sdk::manifest::DockerPlacement,
    /// What the runtime belongs to (`rally.tenant`, `rally.deployment`, ...), for the labels
    /// of a container.
    pub labels: Vec<(String, String)>,
}

/// A runtime that ended, as its pool saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub runtime_id: String,
    /// `None` when it was ended by a signal, or when its end was found rather than seen.
    pub exit_code: Option<i32>,
    /// Why, when more is known than the code (a memory limit).
    pub reason: Option<String>,
}

/// A start the pool could not make.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl StartError {
    /// No server of the pool has room for the runtime now (its message starts with
    /// `no_capacity:`).
    pub fn is_no_capacity(&self) -> bool {
        self.0.starts_with("no_capacity:")
    }
}

/// Runs runtimes somewhere. Every method but [`RuntimePool::start`] and
/// [`RuntimePool::logs`] returns at once; work that takes time (a grace period) goes on in
/// the background.
#[async_trait::async_trait]
pub trait RuntimePool: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> PoolKind;

    /// The pool's name, stored with each runtime it places.
    fn name(&self) -> &str;

    /// Starts a runtime; returns once the pool runs it (it connects to the platform later).
    async fn start(&self, spec: RuntimeSpec) -> Result<Placement, StartError>;

    /// Ends a runtime that was told to stop: politely now (SIGTERM, `docker stop`), by force
    /// once `grace` has passed. Also for runtimes left by a previous run of the platform.
    fn stop(&self, runtime_id: &str, placement: &Placement, grace: Duration);

    /// Ends a runtime at once.
    fn kill(&self, runtime_id: &str, placement: &Placement);

    /// True while the runtime runs. Checks what the placement names, so that it also answers
    /// for runtimes left by a previous run (and a reused pid is not taken for the runtime).
    fn is_alive(&self, runtime_id: &str, placement: &Placement) -> bool;

    /// After a restart of the platform: which of `known` (this node's runtimes that its
    /// records say are not over, with their placements) no longer run. The pool also ends
    /// what it runs for this node that none of them is: a start cut short by a crash.
    async fn reconcile(&self, known: &[(String, Option<Placement>)]) -> Vec<String>;

    /// What the runtime printed, newest last, capped in size; empty when nothing is kept.
    async fn logs(&self, runtime_id: &str) -> Vec<u8>;

    /// Adds a line the runtime sent through its socket (a `log` command) to its log.
    fn append_log(&self, runtime_id: &str, line: &str);

    /// Upkeep for a live runtime, once per supervision pass (a log kept under its cap).
    fn tend(&self, runtime_id: &str);

    /// The exits of runtimes this pool started, for the supervisor; `None` after the first
    /// call.
    fn take_exits(&self) -> Option<mpsc::Receiver<Exited>>;

    /// How many runtimes this pool started and saw no end of.
    fn running(&self) -> usize;

    /// Kills every runtime it started (shutdown, after the grace period); returns once they
    /// are gone, or their removal has been tried.
    async fn kill_all(&self);
}

/// A node's pools as one: its local pool (processes; or what a test gives) for the stages of
/// the `local` pool, and the Docker pool for every other. Calls about a runtime go to the pool
/// its placement names.
#[derive(Debug)]
pub struct Pools {
    local: std::sync::Arc<dyn RuntimePool>,
    docker: docker::DockerPool,
}

impl Pools {
    pub fn new(local: std::sync::Arc<dyn RuntimePool>, docker: docker::DockerPool) -> Self {
        Self { local, docker }
    }

    fn of(&self, placement: &Placement) -> &dyn RuntimePool {
        if placement.kind == self.local.kind() && placement.pool == self.local.name() {
            self.local.as_ref()
        } else {
            &self.docker
        }
    }

    fn of_runtime(&self, runtime_id: &str) -> &dyn RuntimePool {
        if self.docker.knows(runtime_id) {
            &self.docker
        } else {
            self.local.as_ref()
        }
    }
}

#[async_trait::async_trait]
impl RuntimePool for Pools {
    fn kind(&self) -> PoolKind {
        self.local.kind()
    }

    fn name(&self) -> &str {
        self.local.name()
    }

    async fn start(&self, spec: RuntimeSpec) -> Result<Placement, StartError> {
        match registry::kind_of_pool(&spec.pool) {
            PoolKind::Process => self.local.start(spec).await,
            PoolKind::Docker => self.docker.start(spec).await,
        }
    }

    fn stop(&self, runtime_id: &str, placement: &Placement, grace: Duration) {
        self.of(placement).stop(runtime_id, placement, grace)
    }

    fn kill(&self, runtime_id: &str, placement: &Placement) {
        self.of(placement).kill(runtime_id, placement)
    }

    fn is_alive(&self, runtime_id: &str, placement: &Placement) -> bool {
        self.of(placement).is_alive(runtime_id, placement)
    }

    async fn reconcile(&self, known: &[(String, Option<Placement>)]) -> Vec<String> {
        // A runtime with no placement was cut short while starting: each pool ends what it
        // runs of it, and both call it gone.
        let (local, docker): (Vec<_>, Vec<_>) =
            known.iter().cloned().partition(|(_, placement)| {
                placement.as_ref().is_none_or(|placement| {
                    placement.kind == self.local.kind() && placement.pool == self.local.name()
                })
            });
        let unplaced: Vec<_> = local
            .iter()
            .filter(|(_, placement)| placement.is_none())
            .cloned()
            .collect();
        let mut gone = self.local.reconcile(&local).await;
        let docker_known: Vec<_> = docker.into_iter().chain(unplaced).collect();
        for runtime_id in self.docker.reconcile(&docker_known).await {
            if !gone.contains(&runtime_id) {
                gone.push(runtime_id);
            }
        }
        gone
    }

    async fn logs(&self, runtime_id: &str) -> Vec<u8> {
        self.of_runtime(runtime_id).logs(runtime_id).await
    }

    fn append_log(&self, runtime_id: &str, line: &str) {
        self.of_runtime(runtime_id).append_log(runtime_id, line)
    }

    fn tend(&self, runtime_id: &str) {
        self.of_runtime(runtime_id).tend(runtime_id)
    }

    fn take_exits(&self) -> Option<mpsc::Receiver<Exited>> {
        let sources = [self.local.take_exits()?, self.docker.take_exits()?];
        let (merged, receiver) = mpsc::channel(EXITS_QUEUE);
        for mut source in sources {
            let merged = merged.clone();
            tokio::spawn(async move {
                while let Some(exited) = source.recv().await {
                    if merged.send(exited).await.is_err() {
                        return;
                    }
                }
            });
        }
        Some(receiver)
    }

    fn running(&self) -> usize {
        self.local.running() + self.docker.running()
    }

    async fn kill_all(&self) {
        self.local.kill_all().await;
        self.docker.kill_all().await;
    }
}

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
    /// A version's bundle archive on this node's disk, run by `rally-runtime`.
    Bundle(PathBuf),
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

    /// Kills every runtime it started (shutdown, after the grace period).
    fn kill_all(&self);
}

//! This node's runtime state: its identity, its pool, and what the supervisor, the runtime
//! sockets and the routes share about the runtimes it placed.

use super::scaling::DeploymentToRun;
use crate::config::Config;
use crate::pools::docker::DockerPool;
use crate::pools::process::{self, ProcessPool};
use crate::pools::{Pools, RuntimePool};
use crate::registry::signing::TokenSigner;
use crate::storage::Database;
use crate::storage::{new_id, now_millis};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Runtime state of one platform node.
#[derive(Debug)]
pub struct Runtimes {
    pub node_id: String,
    pub(super) pool: Arc<dyn RuntimePool>,
    /// The `rally-runtime` program of this node, which checks uploaded logic.
    runtime_binary: PathBuf,
    /// Runtimes started and not yet connected hold one of these each
    /// (`runtime_starts_at_once`).
    starts: Arc<Semaphore>,
    /// The permits of runtimes not connected yet, given back when they connect or end.
    starting: Mutex<HashMap<String, OwnedSemaphorePermit>>,
    /// When each runtime's socket last closed (ms): a runtime gets the start timeout to come back.
    pub(super) disconnected_at: Mutex<HashMap<String, i64>>,
    /// When this node started (ms): runtimes of a previous run get the start timeout to reconnect.
    pub(super) started_at: i64,
    /// The URL runtimes use to reach this node, known once the listener is bound.
    pub(super) platform_url: OnceLock<String>,
    pub(super) bundle_dir: PathBuf,
    pub(super) start_timeout: Duration,
    pub(super) stop_grace: Duration,
    /// Held while a pass decides how many match runtimes to start, so that the supervisor and
    /// the match starter never both start runtimes for the same matches.
    pub(super) providing: tokio::sync::Mutex<()>,
    /// The deployments as the last supervision pass found them, for the match starter.
    pub(super) deployments: Mutex<Vec<DeploymentToRun>>,
}

impl Runtimes {
    /// The embedded default: runtimes are processes of this machine.
    pub fn new(
        config: &Config,
        database: &Database,
        registry: Arc<TokenSigner>,
    ) -> std::io::Result<Self> {
        Self::with_pool(config, database, registry, |node_id| {
            Arc::new(ProcessPool::new(
                node_id.to_owned(),
                runtime_binary(config),
                config.data_dir.join("runtimes"),
                config.runtime_log_max_bytes,
                Duration::from_secs(config.runtime_start_timeout_secs),
            ))
        })
    }

    /// Runtimes of the `local` pool placed by the pool `pool` makes for this node's id; those
    /// of other pools in containers on their Docker servers.
    pub fn with_pool(
        config: &Config,
        database: &Database,
        registry: Arc<TokenSigner>,
        pool: impl FnOnce(&str) -> Arc<dyn RuntimePool>,
    ) -> std::io::Result<Self> {
        let node_id = node_id(&config.data_dir)?;
        let docker = DockerPool::new(
            node_id.clone(),
            database.clone(),
            runtime_binary(config),
            config.docker_image_repository.clone(),
            config.program_base_image.clone(),
            registry,
            config.data_dir.join("runtimes").join("containers"),
            config.runtime_log_max_bytes,
            Duration::from_secs(config.docker_server_lost_secs),
        );
        let pool: Arc<dyn RuntimePool> = Arc::new(Pools::new(pool(&node_id), docker));
        Ok(Self {
            node_id,
            pool,
            runtime_binary: runtime_binary(config),
            starts: Arc::new(Semaphore::new(config.runtime_starts_at_once.max(1) as usize)),
            starting: Mutex::default(),
            disconnected_at: Mutex::default(),
            started_at: now_millis(),
            platform_url: OnceLock::new(),
            bundle_dir: config.data_dir.join("bundles"),
            start_timeout: Duration::from_secs(config.runtime_start_timeout_secs),
            stop_grace: Duration::from_secs(config.runtime_stop_grace_secs),
            providing: tokio::sync::Mutex::new(()),
            deployments: Mutex::default(),
        })
    }

    /// The `rally-runtime` program of this node, which also checks uploaded logic.
    pub fn runtime_binary(&self) -> &Path {
        &self.runtime_binary
    }

    /// Where runtimes reach this node; set once when serving starts.
    pub fn set_platform_url(&self, url: String) {
        let _ = self.platform_url.set(url);
    }

    /// Waits until fewer than `runtime_starts_at_once` runtimes are on their way up, or the
    /// start timeout has passed (so that a few runtimes that never connect cannot hold every
    /// start back); the turn is held by `runtime_id` until [`Self::start_over`].
    pub(super) async fn take_start_turn(&self, runtime_id: &str) {
        let permit = tokio::time::timeout(self.start_timeout, self.starts.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(permit) = permit {
            self.starting.lock().insert(runtime_id.to_owned(), permit);
        }
    }

    /// The runtime's start is over (it connected, failed or ended): another may begin.
    pub(super) fn start_over(&self, runtime_id: &str) {
        self.starting.lock().remove(runtime_id);
    }
}

/// The `rally-runtime` program: the configured one, else the one next to this program.
fn runtime_binary(config: &Config) -> PathBuf {
    config
        .runtime_binary
        .clone()
        .unwrap_or_else(process::default_runtime_binary)
}

/// This node's id, made once and kept in the data directory.
fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = new_id();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

//! The local-process pool, the embedded default: each runtime is a `rally-runtime` child process
//! of the platform. Its output goes straight to a log file per runtime (not through a pipe, so a
//! runtime outlives a crash of the platform and keeps logging); its exit is reported to the
//! supervisor; stopping asks nicely (SIGTERM) before it insists (SIGKILL). Every child is
//! awaited, so none is left a zombie.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What a runtime process needs to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub runtime_id: String,
    pub secret: String,
    pub qualifier: &'static str,
    pub platform_url: String,
    /// The version's bundle archive on local disk.
    pub bundle: PathBuf,
}

/// A child that ended: its runtime and how.
#[derive(Debug, Clone)]
pub struct Exited {
    pub runtime_id: String,
    /// `None` when it was ended by a signal.
    pub exit_code: Option<i32>,
}

#[derive(Debug)]
pub struct ProcessPool {
    binary: PathBuf,
    log_dir: PathBuf,
    log_max_bytes: u64,
    /// Running children by runtime id: their pids.
    children: Arc<Mutex<HashMap<String, u32>>>,
    exits: mpsc::UnboundedSender<Exited>,
    /// Children started and not yet connected hold one of these each (see
    /// `runtime_starts_at_once`).
    starts: Arc<Semaphore>,
    /// The permits of those children, given back when they connect or end.
    starting: Arc<Mutex<HashMap<String, OwnedSemaphorePermit>>>,
    /// Longest wait for a permit: past it a runtime starts anyway, so a few runtimes that
    /// never connect cannot hold every start back.
    start_wait: Duration,
}

impl ProcessPool {
    pub fn new(
        binary: PathBuf,
        log_dir: PathBuf,
        log_max_bytes: u64,
        exits: mpsc::UnboundedSender<Exited>,
        starts_at_once: u32,
        start_wait: Duration,
    ) -> Self {
        Self {
            binary,
            log_dir,
            log_max_bytes,
            children: Arc::default(),
            exits,
            starts: Arc::new(Semaphore::new(starts_at_once.max(1) as usize)),
            starting: Arc::default(),
            start_wait,
        }
    }

    /// Waits until fewer than `runtime_starts_at_once` children are on their way up (or the
    /// start timeout has passed); the permit goes to [`Self::spawn`].
    pub async fn start_slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.start_wait, self.starts.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The runtime has connected: its start is over, and another may begin.
    pub fn connected(&self, runtime_id: &str) {
        self.starting.lock().expect("pool lock").remove(runtime_id);
    }

    pub fn log_max_bytes(&self) -> u64 {
        self.log_max_bytes
    }

    pub fn log_path(&self, runtime_id: &str) -> PathBuf {
        self.log_dir.join(format!("{runtime_id}.log"))
    }

    /// Starts the runtime's process and returns its pid. `slot` (from [`Self::start_slot`]) is
    /// held until the runtime connects or its process ends.
    pub async fn spawn(
        &self,
        spec: ProcessSpec,
        slot: Option<OwnedSemaphorePermit>,
    ) -> std::io::Result<u32> {
        tokio::fs::create_dir_all(&self.log_dir).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&spec.runtime_id))?;
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(rally_sdk::runtime::env::RUNTIME_ID, &spec.runtime_id)
            .env(rally_sdk::runtime::env::RUNTIME_SECRET, &spec.secret)
            .env(rally_sdk::runtime::env::QUALIFIER, spec.qualifier)
            .env(rally_sdk::runtime::env::PLATFORM_URL, &spec.platform_url)
            .env(rally_sdk::runtime::env::BUNDLE, &spec.bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // A platform that is dropped without its shutdown (an embedding or a test that
            // just ends) takes its runtimes along; a crash cannot drop anything, so after a
            // crash they live on and reconnect.
            .kill_on_drop(true);
        // Held from before the process exists, so that even the quickest connection finds it.
        if let Some(slot) = slot {
            self.starting
                .lock()
                .expect("pool lock")
                .insert(spec.runtime_id.clone(), slot);
        }
        // Spawning waits for the child's exec, which takes a while under load: off the async
        // threads, so that a burst of starts proceeds side by side and nothing waits behind it.
        let spawned = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .map_err(std::io::Error::other)
            .and_then(|spawned| spawned);
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                self.starting
                    .lock()
                    .expect("pool lock")
                    .remove(&spec.runtime_id);
                return Err(error);
            }
        };
        let pid = child.id().unwrap_or_default();
        self.children
            .lock()
            .expect("pool lock")
            .insert(spec.runtime_id.clone(), pid);

        let children = self.children.clone();
        let starting = self.starting.clone();
        let exits = self.exits.clone();
        let runtime_id = spec.runtime_id;
        tokio::spawn(async move {
            // Awaiting the child reaps it: no zombies.
            let status = child.wait().await;
            children.lock().expect("pool lock").remove(&runtime_id);
            starting.lock().expect("pool lock").remove(&runtime_id);
            let exit_code = status.ok().and_then(|status| status.code());
            let _ = exits.send(Exited {
                runtime_id,
                exit_code,
            });
        });
        Ok(pid)
    }

    /// True while the runtime's process is a child of this pool.
    pub fn is_running(&self, runtime_id: &str) -> bool {
        self.children
            .lock()
            .expect("pool lock")
            .contains_key(runtime_id)
    }

    /// SIGTERM now, SIGKILL after `grace` if it is still there.
    pub fn terminate(&self, runtime_id: &str, grace: Duration) {
        let Some(pid) = self
            .children
            .lock()
            .expect("pool lock")
            .get(runtime_id)
            .copied()
        else {
            return;
        };
        signal(pid, Signal::SIGTERM);
        let children = self.children.clone();
        let runtime_id = runtime_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_there = children.lock().expect("pool lock").get(&runtime_id) == Some(&pid);
            if still_there {
                tracing::warn!(runtime_id = %runtime_id, "runtime ignored SIGTERM; killing it");
                signal(pid, Signal::SIGKILL);
            }
        });
    }

    /// Kills every child at once (platform shutdown after the grace period).
    pub fn kill_all(&self) {
        for pid in self.children.lock().expect("pool lock").values() {
            signal(*pid, Signal::SIGKILL);
        }
    }

    /// Pids of the children still running.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .lock()
            .expect("pool lock")
            .values()
            .copied()
            .collect()
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Err(error) = kill(Pid::from_raw(pid as i32), signal) {
        tracing::debug!(pid, %error, "cannot signal runtime process");
    }
}

/// True when a process with `pid` exists and runs `runtime_id` (checked through /proc, so a
/// recycled pid is not mistaken for the runtime).
pub fn is_runtime_process(pid: u32, runtime_id: &str) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let wanted = format!("{}={runtime_id}", rally_sdk::runtime::env::RUNTIME_ID);
    environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// Ends a process this platform started before a crash (it is no longer our child).
pub fn kill_orphan(pid: u32) {
    signal(pid, Signal::SIGKILL);
}

/// Keeps a runtime's log under its cap: past it, only the newest half stays. (The runtime
/// appends to the file itself; lines written while it is cut may be lost, which a log can
/// afford.)
pub fn trim_log(path: &Path, max_bytes: u64) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.len() <= max_bytes {
        return;
    }
    let Ok(content) = std::fs::read(path) else {
        return;
    };
    let keep_from = content.len().saturating_sub((max_bytes / 2) as usize);
    let start = content[keep_from..]
        .iter()
        .position(|byte| *byte == b'\n')
        .map_or(keep_from, |offset| keep_from + offset + 1);
    if let Err(error) = std::fs::write(path, &content[start..]) {
        tracing::debug!(%error, "cannot trim a runtime log");
    }
}

/// The `rally-runtime` binary to start: next to the running `rally` binary (or one level up,
/// for test binaries in `target/*/deps`), else from `PATH`.
pub fn default_runtime_binary() -> PathBuf {
    let name = "rally-runtime";
    if let Ok(exe) = std::env::current_exe() {
        for directory in exe.ancestors().skip(1).take(2) {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    Path::new(name).to_path_buf()
}

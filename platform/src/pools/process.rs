//! The local-process pool, the embedded default: each runtime is a `rally-runtime` process of
//! its own on this machine. The pool keeps one `rally-runtime launcher` child, which forks each
//! runtime from itself (see the runtime host's `launcher`): a fork starts in a fraction of the
//! time a new program takes to load. The launcher reports each runtime's pid and exit; the pool
//! signals runtimes by pid. A runtime's output goes straight to a log file of its own (not
//! through a pipe, so a runtime outlives a crash of the platform and keeps logging); its exit is
//! reported to the supervisor; stopping asks nicely (SIGTERM) before it insists (SIGKILL).
//!
//! If the launcher itself ends, the runtimes it started live on as orphans: the supervisor
//! watches them by pid, as it does runtimes left by a previous run, and the next start brings
//! up a new launcher.

use super::{Artifact, Exited, Placement, PoolKind, RuntimePool, RuntimeSpec, StartError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use rally_sdk::runtime::launch::{self, Report, Start};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

/// The name of the local-process pool.
pub const NAME: &str = "local";

#[derive(Debug)]
pub struct ProcessPool {
    /// This node's id: the one server of the pool.
    node_id: String,
    binary: PathBuf,
    log_dir: PathBuf,
    log_max_bytes: u64,
    /// The launcher's standard input and number, once it runs; `None` before the first
    /// start and after the launcher ended.
    launcher: tokio::sync::Mutex<Option<(u64, ChildStdin)>>,
    /// Launchers started so far.
    launchers: std::sync::atomic::AtomicU64,
    processes: Arc<Processes>,
    /// The exits, until the supervisor takes them.
    exits: Mutex<Option<mpsc::Receiver<Exited>>>,
    /// Longest wait for the launcher to report a start.
    start_wait: Duration,
}

/// The runtime processes of the current launcher, shared with the task that reads its reports.
#[derive(Debug)]
struct Processes {
    exits: mpsc::Sender<Exited>,
    state: Mutex<ProcessState>,
}

#[derive(Debug, Default)]
struct ProcessState {
    /// Running runtimes: their pids.
    pids: HashMap<String, u32>,
    /// The same by pid: the runtime, and the launcher (by number) that started it.
    runtimes: HashMap<u32, (String, u64)>,
    /// Starts sent to a launcher (by its number) and not reported yet.
    reports: HashMap<String, (u64, oneshot::Sender<Result<u32, String>>)>,
}

impl Processes {
    fn state(&self) -> parking_lot::MutexGuard<'_, ProcessState> {
        self.state.lock()
    }

    /// A report of launcher number `launcher`; an exit is returned, to be sent on to the
    /// supervisor.
    fn report(&self, launcher: u64, report: Report) -> Option<Exited> {
        let mut state = self.state();
        match report {
            Report::Started { runtime_id, pid } => {
                state.pids.insert(runtime_id.clone(), pid);
                state.runtimes.insert(pid, (runtime_id.clone(), launcher));
                if let Some((_, waiting)) = state.reports.remove(&runtime_id) {
                    let _ = waiting.send(Ok(pid));
                }
            }
            Report::Failed { runtime_id, error } => {
                if let Some((_, waiting)) = state.reports.remove(&runtime_id) {
                    let _ = waiting.send(Err(error));
                }
            }
            Report::Exited {
                pid,
                exit_code,
                reason,
            } => {
                let (runtime_id, _) = state.runtimes.remove(&pid)?;
                state.pids.remove(&runtime_id);
                return Some(Exited {
                    runtime_id,
                    exit_code,
                    reason,
                });
            }
            // Every start names a log file, and this pool never asks for a list.
            Report::Output { .. } | Report::Running { .. } => {}
        }
        None
    }

    /// Launcher number `launcher` ended: its runtimes are no longer reported on, so the pool
    /// lets go of them (the supervisor watches them by pid), and starts it had not answered
    /// fail.
    fn orphan(&self, launcher: u64) {
        let mut state = self.state();
        let orphans: Vec<u32> = state
            .runtimes
            .iter()
            .filter(|(_, (_, by))| *by == launcher)
            .map(|(pid, _)| *pid)
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(
                runtimes = orphans.len(),
                "the runtime launcher ended; its runtimes are watched by pid"
            );
        }
        for pid in orphans {
            if let Some((runtime_id, _)) = state.runtimes.remove(&pid) {
                state.pids.remove(&runtime_id);
            }
        }
        state.reports.retain(|_, (by, _)| *by != launcher);
    }

    fn kill_all(&self) {
        for pid in self.state().pids.values() {
            signal(*pid, Signal::SIGKILL);
        }
    }
}

/// Held by the task that reads the launcher: a platform that is dropped without its shutdown
/// (an embedding or a test that just ends) takes its runtimes along. A crash drops nothing, so
/// after a crash they live on and reconnect.
struct KillOnDrop(Option<Arc<Processes>>);

impl KillOnDrop {
    fn processes(&self) -> &Processes {
        self.0.as_ref().expect("armed until the launcher ends")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(processes) = self.0.take() {
            processes.kill_all();
        }
    }
}

impl ProcessPool {
    /// The `rally-runtime` program this pool starts.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn new(
        node_id: String,
        binary: PathBuf,
        log_dir: PathBuf,
        log_max_bytes: u64,
        start_wait: Duration,
    ) -> Self {
        let (exits, exits_receiver) = mpsc::channel(super::EXITS_QUEUE);
        Self {
            node_id,
            binary,
            log_dir,
            log_max_bytes,
            launcher: tokio::sync::Mutex::new(None),
            launchers: std::sync::atomic::AtomicU64::new(0),
            processes: Arc::new(Processes {
                exits,
                state: Mutex::default(),
            }),
            exits: Mutex::new(Some(exits_receiver)),
            start_wait,
        }
    }

    /// The same pool with room for `capacity` unread exits instead of
    /// [`super::EXITS_QUEUE`].
    pub fn with_exits_queue(mut self, capacity: usize) -> Self {
        let (exits, exits_receiver) = mpsc::channel(capacity);
        self.processes = Arc::new(Processes {
            exits,
            state: Mutex::default(),
        });
        self.exits = Mutex::new(Some(exits_receiver));
        self
    }

    fn log_path(&self, runtime_id: &str) -> PathBuf {
        self.log_dir.join(format!("{runtime_id}.log"))
    }

    /// Starts the runtime's process and returns its pid.
    async fn spawn(&self, spec: RuntimeSpec) -> std::io::Result<u32> {
        let Artifact::Bundle {
            path: bundle,
            program,
            ..
        } = spec.artifact;
        // A program runtime runs its program among the bundle's files, unpacked once.
        let (bundle, program) = match program {
            Some(program) => {
                let directory = crate::images::unpacked(&bundle).await?;
                let program = directory.join(&program);
                (directory, Some(program))
            }
            None => (bundle, None),
        };
        tokio::fs::create_dir_all(&self.log_dir).await?;
        let runtime_id = spec.runtime_id.clone();
        let mut line = serde_json::to_vec(&Start {
            log: Some(self.log_path(&spec.runtime_id)),
            runtime_id: spec.runtime_id,
            secret: spec.secret,
            qualifier: spec.qualifier,
            platform_url: spec.platform_url.clone(),
            bundle,
            limits: Some(spec.limits),
            program,
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let (report, reported) = oneshot::channel();
        {
            let mut state = self.processes.state();
            // The launcher's number is set when the start is sent.
            state.reports.insert(runtime_id.clone(), (0, report));
        }
        let sent = self.send(&runtime_id, &line, &spec.platform_url).await;
        let outcome = match sent {
            Ok(()) => match tokio::time::timeout(self.start_wait, reported).await {
                Ok(Ok(Ok(pid))) => Ok(pid),
                Ok(Ok(Err(error))) => Err(std::io::Error::other(error)),
                Ok(Err(_)) => Err(std::io::Error::other(
                    "the runtime launcher ended before it started the runtime",
                )),
                Err(_) => Err(std::io::Error::other(
                    "the runtime launcher did not start the runtime in time",
                )),
            },
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            self.processes.state().reports.remove(&runtime_id);
        }
        outcome
    }

    /// Hands a start to the launcher, bringing one up first if none runs.
    async fn send(&self, runtime_id: &str, line: &[u8], platform_url: &str) -> std::io::Result<()> {
        let mut launcher = self.launcher.lock().await;
        for _ in 0..2 {
            if launcher.is_none() {
                *launcher = Some(self.start_launcher(platform_url).await?);
            }
            let (number, stdin) = launcher.as_mut().expect("a launcher runs");
            if let Some((sent_to, _)) = self.processes.state().reports.get_mut(runtime_id) {
                *sent_to = *number;
            }
            if stdin.write_all(line).await.is_ok() {
                return Ok(());
            }
            // It ended (its reader lets go of its runtimes): once more, with a new one.
            *launcher = None;
        }
        Err(std::io::Error::other(
            "the runtime launcher ends as it starts; see launcher.log",
        ))
    }

    async fn start_launcher(&self, platform_url: &str) -> std::io::Result<(u64, ChildStdin)> {
        let number = self
            .launchers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join("launcher.log"))?;
        let mut child = Command::new(&self.binary)
            .arg(launch::COMMAND)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // Not read by the launcher; it names the platform a runtime process belongs to
            // for whoever looks at the process.
            .env(rally_sdk::runtime::env::PLATFORM_URL, platform_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        tracing::info!(pid = child.id(), "runtime launcher started");
        let processes = self.processes.clone();
        tokio::spawn(async move {
            let mut guard = KillOnDrop(Some(processes));
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Report>(&line) {
                    Ok(report) => {
                        if let Some(exited) = guard.processes().report(number, report) {
                            // A full queue holds this reader (and so the launcher) back
                            // rather than lose the exit; gone only when the platform is.
                            let _ = guard.processes().exits.send(exited).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "unreadable report from the runtime launcher")
                    }
                }
            }
            // Awaiting the launcher reaps it.
            let status = child.wait().await;
            tracing::warn!(?status, "the runtime launcher ended");
            // Nothing of this launcher is left to kill.
            if let Some(processes) = guard.0.take() {
                processes.orphan(number);
            }
        });
        Ok((number, stdin))
    }

    /// True while the runtime's process is one this pool started and saw no end of.
    fn is_child(&self, runtime_id: &str) -> bool {
        self.processes.state().pids.contains_key(runtime_id)
    }

    /// SIGTERM now, SIGKILL after `grace` if it is still there.
    fn terminate(&self, runtime_id: &str, grace: Duration) {
        let Some(pid) = self.processes.state().pids.get(runtime_id).copied() else {
            return;
        };
        signal(pid, Signal::SIGTERM);
        let processes = self.processes.clone();
        let runtime_id = runtime_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_there = processes.state().pids.get(&runtime_id) == Some(&pid);
            if still_there {
                tracing::warn!(runtime_id = %runtime_id, "runtime ignored SIGTERM; killing it");
                signal(pid, Signal::SIGKILL);
            }
        });
    }
}

#[async_trait::async_trait]
impl RuntimePool for ProcessPool {
    fn kind(&self) -> PoolKind {
        PoolKind::Process
    }

    fn name(&self) -> &str {
        NAME
    }

    async fn start(&self, spec: RuntimeSpec) -> Result<Placement, StartError> {
        let pid = self
            .spawn(spec)
            .await
            .map_err(|error| StartError(format!("cannot start the runtime process: {error}")))?;
        Ok(Placement {
            kind: PoolKind::Process,
            pool: NAME.to_owned(),
            server: self.node_id.clone(),
            handle: pid.to_string(),
        })
    }

    fn stop(&self, runtime_id: &str, placement: &Placement, grace: Duration) {
        if self.is_child(runtime_id) {
            self.terminate(runtime_id, grace);
            return;
        }
        // Left by a previous run of this node, or by a launcher that ended: not our child,
        // ended by pid once it is sure the pid is still the runtime's.
        let Some(pid) = placement.pid() else {
            return;
        };
        if is_runtime_process(pid, runtime_id) {
            signal(pid, Signal::SIGTERM);
            let runtime_id = runtime_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if is_runtime_process(pid, &runtime_id) {
                    signal(pid, Signal::SIGKILL);
                }
            });
        }
    }

    fn kill(&self, runtime_id: &str, placement: &Placement) {
        if let Some(pid) = self.processes.state().pids.get(runtime_id).copied() {
            signal(pid, Signal::SIGKILL);
        } else if let Some(pid) = placement.pid() {
            if is_runtime_process(pid, runtime_id) {
                signal(pid, Signal::SIGKILL);
            }
        }
    }

    fn is_alive(&self, runtime_id: &str, placement: &Placement) -> bool {
        self.is_child(runtime_id)
            || placement
                .pid()
                .is_some_and(|pid| is_runtime_process(pid, runtime_id))
    }

    async fn reconcile(&self, known: &[(String, Option<Placement>)]) -> Vec<String> {
        let gone = known
            .iter()
            .filter(|(runtime_id, placement)| {
                !placement
                    .as_ref()
                    .is_some_and(|placement| self.is_alive(runtime_id, placement))
            })
            .map(|(runtime_id, _)| runtime_id.clone())
            .collect();
        for (pid, runtime_id) in runtime_processes(&self.log_dir) {
            if !known.iter().any(|(known, _)| *known == runtime_id) {
                tracing::warn!(runtime_id = %runtime_id, pid, "a runtime no record knows as live; ending it");
                signal(pid, Signal::SIGKILL);
            }
        }
        gone
    }

    async fn logs(&self, runtime_id: &str) -> Vec<u8> {
        tokio::fs::read(self.log_path(runtime_id))
            .await
            .unwrap_or_default()
    }

    fn append_log(&self, runtime_id: &str, line: &str) {
        append_to_log(&self.log_path(runtime_id), line);
    }

    fn tend(&self, runtime_id: &str) {
        trim_log(&self.log_path(runtime_id), self.log_max_bytes);
    }

    fn take_exits(&self) -> Option<mpsc::Receiver<Exited>> {
        self.exits.lock().take()
    }

    fn running(&self) -> usize {
        self.processes.state().pids.len()
    }

    async fn kill_all(&self) {
        self.processes.kill_all();
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Err(error) = kill(Pid::from_raw(pid as i32), signal) {
        tracing::debug!(pid, %error, "cannot signal runtime process");
    }
}

/// True when a process with `pid` exists and runs `runtime_id` (checked through /proc, so a
/// recycled pid is not mistaken for the runtime): its standard error is the runtime's log.
/// A runtime forked by a launcher shares the launcher's environment; one started as a program
/// of its own (by an earlier platform) also carries its id in its environment.
fn is_runtime_process(pid: u32, runtime_id: &str) -> bool {
    let log_name = format!("{runtime_id}.log");
    let logs_to_its_file = standard_error(pid)
        .is_some_and(|target| target.file_name() == Some(std::ffi::OsStr::new(&log_name)));
    if logs_to_its_file {
        return true;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let wanted = format!("{}={runtime_id}", rally_sdk::runtime::env::RUNTIME_ID);
    environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// The file process `pid`'s standard error is open on (also when it was deleted since).
fn standard_error(pid: u32) -> Option<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
    let target = target.to_string_lossy();
    Some(PathBuf::from(
        target.strip_suffix(" (deleted)").unwrap_or(&target),
    ))
}

/// The processes whose standard error is a runtime's log in `log_dir`, with that runtime's id:
/// this node's runtime processes, whoever started them.
fn runtime_processes(log_dir: &Path) -> Vec<(u32, String)> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let log_dir = std::fs::canonicalize(log_dir).unwrap_or_else(|_| log_dir.to_owned());
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let target = standard_error(pid)?;
            if target.parent() != Some(log_dir.as_path()) {
                return None;
            }
            let runtime_id = target.file_name()?.to_str()?.strip_suffix(".log")?;
            uuid::Uuid::parse_str(runtime_id).ok()?;
            Some((pid, runtime_id.to_owned()))
        })
        .collect()
}

/// Appends `text` to a runtime's log file, made (with its directory) if need be. A line that
/// cannot be written is dropped: a log can afford it.
pub(crate) fn append_to_log(path: &Path, text: &str) {
    use std::io::Write;
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(problem) = written {
        tracing::debug!(path = %path.display(), %problem, "cannot write a runtime log line");
    }
}

/// Keeps a runtime's log under its cap: past it, only the newest half stays. (The runtime
/// appends to the file itself; lines written while it is cut may be lost, which a log can
/// afford.)
pub(crate) fn trim_log(path: &Path, max_bytes: u64) {
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

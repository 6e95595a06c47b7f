//! Launcher placement: one long-lived container per server and version runs `rally-runtime
//! launcher`, and each runtime of that version on that server is forked inside it. A start is
//! a line on the container's standard input and a fork: milliseconds, where a container of its
//! own costs a container start (hundreds of milliseconds on a busy daemon).
//!
//! The platform attaches to the container's standard input and output. Neither the runtimes'
//! pids nor files inside the container are reachable from here, so the launcher signals its
//! runtimes when asked, lists them after a restart of the platform, and relays their output,
//! which is kept in the runtime's log file on this node as it arrives.
//!
//! The container has the server's whole capacity as its limits; each runtime's memory limit is
//! the launcher's `RLIMIT_DATA` for it (a Docker container may not make cgroups of its own), and
//! its CPU share is not enforced separately: the runtimes of one version share their
//! container's. A launcher with no runtime for [`IDLE`] is removed.

use super::{
    remove, start_error, Daemon, Inner, Live, BUNDLE_PATH, LAUNCHER_LABEL, MANAGED_LABEL,
    NODE_LABEL, PIDS_LIMIT, RUNTIME_USER, SERVER_LABEL,
};
use crate::pools::{RuntimeSpec, StartError};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions};
use futures_util::StreamExt;
use parking_lot::Mutex;
use rally_sdk::runtime::launch::{
    ListRuntimes, Report, Request, RunningRuntime, SignalRuntime, Start,
};
use rally_sdk::wire::Server;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// A launcher container with no runtime this long is removed.
const IDLE: Duration = Duration::from_secs(60);

/// Longest wait for a launcher to answer a start or a list.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Label naming the version a launcher container serves.
pub(super) const VERSION_LABEL: &str = "rally.version";

/// Launcher containers of this node, by server and version.
pub(super) type Launchers = Mutex<HashMap<(String, String), Arc<LauncherContainer>>>;

/// One launcher container and the platform's end of its standard input and output.
pub(super) struct LauncherContainer {
    server: String,
    version: String,
    pub(super) container: String,
    input: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for LauncherContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherContainer")
            .field("server", &self.server)
            .field("version", &self.version)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Starts sent and not answered yet, by runtime id.
    starting: HashMap<String, oneshot::Sender<Result<u32, String>>>,
    /// Runtimes it runs: runtime id by pid.
    running: HashMap<u32, String>,
    /// A list asked for and not answered yet.
    listing: Option<oneshot::Sender<Vec<RunningRuntime>>>,
    /// Starts sent so far: an idle check that sees the same number saw no start in between.
    starts: u64,
    /// Its output ended, or it was removed as idle: it takes no more starts.
    ended: bool,
}

impl LauncherContainer {
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    async fn send(&self, request: &Request) -> Result<(), String> {
        let mut line = serde_json::to_vec(request).map_err(|error| error.to_string())?;
        line.push(b'\n');
        let mut input = self.input.lock().await;
        input
            .write_all(&line)
            .await
            .and(input.flush().await)
            .map_err(|error| format!("cannot write to the launcher container: {error}"))
    }

    /// Asks the launcher to end runtime `runtime_id` (pid `pid`): politely, or at once.
    pub(super) async fn signal(&self, runtime_id: &str, pid: u32, kill: bool) {
        let request = Request::Signal {
            signal: SignalRuntime {
                runtime_id: runtime_id.to_owned(),
                pid,
                kill,
            },
        };
        if let Err(error) = self.send(&request).await {
            tracing::debug!(runtime_id, %error, "cannot signal a runtime in its launcher");
        }
    }

    /// Whether pid `pid` is still `runtime_id` in this launcher.
    pub(super) fn runs(&self, runtime_id: &str, pid: u32) -> bool {
        self.state()
            .running
            .get(&pid)
            .is_some_and(|running| running == runtime_id)
    }

    /// What the launcher runs, as it says.
    async fn list(&self) -> Result<Vec<RunningRuntime>, String> {
        let (answer, answered) = oneshot::channel();
        self.state().listing = Some(answer);
        self.send(&Request::List {
            list: ListRuntimes::default(),
        })
        .await?;
        tokio::time::timeout(ANSWER_WAIT, answered)
            .await
            .map_err(|_| "the launcher did not list its runtimes in time".to_owned())?
            .map_err(|_| "the launcher container ended".to_owned())
    }
}

/// A launcher runtime's placement handle: `<container>/<pid>`.
pub(super) fn handle(container: &str, pid: u32) -> String {
    format!("{container}/{pid}")
}

/// Parses a launcher runtime's placement handle (see [`handle`]).
pub(super) fn parse_handle(handle: &str) -> Option<(&str, u32)> {
    let (container, pid) = handle.split_once('/')?;
    Some((container, pid.parse().ok()?))
}

impl Inner {
    /// Starts the runtime in its version's launcher container on `server` (made first if there
    /// is none); returns its placement handle.
    pub(super) async fn launch(
        self: &Arc<Self>,
        daemon: &Arc<Daemon>,
        server: &Server,
        spec: &RuntimeSpec,
        image: String,
    ) -> Result<String, StartError> {
        let version = spec
            .labels
            .iter()
            .find(|(label, _)| label == VERSION_LABEL)
            .map_or_else(|| image.clone(), |(_, version)| version.clone());
        let platform_url = daemon
            .endpoint
            .platform_url
            .clone()
            .unwrap_or_else(|| spec.platform_url.clone());
        let start = Request::Start(Box::new(Start {
            runtime_id: spec.runtime_id.clone(),
            secret: spec.secret.clone(),
            qualifier: spec.qualifier,
            platform_url,
            bundle: BUNDLE_PATH.into(),
            log: None,
            limits: Some(spec.limits),
            program: None,
        }));
        // A launcher that ends as the start is sent (removed as idle, its container gone):
        // once more with a new one.
        for _ in 0..2 {
            let launcher = self.launcher_for(daemon, server, &version, &image).await?;
            let (answer, answered) = oneshot::channel();
            {
                let mut state = launcher.state();
                if state.ended {
                    continue;
                }
                state.starts += 1;
                state.starting.insert(spec.runtime_id.clone(), answer);
            }
            if let Err(error) = launcher.send(&start).await {
                launcher.state().starting.remove(&spec.runtime_id);
                return Err(StartError(error));
            }
            let started = match tokio::time::timeout(ANSWER_WAIT, answered).await {
                Ok(Ok(Ok(pid))) => Ok(pid),
                Ok(Ok(Err(error))) => Err(start_error(
                    "the launcher could not start the runtime",
                    error,
                )),
                Ok(Err(_)) => Err(StartError(
                    "the launcher container ended before it started the runtime".to_owned(),
                )),
                Err(_) => {
                    launcher.state().starting.remove(&spec.runtime_id);
                    Err(StartError(
                        "the launcher did not start the runtime in time".to_owned(),
                    ))
                }
            };
            let pid = match started {
                Ok(pid) => pid,
                Err(error) => {
                    self.idle_check(daemon.clone(), launcher);
                    return Err(error);
                }
            };
            return Ok(handle(&launcher.container, pid));
        }
        Err(StartError(
            "the launcher container ends as it starts; see its logs".to_owned(),
        ))
    }

    /// The launcher container of `version` on `server`, made, attached to and started if
    /// there is none.
    async fn launcher_for(
        self: &Arc<Self>,
        daemon: &Arc<Daemon>,
        server: &Server,
        version: &str,
        image: &str,
    ) -> Result<Arc<LauncherContainer>, StartError> {
        let key = (server.name.clone(), version.to_owned());
        let usable = |launchers: &Launchers| {
            launchers
                .lock()
                .get(&key)
                .filter(|launcher| !launcher.state().ended)
                .cloned()
        };
        if let Some(launcher) = usable(&self.launchers) {
            return Ok(launcher);
        }
        let _one_at_a_time = self.launching.lock().await;
        if let Some(launcher) = usable(&self.launchers) {
            return Ok(launcher);
        }
        let container = self.create_launcher(daemon, server, version, image).await?;
        let attached = self.attach(daemon, version, &container).await;
        let launcher = match attached {
            Ok(launcher) => launcher,
            Err(error) => {
                remove(&daemon.docker, &container).await;
                return Err(error);
            }
        };
        if let Err(error) = daemon.docker.start_container(&container, None).await {
            launcher.state().ended = true;
            remove(&daemon.docker, &container).await;
            return Err(start_error("cannot start the launcher container", error));
        }
        tracing::info!(server = %server.name, version, container = %container, "launcher container started");
        self.launchers.lock().insert(key, launcher.clone());
        Ok(launcher)
    }

    async fn create_launcher(
        &self,
        daemon: &Daemon,
        server: &Server,
        version: &str,
        image: &str,
    ) -> Result<String, StartError> {
        let labels = HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (NODE_LABEL.to_owned(), self.node_id.clone()),
            (SERVER_LABEL.to_owned(), server.name.clone()),
            ("rally.pool".to_owned(), server.pool.clone()),
            (LAUNCHER_LABEL.to_owned(), image.to_owned()),
            (VERSION_LABEL.to_owned(), version.to_owned()),
        ]);
        let capacity = &server.capacity;
        let memory = capacity
            .memory_mb
            .map(|memory_mb| i64::from(memory_mb) * 1024 * 1024);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec![rally_sdk::runtime::launch::COMMAND.to_owned()]),
            user: Some(RUNTIME_USER.to_owned()),
            labels: Some(labels),
            open_stdin: Some(true),
            // The platform may detach (a crash) and attach again: input stays open.
            stdin_once: Some(false),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(false),
            host_config: Some(daemon.confined(
                capacity.cpu_millis,
                memory,
                PIDS_LIMIT * i64::from(capacity.runtimes.unwrap_or(1).max(1)),
            )),
            ..Default::default()
        };
        daemon
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(format!("rally-launcher-{}", crate::storage::new_id())),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map(|created| created.id)
            .map_err(|error| start_error("cannot create the launcher container", error))
    }

    /// Attaches to a launcher container's standard input and output, and reads its reports
    /// until its output ends.
    async fn attach(
        self: &Arc<Self>,
        daemon: &Arc<Daemon>,
        version: &str,
        container: &str,
    ) -> Result<Arc<LauncherContainer>, StartError> {
        let attached = daemon
            .docker
            .attach_container(
                container,
                Some(AttachContainerOptions {
                    stdin: true,
                    stdout: true,
                    stream: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|error| start_error("cannot attach to the launcher container", error))?;
        let launcher = Arc::new(LauncherContainer {
            server: daemon.server.clone(),
            version: version.to_owned(),
            container: container.to_owned(),
            input: tokio::sync::Mutex::new(attached.input),
            state: Mutex::default(),
        });
        tokio::spawn(read_reports(
            self.clone(),
            daemon.clone(),
            launcher.clone(),
            attached.output,
        ));
        Ok(launcher)
    }

    /// After a restart of the platform: attaches to this node's running launcher container
    /// of `version` on the daemon's server, adopts the runtimes of `known` it runs (by runtime
    /// id and handle) and ends the others; returns the runtimes adopted.
    pub(super) async fn adopt_launcher(
        self: &Arc<Self>,
        daemon: &Arc<Daemon>,
        version: &str,
        container: &str,
        known: &[(String, Option<crate::pools::Placement>)],
    ) -> Result<Vec<String>, String> {
        let launcher = self
            .attach(daemon, version, container)
            .await
            .map_err(|error| error.0)?;
        self.launchers.lock().insert(
            (daemon.server.clone(), version.to_owned()),
            launcher.clone(),
        );
        let listed = launcher.list().await?;
        let mut adopted = Vec::new();
        for RunningRuntime { runtime_id, pid } in listed {
            let placed = handle(container, pid);
            let is_known = known.iter().any(|(id, placement)| {
                *id == runtime_id
                    && placement
                        .as_ref()
                        .is_some_and(|placement| placement.handle == placed)
            });
            if is_known {
                tracing::info!(runtime_id = %runtime_id, server = %daemon.server, "runtime of a launcher container adopted");
                launcher.state().running.insert(pid, runtime_id.clone());
                self.live.lock().insert(
                    runtime_id.clone(),
                    Live {
                        server: daemon.server.clone(),
                        container: container.to_owned(),
                        pid: Some(pid),
                    },
                );
                adopted.push(runtime_id);
            } else {
                tracing::warn!(runtime_id = %runtime_id, container, "ending a runtime no record knows as live");
                launcher.state().running.insert(pid, runtime_id.clone());
                launcher.signal(&runtime_id, pid, true).await;
            }
        }
        self.idle_check(daemon.clone(), launcher);
        Ok(adopted)
    }

    /// Ends a runtime in a launcher container: SIGTERM, then SIGKILL after `grace` if it
    /// still runs (at once for no grace). A launcher not attached to here (not this node's,
    /// or gone) is left alone: a restart's reconcile ends what nothing knows.
    pub(super) async fn stop_launched(
        &self,
        runtime_id: &str,
        container: &str,
        pid: u32,
        grace: Duration,
    ) {
        let launcher = self
            .launchers
            .lock()
            .values()
            .find(|launcher| launcher.container == container)
            .cloned();
        let Some(launcher) = launcher else {
            tracing::debug!(
                runtime_id,
                container,
                "no launcher attached to stop a runtime in"
            );
            return;
        };
        if grace.is_zero() {
            launcher.signal(runtime_id, pid, true).await;
            return;
        }
        launcher.signal(runtime_id, pid, false).await;
        tokio::time::sleep(grace).await;
        if launcher.runs(runtime_id, pid) {
            tracing::warn!(runtime_id, "runtime ignored SIGTERM; killing it");
            launcher.signal(runtime_id, pid, true).await;
        }
    }

    /// A launcher runtime ended: reported once, if it is still this pool's.
    async fn launched_ended(
        &self,
        launcher: &LauncherContainer,
        runtime_id: String,
        pid: u32,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) {
        let ours =
            self.live.lock().get(&runtime_id).is_some_and(|entry| {
                entry.container == launcher.container && entry.pid == Some(pid)
            });
        if ours {
            self.report_exit(runtime_id, exit_code, reason).await;
        }
    }

    /// Removes the launcher once it has had no runtime for [`IDLE`].
    fn idle_check(self: &Arc<Self>, daemon: Arc<Daemon>, launcher: Arc<LauncherContainer>) {
        let starts = {
            let state = launcher.state();
            if !state.running.is_empty() || !state.starting.is_empty() || state.ended {
                return;
            }
            state.starts
        };
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                () = inner.closed.cancelled() => return,
            }
            {
                let mut state = launcher.state();
                let idle = state.running.is_empty()
                    && state.starting.is_empty()
                    && state.starts == starts
                    && !state.ended;
                if !idle {
                    return;
                }
                state.ended = true;
            }
            inner.forget_launcher(&launcher);
            tracing::info!(server = %launcher.server, version = %launcher.version, "removing an idle launcher container");
            remove(&daemon.docker, &launcher.container).await;
        });
    }

    /// The launcher containers of a server that is lost: they take no more starts, and what
    /// they report is not heard any more (their runtimes are reported ended by the caller).
    pub(super) fn let_go_of_launchers(&self, server: &str) {
        let mut launchers = self.launchers.lock();
        launchers.retain(|(on, _), launcher| {
            if on != server {
                return true;
            }
            let mut state = launcher.state();
            state.ended = true;
            state.running.clear();
            state.starting.clear();
            false
        });
    }

    fn forget_launcher(&self, launcher: &Arc<LauncherContainer>) {
        let mut launchers = self.launchers.lock();
        let key = (launcher.server.clone(), launcher.version.clone());
        if launchers
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, launcher))
        {
            launchers.remove(&key);
        }
    }

    /// The runtime's relayed output, appended to its log on this node.
    fn append_output(&self, runtime_id: &str, line: &str) {
        crate::pools::process::append_to_log(&self.output_path(runtime_id), &format!("{line}\n"));
    }
}

/// Reads a launcher container's reports until its output ends; then it takes no more starts,
/// its runtimes are reported ended and the container is removed.
async fn read_reports(
    inner: Arc<Inner>,
    daemon: Arc<Daemon>,
    launcher: Arc<LauncherContainer>,
    mut output: Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = output.next() => chunk,
            () = inner.closed.cancelled() => return,
        };
        let bytes = match chunk {
            Some(Ok(bollard::container::LogOutput::StdOut { message })) => message,
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                tracing::warn!(container = %launcher.container, %error, "lost a launcher container's output");
                break;
            }
            None => break,
        };
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<Report>(&line) {
                Ok(report) => handle_report(&inner, &daemon, &launcher, report).await,
                Err(error) => {
                    tracing::warn!(container = %launcher.container, %error, "unreadable report from a launcher container")
                }
            }
        }
    }
    // Its runtimes ended with it (they are its processes); starts it had not answered fail.
    let (running, starting) = {
        let mut state = launcher.state();
        state.ended = true;
        (
            std::mem::take(&mut state.running),
            std::mem::take(&mut state.starting),
        )
    };
    drop(starting);
    inner.forget_launcher(&launcher);
    tracing::warn!(server = %launcher.server, container = %launcher.container, runtimes = running.len(), "a launcher container ended");
    for (pid, runtime_id) in running {
        inner
            .launched_ended(
                &launcher,
                runtime_id,
                pid,
                None,
                Some("its launcher container ended".to_owned()),
            )
            .await;
    }
    if !inner.closed.is_cancelled() {
        remove(&daemon.docker, &launcher.container).await;
    }
}

async fn handle_report(
    inner: &Arc<Inner>,
    daemon: &Arc<Daemon>,
    launcher: &Arc<LauncherContainer>,
    report: Report,
) {
    match report {
        Report::Started { runtime_id, pid } => {
            // Live before the start returns, so that an exit right after it is reported.
            inner.live.lock().insert(
                runtime_id.clone(),
                Live {
                    server: launcher.server.clone(),
                    container: launcher.container.clone(),
                    pid: Some(pid),
                },
            );
            let waiting = {
                let mut state = launcher.state();
                state.running.insert(pid, runtime_id.clone());
                state.starting.remove(&runtime_id)
            };
            match waiting {
                Some(waiting) => {
                    let _ = waiting.send(Ok(pid));
                }
                None => {
                    // Its start gave up waiting: not a runtime anyone will use.
                    inner.live.lock().remove(&runtime_id);
                    launcher.signal(&runtime_id, pid, true).await;
                }
            }
        }
        Report::Failed { runtime_id, error } => {
            if let Some(waiting) = launcher.state().starting.remove(&runtime_id) {
                let _ = waiting.send(Err(error));
            }
        }
        Report::Exited {
            pid,
            exit_code,
            reason,
        } => {
            let runtime_id = launcher.state().running.remove(&pid);
            if let Some(runtime_id) = runtime_id {
                inner
                    .launched_ended(launcher, runtime_id, pid, exit_code, reason)
                    .await;
            }
            inner.idle_check(daemon.clone(), launcher.clone());
        }
        Report::Output { runtime_id, line } => inner.append_output(&runtime_id, &line),
        Report::Running { runtimes } => {
            if let Some(listing) = launcher.state().listing.take() {
                let _ = listing.send(runtimes);
            }
        }
    }
}

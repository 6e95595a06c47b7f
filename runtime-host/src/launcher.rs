//! `rally-runtime launcher`: starts runtimes by forking them from itself.
//!
//! Loading the runtime program is most of what a runtime costs to start: the kernel maps the
//! binary, the dynamic loader links it, glibc and the crates probe the CPU (slow in a virtual
//! machine), and the bundle is read and unpacked. A launcher does that once. The platform's
//! local-process pool keeps one running and sends it a [`launch::Start`] per runtime on its
//! standard input; the launcher forks, and the child becomes the runtime: its output goes to the
//! runtime's log, it loads its logic into a fresh engine and runs exactly as an exec'd
//! `rally-runtime` would. The launcher reports every pid it started and every exit it reaped
//! ([`launch::Report`]) on its standard output.
//!
//! The launcher never starts a thread, so forking it is sound: the child starts with one thread,
//! no lock held, and builds its own tokio runtime. When its standard input closes (the platform
//! went away) the launcher exits; the runtimes it started live on and reconnect, as runtimes of
//! a crashed platform do.

use crate::limits;
use crate::loader::{self, ReadBundle};
use crate::session;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, ForkResult};
use rally_sdk::runtime::launch::{Report, Start};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

/// Bundles kept read: a node runs few versions at once, and a new one displaces the oldest.
const CACHED_BUNDLES: usize = 8;

/// Runs the launcher until its standard input closes.
pub fn serve() -> ExitCode {
    match Launcher::new().and_then(|mut launcher| launcher.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rally-runtime launcher: {error}");
            ExitCode::FAILURE
        }
    }
}

struct Launcher {
    /// SIGCHLD, read as data rather than handled, so the loop stays single-threaded and needs
    /// no handler. `None` only in a child, which closes it.
    sigchld: Option<SignalFd>,
    /// The signal mask from before SIGCHLD and SIGINT were blocked: a child restores it.
    mask: SigSet,
    bundles: BundleCache,
    /// Standard input read so far that does not end a line yet.
    pending: Vec<u8>,
    /// Where runtimes' limit groups go.
    hierarchies: limits::Hierarchies,
    /// The limit groups of the runtimes started, by pid, removed when they are reaped.
    groups: HashMap<u32, limits::Groups>,
}

impl Launcher {
    fn new() -> std::io::Result<Self> {
        if threads() != 1 {
            return Err(std::io::Error::other(
                "the launcher must be single-threaded to fork",
            ));
        }
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        // Ctrl-C in a terminal reaches the platform's whole process group: the runtimes take it
        // as a stop, the platform shuts down and reaps them through the launcher, which must
        // stay until it ends on its own (its input closes).
        let mut blocked = chld;
        blocked.add(Signal::SIGINT);
        let mask = blocked.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        let sigchld = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let hierarchies = limits::Hierarchies::find();
        hierarchies.sweep();
        Ok(Self {
            sigchld: Some(sigchld),
            mask,
            bundles: BundleCache::default(),
            pending: Vec::new(),
            hierarchies,
            groups: HashMap::new(),
        })
    }

    fn run(&mut self) -> std::io::Result<()> {
        let stdin = std::io::stdin();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let sigchld = self
                .sigchld
                .as_ref()
                .expect("the launcher holds its signalfd");
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigchld.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => return Err(error.into()),
            }
            let input_ready = fds[0].any().unwrap_or(true);
            let children_ended = fds[1].any().unwrap_or(true);
            if children_ended {
                while let Ok(Some(_)) = sigchld.read_signal() {}
                self.reap()?;
            }
            if input_ready {
                let read = match nix::unistd::read(stdin.as_fd(), &mut buffer) {
                    Ok(read) => read,
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                    Err(error) => return Err(error.into()),
                };
                if read == 0 {
                    // The platform is gone; the runtimes are not ours to end.
                    return Ok(());
                }
                self.pending.extend_from_slice(&buffer[..read]);
                while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    self.handle(&line)?;
                }
            }
        }
    }

    fn handle(&mut self, line: &[u8]) -> std::io::Result<()> {
        let start: Start = match serde_json::from_slice(line) {
            Ok(start) => start,
            Err(error) => {
                // Nothing to answer to without an id; the platform times the start out.
                eprintln!(
                    "rally-runtime launcher: ignoring a request that is not a start: {error}"
                );
                return Ok(());
            }
        };
        let report = match self.launch(&start) {
            Ok(pid) => Report::Started {
                runtime_id: start.runtime_id,
                pid,
            },
            Err(error) => Report::Failed {
                runtime_id: start.runtime_id,
                error: error.to_string(),
            },
        };
        send(&report)
    }

    /// Forks the runtime; returns its pid.
    fn launch(&mut self, start: &Start) -> std::io::Result<u32> {
        let bundle = self.bundles.get(&start.bundle);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&start.log)?;
        let null = File::open("/dev/null")?;
        let groups = start
            .limits
            .map(|limits| self.hierarchies.for_runtime(&start.runtime_id, limits));
        // SAFETY: the launcher has a single thread (checked when it started, and it starts
        // none), so the child inherits no lock held by another thread. The child never returns
        // into the launcher: it runs the runtime and exits.
        #[allow(unsafe_code)]
        let forked = unsafe { nix::unistd::fork() }?;
        match forked {
            ForkResult::Parent { child } => {
                let pid = child.as_raw() as u32;
                if let Some(groups) = groups {
                    self.groups.insert(pid, groups);
                }
                Ok(pid)
            }
            ForkResult::Child => {
                let code = self.become_runtime(start, bundle, log, null, groups.as_ref());
                std::process::exit(i32::from(code))
            }
        }
    }

    /// In the forked child: drop what is the launcher's, then run the runtime.
    fn become_runtime(
        &mut self,
        start: &Start,
        bundle: Result<Arc<ReadBundle>, String>,
        log: File,
        null: File,
        groups: Option<&limits::Groups>,
    ) -> u8 {
        drop(self.sigchld.take());
        if self.mask.thread_set_mask().is_err()
            || dup2_stdin(&null).is_err()
            || dup2_stdout(&log).is_err()
            || dup2_stderr(&log).is_err()
        {
            return session::Exit::Usage as u8;
        }
        // Standard input, output and error are all the runtime keeps.
        drop((log, null));
        if let Some(groups) = groups {
            groups.enter();
        }
        let runtime = session::RuntimeEnv {
            runtime_id: start.runtime_id.clone(),
            secret: start.secret.clone(),
            qualifier: start.qualifier,
            platform_url: start.platform_url.clone(),
            bundle: start.bundle.clone(),
        };
        let bundle = bundle.map(|read| (*read).clone());
        std::panic::catch_unwind(move || session::run_process(runtime, bundle)).unwrap_or(101)
    }

    /// Reports every child that has ended.
    fn reap(&mut self) -> std::io::Result<()> {
        loop {
            let (pid, exit_code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code)),
                Ok(WaitStatus::Signaled(pid, _, _)) => (pid, None),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => return Err(error.into()),
            };
            let pid = pid.as_raw() as u32;
            let reason = self.groups.remove(&pid).and_then(limits::Groups::remove);
            send(&Report::Exited {
                pid,
                exit_code,
                reason,
            })?;
        }
    }
}

/// One report, one line, in one write (shorter than a pipe's atomic size).
fn send(report: &Report) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let stdout = std::io::stdout();
    let mut written = 0;
    while written < line.len() {
        match nix::unistd::write(stdout.as_fd(), &line[written..]) {
            Ok(count) => written += count,
            Err(nix::errno::Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count)
}

/// Bundle archives already read, by path, as long as the file is unchanged. Directories are
/// read every time: their files can change under the same path.
#[derive(Default)]
struct BundleCache {
    read: HashMap<PathBuf, (SystemTime, u64, Arc<ReadBundle>)>,
    order: VecDeque<PathBuf>,
}

impl BundleCache {
    fn get(&mut self, path: &Path) -> Result<Arc<ReadBundle>, String> {
        let stamp = std::fs::metadata(path)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|metadata| Some((metadata.modified().ok()?, metadata.len())));
        let Some((modified, len)) = stamp else {
            return loader::read_bundle(path).map(Arc::new);
        };
        if let Some((cached_modified, cached_len, read)) = self.read.get(path) {
            if *cached_modified == modified && *cached_len == len {
                return Ok(Arc::clone(read));
            }
        }
        let read = Arc::new(loader::read_bundle(path)?);
        if self.read.len() >= CACHED_BUNDLES && !self.read.contains_key(path) {
            if let Some(oldest) = self.order.pop_front() {
                self.read.remove(&oldest);
            }
        }
        self.order.retain(|cached| cached != path);
        self.order.push_back(path.to_owned());
        self.read
            .insert(path.to_owned(), (modified, len, Arc::clone(&read)));
        Ok(read)
    }
}

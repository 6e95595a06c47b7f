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
//! A Docker pool in launcher placement runs the launcher as a container's main process, one per
//! server and version: there the platform can neither signal a pid nor read a file inside the
//! container, so the launcher also signals its runtimes on request, lists them, and relays the
//! output of runtimes started without a log file ([`launch::Report::Output`]).
//!
//! The launcher never starts a thread, so forking it is sound: the child starts with one thread,
//! no lock held, and builds its own tokio runtime. When its standard input closes (the platform
//! went away) the launcher exits; the runtimes it started live on and reconnect, as runtimes of
//! a crashed platform do. (A launcher container's standard input stays open when the platform
//! detaches, so it outlives a platform crash and is attached to again.)

use crate::limits;
use crate::loader::{self, ReadBundle};
use crate::session;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, ForkResult};
use rally_sdk::runtime::launch::{
    Report, Request, RunningRuntime, SignalRuntime, Start, OUTPUT_LINE_MAX,
};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
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
    /// The runtimes started and not reaped yet, by pid.
    children: HashMap<u32, Child>,
}

/// One runtime the launcher started.
struct Child {
    runtime_id: String,
    /// Its limit groups, removed when it is reaped.
    groups: Option<limits::Groups>,
    /// Its output, when the launcher relays it: the read end of its standard output and error.
    output: Option<Relay>,
}

/// A runtime's output on its way to [`Report::Output`] lines.
struct Relay {
    /// `None` once the runtime closed its end.
    pipe: Option<OwnedFd>,
    /// Read and not sent yet: no end of line so far.
    pending: Vec<u8>,
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
            children: HashMap::new(),
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
            let relayed: Vec<u32> = self
                .children
                .iter()
                .filter(|(_, child)| {
                    child
                        .output
                        .as_ref()
                        .is_some_and(|relay| relay.pipe.is_some())
                })
                .map(|(pid, _)| *pid)
                .collect();
            let (input_ready, children_ended, readable) = {
                let mut fds = vec![
                    PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                    PollFd::new(sigchld.as_fd(), PollFlags::POLLIN),
                ];
                for pid in &relayed {
                    let pipe = self.children[pid]
                        .output
                        .as_ref()
                        .and_then(|relay| relay.pipe.as_ref())
                        .expect("listed as relayed");
                    fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(error) => return Err(error.into()),
                }
                let readable: Vec<u32> = relayed
                    .iter()
                    .zip(&fds[2..])
                    .filter(|(_, fd)| fd.any().unwrap_or(true))
                    .map(|(pid, _)| *pid)
                    .collect();
                (
                    fds[0].any().unwrap_or(true),
                    fds[1].any().unwrap_or(true),
                    readable,
                )
            };
            for pid in readable {
                self.relay(pid, &mut buffer, false)?;
            }
            if children_ended {
                if let Some(sigchld) = &self.sigchld {
                    while let Ok(Some(_)) = sigchld.read_signal() {}
                }
                self.reap(&mut buffer)?;
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
        let request: Request = match serde_json::from_slice(line) {
            Ok(request) => request,
            Err(error) => {
                // Nothing to answer to without an id; the platform times the start out.
                eprintln!("rally-runtime launcher: ignoring a request it cannot read: {error}");
                return Ok(());
            }
        };
        match request {
            Request::Start(start) => {
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
            Request::Signal { signal } => {
                self.signal(&signal);
                Ok(())
            }
            Request::List { .. } => {
                let mut runtimes: Vec<RunningRuntime> = self
                    .children
                    .iter()
                    .map(|(pid, child)| RunningRuntime {
                        runtime_id: child.runtime_id.clone(),
                        pid: *pid,
                    })
                    .collect();
                runtimes.sort_by_key(|runtime| runtime.pid);
                send(&Report::Running { runtimes })
            }
        }
    }

    /// Signals a runtime of this launcher; a pid that is not (or no longer) the runtime's is
    /// left alone.
    fn signal(&self, request: &SignalRuntime) {
        let ours = self
            .children
            .get(&request.pid)
            .is_some_and(|child| child.runtime_id == request.runtime_id);
        if !ours {
            return;
        }
        let signal = if request.kill {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let pid = nix::unistd::Pid::from_raw(request.pid as i32);
        if let Err(error) = nix::sys::signal::kill(pid, signal) {
            eprintln!(
                "rally-runtime launcher: cannot signal runtime {}: {error}",
                request.runtime_id
            );
        }
    }

    /// Forks the runtime; returns its pid.
    fn launch(&mut self, start: &Start) -> std::io::Result<u32> {
        // A program reads its own files: the bundle is only its working directory.
        let bundle = match start.program {
            Some(_) => Err("a program runtime".to_owned()),
            None => self.bundles.get(&start.bundle),
        };
        // Where its output goes: its log file, or a pipe the launcher relays.
        let (output, relay) = match &start.log {
            Some(log) => (
                OwnedFd::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)?,
                ),
                None,
            ),
            None => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                nix::fcntl::fcntl(
                    &read,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )?;
                (write, Some(read))
            }
        };
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
                // The runtime holds the only write end of its pipe: it reads as ended when
                // the runtime is.
                drop(output);
                let pid = child.as_raw() as u32;
                self.children.insert(
                    pid,
                    Child {
                        runtime_id: start.runtime_id.clone(),
                        groups,
                        output: relay.map(|pipe| Relay {
                            pipe: Some(pipe),
                            pending: Vec::new(),
                        }),
                    },
                );
                Ok(pid)
            }
            ForkResult::Child => {
                drop(relay);
                let code = self.become_runtime(start, bundle, output, null, groups.as_ref());
                std::process::exit(i32::from(code))
            }
        }
    }

    /// In the forked child: drop what is the launcher's, then run the runtime.
    fn become_runtime(
        &mut self,
        start: &Start,
        bundle: Result<Arc<ReadBundle>, String>,
        log: OwnedFd,
        null: File,
        groups: Option<&limits::Groups>,
    ) -> u8 {
        drop(self.sigchld.take());
        // The other runtimes' pipes are the launcher's.
        self.children.clear();
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
        if let Some(program) = &start.program {
            return run_program(start, program);
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

    /// Reports every child that has ended, after the last of its output.
    fn reap(&mut self, buffer: &mut [u8]) -> std::io::Result<()> {
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
            // What it wrote before it ended is all in its pipe: relayed to the end.
            while self
                .children
                .get(&pid)
                .and_then(|child| child.output.as_ref())
                .is_some_and(|relay| relay.pipe.is_some())
            {
                self.relay(pid, buffer, true)?;
            }
            let reason = self
                .children
                .remove(&pid)
                .and_then(|child| child.groups)
                .and_then(limits::Groups::remove);
            send(&Report::Exited {
                pid,
                exit_code,
                reason,
            })?;
        }
    }

    /// Reads what runtime `pid` wrote and sends its complete lines; at the end of its output,
    /// the rest too, and the pipe is closed. Once the runtime is `reaped`, an empty pipe is its
    /// end (a grandchild of its may still hold it open).
    fn relay(&mut self, pid: u32, buffer: &mut [u8], reaped: bool) -> std::io::Result<()> {
        let Some(child) = self.children.get_mut(&pid) else {
            return Ok(());
        };
        let Some(relay) = child.output.as_mut() else {
            return Ok(());
        };
        let Some(pipe) = relay.pipe.as_ref() else {
            return Ok(());
        };
        let ended = match nix::unistd::read(pipe.as_fd(), buffer) {
            Ok(0) => true,
            Ok(read) => {
                relay.pending.extend_from_slice(&buffer[..read]);
                false
            }
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            // Nothing more for now: the next poll, unless the runtime is gone.
            Err(nix::errno::Errno::EAGAIN) => reaped,
            Err(_) => true,
        };
        if ended {
            relay.pipe = None;
        }
        for line in output_lines(&mut relay.pending, relay.pipe.is_none()) {
            send(&Report::Output {
                runtime_id: child.runtime_id.clone(),
                line,
            })?;
        }
        Ok(())
    }
}

/// The complete lines at the start of `pending` (without their ends), taken out of it; pieces
/// of [`OUTPUT_LINE_MAX`] bytes of a longer line; and, when `ended`, whatever is left.
/// In the forked child of a program runtime: becomes its program, in the unpacked bundle's
/// directory, with the runtime's environment and nothing else of the launcher's (`PATH` is the
/// system's). Returns only when the program cannot be run.
fn run_program(start: &Start, program: &Path) -> u8 {
    use rally_sdk::runtime::env;
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(program)
        .current_dir(&start.bundle)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env(env::RUNTIME_ID, &start.runtime_id)
        .env(env::RUNTIME_SECRET, &start.secret)
        .env(env::QUALIFIER, start.qualifier.as_str())
        .env(env::PLATFORM_URL, &start.platform_url)
        .env(env::BUNDLE, &start.bundle)
        .exec();
    eprintln!(
        "rally-runtime: cannot run the program {}: {error}",
        program.display()
    );
    session::Exit::BadBundle as u8
}

fn output_lines(pending: &mut Vec<u8>, ended: bool) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        if let Some(end) = pending
            .iter()
            .take(OUTPUT_LINE_MAX + 1)
            .position(|byte| *byte == b'\n')
        {
            let line: Vec<u8> = pending.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        } else if pending.len() > OUTPUT_LINE_MAX {
            // Cut where a character starts, so that the piece stays readable.
            let mut cut = OUTPUT_LINE_MAX;
            while cut > 0 && pending[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let cut = if cut == 0 { OUTPUT_LINE_MAX } else { cut };
            let piece: Vec<u8> = pending.drain(..cut).collect();
            lines.push(String::from_utf8_lossy(&piece).into_owned());
        } else {
            break;
        }
    }
    if ended && !pending.is_empty() {
        lines.push(String::from_utf8_lossy(pending).into_owned());
        pending.clear();
    }
    lines
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_sent_by_lines_and_long_lines_in_pieces() {
        let mut pending = b"one\ntwo\nthr".to_vec();
        assert_eq!(output_lines(&mut pending, false), ["one", "two"]);
        assert_eq!(pending, b"thr");
        assert_eq!(output_lines(&mut pending, true), ["thr"]);
        assert!(pending.is_empty());

        // A long line of two-byte characters is cut between characters.
        let mut pending = "é".repeat(OUTPUT_LINE_MAX).into_bytes();
        pending.push(b'\n');
        let pieces = output_lines(&mut pending, false);
        assert!(pieces.len() >= 2, "{}", pieces.len());
        assert!(pieces.iter().all(|piece| !piece.contains('\u{fffd}')));
        assert!(pieces.iter().all(|piece| piece.len() <= OUTPUT_LINE_MAX));
        assert_eq!(pieces.concat(), "é".repeat(OUTPUT_LINE_MAX));
    }
}

//! The last guard of the handler time limit. The engines stop the logic themselves at their
//! interrupt points (Luau) or when its fuel runs out (WASM), but code that has no interrupt
//! point can run on: a library function written in C, such as Luau's `string.find` on a
//! megabyte haystack with a plain megabyte needle, which runs in quadratic time. A thread of
//! its own watches every handler call; one still running [`GRACE`] past its limit is past
//! saving (the engine's state is mid-call), so the runtime says why in its log and exits with
//! [`Exit::HandlerStuck`]. The platform sees the exit at once, tells the runtime's clients
//! (`runtime_failed`), moves them to a lobby, and counts the failure towards the deployment's
//! restart back-off.

use crate::session::Exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long past its time limit a handler may still run before the runtime ends.
pub const GRACE: Duration = Duration::from_millis(500);

/// Watches handler calls from another thread. One per runtime process, see [`install`].
#[derive(Debug)]
struct Watchdog {
    shared: Arc<Shared>,
}

static INSTALLED: OnceLock<Watchdog> = OnceLock::new();

/// Starts this process's watchdog: every later [`watch`]ed call gets `limit` plus [`GRACE`].
/// A runtime process installs it once, before loading its logic.
pub fn install(limit: Duration) -> std::io::Result<()> {
    if INSTALLED.get().is_none() {
        let _ = INSTALLED.set(Watchdog::start(limit)?);
    }
    Ok(())
}

/// Watches one call until the returned guard drops; nothing where no watchdog was installed
/// (`simulate`, tests, the engines' own benches).
pub fn watch(call: Call) -> Option<Watched<'static>> {
    INSTALLED.get().map(|watchdog| watchdog.watch(call))
}

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// When the running call must be over, in milliseconds since `epoch`; 0 when none runs.
    deadline_millis: AtomicU64,
    /// A call's time limit, in milliseconds.
    limit_millis: u64,
    /// What the running call is, for the log: a [`Call`].
    call: AtomicU64,
}

/// What a watched call is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Loading = 0,
    Handler = 1,
}

/// Marks a call as running until dropped.
#[derive(Debug)]
pub struct Watched<'a> {
    shared: &'a Shared,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.shared.deadline_millis.store(0, Ordering::Release);
    }
}

/// The longest the thread sleeps between looks: an idle runtime's watchdog wakes this often,
/// and one that finds a call running sleeps until that call's deadline (or this, if sooner).
const LOOK_AT_MOST_EVERY: Duration = Duration::from_millis(500);

impl Watchdog {
    fn start(limit: Duration) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            deadline_millis: AtomicU64::new(0),
            limit_millis: limit.as_millis() as u64,
            call: AtomicU64::new(Call::Loading as u64),
        });
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("handler-watchdog".to_owned())
            .spawn(move || loop {
                let deadline = watched.deadline_millis.load(Ordering::Acquire);
                let now = watched.now_millis();
                if deadline != 0 && now > deadline {
                    watched.give_up();
                }
                // Wake at the running call's deadline (a little after), else look again later.
                let sleep = if deadline == 0 {
                    LOOK_AT_MOST_EVERY
                } else {
                    Duration::from_millis(deadline - now + 1).min(LOOK_AT_MOST_EVERY)
                };
                std::thread::sleep(sleep);
            })?;
        Ok(Watchdog { shared })
    }

    fn watch(&self, call: Call) -> Watched<'_> {
        let shared = &*self.shared;
        shared.call.store(call as u64, Ordering::Relaxed);
        let deadline = shared.now_millis() + shared.limit_millis + GRACE.as_millis() as u64;
        shared
            .deadline_millis
            .store(deadline.max(1), Ordering::Release);
        Watched { shared }
    }
}

impl Shared {
    fn now_millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Ends the process: the stuck call holds the only thread that could end it cleanly.
    fn give_up(&self) -> ! {
        let what = if self.call.load(Ordering::Relaxed) == Call::Loading as u64 {
            "loading the logic"
        } else {
            "a handler"
        };
        eprintln!(
            "rally-runtime: {what} ran past its time limit of {} ms inside a function that \
             cannot be interrupted (a library call such as string.find on very large strings?); \
             stopping the runtime (exit code {})",
            self.limit_millis,
            Exit::HandlerStuck.code()
        );
        std::process::exit(i32::from(Exit::HandlerStuck.code()))
    }
}

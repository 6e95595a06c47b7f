//! The Lua engine: runs a bundle's `lobby` or `match` module in a sandboxed Luau VM and turns
//! what its handlers do into [`RuntimeCommand`]s.
//!
//! # Why Luau and not LuaJIT
//!
//! Defold developers know Lua 5.1 as LuaJIT runs it, so LuaJIT was the first candidate. It was
//! tried with mlua 0.12 (features `luajit`, `vendored`) against the sandbox's two guarantees:
//!
//! - **Stopping a runaway loop: not kept.** LuaJIT runs count hooks only in the interpreter:
//!   with the JIT on, `while true do end` under a count hook was never interrupted (the process
//!   was killed after 20 s). With `jit.off()` and a hook every 1,000 instructions that loop
//!   stopped in ~20 ms, but `while true do pcall(f) end` (with `f` looping) ran for ten minutes
//!   until killed, because the hook always fired inside `f` and `pcall` swallowed the error; it
//!   only stopped once the hook was re-armed for every instruction after the budget ran out.
//!   And functions written in C run no hooks at all:
//!   `string.find(("a"):rep(5000), ("a*"):rep(12) .. "b")` was still backtracking after 30 s.
//!   Turning the JIT off also gives up the speed that was the reason to want LuaJIT.
//! - **Capping memory: kept.** On x86-64 (GC64) mlua installs its own allocator; a 64 MiB cap
//!   stopped a table-of-distinct-strings bomb and a table-of-tables bomb with "not enough
//!   memory", and the state answered the next call.
//!
//! Luau keeps both by design, and this engine's tests show it: the VM calls an interrupt at
//! every call, return and loop back-edge, and at every step of the pattern matcher (the
//! `string.find` above stops within the budget); mlua offers `set_interrupt` and
//! `set_memory_limit` for it; scripts cannot load bytecode; `Lua::sandbox` makes the standard
//! library read-only. With the default budget an infinite loop is stopped after ~0.1 s (about
//! 10 ns per interrupt point, release build). Luau is Lua 5.1 plus additions old code never
//! notices (`continue`, compound assignment, string interpolation, type annotations, `//`).
//! What Defold code may miss: `goto`, LuaJIT's `bit` (Luau has `bit32`, whose results are
//! unsigned where `bit`'s are signed), `setfenv`/`getfenv`, `load`/`loadstring`,
//! `collectgarbage` other than `"count"`, `__gc`, and patching the standard library tables.
//!
//! # The script's view
//!
//! The entry module (the manifest's `lobby` or `match` file) returns a table of handlers, each
//! optional:
//!
//! ```lua
//! local M = {}
//! function M.on_start(ctx) end                          -- once, first
//! function M.on_client_assigned(ctx, client) end        -- client = {id, user_id, profile, group}
//! function M.on_client_removed(ctx, client_id, reason) end
//! function M.on_message(ctx, client_id, payload, kind) end  -- kind = "text" | "binary"
//! function M.on_tick(ctx, dt) end                       -- dt in seconds
//! function M.on_stop(ctx) end                           -- last
//! return M
//! ```
//!
//! Handlers return nothing: returning a value is reported as invalid output (a handler that
//! returns its reply instead of calling `ctx.respond` would otherwise fail silently). A binary
//! payload arrives as a Lua string of its bytes. `group` is `nil` in lobbies, `profile` a table.
//!
//! `ctx` is one table for the runtime's life:
//!
//! | call | effect |
//! |---|---|
//! | `ctx.respond(client_id, payload[, kind])` | `respond_client` |
//! | `ctx.multicast(client_ids, payload[, kind])` | `multicast` (nothing for an empty list) |
//! | `ctx.broadcast(payload[, kind])` | `broadcast` |
//! | `ctx.kick(client_id[, reason])` | `kick_client` (reason defaults to `"kicked"`) |
//! | `ctx.set_profile(client_id, profile)` | `set_profile`; a table with string keys |
//! | `ctx.request_matchmaking(client_id, mode)` | `request_matchmaking` |
//! | `ctx.stop_match([reason])` | `stop_match` (default `"finished"`); an error in a lobby |
//! | `ctx.log(...)`, `ctx.log.debug/info/warn/error(...)` | `log`; arguments as by `tostring`, joined by spaces |
//! | `ctx.json.encode(value)`, `ctx.json.decode(text[, {decode_null_as_userdata = true}])`, `ctx.json.null` | JSON |
//! | `ctx.now()` | monotonic seconds since the runtime started |
//! | `ctx.after(seconds, fn)`, `ctx.every(seconds, fn)` → id; `ctx.cancel(id)` → boolean | timers |
//! | `ctx.user_data`, `ctx.config`, `ctx.mode`, `ctx.qualifier` | set before `on_start` |
//!
//! `payload` is a string; `kind` is `"text"` (the default; the string must then be UTF-8) or
//! `"binary"`. A payload longer than [`Limits::max_payload_bytes`] is refused, as is a profile
//! whose JSON is. JSON: a table whose keys are exactly 1..n is an array, any other table an
//! object (an empty table is `{}`); `null` decodes to `nil` unless asked for `json.null`.
//!
//! Timers run on the tick clock (the sum of `dt`), after `on_tick`, earliest first; their
//! callback gets `ctx`. A timer set during a tick fires at the earliest on the next one; an
//! `every` timer fires at most once per tick and skips ahead when ticks are slower than it.
//!
//! Globals: the Luau standard library without `debug` (`string`, `table`, `math`, `bit32`,
//! `utf8`, `coroutine`, `buffer`, and `os` with only `clock`, `date`, `difftime`, `time`), plus
//! `require(name)`, which runs `name.lua` or `name/init.lua` (dots are directory separators,
//! from the bundle's root) once and returns its result, `print` (logs at info, tab-separated)
//! and `json` (the same table as `ctx.json`). Globals that scripts set are shared by all their
//! modules; the standard library is read-only.
//!
//! # Limits
//!
//! Each call of [`Engine::handle`] (an event's handler, and on a tick the due timers too) gets
//! [`Limits::budget_per_call`] interrupt points (a function call, a return, a loop iteration, a
//! pattern-matching step) and `budget_per_call × 100 ns` of wall time (1 s with the default
//! budget; never less than 100 ms), which catches work that costs one interrupt point but much
//! time, such as building a megabyte string per iteration. Once either runs out, every further
//! interrupt raises an error, so a script cannot catch its way out with `pcall`. The whole Lua
//! state is capped at [`Limits::memory_bytes`], and what one call may emit (payloads, ids,
//! log lines) at the same number of bytes, because commands live outside the Lua heap. After any
//! failure the engine serves the next event as usual.

mod api;
mod json;
mod modules;
mod timers;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{Function, IntoLuaMulti, Lua, LuaOptions, StdLib, Table, Value, VmState};
use rally_sdk::runtime::{LogLevel, Payload, Qualifier, RuntimeCommand};

use crate::engine::{Engine, Event, HandlerError, Limits};
pub use modules::LuaBundle;
use modules::Modules;
use timers::Timers;

/// The clock is read every this many interrupt points: often enough to stop a slow loop within
/// milliseconds, rarely enough to cost nothing.
const CLOCK_CHECK_INTERVAL: u64 = 1024;

/// Bytes a command costs in the per-call output allowance besides its strings.
const COMMAND_OVERHEAD_BYTES: usize = 64;

/// Why a bundle could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("the entry module {path} is not in the bundle (bundle files: {available})")]
    MissingEntry { path: String, available: String },
    /// `message` is the compiler's, starting with `file:line:`.
    #[error("{message}")]
    Compile {
        file: String,
        line: Option<u32>,
        message: String,
    },
    /// The entry module's top-level code (or a module it required) failed.
    #[error("{file} failed while loading: {error}")]
    Run { file: String, error: HandlerError },
    #[error("{file} must return a table of handlers, but returned {returned}")]
    NotAHandlerTable { file: String, returned: String },
    #[error("{file}: {handler} must be a function, but is a {found}")]
    HandlerNotAFunction {
        file: String,
        handler: &'static str,
        found: String,
    },
    /// The Lua state could not be created or prepared (e.g. a memory cap too small to hold it).
    #[error("the Lua state could not be set up: {message}")]
    Setup { message: String },
}

/// A bundle's lobby or match module, loaded and ready for events.
pub struct LuaEngine {
    lua: Lua,
    host: Rc<HostState>,
    ctx: Table,
    handlers: Handlers,
    text_kind: mlua::LuaString,
    binary_kind: mlua::LuaString,
}

#[derive(Default)]
struct Handlers {
    on_start: Option<Function>,
    on_client_assigned: Option<Function>,
    on_client_removed: Option<Function>,
    on_message: Option<Function>,
    on_tick: Option<Function>,
    on_stop: Option<Function>,
}

/// What the Rust functions called from Lua share with the engine.
struct HostState {
    limits: Limits,
    meter: Meter,
    outbox: RefCell<Vec<RuntimeCommand>>,
    /// Bytes emitted during the current call, against `limits.memory_bytes`.
    outbox_bytes: Cell<usize>,
    timers: RefCell<Timers>,
    started_at: Instant,
    qualifier: Cell<Option<Qualifier>>,
}

/// The budget of the current call.
struct Meter {
    budget: u64,
    time_per_call: Duration,
    remaining: Cell<u64>,
    deadline: Cell<Instant>,
    /// Where the script was when the budget ran out, once it has.
    exhausted_at: RefCell<Option<String>>,
}

/// An API function called with bad arguments; becomes [`HandlerError::InvalidOutput`].
#[derive(Debug)]
struct Misuse(String);

impl std::fmt::Display for Misuse {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Misuse {}

impl LuaEngine {
    /// Loads `bundle` and runs its `entry` file (e.g. `lobby.lua`), which must return a table of
    /// handlers. Every Lua file of the bundle is compiled first, so a syntax error anywhere is
    /// reported here with its file and line.
    pub fn load(bundle: &LuaBundle, entry: &str, limits: Limits) -> Result<LuaEngine, LoadError> {
        let setup = |err: mlua::Error| LoadError::Setup {
            message: err.to_string(),
        };
        let libraries = StdLib::STRING
            | StdLib::TABLE
            | StdLib::MATH
            | StdLib::BIT
            | StdLib::UTF8
            | StdLib::COROUTINE
            | StdLib::OS
            | StdLib::BUFFER;
        let lua = Lua::new_with(libraries, LuaOptions::new()).map_err(setup)?;
        lua.set_memory_limit(limits.memory_bytes).map_err(setup)?;
        // Luau seeds `math.random` from the state's address and the clock, which runtimes
        // forked from one launcher share: each logic gets a seed of its own.
        lua.globals()
            .get::<Table>("math")
            .and_then(|math| math.get::<Function>("randomseed"))
            .and_then(|randomseed| randomseed.call::<()>(fresh_seed()))
            .map_err(setup)?;

        let host = Rc::new(HostState::new(limits));
        let modules = Rc::new(Modules::default());
        api::install_globals(&lua, &host, &modules).map_err(setup)?;
        lua.sandbox(true).map_err(setup)?;
        let ctx = api::context(&lua, &host).map_err(setup)?;
        let meter_host = Rc::clone(&host);
        lua.set_interrupt(move |lua| meter_host.meter.tick(lua));

        let entry_path = entry.trim_start_matches("./");
        if !bundle.paths().any(|path| path == entry_path) {
            let available = bundle.paths().collect::<Vec<_>>().join(", ");
            return Err(LoadError::MissingEntry {
                path: entry_path.to_owned(),
                available,
            });
        }
        modules.compile(&lua, bundle)?;

        let mut engine = LuaEngine {
            text_kind: lua.create_string("text").map_err(setup)?,
            binary_kind: lua.create_string("binary").map_err(setup)?,
            lua,
            host,
            ctx,
            handlers: Handlers::default(),
        };
        engine.host.begin_call();
        let module_name = entry_path.trim_end_matches(".lua").replace('/', ".");
        let exports = match modules.run(&engine.lua, entry_path, &module_name) {
            Ok(exports) => exports,
            Err(err) => {
                return Err(LoadError::Run {
                    file: entry_path.to_owned(),
                    error: engine.classify(err),
                })
            }
        };
        // Logs written by top-level code stay in the outbox and go out with the first event.
        let Value::Table(exports) = exports else {
            return Err(LoadError::NotAHandlerTable {
                file: entry_path.to_owned(),
                returned: api::type_name(&exports).into(),
            });
        };
        let handler = |name: &'static str| -> Result<Option<Function>, LoadError> {
            match exports.raw_get::<Value>(name).map_err(setup)? {
                Value::Nil => Ok(None),
                Value::Function(function) => Ok(Some(function)),
                other => Err(LoadError::HandlerNotAFunction {
                    file: entry_path.to_owned(),
                    handler: name,
                    found: api::type_name(&other).into(),
                }),
            }
        };
        engine.handlers = Handlers {
            on_start: handler("on_start")?,
            on_client_assigned: handler("on_client_assigned")?,
            on_client_removed: handler("on_client_removed")?,
            on_message: handler("on_message")?,
            on_tick: handler("on_tick")?,
            on_stop: handler("on_stop")?,
        };
        Ok(engine)
    }

    /// Bytes the Lua state holds now, for metrics.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    fn dispatch(&self, event: &Event) -> Result<(), HandlerError> {
        match event {
            Event::Started {
                qualifier,
                user_data,
                config,
                mode,
            } => {
                self.host.qualifier.set(Some(*qualifier));
                let fields = || -> mlua::Result<()> {
                    self.ctx.raw_set("qualifier", qualifier.as_str())?;
                    self.ctx.raw_set("mode", mode.as_deref())?;
                    self.ctx
                        .raw_set("user_data", json::to_lua(&self.lua, user_data)?)?;
                    self.ctx
                        .raw_set("config", json::to_lua(&self.lua, config)?)?;
                    Ok(())
                };
                fields().map_err(|err| self.classify(err))?;
                self.call("on_start", self.handlers.on_start.as_ref(), &self.ctx)
            }
            Event::ClientAssigned {
                client_id,
                user_id,
                profile,
                group,
            } => {
                let Some(handler) = &self.handlers.on_client_assigned else {
                    return Ok(());
                };
                let client = || -> mlua::Result<Table> {
                    let client = self.lua.create_table_with_capacity(0, 4)?;
                    client.raw_set("id", client_id.as_str())?;
                    client.raw_set("user_id", user_id.as_str())?;
                    client.raw_set("profile", json::to_lua(&self.lua, profile)?)?;
                    client.raw_set("group", group.as_deref())?;
                    Ok(client)
                };
                let client = client().map_err(|err| self.classify(err))?;
                self.call("on_client_assigned", Some(handler), (&self.ctx, client))
            }
            Event::ClientRemoved { client_id, reason } => self.call(
                "on_client_removed",
                self.handlers.on_client_removed.as_ref(),
                (&self.ctx, client_id.as_str(), reason.as_str()),
            ),
            Event::Message { client_id, payload } => {
                let Some(handler) = &self.handlers.on_message else {
                    return Ok(());
                };
                let (bytes, kind) = match payload {
                    Payload::Text(text) => (self.lua.create_string(text), &self.text_kind),
                    Payload::Binary(bytes) => (self.lua.create_string(bytes), &self.binary_kind),
                };
                let bytes = bytes.map_err(|err| self.classify(err))?;
                self.call(
                    "on_message",
                    Some(handler),
                    (&self.ctx, client_id.as_str(), bytes, kind),
                )
            }
            Event::Tick { dt } => self.tick(*dt),
            Event::Stopping => self.call("on_stop", self.handlers.on_stop.as_ref(), &self.ctx),
        }
    }

    /// `on_tick`, then the due timers. A script error in one of them does not keep the others
    /// from running (the first error is reported); a spent budget or memory stops the tick.
    fn tick(&self, dt: f64) -> Result<(), HandlerError> {
        let fence = {
            let mut timers = self.host.timers.borrow_mut();
            timers.advance(dt);
            timers.fence()
        };
        let mut first_error = None;
        let mut note = |result: Result<(), HandlerError>| -> Result<(), HandlerError> {
            match result {
                Err(
                    err @ (HandlerError::BudgetExceeded { .. } | HandlerError::OutOfMemory { .. }),
                ) => Err(err),
                Err(err) => {
                    first_error.get_or_insert(err);
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        };
        note(self.call("on_tick", self.handlers.on_tick.as_ref(), (&self.ctx, dt)))?;
        let due = self.host.timers.borrow().due(fence);
        for id in due {
            let callback = self.host.timers.borrow_mut().fire(id);
            if let Some(callback) = callback {
                note(self.call("timer callback", Some(&callback), &self.ctx))?;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn call(
        &self,
        name: &str,
        handler: Option<&Function>,
        args: impl IntoLuaMulti,
    ) -> Result<(), HandlerError> {
        let Some(handler) = handler else {
            return Ok(());
        };
        let result = handler.call::<Value>(args);
        if let Some(location) = self.host.meter.exhausted_at.borrow_mut().take() {
            return Err(HandlerError::BudgetExceeded { location });
        }
        match result {
            Ok(Value::Nil) => Ok(()),
            Ok(returned) => {
                let info = handler.info();
                let file = info.short_src.unwrap_or_else(|| "?".into());
                let line = info.line_defined.unwrap_or(0);
                Err(HandlerError::InvalidOutput {
                    message: format!(
                        "{file}:{line}: {name} returned a {}; handlers return nothing (reply with ctx.respond)",
                        api::type_name(&returned)
                    ),
                })
            }
            Err(err) => Err(self.classify(err)),
        }
    }

    /// Turns a failed call into the error the runtime reports.
    fn classify(&self, err: mlua::Error) -> HandlerError {
        if let Some(location) = self.host.meter.exhausted_at.borrow_mut().take() {
            return HandlerError::BudgetExceeded { location };
        }
        if is_memory_error(&err) {
            // Luau does not collect on a failed allocation; without this the garbage of the
            // failed call would make the next one fail too.
            let _ = self.lua.gc_collect();
            return HandlerError::OutOfMemory {
                limit_bytes: self.host.limits.memory_bytes,
            };
        }
        match find_misuse(&err) {
            Some(misuse) => HandlerError::InvalidOutput {
                message: tidy(&with_traceback(misuse.to_owned(), &err)),
            },
            None => HandlerError::Script {
                message: tidy(&render(&err)),
            },
        }
    }
}

impl Engine for LuaEngine {
    fn handle(
        &mut self,
        event: &Event,
        commands: &mut Vec<RuntimeCommand>,
    ) -> Result<(), HandlerError> {
        self.host.begin_call();
        let result = self.dispatch(event);
        commands.append(&mut self.host.outbox.borrow_mut());
        result
    }
}

impl HostState {
    fn new(limits: Limits) -> Self {
        let time_per_call = limits.time_per_call();
        HostState {
            limits,
            meter: Meter {
                budget: limits.budget_per_call,
                time_per_call,
                remaining: Cell::new(limits.budget_per_call),
                deadline: Cell::new(Instant::now() + time_per_call),
                exhausted_at: RefCell::new(None),
            },
            outbox: RefCell::new(Vec::new()),
            outbox_bytes: Cell::new(0),
            timers: RefCell::new(Timers::default()),
            started_at: Instant::now(),
            qualifier: Cell::new(None),
        }
    }

    fn begin_call(&self) {
        self.meter.remaining.set(self.meter.budget);
        self.meter
            .deadline
            .set(Instant::now() + self.meter.time_per_call);
        self.meter.exhausted_at.borrow_mut().take();
        self.outbox_bytes.set(0);
    }

    /// Refuses output past the per-call allowance.
    fn check_allowance(&self, lua: &Lua, function: &str, bytes: usize) -> mlua::Result<()> {
        let total = self.outbox_bytes.get().saturating_add(bytes);
        if total > self.limits.memory_bytes {
            return Err(api::misuse(
                lua,
                format!(
                    "{function}: this call has emitted more than {} bytes of commands, the limit per handler call",
                    self.limits.memory_bytes
                ),
            ));
        }
        Ok(())
    }

    fn emit(
        &self,
        lua: &Lua,
        function: &str,
        command: RuntimeCommand,
        bytes: usize,
    ) -> mlua::Result<()> {
        let bytes = bytes + COMMAND_OVERHEAD_BYTES;
        self.check_allowance(lua, function, bytes)?;
        self.outbox_bytes.set(self.outbox_bytes.get() + bytes);
        self.outbox.borrow_mut().push(command);
        Ok(())
    }

    fn log(&self, lua: &Lua, function: &str, level: LogLevel, message: String) -> mlua::Result<()> {
        let size = message.len();
        self.emit(lua, function, RuntimeCommand::Log { level, message }, size)
    }
}

impl Meter {
    /// The interrupt: spends one unit, and once the budget or the time is spent raises an error
    /// at every interrupt point until the call unwinds.
    fn tick(&self, lua: &Lua) -> mlua::Result<VmState> {
        let remaining = self.remaining.get();
        let why = if remaining == 0 {
            "budget of interrupt points"
        } else if remaining % CLOCK_CHECK_INTERVAL == 0 && Instant::now() >= self.deadline.get() {
            self.remaining.set(0);
            "time limit"
        } else {
            self.remaining.set(remaining - 1);
            return Ok(VmState::Continue);
        };
        if self.exhausted_at.borrow().is_none() {
            let limit = if why == "time limit" {
                format!("{} ms", self.time_per_call.as_millis())
            } else {
                self.budget.to_string()
            };
            let location = match api::lua_frame(lua) {
                Some((file, line, Some(function))) => {
                    format!("{file}:{line} in function '{function}'")
                }
                Some((file, line, None)) => format!("{file}:{line}"),
                None => "outside Lua code".to_owned(),
            };
            let traceback = lua
                .traceback(None, 0)
                .map(|text| text.to_string_lossy())
                .unwrap_or_default();
            *self.exhausted_at.borrow_mut() =
                Some(format!("{location} ({why}: {limit})\n{traceback}"));
        }
        Err(mlua::Error::runtime("handler stopped: budget exceeded"))
    }
}

fn is_memory_error(err: &mlua::Error) -> bool {
    match err {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

fn find_misuse(err: &mlua::Error) -> Option<&str> {
    match err {
        mlua::Error::ExternalError(inner) => inner
            .downcast_ref::<Misuse>()
            .map(|misuse| misuse.0.as_str()),
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            find_misuse(cause)
        }
        _ => None,
    }
}

/// The message with the innermost traceback mlua captured on the way out.
fn with_traceback(message: String, err: &mlua::Error) -> String {
    match innermost_traceback(err) {
        Some(traceback) => format!("{message}\n{traceback}"),
        None => message,
    }
}

fn innermost_traceback(err: &mlua::Error) -> Option<&str> {
    match err {
        mlua::Error::CallbackError { cause, traceback } => {
            innermost_traceback(cause).or(Some(traceback))
        }
        mlua::Error::WithContext { cause, .. } => innermost_traceback(cause),
        _ => None,
    }
}

/// Drops the traceback line of the error handler itself (`[C]: in ?`), which only confuses.
fn tidy(message: &str) -> String {
    message
        .lines()
        .filter(|line| *line != "\t[C]: in ?")
        .collect::<Vec<_>>()
        .join("\n")
}

/// A script error as text: Lua's own message (which has a traceback), or a Rust function's
/// error followed by the traceback of the Lua code that called it.
fn render(err: &mlua::Error) -> String {
    match err {
        mlua::Error::RuntimeError(message) | mlua::Error::MemoryError(message) => message.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, traceback } => match cause.as_ref() {
            mlua::Error::RuntimeError(message) if message.contains("stack traceback:") => {
                message.clone()
            }
            mlua::Error::CallbackError { .. } => render(cause),
            other => format!("{}\n{traceback}", render(other)),
        },
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", render(cause)),
        mlua::Error::ExternalError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// 31 bits from the operating system's random source (the clock and pid if it cannot be read).
fn fresh_seed() -> i32 {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    let read =
        std::fs::File::open("/dev/urandom").and_then(|mut random| random.read_exact(&mut bytes));
    let seed = if read.is_ok() {
        u32::from_ne_bytes(bytes)
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    };
    (seed >> 1) as i32
}

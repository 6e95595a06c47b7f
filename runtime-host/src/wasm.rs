//! The WASM engine: game logic compiled to a WebAssembly module, run by wasmtime behind the same
//! [`Engine`] seam as Lua, with a fuel budget per event and a memory cap.
//!
//! # Guest ABI, version 1
//!
//! A module speaks the ABI through a handful of exports and imports of plain `i32`/`i64`
//! values; anything structured crosses as UTF-8 JSON in the module's own memory, in the shapes
//! of the runtime protocol. Any language that compiles to WebAssembly can implement it; Rust
//! games use `rally_sdk::guest` (feature `guest`), which implements it for them.
//!
//! ## Exports (all required)
//!
//! | name           | type                           | meaning |
//! |----------------|--------------------------------|---------|
//! | `memory`       | memory (32-bit, not shared)    | the module's linear memory; every pointer below is an offset in it |
//! | `rally_alloc`  | `(len: i32) -> i32`            | returns the address of `len` writable bytes where the host writes the next event; they must stay valid until `rally_handle` returns |
//! | `rally_handle` | `(ptr: i32, len: i32) -> i32`  | handles the event of `len` bytes at `ptr`; returns `0` when handled, anything else when the event failed (the reason given to `rally.fail` is reported) |
//!
//! A module whose exports are missing or have other types is refused when it is compiled
//! ([`WasmModule::compile`] names the export and both types). A start function, if any, runs
//! once per instance with the per-call fuel budget; commands it emits are dropped.
//!
//! ## Events (host → guest)
//!
//! One JSON object per `rally_handle` call, tagged by `type`, one per [`Event`]:
//!
//! ```text
//! {"type":"started","qualifier":"lobby"|"match","user_data":{..},"config":{..},"mode":"duel"|null}
//! {"type":"client_assigned","client_id":"..","user_id":"..","profile":{..},"group":"red"|null}
//! {"type":"client_removed","client_id":"..","reason":"left"}
//! {"type":"message","client_id":"..","payload":{"text":".."}}      binary: {"binary":"<base64>"}
//! {"type":"tick","dt":0.1}                                         seconds since the last tick
//! {"type":"stopping"}
//! ```
//!
//! Binary payloads are base64 (standard alphabet, padded), exactly as on the runtime protocol,
//! so a guest passes them through untouched. A guest should ignore unknown fields and event
//! types: later hosts may add them without a new ABI version.
//!
//! ## Imports (module `rally`; a module imports only those it uses)
//!
//! | name     | type                                     | meaning |
//! |----------|------------------------------------------|---------|
//! | `emit`   | `(ptr: i32, len: i32) -> i32`            | sends one command: a `RuntimeCommand` as JSON, e.g. `{"type":"respond_client","client_id":"..","payload":{"text":".."}}`; returns `0` when accepted, `1` when refused |
//! | `log`    | `(level: i32, ptr: i32, len: i32) -> i32`| a UTF-8 log line, level `0` debug, `1` info, `2` warn, `3` error, sent as a `log` command; `0` accepted, `1` refused |
//! | `now_ms` | `() -> i64`                              | wall clock, Unix milliseconds |
//! | `fail`   | `(ptr: i32, len: i32)`                   | why the current event failed (a panic message, say); reported with the failure, first call per event wins, cut to 4 KiB |
//!
//! Importing anything else, or these with other types, is refused at compile time.
//!
//! Commands take effect in the order emitted, and the ones emitted before a failure stand. A
//! refused command is not sent, the handler goes on, and when it returns the event is reported
//! as [`HandlerError::InvalidOutput`] naming the first refusal. Refused are: bytes outside the
//! module's memory; JSON that is not a `RuntimeCommand`; a payload (or log line) longer than
//! [`Limits::max_payload_bytes`] or binary that is not base64; a command longer than
//! [`max_command_bytes`] (six times the payload limit plus 4 KiB, room for any payload's JSON
//! escaping); an unknown log level or a log line that is not UTF-8.
//!
//! ## Limits and failures
//!
//! - **Fuel.** Before each event the store gets [`Limits::budget_per_call`] units of fuel
//!   (wasmtime charges about one per instruction). Each import call costs
//!   [`FUEL_PER_IMPORT_CALL`] more plus one per byte the host reads, so a guest cannot make
//!   the host work for free. Running dry stops the handler: [`HandlerError::BudgetExceeded`],
//!   with the function it was in.
//! - **Memory.** Linear memory may grow up to [`Limits::memory_bytes`]; a `memory.grow` past it
//!   returns `-1` to the guest, which may cope. If the handler then fails (a Rust guest aborts
//!   on a failed allocation), the failure is [`HandlerError::OutOfMemory`]. A module whose
//!   initial memory is already over the cap does not instantiate. The cap is on linear
//!   memory (which holds a Rust guest's stack and heap); the host's own bookkeeping for an
//!   instance (compiled code is shared, a store and tables are small) is not counted.
//! - **Traps** (`unreachable`, a panic, out-of-bounds access, stack overflow, running out of
//!   fuel or memory) end the event with an error carrying the trap, the message given to
//!   `rally.fail` and a wasm backtrace ([`HandlerError::Script`] unless fuel or memory says
//!   otherwise).
//!
//! **After a trap the instance is thrown away.** Wasmtime could call it again, but a trap
//! stops the guest mid-instruction: a Rust guest's shadow-stack pointer is never restored,
//! its allocator may be half-way through an update and its borrow flags stay set, so its
//! memory cannot be trusted. Before the next event the engine instantiates the module afresh
//! and replays `started` and one `client_assigned` per client still assigned (with the profile
//! the logic last set), so the logic knows its runtime and its clients again; commands emitted
//! by the replay go out with that next event's. Everything else the logic kept in memory is
//! lost, as after a crash. An event that fails without trapping (`rally_handle` returns
//! non-zero, or a command was refused) keeps the instance and its state.
//!
//! # Rust API
//!
//! [`WasmModule::compile`] checks and compiles a module on the process-wide wasmtime engine;
//! the result is cheap to clone and `Send + Sync`, so a host compiles each version once and
//! keeps it. [`WasmEngine::instantiate`] gives each runtime its own instance, store and limits;
//! [`WasmEngine`] implements [`Engine`]. Compiling takes a few hundred milliseconds for a
//! ~200 KB module, instantiating about a tenth of a millisecond: a runtime process does both
//! once at start.

use crate::engine::{Engine, Event, HandlerError, Limits};
use rally_sdk::runtime::{LogLevel, Payload, Qualifier, RuntimeCommand};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::{
    Caller, Config, Extern, ExternType, FuncType, InstancePre, Linker, Memory, Module,
    ResourceLimiter, Store, Trap, TypedFunc, ValType, WasmBacktrace,
};

/// The ABI this host speaks.
pub const ABI_VERSION: u32 = 1;
/// Fuel every import call costs on top of the instructions that made it.
pub const FUEL_PER_IMPORT_CALL: u64 = 1_000;
/// `rally.fail` messages are cut to this length.
pub const MAX_FAIL_MESSAGE_BYTES: usize = 4 * 1024;
/// Table growth past this many elements is refused like memory growth past the cap.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Frames of a wasm backtrace quoted in an error.
const BACKTRACE_FRAMES: usize = 8;

const IMPORT_MODULE: &str = "rally";
const STATUS_ACCEPTED: i32 = 0;
const STATUS_REFUSED: i32 = 1;

/// The longest command JSON `rally.emit` reads: room for a payload of the maximum size even if
/// every byte is escaped as `\u00XX`, plus the command's other fields.
pub fn max_command_bytes(limits: &Limits) -> usize {
    limits
        .max_payload_bytes
        .saturating_mul(6)
        .saturating_add(4 * 1024)
}

/// Why a module cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly module: {message}")]
    Invalid { message: String },
    #[error("the module does not export `{name}` ({expected}), which the guest ABI requires")]
    MissingExport {
        name: &'static str,
        expected: &'static str,
    },
    #[error("the module exports `{name}` as {found}; the guest ABI requires {expected}")]
    WrongExport {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error(
        "the module imports `{module}.{name}`, which the host does not provide \
         (it provides rally.emit, rally.log, rally.now_ms and rally.fail)"
    )]
    UnknownImport { module: String, name: String },
    #[error("the module imports `rally.{name}` as {found}; the host provides {expected}")]
    WrongImport {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("the module could not be instantiated: {message}")]
    Instantiate { message: String },
}

/// The value types the ABI uses.
#[derive(Clone, Copy)]
enum Num {
    I32,
    I64,
}

impl Num {
    fn matches(self, value_type: &ValType) -> bool {
        match self {
            Num::I32 => matches!(value_type, ValType::I32),
            Num::I64 => matches!(value_type, ValType::I64),
        }
    }
}

/// A function of the ABI: its name, its type and how the type reads in errors.
struct AbiFunc {
    name: &'static str,
    params: &'static [Num],
    results: &'static [Num],
    described: &'static str,
}

impl AbiFunc {
    fn matches(&self, func_type: &FuncType) -> bool {
        let same = |expected: &[Num], found: &mut dyn ExactSizeIterator<Item = ValType>| {
            found.len() == expected.len() && found.zip(expected).all(|(v, n)| n.matches(&v))
        };
        same(self.params, &mut func_type.params()) && same(self.results, &mut func_type.results())
    }
}

const MEMORY_EXPORT: &str = "memory";
const MEMORY_DESCRIBED: &str = "a 32-bit, unshared memory";

const REQUIRED_EXPORTS: [AbiFunc; 2] = [
    AbiFunc {
        name: "rally_alloc",
        params: &[Num::I32],
        results: &[Num::I32],
        described: "func (i32) -> (i32)",
    },
    AbiFunc {
        name: "rally_handle",
        params: &[Num::I32, Num::I32],
        results: &[Num::I32],
        described: "func (i32, i32) -> (i32)",
    },
];

const PROVIDED_IMPORTS: [AbiFunc; 4] = [
    AbiFunc {
        name: "emit",
        params: &[Num::I32, Num::I32],
        results: &[Num::I32],
        described: "func (i32, i32) -> (i32)",
    },
    AbiFunc {
        name: "log",
        params: &[Num::I32, Num::I32, Num::I32],
        results: &[Num::I32],
        described: "func (i32, i32, i32) -> (i32)",
    },
    AbiFunc {
        name: "now_ms",
        params: &[],
        results: &[Num::I64],
        described: "func () -> (i64)",
    },
    AbiFunc {
        name: "fail",
        params: &[Num::I32, Num::I32],
        results: &[],
        described: "func (i32, i32) -> ()",
    },
];

fn describe(extern_type: &ExternType) -> String {
    match extern_type {
        ExternType::Func(func_type) => {
            let list = |types: &mut dyn Iterator<Item = ValType>| {
                types.map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            };
            format!(
                "func ({}) -> ({})",
                list(&mut func_type.params()),
                list(&mut func_type.results())
            )
        }
        ExternType::Memory(memory) => match (memory.is_64(), memory.is_shared()) {
            (true, _) => "a 64-bit memory".to_owned(),
            (false, true) => "a shared memory".to_owned(),
            (false, false) => "a memory".to_owned(),
        },
        ExternType::Global(_) => "a global".to_owned(),
        ExternType::Table(_) => "a table".to_owned(),
        ExternType::Tag(_) => "a tag".to_owned(),
    }
}

/// The one wasmtime engine of the process: compiled code is shared by every instance of it.
fn shared_engine() -> Result<&'static wasmtime::Engine, LoadError> {
    static ENGINE: OnceLock<Result<wasmtime::Engine, String>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = Config::new();
        // Fuel rather than epochs: deterministic (the same handler stops at the same
        // instruction on every machine), and it needs no timer thread.
        config.consume_fuel(true);
        wasmtime::Engine::new(&config).map_err(|error| error.to_string())
    });
    engine.as_ref().map_err(|message| LoadError::Invalid {
        message: format!("the wasm engine could not be configured: {message}"),
    })
}

/// A checked and compiled module: compile once per version, instantiate once per runtime.
/// Cloning is cheap and clones share the compiled code.
#[derive(Clone)]
pub struct WasmModule {
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule")
            .field("name", &self.pre.module().name())
            .finish_non_exhaustive()
    }
}

impl WasmModule {
    /// Compiles a module (the binary format; the text format is accepted too) and checks its
    /// exports and imports against the guest ABI.
    pub fn compile(bytes: &[u8]) -> Result<Self, LoadError> {
        let engine = shared_engine()?;
        let module = Module::new(engine, bytes).map_err(|error| LoadError::Invalid {
            message: format!("{error:#}"),
        })?;
        check_exports(&module)?;
        check_imports(&module)?;
        let linker = host_functions(engine).map_err(|error| LoadError::Invalid {
            message: format!("host functions could not be defined: {error:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|error| LoadError::Instantiate {
                message: format!("{error:#}"),
            })?;
        Ok(Self { pre })
    }
}

fn check_exports(module: &Module) -> Result<(), LoadError> {
    match module.get_export(MEMORY_EXPORT) {
        None => {
            return Err(LoadError::MissingExport {
                name: MEMORY_EXPORT,
                expected: MEMORY_DESCRIBED,
            })
        }
        Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
        Some(other) => {
            return Err(LoadError::WrongExport {
                name: MEMORY_EXPORT,
                expected: MEMORY_DESCRIBED,
                found: describe(&other),
            })
        }
    }
    for export in &REQUIRED_EXPORTS {
        match module.get_export(export.name) {
            None => {
                return Err(LoadError::MissingExport {
                    name: export.name,
                    expected: export.described,
                })
            }
            Some(ExternType::Func(func_type)) if export.matches(&func_type) => {}
            Some(other) => {
                return Err(LoadError::WrongExport {
                    name: export.name,
                    expected: export.described,
                    found: describe(&other),
                })
            }
        }
    }
    Ok(())
}

fn check_imports(module: &Module) -> Result<(), LoadError> {
    for import in module.imports() {
        let provided = (import.module() == IMPORT_MODULE)
            .then(|| PROVIDED_IMPORTS.iter().find(|f| f.name == import.name()))
            .flatten();
        let Some(provided) = provided else {
            return Err(LoadError::UnknownImport {
                module: import.module().to_owned(),
                name: import.name().to_owned(),
            });
        };
        let ty = import.ty();
        let fits = matches!(&ty, ExternType::Func(func_type) if provided.matches(func_type));
        if !fits {
            return Err(LoadError::WrongImport {
                name: import.name().to_owned(),
                expected: provided.described,
                found: describe(&ty),
            });
        }
    }
    Ok(())
}

/// What the host functions of one instance see.
struct HostState {
    limits: Limits,
    /// The instance's exported memory, set once it is instantiated.
    memory: Option<Memory>,
    /// Commands of the current event, in order.
    emitted: Vec<RuntimeCommand>,
    /// The first command refused during the current event.
    refusal: Option<String>,
    /// What the guest gave `rally.fail` during the current event.
    failure: Option<String>,
    cap: MemoryCap,
}

impl HostState {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            memory: None,
            emitted: Vec::new(),
            refusal: None,
            failure: None,
            cap: MemoryCap {
                limit_bytes: limits.memory_bytes,
                refused: false,
            },
        }
    }

    fn refuse(&mut self, reason: String) -> i32 {
        self.refusal.get_or_insert(reason);
        STATUS_REFUSED
    }
}

/// Refuses growth past the cap and remembers that it did, so that the failure that usually
/// follows is reported as running out of memory.
struct MemoryCap {
    limit_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }
}

fn host_functions(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap(IMPORT_MODULE, "emit", host_emit)?;
    linker.func_wrap(IMPORT_MODULE, "log", host_log)?;
    linker.func_wrap(IMPORT_MODULE, "now_ms", host_now_ms)?;
    linker.func_wrap(IMPORT_MODULE, "fail", host_fail)?;
    Ok(linker)
}

/// Takes `units` of fuel for work the host does on the guest's behalf.
fn charge(caller: &mut Caller<'_, HostState>, units: u64) -> wasmtime::Result<()> {
    let fuel = caller.get_fuel()?;
    if fuel < units {
        caller.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    caller.set_fuel(fuel - units)
}

/// The guest bytes at `ptr..ptr + len`, if they are inside its memory and at most `max` long.
fn guest_bytes(memory: &[u8], ptr: i32, len: i32, max: usize) -> Result<&[u8], String> {
    let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
    if len > max {
        return Err(format!("{len} bytes is over the limit of {max}"));
    }
    let start = ptr as u32 as usize;
    start
        .checked_add(len)
        .and_then(|end| memory.get(start..end))
        .ok_or_else(|| format!("{len} bytes at {start:#x} are outside the module's memory"))
}

/// Reads the guest bytes at `ptr` (charging fuel per byte) and hands them to `read` together
/// with the host state.
fn with_guest_bytes<R>(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    max: usize,
    read: impl FnOnce(Result<&[u8], String>, &mut HostState) -> R,
) -> wasmtime::Result<R> {
    // Bytes that will not be read (a refused length) cost nothing beyond the call.
    let read_len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= max)
        .unwrap_or(0);
    charge(caller, FUEL_PER_IMPORT_CALL + read_len as u64)?;
    let memory = match caller.data().memory {
        Some(memory) => Some(memory),
        // A start function runs before the engine knows the memory.
        None => caller
            .get_export(MEMORY_EXPORT)
            .and_then(Extern::into_memory),
    };
    let Some(memory) = memory else {
        return Ok(read(
            Err("the module has no memory".to_owned()),
            caller.data_mut(),
        ));
    };
    let (data, state) = memory.data_and_store_mut(caller);
    Ok(read(guest_bytes(data, ptr, len, max), state))
}

fn host_emit(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let max = max_command_bytes(&caller.data().limits);
    with_guest_bytes(&mut caller, ptr, len, max, |bytes, state| {
        match bytes.and_then(|bytes| read_command(bytes, &state.limits)) {
            Ok(command) => {
                state.emitted.push(command);
                STATUS_ACCEPTED
            }
            Err(reason) => state.refuse(format!("rally.emit refused: {reason}")),
        }
    })
}

fn host_log(
    mut caller: Caller<'_, HostState>,
    level: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let max = caller.data().limits.max_payload_bytes;
    with_guest_bytes(&mut caller, ptr, len, max, |bytes, state| {
        let level = match level {
            0 => Ok(LogLevel::Debug),
            1 => Ok(LogLevel::Info),
            2 => Ok(LogLevel::Warn),
            3 => Ok(LogLevel::Error),
            other => Err(format!("unknown log level {other} (0 to 3)")),
        };
        let line = bytes.and_then(|bytes| {
            std::str::from_utf8(bytes).map_err(|error| format!("log line is not UTF-8: {error}"))
        });
        match level.and_then(|level| line.map(|line| (level, line))) {
            Ok((level, line)) => {
                state.emitted.push(RuntimeCommand::Log {
                    level,
                    message: line.to_owned(),
                });
                STATUS_ACCEPTED
            }
            Err(reason) => state.refuse(format!("rally.log refused: {reason}")),
        }
    })
}

fn host_now_ms(mut caller: Caller<'_, HostState>) -> wasmtime::Result<i64> {
    charge(&mut caller, FUEL_PER_IMPORT_CALL)?;
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

fn host_fail(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let max = usize::try_from(len.max(0))
        .unwrap_or(0)
        .min(MAX_FAIL_MESSAGE_BYTES);
    // Only the first MAX_FAIL_MESSAGE_BYTES are read: a long message is cut, not refused.
    let len = i32::try_from(max).unwrap_or(0);
    with_guest_bytes(&mut caller, ptr, len, max, |bytes, state| {
        let message = match bytes {
            Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Err(reason) => format!("rally.fail was given unreadable memory: {reason}"),
        };
        state.failure.get_or_insert(message);
    })
}

/// Parses and checks one command the guest emitted.
fn read_command(bytes: &[u8], limits: &Limits) -> Result<RuntimeCommand, String> {
    let command: RuntimeCommand =
        serde_json::from_slice(bytes).map_err(|error| format!("not a runtime command: {error}"))?;
    let payload = match &command {
        RuntimeCommand::RespondClient { payload, .. }
        | RuntimeCommand::Multicast { payload, .. }
        | RuntimeCommand::Broadcast { payload } => Some(payload),
        _ => None,
    };
    if let Some(payload) = payload {
        if payload.len() > limits.max_payload_bytes {
            return Err(format!(
                "payload of {} bytes is over max_payload_bytes ({})",
                payload.len(),
                limits.max_payload_bytes
            ));
        }
    }
    Ok(command)
}

/// An [`Event`] in the JSON shape the ABI defines, borrowing from the event.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum GuestEvent<'a> {
    Started {
        qualifier: Qualifier,
        user_data: &'a serde_json::Value,
        config: &'a serde_json::Value,
        mode: Option<&'a str>,
    },
    ClientAssigned {
        client_id: &'a str,
        user_id: &'a str,
        profile: &'a serde_json::Value,
        group: Option<&'a str>,
    },
    ClientRemoved {
        client_id: &'a str,
        reason: &'a str,
    },
    Message {
        client_id: &'a str,
        payload: &'a Payload,
    },
    Tick {
        dt: f64,
    },
    Stopping,
}

impl<'a> From<&'a Event> for GuestEvent<'a> {
    fn from(event: &'a Event) -> Self {
        match event {
            Event::Started {
                qualifier,
                user_data,
                config,
                mode,
            } => GuestEvent::Started {
                qualifier: *qualifier,
                user_data,
                config,
                mode: mode.as_deref(),
            },
            Event::ClientAssigned {
                client_id,
                user_id,
                profile,
                group,
            } => GuestEvent::ClientAssigned {
                client_id,
                user_id,
                profile,
                group: group.as_deref(),
            },
            Event::ClientRemoved { client_id, reason } => {
                GuestEvent::ClientRemoved { client_id, reason }
            }
            Event::Message { client_id, payload } => GuestEvent::Message { client_id, payload },
            Event::Tick { dt } => GuestEvent::Tick { dt: *dt },
            Event::Stopping => GuestEvent::Stopping,
        }
    }
}

/// One instance of the module, in its own store.
struct GuestInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i32>,
}

/// How an event failed, and whether the instance survived it.
enum CallError {
    /// The guest returned normally; its state is intact.
    Reported(HandlerError),
    /// The guest trapped; its memory cannot be trusted.
    Trapped(HandlerError),
}

impl GuestInstance {
    fn new(module: &WasmModule, limits: Limits) -> Result<Self, String> {
        let mut store = Store::new(module.pre.module().engine(), HostState::new(limits));
        store.limiter(|state| &mut state.cap);
        store
            .set_fuel(limits.budget_per_call)
            .map_err(|error| error.to_string())?;
        let instance = module.pre.instantiate(&mut store).map_err(|error| {
            if store.data().cap.refused {
                format!(
                    "its memory does not fit in the limit of {} bytes",
                    limits.memory_bytes
                )
            } else {
                describe_trap(&error, store.data_mut().failure.take())
            }
        })?;
        let memory = instance
            .get_memory(&mut store, MEMORY_EXPORT)
            .ok_or("the module has no memory export")?;
        let alloc = instance
            .get_typed_func(&mut store, "rally_alloc")
            .map_err(|error| error.to_string())?;
        let handle = instance
            .get_typed_func(&mut store, "rally_handle")
            .map_err(|error| error.to_string())?;
        let state = store.data_mut();
        state.memory = Some(memory);
        state.emitted.clear();
        state.failure = None;
        state.refusal = None;
        Ok(Self {
            store,
            memory,
            alloc,
            handle,
        })
    }

    /// Writes the event into guest memory and runs `rally_handle`; the commands emitted stay
    /// in the store for the caller to take.
    fn call(&mut self, event_json: &[u8]) -> Result<(), CallError> {
        let state = self.store.data_mut();
        state.failure = None;
        state.refusal = None;
        state.cap.refused = false;
        let budget = state.limits.budget_per_call;
        self.store
            .set_fuel(budget)
            .map_err(|error| CallError::Reported(script_error(error.to_string())))?;

        let len = i32::try_from(event_json.len()).map_err(|_| {
            CallError::Reported(HandlerError::InvalidOutput {
                message: format!("event of {} bytes is too large", event_json.len()),
            })
        })?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|error| CallError::Trapped(self.trap_error(&error)))?;
        let written = match ptr {
            0 => Err("rally_alloc returned a null pointer".to_owned()),
            ptr => self
                .memory
                .write(&mut self.store, ptr as u32 as usize, event_json)
                .map_err(|_| format!("rally_alloc returned {ptr:#x}, outside the module's memory")),
        };
        if let Err(message) = written {
            let failure = self.store.data_mut().failure.take();
            let message = failure.map_or(message.clone(), |f| format!("{message}: {f}"));
            return Err(CallError::Reported(HandlerError::InvalidOutput { message }));
        }

        let status = self
            .handle
            .call(&mut self.store, (ptr, len))
            .map_err(|error| CallError::Trapped(self.trap_error(&error)))?;
        let state = self.store.data_mut();
        if status != 0 {
            let message = state
                .failure
                .take()
                .unwrap_or_else(|| format!("rally_handle returned status {status}"));
            return Err(CallError::Reported(script_error(message)));
        }
        if let Some(message) = state.refusal.take() {
            return Err(CallError::Reported(HandlerError::InvalidOutput { message }));
        }
        Ok(())
    }

    fn trap_error(&mut self, error: &wasmtime::Error) -> HandlerError {
        let state = self.store.data_mut();
        if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
            return HandlerError::BudgetExceeded {
                location: trap_location(error),
            };
        }
        if state.cap.refused {
            return HandlerError::OutOfMemory {
                limit_bytes: state.limits.memory_bytes,
            };
        }
        script_error(describe_trap(error, state.failure.take()))
    }
}

fn script_error(message: String) -> HandlerError {
    HandlerError::Script { message }
}

/// The guest's own reason (a panic message, with file and line), the trap, and the wasm
/// backtrace.
fn describe_trap(error: &wasmtime::Error, failure: Option<String>) -> String {
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    let mut message = match failure {
        Some(failure) => format!("{failure}\n{trap}"),
        None => trap,
    };
    let frames = backtrace_frames(error);
    if !frames.is_empty() {
        message.push_str("\nwasm backtrace:");
        for frame in frames {
            message.push_str("\n  at ");
            message.push_str(&frame);
        }
    }
    message
}

/// The innermost function of the guest's own code when it trapped.
fn trap_location(error: &wasmtime::Error) -> String {
    backtrace_frames(error)
        .into_iter()
        .next()
        .unwrap_or_else(|| "an unknown function".to_owned())
}

/// Frames of the trap's wasm backtrace, innermost first, as `0x1f2 - module!function` with
/// Rust names demangled. Frames of Rust's own panic and abort machinery at the top are left
/// out: the frame that panicked is the one a developer wants.
fn backtrace_frames(error: &wasmtime::Error) -> Vec<String> {
    let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() else {
        return Vec::new();
    };
    // Only the Display of a backtrace demangles names; its first line is a heading and each
    // frame reads `  3:  0x1f2 - module!function`.
    let frames: Vec<String> = backtrace
        .to_string()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(_index, frame)| frame.trim().replace("<unknown>!", ""))
        .collect();
    let is_runtime_frame = |frame: &String| {
        let function = frame.split_once('!').map_or(frame.as_str(), |(_, f)| f);
        [
            "__rustc[",
            "std[",
            "core[",
            "alloc[",
            "__rust_",
            "rust_begin_unwind",
        ]
        .iter()
        .any(|prefix| function.starts_with(prefix))
    };
    let own_code = frames.iter().position(|frame| !is_runtime_frame(frame));
    frames
        .iter()
        .skip(own_code.unwrap_or(0))
        .take(BACKTRACE_FRAMES)
        .cloned()
        .collect()
}

/// What a fresh instance is told so that it knows its runtime and clients again.
#[derive(Default)]
struct History {
    started: Option<Event>,
    /// `ClientAssigned` events of the clients still assigned, in assignment order, with the
    /// profile the logic last set.
    clients: Vec<Event>,
}

impl History {
    fn record_event(&mut self, event: &Event) {
        match event {
            Event::Started { .. } => self.started = Some(event.clone()),
            Event::ClientAssigned { client_id, .. } => {
                self.forget_client(client_id);
                self.clients.push(event.clone());
            }
            Event::ClientRemoved { client_id, .. } => self.forget_client(client_id),
            _ => {}
        }
    }

    fn record_command(&mut self, command: &RuntimeCommand) {
        let RuntimeCommand::SetProfile {
            client_id: changed,
            profile: new_profile,
        } = command
        else {
            return;
        };
        for client in &mut self.clients {
            if let Event::ClientAssigned {
                client_id, profile, ..
            } = client
            {
                if client_id == changed {
                    *profile = new_profile.clone();
                }
            }
        }
    }

    fn forget_client(&mut self, gone: &str) {
        self.clients.retain(
            |client| !matches!(client, Event::ClientAssigned { client_id, .. } if client_id == gone),
        );
    }

    fn replay(&self) -> Vec<Event> {
        self.started.iter().chain(&self.clients).cloned().collect()
    }
}

/// The logic of one runtime: an instance of a [`WasmModule`] with its own memory, fuel and
/// limits, handling events in order.
pub struct WasmEngine {
    module: WasmModule,
    limits: Limits,
    /// `None` after a trap, until the next event instantiates the module again.
    instance: Option<GuestInstance>,
    history: History,
    /// Reused for every event's JSON.
    event_json: Vec<u8>,
    restarts: u64,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("module", &self.module)
            .field("limits", &self.limits)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// A new instance of `module` held to `limits`. Fails if the module's initial memory is
    /// over the cap or its start function fails.
    pub fn instantiate(module: &WasmModule, limits: Limits) -> Result<Self, LoadError> {
        let instance = GuestInstance::new(module, limits)
            .map_err(|message| LoadError::Instantiate { message })?;
        Ok(Self {
            module: module.clone(),
            limits,
            instance: Some(instance),
            history: History::default(),
            event_json: Vec::new(),
            restarts: 0,
        })
    }

    /// How many times the module was instantiated again after a trap.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Runs one event in the current instance; a trap discards the instance.
    fn deliver(
        &mut self,
        event: &Event,
        commands: &mut Vec<RuntimeCommand>,
    ) -> Result<(), HandlerError> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(script_error("the module is not running".to_owned()));
        };
        self.event_json.clear();
        serde_json::to_writer(&mut self.event_json, &GuestEvent::from(event))
            .map_err(|error| script_error(format!("event could not be encoded: {error}")))?;
        let result = instance.call(&self.event_json);
        commands.append(&mut instance.store.data_mut().emitted);
        match result {
            Ok(()) => Ok(()),
            Err(CallError::Reported(error)) => Err(error),
            Err(CallError::Trapped(error)) => {
                self.instance = None;
                Err(error)
            }
        }
    }

    /// Instantiates the module again and replays what it must know. A replayed event that
    /// fails without trapping does not stop the replay.
    fn restart(&mut self, commands: &mut Vec<RuntimeCommand>) -> Result<(), HandlerError> {
        let instance = GuestInstance::new(&self.module, self.limits).map_err(|message| {
            script_error(format!("the module could not be started again: {message}"))
        })?;
        self.instance = Some(instance);
        self.restarts += 1;
        tracing::warn!(
            restarts = self.restarts,
            "wasm logic restarted after a trap; its memory starts over"
        );
        for event in self.history.replay() {
            if let Err(error) = self.deliver(&event, commands) {
                if self.instance.is_none() {
                    return Err(script_error(format!(
                        "the module failed again while being brought back after a trap: {error}"
                    )));
                }
                tracing::warn!(%error, "a replayed event failed");
            }
        }
        Ok(())
    }
}

impl Engine for WasmEngine {
    fn handle(
        &mut self,
        event: &Event,
        commands: &mut Vec<RuntimeCommand>,
    ) -> Result<(), HandlerError> {
        let first_new = commands.len();
        let mut result = Ok(());
        if self.instance.is_none() {
            result = self.restart(commands);
        }
        if result.is_ok() {
            result = self.deliver(event, commands);
        }
        // The platform's view changes whether or not the handler coped with it.
        self.history.record_event(event);
        for command in &commands[first_new..] {
            self.history.record_command(command);
        }
        result
    }
}

//! The WASM engine against real modules: the `examples/wasm-echo` guest built with cargo for
//! `wasm32-unknown-unknown`, a hostile Rust guest built the same way, and small hand-written
//! WAT modules for what a Rust guest cannot get wrong (exports, signatures, bad memory).
//!
//! Building the guests needs `rustup target add wasm32-unknown-unknown`.

use rally_runtime_host::engine::{Engine, Event, HandlerError, Limits};
use rally_runtime_host::wasm::{LoadError, WasmEngine, WasmModule};
use rally_sdk::runtime::{LogLevel, Payload, Qualifier, RuntimeCommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the guest crate in `crate_dir` for wasm32 and returns its module's bytes. Every guest
/// shares one target directory, so their dependencies are compiled once.
fn build_guest(crate_dir: &Path, artifact: &str) -> Vec<u8> {
    let target_dir = workspace_root().join("target").join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(crate_dir)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building the guest in {} failed (is the target installed? \
         `rustup target add wasm32-unknown-unknown`):\n{}",
        crate_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir
        .join("wasm32-unknown-unknown")
        .join("release")
        .join(artifact);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The example guest, compiled once per test process.
fn echo_module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let bytes = build_guest(
            &workspace_root().join("examples").join("wasm-echo"),
            "wasm_echo.wasm",
        );
        WasmModule::compile(&bytes).expect("the example guest loads")
    })
}

/// A Rust guest that misbehaves on request, to see the engine and the SDK's glue cope.
const HOSTILE_GUEST: &str = r#"
use rally_sdk::guest::{Assignment, Context, Game, Start};
use rally_sdk::runtime::{Payload, Qualifier};

#[derive(Default)]
struct Hostile {
    qualifier: Option<Qualifier>,
    clients: Vec<Assignment>,
    messages: u32,
    hoard: Vec<Vec<u8>>,
}

impl Game for Hostile {
    fn on_start(&mut self, _ctx: &mut Context, start: Start) {
        self.qualifier = Some(start.qualifier);
    }
    fn on_client_assigned(&mut self, _ctx: &mut Context, client: Assignment) {
        self.clients.push(client);
    }
    fn on_client_removed(&mut self, _ctx: &mut Context, client_id: &str, _reason: &str) {
        self.clients.retain(|client| client.client_id != client_id);
    }
    fn on_message(&mut self, ctx: &mut Context, client_id: &str, payload: Payload) {
        self.messages += 1;
        let Payload::Text(text) = payload else { return };
        let answer = match text.as_str() {
            "panic" => panic!("asked to panic"),
            "spin" => loop {
                std::hint::black_box(&self.messages);
            },
            "hog" => loop {
                self.hoard.push(Vec::with_capacity(1 << 20));
            },
            "big" => {
                ctx.respond(client_id, Payload::Text("x".repeat(100_000)));
                "after big".to_owned()
            }
            "level-up" => {
                ctx.set_profile(client_id, serde_json::json!({"level": 2}));
                "levelled".to_owned()
            }
            "time" => ctx.now_ms().to_string(),
            "count" => self.messages.to_string(),
            "who" => {
                let clients: Vec<String> = self
                    .clients
                    .iter()
                    .map(|client| format!("{}:{}", client.client_id, client.profile))
                    .collect();
                format!("{:?} {}", self.qualifier, clients.join(","))
            }
            _ => text,
        };
        ctx.respond(client_id, Payload::Text(answer));
    }
}

rally_sdk::export_game!(Hostile);
"#;

fn hostile_module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let crate_dir = workspace_root()
            .join("target")
            .join("wasm-guests")
            .join("hostile-guest");
        std::fs::create_dir_all(crate_dir.join("src")).unwrap();
        let sdk = workspace_root().join("sdk-rust");
        let manifest = format!(
            "[package]\nname = \"hostile-guest\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n\
             rally-sdk = {{ path = {sdk:?}, default-features = false, features = [\"guest\"] }}\n\
             serde_json = \"1\"\n\n[profile.release]\npanic = \"abort\"\n\n[workspace]\n",
            sdk = sdk.display().to_string()
        );
        write_if_changed(&crate_dir.join("Cargo.toml"), &manifest);
        write_if_changed(&crate_dir.join("src").join("lib.rs"), HOSTILE_GUEST);
        let bytes = build_guest(&crate_dir, "hostile_guest.wasm");
        WasmModule::compile(&bytes).expect("the hostile guest loads")
    })
}

/// Leaves the file alone when it already says this, so that cargo has nothing to rebuild, and
/// replaces it whole otherwise: test processes running side by side never see half a file.
fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, contents).unwrap();
        std::fs::rename(&partial, path).unwrap();
    }
}

fn started(qualifier: Qualifier, mode: Option<&str>) -> Event {
    Event::Started {
        qualifier,
        user_data: json!({"greeting": "Welcome!"}),
        config: json!({}),
        mode: mode.map(str::to_owned),
    }
}

fn assigned(client_id: &str, group: Option<&str>) -> Event {
    Event::ClientAssigned {
        client_id: client_id.to_owned(),
        user_id: format!("user-of-{client_id}"),
        profile: json!({"level": 1}),
        group: group.map(str::to_owned),
    }
}

fn message(client_id: &str, text: &str) -> Event {
    Event::Message {
        client_id: client_id.to_owned(),
        payload: Payload::Text(text.to_owned()),
    }
}

fn respond(client_id: &str, text: &str) -> RuntimeCommand {
    RuntimeCommand::RespondClient {
        client_id: client_id.to_owned(),
        payload: Payload::Text(text.to_owned()),
    }
}

fn info(message: &str) -> RuntimeCommand {
    RuntimeCommand::Log {
        level: LogLevel::Info,
        message: message.to_owned(),
    }
}

/// Runs one event and returns what it emitted with the outcome.
fn run(engine: &mut WasmEngine, event: Event) -> (Vec<RuntimeCommand>, Result<(), HandlerError>) {
    let mut commands = Vec::new();
    let result = engine.handle(&event, &mut commands);
    (commands, result)
}

/// Runs one event that must succeed and returns what it emitted.
fn run_ok(engine: &mut WasmEngine, event: Event) -> Vec<RuntimeCommand> {
    let (commands, result) = run(engine, event.clone());
    result.unwrap_or_else(|error| panic!("{event:?} failed: {error}"));
    commands
}

fn script_message(result: Result<(), HandlerError>) -> String {
    match result {
        Err(HandlerError::Script { message }) => message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[test]
fn the_example_lobby_greets_echoes_and_asks_for_a_duel() {
    let mut lobby = WasmEngine::instantiate(echo_module(), Limits::default()).unwrap();

    let commands = run_ok(&mut lobby, started(Qualifier::Lobby, None));
    assert_eq!(commands, [info("lobby started")]);
    let commands = run_ok(&mut lobby, assigned("c1", None));
    assert_eq!(
        commands,
        [respond("c1", "Welcome! Send \"duel\" to find an opponent.")]
    );
    assert_eq!(
        run_ok(&mut lobby, message("c1", "hello there")),
        [respond("c1", "hello there")]
    );
    let binary = Payload::Binary(vec![0, 1, 2, 0xff].into());
    let commands = run_ok(
        &mut lobby,
        Event::Message {
            client_id: "c1".into(),
            payload: binary.clone(),
        },
    );
    assert_eq!(
        commands,
        [RuntimeCommand::RespondClient {
            client_id: "c1".into(),
            payload: binary
        }]
    );
    assert_eq!(
        run_ok(&mut lobby, message("c1", "duel")),
        [RuntimeCommand::RequestMatchmaking {
            client_id: "c1".into(),
            mode: "duel".into()
        }]
    );
    assert_eq!(run_ok(&mut lobby, Event::Tick { dt: 0.1 }), []);
    let commands = run_ok(
        &mut lobby,
        Event::ClientRemoved {
            client_id: "c1".into(),
            reason: "matched".into(),
        },
    );
    assert_eq!(
        commands,
        [RuntimeCommand::Log {
            level: LogLevel::Debug,
            message: "client c1 left: matched".into()
        }]
    );
    assert_eq!(
        run_ok(&mut lobby, Event::Stopping),
        [info("lobby stopping")]
    );
    assert_eq!(lobby.restarts(), 0);
}

#[test]
fn the_example_match_echoes_and_ends_after_a_minute() {
    let mut duel = WasmEngine::instantiate(echo_module(), Limits::default()).unwrap();
    assert_eq!(
        run_ok(&mut duel, started(Qualifier::Match, Some("duel"))),
        [info("match of mode duel started")]
    );
    assert_eq!(
        run_ok(&mut duel, assigned("c1", Some("red"))),
        [respond("c1", "you play for red")]
    );
    assert_eq!(
        run_ok(&mut duel, message("c1", "duel")),
        [respond("c1", "duel")],
        "a match echoes what a lobby would take as a request"
    );
    let mut stops = Vec::new();
    for _ in 0..150 {
        stops.extend(run_ok(&mut duel, Event::Tick { dt: 0.5 }));
    }
    assert_eq!(
        stops,
        [RuntimeCommand::StopMatch {
            reason: "time is up".into()
        }]
    );
    assert_eq!(
        run_ok(&mut duel, Event::Stopping),
        [info("match over after 75 s")]
    );
}

#[test]
fn one_compiled_module_serves_independent_instances() {
    fn shareable<T: Send + Sync>(_: &T) {}
    fn movable<T: Send>(_: &T) {}
    shareable(echo_module());
    let from_another_thread = std::thread::spawn(|| {
        let mut engine = WasmEngine::instantiate(echo_module(), Limits::default()).unwrap();
        movable(&engine);
        run_ok(&mut engine, message("c9", "hi"))
    });
    assert_eq!(from_another_thread.join().unwrap(), [respond("c9", "hi")]);

    let mut lobby = WasmEngine::instantiate(echo_module(), Limits::default()).unwrap();
    let mut duel = WasmEngine::instantiate(echo_module(), Limits::default()).unwrap();
    run_ok(&mut lobby, started(Qualifier::Lobby, None));
    run_ok(&mut duel, started(Qualifier::Match, Some("duel")));
    assert_eq!(
        run_ok(&mut lobby, message("c1", "duel")),
        [RuntimeCommand::RequestMatchmaking {
            client_id: "c1".into(),
            mode: "duel".into()
        }]
    );
    assert_eq!(
        run_ok(&mut duel, message("c1", "duel")),
        [respond("c1", "duel")]
    );
}

#[test]
fn a_panic_is_reported_with_its_location_and_the_logic_comes_back() {
    let mut engine = WasmEngine::instantiate(hostile_module(), Limits::default()).unwrap();
    run_ok(&mut engine, started(Qualifier::Match, Some("duel")));
    run_ok(&mut engine, assigned("c1", Some("red")));
    run_ok(&mut engine, assigned("c2", Some("blue")));
    run_ok(&mut engine, assigned("c3", Some("blue")));
    run_ok(
        &mut engine,
        Event::ClientRemoved {
            client_id: "c3".into(),
            reason: "left".into(),
        },
    );
    assert_eq!(
        run_ok(&mut engine, message("c1", "level-up")),
        [
            RuntimeCommand::SetProfile {
                client_id: "c1".into(),
                profile: json!({"level": 2})
            },
            respond("c1", "levelled")
        ]
    );
    run_ok(&mut engine, message("c1", "hello"));
    assert_eq!(
        run_ok(&mut engine, message("c1", "count")),
        [respond("c1", "3")]
    );

    let (commands, result) = run(&mut engine, message("c1", "panic"));
    assert_eq!(commands, []);
    let message_text = script_message(result);
    assert!(message_text.contains("asked to panic"), "{message_text}");
    assert!(message_text.contains("src/lib.rs"), "{message_text}");
    assert!(message_text.contains("unreachable"), "{message_text}");
    assert!(message_text.contains("wasm backtrace"), "{message_text}");

    // The next event meets a fresh instance that was told its runtime and clients again.
    assert_eq!(
        run_ok(&mut engine, message("c2", "who")),
        [respond(
            "c2",
            r#"Some(Match) c1:{"level":2},c2:{"level":1}"#
        )]
    );
    assert_eq!(engine.restarts(), 1);
    assert_eq!(
        run_ok(&mut engine, message("c1", "count")),
        [respond("c1", "2")],
        "everything else in memory started over"
    );
}

#[test]
fn an_endless_handler_is_stopped_by_its_budget_and_the_next_event_runs() {
    let limits = Limits {
        budget_per_call: 1_000_000,
        ..Limits::default()
    };
    let mut engine = WasmEngine::instantiate(hostile_module(), limits).unwrap();
    run_ok(&mut engine, started(Qualifier::Lobby, None));
    let started_at = std::time::Instant::now();
    match run(&mut engine, message("c1", "spin")).1 {
        Err(HandlerError::BudgetExceeded { location }) => {
            assert!(location.contains("Hostile"), "{location}")
        }
        other => panic!("expected the budget to stop the handler, got {other:?}"),
    }
    assert!(started_at.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        run_ok(&mut engine, message("c1", "still there?")),
        [respond("c1", "still there?")]
    );
}

#[test]
fn memory_growth_past_the_cap_is_refused_and_reported() {
    let limits = Limits {
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let mut engine = WasmEngine::instantiate(hostile_module(), limits).unwrap();
    run_ok(&mut engine, started(Qualifier::Lobby, None));
    assert_eq!(
        run(&mut engine, message("c1", "hog")).1,
        Err(HandlerError::OutOfMemory {
            limit_bytes: 16 * 1024 * 1024
        })
    );
    assert_eq!(
        run_ok(&mut engine, message("c1", "who")),
        [respond("c1", "Some(Lobby) ")]
    );
}

#[test]
fn an_oversized_payload_is_refused_and_the_rest_stands() {
    let mut engine = WasmEngine::instantiate(hostile_module(), Limits::default()).unwrap();
    let (commands, result) = run(&mut engine, message("c1", "big"));
    assert_eq!(commands, [respond("c1", "after big")]);
    match result {
        Err(HandlerError::InvalidOutput { message }) => {
            assert!(message.contains("max_payload_bytes"), "{message}")
        }
        other => panic!("expected the payload to be refused, got {other:?}"),
    }
    assert_eq!(engine.restarts(), 0, "a refusal keeps the instance");
    assert_eq!(
        run_ok(&mut engine, message("c1", "count")),
        [respond("c1", "2")]
    );
}

#[test]
fn the_guest_reads_the_host_clock() {
    let mut engine = WasmEngine::instantiate(hostile_module(), Limits::default()).unwrap();
    let commands = run_ok(&mut engine, message("c1", "time"));
    let [RuntimeCommand::RespondClient {
        payload: Payload::Text(text),
        ..
    }] = commands.as_slice()
    else {
        panic!("unexpected {commands:?}");
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let guest_ms: i64 = text.parse().unwrap();
    assert!((now_ms - guest_ms).abs() < 60_000, "{guest_ms} vs {now_ms}");
}

// Hand-written modules. Each answers a message with `ok_command` (a broadcast of "ok") and
// does its misbehaviour on a tick: the first letter of the event's type is at offset 9 of
// `{"type":"...`.

const OK_COMMAND: &str = r#"{"type":"broadcast","payload":{"text":"ok"}}"#;
const BIG_COMMAND: &str = r#"{"type":"broadcast","payload":{"text":"more than eight bytes"}}"#;
const BAD_COMMAND: &str = r#"{"type":"respond_client","client_id":12}"#;
const FAIL_MESSAGE: &str = "the guest gave up";

fn wat_bytes(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A module speaking the ABI whose `rally_handle` runs `on_tick` for ticks. `extra` goes into
/// the module (a start function, say) and `memory_pages` sizes its initial memory.
fn guest_wat(on_tick: &str, extra: &str, memory_pages: u32) -> String {
    format!(
        r#"(module
  (import "rally" "emit" (func $emit (param i32 i32) (result i32)))
  (import "rally" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rally" "fail" (func $fail (param i32 i32)))
  (memory (export "memory") {memory_pages})
  (data (i32.const 16) "{ok}")
  (data (i32.const 128) "{big}")
  (data (i32.const 256) "{bad}")
  (data (i32.const 384) "{fail}")
  (data (i32.const 512) "\ff\fe")
  (func (export "rally_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "rally_handle") (param $ptr i32) (param $len i32) (result i32)
    (if (i32.eq (i32.load8_u offset=9 (local.get $ptr)) (i32.const 116))
      (then {on_tick}))
    (drop (call $emit (i32.const 16) (i32.const {ok_len})))
    (i32.const 0))
  {extra})"#,
        ok = wat_bytes(OK_COMMAND),
        big = wat_bytes(BIG_COMMAND),
        bad = wat_bytes(BAD_COMMAND),
        fail = FAIL_MESSAGE,
        ok_len = OK_COMMAND.len(),
    )
}

fn ok_broadcast() -> RuntimeCommand {
    RuntimeCommand::Broadcast {
        payload: Payload::Text("ok".into()),
    }
}

fn wat_engine(on_tick: &str, limits: Limits) -> WasmEngine {
    let module = WasmModule::compile(guest_wat(on_tick, "", 1).as_bytes()).unwrap();
    WasmEngine::instantiate(&module, limits).unwrap()
}

/// Runs a tick (the misbehaviour) and then a message, which must be answered normally.
fn misbehave(engine: &mut WasmEngine) -> (Vec<RuntimeCommand>, Result<(), HandlerError>) {
    let outcome = run(engine, Event::Tick { dt: 0.1 });
    assert_eq!(
        run_ok(engine, message("c1", "hi")),
        [ok_broadcast()],
        "the message after the misbehaviour is handled"
    );
    outcome
}

#[test]
fn a_well_behaved_wat_module_works() {
    let mut engine = wat_engine("", Limits::default());
    assert_eq!(run_ok(&mut engine, message("c1", "hi")), [ok_broadcast()]);
    assert_eq!(
        run_ok(&mut engine, Event::Tick { dt: 0.1 }),
        [ok_broadcast()]
    );
}

#[test]
fn missing_exports_are_named() {
    let without =
        |export: &str| guest_wat("", "", 1).replace(&format!("(export \"{export}\")"), "");
    for export in ["memory", "rally_alloc", "rally_handle"] {
        match WasmModule::compile(without(export).as_bytes()) {
            Err(LoadError::MissingExport { name, .. }) => assert_eq!(name, export),
            other => panic!("expected {export} to be missing, got {other:?}"),
        }
    }
}

#[test]
fn wrong_export_and_import_signatures_are_named() {
    let handle_one_param = guest_wat("", "", 1).replace(
        "(param $ptr i32) (param $len i32) (result i32)",
        "(param $ptr i32) (result i32) (local $len i32)",
    );
    let error = WasmModule::compile(handle_one_param.as_bytes()).unwrap_err();
    assert_eq!(
        error,
        LoadError::WrongExport {
            name: "rally_handle",
            expected: "func (i32, i32) -> (i32)",
            found: "func (i32) -> (i32)".into()
        }
    );
    assert!(error.to_string().contains("rally_handle"), "{error}");

    let memory_as_global = guest_wat("", "", 1).replace(
        "(memory (export \"memory\") 1)",
        "(memory 1) (global (export \"memory\") i32 (i32.const 0))",
    );
    assert!(matches!(
        WasmModule::compile(memory_as_global.as_bytes()),
        Err(LoadError::WrongExport { name: "memory", found, .. }) if found == "a global"
    ));

    let emit_returning_nothing = guest_wat("", "", 1)
        .replace(
            "(func $emit (param i32 i32) (result i32))",
            "(func $emit (param i32 i32))",
        )
        .replace("(drop (call $emit", "(block (call $emit");
    assert_eq!(
        WasmModule::compile(emit_returning_nothing.as_bytes()).unwrap_err(),
        LoadError::WrongImport {
            name: "emit".into(),
            expected: "func (i32, i32) -> (i32)",
            found: "func (i32, i32) -> ()".into()
        }
    );

    let foreign_import = guest_wat("", "", 1).replace(
        "\"rally\" \"log\"",
        "\"wasi_snapshot_preview1\" \"fd_write\"",
    );
    assert_eq!(
        WasmModule::compile(foreign_import.as_bytes()).unwrap_err(),
        LoadError::UnknownImport {
            module: "wasi_snapshot_preview1".into(),
            name: "fd_write".into()
        }
    );

    assert!(matches!(
        WasmModule::compile(b"\0asm\x01\0\0\0garbage"),
        Err(LoadError::Invalid { .. })
    ));
}

#[test]
fn a_trap_is_reported_and_the_next_event_runs_in_a_fresh_instance() {
    let mut engine = wat_engine("(unreachable)", Limits::default());
    let (commands, result) = misbehave(&mut engine);
    assert_eq!(commands, []);
    let message_text = script_message(result);
    assert!(message_text.contains("unreachable"), "{message_text}");
    assert_eq!(engine.restarts(), 1);
}

#[test]
fn the_reason_given_to_fail_comes_with_the_trap() {
    let on_tick = format!(
        "(call $fail (i32.const 384) (i32.const {})) (unreachable)",
        FAIL_MESSAGE.len()
    );
    let mut engine = wat_engine(&on_tick, Limits::default());
    let message_text = script_message(misbehave(&mut engine).1);
    assert!(message_text.starts_with(FAIL_MESSAGE), "{message_text}");
}

#[test]
fn a_failure_status_keeps_the_instance() {
    let on_tick = format!(
        "(call $fail (i32.const 384) (i32.const {})) (return (i32.const 7))",
        FAIL_MESSAGE.len()
    );
    let mut engine = wat_engine(&on_tick, Limits::default());
    assert_eq!(script_message(misbehave(&mut engine).1), FAIL_MESSAGE);
    let mut engine = wat_engine("(return (i32.const 7))", Limits::default());
    assert_eq!(
        script_message(misbehave(&mut engine).1),
        "rally_handle returned status 7"
    );
    assert_eq!(engine.restarts(), 0);
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let mut engine = wat_engine("(loop $forever (br $forever))", Limits::default());
    assert!(matches!(
        misbehave(&mut engine).1,
        Err(HandlerError::BudgetExceeded { .. })
    ));
}

#[test]
fn calling_imports_costs_fuel() {
    // An endless stream of refused logs: the host's work is charged, so the loop ends.
    let on_tick = "(loop $forever (drop (call $log (i32.const 9) (i32.const 16) (i32.const 4))) (br $forever))";
    let mut engine = wat_engine(on_tick, Limits::default());
    let (commands, result) = misbehave(&mut engine);
    assert_eq!(commands, []);
    assert!(
        matches!(result, Err(HandlerError::BudgetExceeded { .. })),
        "{result:?}"
    );
}

#[test]
fn memory_growth_past_the_cap_returns_minus_one_and_a_failure_is_out_of_memory() {
    let limits = Limits {
        memory_bytes: 4 * 64 * 1024,
        ..Limits::default()
    };
    // A guest that copes with the refusal carries on.
    let mut engine = wat_engine(
        "(if (i32.ne (memory.grow (i32.const 8)) (i32.const -1)) (then (unreachable)))",
        limits,
    );
    assert_eq!(misbehave(&mut engine), (vec![ok_broadcast()], Ok(())));
    // Growing within the cap works.
    let mut engine = wat_engine(
        "(if (i32.eq (memory.grow (i32.const 3)) (i32.const -1)) (then (unreachable)))",
        limits,
    );
    assert_eq!(misbehave(&mut engine), (vec![ok_broadcast()], Ok(())));
    // One that gives up is out of memory.
    let mut engine = wat_engine(
        "(if (i32.eq (memory.grow (i32.const 8)) (i32.const -1)) (then (unreachable)))",
        limits,
    );
    assert_eq!(
        misbehave(&mut engine).1,
        Err(HandlerError::OutOfMemory {
            limit_bytes: 4 * 64 * 1024
        })
    );
}

#[test]
fn a_module_larger_than_the_cap_or_with_an_endless_start_does_not_instantiate() {
    let limits = Limits {
        memory_bytes: 64 * 1024,
        ..Limits::default()
    };
    let module = WasmModule::compile(guest_wat("", "", 2).as_bytes()).unwrap();
    match WasmEngine::instantiate(&module, limits) {
        Err(LoadError::Instantiate { message }) => {
            assert!(message.contains("limit of 65536 bytes"), "{message}")
        }
        other => panic!("expected the memory to be too large, got {other:?}"),
    }
    let endless_start = guest_wat("", "(func $start (loop $l (br $l))) (start $start)", 1);
    let module = WasmModule::compile(endless_start.as_bytes()).unwrap();
    match WasmEngine::instantiate(&module, Limits::default()) {
        Err(LoadError::Instantiate { message }) => assert!(message.contains("fuel"), "{message}"),
        other => panic!("expected the start function to run out of fuel, got {other:?}"),
    }
}

fn assert_refused(
    (commands, result): (Vec<RuntimeCommand>, Result<(), HandlerError>),
    expected: &str,
) {
    assert_eq!(
        commands,
        [ok_broadcast()],
        "the handler went on after the refusal"
    );
    match result {
        Err(HandlerError::InvalidOutput { message }) => {
            assert!(
                message.contains(expected),
                "{message:?} should say {expected:?}"
            )
        }
        other => panic!("expected a refusal saying {expected:?}, got {other:?}"),
    }
}

#[test]
fn commands_the_host_cannot_carry_are_refused() {
    let small_payloads = Limits {
        max_payload_bytes: 8,
        ..Limits::default()
    };
    let emit =
        |ptr: i64, len: i64| format!("(drop (call $emit (i32.const {ptr}) (i32.const {len})))");
    let cases = [
        (
            emit(128, BIG_COMMAND.len() as i64),
            small_payloads,
            "max_payload_bytes (8)",
        ),
        (
            emit(256, BAD_COMMAND.len() as i64),
            Limits::default(),
            "not a runtime command",
        ),
        (
            emit(65_530, 100),
            Limits::default(),
            "outside the module's memory",
        ),
        (emit(16, 1 << 30), Limits::default(), "over the limit"),
        (emit(16, -1), Limits::default(), "negative length"),
        (
            "(drop (call $log (i32.const 1) (i32.const 512) (i32.const 2)))".to_owned(),
            Limits::default(),
            "not UTF-8",
        ),
        (
            "(drop (call $log (i32.const 9) (i32.const 16) (i32.const 2)))".to_owned(),
            Limits::default(),
            "unknown log level 9",
        ),
    ];
    for (on_tick, limits, expected) in cases {
        let mut engine = wat_engine(&on_tick, limits);
        assert_refused(misbehave(&mut engine), expected);
        assert_eq!(engine.restarts(), 0);
    }
}

#[test]
fn an_alloc_pointing_outside_memory_is_refused() {
    let wat = guest_wat("", "", 1).replace(
        "(func (export \"rally_alloc\") (param i32) (result i32) (i32.const 1024))",
        "(func (export \"rally_alloc\") (param i32) (result i32) (i32.const 65500))",
    );
    let module = WasmModule::compile(wat.as_bytes()).unwrap();
    let mut engine = WasmEngine::instantiate(&module, Limits::default()).unwrap();
    match run(&mut engine, message("c1", "hi")).1 {
        Err(HandlerError::InvalidOutput { message }) => {
            assert!(message.contains("outside the module's memory"), "{message}")
        }
        other => panic!("expected the pointer to be refused, got {other:?}"),
    }
}

//! The WASM engine's hot path, in process: a player's message through `on_message` to a
//! `respond_client` command with a ~100-byte payload (the example guest), and the bare cost of
//! one handler call into a module that does nothing.
//!
//! Run with `cargo bench -p rally-runtime-host --bench wasm`; building the guest needs
//! `rustup target add wasm32-unknown-unknown`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rally_runtime_host::engine::{Engine, Event, Limits};
use rally_runtime_host::wasm::{WasmEngine, WasmModule};
use rally_sdk::runtime::{Payload, Qualifier, RuntimeCommand};
use std::hint::black_box;
use std::path::Path;
use std::process::Command;

/// Builds `examples/wasm-echo` for wasm32 into the workspace's target directory.
fn echo_guest() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target_dir = root.join("target").join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(root.join("examples").join("wasm-echo"))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "building examples/wasm-echo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(target_dir.join("wasm32-unknown-unknown/release/wasm_echo.wasm")).unwrap()
}

/// The ABI with nothing behind it: `rally_handle` returns at once.
const NOTHING_GUEST: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "rally_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "rally_handle") (param i32 i32) (result i32) (i32.const 0)))"#;

fn bench_wasm(c: &mut Criterion) {
    let echo = WasmModule::compile(&echo_guest()).unwrap();
    let mut engine = WasmEngine::instantiate(&echo, Limits::default()).unwrap();
    let mut commands = Vec::new();
    let start = Event::Started {
        qualifier: Qualifier::Match,
        user_data: serde_json::json!({}),
        config: serde_json::json!({}),
        mode: Some("duel".into()),
    };
    engine.handle(&start, &mut commands).unwrap();

    let text = "x".repeat(100);
    let message = Event::Message {
        client_id: "0190a5c2-7a4e-7cc1-9d1e-3f5b2a6c8d90".into(),
        payload: Payload::Text(text.clone()),
    };
    commands.clear();
    engine.handle(&message, &mut commands).unwrap();
    assert!(matches!(
        commands.as_slice(),
        [RuntimeCommand::RespondClient { payload: Payload::Text(echoed), .. }] if *echoed == text
    ));

    let mut group = c.benchmark_group("wasm");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_to_respond_100b", |b| {
        b.iter(|| {
            commands.clear();
            engine.handle(black_box(&message), &mut commands).unwrap();
            black_box(&commands);
        })
    });

    let tick = Event::Tick { dt: 0.1 };
    group.bench_function("tick_into_the_example_guest", |b| {
        b.iter(|| {
            commands.clear();
            engine.handle(black_box(&tick), &mut commands).unwrap();
        })
    });

    let nothing = WasmModule::compile(NOTHING_GUEST.as_bytes()).unwrap();
    let mut bare = WasmEngine::instantiate(&nothing, Limits::default()).unwrap();
    group.bench_function("bare_handler_call", |b| {
        b.iter(|| {
            commands.clear();
            bare.handle(black_box(&tick), &mut commands).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench_wasm);
criterion_main!(benches);

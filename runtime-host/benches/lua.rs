//! The Lua engine in process: a player's message through `on_message` to a `ctx.respond` of
//! about 100 bytes (reported as commands per second), the bare cost of calling a handler that
//! does nothing, and how long an infinite loop holds the runtime before the default budget
//! stops it. Run with `cargo bench -p rally-runtime-host --bench lua`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rally_runtime_host::engine::{Engine, Event, Limits};
use rally_runtime_host::lua::{LuaBundle, LuaEngine};
use rally_sdk::runtime::{Payload, Qualifier, RuntimeCommand};

const SCRIPT: &str = r#"
local M = {}

function M.on_message(ctx, client_id, payload, kind)
    if payload == "" then
        return
    end
    ctx.respond(client_id, payload, kind)
end

function M.on_tick(ctx, dt)
end

function M.on_client_removed(ctx, client_id, reason)
    -- A runaway handler: how long it holds the runtime before the budget stops it.
    while true do
    end
end

return M
"#;

/// A client id as the platform makes them (a UUIDv7).
const CLIENT_ID: &str = "0191d6a2-7c3e-7a41-9d35-0e8f6b1c2a77";

fn engine() -> LuaEngine {
    let files = BTreeMap::from([("main.lua".to_string(), SCRIPT.as_bytes().to_vec())]);
    let mut engine =
        LuaEngine::load(&LuaBundle::from_files(files), "main.lua", Limits::default()).unwrap();
    let started = Event::Started {
        qualifier: Qualifier::Match,
        user_data: serde_json::json!({}),
        config: serde_json::json!({}),
        mode: Some("duel".into()),
    };
    engine.handle(&started, &mut Vec::new()).unwrap();
    engine
}

fn message(text: &str) -> Event {
    Event::Message {
        client_id: CLIENT_ID.into(),
        payload: Payload::Text(text.into()),
    }
}

fn benches(c: &mut Criterion) {
    let mut engine = engine();
    let mut commands: Vec<RuntimeCommand> = Vec::with_capacity(4);

    let mut group = c.benchmark_group("lua");
    group.throughput(Throughput::Elements(1));

    // A typical small game message, 100 bytes of JSON, echoed back.
    let payload = r#"{"type":"move","seq":1042,"x":12.5,"y":-3.25,"angle":1.5708,"keys":["up","left"],"pad":"abcdefghij"}"#;
    assert_eq!(payload.len(), 100);
    let echo = message(payload);
    group.bench_function("message_to_respond_100_bytes", |b| {
        b.iter(|| {
            commands.clear();
            engine.handle(black_box(&echo), &mut commands).unwrap();
            debug_assert_eq!(commands.len(), 1);
        })
    });

    // The same path with a handler that returns at once: what calling into Lua costs.
    let empty = message("");
    group.bench_function("empty_on_message", |b| {
        b.iter(|| {
            commands.clear();
            engine.handle(black_box(&empty), &mut commands).unwrap();
        })
    });

    let tick = Event::Tick { dt: 0.1 };
    group.bench_function("empty_on_tick", |b| {
        b.iter(|| {
            commands.clear();
            engine.handle(black_box(&tick), &mut commands).unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("lua_limits");
    group.sample_size(10);
    let runaway = Event::ClientRemoved {
        client_id: CLIENT_ID.into(),
        reason: "left".into(),
    };
    group.bench_function("infinite_loop_stopped_by_default_budget", |b| {
        b.iter(|| {
            commands.clear();
            engine
                .handle(black_box(&runaway), &mut commands)
                .unwrap_err();
        })
    });
    group.finish();
}

criterion_group!(lua, benches);
criterion_main!(lua);

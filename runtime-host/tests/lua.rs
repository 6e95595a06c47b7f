//! The Lua engine as a runtime drives it: bundles in, events through `Engine::handle`, commands
//! and errors out. Covers every handler and API call, the sandbox, the limits and bad bundles.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rally_runtime_host::engine::{Engine, Event, HandlerError, Limits};
use rally_runtime_host::lua::{LoadError, LuaBundle, LuaEngine};
use rally_sdk::runtime::{LogLevel, Payload, Qualifier, RuntimeCommand};
use serde_json::json;

fn bundle(files: &[(&str, &str)]) -> LuaBundle {
    LuaBundle::from_files(
        files
            .iter()
            .map(|(path, source)| (path.to_string(), source.as_bytes().to_vec()))
            .collect(),
    )
}

fn load_with(files: &[(&str, &str)], limits: Limits) -> LuaEngine {
    match LuaEngine::load(&bundle(files), "main.lua", limits) {
        Ok(engine) => engine,
        Err(err) => panic!("bundle should load: {err}"),
    }
}

/// An engine for a bundle of one file, `main.lua`, already started as a match.
fn engine(source: &str) -> LuaEngine {
    engine_with(&[("main.lua", source)])
}

fn engine_with(files: &[(&str, &str)]) -> LuaEngine {
    let mut engine = load_with(files, Limits::default());
    let (_, result) = send(&mut engine, started(Qualifier::Match));
    result.expect("on_start");
    engine
}

fn load_error(files: &[(&str, &str)]) -> LoadError {
    match LuaEngine::load(&bundle(files), "main.lua", Limits::default()) {
        Ok(_) => panic!("bundle should not load"),
        Err(err) => err,
    }
}

fn started(qualifier: Qualifier) -> Event {
    Event::Started {
        qualifier,
        user_data: json!({"greeting": "hello", "nested": {"list": [1, 2, 3]}}),
        config: json!({"tick_rate": 10}),
        mode: (qualifier == Qualifier::Match).then(|| "duel".to_string()),
    }
}

fn text(client_id: &str, text: &str) -> Event {
    Event::Message {
        client_id: client_id.into(),
        payload: Payload::Text(text.into()),
    }
}

fn tick(dt: f64) -> Event {
    Event::Tick { dt }
}

fn send(engine: &mut LuaEngine, event: Event) -> (Vec<RuntimeCommand>, Result<(), HandlerError>) {
    let mut commands = Vec::new();
    let result = engine.handle(&event, &mut commands);
    (commands, result)
}

/// The commands of an event that must succeed.
fn ok(engine: &mut LuaEngine, event: Event) -> Vec<RuntimeCommand> {
    let (commands, result) = send(engine, event);
    if let Err(err) = result {
        panic!("handler failed: {err}");
    }
    commands
}

fn respond(client_id: &str, text: &str) -> RuntimeCommand {
    RuntimeCommand::RespondClient {
        client_id: client_id.into(),
        payload: Payload::Text(text.into()),
    }
}

fn log(level: LogLevel, message: &str) -> RuntimeCommand {
    RuntimeCommand::Log {
        level,
        message: message.into(),
    }
}

fn logs(commands: &[RuntimeCommand]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|command| match command {
            RuntimeCommand::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn script_error(result: Result<(), HandlerError>) -> String {
    match result {
        Err(HandlerError::Script { message }) => message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

fn invalid_output(result: Result<(), HandlerError>) -> String {
    match result {
        Err(HandlerError::InvalidOutput { message }) => message,
        other => panic!("expected invalid output, got {other:?}"),
    }
}

fn budget_exceeded(result: Result<(), HandlerError>) -> String {
    match result {
        Err(HandlerError::BudgetExceeded { location }) => location,
        other => panic!("expected the budget to run out, got {other:?}"),
    }
}

// ---------------------------------------------------------------- handlers

#[test]
fn every_handler_is_called_with_its_arguments() {
    let mut engine = load_with(
        &[(
            "main.lua",
            r#"
            local M = {}
            function M.on_start(ctx)
                ctx.log(ctx.qualifier, ctx.mode, ctx.user_data.greeting, ctx.user_data.nested.list[3],
                    ctx.config.tick_rate)
            end
            function M.on_client_assigned(ctx, client)
                ctx.log(client.id, client.user_id, client.profile.level, client.group)
            end
            function M.on_client_removed(ctx, client_id, reason)
                ctx.log("removed", client_id, reason)
            end
            function M.on_message(ctx, client_id, payload, kind)
                ctx.log("message", client_id, kind, #payload, payload:byte(1), payload:byte(#payload))
            end
            function M.on_tick(ctx, dt)
                ctx.log("tick", dt)
            end
            function M.on_stop(ctx)
                ctx.log("stop")
            end
            return M
            "#,
        )],
        Limits::default(),
    );
    assert_eq!(
        ok(&mut engine, started(Qualifier::Match)),
        vec![log(LogLevel::Info, "match duel hello 3 10")]
    );
    let assigned = Event::ClientAssigned {
        client_id: "c1".into(),
        user_id: "u1".into(),
        profile: json!({"level": 7}),
        group: Some("red".into()),
    };
    assert_eq!(
        ok(&mut engine, assigned),
        vec![log(LogLevel::Info, "c1 u1 7 red")]
    );
    let removed = Event::ClientRemoved {
        client_id: "c1".into(),
        reason: "left".into(),
    };
    assert_eq!(
        ok(&mut engine, removed),
        vec![log(LogLevel::Info, "removed c1 left")]
    );
    assert_eq!(
        ok(&mut engine, text("c2", "héllo")),
        vec![log(LogLevel::Info, "message c2 text 6 104 111")]
    );
    let binary = Event::Message {
        client_id: "c2".into(),
        payload: Payload::Binary(vec![0x00, 0xff, 0x00].into()),
    };
    assert_eq!(
        ok(&mut engine, binary),
        vec![log(LogLevel::Info, "message c2 binary 3 0 0")]
    );
    assert_eq!(
        ok(&mut engine, tick(0.1)),
        vec![log(LogLevel::Info, "tick 0.1")]
    );
    assert_eq!(
        ok(&mut engine, Event::Stopping),
        vec![log(LogLevel::Info, "stop")]
    );
}

#[test]
fn a_lobby_has_no_mode_or_group_and_missing_handlers_are_fine() {
    let mut engine = load_with(
        &[(
            "main.lua",
            r#"
            return {
                on_start = function(ctx) ctx.log(ctx.qualifier, tostring(ctx.mode)) end,
                on_client_assigned = function(ctx, client) ctx.log(tostring(client.group)) end,
            }
            "#,
        )],
        Limits::default(),
    );
    assert_eq!(
        ok(&mut engine, started(Qualifier::Lobby)),
        vec![log(LogLevel::Info, "lobby nil")]
    );
    let assigned = Event::ClientAssigned {
        client_id: "c1".into(),
        user_id: "u1".into(),
        profile: json!({}),
        group: None,
    };
    assert_eq!(ok(&mut engine, assigned), vec![log(LogLevel::Info, "nil")]);
    for event in [
        text("c1", "x"),
        tick(0.1),
        Event::ClientRemoved {
            client_id: "c1".into(),
            reason: "left".into(),
        },
    ] {
        assert_eq!(ok(&mut engine, event), vec![]);
    }
    assert_eq!(ok(&mut engine, Event::Stopping), vec![]);
}

// ---------------------------------------------------------------- commands

#[test]
fn every_command_of_the_api_is_emitted_in_order() {
    let mut engine = engine(
        r#"
        return { on_message = function(ctx, client_id, payload)
            ctx.respond(client_id, "echo " .. payload)
            ctx.respond(client_id, "\0\1\2", "binary")
            ctx.respond(client_id, "explicit text", "text")
            ctx.multicast({"a", "b"}, "to a and b")
            ctx.multicast({}, "to nobody")
            ctx.broadcast("to all")
            ctx.broadcast("\255", "binary")
            ctx.kick("a", "cheating")
            ctx.kick("b")
            ctx.set_profile(client_id, {level = 2, name = "Ann", items = {"sword", "shield"}, flags = {}})
            ctx.request_matchmaking(client_id, "duel")
            ctx.stop_match("time is up")
            ctx.stop_match()
        end }
        "#,
    );
    let commands = ok(&mut engine, text("c1", "hi"));
    let payload = |text: &str| Payload::Text(text.into());
    assert_eq!(
        commands,
        vec![
            respond("c1", "echo hi"),
            RuntimeCommand::RespondClient {
                client_id: "c1".into(),
                payload: Payload::Binary(vec![0, 1, 2].into())
            },
            respond("c1", "explicit text"),
            RuntimeCommand::Multicast {
                client_ids: vec!["a".into(), "b".into()],
                payload: payload("to a and b")
            },
            RuntimeCommand::Broadcast {
                payload: payload("to all")
            },
            RuntimeCommand::Broadcast {
                payload: Payload::Binary(vec![0xff].into())
            },
            RuntimeCommand::KickClient {
                client_id: "a".into(),
                reason: "cheating".into()
            },
            RuntimeCommand::KickClient {
                client_id: "b".into(),
                reason: "kicked".into()
            },
            RuntimeCommand::SetProfile {
                client_id: "c1".into(),
                profile: json!({"level": 2, "name": "Ann", "items": ["sword", "shield"], "flags": {}}),
            },
            RuntimeCommand::RequestMatchmaking {
                client_id: "c1".into(),
                mode: "duel".into()
            },
            RuntimeCommand::StopMatch {
                reason: "time is up".into()
            },
            RuntimeCommand::StopMatch {
                reason: "finished".into()
            },
        ]
    );
}

#[test]
fn logging_has_levels_and_print_logs_at_info() {
    let mut engine = engine(
        r#"
        return { on_message = function(ctx)
            ctx.log("plain", 1, true, nil)
            ctx.log.debug("d")
            ctx.log.info("i")
            ctx.log.warn("w", 2.5)
            ctx.log.error("e")
            print("printed", 3)
        end }
        "#,
    );
    assert_eq!(
        ok(&mut engine, text("c1", "x")),
        vec![
            log(LogLevel::Info, "plain 1 true nil"),
            log(LogLevel::Debug, "d"),
            log(LogLevel::Info, "i"),
            log(LogLevel::Warn, "w 2.5"),
            log(LogLevel::Error, "e"),
            log(LogLevel::Info, "printed\t3"),
        ]
    );
}

#[test]
fn logs_written_while_loading_go_out_with_the_first_event() {
    let mut engine = load_with(
        &[(
            "main.lua",
            "print('loading') return { on_start = function(ctx) ctx.log('started') end }",
        )],
        Limits::default(),
    );
    let commands = ok(&mut engine, started(Qualifier::Match));
    assert_eq!(logs(&commands), ["loading", "started"]);
}

#[test]
fn long_log_lines_are_cut() {
    let limits = Limits {
        max_payload_bytes: 10,
        ..Limits::default()
    };
    let mut engine = load_with(
        &[(
            "main.lua",
            "return { on_message = function(ctx) ctx.log.warn('0123456789abc', 'more') end }",
        )],
        limits,
    );
    assert_eq!(
        logs(&ok(&mut engine, text("c1", "x"))),
        ["0123456789 [truncated]"]
    );
}

#[test]
fn stop_match_is_refused_in_a_lobby() {
    let mut engine = load_with(
        &[(
            "main.lua",
            "return { on_message = function(ctx) ctx.stop_match() end }",
        )],
        Limits::default(),
    );
    ok(&mut engine, started(Qualifier::Lobby));
    let message = invalid_output(send(&mut engine, text("c1", "x")).1);
    assert!(
        message.starts_with("main.lua:1: ctx.stop_match: only a match"),
        "{message}"
    );
}

#[test]
fn commands_sent_before_a_failure_stand() {
    let mut engine = engine(
        r#"return { on_message = function(ctx, id)
            ctx.respond(id, "first")
            error("then it broke")
        end }"#,
    );
    let (commands, result) = send(&mut engine, text("c1", "x"));
    assert_eq!(commands, vec![respond("c1", "first")]);
    assert!(script_error(result).contains("then it broke"));
}

// ---------------------------------------------------------------- JSON, time

#[test]
fn json_round_trips_and_follows_defold_for_null() {
    let mut engine = engine(
        r#"
        return { on_message = function(ctx, id, payload)
            local value = ctx.json.decode(payload)
            ctx.log(value.name, #value.list, value.list[2], value.nested.deep, tostring(value.missing))
            ctx.respond(id, ctx.json.encode(value))
            local kept = json.decode('{"a": null, "b": [1, null]}', {decode_null_as_userdata = true})
            ctx.log(kept.a == json.null, kept.b[2] == ctx.json.null)
            ctx.respond(id, json.encode(kept))
            ctx.respond(id, json.encode({}))
            ctx.respond(id, json.encode({[1] = "a", [2] = "b"}))
            ctx.respond(id, json.encode({[1] = "a", [3] = "c"}))
            ctx.respond(id, json.encode({1.5, -0, 2^53, "é"}))
        end }
        "#,
    );
    let commands = ok(
        &mut engine,
        text(
            "c1",
            r#"{"name":"x","list":[1,2,3],"nested":{"deep":true},"missing":null}"#,
        ),
    );
    assert_eq!(commands[0], log(LogLevel::Info, "x 3 2 true nil"));
    let RuntimeCommand::RespondClient {
        payload: Payload::Text(echoed),
        ..
    } = &commands[1]
    else {
        panic!()
    };
    let echoed: serde_json::Value = serde_json::from_str(echoed).unwrap();
    assert_eq!(
        echoed,
        json!({"name": "x", "list": [1, 2, 3], "nested": {"deep": true}})
    );
    assert_eq!(commands[2], log(LogLevel::Info, "true true"));
    assert_eq!(commands[3], respond("c1", r#"{"a":null,"b":[1,null]}"#));
    assert_eq!(commands[4], respond("c1", "{}"));
    assert_eq!(commands[5], respond("c1", r#"["a","b"]"#));
    assert_eq!(commands[6], respond("c1", r#"{"1":"a","3":"c"}"#));
    assert_eq!(
        commands[7],
        respond("c1", r#"[1.5,0,9007199254740992,"é"]"#)
    );
}

#[test]
fn json_refuses_what_it_cannot_represent() {
    // A smaller cap bounds the JSON text too, which keeps the "huge" case quick.
    let limits = Limits {
        memory_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    };
    let mut engine = load_with(
        &[(
            "main.lua",
            r#"
        local cases = {
            ["function"] = function(ctx) return ctx.json.encode({f = print}) end,
            ["cycle"] = function(ctx) local t = {} t.self = t return ctx.json.encode(t) end,
            ["deep"] = function(ctx) local t = {} for i = 1, 200 do t = {t} end return ctx.json.encode(t) end,
            ["nan"] = function(ctx) return ctx.json.encode(0/0) end,
            ["key"] = function(ctx) return ctx.json.encode({[true] = 1}) end,
            ["huge"] = function(ctx)
                local big, t = string.rep("x", 100000), {}
                for i = 1, 100 do t[i] = big end
                return ctx.json.encode(t)
            end,
        }
        return { on_message = function(ctx, id, which)
            local ok, err = pcall(cases[which], ctx)
            ctx.log(ok, tostring(err))
            cases[which](ctx)
        end }
        "#,
        )],
        limits,
    );
    for (case, expected) in [
        ("function", "cannot encode a value of type function"),
        ("cycle", "nested more than 128 levels deep"),
        ("deep", "nested more than 128 levels deep"),
        ("nan", "cannot encode NaN"),
        ("key", "cannot encode a table key of type boolean"),
        ("huge", "the JSON text would be larger than 8388608 bytes"),
    ] {
        let (commands, result) = send(&mut engine, text("c1", case));
        assert!(
            logs(&commands)[0].starts_with("false main.lua:"),
            "{case}: {commands:?}"
        );
        let message = invalid_output(result);
        assert!(message.contains(expected), "{case}: {message}");
        assert!(message.starts_with("main.lua:"), "{case}: {message}");
    }
}

#[test]
fn invalid_json_is_a_script_error_with_the_position() {
    let mut engine =
        engine("return { on_message = function(ctx, id, payload) ctx.json.decode(payload) end }");
    let message = script_error(send(&mut engine, text("c1", "{\"a\": [1, 2,, 3]}")).1);
    assert!(
        message.contains("main.lua:1: json.decode: invalid JSON"),
        "{message}"
    );
    assert!(message.contains("column 13"), "{message}");
}

#[test]
fn now_is_monotonic_seconds_since_start() {
    let mut engine = engine(
        r#"return { on_message = function(ctx)
            local a = ctx.now()
            local b = ctx.now()
            ctx.log(type(a), a >= 0 and a < 60, b >= a)
        end }"#,
    );
    assert_eq!(
        ok(&mut engine, text("c1", "x")),
        vec![log(LogLevel::Info, "number true true")]
    );
}

// ---------------------------------------------------------------- timers

#[test]
fn timers_fire_on_ticks_in_order_after_on_tick() {
    let mut engine = engine(
        r#"
        local M = {}
        function M.on_start(ctx)
            ctx.after(0.25, function(ctx) ctx.log("after 0.25") end)
            ctx.after(0.1, function(ctx) ctx.log("after 0.1 (first)") end)
            ctx.after(0.1, function(ctx) ctx.log("after 0.1 (second)") end)
            M.repeating = ctx.every(0.1, function(ctx) ctx.log("every 0.1") end)
            local cancelled = ctx.after(0.1, function(ctx) ctx.log("never") end)
            ctx.log("cancel", ctx.cancel(cancelled), ctx.cancel(cancelled))
        end
        function M.on_tick(ctx, dt)
            ctx.log("tick")
        end
        function M.on_message(ctx, id, payload)
            if payload == "stop" then ctx.log("cancel every", ctx.cancel(M.repeating)) end
            if payload == "soon" then ctx.after(0, function(ctx) ctx.log("next tick") end) end
        end
        return M
        "#,
    );
    // on_start ran in `engine()`; its log went with that event.
    assert_eq!(logs(&ok(&mut engine, tick(0.05))), ["tick"]);
    assert_eq!(
        logs(&ok(&mut engine, tick(0.05))),
        [
            "tick",
            "after 0.1 (first)",
            "after 0.1 (second)",
            "every 0.1"
        ]
    );
    assert_eq!(logs(&ok(&mut engine, tick(0.1))), ["tick", "every 0.1"]);
    assert_eq!(
        logs(&ok(&mut engine, tick(0.1))),
        ["tick", "after 0.25", "every 0.1"]
    );
    // Ticks slower than the interval: one call per tick, no burst.
    assert_eq!(logs(&ok(&mut engine, tick(1.0))), ["tick", "every 0.1"]);
    assert_eq!(
        logs(&ok(&mut engine, text("c1", "stop"))),
        ["cancel every true"]
    );
    assert_eq!(logs(&ok(&mut engine, tick(1.0))), ["tick"]);
    ok(&mut engine, text("c1", "soon"));
    assert_eq!(logs(&ok(&mut engine, tick(0.0))), ["tick", "next tick"]);
}

#[test]
fn a_timer_set_during_a_tick_waits_for_the_next_and_a_failing_timer_does_not_stop_the_others() {
    let mut engine = engine(
        r#"
        return {
            on_start = function(ctx)
                ctx.after(0.1, function(ctx) error("timer broke") end)
                ctx.after(0.1, function(ctx) ctx.log("still runs") end)
            end,
            on_tick = function(ctx)
                ctx.after(0, function(ctx) ctx.log("from on_tick") end)
            end,
        }
        "#,
    );
    let (commands, result) = send(&mut engine, tick(0.1));
    assert_eq!(logs(&commands), ["still runs"]);
    let message = script_error(result);
    assert!(message.contains("main.lua:4: timer broke"), "{message}");
    assert_eq!(logs(&ok(&mut engine, tick(0.1))), ["from on_tick"]);
}

#[test]
fn timer_arguments_are_checked() {
    let mut engine = engine(
        r#"
        local calls = {
            function(ctx) ctx.after("soon", function() end) end,
            function(ctx) ctx.every(0, function() end) end,
            function(ctx) ctx.after(-1, function() end) end,
            function(ctx) ctx.after(1, "not a function") end,
            function(ctx) ctx.cancel("x") end,
        }
        return { on_message = function(ctx, id, which) calls[tonumber(which)](ctx) end }
        "#,
    );
    for (which, expected) in [
        ("1", "ctx.after: seconds must be a number, got string"),
        (
            "2",
            "ctx.every: seconds must be a finite number more than zero, got 0",
        ),
        (
            "3",
            "ctx.after: seconds must be a finite number zero or more, got -1",
        ),
        ("4", "ctx.after: callback must be a function, got string"),
        ("5", "ctx.cancel: id must be a timer id"),
    ] {
        let message = invalid_output(send(&mut engine, text("c1", which)).1);
        assert!(message.contains(expected), "{which}: {message}");
    }
}

// ---------------------------------------------------------------- require

#[test]
fn require_loads_modules_from_the_bundle_once() {
    let mut engine = engine_with(&[
        (
            "main.lua",
            r#"
            local util = require("lib.util")
            local again = require("lib/util")
            local pkg = require("pkg")
            return { on_message = function(ctx, id)
                ctx.respond(id, util.shout("hi") .. " " .. tostring(util == again) .. " " .. pkg.name
                    .. " " .. util.loads)
            end }
        "#,
        ),
        (
            "lib/util.lua",
            r#"
            counter = (counter or 0) + 1
            return { shout = function(s) return string.upper(s) .. "!" end, loads = counter }
        "#,
        ),
        ("pkg/init.lua", "return { name = 'pkg' }"),
    ]);
    assert_eq!(
        ok(&mut engine, text("c1", "x")),
        vec![respond("c1", "HI! true pkg 1")]
    );
}

#[test]
fn require_reaches_nothing_outside_the_bundle() {
    let mut engine = engine_with(&[
        (
            "main.lua",
            "return { on_message = function(ctx, id, name) require(name) end }",
        ),
        ("a.lua", "return require('b')"),
        ("b.lua", "return require('a')"),
        ("notes.txt", "return 1"),
    ]);
    for (name, expected) in [
        ("../x", "'../x' is not a module name"),
        ("/etc/passwd", "'/etc/passwd' is not a module name"),
        ("..main", "is not a module name"),
        ("missing", "module 'missing' not found in the bundle (looked for missing.lua and missing/init.lua)"),
        ("notes", "module 'notes' not found"),
        ("a", "cycle between modules: a.lua -> b.lua -> a.lua"),
        ("os", "module 'os' not found"),
    ] {
        let message = script_error(send(&mut engine, text("c1", name)).1);
        assert!(message.contains(expected), "{name}: {message}");
    }
}

// ---------------------------------------------------------------- sandbox

#[test]
fn the_sandbox_offers_no_way_out() {
    let mut engine = engine(
        r#"
        return { on_message = function(ctx, id, code)
            local probes = {
                io = io, debug = debug, load = load, loadstring = loadstring, dofile = dofile,
                loadfile = loadfile, getfenv = getfenv, setfenv = setfenv, package = package,
                os_execute = os.execute, os_exit = os.exit, os_getenv = os.getenv, os_remove = os.remove,
                os_rename = os.rename, os_tmpname = os.tmpname, string_dump = string.dump,
                module = module, ffi = ffi, jit = jit,
            }
            local present = {}
            for _, name in ipairs({"io", "debug", "load", "loadstring", "dofile", "loadfile", "getfenv",
                    "setfenv", "package", "os_execute", "os_exit", "os_getenv", "os_remove", "os_rename",
                    "os_tmpname", "string_dump", "module", "ffi", "jit"}) do
                if probes[name] ~= nil then table.insert(present, name) end
            end
            ctx.log("present:", table.concat(present, ","))
            ctx.log("safe:", type(os.time()), type(os.clock()), type(string.format), type(bit32.band))
        end }
        "#,
    );
    assert_eq!(
        logs(&ok(&mut engine, text("c1", "x"))),
        ["present: ", "safe: number number function function"]
    );
}

#[test]
fn the_standard_library_is_read_only_but_globals_work() {
    let mut engine = engine(
        r#"
        shared = 1
        return { on_message = function(ctx, id, which)
            if which == "global" then shared = shared + 1 ctx.log(shared) end
            if which == "patch" then string.upper = function() return "pwned" end end
        end }
        "#,
    );
    assert_eq!(logs(&ok(&mut engine, text("c1", "global"))), ["2"]);
    let message = script_error(send(&mut engine, text("c1", "patch")).1);
    assert!(message.contains("readonly"), "{message}");
}

#[test]
fn bytecode_is_refused() {
    let bytecode = mlua::chunk::Compiler::new().compile("return {}").unwrap();
    let files = BTreeMap::from([("main.lua".to_string(), bytecode)]);
    match LuaEngine::load(&LuaBundle::from_files(files), "main.lua", Limits::default()) {
        Err(LoadError::Compile { file, .. }) => assert_eq!(file, "main.lua"),
        Err(other) => panic!("expected a compile error, got {other}"),
        Ok(_) => panic!("bytecode was loaded"),
    }
}

// ---------------------------------------------------------------- limits

#[test]
fn an_infinite_loop_is_stopped_with_its_location_and_other_clients_are_still_served() {
    let mut engine = engine(
        r#"
        local M = {}
        function M.on_message(ctx, client_id, payload)
            if payload == "loop" then
                while true do
                end
            end
            ctx.respond(client_id, "pong")
        end
        return M
        "#,
    );
    let started = Instant::now();
    let (commands, result) = send(&mut engine, text("bad", "loop"));
    let location = budget_exceeded(result);
    assert!(commands.is_empty());
    assert!(
        location.starts_with("main.lua:5 in function 'on_message'"),
        "{location}"
    );
    assert!(location.contains("stack traceback"), "{location}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ok(&mut engine, text("good", "ping")),
        vec![respond("good", "pong")]
    );
}

#[test]
fn a_loop_cannot_escape_the_budget_with_pcall_or_coroutines() {
    let mut engine = engine(
        r#"
        local function spin() while true do end end
        return { on_message = function(ctx, id, how)
            if how == "pcall" then
                while true do pcall(spin) end
            elseif how == "coroutine" then
                while true do coroutine.resume(coroutine.create(spin)) end
            elseif how == "xpcall" then
                while true do xpcall(spin, spin) end
            end
            ctx.respond(id, "alive")
        end }
        "#,
    );
    for how in ["pcall", "coroutine", "xpcall"] {
        let started = Instant::now();
        let location = budget_exceeded(send(&mut engine, text("bad", how)).1);
        assert!(location.starts_with("main.lua:"), "{how}: {location}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{how} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            ok(&mut engine, text("good", "")),
            vec![respond("good", "alive")]
        );
    }
}

#[test]
fn a_pathological_pattern_is_stopped() {
    let mut engine = engine(
        r#"return { on_message = function(ctx, id)
            string.find(string.rep("a", 5000), string.rep("a*", 12) .. "b")
        end }"#,
    );
    let started = Instant::now();
    let location = budget_exceeded(send(&mut engine, text("c1", "x")).1);
    assert!(location.starts_with("main.lua:2"), "{location}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_budget_is_per_call() {
    let limits = Limits {
        budget_per_call: 10_000,
        ..Limits::default()
    };
    let mut engine = load_with(
        &[(
            "main.lua",
            "return { on_message = function(ctx, id, n) for i = 1, tonumber(n) do end end }",
        )],
        limits,
    );
    for _ in 0..5 {
        ok(&mut engine, text("c1", "9000"));
    }
    let location = budget_exceeded(send(&mut engine, text("c1", "20000")).1);
    assert!(
        location.contains("budget of interrupt points: 10000"),
        "{location}"
    );
}

#[test]
fn an_allocation_bomb_is_stopped_and_the_engine_goes_on() {
    let mut engine = engine(
        r#"
        local M = {}
        function M.on_message(ctx, client_id, payload)
            if payload == "same" then
                local t = {} while true do t[#t+1] = string.rep("x", 1e6) end
            elseif payload == "distinct" then
                local t = {} while true do t[#t+1] = string.rep("x", 1e6) .. #t end
            elseif payload == "tables" then
                local t = {} for i = 1, 1e9 do t[i] = {i} end
            end
            ctx.respond(client_id, "ok")
        end
        return M
        "#,
    );
    for bomb in ["same", "distinct", "tables", "distinct"] {
        let started = Instant::now();
        match send(&mut engine, text("bad", bomb)).1 {
            // Identical strings are interned: that bomb grows slowly and runs out of time.
            Err(HandlerError::BudgetExceeded { location }) => {
                assert_eq!(bomb, "same");
                assert!(location.starts_with("main.lua:5"), "{location}");
                assert!(location.contains("(time limit: 1000 ms)"), "{location}");
            }
            Err(HandlerError::OutOfMemory { limit_bytes }) => {
                assert_ne!(bomb, "same");
                assert_eq!(limit_bytes, Limits::default().memory_bytes);
            }
            other => panic!("{bomb}: expected the bomb to be stopped, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{bomb} took {:?}",
            started.elapsed()
        );
        assert!(
            engine.used_memory() < 16 * 1024 * 1024,
            "{bomb}: {} bytes still held",
            engine.used_memory()
        );
        assert_eq!(
            ok(&mut engine, text("good", "")),
            vec![respond("good", "ok")]
        );
    }
}

#[test]
fn a_memory_error_caught_by_pcall_is_still_reported() {
    // Luau does not collect garbage when an allocation fails, so what the script does after
    // catching the error usually fails too; either way the engine reports and goes on.
    let mut engine = engine(
        r#"return { on_message = function(ctx, id, what)
            if what == "bomb" then
                local ok, err = pcall(function() local t = {} while true do t[#t + 1] = {} end end)
                ctx.respond(id, tostring(ok) .. " " .. tostring(err))
            else
                ctx.respond(id, "fine")
            end
        end }"#,
    );
    match send(&mut engine, text("c1", "bomb")) {
        (_, Err(HandlerError::OutOfMemory { .. })) => {}
        (commands, Ok(())) => assert_eq!(commands, vec![respond("c1", "false not enough memory")]),
        (_, other) => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        ok(&mut engine, text("c1", "x")),
        vec![respond("c1", "fine")]
    );
}

#[test]
fn a_memory_cap_too_small_for_the_state_fails_the_load() {
    let limits = Limits {
        memory_bytes: 16 * 1024,
        ..Limits::default()
    };
    match LuaEngine::load(&bundle(&[("main.lua", "return {}")]), "main.lua", limits) {
        Err(LoadError::Setup { .. } | LoadError::Run { .. }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a 16 KiB state should not load"),
    }
}

#[test]
fn output_beyond_the_per_call_allowance_is_refused() {
    let limits = Limits {
        memory_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    };
    let mut engine = load_with(
        &[(
            "main.lua",
            r#"return { on_message = function(ctx, id)
                local chunk = string.rep("x", 60000)
                for i = 1, 1000 do ctx.respond(id, chunk) end
            end }"#,
        )],
        limits,
    );
    let (commands, result) = send(&mut engine, text("c1", "x"));
    let message = invalid_output(result);
    assert!(
        message.contains("more than 8388608 bytes of commands"),
        "{message}"
    );
    assert!(
        (100..140).contains(&commands.len()),
        "{} commands",
        commands.len()
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn a_script_error_has_file_line_and_traceback() {
    let mut nested = engine_with(&[
        (
            "main.lua",
            r#"
            local rules = require("game.rules")
            return { on_message = function(ctx, id, payload)
                rules.check(payload)
            end }
        "#,
        ),
        (
            "game/rules.lua",
            r#"
            local M = {}
            local function deeper(move)
                error("illegal move: " .. move)
            end
            function M.check(move)
                deeper(move)
            end
            return M
        "#,
        ),
    ]);
    let message = script_error(send(&mut nested, text("c1", "e2e5")).1);
    assert!(
        message.starts_with("game/rules.lua:4: illegal move: e2e5"),
        "{message}"
    );
    assert!(message.contains("stack traceback"), "{message}");
    assert!(message.contains("game/rules.lua:7"), "{message}");
    assert!(message.contains("main.lua:4"), "{message}");

    let mut simple =
        engine("return { on_message = function(ctx, id, payload) local x = nil; x.field = 1 end }");
    let message = script_error(send(&mut simple, text("c1", "x")).1);
    assert!(
        message.starts_with("main.lua:1: attempt to index nil"),
        "{message}"
    );
}

#[test]
fn a_handler_that_returns_something_is_invalid_output() {
    let mut engine = engine(
        r#"
        local M = {}
        function M.on_message(ctx, id, payload)
            return "reply"
        end
        return M
        "#,
    );
    let message = invalid_output(send(&mut engine, text("c1", "x")).1);
    assert_eq!(message, "main.lua:3: on_message returned a string; handlers return nothing (reply with ctx.respond)");
}

#[test]
fn wrong_arguments_to_ctx_functions_are_reported_clearly() {
    let mut engine = engine(
        r#"
        local calls = {
            function(ctx, id) ctx.respond(42, "x") end,
            function(ctx, id) ctx.respond(id, {text = "x"}) end,
            function(ctx, id) ctx.respond(id, "x", "json") end,
            function(ctx, id) ctx.respond(id, "\255\254") end,
            function(ctx, id) ctx.multicast(id, "x") end,
            function(ctx, id) ctx.multicast({id, 7}, "x") end,
            function(ctx, id) ctx.kick(nil) end,
            function(ctx, id) ctx.kick(id, 5) end,
            function(ctx, id) ctx.set_profile(id, "strong") end,
            function(ctx, id) ctx.set_profile(id, {"a", "b"}) end,
            function(ctx, id) ctx.request_matchmaking(id) end,
            function(ctx, id) ctx.respond(string.rep("c", 200), "x") end,
            function(ctx, id) ctx.json.decode(nil) end,
        }
        return { on_message = function(ctx, id, which) calls[tonumber(which)](ctx, id) end }
        "#,
    );
    for (which, expected) in [
        (
            "1",
            "ctx.respond: client_id must be a client id string, got number 42",
        ),
        (
            "2",
            "ctx.respond: payload must be a string, got table (encode tables with ctx.json.encode)",
        ),
        (
            "3",
            "ctx.respond: kind must be \"text\" or \"binary\", got \"json\"",
        ),
        (
            "4",
            "ctx.respond: a text payload must be valid UTF-8; send bytes with kind \"binary\"",
        ),
        (
            "5",
            "ctx.multicast: client_ids must be a list of client ids, got string",
        ),
        (
            "6",
            "ctx.multicast: each of client_ids must be a client id string, got number 7",
        ),
        (
            "7",
            "ctx.kick: client_id must be a client id string, got nil",
        ),
        ("8", "ctx.kick: reason must be a string, got number 5"),
        ("9", "ctx.set_profile: profile must be a table, got string"),
        (
            "10",
            "ctx.set_profile: profile must be a table with string keys, not a list",
        ),
        (
            "11",
            "ctx.request_matchmaking: mode must be a string, got nil",
        ),
        (
            "12",
            "ctx.respond: client_id is 200 bytes long; client ids are at most 128",
        ),
        ("13", "json.decode: text must be a string, got nil"),
    ] {
        let message = invalid_output(send(&mut engine, text("c1", which)).1);
        let line = 2 + which.parse::<usize>().unwrap();
        assert!(
            message.starts_with(&format!("main.lua:{line}: {expected}")),
            "{which}: {message}"
        );
        assert!(message.contains("stack traceback"), "{which}: {message}");
    }
}

#[test]
fn an_oversized_payload_is_refused() {
    let limits = Limits {
        max_payload_bytes: 1000,
        ..Limits::default()
    };
    let mut engine = load_with(
        &[(
            "main.lua",
            r#"return { on_message = function(ctx, id, payload)
                ctx.respond(id, string.rep("x", 1000))
                ctx.broadcast(string.rep("y", tonumber(payload)), "binary")
            end }"#,
        )],
        limits,
    );
    let (commands, result) = send(&mut engine, text("c1", "1000"));
    result.unwrap();
    assert_eq!(commands.len(), 2);
    let (commands, result) = send(&mut engine, text("c1", "1001"));
    assert_eq!(commands.len(), 1, "the first, legal, payload stands");
    let message = invalid_output(result);
    assert!(message.starts_with(
        "main.lua:3: ctx.broadcast: payload of 1001 bytes is larger than the limit of 1000 bytes"
    ));

    let mut engine = load_with(
        &[("main.lua", "return { on_message = function(ctx, id) ctx.set_profile(id, {bio = string.rep('x', 1000)}) end }")],
        limits,
    );
    let message = invalid_output(send(&mut engine, text("c1", "x")).1);
    assert!(
        message.contains("ctx.set_profile: the JSON text would be larger than 1000 bytes"),
        "{message}"
    );
}

// ---------------------------------------------------------------- loading

#[test]
fn a_compile_error_is_reported_with_file_and_line() {
    let err = load_error(&[(
        "main.lua",
        "return {\n  on_message = function(ctx)\n    if then\n  end\n}",
    )]);
    match &err {
        LoadError::Compile {
            file,
            line,
            message,
        } => {
            assert_eq!(file, "main.lua");
            assert_eq!(*line, Some(3));
            assert!(message.starts_with("main.lua:3:"), "{message}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    // Any file of the bundle, not only the entry and what it requires.
    let err = load_error(&[
        ("main.lua", "return {}"),
        ("lib/broken.lua", "local x = = 1"),
    ]);
    assert!(
        matches!(&err, LoadError::Compile { file, line: Some(1), .. } if file == "lib/broken.lua"),
        "{err:?}"
    );
}

#[test]
fn bad_entry_modules_are_refused_at_load() {
    let err = load_error(&[("other.lua", "return {}")]);
    assert!(
        matches!(&err, LoadError::MissingEntry { path, .. } if path == "main.lua"),
        "{err:?}"
    );

    let err = load_error(&[("main.lua", "return 42")]);
    assert_eq!(
        err.to_string(),
        "main.lua must return a table of handlers, but returned number"
    );

    let err = load_error(&[("main.lua", "return { on_message = 'hello' }")]);
    assert_eq!(
        err.to_string(),
        "main.lua: on_message must be a function, but is a string"
    );

    let err = load_error(&[("main.lua", "local x = nil\nreturn x.y")]);
    match err {
        LoadError::Run {
            file,
            error: HandlerError::Script { message },
        } => {
            assert_eq!(file, "main.lua");
            assert!(
                message.starts_with("main.lua:2: attempt to index nil"),
                "{message}"
            );
        }
        other => panic!("expected a run error, got {other:?}"),
    }

    let err = load_error(&[("main.lua", "while true do end")]);
    assert!(
        matches!(&err, LoadError::Run { error: HandlerError::BudgetExceeded { location }, .. } if location.starts_with("main.lua:1")),
        "{err:?}"
    );
}

#[test]
fn a_bundle_reads_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lib")).unwrap();
    std::fs::write(
        dir.path().join("main.lua"),
        "return { on_message = function(ctx, id) ctx.respond(id, require('lib.answer')) end }",
    )
    .unwrap();
    std::fs::write(dir.path().join("lib/answer.lua"), "return '42'").unwrap();
    std::fs::write(dir.path().join("rally.toml"), "not lua").unwrap();
    let bundle = LuaBundle::from_dir(dir.path()).unwrap();
    assert_eq!(
        bundle.paths().collect::<Vec<_>>(),
        ["lib/answer.lua", "main.lua"]
    );
    let mut engine = LuaEngine::load(&bundle, "main.lua", Limits::default()).unwrap();
    assert_eq!(ok(&mut engine, text("c1", "x")), vec![respond("c1", "42")]);
}

// ---------------------------------------------------------------- the example

#[test]
fn the_hello_example_greets_matches_and_ends_its_match() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let bundle = LuaBundle::from_dir(&example).unwrap();
    let user_data = json!({"greeting": "Hello from Rally!"});

    let mut lobby = LuaEngine::load(&bundle, "lobby.lua", Limits::default()).unwrap();
    let start = Event::Started {
        qualifier: Qualifier::Lobby,
        user_data: user_data.clone(),
        config: json!({}),
        mode: None,
    };
    ok(&mut lobby, start);
    let assigned = Event::ClientAssigned {
        client_id: "c1".into(),
        user_id: "u1".into(),
        profile: json!({}),
        group: None,
    };
    let greeting = ok(&mut lobby, assigned);
    assert!(
        matches!(&greeting[..], [RuntimeCommand::RespondClient { client_id, .. }] if client_id == "c1"),
        "{greeting:?}"
    );
    assert_eq!(ok(&mut lobby, text("c1", "hi")), vec![respond("c1", "hi")]);
    assert_eq!(
        ok(&mut lobby, text("c1", "duel")),
        vec![RuntimeCommand::RequestMatchmaking {
            client_id: "c1".into(),
            mode: "duel".into()
        }]
    );

    let mut duel = LuaEngine::load(&bundle, "match.lua", Limits::default()).unwrap();
    let start = Event::Started {
        qualifier: Qualifier::Match,
        user_data,
        config: json!({}),
        mode: Some("duel".into()),
    };
    ok(&mut duel, start);
    let assigned = Event::ClientAssigned {
        client_id: "c1".into(),
        user_id: "u1".into(),
        profile: json!({}),
        group: Some("red".into()),
    };
    assert_eq!(
        ok(&mut duel, assigned),
        vec![respond("c1", "you play for red")]
    );
    let mut stopped = Vec::new();
    for _ in 0..700 {
        stopped.extend(
            ok(&mut duel, tick(0.1))
                .into_iter()
                .filter(|command| matches!(command, RuntimeCommand::StopMatch { .. })),
        );
    }
    assert_eq!(stopped.len(), 1, "{stopped:?}");
}

//! The Defold SDKs (`sdk-defold/`) against this platform. Their Lua runs outside the engine
//! under both `lua5.1` and `luajit`, with busted as the runner and lua-http doing real HTTP and
//! WebSocket I/O (`sdk-defold/standalone/luahttp_engine.lua`):
//! - the unit specs (`sdk-defold/test/spec`, a scripted engine, no platform);
//! - SDK players playing `examples/tictactoe` on a platform started here
//!   (`sdk-defold/test/platform`);
//! - the same players against the tic-tac-toe server written with the server SDK
//!   (`examples/defold-tictactoe`), deployed as a program version that the local-process pool
//!   runs as it would run a headless Defold build: an interpreter plus a script.

use crate::helpers::{Backend, TestApp};
use crate::on_both_backends;
use crate::players::{app, deploy};
use crate::tictactoe::tictactoe_bundle;
use std::path::{Path, PathBuf};
use std::process::Command;

const INTERPRETERS: [&str; 2] = ["lua5.1", "luajit"];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs busted in `sdk-defold/` under `lua` with `args`; panics with its output unless every
/// spec passed.
fn busted(lua: &str, args: &[&str], env: &[(&str, String)]) {
    let saves = tempfile::tempdir().unwrap();
    let mut command = Command::new("busted");
    command
        .current_dir(repository().join("sdk-defold"))
        .arg(format!("--lua={lua}"))
        .arg("--output=TAP")
        .args(args)
        .env("RALLY_SAVE_DIR", saves.path());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .output()
        .expect("busted runs (scripts/setup installs lua-busted)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "busted under {lua} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // TAP: a plan `1..N`, then N lines `ok ...`.
    let planned: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("1.."))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0);
    let passed = stdout
        .lines()
        .filter(|line| line.starts_with("ok "))
        .count();
    assert!(
        planned > 0 && passed == planned,
        "{passed} of {planned} specs passed under {lua}:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_unit_specs_pass_under_lua51_and_luajit() {
    for lua in INTERPRETERS {
        busted(lua, &[], &[]);
    }
}

/// The platform specs under `lua` against stage `studio/game/default` of `app`.
fn players_play(app: &TestApp, lua: &str) {
    busted(
        lua,
        &["--run=platform"],
        &[
            ("RALLY_TEST_URL", app.url.clone()),
            ("RALLY_TEST_TENANT", "studio".into()),
            ("RALLY_TEST_PROJECT", "game".into()),
            ("RALLY_TEST_STAGE", "default".into()),
        ],
    );
}

async fn sdk_players_play_tictactoe(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    for lua in INTERPRETERS {
        let app = &app;
        tokio::task::block_in_place(|| players_play(app, lua));
    }
    app.stop().await;
}

/// Runs `examples/defold-tictactoe/standalone/make-bundle.sh` for `lua` into `directory`;
/// the bundle's directory.
fn make_bundle(directory: &Path, lua: &str) -> PathBuf {
    let out = directory.join("bundle");
    let status =
        Command::new(repository().join("examples/defold-tictactoe/standalone/make-bundle.sh"))
            .arg(&out)
            .arg(lua)
            .status()
            .unwrap();
    assert!(status.success());
    out
}

/// The server SDK's tic-tac-toe as a bundle for `lua`.
fn server_sdk_bundle(lua: &str) -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    let out = make_bundle(directory.path(), lua);
    rally_sdk::bundle::pack(&out, &rally_sdk::bundle::BundleLimits::default()).unwrap()
}

async fn the_server_sdk_runtime_plays_tictactoe(backend: Backend) {
    let app = app(backend, |_| {}).await;
    for lua in INTERPRETERS {
        let (admin, deployment) = deploy(&app, server_sdk_bundle(lua), serde_json::json!({})).await;
        {
            let app = &app;
            tokio::task::block_in_place(|| players_play(app, lua));
        }
        let runtimes = admin
            .list_runtimes("studio", "game", "default", &deployment)
            .await
            .unwrap();
        assert!(runtimes
            .iter()
            .all(|runtime| runtime.pool_kind == "process"));
        // The matches were the server SDK's: its log lines reached each runtime's log.
        let mut wins = 0;
        for runtime in runtimes
            .iter()
            .filter(|runtime| runtime.qualifier == rally_sdk::runtime::Qualifier::Match)
        {
            let log = admin
                .runtime_logs("studio", "game", "default", &deployment, &runtime.id)
                .await
                .unwrap();
            if log.contains("match stopping: x won board xxxoo----") {
                wins += 1;
            }
        }
        assert_eq!(wins, 3, "three games won by x under {lua}");
    }
    app.stop().await;
}

/// Access tokens that live 10 s (the shortest the platform allows): the SDK refreshes them
/// before they expire and reconnects on the renewed one.
async fn sdk_players_refresh_short_lived_tokens(backend: Backend) {
    let app = app(backend, |config| config.access_token_ttl_secs = 10).await;
    deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    let url = app.url.clone();
    tokio::task::block_in_place(|| {
        for lua in INTERPRETERS {
            busted(lua, &["--run=tokens"], &[("RALLY_TEST_URL", url.clone())]);
        }
    });
    app.stop().await;
}

/// The server program started by hand, as the platform would, with what goes wrong: no
/// environment (exit 2) and a secret the platform refuses (exit 4).
async fn the_server_sdk_exits_with_the_documented_codes(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let directory = tempfile::tempdir().unwrap();
    let bundle = make_bundle(directory.path(), "luajit");
    let run = |env: &[(&str, &str)]| {
        tokio::task::block_in_place(|| {
            Command::new(bundle.join("bin/server"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap())
                .envs(env.iter().copied())
                .output()
                .unwrap()
        })
    };
    let bare = run(&[]);
    assert_eq!(bare.status.code(), Some(2));
    let why = String::from_utf8_lossy(&bare.stderr);
    assert!(why.contains("missing RALLY_RUNTIME_ID"), "{why}");

    let secret = "s".repeat(43);
    let refused = run(&[
        ("RALLY_RUNTIME_ID", "0193a000-0000-7000-8000-000000000000"),
        ("RALLY_RUNTIME_SECRET", &secret),
        ("RALLY_RUNTIME_QUALIFIER", "lobby"),
        ("RALLY_PLATFORM_URL", &app.url),
    ]);
    assert_eq!(refused.status.code(), Some(4));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("HTTP 401"), "{why}");
    app.stop().await;
}

on_both_backends!(
    sdk_players_play_tictactoe,
    the_server_sdk_runtime_plays_tictactoe,
    sdk_players_refresh_short_lived_tokens,
    the_server_sdk_exits_with_the_documented_codes
);

//! The `rally-runtime` binary as a developer and the platform meet it: the simulator on the
//! README's scripted session, and the exit codes for a bad environment or a broken bundle.

use std::process::Command;

const RUNTIME: &str = env!("CARGO_BIN_EXE_rally-runtime");
const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");

#[test]
fn the_readme_session_runs_in_the_simulator() {
    let output = Command::new(RUNTIME)
        .args(["simulate", HELLO, &format!("{HELLO}/session.txt")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let commands: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("< "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    assert!(
        commands
            .iter()
            .any(|c| c["type"] == "respond_client" && c["payload"]["text"] == "hello there"),
        "{stdout}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c["type"] == "request_matchmaking" && c["mode"] == "duel"),
        "{stdout}"
    );
    assert!(
        stdout.contains("> 9 stop"),
        "line numbers follow the script: {stdout}"
    );
}

#[test]
fn a_failing_handler_fails_the_simulation_with_file_and_line() {
    let directory = tempfile::tempdir().unwrap();
    for file in ["rally.toml", "match.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), directory.path().join(file)).unwrap();
    }
    std::fs::write(
        directory.path().join("lobby.lua"),
        "local M = {}\nfunction M.on_message(ctx, id, text)\n  while true do end\nend\nfunction M.on_client_assigned(ctx, c)\n  error('boom')\nend\nreturn M\n",
    )
    .unwrap();
    let script = directory.path().join("session.txt");
    std::fs::write(
        &script,
        "start lobby\nmessage c1 spin\njoin c2\nmessage c2 again\n",
    )
    .unwrap();
    let output = Command::new(RUNTIME)
        .args([
            "simulate",
            directory.path().to_str().unwrap(),
            script.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("lobby.lua:3"),
        "the loop is reported where it is: {stdout}"
    );
    assert!(
        stdout.contains("lobby.lua:6"),
        "the error is reported where it is: {stdout}"
    );
    // Every event after a failure still ran.
    assert!(stdout.contains("> 4 message c2 again"), "{stdout}");
}

#[test]
fn a_bundle_that_does_not_compile_exits_3_naming_file_and_line() {
    let directory = tempfile::tempdir().unwrap();
    for file in ["rally.toml", "match.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), directory.path().join(file)).unwrap();
    }
    std::fs::write(
        directory.path().join("lobby.lua"),
        "local M = {\nreturn M end end\n",
    )
    .unwrap();
    let script = directory.path().join("session.txt");
    std::fs::write(&script, "start lobby\n").unwrap();
    let output = Command::new(RUNTIME)
        .args([
            "simulate",
            directory.path().to_str().unwrap(),
            script.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("lobby.lua:"), "{stderr}");
}

#[test]
fn a_missing_environment_exits_2() {
    let output = Command::new(RUNTIME).env_clear().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RALLY_RUNTIME"));
}

#[test]
fn check_loads_both_entries_and_names_what_does_not_load() {
    let output = Command::new(RUNTIME)
        .args(["check", HELLO])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let directory = tempfile::tempdir().unwrap();
    for file in ["rally.toml", "lobby.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), directory.path().join(file)).unwrap();
    }
    std::fs::write(directory.path().join("match.lua"), "return 42\n").unwrap();
    let output = Command::new(RUNTIME)
        .args(["check", directory.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("match") && stderr.contains("match.lua"),
        "{stderr}"
    );
}

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

/// `rally-runtime launcher` as the process pool drives it: requests on stdin, reports on stdout.
struct Launcher {
    child: std::process::Child,
    reports: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Launcher {
    fn start() -> Launcher {
        let mut child = Command::new(RUNTIME)
            .arg("launcher")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, reports) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let report = serde_json::from_str(&line).expect("reports are JSON lines");
                if sender.send(report).is_err() {
                    return;
                }
            }
        });
        Launcher { child, reports }
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }

    fn start_runtime(&mut self, id: &str, bundle: &str, log: &std::path::Path, url: &str) {
        let request = serde_json::json!({
            "runtime_id": id, "secret": format!("secret-of-{id}"), "qualifier": "lobby",
            "platform_url": url, "bundle": bundle, "log": log,
        });
        self.send(&request.to_string());
    }

    fn report(&self) -> serde_json::Value {
        self.reports
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the launcher reports within 10 s")
    }

    fn started(&self, id: &str) -> i32 {
        let report = self.report();
        assert_eq!(report["type"], "started", "{report}");
        assert_eq!(report["runtime_id"], id, "{report}");
        report["pid"].as_i64().unwrap() as i32
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // A zombie has no open files; a live runtime has its log open.
    std::fs::read_link(format!("/proc/{pid}/fd/2")).is_ok()
}

#[test]
fn the_launcher_forks_runtimes_and_reports_their_pids_and_exits() {
    let directory = tempfile::tempdir().unwrap();
    let broken = directory.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for file in ["rally.toml", "match.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), broken.join(file)).unwrap();
    }
    std::fs::write(broken.join("lobby.lua"), "local M = {\nreturn M end end\n").unwrap();
    let mut launcher = Launcher::start();

    // A line that is not a request is skipped; the next one is served.
    launcher.send("this is not a request");
    // A bundle that does not load: the runtime exits 3 and says why in its own log.
    let log = directory.path().join("broken.log");
    launcher.start_runtime(
        "broken",
        broken.to_str().unwrap(),
        &log,
        "http://127.0.0.1:9",
    );
    let pid = launcher.started("broken");
    let report = launcher.report();
    assert_eq!(
        report,
        serde_json::json!({"type": "exited", "pid": pid, "exit_code": 3})
    );
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("lobby.lua:"), "{written}");

    // Ctrl-C in a terminal reaches the launcher too; it stays for the platform to shut down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // A log that cannot be opened: no process, and the start fails with the reason.
    let nowhere = directory.path().join("missing/x.log");
    launcher.start_runtime("nowhere", HELLO, &nowhere, "http://127.0.0.1:9");
    let report = launcher.report();
    assert_eq!(report["type"], "failed", "{report}");
    assert_eq!(report["runtime_id"], "nowhere", "{report}");

    // Two runtimes of one bundle, each with its own identity: each asks the platform for a
    // token with its own id and secret.
    let platform = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", platform.local_addr().unwrap());
    let mut pids = Vec::new();
    for id in ["first", "second"] {
        launcher.start_runtime(id, HELLO, &directory.path().join(format!("{id}.log")), &url);
        pids.push(launcher.started(id));
    }
    let mut asked = Vec::new();
    let mut held = Vec::new();
    while asked.len() < 2 {
        let (mut connection, _) = platform.accept().unwrap();
        connection
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.ends_with(b"}") {
            use std::io::Read;
            let read = connection.read(&mut buffer).unwrap();
            assert!(read > 0, "{}", String::from_utf8_lossy(&request));
            request.extend_from_slice(&buffer[..read]);
        }
        let request = String::from_utf8_lossy(&request).into_owned();
        assert!(
            request.starts_with("POST /api/v1/runtime/token"),
            "{request}"
        );
        let body: serde_json::Value =
            serde_json::from_str(&request[request.find('{').unwrap()..]).unwrap();
        let id = body["runtime_id"].as_str().unwrap().to_owned();
        assert_eq!(body["secret"], format!("secret-of-{id}"));
        asked.push(id);
        held.push(connection);
    }
    asked.sort();
    assert_eq!(asked, ["first", "second"]);

    // A runtime killed by a signal is reported without an exit code.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(
        launcher.report(),
        serde_json::json!({"type": "exited", "pid": pids[0], "exit_code": null})
    );

    // Closing its input ends the launcher, not the runtimes it started.
    drop(launcher.child.stdin.take());
    let status = launcher.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(alive(pids[1]), "a runtime outlives its launcher");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[1]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

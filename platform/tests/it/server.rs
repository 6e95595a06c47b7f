//! The `rally server` binary as an operator meets it: no configuration, health, readiness,
//! metrics, configuration errors and graceful shutdown.

use crate::helpers::{spawn_app, spawn_app_with, Backend};
use crate::on_both_backends;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");

/// `rally server` in `directory` with only `env` set; returns the child and its base URL.
pub(crate) fn start_binary(directory: &std::path::Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(RALLY)
        .arg("server")
        .current_dir(directory)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RALLY_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line on stdout").unwrap();
    let url = first
        .strip_prefix("rally listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    (child, url)
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("rally server did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn the_binary_starts_with_no_configuration_and_stops_on_sigterm() {
    let directory = tempfile::tempdir().unwrap();
    let (mut child, url) = start_binary(directory.path(), &[]);
    let http = reqwest::Client::new();

    let health: serde_json::Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = http.get(format!("{url}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "rally_http_requests_total{method=\"GET\",route=\"/ready\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains("rally_http_request_duration_seconds_bucket{method=\"GET\",route=\"/health\""));
    // The default data directory and SQLite database were made in the working directory.
    assert!(directory.path().join("rally-data/rally.db").exists());

    terminate(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    // The generated admin password is shown once on the terminal, and the server said it stopped.
    assert!(
        stderr.contains("created account `admin` with generated password"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[tokio::test]
async fn a_configured_admin_password_is_used_and_never_printed() {
    let directory = tempfile::tempdir().unwrap();
    let password = "operator-chosen-password";
    let (mut child, url) = start_binary(
        directory.path(),
        &[("RALLY_ADMIN_PASSWORD", password), ("RALLY_LOG", "debug")],
    );
    let client = rally_sdk::RallyClient::new(&url).unwrap();
    client.login("admin", password).await.unwrap();
    terminate(&child);
    wait_with_timeout(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !stderr.contains(password),
        "the password leaked into the output"
    );
    assert!(!stderr.contains("generated password"));
}

#[test]
fn invalid_settings_fail_at_start_naming_the_setting() {
    let directory = tempfile::tempdir().unwrap();
    let cases = [
        ("RALLY_LISTEN", "not-an-address", "RALLY_LISTEN"),
        ("RALLY_BODY_LIMIT_BYTES", "lots", "body_limit_bytes"),
        ("RALLY_DATABASE_URL", "mysql://db/rally", "database_url"),
        ("RALLY_JWT_SECRET", "too-short", "jwt_secret"),
        ("RALLY_ADMIN_PASSWORD", "short", "admin_password"),
        ("RALLY_LOG_FORMAT", "xml", "log_format"),
        (
            "RALLY_RUNTIME_STARTS_AT_ONCE",
            "0",
            "runtime_starts_at_once",
        ),
    ];
    for (variable, value, named) in cases {
        let output = Command::new(RALLY)
            .arg("server")
            .current_dir(directory.path())
            .env(variable, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{variable}={value}: {stderr}");
    }
    let output = Command::new(RALLY)
        .args(["server", "--config", "missing.toml"])
        .current_dir(directory.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
}

#[test]
fn a_config_file_is_read_and_the_environment_wins() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("rally.toml"),
        "listen = \"127.0.0.1:1\"\ndata_dir = \"from-file\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let mut child = Command::new(RALLY)
        .args(["server", "--config", "rally.toml"])
        .current_dir(directory.path())
        .env("RALLY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("rally listening on http://127.0.0.1:"),
        "{first}"
    );
    assert!(!first.ends_with(":1"), "the environment overrides the file");
    assert!(directory.path().join("from-file/rally.db").exists());
    terminate(&child);
    wait_with_timeout(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let first_log = stderr
        .lines()
        .find(|line| line.starts_with('{'))
        .expect("JSON logs");
    let parsed: serde_json::Value = serde_json::from_str(first_log).unwrap();
    assert!(parsed["level"].is_string(), "{first_log}");
}

async fn ready_reports_an_unreachable_database(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.client().ready().await.unwrap().status, "ready");
    app.state.database.close().await;
    let error = app.client().ready().await.unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(503), Some("unavailable"))
    );
    // Liveness does not depend on the database.
    app.client().health().await.unwrap();
}

async fn a_smaller_body_limit_is_enforced(backend: Backend) {
    let app = spawn_app_with(backend, |config| config.body_limit_bytes = 2048).await;
    let big = format!("{{\"device_id\": \"{}\"}}", "x".repeat(4096));
    let (status, body) = crate::helpers::raw(
        &app,
        reqwest::Method::POST,
        "/api/v1/users/device-sign-in",
        Some("application/json"),
        big.clone(),
        None,
    )
    .await;
    assert_eq!(
        (status, crate::helpers::code(&body)),
        (413, "payload_too_large")
    );
    // Without a Content-Length (chunked), the body is cut off at the limit while it is read.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, body) = crate::helpers::raw(
        &app,
        reqwest::Method::POST,
        "/api/v1/users/device-sign-in",
        Some("application/json"),
        reqwest::Body::wrap_stream(chunks),
        None,
    )
    .await;
    assert_eq!(
        (status, crate::helpers::code(&body)),
        (413, "payload_too_large")
    );
    // Below the limit still works.
    app.client()
        .device_sign_in("a-device-id-that-fits")
        .await
        .unwrap();
}

on_both_backends!(
    ready_reports_an_unreachable_database,
    a_smaller_body_limit_is_enforced
);

//! The `rally` CLI against a running platform, as an operator scripts it.

use crate::helpers::{spawn_app, Backend, TestApp, ADMIN_PASSWORD};
use std::process::Output;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");

/// Runs `rally args...` with its config directory in `config_dir`, off the test's threads.
async fn rally(config_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(RALLY);
    command
        .args(args)
        .env("RALLY_CONFIG_DIR", config_dir)
        .env_remove("RALLY_URL")
        .env_remove("RALLY_TOKEN")
        .env_remove("RALLY_PASSWORD");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn version_is_printed() {
    let directory = tempfile::tempdir().unwrap();
    let output = rally(directory.path(), &["--version"], &[]).await;
    assert!(output.status.success());
    assert_eq!(
        stdout(&output).trim(),
        format!("rally {}", env!("CARGO_PKG_VERSION"))
    );
}

async fn login(app: &TestApp, config_dir: &std::path::Path) {
    let output = rally(
        config_dir,
        &["login", "--url", &app.url, "--username", "admin"],
        &[("RALLY_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn admin_logs_in_and_creates_a_developer() {
    let app = spawn_app(Backend::Sqlite).await;
    let config_dir = tempfile::tempdir().unwrap();
    login(&app, config_dir.path()).await;

    let credentials = config_dir.path().join("credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!std::fs::read_to_string(&credentials)
        .unwrap()
        .contains(ADMIN_PASSWORD));

    let output = rally(config_dir.path(), &["whoami", "--json"], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let me: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(me["role"], "admin");

    let output = rally(
        config_dir.path(),
        &["developer", "create", "--username", "ada", "--json"],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let created: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(created["username"], "ada");
    let password = created["password"].as_str().expect("a generated password");
    // The developer can sign in with what the CLI printed.
    app.client().login("ada", password).await.unwrap();

    let output = rally(config_dir.path(), &["developer", "list"], &[]).await;
    assert!(output.status.success());
    assert!(stdout(&output).contains("ada"));

    // A duplicate is refused with the platform's code and exit code 4.
    let output = rally(
        config_dir.path(),
        &[
            "developer",
            "create",
            "--username",
            "ada",
            "--password",
            "another-password",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(4));
    assert!(
        stderr(&output).contains("username_taken"),
        "{}",
        stderr(&output)
    );

    let output = rally(config_dir.path(), &["logout"], &[]).await;
    assert!(output.status.success());
    assert!(!credentials.exists());
    let output = rally(config_dir.path(), &["developer", "list"], &[]).await;
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("rally login"));
}

#[tokio::test]
async fn a_token_from_the_environment_needs_no_stored_login() {
    let app = spawn_app(Backend::Sqlite).await;
    let pair = app.client().login("admin", ADMIN_PASSWORD).await.unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let output = rally(
        config_dir.path(),
        &[
            "developer",
            "create",
            "--username",
            "grace",
            "--password",
            "grace-password",
        ],
        &[("RALLY_URL", &app.url), ("RALLY_TOKEN", &pair.access_token)],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!config_dir.path().join("credentials.json").exists());
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_transparently() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |config| {
        // Shorter than the CLI's 30-second refresh margin: every command refreshes first.
        config.access_token_ttl_secs = 10;
    })
    .await;
    let config_dir = tempfile::tempdir().unwrap();
    login(&app, config_dir.path()).await;
    let before = std::fs::read_to_string(config_dir.path().join("credentials.json")).unwrap();
    let output = rally(config_dir.path(), &["developer", "list"], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let after = std::fs::read_to_string(config_dir.path().join("credentials.json")).unwrap();
    assert_ne!(before, after, "the rotated tokens were saved");
}

#[tokio::test]
async fn failures_have_distinct_exit_codes() {
    let app = spawn_app(Backend::Sqlite).await;
    let config_dir = tempfile::tempdir().unwrap();
    let output = rally(
        config_dir.path(),
        &[
            "login",
            "--url",
            &app.url,
            "--username",
            "admin",
            "--password",
            "wrong-password",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stderr(&output).contains("invalid_credentials"));

    // Nothing listens on port 1.
    let output = rally(
        config_dir.path(),
        &[
            "login",
            "--url",
            "http://127.0.0.1:1",
            "--username",
            "admin",
            "--password",
            "whatever-password",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));

    let output = rally(config_dir.path(), &["developer", "frobnicate"], &[]).await;
    assert_eq!(output.status.code(), Some(2));
}

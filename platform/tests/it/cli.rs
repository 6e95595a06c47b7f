//! The `rally` CLI against a running platform, as an operator scripts it.

use crate::helpers::{spawn_app, Backend, TestApp, ADMIN_PASSWORD};
use std::process::Output;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");

/// Runs `rally args...` with its config directory in `config_dir`, off the test's threads.
pub(crate) async fn rally(
    config_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut command = tokio::process::Command::new(RALLY);
    command
        .args(args)
        .env("RALLY_CONFIG_DIR", config_dir)
        .env_remove("RALLY_URL")
        .env_remove("RALLY_TOKEN")
        .env_remove("RALLY_PASSWORD")
        .env_remove("RALLY_TENANT")
        .env_remove("RALLY_PROJECT")
        .env_remove("RALLY_STAGE")
        .env_remove("RALLY_IDEMPOTENCY_KEY")
        .env_remove("RALLY_DEVELOPER_PASSWORD");
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

pub(crate) async fn login(app: &TestApp, config_dir: &std::path::Path) {
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
    assert_eq!(me["username"], "admin");
    // Unix milliseconds, as every timestamp of the API: the token lives for 15 minutes.
    let expires_in = me["expires_at"].as_i64().unwrap() - rally_platform::storage::now_millis();
    assert!((14 * 60_000..=15 * 60_000).contains(&expires_in), "{me}");
    let output = rally(config_dir.path(), &["whoami"], &[]).await;
    assert!(
        stdout(&output).starts_with("admin (admin, account "),
        "{}",
        stdout(&output)
    );

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

/// Without a password and without a terminal to ask on (a script, CI), `rally login` stops at
/// once with exit code 2 and says how to pass it; `--password-stdin` then works.
#[tokio::test]
async fn login_without_a_password_or_a_terminal_says_how() {
    let app = spawn_app(Backend::Sqlite).await;
    let config_dir = tempfile::tempdir().unwrap();
    let output = rally(
        config_dir.path(),
        &["login", "--url", &app.url, "--username", "admin"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--password-stdin"),
        "{}",
        stderr(&output)
    );
    assert!(!config_dir.path().join("credentials.json").exists());

    let mut command = tokio::process::Command::new(RALLY);
    command
        .args([
            "login",
            "--url",
            &app.url,
            "--username",
            "admin",
            "--password-stdin",
        ])
        .env("RALLY_CONFIG_DIR", config_dir.path())
        .env_remove("RALLY_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes())
            .await
            .unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(config_dir.path().join("credentials.json").exists());
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

// ---- Management commands and `rally deploy` ----

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");
const DEVELOPER_PASSWORD: &str = "ada-password-for-tests";

/// Runs a command that must succeed and returns its stdout.
async fn rally_ok(config_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = rally(config_dir, args, env).await;
    assert!(
        output.status.success(),
        "rally {args:?} failed ({:?}): {}",
        output.status.code(),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs a `--json` command that must succeed and parses what it printed.
async fn rally_json(
    config_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let printed = rally_ok(config_dir, &args, env).await;
    serde_json::from_str(&printed)
        .unwrap_or_else(|error| panic!("rally {args:?} printed no JSON ({error}): {printed}"))
}

/// Two signed-in CLI users of one platform: the admin, and developer `ada`.
struct Team {
    admin: tempfile::TempDir,
    developer: tempfile::TempDir,
}

/// Tenant `acme` and developer `ada`, signed in; `ada` is manager of `acme` when `grant` says
/// so. Everything through the CLI.
async fn team(app: &TestApp, grant: Option<&str>) -> Team {
    let team = Team {
        admin: tempfile::tempdir().unwrap(),
        developer: tempfile::tempdir().unwrap(),
    };
    login(app, team.admin.path()).await;
    let admin = team.admin.path();
    rally_ok(
        admin,
        &[
            "tenant",
            "create",
            "--name",
            "Acme Games",
            "--alias",
            "acme",
        ],
        &[],
    )
    .await;
    rally_ok(
        admin,
        &[
            "developer",
            "create",
            "--username",
            "ada",
            "--password",
            DEVELOPER_PASSWORD,
        ],
        &[],
    )
    .await;
    if let Some(role) = grant {
        rally_ok(
            admin,
            &[
                "permission",
                "grant",
                "--tenant",
                "acme",
                "--developer",
                "ada",
                "--role",
                role,
            ],
            &[],
        )
        .await;
    }
    rally_ok(
        team.developer.path(),
        &["login", "--url", &app.url, "--username", "ada"],
        &[("RALLY_PASSWORD", DEVELOPER_PASSWORD)],
    )
    .await;
    team
}

/// The walk-through a new studio follows, with nothing but the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_developer_deploys_hello_with_the_cli_alone() {
    let app = spawn_app(Backend::Sqlite).await;

    // The operator signs in, creates the tenant and the developer, and makes her its manager.
    let admin = tempfile::tempdir().unwrap();
    login(&app, admin.path()).await;
    let tenant = rally_json(
        admin.path(),
        &[
            "tenant",
            "create",
            "--name",
            "Acme Games",
            "--alias",
            "acme",
        ],
        &[],
    )
    .await;
    assert_eq!(tenant["alias"], "acme");
    let printed = rally_ok(
        admin.path(),
        &["developer", "create", "--username", "ada"],
        &[],
    )
    .await;
    let password = printed
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no generated password in: {printed}"))
        .to_owned();
    let grant = rally_json(
        admin.path(),
        &[
            "permission",
            "grant",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "manager",
        ],
        &[],
    )
    .await;
    assert_eq!(
        (grant["scope"].as_str(), grant["role"].as_str()),
        (Some("tenant"), Some("manager"))
    );

    // The developer signs in on her own machine and ships the example game.
    let developer = tempfile::tempdir().unwrap();
    rally_ok(
        developer.path(),
        &["login", "--url", &app.url, "--username", "ada"],
        &[("RALLY_PASSWORD", &password)],
    )
    .await;
    rally_ok(
        developer.path(),
        &[
            "project", "create", "--tenant", "acme", "--name", "Hello", "--alias", "hello",
        ],
        &[],
    )
    .await;
    let output = rally(
        developer.path(),
        &["deploy", HELLO, "--tenant", "acme", "--project", "hello"],
        &[],
    )
    .await;
    let steps = stderr(&output);
    assert!(output.status.success(), "{steps}");
    let printed = stdout(&output);
    // Each step as it ends, in order, on stderr: stdout is the result alone.
    let mut seen = steps.as_str();
    for step in [
        "packed and checked ",
        "uploaded ",
        "deployed version 1 to acme/hello/default",
        "lobby ready in ",
    ] {
        let at = seen
            .find(step)
            .unwrap_or_else(|| panic!("no step {step:?} after the ones before in: {steps}"));
        seen = &seen[at + step.len()..];
    }

    // The platform agrees: the `default` stage runs version 1.
    let api = app.admin().await;
    let stage = api.get_stage("acme", "hello", "default").await.unwrap();
    let current = stage
        .current_deployment_id
        .expect("the default stage has a current deployment");
    let deployment = api
        .get_deployment("acme", "hello", "default", &current)
        .await
        .unwrap();
    assert_eq!(deployment.version_number, 1);
    assert_eq!(deployment.status, rally_sdk::wire::DeploymentStatus::Active);
    let version = api.get_version("acme", "hello", "1").await.unwrap();
    // What was printed is what was made.
    for expected in [
        "acme",
        "hello",
        "default",
        &version.bundle_sha256,
        &current,
        "active",
    ] {
        assert!(
            printed.contains(expected),
            "{expected:?} missing from: {printed}"
        );
    }
    // The same bundle again: nothing is uploaded or deployed, unless asked (--force).
    let again = rally_ok(
        developer.path(),
        &["deploy", HELLO, "--tenant", "acme", "--project", "hello"],
        &[],
    )
    .await;
    assert!(again.starts_with("unchanged:"), "{again}");
    assert_eq!(api.list_versions("acme", "hello").await.unwrap().len(), 1);
    let stage = api.get_stage("acme", "hello", "default").await.unwrap();
    assert_eq!(
        stage.current_deployment_id.as_deref(),
        Some(current.as_str())
    );

    // Scripts read the same through --json, with the scope from the environment.
    let listed = rally_json(
        developer.path(),
        &["deployment", "list"],
        &[("RALLY_TENANT", "acme"), ("RALLY_PROJECT", "hello")],
    )
    .await;
    let deployments = listed["deployments"].as_array().unwrap();
    assert_eq!(deployments.len(), 1, "{listed}");
    assert_eq!(deployments[0]["id"], current.as_str());
    assert_eq!(deployments[0]["version_number"], 1);
    assert_eq!(deployments[0]["status"], "active");
    let forced = rally_ok(
        developer.path(),
        &[
            "deploy",
            HELLO,
            "--tenant",
            "acme",
            "--project",
            "hello",
            "--force",
            "--json",
        ],
        &[],
    )
    .await;
    let forced: serde_json::Value = serde_json::from_str(&forced).unwrap();
    assert_eq!(forced["version"]["number"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_that_does_not_compile_is_refused_before_anything_is_uploaded() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, Some("manager")).await;
    rally_ok(
        team.developer.path(),
        &[
            "project", "create", "--tenant", "acme", "--name", "Hello", "--alias", "hello",
        ],
        &[],
    )
    .await;
    let broken = tempfile::tempdir().unwrap();
    for file in ["rally.toml", "match.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), broken.path().join(file)).unwrap();
    }
    std::fs::write(
        broken.path().join("lobby.lua"),
        "local M = {}\nfunction M.on_start(ctx)\n  ctx.log(\"x\"\nend\nreturn M\n",
    )
    .unwrap();
    let output = rally(
        team.developer.path(),
        &[
            "deploy",
            broken.path().to_str().unwrap(),
            "--tenant",
            "acme",
            "--project",
            "hello",
        ],
        &[],
    )
    .await;
    let printed = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("lobby.lua:"),
        "the file and line are named: {printed}"
    );
    assert!(printed.contains("nothing was uploaded"), "{printed}");
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM versions")
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_eq!(versions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_is_refused_before_anything_is_uploaded() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, Some("manager")).await;
    rally_ok(
        team.developer.path(),
        &[
            "project", "create", "--tenant", "acme", "--name", "Hello", "--alias", "hello",
        ],
        &[],
    )
    .await;
    let broken = tempfile::tempdir().unwrap();
    for file in ["lobby.lua", "match.lua"] {
        std::fs::copy(format!("{HELLO}/{file}"), broken.path().join(file)).unwrap();
    }
    std::fs::write(
        broken.path().join("rally.toml"),
        "[runtime]\nkind = \"lua\"\nlobby = \"lobby.lua\"\nmatch = \"match.lua\"\ntick_rate = 0\n\n\
         [[modes]]\nname = \"duel\"\nmin_players = 3\nmax_players = 2\n\
         groups = [{ name = \"all\", min_players = 1, max_players = 2 }]\n",
    )
    .unwrap();
    let directory = broken.path().to_str().unwrap();

    let output = rally(
        team.developer.path(),
        &[
            "deploy",
            directory,
            "--tenant",
            "acme",
            "--project",
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let printed = stderr(&output);
    assert!(printed.contains("nothing was uploaded"), "{printed}");
    // Every problem on a line of its own, as `field: message`.
    assert_a_line_for_each(&printed, &["runtime.tick_rate: ", "modes[0].max_players: "]);
    assert!(stdout(&output).is_empty());
    let versions = app
        .admin()
        .await
        .list_versions("acme", "hello")
        .await
        .unwrap();
    assert!(versions.is_empty(), "{versions:?}");

    // The check needs no platform at all: it fails the same way before any sign-in.
    let nobody = tempfile::tempdir().unwrap();
    let upload = [
        "version",
        "upload",
        directory,
        "--tenant",
        "acme",
        "--project",
        "hello",
    ];
    let upload_signed_out = || rally(nobody.path(), &upload, &[]);
    let output = upload_signed_out().await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("runtime.tick_rate: "));

    // A script that does not compile as well: one run names every problem.
    std::fs::write(
        broken.path().join("lobby.lua"),
        "local M = {}\nfunction M.on_start(ctx)\n  ctx.log(\"x\"\nend\nreturn M\n",
    )
    .unwrap();
    let output = upload_signed_out().await;
    let printed = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert_a_line_for_each(
        &printed,
        &[
            "runtime.tick_rate: ",
            "modes[0].max_players: ",
            "the lobby logic does not load: ",
        ],
    );
    assert!(printed.contains("lobby.lua:"), "{printed}");
}

/// `printed` has a line starting with each of `starts`.
fn assert_a_line_for_each(printed: &str, starts: &[&str]) {
    for start in starts {
        assert!(
            printed
                .lines()
                .any(|line| line.trim_start().starts_with(start)),
            "no line for {start:?} in: {printed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_without_a_grant_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, None).await;
    rally_ok(
        team.admin.path(),
        &[
            "project", "create", "--tenant", "acme", "--name", "Hello", "--alias", "hello",
        ],
        &[],
    )
    .await;

    let output = rally(
        team.developer.path(),
        &["deploy", HELLO, "--tenant", "acme", "--project", "hello"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let printed = stderr(&output);
    assert!(
        printed.contains("not_found") || printed.contains("forbidden"),
        "{printed}"
    );
    assert!(printed.contains("hint: "), "{printed}");
    let output = rally(
        team.developer.path(),
        &["project", "list", "--tenant", "acme"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("not_found"), "{}", stderr(&output));

    // A viewer may look but not ship: refused before the upload, so no version is made.
    rally_ok(
        team.admin.path(),
        &[
            "permission",
            "grant",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "viewer",
        ],
        &[],
    )
    .await;
    let listed = rally_json(
        team.developer.path(),
        &["project", "list", "--tenant", "acme"],
        &[],
    )
    .await;
    assert_eq!(listed["projects"][0]["alias"], "hello");
    let output = rally(
        team.developer.path(),
        &["deploy", HELLO, "--tenant", "acme", "--project", "hello"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("forbidden"), "{}", stderr(&output));
    let versions = app
        .admin()
        .await
        .list_versions("acme", "hello")
        .await
        .unwrap();
    assert!(versions.is_empty(), "{versions:?}");

    // And developers never administer tenants.
    let output = rally(
        team.developer.path(),
        &["tenant", "create", "--name", "Mine"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("forbidden"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_for_scripts() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, Some("manager")).await;
    let admin = team.admin.path();
    let developer = team.developer.path();
    let scope: &[(&str, &str)] = &[("RALLY_TENANT", "acme"), ("RALLY_PROJECT", "hello")];

    let project = rally_json(
        developer,
        &["project", "create", "--name", "Hello", "--alias", "hello"],
        scope,
    )
    .await;
    let deployed = rally_json(developer, &["deploy", HELLO, "--note", "first"], scope).await;
    assert_eq!(deployed["version"]["number"], 1);
    assert_eq!(deployed["version"]["note"], "first");
    assert_eq!(deployed["deployment"]["status"], "active");
    let deployment_id = deployed["deployment"]["id"].as_str().unwrap();

    assert_eq!(
        rally_json(admin, &["tenant", "list"], &[]).await["tenants"][0]["alias"],
        "acme"
    );
    assert_eq!(
        rally_json(developer, &["tenant", "show", "acme"], &[]).await["name"],
        "Acme Games"
    );
    assert_eq!(
        rally_json(developer, &["project", "list"], scope).await["projects"][0]["id"],
        project["id"]
    );
    assert_eq!(
        rally_json(developer, &["project", "show", "hello"], scope).await["id"],
        project["id"]
    );
    let staging = rally_json(
        developer,
        &["stage", "create", "--name", "Staging", "--alias", "staging"],
        scope,
    )
    .await;
    assert_eq!(staging["alias"], "staging");
    assert_eq!(
        rally_json(developer, &["stage", "list"], scope).await["stages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        rally_json(developer, &["stage", "show", "default"], scope).await["current_deployment_id"],
        deployment_id
    );
    assert_eq!(
        rally_json(developer, &["stage", "delete", "staging"], scope).await["deleted"],
        true
    );
    assert_eq!(
        rally_json(developer, &["version", "list"], scope).await["versions"][0]["number"],
        1
    );
    assert_eq!(
        rally_json(developer, &["version", "show", "1"], scope).await["manifest"]["runtime"]
            ["kind"],
        "lua"
    );
    assert_eq!(
        rally_json(developer, &["deployment", "show", deployment_id], scope).await
            ["version_number"],
        1
    );
    let stopped = rally_json(developer, &["deployment", "stop", deployment_id], scope).await;
    // Draining closes within seconds once nothing runs, possibly before the answer is read.
    assert!(
        ["draining", "closed"].contains(&stopped["status"].as_str().unwrap()),
        "{stopped}"
    );
    assert_eq!(
        rally_json(admin, &["permission", "list"], scope).await["grants"][0]["username"],
        "ada"
    );
    assert_eq!(
        rally_json(admin, &["developer", "list"], &[]).await["accounts"][0]["username"],
        "ada"
    );
    assert_eq!(
        rally_json(admin, &["developer", "show", "ada"], &[]).await["disabled"],
        false
    );
    let actions: Vec<String> = rally_json(developer, &["audit", "--limit", "10"], scope).await
        ["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.contains(&"deployment.create".to_owned()),
        "{actions:?}"
    );
    assert!(!rally_json(admin, &["audit"], &[]).await["entries"]
        .as_array()
        .unwrap()
        .is_empty());
    // People and things by name: the developer's deployment, the stage by its alias.
    let audit = rally_ok(admin, &["audit"], &[]).await;
    let deployed = audit
        .lines()
        .find(|line| line.contains("deployment.create"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(deployed.contains(" ada "), "{deployed}");
    let staged = audit
        .lines()
        .find(|line| line.contains("stage.create"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        staged.contains("stage staging"),
        "a deleted stage by the alias it had: {staged}"
    );

    // People get aligned tables instead.
    let table = rally_ok(developer, &["version", "list"], scope).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("VERSION  "), "{table}");
    let row = lines.next().unwrap();
    assert_eq!(row.find("first"), header.find("NOTE"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_overrides_config_and_retries_safely() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, Some("manager")).await;
    let developer = team.developer.path();
    let scope: &[(&str, &str)] = &[("RALLY_TENANT", "acme"), ("RALLY_PROJECT", "hello")];
    rally_ok(
        developer,
        &["project", "create", "--name", "Hello", "--alias", "hello"],
        scope,
    )
    .await;

    let args = [
        "deploy",
        HELLO,
        "--config",
        "min_lobbies=2",
        "--config",
        "warm_matches.duel=1",
        "--idempotency-key",
        "ship-1",
    ];
    let first = rally_json(developer, &args, scope).await;
    assert_eq!(first["deployment"]["config"]["min_lobbies"], 2);
    assert_eq!(first["deployment"]["config"]["warm_matches"]["duel"], 1);
    // A retry of the same deploy (say after a dropped connection) makes nothing new.
    let retried = rally_json(developer, &args, scope).await;
    assert_eq!(retried["deployment"]["id"], first["deployment"]["id"]);
    assert_eq!(retried["version"]["number"], 1);
    let versions = rally_json(developer, &["version", "list"], scope).await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);

    // The platform's objections to a config come back one per line.
    let output = rally(
        developer,
        &[
            "deployment",
            "create",
            "--version",
            "1",
            "--config",
            "warm_matches.nope=1",
        ],
        scope,
    )
    .await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).lines().any(|line| line
            .trim_start()
            .starts_with("deployment.warm_matches.nope: ")),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("invalid_deployment_config"));

    // A malformed setting is a usage error, caught before anything is sent.
    let output = rally(
        developer,
        &["deploy", HELLO, "--config", "min_lobbies"],
        scope,
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = rally(
        developer,
        &[
            "deploy",
            HELLO,
            "--config",
            "warm_matches=1",
            "--config",
            "warm_matches.duel=1",
        ],
        scope,
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    // A mistyped stage is found before the upload, so no stray version is left behind.
    let output = rally(developer, &["deploy", HELLO, "--stage", "prod"], scope).await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("not_found"), "{}", stderr(&output));
    let versions = rally_json(developer, &["version", "list"], scope).await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disables_enables_and_resets_a_developer() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, None).await;
    let admin = team.admin.path();

    let disabled = rally_json(admin, &["developer", "disable", "ada"], &[]).await;
    assert_eq!(disabled["disabled"], true);
    // The developer's stored sign-in stops working: exit code 3, and the hint names the fix.
    let output = rally(team.developer.path(), &["tenant", "list"], &[]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("account_disabled"),
        "{}",
        stderr(&output)
    );

    rally_ok(admin, &["developer", "enable", "ada"], &[]).await;
    let reset = rally_json(admin, &["developer", "reset-password", "ada"], &[]).await;
    let password = reset["password"].as_str().expect("a generated password");
    assert_ne!(password, DEVELOPER_PASSWORD);
    app.client().login("ada", password).await.unwrap();
    assert!(app.client().login("ada", DEVELOPER_PASSWORD).await.is_err());

    let printed = rally_ok(
        admin,
        &["developer", "reset-password", "ada"],
        &[("RALLY_DEVELOPER_PASSWORD", "chosen-password-123")],
    )
    .await;
    assert!(!printed.contains("chosen-password-123"), "{printed}");
    app.client()
        .login("ada", "chosen-password-123")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_scope_follows_the_flags_given() {
    let app = spawn_app(Backend::Sqlite).await;
    let team = team(&app, None).await;
    let admin = team.admin.path();
    rally_ok(
        admin,
        &[
            "project", "create", "--tenant", "acme", "--name", "Hello", "--alias", "hello",
        ],
        &[],
    )
    .await;

    let on_project = rally_json(
        admin,
        &[
            "permission",
            "grant",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "viewer",
            "--project",
            "hello",
        ],
        &[],
    )
    .await;
    assert_eq!(on_project["scope"], "project");
    let on_stage = rally_json(
        admin,
        &[
            "permission",
            "grant",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "manager",
            "--project",
            "hello",
            "--stage",
            "default",
        ],
        &[],
    )
    .await;
    assert_eq!(on_stage["scope"], "stage");
    let table = rally_ok(admin, &["permission", "list", "--tenant", "acme"], &[]).await;
    assert!(
        table.contains("project") && table.contains("stage"),
        "{table}"
    );

    rally_ok(
        admin,
        &[
            "permission",
            "revoke",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "manager",
            "--project",
            "hello",
            "--stage",
            "default",
        ],
        &[],
    )
    .await;
    let grants = rally_json(admin, &["permission", "list", "--tenant", "acme"], &[]).await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 1, "{grants}");
    assert_eq!(grants["grants"][0]["scope"], "project");

    // A stage belongs to a project: --stage alone does not say which.
    let output = rally(
        admin,
        &[
            "permission",
            "grant",
            "--tenant",
            "acme",
            "--developer",
            "ada",
            "--role",
            "viewer",
            "--stage",
            "default",
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

/// `rally loadtest players` measures echoes: against a lobby that echoes (`examples/hello`) it
/// reports round trips and exits 0; against one that does not (tic-tac-toe's), it still prints
/// its report, then says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_players_says_when_nothing_echoes() {
    let app = crate::players::app(Backend::Sqlite, |_| {}).await;
    let run = |app_url: String| async move {
        let config_dir = tempfile::tempdir().unwrap();
        rally(
            config_dir.path(),
            &[
                "loadtest",
                "players",
                "--url",
                &app_url,
                "--tenant",
                "studio",
                "--project",
                "game",
                "--players",
                "2",
                "--rate",
                "5",
                "--warmup-secs",
                "0",
                "--duration-secs",
                "1",
            ],
            &[],
        )
        .await
    };
    crate::players::deploy(
        &app,
        crate::permissions::hello_bundle(),
        serde_json::json!({}),
    )
    .await;
    let output = run(app.url.clone()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert!(report["round_trips"].as_u64().unwrap() > 0, "{report}");

    crate::players::deploy(
        &app,
        crate::tictactoe::tictactoe_bundle(),
        serde_json::json!({}),
    )
    .await;
    let output = run(app.url.clone()).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("no echo came back"),
        "{}",
        stderr(&output)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert_eq!(report["round_trips"], 0);
    app.stop().await;
}

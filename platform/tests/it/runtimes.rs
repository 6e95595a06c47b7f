//! Runtimes as real `rally-runtime` processes, forked by the platform's launcher: started for a
//! deployment's lobbies, replaced when killed, drained when a new version is deployed, stopped
//! with the platform, watched by pid when the launcher dies, and cleaned up after a platform
//! crash.

use crate::helpers::{assert_api_error, Backend, TestApp, ADMIN_PASSWORD};
use crate::on_both_backends;
use crate::permissions::hello_bundle;
use rally_sdk::wire::{DeploymentStatus, RuntimeInfo};
use rally_sdk::RallyClient;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `rally-runtime` from the same build as this test.
pub fn runtime_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|directory| directory.join("rally-runtime"))
        .find(|candidate| candidate.is_file())
        .expect("rally-runtime is built next to the tests (cargo test --workspace builds it)")
}

async fn app_with_runtimes(backend: Backend) -> TestApp {
    crate::players::app(backend, |_| {}).await
}

/// Tenant `studio`, project `game`, version 1 of the hello example deployed with `min_lobbies`.
async fn deployed(app: &TestApp, min_lobbies: u32) -> (RallyClient, String) {
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    let deployment = admin
        .deploy(
            "studio",
            "game",
            "default",
            "1",
            serde_json::json!({"min_lobbies": min_lobbies}),
        )
        .await
        .unwrap();
    (admin, deployment.id)
}

/// Polls the deployment's runtimes until `done` holds, for at most 20 seconds.
async fn wait_for(
    admin: &RallyClient,
    deployment: &str,
    what: &str,
    done: impl Fn(&[RuntimeInfo]) -> bool,
) -> Vec<RuntimeInfo> {
    let started = Instant::now();
    loop {
        let runtimes = admin
            .list_runtimes("studio", "game", "default", deployment)
            .await
            .unwrap();
        if done(&runtimes) {
            return runtimes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {runtimes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(runtimes: &[RuntimeInfo]) -> Vec<&RuntimeInfo> {
    runtimes
        .iter()
        .filter(|runtime| runtime.status == "running" && runtime.connected_at.is_some())
        .collect()
}

/// The state letter of a process (R, S, Z...) and its parent's pid, or None when it is gone.
fn process_stat(pid: i64) -> Option<(char, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) state ppid ...`; the name may hold spaces and parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The state letter of a process (R, S, Z...), or None when it is gone.
fn process_state(pid: i64) -> Option<char> {
    process_stat(pid).map(|(state, _)| state)
}

fn is_rally_runtime(pid: i64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("rally-runtime"))
        .unwrap_or(false)
}

fn kill_process(pid: i64) {
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
}

/// Waits for the lobby `victim` to be marked failed and replaced, two lobbies running again.
async fn replaced(admin: &RallyClient, deployment: &str, victim: &str) -> Vec<RuntimeInfo> {
    wait_for(admin, deployment, "the killed lobby replaced", |r| {
        r.iter()
            .any(|runtime| runtime.id == victim && runtime.status == "failed")
            && running(r).len() == 2
    })
    .await
}

/// Stops the platform and checks that none of the running `runtimes` outlived it.
async fn stop_and_check_runtimes_ended(app: TestApp, runtimes: &[RuntimeInfo]) {
    let live: Vec<i64> = running(runtimes).iter().map(|r| r.pid.unwrap()).collect();
    app.stop().await;
    for pid in live {
        assert!(
            matches!(process_state(pid), None | Some('Z')) || !is_rally_runtime(pid),
            "pid {pid} outlived the platform"
        );
    }
}

async fn lobbies_run_as_processes_and_a_killed_one_is_replaced(backend: Backend) {
    let app = app_with_runtimes(backend).await;
    let (admin, deployment) = deployed(&app, 2).await;
    let runtimes = wait_for(&admin, &deployment, "two connected lobbies", |r| {
        running(r).len() == 2
    })
    .await;
    let pids: Vec<i64> = running(&runtimes).iter().map(|r| r.pid.unwrap()).collect();
    for pid in &pids {
        assert!(is_rally_runtime(*pid), "pid {pid} is not rally-runtime");
    }
    let victim = running(&runtimes)[0].id.clone();
    let victim_pid = pids[0];
    kill_process(victim_pid);

    let runtimes = replaced(&admin, &deployment, &victim).await;
    let failed = runtimes
        .iter()
        .find(|runtime| runtime.id == victim)
        .unwrap();
    assert!(failed.failure.is_some());
    assert_eq!(runtimes.len(), 3, "one replacement, no more");
    // Reaped, not a zombie.
    assert_ne!(process_state(victim_pid), Some('Z'));

    // What the runtime printed is readable.
    let survivor = running(&runtimes)[0].id.clone();
    let logs = admin
        .runtime_logs("studio", "game", "default", &deployment, &survivor)
        .await
        .unwrap();
    assert!(logs.contains("starting"), "{logs}");

    // The CLI shows the same, for operators.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rally"))
            .args(args)
            .args(["--tenant", "studio", "--project", "game"])
            .env("RALLY_URL", &app.url)
            .env("RALLY_TOKEN", admin.access_token().unwrap())
            .env(
                "RALLY_CONFIG_DIR",
                std::env::temp_dir().join("rally-cli-unused"),
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let listed: serde_json::Value = serde_json::from_str(&cli(&[
        "runtime",
        "list",
        "--json",
        "--deployment",
        &deployment,
    ]))
    .unwrap();
    assert_eq!(listed["runtimes"].as_array().unwrap().len(), 3);
    // Without --deployment: the stage's active one.
    let active: serde_json::Value =
        serde_json::from_str(&cli(&["runtime", "list", "--json"])).unwrap();
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|runtime| runtime["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&active), ids(&listed));
    assert!(cli(&["runtime", "logs", &survivor]).contains("starting"));

    // Stopping the platform stops its runtimes.
    stop_and_check_runtimes_ended(app, &runtimes).await;
}

async fn a_new_deployment_drains_the_old_runtimes(backend: Backend) {
    let app = app_with_runtimes(backend).await;
    let (admin, first) = deployed(&app, 1).await;
    let old = wait_for(&admin, &first, "the first lobby", |r| running(r).len() == 1).await;
    let old_runtime = running(&old)[0].id.clone();

    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    let second = admin
        .deploy("studio", "game", "default", "2", serde_json::Value::Null)
        .await
        .unwrap();
    wait_for(&admin, &second.id, "the new version's lobby", |r| {
        running(r).len() == 1
    })
    .await;
    let old = wait_for(&admin, &first, "the old lobby stopped", |r| {
        r.iter()
            .all(|runtime| runtime.status == "stopped" || runtime.status == "failed")
    })
    .await;
    let stopped = old
        .iter()
        .find(|runtime| runtime.id == old_runtime)
        .unwrap();
    assert_eq!(
        stopped.status, "stopped",
        "asked to stop, it stopped: {stopped:?}"
    );
    let started = Instant::now();
    loop {
        let deployment = admin
            .get_deployment("studio", "game", "default", &first)
            .await
            .unwrap();
        if deployment.status == DeploymentStatus::Closed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the old deployment did not close"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

async fn runtime_secrets_work_once(backend: Backend) {
    let app = app_with_runtimes(backend).await;
    let (admin, deployment) = deployed(&app, 0).await;
    let secret = rally_platform::auth::new_secret();
    let id = rally_platform::storage::new_id();
    sqlx::query(
        "INSERT INTO runtimes (id, deployment_id, qualifier, status, secret_hash, node_id, pool_kind, created_at) \
         VALUES ($1, $2, 'lobby', 'starting', $3, $4, 'process', $5)",
    )
    .bind(&id)
    .bind(&deployment)
    .bind(rally_platform::auth::hash_secret(&secret))
    .bind(&app.state.runtimes.node_id)
    .bind(rally_platform::storage::now_millis())
    .execute(app.state.database.writer())
    .await
    .unwrap();
    let client = app.client();
    assert_api_error(
        client.runtime_token(&id, "forged-secret").await,
        401,
        "invalid_credentials",
    );
    let tokens = client.runtime_token(&id, &secret).await.unwrap();
    assert_eq!(tokens.role, rally_sdk::wire::Role::Runtime);
    assert_api_error(
        client.runtime_token(&id, &secret).await,
        401,
        "runtime_secret_used",
    );
    // A runtime token opens no management route, and a player token no runtime socket.
    assert_api_error(
        client
            .authenticated(&tokens.access_token)
            .list_tenants()
            .await,
        403,
        "forbidden",
    );
    // The refresh token renews a runtime's access.
    client.refresh(&tokens.refresh_token).await.unwrap();
    let _ = admin;
    app.stop().await;
}

/// Pids of this test process's `rally-runtime launcher` children.
fn launchers() -> Vec<i64> {
    let me = i64::from(std::process::id());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            process_stat(*pid).is_some_and(|(_, parent)| parent == me)
                && cmdline.ends_with(b"rally-runtime\0launcher\0")
        })
        .collect()
}

async fn a_dead_launcher_leaves_its_runtimes_running_and_is_replaced(backend: Backend) {
    let app = app_with_runtimes(backend).await;
    let (admin, deployment) = deployed(&app, 2).await;
    let runtimes = wait_for(&admin, &deployment, "two connected lobbies", |r| {
        running(r).len() == 2
    })
    .await;
    let launcher = launchers();
    assert_eq!(launcher.len(), 1, "one launcher per node: {launcher:?}");
    kill_process(launcher[0]);

    // The lobbies live on, now watched by pid; when one dies it is noticed and replaced
    // through a new launcher.
    let victim = running(&runtimes)[0].id.clone();
    let victim_pid = running(&runtimes)[0].pid.unwrap();
    let survivor = running(&runtimes)[1].id.clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runtimes = wait_for(&admin, &deployment, "both lobbies still up", |r| {
        running(r).len() == 2
    })
    .await;
    assert_eq!(runtimes.len(), 2, "nothing was replaced: {runtimes:#?}");
    kill_process(victim_pid);
    let runtimes = replaced(&admin, &deployment, &victim).await;
    assert!(running(&runtimes).iter().any(|r| r.id == survivor));
    let relaunched = launchers();
    assert!(
        relaunched.len() == 1 && relaunched != launcher,
        "a new launcher started the replacement: {relaunched:?}, before {launcher:?}"
    );

    // Stopping the platform stops its runtimes, the orphan included.
    stop_and_check_runtimes_ended(app, &runtimes).await;
}

on_both_backends!(
    lobbies_run_as_processes_and_a_killed_one_is_replaced,
    a_dead_launcher_leaves_its_runtimes_running_and_is_replaced,
    a_new_deployment_drains_the_old_runtimes,
    runtime_secrets_work_once,
);

/// The platform as a child process, to crash it for real.
pub(crate) struct PlatformProcess {
    child: std::process::Child,
}

/// A test that fails midway must not leave its platform running (it would go on starting
/// runtimes and containers): the process is killed when its handle goes, unless it ended.
impl Drop for PlatformProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl PlatformProcess {
    pub(crate) fn start(data_dir: &std::path::Path, port: u16) -> Self {
        Self::start_with(data_dir, port, &[])
    }

    /// [`Self::start`] with more `RALLY_*` settings.
    pub(crate) fn start_with(
        data_dir: &std::path::Path,
        port: u16,
        settings: &[(&str, &str)],
    ) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rally"))
            .arg("server")
            .envs(settings.iter().copied())
            .env("RALLY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RALLY_DATA_DIR", data_dir)
            .env("RALLY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RALLY_RUNTIME_BINARY", runtime_binary())
            .env("RALLY_RUNTIME_STOP_GRACE_SECS", "1")
            .env_remove("RALLY_DATABASE_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("rally listening"), "{line}");
        Self { child }
    }

    pub(crate) fn signal(&self, signal: &str) {
        std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub(crate) fn wait(mut self) {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the platform did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_platform_crash_runtimes_reconnect_and_none_is_left_behind() {
    let directory = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let platform = PlatformProcess::start(directory.path(), port);
    let client = RallyClient::new(&url).unwrap();
    let tokens = client.login("admin", ADMIN_PASSWORD).await.unwrap();
    let admin = client.authenticated(&tokens.access_token);
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    let deployment = admin
        .deploy(
            "studio",
            "game",
            "default",
            "1",
            serde_json::json!({"min_lobbies": 2}),
        )
        .await
        .unwrap()
        .id;
    let before = wait_for(&admin, &deployment, "two lobbies", |r| {
        running(r).len() == 2
    })
    .await;
    let pids: Vec<i64> = running(&before).iter().map(|r| r.pid.unwrap()).collect();

    // Crash: the runtimes are orphaned but alive, trying to reconnect.
    platform.signal("-KILL");
    platform.wait();
    for pid in &pids {
        assert!(
            is_rally_runtime(*pid),
            "runtime {pid} died with the platform"
        );
    }
    // One of them no record knows as live any more (as after a start the crash cut short).
    let written_off = running(&before)[1].clone();
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", directory.path().join("rally.db").display());
        let mut database = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE runtimes SET status = 'failed' WHERE id = $1")
            .bind(&written_off.id)
            .execute(&mut database)
            .await
            .unwrap();
        database.close().await.unwrap();
    }

    // Restart on the same data and port: the runtime still on record comes back, the one
    // written off is ended and replaced, nothing else is added.
    let platform = PlatformProcess::start(directory.path(), port);
    let after = wait_for(&admin, &deployment, "the lobbies reconnected", |r| {
        running(r).len() == 2
            && running(r)
                .iter()
                .filter(|runtime| runtime.connected_at.is_some())
                .count()
                == 2
    })
    .await;
    let reconnected: Vec<i64> = running(&after).iter().map(|r| r.pid.unwrap()).collect();
    assert_eq!(reconnected.len(), 2);
    assert!(
        reconnected.contains(&pids[0]),
        "runtime {} was replaced instead of kept",
        pids[0]
    );
    let ended = written_off.pid.unwrap();
    assert!(!reconnected.contains(&ended));
    assert!(
        !is_rally_runtime(ended) || process_state(ended) == Some('Z'),
        "the runtime no record knew ({ended}) was left running"
    );
    // Give the reconnected runtimes a moment on their new sockets, then stop the platform.
    tokio::time::sleep(Duration::from_millis(300)).await;
    platform.signal("-TERM");
    platform.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pid in &pids {
        assert!(
            !is_rally_runtime(*pid) || process_state(*pid) == Some('Z'),
            "runtime {pid} outlived the platform"
        );
    }
}

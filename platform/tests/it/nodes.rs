//! Platform nodes (`docs/nodes.md`): each `rally server` writes a heartbeat row; `rally node
//! list` shows them alive, dead or stopped, with what runs on each. Second nodes are real
//! `rally server` processes on the test's database. The embedded SQLite default refuses a
//! second live node on the same file.

use crate::cli::{login, rally};
use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::players::{app, connect, deploy, player};
use crate::tictactoe::tictactoe_bundle;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");

/// A second node: `rally server` on `app`'s database with a data directory of its own and a
/// 1 s heartbeat. Its output is drained (stdout) or kept in a file (stderr) so that it never
/// blocks on a full pipe. Returns the child and its URL.
fn second_node(app: &TestApp, directory: &std::path::Path) -> (Child, String) {
    let log = std::fs::File::create(directory.join("stderr.log")).unwrap();
    let mut child = Command::new(RALLY)
        .arg("server")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RALLY_LISTEN", "127.0.0.1:0")
        .env("RALLY_DATA_DIR", directory.join("data"))
        .env("RALLY_DATABASE_URL", &app.database.url)
        .env("RALLY_NODE_HEARTBEAT_SECS", "1")
        .env("RALLY_NODE_DEAD_AFTER_SECS", "3")
        .env("RALLY_RUNTIME_BINARY", crate::runtimes::runtime_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().map(|line| line.unwrap()).unwrap_or_default();
    let Some(url) = first.strip_prefix("rally listening on ") else {
        child.kill().ok();
        child.wait().ok();
        let stderr = std::fs::read_to_string(directory.join("stderr.log")).unwrap_or_default();
        panic!("the second node did not start: {first:?}\n{stderr}");
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url.to_owned())
}

/// The nodes as the admin sees them, once `ready` holds for them (or after 15 s).
async fn nodes_until(
    app: &TestApp,
    ready: impl Fn(&[rally_sdk::wire::Node]) -> bool,
) -> Vec<rally_sdk::wire::Node> {
    let admin = app.admin().await;
    let mut nodes = Vec::new();
    for _ in 0..150 {
        nodes = admin.list_nodes().await.unwrap();
        if ready(&nodes) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes
}

async fn this_node_is_listed_alive_with_its_url_and_what_runs_on_it(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    let mut socket = connect(&app, &player(&app).await).await;
    socket.greeted_and_assigned().await;
    let nodes = nodes_until(&app, |nodes| {
        nodes.first().is_some_and(|node| node.runtimes >= 1)
    })
    .await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    assert_eq!(node.id, app.state.runtimes.node_id);
    assert_eq!(node.url, app.url);
    assert_eq!(node.status, "alive");
    assert_eq!(node.clients, 1);
    assert!(node.runtimes >= 1, "{node:?}");

    // The operator's view.
    let config_dir = tempfile::tempdir().unwrap();
    login(&app, config_dir.path()).await;
    let output = rally(config_dir.path(), &["node", "list"], &[]).await;
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains(&node.id) && table.contains("alive"),
        "{table}"
    );
    let output = rally(config_dir.path(), &["node", "list", "--json"], &[]).await;
    let listed: rally_sdk::wire::NodeList = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.nodes[0].url, app.url);

    // A restart of the same data directory is the same node, alive again.
    let app = app.restart().await;
    let nodes = nodes_until(&app, |_| true).await;
    assert_eq!(nodes.len(), 1, "the same node again: {nodes:?}");
    assert_eq!(nodes[0].status, "alive");
    app.stop().await;
}

/// Two nodes on one PostgreSQL database: both listed alive; one killed with SIGKILL is dead
/// after `node_dead_after_secs`, one stopped with SIGTERM says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_postgres_database_see_each_other_live_and_die() {
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.node_heartbeat_secs = 1;
        config.node_dead_after_secs = 3;
    })
    .await;
    let directory = tempfile::tempdir().unwrap();
    let (mut killed, url) = second_node(&app, directory.path());
    let nodes = nodes_until(&app, |nodes| {
        nodes.iter().filter(|node| node.status == "alive").count() == 2
    })
    .await;
    let second = nodes
        .iter()
        .find(|node| node.url == url)
        .unwrap_or_else(|| panic!("the second node at {url}: {nodes:?}"))
        .id
        .clone();
    assert_ne!(second, app.state.runtimes.node_id);

    killed.kill().unwrap();
    killed.wait().unwrap();
    let nodes = nodes_until(&app, |nodes| {
        nodes
            .iter()
            .any(|node| node.id == second && node.status == "dead")
    })
    .await;
    let status = |nodes: &[rally_sdk::wire::Node], id: &str| {
        nodes
            .iter()
            .find(|node| node.id == id)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(status(&nodes, &second), "dead");
    assert_eq!(status(&nodes, &app.state.runtimes.node_id), "alive");

    let other = tempfile::tempdir().unwrap();
    let (mut stopped, url) = second_node(&app, other.path());
    let term = Command::new("kill")
        .args(["-TERM", &stopped.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(crate::server::wait_with_timeout(&mut stopped, Duration::from_secs(20)).success());
    let nodes = nodes_until(&app, |_| true).await;
    let node = nodes.iter().find(|node| node.url == url).unwrap();
    assert_eq!(node.status, "stopped");
    assert!(node.stopped_at.is_some());
    app.stop().await;
}

/// The running lobbies of `stage`'s deployment `deployment`, with the node of each.
async fn lobbies(
    admin: &rally_sdk::RallyClient,
    stage: &str,
    deployment: &str,
) -> Vec<rally_sdk::wire::RuntimeInfo> {
    admin
        .list_runtimes("studio", "game", stage, deployment)
        .await
        .unwrap()
        .into_iter()
        .filter(|runtime| runtime.qualifier == rally_sdk::runtime::Qualifier::Lobby)
        .collect()
}

/// Two nodes on one PostgreSQL database share two stages, one each (stage leases); when one is
/// killed, the other takes its stage over once it counts as dead, records the dead node's
/// lobby failed and starts one of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_are_shared_and_a_dead_nodes_stage_is_taken_over() {
    let app = app(Backend::Postgres, |config| {
        config.node_heartbeat_secs = 1;
        config.node_dead_after_secs = 3;
    })
    .await;
    let directory = tempfile::tempdir().unwrap();
    let (mut second, _) = second_node(&app, directory.path());
    nodes_until(&app, |nodes| {
        nodes.iter().filter(|node| node.status == "alive").count() == 2
    })
    .await;
    let (admin, first_deployment) = deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    admin
        .create_stage("studio", "game", "Second", Some("second"))
        .await
        .unwrap();
    let second_deployment = admin
        .deploy("studio", "game", "second", "1", serde_json::json!({}))
        .await
        .unwrap()
        .id;
    let deployments = [("default", first_deployment), ("second", second_deployment)];
    // One running lobby per stage, and the two stages on different nodes.
    let mut placed = Vec::new();
    for _ in 0..150 {
        placed.clear();
        for (stage, deployment) in &deployments {
            let running: Vec<_> = lobbies(&admin, stage, deployment)
                .await
                .into_iter()
                .filter(|lobby| lobby.status == "running")
                .collect();
            placed.push(running);
        }
        if placed.iter().all(|running| running.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        placed.iter().all(|running| running.len() == 1),
        "one lobby per stage: {placed:?}"
    );
    let nodes: Vec<String> = placed
        .iter()
        .map(|running| running[0].node_id.clone())
        .collect();
    assert_ne!(nodes[0], nodes[1], "each node runs one stage: {placed:?}");
    let here = &app.state.runtimes.node_id;
    let (lost, lost_lobby) = if &nodes[0] == here {
        (&deployments[1], placed[1][0].clone())
    } else {
        (&deployments[0], placed[0][0].clone())
    };

    second.kill().unwrap();
    second.wait().unwrap();
    let mut replaced = None;
    for _ in 0..200 {
        let now = lobbies(&admin, lost.0, &lost.1).await;
        replaced = now
            .iter()
            .find(|lobby| lobby.status == "running" && &lobby.node_id == here)
            .cloned();
        if replaced.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = lobbies(&admin, lost.0, &lost.1).await;
    assert!(
        replaced.is_some(),
        "a lobby of the lost stage on the survivor: {after:?}"
    );
    let old = after
        .iter()
        .find(|lobby| lobby.id == lost_lobby.id)
        .unwrap();
    assert_eq!(old.status, "failed");
    assert_eq!(
        old.failure.as_deref(),
        Some("its node stopped answering; replaced on another node")
    );
    // The dead node's runtime process outlived it (its launcher leaves runtimes running):
    // end it rather than wait for it to give up on its platform.
    if let Some(pid) = lost_lobby.pid {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .ok();
    }
    app.stop().await;
}

/// A node whose stage lease another node took (as after a database pause longer than
/// `node_dead_after_secs`) stops its runtimes there instead of running the stage twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_stage_stops_its_runtimes_there() {
    let app = app(Backend::Postgres, |config| {
        config.node_heartbeat_secs = 1;
        config.node_dead_after_secs = 3;
    })
    .await;
    let (admin, deployment) = deploy(&app, tictactoe_bundle(), serde_json::json!({})).await;
    let lobby =
        crate::docker::placed(&admin, &deployment, rally_sdk::runtime::Qualifier::Lobby).await;
    let stage: String = sqlx::query_scalar("SELECT stage_id FROM deployments WHERE id = $1")
        .bind(&deployment)
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    // Another node holds the stage now, for a minute.
    let taken =
        sqlx::query("UPDATE leases SET holder = 'another-node', expires_at = $1 WHERE name = $2")
            .bind(rally_platform::storage::now_millis() + 60_000)
            .bind(format!("stage:{stage}"))
            .execute(app.state.database.writer())
            .await
            .unwrap();
    assert_eq!(taken.rows_affected(), 1);
    assert_eq!(
        crate::docker::status_when(&admin, &deployment, &lobby.id, "stopped").await,
        "stopped"
    );
    let running = lobbies(&admin, "default", &deployment)
        .await
        .into_iter()
        .filter(|runtime| runtime.status == "running" || runtime.status == "starting")
        .count();
    assert_eq!(
        running, 0,
        "this node starts no other lobby for a stage it does not hold"
    );
    app.stop().await;
}

/// The embedded SQLite default is one node: a second `rally server` on the same file stops at
/// once and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_one_sqlite_file_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let directory = tempfile::tempdir().unwrap();
    let output = tokio::task::block_in_place(|| {
        Command::new(RALLY)
            .arg("server")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RALLY_LISTEN", "127.0.0.1:0")
            .env("RALLY_DATA_DIR", directory.path().join("data"))
            .env("RALLY_DATABASE_URL", &app.database.url)
            .output()
            .unwrap()
    });
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "node {} ({}) is using this SQLite database",
            app.state.runtimes.node_id, app.url
        )) && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    let nodes = app.admin().await.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    app.stop().await;
}

on_both_backends!(this_node_is_listed_alive_with_its_url_and_what_runs_on_it);

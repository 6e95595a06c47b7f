//! Platform nodes (`docs/nodes.md`): each `rally server` writes a heartbeat row; `rally node
//! list` shows them alive, dead or stopped, with what runs on each. Second nodes are real
//! `rally server` processes on the test's database. The embedded SQLite default refuses a
//! second live node on the same file.

use crate::cli::{login, rally};
use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::players::{
    app, connect, deploy, player, player_on, socket_request, Player, Received, Socket,
};
use crate::tictactoe::{back_in_lobby, next_game_message, play, start_match, tictactoe_bundle};
use rally_sdk::player::{PlayerEvent, CLOSE_MOVED};
use rally_sdk::wire::RuntimeInfo;
use rally_sdk::RallyClient;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::time::Instant;

const RALLY: &str = env!("CARGO_BIN_EXE_rally");

/// A second node: `rally server` on `app`'s database with a data directory of its own and a
/// 1 s heartbeat. Its output is drained (stdout) or kept in a file (stderr) so that it never
/// blocks on a full pipe. Returns the child and its URL.
fn second_node(app: &TestApp, directory: &std::path::Path) -> (NodeProcess, String) {
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
    (NodeProcess(child), url.to_owned())
}

/// A second node's process, killed when dropped: a test that fails leaves no node behind.
struct NodeProcess(Child);

impl std::ops::Deref for NodeProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
        table.contains(&node.id)
            && table.contains("alive")
            && table.contains("studio/game/default"),
        "{table}"
    );
    let output = rally(config_dir.path(), &["node", "list", "--json"], &[]).await;
    let listed: rally_sdk::wire::NodeList = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.nodes[0].url, app.url);
    assert_eq!(
        listed.nodes[0]
            .stages
            .iter()
            .map(|stage| stage.path.as_str())
            .collect::<Vec<_>>(),
        ["studio/game/default"]
    );
    // One node has nowhere to move a stage to; on SQLite there is only ever one.
    let output = rally(
        config_dir.path(),
        &[
            "stage",
            "move",
            "default",
            "--to",
            "elsewhere",
            "--tenant",
            "studio",
            "--project",
            "game",
        ],
        &[],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = match backend {
        Backend::Sqlite => "one_node",
        Backend::Postgres => "node_not_alive",
    };
    assert!(stderr.contains(expected), "{stderr}");

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

/// A node on PostgreSQL with the tests' timing (a 1 s heartbeat, dead after 3 s), and `more`
/// nodes beside it (`second_node`), once all of them are alive: the app, the other nodes with
/// their URLs, and their data directories.
async fn cluster(more: usize) -> (TestApp, Vec<(NodeProcess, String)>, Vec<tempfile::TempDir>) {
    let app = app(Backend::Postgres, |config| {
        config.node_heartbeat_secs = 1;
        config.node_dead_after_secs = 3;
    })
    .await;
    let directories: Vec<_> = (0..more).map(|_| tempfile::tempdir().unwrap()).collect();
    let others = directories
        .iter()
        .map(|directory| second_node(&app, directory.path()))
        .collect();
    nodes_until(&app, |nodes| {
        nodes.iter().filter(|node| node.status == "alive").count() == more + 1
    })
    .await;
    (app, others, directories)
}

/// Ends a cluster: the other nodes killed, the runtime processes they left behind too (a killed
/// node's launcher leaves its runtimes running), then the app stopped.
async fn stop_cluster(
    app: TestApp,
    others: Vec<(NodeProcess, String)>,
    admin: &RallyClient,
    stages: &[&str],
    deployments: &[String],
) {
    let urls = node_urls(&app).await;
    let mut gone = Vec::new();
    for (mut child, url) in others {
        child.kill().ok();
        child.wait().ok();
        gone.push(urls_node(&urls, &url));
    }
    kill_runtimes_of(admin, stages, deployments, &gone).await;
    app.stop().await;
}

/// Deploys the tic-tac-toe example on `studio/game`'s stages `stages` (made when missing):
/// their deployment ids, in order.
async fn deploy_stages(app: &TestApp, stages: &[&str]) -> (RallyClient, Vec<String>) {
    let (admin, first) = deploy(app, tictactoe_bundle(), serde_json::json!({})).await;
    let mut deployments = vec![first];
    for stage in &stages[1..] {
        admin
            .create_stage("studio", "game", stage, Some(stage))
            .await
            .unwrap();
        let deployment = admin
            .deploy("studio", "game", stage, "1", serde_json::json!({}))
            .await
            .unwrap();
        deployments.push(deployment.id);
    }
    assert_eq!(stages[0], "default");
    (admin, deployments)
}

/// Once each stage runs one lobby, on as many distinct nodes as there are stages: those
/// lobbies, in the order of `stages`.
async fn one_lobby_per_stage_each_on_its_node(
    admin: &RallyClient,
    stages: &[&str],
    deployments: &[String],
) -> Vec<RuntimeInfo> {
    let mut placed = Vec::new();
    for _ in 0..200 {
        placed.clear();
        for (stage, deployment) in stages.iter().zip(deployments) {
            let running: Vec<_> = lobbies(admin, stage, deployment)
                .await
                .into_iter()
                .filter(|lobby| lobby.status == "running")
                .collect();
            placed.push(running);
        }
        let nodes: std::collections::HashSet<_> = placed
            .iter()
            .filter_map(|running| running.first().map(|lobby| lobby.node_id.clone()))
            .collect();
        if placed.iter().all(|running| running.len() == 1) && nodes.len() == stages.len() {
            return placed
                .into_iter()
                .map(|mut running| running.remove(0))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("one lobby per stage, each on its own node: {placed:?}");
}

/// Each node's URL, by id.
async fn node_urls(app: &TestApp) -> HashMap<String, String> {
    let nodes = app.admin().await.list_nodes().await.unwrap();
    nodes.into_iter().map(|node| (node.id, node.url)).collect()
}

/// `player`'s socket, opened at `base` and following `moved` closes, until greeted; while the
/// node it is sent to cannot be reached or its stage is moving, it starts over at `entry`, for
/// up to 30 s. Returns the socket, its greeting and the URL of the node it is on.
async fn socket_through(base: &str, entry: &str, player: &Player) -> (Socket, PlayerEvent, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut base = base.to_owned();
    let mut tried = Vec::new();
    while Instant::now() < deadline {
        let url = rally_sdk::player::websocket_url(&base, &player.client.socket_path).unwrap();
        match Socket::try_open(socket_request(&url, &player.token)).await {
            Err(error) => {
                tried.push(format!("{base}: {error}"));
                base = entry.to_owned();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(mut socket) => match socket.receive().await {
                Received::Event(greeted @ PlayerEvent::Greeted { .. }) => {
                    return (socket, greeted, base)
                }
                Received::Closed(Some((CLOSE_MOVED, node_url))) => {
                    tried.push(format!("{base}: moved to {node_url}"));
                    base = node_url;
                }
                other => panic!("expected greeted or moved from {base}, got {other:?}"),
            },
        }
    }
    panic!("no node greeted the player within 30 s: {tried:?}");
}

/// Players are sent to the node serving their stage: `POST clients` on another node names
/// it, a socket opened on another node is closed with `moved` and its URL, a long-poll there
/// answers 421 `wrong_node` (which `rally-sdk` follows), and every player lands in a lobby
/// of its stage on the right node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_are_sent_to_the_node_that_serves_their_stage() {
    let (app, others, _directories) = cluster(1).await;
    let second_url = others[0].1.clone();
    let stages = ["default", "second"];
    let (admin, deployments) = deploy_stages(&app, &stages).await;
    let placed = one_lobby_per_stage_each_on_its_node(&admin, &stages, &deployments).await;
    let urls = node_urls(&app).await;
    let http = reqwest::Client::new();
    for (stage, lobby) in stages.iter().zip(&placed) {
        let holder = &urls[&lobby.node_id];
        for entry in [&app.url, &second_url] {
            let player = player_on(entry, stage).await;
            let elsewhere = entry != holder;
            assert_eq!(
                player.client.node_url.as_ref(),
                elsewhere.then_some(holder),
                "{stage} through {entry}"
            );
            if elsewhere {
                let url =
                    rally_sdk::player::websocket_url(entry, &player.client.socket_path).unwrap();
                let mut socket = Socket::try_open(socket_request(&url, &player.token))
                    .await
                    .unwrap();
                assert_eq!(
                    socket.closed().await,
                    Some((CLOSE_MOVED, holder.clone())),
                    "a socket on the wrong node is closed with moved and the right node's URL"
                );
            }
            let (mut socket, greeted, on) = socket_through(entry, entry, &player).await;
            assert_eq!(&on, holder);
            let lobby_id = in_lobby(&mut socket, &greeted).await;
            assert_eq!(lobby_id, lobby.id, "{stage}: in its lobby on its node");
            if elsewhere {
                let answer = http
                    .get(format!(
                        "{entry}/api/v1/clients/{}/events?wait_ms=0",
                        player.client.client_id
                    ))
                    .bearer_auth(&player.token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 421);
                let body: serde_json::Value = answer.json().await.unwrap();
                assert_eq!(body["error"]["code"], "wrong_node");
                assert_eq!(body["error"]["details"]["node_url"], holder.as_str());
                // rally-sdk asks the right node instead: the poll takes the client over from
                // its socket and starts with the greeting.
                let polled = RallyClient::new(entry)
                    .unwrap()
                    .authenticated(&player.token)
                    .poll_events(&player.client.client_id, 0, 0)
                    .await
                    .unwrap();
                assert!(
                    matches!(
                        polled.events.first().map(|event| &event.event),
                        Some(PlayerEvent::Greeted { .. })
                    ),
                    "{polled:?}"
                );
            }
        }
    }
    stop_cluster(app, others, &admin, &stages, &deployments).await;
}

/// The id of the node at `url`.
fn urls_node(urls: &HashMap<String, String>, url: &str) -> String {
    urls.iter()
        .find(|(_, node_url)| node_url.as_str() == url)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("no node at {url}: {urls:?}"))
}

/// Kills the runtime processes the nodes `gone` left behind (a killed node's launcher leaves
/// its runtimes running, trying to reach it).
async fn kill_runtimes_of(
    admin: &RallyClient,
    stages: &[&str],
    deployments: &[String],
    gone: &[String],
) {
    for (stage, deployment) in stages.iter().zip(deployments) {
        for runtime in admin
            .list_runtimes("studio", "game", stage, deployment)
            .await
            .unwrap()
        {
            if let (true, Some(pid)) = (gone.contains(&runtime.node_id), runtime.pid) {
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .ok();
            }
        }
    }
}

/// The lobby a greeted client is in: from its greeting, or the assignment that follows.
async fn in_lobby(socket: &mut Socket, greeted: &PlayerEvent) -> String {
    if let PlayerEvent::Greeted {
        runtime: Some(runtime),
        ..
    } = greeted
    {
        return runtime.runtime_id.clone();
    }
    socket
        .assigned_to(rally_sdk::player::RuntimeKind::Lobby)
        .await
        .runtime_id
}

/// Three nodes, three stages, one on each; two players of each stage, all coming in through
/// one node, are seated where their stage runs and play a match. The node of one stage is
/// killed with SIGKILL mid-match: the survivors take the stage over, its players reconnect
/// through the node they came in by and are back in a lobby with their stored results (the
/// win of their first match), and play a match there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_players_play_again_on_a_survivor() {
    let (app, mut children, _directories) = cluster(2).await;
    let stages = ["default", "second", "third"];
    let (admin, deployments) = deploy_stages(&app, &stages).await;
    let placed = one_lobby_per_stage_each_on_its_node(&admin, &stages, &deployments).await;
    let urls = node_urls(&app).await;
    // The victim: a second node, with the stage it runs.
    let (victim, victim_url) = children.remove(0);
    let victim_id = urls_node(&urls, &victim_url);
    let at = placed
        .iter()
        .position(|lobby| lobby.node_id == victim_id)
        .expect("each node runs a stage");
    let stage = stages[at];
    let entry = app.url.clone();

    // Every stage's players, all coming in through the first node, are seated on the node
    // running their stage and play a match there.
    let mut bystanders = Vec::new();
    for (other, lobby) in stages
        .iter()
        .zip(&placed)
        .filter(|(other, _)| **other != stage)
    {
        let (players, mut sockets, on) = two_seated(&entry, other).await;
        assert_eq!(on, urls[&lobby.node_id], "{other}");
        let (first, rest) = sockets.split_at_mut(1);
        let (x, o) = start_match(&mut first[0], &mut rest[0]).await;
        play(x, o, &[0, 3, 1, 4, 2]).await;
        for socket in [x, o] {
            back_in_lobby(socket).await;
        }
        bystanders.push((players, sockets));
    }

    let (players, mut sockets, on) = two_seated(&entry, stage).await;
    assert_eq!(on, victim_url);
    let (mut first, mut second) = {
        let second = sockets.pop().unwrap();
        (sockets.pop().unwrap(), second)
    };
    // x wins the first match: x 0, 1, 2 across the top.
    {
        let (x, o) = start_match(&mut first, &mut second).await;
        play(x, o, &[0, 3, 1, 4, 2]).await;
        for socket in [x, o] {
            back_in_lobby(socket).await;
        }
    }
    // A second match, stopped by the node's death after one move.
    {
        let (x, o) = start_match(&mut first, &mut second).await;
        play(x, o, &[4]).await;
    }
    let mut victim = victim;
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();
    drop((first, second));

    let mut reseated = Vec::new();
    let mut sockets = Vec::new();
    for player in &players {
        let (mut socket, greeted, on) = socket_through(&victim_url, &entry, player).await;
        assert_ne!(on, victim_url);
        assert!(
            matches!(greeted, PlayerEvent::Greeted { resumed: true, .. }),
            "the same client, resumed: {greeted:?}"
        );
        in_lobby(&mut socket, &greeted).await;
        let welcome = next_game_message(&mut socket, "welcome").await;
        reseated.push(killed.elapsed());
        sockets.push((socket, welcome));
    }
    eprintln!("players back in a lobby {reseated:?} after the kill");
    let mut results: Vec<(i64, i64)> = sockets
        .iter()
        .map(|(_, welcome)| {
            (
                welcome["wins"].as_i64().unwrap_or_default(),
                welcome["losses"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    results.sort();
    assert_eq!(
        results,
        [(0, 1), (1, 0)],
        "the first match's result is kept (wins, losses)"
    );
    let (mut first, mut second) = {
        let (second, _) = sockets.pop().unwrap();
        (sockets.pop().unwrap().0, second)
    };
    let (x, o) = start_match(&mut first, &mut second).await;
    play(x, o, &[0, 3, 1, 4, 2]).await;
    for socket in [x, o] {
        back_in_lobby(socket).await;
    }
    kill_runtimes_of(&admin, &stages, &deployments, &[victim_id]).await;
    stop_cluster(app, children, &admin, &stages, &deployments).await;
}

/// Two seated players of `stage` who came in through `entry`: their sockets, each welcomed in
/// a lobby, and the URL of the node they are on.
async fn two_seated(entry: &str, stage: &str) -> ([Player; 2], Vec<Socket>, String) {
    let players = [player_on(entry, stage).await, player_on(entry, stage).await];
    let mut sockets = Vec::new();
    let mut node = String::new();
    for player in &players {
        let base = player.client.node_url.clone().unwrap_or(entry.to_owned());
        let (mut socket, greeted, on) = socket_through(&base, entry, player).await;
        in_lobby(&mut socket, &greeted).await;
        next_game_message(&mut socket, "welcome").await;
        sockets.push(socket);
        node = on;
    }
    (players, sockets, node)
}

/// Reads `socket` until the platform closes it with `moved`: the URL it names.
async fn moved_to(socket: &mut Socket) -> String {
    loop {
        match socket.receive().await {
            Received::Closed(Some((CLOSE_MOVED, url))) => return url,
            Received::Closed(other) => panic!("closed without moved: {other:?}"),
            _ => {}
        }
    }
}

/// An operator moves a stage to another node right after a match of it ended: its node stops
/// its runtimes, hands the stage and its clients over, and the players, sent to the new node,
/// are back in a lobby there with the match's result stored; `rally node list` shows where
/// the stage is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_moved_by_an_operator_keeps_what_its_players_won() {
    let (app, others, _directories) = cluster(1).await;
    let second_url = others[0].1.clone();
    let stages = ["default", "second"];
    let (admin, deployments) = deploy_stages(&app, &stages).await;
    one_lobby_per_stage_each_on_its_node(&admin, &stages, &deployments).await;
    let urls = node_urls(&app).await;
    let (players, mut sockets, from) = two_seated(&app.url, "second").await;
    let to = if from == app.url {
        second_url.clone()
    } else {
        app.url.clone()
    };
    let to_id = urls_node(&urls, &to);
    {
        let (first, rest) = sockets.split_at_mut(1);
        let (x, o) = start_match(&mut first[0], &mut rest[0]).await;
        play(x, o, &[0, 3, 1, 4, 2]).await;
    }
    let moved = admin
        .move_stage("studio", "game", "second", &to_id)
        .await
        .unwrap();
    assert_eq!(moved.to_node, to_id);
    assert_eq!(moved.from_node, urls_node(&urls, &from));
    let mut results = Vec::new();
    for (player, socket) in players.iter().zip(&mut sockets) {
        assert_eq!(moved_to(socket).await, to);
        let (mut socket, greeted, on) = socket_through(&to, &app.url, player).await;
        assert_eq!(on, to);
        assert!(
            matches!(greeted, PlayerEvent::Greeted { resumed: true, .. }),
            "{greeted:?}"
        );
        in_lobby(&mut socket, &greeted).await;
        let welcome = next_game_message(&mut socket, "welcome").await;
        results.push((
            welcome["wins"].as_i64().unwrap_or_default(),
            welcome["losses"].as_i64().unwrap_or_default(),
        ));
        let stored = player
            .api
            .my_player("studio", "game", "second")
            .await
            .unwrap();
        assert_eq!(stored.profile["wins"], welcome["wins"]);
    }
    results.sort();
    assert_eq!(results, [(0, 1), (1, 0)], "(wins, losses) after the move");
    let nodes = app.admin().await.list_nodes().await.unwrap();
    let holder = nodes.iter().find(|node| node.id == to_id).unwrap();
    assert!(
        holder
            .stages
            .iter()
            .any(|stage| stage.path == "studio/game/second"),
        "{nodes:?}"
    );
    // A move to a node that is not alive is refused.
    let refused = admin
        .move_stage("studio", "game", "second", "no-such-node")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("node_not_alive"));
    stop_cluster(app, others, &admin, &stages, &deployments).await;
}

/// One node runs two stages with players in their lobbies; a second node joins and, by
/// balancing, gets one stage: that stage's players are sent there and seated again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_gets_its_share_of_the_stages() {
    let (app, _, _) = cluster(0).await;
    let stages = ["default", "second"];
    let (admin, deployments) = deploy_stages(&app, &stages).await;
    let mut seated = Vec::new();
    for stage in stages {
        let (players, sockets, on) = two_seated(&app.url, stage).await;
        assert_eq!(on, app.url, "one node runs everything");
        seated.push((players, sockets));
    }
    let directory = tempfile::tempdir().unwrap();
    let (second, second_url) = second_node(&app, directory.path());
    let placed = one_lobby_per_stage_each_on_its_node(&admin, &stages, &deployments).await;
    let second_id = urls_node(&node_urls(&app).await, &second_url);
    let at = placed
        .iter()
        .position(|lobby| lobby.node_id == second_id)
        .unwrap();
    let (players, sockets) = &mut seated[at];
    for (player, socket) in players.iter().zip(sockets.iter_mut()) {
        assert_eq!(moved_to(socket).await, second_url);
        let (mut socket, greeted, on) = socket_through(&second_url, &app.url, player).await;
        assert_eq!(on, second_url);
        assert_eq!(in_lobby(&mut socket, &greeted).await, placed[at].id);
    }
    stop_cluster(
        app,
        vec![(second, second_url)],
        &admin,
        &stages,
        &deployments,
    )
    .await;
}

/// A node stopped with SIGTERM hands its stage over without waiting to count as dead: it gives
/// its lease back and closes its players' sockets (1012); the other node takes the stage and
/// its clients at its next pass, and the players, reconnecting through it, are resumed in a
/// lobby there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_players_are_seated_on_the_other_node_at_once() {
    let (app, mut others, _directories) = cluster(1).await;
    let stages = ["default", "second"];
    let (admin, deployments) = deploy_stages(&app, &stages).await;
    let placed = one_lobby_per_stage_each_on_its_node(&admin, &stages, &deployments).await;
    let second_id = urls_node(&node_urls(&app).await, &others[0].1);
    let at = placed
        .iter()
        .position(|lobby| lobby.node_id == second_id)
        .unwrap();
    let (players, mut sockets, on) = two_seated(&app.url, stages[at]).await;
    assert_eq!(on, others[0].1);
    let (mut stopped, stopped_url) = others.remove(0);
    let term = Command::new("kill")
        .args(["-TERM", &stopped.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let asked = Instant::now();
    for socket in &mut sockets {
        assert_eq!(
            socket.closed().await.map(|(code, _)| code),
            Some(1012),
            "platform_restarting"
        );
    }
    for player in &players {
        let (mut socket, greeted, on) = socket_through(&stopped_url, &app.url, player).await;
        assert_eq!(on, app.url);
        assert!(
            matches!(greeted, PlayerEvent::Greeted { resumed: true, .. }),
            "{greeted:?}"
        );
        in_lobby(&mut socket, &greeted).await;
    }
    // Well before the 3 s a silent node takes to count as dead.
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert!(crate::server::wait_with_timeout(&mut stopped, Duration::from_secs(20)).success());
    stop_cluster(app, others, &admin, &stages, &deployments).await;
}

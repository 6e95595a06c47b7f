//! The supervisor through the pool seam: a pool made here records what it is asked, fails
//! starts and reports exits on demand, so that what the supervisor decides (how many runtimes,
//! with which limits, what happens after failures and exits, what shutdown stops) is seen
//! without processes. The platform, its database and its API are real.

use crate::helpers::{spawn_app_with_pool, Backend, TestApp};
use crate::on_both_backends;
use rally_platform::pools::process::ProcessPool;
use rally_platform::pools::{
    Artifact, Exited, Placement, PoolKind, RuntimePool, RuntimeSpec, StartError,
};
use rally_sdk::runtime::launch::ResourceLimits;
use rally_sdk::runtime::Qualifier;
use rally_sdk::wire::RuntimeInfo;
use rally_sdk::RallyClient;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug)]
struct FakePool {
    /// The next this many starts fail.
    failing_starts: AtomicUsize,
    started: Mutex<Vec<RuntimeSpec>>,
    running: Mutex<HashSet<String>>,
    /// Runtimes asked to stop, in order.
    stopped: Mutex<Vec<String>>,
    exits: mpsc::Sender<Exited>,
    exits_receiver: Mutex<Option<mpsc::Receiver<Exited>>>,
}

impl FakePool {
    fn new() -> Arc<Self> {
        let (exits, receiver) = mpsc::channel(64);
        Arc::new(Self {
            failing_starts: AtomicUsize::new(0),
            started: Mutex::default(),
            running: Mutex::default(),
            stopped: Mutex::default(),
            exits,
            exits_receiver: Mutex::new(Some(receiver)),
        })
    }

    fn starts(&self) -> Vec<RuntimeSpec> {
        self.started.lock().unwrap().clone()
    }

    /// The runtime ends as a process would, with `exit_code`.
    async fn exit(&self, runtime_id: &str, exit_code: i32) {
        self.running.lock().unwrap().remove(runtime_id);
        self.exits
            .send(Exited {
                runtime_id: runtime_id.to_owned(),
                exit_code: Some(exit_code),
                reason: None,
            })
            .await
            .unwrap();
    }
}

#[async_trait::async_trait]
impl RuntimePool for FakePool {
    fn kind(&self) -> PoolKind {
        PoolKind::Docker
    }

    fn name(&self) -> &str {
        "fake"
    }

    async fn start(&self, spec: RuntimeSpec) -> Result<Placement, StartError> {
        let number = {
            let mut started = self.started.lock().unwrap();
            started.push(spec.clone());
            started.len()
        };
        let failing = self
            .failing_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if failing {
            return Err(StartError("the fake server is full".to_owned()));
        }
        self.running.lock().unwrap().insert(spec.runtime_id.clone());
        Ok(Placement {
            kind: PoolKind::Docker,
            pool: "fake".to_owned(),
            server: "fake-server".to_owned(),
            handle: format!("container-{number}"),
        })
    }

    fn stop(&self, runtime_id: &str, _placement: &Placement, _grace: Duration) {
        self.stopped.lock().unwrap().push(runtime_id.to_owned());
        if self.running.lock().unwrap().remove(runtime_id) {
            let _ = self.exits.try_send(Exited {
                runtime_id: runtime_id.to_owned(),
                exit_code: Some(0),
                reason: None,
            });
        }
    }

    fn kill(&self, runtime_id: &str, _placement: &Placement) {
        self.running.lock().unwrap().remove(runtime_id);
    }

    fn is_alive(&self, runtime_id: &str, _placement: &Placement) -> bool {
        self.running.lock().unwrap().contains(runtime_id)
    }

    async fn reconcile(&self, known: &[(String, Option<Placement>)]) -> Vec<String> {
        let running = self.running.lock().unwrap();
        known
            .iter()
            .filter(|(runtime_id, _)| !running.contains(runtime_id))
            .map(|(runtime_id, _)| runtime_id.clone())
            .collect()
    }

    async fn logs(&self, runtime_id: &str) -> Vec<u8> {
        format!("log of {runtime_id}\n").into_bytes()
    }

    fn append_log(&self, _runtime_id: &str, _line: &str) {}

    fn tend(&self, _runtime_id: &str) {}

    fn take_exits(&self) -> Option<mpsc::Receiver<Exited>> {
        self.exits_receiver.lock().unwrap().take()
    }

    fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    async fn kill_all(&self) {
        self.running.lock().unwrap().clear();
    }
}

/// A deployment of the lab logic on `studio/game/default` with `overrides`.
async fn deploy(app: &TestApp, overrides: serde_json::Value) -> (RallyClient, String) {
    crate::players::deploy(app, crate::players::lab_bundle(), overrides).await
}

async fn runtimes(admin: &RallyClient, deployment: &str) -> Vec<RuntimeInfo> {
    admin
        .list_runtimes("studio", "game", "default", deployment)
        .await
        .unwrap()
}

/// Waits up to 10 s for `check` to hold.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

async fn lobbies_start_through_the_pool_with_the_deployments_limits(backend: Backend) {
    let pool = FakePool::new();
    let app = spawn_app_with_pool(backend, pool.clone(), |_| {}).await;
    let (admin, deployment) = deploy(
        &app,
        serde_json::json!({"min_lobbies": 2, "runtime_cpu_millis": 250, "runtime_memory_mb": 96}),
    )
    .await;
    eventually("two lobbies started", || async { pool.starts().len() == 2 }).await;
    for spec in pool.starts() {
        assert_eq!((spec.limits.cpu_millis, spec.limits.memory_mb), (250, 96));
        let Artifact::Bundle { path: bundle, .. } = &spec.artifact;
        assert!(bundle.is_file(), "the bundle is on disk for the pool");
        assert!(spec.platform_url.starts_with("http://127.0.0.1:"));
    }
    // The rows say where each runs, as the pool placed it.
    let listed = runtimes(&admin, &deployment).await;
    assert_eq!(listed.len(), 2);
    let mut handles: Vec<_> = listed
        .iter()
        .map(|runtime| {
            assert_eq!(runtime.pool_kind, "docker");
            assert_eq!(runtime.pool, "fake");
            assert_eq!(runtime.server.as_deref(), Some("fake-server"));
            assert_eq!(runtime.pid, None, "a container has no pid of ours");
            runtime.handle.clone().unwrap()
        })
        .collect();
    handles.sort();
    assert_eq!(handles, ["container-1", "container-2"]);
    // The pool answers for their logs.
    let log = admin
        .runtime_logs("studio", "game", "default", &deployment, &listed[0].id)
        .await
        .unwrap();
    assert_eq!(log, format!("log of {}\n", listed[0].id));
    // No more than asked for, pass after pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pool.starts().len(), 2);

    // Stopping the platform asks the pool to stop both.
    let ids: HashSet<String> = listed.into_iter().map(|runtime| runtime.id).collect();
    app.stop().await;
    let stopped: HashSet<String> = pool.stopped.lock().unwrap().iter().cloned().collect();
    assert_eq!(stopped, ids);
}

async fn failed_starts_are_recorded_and_restarts_pause_after_five(backend: Backend) {
    let pool = FakePool::new();
    pool.failing_starts.store(1000, Ordering::SeqCst);
    let app = spawn_app_with_pool(backend, pool.clone(), |_| {}).await;
    let (admin, deployment) = deploy(&app, serde_json::json!({"min_lobbies": 1})).await;
    eventually("five failed starts", || async { pool.starts().len() >= 5 }).await;
    // Then nothing more within the window, though the deployment still lacks its lobby.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(pool.starts().len(), 5);
    let listed = runtimes(&admin, &deployment).await;
    assert_eq!(listed.len(), 5);
    for runtime in &listed {
        assert_eq!(runtime.status, "failed");
        assert_eq!(runtime.failure.as_deref(), Some("the fake server is full"));
        assert_eq!(runtime.handle, None, "never placed");
    }
    app.stop().await;
}

async fn an_exit_the_pool_reports_fails_the_runtime_and_it_is_replaced(backend: Backend) {
    let pool = FakePool::new();
    let app = spawn_app_with_pool(backend, pool.clone(), |_| {}).await;
    let (admin, deployment) = deploy(&app, serde_json::json!({"min_lobbies": 1})).await;
    eventually("a lobby started", || async { pool.starts().len() == 1 }).await;
    let first = pool.starts()[0].runtime_id.clone();
    pool.exit(&first, 7).await;
    eventually("a replacement started", || async {
        pool.starts().len() == 2
    })
    .await;
    let listed = runtimes(&admin, &deployment).await;
    let ended = listed.iter().find(|runtime| runtime.id == first).unwrap();
    assert_eq!(ended.status, "failed");
    assert_eq!(ended.exit_code, Some(7));
    assert!(
        ended
            .failure
            .as_deref()
            .unwrap()
            .starts_with("exited with code 7: a handler ran past its time limit"),
        "{:?}",
        ended.failure
    );
    // A runtime the pool loses without a word is found by the next pass and replaced too.
    let second = pool.starts()[1].runtime_id.clone();
    pool.running.lock().unwrap().remove(&second);
    eventually("a third start", || async { pool.starts().len() == 3 }).await;
    let listed = runtimes(&admin, &deployment).await;
    let lost = listed.iter().find(|runtime| runtime.id == second).unwrap();
    assert_eq!(lost.status, "failed");
    app.stop().await;
}

/// A deployment whose stored config no longer parses: its runtimes are left alone (not
/// restarted with made-up defaults), and reading it answers 500 rather than a guess.
async fn a_deployment_that_cannot_be_read_is_left_alone(backend: Backend) {
    let pool = FakePool::new();
    let app = spawn_app_with_pool(backend, pool.clone(), |_| {}).await;
    let (admin, deployment) = deploy(&app, serde_json::json!({"min_lobbies": 1})).await;
    eventually("a lobby started", || async { pool.starts().len() == 1 }).await;
    sqlx::query("UPDATE deployments SET config = $2 WHERE id = $1")
        .bind(&deployment)
        .bind(r#"{"min_lobbies": "many"}"#)
        .execute(app.state.database.writer())
        .await
        .unwrap();
    let lobby = pool.starts()[0].runtime_id.clone();
    pool.exit(&lobby, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pool.starts().len(), 1, "no replacement made from defaults");
    crate::helpers::assert_api_error(
        admin
            .get_deployment("studio", "game", "default", &deployment)
            .await,
        500,
        "internal",
    );
    app.stop().await;
}

/// One start at a time (`runtime_starts_at_once = 1`), and runtimes that never connect: the
/// second lobby waits for the first's turn. When the pool reports the first gone, its turn is
/// free at once, not after the start timeout of the supervision pass that waits for it.
async fn a_start_turn_comes_back_when_the_pool_reports_the_runtime_gone(backend: Backend) {
    let pool = FakePool::new();
    let app = spawn_app_with_pool(backend, pool.clone(), |config| {
        config.runtime_starts_at_once = 1;
        config.runtime_start_timeout_secs = 60;
    })
    .await;
    let (_admin, _deployment) = deploy(&app, serde_json::json!({"min_lobbies": 2})).await;
    eventually("a first lobby started", || async {
        pool.starts().len() == 1
    })
    .await;
    // The second start waits for the turn the first holds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.starts().len(), 1, "one start at a time");
    let first = pool.starts()[0].runtime_id.clone();
    pool.exit(&first, 1).await;
    eventually("the second lobby started on the freed turn", || async {
        pool.starts().len() >= 2
    })
    .await;
    app.stop().await;
}

/// The local-process pool's exits queue is bounded: when nobody reads it, the launcher's
/// reports wait for room, and every exit arrives once the supervisor reads again.
#[tokio::test]
async fn exits_wait_for_room_in_a_full_queue_and_none_is_lost() {
    let directory = tempfile::tempdir().unwrap();
    let pool = ProcessPool::new(
        "node".to_owned(),
        crate::runtimes::runtime_binary(),
        directory.path().join("runtimes"),
        1 << 20,
        Duration::from_secs(10),
    )
    .with_exits_queue(1);
    let mut exits = pool.take_exits().unwrap();
    let mut started = HashSet::new();
    for number in 0..2 {
        // No bundle at that path: the runtime ends as soon as it starts.
        let spec = RuntimeSpec {
            runtime_id: format!("runtime-{number}"),
            secret: "secret".to_owned(),
            qualifier: Qualifier::Lobby,
            platform_url: "http://127.0.0.1:9".to_owned(),
            artifact: Artifact::Bundle {
                path: directory.path().join("missing.tar.gz"),
                sha256: "0".repeat(64),
                image: None,
                program: None,
                image_pushed: false,
            },
            limits: ResourceLimits {
                cpu_millis: 1000,
                memory_mb: 64,
            },
            pool: "local".to_owned(),
            docker_placement: Default::default(),
            labels: Vec::new(),
        };
        started.insert(spec.runtime_id.clone());
        pool.start(spec).await.expect("the process starts");
    }
    // Both ended (the pool saw it), while the queue had room for one exit.
    eventually("both runtimes ended", || async { pool.running() == 0 }).await;
    let mut reported = HashSet::new();
    for _ in 0..2 {
        let exited = tokio::time::timeout(Duration::from_secs(5), exits.recv())
            .await
            .expect("an exit waits in line")
            .unwrap();
        assert!(exited.exit_code.is_some_and(|code| code != 0), "{exited:?}");
        reported.insert(exited.runtime_id);
    }
    assert_eq!(reported, started);
    pool.kill_all().await;
}

on_both_backends!(
    a_start_turn_comes_back_when_the_pool_reports_the_runtime_gone,
    a_deployment_that_cannot_be_read_is_left_alone,
    lobbies_start_through_the_pool_with_the_deployments_limits,
    failed_starts_are_recorded_and_restarts_pause_after_five,
    an_exit_the_pool_reports_fails_the_runtime_and_it_is_replaced,
);

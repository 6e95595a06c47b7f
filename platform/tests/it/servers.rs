//! Pools and servers through the API, against the machine's real Docker daemon: only staff
//! manage them, a Docker server is registered only when its daemon answers, names are unique,
//! a stage moves between pools, and what is in use cannot be deleted.

use crate::helpers::{assert_api_error, spawn_app, Backend, TestApp};
use crate::on_both_backends;
use rally_sdk::wire::{
    Capacity, DockerEndpoint, DockerTls, GrantRequest, GrantRole, PlacementStrategy,
    RegisterServer, ScopeKind, ServerKind, ServerStatus,
};
use rally_sdk::RallyClient;

/// The local daemon, as the machine's Docker engine listens.
pub const LOCAL_DOCKER: &str = "unix:///var/run/docker.sock";

pub fn docker_server(name: &str, runtimes: u32) -> RegisterServer {
    RegisterServer {
        name: name.to_owned(),
        docker: DockerEndpoint {
            url: LOCAL_DOCKER.to_owned(),
            tls: None,
            network: "host".to_owned(),
            platform_url: None,
        },
        capacity: Capacity {
            cpu_millis: Some(2000),
            memory_mb: Some(1024),
            runtimes: Some(runtimes),
        },
    }
}

/// A developer with a manager grant on the whole tenant `studio`.
async fn tenant_manager(app: &TestApp, admin: &RallyClient) -> RallyClient {
    admin.create_developer("ada", "ada-password").await.unwrap();
    admin
        .grant(
            "studio",
            &GrantRequest {
                developer: "ada".into(),
                scope: ScopeKind::Tenant,
                project: None,
                stage: None,
                role: GrantRole::Manager,
            },
        )
        .await
        .unwrap();
    let tokens = app.client().login("ada", "ada-password").await.unwrap();
    app.client().authenticated(&tokens.access_token)
}

async fn staff_register_docker_servers_and_move_stages_to_their_pool(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    // The local pool and its process server exist from the start.
    let pools = admin.list_pools().await.unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].name, "local");
    let servers = admin.list_servers(None).await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(
        (servers[0].name.as_str(), servers[0].kind, servers[0].status),
        ("local", ServerKind::Process, ServerStatus::Enabled)
    );

    let pool = admin
        .create_pool("docker-eu", PlacementStrategy::Pack)
        .await
        .unwrap();
    assert_eq!(pool.strategy, PlacementStrategy::Pack);
    assert_api_error(
        admin
            .create_pool("docker-eu", PlacementStrategy::Spread)
            .await,
        409,
        "pool_exists",
    );
    assert_api_error(
        admin
            .create_pool("Docker EU", PlacementStrategy::Spread)
            .await,
        400,
        "invalid_name",
    );

    // The same daemon twice, with different capacities: two servers.
    let big = admin
        .register_server("docker-eu", &docker_server("big", 8))
        .await
        .unwrap();
    assert_eq!(big.kind, ServerKind::Docker);
    assert_eq!(big.capacity.runtimes, Some(8));
    assert_eq!(big.usage.runtimes, 0);
    admin
        .register_server("docker-eu", &docker_server("small", 2))
        .await
        .unwrap();
    assert_api_error(
        admin
            .register_server("docker-eu", &docker_server("big", 4))
            .await,
        409,
        "server_exists",
    );
    let listed = admin.list_servers(Some("docker-eu")).await.unwrap();
    let names: Vec<_> = listed.iter().map(|server| server.name.as_str()).collect();
    assert_eq!(names, ["big", "small"]);

    // Drain, disable, enable.
    let drained = admin
        .set_server_status("docker-eu", "small", ServerStatus::Draining)
        .await
        .unwrap();
    assert_eq!(drained.status, ServerStatus::Draining);
    let shown = admin.get_server("docker-eu", "small").await.unwrap();
    assert_eq!(shown.status, ServerStatus::Draining);
    admin
        .set_server_status("docker-eu", "small", ServerStatus::Enabled)
        .await
        .unwrap();
    assert!(admin
        .server_runtimes("docker-eu", "big")
        .await
        .unwrap()
        .is_empty());

    // A stage moves to the pool; an unknown pool is 404.
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    let stage = admin.get_stage("studio", "game", "default").await.unwrap();
    assert_eq!(stage.pool, "local");
    let moved = admin
        .set_stage_pool("studio", "game", "default", "docker-eu")
        .await
        .unwrap();
    assert_eq!(moved.pool, "docker-eu");
    assert_eq!(
        admin
            .get_stage("studio", "game", "default")
            .await
            .unwrap()
            .pool,
        "docker-eu"
    );
    assert_api_error(
        admin
            .set_stage_pool("studio", "game", "default", "nowhere")
            .await,
        404,
        "not_found",
    );

    // What is in use stays.
    assert_api_error(admin.delete_pool("docker-eu").await, 409, "pool_in_use");
    assert_api_error(admin.delete_pool("local").await, 409, "pool_is_built_in");
    assert_api_error(
        admin.remove_server("local", "local").await,
        409,
        "server_is_built_in",
    );
    admin
        .set_stage_pool("studio", "game", "default", "local")
        .await
        .unwrap();
    admin.remove_server("docker-eu", "big").await.unwrap();
    admin.remove_server("docker-eu", "small").await.unwrap();
    admin.delete_pool("docker-eu").await.unwrap();
    assert_api_error(admin.get_pool("docker-eu").await, 404, "not_found");

    // Every change is in the audit log.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE target_kind IN ('pool', 'server') ORDER BY at",
    )
    .fetch_all(app.state.database.reader())
    .await
    .unwrap();
    assert!(
        actions.contains(&"server.register".to_owned()),
        "{actions:?}"
    );
    assert!(actions.contains(&"pool.delete".to_owned()), "{actions:?}");
    app.stop().await;
}

async fn developers_neither_see_nor_change_pools(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    admin
        .create_pool("docker", PlacementStrategy::Spread)
        .await
        .unwrap();
    let ada = tenant_manager(&app, &admin).await;
    assert_api_error(ada.list_pools().await, 403, "forbidden");
    assert_api_error(ada.list_servers(None).await, 403, "forbidden");
    assert_api_error(
        ada.create_pool("mine", PlacementStrategy::Spread).await,
        403,
        "forbidden",
    );
    assert_api_error(
        ada.register_server("docker", &docker_server("mine", 1))
            .await,
        403,
        "forbidden",
    );
    assert_api_error(
        ada.set_server_status("local", "local", ServerStatus::Disabled)
            .await,
        403,
        "forbidden",
    );
    // Managing the tenant does not make her the operator of where it runs.
    assert_api_error(
        ada.set_stage_pool("studio", "game", "default", "docker")
            .await,
        403,
        "forbidden",
    );
    // Without a token at all: 401.
    assert_api_error(app.client().list_pools().await, 401, "missing_token");
    app.stop().await;
}

async fn a_docker_server_is_recorded_only_when_its_daemon_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    admin
        .create_pool("docker", PlacementStrategy::Spread)
        .await
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    // A socket path where nothing listens.
    let mut nowhere = docker_server("nowhere", 4);
    nowhere.docker.url = format!("unix://{}/docker.sock", directory.path().display());
    assert_api_error(
        admin.register_server("docker", &nowhere).await,
        400,
        "docker_unreachable",
    );
    // Something that is not a Docker daemon: a plain file.
    let file = directory.path().join("not-docker.sock");
    std::fs::write(&file, "no").unwrap();
    let mut wrong = docker_server("wrong", 4);
    wrong.docker.url = format!("unix://{}", file.display());
    assert_api_error(
        admin.register_server("docker", &wrong).await,
        400,
        "docker_unreachable",
    );
    // TCP without TLS would hand root on the daemon to anyone on the network.
    let mut plain_tcp = docker_server("plain", 4);
    plain_tcp.docker.url = "tcp://127.0.0.1:2375".to_owned();
    assert_api_error(
        admin.register_server("docker", &plain_tcp).await,
        400,
        "docker_tls_required",
    );
    // TLS files that do not exist: the client cannot be made.
    let mut missing_tls = docker_server("tls", 4);
    missing_tls.docker.url = "tcp://127.0.0.1:1".to_owned();
    missing_tls.docker.tls = Some(DockerTls {
        ca: format!("{}/ca.pem", directory.path().display()),
        cert: format!("{}/cert.pem", directory.path().display()),
        key: format!("{}/key.pem", directory.path().display()),
    });
    assert_api_error(
        admin.register_server("docker", &missing_tls).await,
        400,
        "docker_unreachable",
    );
    let mut no_capacity = docker_server("empty", 4);
    no_capacity.capacity.memory_mb = None;
    assert_api_error(
        admin.register_server("docker", &no_capacity).await,
        400,
        "invalid_capacity",
    );
    let mut bad_url = docker_server("bad", 4);
    bad_url.docker.url = "http://127.0.0.1:2375".to_owned();
    assert_api_error(
        admin.register_server("docker", &bad_url).await,
        400,
        "invalid_docker_url",
    );
    // Nothing half-created.
    assert!(admin.list_servers(Some("docker")).await.unwrap().is_empty());
    app.stop().await;
}

on_both_backends!(
    staff_register_docker_servers_and_move_stages_to_their_pool,
    developers_neither_see_nor_change_pools,
    a_docker_server_is_recorded_only_when_its_daemon_answers,
);

//! Regression tests for the findings of the security review (issue 12): each reproduces the
//! attack and asserts that it now fails.

use crate::helpers::{
    announce_body_with, assert_api_error, code, spawn_app, Backend, TestApp, ADMIN_PASSWORD,
};
use crate::permissions::{developer, hello_bundle, Developer};
use crate::players::{app, connect, deploy, deploy_version, is_error, player, runtime_pid, Socket};
use rally_sdk::player::RuntimeKind;
use rally_sdk::wire::{GrantRequest, GrantRole, ScopeKind};
use std::time::{Duration, Instant};

/// Every stored idempotent answer, as text.
async fn stored_answers(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar::<_, Option<String>>("SELECT response FROM idempotency_keys")
        .fetch_all(app.state.database.reader())
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect()
}

async fn post_keyed(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", app.url))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Finding 1: answers that carry credentials were kept in clear, and a replayed refresh handed
/// out the same refresh token again.
async fn credentials_are_never_kept_nor_replayed(backend: Backend) {
    let app = spawn_app(backend).await;
    let player_tokens = {
        let anonymous = app.client();
        let user = anonymous.create_user().await.unwrap();
        anonymous
            .sign_in_user(&user.user_id, &user.secret)
            .await
            .unwrap()
    };
    let token = player_tokens.access_token.as_str();
    let mut secrets = Vec::new();

    // Sign-up twice with one key: two users, and neither secret is kept.
    let (status, first) = post_keyed(&app, "/api/v1/users", token, "k-users", json_empty()).await;
    assert_eq!(status, 201);
    let (_, second) = post_keyed(&app, "/api/v1/users", token, "k-users", json_empty()).await;
    assert_ne!(first["user_id"], second["user_id"]);
    secrets.push(first["secret"].as_str().unwrap().to_owned());

    // Admin sign-in with a key: fresh tokens each time, none kept.
    let login = serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD});
    let (status, admin_pair) =
        post_keyed(&app, "/api/v1/auth/login", token, "k-login", login.clone()).await;
    assert_eq!(status, 200);
    let (_, again) = post_keyed(&app, "/api/v1/auth/login", token, "k-login", login).await;
    assert_ne!(admin_pair["refresh_token"], again["refresh_token"]);
    secrets.push(admin_pair["refresh_token"].as_str().unwrap().to_owned());
    secrets.push(admin_pair["access_token"].as_str().unwrap().to_owned());

    // A replayed refresh spends the (now spent) token again: refused, never the same pair.
    let refresh = serde_json::json!({"refresh_token": again["refresh_token"]});
    let (status, renewed) = post_keyed(
        &app,
        "/api/v1/auth/refresh",
        token,
        "k-refresh",
        refresh.clone(),
    )
    .await;
    assert_eq!(status, 200);
    secrets.push(renewed["refresh_token"].as_str().unwrap().to_owned());
    let (status, replayed) =
        post_keyed(&app, "/api/v1/auth/refresh", token, "k-refresh", refresh).await;
    assert_eq!(status, 401, "a spent refresh token is refused: {replayed}");
    assert_ne!(replayed["refresh_token"], renewed["refresh_token"]);

    let answers = stored_answers(&app).await;
    for secret in &secrets {
        assert!(
            answers
                .iter()
                .all(|answer| !answer.contains(secret.as_str())),
            "a credential is stored in idempotency_keys"
        );
    }
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_eq!(keys, 0, "credential routes take no idempotency keys");

    // Creation routes still replay, and what they keep holds no credential.
    let admin = app.admin().await.with_idempotency_key("k-tenant");
    let tenant = admin.create_tenant("Studio", Some("studio")).await.unwrap();
    assert_eq!(
        admin.create_tenant("Studio", Some("studio")).await.unwrap(),
        tenant
    );
    assert_eq!(stored_answers(&app).await.len(), 1);
}

fn json_empty() -> serde_json::Value {
    serde_json::json!({})
}

/// Finding 2: with any token and a key, a body was buffered up to the bundle limit (64 MiB)
/// before the route's 1 MiB limit applied; uploads were not bounded at all.
async fn bodies_stop_at_the_routes_limit_and_uploads_take_turns(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |config| {
        config.bundle_uploads_at_once = 1;
    })
    .await;
    let admin_tokens = app.client().login("admin", ADMIN_PASSWORD).await.unwrap();
    let token = admin_tokens.access_token.as_str();
    let keyed = [("idempotency-key", "k-big")];

    // An announced 8 MiB body: refused from its length, unread.
    let answer = announce_body_with(
        &app,
        "/api/v1/tenants",
        "application/json",
        Some(8 * 1024 * 1024),
        Some(token),
        &keyed,
    )
    .await;
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A chunked body that never ends: refused once the route's limit is read, not 64 MiB.
    let answer = stream_chunked(&app, "/api/v1/tenants", token, 1536 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // One upload at a time: a second waits for its turn, then is told to come back.
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    let path = "/api/v1/tenants/studio/projects/game/versions";
    let stalled = hold_upload(&app, path, token).await;
    let started = Instant::now();
    assert_api_error(
        admin
            .upload_version("studio", "game", hello_bundle(), None)
            .await,
        503,
        "uploads_busy",
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    drop(stalled);
    // The turn is free again once the stalled upload is gone.
    let version = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match admin
                .upload_version("studio", "game", hello_bundle(), None)
                .await
            {
                Ok(version) => return version,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the upload turn comes back");
    assert_eq!(version.number, 1);
}

/// Sends `total` bytes as a chunked body without its last chunk; returns the answer.
async fn stream_chunked(app: &TestApp, path: &str, token: &str, total: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: rally\r\ncontent-type: application/json\r\n\
         authorization: Bearer {token}\r\nidempotency-key: k-chunked\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let frame = format!("{:x}\r\n", chunk.len());
        // The server may answer and stop reading before everything is sent.
        if socket.write_all(frame.as_bytes()).await.is_err()
            || socket.write_all(&chunk).await.is_err()
            || socket.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => answer.extend_from_slice(&buffer[..count]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the platform kept reading past the route's limit"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// Starts an upload that sends part of its body and stalls, holding an upload turn.
async fn hold_upload(app: &TestApp, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: rally\r\ncontent-type: application/gzip\r\n\
         authorization: Bearer {token}\r\ncontent-length: 2000000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[0u8; 1024]).await.unwrap();
    // Let the platform take the turn before the next upload asks for one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket
}

fn tenant_manager(developer: &str) -> GrantRequest {
    GrantRequest {
        developer: developer.to_owned(),
        scope: ScopeKind::Tenant,
        project: None,
        stage: None,
        role: GrantRole::Manager,
    }
}

/// Finding 5: a replay answered 201 with the stored body after the caller lost its grant, and
/// after its account was disabled.
async fn replays_pass_the_same_checks_as_the_first_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    let ada = developer(&app, &admin, "ada").await.api;
    admin.grant("studio", &tenant_manager("ada")).await.unwrap();

    let keyed = ada.with_idempotency_key("k-project");
    keyed
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    admin
        .revoke("studio", &tenant_manager("ada"))
        .await
        .unwrap();
    // (She still sees the tenant through the project she made, so it is 403, not 404.)
    assert_api_error(
        keyed.create_project("studio", "Game", Some("game")).await,
        403,
        "forbidden",
    );

    admin.grant("studio", &tenant_manager("ada")).await.unwrap();
    let keyed = ada.with_idempotency_key("k-project-2");
    keyed
        .create_project("studio", "Other", Some("other"))
        .await
        .unwrap();
    admin.set_developer_disabled("ada", true).await.unwrap();
    assert_api_error(
        keyed.create_project("studio", "Other", Some("other")).await,
        401,
        "account_disabled",
    );
}

/// Finding 8: authentication and authorization are decided before the body and the headers
/// are looked at, and a foreign deployment is not found under one's own stage.
async fn who_asks_is_checked_before_what_is_asked(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    let Developer {
        api: ada,
        token: ada_token,
        ..
    } = developer(&app, &admin, "ada").await;
    // She manages the tenant, so she sees it, but grants and accounts are for staff.
    admin.grant("studio", &tenant_manager("ada")).await.unwrap();
    for path in ["/api/v1/tenants/studio/grants", "/api/v1/developers"] {
        let (status, body) = crate::helpers::raw(
            &app,
            reqwest::Method::POST,
            path,
            Some("application/json"),
            "{not json",
            Some(&ada_token),
        )
        .await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{path}");
    }
    let answer = announce_body_with(
        &app,
        "/api/v1/tenants",
        "application/json",
        None,
        None,
        &[("idempotency-key", "not a valid key")],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("missing_token"), "{answer}");

    // Two tenants, each with a deployment; ada manages only her own.
    admin.create_tenant("Other", Some("other")).await.unwrap();
    admin
        .create_project("other", "Game", Some("game"))
        .await
        .unwrap();
    let version = admin
        .upload_version("other", "game", hello_bundle(), None)
        .await
        .unwrap();
    let other_deployment = deploy_version(
        &admin,
        "other",
        version.number,
        serde_json::json!({"min_lobbies": 0}),
    )
    .await;
    admin.create_tenant("Mine", Some("mine")).await.unwrap();
    admin.grant("mine", &tenant_manager("ada")).await.unwrap();
    ada.create_project("mine", "Game", Some("game"))
        .await
        .unwrap();
    let (status, body) = crate::helpers::raw(
        &app,
        reqwest::Method::GET,
        &format!(
            "/api/v1/tenants/mine/projects/game/stages/default/deployments/{other_deployment}/runtimes"
        ),
        None,
        Vec::new(),
        Some(&ada_token),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

/// Finding 7: names shown to operators took invisible and bidirectional format characters.
async fn names_refuse_invisible_characters(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    for name in [
        "evil\u{202e}gnp.exe",
        "\u{200d}",
        "\u{feff}Studio",
        "a\u{2067}b",
    ] {
        assert_api_error(admin.create_tenant(name, None).await, 400, "invalid_name");
    }
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    assert_api_error(
        admin
            .create_project("studio", "Ga\u{200b}me", Some("game"))
            .await,
        400,
        "invalid_name",
    );
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    assert_api_error(
        admin
            .upload_version("studio", "game", hello_bundle(), Some("see\u{202e}txt"))
            .await,
        400,
        "invalid_note",
    );
}

pub(crate) fn bundle(files: &[(&str, &str)], kind: &str, entry: &str) -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("rally.toml"),
        format!(
            "[runtime]\nkind = \"{kind}\"\nlobby = \"{entry}\"\nmatch = \"{entry}\"\n\n\
             [[modes]]\nname = \"duo\"\nmin_players = 2\nmax_players = 2\n\n\
             [[modes.groups]]\nname = \"all\"\nmin_players = 2\nmax_players = 2\n"
        ),
    )
    .unwrap();
    for (path, content) in files {
        std::fs::write(directory.path().join(path), content).unwrap();
    }
    rally_sdk::bundle::pack(
        directory.path(),
        &rally_sdk::bundle::BundleLimits::default(),
    )
    .unwrap()
}

/// A module speaking the guest ABI, plus `extra` (WAT text: `.wasm` entries may be text).
fn guest(memory_pages: u32, extra: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") {memory_pages})
  (func (export "rally_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "rally_handle") (param i32 i32) (result i32) (i32.const 0))
  {extra})"#
    )
}

/// Finding 6: WASM bundles that can never load, and Lua that does not compile, were stored
/// and deployed, then failed at every runtime start.
async fn logic_that_cannot_load_is_refused_at_upload(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    let refused = [
        (
            "a missing import",
            guest(1, r#"(import "rally" "teleport" (func))"#),
            "teleport",
        ),
        ("a 4 GiB initial memory", guest(65536, ""), "memory"),
        (
            "a start function that never returns",
            guest(1, "(func $spin (loop (br 0))) (start $spin)"),
            "",
        ),
    ];
    for (what, module, mentioned) in refused {
        let result = admin
            .upload_version(
                "studio",
                "game",
                bundle(&[("logic.wasm", &module)], "wasm", "logic.wasm"),
                None,
            )
            .await;
        match result {
            Err(rally_sdk::ClientError::Api {
                status: 400,
                code,
                message,
                ..
            }) => {
                assert_eq!(code, "bundle_logic_invalid", "{what}");
                assert!(message.contains(mentioned), "{what}: {message}");
            }
            other => panic!("{what}: expected bundle_logic_invalid, got {other:?}"),
        }
    }
    let broken_lua = bundle(
        &[(
            "lobby.lua",
            "local lobby = {}\nfunction lobby.on_start(ctx\nreturn lobby\n",
        )],
        "lua",
        "lobby.lua",
    );
    match admin
        .upload_version("studio", "game", broken_lua, None)
        .await
    {
        Err(rally_sdk::ClientError::Api { code, message, .. }) => {
            assert_eq!(code, "bundle_logic_invalid");
            assert!(message.contains("lobby.lua:"), "{message}");
        }
        other => panic!("expected bundle_logic_invalid, got {other:?}"),
    }
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM versions")
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_eq!(versions, 0);
    // A module that loads is stored.
    admin
        .upload_version(
            "studio",
            "game",
            bundle(&[("logic.wasm", &guest(1, ""))], "wasm", "logic.wasm"),
            None,
        )
        .await
        .unwrap();
}

const STUCK_LOBBY: &str = r#"
local lobby = {}
function lobby.on_message(ctx, client_id, payload)
    if payload == "stall" then
        -- Quadratic inside one C call: no interrupt point until it returns.
        local haystack = string.rep("a", 2 * 1024 * 1024)
        local needle = string.rep("a", 1024 * 1024) .. "b"
        string.find(haystack, needle, 1, true)
    end
    ctx.respond(client_id, payload)
end
return lobby
"#;

/// Finding 3: a handler stuck in a C library call ran 29 s of CPU against its 1 s limit; the
/// player got nothing until the platform gave up on the runtime's heartbeats.
async fn a_handler_stuck_in_a_library_call_ends_within_its_limit(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, deployment) = deploy(
        &app,
        bundle(&[("lobby.lua", STUCK_LOBBY)], "lua", "lobby.lua"),
        serde_json::json!({"min_lobbies": 1}),
    )
    .await;
    let ada = player(&app).await;
    let mut socket: Socket = connect(&app, &ada).await;
    let lobby = socket.greeted_and_assigned().await;
    socket.echo("hello").await;
    let asked = Instant::now();
    socket.say("stall").await;
    socket
        .until("runtime_failed", |event| is_error(event, "runtime_failed"))
        .await;
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(5), "told after {waited:?}");
    let assignment = socket.assigned_to(RuntimeKind::Lobby).await;
    assert_ne!(assignment.runtime_id, lobby);
    socket.echo("after").await;

    let runtimes = admin
        .list_runtimes("studio", "game", "default", &deployment)
        .await
        .unwrap();
    let stuck = runtimes.iter().find(|runtime| runtime.id == lobby).unwrap();
    assert_eq!(
        stuck.status, "failed",
        "it counts towards the restart back-off"
    );
    assert_eq!(stuck.exit_code, Some(7));
    assert!(
        stuck
            .failure
            .as_deref()
            .is_some_and(|failure| failure.contains("time limit")),
        "{:?}",
        stuck.failure
    );
    let log = admin
        .runtime_logs("studio", "game", "default", &deployment, &lobby)
        .await
        .unwrap();
    assert!(log.contains("ran past its time limit"), "{log}");
}

pub(crate) const HUNGRY_LOBBY: &str = r#"
local lobby = {}
local kept = {}
function lobby.on_message(ctx, client_id, payload)
    if payload == "eat" then
        -- 48 MiB, within the Lua heap cap (64 MiB) but over the runtime's 32 MiB.
        for i = 1, 48 do
            kept[i] = string.rep(string.char(64 + i % 26), 1024 * 1024)
        end
    end
    ctx.respond(client_id, payload)
end
return lobby
"#;

/// The runtime's group of `controller`, if it has one of its own (cgroup v1).
fn runtime_group(pid: i64, controller: &str, runtime_id: &str) -> Option<std::path::PathBuf> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = groups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _ = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        controllers
            .split(',')
            .any(|name| name == controller)
            .then(|| path.to_owned())
    })?;
    path.ends_with(&format!("/rally/{runtime_id}"))
        .then(|| std::path::PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}")))
}

/// Process `pid`'s data segment (`RLIMIT_DATA`, from `/proc`) is capped at `bytes`.
pub(crate) fn assert_data_limit(pid: impl std::fmt::Display, bytes: u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let data = limits
        .lines()
        .find(|line| line.starts_with("Max data size"))
        .unwrap();
    assert!(data.contains(&bytes.to_string()), "{data}");
}

/// Finding 4: `runtime_cpu_millis` and `runtime_memory_mb` were validated and never applied.
async fn runtimes_get_their_deployments_cpu_and_memory_limits(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, deployment) = deploy(
        &app,
        bundle(&[("lobby.lua", HUNGRY_LOBBY)], "lua", "lobby.lua"),
        serde_json::json!({"min_lobbies": 1, "runtime_memory_mb": 32, "runtime_cpu_millis": 250}),
    )
    .await;
    let ada = player(&app).await;
    let mut socket: Socket = connect(&app, &ada).await;
    let lobby = socket.greeted_and_assigned().await;
    socket.echo("hello").await;
    let pid = runtime_pid(&admin, &deployment, &lobby).await;
    let memory_group = runtime_group(pid, "memory", &lobby);
    if let Some(group) = &memory_group {
        let limit = std::fs::read_to_string(group.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (32u64 << 20).to_string());
        let cpu = runtime_group(pid, "cpu", &lobby).expect("a cpu group beside the memory one");
        let quota = std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota.trim(), "25000", "250 millicores of a 100 ms period");
    } else {
        // No writable cgroup v1 here: the data segment is capped instead.
        assert_data_limit(pid, 32 << 20);
    }

    socket.say("eat").await;
    let Some(group) = memory_group else {
        // Under RLIMIT_DATA the Lua allocation fails in the handler and the runtime lives on.
        socket.echo("still here").await;
        return;
    };
    let asked = Instant::now();
    socket
        .until("runtime_failed", |event| is_error(event, "runtime_failed"))
        .await;
    assert!(asked.elapsed() < Duration::from_secs(5));
    socket
        .assigned_to(rally_sdk::player::RuntimeKind::Lobby)
        .await;
    socket.echo("after").await;
    let runtimes = admin
        .list_runtimes("studio", "game", "default", &deployment)
        .await
        .unwrap();
    let killed = runtimes.iter().find(|runtime| runtime.id == lobby).unwrap();
    assert_eq!(killed.status, "failed");
    assert_eq!(
        killed.failure.as_deref(),
        Some("killed: memory limit of 32 MiB exceeded")
    );
    let log = admin
        .runtime_logs("studio", "game", "default", &deployment, &lobby)
        .await
        .unwrap();
    assert!(
        log.contains("[platform] the runtime failed: killed: memory limit of 32 MiB exceeded"),
        "the reason is in the runtime's log: {log}"
    );
    assert!(!group.exists(), "the runtime's groups are removed");
}

crate::on_both_backends!(
    credentials_are_never_kept_nor_replayed,
    bodies_stop_at_the_routes_limit_and_uploads_take_turns,
    replays_pass_the_same_checks_as_the_first_request,
    who_asks_is_checked_before_what_is_asked,
    names_refuse_invisible_characters,
    logic_that_cannot_load_is_refused_at_upload,
    a_handler_stuck_in_a_library_call_ends_within_its_limit,
    runtimes_get_their_deployments_cpu_and_memory_limits,
);

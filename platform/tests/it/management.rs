//! Tenants, projects, stages, versions and deployments through the API, with the bad input a
//! studio will send: broken bundles, invalid modes, duplicate aliases, cross-project deploys.

use crate::helpers::{assert_api_error, spawn_app, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::permissions::hello_bundle;
use rally_sdk::wire::{DeploymentStatus, GrantRequest, GrantRole, ScopeKind};
use rally_sdk::{ClientError, RallyClient};
use std::time::Duration;

/// Admin client with tenant `studio` and project `game`.
pub(crate) async fn studio(app: &TestApp) -> RallyClient {
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    admin
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(app.state.database.reader())
        .await
        .unwrap()
}

/// A tar.gz whose entries are written by hand, so that it can hold what `pack` never writes.
struct RawArchive(tar::Builder<flate2::write::GzEncoder<Vec<u8>>>);

impl RawArchive {
    fn new() -> Self {
        Self(tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        )))
    }

    /// Adds an entry; `name` goes into the header as given, `..` and all.
    fn entry(mut self, name: &str, kind: tar::EntryType, data: &[u8]) -> Self {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, text: &str) -> Self {
        self.entry(name, tar::EntryType::Regular, text.as_bytes())
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap().finish().unwrap()
    }
}

const MANIFEST: &str = r#"
[runtime]
kind = "lua"
lobby = "lobby.lua"
match = "match.lua"

[[modes]]
name = "duel"
min_players = 2
max_players = 2
  [[modes.groups]]
  name = "all"
  min_players = 2
  max_players = 2
"#;

fn good_archive() -> RawArchive {
    RawArchive::new()
        .file("rally.toml", MANIFEST)
        .file("lobby.lua", "return {}")
        .file("match.lua", "return {}")
}

async fn broken_bundles_are_refused_and_nothing_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    let bad_modes = MANIFEST.replace(
        "min_players = 2\nmax_players = 2",
        "min_players = 3\nmax_players = 2",
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "random bytes",
            b"this is not an archive".to_vec(),
            "bundle_not_archive",
        ),
        ("empty body", Vec::new(), "bundle_not_archive"),
        (
            "path escaping the bundle",
            good_archive().file("../evil.lua", "x").finish(),
            "bundle_path_escapes",
        ),
        (
            "absolute path",
            good_archive().file("/etc/evil.lua", "x").finish(),
            "bundle_path_escapes",
        ),
        (
            "symlink",
            good_archive()
                .entry("link.lua", tar::EntryType::Symlink, b"")
                .finish(),
            "bundle_link_forbidden",
        ),
        (
            "no manifest",
            RawArchive::new().file("lobby.lua", "return {}").finish(),
            "manifest_missing",
        ),
        (
            "manifest not TOML",
            RawArchive::new()
                .file("rally.toml", "[runtime\nkind=")
                .finish(),
            "manifest_invalid",
        ),
        (
            "invalid modes",
            RawArchive::new()
                .file("rally.toml", &bad_modes)
                .file("lobby.lua", "")
                .file("match.lua", "")
                .finish(),
            "manifest_invalid",
        ),
        (
            "missing entry file",
            RawArchive::new()
                .file("rally.toml", MANIFEST)
                .file("lobby.lua", "")
                .finish(),
            "entry_missing",
        ),
    ];
    for (what, archive, expected) in cases {
        let error = admin
            .upload_version("studio", "game", archive, None)
            .await
            .unwrap_err();
        match &error {
            ClientError::Api {
                status: 400, code, ..
            } if code == expected => {}
            other => panic!("{what}: expected 400 {expected}, got {other:?}"),
        }
        if what == "invalid modes" {
            let ClientError::Api { details, .. } = &error else {
                unreachable!()
            };
            let problems = &details.as_ref().expect("problems")["problems"];
            assert!(problems.to_string().contains("modes[0]"), "{problems}");
        }
    }
    assert_eq!(count(&app, "versions").await, 0);
    assert_eq!(count(&app, "bundles").await, 0);
    // The same endpoint takes a good archive.
    let version = admin
        .upload_version("studio", "game", good_archive().finish(), None)
        .await
        .unwrap();
    assert_eq!(version.number, 1);
}

async fn oversized_archives_and_bombs_are_refused_early(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.bundle_max_bytes = 256 * 1024;
        config.bundle_max_unpacked_bytes = 1024 * 1024;
    })
    .await;
    let admin = studio(&app).await;
    // Just over the archive limit, and 1 GB: both answered from the announced length, before
    // the body is read. (A client that pushes the whole body may see its write cut off instead
    // of the answer, so the raw socket is used.)
    for length in [256 * 1024 + 1, 1 << 30] {
        let answer = crate::helpers::announce_body(
            &app,
            "/api/v1/tenants/studio/projects/game/versions",
            "application/gzip",
            length,
            admin.access_token(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{length}: {answer}");
        assert!(answer.contains("payload_too_large"), "{length}: {answer}");
    }
    // A small archive that inflates to 16 MiB: refused once the limit is passed.
    let mut bomb = RawArchive::new().file("rally.toml", MANIFEST);
    let zeros = vec![0u8; 16 * 1024 * 1024];
    bomb = bomb.entry("lobby.lua", tar::EntryType::Regular, &zeros);
    let bomb = bomb.finish();
    assert!(bomb.len() < 256 * 1024, "bomb is {} bytes", bomb.len());
    assert_api_error(
        admin.upload_version("studio", "game", bomb, None).await,
        400,
        "bundle_too_large",
    );
    assert_eq!(count(&app, "bundles").await, 0);
}

async fn deploying_replaces_drains_and_closes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    admin
        .upload_version("studio", "game", hello_bundle(), Some("first"))
        .await
        .unwrap();
    // The same bytes again: a new version, one stored bundle.
    let second = admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    assert_eq!(second.number, 2);
    assert_eq!(count(&app, "bundles").await, 1);

    let first = admin
        .deploy("studio", "game", "default", "1", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(first.status, DeploymentStatus::Active);
    assert_eq!(first.config.min_lobbies, 1, "the version's defaults");
    let stage = admin.get_stage("studio", "game", "default").await.unwrap();
    assert_eq!(
        stage.current_deployment_id.as_deref(),
        Some(first.id.as_str())
    );

    // A deployed version cannot be deleted.
    assert_api_error(
        admin.delete_version("studio", "game", "1").await,
        409,
        "version_deployed",
    );

    let overrides = serde_json::json!({"min_lobbies": 3, "warm_matches": {"duel": 2}});
    let replacement = admin
        .deploy("studio", "game", "default", &second.id, overrides)
        .await
        .unwrap();
    assert_eq!(replacement.config.min_lobbies, 3);
    assert_eq!(replacement.config.warm_matches["duel"], 2);
    let stage = admin.get_stage("studio", "game", "default").await.unwrap();
    assert_eq!(
        stage.current_deployment_id.as_deref(),
        Some(replacement.id.as_str())
    );

    // The replaced deployment drains, then closes (it has no runtimes left to wait for).
    let drained = admin
        .get_deployment("studio", "game", "default", &first.id)
        .await
        .unwrap();
    assert_ne!(drained.status, DeploymentStatus::Active);
    assert!(drained.draining_at.is_some());
    let mut closed = drained;
    for _ in 0..50 {
        if closed.status == DeploymentStatus::Closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        closed = admin
            .get_deployment("studio", "game", "default", &first.id)
            .await
            .unwrap();
    }
    assert_eq!(closed.status, DeploymentStatus::Closed);
    // Now version 1 runs nowhere and may go.
    admin.delete_version("studio", "game", "1").await.unwrap();
    assert_api_error(
        admin.get_version("studio", "game", "1").await,
        404,
        "not_found",
    );
    let history = admin
        .list_deployments("studio", "game", "default")
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "history keeps the closed deployment");
}

async fn bad_deployments_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    admin
        .create_project("studio", "Other", Some("other"))
        .await
        .unwrap();
    let theirs = admin
        .upload_version("studio", "other", hello_bundle(), None)
        .await
        .unwrap();
    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();

    // A version of project `other` on a stage of project `game`.
    assert_api_error(
        admin
            .deploy(
                "studio",
                "game",
                "default",
                &theirs.id,
                serde_json::Value::Null,
            )
            .await,
        404,
        "version_not_in_project",
    );
    assert_api_error(
        admin
            .deploy("studio", "game", "default", "99", serde_json::Value::Null)
            .await,
        404,
        "version_not_in_project",
    );
    for config in [
        serde_json::json!({"min_lobbies": 5000}),
        serde_json::json!({"warm_matches": {"no-such-mode": 1}}),
        serde_json::json!({"max_clients_per_lobby": 0}),
        serde_json::json!({"min_lobbie": 1}),
        serde_json::json!({"min_lobbies": "two"}),
    ] {
        assert_api_error(
            admin
                .deploy("studio", "game", "default", "1", config.clone())
                .await,
            400,
            "invalid_deployment_config",
        );
    }
    assert_eq!(count(&app, "deployments").await, 0);
}

async fn aliases_are_checked_unique_and_usable_as_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    for bad in ["with space", "ünïcode", "UPPER", "-dash", ""] {
        assert_api_error(
            admin.create_tenant("T", Some(bad)).await,
            400,
            "invalid_alias",
        );
        assert_api_error(
            admin.create_project("studio", "P", Some(bad)).await,
            400,
            "invalid_alias",
        );
    }
    assert_api_error(
        admin.create_tenant("Again", Some("studio")).await,
        409,
        "alias_taken",
    );
    assert_api_error(
        admin.create_project("studio", "Again", Some("game")).await,
        409,
        "alias_taken",
    );
    assert_api_error(
        admin
            .create_stage("studio", "game", "Again", Some("default"))
            .await,
        409,
        "alias_taken",
    );
    assert_api_error(
        admin.create_tenant("Bell\u{7}", None).await,
        400,
        "invalid_name",
    );
    // A project alias is unique within its tenant only.
    admin.create_tenant("Second", Some("second")).await.unwrap();
    admin
        .create_project("second", "Game too", Some("game"))
        .await
        .unwrap();
    // Ids and aliases name the same things.
    let tenant = admin.get_tenant("studio").await.unwrap();
    let project = admin.get_project(&tenant.id, "game").await.unwrap();
    assert_eq!(
        admin.get_project("studio", &project.id).await.unwrap(),
        project
    );
    let stages = admin.list_stages(&tenant.id, &project.id).await.unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].alias.as_deref(), Some("default"));
    assert_eq!(count(&app, "tenants").await, 2);
}

async fn retried_creations_with_an_idempotency_key_make_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let keyed = admin.with_idempotency_key("create-studio-1");
    let first = keyed.create_tenant("Studio", Some("studio")).await.unwrap();
    let again = keyed.create_tenant("Studio", Some("studio")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(count(&app, "tenants").await, 1);
    // The same key for a different request is refused, not replayed.
    assert_api_error(
        keyed.create_tenant("Other", None).await,
        409,
        "idempotency_key_reused",
    );
    // A failed call is not kept: the corrected retry with the same key runs.
    let retry = admin.with_idempotency_key("create-project-1");
    assert_api_error(
        retry
            .create_project("studio", "Game", Some("Bad Alias"))
            .await,
        400,
        "invalid_alias",
    );
    // (a different body, so a different request: a fresh key models a fixed client)
    let fixed = admin.with_idempotency_key("create-project-2");
    let project = fixed
        .create_project("studio", "Game", Some("game"))
        .await
        .unwrap();
    assert_eq!(
        fixed
            .create_project("studio", "Game", Some("game"))
            .await
            .unwrap(),
        project
    );
    // Uploads are idempotent too.
    let upload = admin.with_idempotency_key("upload-1");
    let version = upload
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    let replayed = upload
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    assert_eq!(version.id, replayed.id);
    assert_eq!(count(&app, "versions").await, 1);
    // Keys belong to their caller: another account's identical key is its own.
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
    let ada = app
        .client()
        .authenticated(&tokens.access_token)
        .with_idempotency_key("create-project-2");
    let hers = ada
        .create_project("studio", "Game", Some("hers"))
        .await
        .unwrap();
    assert_ne!(hers.id, project.id);
}

async fn a_developer_who_creates_a_project_manages_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    admin.create_developer("ada", "ada-password").await.unwrap();
    let tenant_manager = GrantRequest {
        developer: "ada".into(),
        scope: ScopeKind::Tenant,
        project: None,
        stage: None,
        role: GrantRole::Manager,
    };
    admin.grant("studio", &tenant_manager).await.unwrap();
    let tokens = app.client().login("ada", "ada-password").await.unwrap();
    let ada = app.client().authenticated(&tokens.access_token);
    ada.create_project("studio", "Ada's game", Some("adas"))
        .await
        .unwrap();
    // Without the tenant grant she still manages what she made, and only that.
    admin.revoke("studio", &tenant_manager).await.unwrap();
    ada.create_stage("studio", "adas", "Staging", Some("staging"))
        .await
        .unwrap();
    let projects = ada.list_projects("studio").await.unwrap();
    assert_eq!(projects.len(), 1, "only her project is visible");
    assert_api_error(ada.get_project("studio", "game").await, 404, "not_found");
    assert_api_error(
        ada.create_project("studio", "More", None).await,
        403,
        "forbidden",
    );
    // A stage-only grant shows the project but manages only that stage.
    admin
        .create_developer("bobo", "bobo-password")
        .await
        .unwrap();
    admin
        .grant(
            "studio",
            &GrantRequest {
                developer: "bobo".into(),
                scope: ScopeKind::Stage,
                project: Some("game".into()),
                stage: Some("default".into()),
                role: GrantRole::Manager,
            },
        )
        .await
        .unwrap();
    let tokens = app.client().login("bobo", "bobo-password").await.unwrap();
    let bo = app.client().authenticated(&tokens.access_token);
    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    bo.deploy("studio", "game", "default", "1", serde_json::Value::Null)
        .await
        .unwrap();
    assert_api_error(
        bo.upload_version("studio", "game", hello_bundle(), None)
            .await,
        403,
        "forbidden",
    );
    assert_api_error(
        bo.create_stage("studio", "game", "Mine", None).await,
        403,
        "forbidden",
    );
}

async fn changes_are_audited_and_disabling_takes_effect_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    let ada = admin.create_developer("ada", "ada-password").await.unwrap();
    admin
        .grant(
            "studio",
            &GrantRequest {
                developer: ada.id.clone(),
                scope: ScopeKind::Tenant,
                project: None,
                stage: None,
                role: GrantRole::Viewer,
            },
        )
        .await
        .unwrap();
    let tokens = app.client().login("ada", "ada-password").await.unwrap();
    let client = app.client().authenticated(&tokens.access_token);
    let entries = client.audit(Some("studio"), 50).await.unwrap();
    let actions: Vec<_> = entries.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["grant.create", "project.create", "tenant.create"]);
    assert!(entries
        .iter()
        .all(|entry| entry.actor_role == rally_sdk::wire::Role::Admin));
    // The platform-wide log is for staff.
    assert_api_error(client.audit(None, 50).await, 403, "forbidden");
    assert!(admin
        .audit(None, 50)
        .await
        .unwrap()
        .iter()
        .any(|e| e.action == "developer.create"));

    admin.set_developer_disabled("ada", true).await.unwrap();
    assert_api_error(
        client.list_projects("studio").await,
        401,
        "account_disabled",
    );
    assert_api_error(
        app.client().refresh(&tokens.refresh_token).await,
        401,
        "refresh_token_revoked",
    );
    assert_api_error(
        app.client().login("ada", "ada-password").await,
        401,
        "account_disabled",
    );
    admin.set_developer_disabled("ada", false).await.unwrap();
    admin
        .reset_developer_password("ada", "new-ada-password")
        .await
        .unwrap();
    app.client().login("ada", "new-ada-password").await.unwrap();
}

async fn tenants_with_live_deployments_are_kept_until_stopped(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = studio(&app).await;
    admin
        .upload_version("studio", "game", hello_bundle(), None)
        .await
        .unwrap();
    let deployment = admin
        .deploy("studio", "game", "default", "1", serde_json::Value::Null)
        .await
        .unwrap();
    assert_api_error(
        admin.delete_tenant("studio").await,
        409,
        "tenant_has_live_deployments",
    );
    assert_api_error(
        admin.delete_project("studio", "game").await,
        409,
        "project_has_live_deployments",
    );
    let stopped = admin
        .stop_deployment("studio", "game", "default", &deployment.id)
        .await
        .unwrap();
    assert_ne!(stopped.status, DeploymentStatus::Active);
    assert_api_error(
        admin
            .stop_deployment("studio", "game", "default", &deployment.id)
            .await,
        409,
        "deployment_not_active",
    );
    // Wait for the drained deployment to close, then the tenant goes with everything in it.
    let mut result = admin.delete_tenant("studio").await;
    for _ in 0..50 {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = admin.delete_tenant("studio").await;
    }
    result.unwrap();
    for table in [
        "tenants",
        "projects",
        "stages",
        "versions",
        "deployments",
        "grants",
    ] {
        assert_eq!(count(&app, table).await, 0, "{table}");
    }
    assert_api_error(admin.get_tenant("studio").await, 404, "not_found");
}

async fn the_openapi_document_and_its_page_are_served(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = reqwest::get(format!("{}/api/v1/openapi.json", app.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert!(document["components"]["schemas"]["Deployment"].is_object());
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    let page = reqwest::get(format!("{}/api/v1/docs", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("openapi.json") && page.contains("<html"));
}

on_both_backends!(
    broken_bundles_are_refused_and_nothing_is_stored,
    oversized_archives_and_bombs_are_refused_early,
    deploying_replaces_drains_and_closes,
    bad_deployments_are_refused,
    aliases_are_checked_unique_and_usable_as_ids,
    retried_creations_with_an_idempotency_key_make_one,
    a_developer_who_creates_a_project_manages_it,
    changes_are_audited_and_disabling_takes_effect_at_once,
    tenants_with_live_deployments_are_kept_until_stopped,
    the_openapi_document_and_its_page_are_served,
);

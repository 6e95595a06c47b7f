//! The permission matrix: every management route walked as (a) admin, (b) a developer with the
//! grant, (c) a developer without it, (d) a developer of another tenant using real ids. (c) and
//! (d) get 403 or 404 and leave the database exactly as it was. The table must name every
//! route of the OpenAPI document, so a new route cannot skip the walk.

use crate::helpers::{raw, spawn_app, Backend, TestApp};
use crate::on_both_backends;
use rally_sdk::wire::{GrantRequest, GrantRole, ScopeKind};
use rally_sdk::RallyClient;
use reqwest::Method;
use std::collections::BTreeSet;

/// Who a route admits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// Admin and support only.
    Staff,
    /// Developers with a grant covering the resource (and admin).
    Granted,
    /// A listing everyone may call, which must not show what the caller may not see.
    Listing,
}

/// Routes outside the matrix: public, or open to any valid token.
const OPEN_ROUTES: &[&str] = &[
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /api/v1/openapi.json",
    "GET /api/v1/docs",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/refresh",
    "POST /api/v1/auth/logout",
    "GET /api/v1/auth/me",
    "POST /api/v1/users",
    "POST /api/v1/users/sign-in",
    "POST /api/v1/users/device-sign-in",
    "POST /api/v1/runtime/token",
    "GET /api/v1/runtime/ws",
    // The image registry's routes: any account, Basic credentials, the registry's secret, or
    // admins only (tests/it/registry.rs).
    "GET /api/v1/registry",
    "GET /api/v1/registry/token",
    "POST /api/v1/registry/credentials",
    "POST /api/v1/registry/setup",
    "POST /api/v1/registry/events",
    // Player-token routes: a player reaches only its own clients and player (tests/it/players.rs).
    "POST /api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/clients",
    "GET /api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/players/me",
    "GET /api/v1/clients/{client}",
    "DELETE /api/v1/clients/{client}",
    "GET /api/v1/clients/{client}/ws",
    "GET /api/v1/clients/{client}/events",
    "POST /api/v1/clients/{client}/commands",
];

const T: &str = "/api/v1/tenants/{tenant}";
const P: &str = "/api/v1/tenants/{tenant}/projects/{project}";
const S: &str = "/api/v1/tenants/{tenant}/projects/{project}/stages/{stage}";

/// Method, path template, rule. Reads first, then creations, then the destructive calls, so a
/// walk leaves the fixture usable for the rest of the walk.
fn matrix() -> Vec<(&'static str, String, Rule)> {
    use Rule::*;
    vec![
        ("GET", "/api/v1/developers".into(), Staff),
        ("GET", "/api/v1/developers/{developer}".into(), Staff),
        ("GET", "/api/v1/tenants".into(), Listing),
        ("GET", T.into(), Granted),
        ("GET", format!("{T}/grants"), Staff),
        ("GET", format!("{T}/projects"), Granted),
        ("GET", P.into(), Granted),
        ("GET", format!("{P}/stages"), Granted),
        ("GET", S.into(), Granted),
        ("GET", format!("{P}/versions"), Granted),
        ("GET", format!("{P}/versions/{{version}}"), Granted),
        ("GET", format!("{P}/versions/{{version}}/bundle"), Granted),
        ("GET", format!("{P}/image-pushes"), Granted),
        ("GET", format!("{P}/versions/{{version}}/builds"), Granted),
        ("GET", format!("{P}/builds/{{build}}"), Granted),
        ("GET", format!("{S}/deployments"), Granted),
        ("GET", format!("{S}/deployments/{{deployment}}"), Granted),
        (
            "GET",
            format!("{S}/deployments/{{deployment}}/runtimes"),
            Granted,
        ),
        (
            "GET",
            format!("{S}/deployments/{{deployment}}/runtimes/{{runtime}}/logs"),
            Granted,
        ),
        ("GET", "/api/v1/audit".into(), Staff),
        ("GET", format!("{T}/audit"), Granted),
        ("GET", format!("{P}/audit"), Granted),
        ("GET", format!("{S}/players/{{user}}"), Granted),
        ("GET", "/api/v1/pools".into(), Staff),
        ("GET", "/api/v1/pools/{pool}".into(), Staff),
        ("GET", "/api/v1/pools/{pool}/servers".into(), Staff),
        ("GET", "/api/v1/pools/{pool}/servers/{server}".into(), Staff),
        (
            "GET",
            "/api/v1/pools/{pool}/servers/{server}/runtimes".into(),
            Staff,
        ),
        ("GET", "/api/v1/servers".into(), Staff),
        ("GET", "/api/v1/nodes".into(), Staff),
        ("POST", "/api/v1/developers".into(), Staff),
        (
            "POST",
            "/api/v1/developers/{developer}/password".into(),
            Staff,
        ),
        (
            "POST",
            "/api/v1/developers/{developer}/disable".into(),
            Staff,
        ),
        (
            "POST",
            "/api/v1/developers/{developer}/enable".into(),
            Staff,
        ),
        ("POST", "/api/v1/tenants".into(), Staff),
        ("POST", format!("{T}/grants"), Staff),
        ("POST", format!("{T}/grants/revoke"), Staff),
        ("POST", format!("{T}/projects"), Granted),
        ("POST", format!("{P}/stages"), Granted),
        ("POST", format!("{P}/versions"), Granted),
        ("POST", format!("{P}/versions/{{version}}/builds"), Granted),
        ("POST", format!("{S}/deployments"), Granted),
        ("POST", "/api/v1/pools".into(), Staff),
        ("POST", "/api/v1/pools/{pool}/servers".into(), Staff),
        ("PUT", "/api/v1/pools/{pool}/strategy".into(), Staff),
        (
            "PUT",
            "/api/v1/pools/{pool}/servers/{server}/status".into(),
            Staff,
        ),
        ("PUT", format!("{S}/pool"), Staff),
        ("PUT", format!("{S}/node"), Staff),
        (
            "DELETE",
            "/api/v1/pools/{pool}/servers/{server}".into(),
            Staff,
        ),
        ("DELETE", "/api/v1/pools/{pool}".into(), Staff),
        (
            "POST",
            format!("{S}/deployments/{{deployment}}/stop"),
            Granted,
        ),
        ("DELETE", format!("{P}/versions/{{version}}"), Granted),
        ("DELETE", S.into(), Granted),
        ("DELETE", P.into(), Granted),
        ("DELETE", T.into(), Staff),
    ]
}

/// Real resources in tenant `alpha`, and the accounts that walk the matrix.
struct Fixture {
    tenant: String,
    project: String,
    stage: String,
    version: String,
    deployment: String,
    /// A runtime of the deployment (a record is enough: the routes read it).
    runtime: String,
    /// A build of the version (a record).
    build: String,
    /// A user with a player on the stage.
    player_user: String,
    /// A developer without grants; also the target of the developer routes.
    bob_id: String,
    admin: RallyClient,
    alice: RallyClient,
    bob: RallyClient,
    mallory: RallyClient,
    bundle: Vec<u8>,
}

pub fn hello_bundle() -> Vec<u8> {
    let directory = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello"));
    rally_sdk::bundle::pack(directory, &rally_sdk::bundle::BundleLimits::default()).unwrap()
}

/// A signed-in developer account.
pub(crate) struct Developer {
    pub(crate) id: String,
    pub(crate) api: RallyClient,
    pub(crate) token: String,
}

/// Creates developer `name` and signs it in.
pub(crate) async fn developer(app: &TestApp, admin: &RallyClient, name: &str) -> Developer {
    let account = admin
        .create_developer(name, "developer-password")
        .await
        .unwrap();
    let tokens = app
        .client()
        .login(name, "developer-password")
        .await
        .unwrap();
    Developer {
        id: account.id,
        api: app.client().authenticated(&tokens.access_token),
        token: tokens.access_token,
    }
}

pub(crate) fn manager_of(tenant: &str, developer: &str) -> (String, GrantRequest) {
    (
        tenant.to_owned(),
        GrantRequest {
            developer: developer.to_owned(),
            scope: ScopeKind::Tenant,
            project: None,
            stage: None,
            role: GrantRole::Manager,
        },
    )
}

async fn fixture(app: &TestApp) -> Fixture {
    let admin = app.admin().await;
    let tenant = admin.create_tenant("Alpha", Some("alpha")).await.unwrap();
    let project = admin
        .create_project("alpha", "Game", Some("game"))
        .await
        .unwrap();
    let stage = admin
        .create_stage("alpha", "game", "Prod", Some("prod"))
        .await
        .unwrap();
    let bundle = hello_bundle();
    let version = admin
        .upload_version("alpha", "game", bundle.clone(), None)
        .await
        .unwrap();
    let deployment = admin
        .deploy("alpha", "game", "prod", "1", serde_json::Value::Null)
        .await
        .unwrap();
    admin.create_tenant("Beta", Some("beta")).await.unwrap();
    admin
        .create_project("beta", "Other game", Some("other"))
        .await
        .unwrap();

    let alice = developer(app, &admin, "alice").await.api;
    let Developer {
        id: bob_id,
        api: bob,
        ..
    } = developer(app, &admin, "bob").await;
    let mallory = developer(app, &admin, "mallory").await.api;
    let (tenant_alias, grant) = manager_of("alpha", "alice");
    admin.grant(&tenant_alias, &grant).await.unwrap();
    let (tenant_alias, grant) = manager_of("beta", "mallory");
    admin.grant(&tenant_alias, &grant).await.unwrap();
    // A pool with a server on this machine's Docker daemon, for the pool routes.
    admin
        .create_pool("walk", rally_sdk::wire::PlacementStrategy::Spread)
        .await
        .unwrap();
    admin
        .register_server("walk", &crate::servers::docker_server("walk-server", 2))
        .await
        .unwrap();
    let runtime = rally_platform::storage::new_id();
    sqlx::query(
        "INSERT INTO runtimes (id, deployment_id, qualifier, status, secret_hash, node_id, pool_kind, created_at) \
         VALUES ($1, $2, 'lobby', 'stopped', 'x', $3, 'process', 0)",
    )
    .bind(&runtime)
    .bind(&deployment.id)
    .bind(&app.state.runtimes.node_id)
    .execute(app.state.database.writer())
    .await
    .unwrap();
    let build = rally_platform::storage::new_id();
    sqlx::query(
        "INSERT INTO builds (id, project_id, version_id, status, error, created_by, created_at) \
         VALUES ($1, $2, $3, 'failed', 'a record for the walk', 'admin', 0)",
    )
    .bind(&build)
    .bind(&project.id)
    .bind(&version.id)
    .execute(app.state.database.writer())
    .await
    .unwrap();
    let anonymous = app.client();
    let user = anonymous.create_user().await.unwrap();
    let tokens = anonymous
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    anonymous
        .authenticated(&tokens.access_token)
        .create_client("alpha", "game", "prod")
        .await
        .unwrap();
    Fixture {
        runtime,
        build,
        player_user: user.user_id,
        tenant: tenant.id,
        project: project.id,
        stage: stage.id,
        version: version.id,
        deployment: deployment.id,
        bob_id,
        admin,
        alice,
        bob,
        mallory,
        bundle,
    }
}

impl Fixture {
    /// The route's path with real ids of tenant `alpha`.
    fn path(&self, template: &str) -> String {
        template
            .replace("{tenant}", &self.tenant)
            .replace("{project}", &self.project)
            .replace("{stage}", &self.stage)
            .replace("{version}", &self.version)
            .replace("{deployment}", &self.deployment)
            .replace("{developer}", &self.bob_id)
            .replace("{runtime}", &self.runtime)
            .replace("{build}", &self.build)
            .replace("{user}", &self.player_user)
            .replace("{pool}", "walk")
            .replace("{server}", "walk-server")
    }

    /// A body the route would accept from someone allowed to call it.
    fn body(&self, method: &str, template: &str, serial: usize) -> (Option<&'static str>, Vec<u8>) {
        let json =
            |value: serde_json::Value| (Some("application/json"), value.to_string().into_bytes());
        if method == "PUT" {
            if template.ends_with("/strategy") {
                return json(serde_json::json!({"strategy": "pack"}));
            }
            if template.ends_with("/status") {
                return json(serde_json::json!({"status": "draining"}));
            }
            if template.ends_with("/pool") {
                return json(serde_json::json!({"pool": "walk"}));
            }
            if template.ends_with("/node") {
                return json(serde_json::json!({"node": "no-such-node"}));
            }
        }
        if method != "POST" {
            return (None, Vec::new());
        }
        if template.ends_with("/pools") {
            return json(serde_json::json!({"name": format!("made-{serial}")}));
        }
        if template.ends_with("/servers") {
            return json(serde_json::json!({
                "name": format!("made-{serial}"),
                "docker": {"url": crate::servers::LOCAL_DOCKER},
                "capacity": {"cpu_millis": 1000, "memory_mb": 512, "runtimes": 2},
            }));
        }
        if template.ends_with("/versions") {
            return (Some("application/gzip"), self.bundle.clone());
        }
        if template.ends_with("/developers") {
            return json(
                serde_json::json!({"username": format!("made-{serial}"), "password": "password-123"}),
            );
        }
        if template.ends_with("/password") {
            return json(serde_json::json!({"password": "another-password"}));
        }
        if template.ends_with("/grants") || template.ends_with("/grants/revoke") {
            return json(
                serde_json::json!({"developer": self.bob_id, "scope": "tenant", "role": "viewer"}),
            );
        }
        if template.ends_with("/deployments") {
            return json(serde_json::json!({"version": self.version}));
        }
        if template.ends_with("/tenants")
            || template.ends_with("/projects")
            || template.ends_with("/stages")
        {
            return json(serde_json::json!({"name": format!("made {serial}")}));
        }
        json(serde_json::json!({}))
    }
}

/// Everything a refused call must leave unchanged, as one comparable value.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let queries = [
        "SELECT COUNT(*) FROM accounts",
        "SELECT COUNT(*) FROM accounts WHERE disabled_at IS NOT NULL",
        "SELECT COUNT(DISTINCT password_hash) FROM accounts",
        "SELECT COUNT(*) FROM tenants",
        "SELECT COUNT(*) FROM projects",
        "SELECT COUNT(*) FROM stages",
        "SELECT COUNT(*) FROM bundles",
        "SELECT COUNT(*) FROM versions WHERE deleted_at IS NULL",
        "SELECT COUNT(*) FROM deployments WHERE status = 'active'",
        "SELECT COUNT(*) FROM deployments",
        "SELECT COUNT(*) FROM grants",
        "SELECT COUNT(*) FROM audit_log",
        "SELECT COUNT(*) FROM idempotency_keys",
        "SELECT COUNT(*) FROM players",
        "SELECT COUNT(*) FROM clients",
        "SELECT COUNT(*) FROM pools",
        "SELECT COUNT(*) FROM pools WHERE strategy = 'spread'",
        "SELECT COUNT(*) FROM servers",
        "SELECT COUNT(*) FROM servers WHERE status = 'enabled'",
        "SELECT COUNT(*) FROM stages WHERE pool = 'local'",
        "SELECT COUNT(*) FROM builds",
        "SELECT COUNT(*) FROM image_pushes",
    ];
    let mut values = Vec::new();
    for query in queries {
        let count: i64 = sqlx::query_scalar(query)
            .fetch_one(app.state.database.reader())
            .await
            .unwrap();
        values.push(format!("{query} = {count}"));
    }
    values
}

async fn call(
    app: &TestApp,
    client: &RallyClient,
    fixture: &Fixture,
    method: &str,
    template: &str,
    serial: usize,
) -> (u16, serde_json::Value) {
    let token = bearer(client).await;
    let (content_type, body) = fixture.body(method, template, serial);
    raw(
        app,
        method.parse::<Method>().unwrap(),
        &fixture.path(template),
        content_type,
        body,
        Some(&token),
    )
    .await
}

/// The access token a client presents (read back through `me`-less means: the client keeps it).
async fn bearer(client: &RallyClient) -> String {
    client
        .access_token()
        .expect("an authenticated client")
        .to_owned()
}

async fn every_route_is_in_the_matrix(backend: Backend) {
    let app = spawn_app(backend).await;
    let document: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut walked: BTreeSet<String> = matrix()
        .into_iter()
        .map(|(method, template, _)| format!("{method} {template}"))
        .collect();
    walked.extend(OPEN_ROUTES.iter().map(|route| route.to_string()));
    let missing: Vec<_> = documented.difference(&walked).collect();
    let stale: Vec<_> = walked.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the permission matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix routes the API does not have: {stale:?}"
    );
}

async fn outsiders_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixture = fixture(&app).await;
    for (who, client) in [
        ("bob (no grant)", &fixture.bob),
        ("mallory (other tenant)", &fixture.mallory),
    ] {
        for (serial, (method, template, rule)) in matrix().into_iter().enumerate() {
            let before = snapshot(&app).await;
            let (status, body) = call(&app, client, &fixture, method, &template, serial).await;
            let route = format!("{who}: {method} {template}");
            match rule {
                Rule::Listing => {
                    assert_eq!(status, 200, "{route}");
                    assert!(
                        !body.to_string().contains(&fixture.tenant),
                        "{route} shows tenant alpha: {body}"
                    );
                }
                Rule::Staff | Rule::Granted => {
                    assert!(status == 403 || status == 404, "{route}: {status} {body}");
                    let code = body["error"]["code"].as_str().unwrap_or_default();
                    assert!(
                        code == "forbidden" || code == "not_found",
                        "{route}: {body}"
                    );
                }
            }
            assert_eq!(snapshot(&app).await, before, "{route} changed the database");
        }
    }
}

async fn admin_and_granted_developer_pass(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixture = fixture(&app).await;
    // The developer first: the admin's walk disables and re-enables accounts.
    for (who, client) in [
        ("alice (tenant manager)", &fixture.alice),
        ("admin", &fixture.admin),
    ] {
        for (serial, (method, template, rule)) in matrix().into_iter().enumerate() {
            let (status, body) =
                call(&app, client, &fixture, method, &template, serial + 1000).await;
            let route = format!("{who}: {method} {template}");
            if rule == Rule::Staff && who.starts_with("alice") {
                assert_eq!(status, 403, "{route}: {body}");
                continue;
            }
            // Allowed through: success, or a conflict that only someone allowed can hit.
            assert!(
                (200..300).contains(&status) || status == 409,
                "{route}: {status} {body}"
            );
            if rule == Rule::Listing {
                assert!(
                    body.to_string().contains(&fixture.tenant),
                    "{route}: {body}"
                );
            }
        }
    }
}

on_both_backends!(
    every_route_is_in_the_matrix,
    outsiders_are_refused_and_change_nothing,
    admin_and_granted_developer_pass,
);

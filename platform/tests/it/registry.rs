//! The studio's image registry: Debian's `docker-registry` (distribution 2.8) configured by
//! `rally registry setup` against a test platform, and this machine's Docker daemon pushing and
//! pulling with developers' credentials. The platform signs the tokens and scopes them by
//! grants; the registry's notifications link pushed images to versions. Images and registries
//! a test makes are removed, also when it fails.

use crate::cli::rally;
use crate::helpers::{raw, spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::permissions::{developer, hello_bundle, manager_of};
use base64::Engine;
use rally_sdk::wire::RegistrySetupRequest;
use rally_sdk::RallyClient;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `docker-registry`, configured by the platform, killed on drop; and the local
/// images pushed to it, removed on drop.
pub struct Registry {
    pub address: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Tagged and pulled by digest alike (the latter have no tag).
        let images = Command::new("docker")
            .args(["images", "--format", "{{.Repository}} {{.ID}}"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        for line in images.lines() {
            if let Some((repository, id)) = line.split_once(' ') {
                if repository.starts_with(&format!("{}/", self.address)) {
                    // A test's platform may still run containers of it.
                    let users = Command::new("docker")
                        .args(["ps", "-aq", "--filter"])
                        .arg(format!("ancestor={id}"))
                        .output()
                        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                        .unwrap_or_default();
                    for container in users.split_whitespace() {
                        let _ = Command::new("docker")
                            .args(["rm", "-f", container])
                            .output();
                    }
                    let _ = Command::new("docker").args(["rmi", "-f", id]).output();
                }
            }
        }
    }
}

/// A free loopback address for a registry.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

impl Registry {
    /// Configures a registry at `app`'s `registry_address` through the API (as
    /// `rally registry setup` does) and starts it.
    pub async fn start(app: &TestApp, admin: &RallyClient) -> Registry {
        let address = app
            .config
            .registry_address
            .clone()
            .expect("registry_address");
        let dir = tempfile::tempdir().unwrap();
        let certificate_path = dir.path().join("token.crt");
        let setup = admin
            .registry_setup(&RegistrySetupRequest {
                platform_url: app.url.clone(),
                storage_dir: dir.path().join("storage").to_string_lossy().into_owned(),
                certificate_path: certificate_path.to_string_lossy().into_owned(),
            })
            .await
            .unwrap();
        std::fs::write(&certificate_path, &setup.certificate).unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, &setup.config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("docker-registry runs (scripts/setup installs it)");
        let registry = Registry {
            address,
            child,
            dir,
        };
        let started = std::time::Instant::now();
        loop {
            let answer = reqwest::get(format!("http://{}/v2/", registry.address)).await;
            if let Ok(answer) = answer {
                assert_eq!(answer.status(), 401, "the registry asks for a token");
                let challenge = answer.headers()["www-authenticate"].to_str().unwrap();
                assert!(
                    challenge.contains(&format!("{}/api/v1/registry/token", app.url)),
                    "{challenge}"
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry did not start: {}",
                registry.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        registry
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

/// `docker --config <its own directory> args...`: each developer has their own logins.
pub struct DockerUser {
    config: tempfile::TempDir,
}

impl DockerUser {
    pub fn new() -> DockerUser {
        DockerUser {
            config: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut command = tokio::process::Command::new("docker");
        command
            .arg("--config")
            .arg(self.config.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let mut input = child.stdin.take().unwrap();
            if let Some(stdin) = stdin {
                input.write_all(stdin.as_bytes()).await.unwrap();
            }
        }
        let output = child.wait_with_output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    pub async fn login(&self, address: &str, username: &str, password: &str) -> (bool, String) {
        self.run(
            &["login", address, "--username", username, "--password-stdin"],
            Some(password),
        )
        .await
    }
}

/// Makes a one-file image tagged `reference` on the local daemon: its content is `marker`, so
/// each test's image has its own digest.
pub fn tiny_image(reference: &str, marker: &str) {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(marker.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, "marker.txt", marker.as_bytes())
        .unwrap();
    let mut child = Command::new("docker")
        .args(["import", "-", reference])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &archive.into_inner().unwrap(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "docker import {reference}");
}

/// The digest the registry gave `reference` when it was pushed.
fn pushed_digest(reference: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", "{{json .RepoDigests}}", reference])
        .output()
        .unwrap();
    let digests: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    let repository = reference.rsplit_once(':').unwrap().0;
    digests
        .into_iter()
        .find_map(|digest| {
            digest
                .strip_prefix(&format!("{repository}@"))
                .map(str::to_owned)
        })
        .expect("pushed")
}

/// A platform with a registry address, tenants `studio` (project `hello`, version 1) and
/// `rival` (project `game`), developer `ada` managing `studio` and `eve` managing `rival`.
struct Studio {
    app: TestApp,
    admin: RallyClient,
    ada: RallyClient,
    eve: RallyClient,
}

async fn studio(backend: Backend) -> Studio {
    let address = free_address();
    let app = spawn_app_with(backend, |config| {
        config.registry_address = Some(address);
    })
    .await;
    let admin = app.admin().await;
    for (tenant, project) in [("studio", "hello"), ("rival", "game")] {
        admin.create_tenant(tenant, Some(tenant)).await.unwrap();
        admin
            .create_project(tenant, project, Some(project))
            .await
            .unwrap();
    }
    admin
        .upload_version("studio", "hello", hello_bundle(), None)
        .await
        .unwrap();
    let ada = developer(&app, &admin, "ada").await;
    let eve = developer(&app, &admin, "eve").await;
    for (tenant, who) in [("studio", &ada.id), ("rival", &eve.id)] {
        let (tenant, grant) = manager_of(tenant, who);
        admin.grant(&tenant, &grant).await.unwrap();
    }
    Studio {
        app,
        admin,
        ada: ada.api,
        eve: eve.api,
    }
}

/// Waits until version `number` of studio/hello has an image.
async fn linked_image(studio: &Studio, number: &str) -> rally_sdk::wire::VersionImage {
    for _ in 0..100 {
        let version = studio
            .ada
            .get_version("studio", "hello", number)
            .await
            .unwrap();
        if let Some(image) = version.image {
            return image;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("version {number} was not linked to an image");
}

async fn developers_push_and_pull_their_own_projects_only(backend: Backend) {
    let studio = studio(backend).await;
    let registry = Registry::start(&studio.app, &studio.admin).await;
    let address = registry.address.clone();

    // Ada logs in with her password and pushes an image tagged with version 1.
    let ada = DockerUser::new();
    let (ok, output) = ada.login(&address, "ada", "developer-password").await;
    assert!(ok, "{output}\n{}", registry.log());
    let reference = format!("{address}/studio/hello:v1");
    tiny_image(&reference, &format!("hello from {}", studio.app.url));
    let (ok, output) = ada.run(&["push", &reference], None).await;
    assert!(ok, "{output}\n{}", registry.log());

    // The registry's notification links it to the version, by digest.
    let digest = pushed_digest(&reference);
    let image = linked_image(&studio, "1").await;
    assert_eq!(image.digest, digest);
    assert_eq!(image.reference, format!("{address}/studio/hello@{digest}"));
    assert_eq!(image.source, "push");
    assert_eq!(image.pushed_by.as_deref(), Some("ada"));

    // Eve (another tenant) signs in with a `rally registry login` credential: it works, but
    // she may neither pull nor push studio/hello.
    let eve = DockerUser::new();
    let credential = studio.eve.registry_credential(None).await.unwrap();
    assert_eq!(credential.address.as_deref(), Some(address.as_str()));
    let (ok, output) = eve
        .login(&address, &credential.username, &credential.password)
        .await;
    assert!(ok, "{output}");
    let (ok, output) = eve.run(&["pull", &reference], None).await;
    assert!(!ok, "eve pulled another tenant's image: {output}");
    assert!(
        output.contains("denied") || output.contains("unauthorized"),
        "{output}"
    );
    let theirs = format!("{address}/studio/hello:v2");
    tiny_image(&theirs, "eve was here");
    let (ok, output) = eve.run(&["push", &theirs], None).await;
    assert!(!ok, "eve pushed to another tenant's project: {output}");
    // Her own project is hers.
    let own = format!("{address}/rival/game:latest");
    tiny_image(&own, "eve's own");
    let (ok, output) = eve.run(&["push", &own], None).await;
    assert!(ok, "{output}");

    // A wrong password and a credential presented under another name are refused at login.
    let stranger = DockerUser::new();
    let (ok, _) = stranger.login(&address, "ada", "not-her-password").await;
    assert!(!ok);
    let (ok, _) = stranger.login(&address, "ada", &credential.password).await;
    assert!(!ok, "eve's credential worked as ada's");

    // Ada pulls her image back by digest after it is gone locally.
    let by_digest = format!("{address}/studio/hello@{digest}");
    Command::new("docker")
        .args(["rmi", "-f", &reference])
        .output()
        .unwrap();
    let (ok, output) = ada.run(&["pull", &by_digest], None).await;
    assert!(ok, "{output}");
    Command::new("docker")
        .args(["rmi", "-f", &by_digest])
        .output()
        .unwrap();
}

/// The claims of a registry token, unverified.
fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn token_request(
    app: &TestApp,
    basic: Option<(&str, &str)>,
    query: &str,
) -> (u16, serde_json::Value) {
    let mut request =
        reqwest::Client::new().get(format!("{}/api/v1/registry/token?{query}", app.url));
    if let Some((username, password)) = basic {
        request = request.basic_auth(username, Some(password));
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

async fn tokens_grant_only_what_the_caller_may_have(backend: Backend) {
    let studio = studio(backend).await;
    let app = &studio.app;
    let scope = "service=rally-registry&scope=repository:studio/hello:push,pull";

    let (status, answer) = token_request(app, Some(("ada", "developer-password")), scope).await;
    assert_eq!(status, 200, "{answer}");
    let claims = claims_of(answer["token"].as_str().unwrap());
    assert_eq!(claims["aud"], "rally-registry");
    assert_eq!(claims["iss"], "rally");
    assert_eq!(claims["sub"], "ada");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "studio/hello", "actions": ["push", "pull"]}])
    );

    // Eve asks for studio/hello and for a repository that is no project: nothing granted.
    let (status, answer) = token_request(
        app,
        Some(("eve", "developer-password")),
        &format!("{scope}&scope=repository:library/debian:pull&scope=registry:catalog:*"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        claims_of(answer["token"].as_str().unwrap())["access"],
        serde_json::json!([])
    );
    // The admin may list the catalog.
    let (_, answer) = token_request(
        app,
        Some(("admin", crate::helpers::ADMIN_PASSWORD)),
        "scope=registry:catalog:*",
    )
    .await;
    assert_eq!(
        claims_of(answer["token"].as_str().unwrap())["access"][0]["actions"],
        serde_json::json!(["*"])
    );

    // No credentials, wrong ones, a malformed scope, another service: clear refusals.
    let (status, answer) = token_request(app, None, scope).await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (401, "missing_credentials")
    );
    let (status, answer) = token_request(app, Some(("ada", "wrong")), scope).await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (401, "invalid_credentials")
    );
    let (status, answer) = token_request(
        app,
        Some(("ada", "developer-password")),
        "scope=repository-without-actions",
    )
    .await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (400, "invalid_scope")
    );
    let (status, answer) =
        token_request(app, Some(("ada", "developer-password")), "service=other").await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (400, "unknown_service")
    );

    // A disabled account's credential stops working at once.
    let credential = studio.ada.registry_credential(Some(600)).await.unwrap();
    let (status, _) = token_request(app, Some(("ada", &credential.password)), scope).await;
    assert_eq!(status, 200);
    studio
        .admin
        .set_developer_disabled("ada", true)
        .await
        .unwrap();
    let (status, answer) = token_request(app, Some(("ada", &credential.password)), scope).await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (401, "account_disabled")
    );
    let (status, answer) = raw(
        app,
        reqwest::Method::POST,
        "/api/v1/registry/credentials",
        Some("application/json"),
        r#"{"ttl_secs": 5}"#,
        Some(studio.eve.access_token().unwrap()),
    )
    .await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (400, "invalid_ttl")
    );
    // Only admins configure the registry.
    let error = studio
        .eve
        .registry_setup(&RegistrySetupRequest {
            platform_url: app.url.clone(),
            storage_dir: "/tmp/x".to_owned(),
            certificate_path: "/tmp/x.crt".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("forbidden"));
}

async fn the_registry_refuses_forged_and_expired_tokens(backend: Backend) {
    let studio = studio(backend).await;
    let registry = Registry::start(&studio.app, &studio.admin).await;
    let url = format!("http://{}/v2/studio/hello/tags/list", registry.address);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| {
        serde_json::json!({
            "iss": "rally", "sub": "ada", "aud": "rally-registry",
            "exp": exp, "nbf": now - 300, "iat": now - 300, "jti": rally_platform::storage::new_id(),
            "access": [{"type": "repository", "name": "studio/hello", "actions": ["pull"]}],
        })
    };
    let status = |token: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Signed by the platform's key and current: the registry takes it (the repository is
    // empty: 404 NAME_UNKNOWN, not 401).
    let signer = &studio.app.state.registry;
    assert_eq!(status(signer.sign(&claims(now + 300))).await, 404);
    // Expired (past the registry's leeway).
    assert_eq!(status(signer.sign(&claims(now - 120))).await, 401);
    // The same claims signed by another key under the platform's key id.
    let forger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(signer.key_id().to_owned());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(now + 300),
        &jsonwebtoken::EncodingKey::from_ec_pem(forger.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(status(forged).await, 401);
    // A login credential is not a registry token.
    let credential = studio.ada.registry_credential(None).await.unwrap();
    assert_eq!(status(credential.password).await, 401);
}

/// Waits until `count` pushes to studio/`project` were reported; them, newest first.
pub async fn pushes_reported(
    client: &RallyClient,
    project: &str,
    count: usize,
) -> Vec<rally_sdk::wire::ImagePush> {
    let mut pushes = Vec::new();
    for _ in 0..100 {
        pushes = client.list_image_pushes("studio", project).await.unwrap();
        if pushes.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pushes.len(), count, "{pushes:?}");
    pushes
}

async fn pushes_that_name_no_version_are_recorded_and_link_nothing(backend: Backend) {
    let studio = studio(backend).await;
    let app = &studio.app;
    let registry = Registry::start(app, &studio.admin).await;
    let address = registry.address.clone();
    let ada = DockerUser::new();

    // Ada signs Docker in through the CLI (`rally registry login` runs `docker login`).
    let config_dir = tempfile::tempdir().unwrap();
    let docker_config = ada.config.path().to_string_lossy().into_owned();
    let output = rally(
        config_dir.path(),
        &["registry", "login", "--url", &app.url],
        &[
            ("RALLY_TOKEN", studio.ada.access_token().unwrap()),
            ("DOCKER_CONFIG", &docker_config),
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = std::fs::read_to_string(ada.config.path().join("config.json")).unwrap();
    assert!(stored.contains(&address), "{stored}");
    assert!(!stored.contains("developer-password"));

    for tag in ["v99", "latest"] {
        let reference = format!("{address}/studio/hello:{tag}");
        tiny_image(&reference, &format!("{tag} {}", app.url));
        let (ok, output) = ada.run(&["push", &reference], None).await;
        assert!(ok, "{output}");
    }
    // A version id of another project, as a tag.
    let rival = studio
        .admin
        .upload_version("rival", "game", hello_bundle(), None)
        .await
        .unwrap();
    let reference = format!("{address}/studio/hello:{}", rival.id);
    tiny_image(&reference, &format!("wrong project {}", app.url));
    let (ok, output) = ada.run(&["push", &reference], None).await;
    assert!(ok, "{output}");

    let pushes = pushes_reported(&studio.ada, "hello", 3).await;
    for push in &pushes {
        assert_eq!(push.outcome, "ignored", "{push:?}");
        assert!(push.detail.contains("names no version"), "{push:?}");
        assert_eq!(push.actor.as_deref(), Some("ada"));
    }
    let version = studio
        .ada
        .get_version("studio", "hello", "1")
        .await
        .unwrap();
    assert_eq!(version.image, None);
    // Eve cannot read studio's pushes.
    assert!(studio
        .eve
        .list_image_pushes("studio", "hello")
        .await
        .is_err());

    // Version 1 is linked once: a second image pushed to its tag is recorded, not linked.
    let first = format!("{address}/studio/hello:v1");
    tiny_image(&first, &format!("first {}", app.url));
    assert!(ada.run(&["push", &first], None).await.0);
    let linked = linked_image(&studio, "1").await;
    tiny_image(&first, &format!("second {}", app.url));
    assert!(ada.run(&["push", &first], None).await.0);
    let pushes = pushes_reported(&studio.ada, "hello", 5).await;
    assert_eq!(pushes[0].outcome, "ignored", "{pushes:?}");
    assert!(pushes[0].detail.contains("set once"), "{pushes:?}");
    assert_eq!(linked_image(&studio, "1").await, linked);
}

async fn the_webhook_takes_only_the_registry(backend: Backend) {
    let studio = studio(backend).await;
    let app = &studio.app;
    let event = serde_json::json!({"events": [{
        "id": "forged-1", "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                   "repository": "studio/hello", "tag": "v1"},
        "actor": {"name": "mallory"}
    }]})
    .to_string();
    let post = |authorization: Option<String>, body: String| async move {
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/v1/registry/events", app.url))
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(body);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        (
            status,
            answer.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    // Before any setup there is no secret at all.
    let (status, answer) = post(None, event.clone()).await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (401, "invalid_webhook_secret")
    );
    let registry = Registry::start(app, &studio.admin).await;
    let config = std::fs::read_to_string(registry.dir.path().join("config.yml")).unwrap();
    let secret = config
        .lines()
        .find_map(|line| line.trim().strip_prefix("Authorization: [\"Bearer "))
        .and_then(|rest| rest.strip_suffix("\"]"))
        .expect("the secret header in the config")
        .to_owned();
    for authorization in [
        None,
        Some("Bearer guessed".to_owned()),
        Some(secret.clone()),
    ] {
        let (status, answer) = post(authorization, event.clone()).await;
        assert_eq!(
            (status, crate::helpers::code(&answer)),
            (401, "invalid_webhook_secret")
        );
    }
    let version = studio
        .ada
        .get_version("studio", "hello", "1")
        .await
        .unwrap();
    assert_eq!(version.image, None, "a forged notification linked an image");

    // The registry's own secret is taken; a malformed body then gets a clear error.
    let (status, answer) = post(Some(format!("Bearer {secret}")), "{".to_owned()).await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (400, "invalid_notification")
    );
    // A flood: many events in one body is refused whole, nothing recorded.
    let flood: Vec<serde_json::Value> = (0..101)
        .map(|n| {
            serde_json::json!({"id": format!("flood-{n}"), "action": "push",
            "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "digest": "sha256:00", "repository": "studio/hello", "tag": "v1"}})
        })
        .collect();
    let (status, answer) = post(
        Some(format!("Bearer {secret}")),
        serde_json::json!({"events": flood}).to_string(),
    )
    .await;
    assert_eq!(
        (status, crate::helpers::code(&answer)),
        (400, "too_many_events")
    );
    assert!(studio
        .ada
        .list_image_pushes("studio", "hello")
        .await
        .unwrap()
        .is_empty());
}

on_both_backends!(
    developers_push_and_pull_their_own_projects_only,
    tokens_grant_only_what_the_caller_may_have,
    the_registry_refuses_forged_and_expired_tokens,
    pushes_that_name_no_version_are_recorded_and_link_nothing,
    the_webhook_takes_only_the_registry,
);

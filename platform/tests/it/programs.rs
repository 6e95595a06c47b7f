//! Program runtimes (`runtime.kind = "program"`): a bundle that carries its own runtime program,
//! run directly by the local-process pool with the runtime's environment; and a version whose
//! image a developer pushes (`runtime.image = "push"`), linked by the registry's notification
//! and run by a Docker pool. The program here is a shell script that starts `rally-runtime` on
//! a Lua game inside the bundle: it knows nothing but the environment the platform gives it.

use crate::docker::{docker_app_on, inspect, placed};
use crate::helpers::Backend;
use crate::on_both_backends;
use crate::players::{app, connect, deploy, deploy_version, player};
use crate::registry::{free_address, DockerUser, Registry};
use crate::tictactoe::{
    back_in_lobby, next_game_message, play, start_match, two_players_in_a_lobby,
};
use rally_sdk::bundle::{pack, BundleLimits};
use std::path::Path;
use std::process::Command;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");

/// examples/hello's manifest with its `[runtime]` table replaced by `runtime`.
fn manifest_with(runtime: &str) -> String {
    let hello = std::fs::read_to_string(Path::new(HELLO).join("rally.toml")).unwrap();
    let start = hello.find("[runtime]").unwrap();
    let end = hello.find("[[modes]]").unwrap();
    format!("{}{runtime}\n\n{}", &hello[..start], &hello[end..])
}

fn write(path: &Path, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// examples/hello's files under `directory` (the Lua game a program runs).
fn hello_files(directory: &Path) {
    for file in ["rally.toml", "lobby.lua", "match.lua"] {
        write(
            &directory.join(file),
            &std::fs::read(Path::new(HELLO).join(file)).unwrap(),
            0o644,
        );
    }
}

/// A program bundle: `server`, a script that runs this build's `rally-runtime` on the Lua game
/// in `game/`, with `mode` as the script's permissions.
fn program_bundle(mode: u32, program: &str) -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    write(
        &directory.path().join("rally.toml"),
        manifest_with(&format!(
            "[runtime]\nkind = \"program\"\nprogram = \"{program}\"\n"
        ))
        .as_bytes(),
        0o644,
    );
    let runtime = crate::runtimes::runtime_binary();
    write(
        &directory.path().join("server"),
        format!(
            "#!/bin/sh\n# The runtime's environment is all it has: RALLY_RUNTIME_ID, RALLY_RUNTIME_SECRET,\n\
             # RALLY_QUALIFIER, RALLY_PLATFORM_URL, and RALLY_BUNDLE (this directory).\n\
             test -n \"$RALLY_RUNTIME_SECRET\" || exit 2\n\
             RALLY_BUNDLE=\"$RALLY_BUNDLE/game\" exec {} \n",
            runtime.display()
        )
        .as_bytes(),
        mode,
    );
    hello_files(&directory.path().join("game"));
    pack(directory.path(), &BundleLimits::default()).unwrap()
}

async fn a_program_runtime_runs_on_the_local_pool(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, deployment) = deploy(
        &app,
        program_bundle(0o755, "server"),
        serde_json::json!({"min_lobbies": 1}),
    )
    .await;
    let version = admin.get_version("studio", "game", "1").await.unwrap();
    assert_eq!(version.manifest["runtime"]["kind"], "program");
    let mut socket = connect(&app, &player(&app).await).await;
    socket.greeted_and_assigned().await;
    socket.echo("hello, program").await;
    let lobby = runtimes_of(&admin, &deployment).await;
    assert_eq!(lobby.pool_kind, "process");
    app.stop().await;
}

/// The deployment's running lobby, placed.
async fn runtimes_of(
    admin: &rally_sdk::RallyClient,
    deployment: &str,
) -> rally_sdk::wire::RuntimeInfo {
    placed(admin, deployment, rally_sdk::runtime::Qualifier::Lobby).await
}

async fn program_bundles_that_cannot_run_are_refused(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let admin = crate::management::studio(&app).await;
    for (bundle, code) in [
        (program_bundle(0o644, "server"), "program_not_executable"),
        (program_bundle(0o755, "bin/missing"), "entry_missing"),
    ] {
        let error = admin
            .upload_version("studio", "game", bundle, None)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(code), "{error}");
    }
    assert!(admin
        .list_versions("studio", "game")
        .await
        .unwrap()
        .is_empty());

    // A version whose image is pushed has nothing to run on the local pool, nothing to build.
    let pushed = tempfile::tempdir().unwrap();
    write(
        &pushed.path().join("rally.toml"),
        manifest_with("[runtime]\nkind = \"program\"\nimage = \"push\"\n").as_bytes(),
        0o644,
    );
    admin
        .upload_version(
            "studio",
            "game",
            pack(pushed.path(), &BundleLimits::default()).unwrap(),
            None,
        )
        .await
        .unwrap();
    let error = admin
        .deploy("studio", "game", "default", "1", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("image_only_version"), "{error}");
    // A program in a launcher container is refused up front.
    admin
        .upload_version("studio", "game", program_bundle(0o755, "server"), None)
        .await
        .unwrap();
    let error = admin
        .deploy(
            "studio",
            "game",
            "default",
            "2",
            serde_json::json!({"docker_placement": "launcher"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_deployment_config"), "{error}");
}

/// The "done when": a developer pushes a program runtime with their own credentials; it
/// is linked to the version, deployed, and a player is served by it on a Docker pool.
async fn a_pushed_program_runtime_is_linked_and_deployed(backend: Backend) {
    let address = free_address();
    let (app, _cleanup) = docker_app_on(backend, &[("roomy", 8)], |config| {
        config.registry_address = Some(address.clone());
    })
    .await;
    let admin = app.admin().await;
    let registry = Registry::start(&app, &admin).await;
    let ada = crate::permissions::developer(&app, &admin, "ada").await;
    let (tenant, grant) = crate::permissions::manager_of("studio", &ada.id);
    admin.grant(&tenant, &grant).await.unwrap();

    // The version: examples/custom-runtime, tic-tac-toe whose image is pushed.
    let example = Path::new(HELLO).join("../custom-runtime");
    let version = ada
        .api
        .upload_version(
            "studio",
            "game",
            pack(&example, &BundleLimits::default()).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert!(ada
        .api
        .list_builds("studio", "game", "1")
        .await
        .unwrap()
        .is_empty());
    let error = ada
        .api
        .deploy("studio", "game", "default", "1", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("image_missing"), "{error}");
    let error = ada
        .api
        .start_build("studio", "game", "1")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("version_image_pushed"), "{error}");

    // The developer's image: a base with rally-runtime, and a Dockerfile that adds the game
    // and says where it is (RALLY_BUNDLE).
    let base = base_image(&format!("rally-test-base-{}", version.id));
    let context = tempfile::tempdir().unwrap();
    let tictactoe = Path::new(HELLO).join("../tictactoe");
    for file in ["rally.toml", "lobby.lua", "match.lua", "messages.lua"] {
        let content = std::fs::read(tictactoe.join(file)).unwrap();
        write(&context.path().join("app").join(file), &content, 0o644);
    }
    let reference = format!("{address}/studio/game:v1");
    docker_build(
        context.path(),
        &format!(
            "FROM {}\nCOPY app /app\nENV RALLY_BUNDLE=/app\nENTRYPOINT [\"/rally-runtime\"]\n",
            base.0
        ),
        &reference,
    );

    let docker = DockerUser::new();
    let (ok, output) = docker.login(&address, "ada", "developer-password").await;
    assert!(ok, "{output}");
    let (ok, output) = docker.run(&["push", &reference], None).await;
    assert!(ok, "{output}\n{}", registry.log());

    let mut image = None;
    for _ in 0..100 {
        image = ada
            .api
            .get_version("studio", "game", "1")
            .await
            .unwrap()
            .image;
        if image.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let image = image.expect("the push linked the image");
    assert_eq!(image.source, "push");
    assert_eq!(image.pushed_by.as_deref(), Some("ada"));
    let deployment =
        deploy_version(&ada.api, "studio", 1, serde_json::json!({"min_lobbies": 1})).await;
    // Two players play a match in it.
    let (mut first, mut second) = two_players_in_a_lobby(&app).await;
    let (x, o) = start_match(&mut first, &mut second).await;
    let in_match = placed(&admin, &deployment, rally_sdk::runtime::Qualifier::Match).await;
    assert_eq!(in_match.pool_kind, "docker");
    let container = in_match.handle.expect("in a container");
    assert_eq!(inspect(&container, "{{.Config.Image}}"), image.reference);
    play(x, o, &[0, 3, 1, 4, 2]).await;
    assert_eq!(next_game_message(x, "over").await["winner"], "x");
    assert_eq!(back_in_lobby(o).await["losses"], 1);
    app.stop().await;
}

/// `examples/custom-runtime` is a valid version, and what the platform knows of its game (modes,
/// user data, deployment defaults) is what the image it pushes runs: tic-tac-toe's.
#[test]
fn the_custom_runtime_example_describes_the_game_its_image_runs() {
    let manifest_of = |example: &str| {
        let directory = Path::new(HELLO).join("..").join(example);
        let archive = pack(&directory, &BundleLimits::default()).unwrap();
        rally_sdk::bundle::inspect(&archive, &BundleLimits::default())
            .unwrap()
            .manifest
    };
    let custom = manifest_of("custom-runtime");
    let tictactoe = manifest_of("tictactoe");
    assert_eq!(
        custom.runtime.kind,
        rally_sdk::manifest::RuntimeKind::Program
    );
    assert_eq!(custom.runtime.image, rally_sdk::manifest::ImageSource::Push);
    assert_eq!(custom.modes, tictactoe.modes);
    assert_eq!(custom.user_data, tictactoe.user_data);
    assert_eq!(custom.deployment, tictactoe.deployment);
}

/// Removes a local image when dropped.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A base image with what a program needs that the bundle does not carry: `/bin/sh` and
/// `rally-runtime`, with their libraries, as a studio's base image would hold its engine's.
fn base_image(name: &str) -> RemoveImage {
    let layer = rally_platform::images::program_layer(&crate::runtimes::runtime_binary()).unwrap();
    let bare = format!("{name}-bare:1");
    let mut import = Command::new("docker")
        .args(["import", "-", &bare])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &layer).unwrap();
    assert!(import.wait().unwrap().success());
    let context = tempfile::tempdir().unwrap();
    // The shell needs no library that rally-runtime does not.
    write(
        &context.path().join("sh"),
        &std::fs::read("/bin/sh").unwrap(),
        0o755,
    );
    let image = format!("{name}:1");
    docker_build(
        context.path(),
        &format!("FROM {bare}\nCOPY sh /bin/sh\n"),
        &image,
    );
    let _ = Command::new("docker").args(["rmi", &bare]).output();
    RemoveImage(image)
}

/// `docker build` (the classic builder: no BuildKit here) of `context` with `dockerfile`.
fn docker_build(context: &Path, dockerfile: &str, tag: &str) {
    write(&context.join("Dockerfile"), dockerfile.as_bytes(), 0o644);
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// A program bundle whose script runs the base image's `rally-runtime` on its Lua game.
fn program_on_base_bundle() -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    write(
        &directory.path().join("rally.toml"),
        manifest_with("[runtime]\nkind = \"program\"\nprogram = \"bin/server\"\n").as_bytes(),
        0o644,
    );
    write(
        &directory.path().join("bin/server"),
        b"#!/bin/sh\nRALLY_BUNDLE=\"$RALLY_BUNDLE/game\" exec /rally-runtime\n",
        0o755,
    );
    hello_files(&directory.path().join("game"));
    pack(directory.path(), &BundleLimits::default()).unwrap()
}

/// A program runtime on Docker pools, on the configured base image: built by the builder and
/// pushed when there is a registry, made on the server when there is none; a player is served
/// by it either way.
async fn a_program_runtime_runs_in_a_container_on_its_base_image(backend: Backend) {
    let base = base_image(&format!(
        "rally-test-progbase-{}",
        rally_platform::storage::new_id()
    ));
    let address = free_address();
    let (app, _cleanup) = docker_app_on(backend, &[("roomy", 8)], |config| {
        config.registry_address = Some(address);
        config.program_base_image = Some(base.0.clone());
    })
    .await;
    let admin = app.admin().await;
    let _registry = Registry::start(&app, &admin).await;
    admin
        .upload_version("studio", "game", program_on_base_bundle(), None)
        .await
        .unwrap();
    let build = admin
        .list_builds("studio", "game", "1")
        .await
        .unwrap()
        .remove(0);
    let mut built = build.clone();
    for _ in 0..600 {
        built = admin.get_build("studio", "game", &build.id).await.unwrap();
        if built.status.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        built.status,
        rally_sdk::wire::BuildStatus::Done,
        "{}",
        built.log
    );
    assert!(
        built.log.contains(&format!("on base image {}", base.0)),
        "{}",
        built.log
    );
    let deployment =
        deploy_version(&admin, "studio", 1, serde_json::json!({"min_lobbies": 1})).await;
    let mut socket = connect(&app, &player(&app).await).await;
    socket.greeted_and_assigned().await;
    socket.echo("hello from the built program").await;
    let lobby = runtimes_of(&admin, &deployment).await;
    assert_eq!(
        inspect(lobby.handle.as_deref().unwrap(), "{{.Config.Image}}"),
        built.reference.unwrap()
    );
    app.stop().await;

    // No registry: the server makes the image itself, on the same base.
    let (app, _cleanup) = docker_app_on(backend, &[("roomy", 8)], |config| {
        config.program_base_image = Some(base.0.clone());
    })
    .await;
    let (admin, deployment) = deploy(
        &app,
        program_on_base_bundle(),
        serde_json::json!({"min_lobbies": 1}),
    )
    .await;
    let mut socket = connect(&app, &player(&app).await).await;
    socket.greeted_and_assigned().await;
    socket.echo("hello from the program made here").await;
    let lobby = runtimes_of(&admin, &deployment).await;
    let image = inspect(lobby.handle.as_deref().unwrap(), "{{.Config.Image}}");
    assert!(image.contains("-program-"), "{image}");
    app.stop().await;
}

on_both_backends!(
    a_program_runtime_runs_in_a_container_on_its_base_image,
    a_program_runtime_runs_on_the_local_pool,
    program_bundles_that_cannot_run_are_refused,
    a_pushed_program_runtime_is_linked_and_deployed,
);

//! The builder: a version's image made by the platform from its bundle, pushed to a real
//! registry and run on a Docker pool by digest; the same bundle gives the same digest; a build
//! that cannot push fails with its reason; a restart leaves no build stuck.

use crate::cli::rally;
use crate::docker::{docker_app_on, inspect, placed};
use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::players::deploy_version;
use crate::registry::{free_address, pushes_reported, Registry};
use crate::tictactoe::{
    back_in_lobby, next_game_message, play, start_match, tictactoe_bundle, two_players_in_a_lobby,
};
use rally_sdk::runtime::Qualifier;
use rally_sdk::wire::{Build, BuildStatus};
use rally_sdk::RallyClient;
use std::time::Duration;

/// Waits until build `id` of studio/`project` has ended.
async fn finished(admin: &RallyClient, project: &str, id: &str) -> Build {
    for _ in 0..600 {
        let build = admin.get_build("studio", project, id).await.unwrap();
        if build.status.is_finished() {
            return build;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("build {id} did not end");
}

async fn the_builder_pushes_an_image_that_a_match_is_played_in(backend: Backend) {
    let address = free_address();
    let (app, _cleanup) = docker_app_on(backend, &[("roomy", 8)], |config| {
        config.registry_address = Some(address);
    })
    .await;
    let admin = app.admin().await;
    let registry = Registry::start(&app, &admin).await;

    // The stage is on a Docker pool: the upload queues a build.
    admin
        .upload_version("studio", "game", tictactoe_bundle(), None)
        .await
        .unwrap();
    let builds = admin.list_builds("studio", "game", "1").await.unwrap();
    assert_eq!(builds.len(), 1, "{builds:?}");
    let build = finished(&admin, "game", &builds[0].id).await;
    assert_eq!(
        build.status,
        BuildStatus::Done,
        "{}\n{}",
        build.log,
        registry.log()
    );
    assert!(build.log.contains("pushed"), "{}", build.log);
    let digest = build.digest.clone().unwrap();
    let version = admin.get_version("studio", "game", "1").await.unwrap();
    let image = version.image.expect("linked");
    assert_eq!(image.digest, digest);
    assert_eq!(image.source, "build");
    assert_eq!(image.pushed_by.as_deref(), Some("rally:builder"));
    // The registry's notification of the push arrives too: it links the image or finds it
    // linked, whichever came first.
    let pushes = pushes_reported(&admin, "game", 1).await;
    assert!(
        ["linked", "already_linked"].contains(&pushes[0].outcome.as_str()),
        "{pushes:?}"
    );
    assert_eq!(pushes[0].digest, digest);
    assert_eq!(pushes[0].tag.as_deref(), Some("v1"));

    // A match is played in a container of that image, pulled by digest.
    let deployment =
        deploy_version(&admin, "studio", 1, serde_json::json!({"min_lobbies": 1})).await;
    let (mut ada, mut bea) = two_players_in_a_lobby(&app).await;
    let (x, o) = start_match(&mut ada, &mut bea).await;
    let in_match = placed(&admin, &deployment, Qualifier::Match).await;
    let container = in_match.handle.expect("in a container");
    assert_eq!(inspect(&container, "{{.Config.Image}}"), image.reference);
    play(x, o, &[0, 3, 1, 4, 2]).await;
    assert_eq!(next_game_message(x, "over").await["winner"], "x");
    assert_eq!(back_in_lobby(x).await["wins"], 1);

    // The same bundle again: the same image, nothing new to send.
    admin
        .upload_version("studio", "game", tictactoe_bundle(), None)
        .await
        .unwrap();
    let second = admin.list_builds("studio", "game", "2").await.unwrap();
    let second = finished(&admin, "game", &second[0].id).await;
    assert_eq!(second.status, BuildStatus::Done, "{}", second.log);
    assert_eq!(second.digest.as_deref(), Some(digest.as_str()));
    assert!(!second.log.contains("\nsent "), "{}", second.log);
    assert_eq!(
        second.log.matches("already in the registry").count(),
        3,
        "{}",
        second.log
    );
    app.stop().await;
}

/// A platform with `registry_address` (here one that answers nothing, or refuses
/// connections), with studio/hello and its version 1.
async fn hello(backend: Backend, registry_address: Option<String>) -> (TestApp, RallyClient) {
    let app = spawn_app_with(backend, |config| {
        config.registry_address = registry_address;
    })
    .await;
    let admin = app.admin().await;
    admin.create_tenant("Studio", Some("studio")).await.unwrap();
    admin
        .create_project("studio", "Hello", Some("hello"))
        .await
        .unwrap();
    admin
        .upload_version("studio", "hello", crate::permissions::hello_bundle(), None)
        .await
        .unwrap();
    (app, admin)
}

async fn a_build_that_cannot_push_fails_with_its_reason(backend: Backend) {
    // Nothing listens there.
    let (app, admin) = hello(backend, Some(free_address())).await;
    // The stage is on the local pool: nothing was built on upload.
    assert!(admin
        .list_builds("studio", "hello", "1")
        .await
        .unwrap()
        .is_empty());
    let config = tempfile::tempdir().unwrap();
    let output = rally(
        config.path(),
        &[
            "version",
            "build",
            "1",
            "--tenant",
            "studio",
            "--project",
            "hello",
            "--url",
            &app.url,
        ],
        &[("RALLY_TOKEN", admin.access_token().unwrap())],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the build of version 1 failed"), "{stderr}");
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    let builds = admin.list_builds("studio", "hello", "1").await.unwrap();
    assert_eq!(builds[0].status, BuildStatus::Failed);
    assert!(builds[0].log.contains("failed: "), "{}", builds[0].log);
    let version = admin.get_version("studio", "hello", "1").await.unwrap();
    assert_eq!(version.image, None);

    // A platform without a registry says so.
    let (_plain, plain_admin) = hello(backend, None).await;
    let error = plain_admin
        .start_build("studio", "hello", "1")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("registry_not_configured"));
    assert!(plain_admin
        .list_builds("studio", "hello", "1")
        .await
        .unwrap()
        .is_empty());
}

async fn a_restart_leaves_no_build_stuck(backend: Backend) {
    // A registry that accepts connections and never answers: the build waits in `pushing`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            connections.push(connection);
        }
    });
    let (app, admin) = hello(backend, Some(address)).await;
    let build = admin.start_build("studio", "hello", "1").await.unwrap();
    // Queued, or already claimed by the builder.
    assert!(!build.status.is_finished(), "{build:?}");
    // Asking again while it is under way answers the same build.
    assert_eq!(
        admin.start_build("studio", "hello", "1").await.unwrap().id,
        build.id
    );
    for _ in 0..200 {
        if admin
            .get_build("studio", "hello", &build.id)
            .await
            .unwrap()
            .status
            == BuildStatus::Pushing
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = app.state.runtimes.node_id.clone();
    // A graceful restart puts it back in the queue, and the next run takes it up again.
    let app = app.restart().await;
    let admin = app.admin().await;
    let after = admin.get_build("studio", "hello", &build.id).await.unwrap();
    assert!(
        after
            .log
            .contains("interrupted: the platform is stopping; queued again"),
        "{}",
        after.log
    );
    assert!(!after.status.is_finished(), "{after:?}");

    // What a crash leaves behind: builds marked as running on this node. One is queued again;
    // one interrupted too often fails. Nothing stays `building`.
    let config = app.config.clone();
    let database = app.stop().await;
    let store = rally_platform::storage::Database::open(&database.url, 1)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO builds (id, project_id, version_id, status, created_by, created_at) \
         SELECT 'crashed-often', project_id, version_id, 'queued', created_by, created_at \
         FROM builds WHERE id = $1",
    )
    .bind(&build.id)
    .execute(store.writer())
    .await
    .unwrap();
    for (id, attempts) in [(build.id.as_str(), 1), ("crashed-often", 3)] {
        sqlx::query(
            "UPDATE builds SET status = 'building', node_id = $2, attempts = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(&node)
        .bind(attempts)
        .execute(store.writer())
        .await
        .unwrap();
    }
    store.close().await;
    let app = crate::helpers::start(config, database).await;
    let admin = app.admin().await;
    let often = admin
        .get_build("studio", "hello", "crashed-often")
        .await
        .unwrap();
    assert_eq!(often.status, BuildStatus::Failed);
    assert_eq!(
        often.error.as_deref(),
        Some("interrupted 3 times by platform restarts")
    );
    let again = admin.get_build("studio", "hello", &build.id).await.unwrap();
    assert!(
        again
            .log
            .contains("interrupted by a platform restart; queued again"),
        "{}",
        again.log
    );
    held.abort();
}

on_both_backends!(
    the_builder_pushes_an_image_that_a_match_is_played_in,
    a_build_that_cannot_push_fails_with_its_reason,
    a_restart_leaves_no_build_stuck,
);

//! Player accounts: anonymous sign-up, sign-in with id and secret, device sign-in.

use crate::helpers::{assert_api_error, code, raw, spawn_app, Backend};
use crate::on_both_backends;
use rally_sdk::wire::Role;
use reqwest::Method;

async fn anonymous_user_signs_up_and_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let user = client.create_user().await.unwrap();
    assert_eq!(user.secret.len(), 43, "32 random bytes, base64url");
    let pair = client
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    assert_eq!(
        (pair.role, pair.subject.as_str()),
        (Role::Player, user.user_id.as_str())
    );
    let me = client.authenticated(&pair.access_token).me().await.unwrap();
    assert_eq!(me.role, Role::Player);
    // The secret is stored hashed, never as given.
    let stored: Option<String> = sqlx::query_scalar("SELECT secret_hash FROM users WHERE id = $1")
        .bind(&user.user_id)
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_ne!(stored.as_deref(), Some(user.secret.as_str()));
}

async fn wrong_secret_unknown_id_and_garbage_are_refused_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let user = client.create_user().await.unwrap();
    let other = client.create_user().await.unwrap();
    assert_api_error(
        client.sign_in_user(&user.user_id, &other.secret).await,
        401,
        "invalid_credentials",
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_api_error(
        client.sign_in_user(&unknown, &user.secret).await,
        401,
        "invalid_credentials",
    );
    assert_api_error(
        client.sign_in_user("not-a-uuid", &user.secret).await,
        401,
        "invalid_credentials",
    );
    assert_api_error(
        client.sign_in_user(&user.user_id, "").await,
        401,
        "invalid_credentials",
    );
    assert_api_error(
        client
            .sign_in_user(&user.user_id, &"A".repeat(100_000))
            .await,
        401,
        "invalid_credentials",
    );
}

async fn device_sign_in_creates_once_then_signs_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let first = client.device_sign_in("device-0123456789").await.unwrap();
    assert!(first.created);
    let again = client.device_sign_in("device-0123456789").await.unwrap();
    assert!(!again.created);
    assert_eq!(again.user_id, first.user_id);
    assert_eq!(again.tokens.subject, first.user_id);
    let other = client.device_sign_in("device-9876543210").await.unwrap();
    assert_ne!(other.user_id, first.user_id);
}

async fn simultaneous_first_device_sign_ins_make_one_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let client = app.client();
            tokio::spawn(async move { client.device_sign_in("racing-device-id").await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for attempt in attempts {
        ids.push(attempt.await.unwrap().user_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
}

async fn bad_device_ids_are_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    for bad in ["short", "tab\there-device", &"d".repeat(257)] {
        assert_api_error(client.device_sign_in(bad).await, 400, "invalid_device_id");
    }
    // Unicode is fine: device ids are opaque.
    client.device_sign_in("устройство-デバイス").await.unwrap();
}

async fn player_tokens_do_not_open_staff_routes(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.client().create_user().await.unwrap();
    let pair = app
        .client()
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    let (status, body) = raw(
        &app,
        Method::GET,
        "/api/v1/developers",
        None,
        "",
        Some(&pair.access_token),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
}

on_both_backends!(
    anonymous_user_signs_up_and_in,
    wrong_secret_unknown_id_and_garbage_are_refused_alike,
    device_sign_in_creates_once_then_signs_in,
    simultaneous_first_device_sign_ins_make_one_user,
    bad_device_ids_are_rejected,
    player_tokens_do_not_open_staff_routes,
);

//! Tokens through the HTTP API: sign-in, refresh rotation, sign-out, and the 401/403 rules that
//! every route follows.

use crate::helpers::{assert_api_error, code, raw, spawn_app, Backend, TestApp, ADMIN_PASSWORD};
use crate::on_both_backends;
use jsonwebtoken::{encode, EncodingKey, Header};
use rally_platform::auth::Claims;
use rally_sdk::wire::Role;
use reqwest::Method;

async fn signing_key(app: &TestApp) -> Vec<u8> {
    use base64::Engine;
    let stored = app
        .state
        .database
        .setting("jwt_signing_key")
        .await
        .unwrap()
        .unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(stored)
        .unwrap()
}

fn forge(key: &[u8], role: Role, audience: &str, expires_in: i64) -> String {
    let now = rally_platform::auth::tokens::unix_seconds() as i64;
    let claims = Claims {
        sub: "someone".into(),
        role,
        aud: audience.into(),
        iss: "rally".into(),
        iat: (now - 3600) as u64,
        exp: (now + expires_in) as u64,
    };
    encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
}

async fn admin_signs_in_and_sees_itself(backend: Backend) {
    let app = spawn_app(backend).await;
    let pair = app.client().login("admin", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(pair.role, Role::Admin);
    assert_eq!(pair.token_type, "Bearer");
    let me = app
        .client()
        .authenticated(&pair.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!((me.subject, me.role), (pair.subject, Role::Admin));
}

async fn wrong_password_and_unknown_user_look_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_api_error(
        app.client().login("admin", "not-the-password").await,
        401,
        "invalid_credentials",
    );
    assert_api_error(
        app.client().login("nobody", ADMIN_PASSWORD).await,
        401,
        "invalid_credentials",
    );
    assert_api_error(
        app.client().login("admin", &"x".repeat(5000)).await,
        401,
        "invalid_credentials",
    );
}

async fn refresh_rotates_and_a_reused_token_revokes_the_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let first = client.login("admin", ADMIN_PASSWORD).await.unwrap();
    let second = client.refresh(&first.refresh_token).await.unwrap();
    client
        .authenticated(&second.access_token)
        .me()
        .await
        .unwrap();

    assert_api_error(
        client.refresh(&first.refresh_token).await,
        401,
        "refresh_token_reused",
    );
    assert_api_error(
        client.refresh(&second.refresh_token).await,
        401,
        "refresh_token_revoked",
    );
    // Another sign-in is another family and is untouched.
    let other = client.login("admin", ADMIN_PASSWORD).await.unwrap();
    client.refresh(&other.refresh_token).await.unwrap();
}

async fn sign_out_revokes_the_refresh_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let pair = client.login("admin", ADMIN_PASSWORD).await.unwrap();
    client.logout(&pair.refresh_token).await.unwrap();
    assert_api_error(
        client.refresh(&pair.refresh_token).await,
        401,
        "refresh_token_revoked",
    );
    assert_api_error(
        client.logout("made-up-token").await,
        401,
        "invalid_refresh_token",
    );
}

async fn bad_tokens_get_401_with_a_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = signing_key(&app).await;
    let cases = [
        (None, "missing_token"),
        (Some("not-a-jwt".to_owned()), "invalid_token"),
        (
            Some(forge(
                b"some-other-key-some-other-key-xx",
                Role::Admin,
                "rally-management",
                600,
            )),
            "invalid_token",
        ),
        (
            Some(forge(&key, Role::Admin, "rally-management", -600)),
            "token_expired",
        ),
        (
            Some(forge(&key, Role::Admin, "rally-player", 600)),
            "invalid_token",
        ),
    ];
    for (token, expected) in cases {
        let (status, body) = raw(
            &app,
            Method::GET,
            "/api/v1/auth/me",
            None,
            "",
            token.as_deref(),
        )
        .await;
        assert_eq!((status, code(&body)), (401, expected), "{token:?}");
    }
    // The same key and a fresh expiry is accepted: the checks above are not vacuous.
    let good = forge(&key, Role::Admin, "rally-management", 600);
    let (status, _) = raw(&app, Method::GET, "/api/v1/auth/me", None, "", Some(&good)).await;
    assert_eq!(status, 200);
    // A scheme other than Bearer is refused.
    let (status, body) = reqwest::Client::new()
        .get(format!("{}/api/v1/auth/me", app.url))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(code(&body.json().await.unwrap()), "invalid_token");
}

/// Walks every operation the OpenAPI document marks as needing a token: without one it is 401;
/// with a player or runtime token it is 403 (only `me` admits every role, and the runtime socket
/// runtime tokens).
async fn every_protected_route_checks_token_and_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = signing_key(&app).await;
    let document: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fake_id = uuid::Uuid::now_v7().to_string();
    let mut protected = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        let path = template
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    fake_id.as_str()
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_none() {
                continue;
            }
            protected += 1;
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = raw(
                &app,
                method.clone(),
                &path,
                Some("application/json"),
                "{}",
                None,
            )
            .await;
            assert_eq!(
                (status, code(&body)),
                (401, "missing_token"),
                "{method} {template}"
            );
            for role in [Role::Player, Role::Runtime] {
                let audience = rally_platform::auth::tokens::audience_for(role);
                let token = forge(&key, role, audience, 600);
                let (status, body) = raw(
                    &app,
                    method.clone(),
                    &path,
                    Some("application/json"),
                    "{}",
                    Some(&token),
                )
                .await;
                let player_route = template.starts_with("/api/v1/clients/")
                    || template.ends_with("/clients")
                    || template.ends_with("/players/me");
                let admitted = template == "/api/v1/auth/me"
                    || (template == "/api/v1/runtime/ws" && role == Role::Runtime)
                    || (player_route && role == Role::Player);
                if admitted {
                    assert_ne!(status, 403, "{method} {template} as {role}");
                    assert_ne!(
                        body["error"]["code"], "missing_token",
                        "{method} {template} as {role}"
                    );
                } else {
                    assert_eq!(
                        (status, code(&body)),
                        (403, "forbidden"),
                        "{method} {template} as {role}"
                    );
                }
            }
        }
    }
    assert!(
        protected > 30,
        "only {protected} protected operations found"
    );
}

async fn tokens_and_accounts_survive_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    admin
        .create_developer("ada", "ada-password-1")
        .await
        .unwrap();
    let user = app.client().create_user().await.unwrap();
    let player = app
        .client()
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    let developer = app.client().login("ada", "ada-password-1").await.unwrap();

    let app = app.restart().await;
    let client = app.client();
    // Access tokens issued before the restart still verify: the signing key was kept.
    let me = client
        .authenticated(&player.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!(me.subject, user.user_id);
    client
        .authenticated(&developer.access_token)
        .me()
        .await
        .unwrap();
    // Refresh tokens, accounts and player secrets were kept too.
    client.refresh(&player.refresh_token).await.unwrap();
    client
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    client.login("ada", "ada-password-1").await.unwrap();
    // And the admin was not created twice.
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE role = 'admin'")
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_eq!(admins, 1);
}

on_both_backends!(
    admin_signs_in_and_sees_itself,
    wrong_password_and_unknown_user_look_the_same,
    refresh_rotates_and_a_reused_token_revokes_the_sign_in,
    sign_out_revokes_the_refresh_token,
    bad_tokens_get_401_with_a_reason,
    every_protected_route_checks_token_and_role,
    tokens_and_accounts_survive_a_restart,
);

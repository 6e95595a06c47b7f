//! Bad input of every kind gets a 4xx with the common error shape and a stable code; nothing
//! a client sends produces a 500.

use crate::helpers::{assert_api_error, code, raw, spawn_app, Backend};
use crate::on_both_backends;
use reqwest::Method;

const JSON: Option<&str> = Some("application/json");

async fn malformed_bodies_get_clear_codes(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases: &[(&str, u16, &str)] = &[
        (
            "{\"username\": \"admin\", \"password\":",
            400,
            "malformed_json",
        ),
        ("not json at all", 400, "malformed_json"),
        ("", 400, "malformed_json"),
        (
            "{\"username\": 42, \"password\": \"x\"}",
            422,
            "invalid_body",
        ),
        ("{\"username\": \"admin\"}", 422, "invalid_body"),
        ("[1, 2, 3]", 422, "invalid_body"),
        // The fields in order, as an array: serde would read a struct from it; no body is one.
        ("[\"admin\", \"the-admin-password\"]", 422, "invalid_body"),
        (
            "{\"username\": \"\\u0000\", \"password\": \"\\ud800\"}",
            400,
            "malformed_json",
        ),
        // Valid JSON whose strings hold NUL, which no text the platform keeps can: refused
        // before any lookup, not a 500 from PostgreSQL.
        (
            "{\"username\": \"ad\\u0000min\", \"password\": \"x\\u0000y-long-enough\"}",
            400,
            "invalid_text",
        ),
        // Valid JSON whose strings no account can have.
        (
            "{\"username\": \"\u{1F600}\u{202E}\", \"password\": \"\u{202E}password\"}",
            401,
            "invalid_credentials",
        ),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = raw(&app, Method::POST, "/api/v1/auth/login", JSON, *body, None).await;
        assert_eq!((got, code(&answer)), (*status, *expected), "body {body:?}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
}

async fn wrong_content_type_is_415(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/v1/users/sign-in",
        Some("text/plain"),
        "{}",
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/v1/users/sign-in",
        None,
        "{}",
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
}

async fn oversized_bodies_are_refused_without_being_read(backend: Backend) {
    let app = spawn_app(backend).await;
    // Announce 10 MB, send only the first kilobyte: the answer must come without the rest.
    let answer = crate::helpers::announce_body(
        &app,
        "/api/v1/users/device-sign-in",
        "application/json",
        10 * 1024 * 1024,
        None,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    // The platform is still fine.
    app.client().health().await.unwrap();
}

async fn unknown_routes_and_methods_use_the_error_shape(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = raw(&app, Method::GET, "/api/v1/nothing-here", None, "", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = raw(&app, Method::DELETE, "/api/v1/users", None, "", None).await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
}

async fn developer_names_are_checked_and_unique(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    for bad in ["Ada", "ada lovelace", "адa", "ada\u{7}", "a", "", "../etc"] {
        assert_api_error(
            admin.create_developer(bad, "good-password").await,
            400,
            "invalid_username",
        );
    }
    assert_api_error(
        admin.create_developer("ada", "short").await,
        400,
        "invalid_password",
    );
    assert_api_error(
        admin.create_developer("ada", "bell\u{7}password").await,
        400,
        "invalid_password",
    );
    let ada = admin
        .create_developer("ada", "good-password")
        .await
        .unwrap();
    assert_api_error(
        admin.create_developer("ada", "other-password").await,
        409,
        "username_taken",
    );
    let listed = admin.list_developers().await.unwrap();
    assert_eq!(listed, vec![ada]);
    // Nothing about a rejected name reached the database.
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(app.state.database.reader())
        .await
        .unwrap();
    assert_eq!(accounts, 2, "admin and ada");
}

async fn a_developer_signs_in_but_cannot_create_developers(backend: Backend) {
    let app = spawn_app(backend).await;
    app.admin()
        .await
        .create_developer("ada", "good-password")
        .await
        .unwrap();
    let pair = app.client().login("ada", "good-password").await.unwrap();
    let ada = app.client().authenticated(&pair.access_token);
    assert_api_error(
        ada.create_developer("eve", "good-password").await,
        403,
        "forbidden",
    );
}

/// NUL in a path, a query or a body names nothing: a clear answer before any lookup, where
/// PostgreSQL would refuse the text with a 500.
async fn nul_anywhere_is_refused_before_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.admin().await.access_token().unwrap().to_owned();
    let get = |path: &'static str| raw(&app, Method::GET, path, None, Vec::new(), Some(&token));
    let (status, body) = get("/api/v1/tenants/st%00udio/projects").await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = get("/api/v1/audit?before=a%00b").await;
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/v1/tenants",
        Some("application/json"),
        r#"{"name": "Studio", "alias": "st\u0000udio"}"#,
        Some(&token),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_text"), "{body}");
    app.stop().await;
}

on_both_backends!(
    nul_anywhere_is_refused_before_the_database,
    malformed_bodies_get_clear_codes,
    wrong_content_type_is_415,
    oversized_bodies_are_refused_without_being_read,
    unknown_routes_and_methods_use_the_error_shape,
    developer_names_are_checked_and_unique,
    a_developer_signs_in_but_cannot_create_developers,
);

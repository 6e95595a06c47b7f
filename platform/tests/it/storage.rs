//! The storage conformance suite: the same statements and guarantees on SQLite and PostgreSQL.

use crate::helpers::{Backend, TestDatabase};
use crate::on_both_backends;
use rally_platform::accounts::{insert_account, list_accounts};
use rally_platform::auth::{refresh, TokenService};
use rally_platform::storage::{new_id, now_millis, Database};
use rally_sdk::wire::{Account, Role, TokenPair};
use std::time::Duration;

async fn open(backend: Backend) -> (Database, TestDatabase) {
    let test_database = TestDatabase::create(backend).await;
    let database = Database::open(&test_database.url, 4).await.unwrap();
    (database, test_database)
}

fn tokens() -> TokenService {
    TokenService::new(
        b"storage-suite-key-storage-suite-key",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
}

/// A developer account and the token pair of its sign-in.
async fn signed_in_developer(database: &Database, tokens: &TokenService) -> (Account, TokenPair) {
    let account = insert_account(database, "ada", "hash", Role::Developer)
        .await
        .unwrap();
    let pair = refresh::issue_pair(database, tokens, &account.id, Role::Developer, None)
        .await
        .unwrap();
    (account, pair)
}

async fn migrations_apply_once_and_reopen_cleanly(backend: Backend) {
    let (database, test_database) = open(backend).await;
    let expected = match backend {
        Backend::Sqlite => rally_platform::storage::Backend::Sqlite,
        Backend::Postgres => rally_platform::storage::Backend::Postgres,
    };
    assert_eq!(database.backend(), expected);
    database.ping().await.unwrap();
    database.close().await;
    // A second start finds the migrations applied and changes nothing.
    let reopened = Database::open(&test_database.url, 4).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(reopened.reader())
        .await
        .unwrap();
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let files = std::fs::read_dir(format!(
        "{}/../migrations/{folder}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .filter(|entry| {
        entry
            .as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|ext| ext == "sql")
    })
    .count();
    assert_eq!(applied, files as i64, "each migration applied exactly once");
}

async fn settings_keep_the_first_value(backend: Backend) {
    let (database, _guard) = open(backend).await;
    assert_eq!(database.setting("signing").await.unwrap(), None);
    let first = database.setting_or_insert("signing", "one").await.unwrap();
    let second = database.setting_or_insert("signing", "two").await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
}

async fn duplicate_usernames_are_unique_violations(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let ada = insert_account(&database, "ada", "hash", Role::Developer)
        .await
        .unwrap();
    let duplicate = insert_account(&database, "ada", "hash", Role::Developer)
        .await
        .unwrap_err();
    assert!(duplicate.is_unique_violation(), "{duplicate}");
    insert_account(&database, "grace", "hash", Role::Developer)
        .await
        .unwrap();
    insert_account(&database, "root", "hash", Role::Admin)
        .await
        .unwrap();
    let developers = list_accounts(&database, Role::Developer).await.unwrap();
    let names: Vec<_> = developers.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(names, ["ada", "grace"]);
    assert_eq!(developers[0], ada);
}

async fn a_role_outside_the_human_ones_is_refused_by_the_schema(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let refused = insert_account(&database, "bot", "hash", Role::Player).await;
    assert!(refused.is_err());
}

async fn text_and_times_round_trip_unchanged(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let value = "名前 ✓ \"quoted\" 'single' \\ back";
    let stored = database.setting_or_insert("unicode", value).await.unwrap();
    assert_eq!(stored, value);
    let id = new_id();
    let far_future = 32_503_680_000_000_i64; // year 3000, in milliseconds
    sqlx::query("INSERT INTO users (id, created_at, disabled_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(now_millis())
        .bind(far_future)
        .execute(database.writer())
        .await
        .unwrap();
    let disabled_at: Option<i64> =
        sqlx::query_scalar("SELECT disabled_at FROM users WHERE id = $1")
            .bind(&id)
            .fetch_one(database.reader())
            .await
            .unwrap();
    assert_eq!(disabled_at, Some(far_future));
}

async fn refresh_tokens_rotate_once_and_reuse_revokes_the_family(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let tokens = tokens();
    let (account, first) = signed_in_developer(&database, &tokens).await;
    let second = refresh::rotate(&database, &tokens, &first.refresh_token)
        .await
        .unwrap();
    assert_eq!(second.subject, account.id);
    assert_ne!(second.refresh_token, first.refresh_token);

    let reused = refresh::rotate(&database, &tokens, &first.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), "refresh_token_reused");
    // The thief may hold the newer token: it is revoked with its family.
    let revoked = refresh::rotate(&database, &tokens, &second.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), "refresh_token_revoked");
}

async fn concurrent_rotations_of_one_token_succeed_once(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let tokens = std::sync::Arc::new(tokens());
    let (_, pair) = signed_in_developer(&database, &tokens).await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (database, tokens) = (database.clone(), tokens.clone());
            let presented = pair.refresh_token.clone();
            tokio::spawn(async move { refresh::rotate(&database, &tokens, &presented).await })
        })
        .collect();
    let mut successes = 0;
    for attempt in attempts {
        if attempt.await.unwrap().is_ok() {
            successes += 1;
        }
    }
    assert_eq!(successes, 1);
}

async fn revoking_stops_refresh_and_unknown_tokens_are_reported(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let tokens = tokens();
    let (_, pair) = signed_in_developer(&database, &tokens).await;
    assert!(refresh::revoke(&database, &pair.refresh_token)
        .await
        .unwrap());
    assert!(!refresh::revoke(&database, "no-such-token").await.unwrap());
    let refused = refresh::rotate(&database, &tokens, &pair.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "refresh_token_revoked");
    let unknown = refresh::rotate(&database, &tokens, "no-such-token")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "invalid_refresh_token");
}

async fn expired_refresh_tokens_are_refused_and_cleaned_up(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let tokens = tokens();
    let (_, pair) = signed_in_developer(&database, &tokens).await;
    let two_days_ago = now_millis() - 2 * 24 * 3600 * 1000;
    sqlx::query("UPDATE refresh_tokens SET expires_at = $1")
        .bind(two_days_ago)
        .execute(database.writer())
        .await
        .unwrap();
    let refused = refresh::rotate(&database, &tokens, &pair.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "refresh_token_expired");
    assert_eq!(refresh::delete_expired(&database).await.unwrap(), 1);
}

async fn disabled_accounts_cannot_refresh(backend: Backend) {
    let (database, _guard) = open(backend).await;
    let tokens = tokens();
    let (account, pair) = signed_in_developer(&database, &tokens).await;
    sqlx::query("UPDATE accounts SET disabled_at = $1 WHERE id = $2")
        .bind(now_millis())
        .bind(&account.id)
        .execute(database.writer())
        .await
        .unwrap();
    let refused = refresh::rotate(&database, &tokens, &pair.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "account_disabled");
}

on_both_backends!(
    migrations_apply_once_and_reopen_cleanly,
    settings_keep_the_first_value,
    duplicate_usernames_are_unique_violations,
    a_role_outside_the_human_ones_is_refused_by_the_schema,
    text_and_times_round_trip_unchanged,
    refresh_tokens_rotate_once_and_reuse_revokes_the_family,
    concurrent_rotations_of_one_token_succeed_once,
    revoking_stops_refresh_and_unknown_tokens_are_reported,
    expired_refresh_tokens_are_refused_and_cleaned_up,
    disabled_accounts_cannot_refresh,
);

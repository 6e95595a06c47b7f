//! Human accounts (admin, support, developer): password hashing, the first admin, sign-in
//! checks, and the `/api/v1/developers` routes.

use crate::auth::{Caller, Staff};
use crate::error::{ApiError, Json};
use crate::server::AppState;
use crate::storage::{new_id, now_millis, Database, StorageError, StorageResult};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use rally_sdk::wire::{Account, AccountList, CreateDeveloperRequest, Role};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::sync::LazyLock;

pub const ADMIN_USERNAME: &str = "admin";
const MIN_PASSWORD_CHARS: usize = 8;
/// Long enough for any passphrase, short enough that hashing it costs nothing extra.
const MAX_PASSWORD_BYTES: usize = 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/developers",
        post(create_developer).get(list_developers),
    )
}

/// Usernames are lowercase ASCII slugs: 3–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_username(username: &str) -> Result<(), String> {
    let valid_chars = username
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    let starts_well = username
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if (3..=64).contains(&username.len()) && valid_chars && starts_well {
        Ok(())
    } else {
        Err("must be 3 to 64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit".to_owned())
    }
}

pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes long"));
    }
    if password.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// Argon2id with the crate's default (OWASP) parameters, on a blocking thread.
pub async fn hash_password(password: SecretString) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("password hashing failed: {error}"))
    })
    .await?
}

async fn verify_password(password: SecretString, stored_hash: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&stored_hash)
            .map_err(|error| anyhow::anyhow!("stored password hash unreadable: {error}"))?;
        Ok(Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// A hash of nothing in particular, verified against when the username is unknown so that a
/// wrong username takes as long as a wrong password.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(b"decoy password", &salt)
        .expect("hashing a constant cannot fail")
        .to_string()
});

struct StoredAccount {
    account: Account,
    password_hash: String,
}

const ACCOUNT_COLUMNS: &str = "id, username, role, created_at, disabled_at, password_hash";

fn account_from_row(row: &AnyRow) -> Result<StoredAccount, StorageError> {
    let role: String = row.try_get("role")?;
    let role = role
        .parse()
        .map_err(|error| StorageError::Database(sqlx::Error::Decode(Box::new(error))))?;
    let disabled_at: Option<i64> = row.try_get("disabled_at")?;
    Ok(StoredAccount {
        account: Account {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            role,
            disabled: disabled_at.is_some(),
            created_at: row.try_get("created_at")?,
        },
        password_hash: row.try_get("password_hash")?,
    })
}

async fn find_by_username(
    database: &Database,
    username: &str,
) -> StorageResult<Option<StoredAccount>> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(database.reader())
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// Stores a new account. A taken username is a `StorageError` with a unique violation.
pub async fn insert_account(
    database: &Database,
    username: &str,
    password_hash: &str,
    role: Role,
) -> StorageResult<Account> {
    let now = now_millis();
    let account = Account {
        id: new_id(),
        username: username.to_owned(),
        role,
        disabled: false,
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO accounts (id, username, password_hash, role, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&account.id)
    .bind(&account.username)
    .bind(password_hash)
    .bind(role.as_str())
    .bind(now)
    .execute(database.writer())
    .await?;
    Ok(account)
}

pub async fn list_accounts(database: &Database, role: Role) -> StorageResult<Vec<Account>> {
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE role = $1 ORDER BY username"
    ))
    .bind(role.as_str())
    .fetch_all(database.reader())
    .await?;
    rows.iter()
        .map(|row| account_from_row(row).map(|stored| stored.account))
        .collect()
}

/// What the first start did about the admin account.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminBootstrap {
    AlreadyThere,
    Created,
    /// Created with a generated password, which the caller must show once.
    CreatedWithGeneratedPassword(String),
}

/// Creates the `admin` account unless an admin exists. Safe when several nodes start at once.
pub async fn ensure_admin(
    database: &Database,
    configured_password: Option<&SecretString>,
) -> anyhow::Result<AdminBootstrap> {
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE role = 'admin'")
        .fetch_one(database.writer())
        .await?;
    if admins > 0 {
        return Ok(AdminBootstrap::AlreadyThere);
    }
    let (password, generated) = match configured_password {
        Some(password) => (password.clone(), false),
        None => (SecretString::from(crate::auth::new_secret()), true),
    };
    let hash = hash_password(password.clone()).await?;
    match insert_account(database, ADMIN_USERNAME, &hash, Role::Admin).await {
        Ok(_) if generated => Ok(AdminBootstrap::CreatedWithGeneratedPassword(
            password.expose_secret().to_owned(),
        )),
        Ok(_) => Ok(AdminBootstrap::Created),
        Err(error) if error.is_unique_violation() => Ok(AdminBootstrap::AlreadyThere),
        Err(error) => Err(error.into()),
    }
}

/// Checks a username and password; the same answer for an unknown name and a wrong password.
pub async fn authenticate(
    database: &Database,
    username: &str,
    password: String,
) -> Result<Account, ApiError> {
    let password = SecretString::from(password);
    if password.expose_secret().len() > MAX_PASSWORD_BYTES {
        return Err(invalid_credentials());
    }
    // A name no account can have is not looked up (and a NUL byte never reaches PostgreSQL).
    let stored = match check_username(username) {
        Ok(()) => find_by_username(database, username).await?,
        Err(_) => None,
    };
    let Some(stored) = stored else {
        verify_password(password, DECOY_HASH.clone())
            .await
            .map_err(ApiError::internal)?;
        return Err(invalid_credentials());
    };
    if !verify_password(password, stored.password_hash)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(invalid_credentials());
    }
    if stored.account.disabled {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "this account is disabled",
        ));
    }
    Ok(stored.account)
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "wrong username or password")
}

/// Admin or support: creates a developer account.
async fn create_developer(
    caller: Caller<Staff>,
    State(state): State<AppState>,
    Json(request): Json<CreateDeveloperRequest>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    check_username(&request.username).map_err(|problem| {
        ApiError::bad_request("invalid_username", format!("username {problem}"))
    })?;
    check_password(&request.password).map_err(|problem| {
        ApiError::bad_request("invalid_password", format!("password {problem}"))
    })?;
    let hash = hash_password(SecretString::from(request.password))
        .await
        .map_err(ApiError::internal)?;
    let account = insert_account(&state.database, &request.username, &hash, Role::Developer)
        .await
        .map_err(|error| {
            if error.is_unique_violation() {
                ApiError::conflict(
                    "username_taken",
                    format!("an account named {:?} already exists", request.username),
                )
            } else {
                error.into()
            }
        })?;
    tracing::info!(by = %caller.subject, account_id = %account.id, "developer account created");
    Ok((StatusCode::CREATED, Json(account)))
}

/// Admin or support: every developer account.
async fn list_developers(
    _caller: Caller<Staff>,
    State(state): State<AppState>,
) -> Result<Json<AccountList>, ApiError> {
    let accounts = list_accounts(&state.database, Role::Developer).await?;
    Ok(Json(AccountList { accounts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_plain_slugs() {
        for good in ["ada", "ada.lovelace", "dev-01", "a_b", "0xcafe"] {
            assert!(check_username(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Ada",
            "ada lovelace",
            "адa",
            "-ada",
            "ada\u{0}",
            &"a".repeat(65),
        ] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_need_length_and_no_control_characters() {
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("пароль-пароль").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password("tab\tinside-password").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}

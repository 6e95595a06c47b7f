//! Human accounts (admin, support, developer): password hashing, the first admin, sign-in
//! checks, and the `/api/v1/developers` routes.

use crate::audit::{self, Change};
use crate::auth::password::{check_password, PASSWORD_MAX_CHARS};
use crate::auth::{Caller, Staff};
use crate::error::{ApiError, Json, Path};
use crate::permissions::{AsStaff, Principal};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, Database, StorageError, StorageResult};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{
    Account, AccountList, CreateDeveloperRequest, ErrorBody, PasswordReset, Role,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::sync::LazyLock;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const ADMIN_USERNAME: &str = "admin";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_developer, list_developers))
        .routes(routes!(get_developer))
        .routes(routes!(disable_developer))
        .routes(routes!(enable_developer))
        .routes(routes!(reset_password))
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

/// The account named by `segment`: an id or a username.
pub async fn find(database: &Database, segment: &str) -> StorageResult<Option<Account>> {
    let column = if crate::permissions::is_id(segment) {
        "id"
    } else {
        "username"
    };
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {column} = $1"
    ))
    .bind(segment)
    .fetch_optional(database.reader())
    .await?;
    Ok(row
        .as_ref()
        .map(account_from_row)
        .transpose()?
        .map(|stored| stored.account))
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
    insert_account_with(database.writer(), username, password_hash, role).await
}

async fn insert_account_with<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
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
    .execute(executor)
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
    if password.expose_secret().chars().count() > PASSWORD_MAX_CHARS {
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

/// Create a developer account (admin, support).
#[utoipa::path(post, path = "/api/v1/developers", tag = "developers",
    request_body = CreateDeveloperRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Account), (status = "4XX", body = ErrorBody)))]
async fn create_developer(
    AsStaff(principal): AsStaff<Principal>,
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
    let mut transaction = state.database.writer().begin().await?;
    let account = insert_account_with(&mut *transaction, &request.username, &hash, Role::Developer)
        .await
        .map_err(|error| {
            ApiError::conflict_on_duplicate(error, "username_taken", || {
                format!("an account named {:?} already exists", request.username)
            })
        })?;
    audit::record(
        &mut *transaction,
        &principal,
        Change {
            action: "developer.create",
            target_kind: "account",
            target_id: &account.id,
            tenant_id: None,
            project_id: None,
            details: serde_json::json!({"username": account.username}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok((StatusCode::CREATED, Json(account)))
}

/// Every developer account (admin, support).
#[utoipa::path(get, path = "/api/v1/developers", tag = "developers",
    security(("bearer" = [])),
    responses((status = 200, body = AccountList), (status = "4XX", body = ErrorBody)))]
async fn list_developers(
    _caller: Caller<Staff>,
    State(state): State<AppState>,
) -> Result<Json<AccountList>, ApiError> {
    let accounts = list_accounts(&state.database, Role::Developer).await?;
    Ok(Json(AccountList { accounts }))
}

/// The developer named in the path, for staff.
async fn developer_in_path(
    principal: &Principal,
    state: &AppState,
    segment: &str,
) -> Result<Account, ApiError> {
    principal.require_staff()?;
    match find(&state.database, segment).await? {
        Some(account) if account.role == Role::Developer => Ok(account),
        _ => Err(ApiError::NotFound { what: "developer" }),
    }
}

/// One developer account (admin, support).
#[utoipa::path(get, path = "/api/v1/developers/{developer}", tag = "developers",
    params(("developer" = String, Path, description = "account id or username")),
    security(("bearer" = [])),
    responses((status = 200, body = Account), (status = "4XX", body = ErrorBody)))]
async fn get_developer(
    principal: Principal,
    State(state): State<AppState>,
    Path(developer): Path<String>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(
        developer_in_path(&principal, &state, &developer).await?,
    ))
}

/// Sets or clears `disabled_at`; disabling also revokes every refresh token of the account.
async fn set_disabled(
    principal: Principal,
    state: AppState,
    developer: String,
    disable: bool,
) -> Result<Json<Account>, ApiError> {
    let mut account = developer_in_path(&principal, &state, &developer).await?;
    let now = now_millis();
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query("UPDATE accounts SET disabled_at = $2, updated_at = $3 WHERE id = $1")
        .bind(&account.id)
        .bind(disable.then_some(now))
        .bind(now)
        .execute(&mut *transaction)
        .await?;
    if disable {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE subject_id = $1 AND revoked_at IS NULL",
        )
        .bind(&account.id)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
    }
    audit::record(
        &mut *transaction,
        &principal,
        Change {
            action: if disable {
                "developer.disable"
            } else {
                "developer.enable"
            },
            target_kind: "account",
            target_id: &account.id,
            tenant_id: None,
            project_id: None,
            details: serde_json::json!({"username": account.username}),
        },
    )
    .await?;
    transaction.commit().await?;
    account.disabled = disable;
    Ok(Json(account))
}

/// Disable a developer account: its sign-ins stop at once (admin, support).
#[utoipa::path(post, path = "/api/v1/developers/{developer}/disable", tag = "developers",
    params(("developer" = String, Path, description = "account id or username")),
    security(("bearer" = [])),
    responses((status = 200, body = Account), (status = "4XX", body = ErrorBody)))]
async fn disable_developer(
    principal: Principal,
    State(state): State<AppState>,
    Path(developer): Path<String>,
) -> Result<Json<Account>, ApiError> {
    set_disabled(principal, state, developer, true).await
}

/// Enable a disabled developer account (admin, support).
#[utoipa::path(post, path = "/api/v1/developers/{developer}/enable", tag = "developers",
    params(("developer" = String, Path, description = "account id or username")),
    security(("bearer" = [])),
    responses((status = 200, body = Account), (status = "4XX", body = ErrorBody)))]
async fn enable_developer(
    principal: Principal,
    State(state): State<AppState>,
    Path(developer): Path<String>,
) -> Result<Json<Account>, ApiError> {
    set_disabled(principal, state, developer, false).await
}

/// Set a new password for a developer; its existing sign-ins are revoked (admin, support).
#[utoipa::path(post, path = "/api/v1/developers/{developer}/password", tag = "developers",
    request_body = PasswordReset,
    params(("developer" = String, Path, description = "account id or username")),
    security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn reset_password(
    AsStaff(principal): AsStaff<Principal>,
    State(state): State<AppState>,
    Path(developer): Path<String>,
    Json(request): Json<PasswordReset>,
) -> Result<StatusCode, ApiError> {
    let account = developer_in_path(&principal, &state, &developer).await?;
    check_password(&request.password).map_err(|problem| {
        ApiError::bad_request("invalid_password", format!("password {problem}"))
    })?;
    let hash = hash_password(SecretString::from(request.password))
        .await
        .map_err(ApiError::internal)?;
    let now = now_millis();
    let mut transaction = state.database.writer().begin().await?;
    sqlx::query("UPDATE accounts SET password_hash = $2, updated_at = $3 WHERE id = $1")
        .bind(&account.id)
        .bind(&hash)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE subject_id = $1 AND revoked_at IS NULL",
    )
    .bind(&account.id)
    .bind(now)
    .execute(&mut *transaction)
    .await?;
    audit::record(
        &mut *transaction,
        &principal,
        Change {
            action: "developer.reset_password",
            target_kind: "account",
            target_id: &account.id,
            tenant_id: None,
            project_id: None,
            details: serde_json::json!({"username": account.username}),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(StatusCode::NO_CONTENT)
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
}

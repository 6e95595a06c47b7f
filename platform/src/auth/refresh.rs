//! Refresh tokens: random, stored only as a hash, single use. Refreshing spends the token and
//! issues the next one of the same family; presenting a spent token again revokes the whole
//! family, since one of the two holders must be a thief.

use super::{hash_secret, new_secret, TokenService};
use crate::error::ApiError;
use crate::storage::{new_id, now_millis, Database, StorageError};
use rally_sdk::wire::{Role, TokenPair};
use sqlx::Row;

/// Signs an access token and stores a new refresh token for `subject`, continuing `family` when
/// this is a rotation.
pub async fn issue_pair(
    database: &Database,
    tokens: &TokenService,
    subject: &str,
    role: Role,
    family: Option<&str>,
) -> Result<TokenPair, StorageError> {
    let family = family.map(str::to_owned).unwrap_or_else(new_id);
    let refresh_token = insert_refresh_token(
        database.writer(),
        tokens,
        &family,
        subject,
        role,
        now_millis(),
    )
    .await?;
    Ok(pair(tokens, subject, role, refresh_token))
}

/// Stores a new refresh token of `family` and returns it; only its hash is kept.
async fn insert_refresh_token<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    tokens: &TokenService,
    family: &str,
    subject: &str,
    role: Role,
    now: i64,
) -> Result<String, StorageError> {
    let refresh_token = new_secret();
    sqlx::query(
        "INSERT INTO refresh_tokens \
         (token_hash, family_id, subject_id, role, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(hash_secret(&refresh_token))
    .bind(family)
    .bind(subject)
    .bind(role.as_str())
    .bind(now)
    .bind(now + tokens.refresh_ttl().as_millis() as i64)
    .execute(executor)
    .await?;
    Ok(refresh_token)
}

fn pair(tokens: &TokenService, subject: &str, role: Role, refresh_token: String) -> TokenPair {
    let (access_token, _) = tokens.issue(subject, role);
    TokenPair {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: tokens.access_ttl().as_secs(),
        refresh_token,
        refresh_expires_in: tokens.refresh_ttl().as_secs(),
        role,
        subject: subject.to_owned(),
    }
}

/// Spends `presented` and returns the next pair of its family.
pub async fn rotate(
    database: &Database,
    tokens: &TokenService,
    presented: &str,
) -> Result<TokenPair, ApiError> {
    let token_hash = hash_secret(presented);
    let now = now_millis();
    let mut transaction = database.writer().begin().await?;
    let spent = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $2 \
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
         RETURNING family_id, subject_id, role",
    )
    .bind(&token_hash)
    .bind(now)
    .fetch_optional(&mut *transaction)
    .await?;

    let Some(spent) = spent else {
        let refusal = refuse(&mut transaction, &token_hash, now).await?;
        transaction.commit().await?;
        return Err(refusal);
    };
    let family: String = spent.get(0);
    let subject: String = spent.get(1);
    let role: String = spent.get(2);
    let role: Role = role.parse().map_err(ApiError::internal)?;

    if !subject_is_active(&mut transaction, &subject, role).await? {
        revoke_family_in(&mut transaction, &family, now).await?;
        transaction.commit().await?;
        return Err(ApiError::unauthorized(
            "account_disabled",
            "this account is disabled",
        ));
    }

    let refresh_token =
        insert_refresh_token(&mut *transaction, tokens, &family, &subject, role, now).await?;
    transaction.commit().await?;
    Ok(pair(tokens, &subject, role, refresh_token))
}

/// Says why a token could not be spent; a spent token presented again revokes its family.
async fn refuse(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    token_hash: &str,
    now: i64,
) -> Result<ApiError, ApiError> {
    let row = sqlx::query(
        "SELECT family_id, used_at, revoked_at, expires_at FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut **transaction)
    .await?;
    let Some(row) = row else {
        return Ok(ApiError::unauthorized(
            "invalid_refresh_token",
            "the refresh token is not known",
        ));
    };
    let family: String = row.get(0);
    let used_at: Option<i64> = row.get(1);
    let revoked_at: Option<i64> = row.get(2);
    let expires_at: i64 = row.get(3);
    Ok(if revoked_at.is_some() {
        ApiError::unauthorized("refresh_token_revoked", "the refresh token was revoked")
    } else if used_at.is_some() {
        revoke_family_in(transaction, &family, now).await?;
        tracing::warn!(family_id = %family, "refresh token reused; family revoked");
        ApiError::unauthorized(
            "refresh_token_reused",
            "the refresh token was already used; every session of this sign-in is now revoked",
        )
    } else if expires_at <= now {
        ApiError::unauthorized("refresh_token_expired", "the refresh token has expired")
    } else {
        ApiError::unauthorized("invalid_refresh_token", "the refresh token is not valid")
    })
}

async fn subject_is_active(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    subject: &str,
    role: Role,
) -> Result<bool, ApiError> {
    let query = match role {
        Role::Admin | Role::Support | Role::Developer => {
            "SELECT disabled_at FROM accounts WHERE id = $1"
        }
        Role::Player => "SELECT disabled_at FROM users WHERE id = $1",
        // A runtime renews its tokens while its record is alive.
        Role::Runtime => {
            "SELECT CASE WHEN status IN ('starting', 'running', 'stopping') THEN NULL \
             ELSE CAST(1 AS BIGINT) END FROM runtimes WHERE id = $1"
        }
    };
    let disabled_at: Option<Option<i64>> = sqlx::query_scalar(query)
        .bind(subject)
        .fetch_optional(&mut **transaction)
        .await?;
    Ok(matches!(disabled_at, Some(None)))
}

async fn revoke_family_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    family: &str,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .bind(now)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Revokes the family of `presented` (sign-out). Returns false for an unknown token.
pub async fn revoke(database: &Database, presented: &str) -> Result<bool, StorageError> {
    let now = now_millis();
    let result = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 \
         WHERE revoked_at IS NULL AND family_id = \
           (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(hash_secret(presented))
    .bind(now)
    .execute(database.writer())
    .await?;
    if result.rows_affected() > 0 {
        return Ok(true);
    }
    let known: Option<String> =
        sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(hash_secret(presented))
            .fetch_optional(database.reader())
            .await?;
    Ok(known.is_some())
}

/// Deletes tokens that expired more than a day ago; safe to run on every node at once.
pub async fn delete_expired(database: &Database) -> Result<u64, StorageError> {
    let cutoff = now_millis() - 24 * 60 * 60 * 1000;
    let result = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
        .bind(cutoff)
        .execute(database.writer())
        .await?;
    Ok(result.rows_affected())
}

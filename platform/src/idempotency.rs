//! Idempotent creation: a POST with an `Idempotency-Key` header runs once per caller and key;
//! a retry with the same key and the same request gets the first answer again (with header
//! `idempotent-replayed: true`), the same key with a different request is refused. Only
//! successful answers are kept, so a failed call can simply be retried. Keys expire after a day.

use crate::error::error_response;
use crate::server::AppState;
use crate::storage::{now_millis, Database, StorageError};
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::Row;

pub const HEADER: &str = "idempotency-key";

/// The header, for the OpenAPI document of the routes that create something.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// Retrying with the same key returns the first result instead of creating a duplicate.
    #[serde(rename = "Idempotency-Key")]
    pub key: Option<String>,
}
const REPLAYED_HEADER: &str = "idempotent-replayed";
/// A claim older than this is from a request that never finished (a crash): it may be retaken.
const ABANDONED_AFTER_MILLIS: i64 = 5 * 60 * 1000;
const KEPT_FOR_MILLIS: i64 = 24 * 60 * 60 * 1000;

pub async fn idempotent_posts(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(HEADER).cloned() else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            key.to_owned()
        }
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
            )
        }
    };
    // Keys belong to a caller; without a valid token the route itself answers 401.
    let subject = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .and_then(|token| state.tokens.verify(token.trim()).ok())
        .map(|claims| claims.sub);
    let Some(subject) = subject else {
        return next.run(request).await;
    };

    // The route's own body limit sits below this layer: buffer no more than the largest one.
    let largest_body = state
        .config
        .body_limit_bytes
        .max(state.config.bundle_max_bytes as usize);
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, largest_body).await {
        Ok(bytes) => bytes,
        // The body limit layer cut it off: let the route report it.
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large".to_owned(),
            )
        }
    };
    let fingerprint = fingerprint(&parts, &bytes);
    match claim(&state.database, &subject, &key, &fingerprint).await {
        Ok(Claim::Ours) => {}
        Ok(Claim::Replay { status, body }) => return replay(status, body),
        Ok(Claim::OtherRequest) => {
            return error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request".to_owned(),
            )
        }
        Ok(Claim::InProgress) => {
            return error_response(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry shortly".to_owned(),
            )
        }
        Err(error) => return crate::error::ApiError::from(error).into_response(),
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !response.status().is_success() {
        release(&state.database, &subject, &key).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "cannot read a response to keep it");
            release(&state.database, &subject, &key).await;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if let Err(error) = keep(&state.database, &subject, &key, parts.status, &body).await {
        tracing::warn!(%error, "cannot keep an idempotent response");
    }
    Response::from_parts(parts, Body::from(body))
}

fn fingerprint(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update([0]);
    hasher.update(parts.uri.to_string());
    hasher.update([0]);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        hasher.update(content_type.as_bytes());
    }
    hasher.update([0]);
    hasher.update(body);
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

enum Claim {
    Ours,
    Replay { status: u16, body: String },
    OtherRequest,
    InProgress,
}

async fn claim(
    database: &Database,
    subject: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Claim, StorageError> {
    let now = now_millis();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (account_id, key, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(subject)
    .bind(key)
    .bind(fingerprint)
    .bind(now)
    .execute(database.writer())
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Ours);
    }
    let row = sqlx::query(
        "SELECT fingerprint, status, response, created_at FROM idempotency_keys \
         WHERE account_id = $1 AND key = $2",
    )
    .bind(subject)
    .bind(key)
    .fetch_optional(database.writer())
    .await?;
    let Some(row) = row else {
        // Released between our insert and our read: try once more from the start.
        return Box::pin(claim(database, subject, key, fingerprint)).await;
    };
    let stored_fingerprint: String = row.get(0);
    let status: Option<i64> = row.get(1);
    let response: Option<String> = row.get(2);
    let created_at: i64 = row.get(3);
    if stored_fingerprint != fingerprint {
        return Ok(Claim::OtherRequest);
    }
    match (status, response) {
        (Some(status), Some(body)) => Ok(Claim::Replay {
            status: status as u16,
            body,
        }),
        _ if created_at < now - ABANDONED_AFTER_MILLIS => {
            let retaken = sqlx::query(
                "UPDATE idempotency_keys SET created_at = $3 \
                 WHERE account_id = $1 AND key = $2 AND status IS NULL AND created_at = $4",
            )
            .bind(subject)
            .bind(key)
            .bind(now)
            .bind(created_at)
            .execute(database.writer())
            .await?;
            Ok(if retaken.rows_affected() == 1 {
                Claim::Ours
            } else {
                Claim::InProgress
            })
        }
        _ => Ok(Claim::InProgress),
    }
}

async fn keep(
    database: &Database,
    subject: &str,
    key: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE account_id = $1 AND key = $2",
    )
    .bind(subject)
    .bind(key)
    .bind(i64::from(status.as_u16()))
    .bind(String::from_utf8_lossy(body).into_owned())
    .execute(database.writer())
    .await?;
    Ok(())
}

/// Forgets a claim whose request failed, so that a retry runs it again.
async fn release(database: &Database, subject: &str, key: &str) {
    let result = sqlx::query(
        "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND status IS NULL",
    )
    .bind(subject)
    .bind(key)
    .execute(database.writer())
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "cannot release an idempotency key");
    }
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Deletes keys older than a day; safe on every node at once.
pub async fn delete_expired(database: &Database) -> Result<u64, StorageError> {
    let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(now_millis() - KEPT_FOR_MILLIS)
        .execute(database.writer())
        .await?;
    Ok(result.rows_affected())
}

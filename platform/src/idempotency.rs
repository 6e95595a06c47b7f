//! Idempotent creation. A route that creates something takes its body through
//! [`Idempotent`]: a POST with an `Idempotency-Key` header then runs once per caller and key;
//! a retry with the same key and the same request gets the first answer again (with header
//! `idempotent-replayed: true`), the same key with a different request is refused. Only
//! successful answers are kept, so a failed call can simply be retried. Keys expire after a day.
//!
//! Three rules keep the stored answers harmless:
//! - Only routes that take [`Idempotent`] honour the header; elsewhere it is ignored. Routes
//!   that issue or take credentials (sign-in, sign-up, token refresh, runtime tokens, passwords)
//!   never take it, so no stored answer or request fingerprint holds a secret, and a retried
//!   `/auth/refresh` spends its refresh token again instead of replaying the new one.
//! - [`Idempotent`] is the body extractor, so it runs after the route's caller and scope
//!   extractors: a replay passes the same authentication and authorization as the first
//!   request (a disabled account or a revoked grant gets no stored answer), and a key is
//!   looked at only once the caller is known.
//! - The body is read under the route's own body limit (the layer below the router), never
//!   more.

use crate::auth::Authenticated;
use crate::error::{error_response, ApiError};
use crate::state::AppState;
use crate::storage::{now_millis, Database, StorageError};
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::{Arc, Mutex};

pub const HEADER: &str = "idempotency-key";

/// The header, for the OpenAPI document of the routes that honour it.
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

/// A key this request claimed; the layer keeps or releases it once the answer is known.
#[derive(Debug, Clone)]
struct ClaimedKey {
    subject: String,
    key: String,
}

/// Where [`Idempotent`] leaves its claim for [`keep_answers`].
#[derive(Debug, Clone, Default)]
struct ClaimSlot(Arc<Mutex<Option<ClaimedKey>>>);

/// The body of a route that honours `Idempotency-Key`, extracted as `E` (e.g. `Json<T>`,
/// `Bytes`). Must come after the route's caller and scope extractors, as a body extractor
/// always does.
#[derive(Debug)]
pub struct Idempotent<E>(pub E);

impl<E> FromRequest<AppState> for Idempotent<E>
where
    E: FromRequest<AppState>,
    E::Rejection: IntoResponse,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let extract = |request: Request| async move {
            E::from_request(request, state)
                .await
                .map(Idempotent)
                .map_err(IntoResponse::into_response)
        };
        let slot = request.extensions().get::<ClaimSlot>().cloned();
        let subject = request
            .extensions()
            .get::<Authenticated>()
            .map(|caller| caller.subject.clone());
        let (Some(slot), Some(subject)) = (slot, subject) else {
            // No key, or a route open to anyone: keys belong to a known caller.
            return extract(request).await;
        };
        let key = key_of(&request).map_err(IntoResponse::into_response)?;
        let (parts, body) = request.into_parts();
        // The body limit layer of the route wraps this body: reading stops at the route's limit.
        let bytes = Bytes::from_request(Request::new(body), state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "request body too large".to_owned(),
                    )
                } else {
                    ApiError::bad_request("unreadable_body", "the request body could not be read")
                        .into_response()
                }
            })?;
        let fingerprint = fingerprint(&parts, &bytes);
        match claim(&state.database, &subject, &key, &fingerprint).await {
            Ok(Claim::Ours) => {}
            Ok(Claim::Replay { status, body }) => return Err(replay(status, body)),
            Ok(Claim::OtherRequest) => {
                // A key bound to another request conflicts with what the platform holds.
                return Err(error_response(
                    StatusCode::CONFLICT,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request".to_owned(),
                ));
            }
            Ok(Claim::InProgress) => {
                return Err(error_response(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_progress",
                    "a request with this Idempotency-Key is still running; retry shortly"
                        .to_owned(),
                ))
            }
            Err(error) => return Err(ApiError::from(error).into_response()),
        }
        *slot.0.lock().expect("claim slot") = Some(ClaimedKey { subject, key });
        // A body `E` refuses (malformed JSON, ...) fails the request, which releases the key.
        extract(Request::from_parts(parts, Body::from(bytes))).await
    }
}

/// The key of a request that has one, checked only now that its caller is known.
fn key_of(request: &Request) -> Result<String, ApiError> {
    let value = request
        .headers()
        .get(HEADER)
        .expect("a claim slot is made only for requests with a key");
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(key.to_owned())
        }
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// The layer around every route: gives a keyed POST a slot for [`Idempotent`]'s claim, then
/// keeps the answer of a claimed request that succeeded and releases the claim of one that
/// failed. Reads no request body.
pub async fn keep_answers(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || !request.headers().contains_key(HEADER) {
        return next.run(request).await;
    }
    let slot = ClaimSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let claimed = slot.0.lock().expect("claim slot").take();
    let Some(ClaimedKey { subject, key }) = claimed else {
        return response;
    };
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

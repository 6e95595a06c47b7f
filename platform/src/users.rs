//! Player accounts ("users"): anonymous sign-up with a generated secret, sign-in with id and
//! secret, and sign-in with a device id that creates the user on first use. This is the hot
//! path of a launch day, so it does one cheap hash and at most two statements per call.

use crate::auth::{hash_secret, new_secret, refresh, secret_matches};
use crate::error::{ApiError, Json};
use crate::state::AppState;
use crate::storage::{new_id, now_millis, StorageError};
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{
    CreatedUser, DeviceSignIn, DeviceSignInRequest, ErrorBody, Role, TokenPair, UserSignInRequest,
};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::rules::{DEVICE_ID_MAX_CHARS, DEVICE_ID_MIN_CHARS};

/// Device ids come from the platform SDKs (a vendor id, a generated UUID): 8–256 characters,
/// none of them a control character.
pub fn check_device_id(device_id: &str) -> Result<(), ApiError> {
    if (DEVICE_ID_MIN_CHARS..=DEVICE_ID_MAX_CHARS).contains(&device_id.chars().count())
        && !device_id.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_device_id",
            format!(
                "device_id must be {DEVICE_ID_MIN_CHARS} to {DEVICE_ID_MAX_CHARS} characters without control characters"
            ),
        ))
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(sign_in))
        .routes(routes!(device_sign_in))
}

/// Public: creates an anonymous user. The secret is returned once and stored only hashed.
#[utoipa::path(post, path = "/api/v1/users", tag = "players",
    responses((status = 201, body = CreatedUser), (status = "4XX", body = ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    let user = CreatedUser {
        user_id: new_id(),
        secret: new_secret(),
    };
    sqlx::query("INSERT INTO users (id, secret_hash, created_at) VALUES ($1, $2, $3)")
        .bind(&user.user_id)
        .bind(hash_secret(&user.secret))
        .bind(now_millis())
        .execute(state.database.writer())
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Public: id and secret for player tokens. Unknown id and wrong secret answer alike.
#[utoipa::path(post, path = "/api/v1/users/sign-in", tag = "players", request_body = UserSignInRequest,
    responses((status = 200, body = TokenPair), (status = "4XX", body = ErrorBody)))]
async fn sign_in(
    State(state): State<AppState>,
    Json(request): Json<UserSignInRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let refused = || ApiError::unauthorized("invalid_credentials", "wrong user id or secret");
    if uuid::Uuid::parse_str(&request.user_id).is_err() || request.secret.len() > 256 {
        return Err(refused());
    }
    let row = sqlx::query("SELECT secret_hash, disabled_at FROM users WHERE id = $1")
        .bind(&request.user_id)
        .fetch_optional(state.database.reader())
        .await?
        .ok_or_else(refused)?;
    let secret_hash: Option<String> = row.get(0);
    let disabled_at: Option<i64> = row.get(1);
    match secret_hash {
        Some(stored) if secret_matches(&request.secret, &stored) => {}
        _ => return Err(refused()),
    }
    if disabled_at.is_some() {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "this user is disabled",
        ));
    }
    let pair = refresh::issue_pair(
        &state.database,
        &state.tokens,
        &request.user_id,
        Role::Player,
        None,
    )
    .await?;
    Ok(Json(pair))
}

/// Public: signs in by device id, creating the user the first time the device is seen.
#[utoipa::path(post, path = "/api/v1/users/device-sign-in", tag = "players",
    request_body = DeviceSignInRequest,
    responses((status = 200, body = DeviceSignIn), (status = "4XX", body = ErrorBody)))]
async fn device_sign_in(
    State(state): State<AppState>,
    Json(request): Json<DeviceSignInRequest>,
) -> Result<Json<DeviceSignIn>, ApiError> {
    let device_id = request.device_id;
    check_device_id(&device_id)?;
    let device_hash = hash_secret(&format!("device:{device_id}"));
    let database = &state.database;
    let existing = find_by_device(database.reader(), &device_hash).await?;
    let (user_id, disabled_at, created) = match existing {
        Some((user_id, disabled_at)) => (user_id, disabled_at, false),
        None => {
            let created_id = new_id();
            let inserted = sqlx::query(
                "INSERT INTO users (id, device_id_hash, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (device_id_hash) DO NOTHING",
            )
            .bind(&created_id)
            .bind(&device_hash)
            .bind(now_millis())
            .execute(database.writer())
            .await?;
            if inserted.rows_affected() == 1 {
                (created_id, None, true)
            } else {
                // Another request created it between our read and our insert.
                let (user_id, disabled_at) = find_by_device(database.writer(), &device_hash)
                    .await?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("device user vanished")))?;
                (user_id, disabled_at, false)
            }
        }
    };
    if disabled_at.is_some() {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "this user is disabled",
        ));
    }
    let tokens = refresh::issue_pair(database, &state.tokens, &user_id, Role::Player, None).await?;
    Ok(Json(DeviceSignIn {
        user_id,
        created,
        tokens,
    }))
}

async fn find_by_device(
    pool: &sqlx::AnyPool,
    device_hash: &str,
) -> Result<Option<(String, Option<i64>)>, StorageError> {
    let row = sqlx::query("SELECT id, disabled_at FROM users WHERE device_id_hash = $1")
        .bind(device_hash)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

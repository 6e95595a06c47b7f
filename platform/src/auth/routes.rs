//! `/api/v1/auth`: human sign-in, token refresh, sign-out and `me`.

use super::{refresh, AnyRole, Caller};
use crate::accounts;
use crate::error::{ApiError, Json};
use crate::server::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use rally_sdk::wire::{LoginRequest, Me, RefreshRequest, TokenPair};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh_tokens))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
}

/// A human account (admin, support, developer) trades username and password for tokens.
async fn login(
    State(state): State<AppState>,
    Json(request): Json<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let account =
        accounts::authenticate(&state.database, &request.username, request.password).await?;
    let pair = refresh::issue_pair(
        &state.database,
        &state.tokens,
        &account.id,
        account.role,
        None,
    )
    .await?;
    tracing::info!(account_id = %account.id, role = %account.role, "signed in");
    Ok(Json(pair))
}

/// Any role: spends a refresh token for a new pair.
async fn refresh_tokens(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let pair = refresh::rotate(&state.database, &state.tokens, &request.refresh_token).await?;
    Ok(Json(pair))
}

/// Revokes the refresh token and the rest of its family. Access tokens already issued stay
/// valid until they expire (minutes), which is why they are short-lived.
async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    if refresh::revoke(&state.database, &request.refresh_token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unauthorized(
            "invalid_refresh_token",
            "the refresh token is not known",
        ))
    }
}

async fn me(caller: Caller<AnyRole>) -> Json<Me> {
    Json(Me {
        subject: caller.subject,
        role: caller.role,
        expires_at: caller.expires_at,
    })
}

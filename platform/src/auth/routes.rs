//! `/api/v1/auth`: human sign-in, token refresh, sign-out and `me`.

use super::{refresh, AnyRole, Caller};
use crate::accounts;
use crate::error::{ApiError, Json};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::wire::{ErrorBody, LoginRequest, Me, RefreshRequest, Role, TokenPair};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh_tokens))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// A human account (admin, support, developer) trades username and password for tokens.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = "4XX", body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = "4XX", body = ErrorBody)))]
async fn refresh_tokens(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let pair = refresh::rotate(&state.database, &state.tokens, &request.refresh_token).await?;
    Ok(Json(pair))
}

/// Sign out: revokes the refresh token and the rest of its family. Access tokens already issued stay
/// valid until they expire (minutes), which is why they are short-lived.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
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

/// Who the presented access token belongs to.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = "4XX", body = ErrorBody)))]
async fn me(caller: Caller<AnyRole>, State(state): State<AppState>) -> Result<Json<Me>, ApiError> {
    let username = match caller.role {
        Role::Admin | Role::Support | Role::Developer => {
            sqlx::query_scalar("SELECT username FROM accounts WHERE id = $1")
                .bind(&caller.subject)
                .fetch_optional(state.database.reader())
                .await?
        }
        Role::Player | Role::Runtime => None,
    };
    Ok(Json(Me {
        subject: caller.subject,
        username,
        role: caller.role,
        // The token's `exp` is in seconds, as JWTs have it.
        expires_at: i64::try_from(caller.expires_at)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    }))
}

//! The `Caller<A>` extractor: a handler that takes `Caller<Staff>` admits only admin and support
//! tokens. A missing, tampered or expired token answers 401; a valid token of another role 403.

use super::tokens::{Claims, TokenError};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rally_sdk::wire::Role;
use std::marker::PhantomData;

/// The roles a route admits, as a type so that the handler's signature declares them.
pub trait Allowed: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

/// Any valid token.
#[derive(Debug)]
pub struct AnyRole;
impl Allowed for AnyRole {
    const ROLES: &'static [Role] = &Role::ALL;
}

/// The people who run the platform: admin and support.
#[derive(Debug)]
pub struct Staff;
impl Allowed for Staff {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Support];
}

/// The verified caller of a request.
#[derive(Debug)]
pub struct Caller<A: Allowed> {
    pub subject: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
    allowed: PhantomData<fn() -> A>,
}

/// Left in the request by [`Caller`] for what runs after it (the request's idempotency key
/// belongs to this subject).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub subject: String,
}

/// Verifies an access token for a route admitting `A`: 401 for a bad or expired token, 403 for
/// a valid token of another role. For tokens that do not come in the `Authorization` header.
pub fn verify_for<A: Allowed>(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let claims = state.tokens.verify(token).map_err(|error| match error {
        TokenError::Expired => ApiError::unauthorized(
            "token_expired",
            "the access token has expired; refresh it or sign in again",
        ),
        TokenError::Invalid => {
            ApiError::unauthorized("invalid_token", "the access token is not valid")
        }
    })?;
    if !A::ROLES.contains(&claims.role) {
        return Err(ApiError::Forbidden);
    }
    Ok(claims)
}

impl<A: Allowed> FromRequestParts<AppState> for Caller<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
        let claims = verify_for::<A>(state, token)?;
        parts.extensions.insert(Authenticated {
            subject: claims.sub.clone(),
        });
        Ok(Caller {
            subject: claims.sub,
            role: claims.role,
            expires_at: claims.exp,
            allowed: PhantomData,
        })
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "this route needs an `Authorization: Bearer <token>` header",
        )
    })?;
    let value = header.to_str().ok().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match value {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

//! Request and response bodies of the platform's HTTP API, shared by the server and its clients.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The body of every failed HTTP call: `{"error":{"code":"...","message":"..."}}`.
///
/// `code` is stable and meant for programs; `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Who a token speaks for. Human accounts are `admin`, `support` or `developer`; players and
/// runtimes get their own roles so that a token of one kind never opens the routes of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Support,
    Developer,
    Player,
    Runtime,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Support,
        Role::Developer,
        Role::Player,
        Role::Runtime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Support => "support",
            Role::Developer => "developer",
            Role::Player => "player",
            Role::Runtime => "runtime",
        }
    }

    /// Human accounts sign in with a username and a password.
    pub fn is_human(self) -> bool {
        matches!(self, Role::Admin | Role::Support | Role::Developer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// An access token (a JWT, short-lived) and the refresh token that renews it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single use: refreshing returns a new pair and retires this one.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub role: Role,
    /// The account (human or player user) the tokens belong to.
    pub subject: String,
}

/// `POST /api/v1/auth/login`: a human account signs in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `POST /api/v1/auth/refresh` and `POST /api/v1/auth/logout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `GET /api/v1/auth/me`: what the presented access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub subject: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
}

/// `POST /api/v1/users`: a new anonymous player account. The secret is shown once; the
/// platform keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedUser {
    pub user_id: String,
    pub secret: String,
}

/// `POST /api/v1/users/sign-in`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserSignInRequest {
    pub user_id: String,
    pub secret: String,
}

/// `POST /api/v1/users/device-sign-in`: the user is created on first use of a device id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceSignInRequest {
    pub device_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceSignIn {
    pub user_id: String,
    /// True when this call created the user.
    pub created: bool,
    pub tokens: TokenPair,
}

/// `POST /api/v1/developers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateDeveloperRequest {
    pub username: String,
    pub password: String,
}

/// A human account as the API shows it; never carries the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountList {
    pub accounts: Vec<Account>,
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
        }
        assert!("root".parse::<Role>().is_err());
    }
}

//! Access tokens: HS256 JWTs carrying subject, role, audience and expiry.
//!
//! The key comes from `jwt_secret` or is generated once and kept in the database (setting
//! `jwt_signing_key`), so every node signs and checks with the same key and tokens outlive
//! restarts. Audiences keep token kinds apart: a player token is never a management token.

use crate::config::Config;
use crate::storage::{Database, StorageResult};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rally_sdk::wire::Role;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "rally";
const SIGNING_KEY_SETTING: &str = "jwt_signing_key";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Account id (human) or user id (player) or runtime id.
    pub sub: String,
    pub role: Role,
    pub aud: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// The audience a role's tokens are issued for.
pub fn audience_for(role: Role) -> &'static str {
    match role {
        Role::Admin | Role::Support | Role::Developer => "rally-management",
        Role::Player => "rally-player",
        Role::Runtime => "rally-runtime",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
}

pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Uses the configured key, or the one kept in the database (generated on first start).
    pub async fn load(config: &Config, database: &Database) -> StorageResult<Self> {
        let key = match &config.jwt_secret {
            Some(secret) => secret.expose_secret().as_bytes().to_vec(),
            None => {
                let generated: [u8; 64] = rand::random();
                let generated = base64::engine::general_purpose::STANDARD.encode(generated);
                let stored = database
                    .setting_or_insert(SIGNING_KEY_SETTING, &generated)
                    .await?;
                base64::engine::general_purpose::STANDARD
                    .decode(stored)
                    .unwrap_or_default()
            }
        };
        Ok(Self::new(
            &key,
            Duration::from_secs(config.access_token_ttl_secs),
            Duration::from_secs(config.refresh_token_ttl_secs),
        ))
    }

    pub fn new(key: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&["rally-management", "rally-player", "rally-runtime"]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }

    /// A signed access token for `subject` in `role`, and its claims.
    pub fn issue(&self, subject: &str, role: Role) -> (String, Claims) {
        let now = unix_seconds();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            aud: audience_for(role).to_owned(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + self.access_ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    /// Checks signature, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let claims = data.claims;
        if claims.aud != audience_for(claims.role) {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(key: &[u8]) -> TokenService {
        TokenService::new(key, Duration::from_secs(60), Duration::from_secs(600))
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let tokens = service(b"0123456789abcdef0123456789abcdef");
        let (token, claims) = tokens.issue("user-1", Role::Player);
        assert_eq!(claims.aud, "rally-player");
        assert_eq!(tokens.verify(&token), Ok(claims));
    }

    #[test]
    fn a_token_signed_with_another_key_is_invalid() {
        let (token, _) = service(b"another-key-another-key-another-key").issue("a", Role::Admin);
        assert_eq!(
            service(b"0123456789abcdef0123456789abcdef").verify(&token),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_token_whose_audience_does_not_match_its_role_is_invalid() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "u".into(),
            role: Role::Admin,
            aud: "rally-player".into(),
            iss: ISSUER.into(),
            iat: unix_seconds(),
            exp: unix_seconds() + 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap();
        assert_eq!(service(key).verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_is_reported_as_expired() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = Claims {
            sub: "u".into(),
            role: Role::Developer,
            aud: "rally-management".into(),
            iss: ISSUER.into(),
            iat: unix_seconds() - 3600,
            exp: unix_seconds() - 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap();
        assert_eq!(service(key).verify(&token), Err(TokenError::Expired));
    }
}

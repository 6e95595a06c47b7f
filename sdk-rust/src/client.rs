//! Async HTTP client for the platform's API, used by the `rally` CLI, the load tool and tests.

use crate::wire::{
    Account, AccountList, CreateDeveloperRequest, CreatedUser, DeviceSignIn, DeviceSignInRequest,
    ErrorBody, Health, LoginRequest, Me, RefreshRequest, TokenPair, UserSignInRequest,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What can go wrong talking to the platform.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The platform answered with its error shape.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The platform answered, but not in a shape this client understands.
    #[error("unexpected answer from the platform (HTTP {status}): {body}")]
    Unexpected { status: u16, body: String },
    /// The platform could not be reached or the connection broke.
    #[error("cannot reach the platform: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("invalid platform URL {0:?}")]
    InvalidUrl(String),
}

impl ClientError {
    /// The stable error code the platform sent, if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// A handle on one platform. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct RallyClient {
    http: reqwest::Client,
    base_url: String,
    access_token: Option<String>,
}

impl RallyClient {
    /// `base_url` is the platform's root, e.g. `http://127.0.0.1:7350`.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("rally-sdk/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Self::with_http_client(http, base_url)
    }

    /// Shares an existing `reqwest::Client` (its pool and settings).
    pub fn with_http_client(http: reqwest::Client, base_url: &str) -> Result<Self, ClientError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::InvalidUrl(base_url));
        }
        Ok(Self {
            http,
            base_url,
            access_token: None,
        })
    }

    /// The same client, presenting `access_token` as a bearer token.
    pub fn authenticated(&self, access_token: &str) -> Self {
        Self {
            access_token: Some(access_token.to_owned()),
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    pub async fn ready(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/ready", None::<&()>).await
    }

    /// A human account (admin, support, developer) signs in.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenPair, ClientError> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self.call(Method::POST, "/api/v1/auth/login", Some(&body))
            .await
    }

    /// Trades a refresh token for a new pair; the old refresh token is spent.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ClientError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.call(Method::POST, "/api/v1/auth/refresh", Some(&body))
            .await
    }

    /// Revokes a refresh token and every token rotated from the same sign-in.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), ClientError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.call_empty(Method::POST, "/api/v1/auth/logout", Some(&body))
            .await
    }

    pub async fn me(&self) -> Result<Me, ClientError> {
        self.call(Method::GET, "/api/v1/auth/me", None::<&()>).await
    }

    /// Creates an anonymous player account.
    pub async fn create_user(&self) -> Result<CreatedUser, ClientError> {
        self.call(Method::POST, "/api/v1/users", Some(&serde_json::json!({})))
            .await
    }

    pub async fn sign_in_user(
        &self,
        user_id: &str,
        secret: &str,
    ) -> Result<TokenPair, ClientError> {
        let body = UserSignInRequest {
            user_id: user_id.to_owned(),
            secret: secret.to_owned(),
        };
        self.call(Method::POST, "/api/v1/users/sign-in", Some(&body))
            .await
    }

    pub async fn device_sign_in(&self, device_id: &str) -> Result<DeviceSignIn, ClientError> {
        let body = DeviceSignInRequest {
            device_id: device_id.to_owned(),
        };
        self.call(Method::POST, "/api/v1/users/device-sign-in", Some(&body))
            .await
    }

    pub async fn create_developer(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Account, ClientError> {
        let body = CreateDeveloperRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self.call(Method::POST, "/api/v1/developers", Some(&body))
            .await
    }

    pub async fn list_developers(&self) -> Result<Vec<Account>, ClientError> {
        let list: AccountList = self
            .call(Method::GET, "/api/v1/developers", None::<&()>)
            .await?;
        Ok(list.accounts)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        })
    }

    async fn call_empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body).await.map(drop)
    }

    /// Sends a request and turns any non-success answer into [`ClientError`].
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(token) = &self.access_token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from_response(response).await)
    }
}

async fn error_from_response(response: reqwest::Response) -> ClientError {
    let status: StatusCode = response.status();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => return ClientError::Transport(error),
    };
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        },
    }
}

//! The studio's image registry (`docs/registry.md`): a Docker distribution v2 registry whose
//! token endpoint is this platform. The platform signs the registry's tokens (ES256, key and
//! certificate made on first start, [`signing`]) and scopes them by the caller's grants
//! ([`access`]); it writes the registry's configuration; and it hears the registry's push
//! notifications ([`events`]), which link pushed images to versions.
//!
//! Whoever runs `docker login`, `push` or `pull` reaches the token endpoint with Basic
//! credentials: a developer's username and password, a credential from `rally registry login`
//! (a signed password, so the account password need not sit in Docker's config), or, for a
//! Docker server pulling what it runs, a short-lived credential the Docker pool hands its
//! daemon.

pub mod access;
pub mod events;
pub mod signing;

use crate::accounts;
use crate::error::{ApiError, Json};
use crate::permissions::Principal;
use crate::state::AppState;
use access::{Asker, Granted, Requested};
use axum::extract::{RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use base64::Engine;
use rally_sdk::wire::{
    CreateRegistryCredential, ErrorBody, RegistryCredential, RegistryInfo, RegistrySetup,
    RegistrySetupRequest, Role,
};
pub use signing::SERVICE;
use signing::{CredentialError, Holder, ISSUER};
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The shortest login a registry credential may be made for, in seconds.
pub const MIN_LOGIN_TTL_SECS: u64 = 60;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(registry_info))
        .routes(routes!(token))
        .routes(routes!(create_credential))
        .routes(routes!(setup))
        .routes(routes!(events::receive))
        .routes(routes!(events::list_pushes))
}

/// The `sub` of the builder's own registry tokens, and so the actor of its pushes (no username
/// holds a `:`).
pub const BUILDER_SUBJECT: &str = "rally:builder";

/// Scopes one token request may name.
const MAX_SCOPES: usize = 16;

/// Where the studio's registry is, and the service its tokens are for (any signed-in account).
#[utoipa::path(get, path = "/api/v1/registry", tag = "registry",
    security(("bearer" = [])),
    responses((status = 200, body = RegistryInfo), (status = "4XX", body = ErrorBody)))]
async fn registry_info(_principal: Principal, State(state): State<AppState>) -> Json<RegistryInfo> {
    Json(RegistryInfo {
        address: state.config.registry_address.clone(),
        service: SERVICE.to_owned(),
    })
}

/// The token answer of the Docker registry token protocol.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct TokenAnswer {
    token: String,
    /// The same token, under the OAuth 2 name.
    access_token: String,
    expires_in: u64,
}

/// The registry's token endpoint (Docker registry token protocol). Basic credentials: a
/// username and its password or `rally registry login` credential. `scope` may repeat
/// (`repository:<tenant>/<project>:push,pull`); the token grants the part of each scope the
/// caller may have, which may be none of it: the registry then refuses.
#[utoipa::path(get, path = "/api/v1/registry/token", tag = "registry",
    params(
        ("service" = Option<String>, Query, description = "Must be the registry's service."),
        ("scope" = Option<String>, Query, description = "`type:name:actions`; may repeat."),
    ),
    responses((status = 200, body = TokenAnswer), (status = "4XX", body = ErrorBody)))]
async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<TokenAnswer>, ApiError> {
    let mut scopes = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "service" if value != SERVICE => {
                return Err(ApiError::bad_request(
                    "unknown_service",
                    format!("this platform signs tokens for service {SERVICE:?}, not {value:?}"),
                ))
            }
            "scope" => scopes.extend(
                value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    if scopes.len() > MAX_SCOPES {
        return Err(ApiError::bad_request(
            "too_many_scopes",
            format!("a token request may name at most {MAX_SCOPES} scopes"),
        ));
    }
    let asker = authenticate(&state, &headers).await?;
    let mut access: Vec<Granted> = Vec::new();
    for scope in &scopes {
        let Some(requested) = Requested::parse(scope) else {
            return Err(ApiError::bad_request(
                "invalid_scope",
                format!("scope {scope:?} is not type:name:actions"),
            ));
        };
        match access::grant(&state.database, &asker, &requested).await? {
            Some(granted) => access.push(granted),
            None => tracing::info!(
                subject = %asker.subject(),
                %scope,
                "registry scope refused"
            ),
        }
    }
    let ttl = state.config.registry_token_ttl_secs;
    let token = state
        .registry
        .registry_token(&asker.subject(), &access, ttl);
    Ok(Json(TokenAnswer {
        access_token: token.clone(),
        token,
        expires_in: ttl,
    }))
}

/// Who the Basic credentials of a token request are.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Asker, ApiError> {
    let unauthorized =
        |message: &str| ApiError::unauthorized("invalid_credentials", message.to_owned());
    let Some(encoded) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
    else {
        return Err(ApiError::unauthorized(
            "missing_credentials",
            "the registry needs a username and password (docker login)",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| unauthorized("the Basic credentials are not base64 of username:password"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| unauthorized("the Basic credentials are not username:password"))?;
    let account = match state.registry.verify_login(username, password) {
        Ok(Holder::Server(name)) => {
            let pool: Option<String> =
                sqlx::query_scalar("SELECT pool FROM servers WHERE name = $1 AND kind = 'docker'")
                    .bind(&name)
                    .fetch_optional(state.database.reader())
                    .await?;
            let pool = pool.ok_or_else(|| unauthorized("that server is no longer registered"))?;
            return Ok(Asker::Server { name, pool });
        }
        Ok(Holder::Account(id)) => accounts::find(&state.database, &id)
            .await?
            .ok_or_else(|| unauthorized("the account of this credential no longer exists"))?,
        Err(CredentialError::Expired) => {
            return Err(ApiError::unauthorized(
                "credential_expired",
                CredentialError::Expired.to_string(),
            ))
        }
        // Not a credential: the account's password.
        Err(CredentialError::Invalid) => {
            accounts::authenticate(&state.database, username, password.to_owned()).await?
        }
    };
    if account.disabled {
        return Err(ApiError::unauthorized(
            "account_disabled",
            "this account is disabled",
        ));
    }
    Ok(Asker::Account {
        principal: Principal {
            account_id: account.id,
            role: account.role,
        },
        username: account.username,
    })
}

/// A credential for `docker login` (any signed-in account): the caller's username and a
/// signed password the token endpoint takes until it expires. Grants follow the account, as
/// they change.
#[utoipa::path(post, path = "/api/v1/registry/credentials", tag = "registry",
    request_body = CreateRegistryCredential,
    security(("bearer" = [])),
    responses((status = 200, body = RegistryCredential), (status = "4XX", body = ErrorBody)))]
async fn create_credential(
    principal: Principal,
    State(state): State<AppState>,
    Json(request): Json<CreateRegistryCredential>,
) -> Result<Json<RegistryCredential>, ApiError> {
    let longest = state.config.registry_login_ttl_secs;
    let ttl = request.ttl_secs.unwrap_or(longest);
    if !(MIN_LOGIN_TTL_SECS..=longest).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_secs must be between {MIN_LOGIN_TTL_SECS} and {longest}"),
        ));
    }
    let account = accounts::find(&state.database, &principal.account_id)
        .await?
        .ok_or(ApiError::NotFound { what: "account" })?;
    let (password, expires_at) = state.registry.issue_login(
        &Holder::Account(account.id),
        &account.username,
        Duration::from_secs(ttl),
    );
    tracing::info!(username = %account.username, ttl, "registry credential issued");
    Ok(Json(RegistryCredential {
        address: state.config.registry_address.clone(),
        username: account.username,
        password,
        expires_at: i64::try_from(expires_at)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    }))
}

/// The registry's configuration (admins): token authentication against this platform, the
/// certificate of its token key, and push notifications to it with a new shared secret.
#[utoipa::path(post, path = "/api/v1/registry/setup", tag = "registry",
    request_body = RegistrySetupRequest,
    security(("bearer" = [])),
    responses((status = 200, body = RegistrySetup), (status = "4XX", body = ErrorBody)))]
async fn setup(
    principal: Principal,
    State(state): State<AppState>,
    Json(request): Json<RegistrySetupRequest>,
) -> Result<Json<RegistrySetup>, ApiError> {
    if principal.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let Some(address) = state.config.registry_address.clone() else {
        return Err(ApiError::conflict(
            "registry_not_configured",
            "this platform has no registry: set registry_address (e.g. 127.0.0.1:5000) and restart",
        ));
    };
    let platform_url = request.platform_url.trim_end_matches('/');
    if !(platform_url.starts_with("http://") || platform_url.starts_with("https://")) {
        return Err(ApiError::bad_request(
            "invalid_url",
            "platform_url must start with http:// or https://",
        ));
    }
    for (field, path) in [
        ("storage_dir", &request.storage_dir),
        ("certificate_path", &request.certificate_path),
    ] {
        if !path.starts_with('/') || path.contains('\n') {
            return Err(ApiError::bad_request(
                "invalid_path",
                format!("{field} must be an absolute path"),
            ));
        }
    }
    let secret = events::rotate_secret(&state.database).await?;
    let quoted = |value: &str| serde_json::to_string(value).expect("a string serializes");
    let config = format!(
        "# Written by `rally registry setup`. It holds secrets: keep it private.\n\
         version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  secret: {http_secret}\n\
         auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {certificate}\n\
         notifications:\n  endpoints:\n    - name: rally\n      url: {events}\n      headers:\n        Authorization: [{authorization}]\n      timeout: 5s\n      threshold: 5\n      backoff: 1s\n      ignore:\n        mediatypes: [application/octet-stream]\n        actions: [pull]\n",
        storage = quoted(&request.storage_dir),
        addr = quoted(&address),
        http_secret = quoted(&crate::auth::new_secret()),
        realm = quoted(&format!("{platform_url}/api/v1/registry/token")),
        service = quoted(SERVICE),
        issuer = quoted(ISSUER),
        certificate = quoted(&request.certificate_path),
        events = quoted(&format!("{platform_url}/api/v1/registry/events")),
        authorization = quoted(&format!("Bearer {secret}")),
    );
    crate::audit::record(
        state.database.writer(),
        &principal,
        crate::audit::Change {
            action: "registry.setup",
            target_kind: "registry",
            target_id: &address,
            tenant_id: None,
            project_id: None,
            details: serde_json::json!({ "platform_url": platform_url }),
        },
    )
    .await?;
    Ok(Json(RegistrySetup {
        config,
        certificate: state.registry.certificate().to_owned(),
        address,
    }))
}

//! Async HTTP client for the platform's API, used by the `rally` CLI, the load tool and tests.

use crate::wire::{
    Account, AccountList, AuditEntry, AuditList, CreateDeployment, CreateDeveloperRequest,
    CreateNamed, CreateTenant, CreatedUser, Deployment, DeploymentList, DeviceSignIn,
    DeviceSignInRequest, ErrorBody, Grant, GrantList, GrantRequest, Health, LoginRequest, Me,
    PasswordReset, Project, ProjectList, RefreshRequest, Stage, StageList, Tenant, TenantList,
    TokenPair, UserSignInRequest, Version, VersionList,
};
use crate::wire::{
    Build, BuildList, CreateRegistryCredential, ImagePush, ImagePushList, RegistryCredential,
    RegistryInfo, RegistrySetup, RegistrySetupRequest,
};
use crate::wire::{
    CreatePool, PlacementStrategy, Pool, PoolList, RegisterServer, RuntimeInfo, RuntimeList,
    Server, ServerList, ServerStatus, SetServerStatus, SetStagePool, SetStrategy,
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
        /// Structured specifics for some codes (e.g. every manifest problem of a bundle).
        details: Option<serde_json::Value>,
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
    /// The node to ask instead, from a `wrong_node` answer (several nodes).
    pub fn node_url(&self) -> Option<String> {
        match self {
            ClientError::Api {
                details: Some(details),
                ..
            } => details
                .get("node_url")
                .and_then(|url| url.as_str())
                .map(str::to_owned),
            _ => None,
        }
    }

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
    idempotency_key: Option<String>,
}

/// Percent-encodes one path or query value (ids and aliases are plain; notes typed by people
/// may not be).
fn segment(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn project_path(tenant: &str, project: &str) -> String {
    format!(
        "/api/v1/tenants/{}/projects/{}",
        segment(tenant),
        segment(project)
    )
}

fn server_path(pool: &str, server: &str) -> String {
    format!(
        "/api/v1/pools/{}/servers/{}",
        segment(pool),
        segment(server)
    )
}

fn stage_path(tenant: &str, project: &str, stage: &str) -> String {
    format!(
        "{}/stages/{}",
        project_path(tenant, project),
        segment(stage)
    )
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
            idempotency_key: None,
        })
    }

    /// The same client, presenting `access_token` as a bearer token.
    pub fn authenticated(&self, access_token: &str) -> Self {
        Self {
            access_token: Some(access_token.to_owned()),
            ..self.clone()
        }
    }

    /// The access token this client presents, if any.
    pub fn access_token(&self) -> Option<&str> {
        self.access_token.as_deref()
    }

    /// The same client, sending `Idempotency-Key: key` with its POST requests: a retried call
    /// returns the first result instead of creating a duplicate.
    pub fn with_idempotency_key(&self, key: &str) -> Self {
        Self {
            idempotency_key: Some(key.to_owned()),
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

    /// A runtime trades its one-time secret for tokens (role `runtime`).
    pub async fn runtime_token(
        &self,
        runtime_id: &str,
        secret: &str,
    ) -> Result<TokenPair, ClientError> {
        let body = crate::runtime::RuntimeTokenRequest {
            runtime_id: runtime_id.to_owned(),
            secret: secret.to_owned(),
        };
        self.call(Method::POST, "/api/v1/runtime/token", Some(&body))
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

    pub async fn get_developer(&self, developer: &str) -> Result<Account, ClientError> {
        let path = format!("/api/v1/developers/{}", segment(developer));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Disables (`true`) or enables (`false`) a developer account.
    pub async fn set_developer_disabled(
        &self,
        developer: &str,
        disabled: bool,
    ) -> Result<Account, ClientError> {
        let verb = if disabled { "disable" } else { "enable" };
        let path = format!("/api/v1/developers/{}/{verb}", segment(developer));
        self.call(Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    pub async fn reset_developer_password(
        &self,
        developer: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/developers/{}/password", segment(developer));
        let body = PasswordReset {
            password: password.to_owned(),
        };
        self.call_empty(Method::POST, &path, Some(&body)).await
    }

    // Pools and servers (staff).

    pub async fn create_pool(
        &self,
        name: &str,
        strategy: PlacementStrategy,
    ) -> Result<Pool, ClientError> {
        let body = CreatePool {
            name: name.to_owned(),
            strategy,
        };
        self.call(Method::POST, "/api/v1/pools", Some(&body)).await
    }

    pub async fn registry(&self) -> Result<RegistryInfo, ClientError> {
        self.call(Method::GET, "/api/v1/registry", None::<&()>)
            .await
    }

    /// A credential for `docker login` to the studio's registry.
    pub async fn registry_credential(
        &self,
        ttl_secs: Option<u64>,
    ) -> Result<RegistryCredential, ClientError> {
        let body = CreateRegistryCredential { ttl_secs };
        self.call(Method::POST, "/api/v1/registry/credentials", Some(&body))
            .await
    }

    /// Starts a build of the version's runtime image (or answers the one under way).
    pub async fn start_build(
        &self,
        tenant: &str,
        project: &str,
        version: &str,
    ) -> Result<Build, ClientError> {
        let path = format!(
            "{}/versions/{}/builds",
            project_path(tenant, project),
            segment(version)
        );
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// The version's builds, newest first.
    pub async fn list_builds(
        &self,
        tenant: &str,
        project: &str,
        version: &str,
    ) -> Result<Vec<Build>, ClientError> {
        let path = format!(
            "{}/versions/{}/builds",
            project_path(tenant, project),
            segment(version)
        );
        let list: BuildList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.builds)
    }

    pub async fn get_build(
        &self,
        tenant: &str,
        project: &str,
        build: &str,
    ) -> Result<Build, ClientError> {
        let path = format!(
            "{}/builds/{}",
            project_path(tenant, project),
            segment(build)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// The project's image pushes the registry reported, newest first.
    pub async fn list_image_pushes(
        &self,
        tenant: &str,
        project: &str,
    ) -> Result<Vec<ImagePush>, ClientError> {
        let path = format!("{}/image-pushes", project_path(tenant, project));
        let list: ImagePushList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.pushes)
    }

    /// The configuration of a registry that authenticates with this platform (admins).
    pub async fn registry_setup(
        &self,
        request: &RegistrySetupRequest,
    ) -> Result<RegistrySetup, ClientError> {
        self.call(Method::POST, "/api/v1/registry/setup", Some(request))
            .await
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, ClientError> {
        let list: PoolList = self.call(Method::GET, "/api/v1/pools", None::<&()>).await?;
        Ok(list.pools)
    }

    pub async fn get_pool(&self, pool: &str) -> Result<Pool, ClientError> {
        let path = format!("/api/v1/pools/{}", segment(pool));
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn delete_pool(&self, pool: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/pools/{}", segment(pool));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    pub async fn set_pool_strategy(
        &self,
        pool: &str,
        strategy: PlacementStrategy,
    ) -> Result<Pool, ClientError> {
        let path = format!("/api/v1/pools/{}/strategy", segment(pool));
        self.call(Method::PUT, &path, Some(&SetStrategy { strategy }))
            .await
    }

    pub async fn register_server(
        &self,
        pool: &str,
        server: &RegisterServer,
    ) -> Result<Server, ClientError> {
        let path = format!("/api/v1/pools/{}/servers", segment(pool));
        self.call(Method::POST, &path, Some(server)).await
    }

    /// The servers of `pool`, or of every pool.
    /// The platform's nodes, alive, dead or stopped (staff).
    pub async fn list_nodes(&self) -> Result<Vec<crate::wire::Node>, ClientError> {
        let list: crate::wire::NodeList =
            self.call(Method::GET, "/api/v1/nodes", None::<&()>).await?;
        Ok(list.nodes)
    }

    /// Moves a stage to a live node (admin, support): its node hands it over once its
    /// runtimes there have stopped (`docs/nodes.md`).
    pub async fn move_stage(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        node: &str,
    ) -> Result<crate::wire::StageMove, ClientError> {
        let path = format!("{}/node", stage_path(tenant, project, stage));
        let body = crate::wire::SetStageNode {
            node: node.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    pub async fn list_servers(&self, pool: Option<&str>) -> Result<Vec<Server>, ClientError> {
        let path = match pool {
            Some(pool) => format!("/api/v1/pools/{}/servers", segment(pool)),
            None => "/api/v1/servers".to_owned(),
        };
        let list: ServerList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.servers)
    }

    pub async fn get_server(&self, pool: &str, server: &str) -> Result<Server, ClientError> {
        let path = server_path(pool, server);
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn remove_server(&self, pool: &str, server: &str) -> Result<(), ClientError> {
        let path = server_path(pool, server);
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    pub async fn set_server_status(
        &self,
        pool: &str,
        server: &str,
        status: ServerStatus,
    ) -> Result<Server, ClientError> {
        let path = format!("{}/status", server_path(pool, server));
        self.call(Method::PUT, &path, Some(&SetServerStatus { status }))
            .await
    }

    /// The runtimes on a server that are not over.
    pub async fn server_runtimes(
        &self,
        pool: &str,
        server: &str,
    ) -> Result<Vec<RuntimeInfo>, ClientError> {
        let path = format!("{}/runtimes", server_path(pool, server));
        let list: RuntimeList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.runtimes)
    }

    /// Moves a stage's new runtimes to `pool`.
    pub async fn set_stage_pool(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        pool: &str,
    ) -> Result<Stage, ClientError> {
        let path = format!("{}/pool", stage_path(tenant, project, stage));
        let body = SetStagePool {
            pool: pool.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        alias: Option<&str>,
    ) -> Result<Tenant, ClientError> {
        let body = CreateTenant {
            name: name.to_owned(),
            alias: alias.map(str::to_owned),
        };
        self.call(Method::POST, "/api/v1/tenants", Some(&body))
            .await
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ClientError> {
        let list: TenantList = self
            .call(Method::GET, "/api/v1/tenants", None::<&()>)
            .await?;
        Ok(list.tenants)
    }

    pub async fn get_tenant(&self, tenant: &str) -> Result<Tenant, ClientError> {
        let path = format!("/api/v1/tenants/{}", segment(tenant));
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/tenants/{}", segment(tenant));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    pub async fn grant(&self, tenant: &str, grant: &GrantRequest) -> Result<Grant, ClientError> {
        let path = format!("/api/v1/tenants/{}/grants", segment(tenant));
        self.call(Method::POST, &path, Some(grant)).await
    }

    pub async fn revoke(&self, tenant: &str, grant: &GrantRequest) -> Result<(), ClientError> {
        let path = format!("/api/v1/tenants/{}/grants/revoke", segment(tenant));
        self.call_empty(Method::POST, &path, Some(grant)).await
    }

    pub async fn list_grants(&self, tenant: &str) -> Result<Vec<Grant>, ClientError> {
        let path = format!("/api/v1/tenants/{}/grants", segment(tenant));
        let list: GrantList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.grants)
    }

    pub async fn create_project(
        &self,
        tenant: &str,
        name: &str,
        alias: Option<&str>,
    ) -> Result<Project, ClientError> {
        let path = format!("/api/v1/tenants/{}/projects", segment(tenant));
        let body = CreateNamed {
            name: name.to_owned(),
            alias: alias.map(str::to_owned),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    pub async fn list_projects(&self, tenant: &str) -> Result<Vec<Project>, ClientError> {
        let path = format!("/api/v1/tenants/{}/projects", segment(tenant));
        let list: ProjectList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.projects)
    }

    pub async fn get_project(&self, tenant: &str, project: &str) -> Result<Project, ClientError> {
        self.call(Method::GET, &project_path(tenant, project), None::<&()>)
            .await
    }

    pub async fn delete_project(&self, tenant: &str, project: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &project_path(tenant, project), None::<&()>)
            .await
    }

    pub async fn create_stage(
        &self,
        tenant: &str,
        project: &str,
        name: &str,
        alias: Option<&str>,
    ) -> Result<Stage, ClientError> {
        let path = format!("{}/stages", project_path(tenant, project));
        let body = CreateNamed {
            name: name.to_owned(),
            alias: alias.map(str::to_owned),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    pub async fn list_stages(
        &self,
        tenant: &str,
        project: &str,
    ) -> Result<Vec<Stage>, ClientError> {
        let path = format!("{}/stages", project_path(tenant, project));
        let list: StageList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.stages)
    }

    pub async fn get_stage(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
    ) -> Result<Stage, ClientError> {
        self.call(
            Method::GET,
            &stage_path(tenant, project, stage),
            None::<&()>,
        )
        .await
    }

    pub async fn delete_stage(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::DELETE,
            &stage_path(tenant, project, stage),
            None::<&()>,
        )
        .await
    }

    /// Uploads a bundle archive (tar.gz) as a new version of the project.
    pub async fn upload_version(
        &self,
        tenant: &str,
        project: &str,
        archive: impl Into<reqwest::Body>,
        note: Option<&str>,
    ) -> Result<Version, ClientError> {
        let mut path = format!("{}/versions", project_path(tenant, project));
        if let Some(note) = note {
            path.push_str(&format!("?note={}", segment(note)));
        }
        let request = self
            .request(Method::POST, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(archive);
        let response = Self::check(request.send().await?).await?;
        decode(response).await
    }

    pub async fn list_versions(
        &self,
        tenant: &str,
        project: &str,
    ) -> Result<Vec<Version>, ClientError> {
        let path = format!("{}/versions", project_path(tenant, project));
        let list: VersionList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.versions)
    }

    /// `version` is an id or a number.
    pub async fn get_version(
        &self,
        tenant: &str,
        project: &str,
        version: &str,
    ) -> Result<Version, ClientError> {
        let path = format!(
            "{}/versions/{}",
            project_path(tenant, project),
            segment(version)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn delete_version(
        &self,
        tenant: &str,
        project: &str,
        version: &str,
    ) -> Result<(), ClientError> {
        let path = format!(
            "{}/versions/{}",
            project_path(tenant, project),
            segment(version)
        );
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// Deploys `version` (id or number) to the stage; `config` overrides the version's
    /// deployment defaults (`serde_json::Value::Null` for none).
    pub async fn deploy(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        version: &str,
        config: serde_json::Value,
    ) -> Result<Deployment, ClientError> {
        let path = format!("{}/deployments", stage_path(tenant, project, stage));
        let body = CreateDeployment {
            version: version.to_owned(),
            config,
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    pub async fn list_deployments(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
    ) -> Result<Vec<Deployment>, ClientError> {
        let path = format!("{}/deployments", stage_path(tenant, project, stage));
        let list: DeploymentList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.deployments)
    }

    pub async fn get_deployment(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        deployment: &str,
    ) -> Result<Deployment, ClientError> {
        let path = format!(
            "{}/deployments/{}",
            stage_path(tenant, project, stage),
            segment(deployment)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn stop_deployment(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        deployment: &str,
    ) -> Result<Deployment, ClientError> {
        let path = format!(
            "{}/deployments/{}/stop",
            stage_path(tenant, project, stage),
            segment(deployment)
        );
        self.call(Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    /// Runtimes of a deployment, newest first.
    pub async fn list_runtimes(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        deployment: &str,
    ) -> Result<Vec<crate::wire::RuntimeInfo>, ClientError> {
        let path = format!(
            "{}/deployments/{}/runtimes",
            stage_path(tenant, project, stage),
            segment(deployment)
        );
        let list: crate::wire::RuntimeList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.runtimes)
    }

    /// What a runtime printed.
    pub async fn runtime_logs(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        deployment: &str,
        runtime: &str,
    ) -> Result<String, ClientError> {
        let path = format!(
            "{}/deployments/{}/runtimes/{}/logs",
            stage_path(tenant, project, stage),
            segment(deployment),
            segment(runtime)
        );
        let response = self.send(Method::GET, &path, None::<&()>).await?;
        Ok(response.text().await?)
    }

    /// The audit log: of the whole platform (staff) when `tenant` is None, else of the tenant.
    pub async fn audit(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        let path = match tenant {
            Some(tenant) => format!("/api/v1/tenants/{}/audit?limit={limit}", segment(tenant)),
            None => format!("/api/v1/audit?limit={limit}"),
        };
        let list: AuditList = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(list.entries)
    }

    // ---- players ----

    /// Creates a client of the calling player (a player token) on the stage's current
    /// deployment. Open its socket at [`crate::player::CreatedClient::socket_path`].
    pub async fn create_client(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
    ) -> Result<crate::player::CreatedClient, ClientError> {
        let path = format!("{}/clients", stage_path(tenant, project, stage));
        self.call(Method::POST, &path, Some(&serde_json::json!({})))
            .await
    }

    /// One of the calling player's clients.
    pub async fn get_client(&self, client: &str) -> Result<crate::player::ClientInfo, ClientError> {
        let path = format!("/api/v1/clients/{}", segment(client));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Ends one of the calling player's clients (reason `left`).
    pub async fn delete_client(&self, client: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/clients/{}", segment(client));
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// The calling player's profile on a stage.
    pub async fn my_player(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
    ) -> Result<crate::player::Player, ClientError> {
        let path = format!("{}/players/me", stage_path(tenant, project, stage));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// A player of a stage, by user id (viewers of the stage).
    pub async fn get_player(
        &self,
        tenant: &str,
        project: &str,
        stage: &str,
        user: &str,
    ) -> Result<crate::player::Player, ClientError> {
        let path = format!(
            "{}/players/{}",
            stage_path(tenant, project, stage),
            segment(user)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Long-poll: the client's events after `after`, waiting up to `wait_ms` for the first.
    pub async fn poll_events(
        &self,
        client: &str,
        after: u64,
        wait_ms: u64,
    ) -> Result<crate::player::PolledEvents, ClientError> {
        let path = format!(
            "/api/v1/clients/{}/events?after={after}&wait_ms={wait_ms}",
            segment(client)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Long-poll: commands for the client, as the socket would carry them.
    pub async fn send_commands(
        &self,
        client: &str,
        commands: Vec<crate::player::PlayerCommand>,
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/clients/{}/commands", segment(client));
        self.call_empty(
            Method::POST,
            &path,
            Some(&crate::player::CommandBatch { commands }),
        )
        .await
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        decode(self.send(method, path, body).await?).await
    }

    async fn call_empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body).await.map(drop)
    }

    /// A request with this client's token and idempotency key.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_at(&self.base_url, method, path)
    }

    /// The same, to the platform node at `base_url`.
    fn request_at(&self, base_url: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        let post = method == Method::POST;
        let mut request = self.http.request(
            method,
            format!("{}{}", base_url.trim_end_matches('/'), path),
        );
        if let Some(token) = &self.access_token {
            request = request.bearer_auth(token);
        }
        if let (true, Some(key)) = (post, &self.idempotency_key) {
            request = request.header("idempotency-key", key);
        }
        request
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from_response(response).await)
    }

    /// Sends a request and turns any non-success answer into [`ClientError`].
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        match Self::check(request.send().await?).await {
            // A client served by another node (`docs/nodes.md`): asked once more, there.
            Err(error) if error.code() == Some(crate::player::WRONG_NODE) => {
                let Some(node_url) = error.node_url() else {
                    return Err(error);
                };
                let mut request = self.request_at(&node_url, method, path);
                if let Some(body) = body {
                    request = request.json(body);
                }
                Self::check(request.send().await?).await
            }
            answer => answer,
        }
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
    })
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
            details: body.error.details,
        },
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        },
    }
}

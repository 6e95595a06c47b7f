//! Request and response bodies of the platform's HTTP API, shared by the server and its clients.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Reads an optional integer as JSON Schema counts integers, `60` and `60.0` alike; a
/// fraction, a negative number or one too large for `T` is refused.
fn integral<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|value| value.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(value))
            .map(|value| value as u64)
    });
    whole
        .and_then(|value| T::try_from(value).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, not {number}")))
}

/// The body of every failed HTTP call: `{"error":{"code":"...","message":"..."}}`.
///
/// `code` is stable and meant for programs; `message` is for people and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// Structured specifics for some codes, e.g. every problem found in a bundle's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub details: Option<serde_json::Value>,
}

/// Who a token speaks for. Human accounts are `admin`, `support` or `developer`; players and
/// runtimes get their own roles so that a token of one kind never opens the routes of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `POST /api/v1/auth/refresh` and `POST /api/v1/auth/logout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `GET /api/v1/auth/me`: what the presented access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub subject: String,
    /// The account's username, for people (admin, support, developers); absent for players
    /// and runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub role: Role,
    /// When the access token presented expires, Unix milliseconds like every timestamp of
    /// the API.
    pub expires_at: i64,
}

/// `POST /api/v1/users`: a new anonymous player account. The secret is shown once; the
/// platform keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedUser {
    pub user_id: String,
    pub secret: String,
}

/// `POST /api/v1/users/sign-in`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserSignInRequest {
    pub user_id: String,
    pub secret: String,
}

/// `POST /api/v1/users/device-sign-in`: the user is created on first use of a device id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSignInRequest {
    pub device_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSignIn {
    pub user_id: String,
    /// True when this call created the user.
    pub created: bool,
    pub tokens: TokenPair,
}

/// `POST /api/v1/developers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeveloperRequest {
    pub username: String,
    pub password: String,
}

/// A human account as the API shows it; never carries the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountList {
    pub accounts: Vec<Account>,
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
}

// ---- Management: tenants, projects, stages, permissions, versions, deployments, audit ----

/// `POST /api/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// A unique slug usable wherever the id is: 1–63 of `a-z 0-9 -`, starting with a letter.
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub id: String,
    pub alias: Option<String>,
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// `POST .../projects` and `POST .../stages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateNamed {
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    pub id: String,
    pub tenant_id: String,
    pub alias: Option<String>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stage {
    pub id: String,
    pub project_id: String,
    pub alias: Option<String>,
    pub name: String,
    /// The stage's current (active) deployment, if any.
    pub current_deployment_id: Option<String>,
    /// The pool its new runtimes start in.
    pub pool: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageList {
    pub stages: Vec<Stage>,
}

/// What a grant applies to: a whole tenant, one project, or one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Tenant,
    Project,
    Stage,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Tenant => "tenant",
            ScopeKind::Project => "project",
            ScopeKind::Stage => "stage",
        }
    }
}

/// `viewer` reads projects, stages, versions and deployments in its scope; `manager` also
/// creates and changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum GrantRole {
    Viewer,
    Manager,
}

impl GrantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantRole::Viewer => "viewer",
            GrantRole::Manager => "manager",
        }
    }
}

/// `POST /api/v1/tenants/{tenant}/grants` and `.../grants/revoke`. `project` is needed for
/// project and stage scopes, `stage` for stage scopes (ids or aliases).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Developer account id or username.
    pub developer: String,
    pub scope: ScopeKind,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    pub role: GrantRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    pub account_id: String,
    pub username: String,
    pub tenant_id: String,
    pub scope: ScopeKind,
    pub scope_id: String,
    pub role: GrantRole,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantList {
    pub grants: Vec<Grant>,
}

/// `POST /api/v1/developers/{developer}/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Version {
    pub id: String,
    pub project_id: String,
    /// 1, 2, 3... within the project; usable wherever the id is.
    pub number: i64,
    /// sha256 of the uploaded archive.
    pub bundle_sha256: String,
    pub bundle_size: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub manifest: serde_json::Value,
    pub note: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    /// The runtime image Docker pools run for this version, once one is linked.
    #[serde(default)]
    pub image: Option<VersionImage>,
}

/// A version's runtime image in the studio's registry, pulled by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionImage {
    /// `<registry>/<tenant>/<project>@sha256:...`
    pub reference: String,
    pub digest: String,
    /// `build` (the platform's builder) or `push` (a developer's push).
    pub source: String,
    /// Who pushed it: a username, or `rally:builder`.
    pub pushed_by: Option<String>,
    pub linked_at: i64,
}

/// A manifest push the registry reported, and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagePush {
    pub id: String,
    pub received_at: i64,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    pub actor: Option<String>,
    pub version_id: Option<String>,
    /// `linked`, `already_linked` or `ignored`.
    pub outcome: String,
    /// Why, in words.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagePushList {
    pub pushes: Vec<ImagePush>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionList {
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// The stage's current deployment: new clients go here.
    Active,
    /// Replaced by a newer deployment; existing matches finish, then it closes.
    Draining,
    Closed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Active => "active",
            DeploymentStatus::Draining => "draining",
            DeploymentStatus::Closed => "closed",
        }
    }
}

/// `POST .../stages/{stage}/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    /// Version id or number, of the stage's project.
    pub version: String,
    /// Overrides of the version's deployment defaults (see the manifest's `[deployment]`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: String,
    pub stage_id: String,
    pub version_id: String,
    pub version_number: i64,
    pub status: DeploymentStatus,
    /// The effective deployment config: the version's defaults with the deployment's
    /// overrides.
    pub config: crate::manifest::DeploymentConfig,
    pub created_by: String,
    pub created_at: i64,
    pub draining_at: Option<i64>,
    pub closed_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

/// One management change: who, what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    pub actor_id: String,
    /// The actor's username, while the account exists.
    #[serde(default)]
    pub actor_username: Option<String>,
    pub actor_role: Role,
    /// e.g. `tenant.create`, `version.upload`, `deployment.create`, `grant.revoke`.
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    /// The target's alias or name (a version's `v<number>`, an account's username), while it
    /// exists.
    #[serde(default)]
    pub target_name: Option<String>,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// A runtime (one running lobby or match of a deployment) as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuntimeInfo {
    pub id: String,
    pub deployment_id: String,
    pub qualifier: crate::runtime::Qualifier,
    pub mode: Option<String>,
    /// `starting`, `running`, `stopping`, `stopped` or `failed`.
    pub status: String,
    /// The platform node that placed it.
    pub node_id: String,
    /// `process` or `docker`.
    pub pool_kind: String,
    /// The pool that placed it.
    pub pool: String,
    /// The server of the pool it runs on, once placed.
    pub server: Option<String>,
    /// The pool's handle on it, once placed: a pid, a container id.
    pub handle: Option<String>,
    /// The process id, for runtimes of the local-process pool.
    pub pid: Option<i64>,
    pub created_at: i64,
    pub connected_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuntimeList {
    pub runtimes: Vec<RuntimeInfo>,
}

/// How a pool picks the server for a new runtime among those it fits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// The server with the most room left: runtimes spread over the servers, so a lost server
    /// takes few games with it.
    #[default]
    Spread,
    /// The server with the least room left that still fits: servers fill one after another,
    /// so that idle ones can be drained and removed.
    Pack,
}

impl PlacementStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::Pack => "pack",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "spread" => Some(Self::Spread),
            "pack" => Some(Self::Pack),
            _ => None,
        }
    }
}

/// A pool of servers where runtimes run; each stage uses one (`local` unless moved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pool {
    pub name: String,
    pub strategy: PlacementStrategy,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

/// `POST /api/v1/pools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// A slug: 1 to 63 of `a-z 0-9 -`, starting with a letter.
    pub name: String,
    #[serde(default)]
    pub strategy: PlacementStrategy,
}

/// `PUT /api/v1/pools/{pool}/strategy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetStrategy {
    pub strategy: PlacementStrategy,
}

/// Kinds of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The platform node's own machine: runtimes are its child processes.
    Process,
    /// A Docker daemon: runtimes are containers.
    Docker,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "process" => Some(Self::Process),
            "docker" => Some(Self::Docker),
            _ => None,
        }
    }
}

/// Whether a server takes new runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    /// Takes new runtimes.
    Enabled,
    /// Takes no new runtimes; those running finish their lobbies and matches.
    Draining,
    /// Takes no new runtimes, and those on it are stopped (with the grace period) and
    /// replaced elsewhere.
    Disabled,
}

impl ServerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "enabled" => Some(Self::Enabled),
            "draining" => Some(Self::Draining),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// What a server offers runtimes; `None` is not limited (the process server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Thousandths of a CPU core.
    #[serde(default, deserialize_with = "integral")]
    pub cpu_millis: Option<u32>,
    #[serde(default, deserialize_with = "integral")]
    pub memory_mb: Option<u32>,
    /// Runtimes at once.
    #[serde(default, deserialize_with = "integral")]
    pub runtimes: Option<u32>,
}

/// What the runtimes on a server hold of its capacity, as their deployments asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub runtimes: u64,
}

/// Client certificate files for a Docker daemon on TCP with TLS: paths on the platform's host,
/// so that the key never passes through the API or the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DockerTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Where a Docker server's daemon is and how its containers reach the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DockerEndpoint {
    /// `unix:///var/run/docker.sock`, or `tcp://host:2376` (with `tls`).
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DockerTls>,
    /// The network containers join: `host` (the default) or a named network.
    #[serde(default = "host_network")]
    pub network: String,
    /// The URL runtimes in its containers use to reach the platform; the platform's own
    /// runtime URL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_url: Option<String>,
}

fn host_network() -> String {
    "host".to_owned()
}

/// A server as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Server {
    pub name: String,
    pub pool: String,
    pub kind: ServerKind,
    pub status: ServerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerEndpoint>,
    pub capacity: Capacity,
    pub usage: Usage,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerList {
    pub servers: Vec<Server>,
}

/// `POST /api/v1/pools/{pool}/servers`: a Docker daemon joins the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterServer {
    /// A slug, unique among all servers.
    pub name: String,
    pub docker: DockerEndpoint,
    /// Every field is required for a Docker server.
    pub capacity: Capacity,
}

/// `PUT /api/v1/pools/{pool}/servers/{server}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetServerStatus {
    pub status: ServerStatus,
}

/// `PUT /api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/pool`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetStagePool {
    pub pool: String,
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

/// `GET /api/v1/registry`: where the studio's registry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryInfo {
    /// `host:port` of the registry as Docker daemons and developers reach it; absent when this
    /// platform has no registry (`registry_address`).
    pub address: Option<String>,
    /// The registry's `service`: the audience of the tokens the platform signs for it.
    pub service: String,
}

/// `POST /api/v1/registry/credentials`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRegistryCredential {
    /// How long the credential is valid, in seconds; at most `registry_login_ttl_secs` (the
    /// default).
    #[serde(default, deserialize_with = "integral")]
    pub ttl_secs: Option<u64>,
}

/// A credential for `docker login`: the caller's username and a signed password that the
/// platform's token endpoint takes in place of the account password.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryCredential {
    pub address: Option<String>,
    pub username: String,
    pub password: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/registry/setup` (admins): the configuration of a registry that authenticates
/// with this platform and notifies it of pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistrySetupRequest {
    /// The platform's URL as the registry and the Docker daemons reach it (token realm and
    /// notification endpoint).
    pub platform_url: String,
    /// Where the registry stores images (an absolute directory).
    pub storage_dir: String,
    /// Where the certificate of the platform's token key will be (an absolute path).
    pub certificate_path: String,
}

/// The registry's configuration file and the certificate it names. Issuing it gives the
/// registry a new notification secret: a registry started with an older file is no longer
/// heard.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistrySetup {
    /// `config.yml` for `docker-registry serve` (distribution 2.8).
    pub config: String,
    /// PEM; goes to `certificate_path`.
    pub certificate: String,
    pub address: String,
}

impl std::fmt::Debug for RegistrySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySetup")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Where a build is: `queued` → `building` → `pushing` → `done`, or `failed` at any step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Queued,
    Building,
    Pushing,
    Done,
    Failed,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Building => "building",
            BuildStatus::Pushing => "pushing",
            BuildStatus::Done => "done",
            BuildStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<BuildStatus> {
        Some(match text {
            "queued" => BuildStatus::Queued,
            "building" => BuildStatus::Building,
            "pushing" => BuildStatus::Pushing,
            "done" => BuildStatus::Done,
            "failed" => BuildStatus::Failed,
            _ => return None,
        })
    }

    /// Done or failed: nothing more happens to it.
    pub fn is_finished(self) -> bool {
        matches!(self, BuildStatus::Done | BuildStatus::Failed)
    }
}

/// The platform's builder making a version's runtime image and pushing it to the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Build {
    pub id: String,
    pub project_id: String,
    pub version_id: String,
    pub version: i64,
    pub status: BuildStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The image, once pushed: `<registry>/<tenant>/<project>@sha256:...`.
    pub reference: Option<String>,
    pub digest: Option<String>,
    /// What the builder did, line by line (the last 64 KiB).
    pub log: String,
    pub created_by: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildList {
    pub builds: Vec<Build>,
}

/// A platform node (`GET /api/v1/nodes`, `docs/nodes.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    pub id: String,
    /// How players and other nodes reach it (`advertise_url`).
    pub url: String,
    /// `alive`, `dead` (no heartbeat for `node_dead_after_secs`) or `stopped` (gracefully).
    pub status: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stopped_at: Option<i64>,
    /// Its runtimes that are starting, running or stopping.
    pub runtimes: i64,
    /// Its active clients.
    pub clients: i64,
    /// The stages it runs (holds the lease of), by name.
    #[serde(default)]
    pub stages: Vec<NodeStage>,
}

/// A stage a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStage {
    pub stage_id: String,
    /// `tenant/project/stage`, by aliases where they are set, else ids.
    pub path: String,
    /// The node it is being handed over to, during a move.
    pub moving_to: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// `PUT /api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/node`: move the stage to a
/// node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetStageNode {
    /// The id of a live node.
    pub node: String,
}

/// A move asked for: the stage's node hands it over once its runtimes there have stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageMove {
    pub stage_id: String,
    pub from_node: String,
    pub to_node: String,
}

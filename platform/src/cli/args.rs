//! Flags shared by the commands that work inside a tenant, a project or a stage, and by the
//! commands that create something. Each also reads a `RALLY_*` variable, so that a script or a
//! shell session can set its tenant and project once.

use clap::Args;
use rally_sdk::RallyClient;

/// The stage every project is created with.
pub const DEFAULT_STAGE: &str = "default";

#[derive(Debug, Args, Clone)]
pub struct TenantArgs {
    /// Tenant id or alias.
    #[arg(long, env = "RALLY_TENANT")]
    pub tenant: String,
}

#[derive(Debug, Args, Clone)]
pub struct ProjectArgs {
    /// Tenant id or alias.
    #[arg(long, env = "RALLY_TENANT")]
    pub tenant: String,
    /// Project id or alias.
    #[arg(long, env = "RALLY_PROJECT")]
    pub project: String,
}

#[derive(Debug, Args, Clone)]
pub struct StageArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Stage id or alias.
    #[arg(long, env = "RALLY_STAGE", default_value = DEFAULT_STAGE)]
    pub stage: String,
}

impl ProjectArgs {
    /// `tenant/project`, as people read it in messages.
    pub fn path(&self) -> String {
        format!("{}/{}", self.tenant, self.project)
    }
}

impl StageArgs {
    pub fn tenant(&self) -> &str {
        &self.project.tenant
    }

    pub fn project(&self) -> &str {
        &self.project.project
    }

    /// `tenant/project/stage`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.project.path(), self.stage)
    }
}

#[derive(Debug, Args, Clone)]
pub struct IdempotencyArgs {
    /// Makes the command safe to retry: a retry with the same key returns what the first call
    /// created instead of creating it again.
    #[arg(long, env = "RALLY_IDEMPOTENCY_KEY", value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl IdempotencyArgs {
    /// The client, sending the key when one was given.
    pub fn apply(&self, client: &RallyClient) -> RallyClient {
        match &self.idempotency_key {
            Some(key) => client.with_idempotency_key(key),
            None => client.clone(),
        }
    }

    /// For a command that makes several requests: each step gets its own key derived from the
    /// given one, because the platform refuses one key for two different requests.
    pub fn apply_to_step(&self, client: &RallyClient, step: &str) -> RallyClient {
        match &self.idempotency_key {
            Some(key) => client.with_idempotency_key(&format!("{key}:{step}")),
            None => client.clone(),
        }
    }
}

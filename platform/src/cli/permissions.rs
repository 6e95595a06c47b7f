//! `rally permission grant|revoke|list` (admin or support): which developer may see (viewer) or
//! change (manager) what in a tenant. The scope follows the flags given: `--project` narrows a grant to one
//! project, `--stage` (with `--project`) to one stage.
//!
//! Unlike the other commands, `--project` and `--stage` are not read from `RALLY_PROJECT` and
//! `RALLY_STAGE` here: a variable left set in a shell would silently narrow a grant.

use super::args::{IdempotencyArgs, TenantArgs};
use super::session::{connect, TargetArgs};
use super::table::{time, Table};
use super::{print_json, CliError};
use clap::{Args, Subcommand, ValueEnum};
use rally_sdk::wire::{Grant, GrantList, GrantRequest, GrantRole, ScopeKind};

#[derive(Debug, Subcommand)]
pub enum PermissionCommand {
    /// Grant a developer a role in the tenant, or in one project or stage of it.
    Grant {
        #[command(flatten)]
        grant: GrantArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Revoke a role given by `rally permission grant` (same flags).
    Revoke {
        #[command(flatten)]
        grant: GrantArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List every grant in the tenant.
    List {
        #[command(flatten)]
        tenant: TenantArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// Developer username or account id.
    #[arg(long)]
    developer: String,
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Only this project (id or alias) instead of the whole tenant.
    #[arg(long)]
    project: Option<String>,
    /// Only this stage (id or alias) of the project.
    #[arg(long, requires = "project")]
    stage: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Reads projects, stages, versions and deployments.
    Viewer,
    /// Also creates, deploys, changes and deletes them.
    Manager,
}

impl GrantArgs {
    fn request(&self) -> GrantRequest {
        let scope = match (&self.project, &self.stage) {
            (_, Some(_)) => ScopeKind::Stage,
            (Some(_), None) => ScopeKind::Project,
            (None, None) => ScopeKind::Tenant,
        };
        GrantRequest {
            developer: self.developer.clone(),
            scope,
            project: self.project.clone(),
            stage: self.stage.clone(),
            role: match self.role {
                RoleArg::Viewer => GrantRole::Viewer,
                RoleArg::Manager => GrantRole::Manager,
            },
        }
    }

    /// `tenant T`, `project T/P` or `stage T/P/S`, as people read it.
    fn scope(&self) -> String {
        let tenant = &self.tenant.tenant;
        match (&self.project, &self.stage) {
            (Some(project), Some(stage)) => format!("stage {tenant}/{project}/{stage}"),
            (Some(project), None) => format!("project {tenant}/{project}"),
            _ => format!("tenant {tenant}"),
        }
    }
}

pub async fn run(command: PermissionCommand) -> Result<(), CliError> {
    match command {
        PermissionCommand::Grant {
            grant,
            idempotency,
            target,
        } => {
            let client = idempotency.apply(&connect(&target).await?);
            let granted = client.grant(&grant.tenant.tenant, &grant.request()).await?;
            if target.output.json {
                print_json(&granted)?;
            } else {
                println!(
                    "granted {} to {} on {}",
                    granted.role.as_str(),
                    granted.username,
                    grant.scope()
                );
            }
        }
        PermissionCommand::Revoke { grant, target } => {
            let request = grant.request();
            connect(&target)
                .await?
                .revoke(&grant.tenant.tenant, &request)
                .await?;
            if target.output.json {
                print_json(&serde_json::json!({ "revoked": true, "grant": request }))?;
            } else {
                println!(
                    "revoked {} from {} on {}",
                    request.role.as_str(),
                    request.developer,
                    grant.scope()
                );
            }
        }
        PermissionCommand::List { tenant, target } => {
            let grants = connect(&target).await?.list_grants(&tenant.tenant).await?;
            if target.output.json {
                print_json(&GrantList { grants })?;
            } else {
                print_grants(&grants);
            }
        }
    }
    Ok(())
}

fn print_grants(grants: &[Grant]) {
    let mut table = Table::new(&["DEVELOPER", "ROLE", "SCOPE", "SCOPE ID", "GRANTED"]);
    for grant in grants {
        table.row(vec![
            grant.username.clone(),
            grant.role.as_str().to_owned(),
            grant.scope.as_str().to_owned(),
            grant.scope_id.clone(),
            time(grant.created_at),
        ]);
    }
    table.print_or("no grants in this tenant; add one with `rally permission grant`");
}

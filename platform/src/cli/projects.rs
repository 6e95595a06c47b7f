//! `rally project create|list|show|delete --tenant T`: the games of a tenant. Creating a project
//! also creates its `default` stage.

use super::args::{IdempotencyArgs, TenantArgs};
use super::session::{connect, TargetArgs};
use super::table::{or_dash, print_fields, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::{Project, ProjectList};

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project (tenant managers); it starts with a stage named `default`.
    Create {
        #[command(flatten)]
        tenant: TenantArgs,
        #[arg(long)]
        name: String,
        /// A slug unique in the tenant, usable wherever the id is.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the projects of a tenant that you can see.
    List {
        #[command(flatten)]
        tenant: TenantArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one project.
    Show {
        /// Project id or alias.
        project: String,
        #[command(flatten)]
        tenant: TenantArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a project with its stages and versions; refused while it has live deployments.
    Delete {
        /// Project id or alias.
        project: String,
        #[command(flatten)]
        tenant: TenantArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: ProjectCommand) -> Result<(), CliError> {
    match command {
        ProjectCommand::Create {
            tenant,
            name,
            alias,
            idempotency,
            target,
        } => {
            let client = idempotency.apply(&connect(&target).await?);
            let project = client
                .create_project(&tenant.tenant, &name, alias.as_deref())
                .await?;
            if target.output.json {
                print_json(&project)?;
            } else {
                print_project(&project);
            }
        }
        ProjectCommand::List { tenant, target } => {
            let projects = connect(&target)
                .await?
                .list_projects(&tenant.tenant)
                .await?;
            if target.output.json {
                print_json(&ProjectList { projects })?;
            } else {
                let mut table = Table::new(&["ID", "ALIAS", "NAME", "CREATED"]);
                for project in &projects {
                    table.row(vec![
                        project.id.clone(),
                        or_dash(project.alias.as_deref()),
                        project.name.clone(),
                        time(project.created_at),
                    ]);
                }
                table.print_or("no projects yet; create one with `rally project create`");
            }
        }
        ProjectCommand::Show {
            project,
            tenant,
            target,
        } => {
            let project = connect(&target)
                .await?
                .get_project(&tenant.tenant, &project)
                .await?;
            if target.output.json {
                print_json(&project)?;
            } else {
                print_project(&project);
            }
        }
        ProjectCommand::Delete {
            project,
            tenant,
            target,
        } => {
            connect(&target)
                .await?
                .delete_project(&tenant.tenant, &project)
                .await?;
            if target.output.json {
                print_json(&serde_json::json!({
                    "deleted": true, "tenant": tenant.tenant, "project": project,
                }))?;
            } else {
                println!("deleted project {}/{project}", tenant.tenant);
            }
        }
    }
    Ok(())
}

fn print_project(project: &Project) {
    print_fields(&[
        ("id", project.id.clone()),
        ("tenant", project.tenant_id.clone()),
        ("alias", or_dash(project.alias.as_deref())),
        ("name", project.name.clone()),
        ("created", time(project.created_at)),
    ]);
}

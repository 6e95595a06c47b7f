//! `rally tenant create|list|show|delete`. Staff create and delete tenants; a developer lists and
//! shows the tenants it holds a grant in.

use super::args::IdempotencyArgs;
use super::session::{connect, TargetArgs};
use super::table::{or_dash, print_fields, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::{Tenant, TenantList};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (admin or support).
    Create {
        #[arg(long)]
        name: String,
        /// A unique slug usable wherever the id is: 1–63 of `a-z 0-9 -`, starting with a letter.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the tenants you can see.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one tenant.
    Show {
        /// Tenant id or alias.
        tenant: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a tenant with everything in it (admin or support); refused while it has live
    /// deployments.
    Delete {
        /// Tenant id or alias.
        tenant: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: TenantCommand) -> Result<(), CliError> {
    match command {
        TenantCommand::Create {
            name,
            alias,
            idempotency,
            target,
        } => {
            let client = idempotency.apply(&connect(&target).await?);
            let tenant = client.create_tenant(&name, alias.as_deref()).await?;
            if target.output.json {
                print_json(&tenant)?;
            } else {
                print_tenant(&tenant);
            }
        }
        TenantCommand::List { target } => {
            let tenants = connect(&target).await?.list_tenants().await?;
            if target.output.json {
                print_json(&TenantList { tenants })?;
            } else {
                let mut table = Table::new(&["ID", "ALIAS", "NAME", "CREATED"]);
                for tenant in &tenants {
                    table.row(vec![
                        tenant.id.clone(),
                        or_dash(tenant.alias.as_deref()),
                        tenant.name.clone(),
                        time(tenant.created_at),
                    ]);
                }
                table.print_or("no tenants (an admin creates them with `rally tenant create`)");
            }
        }
        TenantCommand::Show { tenant, target } => {
            let tenant = connect(&target).await?.get_tenant(&tenant).await?;
            if target.output.json {
                print_json(&tenant)?;
            } else {
                print_tenant(&tenant);
            }
        }
        TenantCommand::Delete { tenant, target } => {
            connect(&target).await?.delete_tenant(&tenant).await?;
            if target.output.json {
                print_json(&serde_json::json!({ "deleted": true, "tenant": tenant }))?;
            } else {
                println!("deleted tenant {tenant}");
            }
        }
    }
    Ok(())
}

fn print_tenant(tenant: &Tenant) {
    print_fields(&[
        ("id", tenant.id.clone()),
        ("alias", or_dash(tenant.alias.as_deref())),
        ("name", tenant.name.clone()),
        ("created", time(tenant.created_at)),
    ]);
}

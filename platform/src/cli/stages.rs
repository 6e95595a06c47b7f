//! `rally stage create|list|show|set-pool|delete --tenant T --project P`: where a project's versions run
//! (`default`, `staging`, `production`...).

use super::args::{IdempotencyArgs, ProjectArgs};
use super::session::{connect, TargetArgs};
use super::table::{or_dash, print_fields, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::{Stage, StageList};

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Create a stage (project managers).
    Create {
        #[command(flatten)]
        project: ProjectArgs,
        #[arg(long)]
        name: String,
        /// A slug unique in the project, usable wherever the id is.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the stages of a project and their current deployments.
    List {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one stage.
    Show {
        /// Stage id or alias.
        stage: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Move a stage to a pool (admin or support): its new runtimes start there; those
    /// running finish where they are.
    SetPool {
        /// Stage id or alias.
        stage: String,
        /// The pool's name.
        pool: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Move a stage to another node (admin or support, several nodes on PostgreSQL): its
    /// node stops its runtimes there and hands it over; players reconnect to the new node.
    /// `rally node list` shows the nodes and their stages.
    Move {
        /// Stage id or alias.
        stage: String,
        /// The id of a live node.
        #[arg(long = "to")]
        node: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a stage; refused while it has live deployments.
    Delete {
        /// Stage id or alias.
        stage: String,
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: StageCommand) -> Result<(), CliError> {
    match command {
        StageCommand::Create {
            project,
            name,
            alias,
            idempotency,
            target,
        } => {
            let client = idempotency.apply(&connect(&target).await?);
            let stage = client
                .create_stage(&project.tenant, &project.project, &name, alias.as_deref())
                .await?;
            if target.output.json {
                print_json(&stage)?;
            } else {
                print_stage(&stage);
            }
        }
        StageCommand::List { project, target } => {
            let stages = connect(&target)
                .await?
                .list_stages(&project.tenant, &project.project)
                .await?;
            if target.output.json {
                print_json(&StageList { stages })?;
            } else {
                let mut table = Table::new(&[
                    "ID",
                    "ALIAS",
                    "NAME",
                    "POOL",
                    "CURRENT DEPLOYMENT",
                    "CREATED",
                ]);
                for stage in &stages {
                    table.row(vec![
                        stage.id.clone(),
                        or_dash(stage.alias.as_deref()),
                        stage.name.clone(),
                        stage.pool.clone(),
                        or_dash(stage.current_deployment_id.as_deref()),
                        time(stage.created_at),
                    ]);
                }
                table.print_or("no stages");
            }
        }
        StageCommand::Show {
            stage,
            project,
            target,
        } => {
            let stage = connect(&target)
                .await?
                .get_stage(&project.tenant, &project.project, &stage)
                .await?;
            if target.output.json {
                print_json(&stage)?;
            } else {
                print_stage(&stage);
            }
        }
        StageCommand::SetPool {
            stage,
            pool,
            project,
            target,
        } => {
            let stage = connect(&target)
                .await?
                .set_stage_pool(&project.tenant, &project.project, &stage, &pool)
                .await?;
            if target.output.json {
                print_json(&stage)?;
            } else {
                print_stage(&stage);
            }
        }
        StageCommand::Move {
            stage,
            node,
            project,
            target,
        } => {
            let moved = connect(&target)
                .await?
                .move_stage(&project.tenant, &project.project, &stage, &node)
                .await?;
            if target.output.json {
                print_json(&moved)?;
            } else if moved.from_node == moved.to_node {
                println!(
                    "stage {} already runs on node {}",
                    moved.stage_id, moved.to_node
                );
            } else {
                println!(
                    "stage {} moves from node {} to node {}: its runtimes stop there, then its players reconnect to the new node",
                    moved.stage_id, moved.from_node, moved.to_node
                );
            }
        }
        StageCommand::Delete {
            stage,
            project,
            target,
        } => {
            connect(&target)
                .await?
                .delete_stage(&project.tenant, &project.project, &stage)
                .await?;
            if target.output.json {
                print_json(&serde_json::json!({
                    "deleted": true, "tenant": project.tenant, "project": project.project,
                    "stage": stage,
                }))?;
            } else {
                println!("deleted stage {}/{stage}", project.path());
            }
        }
    }
    Ok(())
}

fn print_stage(stage: &Stage) {
    print_fields(&[
        ("id", stage.id.clone()),
        ("project", stage.project_id.clone()),
        ("alias", or_dash(stage.alias.as_deref())),
        ("name", stage.name.clone()),
        ("pool", stage.pool.clone()),
        (
            "current deployment",
            or_dash(stage.current_deployment_id.as_deref()),
        ),
        ("created", time(stage.created_at)),
    ]);
}

//! `rally runtime list|logs`: the runtimes of a deployment and what each printed.

use super::args::StageArgs;
use super::session::{connect, TargetArgs};
use super::table::{or_dash, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::RuntimeList;

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// List the runtimes of a deployment, newest first.
    List {
        /// Deployment id [default: the stage's active deployment].
        #[arg(long)]
        deployment: Option<String>,
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print what a runtime printed (kept on the node that ran it, capped in size).
    Logs {
        /// Runtime id.
        runtime: String,
        /// Deployment id [default: the stage's active deployment].
        #[arg(long)]
        deployment: Option<String>,
        #[command(flatten)]
        stage: StageArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: RuntimeCommand) -> Result<(), CliError> {
    match command {
        RuntimeCommand::List {
            deployment,
            stage,
            target,
        } => {
            let client = connect(&target).await?;
            let deployment = deployment_or_active(&client, &stage, deployment).await?;
            let runtimes = client
                .list_runtimes(stage.tenant(), stage.project(), &stage.stage, &deployment)
                .await?;
            if target.output.json {
                return print_json(&RuntimeList { runtimes });
            }
            let mut table = Table::new(&["ID", "QUALIFIER", "STATUS", "PID", "CREATED", "FAILURE"]);
            for runtime in &runtimes {
                table.row(vec![
                    runtime.id.clone(),
                    runtime.qualifier.as_str().to_owned(),
                    runtime.status.clone(),
                    runtime
                        .pid
                        .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                    time(runtime.created_at),
                    or_dash(runtime.failure.as_deref()),
                ]);
            }
            table.print_or("no runtimes");
        }
        RuntimeCommand::Logs {
            runtime,
            deployment,
            stage,
            target,
        } => {
            let client = connect(&target).await?;
            let deployment = deployment_or_active(&client, &stage, deployment).await?;
            let logs = client
                .runtime_logs(
                    stage.tenant(),
                    stage.project(),
                    &stage.stage,
                    &deployment,
                    &runtime,
                )
                .await?;
            print!("{logs}");
        }
    }
    Ok(())
}

/// `deployment`, or the stage's active one when none is given.
async fn deployment_or_active(
    client: &rally_sdk::RallyClient,
    stage: &StageArgs,
    deployment: Option<String>,
) -> Result<String, CliError> {
    if let Some(deployment) = deployment {
        return Ok(deployment);
    }
    client
        .get_stage(stage.tenant(), stage.project(), &stage.stage)
        .await?
        .current_deployment_id
        .ok_or_else(|| {
            CliError::Usage(format!(
                "stage {} has no active deployment: name one with --deployment \
                 (rally deployment list)",
                stage.stage
            ))
        })
}

//! `rally node list` (admin, support): the platform's nodes, whether each is alive, and what
//! runs on it (`docs/nodes.md`).

use super::session::{connect, TargetArgs};
use super::table::{or_dash, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::NodeList;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes: alive, dead (no heartbeat) or stopped, with their runtimes and clients.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::List { target } => {
            let nodes = connect(&target).await?.list_nodes().await?;
            if target.output.json {
                print_json(&NodeList { nodes })?;
                return Ok(());
            }
            let mut table = Table::new(&[
                "ID",
                "URL",
                "STATUS",
                "RUNTIMES",
                "CLIENTS",
                "STAGES",
                "STARTED",
                "LAST HEARD",
                "STOPPED",
            ]);
            for node in &nodes {
                table.row(vec![
                    node.id.clone(),
                    node.url.clone(),
                    node.status.clone(),
                    node.runtimes.to_string(),
                    node.clients.to_string(),
                    stages(node),
                    time(node.started_at),
                    time(node.heartbeat_at),
                    or_dash(node.stopped_at.map(time).as_deref()),
                ]);
            }
            table.print_or("no nodes");
        }
    }
    Ok(())
}

/// A node's stages, comma-separated; one being moved says where to.
fn stages(node: &rally_sdk::wire::Node) -> String {
    let names: Vec<String> = node
        .stages
        .iter()
        .map(|stage| match &stage.moving_to {
            Some(to) => format!("{} (moving to {to})", stage.path),
            None => stage.path.clone(),
        })
        .collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}

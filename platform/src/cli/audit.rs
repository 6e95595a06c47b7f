//! `rally audit [--tenant T] [--limit N]`: who changed what and when, newest first. Staff see the
//! whole platform's log; a developer sees the log of a tenant it holds a grant in.

use super::session::{connect, TargetArgs};
use super::table::{time, Table};
use super::{print_json, CliError};
use clap::Args;
use rally_sdk::wire::AuditList;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only the changes inside this tenant (id or alias); without it, the whole platform's
    /// log, which takes an admin or support account.
    #[arg(long, env = "RALLY_TENANT")]
    tenant: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    limit: u32,
    #[command(flatten)]
    target: TargetArgs,
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let entries = connect(&args.target)
        .await?
        .audit(args.tenant.as_deref(), args.limit)
        .await?;
    if args.target.output.json {
        return print_json(&AuditList { entries });
    }
    let mut table = Table::new(&["AT", "ACTOR", "ROLE", "ACTION", "TARGET"]);
    for entry in &entries {
        table.row(vec![
            time(entry.at),
            entry
                .actor_username
                .clone()
                .unwrap_or_else(|| entry.actor_id.clone()),
            entry.actor_role.as_str().to_owned(),
            entry.action.clone(),
            format!(
                "{} {}",
                entry.target_kind,
                entry.target_name.as_deref().unwrap_or(&entry.target_id)
            ),
        ]);
    }
    table.print_or("no changes recorded");
    Ok(())
}

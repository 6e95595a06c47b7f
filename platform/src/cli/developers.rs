//! `rally developer create|list`: developer accounts, for admin and support.

use super::session::{connect, TargetArgs};
use super::CliError;
use clap::Subcommand;
use rally_sdk::wire::Account;

#[derive(Debug, Subcommand)]
pub enum DeveloperCommand {
    /// Create a developer account; prints a generated password when none is given.
    Create {
        #[arg(long)]
        username: String,
        /// Initial password (or RALLY_DEVELOPER_PASSWORD); generated when absent.
        #[arg(long, env = "RALLY_DEVELOPER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List developer accounts.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: DeveloperCommand) -> Result<(), CliError> {
    match command {
        DeveloperCommand::Create {
            username,
            password,
            target,
        } => {
            let client = connect(&target).await?;
            let (password, generated) = match password {
                Some(password) => (password, false),
                None => (crate::auth::new_secret(), true),
            };
            let account = client.create_developer(&username, &password).await?;
            if target.output.json {
                let mut shown = serde_json::to_value(&account).map_err(anyhow::Error::from)?;
                if generated {
                    shown["password"] = password.into();
                }
                println!("{shown}");
            } else {
                print_table(std::slice::from_ref(&account));
                if generated {
                    println!("\npassword: {password}\n(shown once; hand it to {username} over a safe channel)");
                }
            }
        }
        DeveloperCommand::List { target } => {
            let client = connect(&target).await?;
            let accounts = client.list_developers().await?;
            if target.output.json {
                println!(
                    "{}",
                    serde_json::to_string(&accounts).map_err(anyhow::Error::from)?
                );
            } else {
                print_table(&accounts);
            }
        }
    }
    Ok(())
}

fn print_table(accounts: &[Account]) {
    let width = accounts
        .iter()
        .map(|account| account.username.len())
        .max()
        .unwrap_or(0)
        .max("USERNAME".len());
    println!(
        "{:<36}  {:<width$}  {:<9}  STATUS",
        "ID", "USERNAME", "ROLE"
    );
    for account in accounts {
        let status = if account.disabled {
            "disabled"
        } else {
            "active"
        };
        println!(
            "{:<36}  {:<width$}  {:<9}  {status}",
            account.id, account.username, account.role
        );
    }
}

//! `rally developer create|list|show|disable|enable|reset-password`: developer accounts, for
//! admin and support.

use super::session::{connect, TargetArgs};
use super::table::{print_fields, time, Table};
use super::{print_json, CliError};
use clap::Subcommand;
use rally_sdk::wire::{Account, AccountList};

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
    /// Show one developer account.
    Show {
        /// Username or account id.
        developer: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Disable an account: it can no longer sign in, and its tokens stop working.
    Disable {
        /// Username or account id.
        developer: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Enable a disabled account again.
    Enable {
        /// Username or account id.
        developer: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Set a new password; prints a generated one when none is given.
    ResetPassword {
        /// Username or account id.
        developer: String,
        /// The new password (or RALLY_DEVELOPER_PASSWORD); generated when absent.
        #[arg(long, env = "RALLY_DEVELOPER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// The given password, or a generated one that must then be shown (once).
fn password_or_generated(password: Option<String>) -> (String, Generated) {
    match password {
        Some(password) => (password, Generated::No),
        None => (crate::auth::new_secret(), Generated::Yes),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generated {
    Yes,
    No,
}

pub async fn run(command: DeveloperCommand) -> Result<(), CliError> {
    match command {
        DeveloperCommand::Create {
            username,
            password,
            target,
        } => {
            let client = connect(&target).await?;
            let (password, generated) = password_or_generated(password);
            let account = client.create_developer(&username, &password).await?;
            if target.output.json {
                let mut shown = serde_json::to_value(&account).map_err(anyhow::Error::from)?;
                if generated == Generated::Yes {
                    shown["password"] = password.into();
                }
                print_json(&shown)?;
            } else {
                print_accounts(std::slice::from_ref(&account));
                if generated == Generated::Yes {
                    print_generated_password(&account.username, &password);
                }
            }
        }
        DeveloperCommand::List { target } => {
            let accounts = connect(&target).await?.list_developers().await?;
            if target.output.json {
                print_json(&AccountList { accounts })?;
            } else {
                print_accounts(&accounts);
            }
        }
        DeveloperCommand::Show { developer, target } => {
            let account = connect(&target).await?.get_developer(&developer).await?;
            show_account(&account, target.output.json)?;
        }
        DeveloperCommand::Disable { developer, target } => {
            let account = connect(&target)
                .await?
                .set_developer_disabled(&developer, true)
                .await?;
            show_account(&account, target.output.json)?;
        }
        DeveloperCommand::Enable { developer, target } => {
            let account = connect(&target)
                .await?
                .set_developer_disabled(&developer, false)
                .await?;
            show_account(&account, target.output.json)?;
        }
        DeveloperCommand::ResetPassword {
            developer,
            password,
            target,
        } => {
            let client = connect(&target).await?;
            let (password, generated) = password_or_generated(password);
            client
                .reset_developer_password(&developer, &password)
                .await?;
            if target.output.json {
                let mut shown =
                    serde_json::json!({ "developer": developer, "password_reset": true });
                if generated == Generated::Yes {
                    shown["password"] = password.into();
                }
                print_json(&shown)?;
            } else {
                println!("password of {developer} reset");
                if generated == Generated::Yes {
                    print_generated_password(&developer, &password);
                }
            }
        }
    }
    Ok(())
}

fn print_generated_password(username: &str, password: &str) {
    println!("\npassword: {password}\n(shown once; hand it to {username} over a safe channel)");
}

fn show_account(account: &Account, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(account);
    }
    print_fields(&[
        ("id", account.id.clone()),
        ("username", account.username.clone()),
        ("role", account.role.as_str().to_owned()),
        ("status", status(account).to_owned()),
        ("created", time(account.created_at)),
    ]);
    Ok(())
}

fn status(account: &Account) -> &'static str {
    if account.disabled {
        "disabled"
    } else {
        "active"
    }
}

fn print_accounts(accounts: &[Account]) {
    let mut table = Table::new(&["ID", "USERNAME", "ROLE", "STATUS", "CREATED"]);
    for account in accounts {
        table.row(vec![
            account.id.clone(),
            account.username.clone(),
            account.role.as_str().to_owned(),
            status(account).to_owned(),
            time(account.created_at),
        ]);
    }
    table.print_or("no developer accounts yet; create one with `rally developer create`");
}

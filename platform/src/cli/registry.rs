//! `rally registry ...`: signing Docker in to the studio's registry, writing the registry's
//! configuration (admins), and the pushes it reported (`docs/registry.md`).

use super::args::ProjectArgs;
use super::session::{connect, write_private, TargetArgs};
use super::table::{or_dash, time, Table};
use super::{print_json, CliError};
use anyhow::Context;
use clap::Subcommand;
use rally_sdk::wire::{ImagePushList, RegistrySetupRequest};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Sign Docker in to the studio's registry with a credential of your account: runs
    /// `docker login` with it, so your password is not stored in Docker's config.
    Login {
        /// How long the credential is valid, in seconds (default and most: the platform's
        /// `registry_login_ttl_secs`).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Print the credential (JSON) instead of running `docker login`.
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Write the registry's configuration and the certificate of the platform's token key
    /// into a directory (admin), for `docker-registry serve DIR/config.yml`. Each run gives
    /// the registry a new notification secret: restart the registry with the new file.
    Setup {
        /// Directory for config.yml, token.crt and the images (storage/).
        #[arg(long)]
        dir: PathBuf,
        /// The platform's URL as the registry and the Docker daemons reach it (default: the
        /// URL this command talks to).
        #[arg(long)]
        platform_url: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The project's image pushes the registry reported, and what came of each.
    Pushes {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run(command: RegistryCommand) -> Result<(), CliError> {
    match command {
        RegistryCommand::Login {
            ttl_secs,
            print,
            target,
        } => {
            let credential = connect(&target)
                .await?
                .registry_credential(ttl_secs)
                .await?;
            if print || target.output.json {
                return print_json(&credential);
            }
            let Some(address) = credential.address.as_deref() else {
                return Err(CliError::Usage(
                    "this platform has no registry (its operator sets registry_address)".to_owned(),
                ));
            };
            let mut child = std::process::Command::new("docker")
                .args(["login", address, "--username", &credential.username])
                .arg("--password-stdin")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("cannot run `docker login` (is the docker command installed? `--print` shows the credential instead)")?;
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(credential.password.as_bytes())
                .context("cannot hand the credential to `docker login`")?;
            let status = child.wait().context("`docker login` did not finish")?;
            if !status.success() {
                return Err(CliError::Other(anyhow::anyhow!(
                    "`docker login {address}` failed ({status}); is the registry running?"
                )));
            }
            eprintln!(
                "Docker is signed in to {address} as {} until {}",
                credential.username,
                time(credential.expires_at)
            );
            Ok(())
        }
        RegistryCommand::Setup {
            dir,
            platform_url,
            target,
        } => {
            let client = connect(&target).await?;
            std::fs::create_dir_all(dir.join("storage"))
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let dir = std::fs::canonicalize(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let certificate_path = dir.join("token.crt");
            let request = RegistrySetupRequest {
                platform_url: platform_url.unwrap_or_else(|| client.base_url().to_owned()),
                storage_dir: dir.join("storage").to_string_lossy().into_owned(),
                certificate_path: certificate_path.to_string_lossy().into_owned(),
            };
            let setup = client.registry_setup(&request).await?;
            std::fs::write(&certificate_path, &setup.certificate)
                .with_context(|| format!("cannot write {}", certificate_path.display()))?;
            let config_path = dir.join("config.yml");
            write_private(&config_path, setup.config.as_bytes())?;
            if target.output.json {
                return print_json(&serde_json::json!({
                    "config": config_path,
                    "certificate": certificate_path,
                    "address": setup.address,
                }));
            }
            println!(
                "wrote {} and {}",
                config_path.display(),
                certificate_path.display()
            );
            println!(
                "start the registry with: docker-registry serve {}   (it listens on {})",
                config_path.display(),
                setup.address
            );
            Ok(())
        }
        RegistryCommand::Pushes { project, target } => {
            let pushes = connect(&target)
                .await?
                .list_image_pushes(&project.tenant, &project.project)
                .await?;
            if target.output.json {
                return print_json(&ImagePushList { pushes });
            }
            let mut table = Table::new(&["RECEIVED", "TAG", "DIGEST", "BY", "OUTCOME", "DETAIL"]);
            for push in &pushes {
                table.row(vec![
                    time(push.received_at),
                    or_dash(push.tag.as_deref()),
                    push.digest.chars().take(19).collect(),
                    or_dash(push.actor.as_deref()),
                    push.outcome.clone(),
                    push.detail.clone(),
                ]);
            }
            table.print_or("no pushes reported for this project yet");
            Ok(())
        }
    }
}

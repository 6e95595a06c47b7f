//! The CLI's sign-in: `rally login` stores the platform URL and tokens in the user's config
//! directory (`credentials.json`, mode 0600); later commands use them, refreshing the access
//! token when it is about to expire. `--url` and `--token` (or `RALLY_URL`, `RALLY_TOKEN`) work
//! without any stored sign-in, for scripts.

use super::CliError;
use crate::config::DEFAULT_URL;
use anyhow::Context;
use base64::Engine;
use clap::Args;
use rally_sdk::wire::{Role, TokenPair};
use rally_sdk::RallyClient;
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Platform URL.
    #[arg(long, env = "RALLY_URL", default_value = DEFAULT_URL)]
    url: String,
    #[arg(long, env = "RALLY_USERNAME")]
    username: String,
    /// Password; prefer RALLY_PASSWORD or --password-stdin, which stay out of the shell history.
    #[arg(long, env = "RALLY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// Which platform and which credentials a command uses.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Platform URL (default: the one remembered by `rally login`).
    #[arg(long, env = "RALLY_URL")]
    pub url: Option<String>,
    /// Access token to use instead of the remembered sign-in.
    #[arg(long, env = "RALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print JSON instead of text, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What `rally login` remembers.
#[derive(Debug, Serialize, Deserialize)]
struct Credentials {
    url: String,
    username: String,
    role: Role,
    access_token: String,
    refresh_token: String,
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    let directory = match std::env::var_os("RALLY_CONFIG_DIR") {
        Some(directory) => PathBuf::from(directory),
        None => dirs::config_dir()
            .context("cannot find the user's config directory; set RALLY_CONFIG_DIR")?
            .join("rally"),
    };
    Ok(directory.join("credentials.json"))
}

fn load_credentials() -> anyhow::Result<Option<Credentials>> {
    let path = credentials_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is damaged; run `rally login` again", path.display())
        })?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the credentials readable by the user alone.
fn save_credentials(credentials: &Credentials) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    let directory = path.parent().expect("credentials path has a directory");
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    write_private(&path, &serde_json::to_vec_pretty(credentials)?)?;
    Ok(path)
}

/// Writes `content` to `path` readable by the user alone: the file holds secrets.
pub(super) fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // A file created by an older version or by hand may be wider open: narrow it first.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(content)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn forget_credentials() -> anyhow::Result<()> {
    let path = credentials_path()?;
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Seconds until the token's `exp`, read without checking the signature (the server checks it).
fn seconds_left(access_token: &str) -> Option<i64> {
    let payload = access_token.split('.').nth(1)?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&payload).ok()?["exp"].as_i64()?;
    Some(exp - crate::auth::tokens::unix_seconds() as i64)
}

/// An authenticated client for the target: the given token, or the remembered sign-in
/// (refreshed first when its access token is about to expire).
pub async fn connect(target: &TargetArgs) -> Result<RallyClient, CliError> {
    if let Some(token) = &target.token {
        let url = match &target.url {
            Some(url) => url.clone(),
            None => load_credentials()?.map_or_else(|| DEFAULT_URL.to_owned(), |c| c.url),
        };
        return Ok(RallyClient::new(&url)?.authenticated(token));
    }
    let Some(mut credentials) = load_credentials()? else {
        return Err(CliError::NotSignedIn(
            "not signed in to any platform".to_owned(),
        ));
    };
    if let Some(url) = &target.url {
        if url.trim_end_matches('/') != credentials.url {
            return Err(CliError::NotSignedIn(format!(
                "signed in to {}, not {url}; pass --token or sign in to {url}",
                credentials.url
            )));
        }
    }
    let client = RallyClient::new(&credentials.url)?;
    if seconds_left(&credentials.access_token).is_none_or(|left| left < 30) {
        let pair = client.refresh(&credentials.refresh_token).await?;
        credentials.access_token = pair.access_token;
        credentials.refresh_token = pair.refresh_token;
        save_credentials(&credentials)?;
    }
    Ok(client.authenticated(&credentials.access_token))
}

/// Reads a password from the terminal without echoing it.
fn ask_password(prompt: &str) -> Result<String, CliError> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let before = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut silent = before.clone();
    silent.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &silent).context("cannot turn the terminal's echo off")?;
    let mut password = String::new();
    let read = stdin.read_line(&mut password);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &before);
    eprintln!();
    read.context("cannot read the password")?;
    Ok(password.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let password = match (args.password, args.password_stdin) {
        (Some(password), _) => password,
        (None, true) => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from standard input")?;
            password.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, false) if std::io::stdin().is_terminal() => {
            ask_password(&format!("password for {} at {}: ", args.username, args.url))?
        }
        (None, false) => {
            return Err(CliError::Usage(
                "no password given, and no terminal to ask for one: pipe it in with \
                 --password-stdin (e.g. `rally login --username admin --password-stdin < file`), \
                 or set RALLY_PASSWORD"
                    .to_owned(),
            ))
        }
    };
    let client = RallyClient::new(&args.url)?;
    let TokenPair {
        access_token,
        refresh_token,
        role,
        ..
    } = client.login(&args.username, &password).await?;
    let credentials = Credentials {
        url: client.base_url().to_owned(),
        username: args.username,
        role,
        access_token,
        refresh_token,
    };
    let path = save_credentials(&credentials)?;
    if args.output.json {
        println!(
            "{}",
            serde_json::json!({"url": credentials.url, "username": credentials.username, "role": role})
        );
    } else {
        println!(
            "signed in to {} as {} ({role}); credentials kept in {}",
            credentials.url,
            credentials.username,
            path.display()
        );
    }
    Ok(())
}

pub async fn logout(args: TargetArgs) -> Result<(), CliError> {
    let Some(credentials) = load_credentials()? else {
        println!("not signed in");
        return Ok(());
    };
    let client = RallyClient::new(&credentials.url)?;
    let revoked = match client.logout(&credentials.refresh_token).await {
        Ok(()) => true,
        // Already revoked or expired: nothing left to revoke.
        Err(rally_sdk::ClientError::Api { status: 401, .. }) => false,
        Err(error) => return Err(error.into()),
    };
    forget_credentials()?;
    if args.output.json {
        println!(
            "{}",
            serde_json::json!({"signed_out": true, "revoked": revoked})
        );
    } else {
        println!("signed out of {}", credentials.url);
    }
    Ok(())
}

pub async fn whoami(args: TargetArgs) -> Result<(), CliError> {
    let client = connect(&args).await?;
    let me = client.me().await?;
    if args.output.json {
        println!(
            "{}",
            serde_json::to_string(&me).map_err(anyhow::Error::from)?
        );
    } else {
        match &me.username {
            Some(username) => println!(
                "{username} ({}, account {}) on {}",
                me.role,
                me.subject,
                client.base_url()
            ),
            None => println!("{} ({}) on {}", me.subject, me.role, client.base_url()),
        }
    }
    Ok(())
}

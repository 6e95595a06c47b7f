//! The `rally` command line: `server` runs the platform; the other commands administer a running
//! platform over its HTTP API through `rally-sdk`'s client, so they work against any node.
//!
//! Exit codes scripts can rely on: 0 success, 1 other failure, 2 bad command line,
//! 3 not signed in or credentials refused, 4 the platform refused the request, 5 the platform
//! could not be reached.

mod developers;
mod session;

pub use session::DEFAULT_URL;

use crate::config::{Config, LogFormat};
use crate::server::{self, Platform};
use crate::{accounts::AdminBootstrap, loadtest, telemetry};
use clap::{Args, Parser, Subcommand};
use rally_sdk::ClientError;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "rally",
    version,
    about = "Rally: build, test and run authoritative game servers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform server (SQLite in ./rally-data unless configured otherwise).
    Server(ServerArgs),
    /// Sign in to a platform as an admin, support or developer account and remember it.
    Login(session::LoginArgs),
    /// Revoke the remembered sign-in and forget it.
    Logout(session::TargetArgs),
    /// Show who the remembered (or given) token belongs to.
    Whoami(session::TargetArgs),
    /// Manage developer accounts (admin or support).
    #[command(subcommand)]
    Developer(developers::DeveloperCommand),
    /// Drive a running platform with load and print the figures.
    Loadtest(loadtest::LoadtestArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// TOML configuration file; `RALLY_*` environment variables override it.
    #[arg(long, env = "RALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (overrides `log_format` / `RALLY_LOG_FORMAT`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// Why a command failed, mapped to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    NotSignedIn(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::NotSignedIn(_) => 3,
            CliError::Client(ClientError::Api { status: 401, .. }) => 3,
            CliError::Client(ClientError::Api { .. } | ClientError::Unexpected { .. }) => 4,
            CliError::Client(ClientError::Transport(_)) => 5,
            CliError::Client(ClientError::InvalidUrl(_)) => 2,
            CliError::Other(_) => 1,
        }
    }

    /// What to do about it, when there is something obvious.
    fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::NotSignedIn(_) => {
                Some("sign in with `rally login --url URL --username NAME`")
            }
            CliError::Client(error) => match error.code() {
                Some(
                    "token_expired"
                    | "invalid_token"
                    | "refresh_token_reused"
                    | "refresh_token_revoked"
                    | "refresh_token_expired"
                    | "invalid_refresh_token",
                ) => Some("sign in again with `rally login`"),
                Some("forbidden") => Some("this needs an admin or support account"),
                _ if matches!(error, ClientError::Transport(_)) => {
                    Some("is the platform running? check --url / RALLY_URL")
                }
                _ => None,
            },
            CliError::Other(_) => None,
        }
    }
}

/// Entry point of the `rally` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rally: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rally: {error}");
            if let Some(hint) = error.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => run_server(args).await.map_err(CliError::Other),
        Command::Login(args) => session::login(args).await,
        Command::Logout(args) => session::logout(args).await,
        Command::Whoami(args) => session::whoami(args).await,
        Command::Developer(command) => developers::run(command).await,
        Command::Loadtest(args) => loadtest::run(args).await.map_err(CliError::Other),
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    telemetry::init(config.log_format);
    let listen = config.listen;
    let platform = Platform::start(config).await?;
    if let AdminBootstrap::CreatedWithGeneratedPassword(password) = &platform.admin {
        // Printed once, on the terminal only: never through the logs.
        eprintln!(
            "rally: created account `admin` with generated password {password}\n\
             rally: it is shown only this once; keep it (or set RALLY_ADMIN_PASSWORD before the first start)"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot listen on {listen} (setting `listen` / RALLY_LISTEN): {error}")
        })?;
    let address = listener.local_addr()?;
    println!("rally listening on http://{address}");
    tracing::info!(%address, "listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    server::serve(listener, platform.state, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
}

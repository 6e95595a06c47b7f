//! The `rally` command line: `server` runs the platform; the other commands administer a running
//! platform over its HTTP API through `rally-sdk`'s client, so they work against any node.
//!
//! Exit codes scripts can rely on: 0 success, 1 other failure, 2 bad command line,
//! 3 not signed in or credentials refused, 4 the platform refused the request, 5 the platform
//! could not be reached.

mod args;
mod audit;
mod deploy;
mod deployments;
mod dev;
mod developers;
mod nodes;
mod permissions;
mod pools;
mod progress;
mod projects;
mod registry;
mod runtimes;
mod session;
mod stages;
mod table;
mod tenants;
mod versions;

pub use crate::config::DEFAULT_URL;

use crate::config::{Config, LogFormat};
use crate::server::{self, Platform};
use crate::{accounts::AdminBootstrap, loadtest, telemetry};
use clap::{Args, Parser, Subcommand};
use rally_sdk::bundle::BundleError;
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
    /// Run the platform for one game directory, deploy it, and redeploy it on every change.
    Dev(dev::DevArgs),
    /// Sign in to a platform as an admin, support or developer account and remember it.
    Login(session::LoginArgs),
    /// Revoke the remembered sign-in and forget it.
    Logout(session::TargetArgs),
    /// Show who the remembered (or given) token belongs to.
    Whoami(session::TargetArgs),
    /// Pack a directory, check it, upload it as a new version and deploy it to a stage.
    Deploy(deploy::DeployArgs),
    /// Manage tenants (creating and deleting them takes an admin or support account).
    #[command(subcommand)]
    Tenant(tenants::TenantCommand),
    /// Manage the projects of a tenant.
    #[command(subcommand)]
    Project(projects::ProjectCommand),
    /// Manage the stages of a project (every project starts with `default`).
    #[command(subcommand)]
    Stage(stages::StageCommand),
    /// Upload and inspect the versions of a project.
    #[command(subcommand)]
    Version(versions::VersionCommand),
    /// Deploy versions to a stage, list and stop deployments.
    #[command(subcommand)]
    Deployment(deployments::DeploymentCommand),
    /// List a deployment's runtimes and read their logs.
    #[command(subcommand)]
    Runtime(runtimes::RuntimeCommand),
    /// Manage the pools runtimes run in and their servers (admin or support).
    #[command(subcommand)]
    Pool(pools::PoolCommand),
    /// The studio's image registry: sign Docker in, configure the registry, see pushes.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// The platform's nodes and whether each is alive (admin or support).
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Manage developer accounts (admin or support).
    #[command(subcommand)]
    Developer(developers::DeveloperCommand),
    /// Grant and revoke developers' roles in a tenant, a project or a stage (admin or support).
    #[command(subcommand)]
    Permission(permissions::PermissionCommand),
    /// Show the audit log: who changed what, newest first.
    Audit(audit::AuditArgs),
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
    /// The command line is well-formed for clap but still cannot be carried out as written.
    #[error("{0}")]
    Usage(String),
    /// The bundle failed the local checks; nothing was sent.
    #[error("{}", bundle_headline(.0))]
    Bundle(BundleError),
    /// The bundle's logic does not load (`rally-runtime check`); nothing was sent.
    #[error("{0}")]
    Logic(String),
    /// Both: the manifest breaks its rules and the logic does not load (each problem listed).
    #[error("the bundle has {} problems; nothing was uploaded:", .problems.len())]
    BundleAndLogic { problems: Vec<String> },
    #[error("{}", client_headline(.0))]
    Client(#[from] ClientError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

fn bundle_headline(error: &BundleError) -> String {
    if error.problems().is_empty() {
        format!("{error} ({}); nothing was uploaded", error.code())
    } else {
        // The problems follow one per line; the error's own text would repeat them all.
        format!(
            "rally.toml is not a valid manifest ({}); nothing was uploaded:",
            error.code()
        )
    }
}

fn client_headline(error: &ClientError) -> String {
    match error {
        ClientError::Api {
            status,
            code,
            details,
            ..
        } if !api_problems(details.as_ref()).is_empty() => {
            format!("the platform refused the request ({code}, HTTP {status}):")
        }
        other => other.to_string(),
    }
}

/// `details.problems` of an API error as `field: message` lines.
fn api_problems(details: Option<&serde_json::Value>) -> Vec<String> {
    let Some(problems) = details.and_then(|details| details["problems"].as_array()) else {
        return Vec::new();
    };
    problems
        .iter()
        .map(|problem| {
            let message = problem["message"].as_str().unwrap_or_default();
            match problem["field"].as_str() {
                Some(field) if !field.is_empty() => format!("{field}: {message}"),
                _ => message.to_owned(),
            }
        })
        .collect()
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::NotSignedIn(_) => 3,
            CliError::Usage(_) => 2,
            CliError::Bundle(_) | CliError::Logic(_) | CliError::BundleAndLogic { .. } => 1,
            CliError::Client(ClientError::Api { status: 401, .. }) => 3,
            CliError::Client(ClientError::Api { .. } | ClientError::Unexpected { .. }) => 4,
            CliError::Client(ClientError::Transport(_)) => 5,
            CliError::Client(ClientError::InvalidUrl(_)) => 2,
            CliError::Other(_) => 1,
        }
    }

    /// Every individual problem behind the failure (a manifest's broken rules), one per line.
    fn problems(&self) -> Vec<String> {
        match self {
            CliError::Bundle(error) => error.problems().iter().map(ToString::to_string).collect(),
            CliError::BundleAndLogic { problems } => problems.clone(),
            CliError::Client(ClientError::Api { details, .. }) => api_problems(details.as_ref()),
            _ => Vec::new(),
        }
    }

    /// What to do about it, when there is something obvious.
    fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::NotSignedIn(_) => {
                Some("sign in with `rally login --url URL --username NAME`")
            }
            CliError::Bundle(error) if !error.problems().is_empty() => {
                Some("fix rally.toml and run the command again")
            }
            CliError::BundleAndLogic { .. } => Some(
                "fix rally.toml and the scripts at the files and lines above, then run the \
                 command again",
            ),
            CliError::Logic(_) => Some("fix the script at the file and line above; `rally-runtime simulate` runs it without a platform"),
            CliError::Client(error) => match error.code() {
                Some(
                    "token_expired"
                    | "invalid_token"
                    | "refresh_token_reused"
                    | "refresh_token_revoked"
                    | "refresh_token_expired"
                    | "invalid_refresh_token",
                ) => Some("sign in again with `rally login`"),
                Some("forbidden") => Some(
                    "your account may not do this: accounts, tenants and grants need an admin or \
                     support account; changes inside a tenant need the manager role, which an \
                     admin gives with `rally permission grant`",
                ),
                Some("not_found") => Some(
                    "check the id or alias (`rally tenant list`, `rally project list --tenant T`); \
                     a developer sees only what it has been granted",
                ),
                Some("account_disabled") => {
                    Some("an admin can enable the account with `rally developer enable NAME`")
                }
                Some("idempotency_key_reused") => Some(
                    "a different request needs a different --idempotency-key / RALLY_IDEMPOTENCY_KEY",
                ),
                Some(
                    "tenant_has_live_deployments"
                    | "project_has_live_deployments"
                    | "stage_has_live_deployments"
                    | "version_deployed",
                ) => Some("stop its deployments first with `rally deployment stop ID`"),
                Some("invalid_deployment_config") => Some(
                    "check the --config KEY=VALUE settings against the modes and [deployment] \
                     section of the version's rally.toml",
                ),
                _ if matches!(error, ClientError::Transport(_)) => {
                    Some("is the platform running? check --url / RALLY_URL")
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// Prints `value` as one line of JSON on stdout, for `--json`.
fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string(value).map_err(anyhow::Error::from)?
    );
    Ok(())
}

/// Entry point of the `rally` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
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
            for problem in error.problems() {
                eprintln!("  {problem}");
            }
            if let Some(hint) = error.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// Every player holds a socket: the server (and the load tool) may need far more descriptors
/// than the usual soft limit of 1024, so the soft limit goes up to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!(
                    "rally: cannot raise the open-files limit from {soft} to {hard}: {error}"
                );
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => run_server(args).await.map_err(CliError::Other),
        Command::Dev(args) => dev::run(args).await,
        Command::Login(args) => session::login(args).await,
        Command::Logout(args) => session::logout(args).await,
        Command::Whoami(args) => session::whoami(args).await,
        Command::Deploy(args) => deploy::run(args).await,
        Command::Tenant(command) => tenants::run(command).await,
        Command::Project(command) => projects::run(command).await,
        Command::Stage(command) => stages::run(command).await,
        Command::Version(command) => versions::run(command).await,
        Command::Deployment(command) => deployments::run(command).await,
        Command::Runtime(command) => runtimes::run(command).await,
        Command::Pool(command) => pools::run_pool(command).await,
        Command::Registry(command) => registry::run(command).await,
        Command::Node(command) => nodes::run(command).await,
        Command::Developer(command) => developers::run(command).await,
        Command::Permission(command) => permissions::run(command).await,
        Command::Audit(args) => audit::run(args).await,
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
    // The handlers are in place before the address is printed: whoever waits for that line may
    // stop the server at once and still get a drained stop.
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown_signals()?, shutdown.clone()));
    println!("rally listening on http://{address}");
    tracing::info!(%address, "listening");
    server::serve(listener, platform.state, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT and SIGTERM, with their handlers installed now rather than on first poll.
#[cfg(unix)]
fn shutdown_signals() -> anyhow::Result<[tokio::signal::unix::Signal; 2]> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok([
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    ])
}

#[cfg(not(unix))]
fn shutdown_signals() -> anyhow::Result<()> {
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
#[cfg(unix)]
async fn signal_shutdown(
    [mut interrupt, mut terminate]: [tokio::signal::unix::Signal; 2],
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
}

#[cfg(not(unix))]
async fn signal_shutdown((): (), shutdown: CancellationToken) {
    tokio::signal::ctrl_c().await.ok();
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
}

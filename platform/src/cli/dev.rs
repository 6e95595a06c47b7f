//! `rally dev DIR`: the whole platform on this machine for one game, redeployed on every save.
//! It starts the platform in-process exactly as `rally server` does (local-process runtimes,
//! SQLite in a data directory of its own), makes what a game needs through the HTTP API (tenant
//! `dev`, developer `dev` managing it, a project named after DIR with stage `default`), deploys
//! DIR as `rally deploy` does, then watches DIR and deploys each valid change as the next version
//! until Ctrl-C.
//!
//! The data directory is `DIR/.rally-dev` unless `--data-dir`, or a `data_dir` from the config
//! file or `RALLY_DATA_DIR`, names another: each game keeps its own platform state beside it, a
//! rerun finds its accounts, versions and players again, and the leading dot keeps it out of the
//! bundle (`pack` leaves hidden entries out) and out of the watch. The passwords of the accounts
//! it makes are generated once and kept there in `dev-credentials.json` (mode 0600).

use super::args::{ProjectArgs, DEFAULT_STAGE};
use super::versions::{pack_and_check, upload};
use super::CliError;
use crate::accounts::ADMIN_USERNAME;
use crate::config::{Config, LogFormat};
use crate::server::{self, Platform};
use crate::storage::redact_url;
use crate::telemetry;
use anyhow::Context;
use clap::Args;
use rally_sdk::wire::{GrantRequest, GrantRole, ScopeKind, TokenPair};
use rally_sdk::{ClientError, RallyClient};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// The tenant every `rally dev` game lives in.
const TENANT: &str = "dev";
/// The developer account `rally dev` deploys as (manager of [`TENANT`]).
const DEVELOPER: &str = "dev";
const DATA_DIR_NAME: &str = ".rally-dev";
const CREDENTIALS_FILE: &str = "dev-credentials.json";
/// How often the bundle directory is looked at.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long the directory must hold still before a change is deployed: an editor saving
/// several files, or writing one in steps, makes one version rather than several.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The bundle directory, holding rally.toml and the logic files.
    directory: PathBuf,
    /// Where the platform keeps its database, bundles and runtime logs [default: DIR/.rally-dev,
    /// or `data_dir` from the config when set there].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address the platform listens on [default: `listen` from the config, 127.0.0.1:7350].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML configuration file, as for `rally server`; `RALLY_*` environment variables override
    /// it, and --data-dir and --listen override both.
    #[arg(long, env = "RALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (overrides `log_format` / `RALLY_LOG_FORMAT`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let directory = bundle_directory(&args.directory)?;
    let mut config = Config::load(args.config.as_deref()).map_err(anyhow::Error::from)?;
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    config.data_dir = data_directory(&directory, args.data_dir, &config.data_dir)?;
    // Development runs on its own SQLite file, whatever `database_url` the shell exports for
    // another platform: `rally dev` must never migrate or fill a shared database.
    if config.database_url.take().is_some() {
        eprintln!("rally dev: ignoring database_url; development data lives in SQLite");
    }
    let credentials = DevCredentials::load_or_create(&config.data_dir)?;
    // The platform's admin is `rally dev`'s own: its password is the one kept beside the data,
    // whatever `admin_password` the environment holds for another platform.
    config.admin_password = Some(SecretString::from(credentials.admin.password.clone()));
    // The playground opens on this game without a developer's sign-in.
    config.playground_stage = Some(format!(
        "{TENANT}/{}/{DEFAULT_STAGE}",
        project_alias(&directory_name(&directory))
    ));
    telemetry::init(config.log_format);

    let data_dir = config.data_dir.clone();
    let listen = config.listen;
    let platform = Platform::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot listen on {listen} (--listen, or `listen` / RALLY_LISTEN): {error}"
            )
        })?;
    let address = listener.local_addr().map_err(anyhow::Error::from)?;
    let url = local_url(address);
    let shutdown = CancellationToken::new();
    let signals = super::shutdown_signals()?;
    tokio::spawn(super::signal_shutdown(signals, shutdown.clone()));
    eprintln!(
        "rally dev: platform on {url}, data in {} ({})",
        data_dir.display(),
        redact_url(&platform.state.config.effective_database_url())
    );

    let playground = platform.state.config.playground;
    let serving = tokio::spawn(server::serve(listener, platform.state, shutdown.clone()));
    let session = Session {
        directory,
        data_dir,
        url,
        credentials,
        playground,
    };
    let outcome = tokio::select! {
        outcome = session.run() => outcome,
        () = shutdown.cancelled() => Ok(()),
    };
    // A failed set-up stops the platform too; Ctrl-C has cancelled already.
    shutdown.cancel();
    eprintln!("rally dev: stopping the platform and its runtimes");
    serving
        .await
        .context("the server task failed")?
        .context("serving failed")?;
    eprintln!("rally dev: stopped");
    outcome
}

/// DIR, absolute, so that its name and the data directory's place in it are known.
fn bundle_directory(directory: &Path) -> Result<PathBuf, CliError> {
    match directory.canonicalize() {
        Ok(absolute) if absolute.is_dir() => Ok(absolute),
        _ => Err(CliError::Usage(format!(
            "{} is not a directory; give the directory holding rally.toml",
            directory.display()
        ))),
    }
}

/// `--data-dir`, else a `data_dir` configured away from the server's default, else
/// `DIR/.rally-dev`. One inside DIR must be hidden (or under `target/`), as `pack` would
/// otherwise put the database into every version.
fn data_directory(
    bundle: &Path,
    flag: Option<PathBuf>,
    configured: &Path,
) -> Result<PathBuf, CliError> {
    let chosen = match flag {
        Some(directory) => directory,
        None if configured != Config::default().data_dir => configured.to_owned(),
        None => bundle.join(DATA_DIR_NAME),
    };
    let existed = chosen.exists();
    std::fs::create_dir_all(&chosen)
        .with_context(|| format!("cannot create data directory {}", chosen.display()))?;
    let chosen = chosen
        .canonicalize()
        .with_context(|| format!("cannot resolve data directory {}", chosen.display()))?;
    if let Ok(inside) = chosen.strip_prefix(bundle) {
        let names: Vec<String> = inside
            .components()
            .map(|component| component.as_os_str().to_string_lossy().into_owned())
            .collect();
        let left_out_of_bundles = names.iter().any(|name| name.starts_with('.'))
            || names.first().is_some_and(|name| name == "target");
        if !left_out_of_bundles {
            if !existed {
                // Only the leaf this call made, and only if still empty.
                let _ = std::fs::remove_dir(&chosen);
            }
            return Err(CliError::Usage(format!(
                "the data directory {} is inside the bundle directory and would be packed into \
                 every version; choose one outside it, or one whose name starts with '.'",
                chosen.display()
            )));
        }
    }
    Ok(chosen)
}

/// The URL this process and the printed instructions use: a wildcard listen address is
/// reached over loopback, as the runtimes reach it.
fn local_url(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", address.port())
    } else {
        format!("http://{address}")
    }
}

/// The accounts `rally dev` made, kept in the data directory so that reruns sign in again.
/// (No `Debug`: it holds passwords.)
#[derive(Serialize, Deserialize)]
struct DevCredentials {
    admin: Login,
    developer: Login,
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Clone, Serialize, Deserialize)]
struct Login {
    username: String,
    password: String,
}

impl DevCredentials {
    fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(CREDENTIALS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut credentials: Self = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is damaged; delete the data directory {} to start afresh",
                        path.display(),
                        data_dir.display()
                    )
                })?;
                credentials.path = path;
                return Ok(credentials);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()))
            }
        }
        let credentials = Self {
            admin: Login {
                username: ADMIN_USERNAME.to_owned(),
                password: crate::auth::new_secret(),
            },
            developer: Login {
                username: DEVELOPER.to_owned(),
                password: crate::auth::new_secret(),
            },
            path,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&credentials.path)
            .with_context(|| format!("cannot write {}", credentials.path.display()))?;
        file.write_all(&serde_json::to_vec_pretty(&credentials)?)?;
        Ok(credentials)
    }
}

/// One `rally dev` run once the platform serves.
struct Session {
    directory: PathBuf,
    data_dir: PathBuf,
    url: String,
    credentials: DevCredentials,
    /// Whether `/play/` is served (`playground`).
    playground: bool,
}

impl Session {
    /// Prepares, deploys, prints how to connect, then deploys every change; returns only on
    /// a failed set-up (the caller stops it on Ctrl-C).
    async fn run(self) -> Result<(), CliError> {
        let api = RallyClient::new(&self.url)?;
        let name = directory_name(&self.directory);
        let project = ProjectArgs {
            tenant: TENANT.to_owned(),
            project: project_alias(&name),
        };
        let developer = self.prepare(&api, &name, &project).await?;
        let mut game = Game {
            directory: self.directory.clone(),
            project,
            developer,
            deployed: None,
        };
        game.deployed = game.current_version().await?;
        let mut watcher = Watcher::start(self.directory.clone()).await;
        game.deploy(watcher.seen.clone()).await;
        self.print_instructions(&game.project.project);
        loop {
            let files = watcher.next_change().await;
            game.deploy(files).await;
        }
    }

    /// Makes the developer, the tenant, the grant and the project, or finds them from an
    /// earlier run, and signs the developer in.
    async fn prepare(
        &self,
        api: &RallyClient,
        name: &str,
        project: &ProjectArgs,
    ) -> Result<Developer, CliError> {
        let credentials = &self.credentials;
        let admin_tokens = api
            .login(&credentials.admin.username, &credentials.admin.password)
            .await
            .map_err(|error| match error {
                ClientError::Api { status: 401, .. } => CliError::Other(anyhow::anyhow!(
                    "the admin account in {} does not take the password in {}: that data \
                     directory was not made by `rally dev`; choose another --data-dir (or delete \
                     this one to start afresh)",
                    self.data_dir.display(),
                    credentials.path.display()
                )),
                other => other.into(),
            })?;
        let admin = api.authenticated(&admin_tokens.access_token);
        created_or_there(
            admin
                .create_developer(DEVELOPER, &credentials.developer.password)
                .await,
        )?;
        created_or_there(admin.create_tenant("Development", Some(TENANT)).await)?;
        // Granting what is already held changes nothing.
        admin
            .grant(
                TENANT,
                &GrantRequest {
                    developer: DEVELOPER.to_owned(),
                    scope: ScopeKind::Tenant,
                    project: None,
                    stage: None,
                    role: GrantRole::Manager,
                },
            )
            .await?;
        let developer = match Developer::sign_in(api, &credentials.developer).await {
            Ok(developer) => developer,
            // Someone reset or disabled the account since it was made: `rally dev` owns it.
            Err(ClientError::Api {
                status: 401 | 403, ..
            }) => {
                admin
                    .reset_developer_password(DEVELOPER, &credentials.developer.password)
                    .await?;
                admin.set_developer_disabled(DEVELOPER, false).await?;
                Developer::sign_in(api, &credentials.developer).await?
            }
            Err(error) => return Err(error.into()),
        };
        // The admin's sign-in is done with; a failure to revoke it only leaves it to expire.
        let _ = api.logout(&admin_tokens.refresh_token).await;

        let client = developer.client.clone();
        let project_name = if (1..=100).contains(&name.chars().count())
            && !name.chars().any(char::is_control)
            && !name.trim().is_empty()
        {
            name
        } else {
            &project.project
        };
        created_or_there(
            client
                .create_project(TENANT, project_name, Some(&project.project))
                .await,
        )?;
        // Every project is made with `default`; only someone deleting it brings this here.
        if let Err(ClientError::Api { status: 404, .. }) = client
            .get_stage(TENANT, &project.project, DEFAULT_STAGE)
            .await
        {
            client
                .create_stage(TENANT, &project.project, DEFAULT_STAGE, Some(DEFAULT_STAGE))
                .await?;
        }
        Ok(developer)
    }

    fn print_instructions(&self, project: &str) {
        let url = &self.url;
        let playground = if self.playground {
            format!("playground  {url}/play/ (open it in two tabs to play as two players)\n")
        } else {
            String::new()
        };
        let socket = url.replacen("http", "ws", 1);
        eprintln!(
            "\n\
             game        {TENANT}/{project}/{DEFAULT_STAGE} (tenant/project/stage) on {url}\n\
             {playground}\
             players     sign up (POST /api/v1/users, then /api/v1/users/sign-in), create a client\n\
             \x20           (POST /api/v1/tenants/{TENANT}/projects/{project}/stages/{DEFAULT_STAGE}/clients),\n\
             \x20           then open {socket}/api/v1/clients/{{client_id}}/ws; see docs/player-protocol.md\n\
             load test   rally loadtest players --url {url} --tenant {TENANT} --project {project} --players 2 --rate 1\n\
             accounts    admin, and developer {DEVELOPER} (manager of tenant {TENANT}); passwords in {}\n\
             rally CLI   rally login --url {url} --username {DEVELOPER} (its password is in that file)\n\
             logs        runtime logs in {}\n\
             watching    {}: each valid change is deployed as the next version; Ctrl-C stops\n",
            self.credentials.path.display(),
            self.data_dir.join("runtimes").display(),
            self.directory.display(),
        );
    }
}

/// Success, or a 409: on a rerun everything is already there.
fn created_or_there<T>(result: Result<T, ClientError>) -> Result<(), ClientError> {
    match result {
        Ok(_) | Err(ClientError::Api { status: 409, .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The bundle directory's own name, which names the project.
fn directory_name(directory: &Path) -> String {
    directory
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A project alias from a directory name: `Tic Tac Toe` → `tic-tac-toe`, `2048` → `game-2048`.
fn project_alias(name: &str) -> String {
    let mut alias = String::new();
    for character in name.chars() {
        let character = character.to_ascii_lowercase();
        if character.is_ascii_lowercase() || character.is_ascii_digit() {
            alias.push(character);
        } else if !alias.is_empty() && !alias.ends_with('-') {
            alias.push('-');
        }
    }
    // Aliases start with a letter and are never shaped like an id.
    if !alias.starts_with(|character: char| character.is_ascii_lowercase())
        || crate::permissions::is_id(&alias)
    {
        alias.insert_str(0, "game-");
    }
    alias.truncate(63);
    alias.trim_end_matches('-').to_owned()
}

/// The developer's sign-in, refreshed before its access token runs out (a dev session lasts
/// longer than a token).
struct Developer {
    api: RallyClient,
    login: Login,
    tokens: TokenPair,
    signed_in_at: Instant,
    client: RallyClient,
}

impl Developer {
    async fn sign_in(api: &RallyClient, login: &Login) -> Result<Self, ClientError> {
        let tokens = api.login(&login.username, &login.password).await?;
        Ok(Self {
            api: api.clone(),
            login: login.clone(),
            client: api.authenticated(&tokens.access_token),
            tokens,
            signed_in_at: Instant::now(),
        })
    }

    async fn client(&mut self) -> Result<RallyClient, ClientError> {
        if self.signed_in_at.elapsed() >= Duration::from_secs(self.tokens.expires_in / 2) {
            *self = match self.api.refresh(&self.tokens.refresh_token).await {
                Ok(tokens) => Self {
                    api: self.api.clone(),
                    login: self.login.clone(),
                    client: self.api.authenticated(&tokens.access_token),
                    tokens,
                    signed_in_at: Instant::now(),
                },
                // The refresh token expired (a laptop asleep for a month): sign in again.
                Err(_) => Self::sign_in(&self.api, &self.login).await?,
            };
        }
        Ok(self.client.clone())
    }
}

/// The game being developed: its bundle directory, project and deployed version.
struct Game {
    directory: PathBuf,
    project: ProjectArgs,
    developer: Developer,
    deployed: Option<Deployed>,
}

/// The stage's current version as this run knows it.
struct Deployed {
    number: i64,
    sha256: String,
    /// The directory as it was packed; unknown for a version of an earlier run.
    files: Option<Files>,
}

enum Outcome {
    Deployed {
        number: i64,
    },
    /// The bundle packs to the deployed version's archive.
    Unchanged {
        number: i64,
    },
}

/// Prints a failure as `rally` prints the error it exits with, without exiting.
fn report(error: &CliError) {
    eprintln!("rally: {error}");
    for problem in error.problems() {
        eprintln!("  {problem}");
    }
    if let Some(hint) = error.hint() {
        eprintln!("hint: {hint}");
    }
}

impl Game {
    /// The stage's current version, deployed by an earlier run (or by hand).
    async fn current_version(&mut self) -> Result<Option<Deployed>, CliError> {
        let client = self.developer.client().await?;
        let project = &self.project.project;
        let stage = client.get_stage(TENANT, project, DEFAULT_STAGE).await?;
        let Some(deployment) = stage.current_deployment_id else {
            return Ok(None);
        };
        let deployment = client
            .get_deployment(TENANT, project, DEFAULT_STAGE, &deployment)
            .await?;
        let version = client
            .get_version(TENANT, project, &deployment.version_number.to_string())
            .await?;
        Ok(Some(Deployed {
            number: version.number,
            sha256: version.bundle_sha256,
            files: None,
        }))
    }

    /// Deploys the directory as it is (`files`) and says what happened in one line; a bundle
    /// that fails its checks is reported as `rally deploy` reports it and changes nothing.
    async fn deploy(&mut self, files: Files) {
        let previous = self.deployed.as_ref().map(|deployed| deployed.number);
        // Which files changed is known only against a version this run packed.
        let changes = self
            .deployed
            .as_ref()
            .and_then(|deployed| deployed.files.as_ref())
            .map(|before| describe_changes(before, &files));
        let note = match (&changes, previous) {
            (Some(changes), _) => format!("rally dev: {changes}"),
            (None, Some(previous)) => format!("rally dev: changed since v{previous}"),
            (None, None) => "rally dev".to_owned(),
        };
        match self.try_deploy(&note, files).await {
            Ok(Outcome::Deployed { number }) => match previous {
                Some(previous) => {
                    let changes = changes.unwrap_or_else(|| format!("changed since v{previous}"));
                    eprintln!(
                        "v{number} deployed ({changes}): new clients and new matches use it; \
                         running matches finish on v{previous}"
                    );
                }
                None => eprintln!("v{number} deployed: players can connect"),
            },
            Ok(Outcome::Unchanged { number }) => match changes {
                Some(changes) if !changes.is_empty() => {
                    eprintln!("{changes}, but the bundle is v{number}'s again; nothing to deploy");
                }
                _ => eprintln!(
                    "v{number} is deployed and matches {}",
                    self.directory.display()
                ),
            },
            Err(error) => {
                report(&error);
                let changes = match changes {
                    Some(changes) if !changes.is_empty() => format!(" ({changes})"),
                    _ => String::new(),
                };
                match previous {
                    Some(previous) => eprintln!("not deployed{changes}; v{previous} keeps serving"),
                    None => eprintln!("nothing is deployed yet; save a fix to try again"),
                }
            }
        }
    }

    async fn try_deploy(&mut self, note: &str, files: Files) -> Result<Outcome, CliError> {
        // The same checks, upload and deployment as `rally deploy`.
        let checked = pack_and_check(&self.directory).await?;
        if let Some(deployed) = &mut self.deployed {
            // `pack` is deterministic: the same files give the same archive.
            if deployed.sha256 == checked.bundle.sha256 {
                deployed.files = Some(files);
                return Ok(Outcome::Unchanged {
                    number: deployed.number,
                });
            }
        }
        let sha256 = checked.bundle.sha256.clone();
        let client = self.developer.client().await?;
        let note: String = note.chars().take(500).collect();
        let version = upload(&client, &self.project, checked, Some(&note)).await?;
        let deployed = client
            .deploy(
                TENANT,
                &self.project.project,
                DEFAULT_STAGE,
                &version.id,
                serde_json::Value::Null,
            )
            .await;
        if let Err(error) = deployed {
            // The next change uploads another version; this one stays in the list unused.
            eprintln!(
                "rally: version {} was uploaded but not deployed",
                version.number
            );
            return Err(error.into());
        }
        self.deployed = Some(Deployed {
            number: version.number,
            sha256,
            files: Some(files),
        });
        Ok(Outcome::Deployed {
            number: version.number,
        })
    }
}

/// Size and modification time of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    size: u64,
}

/// The bundle directory's files (paths relative to it, `/`-separated) as `pack` sees them.
type Files = BTreeMap<String, Stamp>;

/// Looks at the files of `root`, leaving out what `pack` leaves out: hidden entries (version
/// control, editor state, `.rally-dev`) and a top-level `target/`.
fn list_files(root: &Path) -> Files {
    fn walk(directory: &Path, prefix: &str, files: &mut Files) {
        let Ok(entries) = std::fs::read_dir(directory) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || (prefix.is_empty() && name == "target") {
                continue;
            }
            let path = format!("{prefix}{name}");
            // Not followed: `pack` refuses links, and a link that appears must be reported.
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                walk(&entry.path(), &format!("{path}/"), files);
            } else {
                let stamp = Stamp {
                    modified: metadata.modified().ok(),
                    size: metadata.len(),
                };
                files.insert(path, stamp);
            }
        }
    }
    let mut files = Files::new();
    walk(root, "", &mut files);
    files
}

/// `lobby.lua changed; maps/arena.json added`, naming at most three files per kind.
fn describe_changes(before: &Files, after: &Files) -> String {
    let changed: Vec<&str> = after
        .iter()
        .filter(|(path, stamp)| before.get(*path).is_some_and(|old| old != *stamp))
        .map(|(path, _)| path.as_str())
        .collect();
    let added: Vec<&str> = after
        .keys()
        .filter(|path| !before.contains_key(*path))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .map(String::as_str)
        .collect();
    [(changed, "changed"), (added, "added"), (removed, "removed")]
        .into_iter()
        .filter(|(paths, _)| !paths.is_empty())
        .map(|(paths, what)| {
            let mut named = paths[..paths.len().min(3)].join(", ");
            if paths.len() > 3 {
                named.push_str(&format!(" and {} more", paths.len() - 3));
            }
            format!("{named} {what}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls the bundle directory: no extra crate, no inotify limits, and a game's few files cost
/// nothing to look at twice a second.
struct Watcher {
    root: PathBuf,
    /// The files as last seen.
    seen: Files,
}

impl Watcher {
    async fn start(root: PathBuf) -> Self {
        let seen = Self::look(&root).await;
        Self { root, seen }
    }

    async fn look(root: &Path) -> Files {
        let root = root.to_owned();
        tokio::task::spawn_blocking(move || list_files(&root))
            .await
            .unwrap_or_default()
    }

    /// Waits for the directory to change and then to hold still for [`SETTLE`].
    async fn next_change(&mut self) -> Files {
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let mut latest = Self::look(&self.root).await;
            if latest == self.seen {
                continue;
            }
            loop {
                tokio::time::sleep(SETTLE).await;
                let again = Self::look(&self.root).await;
                if again == latest {
                    break;
                }
                latest = again;
            }
            self.seen = latest.clone();
            return latest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_aliases_are_valid_slugs_of_the_directory_name() {
        for (name, expected) in [
            ("tictactoe", "tictactoe"),
            ("Tic Tac Toe", "tic-tac-toe"),
            ("my_game--v2!", "my-game-v2"),
            ("2048", "game-2048"),
            ("", "game"),
            ("ÄÖ", "game"),
            (
                "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "game-0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            ),
            (
                "abcdefab-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "game-abcdefab-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            ),
        ] {
            let alias = project_alias(name);
            assert_eq!(alias, expected, "{name:?}");
            assert!(crate::permissions::check_alias(&alias).is_ok(), "{alias}");
        }
        let long = project_alias(&"a-".repeat(60));
        assert!(long.len() <= 63 && crate::permissions::check_alias(&long).is_ok());
    }

    #[test]
    fn changes_name_the_files() {
        let stamp = |size| Stamp {
            modified: None,
            size,
        };
        let before = Files::from([
            ("lobby.lua".to_owned(), stamp(1)),
            ("match.lua".to_owned(), stamp(2)),
            ("old.lua".to_owned(), stamp(3)),
        ]);
        let after = Files::from([
            ("lobby.lua".to_owned(), stamp(5)),
            ("match.lua".to_owned(), stamp(2)),
            ("maps/arena.json".to_owned(), stamp(4)),
        ]);
        assert_eq!(
            describe_changes(&before, &after),
            "lobby.lua changed; maps/arena.json added; old.lua removed"
        );
        assert_eq!(describe_changes(&after, &after), "");
    }

    #[test]
    fn the_watch_leaves_out_what_pack_leaves_out() {
        let root = tempfile::tempdir().unwrap();
        for path in [
            "rally.toml",
            "lib/util.lua",
            ".git/HEAD",
            "target/x",
            ".rally-dev/rally.db",
        ] {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let files: Vec<String> = list_files(root.path()).into_keys().collect();
        assert_eq!(files, ["lib/util.lua", "rally.toml"]);
    }

    #[test]
    fn a_data_directory_inside_the_bundle_must_stay_out_of_it() {
        let bundle = tempfile::tempdir().unwrap();
        let bundle = bundle.path().canonicalize().unwrap();
        let configured = Config::default().data_dir;
        let default = data_directory(&bundle, None, &configured).unwrap();
        assert_eq!(default, bundle.join(".rally-dev"));
        assert!(data_directory(&bundle, Some(bundle.join("state")), &configured).is_err());
        assert!(data_directory(&bundle, Some(bundle.clone()), &configured).is_err());
        assert!(data_directory(&bundle, Some(bundle.join("target/dev")), &configured).is_ok());
    }
}

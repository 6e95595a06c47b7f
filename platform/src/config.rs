//! Platform configuration: defaults that work with no file at all, then an optional TOML file,
//! then `RALLY_*` environment variables. Invalid settings fail at start, naming the setting.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `rally server` can be told. Field names are the TOML keys; the environment
/// variable of a key is `RALLY_` followed by the key in capitals (`listen` → `RALLY_LISTEN`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Where the platform keeps its files; the default SQLite database lives here.
    pub data_dir: PathBuf,
    /// `sqlite://path` or `postgres://...`; defaults to `rally.db` in the data directory.
    pub database_url: Option<SecretString>,
    /// Connections to a PostgreSQL server. SQLite has one writer and this many readers at most,
    /// but never more readers than cores.
    pub database_max_connections: u32,
    /// Password of the `admin` account created on first start; generated and printed when unset.
    pub admin_password: Option<SecretString>,
    /// HMAC key (at least 32 bytes) that signs access tokens. When unset a key is generated once
    /// and kept in the database, so tokens stay valid across restarts and nodes.
    pub jwt_secret: Option<SecretString>,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Largest bundle archive (tar.gz) accepted by a version upload, in bytes.
    pub bundle_max_bytes: u64,
    /// Largest total size of a bundle's files once unpacked; a decompression bomb stops here.
    pub bundle_max_unpacked_bytes: u64,
    /// Most files in one bundle.
    pub bundle_max_files: usize,
    /// Version uploads read and checked at one time on this node; more wait for a turn (up to
    /// a few seconds, then `uploads_busy`). Each may hold a few times `bundle_max_bytes`.
    pub bundle_uploads_at_once: u32,
    /// The `rally-runtime` binary the local-process pool starts; by default the one next to
    /// `rally`, else from `PATH`.
    pub runtime_binary: Option<PathBuf>,
    /// URL runtimes use to reach this node; by default `http://` and the bound address.
    pub runtime_platform_url: Option<String>,
    /// A runtime that has not connected this long after starting (or reconnected after losing
    /// its socket) is stopped and replaced.
    pub runtime_start_timeout_secs: u64,
    /// Runtime processes started and not yet connected at any one time, on this node. A burst
    /// of matches then starts in order, each fast, rather than all at once, each slowly, and
    /// the platform keeps the CPU it needs to greet them. Twice the cores by default.
    pub runtime_starts_at_once: u32,
    /// How long a runtime asked to stop has before SIGTERM, and then before SIGKILL.
    pub runtime_stop_grace_secs: u64,
    /// Cap on each runtime's log file; older lines are dropped past it.
    pub runtime_log_max_bytes: u64,
    /// A Docker server whose daemon has not answered for this long has its runtimes reported
    /// ended, so that they are replaced on other servers.
    pub docker_server_lost_secs: u64,
    /// The repository of the runtime images made for Docker servers: `<it>:<bundle>-<program>`
    /// for each version, on `<it>-base:<program>` for the runtime program.
    pub docker_image_repository: String,
    /// `host:port` of the studio's image registry (`docs/registry.md`) as Docker daemons and
    /// developers reach it. Unset: no registry, and Docker servers make each version's image
    /// themselves.
    pub registry_address: Option<String>,
    /// Lifetime of the tokens the platform signs for the registry.
    pub registry_token_ttl_secs: u64,
    /// Longest lifetime of a `rally registry login` credential.
    pub registry_login_ttl_secs: u64,
    /// Image builds (`docs/registry.md`) run at one time on this node; more wait in the queue.
    pub builds_at_once: u32,
    /// An image on the Docker daemons (the builder's local one, and each server's) that program
    /// runtime images are made on, e.g. one with the libraries a headless game build needs.
    /// Unset: a program's image holds its bundle's files alone (`FROM scratch`).
    pub program_base_image: Option<String>,
    /// The URL players and other nodes use to reach this node (`docs/nodes.md`); by default
    /// `runtime_platform_url`, else `http://` and the bound address.
    pub advertise_url: Option<String>,
    /// How often this node writes its heartbeat row.
    pub node_heartbeat_secs: u64,
    /// A node whose heartbeat is older than this is dead (`rally node list`).
    pub node_dead_after_secs: u64,
    /// How stages are spread over nodes (`docs/nodes.md`): `count` moves idle stages from a
    /// node with more than one stage above the least loaded one; `off` leaves them where they
    /// are (operators move them).
    pub stage_balance: StageBalance,
    /// Whether the server serves the playground at `/play/` (`docs/playground.md`).
    pub playground: bool,
    /// The stage (`tenant/project/stage`) whose playground opens without a developer's
    /// sign-in: `rally dev` sets it to its game's stage. Not a setting.
    #[serde(skip)]
    pub playground_stage: Option<String>,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace_secs: u64,
    pub log_format: LogFormat,
    /// Largest frame a player may send (text or binary), in bytes.
    pub player_max_frame_bytes: usize,
    /// Sustained messages per second a client may send; one second's worth may burst.
    pub player_messages_per_sec: u32,
    /// How long a client that dropped may take to reconnect and keep its assignment.
    pub player_reconnect_grace_secs: u64,
    /// Events waiting to go out to one client; a client that falls this far behind is a slow
    /// reader and is deleted (reason `slow_reader`) rather than buffered without end.
    pub player_outbox_events: usize,
    /// How often the platform pings a player socket; twice this in silence drops it.
    pub player_heartbeat_secs: u64,
    /// A matchmaking request not matched in this time fails (`matchmaking_failed`).
    pub matchmaking_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageBalance {
    Count,
    Off,
}

/// Where the commands find the platform unless told otherwise: the default `listen` address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7350";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7350)),
            data_dir: PathBuf::from("rally-data"),
            database_url: None,
            database_max_connections: 16,
            admin_password: None,
            jwt_secret: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            body_limit_bytes: 1024 * 1024,
            bundle_max_bytes: 64 * 1024 * 1024,
            bundle_max_unpacked_bytes: 128 * 1024 * 1024,
            bundle_max_files: 2000,
            bundle_uploads_at_once: 2,
            runtime_binary: None,
            runtime_platform_url: None,
            runtime_start_timeout_secs: 30,
            runtime_starts_at_once: std::thread::available_parallelism()
                .map_or(4, |cores| 2 * cores.get() as u32),
            runtime_stop_grace_secs: 5,
            runtime_log_max_bytes: 1024 * 1024,
            docker_server_lost_secs: 30,
            docker_image_repository: "rally-runtime".to_owned(),
            registry_address: None,
            registry_token_ttl_secs: 300,
            registry_login_ttl_secs: 30 * 24 * 60 * 60,
            builds_at_once: 2,
            program_base_image: None,
            advertise_url: None,
            node_heartbeat_secs: 2,
            node_dead_after_secs: 10,
            stage_balance: StageBalance::Count,
            playground: true,
            playground_stage: None,
            shutdown_grace_secs: 10,
            log_format: LogFormat::Human,
            player_max_frame_bytes: 64 * 1024,
            player_messages_per_sec: 50,
            player_reconnect_grace_secs: 30,
            player_outbox_events: 1024,
            player_heartbeat_secs: 15,
            matchmaking_timeout_secs: 60,
        }
    }
}

/// Why the configuration was refused; always names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{setting}` {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
}

const ENV_PREFIX: &str = "RALLY_";

/// The settings, as TOML keys. Only these are read from `RALLY_*` variables: the CLI and the
/// tests have variables of their own under the same prefix.
const SETTINGS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "database_max_connections",
    "admin_password",
    "jwt_secret",
    "access_token_ttl_secs",
    "refresh_token_ttl_secs",
    "body_limit_bytes",
    "bundle_max_bytes",
    "bundle_max_unpacked_bytes",
    "bundle_max_files",
    "bundle_uploads_at_once",
    "runtime_binary",
    "runtime_platform_url",
    "runtime_start_timeout_secs",
    "runtime_starts_at_once",
    "runtime_stop_grace_secs",
    "runtime_log_max_bytes",
    "docker_server_lost_secs",
    "docker_image_repository",
    "registry_address",
    "registry_token_ttl_secs",
    "registry_login_ttl_secs",
    "builds_at_once",
    "program_base_image",
    "advertise_url",
    "node_heartbeat_secs",
    "node_dead_after_secs",
    "stage_balance",
    "playground",
    "shutdown_grace_secs",
    "log_format",
    "player_max_frame_bytes",
    "player_messages_per_sec",
    "player_reconnect_grace_secs",
    "player_outbox_events",
    "player_heartbeat_secs",
    "matchmaking_timeout_secs",
];

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).only(SETTINGS));
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                setting,
                problem: problem.into(),
            }
        }
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(invalid(
                    "database_url",
                    "must start with sqlite:// or postgres://",
                ));
            }
        }
        if self.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }
        if let Some(password) = &self.admin_password {
            crate::auth::password::check_password(password.expose_secret())
                .map_err(|problem| invalid("admin_password", problem))?;
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.expose_secret().len() < 32 {
                return Err(invalid("jwt_secret", "must be at least 32 bytes long"));
            }
        }
        if self.access_token_ttl_secs < 10 {
            return Err(invalid("access_token_ttl_secs", "must be at least 10"));
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            return Err(invalid(
                "refresh_token_ttl_secs",
                "must not be shorter than access_token_ttl_secs",
            ));
        }
        if self.body_limit_bytes < 1024 {
            return Err(invalid("body_limit_bytes", "must be at least 1024"));
        }
        if self.bundle_max_bytes < 1024 {
            return Err(invalid("bundle_max_bytes", "must be at least 1024"));
        }
        if self.bundle_max_unpacked_bytes < self.bundle_max_bytes {
            return Err(invalid(
                "bundle_max_unpacked_bytes",
                "must not be smaller than bundle_max_bytes",
            ));
        }
        if self.runtime_start_timeout_secs == 0 {
            return Err(invalid("runtime_start_timeout_secs", "must be at least 1"));
        }
        if self.docker_server_lost_secs == 0 {
            return Err(invalid("docker_server_lost_secs", "must be at least 1"));
        }
        if let Some(url) = &self.advertise_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "advertise_url",
                    "must start with http:// or https://",
                ));
            }
            // It travels as a WebSocket close reason, which holds 123 bytes.
            if url.len() > 120 {
                return Err(invalid("advertise_url", "must be at most 120 bytes"));
            }
        }
        if self.node_heartbeat_secs == 0 {
            return Err(invalid("node_heartbeat_secs", "must be at least 1"));
        }
        if self.node_dead_after_secs < 2 * self.node_heartbeat_secs {
            return Err(invalid(
                "node_dead_after_secs",
                "must be at least twice node_heartbeat_secs",
            ));
        }
        let repository_valid = !self.docker_image_repository.is_empty()
            && self.docker_image_repository.len() <= 128
            && self
                .docker_image_repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b));
        if !repository_valid {
            return Err(invalid(
                "docker_image_repository",
                "must be a Docker repository name: a-z, 0-9, '-', '_', '.', '/'",
            ));
        }
        if let Some(address) = &self.registry_address {
            let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains('/')
                    && port.parse::<u16>().is_ok_and(|port| port > 0)
            });
            if !valid {
                return Err(invalid(
                    "registry_address",
                    "must be host:port, without a scheme (e.g. 127.0.0.1:5000)",
                ));
            }
        }
        if !(10..=3600).contains(&self.registry_token_ttl_secs) {
            return Err(invalid(
                "registry_token_ttl_secs",
                "must be between 10 and 3600",
            ));
        }
        if self.registry_login_ttl_secs < 60 {
            return Err(invalid("registry_login_ttl_secs", "must be at least 60"));
        }
        if self.builds_at_once == 0 {
            return Err(invalid("builds_at_once", "must be at least 1"));
        }
        if self.bundle_uploads_at_once == 0 {
            return Err(invalid("bundle_uploads_at_once", "must be at least 1"));
        }
        if self.runtime_starts_at_once == 0 {
            return Err(invalid("runtime_starts_at_once", "must be at least 1"));
        }
        if self.runtime_log_max_bytes < 4096 {
            return Err(invalid("runtime_log_max_bytes", "must be at least 4096"));
        }
        if let Some(url) = &self.runtime_platform_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "runtime_platform_url",
                    "must start with http:// or https://",
                ));
            }
        }
        if self.bundle_max_files == 0 {
            return Err(invalid("bundle_max_files", "must be at least 1"));
        }
        if !(16..=16 * 1024 * 1024).contains(&self.player_max_frame_bytes) {
            return Err(invalid(
                "player_max_frame_bytes",
                "must be between 16 and 16777216",
            ));
        }
        if self.player_messages_per_sec == 0 {
            return Err(invalid("player_messages_per_sec", "must be at least 1"));
        }
        if self.player_outbox_events < 16 {
            return Err(invalid("player_outbox_events", "must be at least 16"));
        }
        if self.matchmaking_timeout_secs == 0 {
            return Err(invalid("matchmaking_timeout_secs", "must be at least 1"));
        }
        if self.player_heartbeat_secs == 0 {
            return Err(invalid("player_heartbeat_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// The bundle limits in force.
    pub fn bundle_limits(&self) -> rally_sdk::bundle::BundleLimits {
        rally_sdk::bundle::BundleLimits {
            max_archive_bytes: self.bundle_max_bytes,
            max_unpacked_bytes: self.bundle_max_unpacked_bytes,
            max_files: self.bundle_max_files,
        }
    }

    /// The database URL in force: the configured one, or SQLite in the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("rally.db").display()),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Figment's messages name the key but not the environment variable; say both.
/// Every problem figment found, each naming where the value came from: the file (`in FILE:`)
/// or the variable (`in RALLY_KEY:`).
fn describe_figment_error(error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error.into_iter().map(describe_one).collect();
    ConfigError::Parse(messages.join("; "))
}

fn describe_one(error: figment::Error) -> String {
    let key = error.path.join(".");
    let what = match &error.kind {
        // (The path ends with the unknown key.)
        figment::error::Kind::UnknownField(field, _) => {
            let key = if key.is_empty() { field } else { &key };
            format!("unknown key `{key}` (README, \"Configuration\", lists the settings)")
        }
        kind if key.is_empty() => kind.to_string(),
        kind => format!("`{key}`: {kind}"),
    };
    let metadata = error.metadata.as_ref();
    let file = metadata
        .and_then(|metadata| metadata.source.as_ref())
        .and_then(|source| source.file_path());
    let from_environment = metadata.is_some_and(|metadata| metadata.name.contains("environment"));
    match file {
        Some(file) => format!("in {}: {what}", file.display()),
        None if from_environment && !key.is_empty() => {
            format!("in {ENV_PREFIX}{}: {what}", key.to_ascii_uppercase())
        }
        None => what,
    }
}

#[cfg(test)]
// figment's test jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7350");
        assert_eq!(
            config.effective_database_url(),
            "sqlite://rally-data/rally.db"
        );
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let config = Config {
            admin_password: Some(SecretString::from("hunter2-hunter2")),
            jwt_secret: Some(SecretString::from("a".repeat(40))),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(&"a".repeat(40)));
    }

    #[test]
    fn short_jwt_secret_is_refused_by_name() {
        let config = Config {
            jwt_secret: Some(SecretString::from("short")),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("jwt_secret"), "{error}");
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rally.toml",
                "listen = \"127.0.0.1:9000\"\nbody_limit_bytes = 4096\n",
            )?;
            jail.set_env("RALLY_BODY_LIMIT_BYTES", "8192");
            let config = Config::load(Some(Path::new("rally.toml"))).unwrap();
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.body_limit_bytes, 8192);
            Ok(())
        });
    }

    #[test]
    fn a_bad_environment_value_names_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RALLY_LISTEN", "not-an-address");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("listen"), "{error}");
            assert!(error.contains("RALLY_LISTEN"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn every_listed_setting_is_a_real_one() {
        figment::Jail::expect_with(|jail| {
            for key in SETTINGS {
                let value = match *key {
                    "listen" => "127.0.0.1:1",
                    "log_format" => "json",
                    "stage_balance" => "off",
                    "playground" => "false",
                    "data_dir" | "database_url" | "runtime_binary" => "sqlite://x.db",
                    "runtime_platform_url" | "advertise_url" => "http://127.0.0.1:1",
                    "node_heartbeat_secs" => "2",
                    "docker_image_repository" => "registry.local/rally-runtime",
                    "registry_address" => "127.0.0.1:5000",
                    "registry_token_ttl_secs" => "300",
                    "program_base_image" => "studio/base:1",
                    "admin_password" | "jwt_secret" => "0123456789abcdef0123456789abcdef",
                    _ => "100000",
                };
                jail.set_env(format!("RALLY_{}", key.to_ascii_uppercase()), value);
            }
            let config = Config::load(None).unwrap();
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.body_limit_bytes, 100_000);
            Ok(())
        });
    }

    #[test]
    fn unknown_settings_in_a_file_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("rally.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            let error = Config::load(Some(Path::new("rally.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("rally.toml: unknown key `lisen`"), "{error}");
            assert!(!error.contains("RALLY_"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_in_the_file_names_the_file_and_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("rally.toml", "listen = \"not-an-address\"\n")?;
            let error = Config::load(Some(Path::new("rally.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("rally.toml: `listen`:"), "{error}");
            assert!(!error.contains("RALLY_LISTEN"), "{error}");
            Ok(())
        });
    }
}

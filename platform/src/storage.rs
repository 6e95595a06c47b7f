//! The database: SQLite (embedded default) or PostgreSQL, chosen by URL, behind one handle.
//!
//! Queries are written once in the SQL both backends accept (`$1` placeholders, `RETURNING`,
//! `ON CONFLICT`) and run through sqlx's `Any` driver. Every value is TEXT or BIGINT: ids are
//! UUIDv7 strings, times are Unix milliseconds, flags are nullable timestamps.
//!
//! SQLite allows one writer at a time, so it gets two pools: a single-connection writer that
//! serialises writes without `SQLITE_BUSY` retries, and a reader pool that WAL lets run beside
//! it. PostgreSQL uses one pool for both.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StorageError {
    /// True when the statement broke a unique constraint (a duplicate name or id).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StorageError::Database(sqlx::Error::Database(error)) if error.is_unique_violation())
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A cheap-to-clone handle on the platform's database.
#[derive(Clone, Debug)]
pub struct Database {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
}

impl Database {
    /// Connects (creating a SQLite file and its directory if missing) and applies migrations.
    pub async fn open(url: &str, max_connections: u32) -> StorageResult<Self> {
        sqlx::any::install_default_drivers();
        let database = if url.starts_with("sqlite:") {
            Self::open_sqlite(url, max_connections).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url, max_connections).await?
        } else {
            return Err(StorageError::UnsupportedUrl(redact_url(url)));
        };
        database.migrate().await?;
        Ok(database)
    }

    async fn open_sqlite(url: &str, max_connections: u32) -> StorageResult<Self> {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(":memory:") {
            return Err(StorageError::UnsupportedUrl(format!(
                "{url} (an in-memory SQLite database cannot be shared by the platform's pools; \
                 give a file path)"
            )));
        }
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| StorageError::Directory {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let options = AnyConnectOptions::from_str(&format!("sqlite://{path}?mode=rwc"))?;
        let pool = |connections: u32| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                // A connection to a local file cannot go stale: no ping before each use, which
                // would cost every query a second round trip to the connection's thread.
                .test_before_acquire(false)
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the writer; NORMAL sync is durable across
                        // process crashes (WAL) and far faster than FULL; the busy timeout
                        // covers the brief moments when a checkpoint holds the lock.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            connection.execute(pragma).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        // Each SQLite connection is served by a thread of its own; more readers than cores only
        // add context switches (measured: 16 readers ran the sign-up load 20% slower than 2).
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get() as u32);
        let writer = pool(1).await?;
        let reader = pool(max_connections.clamp(1, cores.max(2))).await?;
        Ok(Self {
            backend: Backend::Sqlite,
            writer,
            reader,
        })
    }

    async fn open_postgres(url: &str, max_connections: u32) -> StorageResult<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self {
            backend: Backend::Postgres,
            writer: pool.clone(),
            reader: pool,
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.writer).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for statements that change data.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// The pool for statements that only read.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Answers when the database takes a query.
    pub async fn ping(&self) -> StorageResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// A platform-wide setting, e.g. the generated token signing key.
    pub async fn setting(&self, key: &str) -> StorageResult<Option<String>> {
        let value = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.writer)
            .await?;
        Ok(value)
    }

    /// Stores `value` under `key` unless the key already has one, and returns the value in force.
    /// Two nodes starting at once therefore agree on the same value.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> StorageResult<String> {
        sqlx::query(
            "INSERT INTO settings (key, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .bind(now_millis())
        .execute(&self.writer)
        .await?;
        let value = self.setting(key).await?;
        Ok(value.expect("setting exists after insert"))
    }
}

/// Unix time in milliseconds, the unit of every stored time.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

/// A new id: UUIDv7, so ids sort by creation time and index well.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://rally:s3cret@db:5432/rally"),
            "postgres://rally:***@db:5432/rally"
        );
        assert_eq!(redact_url("postgres://db/rally"), "postgres://db/rally");
    }

    #[test]
    fn ids_sort_by_creation() {
        let first = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let second = new_id();
        assert!(first < second);
    }
}

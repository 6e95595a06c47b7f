//! The pools and servers on record: reading them with their usage, and the rules a new
//! Docker server must meet.

use crate::error::ApiError;
use crate::storage::{now_millis, Database, StorageError};
use rally_sdk::wire::{
    Capacity, DockerEndpoint, DockerTls, PlacementStrategy, Pool, RegisterServer, Server,
    ServerKind, ServerStatus, Usage,
};
use sqlx::any::AnyRow;
use sqlx::Row;

/// Every stage's pool until an operator moves it; it holds the process server.
pub const LOCAL_POOL: &str = "local";

/// The kind of runtimes a pool runs: the `local` pool holds the process server, every other
/// pool Docker servers (the API registers no other process server).
pub fn kind_of_pool(pool: &str) -> crate::pools::PoolKind {
    if pool == LOCAL_POOL {
        crate::pools::PoolKind::Process
    } else {
        crate::pools::PoolKind::Docker
    }
}

/// Pool and server names are slugs, like aliases: 1 to 63 of `a-z 0-9 -`, starting with a
/// letter and not ending with `-`.
pub fn check_slug(what: &'static str, name: &str) -> Result<(), ApiError> {
    if crate::catalog::is_slug(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "a {what} name must be 1 to 63 characters of a-z, 0-9 and '-', starting with a letter, not {name:?}"
            ),
        ))
    }
}

/// The shape of a Docker server: a daemon address the platform can use, TLS for TCP, a
/// network, a platform URL, and a capacity in every dimension.
pub fn check_docker_server(request: &RegisterServer) -> Result<(), ApiError> {
    let invalid = |code: &'static str, message: String| Err(ApiError::bad_request(code, message));
    let docker = &request.docker;
    let url = &docker.url;
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return invalid(
                "invalid_docker_url",
                format!("{url:?}: a unix socket address is unix:// and an absolute path"),
            );
        }
        if docker.tls.is_some() {
            return invalid(
                "invalid_docker_url",
                "TLS is for tcp:// addresses; a unix socket is local".to_owned(),
            );
        }
    } else if let Some(address) = url.strip_prefix("tcp://") {
        if address.is_empty() || address.contains('/') {
            return invalid(
                "invalid_docker_url",
                format!("{url:?}: a TCP address is tcp://host:port"),
            );
        }
        if docker.tls.is_none() {
            return invalid(
                "docker_tls_required",
                "a Docker daemon on TCP is reached with TLS client certificates (tls.ca, tls.cert, tls.key): without them anyone on the network runs containers as root".to_owned(),
            );
        }
    } else {
        return invalid(
            "invalid_docker_url",
            format!(
                "{url:?}: the daemon address is unix:///path/to/docker.sock or tcp://host:port"
            ),
        );
    }
    if let Some(tls) = &docker.tls {
        for (field, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if !std::path::Path::new(path).is_absolute() {
                return invalid(
                    "invalid_docker_tls",
                    format!("tls.{field} is an absolute path on the platform's host, not {path:?}"),
                );
            }
        }
    }
    let network_valid = !docker.network.is_empty()
        && docker.network.len() <= 128
        && docker
            .network
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !network_valid {
        return invalid(
            "invalid_network",
            format!(
                "network is `host` or the name of a Docker network, not {:?}",
                docker.network
            ),
        );
    }
    if let Some(platform_url) = &docker.platform_url {
        let parsed = reqwest::Url::parse(platform_url).ok();
        if !parsed.is_some_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host()) {
            return invalid(
                "invalid_platform_url",
                format!("platform_url is an http(s) URL, not {platform_url:?}"),
            );
        }
    }
    let capacity = &request.capacity;
    for (field, value) in [
        ("cpu_millis", capacity.cpu_millis),
        ("memory_mb", capacity.memory_mb),
        ("runtimes", capacity.runtimes),
    ] {
        if value.is_none_or(|value| value == 0) {
            return invalid(
                "invalid_capacity",
                format!("capacity.{field} is required for a Docker server and must be above 0"),
            );
        }
    }
    Ok(())
}

/// The record of a Docker server about to be registered.
pub fn new_docker_server(pool: &str, request: RegisterServer) -> Server {
    Server {
        name: request.name,
        pool: pool.to_owned(),
        kind: ServerKind::Docker,
        status: ServerStatus::Enabled,
        docker: Some(request.docker),
        capacity: request.capacity,
        usage: Usage::default(),
        created_at: now_millis(),
    }
}

/// The statement that records a server.
pub fn insert_server(
    server: &Server,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    let docker = server.docker.as_ref();
    let tls = docker.and_then(|docker| docker.tls.as_ref());
    sqlx::query(
        "INSERT INTO servers (name, pool, kind, status, docker_url, tls_ca, tls_cert, tls_key, \
         network, platform_url, cpu_millis, memory_mb, max_runtimes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&server.name)
    .bind(&server.pool)
    .bind(server.kind.as_str())
    .bind(server.status.as_str())
    .bind(docker.map(|docker| docker.url.clone()))
    .bind(tls.map(|tls| tls.ca.clone()))
    .bind(tls.map(|tls| tls.cert.clone()))
    .bind(tls.map(|tls| tls.key.clone()))
    .bind(docker.map(|docker| docker.network.clone()))
    .bind(docker.and_then(|docker| docker.platform_url.clone()))
    .bind(server.capacity.cpu_millis.map(i64::from))
    .bind(server.capacity.memory_mb.map(i64::from))
    .bind(server.capacity.runtimes.map(i64::from))
    .bind(server.created_at)
}

fn pool(row: &AnyRow) -> Pool {
    Pool {
        name: row.get("name"),
        strategy: PlacementStrategy::parse(&row.get::<String, _>("strategy")).unwrap_or_default(),
        created_at: row.get("created_at"),
    }
}

pub async fn pools(database: &Database) -> Result<Vec<Pool>, StorageError> {
    let rows =
        sqlx::query("SELECT name, strategy, created_at FROM pools ORDER BY created_at, name")
            .fetch_all(database.reader())
            .await?;
    Ok(rows.iter().map(pool).collect())
}

/// The pool named `name`, or 404.
pub async fn find_pool(database: &Database, name: &str) -> Result<Pool, ApiError> {
    let row = sqlx::query("SELECT name, strategy, created_at FROM pools WHERE name = $1")
        .bind(name)
        .fetch_optional(database.reader())
        .await?;
    row.as_ref()
        .map(pool)
        .ok_or(ApiError::NotFound { what: "pool" })
}

/// Servers with what the runtimes on them that are not over hold (each as its deployment
/// asked when it started). Every local-process runtime, on whichever node, counts on the
/// process server.
const SERVER_SELECT: &str = "SELECT s.name, s.pool, s.kind, s.status, s.docker_url, s.tls_ca, \
     s.tls_cert, s.tls_key, s.network, s.platform_url, s.cpu_millis, s.memory_mb, \
     s.max_runtimes, s.created_at, \
     COALESCE(u.cpu_millis, 0) AS used_cpu_millis, COALESCE(u.memory_mb, 0) AS used_memory_mb, \
     COALESCE(u.runtimes, 0) AS used_runtimes \
     FROM servers s LEFT JOIN (SELECT CASE WHEN pool_kind = 'process' THEN '' ELSE server END \
     AS on_server, CAST(SUM(cpu_millis) AS BIGINT) AS cpu_millis, \
     CAST(SUM(memory_mb) AS BIGINT) AS memory_mb, \
     COUNT(*) AS runtimes FROM runtimes WHERE status IN ('starting', 'running', 'stopping') \
     GROUP BY on_server) u \
     ON u.on_server = CASE WHEN s.kind = 'process' THEN '' ELSE s.name END";

fn server(row: &AnyRow) -> Server {
    let kind = ServerKind::parse(&row.get::<String, _>("kind")).unwrap_or(ServerKind::Docker);
    let docker = row
        .get::<Option<String>, _>("docker_url")
        .map(|url| DockerEndpoint {
            url,
            tls: match (
                row.get::<Option<String>, _>("tls_ca"),
                row.get::<Option<String>, _>("tls_cert"),
                row.get::<Option<String>, _>("tls_key"),
            ) {
                (Some(ca), Some(cert), Some(key)) => Some(DockerTls { ca, cert, key }),
                _ => None,
            },
            network: row
                .get::<Option<String>, _>("network")
                .unwrap_or_else(|| "host".to_owned()),
            platform_url: row.get("platform_url"),
        });
    let limit = |column: &str| {
        row.get::<Option<i64>, _>(column)
            .map(|value| value.clamp(0, i64::from(u32::MAX)) as u32)
    };
    let used = |column: &str| row.get::<i64, _>(column).max(0) as u64;
    Server {
        name: row.get("name"),
        pool: row.get("pool"),
        kind,
        status: ServerStatus::parse(&row.get::<String, _>("status"))
            .unwrap_or(ServerStatus::Disabled),
        docker,
        capacity: Capacity {
            cpu_millis: limit("cpu_millis"),
            memory_mb: limit("memory_mb"),
            runtimes: limit("max_runtimes"),
        },
        usage: Usage {
            cpu_millis: used("used_cpu_millis"),
            memory_mb: used("used_memory_mb"),
            runtimes: used("used_runtimes"),
        },
        created_at: row.get("created_at"),
    }
}

/// The servers of `pool` (or of every pool), by name.
pub async fn servers(database: &Database, pool: Option<&str>) -> Result<Vec<Server>, StorageError> {
    let rows = match pool {
        Some(pool) => {
            sqlx::query(&format!(
                "{SERVER_SELECT} WHERE s.pool = $1 ORDER BY s.name"
            ))
            .bind(pool)
            .fetch_all(database.reader())
            .await?
        }
        None => {
            sqlx::query(&format!("{SERVER_SELECT} ORDER BY s.pool, s.name"))
                .fetch_all(database.reader())
                .await?
        }
    };
    Ok(rows.iter().map(server).collect())
}

/// The server `name` of `pool`, or 404.
pub async fn find_server(database: &Database, pool: &str, name: &str) -> Result<Server, ApiError> {
    let row = sqlx::query(&format!(
        "{SERVER_SELECT} WHERE s.pool = $1 AND s.name = $2"
    ))
    .bind(pool)
    .bind(name)
    .fetch_optional(database.reader())
    .await?;
    row.as_ref()
        .map(server)
        .ok_or(ApiError::NotFound { what: "server" })
}

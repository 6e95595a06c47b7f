//! `rally pool ...` and `rally pool server ...` (admin, support): the pools runtimes run in,
//! the Docker daemons in them with their capacity, what runs where, and drain or disable.

use super::args::IdempotencyArgs;
use super::session::{connect, TargetArgs};
use super::table::{or_dash, print_fields, time, Table};
use super::{print_json, CliError};
use clap::{Subcommand, ValueEnum};
use rally_sdk::wire::{
    Capacity, DockerEndpoint, DockerTls, PlacementStrategy, Pool, PoolList, RegisterServer,
    RuntimeList, Server, ServerList, ServerStatus,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// The server with the most room left.
    Spread,
    /// The server with the least room left that fits.
    Pack,
}

impl From<Strategy> for PlacementStrategy {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Spread => PlacementStrategy::Spread,
            Strategy::Pack => PlacementStrategy::Pack,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Create {
        /// A slug: 1–63 of `a-z 0-9 -`, starting with a letter.
        name: String,
        #[arg(long, value_enum, default_value = "spread")]
        strategy: Strategy,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the pools.
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show a pool and its servers.
    Show {
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Change how a pool picks servers for new runtimes.
    Strategy {
        pool: String,
        #[arg(value_enum)]
        strategy: Strategy,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete an empty pool no stage uses.
    Delete {
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Register, list, drain, disable and remove the servers of pools.
    #[command(subcommand)]
    Server(ServerCommand),
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a Docker daemon as a server of a pool; the daemon must answer.
    Add {
        /// A slug unique among servers.
        name: String,
        #[arg(long)]
        pool: String,
        /// The daemon: unix:///var/run/docker.sock, or tcp://host:2376 with the --tls-* files.
        #[arg(long, default_value = "unix:///var/run/docker.sock")]
        docker: String,
        /// CA certificate of a TCP daemon (a path on the platform's host).
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_ca: Option<String>,
        /// Client certificate for a TCP daemon.
        #[arg(long, requires_all = ["tls_ca", "tls_key"])]
        tls_cert: Option<String>,
        /// Client key for a TCP daemon.
        #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
        tls_key: Option<String>,
        /// The network containers join: `host` or a named Docker network.
        #[arg(long, default_value = "host")]
        network: String,
        /// The URL runtimes in its containers reach the platform at (default: the platform's
        /// own runtime URL).
        #[arg(long)]
        platform_url: Option<String>,
        /// CPU for runtimes, in thousandths of a core.
        #[arg(long)]
        cpu_millis: u32,
        /// Memory for runtimes, in MiB.
        #[arg(long)]
        memory_mb: u32,
        /// Runtimes at once.
        #[arg(long)]
        max_runtimes: u32,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List servers with their usage against capacity.
    List {
        /// Only the servers of this pool.
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one server.
    Show {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Let a server take new runtimes again.
    Enable {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// No new runtimes on the server; those running finish.
    Drain {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// No new runtimes on the server, and those on it are stopped and replaced elsewhere.
    Disable {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// What runs on a server.
    Runtimes {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove a server with nothing running on it.
    Remove {
        name: String,
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn run_pool(command: PoolCommand) -> Result<(), CliError> {
    match command {
        PoolCommand::Create {
            name,
            strategy,
            idempotency,
            target,
        } => {
            let client = idempotency.apply(&connect(&target).await?);
            let pool = client.create_pool(&name, strategy.into()).await?;
            if target.output.json {
                print_json(&pool)?;
            } else {
                print_pool(&pool);
            }
        }
        PoolCommand::List { target } => {
            let pools = connect(&target).await?.list_pools().await?;
            if target.output.json {
                print_json(&PoolList { pools })?;
            } else {
                let mut table = Table::new(&["NAME", "STRATEGY", "CREATED"]);
                for pool in &pools {
                    table.row(vec![
                        pool.name.clone(),
                        pool.strategy.as_str().to_owned(),
                        time(pool.created_at),
                    ]);
                }
                table.print_or("no pools");
            }
        }
        PoolCommand::Show { pool, target } => {
            let client = connect(&target).await?;
            let pool = client.get_pool(&pool).await?;
            let servers = client.list_servers(Some(&pool.name)).await?;
            if target.output.json {
                print_json(&serde_json::json!({"pool": pool, "servers": servers}))?;
            } else {
                print_pool(&pool);
                println!();
                print_servers(&servers);
            }
        }
        PoolCommand::Strategy {
            pool,
            strategy,
            target,
        } => {
            let pool = connect(&target)
                .await?
                .set_pool_strategy(&pool, strategy.into())
                .await?;
            if target.output.json {
                print_json(&pool)?;
            } else {
                print_pool(&pool);
            }
        }
        PoolCommand::Server(command) => run_server(command).await?,
        PoolCommand::Delete { pool, target } => {
            connect(&target).await?.delete_pool(&pool).await?;
            if target.output.json {
                print_json(&serde_json::json!({"deleted": true, "pool": pool}))?;
            } else {
                println!("deleted pool {pool}");
            }
        }
    }
    Ok(())
}

async fn run_server(command: ServerCommand) -> Result<(), CliError> {
    match command {
        ServerCommand::Add {
            name,
            pool,
            docker,
            tls_ca,
            tls_cert,
            tls_key,
            network,
            platform_url,
            cpu_millis,
            memory_mb,
            max_runtimes,
            idempotency,
            target,
        } => {
            let tls = match (tls_ca, tls_cert, tls_key) {
                (Some(ca), Some(cert), Some(key)) => Some(DockerTls { ca, cert, key }),
                _ => None,
            };
            let request = RegisterServer {
                name,
                docker: DockerEndpoint {
                    url: docker,
                    tls,
                    network,
                    platform_url,
                },
                capacity: Capacity {
                    cpu_millis: Some(cpu_millis),
                    memory_mb: Some(memory_mb),
                    runtimes: Some(max_runtimes),
                },
            };
            let client = idempotency.apply(&connect(&target).await?);
            let server = client.register_server(&pool, &request).await?;
            print_server_or_json(&server, target.output.json)?;
        }
        ServerCommand::List { pool, target } => {
            let servers = connect(&target)
                .await?
                .list_servers(pool.as_deref())
                .await?;
            if target.output.json {
                print_json(&ServerList { servers })?;
            } else {
                print_servers(&servers);
            }
        }
        ServerCommand::Show { name, pool, target } => {
            let server = connect(&target).await?.get_server(&pool, &name).await?;
            print_server_or_json(&server, target.output.json)?;
        }
        ServerCommand::Enable { name, pool, target } => {
            set_status(&name, &pool, ServerStatus::Enabled, &target).await?;
        }
        ServerCommand::Drain { name, pool, target } => {
            set_status(&name, &pool, ServerStatus::Draining, &target).await?;
        }
        ServerCommand::Disable { name, pool, target } => {
            set_status(&name, &pool, ServerStatus::Disabled, &target).await?;
        }
        ServerCommand::Runtimes { name, pool, target } => {
            let runtimes = connect(&target)
                .await?
                .server_runtimes(&pool, &name)
                .await?;
            if target.output.json {
                print_json(&RuntimeList { runtimes })?;
            } else {
                let mut table = Table::new(&[
                    "RUNTIME",
                    "DEPLOYMENT",
                    "QUALIFIER",
                    "MODE",
                    "STATUS",
                    "HANDLE",
                    "CREATED",
                ]);
                for runtime in &runtimes {
                    table.row(vec![
                        runtime.id.clone(),
                        runtime.deployment_id.clone(),
                        runtime.qualifier.as_str().to_owned(),
                        or_dash(runtime.mode.as_deref()),
                        runtime.status.clone(),
                        or_dash(runtime.handle.as_deref()),
                        time(runtime.created_at),
                    ]);
                }
                table.print_or("nothing runs there");
            }
        }
        ServerCommand::Remove { name, pool, target } => {
            connect(&target).await?.remove_server(&pool, &name).await?;
            if target.output.json {
                print_json(&serde_json::json!({"removed": true, "pool": pool, "server": name}))?;
            } else {
                println!("removed server {name} from pool {pool}");
            }
        }
    }
    Ok(())
}

async fn set_status(
    name: &str,
    pool: &str,
    status: ServerStatus,
    target: &TargetArgs,
) -> Result<(), CliError> {
    let server = connect(target)
        .await?
        .set_server_status(pool, name, status)
        .await?;
    print_server_or_json(&server, target.output.json)
}

fn print_pool(pool: &Pool) {
    print_fields(&[
        ("name", pool.name.clone()),
        ("strategy", pool.strategy.as_str().to_owned()),
        ("created", time(pool.created_at)),
    ]);
}

/// `used/capacity`, or `used` where nothing limits it.
fn against(used: u64, capacity: Option<u32>) -> String {
    match capacity {
        Some(capacity) => format!("{used}/{capacity}"),
        None => used.to_string(),
    }
}

fn print_servers(servers: &[Server]) {
    let mut table = Table::new(&[
        "NAME",
        "POOL",
        "KIND",
        "STATUS",
        "RUNTIMES",
        "CPU (m)",
        "MEMORY (MiB)",
        "DOCKER",
    ]);
    for server in servers {
        table.row(vec![
            server.name.clone(),
            server.pool.clone(),
            server.kind.as_str().to_owned(),
            server.status.as_str().to_owned(),
            against(server.usage.runtimes, server.capacity.runtimes),
            against(server.usage.cpu_millis, server.capacity.cpu_millis),
            against(server.usage.memory_mb, server.capacity.memory_mb),
            or_dash(server.docker.as_ref().map(|docker| docker.url.as_str())),
        ]);
    }
    table.print_or("no servers");
}

fn print_server_or_json(server: &Server, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(server);
    }
    let docker = server.docker.as_ref();
    print_fields(&[
        ("name", server.name.clone()),
        ("pool", server.pool.clone()),
        ("kind", server.kind.as_str().to_owned()),
        ("status", server.status.as_str().to_owned()),
        ("docker", or_dash(docker.map(|docker| docker.url.as_str()))),
        (
            "tls",
            if docker.is_some_and(|docker| docker.tls.is_some()) {
                "client certificate".to_owned()
            } else {
                "-".to_owned()
            },
        ),
        (
            "network",
            or_dash(docker.map(|docker| docker.network.as_str())),
        ),
        (
            "platform url",
            or_dash(docker.and_then(|docker| docker.platform_url.as_deref())),
        ),
        (
            "runtimes",
            against(server.usage.runtimes, server.capacity.runtimes),
        ),
        (
            "cpu (m)",
            against(server.usage.cpu_millis, server.capacity.cpu_millis),
        ),
        (
            "memory (MiB)",
            against(server.usage.memory_mb, server.capacity.memory_mb),
        ),
        ("created", time(server.created_at)),
    ]);
    Ok(())
}

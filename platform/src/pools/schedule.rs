//! Which server of a pool takes a new runtime: pure rules, tested here.
//!
//! A server fits a runtime when it is enabled, answering, and its runtimes plus the new one
//! stay within its capacity in CPU, memory and count (never oversubscribed). Among those that
//! fit, `spread` takes the one left with the most room, `pack` the one left with the least, room
//! being the scarcest of the three dimensions as a share of capacity; ties go to the name.

use rally_sdk::runtime::launch::ResourceLimits;
use rally_sdk::wire::{PlacementStrategy, Server, ServerStatus};
use std::cmp::Ordering;

/// Why no server could take a runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoServer {
    #[error("pool {pool:?} has no enabled server")]
    NoneEnabled { pool: String },
    #[error("no server of pool {pool:?} has room for a runtime of {cpu_millis} CPU millis and {memory_mb} MiB ({why})")]
    Full {
        pool: String,
        cpu_millis: u32,
        memory_mb: u32,
        why: String,
    },
}

/// The server of `servers` (one pool's, with their usage) that takes a runtime of `limits`.
/// `answering` says whether a server's daemon is usable now.
pub fn choose<'a>(
    pool: &str,
    servers: &'a [Server],
    limits: ResourceLimits,
    strategy: PlacementStrategy,
    answering: impl Fn(&Server) -> bool,
) -> Result<&'a Server, NoServer> {
    let enabled: Vec<&Server> = servers
        .iter()
        .filter(|server| server.status == ServerStatus::Enabled)
        .collect();
    if enabled.is_empty() {
        return Err(NoServer::NoneEnabled {
            pool: pool.to_owned(),
        });
    }
    let mut reasons = Vec::new();
    let mut fitting: Vec<(&Server, f64)> = Vec::new();
    for server in enabled {
        if !answering(server) {
            reasons.push(format!("{}: its daemon does not answer", server.name));
            continue;
        }
        match room_after(server, limits) {
            Ok(room) => fitting.push((server, room)),
            Err(short) => reasons.push(format!("{}: {short}", server.name)),
        }
    }
    fitting.sort_by(|a, b| {
        let by_room = match strategy {
            PlacementStrategy::Spread => b.1.partial_cmp(&a.1),
            PlacementStrategy::Pack => a.1.partial_cmp(&b.1),
        };
        by_room
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let chosen = fitting.first();
    chosen
        .map(|(server, _)| *server)
        .ok_or_else(|| NoServer::Full {
            pool: pool.to_owned(),
            cpu_millis: limits.cpu_millis,
            memory_mb: limits.memory_mb,
            why: reasons.join("; "),
        })
}

/// The scarcest share of capacity left once the runtime is placed, or what it lacks.
fn room_after(server: &Server, limits: ResourceLimits) -> Result<f64, String> {
    let dimensions = [
        (
            "runtimes",
            server.usage.runtimes + 1,
            server.capacity.runtimes,
        ),
        (
            "CPU millis",
            server.usage.cpu_millis + u64::from(limits.cpu_millis),
            server.capacity.cpu_millis,
        ),
        (
            "MiB",
            server.usage.memory_mb + u64::from(limits.memory_mb),
            server.capacity.memory_mb,
        ),
    ];
    let mut room = 1.0f64;
    for (what, needed, capacity) in dimensions {
        let Some(capacity) = capacity else { continue };
        let capacity = u64::from(capacity);
        if needed > capacity {
            return Err(format!("{needed} {what} needed of {capacity}"));
        }
        room = room.min((capacity - needed) as f64 / capacity as f64);
    }
    Ok(room)
}

/// Whether a runtime of `limits` could ever fit on one of `servers` when it is empty.
pub fn could_ever_fit(servers: &[Server], limits: ResourceLimits) -> bool {
    servers.iter().any(|server| {
        server.status != ServerStatus::Disabled
            && server
                .capacity
                .cpu_millis
                .is_none_or(|capacity| limits.cpu_millis <= capacity)
            && server
                .capacity
                .memory_mb
                .is_none_or(|capacity| limits.memory_mb <= capacity)
            && server.capacity.runtimes.is_none_or(|capacity| capacity > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rally_sdk::wire::{Capacity, ServerKind, Usage};

    fn server(name: &str, capacity: (u32, u32, u32), usage: (u64, u64, u64)) -> Server {
        Server {
            name: name.to_owned(),
            pool: "p".to_owned(),
            kind: ServerKind::Docker,
            status: ServerStatus::Enabled,
            docker: None,
            capacity: Capacity {
                cpu_millis: Some(capacity.0),
                memory_mb: Some(capacity.1),
                runtimes: Some(capacity.2),
            },
            usage: Usage {
                cpu_millis: usage.0,
                memory_mb: usage.1,
                runtimes: usage.2,
            },
            created_at: 0,
        }
    }

    const SMALL: ResourceLimits = ResourceLimits {
        cpu_millis: 500,
        memory_mb: 64,
    };

    fn pick(servers: &[Server], strategy: PlacementStrategy) -> Result<String, NoServer> {
        choose("p", servers, SMALL, strategy, |_| true).map(|server| server.name.clone())
    }

    #[test]
    fn spread_takes_the_roomiest_and_pack_the_fullest_that_fits() {
        let servers = [
            server("a", (4000, 1024, 10), (3000, 256, 6)),
            server("b", (4000, 1024, 10), (500, 64, 1)),
            server("c", (4000, 1024, 10), (3500, 960, 9)),
        ];
        assert_eq!(pick(&servers, PlacementStrategy::Spread).unwrap(), "b");
        // c is fullest and still fits one more (4000 millis, 1024 MiB, 10 runtimes).
        assert_eq!(pick(&servers, PlacementStrategy::Pack).unwrap(), "c");
    }

    #[test]
    fn no_dimension_is_ever_oversubscribed() {
        let servers = [
            server("cpu", (1000, 1024, 10), (600, 0, 1)),
            server("memory", (4000, 100, 10), (0, 40, 1)),
            server("count", (4000, 1024, 2), (0, 0, 2)),
        ];
        let error = pick(&servers, PlacementStrategy::Spread).unwrap_err();
        let NoServer::Full { why, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(why.contains("cpu: 1100 CPU millis needed of 1000"), "{why}");
        assert!(why.contains("memory: 104 MiB needed of 100"), "{why}");
        assert!(why.contains("count: 3 runtimes needed of 2"), "{why}");
    }

    #[test]
    fn drained_disabled_and_silent_servers_take_nothing() {
        let mut drained = server("drained", (4000, 1024, 10), (0, 0, 0));
        drained.status = ServerStatus::Draining;
        let mut disabled = server("disabled", (4000, 1024, 10), (0, 0, 0));
        disabled.status = ServerStatus::Disabled;
        assert!(matches!(
            pick(&[drained.clone(), disabled], PlacementStrategy::Spread),
            Err(NoServer::NoneEnabled { .. })
        ));
        let silent = server("silent", (4000, 1024, 10), (0, 0, 0));
        let busy = server("busy", (4000, 1024, 10), (3000, 0, 5));
        let servers = [silent, busy, drained];
        let chosen = choose("p", &servers, SMALL, PlacementStrategy::Spread, |server| {
            server.name != "silent"
        })
        .unwrap();
        assert_eq!(chosen.name, "busy");
    }

    #[test]
    fn a_runtime_bigger_than_every_server_is_known_before_it_starts() {
        let servers = [server("a", (1000, 256, 10), (0, 0, 0))];
        assert!(could_ever_fit(&servers, SMALL));
        let big = ResourceLimits {
            cpu_millis: 2000,
            memory_mb: 64,
        };
        assert!(!could_ever_fit(&servers, big));
        assert!(!could_ever_fit(&[], SMALL));
    }
}

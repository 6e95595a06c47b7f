//! The supervisor's decisions, as pure functions of what it counted: how many lobbies and
//! match runtimes to start, when restarts pause, which runtimes are gone or late, how many idle
//! lobbies to close. The supervisor reads the counts and acts; these say what to do.

use crate::deployed::Deployed;
use rally_sdk::manifest::DockerPlacement;
use rally_sdk::runtime::launch::ResourceLimits;
use std::time::Duration;

/// At most this many failed runtimes of a deployment in the window before restarts pause.
pub const MAX_FAILURES_PER_WINDOW: i64 = 5;
pub const RESTART_WINDOW_MILLIS: i64 = 60_000;
/// Most lobbies started for waiting clients in one pass.
pub const MAX_LOBBIES_AT_ONCE: i64 = 4;
/// Most match runtimes started for one deployment and mode in one pass.
pub const MAX_MATCHES_AT_ONCE: i64 = 64;

/// An active or draining deployment with what running its runtimes needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentToRun {
    pub id: String,
    /// Its stage: the node holding the stage's lease runs it.
    pub stage_id: String,
    pub active: bool,
    pub bundle_sha256: String,
    /// The version's image in the registry, when one is linked.
    pub image: Option<String>,
    /// A program runtime's program, relative to the bundle root.
    pub program: Option<String>,
    /// The version's image comes from a developer's push (`runtime.image = "push"`).
    pub image_pushed: bool,
    pub min_lobbies: i64,
    pub max_clients_per_lobby: i64,
    pub idle_timeout: Duration,
    /// Idle match runtimes kept started, per mode.
    pub warm_matches: Vec<(String, i64)>,
    /// What each of its runtimes may use.
    pub limits: ResourceLimits,
    /// Where its new runtimes start.
    pub pool: String,
    /// How a Docker pool places them.
    pub docker_placement: DockerPlacement,
    /// What its runtimes belong to, for the labels of their containers.
    pub labels: Vec<(String, String)>,
}

impl From<&Deployed> for DeploymentToRun {
    fn from(deployed: &Deployed) -> Self {
        let config = &deployed.config;
        Self {
            id: deployed.id.clone(),
            stage_id: deployed.stage_id.clone(),
            active: deployed.is_active(),
            bundle_sha256: deployed.bundle_sha256.clone(),
            image: deployed.image.clone(),
            program: match deployed.manifest.runtime.kind {
                rally_sdk::manifest::RuntimeKind::Program => {
                    deployed.manifest.runtime.program.clone()
                }
                _ => None,
            },
            image_pushed: deployed.manifest.runtime.image == rally_sdk::manifest::ImageSource::Push,
            min_lobbies: i64::from(config.min_lobbies),
            max_clients_per_lobby: i64::from(config.max_clients_per_lobby),
            idle_timeout: Duration::from_secs(u64::from(config.idle_timeout_secs)),
            warm_matches: config
                .warm_matches
                .iter()
                .map(|(mode, count)| (mode.clone(), i64::from(*count)))
                .collect(),
            limits: ResourceLimits {
                cpu_millis: config.runtime_cpu_millis,
                memory_mb: config.runtime_memory_mb,
            },
            pool: deployed.pool.clone(),
            docker_placement: config.docker_placement,
            labels: vec![
                ("rally.tenant".to_owned(), deployed.tenant_id.clone()),
                ("rally.project".to_owned(), deployed.project_id.clone()),
                ("rally.stage".to_owned(), deployed.stage_id.clone()),
                ("rally.version".to_owned(), deployed.version_id.clone()),
                ("rally.deployment".to_owned(), deployed.id.clone()),
            ],
        }
    }
}

/// A deployment's lobbies as one pass counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lobbies {
    /// Starting or running.
    pub live: i64,
    /// Live but not holding their socket (yet, or any longer).
    pub on_the_way: i64,
    /// Clients waiting for a lobby of the deployment.
    pub waiting: i64,
    /// Runtimes of the deployment that failed within the restart window.
    pub recent_failures: i64,
}

/// What to do about a deployment's lobbies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LobbyPlan {
    /// Start this many (maybe none).
    Start(i64),
    /// Its runtimes keep failing: nothing is started until the window has passed.
    Paused,
}

/// Lobbies to start: up to `min_lobbies` for an active deployment, and enough for the waiting
/// clients (a few per pass) unless some are already on the way. A draining deployment starts
/// lobbies only for clients that wait (back from its matches).
pub fn plan_lobbies(deployment: &DeploymentToRun, lobbies: Lobbies) -> LobbyPlan {
    if !deployment.active && lobbies.waiting == 0 {
        return LobbyPlan::Start(0);
    }
    if lobbies.recent_failures >= MAX_FAILURES_PER_WINDOW {
        return LobbyPlan::Paused;
    }
    let for_waiting = if lobbies.waiting > 0 && lobbies.on_the_way == 0 {
        let per_lobby = deployment.max_clients_per_lobby.max(1);
        let needed = (lobbies.waiting + per_lobby - 1) / per_lobby;
        lobbies.live + needed.min(MAX_LOBBIES_AT_ONCE)
    } else {
        0
    };
    let min_lobbies = if deployment.active {
        deployment.min_lobbies
    } else {
        0
    };
    LobbyPlan::Start((min_lobbies.max(for_waiting) - lobbies.live).max(0))
}

/// The modes a deployment keeps match runtimes for, with how many idle ones each keeps warm:
/// its warm modes (when active) and every mode with formed matches waiting.
pub fn match_modes<'a>(
    deployment: &DeploymentToRun,
    modes_in_demand: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, i64)> {
    let mut modes: Vec<(String, i64)> = if deployment.active {
        deployment.warm_matches.clone()
    } else {
        Vec::new()
    };
    for mode in modes_in_demand {
        if !modes.iter().any(|(known, _)| known == mode) {
            modes.push((mode.to_owned(), 0));
        }
    }
    modes
}

/// Match runtimes of one mode as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Matches {
    /// Idle ones to keep warm.
    pub warm: i64,
    /// Formed matches waiting for a runtime.
    pub pending: i64,
    /// Started and not bound to a match.
    pub idle: i64,
    /// Still starting.
    pub starting: i64,
    /// Failed runtimes of the deployment in the restart window: past
    /// [`MAX_FAILURES_PER_WINDOW`] no warm ones are started (formed matches still get theirs:
    /// players wait for them).
    pub recent_failures: i64,
}

/// Match runtimes to start now, and whether more are wanted than one pass starts (then the
/// next pass follows at once).
pub fn plan_matches(matches: Matches) -> (i64, bool) {
    let warm = if matches.recent_failures >= MAX_FAILURES_PER_WINDOW {
        0
    } else {
        matches.warm
    };
    let wanted = warm + matches.pending - matches.idle - matches.starting;
    (
        wanted.clamp(0, MAX_MATCHES_AT_ONCE),
        wanted > MAX_MATCHES_AT_ONCE,
    )
}

/// One of this node's runtimes as a pass found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// Its pool says it runs.
    pub alive: bool,
    /// Its socket is up.
    pub connected: bool,
    pub stopping: bool,
    /// Since when it has been expected to connect (ms): its creation, this node's start, or
    /// its socket's last close, whichever is latest.
    pub waiting_since: i64,
}

/// What a pass does about one runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Its pool no longer runs it: record its end.
    Gone,
    /// Never connected, or lost and not back, within the start timeout: stop it.
    Late,
}

pub fn judge(runtime: Watched, now: i64, start_timeout: Duration) -> Verdict {
    let late = now - runtime.waiting_since > start_timeout.as_millis() as i64;
    if !runtime.alive {
        Verdict::Gone
    } else if late && !runtime.connected && !runtime.stopping {
        Verdict::Late
    } else {
        Verdict::Fine
    }
}

/// How many idle lobbies an active deployment may close: those above `min_lobbies`.
pub fn closable_lobbies(deployment: &DeploymentToRun, live: i64) -> usize {
    (live - deployment.min_lobbies).max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(active: bool) -> DeploymentToRun {
        DeploymentToRun {
            id: "d".to_owned(),
            stage_id: "s1".into(),
            active,
            bundle_sha256: String::new(),
            image: None,
            program: None,
            image_pushed: false,
            min_lobbies: 1,
            max_clients_per_lobby: 10,
            idle_timeout: Duration::from_secs(60),
            warm_matches: vec![("duel".to_owned(), 2)],
            limits: ResourceLimits {
                cpu_millis: 1000,
                memory_mb: 64,
            },
            pool: "local".to_owned(),
            docker_placement: DockerPlacement::Container,
            labels: Vec::new(),
        }
    }

    #[test]
    fn an_active_deployment_keeps_its_minimum_of_lobbies() {
        let active = deployment(true);
        assert_eq!(
            plan_lobbies(&active, Lobbies::default()),
            LobbyPlan::Start(1)
        );
        let one = Lobbies {
            live: 1,
            ..Lobbies::default()
        };
        assert_eq!(plan_lobbies(&active, one), LobbyPlan::Start(0));
    }

    #[test]
    fn waiting_clients_get_enough_lobbies_a_few_at_a_time() {
        let active = deployment(true);
        let crowd = |waiting| Lobbies {
            live: 1,
            waiting,
            ..Lobbies::default()
        };
        // 25 clients at 10 per lobby: three more lobbies.
        assert_eq!(plan_lobbies(&active, crowd(25)), LobbyPlan::Start(3));
        // 1,000 clients: four per pass.
        assert_eq!(
            plan_lobbies(&active, crowd(1000)),
            LobbyPlan::Start(MAX_LOBBIES_AT_ONCE)
        );
        // None while one is already on its way: it may take them all.
        let on_the_way = Lobbies {
            on_the_way: 1,
            ..crowd(25)
        };
        assert_eq!(plan_lobbies(&active, on_the_way), LobbyPlan::Start(0));
    }

    #[test]
    fn a_draining_deployment_starts_lobbies_only_for_clients_back_from_its_matches() {
        let draining = deployment(false);
        assert_eq!(
            plan_lobbies(&draining, Lobbies::default()),
            LobbyPlan::Start(0)
        );
        let back = Lobbies {
            waiting: 2,
            ..Lobbies::default()
        };
        assert_eq!(plan_lobbies(&draining, back), LobbyPlan::Start(1));
    }

    #[test]
    fn restarts_pause_after_five_failures_in_the_window() {
        let active = deployment(true);
        let failing = |recent_failures| Lobbies {
            recent_failures,
            waiting: 3,
            ..Lobbies::default()
        };
        assert_eq!(plan_lobbies(&active, failing(4)), LobbyPlan::Start(1));
        assert_eq!(plan_lobbies(&active, failing(5)), LobbyPlan::Paused);
        // A draining deployment with nobody waiting has nothing to pause.
        let draining = deployment(false);
        let quiet = Lobbies {
            recent_failures: 9,
            ..Lobbies::default()
        };
        assert_eq!(plan_lobbies(&draining, quiet), LobbyPlan::Start(0));
    }

    #[test]
    fn match_runtimes_cover_warm_ones_and_waiting_matches_in_bounded_steps() {
        let plan = |warm, pending, idle, starting| {
            plan_matches(Matches {
                warm,
                pending,
                idle,
                starting,
                recent_failures: 0,
            })
        };
        assert_eq!(plan(2, 0, 0, 0), (2, false));
        assert_eq!(plan(2, 3, 1, 1), (3, false));
        assert_eq!(plan(0, 0, 4, 0), (0, false));
        assert_eq!(plan(0, 100, 0, 0), (MAX_MATCHES_AT_ONCE, true));
    }

    #[test]
    fn warm_matches_pause_with_failures_but_waiting_matches_do_not() {
        let failing = Matches {
            warm: 3,
            pending: 2,
            idle: 0,
            starting: 0,
            recent_failures: MAX_FAILURES_PER_WINDOW,
        };
        assert_eq!(plan_matches(failing), (2, false));
        let waiting_for_nothing = Matches {
            pending: 0,
            ..failing
        };
        assert_eq!(plan_matches(waiting_for_nothing), (0, false));
    }

    #[test]
    fn warm_modes_count_only_while_active() {
        let modes = match_modes(&deployment(true), ["squads", "duel"]);
        assert_eq!(
            modes,
            vec![("duel".to_owned(), 2), ("squads".to_owned(), 0)]
        );
        let modes = match_modes(&deployment(false), ["squads"]);
        assert_eq!(modes, vec![("squads".to_owned(), 0)]);
    }

    #[test]
    fn a_runtime_is_gone_when_its_pool_lost_it_and_late_when_it_never_connects() {
        let timeout = Duration::from_secs(30);
        let watched = Watched {
            alive: true,
            connected: false,
            stopping: false,
            waiting_since: 0,
        };
        assert_eq!(judge(watched, 29_000, timeout), Verdict::Fine);
        assert_eq!(judge(watched, 31_000, timeout), Verdict::Late);
        let connected = Watched {
            connected: true,
            ..watched
        };
        assert_eq!(judge(connected, 31_000, timeout), Verdict::Fine);
        let stopping = Watched {
            stopping: true,
            ..watched
        };
        assert_eq!(judge(stopping, 31_000, timeout), Verdict::Fine);
        let dead = Watched {
            alive: false,
            ..connected
        };
        assert_eq!(judge(dead, 1, timeout), Verdict::Gone);
    }

    #[test]
    fn only_lobbies_above_the_minimum_may_close() {
        let active = deployment(true);
        assert_eq!(closable_lobbies(&active, 0), 0);
        assert_eq!(closable_lobbies(&active, 1), 0);
        assert_eq!(closable_lobbies(&active, 4), 3);
    }
}

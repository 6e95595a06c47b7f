//! The supervisor: once a second (and at once when clients wait for a lobby or matches for a
//! runtime) it keeps every active deployment's runtimes as the deployment wants them, replaces
//! runtimes that die, stops those of draining deployments and watches this node's runtimes.
//! What to do is decided in `scaling`; this file counts and acts.

use super::lifecycle::{
    found_gone, live_on_this_node, record_exit, recover_after_restart, start_runtime, stop_all,
    stop_runtime, Live,
};
use super::scaling::{
    self, judge, plan_lobbies, plan_matches, DeploymentToRun, Lobbies, LobbyPlan, Matches, Verdict,
    Watched,
};
use crate::dispatcher::{DeploymentFacts, MatchDemand};
use crate::pools::Exited;
use crate::state::AppState;
use crate::storage::{now_millis, StorageError};
use rally_sdk::runtime::Qualifier;
use sqlx::Row;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Keeps runtimes as the deployments want them, until shutdown. On shutdown it stops every
/// runtime of this node, with the grace period, so that stopping the platform stops its games.
pub async fn supervise(state: AppState, shutdown: CancellationToken) {
    let Some(exits) = state.runtimes.pool.take_exits() else {
        return;
    };
    let mut exits = free_start_turns(&state, exits);
    if let Err(error) = recover_after_restart(&state).await {
        tracing::error!(%error, "cannot check runtimes left by a previous run");
    }
    tokio::spawn(start_matches(state.clone(), shutdown.clone()));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {
                state.dispatcher.sweep();
                if let Err(error) = reconcile(&state).await {
                    tracing::warn!(error = %format!("{error:#}"), "runtime supervision pass failed");
                }
            }
            // Clients wait for a lobby: start one now rather than at the next tick.
            () = state.dispatcher.lobby_wanted.notified() => {
                if let Err(error) = reconcile(&state).await {
                    tracing::warn!(error = %format!("{error:#}"), "runtime supervision pass failed");
                }
            }
            Some(exited) = exits.recv() => {
                if let Err(error) = record_exit(&state, &exited).await {
                    tracing::warn!(%error, "cannot record a runtime exit");
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    stop_all(&state, &mut exits).await;
}

/// Passes the pool's exits on to the supervisor, giving back each ended runtime's start turn
/// as soon as the pool reports the end: a pass that waits for a turn (`runtime_starts_at_once`)
/// while starts keep failing gets it then, not when the pass is over and reads the exit.
fn free_start_turns(state: &AppState, mut exits: mpsc::Receiver<Exited>) -> mpsc::Receiver<Exited> {
    let (forward, forwarded) = mpsc::channel(crate::pools::EXITS_QUEUE);
    let runtimes = state.runtimes.clone();
    tokio::spawn(async move {
        while let Some(exited) = exits.recv().await {
            runtimes.start_over(&exited.runtime_id);
            if forward.send(exited).await.is_err() {
                return;
            }
        }
    });
    forwarded
}

/// One supervision pass.
async fn reconcile(state: &AppState) -> anyhow::Result<()> {
    let deployments = run_here(state, load_deployments(state).await?).await?;
    watch_runtimes(state).await?;
    let lobby_demand = state.dispatcher.lobby_demand();
    let match_demand = state.dispatcher.match_demand();
    for deployment in &deployments {
        let lobbies = count_lobbies(state, deployment, &lobby_demand).await?;
        match plan_lobbies(deployment, lobbies) {
            LobbyPlan::Paused => {
                tracing::debug!(deployment_id = %deployment.id, recent_failures = lobbies.recent_failures, "runtimes keep failing; waiting before restarting");
            }
            LobbyPlan::Start(count) => {
                for _ in 0..count {
                    if let Err(error) =
                        start_runtime(state, deployment, Qualifier::Lobby, None).await
                    {
                        tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a lobby runtime");
                        break;
                    }
                }
            }
        }
        // (While the match starter is at work, matches are its business.)
        if let Ok(_providing) = state.runtimes.providing.try_lock() {
            if let Err(error) = provide_matches(state, deployment, &match_demand).await {
                tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a match runtime");
            }
        }
        if deployment.active {
            close_idle_lobbies(state, deployment, lobbies.live).await?;
        } else if lobbies.waiting == 0 {
            // (Clients back from a match of this deployment wait for the lobby started above.)
            drain(state, &deployment.id).await?;
        }
    }
    leave_disabled_servers(state).await?;
    for runtime_id in state.dispatcher.take_finished() {
        tracing::info!(runtime_id = %runtime_id, "match over; stopping its runtime");
        stop_runtime(state, &runtime_id, None).await?;
    }
    // Cluster-wide: one node at a time, the holder of the global lease.
    if crate::leases::take(
        &state.database,
        &state.runtimes.node_id,
        crate::leases::GLOBAL,
        crate::leases::ttl(&state.config),
    )
    .await?
    {
        crate::deployed::close_drained(&state.database).await?;
    }
    Ok(())
}

/// The deployments of the stages this node holds the lease of (`docs/nodes.md`), kept for
/// the match starter. A stage taken over from a node that stopped answering has that node's
/// runtimes recorded failed, so that they are replaced here.
async fn run_here(
    state: &AppState,
    deployments: Vec<DeploymentToRun>,
) -> anyhow::Result<Vec<DeploymentToRun>> {
    let stages = deployments
        .iter()
        .map(|deployment| deployment.stage_id.clone())
        .collect();
    let node_id = &state.runtimes.node_id;
    let ttl = crate::leases::ttl(&state.config);
    let mut assignment =
        crate::leases::assign_stages(&state.database, node_id, &stages, ttl).await?;
    if state.config.stage_balance == crate::config::StageBalance::Count {
        if let Some(handover) =
            crate::leases::rebalance(&state.database, node_id, &assignment, ttl).await?
        {
            tracing::info!(stage_id = %handover.stage_id, to_node = %handover.to_node, "balancing: handing a stage over");
            assignment.stages.remove(&handover.stage_id);
            assignment.handing_over.push(handover);
        }
    }
    for (stage_id, previous) in &assignment.taken_from {
        let failed =
            crate::leases::fail_runtimes_left_by(&state.database, stage_id, previous).await?;
        tracing::warn!(%stage_id, node_id = %previous, runtimes = failed, "took over a stage from a node that stopped answering");
    }
    let (here, elsewhere): (Vec<DeploymentToRun>, Vec<DeploymentToRun>) = deployments
        .into_iter()
        .partition(|deployment| assignment.stages.contains(&deployment.stage_id));
    let (handing, elsewhere): (Vec<DeploymentToRun>, Vec<DeploymentToRun>) =
        elsewhere.into_iter().partition(|deployment| {
            assignment
                .handing_over
                .iter()
                .any(|handover| handover.stage_id == deployment.stage_id)
        });
    leave_to_other_nodes(state, &elsewhere).await?;
    for handover in &assignment.handing_over {
        hand_over(state, handover, &handing).await?;
    }
    take_on_clients(state, &here).await?;
    *state.runtimes.deployments.lock() = here.clone();
    Ok(here)
}

/// One step of handing a stage over to another node (an operator's move, or balancing): its
/// runtimes here are asked to stop; once they have all ended, its clients are sent to the
/// new node, what the runtimes wrote (profiles among it) is flushed to the database, and the
/// lease and the clients' records pass to the new node in one transaction.
async fn hand_over(
    state: &AppState,
    handover: &crate::leases::Handover,
    deployments: &[DeploymentToRun],
) -> anyhow::Result<()> {
    let live = sqlx::query(
        "SELECT r.id, r.status FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
         WHERE r.node_id = $1 AND d.stage_id = $2 AND r.status IN ('starting', 'running', 'stopping')",
    )
    .bind(&state.runtimes.node_id)
    .bind(&handover.stage_id)
    .fetch_all(state.database.reader())
    .await?;
    if !live.is_empty() {
        for row in &live {
            if row.get::<String, _>("status") != "stopping" {
                let runtime_id: String = row.get("id");
                tracing::info!(%runtime_id, stage_id = %handover.stage_id, "stopping a runtime: its stage moves to another node");
                stop_runtime(state, &runtime_id, None).await?;
            }
        }
        return Ok(());
    }
    let moved = deployments
        .iter()
        .filter(|deployment| deployment.stage_id == handover.stage_id)
        .map(|deployment| (deployment.id.clone(), handover.to_url.clone()))
        .collect();
    let sent = state.dispatcher.send_away(&moved);
    state.dispatcher.flush().await;
    let ttl = crate::leases::ttl(&state.config);
    if crate::leases::hand_over(&state.database, &state.runtimes.node_id, handover, ttl).await? {
        tracing::info!(stage_id = %handover.stage_id, to_node = %handover.to_node, clients = sent, "handed a stage over");
    }
    Ok(())
}

/// Clients this node serves that its dispatcher does not have yet (`docs/nodes.md`): on a
/// stage it has just taken, those left by nodes that are gone; on every pass, those another
/// node created for it and that have not connected yet. Each gets the grace period to connect.
async fn take_on_clients(state: &AppState, here: &[DeploymentToRun]) -> Result<(), StorageError> {
    if state.database.backend() == crate::storage::Backend::Sqlite {
        return Ok(());
    }
    let node_id = &state.runtimes.node_id;
    let before: std::collections::HashSet<String> = state
        .runtimes
        .deployments
        .lock()
        .iter()
        .map(|deployment| deployment.stage_id.clone())
        .collect();
    let ttl = crate::leases::ttl(&state.config);
    let mut gained = false;
    for stage_id in here
        .iter()
        .map(|deployment| &deployment.stage_id)
        .filter(|stage_id| !before.contains(*stage_id))
    {
        gained = true;
        let orphans =
            crate::leases::take_orphaned_clients(&state.database, node_id, stage_id, ttl).await?;
        if orphans > 0 {
            tracing::warn!(%stage_id, clients = orphans, "took on the clients of a node that is gone");
        }
    }
    if gained {
        state.dispatcher.restore(&state.database, node_id).await?;
    } else {
        let since = now_millis() - CREATED_ELSEWHERE_WINDOW_MS;
        state
            .dispatcher
            .adopt_recent(&state.database, node_id, since)
            .await?;
    }
    Ok(())
}

/// How far back a pass looks for clients another node created for this one. Passes run every
/// second; the margin covers a slow pass and clocks a little apart.
const CREATED_ELSEWHERE_WINDOW_MS: i64 = 10_000;

/// Stops this node's runtimes of deployments whose stage another node runs: one that took
/// the stage over while this node could not renew its lease (a database pause longer than
/// `node_dead_after_secs`) has replaced them already. One query for all of them.
async fn leave_to_other_nodes(
    state: &AppState,
    elsewhere: &[DeploymentToRun],
) -> Result<(), StorageError> {
    if elsewhere.is_empty() {
        return Ok(());
    }
    let ours = sqlx::query(
        "SELECT id, deployment_id FROM runtimes WHERE node_id = $1 \
         AND status IN ('starting', 'running')",
    )
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for row in &ours {
        let deployment_id: String = row.get("deployment_id");
        let Some(deployment) = elsewhere
            .iter()
            .find(|deployment| deployment.id == deployment_id)
        else {
            continue;
        };
        let runtime_id: String = row.get("id");
        tracing::warn!(%runtime_id, stage_id = %deployment.stage_id, "another node runs this stage now; stopping the runtime here");
        stop_runtime(state, &runtime_id, Some("its stage is run by another node")).await?;
    }
    // Clients of those stages still here go to the node that serves them (rarely any: the
    // holders are read only then).
    let deployments = elsewhere
        .iter()
        .map(|deployment| deployment.id.as_str())
        .collect();
    if !state.dispatcher.holds_clients_of(&deployments) {
        return Ok(());
    }
    let holders = crate::leases::held_elsewhere(&state.database, &state.runtimes.node_id).await?;
    let moved: std::collections::HashMap<String, String> = elsewhere
        .iter()
        .filter_map(|deployment| {
            let url = holders.get(&deployment.stage_id)?;
            Some((deployment.id.clone(), url.clone()))
        })
        .collect();
    let sent = state.dispatcher.send_away(&moved);
    if sent > 0 {
        tracing::warn!(
            clients = sent,
            "sent clients to the nodes that serve their stages now"
        );
    }
    Ok(())
}

/// The active and draining deployments, told to the dispatcher. One whose records do not
/// parse is reported and its runtimes are left alone.
async fn load_deployments(state: &AppState) -> anyhow::Result<Vec<DeploymentToRun>> {
    let mut facts = Vec::new();
    let mut deployments = Vec::new();
    for loaded in crate::deployed::running(&state.database).await? {
        match loaded {
            Ok(deployed) => {
                deployments.push(DeploymentToRun::from(&deployed));
                facts.push(DeploymentFacts {
                    active: deployed.is_active(),
                    modes: deployed.manifest.modes,
                    id: deployed.id,
                    stage_id: deployed.stage_id,
                });
            }
            Err(error) => {
                tracing::error!(%error, "a deployment cannot be read; its runtimes are left alone")
            }
        }
    }
    state.dispatcher.set_deployments(facts);
    Ok(deployments)
}

/// This node's runtimes that are late to connect, or whose pool lost them.
async fn watch_runtimes(state: &AppState) -> Result<(), StorageError> {
    let runtimes = &state.runtimes;
    let now = now_millis();
    for Live {
        id,
        status,
        created_at,
        placement,
    } in live_on_this_node(state).await?
    {
        let alive = match &placement {
            Some(placement) => {
                runtimes.pool.tend(&id);
                runtimes.pool.is_alive(&id, placement)
            }
            // Not placed yet: its start is under way, and ends in a placement or a failure.
            None => true,
        };
        let disconnected_at = runtimes
            .disconnected_at
            .lock()
            .get(&id)
            .copied()
            .unwrap_or(0);
        let watched = Watched {
            alive,
            connected: state.dispatcher.runtime_is_connected(&id),
            stopping: status == "stopping",
            waiting_since: created_at.max(runtimes.started_at).max(disconnected_at),
        };
        match judge(watched, now, runtimes.start_timeout) {
            Verdict::Fine => {}
            Verdict::Gone => record_exit(state, &found_gone(id)).await?,
            Verdict::Late => {
                tracing::warn!(runtime_id = %id, "runtime did not connect in time; stopping it");
                stop_runtime(state, &id, Some("did not connect in time")).await?;
            }
        }
    }
    Ok(())
}

/// A deployment's lobbies, on every node, and the clients waiting for one.
async fn count_lobbies(
    state: &AppState,
    deployment: &DeploymentToRun,
    demand: &[crate::dispatcher::LobbyDemand],
) -> Result<Lobbies, StorageError> {
    let lobbies = sqlx::query(
        "SELECT id FROM runtimes WHERE deployment_id = $1 AND qualifier = 'lobby' \
         AND status IN ('starting', 'running')",
    )
    .bind(&deployment.id)
    .fetch_all(state.database.reader())
    .await?;
    // On the way: every lobby not (yet, or any longer) holding its socket. That covers
    // `starting` ones, and `running` ones between their row's update and their socket's
    // registration, which would otherwise look full to waiting clients and get a twin.
    let on_the_way = lobbies
        .iter()
        .filter(|row| {
            !state
                .dispatcher
                .runtime_is_connected(&row.get::<String, _>(0))
        })
        .count() as i64;
    let waiting = demand
        .iter()
        .find(|demand| demand.deployment_id == deployment.id)
        .map_or(0, |demand| demand.waiting as i64);
    let recent_failures = recent_failures(state, &deployment.id).await?;
    Ok(Lobbies {
        live: lobbies.len() as i64,
        on_the_way,
        waiting,
        recent_failures,
    })
}

/// A deployment's runtimes that failed within the restart window.
async fn recent_failures(state: &AppState, deployment_id: &str) -> Result<i64, StorageError> {
    let count = sqlx::query_scalar(
        "SELECT COUNT(*) FROM runtimes WHERE deployment_id = $1 AND status = 'failed' \
         AND stopped_at > $2",
    )
    .bind(deployment_id)
    .bind(now_millis() - scaling::RESTART_WINDOW_MILLIS)
    .fetch_one(state.database.reader())
    .await?;
    Ok(count)
}

/// Formed matches that wait for a runtime get one started at once, without waiting for the
/// supervisor's next pass (which is busy with everything else and may take a while under load).
async fn start_matches(state: AppState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = state.dispatcher.match_wanted.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let providing = async {
            let _providing = state.runtimes.providing.lock().await;
            // Read under the lock: a pass that held it may have started some already.
            let demand = state.dispatcher.match_demand();
            let deployments: Vec<DeploymentToRun> = state
                .runtimes
                .deployments
                .lock()
                .iter()
                .filter(|deployment| {
                    demand
                        .iter()
                        .any(|wanted| wanted.deployment_id == deployment.id && wanted.pending > 0)
                })
                .cloned()
                .collect();
            for deployment in &deployments {
                if let Err(error) = provide_matches(&state, deployment, &demand).await {
                    tracing::error!(deployment_id = %deployment.id, error = %format!("{error:#}"), "cannot start a match runtime");
                }
            }
        };
        tokio::select! {
            () = providing => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Match runtimes: one for each formed match waiting for a runtime, plus `warm_matches` idle
/// ones per mode (active deployments only), counting those already starting or idle.
async fn provide_matches(
    state: &AppState,
    deployment: &DeploymentToRun,
    demand: &[MatchDemand],
) -> anyhow::Result<()> {
    let of_deployment = || demand.iter().filter(|d| d.deployment_id == deployment.id);
    let modes = scaling::match_modes(deployment, of_deployment().map(|d| d.mode.as_str()));
    // Only warm matches pause for failures: no query when none are kept.
    let recent_failures = if modes.iter().any(|(_, warm)| *warm > 0) {
        recent_failures(state, &deployment.id).await?
    } else {
        0
    };
    for (mode, warm) in modes {
        let (pending, idle) = of_deployment()
            .find(|d| d.mode == mode)
            .map_or((0, 0), |d| (d.pending as i64, d.idle as i64));
        // On their way: starting, or running without a socket here yet (adopted after a
        // restart and reconnecting, or reconnecting after a drop). Counting those as missing
        // would start a second runtime for each.
        let records: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM runtimes WHERE deployment_id = $1 AND qualifier = 'match' \
             AND mode = $2 AND status IN ('starting', 'running')",
        )
        .bind(&deployment.id)
        .bind(&mode)
        .fetch_all(state.database.reader())
        .await?;
        let starting = records
            .iter()
            .filter(|(id, status)| {
                status == "starting" || !state.dispatcher.runtime_is_connected(id)
            })
            .count() as i64;
        let (missing, more_later) = plan_matches(Matches {
            warm,
            pending,
            idle,
            starting,
            recent_failures,
        });
        if more_later {
            // More next pass, straight away rather than at the next tick.
            state.dispatcher.match_wanted.notify_one();
        }
        // Started side by side, each in a task of its own: players wait for these.
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let state = state.clone();
            let deployment = deployment.clone();
            let mode = mode.clone();
            starts.spawn(async move {
                start_runtime(&state, &deployment, Qualifier::Match, Some(&mode)).await
            });
        }
        let mut failure = None;
        let mut no_room = 0;
        while let Some(started) = starts.join_next().await {
            if let Err(error) = started
                .map_err(anyhow::Error::from)
                .and_then(|started| started)
            {
                let no_capacity = error
                    .downcast_ref::<crate::pools::StartError>()
                    .is_some_and(crate::pools::StartError::is_no_capacity);
                if no_capacity {
                    no_room += 1;
                }
                failure.get_or_insert(error);
            }
        }
        if no_room > 0 {
            // Their players hear it now rather than at the matchmaking timeout.
            state
                .dispatcher
                .fail_waiting_matches(&deployment.id, &mode, no_room, "no_capacity");
        }
        if let Some(error) = failure {
            return Err(error);
        }
    }
    Ok(())
}

/// Lobbies started for a crowd that has gone: those above `min_lobbies` that have been empty
/// for the deployment's idle timeout are stopped, emptiest-longest first.
async fn close_idle_lobbies(
    state: &AppState,
    deployment: &DeploymentToRun,
    live: i64,
) -> Result<(), StorageError> {
    let closable = scaling::closable_lobbies(deployment, live);
    if closable == 0 {
        return Ok(());
    }
    for runtime_id in state
        .dispatcher
        .idle_lobbies(&deployment.id, deployment.idle_timeout)
        .into_iter()
        .take(closable)
    {
        if state.dispatcher.retire_if_empty(&runtime_id) {
            tracing::info!(runtime_id = %runtime_id, "idle lobby above min_lobbies; stopping it");
            stop_runtime(state, &runtime_id, None).await?;
        }
    }
    Ok(())
}

/// Runtimes of this node on a server an operator disabled are stopped (their clients go to a
/// lobby elsewhere; the deployments' wants start replacements on the servers left).
async fn leave_disabled_servers(state: &AppState) -> Result<(), StorageError> {
    let on_disabled: Vec<String> = sqlx::query_scalar(
        "SELECT r.id FROM runtimes r JOIN servers s ON s.name = r.server \
         WHERE r.node_id = $1 AND r.pool_kind = 'docker' AND s.status = 'disabled' \
         AND r.status IN ('starting', 'running')",
    )
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for runtime_id in on_disabled {
        tracing::info!(runtime_id = %runtime_id, "its server is disabled; stopping it");
        stop_runtime(state, &runtime_id, Some("its server was disabled")).await?;
    }
    Ok(())
}

/// Asks the empty runtimes of a draining deployment to stop. Lobbies with clients keep them
/// until they leave (new clients go to the new deployment); matches run to their end.
async fn drain(state: &AppState, deployment_id: &str) -> Result<(), StorageError> {
    let rows = sqlx::query(
        "SELECT id FROM runtimes WHERE deployment_id = $1 AND node_id = $2 \
         AND status IN ('starting', 'running')",
    )
    .bind(deployment_id)
    .bind(&state.runtimes.node_id)
    .fetch_all(state.database.reader())
    .await?;
    for row in rows {
        let id: String = row.get(0);
        if state.dispatcher.retire_if_empty(&id) {
            stop_runtime(state, &id, None).await?;
        }
    }
    Ok(())
}

//! Matchmaking and match runtimes, the dispatcher's side: lobby logic asks for a match, the
//! deployment's [`Matchmaker`] groups the requests, and a formed match is bound to a match
//! runtime (an idle warm one, or one started for it) to which its members move over their
//! sockets. A match that ends sends its clients back to a lobby.

use super::{error, own_client, Dispatcher, Outgoing, State};
use crate::matchmaker::{MatchId, Matchmaker, Placement, Refusal};
use rally_sdk::player::PlayerEvent;
use rally_sdk::runtime::{PlatformMessage, Qualifier};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// A formed match waiting for its runtime.
#[derive(Debug)]
pub(super) struct PendingMatch {
    match_id: MatchId,
    mode: String,
    members: Vec<(Arc<str>, String)>,
    formed_at: Instant,
}

/// A running deployment as the supervisor sees it.
#[derive(Debug, Clone)]
pub struct DeploymentFacts {
    pub id: String,
    pub stage_id: String,
    pub active: bool,
    pub modes: Vec<crate::matchmaker::ModeRules>,
}

/// Match runtimes a deployment needs for one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchDemand {
    pub deployment_id: String,
    pub mode: String,
    /// Formed matches waiting for a runtime.
    pub pending: usize,
    /// Connected match runtimes with no match yet.
    pub idle: usize,
}

impl Dispatcher {
    /// `request_matchmaking` from the lobby `runtime_id`; a refusal is the error for the
    /// runtime.
    pub(super) fn request_matchmaking(
        &self,
        state: &mut State,
        runtime_id: &Arc<str>,
        client_id: &str,
        mode: &str,
    ) -> Result<(), Box<PlatformMessage>> {
        let in_match = state.clients.get(client_id).is_some_and(|client| {
            client
                .runtime
                .as_ref()
                .and_then(|runtime| state.runtimes.get(runtime))
                .is_some_and(|slot| slot.description.qualifier == Qualifier::Match)
        });
        if in_match {
            return Err(Box::new(error(
                "in_match",
                &format!("client {client_id} is in a match already"),
            )));
        }
        let Some(client) = own_client(state, runtime_id, client_id) else {
            return Err(Box::new(super::unknown_client(client_id)));
        };
        let home = client.deployment_id.clone();
        let key: Arc<str> = Arc::from(client_id);
        let slot = state.runtimes.get(runtime_id).expect("the caller's slot");
        if slot.description.qualifier != Qualifier::Lobby {
            return Err(Box::new(error(
                "not_a_lobby",
                "request_matchmaking is for lobby runtimes",
            )));
        }
        // New matches form on the stage's current deployment: after a new version is deployed,
        // players still in an old lobby play their next match on the new version.
        let deployment_id = state
            .deployments
            .get(&home)
            .and_then(|(stage, _)| state.current.get(stage))
            .cloned()
            .unwrap_or(home);
        let modes = state
            .deployments
            .get(&deployment_id)
            .map(|(_, modes)| modes.clone())
            .unwrap_or_else(|| slot.description.modes.clone());
        let matchmaker = state
            .matchmakers
            .entry(deployment_id.clone())
            .or_insert_with(|| Matchmaker::new(modes.to_vec()));
        match matchmaker.request(key.clone(), mode) {
            Err(Refusal::UnknownMode) => Err(Box::new(error(
                "unknown_mode",
                &format!("the version has no mode {mode:?}"),
            ))),
            Err(Refusal::AlreadyQueued) => Err(Box::new(error(
                "already_queued",
                &format!("client {client_id} is waiting for a match already"),
            ))),
            Ok(Placement::Queued { .. }) => Ok(()),
            Ok(Placement::Formed { match_id, members }) => {
                let pending = PendingMatch {
                    match_id,
                    mode: mode.to_owned(),
                    members,
                    formed_at: Instant::now(),
                };
                match self.idle_match_runtime(state, &deployment_id, mode) {
                    Some(runtime_id) => self.bind(state, &runtime_id, pending),
                    None => {
                        state
                            .pending_matches
                            .entry(deployment_id)
                            .or_default()
                            .push_back(pending);
                        self.match_wanted.notify_one();
                    }
                }
                Ok(())
            }
            Ok(Placement::Backfill { match_id, group }) => {
                let running = state
                    .runtimes
                    .iter()
                    .find(|(_, slot)| {
                        slot.bound == Some(match_id)
                            && *slot.description.deployment_id == *deployment_id
                    })
                    .map(|(id, _)| id.clone());
                match running {
                    Some(match_runtime) => self.move_to_match(state, &key, &match_runtime, group),
                    None => {
                        // Formed but still waiting for its runtime: it joins with the others.
                        if let Some(pending) = state
                            .pending_matches
                            .get_mut(&deployment_id)
                            .and_then(|queue| queue.iter_mut().find(|p| p.match_id == match_id))
                        {
                            pending.members.push((key, group));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// A connected match runtime of the mode with no match yet.
    fn idle_match_runtime(
        &self,
        state: &State,
        deployment_id: &str,
        mode: &str,
    ) -> Option<Arc<str>> {
        state
            .runtimes
            .iter()
            .find(|(_, slot)| {
                slot.description.qualifier == Qualifier::Match
                    && slot.description.deployment_id == deployment_id
                    && slot.description.mode.as_deref() == Some(mode)
                    && slot.bound.is_none()
                    && slot.accepting
                    && slot.connection.is_some()
            })
            .map(|(id, _)| id.clone())
    }

    /// A match runtime connected: it takes the oldest formed match of its mode waiting for one.
    pub(super) fn bind_pending(&self, state: &mut State, runtime_id: &Arc<str>) {
        let Some(slot) = state.runtimes.get(runtime_id) else {
            return;
        };
        if slot.description.qualifier != Qualifier::Match || slot.bound.is_some() {
            return;
        }
        let deployment_id: Arc<str> = Arc::from(slot.description.deployment_id.as_str());
        let mode = slot.description.mode.clone();
        let Some(queue) = state.pending_matches.get_mut(&deployment_id) else {
            return;
        };
        let Some(position) = queue
            .iter()
            .position(|pending| Some(&pending.mode) == mode.as_ref())
        else {
            return;
        };
        let pending = queue.remove(position).expect("found above");
        self.bind(state, runtime_id, pending);
    }

    /// Gives a formed match its runtime and moves the members there.
    fn bind(&self, state: &mut State, runtime_id: &Arc<str>, pending: PendingMatch) {
        if let Some(slot) = state.runtimes.get_mut(runtime_id) {
            slot.bound = Some(pending.match_id);
        }
        tracing::debug!(runtime_id = %runtime_id, match_id = pending.match_id, members = pending.members.len(), "match bound to its runtime");
        for (client_id, group) in pending.members {
            self.move_to_match(state, &client_id, runtime_id, group);
        }
    }

    /// Moves a client from its lobby to a match: the lobby hears `client_removed` (matched),
    /// the match `client_assigned` with the group, the client `runtime_assigned`.
    fn move_to_match(
        &self,
        state: &mut State,
        client_id: &Arc<str>,
        runtime_id: &Arc<str>,
        group: String,
    ) {
        let Some(client) = state.clients.get_mut(client_id) else {
            return;
        };
        if let Some(lobby) = client
            .runtime
            .take()
            .and_then(|lobby_id| state.runtimes.get_mut(&lobby_id))
        {
            lobby.remove_client(client_id);
            let _ = lobby.outbox.try_send(PlatformMessage::ClientRemoved {
                client_id: client_id.to_string(),
                reason: "matched".to_owned(),
            });
        }
        if client.waiting {
            client.waiting = false;
            let deployment_id = client.deployment_id.clone();
            if let Some(queue) = state.waiting.get_mut(&deployment_id) {
                queue.retain(|waiting| waiting != client_id);
            }
        }
        // A match of a newer deployment takes the client along: afterwards it returns to a
        // lobby of that deployment.
        if let Some(slot) = state.runtimes.get(runtime_id) {
            if *slot.description.deployment_id != *client.deployment_id {
                // (Written with the assignment below.)
                client.deployment_id = Arc::from(slot.description.deployment_id.as_str());
            }
        }
        self.assign(state, client_id, runtime_id, Some(group));
    }

    /// A client no longer wants or plays a match: its request or place is withdrawn.
    pub(super) fn leave_matchmaking(&self, state: &mut State, client_id: &Arc<str>) {
        // The request may sit with the stage's current deployment rather than the client's.
        for matchmaker in state.matchmakers.values_mut() {
            matchmaker.leave(client_id);
        }
        for queue in state.pending_matches.values_mut() {
            for pending in queue.iter_mut() {
                pending.members.retain(|(member, _)| member != client_id);
            }
        }
    }

    /// The supervisor's view of the running deployments, each pass: which is current on each
    /// stage, and the modes of each.
    pub fn set_deployments(&self, facts: Vec<DeploymentFacts>) {
        let mut state = self.state();
        state.deployments.clear();
        state.current.clear();
        for fact in facts {
            let id: Arc<str> = Arc::from(fact.id.as_str());
            let stage: Arc<str> = Arc::from(fact.stage_id.as_str());
            if fact.active {
                state.current.insert(stage.clone(), id.clone());
            }
            state.deployments.insert(id, (stage, Arc::new(fact.modes)));
        }
    }

    /// A deployment just made active on its stage, before the supervisor's next pass: new
    /// matches of the stage's players form on it at once.
    pub fn deployed(&self, fact: DeploymentFacts) {
        let mut state = self.state();
        let id: Arc<str> = Arc::from(fact.id.as_str());
        let stage: Arc<str> = Arc::from(fact.stage_id.as_str());
        state.current.insert(stage.clone(), id.clone());
        state.deployments.insert(id, (stage, Arc::new(fact.modes)));
    }

    /// `stop_match`: the match is over; its clients go back to a lobby and the runtime is
    /// stopped by the supervisor.
    pub(super) fn stop_match(&self, state: &mut State, runtime_id: &Arc<str>, reason: &str) {
        let Some(slot) = state.runtimes.get_mut(runtime_id) else {
            return;
        };
        slot.accepting = false;
        slot.finished = true;
        let members: Vec<Arc<str>> = slot.clients.iter().cloned().collect();
        let deployment_id: Arc<str> = Arc::from(slot.description.deployment_id.as_str());
        if let Some(match_id) = slot.bound {
            if let Some(matchmaker) = state.matchmakers.get_mut(&deployment_id) {
                matchmaker.end(match_id);
            }
        }
        let why = format!("the match ended: {reason}");
        self.back_to_lobby(state, members, "match_ended", &why);
        self.lobby_wanted.notify_one();
    }

    /// Requests that waited longer than the matchmaking timeout, and formed matches that found
    /// no runtime in that time, fail: the client hears `matchmaking_failed` and stays in its
    /// lobby, which hears an `error`.
    pub(super) fn expire_matchmaking(&self, state: &mut State) {
        let Some(deadline) = Instant::now().checked_sub(self.limits.matchmaking_timeout) else {
            return;
        };
        let mut failed: Vec<(Arc<str>, String, &'static str)> = Vec::new();
        for matchmaker in state.matchmakers.values_mut() {
            for (client_id, mode) in matchmaker.expire(deadline) {
                failed.push((client_id, mode, "timeout"));
            }
        }
        for (deployment_id, queue) in state.pending_matches.iter_mut() {
            let (stale, fresh): (Vec<PendingMatch>, Vec<PendingMatch>) = queue
                .drain(..)
                .partition(|pending| pending.formed_at < deadline);
            queue.extend(fresh);
            for pending in stale {
                if let Some(matchmaker) = state.matchmakers.get_mut(deployment_id) {
                    matchmaker.end(pending.match_id);
                }
                for (client_id, _) in pending.members {
                    failed.push((client_id, pending.mode.clone(), "no_runtime"));
                }
            }
        }
        tell_failed(state, failed);
    }

    /// Up to `count` formed matches of `mode` waiting for a runtime of `deployment_id` fail
    /// now with `reason` (`no_capacity`: the pool has no room for their runtimes), the newest
    /// first: their players hear `matchmaking_failed` rather than wait for the timeout.
    pub fn fail_waiting_matches(
        &self,
        deployment_id: &str,
        mode: &str,
        count: usize,
        reason: &'static str,
    ) {
        let mut state = self.state();
        let state = &mut *state;
        let mut failed: Vec<(Arc<str>, String, &'static str)> = Vec::new();
        if let Some(queue) = state.pending_matches.get_mut(deployment_id) {
            let mut left = count;
            let mut kept = VecDeque::with_capacity(queue.len());
            while let Some(pending) = queue.pop_back() {
                if left > 0 && pending.mode == mode {
                    left -= 1;
                    if let Some(matchmaker) = state.matchmakers.get_mut(deployment_id) {
                        matchmaker.end(pending.match_id);
                    }
                    for (client_id, _) in pending.members {
                        failed.push((client_id, pending.mode.clone(), reason));
                    }
                } else {
                    kept.push_front(pending);
                }
            }
            *queue = kept;
        }
        tell_failed(state, failed);
    }

    /// Per deployment and mode, formed matches waiting for a runtime and idle match runtimes.
    pub fn match_demand(&self) -> Vec<MatchDemand> {
        let state = self.state();
        let mut demand: HashMap<(String, String), MatchDemand> = HashMap::new();
        for (deployment_id, queue) in &state.pending_matches {
            for pending in queue {
                demand
                    .entry((deployment_id.to_string(), pending.mode.clone()))
                    .or_insert_with(|| MatchDemand {
                        deployment_id: deployment_id.to_string(),
                        mode: pending.mode.clone(),
                        pending: 0,
                        idle: 0,
                    })
                    .pending += 1;
            }
        }
        for slot in state.runtimes.values() {
            let Some(mode) = &slot.description.mode else {
                continue;
            };
            if slot.description.qualifier == Qualifier::Match
                && slot.bound.is_none()
                && slot.accepting
                && slot.connection.is_some()
            {
                demand
                    .entry((slot.description.deployment_id.clone(), mode.clone()))
                    .or_insert_with(|| MatchDemand {
                        deployment_id: slot.description.deployment_id.clone(),
                        mode: mode.clone(),
                        pending: 0,
                        idle: 0,
                    })
                    .idle += 1;
            }
        }
        demand.into_values().collect()
    }

    /// Match runtimes whose logic ended their match: the supervisor stops them.
    pub fn take_finished(&self) -> Vec<String> {
        let mut state = self.state();
        let mut finished = Vec::new();
        for (runtime_id, slot) in state.runtimes.iter_mut() {
            if slot.finished {
                slot.finished = false;
                finished.push(runtime_id.to_string());
            }
        }
        finished
    }
}

/// Each client's request failed: it hears `matchmaking_failed` and stays in its lobby, which
/// hears an `error`.
fn tell_failed(state: &mut State, failed: Vec<(Arc<str>, String, &'static str)>) {
    for (client_id, mode, reason) in failed {
        let Some(client) = state.clients.get_mut(&client_id) else {
            continue;
        };
        let _ = client
            .outbox
            .try_send(Outgoing::event(&PlayerEvent::MatchmakingFailed {
                mode: mode.clone(),
                reason: reason.to_owned(),
            }));
        if let Some(lobby) = client
            .runtime
            .as_ref()
            .and_then(|id| state.runtimes.get(id))
        {
            let _ = lobby.outbox.try_send(error(
                "matchmaking_failed",
                &format!("no {mode} match for client {client_id} ({reason})"),
            ));
        }
    }
}

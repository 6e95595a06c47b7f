//! Lobbies: a client without a runtime goes to the least loaded lobby of its deployment with
//! room, else waits in line (and the supervisor is woken); lines move as room is made; idle and
//! empty lobbies are found for the supervisor to close.

use super::journal::Change;
use super::runtimes::RuntimeSlot;
use super::{Dispatcher, LobbyDemand, Outgoing, State};
use rally_sdk::player::PlayerEvent;
use rally_sdk::runtime::{PlatformMessage, Qualifier};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Dispatcher {
    /// Puts a client in the least-loaded lobby of its deployment with room, or in the queue
    /// for the next lobby.
    pub(super) fn find_lobby(&self, state: &mut State, client_id: &Arc<str>) {
        let Some(client) = state.clients.get(client_id) else {
            return;
        };
        let deployment_id = client.deployment_id.clone();
        let lobby = state
            .runtimes
            .iter()
            .filter(|(_, slot)| {
                slot.has_room() && *slot.description.deployment_id == *deployment_id
            })
            .min_by_key(|(_, slot)| slot.clients.len())
            .map(|(id, _)| id.clone());
        match lobby {
            Some(runtime_id) => self.assign(state, client_id, &runtime_id, None),
            None => {
                if let Some(client) = state.clients.get_mut(client_id) {
                    client.waiting = true;
                }
                state
                    .waiting
                    .entry(deployment_id)
                    .or_default()
                    .push_back(client_id.clone());
                self.lobby_wanted.notify_one();
            }
        }
    }

    /// Assigns a client to a runtime: the runtime hears `client_assigned`, the client
    /// `runtime_assigned`.
    pub(super) fn assign(
        &self,
        state: &mut State,
        client_id: &Arc<str>,
        runtime_id: &Arc<str>,
        group: Option<String>,
    ) {
        let (Some(client), Some(slot)) = (
            state.clients.get_mut(client_id),
            state.runtimes.get_mut(runtime_id),
        ) else {
            return;
        };
        slot.clients.insert(client_id.clone());
        client.runtime = Some(runtime_id.clone());
        client.group = group.clone();
        client.waiting = false;
        let _ = slot.outbox.try_send(PlatformMessage::ClientAssigned {
            client_id: client_id.to_string(),
            user_id: client.user_id.clone(),
            profile: client.profile.clone(),
            group: group.clone(),
        });
        let event = PlayerEvent::RuntimeAssigned(slot.assignment(runtime_id, group.clone()));
        let _ = client.outbox.try_send(Outgoing::event(&event));
        self.record(Change::Assigned {
            client_id: client_id.to_string(),
            runtime_id: Some(runtime_id.to_string()),
            group,
            deployment_id: client.deployment_id.to_string(),
        });
    }

    /// Takes clients off their runtime and sends them to a lobby, telling each why.
    pub(super) fn back_to_lobby(
        &self,
        state: &mut State,
        client_ids: Vec<Arc<str>>,
        code: &str,
        why: &str,
    ) {
        for client_id in &client_ids {
            self.leave_matchmaking(state, client_id);
            let Some(client) = state.clients.get_mut(client_id) else {
                continue;
            };
            if let Some(slot) = client
                .runtime
                .take()
                .and_then(|runtime_id| state.runtimes.get_mut(&runtime_id))
            {
                slot.remove_client(client_id);
            }
            client.group = None;
            let _ = client.outbox.try_send(Outgoing::event(&PlayerEvent::Error {
                code: code.to_owned(),
                message: why.to_owned(),
            }));
            self.record(Change::Assigned {
                client_id: client_id.to_string(),
                runtime_id: None,
                group: None,
                deployment_id: client.deployment_id.to_string(),
            });
            self.find_lobby(state, client_id);
        }
    }

    /// Lets waiting clients of the lobby's deployment in, while it has room.
    pub(super) fn admit_waiting(&self, state: &mut State, runtime_id: &Arc<str>) {
        let Some(slot) = state.runtimes.get(runtime_id) else {
            return;
        };
        let deployment_id: Arc<str> = Arc::from(slot.description.deployment_id.as_str());
        while state
            .runtimes
            .get(runtime_id)
            .is_some_and(RuntimeSlot::has_room)
        {
            let Some(client_id) = state
                .waiting
                .get_mut(&deployment_id)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            if state.clients.contains_key(&client_id) {
                self.assign(state, &client_id, runtime_id, None);
            }
        }
    }

    /// Stops sending new clients to a lobby, if it has none: true when it may be stopped.
    pub fn retire_if_empty(&self, runtime_id: &str) -> bool {
        let mut state = self.state();
        match state.runtimes.get_mut(runtime_id) {
            Some(slot) if slot.clients.is_empty() => {
                slot.accepting = false;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Connected lobbies of a deployment that have had no clients for `idle`, oldest-empty
    /// first.
    pub fn idle_lobbies(&self, deployment_id: &str, idle: Duration) -> Vec<String> {
        let state = self.state();
        let mut idle_lobbies: Vec<(&Arc<str>, Instant)> = state
            .runtimes
            .iter()
            .filter(|(_, slot)| {
                slot.description.deployment_id == deployment_id
                    && slot.description.qualifier == Qualifier::Lobby
                    && slot.accepting
                    && slot.connection.is_some()
                    && slot.clients.is_empty()
                    && slot.empty_since.elapsed() >= idle
            })
            .map(|(id, slot)| (id, slot.empty_since))
            .collect();
        idle_lobbies.sort_by_key(|(_, since)| *since);
        idle_lobbies
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Deployments with clients waiting for a lobby.
    pub fn lobby_demand(&self) -> Vec<LobbyDemand> {
        let state = self.state();
        state
            .waiting
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(deployment_id, queue)| LobbyDemand {
                deployment_id: deployment_id.to_string(),
                waiting: queue.len(),
                max_clients: state
                    .runtimes
                    .values()
                    .find(|slot| *slot.description.deployment_id == **deployment_id)
                    .map(|slot| slot.description.max_clients),
            })
            .collect()
    }
}

//! Clients: added on creation, taken and let go by their connections, their messages sent on
//! to their runtime (within their rate), deleted, and swept past the reconnect grace period.

use super::journal::Change;
use super::limits::Bucket;
use super::{
    push_error, AttachError, Attached, Client, ClientLine, Departed, Dispatcher, Ending, Hold,
    Inbox, NewClient, Outgoing, State, MOVED,
};
use rally_sdk::player::{ClientInfo, PlayerEvent};
use rally_sdk::runtime::{Payload, PlatformMessage};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

impl Dispatcher {
    /// Registers a client that is not connected yet (it has the grace period to connect).
    pub fn add_client(&self, client: NewClient) {
        self.add_client_if_new(client);
    }

    /// The same, unless the client is here already; true when it was added.
    pub(super) fn add_client_if_new(&self, client: NewClient) -> bool {
        let (outbox, receiver) = mpsc::channel(self.limits.outbox_events);
        let id: Arc<str> = Arc::from(client.client_id.as_str());
        let mut state = self.state();
        if state.clients.contains_key(&id) {
            return false;
        }
        let runtime = client.runtime_id.map(Arc::<str>::from);
        if let Some(slot) = runtime.as_ref().and_then(|id| state.runtimes.get_mut(id)) {
            slot.clients.insert(id.clone());
        }
        state.clients.insert(
            id,
            Client {
                user_id: client.user_id,
                player_id: client.player_id,
                deployment_id: Arc::from(client.deployment_id.as_str()),
                runtime,
                group: client.group,
                profile: client.profile,
                outbox,
                line: Arc::new(ClientLine {
                    inbox: tokio::sync::Mutex::new(Inbox {
                        receiver,
                        next_seq: 1,
                        unacked: VecDeque::new(),
                    }),
                    ending: OnceLock::new(),
                    cut: CancellationToken::new(),
                }),
                connection: None,
                disconnected_at: Some(Instant::now()),
                waiting: false,
                seen: client.restored,
                bucket: Bucket::full(self.limits.messages_per_sec),
            },
        );
        true
    }

    /// The owner of a live client.
    pub fn client_owner(&self, client_id: &str) -> Option<String> {
        self.state()
            .clients
            .get(client_id)
            .map(|client| client.user_id.clone())
    }

    /// The line of a client of `user_id` deleted within the grace period, whose last events a
    /// long-poll may still need.
    pub fn departed_line(&self, client_id: &str, user_id: &str) -> Option<Arc<ClientLine>> {
        self.state()
            .departed
            .get(client_id)
            .filter(|departed| departed.user_id == user_id)
            .map(|departed| departed.line.clone())
    }

    /// A client of `user_id`, live or deleted within the grace period, as the API shows it.
    pub fn client_info(&self, client_id: &str, user_id: &str) -> Option<ClientInfo> {
        let state = self.state();
        if let Some(departed) = state
            .departed
            .get(client_id)
            .filter(|departed| departed.user_id == user_id)
        {
            return Some(ClientInfo {
                client_id: client_id.to_owned(),
                user_id: user_id.to_owned(),
                deployment_id: departed.deployment_id.to_string(),
                status: "deleted".to_owned(),
                connected: false,
                runtime: None,
                reason: departed.line.ending().map(|ending| ending.reason.clone()),
            });
        }
        let client = state
            .clients
            .get(client_id)
            .filter(|client| client.user_id == user_id)?;
        let runtime = client.runtime.as_ref().and_then(|runtime_id| {
            state
                .runtimes
                .get(runtime_id)
                .map(|slot| slot.assignment(runtime_id, client.group.clone()))
        });
        Some(ClientInfo {
            client_id: client_id.to_owned(),
            user_id: client.user_id.clone(),
            deployment_id: client.deployment_id.to_string(),
            status: "active".to_owned(),
            connected: client.connection.is_some(),
            runtime,
            reason: None,
        })
    }

    /// Live clients, and those of them connected now (sockets and long-polls).
    pub fn client_counts(&self) -> (usize, usize) {
        let state = self.state();
        let connected = state
            .clients
            .values()
            .filter(|client| client.connection.is_some())
            .count();
        (state.clients.len(), connected)
    }

    /// A connection takes a client of `user_id` over; an older connection is told to go.
    /// A client without a runtime is sent to a lobby.
    pub fn attach(&self, client_id: &str, user_id: &str) -> Result<Attached, AttachError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let key = state
            .clients
            .get_key_value(client_id)
            .filter(|(_, client)| client.user_id == user_id)
            .map(|(key, _)| key.clone())
            .ok_or(AttachError::Unknown)?;
        let client = state.clients.get_mut(&key).ok_or(AttachError::Unknown)?;
        let hold = Hold::new();
        let resumed = client.seen;
        client.seen = true;
        if let Some(previous) = client.connection.replace(hold.clone()) {
            previous.replaced.cancel();
        }
        client.disconnected_at = None;
        let runtime = client.runtime.as_ref().and_then(|runtime_id| {
            state
                .runtimes
                .get(runtime_id)
                .map(|slot| slot.assignment(runtime_id, client.group.clone()))
        });
        let greeting = PlayerEvent::Greeted {
            client_id: client_id.to_owned(),
            user_id: client.user_id.clone(),
            deployment_id: client.deployment_id.to_string(),
            resumed,
            runtime,
            heartbeat_secs: self.limits.heartbeat.as_secs() as u32,
            limits: self.limits.announced(),
        };
        let line = client.line.clone();
        if client.runtime.is_none() && !client.waiting {
            self.find_lobby(state, &key);
        }
        Ok(Attached {
            line,
            hold,
            greeting,
        })
    }

    /// A connection let go of a client; unless a newer one holds it, the grace period starts.
    pub fn detach(&self, client_id: &str, hold: &Hold) {
        let mut state = self.state();
        if let Some(client) = state.clients.get_mut(client_id) {
            if client
                .connection
                .as_ref()
                .is_some_and(|current| current.is(hold))
            {
                client.connection = None;
                client.disconnected_at = Some(Instant::now());
            }
        }
    }

    /// A message from a player for its runtime. Refusals go to the client as `error` events.
    pub fn client_message(&self, client_id: &str, payload: Payload) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(client) = state.clients.get_mut(client_id) else {
            return;
        };
        let now = Instant::now();
        if !client.bucket.take(self.limits.messages_per_sec, now) {
            if client.bucket.should_report(now) {
                let message = format!(
                    "more than {} messages per second; messages are dropped until the rate falls",
                    self.limits.messages_per_sec
                );
                push_error(client, "rate_limited", &message);
            }
            return;
        }
        let Some(slot) = client
            .runtime
            .as_ref()
            .and_then(|runtime_id| state.runtimes.get(runtime_id))
        else {
            push_error(
                client,
                "not_assigned",
                "the client has no runtime yet; wait for runtime_assigned",
            );
            return;
        };
        let message = PlatformMessage::MessageReceived {
            client_id: client_id.to_owned(),
            payload,
        };
        if slot.outbox.try_send(message).is_err() {
            push_error(
                client,
                "runtime_busy",
                "the runtime is not keeping up; the message was dropped",
            );
        }
    }

    /// Sends an `error` event to a client.
    pub fn client_error(&self, client_id: &str, code: &str, message: &str) {
        if let Some(client) = self.state().clients.get_mut(client_id) {
            push_error(client, code, message);
        }
    }

    /// Ends a client: it hears `client_deleted`, its runtime `client_removed`, and its
    /// connection closes once what was queued before is delivered (at once when `cut`).
    pub fn delete_client(&self, client_id: &str, reason: &str, message: Option<String>) {
        let mut state = self.state();
        self.delete_locked(&mut state, client_id, reason, message, false);
    }

    pub(super) fn delete_locked(
        &self,
        state: &mut State,
        client_id: &str,
        reason: &str,
        message: Option<String>,
        cut: bool,
    ) {
        let Some((key, client)) = self.unlink(state, client_id) else {
            return;
        };
        if let Some(runtime_id) = &client.runtime {
            if let Some(slot) = state.runtimes.get(runtime_id) {
                let _ = slot.outbox.try_send(PlatformMessage::ClientRemoved {
                    client_id: client_id.to_owned(),
                    reason: reason.to_owned(),
                });
            }
            // Room was made: a client waiting for a lobby may take it.
            self.admit_waiting(state, runtime_id);
        }
        let _ = client.line.ending.set(Ending {
            reason: reason.to_owned(),
            message: message.clone(),
        });
        if cut {
            client.line.cut.cancel();
        } else {
            let _ = client
                .outbox
                .try_send(Outgoing::event(&PlayerEvent::ClientDeleted {
                    reason: reason.to_owned(),
                    message,
                }));
        }
        state.departed.insert(
            key,
            Departed {
                user_id: client.user_id.clone(),
                deployment_id: client.deployment_id.clone(),
                line: client.line.clone(),
                at: Instant::now(),
            },
        );
        tracing::debug!(client_id, reason, "client deleted");
        self.record(Change::Deleted {
            client_id: client_id.to_owned(),
            reason: reason.to_owned(),
        });
        // Dropping the entry drops the outbox's sender: the connection reads what is queued,
        // then sees the end.
    }

    /// Takes a client out of everything that refers to it: the clients, matchmaking, its
    /// runtime's members and the queue for a lobby. Returns its entry.
    fn unlink(&self, state: &mut State, client_id: &str) -> Option<(Arc<str>, Client)> {
        let (key, client) = state.clients.remove_entry(client_id)?;
        self.leave_matchmaking(state, &key);
        if let Some(slot) = client
            .runtime
            .as_ref()
            .and_then(|runtime_id| state.runtimes.get_mut(runtime_id))
        {
            slot.remove_client(&key);
        }
        if client.waiting {
            if let Some(queue) = state.waiting.get_mut(&client.deployment_id) {
                queue.retain(|waiting| *waiting != key);
            }
        }
        Some((key, client))
    }

    /// Whether any client here belongs to one of `deployments`.
    pub fn holds_clients_of(&self, deployments: &HashSet<&str>) -> bool {
        self.state()
            .clients
            .values()
            .any(|client| deployments.contains(&*client.deployment_id))
    }

    /// Lets go of the clients of the deployments in `moved` (deployment id to the base URL of
    /// the node that serves its stage now): their connections close with `moved` and that
    /// URL, and the node there takes them on. Nothing is recorded: their records are the other
    /// node's now. Returns how many.
    pub fn send_away(&self, moved: &HashMap<String, String>) -> usize {
        let mut state = self.state();
        let leaving: Vec<(Arc<str>, String)> = state
            .clients
            .iter()
            .filter_map(|(id, client)| {
                moved
                    .get(&*client.deployment_id)
                    .map(|url| (id.clone(), url.clone()))
            })
            .collect();
        for (id, url) in &leaving {
            let Some((_, client)) = self.unlink(&mut state, id) else {
                continue;
            };
            let _ = client.line.ending.set(Ending {
                reason: MOVED.to_owned(),
                message: Some(url.clone()),
            });
            client.line.cut.cancel();
        }
        leaving.len()
    }

    /// Deletes clients that stayed disconnected past the grace period.
    pub fn sweep(&self) -> usize {
        let mut state = self.state();
        let grace = self.limits.reconnect_grace;
        let expired: Vec<Arc<str>> = state
            .clients
            .iter()
            .filter(|(_, client)| {
                client
                    .disconnected_at
                    .is_some_and(|at| at.elapsed() > grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        state
            .departed
            .retain(|_, departed| departed.at.elapsed() <= grace);
        for client_id in &expired {
            self.delete_locked(
                &mut state,
                client_id,
                "disconnected",
                Some("not reconnected within the grace period".to_owned()),
                false,
            );
        }
        self.expire_matchmaking(&mut state);
        expired.len()
    }
}

//! The dispatcher's side of runtimes: what clients and the logic need to know about each
//! (`RuntimeDescription`), each runtime's queue and clients (`RuntimeSlot`), and its socket
//! coming and going, its messages queued, its end.

use super::{Dispatcher, Hold, RuntimeAttached, RUNTIME_OUTBOX};
use crate::deployed::{Deployed, LoadError};
use crate::storage::{Database, StorageError};
use rally_sdk::player::{Assignment, ClientConfig, RuntimeKind};
use rally_sdk::runtime::{PlatformMessage, Qualifier};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What clients and the lobby logic need to know about a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeDescription {
    pub deployment_id: String,
    pub qualifier: Qualifier,
    pub mode: Option<String>,
    /// The version number.
    pub version: i64,
    /// What `runtime_assigned` carries as `config`.
    pub client_config: ClientConfig,
    pub max_clients: usize,
    /// The version's modes, for its matchmaker.
    pub modes: Arc<Vec<crate::matchmaker::ModeRules>>,
}

impl RuntimeDescription {
    pub fn new(qualifier: Qualifier, mode: Option<String>, deployment: &Deployed) -> Self {
        Self {
            deployment_id: deployment.id.clone(),
            qualifier,
            mode,
            version: deployment.version,
            client_config: deployment.client_config(),
            max_clients: deployment.config.max_clients_per_lobby.max(1) as usize,
            modes: Arc::new(deployment.manifest.modes.clone()),
        }
    }

    /// Runtime `runtime_id`'s description from its records; `None` when there is no such
    /// runtime, or (reported) when its deployment cannot be read.
    pub(super) async fn load(
        database: &Database,
        runtime_id: &str,
    ) -> Result<Option<Self>, StorageError> {
        match crate::deployed::of_runtime(database, runtime_id).await {
            Ok(runtime) => Ok(runtime
                .map(|runtime| Self::new(runtime.qualifier, runtime.mode, &runtime.deployment))),
            Err(LoadError::Storage(error)) => Err(error),
            Err(error) => {
                tracing::error!(runtime_id, %error, "a runtime's deployment cannot be read; its clients go back to a lobby");
                Ok(None)
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct RuntimeSlot {
    pub(super) description: Arc<RuntimeDescription>,
    pub(super) clients: HashSet<Arc<str>>,
    pub(super) outbox: mpsc::Sender<PlatformMessage>,
    pub(super) receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<PlatformMessage>>>,
    pub(super) connection: Option<Hold>,
    /// False once the runtime is being stopped: no new clients.
    pub(super) accepting: bool,
    /// Since when it has had no clients.
    pub(super) empty_since: Instant,
    /// A match runtime's match, once one is bound to it.
    pub(super) bound: Option<crate::matchmaker::MatchId>,
    /// A match whose logic ended it: to be stopped.
    pub(super) finished: bool,
}

impl RuntimeSlot {
    pub(super) fn new(description: Arc<RuntimeDescription>) -> Self {
        let (outbox, receiver) = mpsc::channel(RUNTIME_OUTBOX);
        Self {
            description,
            clients: HashSet::new(),
            outbox,
            receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
            connection: None,
            accepting: true,
            empty_since: Instant::now(),
            bound: None,
            finished: false,
        }
    }

    pub(super) fn assignment(&self, runtime_id: &str, group: Option<String>) -> Assignment {
        let description = &self.description;
        Assignment {
            runtime_id: runtime_id.to_owned(),
            qualifier: match description.qualifier {
                Qualifier::Lobby => RuntimeKind::Lobby,
                Qualifier::Match => RuntimeKind::Match,
            },
            mode: description.mode.clone(),
            group,
            version: description.version,
            config: description.client_config.clone(),
        }
    }

    /// Takes a client off this runtime, noting when it became empty.
    pub(super) fn remove_client(&mut self, client_id: &str) {
        self.clients.remove(client_id);
        if self.clients.is_empty() {
            self.empty_since = Instant::now();
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.accepting
            && self.connection.is_some()
            && self.description.qualifier == Qualifier::Lobby
            && self.clients.len() < self.description.max_clients
    }
}

impl Dispatcher {
    /// A runtime's socket connected: it takes the runtime's queue, and waiting clients of its
    /// deployment are let in if it is a lobby.
    pub fn runtime_connected(
        &self,
        runtime_id: &str,
        description: RuntimeDescription,
    ) -> RuntimeAttached {
        let mut guard = self.state();
        let state = &mut *guard;
        let key: Arc<str> = Arc::from(runtime_id);
        let slot = state
            .runtimes
            .entry(key.clone())
            .or_insert_with(|| RuntimeSlot::new(Arc::new(description)));
        let hold = Hold::new();
        if let Some(previous) = slot.connection.replace(hold.clone()) {
            previous.replaced.cancel();
        }
        let attached = RuntimeAttached {
            receiver: slot.receiver.clone(),
            hold,
        };
        self.admit_waiting(state, &key);
        self.bind_pending(state, &key);
        attached
    }

    /// A runtime's socket closed; what is sent to it meanwhile waits in its queue.
    pub fn runtime_disconnected(&self, runtime_id: &str, hold: &Hold) -> bool {
        let mut state = self.state();
        let Some(slot) = state.runtimes.get_mut(runtime_id) else {
            return false;
        };
        if slot
            .connection
            .as_ref()
            .is_some_and(|current| current.is(hold))
        {
            slot.connection = None;
            return true;
        }
        false
    }

    pub fn runtime_is_connected(&self, runtime_id: &str) -> bool {
        self.state()
            .runtimes
            .get(runtime_id)
            .is_some_and(|slot| slot.connection.is_some())
    }

    /// Queues a platform message for a runtime; false when it has no entry or its queue is full.
    pub fn send_runtime(&self, runtime_id: &str, message: PlatformMessage) -> bool {
        self.state()
            .runtimes
            .get(runtime_id)
            .is_some_and(|slot| slot.outbox.try_send(message).is_ok())
    }

    /// Clients assigned to a runtime.
    pub fn runtime_clients(&self, runtime_id: &str) -> usize {
        self.state()
            .runtimes
            .get(runtime_id)
            .map_or(0, |slot| slot.clients.len())
    }

    /// A runtime ended (stopped, failed, or lost): its clients go to another lobby, told why.
    pub fn runtime_ended(&self, runtime_id: &str, failed: bool) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(slot) = state.runtimes.remove(runtime_id) else {
            return;
        };
        if let Some(connection) = &slot.connection {
            connection.replaced.cancel();
        }
        if let Some(match_id) = slot.bound {
            let deployment_id: Arc<str> = Arc::from(slot.description.deployment_id.as_str());
            if let Some(matchmaker) = state.matchmakers.get_mut(&deployment_id) {
                matchmaker.end(match_id);
            }
        }
        let clients: Vec<Arc<str>> = slot.clients.into_iter().collect();
        // Re-insert nothing: back_to_lobby finds the runtime gone and only reassigns.
        for client_id in &clients {
            if let Some(client) = state.clients.get_mut(client_id) {
                client.runtime = None;
                client.group = None;
            }
        }
        let (code, why) = if failed {
            (
                "runtime_failed",
                "the runtime you were in stopped working; moving you to a lobby",
            )
        } else {
            (
                "runtime_stopped",
                "the runtime you were in has stopped; moving you to a lobby",
            )
        };
        self.back_to_lobby(state, clients, code, why);
    }
}

//! A runtime's commands, applied in order under the dispatcher's lock: messages to its own
//! clients, profiles, kicks, matchmaking, the end of a match. What goes out to players is made
//! before the lock is taken, once per command however many players it reaches (a text event is
//! serialised once; binary bytes are shared, never copied or re-encoded).

use super::journal::Change;
use super::{error, own_client, unknown_client, Client, Dispatcher, Outgoing};
use rally_sdk::player::PlayerEvent;
use rally_sdk::runtime::{Payload, PlatformMessage, Qualifier, RuntimeCommand};
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

/// Largest profile a runtime may store for a player, as JSON.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// A command with what it sends to players made ready.
enum Step {
    Respond {
        client_id: String,
        outgoing: Outgoing,
    },
    Multicast {
        client_ids: Vec<String>,
        outgoing: Outgoing,
    },
    Broadcast {
        outgoing: Outgoing,
    },
    Other(RuntimeCommand),
}

impl Step {
    fn prepare(command: RuntimeCommand) -> Self {
        match command {
            RuntimeCommand::RespondClient { client_id, payload } => Step::Respond {
                client_id,
                outgoing: outgoing(payload),
            },
            RuntimeCommand::Multicast {
                client_ids,
                payload,
            } => Step::Multicast {
                client_ids,
                outgoing: outgoing(payload),
            },
            RuntimeCommand::Broadcast { payload } => Step::Broadcast {
                outgoing: outgoing(payload),
            },
            other => Step::Other(other),
        }
    }
}

/// What a player receives for a payload: a `message` event, or the bytes as a binary frame.
fn outgoing(payload: Payload) -> Outgoing {
    match payload {
        Payload::Text(text) => Outgoing::event(&PlayerEvent::Message {
            text: Some(text),
            binary: None,
        }),
        Payload::Binary(bytes) => Outgoing::Binary(bytes),
    }
}

impl Dispatcher {
    /// Applies a runtime's commands in order; returns the error replies for it.
    pub fn runtime_commands(
        &self,
        runtime_id: &str,
        commands: Vec<RuntimeCommand>,
    ) -> Vec<PlatformMessage> {
        let mut replies = Vec::new();
        let steps: Vec<Step> = commands.into_iter().map(Step::prepare).collect();
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(key) = state
            .runtimes
            .get_key_value(runtime_id)
            .map(|(key, _)| key.clone())
        else {
            return replies;
        };
        let mut slow: Vec<Arc<str>> = Vec::new();
        for step in steps {
            let command = match step {
                Step::Respond {
                    client_id,
                    outgoing,
                } => {
                    match own_client(state, &key, &client_id) {
                        Some(client) => deliver(client, &client_id, &outgoing, &mut slow),
                        None => replies.push(unknown_client(&client_id)),
                    }
                    continue;
                }
                Step::Multicast {
                    client_ids,
                    outgoing,
                } => {
                    let mut unknown = Vec::new();
                    for client_id in client_ids {
                        match own_client(state, &key, &client_id) {
                            Some(client) => deliver(client, &client_id, &outgoing, &mut slow),
                            None => unknown.push(client_id),
                        }
                    }
                    if !unknown.is_empty() {
                        replies.push(error(
                            "unknown_client",
                            &format!(
                                "not assigned to this runtime, not sent: {}",
                                unknown.join(", ")
                            ),
                        ));
                    }
                    continue;
                }
                Step::Broadcast { outgoing } => {
                    let members: Vec<Arc<str>> = state
                        .runtimes
                        .get(&key)
                        .map(|slot| slot.clients.iter().cloned().collect())
                        .unwrap_or_default();
                    for client_id in members {
                        if let Some(client) = state.clients.get_mut(&client_id) {
                            deliver(client, &client_id, &outgoing, &mut slow);
                        }
                    }
                    continue;
                }
                Step::Other(command) => command,
            };
            match command {
                RuntimeCommand::SetProfile { client_id, profile } => {
                    let Some(client) = own_client(state, &key, &client_id) else {
                        replies.push(unknown_client(&client_id));
                        continue;
                    };
                    let text = profile.to_string();
                    if !profile.is_object() {
                        replies.push(error("invalid_profile", "a profile is a JSON object"));
                    } else if text.len() > MAX_PROFILE_BYTES {
                        replies.push(error(
                            "profile_too_large",
                            &format!("a profile is at most {MAX_PROFILE_BYTES} bytes as JSON"),
                        ));
                    } else {
                        client.profile = profile;
                        self.record(Change::Profile {
                            player_id: client.player_id.clone(),
                            profile: text,
                        });
                    }
                }
                RuntimeCommand::KickClient { client_id, reason } => {
                    if own_client(state, &key, &client_id).is_none() {
                        replies.push(unknown_client(&client_id));
                        continue;
                    }
                    let qualifier = state
                        .runtimes
                        .get(&key)
                        .map(|slot| slot.description.qualifier);
                    if qualifier == Some(Qualifier::Match) {
                        let why = format!("kicked from the match: {reason}");
                        self.back_to_lobby(
                            state,
                            vec![Arc::from(client_id.as_str())],
                            "kicked",
                            &why,
                        );
                    } else {
                        self.delete_locked(state, &client_id, "kicked", Some(reason), false);
                    }
                }
                RuntimeCommand::RequestMatchmaking { client_id, mode } => {
                    if let Err(refusal) = self.request_matchmaking(state, &key, &client_id, &mode) {
                        replies.push(*refusal);
                    }
                }
                RuntimeCommand::StopMatch { reason } => {
                    let qualifier = state
                        .runtimes
                        .get(&key)
                        .map(|slot| slot.description.qualifier);
                    if qualifier != Some(Qualifier::Match) {
                        replies.push(error("not_a_match", "stop_match is for match runtimes"));
                    } else {
                        self.stop_match(state, &key, &reason);
                    }
                }
                // Written to the runtime's log by its connection.
                RuntimeCommand::Log { .. } => {}
                // Made into steps above.
                RuntimeCommand::RespondClient { .. }
                | RuntimeCommand::Multicast { .. }
                | RuntimeCommand::Broadcast { .. } => {}
            }
        }
        for client_id in slow {
            tracing::info!(client_id = %client_id, "client does not read its socket; deleting it");
            self.delete_locked(
                state,
                &client_id,
                "slow_reader",
                Some(format!(
                    "more than {} events waited for this client",
                    self.limits.outbox_events
                )),
                true,
            );
        }
        replies
    }
}

/// Queues what a runtime sends for a client; a client whose queue is full is noted as slow.
fn deliver(client: &mut Client, client_id: &str, outgoing: &Outgoing, slow: &mut Vec<Arc<str>>) {
    if let Err(TrySendError::Full(_)) = client.outbox.try_send(outgoing.clone()) {
        slow.push(Arc::from(client_id));
    }
}

//! A runtime's commands, applied in order under the dispatcher's lock: messages to its own
//! clients, profiles, kicks, matchmaking, the end of a match.

use super::journal::Change;
use super::{error, own_client, unknown_client, Client, Dispatcher, Outgoing};
use base64::Engine as _;
use rally_sdk::player::PlayerEvent;
use rally_sdk::runtime::{Payload, PlatformMessage, Qualifier, RuntimeCommand};
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

/// Largest profile a runtime may store for a player, as JSON.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

impl Dispatcher {
    /// Applies a runtime's commands in order; returns the error replies for it.
    pub fn runtime_commands(
        &self,
        runtime_id: &str,
        commands: Vec<RuntimeCommand>,
    ) -> Vec<PlatformMessage> {
        let mut replies = Vec::new();
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
        for command in commands {
            match command {
                RuntimeCommand::RespondClient { client_id, payload } => {
                    match own_client(state, &key, &client_id) {
                        Some(client) => {
                            deliver(client, &client_id, &payload, &mut slow, &mut replies)
                        }
                        None => replies.push(unknown_client(&client_id)),
                    }
                }
                RuntimeCommand::Multicast {
                    client_ids,
                    payload,
                } => {
                    let mut unknown = Vec::new();
                    for client_id in client_ids {
                        match own_client(state, &key, &client_id) {
                            Some(client) => {
                                deliver(client, &client_id, &payload, &mut slow, &mut replies)
                            }
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
                }
                RuntimeCommand::Broadcast { payload } => {
                    let members: Vec<Arc<str>> = state
                        .runtimes
                        .get(&key)
                        .map(|slot| slot.clients.iter().cloned().collect())
                        .unwrap_or_default();
                    for client_id in members {
                        if let Some(client) = state.clients.get_mut(&client_id) {
                            deliver(client, &client_id, &payload, &mut slow, &mut replies);
                        }
                    }
                }
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

/// Queues a runtime's payload for a client; a client whose queue is full is noted as slow.
fn deliver(
    client: &mut Client,
    client_id: &str,
    payload: &Payload,
    slow: &mut Vec<Arc<str>>,
    replies: &mut Vec<PlatformMessage>,
) {
    let outgoing = match payload {
        Payload::Text(text) => Outgoing::event(&PlayerEvent::Message {
            text: Some(text.clone()),
            binary: None,
        }),
        Payload::Binary(base64) => match base64::engine::general_purpose::STANDARD.decode(base64) {
            Ok(bytes) => Outgoing::Binary(bytes.into()),
            Err(_) => {
                replies.push(error("invalid_payload", "a binary payload is base64"));
                return;
            }
        },
    };
    if let Err(TrySendError::Full(_)) = client.outbox.try_send(outgoing) {
        slow.push(Arc::from(client_id));
    }
}

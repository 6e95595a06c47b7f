//! The runtime WebSocket: one per runtime, authenticated with a `runtime` token. The platform
//! greets with `hello` (and `runtime_created` on the first connection of the runtime's life),
//! then relays platform messages out and runtime commands in, in order, with heartbeats.

use super::Runtimes;
use crate::auth::{Allowed, Caller};
use crate::error::ApiError;
use crate::server::AppState;
use crate::storage::now_millis;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use rally_sdk::runtime::{
    Frame, LogLevel, PlatformMessage, Qualifier, RuntimeCommand, PROTOCOL_VERSION,
};
use rally_sdk::wire::{ErrorBody, Role};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Runtime tokens only.
#[derive(Debug)]
pub struct RuntimeRole;
impl Allowed for RuntimeRole {
    const ROLES: &'static [Role] = &[Role::Runtime];
}

const HEARTBEAT_SECS: u32 = 10;
/// Largest frame a runtime may send.
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Frames waiting to go out to one runtime; past this the runtime is too slow and is dropped.
const OUTBOX_FRAMES: usize = 1024;

/// The runtime's socket (WebSocket upgrade; subprotocol `rally.runtime.v1`).
#[utoipa::path(get, path = "/api/v1/runtime/ws", tag = "runtimes",
    security(("bearer" = [])),
    responses((status = 101, description = "switching to the runtime protocol"), (status = "4XX", body = ErrorBody)))]
pub async fn runtime_socket(
    caller: Caller<RuntimeRole>,
    State(state): State<AppState>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let runtime_id = caller.subject;
    let row = sqlx::query(
        "SELECT r.status, r.qualifier, r.mode, r.connected_at, v.manifest, d.config \
         FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
         JOIN versions v ON v.id = d.version_id WHERE r.id = $1",
    )
    .bind(&runtime_id)
    .fetch_optional(state.database.reader())
    .await?
    .ok_or_else(|| ApiError::unauthorized("invalid_token", "no such runtime"))?;
    let status: String = row.get(0);
    if !matches!(status.as_str(), "starting" | "running" | "stopping") {
        return Err(ApiError::conflict(
            "runtime_ended",
            format!("this runtime is {status}; it cannot connect again"),
        ));
    }
    let qualifier: String = row.get(1);
    let mode: Option<String> = row.get(2);
    let first_connection = row.get::<Option<i64>, _>(3).is_none();
    let manifest: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>(4)).unwrap_or_default();
    let config: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>(5)).unwrap_or_default();

    sqlx::query(
        "UPDATE runtimes SET status = CASE WHEN status = 'starting' THEN 'running' ELSE status END, \
         connected_at = COALESCE(connected_at, $2) WHERE id = $1",
    )
    .bind(&runtime_id)
    .bind(now_millis())
    .execute(state.database.writer())
    .await?;

    let mut greeting = vec![PlatformMessage::Hello {
        protocol: PROTOCOL_VERSION,
        runtime_id: runtime_id.clone(),
        heartbeat_secs: HEARTBEAT_SECS,
    }];
    if first_connection {
        greeting.push(PlatformMessage::RuntimeCreated {
            qualifier: if qualifier == "match" {
                Qualifier::Match
            } else {
                Qualifier::Lobby
            },
            user_data: manifest["user_data"].clone(),
            manifest,
            config,
            mode,
        });
    }
    let runtimes = state.runtimes.clone();
    Ok(upgrade
        .protocols([rally_sdk::runtime::SUBPROTOCOL])
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| serve(socket, runtimes, runtime_id, qualifier, greeting)))
}

async fn serve(
    mut socket: WebSocket,
    runtimes: Arc<Runtimes>,
    runtime_id: String,
    qualifier: String,
    greeting: Vec<PlatformMessage>,
) {
    let (outbox, mut outgoing) = mpsc::channel::<Frame<PlatformMessage>>(OUTBOX_FRAMES);
    // A newer connection of the same runtime replaces an older one.
    runtimes
        .connections
        .lock()
        .expect("connections lock")
        .insert(runtime_id.clone(), outbox.clone());
    tracing::info!(runtime_id = %runtime_id, "runtime connected");
    let _ = outbox.try_send(Frame { messages: greeting });

    let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(HEARTBEAT_SECS)));
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = outgoing.recv() => {
                let Some(frame) = frame else { break };
                let text = serde_json::to_string(&frame).expect("protocol frames serialise");
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break };
                last_heard = tokio::time::Instant::now();
                let replies = match message {
                    Message::Text(text) => handle_frame(&runtimes, &runtime_id, &qualifier, text.as_str()),
                    Message::Binary(_) => vec![error("unsupported_frame", "frames are JSON text")],
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => Vec::new(),
                };
                if !replies.is_empty() && outbox.try_send(Frame { messages: replies }).is_err() {
                    tracing::warn!(runtime_id = %runtime_id, "runtime does not read its socket; closing it");
                    break;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > Duration::from_secs(u64::from(HEARTBEAT_SECS) * 2) {
                    tracing::warn!(runtime_id = %runtime_id, "runtime silent past two heartbeats; closing its socket");
                    break;
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    let mut connections = runtimes.connections.lock().expect("connections lock");
    if connections
        .get(&runtime_id)
        .is_some_and(|current| current.same_channel(&outbox))
    {
        connections.remove(&runtime_id);
        runtimes
            .disconnected_at
            .lock()
            .expect("disconnect lock")
            .insert(runtime_id.clone(), now_millis());
    }
    tracing::info!(runtime_id = %runtime_id, "runtime disconnected");
}

fn error(code: &str, message: &str) -> PlatformMessage {
    PlatformMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// Applies a frame of commands in order; returns the error replies.
fn handle_frame(
    runtimes: &Runtimes,
    runtime_id: &str,
    qualifier: &str,
    text: &str,
) -> Vec<PlatformMessage> {
    let frame: Frame<RuntimeCommand> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(problem) => {
            return vec![error(
                "malformed_frame",
                &format!("not a frame of runtime commands: {problem}"),
            )]
        }
    };
    let mut replies = Vec::new();
    for command in frame.messages {
        match command {
            RuntimeCommand::Log { level, message } => {
                append_log(runtimes, runtime_id, level, &message);
            }
            RuntimeCommand::StopMatch { .. } if qualifier != "match" => {
                replies.push(error("not_a_match", "stop_match is for match runtimes"));
            }
            // Clients are assigned to runtimes by the dispatcher, which arrives with the player
            // socket; until then no runtime has clients, so every client id is unknown.
            RuntimeCommand::RespondClient { client_id, .. }
            | RuntimeCommand::SetProfile { client_id, .. }
            | RuntimeCommand::KickClient { client_id, .. }
            | RuntimeCommand::RequestMatchmaking { client_id, .. } => {
                replies.push(error(
                    "unknown_client",
                    &format!("client {client_id} is not assigned to this runtime"),
                ));
            }
            RuntimeCommand::Multicast { client_ids, .. } => {
                if !client_ids.is_empty() {
                    replies.push(error(
                        "unknown_client",
                        "these clients are not assigned to this runtime",
                    ));
                }
            }
            RuntimeCommand::Broadcast { .. } | RuntimeCommand::StopMatch { .. } => {}
        }
    }
    replies
}

/// A `log` command lands in the runtime's log next to what its process printed.
fn append_log(runtimes: &Runtimes, runtime_id: &str, level: LogLevel, message: &str) {
    use std::io::Write;
    let level = format!("{level:?}").to_lowercase();
    let line = format!("[{level}] {}\n", message.replace('\n', " "));
    let path = runtimes.pool.log_path(runtime_id);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(problem) = written {
        tracing::debug!(runtime_id, %problem, "cannot write a runtime log line");
    }
}

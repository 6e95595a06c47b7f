//! The runtime WebSocket: one per runtime, authenticated with a `runtime` token. The platform
//! greets with `hello` (and `runtime_created` on the first connection of the runtime's life),
//! then relays platform messages out and runtime commands in, in order, with heartbeats.

use super::Runtimes;
use crate::auth::{Allowed, Caller};
use crate::dispatcher::{Dispatcher, RuntimeDescription};
use crate::error::ApiError;
use crate::server::AppState;
use crate::storage::now_millis;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use rally_sdk::runtime::{Frame, LogLevel, PlatformMessage, RuntimeCommand, PROTOCOL_VERSION};
use rally_sdk::wire::{ErrorBody, Role};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

/// Runtime tokens only.
#[derive(Debug)]
pub struct RuntimeRole;
impl Allowed for RuntimeRole {
    const ROLES: &'static [Role] = &[Role::Runtime];
}

const HEARTBEAT_SECS: u32 = 10;
/// Largest frame a runtime may send.
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Most platform messages sent in one frame.
const BATCH: usize = 512;

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
        "SELECT r.status, r.connected_at, v.manifest, d.config, r.deployment_id, r.qualifier, \
         r.mode, v.number FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
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
    let first_connection = row.get::<Option<i64>, _>(1).is_none();
    let manifest: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>(2)).unwrap_or_default();
    let config: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>(3)).unwrap_or_default();
    let description = RuntimeDescription::new(
        row.get(4),
        &row.get::<String, _>(5),
        row.get(6),
        row.get(7),
        &manifest,
        &config,
    );

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
            qualifier: description.qualifier,
            user_data: manifest["user_data"].clone(),
            manifest,
            config,
            mode: description.mode.clone(),
        });
    }
    let runtimes = state.runtimes.clone();
    let dispatcher = state.dispatcher.clone();
    Ok(upgrade
        .protocols([rally_sdk::runtime::SUBPROTOCOL])
        .read_buffer_size(rally_sdk::runtime::SOCKET_READ_BUFFER)
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            serve(
                socket,
                runtimes,
                dispatcher,
                runtime_id,
                description,
                greeting,
            )
        }))
}

async fn serve(
    mut socket: WebSocket,
    runtimes: Arc<Runtimes>,
    dispatcher: Arc<Dispatcher>,
    runtime_id: String,
    description: RuntimeDescription,
    greeting: Vec<PlatformMessage>,
) {
    // Registering lets waiting clients in; their `client_assigned` queue behind the greeting,
    // which goes out first.
    let attached = dispatcher.runtime_connected(&runtime_id, description);
    runtimes.connected(&runtime_id);
    tracing::info!(runtime_id = %runtime_id, "runtime connected");
    let mut receiver = tokio::select! {
        receiver = attached.receiver.lock_owned() => receiver,
        () = attached.hold.replaced.cancelled() => return,
    };
    let greeting = serde_json::to_string(&Frame { messages: greeting }).expect("frames serialise");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(HEARTBEAT_SECS)));
    let mut last_heard = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    if socket.send(Message::Text(greeting.into())).await.is_ok() {
        loop {
            tokio::select! {
                biased;
                () = attached.hold.replaced.cancelled() => break,
                () = dispatcher.shutdown.cancelled() => break,
                received = receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    let frame = Frame { messages: std::mem::take(&mut batch) };
                    let text = serde_json::to_string(&frame).expect("protocol frames serialise");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { break };
                    last_heard = tokio::time::Instant::now();
                    let replies = match message {
                        Message::Text(text) => handle_frame(&runtimes, &dispatcher, &runtime_id, text.as_str()),
                        Message::Binary(_) => vec![error("unsupported_frame", "frames are JSON text")],
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => Vec::new(),
                    };
                    if !replies.is_empty() {
                        let text = serde_json::to_string(&Frame { messages: replies }).expect("protocol frames serialise");
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
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
    }
    drop(receiver);
    if dispatcher.runtime_disconnected(&runtime_id, &attached.hold) {
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
    dispatcher: &Dispatcher,
    runtime_id: &str,
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
    for command in &frame.messages {
        if let RuntimeCommand::Log { level, message } = command {
            append_log(runtimes, runtime_id, *level, message);
        }
    }
    dispatcher.runtime_commands(runtime_id, frame.messages)
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

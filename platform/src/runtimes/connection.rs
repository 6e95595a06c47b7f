//! The runtime WebSocket: one per runtime, authenticated with a `runtime` token. The platform
//! greets with `hello` (and `runtime_created` on the first connection of the runtime's life),
//! then relays platform messages out and runtime commands in, in order, with heartbeats.

use super::node::Runtimes;
use crate::auth::{Allowed, Caller};
use crate::dispatcher::{Dispatcher, RuntimeDescription};
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::now_millis;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use rally_sdk::runtime::{
    decode_binary_frame, decode_text_frame, encode_frames, Encoded, Frame, FrameError, LogLevel,
    PlatformMessage, RuntimeCommand, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use rally_sdk::wire::{ErrorBody, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runtime tokens only.
#[derive(Debug)]
pub struct RuntimeRole;
impl Allowed for RuntimeRole {
    const ROLES: &'static [Role] = &[Role::Runtime];
}

const HEARTBEAT_SECS: u32 = 10;
/// Most platform messages sent in one frame.
const BATCH: usize = 512;

/// The runtime's socket (WebSocket upgrade; subprotocol `rally.runtime.v2`).
#[utoipa::path(get, path = "/api/v1/runtime/ws", tag = "runtimes",
    security(("bearer" = [])),
    responses((status = 101, description = "switching to the runtime protocol"), (status = "4XX", body = ErrorBody)))]
pub async fn runtime_socket(
    caller: Caller<RuntimeRole>,
    State(state): State<AppState>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let runtime_id = caller.subject;
    let runtime = crate::deployed::of_runtime(&state.database, &runtime_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "no such runtime"))?;
    if !matches!(runtime.status.as_str(), "starting" | "running" | "stopping") {
        return Err(ApiError::conflict(
            "runtime_ended",
            format!(
                "this runtime is {}; it cannot connect again",
                runtime.status
            ),
        ));
    }
    let first_connection = runtime.connected_at.is_none();
    let description = RuntimeDescription::new(runtime.qualifier, runtime.mode, &runtime.deployment);

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
        let deployment = runtime.deployment;
        greeting.push(PlatformMessage::RuntimeCreated {
            qualifier: description.qualifier,
            user_data: deployment.manifest.user_data.clone(),
            manifest: Box::new(deployment.manifest),
            config: Box::new(deployment.config),
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
    runtimes.start_over(&runtime_id);
    tracing::info!(runtime_id = %runtime_id, "runtime connected");
    let mut receiver = tokio::select! {
        receiver = attached.receiver.lock_owned() => receiver,
        () = attached.hold.replaced.cancelled() => return,
    };
    let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(HEARTBEAT_SECS)));
    let mut last_heard = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    if send_frames(&mut socket, &greeting).await.is_ok() {
        loop {
            tokio::select! {
                biased;
                () = attached.hold.replaced.cancelled() => break,
                () = dispatcher.shutdown.cancelled() => break,
                received = receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    let sent = send_frames(&mut socket, &batch).await;
                    batch.clear();
                    if sent.is_err() {
                        break;
                    }
                }
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { break };
                    last_heard = tokio::time::Instant::now();
                    let frame = match message {
                        Message::Text(text) => decode_text_frame(text.as_str()),
                        Message::Binary(envelope) => decode_binary_frame(envelope),
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => continue,
                    };
                    let closing = &attached.hold.replaced;
                    let Some(replies) =
                        handle_frame(&runtimes, &dispatcher, &runtime_id, frame, closing).await
                    else {
                        break;
                    };
                    if !replies.is_empty() && send_frames(&mut socket, &replies).await.is_err() {
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
    }
    drop(receiver);
    if dispatcher.runtime_disconnected(&runtime_id, &attached.hold) {
        runtimes
            .disconnected_at
            .lock()
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

/// Sends platform messages in order, in as few frames as fit: text, or binary envelopes when a
/// payload is binary.
async fn send_frames(
    socket: &mut WebSocket,
    messages: &[PlatformMessage],
) -> Result<(), axum::Error> {
    for frame in encode_frames(messages) {
        let message = match frame {
            Encoded::Text(text) => Message::Text(text.into()),
            Encoded::Binary(envelope) => Message::Binary(envelope.into()),
        };
        socket.send(message).await?;
    }
    Ok(())
}

/// Applies a frame of commands in order; returns the error replies, or `None` when the socket
/// closed (`replaced`, or the platform stopping) while the frame waited for the database.
///
/// Causal durability: a profile write is committed before anything the runtime sent after it
/// reaches a player. So after each run of `set_profile` commands, the rest of the frame (and
/// the runtime's next frames, which are not read meanwhile) waits for the database; frames
/// without profile writes never wait. A wait cut short by the socket's end drops the rest of
/// the frame rather than send it ahead of the profiles.
async fn handle_frame(
    runtimes: &Runtimes,
    dispatcher: &Dispatcher,
    runtime_id: &str,
    frame: Result<Frame<RuntimeCommand>, FrameError>,
    replaced: &CancellationToken,
) -> Option<Vec<PlatformMessage>> {
    let frame = match frame {
        Ok(frame) => frame,
        Err(problem) => {
            return Some(vec![error(
                "malformed_frame",
                &format!("not a frame of runtime commands: {problem}"),
            )])
        }
    };
    for command in &frame.messages {
        if let RuntimeCommand::Log { level, message } = command {
            append_log(runtimes, runtime_id, *level, message);
        }
    }
    let mut commands = frame.messages;
    let mut replies = Vec::new();
    while let Some(first) = commands.iter().position(is_profile_write) {
        let run = commands[first..]
            .iter()
            .take_while(|command| is_profile_write(command))
            .count();
        let rest = commands.split_off(first + run);
        replies.extend(dispatcher.runtime_commands(runtime_id, commands));
        tokio::select! {
            () = dispatcher.flush() => {}
            () = replaced.cancelled() => return None,
            () = dispatcher.shutdown.cancelled() => return None,
        }
        commands = rest;
    }
    if !commands.is_empty() {
        replies.extend(dispatcher.runtime_commands(runtime_id, commands));
    }
    Some(replies)
}

fn is_profile_write(command: &RuntimeCommand) -> bool {
    matches!(command, RuntimeCommand::SetProfile { .. })
}

/// A `log` command lands in the runtime's log next to what its process printed.
fn append_log(runtimes: &Runtimes, runtime_id: &str, level: LogLevel, message: &str) {
    let level = format!("{level:?}").to_lowercase();
    let line = format!("[{level}] {}\n", message.replace('\n', " "));
    runtimes.pool.append_log(runtime_id, &line);
}

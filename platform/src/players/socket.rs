//! The player WebSocket: one per client. The platform greets, then relays the client's
//! commands and binary frames to its runtime and the client's events out, in order, pinging to
//! notice a dead peer. A newer connection of the same client replaces this one.

use super::{frame_too_large, handle_command, live_client, parse_command, Players};
use crate::auth::verify_for;
use crate::dispatcher::{Attached, Dispatcher, Ending, Outgoing, MOVED};
use crate::error::{ApiError, Path};
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use rally_sdk::player::{CLOSE_MOVED, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX};
use rally_sdk::runtime::Payload;
use rally_sdk::wire::ErrorBody;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read from the socket at a time; a small buffer keeps idle connections cheap.
const READ_BUFFER: usize = 4 * 1024;
/// Events written before a flush.
const WRITE_BATCH: usize = 64;
/// How long a new connection waits for the one it replaces to let go.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The access token of a socket request: `Authorization: Bearer`, a `rally.token.<jwt>`
/// subprotocol, or `?token=` (in that order).
fn socket_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_owned());
    }
    let from_protocols = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        .map(str::to_owned);
    if from_protocols.is_some() {
        return from_protocols;
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_owned)
}

/// The client's socket (WebSocket upgrade; offer subprotocol `rally.player.v1`).
#[utoipa::path(get, path = "/api/v1/clients/{client}/ws", tag = "players",
    params(("client" = String, Path, description = "client id"),
           ("token" = Option<String>, Query, description = "access token, for clients that cannot set headers")),
    security(("bearer" = [])),
    responses((status = 101, description = "switching to the player protocol"), (status = "4XX", body = ErrorBody)))]
pub async fn player_socket(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = socket_token(&headers, query.as_deref())
        .ok_or_else(|| ApiError::unauthorized("missing_token", "no access token was presented"))?;
    let claims = verify_for::<Players>(&state, &token)?;
    // A client served by another node is told where, in the close frame: a browser's socket
    // cannot read the status of a refused upgrade.
    let moved = match live_client(&state, &claims.sub, &client_id).await {
        Ok(()) => None,
        Err(ApiError::WrongNode { node_url }) => Some(node_url),
        Err(refused) => return Err(refused),
    };
    // Who is asking is checked first: a plain GET learns nothing about the client.
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "not_a_websocket",
            format!("open this path as a WebSocket: {rejection}"),
        )
    })?;
    if let Some(node_url) = moved {
        return Ok(upgrade
            .protocols([SUBPROTOCOL])
            .on_upgrade(move |mut socket| async move {
                let _ = socket.send(close(CLOSE_MOVED, &node_url)).await;
            }));
    }
    let dispatcher = state.dispatcher.clone();
    let limits = dispatcher.limits().clone();
    // Frames somewhat over the limit are read and refused with an error event; far over it, the
    // connection is closed (1009) before the frame is buffered.
    let hard_limit = limits.max_frame_bytes * 4 + 4096;
    let user_id = claims.sub;
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(limits.max_frame_bytes * 16 + 64 * 1024)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| async move {
            match dispatcher.attach(&client_id, &user_id) {
                Ok(attached) => serve(socket, dispatcher, client_id, attached).await,
                Err(_) => {
                    let mut socket = socket;
                    let _ = socket.send(close(4004, "client_deleted")).await;
                }
            }
        }))
}

fn close(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let reason: String = reason.chars().take(120).collect();
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Why a connection ends.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer is gone; nothing to say.
    Lost,
    /// Cut off mid-write: the close frame may not get through.
    Cut,
}

async fn serve(
    mut socket: WebSocket,
    dispatcher: Arc<Dispatcher>,
    client_id: String,
    attached: Attached,
) {
    let Attached {
        line,
        hold,
        greeting,
    } = attached;
    let replaced = hold.replaced.clone();
    // The connection this one replaces lets go of the inbox when it sees it was replaced.
    let mut inbox = tokio::select! {
        inbox = line.inbox.lock() => inbox,
        () = replaced.cancelled() => return,
        () = tokio::time::sleep(TAKE_OVER_TIMEOUT) => {
            let _ = socket.send(close(1013, "previous connection still open; retry")).await;
            dispatcher.detach(&client_id, &hold);
            return;
        }
    };
    let greeting = serde_json::to_string(&greeting).expect("events serialise");
    let heartbeat = dispatcher.limits().heartbeat;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = tokio::time::Instant::now();
    let end = if socket.send(Message::Text(greeting.into())).await.is_err() {
        End::Lost
    } else {
        loop {
            tokio::select! {
                biased;
                () = line.cut.cancelled() => break End::Cut,
                () = replaced.cancelled() => break End::Close(4001, "connection_replaced".to_owned()),
                () = dispatcher.shutdown.cancelled() => break End::Close(1012, "platform_restarting".to_owned()),
                outgoing = inbox.receiver.recv() => {
                    let Some(outgoing) = outgoing else {
                        let ending = line.ending().map(|ending| ending.reason.clone()).unwrap_or_default();
                        break End::Close(1000, ending);
                    };
                    // A peer that does not read blocks the write; being cut ends the wait.
                    tokio::select! {
                        written = write_batch(&mut socket, &mut inbox.receiver, outgoing) => {
                            if written.is_err() {
                                break End::Lost;
                            }
                        }
                        () = line.cut.cancelled() => break End::Cut,
                    }
                }
                incoming = socket.recv() => {
                    last_heard = tokio::time::Instant::now();
                    match incoming {
                        Some(Ok(message)) => {
                            if !receive(&dispatcher, &client_id, message) {
                                break End::Lost;
                            }
                        }
                        Some(Err(error)) => {
                            if is_capacity(&error) {
                                break End::Close(1009, "frame_too_large".to_owned());
                            }
                            break End::Lost;
                        }
                        None => break End::Lost,
                    }
                }
                _ = ticks.tick() => {
                    if last_heard.elapsed() > heartbeat * 2 {
                        break End::Close(4002, "heartbeat_timeout".to_owned());
                    }
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break End::Lost;
                    }
                }
            }
        }
    };
    drop(inbox);
    dispatcher.detach(&client_id, &hold);
    let farewell = match end {
        End::Close(code, reason) => close(code, &reason),
        End::Cut => match line.ending() {
            Some(Ending {
                reason,
                message: Some(node_url),
            }) if reason == MOVED => close(CLOSE_MOVED, node_url),
            ending => close(
                4008,
                &ending
                    .map(|ending| ending.reason.clone())
                    .unwrap_or_default(),
            ),
        },
        End::Lost => return,
    };
    // A peer that does not read does not get to hold the task either.
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(farewell)).await;
}

/// Writes an event and whatever else is queued behind it, then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    receiver: &mut tokio::sync::mpsc::Receiver<Outgoing>,
    first: Outgoing,
) -> Result<(), axum::Error> {
    socket.feed(frame(first)).await?;
    for _ in 1..WRITE_BATCH {
        match receiver.try_recv() {
            Ok(next) => socket.feed(frame(next)).await?,
            Err(_) => break,
        }
    }
    socket.flush().await
}

fn frame(outgoing: Outgoing) -> Message {
    match outgoing {
        Outgoing::Text(text) => Message::Text(text),
        Outgoing::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Handles one frame from the client; false when the client closed.
fn receive(dispatcher: &Dispatcher, client_id: &str, message: Message) -> bool {
    let max = dispatcher.limits().max_frame_bytes;
    match message {
        Message::Text(text) if text.len() > max => frame_too_large(dispatcher, client_id),
        Message::Text(text) => {
            if let Some(command) = parse_command(dispatcher, client_id, text.as_str()) {
                handle_command(dispatcher, client_id, command);
            }
        }
        Message::Binary(bytes) if bytes.len() > max => frame_too_large(dispatcher, client_id),
        Message::Binary(bytes) => dispatcher.client_message(client_id, Payload::Binary(bytes)),
        Message::Ping(_) | Message::Pong(_) => {}
        Message::Close(_) => return false,
    }
    true
}

/// Whether a read failed because a frame was over the hard limit.
fn is_capacity(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("capacity")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_token_comes_from_the_header_a_subprotocol_or_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            socket_token(&headers, Some("token=q")),
            Some("q".to_owned())
        );
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("rally.player.v1, rally.token.p"),
        );
        assert_eq!(
            socket_token(&headers, Some("token=q")),
            Some("p".to_owned())
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        assert_eq!(
            socket_token(&headers, Some("token=q")),
            Some("h".to_owned())
        );
        assert_eq!(socket_token(&HeaderMap::new(), Some("other=1")), None);
    }
}

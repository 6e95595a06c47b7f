//! The long-poll fallback, for clients that cannot hold a socket: the same events in the same
//! order, numbered, fetched with `GET .../events?after=N`, and commands sent in batches. Events
//! a poll returned stay available until the next poll confirms them with `after`, so an answer
//! lost on the way is fetched again.

use super::{handle_command, live_client, ClientPath, Players};
use crate::auth::Caller;
use crate::dispatcher::{AttachError, Inbox, MOVED};
use crate::error::{ApiError, Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use rally_sdk::player::{CommandBatch, PlayerEvent, PolledEvent, PolledEvents};
use rally_sdk::wire::ErrorBody;
use serde::Deserialize;
use std::time::Duration;

/// Longest a poll waits for a first event.
const MAX_WAIT_MS: u64 = 30_000;
/// Most events one answer carries.
const MAX_EVENTS: usize = 256;
/// Most commands in one batch.
const MAX_COMMANDS: usize = 256;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PollQuery {
    /// The last event number received; events up to it are not sent again.
    #[serde(default)]
    after: u64,
    /// How long to wait for a first event, in milliseconds (at most 30000).
    #[serde(default = "default_wait")]
    wait_ms: u64,
}

fn default_wait() -> u64 {
    25_000
}

/// The client's events after `after`, waiting up to `wait_ms` for the first one. The first
/// poll of a client starts with `greeted`. A poll holds the client like a socket does: it
/// replaces an open socket, and the reconnect grace period counts from the end of the last poll.
#[utoipa::path(get, path = "/api/v1/clients/{client}/events", tag = "players",
    params(("client" = String, Path, description = "client id"), PollQuery),
    security(("bearer" = [])),
    responses((status = 200, body = PolledEvents), (status = "4XX", body = ErrorBody)))]
pub(super) async fn poll_events(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<ClientPath>,
    Query(query): Query<PollQuery>,
) -> Result<Json<PolledEvents>, ApiError> {
    let dispatcher = state.dispatcher.clone();
    if let Err(gone) = live_client(&state, &caller.subject, &path.client).await {
        // Deleted while nobody polled: its last events (client_deleted among them) are still
        // there for the next poll; after that, it is gone.
        let line = dispatcher
            .departed_line(&path.client, &caller.subject)
            .ok_or(gone)?;
        let mut inbox = line.inbox.lock().await;
        let events = drain_departed(&mut inbox, query.after);
        if events.is_empty() {
            return Err(ApiError::Rejected {
                status: StatusCode::GONE,
                code: "client_deleted",
                message: "this client was deleted; create a new one".to_owned(),
            });
        }
        return Ok(Json(PolledEvents {
            events,
            open: false,
        }));
    }
    let attached = dispatcher
        .attach(&path.client, &caller.subject)
        .map_err(|AttachError::Unknown| ApiError::NotFound { what: "client" })?;
    let line = attached.line.clone();
    let hold = attached.hold.clone();
    let replaced = hold.replaced.clone();
    let wait = Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    let events = tokio::select! {
        inbox = line.inbox.lock() => {
            let mut inbox = inbox;
            collect(&mut inbox, query.after, attached.greeting, wait, &replaced, &line.cut).await
        }
        () = replaced.cancelled() => Vec::new(),
        () = tokio::time::sleep(wait) => Vec::new(),
    };
    dispatcher.detach(&path.client, &hold);
    if let Some(ending) = line.ending().filter(|ending| ending.reason == MOVED) {
        // Its stage moved: the node there serves it, numbering on from `after`.
        return Err(ApiError::WrongNode {
            node_url: ending.message.clone().unwrap_or_default(),
        });
    }
    let open = line.ending().is_none();
    Ok(Json(PolledEvents { events, open }))
}

/// Drops confirmed events, then returns the unconfirmed ones and what arrives within `wait`.
async fn collect(
    inbox: &mut Inbox,
    after: u64,
    greeting: PlayerEvent,
    wait: Duration,
    replaced: &tokio_util::sync::CancellationToken,
    cut: &tokio_util::sync::CancellationToken,
) -> Vec<PolledEvent> {
    while inbox
        .unacked
        .front()
        .is_some_and(|event| event.seq <= after)
    {
        inbox.unacked.pop_front();
    }
    if inbox.next_seq == 1 {
        // A client that polled another node before (its stage moved) numbers on from there.
        inbox.next_seq = after + 1;
        push(inbox, greeting);
    }
    let deadline = tokio::time::Instant::now() + wait;
    while inbox.unacked.len() < MAX_EVENTS {
        let next = if inbox.unacked.is_empty() {
            tokio::select! {
                next = inbox.receiver.recv() => next,
                () = tokio::time::sleep_until(deadline) => break,
                () = replaced.cancelled() => break,
                () = cut.cancelled() => break,
            }
        } else {
            match inbox.receiver.try_recv() {
                Ok(next) => Some(next),
                Err(_) => break,
            }
        };
        match next {
            Some(outgoing) => push(inbox, outgoing.to_event()),
            None => break,
        }
    }
    inbox.unacked.iter().cloned().collect()
}

/// What is left of a deleted client: unconfirmed events and what was queued, without waiting.
fn drain_departed(inbox: &mut Inbox, after: u64) -> Vec<PolledEvent> {
    while inbox
        .unacked
        .front()
        .is_some_and(|event| event.seq <= after)
    {
        inbox.unacked.pop_front();
    }
    while let Ok(outgoing) = inbox.receiver.try_recv() {
        push(inbox, outgoing.to_event());
    }
    inbox.unacked.iter().cloned().collect()
}

fn push(inbox: &mut Inbox, event: PlayerEvent) {
    let seq = inbox.next_seq;
    inbox.next_seq += 1;
    inbox.unacked.push_back(PolledEvent { seq, event });
}

/// Commands for the client, applied in order as if sent on its socket. Refusals come back as
/// `error` events on the next poll.
#[utoipa::path(post, path = "/api/v1/clients/{client}/commands", tag = "players",
    params(("client" = String, Path, description = "client id")),
    request_body = CommandBatch, security(("bearer" = [])),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
pub(super) async fn send_commands(
    caller: Caller<Players>,
    State(state): State<AppState>,
    Path(path): Path<ClientPath>,
    Json(batch): Json<CommandBatch>,
) -> Result<StatusCode, ApiError> {
    live_client(&state, &caller.subject, &path.client).await?;
    if batch.commands.len() > MAX_COMMANDS {
        return Err(ApiError::bad_request(
            "too_many_commands",
            format!("at most {MAX_COMMANDS} commands per batch"),
        ));
    }
    for command in batch.commands {
        handle_command(&state.dispatcher, &path.client, command);
    }
    Ok(StatusCode::NO_CONTENT)
}

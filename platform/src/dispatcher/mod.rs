//! The dispatcher: which client talks to which runtime, and the relay between them.
//!
//! Every live client and every runtime of this node has an entry here. A player's messages go to
//! the runtime its client is assigned to; a runtime's `respond_client`, `multicast` and
//! `broadcast` go to its own clients only. Each side has a bounded queue (its *outbox*) read by
//! whichever connection currently holds it, so a client or runtime that reconnects finds what
//! was sent meanwhile, and one that stops reading is cut off instead of growing memory.
//!
//! Order is kept per client: one connection task feeds a runtime's queue in the order the
//! player sent, and one runtime connection feeds each client's queue in the order the runtime
//! answered. Nothing on the message path touches the database: assignments, deletions and
//! profiles are journalled and written in order by one task ([`journal`]).
//!
//! All state sits behind one mutex held for a few map operations at a time; no lock is held
//! across an await.

mod clients;
mod commands;
pub mod journal;
mod limits;
mod lobbies;
mod matches;
mod restore;
mod runtimes;

pub use limits::PlayerLimits;
pub use matches::{DeploymentFacts, MatchDemand};
pub use runtimes::RuntimeDescription;

use crate::storage::Database;
use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use journal::{Change, Journal};
use limits::Bucket;
use parking_lot::Mutex;
use rally_sdk::player::{PlayerEvent, PolledEvent};
use rally_sdk::runtime::PlatformMessage;
use runtimes::RuntimeSlot;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Messages waiting for one runtime. A runtime this far behind refuses new player messages
/// (`runtime_busy`) until it catches up.
const RUNTIME_OUTBOX: usize = 16 * 1024;

/// What goes out to a client: an event as JSON text, or a binary message as is.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Outgoing {
    fn event(event: &PlayerEvent) -> Self {
        let text = serde_json::to_string(event).expect("player events serialise");
        Outgoing::Text(text.into())
    }

    /// The same thing as a long-poll event.
    pub fn to_event(&self) -> PlayerEvent {
        match self {
            Outgoing::Text(text) => {
                serde_json::from_str(text.as_str()).unwrap_or_else(|_| PlayerEvent::Message {
                    text: Some(text.to_string()),
                    binary: None,
                })
            }
            Outgoing::Binary(bytes) => PlayerEvent::Message {
                text: None,
                binary: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }
}

/// The ending of a client another node serves now; its message is that node's base URL.
pub const MOVED: &str = "moved";

/// Why a client ended, for the connection that closes after it.
#[derive(Debug, Clone)]
pub struct Ending {
    pub reason: String,
    pub message: Option<String>,
}

/// The reading end of a client's outbox, held by one connection (socket or long-poll) at a
/// time.
#[derive(Debug)]
pub struct Inbox {
    pub receiver: mpsc::Receiver<Outgoing>,
    /// Long-poll numbering: the next event gets this number.
    pub next_seq: u64,
    /// Events a long-poll returned that the client has not confirmed (with `after`) yet.
    pub unacked: VecDeque<PolledEvent>,
}

/// What a client's connection shares with its entry.
#[derive(Debug)]
pub struct ClientLine {
    pub inbox: tokio::sync::Mutex<Inbox>,
    ending: OnceLock<Ending>,
    /// Close now, without delivering what is queued (a slow reader).
    pub cut: CancellationToken,
}

impl ClientLine {
    /// Why the client ended, once it has.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.get()
    }
}

#[derive(Debug)]
struct Client {
    user_id: String,
    player_id: String,
    deployment_id: Arc<str>,
    runtime: Option<Arc<str>>,
    group: Option<String>,
    profile: serde_json::Value,
    outbox: mpsc::Sender<Outgoing>,
    line: Arc<ClientLine>,
    /// The connection holding the client now; a newer one cancels it.
    connection: Option<Hold>,
    /// Since when nobody holds the client; `None` while connected.
    disconnected_at: Option<Instant>,
    /// Queued for a lobby of its deployment.
    waiting: bool,
    /// Connected at least once (in this run or, restored, in the previous one).
    seen: bool,
    bucket: Bucket,
}

/// A version's modes, shared.
type Modes = Arc<Vec<crate::matchmaker::ModeRules>>;

#[derive(Debug, Default)]
struct State {
    clients: HashMap<Arc<str>, Client>,
    runtimes: HashMap<Arc<str>, RuntimeSlot>,
    /// Clients waiting for a lobby, per deployment, first come first served.
    waiting: HashMap<Arc<str>, VecDeque<Arc<str>>>,
    /// Deleted clients whose last events a long-poll may still fetch, for the grace period.
    departed: HashMap<Arc<str>, Departed>,
    /// Per deployment, its matchmaker.
    matchmakers: HashMap<Arc<str>, crate::matchmaker::Matchmaker>,
    /// Formed matches waiting for a match runtime, per deployment.
    pending_matches: HashMap<Arc<str>, VecDeque<matches::PendingMatch>>,
    /// Running deployments: their stage and modes (from the supervisor).
    deployments: HashMap<Arc<str>, (Arc<str>, Modes)>,
    /// Per stage, its active deployment: where new matches of its players form.
    current: HashMap<Arc<str>, Arc<str>>,
}

#[derive(Debug)]
struct Departed {
    user_id: String,
    deployment_id: Arc<str>,
    line: Arc<ClientLine>,
    at: Instant,
}

/// A new client, as its creation recorded it.
#[derive(Debug)]
pub struct NewClient {
    pub client_id: String,
    pub user_id: String,
    pub player_id: String,
    pub deployment_id: String,
    pub runtime_id: Option<String>,
    pub group: Option<String>,
    pub profile: serde_json::Value,
    /// Held by a previous run of this node: its next connection resumes it.
    pub restored: bool,
}

/// A connection's hold on a client or runtime: cancelled when a newer connection takes over.
#[derive(Debug, Clone)]
pub struct Hold {
    serial: u64,
    pub replaced: CancellationToken,
}

impl Hold {
    fn new() -> Self {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Self {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            replaced: CancellationToken::new(),
        }
    }

    fn is(&self, other: &Hold) -> bool {
        self.serial == other.serial
    }
}

/// A connection's hold on a client.
#[derive(Debug)]
pub struct Attached {
    pub line: Arc<ClientLine>,
    pub hold: Hold,
    pub greeting: PlayerEvent,
}

/// Why a connection cannot take a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// No live client with this id belongs to the caller.
    Unknown,
}

/// A connection's hold on a runtime.
#[derive(Debug)]
pub struct RuntimeAttached {
    pub receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<PlatformMessage>>>,
    pub hold: Hold,
}

/// Lobbies a deployment needs: clients are waiting and no lobby has room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LobbyDemand {
    pub deployment_id: String,
    pub waiting: usize,
    pub max_clients: Option<usize>,
}

#[derive(Debug)]
pub struct Dispatcher {
    state: Mutex<State>,
    journal: Arc<Journal>,
    limits: PlayerLimits,
    /// Wakes the supervisor when clients wait for a lobby.
    pub lobby_wanted: Notify,
    /// Wakes the match starter when a formed match waits for a runtime.
    pub match_wanted: Notify,
    /// Cancelled when the platform shuts down: every connection closes.
    pub shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher of node `node_id` journalling to `database` (the writer task starts here).
    pub fn new(limits: PlayerLimits, database: Database, node_id: String) -> Self {
        Self {
            state: Mutex::default(),
            journal: Journal::start(database, node_id),
            limits,
            lobby_wanted: Notify::new(),
            match_wanted: Notify::new(),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn limits(&self) -> &PlayerLimits {
        &self.limits
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn record(&self, change: Change) {
        self.journal.record(change);
    }

    /// Waits until every change made so far is in the database.
    pub async fn flush(&self) {
        self.journal.written(self.journal.last_recorded()).await;
    }

    /// Changes waiting for the database (at most one per client column and per player).
    pub fn journal_backlog(&self) -> usize {
        self.journal.backlog()
    }
}

impl Drop for Dispatcher {
    /// The journal's writer ends once what waits is written.
    fn drop(&mut self) {
        self.journal.close();
    }
}

/// A client of the runtime `runtime_id`, or `None` when it is not one.
fn own_client<'a>(
    state: &'a mut State,
    runtime_id: &Arc<str>,
    client_id: &str,
) -> Option<&'a mut Client> {
    state
        .clients
        .get_mut(client_id)
        .filter(|client| client.runtime.as_ref() == Some(runtime_id))
}

fn push_error(client: &mut Client, code: &str, message: &str) {
    let _ = client.outbox.try_send(Outgoing::event(&PlayerEvent::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }));
}

fn unknown_client(client_id: &str) -> PlatformMessage {
    error(
        "unknown_client",
        &format!("client {client_id} is not assigned to this runtime"),
    )
}

fn error(code: &str, message: &str) -> PlatformMessage {
    PlatformMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests;

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

pub mod journal;
mod matches;

pub use matches::{DeploymentFacts, MatchDemand};

use crate::config::Config;
use crate::storage::{Database, StorageError};
use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use journal::Change;
use rally_sdk::player::{Assignment, ClientInfo, Limits, PlayerEvent, PolledEvent, RuntimeKind};
use rally_sdk::runtime::{Payload, PlatformMessage, Qualifier, RuntimeCommand};
use sqlx::Row;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Messages waiting for one runtime. A runtime this far behind refuses new player messages
/// (`runtime_busy`) until it catches up.
const RUNTIME_OUTBOX: usize = 16 * 1024;
/// Largest profile a runtime may store for a player, as JSON.
const MAX_PROFILE_BYTES: usize = 64 * 1024;

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

/// The player-facing limits in force.
#[derive(Debug, Clone)]
pub struct PlayerLimits {
    pub max_frame_bytes: usize,
    pub messages_per_sec: u32,
    pub reconnect_grace: Duration,
    pub outbox_events: usize,
    pub heartbeat: Duration,
    pub matchmaking_timeout: Duration,
}

impl PlayerLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_frame_bytes: config.player_max_frame_bytes,
            messages_per_sec: config.player_messages_per_sec,
            reconnect_grace: Duration::from_secs(config.player_reconnect_grace_secs),
            outbox_events: config.player_outbox_events,
            heartbeat: Duration::from_secs(config.player_heartbeat_secs),
            matchmaking_timeout: Duration::from_secs(config.matchmaking_timeout_secs),
        }
    }

    fn announced(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes as u32,
            messages_per_sec: self.messages_per_sec,
            reconnect_grace_secs: self.reconnect_grace.as_secs() as u32,
        }
    }
}

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

/// Token bucket for a client's message rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    /// When a `rate_limited` error was last sent: at most one a second.
    reported_at: Option<Instant>,
}

impl Bucket {
    fn full(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate),
            refilled_at: Instant::now(),
            reported_at: None,
        }
    }

    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn should_report(&mut self, now: Instant) -> bool {
        let report = self
            .reported_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if report {
            self.reported_at = Some(now);
        }
        report
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

/// What clients and the lobby logic need to know about a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeDescription {
    pub deployment_id: String,
    pub qualifier: Qualifier,
    pub mode: Option<String>,
    /// The version number.
    pub version: i64,
    /// What `runtime_assigned` carries as `config`.
    pub client_config: serde_json::Value,
    pub max_clients: usize,
    /// The version's modes, for its matchmaker.
    pub modes: Arc<Vec<crate::matchmaker::ModeRules>>,
}

impl RuntimeDescription {
    /// Reads a runtime's description from its records.
    pub async fn load(database: &Database, runtime_id: &str) -> Result<Option<Self>, StorageError> {
        let row = sqlx::query(
            "SELECT r.deployment_id, r.qualifier, r.mode, v.number, v.manifest, d.config \
             FROM runtimes r JOIN deployments d ON d.id = r.deployment_id \
             JOIN versions v ON v.id = d.version_id WHERE r.id = $1",
        )
        .bind(runtime_id)
        .fetch_optional(database.reader())
        .await?;
        Ok(row.map(|row| {
            let manifest: serde_json::Value =
                serde_json::from_str(&row.get::<String, _>(4)).unwrap_or_default();
            let config: serde_json::Value =
                serde_json::from_str(&row.get::<String, _>(5)).unwrap_or_default();
            Self::new(
                row.get(0),
                &row.get::<String, _>(1),
                row.get(2),
                row.get(3),
                &manifest,
                &config,
            )
        }))
    }

    pub fn new(
        deployment_id: String,
        qualifier: &str,
        mode: Option<String>,
        version: i64,
        manifest: &serde_json::Value,
        deployment_config: &serde_json::Value,
    ) -> Self {
        Self {
            deployment_id,
            qualifier: if qualifier == "match" {
                Qualifier::Match
            } else {
                Qualifier::Lobby
            },
            mode,
            version,
            client_config: serde_json::json!({
                "user_data": manifest["user_data"],
                "tick_rate": manifest["runtime"]["tick_rate"],
            }),
            max_clients: deployment_config["max_clients_per_lobby"]
                .as_u64()
                .unwrap_or(100)
                .max(1) as usize,
            modes: Arc::new(serde_json::from_value(manifest["modes"].clone()).unwrap_or_default()),
        }
    }
}

#[derive(Debug)]
struct RuntimeSlot {
    description: Arc<RuntimeDescription>,
    clients: HashSet<Arc<str>>,
    outbox: mpsc::Sender<PlatformMessage>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<PlatformMessage>>>,
    connection: Option<Hold>,
    /// False once the runtime is being stopped: no new clients.
    accepting: bool,
    /// Since when it has had no clients.
    empty_since: Instant,
    /// A match runtime's match, once one is bound to it.
    bound: Option<crate::matchmaker::MatchId>,
    /// A match whose logic ended it: to be stopped.
    finished: bool,
}

impl RuntimeSlot {
    fn new(description: Arc<RuntimeDescription>) -> Self {
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

    fn assignment(&self, runtime_id: &str, group: Option<String>) -> Assignment {
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
    fn remove_client(&mut self, client_id: &str) {
        self.clients.remove(client_id);
        if self.clients.is_empty() {
            self.empty_since = Instant::now();
        }
    }

    fn has_room(&self) -> bool {
        self.accepting
            && self.connection.is_some()
            && self.description.qualifier == Qualifier::Lobby
            && self.clients.len() < self.description.max_clients
    }
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
    journal: mpsc::UnboundedSender<Change>,
    limits: PlayerLimits,
    /// Wakes the supervisor when clients wait for a lobby.
    pub lobby_wanted: Notify,
    /// Wakes the match starter when a formed match waits for a runtime.
    pub match_wanted: Notify,
    /// Cancelled when the platform shuts down: every connection closes.
    pub shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher journalling to `database` (the writer task starts here).
    pub fn new(limits: PlayerLimits, database: Database) -> Self {
        let (journal, changes) = mpsc::unbounded_channel();
        tokio::spawn(journal::write_changes(database, changes));
        Self {
            state: Mutex::default(),
            journal,
            limits,
            lobby_wanted: Notify::new(),
            match_wanted: Notify::new(),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn limits(&self) -> &PlayerLimits {
        &self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dispatcher lock")
    }

    fn record(&self, change: Change) {
        // The writer lives as long as the runtime; a send fails only during teardown.
        let _ = self.journal.send(change);
    }

    /// Waits until every change made so far is in the database.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        self.record(Change::Flush(done));
        let _ = written.await;
    }

    /// After a restart: the clients this node held, as disconnected, so that they can
    /// reconnect within the grace period; those assigned to a runtime that has ended go back to
    /// a lobby when they do.
    pub async fn restore(&self, database: &Database, node_id: &str) -> Result<usize, StorageError> {
        let rows = sqlx::query(
            "SELECT c.id, c.user_id, c.player_id, c.deployment_id, c.runtime_id, c.group_name, \
             p.profile, r.status FROM clients c JOIN players p ON p.id = c.player_id \
             LEFT JOIN runtimes r ON r.id = c.runtime_id \
             WHERE c.node_id = $1 AND c.status = 'active'",
        )
        .bind(node_id)
        .fetch_all(database.reader())
        .await?;
        let mut descriptions: HashMap<String, Option<Arc<RuntimeDescription>>> = HashMap::new();
        let count = rows.len();
        for row in rows {
            let runtime_status: Option<String> = row.get(7);
            let mut runtime_id: Option<String> = row.get(4);
            let live = matches!(
                runtime_status.as_deref(),
                Some("starting" | "running" | "stopping")
            );
            if let Some(id) = runtime_id.clone().filter(|_| live) {
                if !descriptions.contains_key(&id) {
                    let description = RuntimeDescription::load(database, &id).await?;
                    descriptions.insert(id.clone(), description.map(Arc::new));
                }
                if let Some(Some(description)) = descriptions.get(&id) {
                    self.state()
                        .runtimes
                        .entry(Arc::from(id.as_str()))
                        .or_insert_with(|| RuntimeSlot::new(description.clone()));
                } else {
                    runtime_id = None;
                }
            } else {
                runtime_id = None;
            }
            self.add_client(NewClient {
                client_id: row.get(0),
                user_id: row.get(1),
                player_id: row.get(2),
                deployment_id: row.get(3),
                group: if runtime_id.is_some() {
                    row.get(5)
                } else {
                    None
                },
                runtime_id,
                profile: serde_json::from_str(&row.get::<String, _>(6)).unwrap_or_default(),
                restored: true,
            });
        }
        Ok(count)
    }

    /// Registers a client that is not connected yet (it has the grace period to connect).
    pub fn add_client(&self, client: NewClient) {
        let (outbox, receiver) = mpsc::channel(self.limits.outbox_events);
        let id: Arc<str> = Arc::from(client.client_id.as_str());
        let mut state = self.state();
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

    /// Puts a client in the least-loaded lobby of its deployment with room, or in the queue
    /// for the next lobby.
    fn find_lobby(&self, state: &mut State, client_id: &Arc<str>) {
        let Some(client) = state.clients.get(client_id) else {
            return;
        };
        let deployment_id = client.deployment_id.clone();
        let lobby = state
            .runtimes
            .iter()
            .filter(|(_, slot)| {
                slot.has_room() && *slot.description.deployment_id == *deployment_id
            })
            .min_by_key(|(_, slot)| slot.clients.len())
            .map(|(id, _)| id.clone());
        match lobby {
            Some(runtime_id) => self.assign(state, client_id, &runtime_id, None),
            None => {
                if let Some(client) = state.clients.get_mut(client_id) {
                    client.waiting = true;
                }
                state
                    .waiting
                    .entry(deployment_id)
                    .or_default()
                    .push_back(client_id.clone());
                self.lobby_wanted.notify_one();
            }
        }
    }

    /// Assigns a client to a runtime: the runtime hears `client_assigned`, the client
    /// `runtime_assigned`.
    fn assign(
        &self,
        state: &mut State,
        client_id: &Arc<str>,
        runtime_id: &Arc<str>,
        group: Option<String>,
    ) {
        let (Some(client), Some(slot)) = (
            state.clients.get_mut(client_id),
            state.runtimes.get_mut(runtime_id),
        ) else {
            return;
        };
        slot.clients.insert(client_id.clone());
        client.runtime = Some(runtime_id.clone());
        client.group = group.clone();
        client.waiting = false;
        let _ = slot.outbox.try_send(PlatformMessage::ClientAssigned {
            client_id: client_id.to_string(),
            user_id: client.user_id.clone(),
            profile: client.profile.clone(),
            group: group.clone(),
        });
        let event = PlayerEvent::RuntimeAssigned(slot.assignment(runtime_id, group.clone()));
        let _ = client.outbox.try_send(Outgoing::event(&event));
        self.record(Change::Assigned {
            client_id: client_id.to_string(),
            runtime_id: Some(runtime_id.to_string()),
            group,
        });
    }

    /// Takes clients off their runtime and sends them to a lobby, telling each why.
    fn back_to_lobby(&self, state: &mut State, client_ids: Vec<Arc<str>>, code: &str, why: &str) {
        for client_id in &client_ids {
            self.leave_matchmaking(state, client_id);
            let Some(client) = state.clients.get_mut(client_id) else {
                continue;
            };
            if let Some(slot) = client
                .runtime
                .take()
                .and_then(|runtime_id| state.runtimes.get_mut(&runtime_id))
            {
                slot.remove_client(client_id);
            }
            client.group = None;
            let _ = client.outbox.try_send(Outgoing::event(&PlayerEvent::Error {
                code: code.to_owned(),
                message: why.to_owned(),
            }));
            self.record(Change::Assigned {
                client_id: client_id.to_string(),
                runtime_id: None,
                group: None,
            });
            self.find_lobby(state, client_id);
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

    fn delete_locked(
        &self,
        state: &mut State,
        client_id: &str,
        reason: &str,
        message: Option<String>,
        cut: bool,
    ) {
        let Some((key, client)) = state.clients.remove_entry(client_id) else {
            return;
        };
        self.leave_matchmaking(state, &key);
        if let Some(slot) = client
            .runtime
            .as_ref()
            .and_then(|runtime_id| state.runtimes.get_mut(runtime_id))
        {
            slot.remove_client(&key);
            let _ = slot.outbox.try_send(PlatformMessage::ClientRemoved {
                client_id: client_id.to_owned(),
                reason: reason.to_owned(),
            });
        }
        if let Some(runtime_id) = &client.runtime {
            // Room was made: a client waiting for a lobby may take it.
            self.admit_waiting(state, runtime_id);
        }
        if client.waiting {
            if let Some(queue) = state.waiting.get_mut(&client.deployment_id) {
                queue.retain(|waiting| *waiting != key);
            }
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

    // ---- runtimes ----

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

    /// Lets waiting clients of the lobby's deployment in, while it has room.
    fn admit_waiting(&self, state: &mut State, runtime_id: &Arc<str>) {
        let Some(slot) = state.runtimes.get(runtime_id) else {
            return;
        };
        let deployment_id: Arc<str> = Arc::from(slot.description.deployment_id.as_str());
        while state
            .runtimes
            .get(runtime_id)
            .is_some_and(RuntimeSlot::has_room)
        {
            let Some(client_id) = state
                .waiting
                .get_mut(&deployment_id)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            if state.clients.contains_key(&client_id) {
                self.assign(state, &client_id, runtime_id, None);
            }
        }
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

    /// Stops sending new clients to a lobby, if it has none: true when it may be stopped.
    pub fn retire_if_empty(&self, runtime_id: &str) -> bool {
        let mut state = self.state();
        match state.runtimes.get_mut(runtime_id) {
            Some(slot) if slot.clients.is_empty() => {
                slot.accepting = false;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Connected lobbies of a deployment that have had no clients for `idle`, oldest-empty
    /// first.
    pub fn idle_lobbies(&self, deployment_id: &str, idle: Duration) -> Vec<String> {
        let state = self.state();
        let mut idle_lobbies: Vec<(&Arc<str>, Instant)> = state
            .runtimes
            .iter()
            .filter(|(_, slot)| {
                slot.description.deployment_id == deployment_id
                    && slot.description.qualifier == Qualifier::Lobby
                    && slot.accepting
                    && slot.connection.is_some()
                    && slot.clients.is_empty()
                    && slot.empty_since.elapsed() >= idle
            })
            .map(|(id, slot)| (id, slot.empty_since))
            .collect();
        idle_lobbies.sort_by_key(|(_, since)| *since);
        idle_lobbies
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Deployments with clients waiting for a lobby.
    pub fn lobby_demand(&self) -> Vec<LobbyDemand> {
        let state = self.state();
        state
            .waiting
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(deployment_id, queue)| LobbyDemand {
                deployment_id: deployment_id.to_string(),
                waiting: queue.len(),
                max_clients: state
                    .runtimes
                    .values()
                    .find(|slot| *slot.description.deployment_id == **deployment_id)
                    .map(|slot| slot.description.max_clients),
            })
            .collect()
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
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_second_of_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 10.0,
            refilled_at: start,
            reported_at: None,
        };
        let passed = (0..20).filter(|_| bucket.take(10, start)).count();
        assert_eq!(passed, 10);
        assert!(!bucket.take(10, start + Duration::from_millis(50)));
        assert!(bucket.take(10, start + Duration::from_millis(150)));
        assert!(bucket.should_report(start));
        assert!(!bucket.should_report(start + Duration::from_millis(500)));
        assert!(bucket.should_report(start + Duration::from_millis(1500)));
    }
}

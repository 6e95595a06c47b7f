//! The player protocol (version 1): what a game client and the platform say to each other over
//! the player WebSocket (or its long-poll fallback). `docs/protocol.md` describes it for
//! implementers; these types are its reference.
//!
//! A client is created over HTTP (`POST .../stages/{stage}/clients` with a player token), then
//! opens `GET /api/v1/clients/{client_id}/ws`. Text frames carry one JSON object each: events
//! from the platform ([`PlayerEvent`]), commands from the client ([`PlayerCommand`]). Binary
//! frames are messages passed through untouched, in both directions.

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol of this version. A client may offer it; the platform answers with
/// it when offered.
pub const SUBPROTOCOL: &str = "rally.player.v1";

/// A client that cannot set an `Authorization` header (browsers, HTML5 builds) offers its access
/// token as a second subprotocol: this prefix followed by the token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "rally.token.";

/// The socket path of a client.
pub fn socket_path(client_id: &str) -> String {
    format!("/api/v1/clients/{client_id}/ws")
}

/// The close code of a socket opened on a node that does not serve the client
/// (`docs/nodes.md`): the close reason is the base URL of the node that does. Open the socket
/// there, with the same path and token; the client is resumed as it was.
pub const CLOSE_MOVED: u16 = 4010;

/// The error code of a long-poll request (or a client request) sent to a node that does not
/// serve the client, with HTTP 421; `details.node_url` names the node that does.
pub const WRONG_NODE: &str = "wrong_node";

/// The `ws://` or `wss://` address of a path on a platform at `base_url` (`http://` or
/// `https://`), or `None` for another scheme.
pub fn websocket_url(base_url: &str, path: &str) -> Option<String> {
    let base = base_url.trim_end_matches('/');
    if let Some(authority) = base.strip_prefix("http://") {
        Some(format!("ws://{authority}{path}"))
    } else {
        base.strip_prefix("https://")
            .map(|authority| format!("wss://{authority}{path}"))
    }
}

/// What the runtime a client is assigned to runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Lobby,
    Match,
}

/// The runtime a client is assigned to, as `runtime_assigned` and `greeted` carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub runtime_id: String,
    pub qualifier: RuntimeKind,
    /// The mode of a match; `None` in a lobby.
    pub mode: Option<String>,
    /// The client's team in a match; `None` in a lobby.
    pub group: Option<String>,
    /// The deployment's version number.
    pub version: i64,
    /// The version's free `user_data` and its `tick_rate`, so a client can adapt to the logic
    /// it talks to.
    pub config: ClientConfig,
}

/// What a client learns about the logic of the runtime it is assigned to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientConfig {
    /// The manifest's free `user_data` (a JSON object).
    pub user_data: serde_json::Value,
    /// Ticks per second of the runtime's authoritative loop.
    pub tick_rate: u32,
}

/// Limits the platform applies to this client, announced in `greeted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// Largest frame (text or binary) the client may send, in bytes.
    pub max_frame_bytes: u32,
    /// Sustained messages per second; bursts of up to one second's worth pass.
    pub messages_per_sec: u32,
    /// How long a dropped client may take to reconnect with its client id.
    pub reconnect_grace_secs: u32,
}

/// Platform → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlayerEvent {
    /// First event of every connection.
    Greeted {
        client_id: String,
        user_id: String,
        deployment_id: String,
        /// True when this connection resumes a client that was connected before.
        resumed: bool,
        /// The current assignment when resuming one; else a `runtime_assigned` follows.
        runtime: Option<Assignment>,
        /// The platform pings this often and drops a connection silent for twice as long.
        heartbeat_secs: u32,
        limits: Limits,
    },
    /// The client now talks to this runtime (a lobby, later a match).
    RuntimeAssigned(Assignment),
    /// A text message from the runtime. (Binary messages arrive as binary frames; over
    /// long-poll as `binary`, base64.)
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    /// Something the client sent was refused, or something happened to it; the connection
    /// stays open.
    Error { code: String, message: String },
    /// A matchmaking request of the lobby logic for this client ended without a match
    /// (`reason`: `timeout`, or `no_runtime` when no match runtime could be started); the
    /// client stays in its lobby.
    MatchmakingFailed { mode: String, reason: String },
    /// The client is gone; the connection closes after this event. `reason` is a stable code
    /// (`left`, `kicked`, `disconnected`, `slow_reader`, ...), `message` may explain it.
    ClientDeleted {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// Client → platform (text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlayerCommand {
    /// A message for the client's runtime: `text`, or over long-poll `binary` (base64).
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    /// Ends the client now (reason `left`) instead of after the reconnect grace period.
    Leave,
}

/// `POST /api/v1/tenants/{tenant}/projects/{project}/stages/{stage}/clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedClient {
    pub client_id: String,
    pub user_id: String,
    pub player_id: String,
    pub deployment_id: String,
    /// The version number the client will play.
    pub version: i64,
    /// Path of the client's WebSocket, relative to the platform's base URL.
    pub socket_path: String,
    /// Set when another node serves the client (several nodes, `docs/nodes.md`): its base URL,
    /// where the socket (or the long-poll) goes. Absent: the node that answered serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_url: Option<String>,
}

impl CreatedClient {
    /// The `ws://`/`wss://` address of the client's socket, given the base URL this client was
    /// created through.
    pub fn socket_url(&self, base_url: &str) -> Option<String> {
        websocket_url(
            self.node_url.as_deref().unwrap_or(base_url),
            &self.socket_path,
        )
    }
}

/// `GET /api/v1/clients/{client}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientInfo {
    pub client_id: String,
    pub user_id: String,
    pub deployment_id: String,
    /// `active` or `deleted`.
    pub status: String,
    pub connected: bool,
    pub runtime: Option<Assignment>,
    /// Why a deleted client was deleted.
    pub reason: Option<String>,
}

/// A player: the user within one stage, with the profile its game logic keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Player {
    pub player_id: String,
    pub user_id: String,
    pub stage_id: String,
    pub profile: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One event of a long-poll answer, numbered per client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolledEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: PlayerEvent,
}

/// `GET /api/v1/clients/{client}/events?after=N&wait_ms=M`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolledEvents {
    pub events: Vec<PolledEvent>,
    /// False once the client is deleted (the last event says why).
    pub open: bool,
}

/// `POST /api/v1/clients/{client}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandBatch {
    pub commands: Vec<PlayerCommand>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_socket_is_on_the_node_that_serves_it() {
        let mut created = CreatedClient {
            client_id: "c1".into(),
            user_id: "u".into(),
            player_id: "p".into(),
            deployment_id: "d".into(),
            version: 1,
            socket_path: socket_path("c1"),
            node_url: None,
        };
        assert_eq!(
            created.socket_url("https://play.example/").as_deref(),
            Some("wss://play.example/api/v1/clients/c1/ws")
        );
        created.node_url = Some("http://10.0.0.6:7350".into());
        assert_eq!(
            created.socket_url("https://play.example").as_deref(),
            Some("ws://10.0.0.6:7350/api/v1/clients/c1/ws")
        );
        assert_eq!(websocket_url("ftp://x", "/p"), None);
        let text = serde_json::to_string(&CreatedClient {
            node_url: None,
            ..created
        })
        .unwrap();
        assert!(!text.contains("node_url"), "{text}");
    }

    #[test]
    fn events_and_commands_are_tagged_by_type() {
        let event = PlayerEvent::Message {
            text: Some("hi".into()),
            binary: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"message","text":"hi"}"#
        );
        let command: PlayerCommand =
            serde_json::from_str(r#"{"type":"message","text":"hello"}"#).unwrap();
        assert_eq!(
            command,
            PlayerCommand::Message {
                text: Some("hello".into()),
                binary: None
            }
        );
        let polled = PolledEvent {
            seq: 3,
            event: PlayerEvent::ClientDeleted {
                reason: "left".into(),
                message: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&polled).unwrap(),
            r#"{"seq":3,"type":"client_deleted","reason":"left"}"#
        );
    }
}

//! The runtime protocol (version 1): what the platform and a runtime (a lobby or a match of a
//! game's logic) say to each other over the runtime WebSocket. `docs/protocol.md` describes it
//! for implementers in other languages; these types are its reference.
//!
//! Every WebSocket text frame carries one [`Frame`]: a batch of messages, so that a busy
//! runtime sends one frame per tick rather than one per message. Payloads for players are
//! [`Payload`]s: text as is, binary as base64.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol naming the version, offered by the runtime when it connects.
pub const SUBPROTOCOL: &str = "rally.runtime.v1";

/// Bytes a runtime link reads from its socket at a time, on either end. Tungstenite's default
/// (128 KiB) is zero-filled before every read: most of a fresh runtime's time on its socket, and
/// the platform's too, for frames of a few hundred bytes. Bigger frames take more reads.
pub const SOCKET_READ_BUFFER: usize = 16 * 1024;

/// How a `rally-runtime` process ends. The numbers are its exit codes (docs/protocol.md §6);
/// the platform reads them back with [`Exit::from_code`] to say why a runtime ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped as asked (`stop_requested` or SIGTERM).
    Stopped = 0,
    /// The environment or command line is wrong.
    Usage = 2,
    /// The bundle cannot be loaded: invalid, or its logic does not compile.
    BadBundle = 3,
    /// The platform refused the runtime's credentials (unknown, used or revoked).
    CredentialsRefused = 4,
    /// The platform could not be reached for longer than the reconnect window.
    PlatformLost = 5,
    /// The platform speaks a protocol version this runtime does not.
    ProtocolMismatch = 6,
    /// A handler ran past its time limit where it could not be interrupted (the runtime's
    /// watchdog ended it); the game state it held is lost.
    HandlerStuck = 7,
}

impl Exit {
    const ALL: [Exit; 7] = [
        Exit::Stopped,
        Exit::Usage,
        Exit::BadBundle,
        Exit::CredentialsRefused,
        Exit::PlatformLost,
        Exit::ProtocolMismatch,
        Exit::HandlerStuck,
    ];

    /// The exit code a process ends with.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The documented exit for `code`, if it is one.
    pub fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL
            .into_iter()
            .find(|exit| i32::from(exit.code()) == code)
    }

    /// What the exit means, for operators.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Stopped => "stopped as asked",
            Exit::Usage => "bad environment or command line",
            Exit::BadBundle => "the bundle cannot be loaded",
            Exit::CredentialsRefused => "the platform refused its credentials",
            Exit::PlatformLost => "the platform was unreachable past the reconnect window",
            Exit::ProtocolMismatch => "protocol version mismatch",
            Exit::HandlerStuck => {
                "a handler ran past its time limit where it could not be interrupted"
            }
        }
    }
}

/// Environment variables a runtime process is started with.
pub mod env {
    /// The runtime's id (a UUID).
    pub const RUNTIME_ID: &str = "RALLY_RUNTIME_ID";
    /// The runtime's secret, exchanged for a token at `POST /api/v1/runtime/token`.
    pub const RUNTIME_SECRET: &str = "RALLY_RUNTIME_SECRET";
    /// `lobby` or `match`.
    pub const QUALIFIER: &str = "RALLY_RUNTIME_QUALIFIER";
    /// The platform's base URL, e.g. `http://127.0.0.1:7350`.
    pub const PLATFORM_URL: &str = "RALLY_PLATFORM_URL";
    /// A bundle on local disk (a directory or a tar.gz); when unset the runtime fetches its
    /// version's bundle from the platform.
    pub const BUNDLE: &str = "RALLY_BUNDLE";
}

/// The launcher protocol: the platform's local-process pool keeps one `rally-runtime launcher`
/// process and asks it, on its standard input, to start runtimes; the launcher forks each one
/// from itself (no new program to load) and reports, on its standard output, the pid of each
/// runtime it started and the exit of each that ended. One JSON object per line either way.
pub mod launch {
    use super::Qualifier;
    use serde::{Deserialize, Serialize};
    use std::path::PathBuf;

    /// The argument that makes `rally-runtime` a launcher.
    pub const COMMAND: &str = "launcher";

    /// Start one runtime: what a runtime process otherwise reads from its environment, and the
    /// file its output goes to.
    #[derive(Clone, Serialize, Deserialize)]
    pub struct Start {
        pub runtime_id: String,
        pub secret: String,
        pub qualifier: Qualifier,
        pub platform_url: String,
        /// The version's bundle on local disk (a directory or a tar.gz).
        pub bundle: PathBuf,
        /// The runtime's log: its standard output and error, appended to.
        pub log: PathBuf,
        /// The deployment's CPU and memory limits for the runtime; none for no limits.
        #[serde(default)]
        pub limits: Option<ResourceLimits>,
    }

    /// What one runtime may use (`runtime_cpu_millis`, `runtime_memory_mb`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ResourceLimits {
        /// Thousandths of a core.
        pub cpu_millis: u32,
        pub memory_mb: u32,
    }

    impl std::fmt::Debug for Start {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Start")
                .field("runtime_id", &self.runtime_id)
                .field("qualifier", &self.qualifier)
                .field("platform_url", &self.platform_url)
                .field("bundle", &self.bundle)
                .field("log", &self.log)
                .field("limits", &self.limits)
                .finish_non_exhaustive()
        }
    }

    /// What the launcher reports.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Report {
        /// The runtime's process exists.
        Started { runtime_id: String, pid: u32 },
        /// The runtime's process could not be created.
        Failed { runtime_id: String, error: String },
        /// A process the launcher started has ended; `exit_code` is `None` when a signal ended
        /// it. Always after its `Started`.
        Exited {
            pid: u32,
            exit_code: Option<i32>,
            /// Why, when the launcher knows more than the code: the kernel killed the runtime
            /// for its memory limit.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            reason: Option<String>,
        },
    }
}

/// Which logic a runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Qualifier {
    Lobby,
    Match,
}

impl Qualifier {
    pub fn as_str(self) -> &'static str {
        match self {
            Qualifier::Lobby => "lobby",
            Qualifier::Match => "match",
        }
    }
}

/// A message for or from a player: text frames stay text, binary frames stay binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    Text(String),
    /// Base64 (standard alphabet, padded) of the bytes.
    Binary(String),
}

impl Payload {
    /// Size in bytes of what the player sends or receives.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(text) => text.len(),
            Payload::Binary(base64) => base64.len() / 4 * 3,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One WebSocket text frame: messages in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame<M> {
    pub messages: Vec<M>,
}

/// `POST /api/v1/runtime/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuntimeTokenRequest {
    pub runtime_id: String,
    pub secret: String,
}

/// Platform → runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlatformMessage {
    /// First message on every connection.
    Hello {
        protocol: u32,
        runtime_id: String,
        /// The platform closes a connection silent for twice this long; the runtime pings at
        /// least this often (WebSocket ping frames count).
        heartbeat_secs: u32,
    },
    /// Once per runtime life, after the first `hello` (not again on reconnect).
    RuntimeCreated {
        qualifier: Qualifier,
        /// The version's manifest.
        manifest: Box<crate::manifest::Manifest>,
        /// The deployment's effective config.
        config: Box<crate::manifest::DeploymentConfig>,
        /// The manifest's `user_data`, for convenience.
        user_data: serde_json::Value,
        /// The mode of a match; `None` for lobbies.
        mode: Option<String>,
    },
    ClientAssigned {
        client_id: String,
        user_id: String,
        profile: serde_json::Value,
        /// The team of a match client; `None` in lobbies.
        group: Option<String>,
    },
    ClientRemoved {
        client_id: String,
        /// `left`, `kicked`, `matched`, `match_ended`, `timeout`, ...
        reason: String,
    },
    MessageReceived {
        client_id: String,
        payload: Payload,
    },
    /// Finish up: the runtime has until `deadline_ms` (milliseconds from now) before it is
    /// stopped.
    StopRequested {
        deadline_ms: u64,
    },
    /// A command was refused; the runtime goes on.
    Error {
        code: String,
        message: String,
    },
}

/// Runtime → platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuntimeCommand {
    RespondClient {
        client_id: String,
        payload: Payload,
    },
    Multicast {
        client_ids: Vec<String>,
        payload: Payload,
    },
    /// To every client assigned to this runtime.
    Broadcast {
        payload: Payload,
    },
    SetProfile {
        client_id: String,
        profile: serde_json::Value,
    },
    KickClient {
        client_id: String,
        reason: String,
    },
    RequestMatchmaking {
        client_id: String,
        mode: String,
    },
    /// Ends the match: its clients go back to a lobby.
    StopMatch {
        reason: String,
    },
    Log {
        level: LogLevel,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let frame = Frame {
            messages: vec![RuntimeCommand::RespondClient {
                client_id: "c1".into(),
                payload: Payload::Text("hi".into()),
            }],
        };
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            json,
            r#"{"messages":[{"type":"respond_client","client_id":"c1","payload":{"text":"hi"}}]}"#
        );
        let back: Frame<RuntimeCommand> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, frame);
    }
}

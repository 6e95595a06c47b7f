//! The runtime protocol (version 2): what the platform and a runtime (a lobby or a match of a
//! game's logic) say to each other over the runtime WebSocket. `docs/protocol.md` describes it
//! for implementers in other languages; these types are its reference.
//!
//! Every WebSocket frame carries one [`Frame`]: a batch of messages, so that a busy runtime
//! sends one frame per tick rather than one per message. Payloads for players are
//! [`Payload`]s: text, or bytes. A frame whose payloads are all text is a text frame of JSON; a
//! frame with binary payloads is a binary *envelope* (see [`encode_frame`]) that carries the
//! bytes as they are, after the JSON, so that binary messages are never base64-encoded between
//! the platform and a runtime.

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;

pub use bytes::Bytes;

/// The protocol version this crate speaks. Version 2 added binary envelopes.
pub const PROTOCOL_VERSION: u32 = 2;

/// The WebSocket subprotocol naming the version, offered by the runtime when it connects.
pub const SUBPROTOCOL: &str = "rally.runtime.v2";

/// Bytes a runtime link reads from its socket at a time, on either end. Tungstenite's default
/// (128 KiB) is zero-filled before every read: most of a fresh runtime's time on its socket, and
/// the platform's too, for frames of a few hundred bytes. Bigger frames take more reads.
pub const SOCKET_READ_BUFFER: usize = 16 * 1024;

/// What `rally-runtime check <bundle>` prints on stderr when the bundle fails ([`Exit::BadBundle`]):
/// one problem a line, each after [`check::PREFIX`]; a broken rule of `rally.toml` is further
/// marked with [`check::MANIFEST`]. The platform and the CLI read the report back with
/// [`check::problems`].
pub mod check {
    pub const PREFIX: &str = "rally-runtime: ";
    pub const MANIFEST: &str = "rally.toml: ";

    /// Each problem of a report, without its prefix.
    pub fn problems(report: &str) -> impl Iterator<Item = &str> {
        report
            .lines()
            .map(|line| {
                let line = line.trim();
                line.strip_prefix(PREFIX).unwrap_or(line)
            })
            .filter(|line| !line.is_empty())
    }
}

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

/// The launcher protocol: a `rally-runtime launcher` process is asked, on its standard input,
/// to start runtimes; it forks each one from itself (no new program to load) and reports, on its
/// standard output, the pid of each runtime it started and the exit of each that ended. One JSON
/// object per line either way. The platform's local-process pool keeps one launcher on its own
/// machine; a Docker pool in launcher placement keeps one per server and version, in a container,
/// and also asks it to signal its runtimes ([`Request::Signal`]), to list them after a restart of
/// the platform ([`Request::List`]), and to relay their output ([`Report::Output`]), since
/// neither the runtimes' pids nor their files are reachable from outside the container.
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
        /// The runtime's log: its standard output and error, appended to. When absent, the
        /// launcher relays the runtime's output line by line as [`Report::Output`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub log: Option<PathBuf>,
        /// The deployment's CPU and memory limits for the runtime; none for no limits.
        #[serde(default)]
        pub limits: Option<ResourceLimits>,
        /// A program runtime's program: the launcher runs it, in `bundle` (then the unpacked
        /// bundle's directory), with the runtime's environment, instead of running the logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub program: Option<PathBuf>,
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

    /// A line the launcher reads: a start (a bare [`Start`] object, as the first version of the
    /// protocol had it), `{"signal": {...}}` or `{"list": {}}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Request {
        Signal { signal: SignalRuntime },
        List { list: ListRuntimes },
        Start(Box<Start>),
    }

    /// Signal a runtime the launcher started: sent only while `pid` is still `runtime_id`'s, so
    /// a reused pid is never signalled.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SignalRuntime {
        pub runtime_id: String,
        pub pid: u32,
        /// Ends the runtime at once (SIGKILL) rather than asking it to stop (SIGTERM).
        #[serde(default)]
        pub kill: bool,
    }

    /// Ask for [`Report::Running`].
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ListRuntimes {}

    /// One runtime a launcher runs.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RunningRuntime {
        pub runtime_id: String,
        pub pid: u32,
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
        /// A line a runtime started without a log file printed (its end of line removed; a
        /// line longer than [`OUTPUT_LINE_MAX`] bytes comes in parts). A runtime's lines all
        /// come before its `Exited`.
        Output { runtime_id: String, line: String },
        /// The answer to [`Request::List`]: every runtime the launcher started and has not
        /// reaped.
        Running { runtimes: Vec<RunningRuntime> },
    }

    /// Longest piece of output one [`Report::Output`] carries, in bytes.
    pub const OUTPUT_LINE_MAX: usize = 8 * 1024;
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

    /// The qualifier [`Self::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "lobby" => Some(Qualifier::Lobby),
            "match" => Some(Qualifier::Match),
            _ => None,
        }
    }
}

/// A message for or from a player: text frames stay text, binary frames stay binary.
///
/// As JSON it is `{"text": "..."}` or `{"binary": "<base64>"}`; inside a binary envelope a
/// binary payload is `{"attachment": <index>}` and its bytes travel after the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Bytes),
}

impl Payload {
    /// Size in bytes of what the player sends or receives.
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(text) => text.len(),
            Payload::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    /// While [`encode_frame`] serialises: the bytes of binary payloads, in order. While
    /// [`decode_frame`] reads an envelope: its attachments.
    static ATTACHMENTS: RefCell<Option<Vec<Bytes>>> = const { RefCell::new(None) };
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Payload::Text(text) => map.serialize_entry("text", text)?,
            Payload::Binary(bytes) => {
                let attachment = ATTACHMENTS.with_borrow_mut(|attachments| {
                    attachments.as_mut().map(|attachments| {
                        attachments.push(bytes.clone());
                        attachments.len() - 1
                    })
                });
                match attachment {
                    Some(index) => map.serialize_entry("attachment", &index)?,
                    None => map.serialize_entry("binary", &base64_encode(bytes))?,
                }
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;

        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Payload;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str(r#"{"text": ...}, {"binary": base64} or {"attachment": n}"#)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("a payload has one key"))?;
                let payload = match key.as_str() {
                    "text" => Payload::Text(map.next_value()?),
                    "binary" => {
                        let text: String = map.next_value()?;
                        let bytes = base64_decode(&text)
                            .ok_or_else(|| de::Error::custom("a binary payload is base64"))?;
                        Payload::Binary(bytes.into())
                    }
                    "attachment" => {
                        let index: usize = map.next_value()?;
                        let bytes = ATTACHMENTS.with_borrow(|attachments| {
                            attachments
                                .as_ref()
                                .and_then(|attachments| attachments.get(index).cloned())
                        });
                        Payload::Binary(bytes.ok_or_else(|| {
                            de::Error::custom(format!("no attachment {index} in this frame"))
                        })?)
                    }
                    other => {
                        return Err(de::Error::unknown_field(
                            other,
                            &["text", "binary", "attachment"],
                        ))
                    }
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("a payload has one key"));
                }
                Ok(payload)
            }
        }

        deserializer.deserialize_map(PayloadVisitor)
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// One WebSocket frame: messages in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame<M> {
    pub messages: Vec<M>,
}

/// A frame as it goes on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// JSON, when no payload is binary.
    Text(String),
    /// A binary envelope: a 4-byte big-endian length `n`, `n` bytes of the frame's JSON in
    /// which binary payloads are `{"attachment": i}`, then each attachment `i` in order as a
    /// 4-byte big-endian length and its bytes.
    Binary(Vec<u8>),
}

/// Largest frame either side sends, and the most the platform reads.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

impl Encoded {
    /// Its size on the socket.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Text(text) => text.len(),
            Encoded::Binary(envelope) => envelope.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes `messages` in order as frames of at most [`MAX_FRAME_BYTES`]: one frame, unless they
/// do not fit in one. (A single message larger than that stays one frame; the payload limits
/// keep messages far smaller.)
pub fn encode_frames<M: Serialize>(messages: &[M]) -> Vec<Encoded> {
    let encoded = encode_frame(messages);
    if encoded.len() <= MAX_FRAME_BYTES || messages.len() <= 1 {
        return vec![encoded];
    }
    let (first, second) = messages.split_at(messages.len() / 2);
    let mut frames = encode_frames(first);
    frames.extend(encode_frames(second));
    frames
}

/// Encodes `messages` as one frame: text when every payload is text, else a binary envelope
/// that carries the binary payloads as they are.
pub fn encode_frame<M: Serialize>(messages: &[M]) -> Encoded {
    #[derive(Serialize)]
    struct Borrowed<'a, M> {
        messages: &'a [M],
    }
    let scope = AttachmentsScope::enter(Vec::new());
    let json = serde_json::to_vec(&Borrowed { messages });
    let attachments = scope.leave();
    let json = json.expect("protocol messages serialise");
    if attachments.is_empty() {
        return Encoded::Text(String::from_utf8(json).expect("JSON is UTF-8"));
    }
    let size = 4 + json.len() + attachments.iter().map(|a| 4 + a.len()).sum::<usize>();
    let mut envelope = Vec::with_capacity(size);
    envelope.extend_from_slice(&(json.len() as u32).to_be_bytes());
    envelope.extend_from_slice(&json);
    for attachment in &attachments {
        envelope.extend_from_slice(&(attachment.len() as u32).to_be_bytes());
        envelope.extend_from_slice(attachment);
    }
    Encoded::Binary(envelope)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the binary envelope is cut short or malformed")]
    Envelope,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a text frame.
pub fn decode_text_frame<M: DeserializeOwned>(text: &str) -> Result<Frame<M>, FrameError> {
    Ok(serde_json::from_str(text)?)
}

/// Reads a binary envelope (see [`Encoded::Binary`]); its attachments become the binary
/// payloads, without a copy when they are most of the envelope.
pub fn decode_binary_frame<M: DeserializeOwned>(envelope: Bytes) -> Result<Frame<M>, FrameError> {
    let length = |at: usize| -> Result<usize, FrameError> {
        let prefix = envelope.get(at..at + 4).ok_or(FrameError::Envelope)?;
        Ok(u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize)
    };
    let json_length = length(0)?;
    let json_end = 4usize
        .checked_add(json_length)
        .filter(|end| *end <= envelope.len())
        .ok_or(FrameError::Envelope)?;
    let mut attachments = Vec::new();
    let mut at = json_end;
    while at < envelope.len() {
        let size = length(at)?;
        let end = (at + 4)
            .checked_add(size)
            .filter(|end| *end <= envelope.len())
            .ok_or(FrameError::Envelope)?;
        // An attachment that is the bulk of its envelope shares it; a small one is copied, so
        // that a few bytes kept in a slow player's queue do not keep a whole envelope alive.
        let attachment = if size >= envelope.len() / 2 {
            envelope.slice(at + 4..end)
        } else {
            Bytes::copy_from_slice(&envelope[at + 4..end])
        };
        attachments.push(attachment);
        at = end;
    }
    let scope = AttachmentsScope::enter(attachments);
    let frame = serde_json::from_slice(&envelope[4..json_end]);
    drop(scope);
    Ok(frame?)
}

/// Sets [`ATTACHMENTS`] for the time it lives and puts back what was there before, also when
/// serde or a `Serialize` implementation panics: the thread never keeps a stale list.
struct AttachmentsScope {
    previous: Option<Option<Vec<Bytes>>>,
}

impl AttachmentsScope {
    fn enter(attachments: Vec<Bytes>) -> Self {
        Self {
            previous: Some(ATTACHMENTS.replace(Some(attachments))),
        }
    }

    /// Ends the scope, returning the list as it is now.
    fn leave(mut self) -> Vec<Bytes> {
        let previous = self.previous.take().expect("left once");
        ATTACHMENTS.replace(previous).unwrap_or_default()
    }
}

impl Drop for AttachmentsScope {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            ATTACHMENTS.replace(previous);
        }
    }
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

    fn received(client_id: &str, payload: Payload) -> PlatformMessage {
        PlatformMessage::MessageReceived {
            client_id: client_id.to_owned(),
            payload,
        }
    }

    /// Protocol §7: fields may be added within a version. A runtime built before the
    /// platform added a manifest key or a config setting still reads `runtime_created`.
    #[test]
    fn runtime_created_from_a_newer_platform_reads_past_fields_it_does_not_know() {
        let text = r#"{"messages":[{"type":"runtime_created","qualifier":"match",
            "manifest":{"runtime":{"kind":"lua","lobby":"l.lua","match":"m.lua","gpu":true},
                "modes":[{"name":"duel","min_players":2,"max_players":2,"ranked":true,
                    "groups":[{"name":"all","min_players":2,"max_players":2,"colour":"red"}]}],
                "deployment":{"min_lobbies":3,"regions":["eu"]},"store":{}},
            "config":{"min_lobbies":3,"autoscale":"fast"},
            "user_data":{},"mode":"duel","node":"n1"}]}"#;
        let frame: Frame<PlatformMessage> = decode_text_frame(text).unwrap();
        let [PlatformMessage::RuntimeCreated {
            manifest, config, ..
        }] = frame.messages.as_slice()
        else {
            panic!("{:?}", frame.messages);
        };
        assert_eq!(manifest.runtime.match_entry, "m.lua");
        assert_eq!(manifest.modes[0].groups[0].name, "all");
        assert_eq!(
            (manifest.deployment.min_lobbies, config.min_lobbies),
            (3, 3)
        );
    }

    #[test]
    fn a_panic_while_encoding_leaves_no_attachment_list_behind() {
        struct Explodes;
        impl Serialize for Explodes {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                panic!("a message that cannot be written");
            }
        }
        #[derive(Serialize)]
        struct Both(Payload, Explodes);
        let both = [Both(Payload::Binary(Bytes::from_static(&[7])), Explodes)];
        let encoding =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode_frame(&both)));
        assert!(encoding.is_err());
        // Outside an envelope a binary payload is base64 again, not a dangling attachment.
        assert_eq!(
            serde_json::to_string(&Payload::Binary(Bytes::from_static(&[1]))).unwrap(),
            r#"{"binary":"AQ=="}"#
        );
    }

    #[test]
    fn small_attachments_do_not_hold_their_envelope() {
        let big = Bytes::from(vec![1u8; 64 * 1024]);
        let messages = [
            received("c1", Payload::Binary(big.clone())),
            received("c2", Payload::Binary(Bytes::from_static(b"tiny"))),
        ];
        let Encoded::Binary(envelope) = encode_frame(&messages) else {
            panic!("an envelope");
        };
        let envelope = Bytes::from(envelope);
        let inside = |bytes: &Bytes| envelope.as_ptr_range().contains(&bytes.as_ptr());
        let frame: Frame<PlatformMessage> = decode_binary_frame(envelope.clone()).unwrap();
        assert_eq!(frame.messages, messages);
        let payload = |index: usize| match &frame.messages[index] {
            PlatformMessage::MessageReceived {
                payload: Payload::Binary(bytes),
                ..
            } => bytes.clone(),
            other => panic!("{other:?}"),
        };
        assert!(inside(&payload(0)), "the bulk of the envelope is shared");
        assert!(!inside(&payload(1)), "a few bytes are copied out");
    }

    #[test]
    fn text_frames_stay_json_text() {
        let messages = [received("c1", Payload::Text("hi".to_owned()))];
        let Encoded::Text(text) = encode_frame(&messages) else {
            panic!("a frame without bytes is text");
        };
        assert_eq!(
            text,
            r#"{"messages":[{"type":"message_received","client_id":"c1","payload":{"text":"hi"}}]}"#
        );
        let frame: Frame<PlatformMessage> = decode_text_frame(&text).unwrap();
        assert_eq!(frame.messages, messages);
    }

    #[test]
    fn binary_payloads_travel_as_they_are_in_an_envelope() {
        let bytes = Bytes::from_static(&[0, 1, 2, 255]);
        let messages = [
            received("c1", Payload::Binary(bytes.clone())),
            received("c2", Payload::Text("between".to_owned())),
            received("c3", Payload::Binary(Bytes::from_static(b"second"))),
        ];
        let Encoded::Binary(envelope) = encode_frame(&messages) else {
            panic!("a frame with bytes is an envelope");
        };
        // The bytes follow the JSON as they are, each after its length.
        assert!(envelope.ends_with(&[0, 0, 0, 6, b's', b'e', b'c', b'o', b'n', b'd']));
        assert!(envelope
            .windows(8)
            .any(|window| window == [0, 0, 0, 4, 0, 1, 2, 255]));
        let json_length = u32::from_be_bytes(envelope[..4].try_into().unwrap()) as usize;
        let json = std::str::from_utf8(&envelope[4..4 + json_length]).unwrap();
        assert!(json.contains(r#""payload":{"attachment":0}"#), "{json}");
        assert!(json.contains(r#""payload":{"attachment":1}"#), "{json}");
        let frame: Frame<PlatformMessage> = decode_binary_frame(Bytes::from(envelope)).unwrap();
        assert_eq!(frame.messages, messages);
        // Outside an envelope the same payload is base64, as in version 1.
        assert_eq!(
            serde_json::to_string(&Payload::Binary(bytes.clone())).unwrap(),
            r#"{"binary":"AAEC/w=="}"#
        );
        let parsed: Payload = serde_json::from_str(r#"{"binary":"AAEC/w=="}"#).unwrap();
        assert_eq!(parsed, Payload::Binary(bytes));
    }

    #[test]
    fn a_batch_too_big_for_one_frame_is_split_in_order() {
        let messages: Vec<PlatformMessage> = (0..600)
            .map(|n| received(&n.to_string(), Payload::Binary(vec![n as u8; 4096].into())))
            .collect();
        let frames = encode_frames(&messages);
        assert!(frames.len() > 1);
        let mut decoded = Vec::new();
        for frame in frames {
            assert!(frame.len() <= MAX_FRAME_BYTES, "{} bytes", frame.len());
            let Encoded::Binary(envelope) = frame else {
                panic!("binary payloads make envelopes");
            };
            decoded.extend(
                decode_binary_frame::<PlatformMessage>(envelope.into())
                    .unwrap()
                    .messages,
            );
        }
        assert_eq!(decoded, messages);
        assert_eq!(encode_frames(&messages[..10]).len(), 1);
    }

    #[test]
    fn broken_envelopes_and_payloads_are_errors() {
        let frame = |bytes: &[u8]| {
            decode_binary_frame::<PlatformMessage>(Bytes::copy_from_slice(bytes)).is_err()
        };
        assert!(frame(&[]), "no length");
        assert!(frame(&[0, 0, 0, 200, b'{']), "JSON cut short");
        let json = br#"{"messages":[{"type":"message_received","client_id":"c","payload":{"attachment":1}}]}"#;
        let mut envelope = (json.len() as u32).to_be_bytes().to_vec();
        envelope.extend_from_slice(json);
        envelope.extend_from_slice(&[0, 0, 0, 1, 7]);
        assert!(frame(&envelope), "an attachment that is not there");
        envelope.truncate(envelope.len() - 1);
        assert!(frame(&envelope), "an attachment cut short");
        for bad in [
            r#"{"binary":"not base64!"}"#,
            r#"{"attachment":0}"#,
            r#"{"text":"a","binary":"AA=="}"#,
            r#"{"sound":"a"}"#,
        ] {
            assert!(serde_json::from_str::<Payload>(bad).is_err(), "{bad}");
        }
    }

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

    #[test]
    fn launcher_requests_keep_the_bare_start_of_the_first_protocol() {
        use super::launch::{Request, SignalRuntime};
        let start = r#"{"runtime_id":"r1","secret":"sekrit","qualifier":"match","platform_url":"http://x","bundle":"/b.tar.gz","log":"/l/r1.log"}"#;
        let Ok(Request::Start(start)) = serde_json::from_str::<Request>(start) else {
            panic!("a bare start is a start");
        };
        assert_eq!(
            start.log.as_deref(),
            Some(std::path::Path::new("/l/r1.log"))
        );
        assert_eq!(start.limits, None);
        let signal = r#"{"signal":{"runtime_id":"r1","pid":7}}"#;
        let Ok(Request::Signal { signal }) = serde_json::from_str::<Request>(signal) else {
            panic!("a signal");
        };
        assert_eq!(
            signal,
            SignalRuntime {
                runtime_id: "r1".into(),
                pid: 7,
                kill: false
            }
        );
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"list":{}}"#),
            Ok(Request::List { .. })
        ));
        // Half a start is nothing the launcher does.
        assert!(serde_json::from_str::<Request>(r#"{"runtime_id":"r1"}"#).is_err());
        // The secret never shows in a start's debug form.
        let start = Request::Start(start);
        assert!(!format!("{start:?}").contains("sekrit"));
    }
}

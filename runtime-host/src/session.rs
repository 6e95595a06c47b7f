//! The runtime's life on the platform: exchange the secret for tokens, hold the runtime
//! WebSocket, feed incoming messages to the engine in order, send what the logic emits (one
//! frame per batch), tick at the version's rate, and reconnect with backoff when the platform
//! goes away, keeping the game state. Ends with an [`Exit`] code the platform and operators
//! can read.

use crate::engine::{Engine, Event, Limits};
use crate::loader::ReadBundle;
use crate::watchdog::Call;
use futures_util::{SinkExt, StreamExt};
use rally_sdk::runtime::{
    decode_binary_frame, decode_text_frame, encode_frames, env, Encoded, Frame, LogLevel,
    PlatformMessage, Qualifier, RuntimeCommand, PROTOCOL_VERSION, SOCKET_READ_BUFFER, SUBPROTOCOL,
};
use rally_sdk::{ClientError, RallyClient};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// How a runtime process ends: the protocol's exit codes.
pub use rally_sdk::runtime::Exit;

/// How long a runtime keeps trying to reach a platform that went away before it gives up:
/// long enough for a platform restart, short enough that a dead platform leaves no orphans.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// The runtime's environment (see `rally_sdk::runtime::env`).
#[derive(Debug, Clone)]
pub struct RuntimeEnv {
    pub runtime_id: String,
    pub secret: String,
    pub qualifier: Qualifier,
    pub platform_url: String,
    pub bundle: PathBuf,
}

impl RuntimeEnv {
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str| {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
        };
        let qualifier = read(env::QUALIFIER)?;
        let qualifier = Qualifier::parse(&qualifier).ok_or_else(|| {
            format!(
                "{} must be lobby or match, not {qualifier:?}",
                env::QUALIFIER
            )
        })?;
        Ok(Self {
            runtime_id: read(env::RUNTIME_ID)?,
            secret: read(env::RUNTIME_SECRET)?,
            qualifier,
            platform_url: read(env::PLATFORM_URL)?,
            bundle: PathBuf::from(read(env::BUNDLE)?),
        })
    }
}

/// One connection's outcome.
enum Ended {
    /// The runtime is done; exit with this.
    Exit(Exit),
    /// The connection broke; reconnect.
    Lost,
}

/// A runtime process's whole life, from its bundle (as [`crate::loader::read_bundle`] read
/// it) to its exit code: load the logic, then [`run`] it on a single-threaded tokio runtime.
pub fn run_process(runtime: RuntimeEnv, bundle: Result<ReadBundle, String>) -> u8 {
    let limits = Limits::default();
    if let Err(error) = crate::watchdog::install(limits.time_per_call()) {
        eprintln!("rally-runtime: cannot start the handler watchdog: {error}");
        return 1;
    }
    let loading = crate::watchdog::watch(Call::Loading);
    let loaded = bundle.and_then(|(manifest, files)| {
        crate::loader::load_files(manifest, files, runtime.qualifier, limits)
    });
    drop(loading);
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(problem) => {
            eprintln!("rally-runtime: cannot load the bundle: {problem}");
            return Exit::BadBundle as u8;
        }
    };
    let tick_rate = loaded.manifest.runtime.tick_rate;
    // One thread: the logic runs events in order, and a runtime is one of many on a host.
    let tokio = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(tokio) => tokio,
        Err(error) => {
            eprintln!("rally-runtime: cannot start: {error}");
            return 1;
        }
    };
    eprintln!(
        "rally-runtime: {} {} starting",
        runtime.qualifier.as_str(),
        runtime.runtime_id
    );
    tokio.block_on(run(runtime, loaded.engine, tick_rate)) as u8
}

/// Runs the runtime until it is stopped or cannot go on.
pub async fn run(runtime: RuntimeEnv, mut engine: Box<dyn Engine>, tick_rate: u32) -> Exit {
    let client = match RallyClient::new(&runtime.platform_url) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("rally-runtime: {error}");
            return Exit::Usage;
        }
    };
    let mut tokens =
        match with_retries(|| client.runtime_token(&runtime.runtime_id, &runtime.secret)).await {
            Ok(tokens) => tokens,
            Err(exit) => return exit,
        };
    let mut state = State {
        started: false,
        tick: Duration::from_secs_f64(1.0 / f64::from(tick_rate.max(1))),
    };
    let mut terminate = terminate_signal();
    let mut lost_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(&runtime.platform_url, &tokens.access_token).await {
            Ok(socket) => {
                lost_since = None;
                backoff = Duration::from_millis(100);
                match session(socket, engine.as_mut(), &mut state, &mut terminate).await {
                    Ended::Exit(exit) => return exit,
                    Ended::Lost => {
                        eprintln!("rally-runtime: connection to the platform lost; reconnecting")
                    }
                }
            }
            Err(error) => eprintln!("rally-runtime: cannot connect to the platform: {error}"),
        }
        let since = *lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_WINDOW {
            eprintln!("rally-runtime: platform unreachable for {RECONNECT_WINDOW:?}; giving up");
            return Exit::PlatformLost;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = terminate.recv() => return stop(engine.as_mut(), &mut state).await,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // A new access token for the new connection; the refresh token rotates.
        match client.refresh(&tokens.refresh_token).await {
            Ok(renewed) => tokens = renewed,
            Err(ClientError::Api {
                status: 401, code, ..
            }) => {
                eprintln!(
                    "rally-runtime: the platform refused to renew the runtime's token ({code})"
                );
                return Exit::CredentialsRefused;
            }
            Err(error) => eprintln!("rally-runtime: cannot renew the token yet: {error}"),
        }
    }
}

struct State {
    started: bool,
    tick: Duration,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(platform_url: &str, access_token: &str) -> Result<Socket, String> {
    let url = format!(
        "{}/api/v1/runtime/ws",
        platform_url
            .trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let mut request = url
        .into_client_request()
        .map_err(|error| error.to_string())?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|error| error.to_string())?,
    );
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let config = WebSocketConfig::default().read_buffer_size(SOCKET_READ_BUFFER);
    // No Nagle delay: a batch of commands is one frame, written at once, and should leave now.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|error| error.to_string())?;
    Ok(socket)
}

/// Serves one connection until it ends.
async fn session(
    mut socket: Socket,
    engine: &mut dyn Engine,
    state: &mut State,
    terminate: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Ended {
    let mut ticks = tokio::time::interval(state.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        let mut commands = Vec::new();
        tokio::select! {
            incoming = socket.next() => {
                let frame: Result<Frame<PlatformMessage>, _> = match incoming {
                    Some(Ok(Message::Text(text))) => decode_text_frame(text.as_str()),
                    Some(Ok(Message::Binary(envelope))) => decode_binary_frame(envelope),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ended::Lost,
                    Some(Ok(_)) => continue,
                };
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(error) => {
                        eprintln!("rally-runtime: unreadable frame from the platform: {error}");
                        continue;
                    }
                };
                for message in frame.messages {
                    match apply(message, engine, state, &mut commands) {
                        Ok(()) => {}
                        Err(exit) => {
                            let _ = send(&mut socket, commands).await;
                            let _ = socket.close(None).await;
                            return Ended::Exit(exit);
                        }
                    }
                }
            }
            _ = ticks.tick(), if state.started => {
                let now = Instant::now();
                let dt = now.duration_since(last_tick).as_secs_f64();
                last_tick = now;
                handle(engine, &Event::Tick { dt }, &mut commands);
            }
            _ = heartbeat.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return Ended::Lost;
                }
            }
            _ = terminate.recv() => {
                handle(engine, &Event::Stopping, &mut commands);
                let _ = send(&mut socket, commands).await;
                let _ = socket.close(None).await;
                return Ended::Exit(Exit::Stopped);
            }
        }
        if send(&mut socket, commands).await.is_err() {
            return Ended::Lost;
        }
    }
}

/// One platform message: the engine's event, or the end of the runtime.
fn apply(
    message: PlatformMessage,
    engine: &mut dyn Engine,
    state: &mut State,
    commands: &mut Vec<RuntimeCommand>,
) -> Result<(), Exit> {
    let event = match message {
        PlatformMessage::Hello { protocol, .. } => {
            if protocol != PROTOCOL_VERSION {
                eprintln!("rally-runtime: the platform speaks protocol {protocol}, this runtime {PROTOCOL_VERSION}");
                return Err(Exit::ProtocolMismatch);
            }
            return Ok(());
        }
        PlatformMessage::RuntimeCreated {
            qualifier,
            config,
            user_data,
            mode,
            ..
        } => {
            if state.started {
                return Ok(());
            }
            state.started = true;
            Event::Started {
                qualifier,
                user_data,
                config: serde_json::to_value(&*config).expect("a deployment config serialises"),
                mode,
            }
        }
        PlatformMessage::ClientAssigned {
            client_id,
            user_id,
            profile,
            group,
        } => Event::ClientAssigned {
            client_id,
            user_id,
            profile,
            group,
        },
        PlatformMessage::ClientRemoved { client_id, reason } => {
            Event::ClientRemoved { client_id, reason }
        }
        PlatformMessage::MessageReceived { client_id, payload } => {
            Event::Message { client_id, payload }
        }
        PlatformMessage::StopRequested { .. } => {
            handle(engine, &Event::Stopping, commands);
            return Err(Exit::Stopped);
        }
        PlatformMessage::Error { code, message } => {
            eprintln!("rally-runtime: the platform refused a command: {code}: {message}");
            return Ok(());
        }
    };
    handle(engine, &event, commands);
    Ok(())
}

/// Runs a handler; a failure is reported (stderr and a `log` command) and the runtime goes on.
/// A call that runs past its time limit where the engine cannot stop it ends the process
/// ([`crate::watchdog`]).
pub fn handle(engine: &mut dyn Engine, event: &Event, commands: &mut Vec<RuntimeCommand>) {
    let _watched = crate::watchdog::watch(Call::Handler);
    if let Err(error) = engine.handle(event, commands) {
        eprintln!("rally-runtime: {error}");
        commands.push(RuntimeCommand::Log {
            level: LogLevel::Error,
            message: error.to_string(),
        });
    }
}

async fn send(socket: &mut Socket, commands: Vec<RuntimeCommand>) -> Result<(), ()> {
    if commands.is_empty() {
        return Ok(());
    }
    for frame in encode_frames(&commands) {
        let message = match frame {
            Encoded::Text(text) => Message::Text(text.into()),
            Encoded::Binary(envelope) => Message::Binary(envelope.into()),
        };
        socket.send(message).await.map_err(drop)?;
    }
    Ok(())
}

/// Stopping while disconnected: the logic still gets `on_stop`.
async fn stop(engine: &mut dyn Engine, _state: &mut State) -> Exit {
    let mut commands = Vec::new();
    handle(engine, &Event::Stopping, &mut commands);
    Exit::Stopped
}

/// Retries transient failures of the first token exchange within the reconnect window.
async fn with_retries<F, Fut>(mut call: F) -> Result<rally_sdk::wire::TokenPair, Exit>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<rally_sdk::wire::TokenPair, ClientError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(tokens) => return Ok(tokens),
            Err(ClientError::Api {
                status: 401, code, ..
            }) => {
                eprintln!("rally-runtime: the platform refused the runtime's credentials ({code})");
                return Err(Exit::CredentialsRefused);
            }
            Err(error) if started.elapsed() < RECONNECT_WINDOW => {
                eprintln!("rally-runtime: cannot reach the platform yet: {error}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                eprintln!("rally-runtime: platform unreachable: {error}");
                return Err(Exit::PlatformLost);
            }
        }
    }
}

/// SIGTERM (and Ctrl-C) as a channel, so that loops can select on it.
fn terminate_signal() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return,
            };
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if sender.send(()).is_err() {
                return;
            }
        }
    });
    receiver
}

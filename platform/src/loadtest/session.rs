//! A player's session with a deployed game, as the scenarios that drive players (`players`,
//! `matchmaking`) set it up: sign-up, sign-in, client, socket, lobby; then events in, commands
//! out, and leaving. Also the waits for a crowd of players to be set up and to leave.

use super::open_files;
use super::stats::Stats;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rally_sdk::player::{PlayerCommand, PlayerEvent, SUBPROTOCOL};
use rally_sdk::RallyClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as SocketError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// From the first request to being in a lobby; beyond it the set-up counts as failed.
const SET_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// For saying goodbye once the measurement is over.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long players get to leave once the measurement is over.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which deployed game the players join, and how fast they are set up.
#[derive(Debug, Args)]
pub(super) struct GameArgs {
    /// Players to connect (in each wave of scenario matchmaking) [default: 100 for players,
    /// 200 for matchmaking].
    #[arg(long)]
    players: Option<u64>,
    /// Players being set up at once; also the size of the HTTP connection pool.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Tenant id or alias of the deployed game.
    #[arg(long, env = "RALLY_TENANT")]
    tenant: Option<String>,
    /// Project id or alias of the deployed game.
    #[arg(long, env = "RALLY_PROJECT")]
    project: Option<String>,
    /// Stage id or alias of the deployed game; several, comma-separated, spread the players
    /// over them in turn (e.g. stages run by different nodes).
    #[arg(
        long,
        env = "RALLY_STAGE",
        default_value = "default",
        value_delimiter = ','
    )]
    stage: Vec<String>,
}

impl GameArgs {
    /// `--players`, or the scenario's `default`; at least one.
    pub fn players(&self, default: u64) -> anyhow::Result<u64> {
        let players = self.players.unwrap_or(default);
        anyhow::ensure!(players > 0, "--players must be at least 1");
        Ok(players)
    }

    /// The game to join through `client`, a client not signed in.
    pub fn game(&self, client: RallyClient) -> anyhow::Result<Game> {
        anyhow::ensure!(
            self.connect_concurrency > 0,
            "--connect-concurrency must be at least 1"
        );
        let tenant = self.tenant.clone().context(
            "this scenario needs the tenant of a deployed game: --tenant or RALLY_TENANT",
        )?;
        let project = self.project.clone().context(
            "this scenario needs the project of a deployed game: --project or RALLY_PROJECT",
        )?;
        Ok(Game {
            client,
            tenant,
            project,
            stages: self.stage.clone(),
            next_stage: AtomicUsize::new(0),
            set_up_slots: Semaphore::new(self.connect_concurrency),
        })
    }

    /// An HTTP client pooling `--connect-concurrency` connections, and the platform at `url`
    /// behind it, checked to answer; fails first when `players` sockets would not fit under the
    /// open-files limit.
    pub async fn platform(
        &self,
        url: &str,
        players: u64,
    ) -> anyhow::Result<(reqwest::Client, RallyClient)> {
        open_files::ensure_room_for(players + self.connect_concurrency as u64)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(self.connect_concurrency)
            .tcp_nodelay(true)
            .build()?;
        let client = RallyClient::with_http_client(http.clone(), url)?;
        client
            .health()
            .await
            .with_context(|| format!("the platform at {url} does not answer"))?;
        Ok((http, client))
    }
}

/// Where every player of a run joins, shared by all of them.
pub(super) struct Game {
    /// Not signed in; shares one connection pool among all players.
    pub client: RallyClient,
    pub tenant: String,
    pub project: String,
    /// Players join these in turn.
    pub stages: Vec<String>,
    next_stage: AtomicUsize,
    /// Bounds how many players are being set up at once.
    pub set_up_slots: Semaphore,
}

/// What a player needs to get its client back after losing its socket: the platform URL it
/// came in by (any node), the client's socket path and the player's token.
pub(super) struct Rejoin {
    entry: String,
    socket_path: String,
    access_token: String,
}

/// Waits for a set-up slot, then joins within [`SET_UP_TIMEOUT`].
pub(super) async fn set_up(game: &Game) -> anyhow::Result<Socket> {
    set_up_again(game).await.map(|(socket, _)| socket)
}

/// The same, with what it takes to rejoin.
pub(super) async fn set_up_again(game: &Game) -> anyhow::Result<(Socket, Rejoin)> {
    let _slot = game.set_up_slots.acquire().await?;
    tokio::time::timeout(SET_UP_TIMEOUT, join(game))
        .await
        .map_err(|_| anyhow!("took longer than {} s", SET_UP_TIMEOUT.as_secs()))?
}

/// The player's client again, after its socket was lost (its node died) or closed with `moved`
/// (its stage moved; `moved_to` is the node to go to): connected and in a lobby, within
/// [`SET_UP_TIMEOUT`]. Until then, a node that cannot be reached or a stage being moved means
/// starting over at the entry URL a moment later.
pub(super) async fn rejoin(rejoin: &Rejoin, moved_to: Option<String>) -> anyhow::Result<Socket> {
    let deadline = Instant::now() + SET_UP_TIMEOUT;
    let mut base = moved_to.unwrap_or_else(|| rejoin.entry.clone());
    let mut last_error = anyhow!("no attempt");
    while Instant::now() < deadline {
        match seat(&base, &rejoin.socket_path, &rejoin.access_token).await {
            Ok(socket) => return Ok(socket),
            Err(error) => match error.downcast::<Moved>() {
                Ok(Moved(node_url)) => base = node_url,
                Err(error) => {
                    last_error = error;
                    base = rejoin.entry.clone();
                    tokio::time::sleep(REJOIN_PAUSE).await;
                }
            },
        }
    }
    Err(last_error.context(format!(
        "could not rejoin within {} s",
        SET_UP_TIMEOUT.as_secs()
    )))
}

/// Between attempts to rejoin.
const REJOIN_PAUSE: Duration = Duration::from_millis(100);

/// The client's socket at the node at `base`, greeted and in a lobby.
async fn seat(base: &str, socket_path: &str, access_token: &str) -> anyhow::Result<Socket> {
    let url = rally_sdk::player::websocket_url(base, socket_path)
        .ok_or_else(|| anyhow!("not an http(s) URL: {base}"))?;
    let mut socket = open_socket(&url, access_token)
        .await
        .with_context(|| format!("open {url}"))?;
    wait_for_lobby(&mut socket).await?;
    Ok(socket)
}

/// A new anonymous user's client, connected and assigned to a lobby.
async fn join(game: &Game) -> anyhow::Result<(Socket, Rejoin)> {
    let stage = &game.stages[game.next_stage.fetch_add(1, Ordering::Relaxed) % game.stages.len()];
    let user = game.client.create_user().await.context("sign-up")?;
    let tokens = game
        .client
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .context("sign-in")?;
    let created = game
        .client
        .authenticated(&tokens.access_token)
        .create_client(&game.tenant, &game.project, stage)
        .await
        .context("create client")?;
    let rejoin = Rejoin {
        entry: game.client.base_url().to_owned(),
        socket_path: created.socket_path.clone(),
        access_token: tokens.access_token.clone(),
    };
    let mut base = created.node_url.clone().unwrap_or(rejoin.entry.clone());
    // Sent on at most twice (`moved`): the stage's node changed meanwhile.
    for _ in 0..3 {
        match seat(&base, &rejoin.socket_path, &rejoin.access_token).await {
            Err(error) => match error.downcast::<Moved>() {
                Ok(Moved(node_url)) => base = node_url,
                Err(error) => return Err(error),
            },
            Ok(socket) => return Ok((socket, rejoin)),
        }
    }
    bail!("sent from node to node; the stage keeps moving")
}

/// The socket was closed with `moved`: the client is served by the node at this URL.
#[derive(Debug)]
pub(super) struct Moved(pub String);

impl std::fmt::Display for Moved {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "served by the node at {}", self.0)
    }
}

impl std::error::Error for Moved {}

async fn open_socket(url: &str, access_token: &str) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {access_token}"))?,
    );
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let disable_nagle = true; // small frames whose latency is measured
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), disable_nagle)
            .await?;
    Ok(socket)
}

/// Small buffers: tungstenite's defaults (128 KiB to read, 128 KiB to write) would cost
/// gigabytes at 10,000 players, for frames of tens of bytes. No write buffering either: each
/// frame goes out when sent, as a latency measurement wants.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Reads `greeted`, then events until the client is assigned a runtime (`greeted` of a
/// resumed client already carries it).
async fn wait_for_lobby(socket: &mut Socket) -> anyhow::Result<()> {
    let greeted = loop {
        if let Some(event) = event_in(socket.next().await)? {
            break event;
        }
    };
    match greeted {
        PlayerEvent::Greeted {
            runtime: Some(_), ..
        } => return Ok(()),
        PlayerEvent::Greeted { runtime: None, .. } => {}
        other => bail!("expected `greeted` first, got {other:?}"),
    }
    loop {
        match event_in(socket.next().await)? {
            Some(PlayerEvent::RuntimeAssigned(_)) => return Ok(()),
            Some(PlayerEvent::Error { code, message }) => bail!(error_event(&code, &message)),
            Some(PlayerEvent::ClientDeleted { reason, message }) => {
                bail!(client_deleted(&reason, message.as_deref()))
            }
            Some(_) | None => {}
        }
    }
}

/// The event a frame carries: `None` for control and binary frames; an error when the socket
/// ended or the text is not an event.
pub(super) fn event_in(
    frame: Option<Result<Message, SocketError>>,
) -> anyhow::Result<Option<PlayerEvent>> {
    match frame {
        None | Some(Ok(Message::Close(None))) => bail!("the platform closed the socket"),
        Some(Ok(Message::Close(Some(frame))))
            if u16::from(frame.code) == rally_sdk::player::CLOSE_MOVED =>
        {
            Err(Moved(frame.reason.to_string()).into())
        }
        Some(Ok(Message::Close(Some(frame)))) => bail!("the platform closed the socket: {frame}"),
        Some(Err(error)) => Err(error).context("socket"),
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("not an event: {}", text.as_str())),
        Some(Ok(_)) => Ok(None),
    }
}

pub(super) fn error_event(code: &str, message: &str) -> String {
    format!("error event {code}: {message}")
}

pub(super) fn client_deleted(reason: &str, message: Option<&str>) -> String {
    match message {
        Some(message) => format!("client deleted ({reason}): {message}"),
        None => format!("client deleted ({reason})"),
    }
}

pub(super) async fn send(socket: &mut Socket, command: &PlayerCommand) -> anyhow::Result<()> {
    let frame = Message::text(serde_json::to_string(command).expect("commands serialize"));
    socket.send(frame).await.context("send")
}

/// Ends the client at once (`leave`) rather than leaving it to the platform's reconnect grace
/// period, then reads until the platform closes the socket (after `client_deleted`). Closing
/// from this side right away let some clients wait out their grace period: the close overtook
/// the `leave`. Failures are not counted: the measurement is over, and the platform drops the
/// client after the grace period anyway.
pub(super) async fn leave(socket: &mut Socket) {
    let goodbye = async {
        send(socket, &PlayerCommand::Leave).await?;
        while let Some(frame) = socket.next().await {
            frame?;
        }
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(LEAVE_TIMEOUT, goodbye).await;
}

/// Waits until every player is connected or has failed to, printing progress once a second.
pub(super) async fn ramp_up(stats: &Stats, players: u64) -> Duration {
    let started = Instant::now();
    let second = Duration::from_secs(1);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    let all_set_up = stats.all_set_up();
    tokio::pin!(all_set_up);
    loop {
        let done = tokio::select! {
            () = &mut all_set_up => true,
            _ = progress.tick() => false,
        };
        eprintln!(
            "loadtest: connected {}/{players}, errors {}",
            stats.connected(),
            stats.errors()
        );
        if done {
            break;
        }
    }
    let elapsed = started.elapsed();
    eprintln!("loadtest: ramp-up took {:.1} s", elapsed.as_secs_f64());
    elapsed
}

/// Waits for the players to leave (they were told to already), aborting the ones that take
/// longer than [`STOP_TIMEOUT`].
pub(super) async fn stop(mut players: JoinSet<()>, stats: &Stats) {
    let all_left = async {
        while let Some(ended) = players.join_next().await {
            if let Err(error) = ended {
                stats
                    .errors
                    .report(format_args!("a player task failed: {error}"));
            }
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, all_left).await.is_err() {
        eprintln!(
            "loadtest: {} players had not left after {} s",
            players.len(),
            STOP_TIMEOUT.as_secs()
        );
        players.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_close_names_the_node_to_go_to() {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: rally_sdk::player::CLOSE_MOVED.into(),
            reason: "http://127.0.0.1:7351".into(),
        };
        let error = event_in(Some(Ok(Message::Close(Some(frame))))).unwrap_err();
        assert_eq!(
            error.downcast::<Moved>().unwrap().0,
            "http://127.0.0.1:7351"
        );
    }
}

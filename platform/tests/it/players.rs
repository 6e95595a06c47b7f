//! Players over real WebSockets against real lobby runtimes (child processes): greeting,
//! assignment, relay both ways, lobbies opening as they fill, reconnects, faults, the long-poll
//! fallback, and every kind of bad input the player protocol refuses.

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::on_both_backends;
use crate::permissions::hello_bundle;
use crate::runtimes::runtime_binary;
use futures_util::{SinkExt, StreamExt};
use rally_sdk::player::{
    Assignment, CreatedClient, PlayerCommand, PlayerEvent, RuntimeKind, SUBPROTOCOL,
};
use rally_sdk::RallyClient;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A lobby for tests: echoes, and obeys a few text commands.
const LAB_LOBBY: &str = r#"
local lobby = {}
function lobby.on_client_assigned(ctx, client)
    ctx.respond(client.id, "welcome " .. ctx.json.encode(client.profile))
end
function lobby.on_message(ctx, client_id, payload, kind)
    if kind ~= "text" then
        ctx.respond(client_id, payload, kind)
        return
    end
    local command, argument = string.match(payload, "^(%a+):?(.*)$")
    if command == "kick" then
        ctx.kick(client_id, argument)
    elseif command == "profile" then
        ctx.set_profile(client_id, { wins = tonumber(argument) })
        ctx.respond(client_id, "saved")
    elseif command == "tell" then
        ctx.respond(argument, "psst")
        ctx.respond(client_id, "told")
    elseif command == "match" then
        ctx.request_matchmaking(client_id, argument)
    elseif command == "stop" then
        ctx.stop_match("done")
    elseif command == "where" then
        ctx.respond(client_id, ctx.qualifier)
    elseif command == "flood" then
        for _ = 1, 400 do
            ctx.respond(client_id, string.rep("x", 1000))
        end
    elseif command == "bulk" then
        -- 1.6 MB of binary answers from one call: more than one runtime frame may hold.
        for n = 1, 400 do
            ctx.respond(client_id, string.char(n % 256) .. string.rep("b", 3999), "binary")
        end
    else
        ctx.respond(client_id, payload)
    end
end
return lobby
"#;

pub(crate) fn lab_bundle() -> Vec<u8> {
    lab_bundle_with_match("lobby.lua", None)
}

/// The lab logic; its match entry is `match_file`, written with `match_source` unless it is the
/// lobby's own file.
fn lab_bundle_with_match(match_file: &str, match_source: Option<&str>) -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("rally.toml"),
        format!(
            "[runtime]\nkind = \"lua\"\nlobby = \"lobby.lua\"\nmatch = \"{match_file}\"\n\n\
             [[modes]]\nname = \"duo\"\nmin_players = 2\nmax_players = 2\n\n\
             [[modes.groups]]\nname = \"all\"\nmin_players = 2\nmax_players = 2\n"
        ),
    )
    .unwrap();
    std::fs::write(directory.path().join("lobby.lua"), LAB_LOBBY).unwrap();
    if let Some(source) = match_source {
        std::fs::write(directory.path().join(match_file), source).unwrap();
    }
    rally_sdk::bundle::pack(
        directory.path(),
        &rally_sdk::bundle::BundleLimits::default(),
    )
    .unwrap()
}

pub(crate) async fn app(
    backend: Backend,
    adjust: impl FnOnce(&mut rally_platform::config::Config),
) -> TestApp {
    spawn_app_with(backend, |config| {
        config.runtime_binary = Some(runtime_binary());
        config.runtime_start_timeout_secs = 10;
        config.runtime_stop_grace_secs = 1;
        adjust(config);
    })
    .await
}

/// Tenant `studio`, project `game`, stage `default` running `bundle` with `overrides`.
pub(crate) async fn deploy(
    app: &TestApp,
    bundle: Vec<u8>,
    overrides: serde_json::Value,
) -> (RallyClient, String) {
    let admin = app.admin().await;
    if admin.get_tenant("studio").await.is_err() {
        admin.create_tenant("Studio", Some("studio")).await.unwrap();
        admin
            .create_project("studio", "Game", Some("game"))
            .await
            .unwrap();
    }
    let version = admin
        .upload_version("studio", "game", bundle, None)
        .await
        .unwrap();
    let deployment = deploy_version(&admin, "studio", version.number, overrides).await;
    (admin, deployment)
}

/// Deploys version `number` of `tenant`'s project `game` on stage `default`: its id.
pub(crate) async fn deploy_version(
    admin: &RallyClient,
    tenant: &str,
    number: i64,
    overrides: serde_json::Value,
) -> String {
    admin
        .deploy(tenant, "game", "default", &number.to_string(), overrides)
        .await
        .unwrap()
        .id
}

/// The pid of runtime `runtime_id` of `studio/game/default`'s deployment `deployment`.
pub(crate) async fn runtime_pid(admin: &RallyClient, deployment: &str, runtime_id: &str) -> i64 {
    admin
        .list_runtimes("studio", "game", "default", deployment)
        .await
        .unwrap()
        .iter()
        .find(|runtime| runtime.id == runtime_id)
        .and_then(|runtime| runtime.pid)
        .unwrap_or_else(|| panic!("runtime {runtime_id} has no pid"))
}

/// A signed-in player with a client on `studio/game/default`.
pub(crate) struct Player {
    pub(crate) api: RallyClient,
    pub(crate) user_id: String,
    pub(crate) token: String,
    pub(crate) client: CreatedClient,
}

pub(crate) async fn player(app: &TestApp) -> Player {
    player_on(&app.url, "default").await
}

/// A new player with a client on `studio/game/<stage>`, both made through the platform (node)
/// at `url`.
pub(crate) async fn player_on(url: &str, stage: &str) -> Player {
    let anonymous = RallyClient::new(url).unwrap();
    let user = anonymous.create_user().await.unwrap();
    let tokens = anonymous
        .sign_in_user(&user.user_id, &user.secret)
        .await
        .unwrap();
    let api = anonymous.authenticated(&tokens.access_token);
    let client = api.create_client("studio", "game", stage).await.unwrap();
    Player {
        api,
        user_id: user.user_id,
        token: tokens.access_token,
        client,
    }
}

fn socket_url(app: &TestApp, client: &CreatedClient) -> String {
    format!(
        "{}{}",
        app.url.replacen("http://", "ws://", 1),
        client.socket_path
    )
}

/// `count` new players, each connected, greeted and assigned one after the other: their
/// sockets, and the lobby each landed in.
async fn seated_players(app: &TestApp, count: usize) -> (Vec<Socket>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut lobbies = Vec::new();
    for _ in 0..count {
        let player = player(app).await;
        let mut socket = connect(app, &player).await;
        lobbies.push(socket.greeted_and_assigned().await);
        sockets.push(socket);
    }
    (sockets, lobbies)
}

/// Opens the client's socket with the token in the `Authorization` header.
pub(crate) async fn connect(app: &TestApp, player: &Player) -> Socket {
    Socket::open(socket_request(
        &socket_url(app, &player.client),
        &player.token,
    ))
    .await
}

/// A request for the player socket at `url`, with `token` in the `Authorization` header.
pub(crate) fn socket_request(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    request
}

pub(crate) struct Socket {
    stream: Stream,
}

/// What arrives on a player socket, events decoded.
#[derive(Debug)]
pub(crate) enum Received {
    Event(PlayerEvent),
    Binary(Vec<u8>),
    Closed(Option<(u16, String)>),
}

impl Socket {
    async fn open(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> Socket {
        Self::try_open(request).await.unwrap()
    }

    /// Opens a socket, or says why the platform could not be reached.
    pub(crate) async fn try_open(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let (stream, response) = tokio_tungstenite::connect_async(request).await?;
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            SUBPROTOCOL,
            "the platform answers with the player subprotocol"
        );
        Ok(Socket { stream })
    }

    pub(crate) async fn receive(&mut self) -> Received {
        self.receive_for("an event").await
    }

    async fn receive_for(&mut self, what: &str) -> Received {
        // Pings do not count: an event must come within 15 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("nothing within 15 s while waiting for {what}"));
            return match next {
                Some(Ok(Message::Text(text))) => Received::Event(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|error| panic!("not an event: {text}: {error}")),
                ),
                Some(Ok(Message::Binary(bytes))) => Received::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => Received::Closed(
                    frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())),
                ),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Closed(None),
            };
        }
    }

    pub(crate) async fn event(&mut self) -> PlayerEvent {
        match self.receive().await {
            Received::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Skips events until one matches.
    pub(crate) async fn until(
        &mut self,
        what: &str,
        matches: impl Fn(&PlayerEvent) -> bool,
    ) -> PlayerEvent {
        loop {
            match self.receive_for(what).await {
                Received::Event(event) if matches(&event) => return event,
                Received::Event(_) | Received::Binary(_) => {}
                Received::Closed(frame) => panic!("closed ({frame:?}) while waiting for {what}"),
            }
        }
    }

    /// Waits for the close, skipping what comes before it.
    pub(crate) async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            if let Received::Closed(frame) = self.receive().await {
                return frame;
            }
        }
    }

    pub(crate) async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    pub(crate) async fn say(&mut self, text: &str) {
        let command = PlayerCommand::Message {
            text: Some(text.to_owned()),
            binary: None,
        };
        self.send_raw(Message::Text(
            serde_json::to_string(&command).unwrap().into(),
        ))
        .await;
    }

    /// Skips events until the client is assigned to a runtime of `kind`; returns the assignment.
    pub(crate) async fn assigned_to(&mut self, kind: RuntimeKind) -> Assignment {
        let what = format!("runtime_assigned ({kind:?})");
        match self
            .until(
                &what,
                |event| matches!(event, PlayerEvent::RuntimeAssigned(a) if a.qualifier == kind),
            )
            .await
        {
            PlayerEvent::RuntimeAssigned(assignment) => assignment,
            _ => unreachable!(),
        }
    }

    /// Greeted, then assigned to a lobby: returns the lobby's runtime id.
    pub(crate) async fn greeted_and_assigned(&mut self) -> String {
        let greeted = self.event().await;
        let PlayerEvent::Greeted { runtime, .. } = &greeted else {
            panic!("expected greeted first, got {greeted:?}");
        };
        if let Some(runtime) = runtime {
            return runtime.runtime_id.clone();
        }
        match self
            .until("runtime_assigned", |event| {
                matches!(event, PlayerEvent::RuntimeAssigned(_))
            })
            .await
        {
            PlayerEvent::RuntimeAssigned(assignment) => {
                assert_eq!(assignment.qualifier, RuntimeKind::Lobby);
                assignment.runtime_id
            }
            _ => unreachable!(),
        }
    }

    /// Sends `text` and waits for the same text back.
    pub(crate) async fn echo(&mut self, text: &str) {
        self.say(text).await;
        self.until(&format!("the echo of {text:?}"), |event| {
            matches!(event, PlayerEvent::Message { text: Some(echoed), .. } if echoed == text)
        })
        .await;
    }
}

pub(crate) fn is_error(event: &PlayerEvent, expected: &str) -> bool {
    matches!(event, PlayerEvent::Error { code, .. } if code == expected)
}

pub(crate) fn text_of(event: &PlayerEvent) -> Option<&str> {
    match event {
        PlayerEvent::Message { text, .. } => text.as_deref(),
        _ => None,
    }
}

async fn a_player_is_greeted_assigned_and_echoed(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    assert_eq!(ada.client.version, 1);
    let mut socket = connect(&app, &ada).await;
    let greeted = socket.event().await;
    match &greeted {
        PlayerEvent::Greeted {
            client_id,
            user_id,
            resumed,
            limits,
            ..
        } => {
            assert_eq!(client_id, &ada.client.client_id);
            assert_eq!(user_id, &ada.user_id);
            assert!(!resumed);
            assert_eq!(limits.reconnect_grace_secs, 30);
        }
        other => panic!("expected greeted, got {other:?}"),
    }
    let assignment = socket
        .assigned_to(rally_sdk::player::RuntimeKind::Lobby)
        .await;
    assert_eq!(assignment.qualifier, RuntimeKind::Lobby);
    assert_eq!(assignment.version, 1);
    assert_eq!(assignment.config.user_data["greeting"], "Hello from Rally!");
    // The example lobby greets on arrival, then echoes.
    let welcome = socket.event().await;
    assert!(
        text_of(&welcome).unwrap().starts_with("Hello from Rally!"),
        "{welcome:?}"
    );
    socket.echo("hi there").await;
    // Binary frames go through untouched, both ways.
    let bytes = vec![0u8, 1, 2, 254, 255, 0];
    socket.send_raw(Message::Binary(bytes.clone().into())).await;
    match socket.receive().await {
        Received::Binary(echoed) => assert_eq!(echoed, bytes),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    // The client as the API shows it.
    let info = ada.api.get_client(&ada.client.client_id).await.unwrap();
    assert!(info.connected);
    assert_eq!(info.runtime.unwrap().runtime_id, assignment.runtime_id);

    // The token as a subprotocol (browsers) and as a query parameter.
    let bea = player(&app).await;
    let mut request = socket_url(&app, &bea.client).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("{SUBPROTOCOL}, rally.token.{}", bea.token)).unwrap(),
    );
    let mut socket = Socket::open(request).await;
    socket.greeted_and_assigned().await;
    socket.echo("from a browser").await;
    let cy = player(&app).await;
    let mut request = format!("{}?token={}", socket_url(&app, &cy.client), cy.token)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let mut socket = Socket::open(request).await;
    socket.greeted_and_assigned().await;
    socket.echo("from a query").await;

    // Leaving deletes the client; its socket closes with the reason.
    socket
        .send_raw(Message::Text(r#"{"type":"leave"}"#.into()))
        .await;
    let deleted = socket
        .until("client_deleted", |event| {
            matches!(event, PlayerEvent::ClientDeleted { .. })
        })
        .await;
    assert!(matches!(deleted, PlayerEvent::ClientDeleted { reason, .. } if reason == "left"));
    assert_eq!(socket.closed().await, Some((1000, "left".to_owned())));
    let info = cy.api.get_client(&cy.client.client_id).await.unwrap();
    assert_eq!(info.status, "deleted");
    assert_eq!(info.reason.as_deref(), Some("left"));
}

async fn the_long_poll_fallback_carries_the_same_events(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let id = ada.client.client_id.clone();
    let mut events = Vec::new();
    let mut after = 0;
    // Poll until the greeting of the lobby arrived: greeted, runtime_assigned, message.
    let started = Instant::now();
    while events.len() < 3 {
        let polled = ada.api.poll_events(&id, after, 2000).await.unwrap();
        assert!(polled.open);
        for event in polled.events {
            assert_eq!(event.seq, after + 1, "events are numbered without gaps");
            after = event.seq;
            events.push(event.event);
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{events:?}");
    }
    assert!(
        matches!(events[0], PlayerEvent::Greeted { .. }),
        "{events:?}"
    );
    assert!(
        matches!(events[1], PlayerEvent::RuntimeAssigned(_)),
        "{events:?}"
    );
    assert!(text_of(&events[2]).unwrap().starts_with("Hello"));

    ada.api
        .send_commands(
            &id,
            vec![
                PlayerCommand::Message {
                    text: Some("polled".into()),
                    binary: None,
                },
                PlayerCommand::Message {
                    text: None,
                    binary: Some("AAEC/w==".into()),
                },
            ],
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut last_answer = Vec::new();
    while received.len() < 2 {
        let polled = ada.api.poll_events(&id, after, 5000).await.unwrap();
        last_answer = polled.events.clone();
        for event in polled.events {
            after = event.seq;
            received.push(event.event);
        }
    }
    assert_eq!(text_of(&received[0]), Some("polled"));
    assert!(
        matches!(&received[1], PlayerEvent::Message { binary: Some(bytes), .. } if bytes == "AAEC/w=="),
        "{received:?}"
    );
    // An answer that was lost is fetched again by polling with the previous `after`.
    let again = ada
        .api
        .poll_events(&id, last_answer[0].seq - 1, 100)
        .await
        .unwrap();
    assert_eq!(again.events, last_answer);

    // Leaving over long-poll: the last event says why, then the client is gone.
    ada.api
        .send_commands(&id, vec![PlayerCommand::Leave])
        .await
        .unwrap();
    let polled = ada.api.poll_events(&id, after, 2000).await.unwrap();
    assert!(!polled.open);
    assert!(matches!(
        &polled.events.last().unwrap().event,
        PlayerEvent::ClientDeleted { reason, .. } if reason == "left"
    ));
    let after = polled.events.last().unwrap().seq;
    let gone = ada.api.poll_events(&id, after, 100).await.unwrap_err();
    assert_eq!(gone.status(), Some(410));
    assert_eq!(gone.code(), Some("client_deleted"));
}

async fn bad_input_gets_clear_errors_and_the_socket_lives_on(backend: Backend) {
    let app = app(backend, |config| {
        config.player_max_frame_bytes = 1024;
        config.player_messages_per_sec = 20;
    })
    .await;
    // No lobby yet: the first client's lobby starts on demand.
    deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 0})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    assert!(matches!(
        socket.event().await,
        PlayerEvent::Greeted { runtime: None, .. }
    ));
    socket.say("too early").await;
    socket
        .until("not_assigned", |event| is_error(event, "not_assigned"))
        .await;
    socket
        .until("runtime_assigned", |event| {
            matches!(event, PlayerEvent::RuntimeAssigned(_))
        })
        .await;

    for (frame, code) in [
        ("{not json", "malformed_json"),
        (r#"{"type":"dance"}"#, "unknown_command"),
        (r#"{"type":"message"}"#, "invalid_command"),
        (r#"[1, 2, 3]"#, "invalid_command"),
    ] {
        socket.send_raw(Message::Text(frame.into())).await;
        socket.until(code, |event| is_error(event, code)).await;
    }
    let big = "x".repeat(2000);
    socket.say(&big).await;
    socket
        .until("frame_too_large", |event| {
            is_error(event, "frame_too_large")
        })
        .await;
    socket
        .send_raw(Message::Binary(vec![7u8; 3000].into()))
        .await;
    socket
        .until("frame_too_large", |event| {
            is_error(event, "frame_too_large")
        })
        .await;
    // After all that the connection still works.
    socket.echo("still here").await;

    // A flood: 60 messages at once against 20/s. Some pass, the rest are refused with one error.
    for serial in 0..60 {
        socket.say(&format!("flood {serial}")).await;
    }
    socket
        .until("rate_limited", |event| is_error(event, "rate_limited"))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    socket.echo("calm again").await;

    // A frame far over the limit is not read: the connection closes with 1009.
    socket
        .send_raw(Message::Binary(vec![1u8; 64 * 1024].into()))
        .await;
    let closed = socket.closed().await;
    assert_eq!(closed.map(|(code, _)| code), Some(1009));
    // The client survives that: it reconnects and resumes.
    let mut socket = connect(&app, &ada).await;
    assert!(matches!(
        socket.event().await,
        PlayerEvent::Greeted {
            resumed: true,
            runtime: Some(_),
            ..
        }
    ));
    socket.echo("back").await;

    // Refusals before the upgrade: HTTP errors with stable codes.
    let url = socket_url(&app, &ada.client);
    let refused = |request| async move {
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                        .unwrap_or_default();
                (
                    response.status().as_u16(),
                    body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    };
    assert_eq!(
        refused(url.clone().into_client_request().unwrap()).await,
        (401, "missing_token".into())
    );
    let mut forged = url.clone().into_client_request().unwrap();
    forged.headers_mut().insert(
        "authorization",
        HeaderValue::from_static("Bearer not.a.token"),
    );
    assert_eq!(refused(forged).await, (401, "invalid_token".into()));
    let admin_token = app.admin().await.access_token().unwrap().to_owned();
    let mut staff = url.clone().into_client_request().unwrap();
    staff.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {admin_token}")).unwrap(),
    );
    assert_eq!(refused(staff).await, (403, "forbidden".into()));
    // Another player's client id is not found (and not told apart from a missing one).
    let mallory = player(&app).await;
    let mut stolen = url.clone().into_client_request().unwrap();
    stolen.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", mallory.token)).unwrap(),
    );
    assert_eq!(refused(stolen).await, (404, "not_found".into()));
    let error = mallory
        .api
        .get_client(&ada.client.client_id)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    let error = mallory
        .api
        .delete_client(&ada.client.client_id)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    // Ada's socket was untouched by all of it.
    socket.echo("unbothered").await;
    // No such stage, and a stage with nothing deployed.
    let error = ada
        .api
        .create_client("studio", "game", "nope")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    app.admin()
        .await
        .create_stage("studio", "game", "Empty", Some("empty"))
        .await
        .unwrap();
    let error = ada
        .api
        .create_client("studio", "game", "empty")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("stage_offline"));
}

async fn lobbies_fill_up_and_new_ones_open(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(
        &app,
        hello_bundle(),
        serde_json::json!({"min_lobbies": 1, "max_clients_per_lobby": 2}),
    )
    .await;
    let (mut sockets, lobbies) = seated_players(&app, 5).await;
    let mut distinct = lobbies.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "2 + 2 + 1 clients: {lobbies:?}");
    for lobby in &distinct {
        let members = lobbies.iter().filter(|id| *id == lobby).count();
        assert!(members <= 2, "{lobbies:?}");
    }
    for socket in &mut sockets {
        socket.echo("everyone is served").await;
    }
}

async fn a_reconnect_resumes_within_the_grace_period_and_not_after(backend: Backend) {
    let app = app(backend, |config| config.player_reconnect_grace_secs = 2).await;
    deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    let lobby = socket.greeted_and_assigned().await;
    socket.echo("one").await;
    drop(socket);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut socket = connect(&app, &ada).await;
    match socket.event().await {
        PlayerEvent::Greeted {
            resumed: true,
            runtime: Some(runtime),
            ..
        } => assert_eq!(runtime.runtime_id, lobby),
        other => panic!("expected a resumed greeting, got {other:?}"),
    }
    socket.echo("two").await;

    // Two connections at once: the newer wins, the older is told.
    let mut second = connect(&app, &ada).await;
    assert!(matches!(
        second.event().await,
        PlayerEvent::Greeted { resumed: true, .. }
    ));
    assert_eq!(
        socket.closed().await,
        Some((4001, "connection_replaced".to_owned()))
    );
    second.echo("three").await;
    drop(second);

    // Past the grace period the client is gone for good.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let info = ada.api.get_client(&ada.client.client_id).await.unwrap();
    assert_eq!(info.status, "deleted");
    assert_eq!(info.reason.as_deref(), Some("disconnected"));
    let mut request = socket_url(&app, &ada.client).into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", ada.token)).unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 410)
        }
        other => panic!("expected 410, got {:?}", other.map(|_| ())),
    }
}

async fn runtime_commands_take_effect_and_stay_within_the_runtime(backend: Backend) {
    let app = app(backend, |config| config.player_outbox_events = 32).await;
    // One client per lobby, so that two players are in two different runtimes.
    deploy(
        &app,
        lab_bundle(),
        serde_json::json!({"min_lobbies": 1, "max_clients_per_lobby": 1}),
    )
    .await;
    let ada = player(&app).await;
    let mut ada_socket = connect(&app, &ada).await;
    let ada_lobby = ada_socket.greeted_and_assigned().await;
    ada_socket
        .until("welcome", |event| text_of(event) == Some("welcome {}"))
        .await;
    let bea = player(&app).await;
    let mut bea_socket = connect(&app, &bea).await;
    let bea_lobby = bea_socket.greeted_and_assigned().await;
    assert_ne!(ada_lobby, bea_lobby);

    // set_profile persists, is readable through the API, and comes with the next assignment.
    ada_socket.say("profile:3").await;
    ada_socket
        .until("saved", |event| text_of(event) == Some("saved"))
        .await;
    let started = Instant::now();
    loop {
        let me = ada
            .api
            .my_player("studio", "game", "default")
            .await
            .unwrap();
        if me.profile == serde_json::json!({"wins": 3}) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{me:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let staff_view = app
        .admin()
        .await
        .get_player("studio", "game", "default", &ada.user_id)
        .await
        .unwrap();
    assert_eq!(staff_view.profile["wins"], 3);

    // A runtime cannot address a client of another runtime: bea never hears it.
    ada_socket
        .say(&format!("tell:{}", bea.client.client_id))
        .await;
    ada_socket
        .until("told", |event| text_of(event) == Some("told"))
        .await;
    bea_socket.echo("nothing else arrived before this").await;

    // A kick from a lobby deletes the client with the lobby's reason.
    bea_socket.say("kick:cheating").await;
    let deleted = bea_socket
        .until("client_deleted", |event| {
            matches!(event, PlayerEvent::ClientDeleted { .. })
        })
        .await;
    assert!(
        matches!(&deleted, PlayerEvent::ClientDeleted { reason, message } if reason == "kicked" && message.as_deref() == Some("cheating")),
        "{deleted:?}"
    );
    // A new client of ada's gets the profile in the lobby's welcome.
    let ada_first_client = ada.client.client_id.clone();
    let ada_again = Player {
        client: ada
            .api
            .create_client("studio", "game", "default")
            .await
            .unwrap(),
        ..ada
    };
    let mut socket = connect(&app, &ada_again).await;
    socket.greeted_and_assigned().await;
    socket
        .until("welcome with profile", |event| {
            text_of(event) == Some(r#"welcome {"wins":3}"#)
        })
        .await;

    // A client that does not read while its runtime floods it is cut off as a slow reader.
    for _ in 0..40 {
        ada_socket.say("flood").await;
    }
    let started = Instant::now();
    loop {
        let info = ada_again.api.get_client(&ada_first_client).await.unwrap();
        if info.status == "deleted" {
            assert_eq!(info.reason.as_deref(), Some("slow_reader"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ada_socket.closed().await,
        Some((4008, "slow_reader".to_owned()))
    );
}

/// A runtime that answers more than one frame may hold (1 MiB) in one go: its commands go in
/// several frames, in order, and its connection lives on.
async fn answers_bigger_than_a_frame_arrive_whole_and_in_order(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    socket.greeted_and_assigned().await;
    socket.say("bulk").await;
    for n in 1..=400u32 {
        let bytes = loop {
            match socket.receive().await {
                Received::Binary(bytes) => break bytes,
                Received::Event(_) => {}
                Received::Closed(frame) => panic!("closed ({frame:?}) after {n} answers"),
            }
        };
        assert_eq!(bytes.len(), 4000);
        assert_eq!(bytes[0], (n % 256) as u8, "answer {n} in order");
    }
    socket.echo("still connected").await;
}

async fn a_dead_lobby_sends_its_clients_to_another(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, deployment) =
        deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 2})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    let lobby = socket.greeted_and_assigned().await;
    socket.echo("before").await;
    let pid = runtime_pid(&admin, &deployment, &lobby).await;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    socket
        .until("runtime_failed", |event| is_error(event, "runtime_failed"))
        .await;
    let assignment = socket
        .assigned_to(rally_sdk::player::RuntimeKind::Lobby)
        .await;
    assert_ne!(assignment.runtime_id, lobby);
    assert!(started.elapsed() < Duration::from_secs(5));
    socket.echo("after").await;
}

async fn a_new_version_takes_new_clients_and_the_old_lobby_closes_when_empty(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, first) = deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let mut ada_socket = connect(&app, &ada).await;
    let old_lobby = ada_socket.greeted_and_assigned().await;

    let (_, second) = deploy(&app, hello_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let bea = player(&app).await;
    assert_eq!(bea.client.deployment_id, second);
    assert_eq!(bea.client.version, 2);
    let mut bea_socket = connect(&app, &bea).await;
    let new_lobby = bea_socket.greeted_and_assigned().await;
    assert_ne!(new_lobby, old_lobby);
    bea_socket.echo("on v2").await;

    // Ada stays where she was, on version 1, while she plays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ada_socket.echo("still on v1").await;
    let old = admin
        .list_runtimes("studio", "game", "default", &first)
        .await
        .unwrap();
    assert!(
        old.iter()
            .any(|r| r.id == old_lobby && r.status == "running"),
        "{old:?}"
    );

    // Once she leaves, the old lobby stops and the old deployment closes.
    ada_socket
        .send_raw(Message::Text(r#"{"type":"leave"}"#.into()))
        .await;
    let started = Instant::now();
    loop {
        let deployment = admin
            .get_deployment("studio", "game", "default", &first)
            .await
            .unwrap();
        if deployment.status == rally_sdk::wire::DeploymentStatus::Closed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{deployment:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_platform_restart_keeps_clients_and_profiles(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    socket.greeted_and_assigned().await;
    socket.say("profile:7").await;
    socket
        .until("saved", |event| text_of(event) == Some("saved"))
        .await;

    let app = app.restart().await;
    assert_eq!(
        socket.closed().await,
        Some((1012, "platform_restarting".to_owned()))
    );
    // The same client id reconnects to the new run: resumed, back in a lobby, profile kept.
    let ada = Player {
        api: RallyClient::new(&app.url)
            .unwrap()
            .authenticated(&ada.token),
        ..ada
    };
    let mut socket = connect(&app, &ada).await;
    assert!(matches!(
        socket.event().await,
        PlayerEvent::Greeted { resumed: true, .. }
    ));
    socket
        .until("welcome with profile", |event| {
            text_of(event) == Some(r#"welcome {"wins":7}"#)
        })
        .await;
    socket.echo("after the restart").await;
}

async fn idle_lobbies_above_the_minimum_close(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (admin, deployment) = deploy(
        &app,
        hello_bundle(),
        serde_json::json!({"min_lobbies": 1, "max_clients_per_lobby": 1, "idle_timeout_secs": 10}),
    )
    .await;
    let (mut sockets, _) = seated_players(&app, 3).await;
    let live = |runtimes: &[rally_sdk::wire::RuntimeInfo]| {
        runtimes
            .iter()
            .filter(|runtime| runtime.status == "running")
            .count()
    };
    let runtimes = admin
        .list_runtimes("studio", "game", "default", &deployment)
        .await
        .unwrap();
    assert_eq!(live(&runtimes), 3, "one lobby per client: {runtimes:#?}");
    for socket in &mut sockets {
        socket
            .send_raw(Message::Text(r#"{"type":"leave"}"#.into()))
            .await;
        socket.closed().await;
    }
    // Empty for the idle timeout, the two lobbies above min_lobbies stop; one stays.
    let started = Instant::now();
    loop {
        let runtimes = admin
            .list_runtimes("studio", "game", "default", &deployment)
            .await
            .unwrap();
        if live(&runtimes) == 1 && runtimes.iter().filter(|r| r.status == "stopped").count() == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(25), "{runtimes:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn matchmaking_moves_players_into_a_match_and_back(backend: Backend) {
    let app = app(backend, |config| config.matchmaking_timeout_secs = 2).await;
    let (admin, deployment) =
        deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let bea = player(&app).await;
    let mut ada_socket = connect(&app, &ada).await;
    let mut bea_socket = connect(&app, &bea).await;
    ada_socket.greeted_and_assigned().await;
    bea_socket.greeted_and_assigned().await;

    // Alone, ada's request times out: she hears why and stays in the lobby.
    ada_socket.say("match:duo").await;
    let failed = ada_socket
        .until("matchmaking_failed", |event| {
            matches!(event, PlayerEvent::MatchmakingFailed { .. })
        })
        .await;
    assert!(
        matches!(&failed, PlayerEvent::MatchmakingFailed { mode, reason } if mode == "duo" && reason == "timeout"),
        "{failed:?}"
    );
    ada_socket.echo("still in the lobby").await;

    // Both ask: a match forms, a match runtime starts, both move there with their group.
    ada_socket.say("match:duo").await;
    bea_socket.say("match:duo").await;
    let mut matches = Vec::new();
    for socket in [&mut ada_socket, &mut bea_socket] {
        let assignment = socket.assigned_to(RuntimeKind::Match).await;
        assert_eq!(assignment.mode.as_deref(), Some("duo"));
        assert_eq!(assignment.group.as_deref(), Some("all"));
        matches.push(assignment.runtime_id);
        socket.echo("in the match").await;
        socket.say("where").await;
        socket
            .until("match", |event| text_of(event) == Some("match"))
            .await;
    }
    assert_eq!(matches[0], matches[1], "one match for both");

    // The match ends: both go back to a lobby, and its runtime stops.
    ada_socket.say("stop").await;
    let mut lobbies_after = Vec::new();
    for socket in [&mut ada_socket, &mut bea_socket] {
        socket
            .until("match_ended", |event| is_error(event, "match_ended"))
            .await;
        let assignment = socket.assigned_to(RuntimeKind::Lobby).await;
        lobbies_after.push(assignment.runtime_id);
        socket.say("where").await;
        socket
            .until("lobby", |event| text_of(event) == Some("lobby"))
            .await;
    }
    let started = Instant::now();
    loop {
        let runtimes = admin
            .list_runtimes("studio", "game", "default", &deployment)
            .await
            .unwrap();
        if runtimes
            .iter()
            .any(|r| r.id == matches[0] && r.status == "stopped")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{runtimes:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refusals reach the logic of ada's lobby as errors; the players are not stranded.
    let lobby = &lobbies_after[0];
    ada_socket.say("match:chess").await;
    ada_socket.say("match:duo").await;
    ada_socket.say("match:duo").await;
    ada_socket.say("stop").await;
    ada_socket.echo("fine").await;
    let started = Instant::now();
    loop {
        let log = admin
            .runtime_logs("studio", "game", "default", &deployment, lobby)
            .await
            .unwrap();
        if log.contains("unknown_mode") && log.contains("already_queued") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Six players ask at once on a node that starts one runtime at a time: the three matches start
/// one after the other, and every player ends in a match with its partner.
async fn a_burst_of_matches_starts_in_turn_and_strands_nobody(backend: Backend) {
    let app = app(backend, |config| config.runtime_starts_at_once = 1).await;
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let (mut sockets, _) = seated_players(&app, 6).await;
    for socket in &mut sockets {
        socket.say("match:duo").await;
    }
    let mut players_per_match: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    for socket in &mut sockets {
        let assignment = socket.assigned_to(RuntimeKind::Match).await;
        *players_per_match.entry(assignment.runtime_id).or_default() += 1;
        socket.say("where").await;
        socket
            .until("match", |event| text_of(event) == Some("match"))
            .await;
    }
    assert_eq!(players_per_match.len(), 3, "{players_per_match:?}");
    assert!(players_per_match.values().all(|&players| players == 2));
}

/// Deploys `archive` as the next version without the upload's check of its logic, as a version
/// stored before uploads were checked would be: logic that cannot start must strand nobody.
/// (The upload stores valid logic; its bundle is then swapped for `archive` in the database.)
async fn deploy_unchecked(
    app: &TestApp,
    archive: Vec<u8>,
    overrides: serde_json::Value,
) -> (RallyClient, String) {
    let admin = app.admin().await;
    let version = admin
        .upload_version("studio", "game", lab_bundle(), None)
        .await
        .unwrap();
    let bundle = rally_sdk::bundle::inspect(&archive, &app.config.bundle_limits()).unwrap();
    let database = app.state.database.writer();
    sqlx::query("INSERT INTO bundles (sha256, content, size, created_at) VALUES ($1, $2, $3, 0)")
        .bind(&bundle.sha256)
        .bind(archive.clone())
        .bind(archive.len() as i64)
        .execute(database)
        .await
        .unwrap();
    sqlx::query("UPDATE versions SET bundle_sha256 = $1 WHERE id = $2")
        .bind(&bundle.sha256)
        .bind(&version.id)
        .execute(database)
        .await
        .unwrap();
    let deployment = deploy_version(&admin, "studio", version.number, overrides).await;
    (admin, deployment)
}

/// The lab logic with a match file that fails when loaded: every match runtime dies at start.
fn lab_bundle_with_a_broken_match() -> Vec<u8> {
    lab_bundle_with_match("broken.lua", Some("error(\"this match cannot start\")"))
}

/// A deploy takes effect for matchmaking when it answers: two players in a lobby of version 1
/// who ask for a match right after version 2 is deployed are matched on version 2, not on
/// version 1 until the supervisor's next pass.
async fn a_deploy_takes_effect_for_matchmaking_at_once(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut socket = connect(&app, &player(&app).await).await;
        socket.greeted_and_assigned().await;
        sockets.push(socket);
    }
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    for socket in &mut sockets {
        socket.say("match:duo").await;
    }
    for socket in &mut sockets {
        let assignment = socket.assigned_to(RuntimeKind::Match).await;
        assert_eq!(assignment.version, 2, "{assignment:?}");
    }
    app.stop().await;
}

async fn matches_outlive_a_new_deployment_and_broken_ones_strand_nobody(backend: Backend) {
    let app = app(backend, |config| config.matchmaking_timeout_secs = 3).await;
    let (admin, first) = deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let bea = player(&app).await;
    let cy = player(&app).await;
    let mut ada_socket = connect(&app, &ada).await;
    let mut bea_socket = connect(&app, &bea).await;
    let mut cy_socket = connect(&app, &cy).await;
    for socket in [&mut ada_socket, &mut bea_socket, &mut cy_socket] {
        socket.greeted_and_assigned().await;
    }
    // Cy asks and leaves: her request goes with her, so ada and bea are matched together.
    cy_socket.say("match:duo").await;
    cy_socket
        .send_raw(Message::Text(r#"{"type":"leave"}"#.into()))
        .await;
    cy_socket.closed().await;
    ada_socket.say("match:duo").await;
    bea_socket.say("match:duo").await;
    let mut match_runtime = String::new();
    for socket in [&mut ada_socket, &mut bea_socket] {
        match_runtime = socket.assigned_to(RuntimeKind::Match).await.runtime_id;
    }

    // A new version while they play: the match runs on, on version 1.
    let (_, second) = deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ada_socket.echo("still playing").await;
    let old = admin
        .list_runtimes("studio", "game", "default", &first)
        .await
        .unwrap();
    assert!(
        old.iter()
            .any(|r| r.id == match_runtime && r.status == "running"),
        "{old:#?}"
    );
    // When it ends they go back to a lobby of their deployment, and play on.
    ada_socket.say("stop").await;
    for socket in [&mut ada_socket, &mut bea_socket] {
        socket
            .until("runtime_assigned (lobby)", |event| {
                matches!(event, PlayerEvent::RuntimeAssigned(a) if a.qualifier == RuntimeKind::Lobby && a.version == 1)
            })
            .await;
        socket.echo("back").await;
    }
    // Their next match forms on the current version, and takes them along to it.
    ada_socket.say("match:duo").await;
    bea_socket.say("match:duo").await;
    for socket in [&mut ada_socket, &mut bea_socket] {
        socket
            .until("runtime_assigned (v2 match)", |event| {
                matches!(event, PlayerEvent::RuntimeAssigned(a) if a.qualifier == RuntimeKind::Match && a.version == 2)
            })
            .await;
    }
    ada_socket.say("stop").await;
    for socket in [&mut ada_socket, &mut bea_socket] {
        socket
            .until("runtime_assigned (v2 lobby)", |event| {
                matches!(event, PlayerEvent::RuntimeAssigned(a) if a.qualifier == RuntimeKind::Lobby && a.version == 2)
            })
            .await;
    }
    drop(ada_socket);
    drop(bea_socket);

    // Version 3's match logic fails when loaded: its match runtimes die at start. The players
    // hear that no match could be made, and stay in their lobby.
    let (_, third) = deploy_unchecked(
        &app,
        lab_bundle_with_a_broken_match(),
        serde_json::json!({"min_lobbies": 1}),
    )
    .await;
    assert_ne!(second, third);
    let dan = player(&app).await;
    let eve = player(&app).await;
    let mut dan_socket = connect(&app, &dan).await;
    let mut eve_socket = connect(&app, &eve).await;
    dan_socket.greeted_and_assigned().await;
    eve_socket.greeted_and_assigned().await;
    dan_socket.say("match:duo").await;
    eve_socket.say("match:duo").await;
    for socket in [&mut dan_socket, &mut eve_socket] {
        let failed = socket
            .until("matchmaking_failed", |event| {
                matches!(event, PlayerEvent::MatchmakingFailed { .. })
            })
            .await;
        assert!(
            matches!(&failed, PlayerEvent::MatchmakingFailed { reason, .. } if reason == "no_runtime"),
            "{failed:?}"
        );
        socket.say("where").await;
        socket
            .until("lobby", |event| text_of(event) == Some("lobby"))
            .await;
    }
}

/// The database refuses the journal's writes for a while: SQLite is locked by another writer
/// past the busy timeout; PostgreSQL holds the table locked, then drops every connection of
/// the platform. Profiles set meanwhile reach the database once it is back.
/// The database refuses writes for 10 s while a runtime writes a profile: the write is kept and
/// retried until it goes in, and (causal durability) the message the runtime sent after it
/// reaches the player only once it is committed, so a player is never shown a result that a
/// crash could still take back.
async fn profiles_survive_a_database_that_refuses_writes(backend: Backend) {
    use sqlx::Connection;
    let app = app(backend, |_| {}).await;
    deploy(&app, lab_bundle(), serde_json::json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let mut socket = connect(&app, &ada).await;
    socket.greeted_and_assigned().await;
    let stored_profile = || async {
        sqlx::query_scalar::<_, String>("SELECT profile FROM players WHERE user_id = $1")
            .bind(&ada.user_id)
            .fetch_optional(app.state.database.reader())
            .await
            .ok()
            .flatten()
    };

    sqlx::any::install_default_drivers();
    let mut blocker = sqlx::AnyConnection::connect(&app.database.url)
        .await
        .unwrap();
    let outage_started = Instant::now();
    match backend {
        Backend::Sqlite => {
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut blocker)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
            sqlx::query("LOCK TABLE players IN ACCESS EXCLUSIVE MODE")
                .execute(&mut blocker)
                .await
                .unwrap();
        }
    }
    socket.say("profile:42").await;
    // "saved" was sent after the profile write: it waits for the database.
    let early = tokio::time::timeout(Duration::from_secs(3), async {
        socket
            .until("saved", |event| text_of(event) == Some("saved"))
            .await
    })
    .await;
    assert!(
        early.is_err(),
        "a message sent after a profile write arrived before the write was committed"
    );
    if backend == Backend::Postgres {
        // The journal's update waits on the lock; ending its connection fails the batch.
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut blocker)
        .await
        .unwrap();
    }
    // (On SQLite the journal's transaction fails past the 5 s busy timeout, and again after.)
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage_started.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();

    socket
        .until("saved", |event| text_of(event) == Some("saved"))
        .await;
    assert_eq!(
        stored_profile().await.as_deref(),
        Some(r#"{"wins":42}"#),
        "the player was told before the profile was committed"
    );
    // The relay goes on after the outage.
    socket.echo("after the outage").await;
}

on_both_backends!(
    answers_bigger_than_a_frame_arrive_whole_and_in_order,
    a_player_is_greeted_assigned_and_echoed,
    the_long_poll_fallback_carries_the_same_events,
    bad_input_gets_clear_errors_and_the_socket_lives_on,
    lobbies_fill_up_and_new_ones_open,
    a_reconnect_resumes_within_the_grace_period_and_not_after,
    runtime_commands_take_effect_and_stay_within_the_runtime,
    a_dead_lobby_sends_its_clients_to_another,
    a_new_version_takes_new_clients_and_the_old_lobby_closes_when_empty,
    a_platform_restart_keeps_clients_and_profiles,
    idle_lobbies_above_the_minimum_close,
    matchmaking_moves_players_into_a_match_and_back,
    matches_outlive_a_new_deployment_and_broken_ones_strand_nobody,
    a_deploy_takes_effect_for_matchmaking_at_once,
    a_burst_of_matches_starts_in_turn_and_strands_nobody,
    profiles_survive_a_database_that_refuses_writes,
);

//! The dispatcher on its own: clients, lobbies and runtime commands, with a real SQLite
//! database behind its journal and no sockets (what a connection would read is read from the
//! queues directly).

use super::*;
use rally_sdk::player::{ClientConfig, PlayerEvent};
use rally_sdk::runtime::{Payload, Qualifier, RuntimeCommand};
use std::time::Duration;

fn limits() -> PlayerLimits {
    PlayerLimits {
        max_frame_bytes: 4096,
        messages_per_sec: 1_000_000,
        reconnect_grace: Duration::from_secs(30),
        outbox_events: 64,
        heartbeat: Duration::from_secs(10),
        matchmaking_timeout: Duration::from_secs(30),
    }
}

async fn dispatcher() -> (Dispatcher, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/rally.db", directory.path().display());
    let database = Database::open(&url, 2).await.unwrap();
    (
        Dispatcher::new(limits(), database, "node-1".to_owned()),
        directory,
    )
}

fn lobby(max_clients: usize) -> RuntimeDescription {
    RuntimeDescription {
        deployment_id: "d1".to_owned(),
        qualifier: Qualifier::Lobby,
        mode: None,
        version: 1,
        client_config: ClientConfig {
            user_data: serde_json::json!({}),
            tick_rate: 10,
        },
        max_clients,
        modes: Arc::default(),
    }
}

/// A client of deployment `d1`, connected: its queue's reading end.
fn connected(dispatcher: &Dispatcher, client_id: &str) -> Arc<ClientLine> {
    dispatcher.add_client(NewClient {
        client_id: client_id.to_owned(),
        user_id: format!("user-{client_id}"),
        player_id: format!("player-{client_id}"),
        deployment_id: "d1".to_owned(),
        runtime_id: None,
        group: None,
        profile: serde_json::json!({}),
        restored: false,
    });
    dispatcher
        .attach(client_id, &format!("user-{client_id}"))
        .unwrap()
        .line
}

/// Every event queued for a client so far.
async fn events(line: &ClientLine) -> Vec<PlayerEvent> {
    let mut inbox = line.inbox.lock().await;
    let mut events = Vec::new();
    while let Ok(outgoing) = inbox.receiver.try_recv() {
        events.push(outgoing.to_event());
    }
    events
}

fn assigned_to(events: &[PlayerEvent]) -> Option<String> {
    events.iter().rev().find_map(|event| match event {
        PlayerEvent::RuntimeAssigned(assignment) => Some(assignment.runtime_id.clone()),
        _ => None,
    })
}

fn text(text: &str) -> Payload {
    Payload::Text(text.to_owned())
}

#[tokio::test]
async fn clients_take_the_emptiest_lobby_with_room_and_wait_in_line_for_one() {
    let (dispatcher, _directory) = dispatcher().await;
    dispatcher.runtime_connected("r1", lobby(2));
    let ada = connected(&dispatcher, "ada");
    let bob = connected(&dispatcher, "bob");
    let cyd = connected(&dispatcher, "cyd");
    assert_eq!(assigned_to(&events(&ada).await).as_deref(), Some("r1"));
    assert_eq!(assigned_to(&events(&bob).await).as_deref(), Some("r1"));
    // The lobby is full: the third waits, and the supervisor hears of it.
    assert_eq!(assigned_to(&events(&cyd).await), None);
    let demand = dispatcher.lobby_demand();
    assert_eq!(demand.len(), 1);
    assert_eq!(
        (demand[0].deployment_id.as_str(), demand[0].waiting),
        ("d1", 1)
    );
    // A new lobby takes the one in line.
    dispatcher.runtime_connected("r2", lobby(2));
    assert_eq!(assigned_to(&events(&cyd).await).as_deref(), Some("r2"));
    assert!(dispatcher.lobby_demand().is_empty());
    // The next client goes to the emptier lobby.
    let dee = connected(&dispatcher, "dee");
    assert_eq!(assigned_to(&events(&dee).await).as_deref(), Some("r2"));
}

#[tokio::test]
async fn a_runtime_reaches_only_its_own_clients() {
    let (dispatcher, _directory) = dispatcher().await;
    dispatcher.runtime_connected("r1", lobby(1));
    let ada = connected(&dispatcher, "ada");
    dispatcher.runtime_connected("r2", lobby(1));
    let bob = connected(&dispatcher, "bob");
    events(&ada).await;
    events(&bob).await;

    let replies = dispatcher.runtime_commands(
        "r1",
        vec![
            RuntimeCommand::RespondClient {
                client_id: "bob".to_owned(),
                payload: text("not yours"),
            },
            RuntimeCommand::Broadcast {
                payload: text("hello lobby"),
            },
        ],
    );
    assert!(
        matches!(&replies[..], [PlatformMessage::Error { code, .. }] if code == "unknown_client"),
        "{replies:?}"
    );
    let to_ada = events(&ada).await;
    assert!(
        matches!(&to_ada[..], [PlayerEvent::Message { text: Some(text), .. }] if text == "hello lobby"),
        "{to_ada:?}"
    );
    assert!(
        events(&bob).await.is_empty(),
        "nothing crossed to r2's client"
    );
}

#[tokio::test]
async fn a_runtime_that_ends_sends_its_clients_to_another_lobby() {
    let (dispatcher, _directory) = dispatcher().await;
    dispatcher.runtime_connected("r1", lobby(10));
    let ada = connected(&dispatcher, "ada");
    events(&ada).await;
    dispatcher.runtime_connected("r2", lobby(10));
    dispatcher.runtime_ended("r1", true);
    let after = events(&ada).await;
    assert!(
        after.iter().any(
            |event| matches!(event, PlayerEvent::Error { code, .. } if code == "runtime_failed")
        ),
        "{after:?}"
    );
    assert_eq!(assigned_to(&after).as_deref(), Some("r2"));
    // Its moves are journalled and written.
    tokio::time::timeout(Duration::from_secs(5), dispatcher.flush())
        .await
        .expect("the journal writes");
    assert_eq!(dispatcher.journal_backlog(), 0);
}

#[tokio::test]
async fn bad_profiles_are_refused_and_good_ones_take_effect() {
    let (dispatcher, _directory) = dispatcher().await;
    dispatcher.runtime_connected("r1", lobby(10));
    let ada = connected(&dispatcher, "ada");
    events(&ada).await;
    let set = |profile| RuntimeCommand::SetProfile {
        client_id: "ada".to_owned(),
        profile,
    };
    let replies = dispatcher.runtime_commands(
        "r1",
        vec![
            set(serde_json::json!([1, 2])),
            set(serde_json::json!({"big": "x".repeat(70 * 1024)})),
            set(serde_json::json!({"wins": 3})),
        ],
    );
    let codes: Vec<&str> = replies
        .iter()
        .map(|reply| match reply {
            PlatformMessage::Error { code, .. } => code.as_str(),
            other => panic!("not an error: {other:?}"),
        })
        .collect();
    assert_eq!(codes, ["invalid_profile", "profile_too_large"]);
    let profile = dispatcher.state().clients["ada"].profile.clone();
    assert_eq!(profile, serde_json::json!({"wins": 3}));
}

#[tokio::test]
async fn a_runtime_that_stops_reading_refuses_messages_once_its_queue_is_full() {
    let (dispatcher, _directory) = dispatcher().await;
    // Nothing reads r1's queue: its socket is stuck.
    dispatcher.runtime_connected("r1", lobby(10));
    let ada = connected(&dispatcher, "ada");
    events(&ada).await;
    // (One place is taken by ada's `client_assigned`.)
    let fits = RUNTIME_OUTBOX - 1;
    for n in 0..fits {
        dispatcher.client_message("ada", text(&n.to_string()));
    }
    assert!(events(&ada).await.is_empty(), "the queue holds them all");
    dispatcher.client_message("ada", text("one too many"));
    let refused = events(&ada).await;
    assert!(
        matches!(&refused[..], [PlayerEvent::Error { code, .. }] if code == "runtime_busy"),
        "{refused:?}"
    );
    // What was queued is all there, in order, for the runtime's next connection.
    let attached = dispatcher.runtime_connected("r1", lobby(10));
    let mut receiver = attached.receiver.lock().await;
    let mut queued = Vec::new();
    while let Ok(message) = receiver.try_recv() {
        if let PlatformMessage::MessageReceived { payload, .. } = message {
            queued.push(payload);
        }
    }
    assert_eq!(queued.len(), fits);
    assert_eq!(queued.first(), Some(&text("0")));
    assert_eq!(queued.last(), Some(&text(&(fits - 1).to_string())));
}

//! `examples/tictactoe` played through the platform by two real WebSocket players: matchmaking
//! into a 2-player match, a win with illegal moves refused on the way, a draw, and a forfeit,
//! with the win counters read back from the player profiles.

use crate::helpers::{Backend, TestApp};
use crate::on_both_backends;
use crate::players::{app, connect, deploy, player, Player, Socket};
use rally_sdk::player::{PlayerEvent, RuntimeKind};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) fn tictactoe_bundle() -> Vec<u8> {
    let directory = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tictactoe"
    ));
    rally_sdk::bundle::pack(directory, &rally_sdk::bundle::BundleLimits::default()).unwrap()
}

/// Two new players connected to stage `default`, each greeted, seated in a lobby and welcomed:
/// their sockets.
pub(crate) async fn two_players_in_a_lobby(app: &TestApp) -> (Socket, Socket) {
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut socket = connect(app, &player(app).await).await;
        socket.greeted_and_assigned().await;
        next_game_message(&mut socket, "welcome").await;
        sockets.push(socket);
    }
    let second = sockets.pop().expect("two sockets");
    let first = sockets.pop().expect("two sockets");
    (first, second)
}

/// The game's messages are JSON in `message` events.
pub(crate) async fn next_game_message(socket: &mut Socket, kind: &str) -> Value {
    let event = socket
        .until(&format!("a {kind:?} message"), |event| {
            game_message(event).is_some_and(|message| message["type"] == kind)
        })
        .await;
    game_message(&event).unwrap()
}

fn game_message(event: &PlayerEvent) -> Option<Value> {
    match event {
        PlayerEvent::Message {
            text: Some(text), ..
        } => serde_json::from_str(text).ok(),
        _ => None,
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket.say(&message.to_string()).await;
}

/// Both players ask to play; returns their sockets ordered (x, o) once the match started.
pub(crate) async fn start_match<'a>(
    first: &'a mut Socket,
    second: &'a mut Socket,
) -> (&'a mut Socket, &'a mut Socket) {
    send(first, json!({"type": "play"})).await;
    send(second, json!({"type": "play"})).await;
    let mut marks = Vec::new();
    for socket in [&mut *first, &mut *second] {
        socket.assigned_to(RuntimeKind::Match).await;
        let start = next_game_message(socket, "start").await;
        assert_eq!(start["board"], "---------");
        assert_eq!(start["turn"], "x");
        marks.push(start["you"].as_str().unwrap().to_owned());
    }
    if marks[0] == "x" {
        assert_eq!(marks[1], "o");
        (first, second)
    } else {
        assert_eq!(marks, ["o", "x"]);
        (second, first)
    }
}

async fn move_to(socket: &mut Socket, cell: i64) {
    send(socket, json!({"type": "move", "cell": cell})).await;
}

/// Plays `moves` alternately starting with x; each valid move is seen by both players.
pub(crate) async fn play(x: &mut Socket, o: &mut Socket, moves: &[i64]) {
    for (turn, cell) in moves.iter().enumerate() {
        let (mover, other) = if turn % 2 == 0 {
            (&mut *x, &mut *o)
        } else {
            (&mut *o, &mut *x)
        };
        move_to(mover, *cell).await;
        for socket in [mover, other] {
            let state = next_game_message(socket, "state").await;
            assert_eq!(state["last"]["cell"], *cell);
        }
    }
}

pub(crate) async fn back_in_lobby(socket: &mut Socket) -> Value {
    socket.assigned_to(RuntimeKind::Lobby).await;
    next_game_message(socket, "welcome").await
}

async fn wins(player: &Player) -> i64 {
    // Profiles are written by the platform's journal a moment after set_profile.
    for _ in 0..50 {
        let me = player
            .api
            .my_player("studio", "game", "default")
            .await
            .unwrap();
        if let Some(wins) = me.profile["wins"].as_i64() {
            return wins;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    0
}

async fn two_players_play_win_draw_and_forfeit(backend: Backend) {
    let app = app(backend, |_| {}).await;
    deploy(&app, tictactoe_bundle(), json!({"min_lobbies": 1})).await;
    let ada = player(&app).await;
    let bea = player(&app).await;
    let mut ada_socket = connect(&app, &ada).await;
    let mut bea_socket = connect(&app, &bea).await;
    for socket in [&mut ada_socket, &mut bea_socket] {
        socket.greeted_and_assigned().await;
        let welcome = next_game_message(socket, "welcome").await;
        assert_eq!(welcome["wins"], 0);
    }

    // Game 1: x wins on the top row; illegal moves are refused and change nothing.
    let (x, o) = start_match(&mut ada_socket, &mut bea_socket).await;
    move_to(o, 4).await;
    assert_eq!(
        next_game_message(o, "illegal").await["reason"],
        "not_your_turn"
    );
    move_to(x, 9).await;
    assert_eq!(next_game_message(x, "illegal").await["reason"], "bad_cell");
    play(x, o, &[0, 3]).await;
    move_to(x, 3).await;
    assert_eq!(
        next_game_message(x, "illegal").await["reason"],
        "cell_taken"
    );
    play(x, o, &[1, 4, 2]).await;
    for socket in [&mut *x, &mut *o] {
        let over = next_game_message(socket, "over").await;
        assert_eq!(over["result"], "win");
        assert_eq!(over["winner"], "x");
        assert_eq!(over["board"], "xxxoo----");
    }
    // The match ends; both are back in a lobby, the winner's record updated.
    let x_welcome = back_in_lobby(x).await;
    let o_welcome = back_in_lobby(o).await;
    assert_eq!(
        (x_welcome["wins"].clone(), x_welcome["losses"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(
        (o_welcome["wins"].clone(), o_welcome["losses"].clone()),
        (json!(0), json!(1))
    );

    // Game 2: a draw.
    let (x, o) = start_match(&mut ada_socket, &mut bea_socket).await;
    play(x, o, &[0, 1, 2, 4, 3, 5, 7, 6, 8]).await;
    for socket in [&mut *x, &mut *o] {
        let over = next_game_message(socket, "over").await;
        assert_eq!(over["result"], "draw");
        assert_eq!(over["winner"], Value::Null);
        let welcome = back_in_lobby(socket).await;
        assert_eq!(welcome["draws"], 1);
    }

    // Game 3: o leaves mid-game; x wins by forfeit and goes back to a lobby.
    let (x, o) = start_match(&mut ada_socket, &mut bea_socket).await;
    play(x, o, &[4]).await;
    o.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"leave"}"#.into(),
    ))
    .await;
    let over = next_game_message(x, "over").await;
    assert_eq!(over["result"], "forfeit");
    assert_eq!(over["winner"], "x");
    let welcome = back_in_lobby(x).await;
    let x_wins = welcome["wins"].as_i64().unwrap();
    assert!(x_wins >= 1, "{welcome}");

    // The records are in the profiles, readable through the API.
    let (ada_wins, bea_wins) = (wins(&ada).await, wins(&bea).await);
    assert_eq!(ada_wins + bea_wins, 2, "one win and one forfeit were won");
}

on_both_backends!(two_players_play_win_draw_and_forfeit);

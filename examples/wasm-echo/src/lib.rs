//! The "wasm-echo" example: the lobby and the match of a one-on-one duel in one WebAssembly
//! module, the Rust twin of `examples/hello`. The lobby greets clients, echoes what they send
//! and asks for a `duel` on request; the match echoes and ends after a minute.
//! `./build.sh` compiles it to `echo.wasm`; a game starts by copying this directory.

use rally_sdk::guest::{Assignment, Context, Game, Start};
use rally_sdk::runtime::{Payload, Qualifier};

const MATCH_SECONDS: f64 = 60.0;

/// State lives in the module's memory for the runtime's whole life.
#[derive(Default)]
struct Echo {
    /// Set by `on_start`: the same module serves lobbies and matches.
    qualifier: Option<Qualifier>,
    greeting: String,
    elapsed_seconds: f64,
    /// The match asked to stop once; it keeps echoing until the platform stops it.
    stop_sent: bool,
}

impl Game for Echo {
    fn on_start(&mut self, ctx: &mut Context, start: Start) {
        self.qualifier = Some(start.qualifier);
        self.greeting = start.user_data["greeting"]
            .as_str()
            .unwrap_or("Hello!")
            .to_owned();
        match start.mode {
            Some(mode) => ctx.info(&format!("match of mode {mode} started")),
            None => ctx.info(&format!("{} started", start.qualifier.as_str())),
        }
    }

    fn on_client_assigned(&mut self, ctx: &mut Context, client: Assignment) {
        // Greet on arrival so the client knows where it is and what it may send.
        let text = match (self.qualifier, client.group) {
            (Some(Qualifier::Match), Some(group)) => format!("you play for {group}"),
            _ => format!("{} Send \"duel\" to find an opponent.", self.greeting),
        };
        ctx.respond(&client.client_id, Payload::Text(text));
    }

    fn on_client_removed(&mut self, ctx: &mut Context, client_id: &str, reason: &str) {
        ctx.debug(&format!("client {client_id} left: {reason}"));
    }

    fn on_message(&mut self, ctx: &mut Context, client_id: &str, payload: Payload) {
        let in_lobby = self.qualifier != Some(Qualifier::Match);
        if in_lobby && payload == Payload::Text("duel".to_owned()) {
            ctx.request_matchmaking(client_id, "duel");
        } else {
            // Text comes back as text, binary as binary.
            ctx.respond(client_id, payload);
        }
    }

    fn on_tick(&mut self, ctx: &mut Context, dt: f64) {
        if self.qualifier != Some(Qualifier::Match) {
            return; // A lobby has nothing to simulate; matchmaking happens in the platform.
        }
        self.elapsed_seconds += dt;
        if self.elapsed_seconds >= MATCH_SECONDS && !self.stop_sent {
            self.stop_sent = true;
            ctx.stop_match("time is up");
        }
    }

    fn on_stop(&mut self, ctx: &mut Context) {
        match self.qualifier {
            Some(Qualifier::Match) => ctx.info(&format!(
                "match over after {} s",
                self.elapsed_seconds.floor()
            )),
            _ => ctx.info("lobby stopping"),
        }
    }
}

rally_sdk::export_game!(Echo);

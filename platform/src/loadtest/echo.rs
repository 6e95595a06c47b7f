//! A player of scenario `players`: once set up, idles in its lobby until the scenario says to
//! send, then sends messages at its pace and times their echoes until told to stop. One task
//! per player owns its socket.

use super::session::{self, client_deleted, error_event, event_in, Game, Moved, Rejoin, Socket};
use super::stats::Stats;
use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use rally_sdk::player::{PlayerCommand, PlayerEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// An echo this late is given up on and counted as lost: the platform drops messages beyond a
/// client's rate limit (with one `rate_limited` error a second, not one per message), and a
/// closed-loop player waiting for them would stall for good.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the scenario asks of all players, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Players connect, then wait connected and idle until everyone is.
    Connecting,
    /// Players send messages and time the echoes.
    Sending,
    /// Players leave.
    Stopping,
}

/// How a player paces its messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Pacing {
    /// One message every `period`, whether echoes came back or not (open loop).
    Rate { period: Duration },
    /// The next message as soon as an echo arrives, `in_flight` of them outstanding (closed
    /// loop).
    ClosedLoop { in_flight: usize },
}

/// What every player does, shared by all of them.
pub(super) struct Plan {
    pub game: Game,
    pub pacing: Pacing,
    pub payload_bytes: usize,
    /// Messages go as binary frames, and come back as binary frames.
    pub binary: bool,
}

/// The whole life of one player; what happens to it is counted in `stats`.
pub(super) async fn run_player(plan: Arc<Plan>, stats: Arc<Stats>, phase: watch::Receiver<Phase>) {
    let (socket, rejoin) = match session::set_up_again(&plan.game).await {
        Ok(seated) => seated,
        Err(error) => return stats.failed_to_join(&error),
    };
    stats.joined();
    let mut player = Player {
        socket,
        rejoin,
        plan: &plan,
        stats: &stats,
        probes: Probes::new(plan.payload_bytes),
        send_clock: None,
        loss_check: None,
        sending: false,
    };
    let outcome = player.play(phase).await;
    stats.left(outcome);
}

/// A connected player.
struct Player<'a> {
    socket: Socket,
    /// To get the client back when the socket is lost.
    rejoin: Rejoin,
    plan: &'a Plan,
    stats: &'a Stats,
    probes: Probes,
    /// Ticks when the next message is due at a fixed rate; `None` before sending starts and in
    /// closed loop.
    send_clock: Option<Interval>,
    /// Ticks when to look for echoes older than [`ECHO_TIMEOUT`]; `None` before sending
    /// starts, so that idle players cost no wake-ups.
    loss_check: Option<Interval>,
    sending: bool,
}

impl Player<'_> {
    /// Until told to stop (`Ok`) or until the socket or the client is lost.
    async fn play(&mut self, mut phase: watch::Receiver<Phase>) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                frame = self.socket.next() => {
                    if let Some(Ok(Message::Binary(bytes))) = &frame {
                        let echoed = String::from_utf8_lossy(bytes).into_owned();
                        self.on_echo(&echoed).await?;
                    } else {
                        match event_in(frame) {
                            Ok(Some(event)) => self.on_event(event).await?,
                            Ok(None) => {}
                            Err(ended) => self.rejoin_after(ended).await?,
                        }
                    }
                }
                () = tick(&mut self.send_clock) => self.send_probe().await?,
                () = tick(&mut self.loss_check) => self.give_up_on_lost().await?,
                changed = phase.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the scenario is gone
                    }
                    // Copied out: the borrow must not be held across the awaits below.
                    let now = *phase.borrow_and_update();
                    match now {
                        Phase::Connecting => {}
                        Phase::Sending => self.start_sending().await?,
                        Phase::Stopping => {
                            session::leave(&mut self.socket).await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The socket ended (its node died, or it was sent to another node): the client again,
    /// through the node the player came in by or the one named, counted as a reseat. Messages
    /// waiting for an echo meanwhile are counted lost when their time is up.
    async fn rejoin_after(&mut self, ended: anyhow::Error) -> anyhow::Result<()> {
        let lost_at = Instant::now();
        let moved_to = match ended.downcast::<Moved>() {
            Ok(Moved(node_url)) => Some(node_url),
            Err(_) => None,
        };
        self.socket = session::rejoin(&self.rejoin, moved_to).await?;
        self.stats.reseated(lost_at.elapsed());
        Ok(())
    }

    async fn on_event(&mut self, event: PlayerEvent) -> anyhow::Result<()> {
        match event {
            PlayerEvent::Message {
                text: Some(text), ..
            } => self.on_echo(&text).await?,
            PlayerEvent::Error { code, message } => {
                self.stats.errors.report(error_event(&code, &message));
            }
            PlayerEvent::ClientDeleted { reason, message } => {
                bail!(client_deleted(&reason, message.as_deref()))
            }
            PlayerEvent::Greeted { .. }
            | PlayerEvent::RuntimeAssigned(_)
            | PlayerEvent::MatchmakingFailed { .. }
            | PlayerEvent::Message { text: None, .. } => {}
        }
        Ok(())
    }

    /// A message came back; texts this player did not send (the lobby's greeting) are no echo.
    async fn on_echo(&mut self, text: &str) -> anyhow::Result<()> {
        let Some(latency) = self.probes.answered(text, Instant::now()) else {
            return Ok(());
        };
        self.stats.echoed(latency);
        if self.in_closed_loop() {
            self.send_probe().await?;
        }
        Ok(())
    }

    async fn start_sending(&mut self) -> anyhow::Result<()> {
        self.sending = true;
        self.loss_check = Some(every_second());
        match self.plan.pacing {
            Pacing::Rate { period } => self.send_clock = Some(send_clock(period)),
            Pacing::ClosedLoop { in_flight } => {
                for _ in 0..in_flight {
                    self.send_probe().await?;
                }
            }
        }
        Ok(())
    }

    /// Counts echoes older than [`ECHO_TIMEOUT`] as lost; in closed loop, sends a new message
    /// for each.
    async fn give_up_on_lost(&mut self) -> anyhow::Result<()> {
        let Some(deadline) = Instant::now().checked_sub(ECHO_TIMEOUT) else {
            return Ok(()); // the clock is younger than the timeout: nothing can be that old
        };
        let lost = self.probes.forget_sent_before(deadline);
        self.stats.lost(lost);
        if self.in_closed_loop() {
            for _ in 0..lost {
                self.send_probe().await?;
            }
        }
        Ok(())
    }

    fn in_closed_loop(&self) -> bool {
        self.sending && matches!(self.plan.pacing, Pacing::ClosedLoop { .. })
    }

    async fn send_probe(&mut self) -> anyhow::Result<()> {
        let text = self.probes.next(Instant::now());
        if self.plan.binary {
            let frame = Message::Binary(text.into_bytes().into());
            self.socket.send(frame).await.context("send")?;
        } else {
            let command = PlayerCommand::Message {
                text: Some(text),
                binary: None,
            };
            session::send(&mut self.socket, &command).await?;
        }
        self.stats.sent();
        Ok(())
    }
}

/// A clock ticking every `period`, its first tick at a random point of the first period so that
/// players do not send in lockstep. A player that falls behind skips ticks rather than
/// bursting to catch up.
fn send_clock(period: Duration) -> Interval {
    skipping_clock(period.mul_f64(rand::random::<f64>()), period)
}

fn every_second() -> Interval {
    let second = Duration::from_secs(1);
    skipping_clock(second, second)
}

/// A clock ticking every `period` from `first_tick_in`, which skips the ticks it missed.
fn skipping_clock(first_tick_in: Duration, period: Duration) -> Interval {
    let first_tick = tokio::time::Instant::now() + first_tick_in;
    let mut clock = tokio::time::interval_at(first_tick, period);
    clock.set_missed_tick_behavior(MissedTickBehavior::Skip);
    clock
}

/// The next tick of `clock`; never, without one.
async fn tick(clock: &mut Option<Interval>) {
    match clock {
        Some(clock) => {
            clock.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The messages a player sent and still waits to see echoed. Each text carries a sequence
/// number, so an echo finds its send time whatever the order echoes come back in.
struct Probes {
    payload_bytes: usize,
    next_seq: u64,
    /// Sequence numbers ascending, oldest first.
    waiting: VecDeque<(u64, Instant)>,
}

/// Starts every probe text; what follows is the sequence number, then padding.
const PROBE_PREFIX: &str = "probe#";

impl Probes {
    fn new(payload_bytes: usize) -> Self {
        Self {
            payload_bytes,
            next_seq: 0,
            waiting: VecDeque::new(),
        }
    }

    /// The text of the next message, remembered as sent at `now`.
    fn next(&mut self, now: Instant) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.push_back((seq, now));
        let mut text = format!("{PROBE_PREFIX}{seq}");
        let padding = self.payload_bytes.saturating_sub(text.len());
        text.extend(std::iter::repeat_n('.', padding));
        text
    }

    /// Forgets the messages sent before `deadline`, returning how many.
    fn forget_sent_before(&mut self, deadline: Instant) -> u64 {
        // Sent in order, so the oldest are in front.
        let late = self.waiting.partition_point(|&(_, sent)| sent < deadline);
        self.waiting.drain(..late);
        late as u64
    }

    /// How long before `now` the message that `text` echoes was sent; `None` when this player
    /// did not send `text` or already saw its echo.
    fn answered(&mut self, text: &str, now: Instant) -> Option<Duration> {
        let seq: u64 = text
            .strip_prefix(PROBE_PREFIX)?
            .trim_end_matches('.')
            .parse()
            .ok()?;
        let index = self
            .waiting
            .binary_search_by_key(&seq, |&(seq, _)| seq)
            .ok()?;
        let (_, sent) = self.waiting.remove(index)?;
        Some(now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_padded_to_the_payload_size() {
        let mut probes = Probes::new(32);
        let now = Instant::now();
        assert_eq!(probes.next(now), "probe#0.........................");
        assert_eq!(probes.next(now).len(), 32);
        // Too small a payload does not cut the sequence number.
        assert_eq!(Probes::new(4).next(now), "probe#0");
    }

    #[test]
    fn an_echo_finds_its_send_time_in_any_order() {
        let mut probes = Probes::new(16);
        let start = Instant::now();
        let first = probes.next(start);
        let second = probes.next(start + Duration::from_millis(5));
        let now = start + Duration::from_millis(12);
        assert_eq!(
            probes.answered(&second, now),
            Some(Duration::from_millis(7))
        );
        assert_eq!(
            probes.answered(&first, now),
            Some(Duration::from_millis(12))
        );
        assert_eq!(probes.answered(&first, now), None, "seen already");
    }

    #[test]
    fn late_echoes_are_forgotten() {
        let mut probes = Probes::new(16);
        let start = Instant::now();
        let old = probes.next(start);
        let recent = probes.next(start + Duration::from_secs(3));
        let later = start + Duration::from_secs(5);
        assert_eq!(probes.forget_sent_before(later - ECHO_TIMEOUT / 2), 1);
        assert_eq!(probes.answered(&old, later), None, "given up on");
        assert_eq!(
            probes.answered(&recent, later),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn texts_that_are_no_echo_are_ignored() {
        let mut probes = Probes::new(16);
        probes.next(Instant::now());
        let now = Instant::now();
        assert_eq!(probes.answered("Welcome! Send \"duel\"", now), None);
        assert_eq!(probes.answered("probe#7", now), None, "never sent");
        assert_eq!(probes.answered("probe#x", now), None);
    }
}

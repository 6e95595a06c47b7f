//! What the players of a run saw, written by their tasks and read by the scenario: connection
//! counts, errors, and (scenario `players`) the echo latencies of the current one-second window.

use super::{latency_histogram, Errors};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub(super) struct Stats {
    /// Players in the run.
    players: u64,
    /// Players whose set-up is over, successfully or not.
    set_up: AtomicU64,
    /// Woken when the last set-up is over.
    all_set_up: Notify,
    /// Players connected and assigned a runtime, now.
    connected: AtomicU64,
    /// Set-ups that failed.
    pub connect_errors: Errors,
    /// What went wrong once connected: error events, deleted clients, lost sockets.
    pub errors: Errors,
    /// Messages sent in the current window.
    sent: AtomicU64,
    /// Echoes given up on in the current window.
    lost: AtomicU64,
    /// Round-trip latencies of the current window, microseconds. One histogram for all players:
    /// one each would cost about 200 KiB per player.
    latency: Mutex<Histogram<u64>>,
    /// For players that lost their socket (their node died, or their stage moved) and got
    /// their client back: from the loss to being in a lobby again, microseconds; for the whole
    /// run.
    reseats: Mutex<Histogram<u64>>,
}

/// One window's figures, taken by [`Stats::take_window`].
pub(super) struct Window {
    pub sent: u64,
    pub lost: u64,
    pub latency: Histogram<u64>,
}

impl Stats {
    pub fn new(players: u64) -> Self {
        Self {
            players,
            set_up: AtomicU64::new(0),
            all_set_up: Notify::new(),
            connected: AtomicU64::new(0),
            connect_errors: Errors::default(),
            errors: Errors::default(),
            sent: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
            reseats: Mutex::new(latency_histogram()),
        }
    }

    /// A player that lost its socket is in a lobby again, `after` the loss.
    pub fn reseated(&self, after: Duration) {
        let micros = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
        self.reseats
            .lock()
            .expect("recording does not panic")
            .saturating_record(micros);
    }

    /// The reseats of the whole run.
    pub fn reseats(&self) -> Histogram<u64> {
        self.reseats
            .lock()
            .expect("recording does not panic")
            .clone()
    }

    /// A player is connected and in a lobby.
    pub fn joined(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.set_up_over();
    }

    /// A player's set-up failed; it takes no further part.
    pub fn failed_to_join(&self, error: &anyhow::Error) {
        self.connect_errors
            .report(format_args!("set-up failed: {error:#}"));
        self.set_up_over();
    }

    fn set_up_over(&self) {
        if self.set_up.fetch_add(1, Ordering::Relaxed) + 1 == self.players {
            self.all_set_up.notify_one();
        }
    }

    /// Returns once every player is connected or has failed to.
    pub async fn all_set_up(&self) {
        // `notify_one` keeps its permit when nobody waits yet, so the last set-up is not missed
        // between the check and the wait.
        while self.set_up.load(Ordering::Relaxed) < self.players {
            self.all_set_up.notified().await;
        }
    }

    /// A connected player is gone: told to stop (`Ok`) or because something broke.
    pub fn left(&self, outcome: anyhow::Result<()>) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if let Err(error) = outcome {
            self.errors.report(format_args!("player lost: {error:#}"));
        }
    }

    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lost(&self, echoes: u64) {
        self.lost.fetch_add(echoes, Ordering::Relaxed);
    }

    pub fn echoed(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .lock()
            .expect("recording does not panic")
            .saturating_record(micros);
    }

    /// The current window's figures; a new window starts empty.
    pub fn take_window(&self) -> Window {
        let fresh = latency_histogram();
        let latency = std::mem::replace(
            &mut *self.latency.lock().expect("recording does not panic"),
            fresh,
        );
        Window {
            sent: self.sent.swap(0, Ordering::Relaxed),
            lost: self.lost.swap(0, Ordering::Relaxed),
            latency,
        }
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// All errors: failed set-ups and those of connected players.
    pub fn errors(&self) -> u64 {
        self.connect_errors.count() + self.errors.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ramp_up_ends_when_every_player_is_set_up() {
        let stats = Stats::new(2);
        stats.joined();
        let waiting = tokio::time::timeout(Duration::from_millis(50), stats.all_set_up()).await;
        assert!(waiting.is_err(), "one player is still setting up");
        stats.failed_to_join(&anyhow::anyhow!("refused"));
        stats.all_set_up().await;
        assert_eq!(stats.connected(), 1);
        assert_eq!(stats.errors(), 1);
    }

    #[test]
    fn a_window_holds_what_happened_since_the_last() {
        let stats = Stats::new(1);
        stats.sent();
        stats.sent();
        stats.echoed(Duration::from_micros(1500));
        stats.lost(1);
        let window = stats.take_window();
        assert_eq!((window.sent, window.lost), (2, 1));
        assert_eq!(window.latency.len(), 1);
        assert_eq!(window.latency.max(), 1500);
        let next = stats.take_window();
        assert_eq!((next.sent, next.lost, next.latency.len()), (0, 0, 0));
    }
}

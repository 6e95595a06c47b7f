//! Scenario `players`: N real players on WebSockets against a deployed game whose lobby echoes
//! text messages (`examples/hello`).
//!
//! Phases: the ramp-up sets players up `--connect-concurrency` at a time (sign-up, sign-in,
//! client, socket, lobby assignment) and leaves them connected and idle; the platform's memory
//! is read before and after it. Then every player sends messages (at `--rate`, or closed loop)
//! through a warm-up and the measured seconds; each echo's round trip is timed. Finally the
//! players leave.

use super::echo::{self, Pacing, Phase, Plan};
use super::memory::{self, mib};
use super::session::{self, GameArgs};
use super::stats::{Stats, Window};
use super::{latency_histogram, per_sec, Latency, RunArgs, Scenario};
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Players when `--players` is not given.
const DEFAULT_PLAYERS: u64 = 100;

#[derive(Debug, Args)]
pub(super) struct PlayersArgs {
    /// Messages per second each player sends; 0 sends the next one as soon as an echo
    /// returns (closed loop). The platform drops what exceeds its per-client limit
    /// (`player_messages_per_sec`, 50 by default).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// With `--rate 0`: messages each player keeps outstanding.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Size of each message's text in bytes; it carries a sequence number, padded to this.
    #[arg(long, default_value_t = 32)]
    payload_bytes: usize,
    /// Send each message as a binary WebSocket frame (the lobby echoes it as binary) instead
    /// of a `message` command with text.
    #[arg(long)]
    binary: bool,
}

impl PlayersArgs {
    fn pacing(&self) -> anyhow::Result<Pacing> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be 0 or more"
        );
        if self.rate == 0.0 {
            anyhow::ensure!(self.in_flight > 0, "--in-flight must be at least 1");
            return Ok(Pacing::ClosedLoop {
                in_flight: self.in_flight,
            });
        }
        let period = Duration::try_from_secs_f64(1.0 / self.rate)
            .with_context(|| format!("--rate {} is too low", self.rate))?;
        Ok(Pacing::Rate { period })
    }
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    url: String,
    players: u64,
    /// Players connected when the measurement ended.
    connected: u64,
    /// All errors: failed set-ups, error events, lost players.
    errors: u64,
    /// Of `errors`, the failed set-ups.
    connect_errors: u64,
    /// Messages per second each player sent; 0 for closed loop.
    rate_per_player: f64,
    /// Messages each player kept outstanding in closed loop; null at a fixed rate.
    in_flight: Option<usize>,
    payload_bytes: usize,
    /// Messages went as binary frames.
    binary: bool,
    /// Seconds measured, after the warm-up.
    duration_secs: f64,
    /// Messages sent while measuring.
    messages_sent: u64,
    /// Echoes received while measuring (the first of messages sent during the warm-up).
    round_trips: u64,
    /// Echoes given up on after 5 s while measuring (the platform drops messages beyond a
    /// client's rate limit).
    lost: u64,
    round_trips_per_sec: f64,
    /// From sending a message to receiving its echo, milliseconds.
    latency_ms: Latency,
    /// How long setting up every player took.
    connect_secs: f64,
    /// Players that lost their socket (their node died, or their stage moved) and were in a
    /// lobby again, and how long that took from the loss, milliseconds (null when none did).
    reseated: u64,
    reseat_ms: Option<Latency>,
    /// The platform's memory growth from no players to all connected, per connected player.
    /// Meaningful on a freshly started platform: one that served more players before reuses
    /// the memory it already holds.
    memory_per_player_kib: Option<f64>,
    /// The platform's resident memory before connecting, once all were connected, and at the
    /// end of the measurement.
    rss_before_mib: Option<f64>,
    rss_connected_mib: Option<f64>,
    rss_end_mib: Option<f64>,
}

pub(super) async fn run(run: RunArgs, game: GameArgs, args: PlayersArgs) -> anyhow::Result<()> {
    let player_count = game.players(DEFAULT_PLAYERS)?;
    let pacing = args.pacing()?;
    let (http, client) = game.platform(&run.url, player_count).await?;
    let plan = Arc::new(Plan {
        game: game.game(client.clone())?,
        pacing,
        payload_bytes: args.payload_bytes,
        binary: args.binary,
    });
    let base_url = client.base_url();

    let rss_before = platform_memory(&http, base_url).await;
    let stats = Arc::new(Stats::new(player_count));
    let (phase, phase_receiver) = watch::channel(Phase::Connecting);
    let mut players = JoinSet::new();
    for _ in 0..player_count {
        let task = echo::run_player(plan.clone(), stats.clone(), phase_receiver.clone());
        players.spawn(task);
    }
    let connect_time = session::ramp_up(&stats, player_count).await;
    anyhow::ensure!(
        stats.connected() > 0,
        "no player connected (the first errors are above)"
    );
    let rss_connected = platform_memory(&http, base_url).await;
    let memory_per_player_kib =
        memory::per_player_kib(rss_before, rss_connected, stats.connected());
    if let Some(kib) = memory_per_player_kib {
        eprintln!("loadtest: the platform grew by {kib:.1} KiB per connected player");
    }

    phase.send_replace(Phase::Sending);
    let measured = measure(&stats, &run).await?;
    let rss_end = platform_memory(&http, base_url).await;
    let connected = stats.connected();
    phase.send_replace(Phase::Stopping);
    session::stop(players, &stats).await;

    let reseats = stats.reseats();
    let elapsed_secs = measured.elapsed.as_secs_f64();
    let round_trips = measured.latency.len();
    let report = Report {
        scenario: Scenario::Players,
        url: run.url,
        players: player_count,
        connected,
        errors: stats.errors(),
        connect_errors: stats.connect_errors.count(),
        rate_per_player: args.rate,
        in_flight: match plan.pacing {
            Pacing::Rate { .. } => None,
            Pacing::ClosedLoop { in_flight } => Some(in_flight),
        },
        payload_bytes: args.payload_bytes,
        binary: args.binary,
        duration_secs: elapsed_secs,
        messages_sent: measured.sent,
        round_trips,
        lost: measured.lost,
        round_trips_per_sec: per_sec(round_trips, elapsed_secs),
        latency_ms: Latency::of(&measured.latency),
        connect_secs: connect_time.as_secs_f64(),
        reseated: reseats.len(),
        reseat_ms: (!reseats.is_empty()).then(|| Latency::of(&reseats)),
        memory_per_player_kib,
        rss_before_mib: rss_before.map(mib),
        rss_connected_mib: rss_connected.map(mib),
        rss_end_mib: rss_end.map(mib),
    };
    println!("{}", serde_json::to_string(&report)?);
    anyhow::ensure!(
        round_trips > 0 || measured.sent == 0,
        "no echo came back for the {} messages sent: the stage's lobby does not echo text \
         messages (this scenario needs one that does, e.g. examples/hello)",
        measured.sent
    );
    Ok(())
}

/// The platform's resident memory; `None`, with a warning, when it cannot be read: the run's
/// other figures still stand.
async fn platform_memory(http: &reqwest::Client, base_url: &str) -> Option<f64> {
    memory::resident_bytes(http, base_url)
        .await
        .inspect_err(|error| eprintln!("loadtest: no memory figures: {error:#}"))
        .ok()
}

/// What the measured windows add up to.
struct Measured {
    sent: u64,
    lost: u64,
    latency: Histogram<u64>,
    elapsed: Duration,
}

/// Warm-up and measurement in windows of a second, each printed; the measured ones are added
/// up.
async fn measure(stats: &Stats, run: &RunArgs) -> anyhow::Result<Measured> {
    let mut measured = Measured {
        sent: 0,
        lost: 0,
        latency: latency_histogram(),
        elapsed: Duration::ZERO,
    };
    let started = Instant::now();
    let mut window_started = started;
    for second in 1..=run.warmup_secs + run.duration_secs {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let window = stats.take_window();
        let now = Instant::now();
        let window_time = now - window_started;
        window_started = now;
        let measuring = second > run.warmup_secs;
        let label = if measuring {
            format!("{:>3}s", second - run.warmup_secs)
        } else {
            "warm-up".to_owned()
        };
        print_window(&label, &window, window_time, stats);
        if measuring {
            measured.sent += window.sent;
            measured.lost += window.lost;
            measured.latency.add(&window.latency)?;
            measured.elapsed += window_time;
        }
    }
    Ok(measured)
}

fn print_window(label: &str, window: &Window, window_time: Duration, stats: &Stats) {
    let latency = Latency::of(&window.latency);
    eprintln!(
        "loadtest: {label:>7}  {:>8.0} round trips/s  p50 {:>7.2} ms  p99 {:>7.2} ms  \
         lost {}  errors {}  connected {}",
        per_sec(window.latency.len(), window_time.as_secs_f64()),
        latency.p50,
        latency.p99,
        window.lost,
        stats.errors(),
        stats.connected(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        players: PlayersArgs,
    }

    fn parse(args: &[&str]) -> PlayersArgs {
        let args = ["loadtest"].iter().chain(args);
        Command::try_parse_from(args).unwrap().players
    }

    #[test]
    fn a_rate_paces_by_period() {
        assert_eq!(
            parse(&["--rate", "4"]).pacing().unwrap(),
            Pacing::Rate {
                period: Duration::from_millis(250)
            }
        );
        assert_eq!(
            parse(&[]).pacing().unwrap(),
            Pacing::Rate {
                period: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn rate_zero_is_a_closed_loop() {
        assert_eq!(
            parse(&["--rate", "0", "--in-flight", "3"])
                .pacing()
                .unwrap(),
            Pacing::ClosedLoop { in_flight: 3 }
        );
        assert!(parse(&["--rate", "0", "--in-flight", "0"])
            .pacing()
            .is_err());
    }

    #[test]
    fn rates_that_cannot_pace_are_refused() {
        assert!(parse(&["--rate=-1"]).pacing().is_err());
        assert!(parse(&["--rate", "NaN"]).pacing().is_err());
        assert!(parse(&["--rate", "1e-300"]).pacing().is_err());
    }
}

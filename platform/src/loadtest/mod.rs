//! `rally loadtest`: drives a running platform on loopback and prints its figures: progress
//! once a second on stderr, then one JSON object as the last line of stdout.
//!
//! Scenarios:
//! - `signup` (`signup.rs`): concurrent loops of anonymous sign-up and sign-in, the launch-day
//!   path.
//! - `players` (`players.rs`): N real players on WebSockets, each signed up, assigned to a lobby
//!   and exchanging echoed messages; reports round trips, latency and the platform's memory per
//!   connected player.
//! - `matchmaking` (`matchmaking.rs`): waves of N players asking a lobby for a duel at the same
//!   moment; reports how long each waited for its match runtime, and how many matches formed.
//!
//! `session.rs` sets players up for both of the latter.

mod echo;
mod matchmaking;
mod memory;
mod open_files;
mod players;
mod session;
mod signup;
mod stats;

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// What to drive; `rally loadtest SCENARIO --help` lists that scenario's options.
    #[command(subcommand)]
    scenario: ScenarioArgs,
}

/// Each scenario with its own options only.
#[derive(Debug, Subcommand)]
enum ScenarioArgs {
    /// Anonymous sign-up followed by sign-in, in concurrent loops.
    Signup {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        signup: signup::SignupArgs,
    },
    /// Players on WebSockets exchanging echoed messages with a lobby.
    Players {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten, next_help_heading = "Players")]
        game: session::GameArgs,
        #[command(flatten, next_help_heading = "Messages")]
        players: players::PlayersArgs,
    },
    /// Players on WebSockets asking their lobby for a duel, all at once, in waves.
    Matchmaking {
        /// Platform URL.
        #[arg(long, env = "RALLY_URL", default_value = crate::config::DEFAULT_URL)]
        url: String,
        #[command(flatten, next_help_heading = "Players")]
        game: session::GameArgs,
        #[command(flatten, next_help_heading = "Waves")]
        matchmaking: matchmaking::MatchmakingArgs,
    },
}

/// Where the platform is and how long to measure (scenario matchmaking measures its waves
/// instead).
#[derive(Debug, Args)]
struct RunArgs {
    /// Platform URL.
    #[arg(long, env = "RALLY_URL", default_value = crate::config::DEFAULT_URL)]
    url: String,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
}

/// The scenario a report is of.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Signup,
    Players,
    Matchmaking,
}

pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    match args.scenario {
        ScenarioArgs::Signup { run, signup } => signup::run(run, signup).await,
        ScenarioArgs::Players { run, game, players } => players::run(run, game, players).await,
        ScenarioArgs::Matchmaking {
            url,
            game,
            matchmaking,
        } => matchmaking::run(url, game, matchmaking).await,
    }
}

/// Latency percentiles in milliseconds, from a histogram of microseconds.
#[derive(Debug, Serialize, PartialEq)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50: millis(histogram.value_at_quantile(0.50)),
            p90: millis(histogram.value_at_quantile(0.90)),
            p99: millis(histogram.value_at_quantile(0.99)),
            max: millis(histogram.max()),
        }
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A histogram of latencies in microseconds, from 1 µs to a minute, three significant digits.
/// Each one takes about 200 KiB, so they are kept per worker or shared, never per player.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("the bounds are valid")
}

/// Counts errors and prints the first few, so that a failing run says why without flooding
/// the terminal with thousands of copies of the same line.
#[derive(Debug, Default)]
struct Errors {
    count: AtomicU64,
}

impl Errors {
    const PRINTED: u64 = 5;

    fn report(&self, error: impl Display) {
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::PRINTED {
            eprintln!("loadtest: {error}");
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// `count` events over `elapsed_secs`, as a rate; zero for an empty interval.
fn per_sec(count: u64, elapsed_secs: f64) -> f64 {
    if elapsed_secs > 0.0 {
        count as f64 / elapsed_secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        loadtest: LoadtestArgs,
    }

    #[test]
    fn each_scenario_takes_its_own_options_only() {
        Command::command().debug_assert();
        let command = Command::try_parse_from([
            "loadtest",
            "matchmaking",
            "--players",
            "20",
            "--waves",
            "2",
            "--tenant",
            "studio",
        ])
        .unwrap();
        let ScenarioArgs::Matchmaking { game, .. } = command.loadtest.scenario else {
            panic!("not matchmaking: {command:?}");
        };
        assert_eq!(game.players(100).unwrap(), 20);
        // Another scenario's options are refused, not ignored.
        for (scenario, foreign) in [
            ("players", "--waves"),
            ("signup", "--players"),
            ("matchmaking", "--duration-secs"),
            ("matchmaking", "--rate"),
        ] {
            let error = Command::try_parse_from(["loadtest", scenario, foreign, "1"]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{scenario} {foreign}"
            );
        }
        let error =
            Command::try_parse_from(["loadtest", "signup", "--duration-secs", "0"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn a_scenarios_help_shows_its_options_only() {
        let mut command = Command::command();
        let players = command.find_subcommand_mut("players").unwrap();
        let help = players.render_long_help().to_string();
        for option in ["--rate", "--players", "--duration-secs", "--url"] {
            assert!(help.contains(option), "{option} missing from: {help}");
        }
        for option in ["--waves", "--concurrency"] {
            assert!(!help.contains(option), "{option} in: {help}");
        }
    }

    #[test]
    fn latency_is_reported_in_milliseconds() {
        let mut histogram = latency_histogram();
        for micros in 1..=1000 {
            histogram.record(micros * 100).unwrap();
        }
        let latency = Latency::of(&histogram);
        // Three significant digits: values are exact to within 0.1%.
        assert!((latency.p50 - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.p90 - 90.0).abs() < 0.1, "{latency:?}");
        assert!((latency.p99 - 99.0).abs() < 0.1, "{latency:?}");
        assert!((latency.max - 100.0).abs() < 0.1, "{latency:?}");
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let latency = Latency::of(&latency_histogram());
        assert_eq!(
            latency,
            Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0
            }
        );
    }

    #[test]
    fn rates_of_an_empty_interval_are_zero() {
        assert_eq!(per_sec(500, 2.0), 250.0);
        assert_eq!(per_sec(500, 0.0), 0.0);
    }
}

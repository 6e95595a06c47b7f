//! Scenario `matchmaking`: players asking for a match all at the same moment, against a deployed
//! `examples/hello`, whose lobby greets each arrival and answers the text `duel` with
//! `request_matchmaking(client, "duel")`, a mode of two players.
//!
//! Each wave sets up `--players` new players as scenario `players` does (sign-up, sign-in,
//! client, socket, lobby) and waits until every one has been greeted by its lobby. Then all of
//! them are released at once and send `duel`; each times its request from the send to its
//! `runtime_assigned` with qualifier `match`, or fails on `matchmaking_failed`, an error event,
//! a lost socket, or after [`MATCH_TIMEOUT`]. Once every request has ended, the next wave
//! starts; when the last has ended, all players leave.
//!
//! Each wave has players of its own, and players stay in their matches until the run ends. A
//! hello match only sends its players back to a lobby after a minute; and a player who leaves a
//! running match frees its place, which the platform fills with the next request for the mode
//! (backfill) before it forms a new match, so a later wave would measure backfill rather than
//! matches forming. For the same reason, a run started less than a minute after another on the
//! same deployment joins the matches that run's players left: wait, or redeploy. The report
//! counts the matches a wave shares with an earlier wave of the run as
//! `matches_from_earlier_waves`; it should be 0.

use super::session::{self, client_deleted, error_event, event_in, Game, GameArgs, Socket};
use super::stats::Stats;
use super::{latency_histogram, Errors, Latency, Scenario};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rally_sdk::player::{PlayerCommand, PlayerEvent, RuntimeKind};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// Players in each wave when `--players` is not given.
const DEFAULT_PLAYERS: u64 = 200;

/// The text that makes the hello lobby ask for a match, and the mode it asks for.
const DUEL: &str = "duel";

/// Players a duel takes.
const PLAYERS_PER_MATCH: u64 = 2;

/// A request without an answer this long after it was sent counts as failed. (The platform's
/// own `matchmaking_timeout_secs` is 60 by default.)
const MATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// From the lobby assignment to the lobby's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(super) struct MatchmakingArgs {
    /// Waves of players asking for a match, one after the other, each with new players.
    #[arg(long, default_value_t = 1)]
    waves: u64,
}

/// What the scenario asks of a wave's players, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Players are set up, then wait idle in their lobby until everyone is.
    SettingUp,
    /// Players ask for a match, all at once.
    Requesting,
    /// Players leave.
    Leaving,
}

/// What a request for a match came to, short of an error.
#[derive(Debug, PartialEq)]
enum Outcome {
    Matched {
        latency: Duration,
        runtime_id: String,
    },
    /// `matchmaking_failed`.
    Refused {
        reason: String,
    },
    TimedOut,
}

/// What a wave's players saw of their requests, written by their tasks.
#[derive(Default)]
struct Wave {
    results: Mutex<Results>,
    /// Woken whenever a request ends.
    request_ended: Notify,
    /// Prints the first few failed requests.
    failures: Errors,
}

struct Results {
    /// From each matched player's request to its match assignment, microseconds.
    latency: Histogram<u64>,
    matched: u64,
    matchmaking_failed: u64,
    errors: u64,
    timed_out: u64,
    /// The wave's players in each match runtime, by runtime id.
    players_per_match: HashMap<String, u64>,
    last_sent: Option<Instant>,
    last_ended: Option<Instant>,
}

impl Default for Results {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            matched: 0,
            matchmaking_failed: 0,
            errors: 0,
            timed_out: 0,
            players_per_match: HashMap::new(),
            last_sent: None,
            last_ended: None,
        }
    }
}

impl Results {
    fn ended(&self) -> u64 {
        self.matched + self.failed()
    }

    fn failed(&self) -> u64 {
        self.matchmaking_failed + self.errors + self.timed_out
    }

    /// Matched players whose match got no other player of the wave: they joined a match of an
    /// earlier wave, or their opponent's assignment never came.
    fn unpaired(&self) -> u64 {
        let alone = self
            .players_per_match
            .values()
            .filter(|&&players| players == 1);
        alone.count() as u64
    }
}

impl Wave {
    fn lock(&self) -> std::sync::MutexGuard<'_, Results> {
        self.results.lock().expect("recording does not panic")
    }

    fn request_sent(&self, at: Instant) {
        let mut results = self.lock();
        results.last_sent = results.last_sent.max(Some(at));
    }

    fn request_ended(&self, outcome: anyhow::Result<Outcome>) {
        let now = Instant::now();
        let mut results = self.lock();
        match outcome {
            Ok(Outcome::Matched {
                latency,
                runtime_id,
            }) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                results.latency.saturating_record(micros);
                results.matched += 1;
                *results.players_per_match.entry(runtime_id).or_default() += 1;
            }
            Ok(Outcome::Refused { reason }) => {
                results.matchmaking_failed += 1;
                self.failures
                    .report(format_args!("matchmaking failed: {reason}"));
            }
            Ok(Outcome::TimedOut) => {
                results.timed_out += 1;
                self.failures.report(format_args!(
                    "no match within {} s",
                    MATCH_TIMEOUT.as_secs()
                ));
            }
            Err(error) => {
                results.errors += 1;
                self.failures
                    .report(format_args!("request failed: {error:#}"));
            }
        }
        results.last_ended = results.last_ended.max(Some(now));
        drop(results);
        self.request_ended.notify_one();
    }

    /// Returns once `requests` requests have ended.
    async fn all_ended(&self, requests: u64) {
        // `notify_one` keeps its permit when nobody waits yet, so no end is missed between the
        // check and the wait.
        while self.lock().ended() < requests {
            self.request_ended.notified().await;
        }
    }
}

/// Counts of a wave, or of all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
struct Counts {
    players: u64,
    /// Players set up and greeted in a lobby, who asked for a match.
    requested: u64,
    /// Players whose set-up failed.
    connect_errors: u64,
    /// Requests answered with a match assignment.
    matched: u64,
    /// Requests that failed: `matchmaking_failed + request_errors + timed_out`.
    failed: u64,
    /// Requests answered with `matchmaking_failed`.
    matchmaking_failed: u64,
    /// Requests ended by an error event, a deleted client or a lost socket.
    request_errors: u64,
    /// Requests without an answer after 30 s.
    timed_out: u64,
    /// Distinct match runtimes the matched players were assigned to; `matched / 2` when every
    /// match formed of two players of the wave.
    matches_formed: u64,
    /// Matched players whose match got no other player of their wave.
    unpaired: u64,
    /// Of `matches_formed`, matches that players of an earlier wave were assigned to.
    matches_from_earlier_waves: u64,
    /// Errors outside requests: error events while idle, sockets lost before leaving.
    other_errors: u64,
}

impl Counts {
    fn add(&mut self, wave: &Counts) {
        self.players += wave.players;
        self.requested += wave.requested;
        self.connect_errors += wave.connect_errors;
        self.matched += wave.matched;
        self.failed += wave.failed;
        self.matchmaking_failed += wave.matchmaking_failed;
        self.request_errors += wave.request_errors;
        self.timed_out += wave.timed_out;
        self.matches_formed += wave.matches_formed;
        self.unpaired += wave.unpaired;
        self.matches_from_earlier_waves += wave.matches_from_earlier_waves;
        self.other_errors += wave.other_errors;
    }
}

#[derive(Debug, Serialize)]
struct WaveReport {
    wave: u64,
    #[serde(flatten)]
    counts: Counts,
    /// From sending `duel` to the match assignment, milliseconds.
    latency_ms: Latency,
    /// How long setting up the wave's players took.
    connect_secs: f64,
    /// From releasing the players to the last one sending its request: how far from "at the
    /// same moment" the requests were.
    requests_spread_ms: f64,
    /// From releasing the players to the last request's end.
    wave_secs: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    url: String,
    players_per_wave: u64,
    waves: u64,
    /// All waves together.
    #[serde(flatten)]
    counts: Counts,
    latency_ms: Latency,
    /// The waves' `wave_secs`, added up.
    wave_secs: f64,
    per_wave: Vec<WaveReport>,
}

pub(super) async fn run(url: String, game: GameArgs, args: MatchmakingArgs) -> anyhow::Result<()> {
    let players = players_per_wave(&game)?;
    anyhow::ensure!(args.waves > 0, "--waves must be at least 1");
    let (_http, client) = game.platform(&url, players * args.waves).await?;
    let game = Arc::new(game.game(client)?);

    let mut earlier_matches = HashSet::new();
    let mut waves = Vec::new();
    for number in 1..=args.waves {
        eprintln!(
            "loadtest: wave {number}/{}: setting up {players} players",
            args.waves
        );
        waves.push(run_wave(&game, players, number, &mut earlier_matches).await?);
    }
    for wave in &waves {
        wave.step.send_replace(Step::Leaving);
    }
    let mut counts = Counts::default();
    let mut latency = latency_histogram();
    let mut per_wave = Vec::new();
    for mut wave in waves {
        session::stop(wave.players, &wave.stats).await;
        wave.report.counts.other_errors = wave.stats.errors.count();
        counts.add(&wave.report.counts);
        latency.add(&wave.latency)?;
        per_wave.push(wave.report);
    }
    let report = Report {
        scenario: Scenario::Matchmaking,
        url,
        players_per_wave: players,
        waves: args.waves,
        counts,
        latency_ms: Latency::of(&latency),
        wave_secs: per_wave.iter().map(|wave| wave.wave_secs).sum(),
        per_wave,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn players_per_wave(game: &GameArgs) -> anyhow::Result<u64> {
    let players = game.players(DEFAULT_PLAYERS)?;
    anyhow::ensure!(
        players % PLAYERS_PER_MATCH == 0,
        "--players must be even: a {DUEL} takes {PLAYERS_PER_MATCH} players"
    );
    Ok(players)
}

/// A wave whose requests have ended, its players still connected.
struct WaveRun {
    /// Complete but for `other_errors`, known once the players have left.
    report: WaveReport,
    latency: Histogram<u64>,
    stats: Arc<Stats>,
    players: JoinSet<()>,
    step: watch::Sender<Step>,
}

/// One wave: `players` new players set up, then released to ask for a match at once. Adds its
/// match runtimes to `earlier_matches`.
async fn run_wave(
    game: &Arc<Game>,
    players: u64,
    number: u64,
    earlier_matches: &mut HashSet<String>,
) -> anyhow::Result<WaveRun> {
    let stats = Arc::new(Stats::new(players));
    let wave = Arc::new(Wave::default());
    let (step, step_receiver) = watch::channel(Step::SettingUp);
    let mut tasks = JoinSet::new();
    for _ in 0..players {
        let task = run_player(
            game.clone(),
            stats.clone(),
            wave.clone(),
            step_receiver.clone(),
        );
        tasks.spawn(task);
    }
    let connect_time = session::ramp_up(&stats, players).await;
    let connect_errors = stats.connect_errors.count();
    let requested = players - connect_errors;
    anyhow::ensure!(
        requested > 0,
        "no player connected (the first errors are above)"
    );

    let released = Instant::now();
    step.send_replace(Step::Requesting);
    wait_for_requests(&wave, requested, number).await;

    let results = wave.lock();
    let since_release = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| at - released);
    let from_earlier_waves = results
        .players_per_match
        .keys()
        .filter(|runtime_id| earlier_matches.contains(*runtime_id))
        .count();
    earlier_matches.extend(results.players_per_match.keys().cloned());
    let counts = Counts {
        players,
        requested,
        connect_errors,
        matched: results.matched,
        failed: results.failed(),
        matchmaking_failed: results.matchmaking_failed,
        request_errors: results.errors,
        timed_out: results.timed_out,
        matches_formed: results.players_per_match.len() as u64,
        unpaired: results.unpaired(),
        matches_from_earlier_waves: from_earlier_waves as u64,
        other_errors: 0,
    };
    let report = WaveReport {
        wave: number,
        counts,
        latency_ms: Latency::of(&results.latency),
        connect_secs: connect_time.as_secs_f64(),
        requests_spread_ms: since_release(results.last_sent).as_secs_f64() * 1000.0,
        wave_secs: since_release(results.last_ended).as_secs_f64(),
    };
    eprintln!(
        "loadtest: wave {number}: matched {}/{requested} in {:.2} s, p50 {:.1} ms, p99 {:.1} ms, \
         {} matches, failed {}",
        counts.matched,
        report.wave_secs,
        report.latency_ms.p50,
        report.latency_ms.p99,
        counts.matches_formed,
        counts.failed,
    );
    let latency = results.latency.clone();
    drop(results);
    Ok(WaveRun {
        report,
        latency,
        stats,
        players: tasks,
        step,
    })
}

/// Waits until every request has ended, printing progress once a second.
async fn wait_for_requests(wave: &Wave, requests: u64, number: u64) {
    let second = Duration::from_secs(1);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    let all_ended = wave.all_ended(requests);
    tokio::pin!(all_ended);
    loop {
        tokio::select! {
            () = &mut all_ended => return,
            _ = progress.tick() => {
                let results = wave.lock();
                eprintln!(
                    "loadtest: wave {number}: matched {}/{requests}, failed {}",
                    results.matched,
                    results.failed()
                );
            }
        }
    }
}

/// The whole life of one player of a wave: its set-up is counted in `stats`, its request in
/// `wave`.
async fn run_player(
    game: Arc<Game>,
    stats: Arc<Stats>,
    wave: Arc<Wave>,
    mut step: watch::Receiver<Step>,
) {
    let mut socket = match set_up_greeted(&game).await {
        Ok(socket) => socket,
        Err(error) => return stats.failed_to_join(&error),
    };
    stats.joined();
    let outcome = request_match(&mut socket, &mut step, &stats, &wave).await;
    let socket_failed = outcome.is_err();
    wave.request_ended(outcome);
    let stayed = if socket_failed {
        Ok(()) // counted with the request already
    } else {
        wait_for_step(Step::Leaving, &mut socket, &mut step, &stats).await
    };
    session::leave(&mut socket).await;
    stats.left(stayed);
}

/// Set up as in every scenario, and greeted by the lobby: the lobby logic has seen the client
/// arrive and will take its messages.
async fn set_up_greeted(game: &Game) -> anyhow::Result<Socket> {
    let mut socket = session::set_up(game).await?;
    tokio::time::timeout(GREETING_TIMEOUT, greeting(&mut socket))
        .await
        .map_err(|_| {
            anyhow!(
                "no greeting from the lobby within {} s",
                GREETING_TIMEOUT.as_secs()
            )
        })??;
    Ok(socket)
}

/// Reads events until the first text message.
async fn greeting(socket: &mut Socket) -> anyhow::Result<()> {
    loop {
        match event_in(socket.next().await)? {
            Some(PlayerEvent::Message { text: Some(_), .. }) => return Ok(()),
            Some(PlayerEvent::Error { code, message }) => bail!(error_event(&code, &message)),
            Some(PlayerEvent::ClientDeleted { reason, message }) => {
                bail!(client_deleted(&reason, message.as_deref()))
            }
            Some(_) | None => {}
        }
    }
}

/// Waits for the release, sends `duel` and waits for the answer.
async fn request_match(
    socket: &mut Socket,
    step: &mut watch::Receiver<Step>,
    stats: &Stats,
    wave: &Wave,
) -> anyhow::Result<Outcome> {
    wait_for_step(Step::Requesting, socket, step, stats)
        .await
        .context("before the request")?;
    let sent = Instant::now();
    let duel = PlayerCommand::Message {
        text: Some(DUEL.to_owned()),
        binary: None,
    };
    session::send(socket, &duel).await?;
    wave.request_sent(sent);
    let answer = match tokio::time::timeout(MATCH_TIMEOUT, match_answer(socket)).await {
        Ok(answer) => answer?,
        Err(_) => return Ok(Outcome::TimedOut),
    };
    Ok(match answer {
        Answer::Match { runtime_id } => Outcome::Matched {
            latency: sent.elapsed(),
            runtime_id,
        },
        Answer::Refused { reason } => Outcome::Refused { reason },
    })
}

/// How the platform answered a request.
enum Answer {
    Match { runtime_id: String },
    Refused { reason: String },
}

/// Reads events until a match assignment or `matchmaking_failed`; an error event means the
/// request went nowhere (e.g. `runtime_busy` dropped it).
async fn match_answer(socket: &mut Socket) -> anyhow::Result<Answer> {
    loop {
        match event_in(socket.next().await)? {
            Some(PlayerEvent::RuntimeAssigned(assignment))
                if assignment.qualifier == RuntimeKind::Match =>
            {
                return Ok(Answer::Match {
                    runtime_id: assignment.runtime_id,
                })
            }
            Some(PlayerEvent::MatchmakingFailed { reason, .. }) => {
                return Ok(Answer::Refused { reason })
            }
            Some(PlayerEvent::Error { code, message }) => bail!(error_event(&code, &message)),
            Some(PlayerEvent::ClientDeleted { reason, message }) => {
                bail!(client_deleted(&reason, message.as_deref()))
            }
            Some(_) | None => {}
        }
    }
}

/// Reads events, answering the platform's pings, until the scenario reaches `until`; error
/// events meanwhile are counted, a deleted client or a lost socket ends the wait.
async fn wait_for_step(
    until: Step,
    socket: &mut Socket,
    step: &mut watch::Receiver<Step>,
    stats: &Stats,
) -> anyhow::Result<()> {
    loop {
        if *step.borrow_and_update() >= until {
            return Ok(());
        }
        tokio::select! {
            frame = socket.next() => match event_in(frame)? {
                Some(PlayerEvent::Error { code, message }) => {
                    stats.errors.report(error_event(&code, &message));
                }
                Some(PlayerEvent::ClientDeleted { reason, message }) => {
                    bail!(client_deleted(&reason, message.as_deref()))
                }
                Some(_) | None => {}
            },
            changed = step.changed() => changed.context("the scenario is gone")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        game: GameArgs,
    }

    fn players(args: &[&str]) -> anyhow::Result<u64> {
        let args = ["loadtest"].iter().chain(args);
        players_per_wave(&Command::try_parse_from(args).unwrap().game)
    }

    #[test]
    fn waves_have_an_even_number_of_players() {
        assert_eq!(players(&[]).unwrap(), 200);
        assert_eq!(players(&["--players", "20"]).unwrap(), 20);
        assert!(players(&["--players", "21"]).is_err());
        assert!(players(&["--players", "0"]).is_err());
    }

    fn matched(runtime_id: &str, millis: u64) -> anyhow::Result<Outcome> {
        Ok(Outcome::Matched {
            latency: Duration::from_millis(millis),
            runtime_id: runtime_id.to_owned(),
        })
    }

    #[test]
    fn a_wave_counts_matches_and_failures() {
        let wave = Wave::default();
        wave.request_ended(matched("r1", 10));
        wave.request_ended(matched("r1", 12));
        wave.request_ended(matched("r2", 30));
        wave.request_ended(Ok(Outcome::Refused {
            reason: "timeout".to_owned(),
        }));
        wave.request_ended(Ok(Outcome::TimedOut));
        wave.request_ended(Err(anyhow!("the platform closed the socket")));
        let results = wave.lock();
        assert_eq!(results.matched, 3);
        assert_eq!(
            (
                results.matchmaking_failed,
                results.timed_out,
                results.errors
            ),
            (1, 1, 1)
        );
        assert_eq!((results.failed(), results.ended()), (3, 6));
        assert_eq!(results.players_per_match.len(), 2);
        assert_eq!(results.unpaired(), 1, "r2 got one player");
        assert_eq!(
            results.latency.len(),
            3,
            "only matched requests have a latency"
        );
        let slowest = Latency::of(&results.latency).max;
        assert!((slowest - 30.0).abs() < 0.1, "{slowest} ms");
    }

    #[tokio::test]
    async fn a_wave_ends_when_every_request_has() {
        let wave = Arc::new(Wave::default());
        wave.request_ended(matched("r1", 1));
        let waiting = tokio::time::timeout(Duration::from_millis(50), wave.all_ended(2)).await;
        assert!(waiting.is_err(), "one request is still open");
        let answering = wave.clone();
        tokio::spawn(async move { answering.request_ended(Ok(Outcome::TimedOut)) });
        tokio::time::timeout(Duration::from_secs(5), wave.all_ended(2))
            .await
            .expect("both requests ended");
    }

    #[test]
    fn overall_counts_add_up_the_waves() {
        let wave = Counts {
            players: 4,
            requested: 4,
            matched: 2,
            failed: 2,
            timed_out: 2,
            matches_formed: 1,
            ..Counts::default()
        };
        let mut total = Counts::default();
        total.add(&wave);
        total.add(&wave);
        assert_eq!(
            total,
            Counts {
                players: 8,
                requested: 8,
                matched: 4,
                failed: 4,
                timed_out: 4,
                matches_formed: 2,
                ..Counts::default()
            }
        );
    }
}

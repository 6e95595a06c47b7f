//! `rally loadtest`: drives a running platform over HTTP on loopback and prints its figures:
//! progress once a second, then one JSON object as the last line.
//!
//! Scenario `signup`: each of N concurrent clients loops over anonymous sign-up followed by
//! sign-in with the returned id and secret, the launch-day path.

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rally_sdk::RallyClient;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// What to drive.
    #[arg(value_enum, default_value = "signup")]
    scenario: Scenario,
    /// Platform URL.
    #[arg(long, env = "RALLY_URL", default_value = crate::cli::DEFAULT_URL)]
    url: String,
    /// Clients running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// Anonymous sign-up followed by sign-in.
    Signup,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    url: String,
    concurrency: usize,
    duration_secs: f64,
    /// Completed sign-up + sign-in pairs.
    pairs: u64,
    pairs_per_sec: f64,
    requests_per_sec: f64,
    errors: u64,
    /// Latency of single requests, milliseconds.
    request_latency_ms: Latency,
    /// Latency of a whole sign-up + sign-in pair, milliseconds.
    pair_latency_ms: Latency,
}

struct Worker {
    requests: Histogram<u64>,
    pairs: Histogram<u64>,
}

pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let client = RallyClient::with_http_client(http, &args.url)?;
    client
        .health()
        .await
        .with_context(|| format!("the platform at {} does not answer", args.url))?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let client = client.clone();
        let (measuring, stop) = (measuring.clone(), stop.clone());
        let (completed, errors) = (completed.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut worker = Worker {
                requests: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                pairs: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            };
            while !stop.load(Ordering::Relaxed) {
                let outcome = sign_up_and_in(&client).await;
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match outcome {
                    Ok((sign_up, sign_in)) => {
                        worker
                            .requests
                            .saturating_record(sign_up.as_micros() as u64);
                        worker
                            .requests
                            .saturating_record(sign_in.as_micros() as u64);
                        worker
                            .pairs
                            .saturating_record((sign_up + sign_in).as_micros() as u64);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("loadtest: {error}");
                        }
                    }
                }
            }
            worker
        }));
    }

    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    for second in 1..=args.duration_secs {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let now = completed.load(Ordering::Relaxed);
        eprintln!(
            "loadtest: {second:>3}s  {:>7} pairs/s  {:>9} pairs  {} errors",
            now - last,
            now,
            errors.load(Ordering::Relaxed)
        );
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);

    let mut requests = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut pairs = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        let worker = worker.await?;
        requests.add(&worker.requests)?;
        pairs.add(&worker.pairs)?;
    }
    let completed = completed.load(Ordering::Relaxed);
    let report = Report {
        scenario: args.scenario,
        url: args.url,
        concurrency: args.concurrency,
        duration_secs: elapsed,
        pairs: completed,
        pairs_per_sec: completed as f64 / elapsed,
        requests_per_sec: 2.0 * completed as f64 / elapsed,
        errors: errors.load(Ordering::Relaxed),
        request_latency_ms: Latency::of(&requests),
        pair_latency_ms: Latency::of(&pairs),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One pair; returns how long each of the two requests took.
async fn sign_up_and_in(
    client: &RallyClient,
) -> Result<(Duration, Duration), rally_sdk::ClientError> {
    let started = Instant::now();
    let user = client.create_user().await?;
    let signed_up = Instant::now();
    client.sign_in_user(&user.user_id, &user.secret).await?;
    Ok((signed_up - started, signed_up.elapsed()))
}

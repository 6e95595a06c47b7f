//! Scenario `signup`: each of N concurrent clients loops over anonymous sign-up followed by
//! sign-in with the returned id and secret, the launch-day path.

use super::{latency_histogram, per_sec, Errors, Latency, RunArgs, Scenario};
use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use rally_sdk::RallyClient;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(super) struct SignupArgs {
    /// Clients running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
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

/// What one worker measured.
struct Worker {
    requests: Histogram<u64>,
    pairs: Histogram<u64>,
}

pub(super) async fn run(run: RunArgs, args: SignupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let client = RallyClient::with_http_client(http, &run.url)?;
    client
        .health()
        .await
        .with_context(|| format!("the platform at {} does not answer", run.url))?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let client = client.clone();
        let (measuring, stop) = (measuring.clone(), stop.clone());
        let (completed, errors) = (completed.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut worker = Worker {
                requests: latency_histogram(),
                pairs: latency_histogram(),
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
                    Err(error) => errors.report(error),
                }
            }
            worker
        }));
    }

    tokio::time::sleep(Duration::from_secs(run.warmup_secs)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    for second in 1..=run.duration_secs {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let now = completed.load(Ordering::Relaxed);
        eprintln!(
            "loadtest: {second:>3}s  {:>7} pairs/s  {:>9} pairs  {} errors",
            now - last,
            now,
            errors.count()
        );
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);

    let mut requests = latency_histogram();
    let mut pairs = latency_histogram();
    for worker in workers {
        let worker = worker.await?;
        requests.add(&worker.requests)?;
        pairs.add(&worker.pairs)?;
    }
    let completed = completed.load(Ordering::Relaxed);
    let report = Report {
        scenario: Scenario::Signup,
        url: run.url,
        concurrency: args.concurrency,
        duration_secs: elapsed,
        pairs: completed,
        pairs_per_sec: per_sec(completed, elapsed),
        requests_per_sec: per_sec(2 * completed, elapsed),
        errors: errors.count(),
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

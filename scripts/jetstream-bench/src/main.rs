//! `jetstream-bench`: open-loop publish-with-ack load against a NATS JetStream stream,
//! reported with the field names of `citychain bench --json`, so `scripts/side-by-side`
//! can put the two in one table.
//!
//! - `create-stream`: (re)creates a stream with the given replicas and storage, retrying
//!   until the cluster can place it (it may still be electing its meta leader).
//! - `run`: message i is due at `start + i / rate`; each publish (`Context::publish`, then
//!   the ack future awaited) is spawned at its due time whether or not earlier ones were
//!   acknowledged, and its latency counts from the due time to the ack, so a slow cluster
//!   shows in the percentiles instead of lowering the offered load. At most
//!   `--max-in-flight` publishes are outstanding; a send due beyond that is counted as a
//!   `client_saturated` error.

mod schedule;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use schedule::{CLIENT_SATURATED, Outcome, Percentiles, Schedule, Tally, error_key};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Open-loop publish-with-ack benchmark for NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deletes the stream if it exists and creates it again.
    CreateStream {
        /// Comma-separated server URLs, e.g. nats://127.0.0.1:4222,nats://127.0.0.1:4223.
        #[arg(long, env = "NATS_URL")]
        servers: String,
        /// Stream name.
        #[arg(long)]
        name: String,
        /// Subject the stream captures.
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, value_enum, default_value_t = Storage::File)]
        storage: Storage,
        /// Keep retrying (connect and create) this long before giving up.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Publishes on an open-loop schedule and reports throughput and ack latencies.
    Run {
        /// Comma-separated server URLs.
        #[arg(long, env = "NATS_URL")]
        servers: String,
        /// Subject to publish on (captured by the stream).
        #[arg(long)]
        subject: String,
        /// Offered load, messages per second.
        #[arg(long)]
        rate: u64,
        /// How long to offer it, e.g. 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Payload bytes per message (about the size of a signed citychain transaction).
        #[arg(long, default_value_t = 7000)]
        size: usize,
        /// Cap on outstanding publishes; sends due beyond it count as `client_saturated`.
        #[arg(long, default_value_t = 100_000)]
        max_in_flight: usize,
        /// How long an ack may take before the publish counts as `timed_out`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ack_timeout: Duration,
        /// Print one JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Storage {
    File,
    Memory,
}

/// The summary of a run; the names match `citychain bench --json` where they apply
/// (`target_rate`, `duration_s`, `sent`, `ok`, `errors`, `throughput_tps`, `latency_ms`,
/// `mode`).
#[derive(Debug, Serialize)]
struct Report {
    system: &'static str,
    servers: String,
    server_version: String,
    subject: String,
    mode: &'static str,
    target_rate: u64,
    duration_s: f64,
    size_bytes: usize,
    max_in_flight: usize,
    sent: u64,
    ok: u64,
    /// By error kind (`timed_out`, `stream_not_found`, ...), `client_saturated` or
    /// `unanswered`.
    errors: std::collections::BTreeMap<String, u64>,
    /// `ok` per second from the first due send to the last answer.
    throughput_tps: f64,
    wall_s: f64,
    /// From each message's due time to its ack.
    latency_ms: Percentiles,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::CreateStream {
            servers,
            name,
            subject,
            replicas,
            storage,
            wait,
        } => create_stream(&servers, &name, &subject, replicas, storage, wait).await,
        Command::Run {
            servers,
            subject,
            rate,
            duration,
            size,
            max_in_flight,
            ack_timeout,
            json,
        } => {
            let report = run(
                &servers,
                &subject,
                rate,
                duration,
                size,
                max_in_flight,
                ack_timeout,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_human(&report);
            }
            Ok(())
        }
    }
}

fn server_list(servers: &str) -> Vec<String> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

async fn connect(servers: &str) -> anyhow::Result<async_nats::Client> {
    let list = server_list(servers);
    if list.is_empty() {
        bail!("--servers names no server");
    }
    async_nats::ConnectOptions::new()
        .client_capacity(65_536)
        .connect(list)
        .await
        .with_context(|| format!("connecting to {servers}"))
}

async fn create_stream(
    servers: &str,
    name: &str,
    subject: &str,
    replicas: usize,
    storage: Storage,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let mut last_error;
    loop {
        match try_create_stream(servers, name, subject, replicas, storage).await {
            Ok(()) => {
                eprintln!("stream {name} ({subject}, {replicas} replicas, {storage:?}) created");
                return Ok(());
            }
            Err(e) => last_error = e,
        }
        if Instant::now() >= deadline {
            return Err(last_error.context(format!("creating stream {name} for {wait:?}")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn try_create_stream(
    servers: &str,
    name: &str,
    subject: &str,
    replicas: usize,
    storage: Storage,
) -> anyhow::Result<()> {
    let client = connect(servers).await?;
    let js = jetstream::new(client);
    // Absent is fine: delete, then create afresh.
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        num_replicas: replicas,
        storage: match storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn lock(t: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    servers: &str,
    subject: &str,
    rate: u64,
    duration: Duration,
    size: usize,
    max_in_flight: usize,
    ack_timeout: Duration,
) -> anyhow::Result<Report> {
    if rate == 0 {
        bail!("--rate must be at least 1 message/s");
    }
    if max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    let client = connect(servers).await?;
    let server_version = client.server_info().version;
    // Our semaphore bounds what is outstanding; the context's own limit sits above it so it
    // never waits or refuses on its own.
    let js = jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .max_ack_inflight(max_in_flight + 1)
        .backpressure_on_inflight(false)
        .build(client.clone());
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let subject: async_nats::Subject = subject.into();

    let tally = Arc::new(Mutex::new(Tally::new()));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let schedule = Schedule::new(Instant::now(), rate, duration);
    if schedule.total == 0 {
        bail!("{rate}/s for {duration:?} schedules no message");
    }
    for seq in 0..schedule.total {
        let due = schedule.due(seq);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            lock(&tally).error(CLIENT_SATURATED);
            continue;
        };
        lock(&tally).started();
        let (js, subject, payload, tally) =
            (js.clone(), subject.clone(), payload.clone(), tally.clone());
        tokio::spawn(async move {
            let outcome = match js.publish(subject, payload).await {
                Ok(ack) => match ack.await {
                    Ok(_) => Outcome::Acked,
                    Err(e) => Outcome::Failed(error_key(&format!("{:?}", e.kind()))),
                },
                Err(e) => Outcome::Failed(error_key(&format!("{:?}", e.kind()))),
            };
            lock(&tally).answered(outcome, due, Instant::now());
            drop(permit);
        });
    }
    // Drain: every publish ends within the ack timeout; a little slack beyond it.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(
        ack_timeout + Duration::from_secs(5),
        permits.acquire_many(all),
    )
    .await;
    let mut t = lock(&tally);
    if drained.is_err() {
        t.close();
    }
    Ok(Report {
        system: "nats-jetstream",
        servers: servers.to_string(),
        server_version,
        subject: subject.to_string(),
        mode: "open",
        target_rate: rate,
        duration_s: duration.as_secs_f64(),
        size_bytes: size,
        max_in_flight,
        sent: t.sent,
        ok: t.ok,
        errors: t.errors.clone(),
        throughput_tps: t.throughput(schedule.start, duration),
        wall_s: t.wall(schedule.start, duration).as_secs_f64(),
        latency_ms: t.percentiles(),
    })
}

fn print_human(r: &Report) {
    let errors = if r.errors.is_empty() {
        "none".to_string()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let l = &r.latency_ms;
    println!(
        "jetstream bench against {} (nats-server {})",
        r.servers, r.server_version
    );
    println!(
        "  target rate   {} msg/s, {} B each",
        r.target_rate, r.size_bytes
    );
    println!("  duration      {:.1} s", r.duration_s);
    println!("  sent          {}", r.sent);
    println!("  ok            {}", r.ok);
    println!("  errors        {errors}");
    println!(
        "  throughput    {:.1} msg/s over {:.2} s",
        r.throughput_tps, r.wall_s
    );
    println!(
        "  latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.max, l.mean
    );
}

//! `citychain bench`: signed load against one city node, open loop by default.
//!
//! In the open loop, requests start on a fixed schedule — the i-th at `start + i / rate` —
//! whether or not earlier ones have answered, and each latency is measured from the moment
//! its request was *due*, not from when the client got round to sending it. A slow node or
//! a busy client therefore shows up in the percentiles instead of silently lowering the
//! offered load ("coordinated omission"). `--closed-loop N` measures the other way
//! (`closed`): N requests outstanding, latency from each send.
//!
//! Parts that can each be tested without a server:
//! - the signers (`signers`): blocking threads that sign ML-DSA-65 transactions ahead of
//!   the schedule into a small bounded channel, so signing CPU never delays a send and
//!   timestamps stay fresh (the node refuses more than 60 s of clock skew); with
//!   `--presign`, the channel holds the whole run, signed on every core before the clock
//!   starts;
//! - the dispatcher (`schedule`: `Schedule` and `dispatch`): takes a pre-signed body at
//!   each due time and starts its request, or counts `client_saturated` when
//!   `max_in_flight` requests are already outstanding;
//! - the closed loop (`closed`): N workers, each sending when its previous answer arrived;
//! - the tally (`tally`): outcomes and an HDR histogram of latencies, summarized in a
//!   [`BenchReport`] (`report` renders it).

mod closed;
mod report;
mod schedule;
mod signers;
mod tally;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use citychain::crypto::SigningKey;
use citychain::messages::{MAX_SAFE_AMOUNT, now_ms};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{NodePlace, TxClient};
pub use report::format_counts;
use schedule::{Schedule, TokioClock, dispatch, drain};
use signers::{channel_capacity, signer_threads, spawn_signers};
use tally::{Tally, lock, post_tx};

/// Default cap on concurrent requests in the open loop: a node's default `[limits]
/// max_connections_per_peer`. Every outstanding HTTP/1.1 request holds a connection of its
/// own, and a node answers a peer's connections past that bound with 503 and closes them,
/// so a client that keeps more outstanding turns the node's CPU (and its own) into
/// connection churn: on a 2-core machine at 6,000 tx/s offered, 4,096 outstanding
/// delivered 1,314 tx/s, 1,024 delivered 4,057 tx/s.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Receiver of every benchmark transaction.
pub const BENCH_RECEIVER: &str = "bench-receiver";

/// How long to wait for outstanding requests after the last scheduled send.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Error key of a send skipped because `max_in_flight` requests were outstanding.
pub const CLIENT_SATURATED: &str = "client_saturated";

/// Error key of a request that failed to connect, send, or read its answer.
pub const TRANSPORT: &str = "transport";

/// Error key of a request still unanswered [`DRAIN_TIMEOUT`] after the last send.
pub const UNANSWERED: &str = "unanswered";

/// What `citychain bench` was asked to do.
#[derive(Debug)]
pub struct BenchArgs {
    /// Base URL of a city node, e.g. `http://127.0.0.1:8080`.
    pub node: String,
    /// Offered load, transactions per second.
    pub rate: u64,
    /// How long to offer it.
    pub duration: Duration,
    /// Print one JSON object instead of the human summary (also hides the progress bar).
    pub json: bool,
    /// Signing key; `None` generates a fresh one.
    pub key: Option<SigningKey>,
    /// City the transactions are for; `None` asks the node's `/healthz`.
    pub city: Option<String>,
    /// Continent the transactions name; `None` asks the node's `/healthz` (a city takes
    /// only its own continent's).
    pub continent: Option<String>,
    /// Cap on concurrent requests ([`DEFAULT_MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// Sign the whole run before the clock starts, on every core, so the client spends no
    /// CPU on signatures while it sends (at most [`MAX_PRESIGNED`] transactions).
    pub presign: bool,
    /// A closed loop of this many requests outstanding at all times instead of the open
    /// loop's schedule; `rate` is then a ceiling (how many to presign), 0 for none.
    pub closed_loop: Option<usize>,
}

impl BenchArgs {
    /// Arguments with the defaults of the command line: fresh key, city from the node,
    /// [`DEFAULT_MAX_IN_FLIGHT`], human output.
    pub fn new(node: impl Into<String>, rate: u64, duration: Duration) -> Self {
        Self {
            node: node.into(),
            rate,
            duration,
            json: false,
            key: None,
            city: None,
            continent: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            presign: false,
            closed_loop: None,
        }
    }
}

/// Most transactions `--presign` holds (about 7.5 KB each signed: 7.5 GB).
pub const MAX_PRESIGNED: u64 = 1_000_000;

/// The node refuses timestamps further than this from its clock by default
/// (`[intake] max_clock_skew`): a presigned run's first transactions are this old at most
/// when the signing and the run each take no longer.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What ran the client: the machine's cores and this binary's build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientInfo {
    /// Cores this process may use.
    pub cores: usize,
    /// `release` or `debug`.
    pub build: &'static str,
    pub version: &'static str,
    /// The whole run was signed before the clock started.
    pub presigned: bool,
}

impl ClientInfo {
    pub(super) fn here(presigned: bool) -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            version: env!("CARGO_PKG_VERSION"),
            presigned,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// One line of the latency histogram: `count` answers in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

/// The summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub node: String,
    /// Offered load, tx/s.
    pub target_rate: u64,
    /// Configured duration of the schedule, seconds.
    pub duration_s: f64,
    /// Requests actually issued (scheduled sends minus `client_saturated`).
    pub sent: u64,
    /// 200 answers, duplicates included.
    pub ok: u64,
    /// 200 answers with `"duplicate": true`.
    pub duplicates: u64,
    /// By API error code, `http_<status>` for a non-JSON error, [`TRANSPORT`],
    /// [`CLIENT_SATURATED`] or [`UNANSWERED`].
    pub errors: BTreeMap<String, u64>,
    /// `ok` per second of wall time from the first send to the last answer.
    pub throughput_tps: f64,
    /// Of the 200 answers, measured from each request's scheduled send time.
    pub latency_ms: Percentiles,
    /// Count of 200 answers by the `tier` they reached.
    pub tiers: BTreeMap<String, u64>,
    /// Log-scale latency histogram of the 200 answers.
    pub histogram: Vec<Bucket>,
    /// The machine and build of the client, and whether it presigned.
    pub client: ClientInfo,
    /// `open` (requests on a schedule at `target_rate`) or `closed` (`concurrency`
    /// requests outstanding at all times).
    pub mode: &'static str,
    /// The closed loop's requests outstanding; null in the open loop.
    pub concurrency: Option<usize>,
    /// The open loop's cap on requests outstanding (sends due past it count as
    /// [`CLIENT_SATURATED`]); null in the closed loop.
    pub max_in_flight: Option<usize>,
}

/// Transactions a closed loop that signs while it sends may sign at most (it stops when
/// the run ends).
const CLOSED_LOOP_CEILING: u64 = 1_000_000_000;

/// Runs the benchmark against `args.node` and summarizes it.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    if args.closed_loop == Some(0) {
        bail!("--closed-loop needs at least 1 request outstanding");
    }
    if args.rate == 0 && args.closed_loop.is_none() {
        bail!("--rate must be at least 1 tx/s");
    }
    if args.rate == 0 && args.presign {
        bail!("a presigned closed loop signs --rate × --duration transactions first: give --rate");
    }
    if args.max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    let node = args.node.trim_end_matches('/').to_string();
    if !node.starts_with("http://") {
        bail!("--node must be an http:// URL (this build has no TLS), got {node:?}");
    }
    let total = if args.closed_loop.is_some() && args.rate == 0 {
        CLOSED_LOOP_CEILING
    } else {
        Schedule::total_for(args.rate, args.duration)
    };
    if total == 0 {
        bail!(
            "{} tx/s for {:?} schedules no transaction; raise --rate or --duration",
            args.rate,
            args.duration
        );
    }

    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.max_in_flight)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let (city, continent) = match (args.city, args.continent) {
        (Some(city), Some(continent)) => (city, continent),
        (city, continent) => {
            let place = NodePlace::of(&client, &node).await?;
            let (own_city, own_continent) = place.city_and_continent(&node)?;
            (city.unwrap_or(own_city), continent.unwrap_or(own_continent))
        }
    };
    let key = match args.key {
        Some(key) => key,
        None => SigningKey::generate().context("generating a signing key")?,
    };

    if args.presign && total > MAX_PRESIGNED {
        bail!(
            "--presign holds the whole run in memory: {total} transactions is more than {MAX_PRESIGNED}; lower --rate or --duration"
        );
    }
    if args.presign && args.duration > DEFAULT_CLOCK_SKEW && !args.json {
        eprintln!(
            "warning: a presigned run longer than {}s sends its first transactions more than {}s after they were signed; a node with the default [intake] max_clock_skew refuses them (timestamp_skew)",
            DEFAULT_CLOCK_SKEW.as_secs(),
            DEFAULT_CLOCK_SKEW.as_secs()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (capacity, threads) = match (args.presign, args.closed_loop) {
        (true, _) => (usize::try_from(total).unwrap_or(usize::MAX), cores),
        (false, Some(n)) => (n.saturating_mul(4).max(64), (cores / 2).max(1)),
        (false, None) => (channel_capacity(args.rate), signer_threads(args.rate)),
    };
    let (body_tx, mut bodies) = mpsc::channel(capacity);
    // A sender uses each nonce once: a run with a key used before starts past the
    // nonces earlier runs used (the clock in microseconds, as `citychain tx` does).
    let first_nonce = now_ms()
        .saturating_mul(1_000)
        .min(MAX_SAFE_AMOUNT.saturating_sub(total));
    let signers = spawn_signers(
        Arc::new(key),
        city,
        continent,
        first_nonce,
        total,
        threads,
        body_tx,
    );
    // Let the signers fill the channel before the clock starts, so the first sends do not
    // wait on signatures (with --presign: the whole run).
    let warm = capacity.min(usize::try_from(total).unwrap_or(usize::MAX));
    let signing = args.presign.then(|| {
        let bar = progress_bar(total, args.json, "signed")?;
        anyhow::Ok(bar)
    });
    let signing = signing.transpose()?;
    let started = std::time::Instant::now();
    let warm_up = async {
        while bodies.len() < warm && !bodies.is_closed() {
            if let Some(bar) = &signing {
                bar.set_position(bodies.len() as u64);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let limit = if args.presign {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(60)
    };
    tokio::time::timeout(limit, warm_up)
        .await
        .with_context(|| {
            format!("signers did not produce the first transactions within {limit:?}")
        })?;
    if let Some(bar) = signing {
        bar.finish_and_clear();
        if !args.json {
            eprintln!(
                "signed {total} transactions in {:.1}s on {threads} threads before the clock started",
                started.elapsed().as_secs_f64()
            );
        }
    }

    let progress = match args.closed_loop {
        None => progress_bar(total, args.json, "scheduled")?,
        Some(_) => {
            let expected = args.rate.saturating_mul(args.duration.as_secs().max(1));
            progress_bar(expected, args.json, "sent")?
        }
    };
    let tally = Arc::new(Mutex::new(Tally::new()));
    let ticker = (!progress.is_hidden()).then(|| {
        let (progress, tally) = (progress.clone(), tally.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                progress.set_message(lock(&tally).progress_line());
            }
        })
    });

    let client = TxClient::new(client, &node);
    let send = move |body: Vec<u8>| post_tx(client.clone(), body);
    let finished_schedule = match args.closed_loop {
        Some(workers) => {
            let until = Instant::now() + args.duration;
            let loops = closed::closed_loop(workers, until, bodies, &tally, &progress, send);
            tokio::time::sleep_until(until).await;
            drain(loops, &tally, DRAIN_TIMEOUT).await;
            true
        }
        None => {
            let mut schedule = Schedule::new(Instant::now(), args.rate, args.duration);
            let outstanding = dispatch(
                &TokioClock,
                &mut schedule,
                &mut bodies,
                args.max_in_flight,
                &tally,
                &progress,
                send,
            )
            .await;
            drop(bodies);
            drain(outstanding, &tally, DRAIN_TIMEOUT).await;
            schedule.remaining() == 0
        }
    };
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    progress.finish_and_clear();

    for signer in signers {
        signer.await.context("a signer thread panicked")??;
    }
    if !finished_schedule {
        bail!("the signers stopped before the schedule ended");
    }
    let mut report = lock(&tally).report(
        &node,
        args.rate,
        args.duration,
        ClientInfo::here(args.presign),
        args.closed_loop,
    );
    report.max_in_flight = args.closed_loop.is_none().then_some(args.max_in_flight);
    Ok(report)
}

fn progress_bar(total: u64, json: bool, what: &str) -> anyhow::Result<ProgressBar> {
    let target = if json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}  {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    Ok(bar)
}

#[cfg(test)]
mod tests {
    use citychain::config::LimitsConfig;

    #[test]
    fn the_default_open_loop_keeps_within_one_peer_s_default_connections() {
        assert_eq!(
            super::DEFAULT_MAX_IN_FLIGHT,
            LimitsConfig::default().max_connections_per_peer
        );
    }
}

//! `citychain bench`: open-loop signed load against one city node.
//!
//! Requests start on a fixed schedule — the i-th at `start + i / rate` — whether or not
//! earlier ones have answered, and each latency is measured from the moment its request
//! was *due*, not from when the client got round to sending it. A slow node or a busy
//! client therefore shows up in the percentiles instead of silently lowering the offered
//! load ("coordinated omission").
//!
//! Three parts, so each can be tested without a server:
//! - signers (`spawn_signers`): blocking threads that sign ML-DSA-65 transactions ahead
//!   of the schedule into a small bounded channel, so signing CPU never delays a send and
//!   timestamps stay fresh (the node refuses more than 60 s of clock skew);
//! - the dispatcher (`Schedule` and `dispatch`): takes a pre-signed body at each due
//!   time and starts its request, or counts `client_saturated` when `max_in_flight`
//!   requests are already outstanding;
//! - the tally: outcomes and an HDR histogram of latencies, summarized in a
//!   [`BenchReport`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::crypto::SigningKey;
use crate::messages::{FlagKind, SignedTx, Tx, now_ms};

/// Default cap on concurrent requests.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

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

/// Conservative ML-DSA-65 signatures per second one signer thread sustains (~0.2–0.5 ms
/// each); sizes the signer pool.
const SIGNS_PER_SEC_PER_THREAD: u64 = 2_000;

/// Latencies above this (one hour, in µs) are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Buckets of the printed latency histogram.
const HISTOGRAM_BUCKETS: usize = 12;

/// Width, in characters, of the longest histogram bar.
const BAR_WIDTH: usize = 40;

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
    /// Cap on concurrent requests ([`DEFAULT_MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
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
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
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
}

/// Runs the benchmark against `args.node` and summarizes it.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    if args.rate == 0 {
        bail!("--rate must be at least 1 tx/s");
    }
    if args.max_in_flight == 0 {
        bail!("max in flight must be at least 1");
    }
    let node = args.node.trim_end_matches('/').to_string();
    if !node.starts_with("http://") {
        bail!("--node must be an http:// URL (this build has no TLS), got {node:?}");
    }
    let total = Schedule::total_for(args.rate, args.duration);
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
    let city = match args.city {
        Some(city) => city,
        None => city_of(&client, &node).await?,
    };
    let key = match args.key {
        Some(key) => key,
        None => SigningKey::generate().context("generating a signing key")?,
    };

    let capacity = channel_capacity(args.rate);
    let (body_tx, mut bodies) = mpsc::channel(capacity);
    let signers = spawn_signers(
        Arc::new(key),
        city,
        total,
        signer_threads(args.rate),
        body_tx,
    );
    // Let the signers fill the channel before the clock starts, so the first sends do not
    // wait on signatures.
    let warm = capacity.min(usize::try_from(total).unwrap_or(usize::MAX));
    let warm_up = async {
        while bodies.len() < warm && !bodies.is_closed() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), warm_up)
        .await
        .context("signers did not produce the first transactions within 60 s")?;

    let progress = progress_bar(total, args.json)?;
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

    let url: Arc<str> = format!("{node}/v1/tx").into();
    let send = move |body: Vec<u8>| post_tx(client.clone(), url.clone(), body);
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
    let finished_schedule = schedule.remaining() == 0;
    drop(bodies);
    drain(outstanding, &tally, DRAIN_TIMEOUT).await;
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
    let report = lock(&tally).report(&node, args.rate, args.duration);
    Ok(report)
}

impl BenchReport {
    /// Prints the human summary on stdout.
    pub fn print_human(&self) {
        print!("{}", self.render_human());
    }

    /// The report as one JSON object (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a report of numbers and strings serializes")
    }

    fn render_human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let list = format_counts;
        let l = &self.latency_ms;
        let _ = writeln!(s, "bench against {}", self.node);
        let _ = writeln!(s, "  target rate   {} tx/s", self.target_rate);
        let _ = writeln!(s, "  duration      {:.1} s", self.duration_s);
        let _ = writeln!(s, "  sent          {}", self.sent);
        let _ = writeln!(s, "  ok            {}", self.ok);
        let _ = writeln!(s, "  duplicates    {}", self.duplicates);
        let _ = writeln!(s, "  errors        {}", list(&self.errors));
        let _ = writeln!(s, "  throughput    {:.1} tx/s", self.throughput_tps);
        let _ = writeln!(
            s,
            "  latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.max, l.mean
        );
        let _ = writeln!(s, "  tiers         {}", list(&self.tiers));
        if self.histogram.is_empty() {
            let _ = writeln!(s, "  no successful requests, no latency histogram");
            return s;
        }
        let _ = writeln!(s, "  latency histogram (ms):");
        let top = self.histogram.iter().map(|b| b.count).max().unwrap_or(0);
        for b in &self.histogram {
            let len = if top == 0 {
                0
            } else {
                // Round up so a non-empty bucket always shows.
                (b.count as usize * BAR_WIDTH).div_ceil(top as usize)
            };
            let _ = writeln!(
                s,
                "  {:>10.3} .. {:<10.3} {:>9} |{}",
                b.from_ms,
                b.to_ms,
                b.count,
                "#".repeat(len)
            );
        }
        s
    }
}

/// Asks the node which city it serves (`GET /healthz`, field `city`).
async fn city_of(client: &reqwest::Client, node: &str) -> anyhow::Result<String> {
    let url = format!("{node}/healthz");
    let health: serde_json::Value = client
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: answer is not JSON"))?;
    match health.get("city").and_then(|c| c.as_str()) {
        Some(city) => Ok(city.to_string()),
        None => bail!(
            "{node} serves no city (role {}); point --node at a city node or pass the city",
            health.get("role").unwrap_or(&serde_json::Value::Null)
        ),
    }
}

fn progress_bar(total: u64, json: bool) -> anyhow::Result<ProgressBar> {
    let target = if json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} scheduled  {msg}",
        )?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// Pre-signed bodies to keep ready: half a second of load, at least 64 — but never more
/// than one second of it, so a body waits at most ~1 s between signing and sending.
fn channel_capacity(rate: u64) -> usize {
    let n = (rate / 2).max(rate.min(64)).max(1);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Enough signer threads for `rate`, leaving at least half the cores to everything else
/// (often the node under test).
fn signer_threads(rate: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = usize::try_from(rate.div_ceil(SIGNS_PER_SEC_PER_THREAD)).unwrap_or(usize::MAX);
    wanted.clamp(1, (cores / 2).max(1))
}

/// The JSON body of a signed benchmark transaction with nonce `seq`.
fn build_body(
    key: &SigningKey,
    city: &str,
    seq: u64,
    timestamp_ms: u64,
) -> anyhow::Result<Vec<u8>> {
    let tx = Tx {
        kind: FlagKind::FreshTx,
        sender: key.address(),
        receiver: BENCH_RECEIVER.to_string(),
        amount: 1 + fastrand::u64(0..1_000),
        timestamp_ms,
        nonce: seq,
        city_id: city.to_string(),
        continent: None,
        payload: None,
        pop: None,
    };
    let request = SignedTx::sign(tx, key).context("signing a transaction")?;
    Ok(serde_json::to_vec(&request)?)
}

/// Starts `threads` blocking signers that together sign nonces `0..total` (each exactly
/// once, in no particular order) into `out`. The channel's bound keeps them from running
/// ahead; they stop early if the receiver goes away.
fn spawn_signers(
    key: Arc<SigningKey>,
    city: String,
    total: u64,
    threads: usize,
    out: mpsc::Sender<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let next = Arc::new(AtomicU64::new(0));
    (0..threads.max(1))
        .map(|_| {
            let (key, city, next, out) = (key.clone(), city.clone(), next.clone(), out.clone());
            tokio::task::spawn_blocking(move || {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        return Ok(());
                    }
                    let body = build_body(&key, &city, seq, now_ms())?;
                    if out.blocking_send(body).is_err() {
                        return Ok(());
                    }
                }
            })
        })
        .collect()
}

/// Start times of an open-loop run: `total` sends, the i-th due at `start + i / rate`.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    rate: u64,
    total: u64,
    next: u64,
}

impl Schedule {
    fn new(start: Instant, rate: u64, duration: Duration) -> Self {
        Self {
            start,
            rate: rate.max(1),
            total: Self::total_for(rate, duration),
            next: 0,
        }
    }

    /// `rate × duration`, rounded down.
    fn total_for(rate: u64, duration: Duration) -> u64 {
        u64::try_from(u128::from(rate) * duration.as_nanos() / 1_000_000_000).unwrap_or(u64::MAX)
    }

    fn remaining(&self) -> u64 {
        self.total - self.next
    }

    fn due(&self, seq: u64) -> Instant {
        let nanos = u128::from(seq) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Waits until the next send is due; returns its sequence number and due time. Never
    /// skips: sends whose time has already passed come back at once, one after another.
    async fn next(&mut self, clock: &impl Clock) -> Option<(u64, Instant)> {
        if self.next >= self.total {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let due = self.due(seq);
        if due > clock.now() {
            clock.sleep_until(due).await;
        }
        Some((seq, due))
    }
}

/// Time as the dispatcher sees it: tokio's clock in a run, a virtual one in tests.
trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep_until(deadline)
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// A 200: durable.
    Stored { duplicate: bool, tier: String },
    /// Anything else, by error key.
    Failed(String),
}

async fn post_tx(client: reqwest::Client, url: Arc<str>, body: Vec<u8>) -> Outcome {
    let answer = client
        .post(&*url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return Outcome::Failed(TRANSPORT.into());
    };
    let status = answer.status().as_u16();
    match answer.bytes().await {
        Ok(bytes) => classify(status, &bytes),
        Err(_) => Outcome::Failed(TRANSPORT.into()),
    }
}

/// Reads an answer of `POST /v1/tx`.
fn classify(status: u16, body: &[u8]) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        let field = |name: &str| json.as_ref().and_then(|j| j.get(name).cloned());
        return Outcome::Stored {
            duplicate: field("duplicate")
                .and_then(|d| d.as_bool())
                .unwrap_or(false),
            tier: field("tier")
                .and_then(|t| t.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
        };
    }
    let code = json
        .as_ref()
        .and_then(|j| j.pointer("/error/code"))
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty());
    Outcome::Failed(match code {
        Some(code) => code.to_string(),
        None => format!("http_{status}"),
    })
}

/// Everything counted during a run.
struct Tally {
    sent: u64,
    in_flight: u64,
    ok: u64,
    duplicates: u64,
    errors: BTreeMap<String, u64>,
    tiers: BTreeMap<String, u64>,
    /// Latencies of 200 answers, µs.
    latency_us: Histogram<u64>,
    first_send: Option<Instant>,
    last_answer: Option<Instant>,
    /// Set once the run is summarized; later answers are ignored.
    closed: bool,
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Nothing panics while holding it; poisoning would be a bug here.
    tally.lock().expect("bench tally lock poisoned")
}

impl Tally {
    fn new() -> Self {
        Self {
            sent: 0,
            in_flight: 0,
            ok: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            tiers: BTreeMap::new(),
            latency_us: new_histogram(),
            first_send: None,
            last_answer: None,
            closed: false,
        }
    }

    fn error(&mut self, key: &str) {
        *self.errors.entry(key.to_string()).or_default() += 1;
    }

    fn started(&mut self, at: Instant) {
        self.sent += 1;
        self.in_flight += 1;
        self.first_send.get_or_insert(at);
    }

    fn answered(&mut self, outcome: Outcome, due: Instant, at: Instant) {
        if self.closed {
            return;
        }
        self.in_flight -= 1;
        self.last_answer = Some(at);
        match outcome {
            Outcome::Stored { duplicate, tier } => {
                self.ok += 1;
                self.duplicates += u64::from(duplicate);
                *self.tiers.entry(tier).or_default() += 1;
                let us = u64::try_from(at.saturating_duration_since(due).as_micros())
                    .unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us);
            }
            Outcome::Failed(key) => *self.errors.entry(key).or_default() += 1,
        }
    }

    /// Ends the run: whatever is still in flight counts as [`UNANSWERED`].
    fn close(&mut self) {
        if self.closed {
            return;
        }
        if self.in_flight > 0 {
            *self.errors.entry(UNANSWERED.into()).or_default() += self.in_flight;
        }
        self.closed = true;
    }

    fn progress_line(&self) -> String {
        let errors: u64 = self.errors.values().sum();
        format!(
            "ok {}  errors {}  in flight {}",
            self.ok, errors, self.in_flight
        )
    }

    fn report(&self, node: &str, rate: u64, duration: Duration) -> BenchReport {
        let wall = match (self.first_send, self.last_answer) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        BenchReport {
            node: node.to_string(),
            target_rate: rate,
            duration_s: duration.as_secs_f64(),
            sent: self.sent,
            ok: self.ok,
            duplicates: self.duplicates,
            errors: self.errors.clone(),
            throughput_tps: if wall > 0.0 {
                self.ok as f64 / wall
            } else {
                0.0
            },
            latency_ms: percentiles(&self.latency_us),
            tiers: self.tiers.clone(),
            histogram: buckets(&self.latency_us, HISTOGRAM_BUCKETS),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// p50/p90/p99/max/mean of a histogram of microseconds, in milliseconds; zeros if empty.
fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1_000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1_000.0,
    }
}

/// At most `n` log-scale buckets spanning the recorded values of a histogram of
/// microseconds; contiguous, edges increasing, counts summing to `h.len()`.
fn buckets(h: &Histogram<u64>, n: usize) -> Vec<Bucket> {
    let recorded: Vec<(u64, u64)> = h
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let (Some(&(first, _)), Some(&(last, _))) = (recorded.first(), recorded.last()) else {
        return Vec::new();
    };
    let lo = h.lowest_equivalent(first).max(1);
    // Exclusive upper edge, past every recorded value.
    let hi = last.max(lo) + 1;
    let ratio = hi as f64 / lo as f64;
    let n = n.max(1);
    let mut edges: Vec<u64> = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let edge = if i == n {
            hi
        } else {
            (lo as f64 * ratio.powf(i as f64 / n as f64)).round() as u64
        };
        if edges.last().is_none_or(|&prev| edge > prev) {
            edges.push(edge);
        }
    }
    let mut counts = vec![0u64; edges.len() - 1];
    let last_bucket = counts.len() - 1;
    for (value, count) in recorded {
        // Values below `lo` (a zero latency) go to the first bucket.
        let i = edges.partition_point(|&e| e <= value).saturating_sub(1);
        counts[i.min(last_bucket)] += count;
    }
    edges
        .windows(2)
        .zip(counts)
        .map(|(w, count)| Bucket {
            from_ms: w[0] as f64 / 1_000.0,
            to_ms: w[1] as f64 / 1_000.0,
            count,
        })
        .collect()
}

/// Runs the schedule: at each due time takes the next pre-signed body and starts `send`
/// on it without waiting for the answer, or counts [`CLIENT_SATURATED`] when
/// `max_in_flight` requests are outstanding. Stops early if `bodies` runs dry. Returns
/// the requests still outstanding.
async fn dispatch<C, F, Fut>(
    clock: &C,
    schedule: &mut Schedule,
    bodies: &mut mpsc::Receiver<Vec<u8>>,
    max_in_flight: usize,
    tally: &Arc<Mutex<Tally>>,
    progress: &ProgressBar,
    mut send: F,
) -> JoinSet<()>
where
    C: Clock,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS)));
    let mut tasks = JoinSet::new();
    let mut stalls = 0u64;
    while let Some((_seq, due)) = schedule.next(clock).await {
        // Take the body even when saturated, so the ones left stay fresh.
        let body = match bodies.try_recv() {
            Ok(body) => body,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The signers fell behind: this send is late, and its latency says so.
                stalls += 1;
                match bodies.recv().await {
                    Some(body) => body,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        progress.inc(1);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            lock(tally).error(CLIENT_SATURATED);
            continue;
        };
        lock(tally).started(clock.now());
        let answer = send(body);
        let (tally, clock) = (tally.clone(), clock.clone());
        tasks.spawn(async move {
            let outcome = answer.await;
            lock(&tally).answered(outcome, due, clock.now());
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    if stalls > 0 {
        tracing::warn!(
            stalls,
            "sends waited for a signature; their latencies include client time (lower the rate)"
        );
    }
    tasks
}

/// Waits up to `limit` for the outstanding requests, abandons the rest, and closes the
/// tally.
async fn drain(mut tasks: JoinSet<()>, tally: &Mutex<Tally>, limit: Duration) {
    let all = async { while tasks.join_next().await.is_some() {} };
    let _timed_out = tokio::time::timeout(limit, all).await;
    tasks.shutdown().await;
    lock(tally).close();
}

/// `"a 1, b 2"`, or `"none"`: how reports print counts by key.
pub fn format_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        "none".to_string()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_ms() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1_000).unwrap(); // 1..=1000 ms, in µs
        }
        let p = percentiles(&h);
        let near = |got: f64, want: f64| {
            assert!(
                (got - want).abs() <= want * 0.002,
                "got {got}, want ~{want}"
            );
        };
        near(p.p50, 500.0);
        near(p.p90, 900.0);
        near(p.p99, 990.0);
        near(p.max, 1000.0);
        near(p.mean, 500.5);
        assert_eq!(percentiles(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn buckets_cover_every_value_with_increasing_edges() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut h = new_histogram();
        let mut values = Vec::new();
        for _ in 0..5_000 {
            // 50 µs .. ~2 s, spread over orders of magnitude.
            let v = (50.0 * 40_000f64.powf(rng.f64())) as u64;
            h.record(v).unwrap();
            values.push(v);
        }
        let b = buckets(&h, HISTOGRAM_BUCKETS);
        assert!(
            b.len() > 1 && b.len() <= HISTOGRAM_BUCKETS,
            "{} buckets",
            b.len()
        );
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), h.len());
        for w in b.windows(2) {
            assert_eq!(w[0].to_ms, w[1].from_ms, "buckets are contiguous");
        }
        for x in &b {
            assert!(x.from_ms < x.to_ms, "{x:?}");
        }
        let min = *values.iter().min().unwrap() as f64 / 1_000.0;
        let max = *values.iter().max().unwrap() as f64 / 1_000.0;
        assert!(b[0].from_ms <= min && b.last().unwrap().to_ms > max);
        // Log scale: the last bucket is wider than the first by orders of magnitude.
        let width = |x: &Bucket| x.to_ms - x.from_ms;
        assert!(width(b.last().unwrap()) > 100.0 * width(&b[0]));

        let mut one = new_histogram();
        one.record_n(1_500, 3).unwrap();
        let b = buckets(&one, HISTOGRAM_BUCKETS);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].count, 3);
        assert!(buckets(&new_histogram(), HISTOGRAM_BUCKETS).is_empty());
    }

    #[test]
    fn bodies_are_accepted_signed_transactions_with_distinct_ids() {
        let key = SigningKey::generate().unwrap();
        let now = now_ms();
        let mut ids = HashSet::new();
        for seq in 0..8 {
            let body = build_body(&key, "tokyo", seq, now).unwrap();
            let tx = SignedTx::from_request_bytes(&body).unwrap();
            assert_eq!(tx.tx.sender, key.address());
            assert_eq!(tx.tx.kind, FlagKind::FreshTx);
            assert_eq!(tx.tx.receiver, BENCH_RECEIVER);
            assert_eq!(tx.tx.city_id, "tokyo");
            assert_eq!(tx.tx.nonce, seq);
            assert_eq!(tx.tx.timestamp_ms, now);
            assert!(tx.tx.amount >= 1);
            assert!(tx.tx.continent.is_none() && tx.tx.payload.is_none() && tx.tx.pop.is_none());
            assert!(ids.insert(tx.id), "duplicate id at nonce {seq}");
        }
    }

    #[tokio::test]
    async fn signers_sign_every_nonce_exactly_once() {
        let key = Arc::new(SigningKey::generate().unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        let signers = spawn_signers(key.clone(), "oslo".into(), 24, 3, tx);
        let mut nonces = Vec::new();
        while let Some(body) = rx.recv().await {
            let signed = SignedTx::from_request_bytes(&body).unwrap();
            assert_eq!(signed.tx.sender, key.address());
            nonces.push(signed.tx.nonce);
        }
        for s in signers {
            s.await.unwrap().unwrap();
        }
        nonces.sort_unstable();
        assert_eq!(nonces, (0..24).collect::<Vec<_>>());
    }

    #[test]
    fn channel_holds_at_most_a_second_and_at_least_64_when_possible() {
        for rate in [1u64, 10, 63, 64, 100, 1_000, 50_000] {
            let cap = channel_capacity(rate) as u64;
            assert!(cap >= 1 && cap <= rate.max(1), "rate {rate}: {cap}");
            assert!(cap >= rate.min(64), "rate {rate}: {cap}");
        }
        assert_eq!(channel_capacity(10_000), 5_000);
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        let ok = br#"{"tx_id":"ab","status":"stored","tier":"full","duplicate":true}"#;
        assert_eq!(
            classify(200, ok),
            Outcome::Stored {
                duplicate: true,
                tier: "full".into()
            }
        );
        let busy = br#"{"error":{"code":"overloaded","message":"intake queue is full"}}"#;
        assert_eq!(classify(503, busy), Outcome::Failed("overloaded".into()));
        assert_eq!(
            classify(502, b"<html>bad gateway</html>"),
            Outcome::Failed("http_502".into())
        );
    }

    #[test]
    fn total_is_rate_times_duration() {
        assert_eq!(Schedule::total_for(1_000, Duration::from_secs(10)), 10_000);
        assert_eq!(Schedule::total_for(3, ms(1_500)), 4);
        assert_eq!(Schedule::total_for(1, ms(500)), 0);
    }

    /// Virtual time: `sleep_until` lets runnable tasks run, then jumps the clock to the
    /// deadline, as tokio's paused clock does when the runtime is idle (this crate does not
    /// enable tokio's `test-util`, which `start_paused` needs).
    #[derive(Clone)]
    struct VirtualClock(Arc<Mutex<Instant>>);

    impl VirtualClock {
        fn new() -> Self {
            Self(Arc::new(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for VirtualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }

        fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send {
            let clock = self.clone();
            async move {
                // Like tokio's paused clock, let every runnable task run before time moves.
                tokio::task::yield_now().await;
                let mut now = clock.0.lock().unwrap();
                if deadline > *now {
                    *now = deadline;
                }
            }
        }
    }

    #[tokio::test]
    async fn schedule_starts_rate_times_duration_sends_on_time() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let (rate, duration) = (50, Duration::from_secs(2));
        let mut schedule = Schedule::new(start, rate, duration);
        let mut n = 0u64;
        while let Some((seq, due)) = schedule.next(&clock).await {
            assert_eq!(seq, n);
            assert_eq!(due, start + ms(20) * seq as u32);
            assert_eq!(clock.now(), due, "send {seq} not started at its time");
            n += 1;
        }
        assert_eq!(n, rate * duration.as_secs());
        assert_eq!(clock.now() - start, ms(1_980));
    }

    #[tokio::test]
    async fn schedule_bursts_missed_sends_instead_of_skipping_them() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let mut schedule = Schedule::new(start, 100, Duration::from_secs(1));
        assert_eq!(schedule.next(&clock).await, Some((0, start)));
        clock.advance(ms(500));
        let late = clock.now();
        for seq in 1..=50 {
            let (s, due) = schedule.next(&clock).await.unwrap();
            assert_eq!(s, seq);
            assert_eq!(due, start + ms(10) * seq as u32);
            assert_eq!(clock.now(), late, "overdue send {seq} waited");
        }
        assert_eq!(schedule.remaining(), 49);
        assert_eq!(schedule.next(&clock).await, Some((51, start + ms(510))));
        assert_eq!(clock.now(), start + ms(510));
    }

    fn bodies(n: usize) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(n.max(1));
        for i in 0..n {
            tx.try_send(vec![i as u8]).unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn dispatch_does_not_wait_for_answers_and_counts_saturation() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let mut schedule = Schedule::new(start, 100, Duration::from_secs(1));
        let mut rx = bodies(100);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let progress = ProgressBar::hidden();
        // The node never answers.
        let send = |_body: Vec<u8>| std::future::pending::<Outcome>();
        let run = dispatch(&clock, &mut schedule, &mut rx, 10, &tally, &progress, send);
        // Real time passes only if dispatch wrongly waits for an answer.
        let outstanding = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("dispatch waited for answers that never come");
        assert_eq!(clock.now() - start, ms(990), "the schedule kept its pace");
        assert_eq!(progress.position(), 100);
        {
            let t = lock(&tally);
            assert_eq!(t.sent, 10);
            assert_eq!(t.in_flight, 10);
            assert_eq!(t.errors.get(CLIENT_SATURATED), Some(&90));
        }
        drain(outstanding, &tally, Duration::ZERO).await;
        let report = lock(&tally).report("http://n", 100, Duration::from_secs(1));
        assert_eq!(report.errors.get(UNANSWERED), Some(&10));
        assert_eq!(report.ok, 0);
        assert_eq!(report.throughput_tps, 0.0);
    }

    #[tokio::test]
    async fn latency_counts_from_the_scheduled_time() {
        let clock = VirtualClock::new();
        let schedule = Schedule::new(clock.now(), 100, ms(200));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let dispatcher = {
            let (tally, clock) = (tally.clone(), clock.clone());
            tokio::spawn(async move {
                let mut schedule = schedule;
                let send = |_body: Vec<u8>| async {
                    Outcome::Stored {
                        duplicate: false,
                        tier: "light".into(),
                    }
                };
                let progress = ProgressBar::hidden();
                dispatch(&clock, &mut schedule, &mut rx, 64, &tally, &progress, send).await
            })
        };
        // The client stalls for 100 ms (no body ready); sends 0..=9 become overdue.
        clock.advance(ms(100));
        for i in 0..20u8 {
            tx.send(vec![i]).await.unwrap();
        }
        drop(tx);
        let outstanding = dispatcher.await.unwrap();
        drain(outstanding, &tally, DRAIN_TIMEOUT).await;
        let t = lock(&tally);
        assert_eq!(t.ok, 20);
        assert_eq!(t.tiers.get("light"), Some(&20));
        let delayed: u64 = t
            .latency_us
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= 9_000)
            .map(|v| v.count_at_value())
            .sum();
        assert_eq!(delayed, 10, "the stalled sends carry their queueing delay");
        let max_ms = t.latency_us.max() as f64 / 1_000.0;
        assert!((max_ms - 100.0).abs() < 0.5, "max {max_ms} ms");
    }

    #[test]
    fn human_summary_and_json_carry_the_numbers() {
        let mut t = Tally::new();
        let start = Instant::now();
        for i in 0..4u64 {
            t.started(start);
            let outcome = if i == 3 {
                Outcome::Failed("overloaded".into())
            } else {
                Outcome::Stored {
                    duplicate: i == 0,
                    tier: "light".into(),
                }
            };
            t.answered(outcome, start, start + ms(10 * (i + 1)));
        }
        t.error(CLIENT_SATURATED);
        t.close();
        let r = t.report("http://127.0.0.1:1", 5, Duration::from_secs(1));
        assert_eq!((r.sent, r.ok, r.duplicates), (4, 3, 1));
        assert!(
            (r.throughput_tps - 75.0).abs() < 1e-9,
            "{}",
            r.throughput_tps
        );
        let text = r.render_human();
        for needle in [
            "5 tx/s",
            "overloaded 1",
            "client_saturated 1",
            "light 3",
            "p99",
            "75.0 tx/s",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert_eq!(text.matches('|').count(), r.histogram.len());
        let json = r.to_json();
        assert_eq!(json["ok"], 3);
        assert_eq!(json["errors"]["overloaded"], 1);
        assert_eq!(json["tiers"]["light"], 3);
        assert!(json["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    }
}

//! Fault injection: kill and restart nodes of a local federation under signed load, then
//! check that every promise held.
//!
//! A `200` on `POST /v1/tx` is a promise (API.md): the transaction survives the loss of any
//! single process, the city node included. [`run`] launches a [`Federation`] of child
//! processes and runs two tasks side by side:
//!
//! - the **checker** submits signed transactions (a fresh key, unique nonces, at most
//!   [`MAX_IN_FLIGHT`] outstanding) at [`ChaosSpec::rate`] for [`ChaosSpec::duration`]
//!   and records every `200` — tx id, tier, batch id, when it was sent and answered.
//!   `503`s and transport errors are no promise and are only counted;
//! - the **fault task**, driven by `fastrand::Rng::with_seed(seed)` (the same seed gives the
//!   same sequence of faults, though not the same timing of requests), repeatedly waits a
//!   random gap in [`ChaosSpec::fault_interval`], SIGKILLs a victim, waits 200 ms..1.5 s
//!   and starts it again ([`Federation::restart`] waits for readiness). Faults never
//!   overlap, so at most one node is down at a time, except for the rare outages that take
//!   down every light node at once ([`FaultKind::LightOutage`], 10%) or every light *and*
//!   full node ([`FaultKind::StorageBlackout`], 5%), which push writes down the failover
//!   chain light → full → log. The victim of a single kill is a light node (50%), a full
//!   node (25%) or the city (25%, when [`ChaosSpec::kill_city`]).
//!
//! When the load ends, faults stop, any node that is down is started again, and every
//! promise is checked: `GET {city}/v1/tx/{id}` must answer `stored`, and the batch it names
//! must really hold the transaction where the status says — fetched from a holder and
//! checked (`decode`, `check_integrity`, id, `tx_ids`) for the light and full tiers, found
//! among the city's immutable-log records for the log tier. Then the federation shuts down
//! and the city's log is verified end to end. Whatever was not found is listed in
//! [`ChaosReport::missing`]; [`ChaosReport::ok`] demands that list empty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Role;
use crate::crypto::SigningKey;
use crate::federation::{Federation, FederationSpec};
use crate::messages::{self, Batch, FlagKind, SignedTx, Tx, now_ms, parse_hex32};
use crate::storage::immutable_log::{ImmutableLog, LogError, RecordKind};
use crate::storage::peer::PeerClient;

/// Requests the checker keeps outstanding at most; further sends wait for a slot.
pub const MAX_IN_FLIGHT: usize = 32;
/// Shortest and longest time a killed node stays down before it is started again.
pub const DOWNTIME: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_millis(1500));
/// Chance that a fault takes down every light node at once.
pub const LIGHT_OUTAGE_CHANCE: f64 = 0.10;
/// Chance that a fault takes down every light and every full node at once.
pub const STORAGE_BLACKOUT_CHANCE: f64 = 0.05;
/// A request answered within this after a fault ended still counts as "during faults":
/// the city needs a probe or two to see a restarted node up again.
const FAULT_AFTERGLOW: Duration = Duration::from_millis(500);
/// Client-side bound on one `POST /v1/tx` (the city's own request timeout is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the checker waits for outstanding requests once the schedule ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long verification keeps asking the city about promises it does not (yet) know.
const VERIFY_RETRY_FOR: Duration = Duration::from_secs(8);
/// Concurrent requests during verification.
const VERIFY_CONCURRENCY: usize = 32;
/// Receiver of every chaos transaction.
pub const CHAOS_RECEIVER: &str = "chaos-receiver";
/// How many per-transaction reasons [`ChaosReport::missing_detail`] keeps.
const MAX_DETAIL: usize = 50;
/// How many of them the human summary prints.
const HUMAN_DETAIL: usize = 10;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosSpec {
    /// Seeds the fault schedule.
    pub seed: u64,
    /// How long load and faults run.
    pub duration: Duration,
    /// Directory of the federation (configs, logs, node data); should be new and empty.
    pub dir: PathBuf,
    /// The `citychain` binary every node runs.
    pub binary: PathBuf,
    /// Offered load, transactions per second.
    pub rate: u64,
    /// Whether the city node itself is among the victims.
    pub kill_city: bool,
    /// Bounds of the random gap between the end of one fault and the next.
    pub fault_interval: (Duration, Duration),
}

impl ChaosSpec {
    /// A spec with the defaults: 50 tx/s, city kills on, a fault every 1–3 s.
    pub fn new(seed: u64, duration: Duration, dir: PathBuf, binary: PathBuf) -> Self {
        Self {
            seed,
            duration,
            dir,
            binary,
            rate: 50,
            kill_city: true,
            fault_interval: (Duration::from_secs(1), Duration::from_secs(3)),
        }
    }
}

/// What a fault did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// One node SIGKILLed, then started again.
    Kill,
    /// Every light node SIGKILLed at once, then started again.
    LightOutage,
    /// Every light and full node SIGKILLed at once, then started again.
    StorageBlackout,
    /// A node found dead without being killed (a crash of its own), started again.
    Crashed,
    /// A node found down at the end of the run, started again before verification.
    FinalRestart,
}

/// One fault: when, which nodes, what happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds since the load started when the nodes were killed (or found dead).
    pub at_s: f64,
    pub kind: FaultKind,
    pub nodes: Vec<String>,
    /// Seconds from the kill until every node was ready again (`None` if one was not).
    pub recovered_after_s: Option<f64>,
    /// Why a restart failed, if one did.
    pub error: Option<String>,
}

/// A promise that could not be verified and why.
#[derive(Debug, Clone, Serialize)]
pub struct MissingTx {
    pub tx_id: String,
    /// A short class, counted in [`ChaosReport::missing_reasons`]: `city_unknown` (the
    /// city answers 404), `city_not_stored`, `city_unreachable`, `city_bad_answer`,
    /// `batch_unavailable` (no holder serves the batch), `not_in_batch`, `not_in_log`,
    /// `log_unreadable`, `unknown_tier`.
    pub class: String,
    pub reason: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    /// Seconds from the first send to the last answer.
    pub duration_s: f64,
    /// Requests sent.
    pub submitted: u64,
    /// Requests answered 200: the promises.
    pub promised: u64,
    /// Promises found where their status says.
    pub verified: u64,
    /// Promises not found. Must be empty.
    pub missing: Vec<String>,
    /// How many of `missing` fell into each [`MissingTx::class`].
    pub missing_reasons: BTreeMap<String, u64>,
    /// Why, for the first few of `missing`.
    pub missing_detail: Vec<MissingTx>,
    /// Every fault, in order.
    pub faults: Vec<FaultEvent>,
    /// Answers that were not 200, by API error code, `http_<status>` or `transport`.
    pub rejected: BTreeMap<String, u64>,
    /// p99 latency of every 200, milliseconds from send to answer.
    pub p99_ms_all: f64,
    /// p99 latency of the 200s whose request overlapped a fault (0 if none did).
    pub p99_ms_during_faults: f64,
    /// How many 200s overlapped a fault.
    pub promised_during_faults: u64,
    /// Promises by the tier their 200 named.
    pub tiers: BTreeMap<String, u64>,
    /// Promises whose batch id changed between the 200 and the final status (repair may
    /// move transactions; verified where the final status says).
    pub relocated: u64,
    /// Promises by the tier the city names at the end (after repair moved batches up).
    pub final_tiers: BTreeMap<String, u64>,
    /// Holders listed for a light/full batch that did not serve it (at least one other
    /// did, or the promise is in `missing`).
    pub holder_misses: u64,
    /// Records in the city's immutable log after shutdown (it verified).
    pub log_records: u64,
    /// Problems of the harness or the federation that are not a single missing promise:
    /// a node that would not restart, a log that does not verify, a wrong answer.
    pub errors: Vec<String>,
}

impl ChaosReport {
    /// Every promise was found, there was at least one, and nothing else went wrong.
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.errors.is_empty()
            && self.promised > 0
            && self.verified == self.promised
    }

    /// Prints the human summary on stdout.
    pub fn print_human(&self) {
        print!("{}", self.render_human());
    }

    /// The human summary.
    pub fn render_human(&self) -> String {
        use std::fmt::Write;
        let list = crate::bench::format_counts;
        let mut s = String::new();
        let _ = writeln!(s, "chaos run, seed {}", self.seed);
        let _ = writeln!(s, "  duration        {:.1} s", self.duration_s);
        let _ = writeln!(s, "  submitted       {}", self.submitted);
        let _ = writeln!(
            s,
            "  promised (200)  {}  ({} during faults)",
            self.promised, self.promised_during_faults
        );
        let _ = writeln!(s, "  verified        {}", self.verified);
        let _ = writeln!(s, "  missing         {}", self.missing.len());
        let _ = writeln!(s, "  rejected        {}", list(&self.rejected));
        let _ = writeln!(s, "  tiers           {}", list(&self.tiers));
        let _ = writeln!(
            s,
            "  p99 latency     {:.1} ms all, {:.1} ms during faults",
            self.p99_ms_all, self.p99_ms_during_faults
        );
        let _ = writeln!(s, "  relocated       {}", self.relocated);
        let _ = writeln!(s, "  final tiers     {}", list(&self.final_tiers));
        let _ = writeln!(s, "  holder misses   {}", self.holder_misses);
        let _ = writeln!(s, "  log records     {}", self.log_records);
        let _ = writeln!(s, "  faults          {}", self.faults.len());
        for f in &self.faults {
            let recovered = match f.recovered_after_s {
                Some(r) => format!("back after {r:.2} s"),
                None => "NOT RECOVERED".to_string(),
            };
            let _ = writeln!(
                s,
                "    {:>7.2} s  {:<16} {:<28} {}{}",
                f.at_s,
                format!("{:?}", f.kind),
                f.nodes.join(","),
                recovered,
                f.error
                    .as_ref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  ERROR: {e}");
        }
        if !self.missing.is_empty() {
            let _ = writeln!(s, "  missing by reason {}", list(&self.missing_reasons));
        }
        let shown = self.missing_detail.len().min(HUMAN_DETAIL);
        for m in &self.missing_detail[..shown] {
            let _ = writeln!(s, "  MISSING {} [{}]: {}", m.tx_id, m.class, m.reason);
        }
        if self.missing.len() > shown {
            let _ = writeln!(
                s,
                "  ... and {} more missing (all ids in the JSON report)",
                self.missing.len() - shown
            );
        }
        let _ = writeln!(
            s,
            "  result          {}",
            if self.ok() { "OK" } else { "FAILED" }
        );
        s
    }
}

/// A 200 answer.
#[derive(Debug, Clone)]
struct Promise {
    tx_id: String,
    tier: String,
    batch_id: String,
    sent: Instant,
    answered: Instant,
}

enum Outcome {
    Promised(Promise),
    Rejected(String),
    /// A 200 that does not read as a promise of this transaction.
    Wrong(String),
}

/// When nodes were down: `[start, end]`, `end` when every victim was ready again.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Option<Instant>,
}

/// What the fault task hands back.
#[derive(Default)]
struct FaultLog {
    events: Vec<FaultEvent>,
    windows: Vec<Window>,
    errors: Vec<String>,
}

/// Launches a federation under `spec.dir`, runs load and faults for `spec.duration`,
/// verifies every promise, shuts the federation down and verifies the city's log.
///
/// Errors only when the harness cannot do its job (the federation does not start, the
/// city never comes back); a broken promise is a report with `ok() == false`.
pub async fn run(spec: ChaosSpec) -> anyhow::Result<ChaosReport> {
    anyhow::ensure!(spec.rate > 0, "rate must be at least 1 tx/s");
    anyhow::ensure!(
        spec.fault_interval.0 <= spec.fault_interval.1,
        "fault interval: the shortest gap exceeds the longest"
    );
    let fed_spec = FederationSpec {
        tweak: crate::federation::watchful,
        ..FederationSpec::local(spec.dir.clone(), spec.binary.clone())
    };
    let fed = Federation::launch(fed_spec)
        .await
        .context("launching the federation")?;
    let city_id = fed
        .nodes
        .iter()
        .find(|n| n.role == Role::City)
        .map(|n| n.id.clone())
        .context("the federation has no city")?;
    let city_url = fed.city_url();
    let city_name = fed
        .node(&city_id)
        .config
        .node
        .city
        .clone()
        .context("the city node names no city")?;
    let log_dir = fed.node(&city_id).config.log_dir();
    let fed = Arc::new(Mutex::new(fed));
    tracing::info!(seed = spec.seed, dir = %spec.dir.display(), city = %city_url, "chaos: federation ready");

    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let faults = tokio::spawn(fault_task(
        fed.clone(),
        spec.clone(),
        city_id.clone(),
        start,
        stop_rx,
    ));
    let load = run_load(&spec, &city_url, &city_name).await;
    let _ = stop_tx.send(true);
    let mut fault_log = faults.await.context("the fault task panicked")?;
    let (outcomes, submitted, load_elapsed) = load?;

    let mut errors = std::mem::take(&mut fault_log.errors);
    let mut promises = Vec::new();
    let mut rejected = BTreeMap::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Promised(p) => promises.push(p),
            Outcome::Rejected(code) => *rejected.entry(code).or_insert(0) += 1,
            Outcome::Wrong(why) => errors.push(why),
        }
    }

    // Everything back up before anything is checked.
    {
        let mut f = fed.lock().await;
        let crashed: Vec<String> = f.exited().into_iter().map(|(id, _)| id).collect();
        for id in &crashed {
            errors.push(format!("node {id} exited on its own during the run"));
        }
        let down: Vec<String> = f
            .nodes
            .iter()
            .filter(|n| n.pid().is_none())
            .map(|n| n.id.clone())
            .collect();
        if !down.is_empty() {
            let at = start.elapsed();
            let (recovered, error) = restart_all(&mut f, &down).await;
            fault_log.events.push(FaultEvent {
                at_s: at.as_secs_f64(),
                kind: FaultKind::FinalRestart,
                nodes: down,
                recovered_after_s: recovered.then(|| (start.elapsed() - at).as_secs_f64()),
                error: error.clone(),
            });
            if let Some(e) = error {
                errors.push(format!("a node did not come back at the end: {e}"));
            }
        }
    }

    let verification = {
        let f = fed.lock().await;
        verify_promises(&f, &city_url, &log_dir, &promises).await
    };

    // Shut down, then check the log as `citychain log verify` would.
    {
        let mut f = fed.lock().await;
        if let Err(e) = f.shutdown().await {
            errors.push(format!("shutting the federation down: {e:#}"));
        }
    }
    let log_records = match tokio::task::spawn_blocking({
        let dir = log_dir.clone();
        move || ImmutableLog::verify(&dir)
    })
    .await?
    {
        Ok(report) => report.records,
        Err(LogError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            errors.push(format!(
                "the city's immutable log ({}) does not verify: {e}",
                log_dir.display()
            ));
            0
        }
    };

    let (all, during) = latencies(&promises, &fault_log.windows);
    let mut tiers = BTreeMap::new();
    for p in &promises {
        *tiers.entry(p.tier.clone()).or_insert(0) += 1;
    }
    errors.extend(verification.errors);
    let report = ChaosReport {
        seed: spec.seed,
        duration_s: load_elapsed.as_secs_f64(),
        submitted,
        promised: promises.len() as u64,
        verified: verification.verified,
        missing: verification
            .missing
            .iter()
            .map(|m| m.tx_id.clone())
            .collect(),
        missing_reasons: verification
            .missing
            .iter()
            .fold(BTreeMap::new(), |mut m, x| {
                *m.entry(x.class.clone()).or_insert(0) += 1;
                m
            }),
        missing_detail: verification.missing.into_iter().take(MAX_DETAIL).collect(),
        faults: fault_log.events,
        rejected,
        p99_ms_all: p99(&all),
        p99_ms_during_faults: p99(&during),
        promised_during_faults: during.len() as u64,
        tiers,
        relocated: verification.relocated,
        final_tiers: verification.final_tiers,
        holder_misses: verification.holder_misses,
        log_records,
        errors,
    };
    Ok(report)
}

/// The checker's load: signed transactions at `spec.rate` for `spec.duration`. Returns
/// every outcome, how many requests were sent and how long it all took.
async fn run_load(
    spec: &ChaosSpec,
    city_url: &str,
    city_name: &str,
) -> anyhow::Result<(Vec<Outcome>, u64, Duration)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let key = Arc::new(SigningKey::generate().context("generating a signing key")?);
    let url: Arc<str> = format!("{city_url}/v1/tx").into();
    let city: Arc<str> = city_name.into();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let total = ((spec.rate as f64) * spec.duration.as_secs_f64()).round() as u64;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut outcomes = Vec::new();
    let mut submitted = 0;
    for nonce in 0..total {
        let due = start + Duration::from_secs_f64(nonce as f64 / spec.rate as f64);
        tokio::time::sleep_until(due).await;
        if start.elapsed() >= spec.duration {
            break; // behind schedule after an outage; the run's length is what counts
        }
        let slot = slots.clone().acquire_owned().await?;
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done.context("a request task panicked")?);
        }
        let (client, key, url, city) = (client.clone(), key.clone(), url.clone(), city.clone());
        submitted += 1;
        tasks.spawn(async move {
            let _slot = slot;
            submit(&client, &url, &key, &city, nonce).await
        });
    }
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.context("a request task panicked")?);
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(result) => result?,
        Err(_) => {
            let left = tasks.len();
            tasks.abort_all();
            outcomes.extend((0..left).map(|_| Outcome::Rejected("unanswered".into())));
        }
    }
    Ok((outcomes, submitted, start.elapsed()))
}

/// Signs transaction `nonce`, posts it and reads the answer.
async fn submit(
    client: &reqwest::Client,
    url: &str,
    key: &Arc<SigningKey>,
    city: &str,
    nonce: u64,
) -> Outcome {
    let signed = {
        let (key, city) = (key.clone(), city.to_string());
        tokio::task::spawn_blocking(move || sign(&key, &city, nonce)).await
    };
    let (tx_id, body) = match signed {
        Ok(Ok(signed)) => signed,
        Ok(Err(e)) => return Outcome::Wrong(format!("signing transaction {nonce}: {e:#}")),
        Err(e) => return Outcome::Wrong(format!("signing transaction {nonce}: {e}")),
    };
    let sent = Instant::now();
    let answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return Outcome::Rejected("transport".into());
    };
    let status = answer.status().as_u16();
    let Ok(bytes) = answer.bytes().await else {
        return Outcome::Rejected("transport".into());
    };
    let answered = Instant::now();
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    if status != 200 {
        let code = json
            .as_ref()
            .and_then(|j| j.pointer("/error/code"))
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("http_{status}"));
        return Outcome::Rejected(code);
    }
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (
        field("tx_id"),
        field("status"),
        field("tier"),
        field("batch_id"),
    ) {
        (Some(id), Some(st), Some(tier), Some(batch_id)) if id == tx_id && st == "stored" => {
            Outcome::Promised(Promise {
                tx_id,
                tier,
                batch_id,
                sent,
                answered,
            })
        }
        _ => Outcome::Wrong(format!(
            "a 200 for {tx_id} is not a stored answer for it: {}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}

/// A signed transaction: its id and the JSON body of `POST /v1/tx`.
fn sign(key: &SigningKey, city: &str, nonce: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let tx = Tx {
        kind: FlagKind::FreshTx,
        sender: key.address(),
        receiver: CHAOS_RECEIVER.to_string(),
        amount: 1 + nonce % 1000,
        timestamp_ms: now_ms(),
        nonce,
        city_id: city.to_string(),
        continent: None,
        payload: None,
        pop: None,
    };
    let request = SignedTx::sign(tx, key).context("signing")?;
    let body = serde_json::to_vec(&request)?;
    let id = SignedTx::from_request_bytes(&body)
        .map_err(|e| anyhow::anyhow!("our own transaction does not parse: {e}"))?
        .id;
    Ok((hex::encode(id), body))
}

/// Uniform in `[lo, hi]`, millisecond resolution.
fn between(rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}

/// The nodes a fault may take down.
struct Victims {
    lights: Vec<String>,
    fulls: Vec<String>,
    /// The city's id, if it may be killed.
    city: Option<String>,
}

/// The next fault: after `gap`, take `nodes` down for `downtime`.
#[derive(Debug, Clone, PartialEq)]
struct FaultPlan {
    gap: Duration,
    kind: FaultKind,
    nodes: Vec<String>,
    downtime: Duration,
}

/// Draws the next fault from `rng`. It draws the same numbers whatever it picks, so one
/// seed always gives one sequence of faults.
fn plan_fault(rng: &mut fastrand::Rng, interval: (Duration, Duration), v: &Victims) -> FaultPlan {
    let gap = between(rng, interval);
    let roll = rng.f64();
    let pick = rng.f64();
    let downtime = between(rng, DOWNTIME);
    let (kind, nodes) = if roll < STORAGE_BLACKOUT_CHANCE {
        let all = v.lights.iter().chain(&v.fulls).cloned().collect();
        (FaultKind::StorageBlackout, all)
    } else if roll < STORAGE_BLACKOUT_CHANCE + LIGHT_OUTAGE_CHANCE {
        (FaultKind::LightOutage, v.lights.clone())
    } else {
        // Shares of a single kill: lights half, fulls a quarter, the city a quarter.
        let (light_share, full_share) = if v.city.is_some() {
            (0.5, 0.25)
        } else {
            (0.65, 0.35)
        };
        let from = |ids: &[String], x: f64| {
            ids[((x * ids.len() as f64) as usize).min(ids.len() - 1)].clone()
        };
        let victim = match &v.city {
            _ if pick < light_share => from(&v.lights, pick / light_share),
            _ if pick < light_share + full_share => {
                from(&v.fulls, (pick - light_share) / full_share)
            }
            Some(city) => city.clone(),
            None => from(&v.fulls, 0.999),
        };
        (FaultKind::Kill, vec![victim])
    };
    FaultPlan {
        gap,
        kind,
        nodes,
        downtime,
    }
}

/// Kills and restarts nodes until told to stop; never leaves a node down when it returns.
async fn fault_task(
    fed: Arc<Mutex<Federation>>,
    spec: ChaosSpec,
    city_id: String,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> FaultLog {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut log = FaultLog::default();
    let (lights, fulls) = {
        let f = fed.lock().await;
        (f.ids(Role::Light), f.ids(Role::Full))
    };
    let victims = Victims {
        lights,
        fulls,
        city: spec.kill_city.then(|| city_id.clone()),
    };
    loop {
        let plan = plan_fault(&mut rng, spec.fault_interval, &victims);
        tokio::select! {
            _ = tokio::time::sleep(plan.gap) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let FaultPlan {
            kind,
            nodes: victims,
            downtime,
            ..
        } = plan;

        let mut f = fed.lock().await;
        // A node that died without our help is a finding; bring it back first.
        let crashed: Vec<String> = f.exited().into_iter().map(|(id, _)| id).collect();
        if !crashed.is_empty() {
            let at = start.elapsed();
            tracing::warn!(nodes = ?crashed, "chaos: found nodes dead that were not killed");
            log.errors
                .push(format!("nodes exited on their own: {}", crashed.join(", ")));
            let (recovered, error) = restart_all(&mut f, &crashed).await;
            log.events.push(FaultEvent {
                at_s: at.as_secs_f64(),
                kind: FaultKind::Crashed,
                nodes: crashed,
                recovered_after_s: recovered.then(|| (start.elapsed() - at).as_secs_f64()),
                error,
            });
        }

        let killed_at = Instant::now();
        let at = killed_at - start;
        let mut kill_error = None;
        for id in &victims {
            if let Err(e) = f.kill(id) {
                kill_error = Some(format!("killing {id}: {e:#}"));
            }
        }
        drop(f);
        tracing::info!(
            at_s = format!("{:.2}", at.as_secs_f64()),
            kind = ?kind,
            nodes = %victims.join(","),
            down_ms = downtime.as_millis() as u64,
            "chaos: SIGKILL"
        );
        // Not cut short by `stop`: a fault always ends with its nodes restarted.
        tokio::time::sleep(downtime).await;
        let mut f = fed.lock().await;
        let (recovered, restart_error) = restart_all(&mut f, &victims).await;
        drop(f);
        let ended = Instant::now();
        let recovered_after = recovered.then(|| (ended - killed_at).as_secs_f64());
        tracing::info!(
            at_s = format!("{:.2}", (ended - start).as_secs_f64()),
            nodes = %victims.join(","),
            recovered = recovered,
            "chaos: restarted"
        );
        log.windows.push(Window {
            start: killed_at,
            end: recovered.then_some(ended),
        });
        let error = match (kill_error, restart_error) {
            (None, None) => None,
            (a, b) => Some([a, b].into_iter().flatten().collect::<Vec<_>>().join("; ")),
        };
        if let Some(e) = &error {
            log.errors
                .push(format!("fault at {:.2} s: {e}", at.as_secs_f64()));
        }
        log.events.push(FaultEvent {
            at_s: at.as_secs_f64(),
            kind,
            nodes: victims,
            recovered_after_s: recovered_after,
            error,
        });
        if !recovered {
            // Without every node back the run cannot go on meaningfully.
            break;
        }
    }
    log
}

/// Starts every node of `ids` that is not running, waiting for each to be ready; one
/// retry (kill, start) per node. Returns whether all came back, and the errors.
async fn restart_all(f: &mut Federation, ids: &[String]) -> (bool, Option<String>) {
    let mut errors = Vec::new();
    for id in ids {
        if f.node(id).pid().is_some() {
            continue;
        }
        if let Err(first) = f.restart(id).await {
            tracing::warn!(node = %id, error = %format!("{first:#}"), "chaos: restart failed; retrying");
            let _ = f.kill(id);
            if let Err(second) = f.restart(id).await {
                errors.push(format!("{id} did not restart: {first:#}; then: {second:#}"));
            }
        }
    }
    if errors.is_empty() {
        (true, None)
    } else {
        (false, Some(errors.join("; ")))
    }
}

/// Latencies (ms) of every promise, and of those whose request overlapped a fault.
fn latencies(promises: &[Promise], windows: &[Window]) -> (Vec<f64>, Vec<f64>) {
    let mut all = Vec::with_capacity(promises.len());
    let mut during = Vec::new();
    for p in promises {
        let ms = (p.answered - p.sent).as_secs_f64() * 1000.0;
        all.push(ms);
        let overlaps = windows.iter().any(|w| {
            let end = w.end.map(|e| e + FAULT_AFTERGLOW);
            p.answered >= w.start && end.is_none_or(|e| p.sent <= e)
        });
        if overlaps {
            during.push(ms);
        }
    }
    (all, during)
}

/// Nearest-rank 99th percentile; 0 for no samples.
fn p99(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Why a promise is not (yet) verified: a [`MissingTx::class`] and details.
type Why = (&'static str, String);

/// What the city says about a promise at the end.
#[derive(Debug, Clone)]
struct Status {
    tier: String,
    batch_id: String,
    holders: Vec<String>,
}

#[derive(Default)]
struct Verification {
    verified: u64,
    missing: Vec<MissingTx>,
    relocated: u64,
    final_tiers: BTreeMap<String, u64>,
    holder_misses: u64,
    errors: Vec<String>,
}

/// Checks every promise: stored per the city, and its batch holds it where the status
/// says.
async fn verify_promises(
    fed: &Federation,
    city_url: &str,
    log_dir: &std::path::Path,
    promises: &[Promise],
) -> Verification {
    let mut out = Verification::default();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("building the HTTP client: {e}"));
            return out;
        }
    };

    // 1. The city's word on each promise, asked again for a while if it does not know
    //    one yet (it may have just restarted).
    let mut statuses: HashMap<String, Status> = HashMap::new();
    let mut pending: Vec<&Promise> = promises.iter().collect();
    let mut last_reason: HashMap<String, Why> = HashMap::new();
    let deadline = Instant::now() + VERIFY_RETRY_FOR;
    loop {
        let answers: Vec<(&Promise, Result<Status, Why>)> = futures::stream::iter(pending)
            .map(|p| {
                let client = client.clone();
                async move { (p, tx_status(&client, city_url, &p.tx_id).await) }
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .collect()
            .await;
        pending = Vec::new();
        for (p, answer) in answers {
            match answer {
                Ok(status) => {
                    statuses.insert(p.tx_id.clone(), status);
                }
                Err(why) => {
                    last_reason.insert(p.tx_id.clone(), why);
                    pending.push(p);
                }
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for p in &pending {
        let (class, why) = last_reason
            .remove(&p.tx_id)
            .unwrap_or(("city_bad_answer", "?".into()));
        out.missing.push(MissingTx {
            tx_id: p.tx_id.clone(),
            class: class.into(),
            reason: format!(
                "promised on tier {} in batch {}; the city now says: {why}",
                p.tier, p.batch_id,
            ),
        });
    }

    // 2. Each batch, once: from a holder for light/full, from the log for log.
    let mut by_batch: BTreeMap<(String, String), Vec<&Promise>> = BTreeMap::new();
    for p in promises {
        if let Some(s) = statuses.get(&p.tx_id) {
            *out.final_tiers.entry(s.tier.clone()).or_default() += 1;
            if s.batch_id != p.batch_id {
                out.relocated += 1;
            }
            by_batch
                .entry((s.tier.clone(), s.batch_id.clone()))
                .or_default()
                .push(p);
        }
    }
    let needs_log = by_batch.keys().any(|(tier, _)| tier == "log");
    let log_batches: Result<HashMap<String, HashSet<String>>, String> = if needs_log {
        let dir = log_dir.to_path_buf();
        match tokio::task::spawn_blocking(move || log_batches(&dir)).await {
            Ok(r) => r,
            Err(e) => Err(format!("reading the log panicked: {e}")),
        }
    } else {
        Ok(HashMap::new())
    };
    let peers = PeerClient::new();
    for ((tier, batch_id), members) in by_batch {
        let held: Result<HashSet<String>, Why> = match tier.as_str() {
            "light" | "full" => {
                let holders = &statuses[&members[0].tx_id].holders;
                let (found, misses) = fetch_from_holders(fed, &peers, &batch_id, holders).await;
                out.holder_misses += misses;
                found.map_err(|e| ("batch_unavailable", e))
            }
            "log" => match &log_batches {
                Ok(map) => map.get(&batch_id).cloned().ok_or_else(|| {
                    (
                        "not_in_log",
                        format!("batch {batch_id} is not among the city's log records"),
                    )
                }),
                Err(e) => Err(("log_unreadable", e.clone())),
            },
            // The mongo tier is checked by the status alone (no database client here).
            "mongo" => Ok(members.iter().map(|p| p.tx_id.clone()).collect()),
            other => Err(("unknown_tier", format!("unknown tier {other:?}"))),
        };
        for p in members {
            match &held {
                Ok(ids) if ids.contains(&p.tx_id) => out.verified += 1,
                Ok(_) => out.missing.push(MissingTx {
                    tx_id: p.tx_id.clone(),
                    class: "not_in_batch".into(),
                    reason: format!("batch {batch_id} ({tier}) does not contain it"),
                }),
                Err((class, why)) => out.missing.push(MissingTx {
                    tx_id: p.tx_id.clone(),
                    class: (*class).into(),
                    reason: format!("status says {tier} batch {batch_id}: {why}"),
                }),
            }
        }
    }
    out
}

/// `GET {city}/v1/tx/{id}`: the stored status, or why there is none (a
/// [`MissingTx::class`] and details).
async fn tx_status(client: &reqwest::Client, city_url: &str, tx_id: &str) -> Result<Status, Why> {
    let resp = client
        .get(format!("{city_url}/v1/tx/{tx_id}"))
        .send()
        .await
        .map_err(|e| ("city_unreachable", format!("GET failed: {e}")))?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ("city_bad_answer", format!("{code}, not JSON: {e}")))?;
    match code {
        200 => {}
        404 => return Err(("city_unknown", format!("{code} {body}"))),
        _ => return Err(("city_bad_answer", format!("{code} {body}"))),
    }
    if body["status"] != "stored" {
        return Err(("city_not_stored", format!("status {}", body["status"])));
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let bad = |what: &str| ("city_bad_answer", format!("no {what} in {body}"));
    Ok(Status {
        tier: text(&body["tier"]).ok_or_else(|| bad("tier"))?,
        batch_id: text(&body["batch_id"]).ok_or_else(|| bad("batch_id"))?,
        holders: body["holders"]
            .as_array()
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default(),
    })
}

/// The tx ids of batch `batch_id` from the first listed holder that serves a sound copy,
/// and how many holders did not.
async fn fetch_from_holders(
    fed: &Federation,
    peers: &PeerClient,
    batch_id: &str,
    holders: &[String],
) -> (Result<HashSet<String>, String>, u64) {
    let Some(id) = parse_hex32(batch_id) else {
        return (Err(format!("batch id {batch_id:?} is not 64 hex")), 0);
    };
    if holders.is_empty() {
        return (Err("the status lists no holder".into()), 0);
    }
    let mut misses = 0;
    let mut why = Vec::new();
    for holder in holders {
        let Some(node) = fed.nodes.iter().find(|n| &n.id == holder) else {
            misses += 1;
            why.push(format!("{holder}: not a node of this federation"));
            continue;
        };
        let answer = peers
            .get_batch(&node.url, &id, Duration::from_secs(5))
            .await;
        let problem = match answer {
            Ok(Some(bytes)) => match messages::decode::<Batch>(&bytes) {
                Ok(batch) => match batch.check_integrity() {
                    Ok(()) if batch.id() == id => {
                        let ids = batch.tx_ids().iter().map(hex::encode).collect();
                        return (Ok(ids), misses);
                    }
                    Ok(()) => "serves a different batch".to_string(),
                    Err(e) => format!("serves a damaged batch: {e}"),
                },
                Err(e) => format!("serves bytes that do not decode: {e}"),
            },
            Ok(None) => "does not have it (404)".to_string(),
            Err(e) => e.to_string(),
        };
        misses += 1;
        why.push(format!("{holder}: {problem}"));
    }
    (
        Err(format!("no holder serves it: {}", why.join("; "))),
        misses,
    )
}

/// Batch id → tx ids of every batch record in the log at `dir`.
fn log_batches(dir: &std::path::Path) -> Result<HashMap<String, HashSet<String>>, String> {
    let records = ImmutableLog::read_all(dir)
        .map_err(|e| format!("reading the log at {}: {e}", dir.display()))?;
    let mut out = HashMap::new();
    for record in records.iter().filter(|r| r.kind == RecordKind::Batch) {
        let batch: Batch = messages::decode(&record.payload)
            .map_err(|e| format!("log record {} is not a batch: {e}", record.seq))?;
        batch
            .check_integrity()
            .map_err(|e| format!("log record {} holds a damaged batch: {e}", record.seq))?;
        let ids = batch.tx_ids().iter().map(hex::encode).collect();
        out.insert(hex::encode(batch.id()), ids);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_nearest_rank() {
        assert_eq!(p99(&[]), 0.0);
        assert_eq!(p99(&[5.0]), 5.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&v), 99.0);
        let v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(p99(&v), 990.0);
    }

    #[test]
    fn a_request_overlapping_a_fault_counts_as_during_faults() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let promise = |sent, answered| Promise {
            tx_id: String::new(),
            tier: "light".into(),
            batch_id: String::new(),
            sent: at(sent),
            answered: at(answered),
        };
        let windows = [Window {
            start: at(1000),
            end: Some(at(2000)),
        }];
        let ps = [
            promise(0, 10),      // before
            promise(900, 1100),  // spans the kill
            promise(1500, 1600), // inside
            promise(2400, 2450), // inside the afterglow
            promise(2600, 2700), // after
        ];
        let (all, during) = latencies(&ps, &windows);
        assert_eq!(all.len(), 5);
        assert_eq!(during, vec![200.0, 100.0, 50.0]);
    }

    fn victims(city: bool) -> Victims {
        Victims {
            lights: (1..=6).map(|i| format!("light-{i}")).collect(),
            fulls: (1..=2).map(|i| format!("full-{i}")).collect(),
            city: city.then(|| "city-tokyo".to_string()),
        }
    }

    #[test]
    fn faults_take_one_node_down_except_for_the_rare_outages() {
        let interval = (Duration::from_secs(1), Duration::from_secs(3));
        for city in [true, false] {
            let v = victims(city);
            let mut rng = fastrand::Rng::with_seed(7);
            let mut kinds = BTreeMap::new();
            let mut hit = HashSet::new();
            for _ in 0..5000 {
                let plan = plan_fault(&mut rng, interval, &v);
                assert!(plan.gap >= interval.0 && plan.gap <= interval.1);
                assert!(plan.downtime >= DOWNTIME.0 && plan.downtime <= DOWNTIME.1);
                match plan.kind {
                    FaultKind::Kill => assert_eq!(plan.nodes.len(), 1),
                    FaultKind::LightOutage => assert_eq!(plan.nodes, v.lights),
                    FaultKind::StorageBlackout => assert_eq!(plan.nodes.len(), 8),
                    other => panic!("planned {other:?}"),
                }
                *kinds.entry(format!("{:?}", plan.kind)).or_insert(0u32) += 1;
                hit.extend(plan.nodes);
            }
            assert_eq!(hit.contains("city-tokyo"), city);
            assert_eq!(hit.len(), if city { 9 } else { 8 });
            // 10% light outages, 5% blackouts, give or take.
            assert!((350..650).contains(&kinds["LightOutage"]), "{kinds:?}");
            assert!((150..350).contains(&kinds["StorageBlackout"]), "{kinds:?}");
        }
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..10)
                .map(|_| plan_fault(&mut rng, interval, &victims(true)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn the_fault_schedule_depends_only_on_the_seed() {
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..20)
                .map(|_| between(&mut rng, (Duration::from_secs(1), Duration::from_secs(3))))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(
            draw(7)
                .iter()
                .all(|d| (1000..=3000).contains(&d.as_millis()))
        );
    }
}

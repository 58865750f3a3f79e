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
//!
//! The parts: `plan` (the seeded fault schedule), `faults` (the fault task), `load` (the
//! checker's signed load), `verify` (finding each promise where its status says) and
//! `report` (the report, its human summary and latency figures).

mod faults;
mod load;
mod plan;
mod report;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use citychain::config::Role;
use citychain::storage::immutable_log::{ImmutableLog, LogError};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::federation::Federation;
use crate::testkit::watchful_spec;
use faults::{fault_task, restart_all};
use load::{Outcome, run_load};
pub use report::{ChaosReport, FaultEvent, FaultKind, MissingTx};
use report::{latencies, p99};
use verify::verify_promises;

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
    let fed_spec = watchful_spec(spec.dir.clone(), spec.binary.clone());
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

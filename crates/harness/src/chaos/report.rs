//! What a run found: the report, its human summary, and the latency figures in it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::faults::Window;
use super::load::Promise;
use super::{FAULT_AFTERGLOW, HUMAN_DETAIL};

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

/// Latencies (ms) of every promise, and of those whose request overlapped a fault.
pub(super) fn latencies(promises: &[Promise], windows: &[Window]) -> (Vec<f64>, Vec<f64>) {
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
pub(super) fn p99(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

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
}

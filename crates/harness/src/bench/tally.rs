//! The tally: how each request ended, counts by error and tier, and an HDR histogram of
//! latencies, summarized in a [`BenchReport`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::{BenchReport, Bucket, Percentiles, TRANSPORT, UNANSWERED};
use crate::client::{TxAnswer, TxClient};

/// Latencies above this (one hour, in µs) are recorded as this.
pub(super) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Buckets of the printed latency histogram.
pub(super) const HISTOGRAM_BUCKETS: usize = 12;

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// A 200: durable.
    Stored { duplicate: bool, tier: String },
    /// Anything else, by error key.
    Failed(String),
}

pub(super) async fn post_tx(client: TxClient, body: Vec<u8>) -> Outcome {
    match client.post_json(body).await {
        Ok(answer) => classify(&answer),
        Err(_) => Outcome::Failed(TRANSPORT.into()),
    }
}

/// Reads an answer of `POST /v1/tx`.
pub(super) fn classify(answer: &TxAnswer) -> Outcome {
    if answer.status == 200 {
        let receipt = answer.receipt();
        return Outcome::Stored {
            duplicate: receipt.duplicate.unwrap_or(false),
            tier: receipt.tier.unwrap_or_else(|| "unknown".into()),
        };
    }
    let code = answer.error_code().filter(|c| !c.is_empty());
    Outcome::Failed(match code {
        Some(code) => code.to_string(),
        None => format!("http_{}", answer.status),
    })
}

/// Everything counted during a run.
pub(super) struct Tally {
    pub(super) sent: u64,
    pub(super) in_flight: u64,
    pub(super) ok: u64,
    pub(super) duplicates: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) tiers: BTreeMap<String, u64>,
    /// Latencies of 200 answers, µs.
    pub(super) latency_us: Histogram<u64>,
    pub(super) first_send: Option<Instant>,
    pub(super) last_answer: Option<Instant>,
    /// Set once the run is summarized; later answers are ignored.
    pub(super) closed: bool,
}

pub(super) fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Nothing panics while holding it; poisoning would be a bug here.
    tally.lock().expect("bench tally lock poisoned")
}

impl Tally {
    pub(super) fn new() -> Self {
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

    pub(super) fn error(&mut self, key: &str) {
        *self.errors.entry(key.to_string()).or_default() += 1;
    }

    pub(super) fn started(&mut self, at: Instant) {
        self.sent += 1;
        self.in_flight += 1;
        self.first_send.get_or_insert(at);
    }

    pub(super) fn answered(&mut self, outcome: Outcome, due: Instant, at: Instant) {
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
    pub(super) fn close(&mut self) {
        if self.closed {
            return;
        }
        if self.in_flight > 0 {
            *self.errors.entry(UNANSWERED.into()).or_default() += self.in_flight;
        }
        self.closed = true;
    }

    pub(super) fn progress_line(&self) -> String {
        let errors: u64 = self.errors.values().sum();
        format!(
            "ok {}  errors {}  in flight {}",
            self.ok, errors, self.in_flight
        )
    }

    /// The summary, for a run by `client` that was open (`concurrency` `None`) or closed.
    pub(super) fn report(
        &self,
        node: &str,
        rate: u64,
        duration: Duration,
        client: super::ClientInfo,
        concurrency: Option<usize>,
    ) -> BenchReport {
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
            client,
            mode: if concurrency.is_some() {
                "closed"
            } else {
                "open"
            },
            concurrency,
            max_in_flight: None,
        }
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// p50/p90/p99/max/mean of a histogram of microseconds, in milliseconds; zeros if empty.
pub(super) fn percentiles(h: &Histogram<u64>) -> Percentiles {
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
pub(super) fn buckets(h: &Histogram<u64>, n: usize) -> Vec<Bucket> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn answers_are_classified_by_status_and_code() {
        let classify = |status, body: &[u8]| classify(&TxAnswer::new(status, body.to_vec().into()));
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
}

//! The open-loop schedule and the tally of answers: the parts that need no server.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// Highest latency the histogram holds, microseconds (an hour, as `citychain bench`).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Error key of a send skipped because `--max-in-flight` publishes were outstanding (the
/// same key as `citychain bench`).
pub const CLIENT_SATURATED: &str = "client_saturated";

/// Error key of a publish still unanswered when the drain after the schedule gave up.
pub const UNANSWERED: &str = "unanswered";

/// Start times of an open-loop run: `total` sends, the i-th due at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub rate: u64,
    pub total: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate: u64, duration: Duration) -> Self {
        Self {
            start,
            rate: rate.max(1),
            total: total_for(rate, duration),
        }
    }

    /// When send `seq` is due: `start + seq / rate`, exact to the nanosecond.
    pub fn due(&self, seq: u64) -> Instant {
        self.start + offset(seq, self.rate)
    }
}

/// `rate × duration`, rounded down: how many sends a run schedules.
pub fn total_for(rate: u64, duration: Duration) -> u64 {
    u64::try_from(u128::from(rate) * duration.as_nanos() / 1_000_000_000).unwrap_or(u64::MAX)
}

/// `seq / rate` seconds as a duration.
pub fn offset(seq: u64, rate: u64) -> Duration {
    let nanos = u128::from(seq) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Latency percentiles in milliseconds, named as in `citychain bench --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stream acknowledged it.
    Acked,
    /// It failed; the key it is counted under in `errors`.
    Failed(String),
}

/// Outcomes of a run as they arrive.
#[derive(Debug)]
pub struct Tally {
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub last_answer: Option<Instant>,
    pub latency_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        Self {
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            in_flight: 0,
            last_answer: None,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// A publish started.
    pub fn started(&mut self) {
        self.sent += 1;
        self.in_flight += 1;
    }

    /// A send was skipped (counted as an error, not as sent).
    pub fn error(&mut self, key: &str) {
        *self.errors.entry(key.to_string()).or_default() += 1;
    }

    /// The publish due at `due` ended at `at`.
    pub fn answered(&mut self, outcome: Outcome, due: Instant, at: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_answer = Some(self.last_answer.map_or(at, |last| last.max(at)));
        match outcome {
            Outcome::Acked => {
                self.ok += 1;
                let us = u64::try_from(at.saturating_duration_since(due).as_micros())
                    .unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us);
            }
            Outcome::Failed(key) => *self.errors.entry(key).or_default() += 1,
        }
    }

    /// Ends the run: whatever is still outstanding counts as [`UNANSWERED`].
    pub fn close(&mut self) {
        if self.in_flight > 0 {
            *self.errors.entry(UNANSWERED.into()).or_default() += self.in_flight;
            self.in_flight = 0;
        }
    }

    /// Wall time of the run: from the first scheduled send to the last answer, or the
    /// configured duration when nothing was answered.
    pub fn wall(&self, start: Instant, duration: Duration) -> Duration {
        match self.last_answer {
            Some(last) if last > start => last - start,
            _ => duration,
        }
    }

    /// Acknowledged publishes per second of [`Tally::wall`].
    pub fn throughput(&self, start: Instant, duration: Duration) -> f64 {
        let wall = self.wall(start, duration).as_secs_f64();
        if wall > 0.0 {
            self.ok as f64 / wall
        } else {
            0.0
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        percentiles(&self.latency_us)
    }
}

/// p50/p90/p99/max/mean of a histogram of microseconds, in milliseconds; zeros if empty.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
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

/// `TimedOut` → `timed_out`: the error key of an async-nats error kind's `Debug` name.
pub fn error_key(debug_name: &str) -> String {
    let name = debug_name
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    if out.is_empty() { "other".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn schedule_spaces_sends_by_one_over_rate() {
        let start = Instant::now();
        let s = Schedule::new(start, 4, Duration::from_secs(2));
        assert_eq!(s.total, 8);
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(1), start + ms(250));
        assert_eq!(s.due(7), start + ms(1750));
        // Rates that do not divide a second stay exact: the i-th is not i rounded steps.
        let s = Schedule::new(start, 3, Duration::from_secs(1));
        assert_eq!(s.total, 3);
        assert_eq!(s.due(1), start + Duration::from_nanos(333_333_333));
        assert_eq!(s.due(3), start + Duration::from_secs(1));
    }

    #[test]
    fn totals_round_down() {
        assert_eq!(total_for(1000, Duration::from_secs(10)), 10_000);
        assert_eq!(total_for(3, Duration::from_millis(500)), 1);
        assert_eq!(total_for(1, Duration::from_millis(999)), 0);
        assert_eq!(total_for(0, Duration::from_secs(5)), 0);
    }

    #[test]
    fn percentiles_of_known_latencies() {
        let mut t = Tally::new();
        let start = Instant::now();
        // 1..=100 ms, one each, all due at start.
        for i in 1..=100u64 {
            t.started();
            t.answered(Outcome::Acked, start, start + ms(i));
        }
        let p = t.percentiles();
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(near(p.p50, 50.0), "{p:?}");
        assert!(near(p.p90, 90.0), "{p:?}");
        assert!(near(p.p99, 99.0), "{p:?}");
        assert!(near(p.max, 100.0), "{p:?}");
        assert!(near(p.mean, 50.5), "{p:?}");
        assert_eq!(
            percentiles(&Tally::new().latency_us),
            Percentiles::default()
        );
    }

    #[test]
    fn latency_counts_from_the_due_time_and_errors_by_kind() {
        let mut t = Tally::new();
        let start = Instant::now();
        let s = Schedule::new(start, 10, Duration::from_secs(1));
        t.started();
        // Due at 100 ms, answered at 130 ms: 30 ms, however late it was actually sent.
        t.answered(Outcome::Acked, s.due(1), start + ms(130));
        t.started();
        t.answered(
            Outcome::Failed("timed_out".into()),
            s.due(2),
            start + ms(500),
        );
        t.error(CLIENT_SATURATED);
        t.started();
        t.close();
        assert_eq!((t.sent, t.ok), (3, 1));
        assert_eq!(t.errors["timed_out"], 1);
        assert_eq!(t.errors[CLIENT_SATURATED], 1);
        assert_eq!(t.errors[UNANSWERED], 1);
        assert!((t.percentiles().p50 - 30.0).abs() < 0.05);
        // One ack over the 500 ms to the last answer.
        assert!((t.throughput(start, Duration::from_secs(1)) - 2.0).abs() < 1e-9);
        // Nothing answered: the configured duration.
        assert_eq!(Tally::new().wall(start, ms(700)), ms(700));
    }

    #[test]
    fn error_keys_are_snake_case() {
        assert_eq!(error_key("TimedOut"), "timed_out");
        assert_eq!(error_key("StreamNotFound"), "stream_not_found");
        assert_eq!(error_key("Other"), "other");
        assert_eq!(error_key("MaxAckPending { x: 1 }"), "max_ack_pending");
        assert_eq!(error_key(""), "other");
    }
}

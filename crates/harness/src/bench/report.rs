//! The summary of a run, for people and as JSON.

use std::collections::BTreeMap;

use super::BenchReport;

/// Width, in characters, of the longest histogram bar.
const BAR_WIDTH: usize = 40;

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
        let c = &self.client;
        let _ = writeln!(
            s,
            "  client        {} cores, {} build {}{}",
            c.cores,
            c.build,
            c.version,
            if c.presigned {
                ", whole run signed before the clock started"
            } else {
                ", signing while it sends"
            }
        );
        match self.concurrency {
            Some(n) => {
                let _ = writeln!(s, "  mode          closed loop, {n} requests outstanding");
            }
            None => {
                let _ = write!(s, "  target rate   {} tx/s", self.target_rate);
                if let Some(n) = self.max_in_flight {
                    let _ = write!(s, ", at most {n} outstanding");
                }
                s.push('\n');
            }
        }
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
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::CLIENT_SATURATED;
    use super::super::tally::{Outcome, Tally};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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
        let r = t.report(
            "http://127.0.0.1:1",
            5,
            Duration::from_secs(1),
            super::super::ClientInfo::here(false),
            None,
        );
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

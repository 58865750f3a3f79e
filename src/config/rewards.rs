//! `[rewards]`: the storage-rewards engine a city runs (`engines::rewards`).
//!
//! ```toml
//! [rewards]
//! engine = "poh_score"        # or "off": nothing credited, nothing penalized
//! light_multiplier = 1.0      # a light node's proof of hold is worth score × 1.0 × 10
//! full_multiplier = 1.5       # a full node's, score × 1.5 × 10
//! points_per_score = 10
//! failure_penalty = 0.5      # a failed repair challenge multiplies the node's reliability by this
//! pass_recovery = 0.05       # a passed one adds this back, up to 1
//! ```
//!
//! Multipliers are kept in tenths (points are integers): each must be a multiple of 0.1.

use serde::{Deserialize, Serialize};

/// The reward engines a city can run (`[rewards] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardEngineName {
    /// Every valid proof of hold credits `score × multiplier × points_per_score`; a failed
    /// repair challenge lowers the node's reliability (and so its score).
    #[default]
    PohScore,
    /// No credits, no penalties, no ledger entries.
    Off,
}

/// Largest multiplier accepted: keeps `score × multiplier × points_per_score` far from
/// overflow and catches a misplaced decimal point.
pub const MAX_MULTIPLIER: f64 = 100.0;
/// Largest `points_per_score` accepted.
pub const MAX_POINTS_PER_SCORE: u64 = 1_000_000;

/// `[rewards]`: how proofs of hold are credited and failed challenges penalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardsConfig {
    pub engine: RewardEngineName,
    /// A light node's multiplier (a multiple of 0.1).
    pub light_multiplier: f64,
    /// A full node's multiplier (a multiple of 0.1).
    pub full_multiplier: f64,
    /// Points per score step.
    pub points_per_score: u64,
    /// A failed repair challenge multiplies the node's reliability by this, in [0, 1).
    pub failure_penalty: f64,
    /// A passed repair challenge adds this to the node's reliability (at most 1), in [0, 1].
    pub pass_recovery: f64,
}

impl Default for RewardsConfig {
    fn default() -> Self {
        Self {
            engine: RewardEngineName::PohScore,
            light_multiplier: 1.0,
            full_multiplier: 1.5,
            points_per_score: 10,
            failure_penalty: 0.5,
            pass_recovery: 0.05,
        }
    }
}

/// `m` in tenths, if it is a multiple of 0.1 within [0, [`MAX_MULTIPLIER`]].
pub fn multiplier_tenths(m: f64) -> Option<u64> {
    if !m.is_finite() || !(0.0..=MAX_MULTIPLIER).contains(&m) {
        return None;
    }
    let tenths = (m * 10.0).round();
    ((m * 10.0 - tenths).abs() < 1e-6).then_some(tenths as u64)
}

impl RewardsConfig {
    /// The light multiplier in tenths (validated).
    pub fn light_tenths(&self) -> u64 {
        multiplier_tenths(self.light_multiplier).unwrap_or(10)
    }

    /// The full multiplier in tenths (validated).
    pub fn full_tenths(&self) -> u64 {
        multiplier_tenths(self.full_multiplier).unwrap_or(15)
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, m) in [
            ("light_multiplier", self.light_multiplier),
            ("full_multiplier", self.full_multiplier),
        ] {
            if multiplier_tenths(m).is_none() {
                p.push(format!(
                    "[rewards] {name} must be a multiple of 0.1 between 0 and {MAX_MULTIPLIER}, not {m}"
                ));
            }
        }
        if self.points_per_score > MAX_POINTS_PER_SCORE {
            p.push(format!(
                "[rewards] points_per_score must be at most {MAX_POINTS_PER_SCORE}"
            ));
        }
        if !(self.failure_penalty.is_finite() && (0.0..1.0).contains(&self.failure_penalty)) {
            p.push(format!(
                "[rewards] failure_penalty must be at least 0 and below 1 (a failed challenge must cost something), not {}",
                self.failure_penalty
            ));
        }
        if !(self.pass_recovery.is_finite() && (0.0..=1.0).contains(&self.pass_recovery)) {
            p.push(format!(
                "[rewards] pass_recovery must be between 0 and 1, not {}",
                self.pass_recovery
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_are_tenths_and_bad_values_are_reported() {
        assert_eq!(multiplier_tenths(1.5), Some(15));
        assert_eq!(multiplier_tenths(1.0), Some(10));
        assert_eq!(multiplier_tenths(0.0), Some(0));
        assert_eq!(multiplier_tenths(0.3), Some(3));
        assert_eq!(multiplier_tenths(1.25), None);
        assert_eq!(multiplier_tenths(-1.0), None);
        assert_eq!(multiplier_tenths(f64::NAN), None);
        assert_eq!(multiplier_tenths(1e9), None);
        assert!(RewardsConfig::default().problems().is_empty());
        let bad = RewardsConfig {
            light_multiplier: 1.25,
            full_multiplier: f64::INFINITY,
            points_per_score: u64::MAX,
            failure_penalty: 1.0,
            pass_recovery: -0.1,
            ..RewardsConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("light_multiplier"), "{p:?}");
    }

    #[test]
    fn a_node_config_reports_rewards_problems_with_the_others() {
        let text = r#"
[node]
id = "city-1"
role = "city"
listen = "127.0.0.1:7001"
data_dir = "/tmp/x"
continent = "asia"
city = "tokyo"

[rewards]
engine = "off"
full_multiplier = 1.55
"#;
        let err = crate::config::Config::parse(text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("[rewards] full_multiplier must be a multiple of 0.1"),
            "{all}"
        );
        assert!(all.contains("[vault]"), "every problem at once: {all}");
        let err =
            crate::config::Config::parse(&text.replace("\"off\"", "\"lottery\"")).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.starts_with("[rewards]")),
            "{:?}",
            err.problems
        );
    }
}

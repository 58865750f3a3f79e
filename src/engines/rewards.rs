//! Storage rewards: credits for every valid proof of hold a storage node gives, and the
//! cost of a failed repair challenge.
//!
//! The rule (upstream's, [`PohScore`]): a valid proof of hold credits its node
//! `score × multiplier × points_per_score` points, where `score` is the node's 0–9 score
//! when the city chose it (carried with the placement, so the credit does not depend on
//! when it is written), and the multiplier is 1.5 for a full node, 1.0 for a light one.
//! Multipliers are kept in tenths, so with the defaults the points are exact
//! (`score × 10` for light, `score × 15` for full); a configured product that is not a
//! whole number of points is rounded down.
//!
//! A proof of hold is one of: a write ack (the ack of a batch or piece the city stored,
//! credited once with the batch's record), a repair ack (a piece or batch the Repairer
//! placed), or a passed repair challenge (a fresh possession proof). A failed challenge
//! (a wrong or absent proof, a piece lost, no answer) earns nothing, counts against the
//! node, and lowers its **reliability**: a factor in [0, 1] (1 for a node never failed)
//! that multiplies its score, so it is paid less and chosen less. Each failed challenge
//! multiplies it by `failure_penalty` (0.5); each passed one adds `pass_recovery` (0.05)
//! back, up to 1: one failure halves the score, ten passes restore it.
//!
//! Only light and full nodes are credited: continent and global nodes and
//! representatives earn nothing here; points are this city's view, never settled.
//!
//! The engine is pure: the city store keeps the ledger (`storage::rewards`), the Failover
//! actor and the Repairer say what happened.

use serde::{Deserialize, Serialize};

use crate::config::{RewardEngineName, RewardsConfig, Role};

/// The highest node score.
pub const MAX_SCORE: u8 = 9;

/// What a valid proof of hold answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// The ack of a batch (or piece) the city stored.
    Write,
    /// The ack of a batch (or piece) the Repairer placed.
    Repair,
    /// A passed repair challenge (`REPAIR_ACK`).
    Challenge,
}

/// What one challenge or proof showed of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A valid proof of hold.
    Proved(ProofKind),
    /// A repair challenge it failed.
    Failed,
}

/// One entry for the ledger: what a node did and what it earned, decided by the engine
/// ([`RewardEngine::proved`], [`RewardEngine::failed`]) and added to the node's
/// [`Account`] by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub node_id: String,
    pub role: Role,
    pub outcome: Outcome,
    pub points: u64,
    /// When it happened (ms since the epoch).
    pub time_ms: u64,
}

/// One node's standing in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The node's role when it was last seen; `None` before any entry.
    pub role: Option<Role>,
    pub points: u64,
    pub write_acks: u64,
    pub repair_acks: u64,
    pub challenges_passed: u64,
    pub challenges_failed: u64,
    /// When it was last credited (ms since the epoch).
    pub last_credit_ms: Option<u64>,
    /// Its reliability after its last repair challenge (`None`: never challenged, 1). Kept
    /// with the counts so that a restarted city, or a restarted Prioritizer, does not
    /// forgive a node its failed challenges.
    pub reliability: Option<f64>,
}

impl Account {
    /// Its reliability now: 1 until it was challenged.
    pub fn reliability(&self) -> f64 {
        self.reliability.unwrap_or(1.0)
    }

    /// Moves its reliability by `engine`'s rule if `credit` is a repair challenge's result
    /// (write and repair acks leave it alone).
    pub fn challenged(&mut self, credit: &Credit, engine: &dyn RewardEngine) {
        let passed = match credit.outcome {
            Outcome::Proved(ProofKind::Challenge) => true,
            Outcome::Failed => false,
            Outcome::Proved(_) => return,
        };
        self.reliability = Some(engine.reliability_after(self.reliability(), passed));
    }

    /// Adds `credit` to the account.
    pub fn apply(&mut self, credit: &Credit) {
        self.role = Some(credit.role);
        match credit.outcome {
            Outcome::Proved(kind) => {
                match kind {
                    ProofKind::Write => self.write_acks += 1,
                    ProofKind::Repair => self.repair_acks += 1,
                    ProofKind::Challenge => self.challenges_passed += 1,
                }
                self.points = self.points.saturating_add(credit.points);
                self.last_credit_ms = Some(self.last_credit_ms.unwrap_or(0).max(credit.time_ms));
            }
            Outcome::Failed => self.challenges_failed += 1,
        }
    }
}

/// The rules of storage rewards.
pub trait RewardEngine: Send + Sync {
    fn name(&self) -> &'static str;

    /// False for an engine that records nothing (the ledger is left alone).
    fn enabled(&self) -> bool {
        true
    }

    /// Points one valid proof of hold earns a node of `role` scored `score` (0–9).
    fn points(&self, role: Role, score: u8) -> u64;

    /// A node's reliability after a repair challenge it `passed` (or failed).
    fn reliability_after(&self, reliability: f64, passed: bool) -> f64;

    /// The ledger entry of a valid proof of hold; `None` for a node this engine does not
    /// pay (a role other than light or full).
    fn proved(
        &self,
        node_id: &str,
        kind: ProofKind,
        role: Role,
        score: u8,
        time_ms: u64,
    ) -> Option<Credit> {
        role.is_storage().then(|| Credit {
            node_id: node_id.to_owned(),
            role,
            outcome: Outcome::Proved(kind),
            points: self.points(role, score),
            time_ms,
        })
    }

    /// The ledger entry of a failed repair challenge: no points.
    fn failed(&self, node_id: &str, role: Role, time_ms: u64) -> Option<Credit> {
        role.is_storage().then(|| Credit {
            node_id: node_id.to_owned(),
            role,
            outcome: Outcome::Failed,
            points: 0,
            time_ms,
        })
    }
}

/// The default engine: `score × multiplier × points_per_score`, in tenths.
#[derive(Debug, Clone, PartialEq)]
pub struct PohScore {
    pub light_tenths: u64,
    pub full_tenths: u64,
    pub points_per_score: u64,
    pub failure_penalty: f64,
    pub pass_recovery: f64,
}

impl PohScore {
    pub fn from_config(cfg: &RewardsConfig) -> Self {
        Self {
            light_tenths: cfg.light_tenths(),
            full_tenths: cfg.full_tenths(),
            points_per_score: cfg.points_per_score,
            failure_penalty: cfg.failure_penalty,
            pass_recovery: cfg.pass_recovery,
        }
    }
}

impl RewardEngine for PohScore {
    fn name(&self) -> &'static str {
        "poh_score"
    }

    fn points(&self, role: Role, score: u8) -> u64 {
        let tenths = match role {
            Role::Light => self.light_tenths,
            Role::Full => self.full_tenths,
            Role::City | Role::Continent | Role::Global | Role::Representative => 0,
        };
        u64::from(score.min(MAX_SCORE)) * tenths * self.points_per_score / 10
    }

    fn reliability_after(&self, reliability: f64, passed: bool) -> f64 {
        let r = if passed {
            reliability + self.pass_recovery
        } else {
            reliability * self.failure_penalty
        };
        r.clamp(0.0, 1.0)
    }
}

/// No rewards: nothing credited, nothing penalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Off;

impl RewardEngine for Off {
    fn name(&self) -> &'static str {
        "off"
    }

    fn enabled(&self) -> bool {
        false
    }

    fn points(&self, _role: Role, _score: u8) -> u64 {
        0
    }

    fn reliability_after(&self, reliability: f64, _passed: bool) -> f64 {
        reliability
    }
}

/// The engine `[rewards] engine` names.
pub fn engine_from_config(cfg: &RewardsConfig) -> std::sync::Arc<dyn RewardEngine> {
    match cfg.engine {
        RewardEngineName::PohScore => std::sync::Arc::new(PohScore::from_config(cfg)),
        RewardEngineName::Off => std::sync::Arc::new(Off),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> PohScore {
        PohScore::from_config(&RewardsConfig::default())
    }

    #[test]
    fn a_proof_earns_score_times_multiplier_times_ten() {
        let e = engine();
        for score in 0..=9u8 {
            assert_eq!(e.points(Role::Light, score), u64::from(score) * 10);
            assert_eq!(e.points(Role::Full, score), u64::from(score) * 15);
        }
        assert_eq!(e.points(Role::Light, 200), 90, "a score is at most 9");
        for role in [Role::City, Role::Continent, Role::Global] {
            assert_eq!(e.points(role, 9), 0, "{role:?} earns nothing");
        }
    }

    #[test]
    fn configured_multipliers_round_down_to_whole_points() {
        let e = PohScore::from_config(&RewardsConfig {
            light_multiplier: 0.3,
            full_multiplier: 2.0,
            points_per_score: 1,
            ..RewardsConfig::default()
        });
        // 7 × 0.3 × 1 = 2.1 → 2; 7 × 2 × 1 = 14.
        assert_eq!(e.points(Role::Light, 7), 2);
        assert_eq!(e.points(Role::Full, 7), 14);
        let big = PohScore::from_config(&RewardsConfig {
            full_multiplier: 100.0,
            points_per_score: 1_000_000,
            ..RewardsConfig::default()
        });
        assert_eq!(big.points(Role::Full, 9), 900_000_000, "far from overflow");
    }

    #[test]
    fn the_account_counts_each_kind_and_credits_points() {
        let e = engine();
        let mut a = Account::default();
        let credit = |kind, score, time_ms| {
            e.proved("light-1", kind, Role::Light, score, time_ms)
                .unwrap()
        };
        a.apply(&credit(ProofKind::Write, 8, 100));
        a.apply(&credit(ProofKind::Repair, 6, 300));
        a.apply(&credit(ProofKind::Challenge, 9, 200));
        let failed = e.failed("light-1", Role::Light, 400).unwrap();
        assert_eq!(failed.points, 0, "a failed challenge earns nothing");
        a.apply(&failed);
        assert_eq!(
            a,
            Account {
                role: Some(Role::Light),
                points: 80 + 60 + 90,
                write_acks: 1,
                repair_acks: 1,
                challenges_passed: 1,
                challenges_failed: 1,
                last_credit_ms: Some(300),
                // `apply` counts; only `challenged` moves reliability.
                reliability: None,
            }
        );
        // Challenge results move reliability by the engine's rule; acks do not.
        let mut r = Account::default();
        r.challenged(&credit(ProofKind::Write, 9, 1), &e);
        r.challenged(&credit(ProofKind::Repair, 9, 1), &e);
        assert_eq!(r.reliability, None);
        r.challenged(&failed, &e);
        r.challenged(&failed, &e);
        assert_eq!(r.reliability(), 0.25);
        r.challenged(&credit(ProofKind::Challenge, 9, 1), &e);
        assert!((r.reliability() - 0.30).abs() < 1e-9, "{r:?}");
        r.challenged(&failed, &Off);
        assert!((r.reliability() - 0.30).abs() < 1e-9, "off moves nothing");
        // A failed challenge leaves the points and the last credit as they were.
        let before = a.clone();
        a.apply(&failed);
        assert_eq!(a.points, before.points);
        assert_eq!(a.last_credit_ms, before.last_credit_ms);
        assert_eq!(a.challenges_failed, 2);

        let mut full = Account::default();
        full.apply(
            &e.proved("full-1", ProofKind::Write, Role::Full, 9, 5)
                .unwrap(),
        );
        assert_eq!(full.points, 135, "9 × 1.5 × 10");
        assert!(
            e.proved("asia", ProofKind::Write, Role::Continent, 9, 5)
                .is_none()
                && e.failed("global", Role::Global, 5).is_none(),
            "continent and global nodes are not in the ledger"
        );
    }

    #[test]
    fn failed_challenges_halve_reliability_and_passes_restore_it_slowly() {
        let e = engine();
        let mut r = 1.0;
        r = e.reliability_after(r, false);
        assert_eq!(r, 0.5);
        r = e.reliability_after(r, false);
        assert_eq!(r, 0.25);
        for _ in 0..4 {
            r = e.reliability_after(r, true);
        }
        assert!((r - 0.45).abs() < 1e-9, "{r}");
        for _ in 0..100 {
            r = e.reliability_after(r, true);
        }
        assert_eq!(r, 1.0, "never above 1");
        for _ in 0..2000 {
            r = e.reliability_after(r, false);
        }
        assert!((0.0..1e-12).contains(&r), "never below 0: {r}");
    }

    #[test]
    fn off_credits_nothing_and_penalizes_nothing() {
        let off = engine_from_config(&RewardsConfig {
            engine: RewardEngineName::Off,
            ..RewardsConfig::default()
        });
        assert_eq!(off.name(), "off");
        assert!(!off.enabled());
        assert_eq!(off.points(Role::Full, 9), 0);
        assert_eq!(off.reliability_after(0.7, false), 0.7);
        let on = engine_from_config(&RewardsConfig::default());
        assert_eq!((on.name(), on.enabled()), ("poh_score", true));
    }

    #[test]
    fn the_engine_is_named_in_config() {
        let parsed: RewardsConfig = toml::from_str("engine = \"off\"").unwrap();
        assert_eq!(parsed.engine, RewardEngineName::Off);
        assert_eq!(
            parsed.full_multiplier, 1.5,
            "other keys keep their defaults"
        );
        assert!(toml::from_str::<RewardsConfig>("engine = \"lottery\"").is_err());
        assert!(toml::from_str::<RewardsConfig>("bonus = 3").is_err());
    }
}

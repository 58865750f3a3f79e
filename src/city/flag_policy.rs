//! The flag policy (upstream `compute_flag(tx, context)`): a transaction's flag kind and
//! how urgently it must be written. The DagBatcher consults it as each transaction arrives,
//! because urgency decides when a batch closes.

use std::sync::Arc;

use crate::config::{FlagPolicyName, FlaggerConfig};
use crate::messages::{Flag, FlagKind, Tx, Urgency};

/// Decides a transaction's flag: its kind and how urgently it must be written.
pub trait FlagPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    /// The upstream `compute_flag(tx, context)`: write now, soon, or when convenient.
    fn compute_flag(&self, tx: &Tx) -> Flag;
}

/// The policy `[flagger] policy` names.
pub fn policy_from_config(cfg: &FlaggerConfig) -> Arc<dyn FlagPolicy> {
    match cfg.policy {
        FlagPolicyName::AlwaysImmediate => Arc::new(AlwaysImmediate),
        FlagPolicyName::Default => Arc::new(RulePolicy::from_config(cfg)),
    }
}

/// The default rules: listed kinds and large amounts are immediate, listed kinds may wait,
/// everything else is normal.
#[derive(Debug, Clone)]
pub struct RulePolicy {
    pub immediate_amount: u64,
    pub immediate_kinds: Vec<FlagKind>,
    pub deferred_kinds: Vec<FlagKind>,
}

impl RulePolicy {
    pub fn from_config(cfg: &FlaggerConfig) -> Self {
        Self {
            immediate_amount: cfg.immediate_amount,
            immediate_kinds: cfg.immediate_kinds.clone(),
            deferred_kinds: cfg.deferred_kinds.clone(),
        }
    }
}

impl FlagPolicy for RulePolicy {
    fn name(&self) -> &'static str {
        "default"
    }

    fn compute_flag(&self, tx: &Tx) -> Flag {
        let urgency =
            if self.immediate_kinds.contains(&tx.kind) || tx.amount >= self.immediate_amount {
                Urgency::Immediate
            } else if self.deferred_kinds.contains(&tx.kind) {
                Urgency::Deferred
            } else {
                Urgency::Normal
            };
        Flag {
            kind: tx.kind,
            urgency,
        }
    }
}

/// Every transaction closes its batch at once: lowest latency, smallest batches.
pub struct AlwaysImmediate;

impl FlagPolicy for AlwaysImmediate {
    fn name(&self) -> &'static str {
        "always_immediate"
    }

    fn compute_flag(&self, tx: &Tx) -> Flag {
        Flag {
            kind: tx.kind,
            urgency: Urgency::Immediate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;

    fn tx(kind: FlagKind, amount: u64) -> Tx {
        let key = SigningKey::from_seed([1; 32]).unwrap();
        Tx {
            kind,
            sender: key.address(),
            receiver: "r".into(),
            amount,
            timestamp_ms: 0,
            nonce: 0,
            city_id: "c".into(),
            continent: None,
            payload: None,
            pop: None,
            objects: None,
        }
    }

    #[test]
    fn default_rules_decide_urgency() {
        let p = policy_from_config(&FlaggerConfig::default());
        assert_eq!(p.name(), "default");
        let u = |k, a| p.compute_flag(&tx(k, a)).urgency;
        assert_eq!(u(FlagKind::FreshTx, 10), Urgency::Normal);
        assert_eq!(
            u(FlagKind::FreshTx, 100_000_000),
            Urgency::Immediate,
            "large amounts go at once"
        );
        assert_eq!(u(FlagKind::Checkpoint, 1), Urgency::Immediate);
        assert_eq!(u(FlagKind::SystemTx, 1), Urgency::Deferred);
        assert_eq!(
            u(FlagKind::SystemTx, 100_000_000),
            Urgency::Immediate,
            "amount wins over kind"
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::PohAck, 1)).kind,
            FlagKind::PohAck
        );
    }

    #[test]
    fn config_picks_the_policy_and_its_rules() {
        let cfg = FlaggerConfig {
            policy: FlagPolicyName::Default,
            immediate_amount: 50,
            immediate_kinds: vec![],
            deferred_kinds: vec![FlagKind::FreshTx],
        };
        let p = policy_from_config(&cfg);
        assert_eq!(
            p.compute_flag(&tx(FlagKind::FreshTx, 49)).urgency,
            Urgency::Deferred
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::FreshTx, 50)).urgency,
            Urgency::Immediate
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::Checkpoint, 1)).urgency,
            Urgency::Normal
        );

        let always = policy_from_config(&FlaggerConfig {
            policy: FlagPolicyName::AlwaysImmediate,
            ..FlaggerConfig::default()
        });
        assert_eq!(always.name(), "always_immediate");
        assert_eq!(
            always.compute_flag(&tx(FlagKind::SystemTx, 1)).urgency,
            Urgency::Immediate
        );
    }
}

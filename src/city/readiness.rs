//! Whether a city can make a transaction durable now: ready while at least one tier of its
//! chain works, not ready (with every tier's reason) when none does.
//!
//! - **light** and **full** work while at least `min_light_acks` / `min_full_acks` of their
//!   nodes are up with room, as the Prioritizer's probes and the writes last showed (the
//!   published [`NodesSnapshot`]), so they come back by themselves when nodes do.
//! - **mongo** fails when the chain lists it but no URI is configured for the continent,
//!   and while its last attempt failed (until an attempt succeeds: every batch that falls
//!   that far tries it again).
//! - **log** fails while its last append failed (the log closes after a failed write or
//!   fsync, so it stays failed until the node restarts).

use crate::config::{Config, Role};
use crate::messages::Tier;
use crate::storage::chain::TierChain;

use super::node_policy::{MIN_FREE_BYTES, NodesSnapshot};

/// A city's storage readiness.
#[derive(Clone)]
pub struct TierReadiness {
    /// The chain as configured, including a tier the built chain skips (mongo without URI).
    configured: Vec<Tier>,
    chain: TierChain,
    nodes: NodesSnapshot,
    min_light_acks: usize,
    min_full_acks: usize,
}

impl TierReadiness {
    pub fn new(config: &Config, chain: TierChain, nodes: NodesSnapshot) -> Self {
        Self {
            configured: config.supervisor.chain.clone(),
            chain,
            nodes,
            min_light_acks: config.storage.min_light_acks(),
            min_full_acks: config.storage.min_full_acks,
        }
    }

    /// `Ok` if some tier works; otherwise why each one does not.
    pub fn check(&self) -> Result<(), String> {
        let mut why = Vec::new();
        for &tier in &self.configured {
            let index = (0..self.chain.len())
                .find(|&i| self.chain.get(i).is_some_and(|t| t.tier() == tier));
            let failing = match (tier, index) {
                (Tier::Light, _) => self.too_few_nodes(Role::Light, self.min_light_acks),
                (Tier::Full, _) => self.too_few_nodes(Role::Full, self.min_full_acks),
                (_, None) => Some("no URI is configured for the continent".to_string()),
                (Tier::Mongo | Tier::Log, Some(i)) => self
                    .chain
                    .health()
                    .last(i)
                    .and_then(|last| last.outcome.err())
                    .map(|reason| format!("its last write failed: {reason}")),
            };
            match failing {
                None => return Ok(()),
                Some(reason) => why.push(format!("{tier}: {reason}")),
            }
        }
        Err(format!(
            "no storage tier can make a batch durable: {}",
            why.join("; ")
        ))
    }

    fn too_few_nodes(&self, role: Role, needed: usize) -> Option<String> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let usable = nodes
            .iter()
            .filter(|n| n.role == role && n.up)
            .filter(|n| {
                n.capacity_bytes == 0
                    || n.capacity_bytes.saturating_sub(n.used_bytes) >= MIN_FREE_BYTES
            })
            .count();
        (usable < needed).then(|| format!("{usable} of the {needed} {role} nodes it needs are up"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use super::*;
    use crate::city::node_policy::{Factors, NodeView};
    use crate::storage::immutable_log::ImmutableLog;
    use crate::storage::log_tier::LogTier;
    use crate::storage::peer_tier::PeerTier;
    use crate::storage::tier::StorageTier;

    fn light(id: &str, up: bool) -> NodeView {
        NodeView {
            node_id: id.into(),
            role: Role::Light,
            url: String::new(),
            continent: "asia".into(),
            up,
            score: 0,
            factors: Factors {
                latency: 0.0,
                uptime: 0.0,
                capacity: 0.0,
                load: 0.0,
                same_continent: 0.0,
                reliability: 1.0,
            },
            latency_ms: None,
            used_bytes: 0,
            capacity_bytes: 0,
        }
    }

    #[test]
    fn ready_while_one_tier_works_and_every_reason_when_none_does() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
        let tiers: Vec<Arc<dyn StorageTier>> = vec![
            Arc::new(PeerTier {
                tier: Tier::Light,
                client: crate::testkit::peer_client(),
                min_acks: 2,
                deadline: Duration::from_millis(100),
            }),
            Arc::new(LogTier {
                log: log.clone(),
                holder: "city".into(),
            }),
        ];
        let chain = TierChain::new(tiers, crate::testkit::peer_client(), log, None);
        let nodes: NodesSnapshot =
            Arc::new(RwLock::new(vec![light("l1", true), light("l2", false)]));
        let ready = TierReadiness {
            configured: vec![Tier::Light, Tier::Mongo, Tier::Log],
            chain: chain.clone(),
            nodes: nodes.clone(),
            min_light_acks: 2,
            min_full_acks: 1,
        };
        assert_eq!(ready.check(), Ok(()), "the log has not failed");

        chain
            .health()
            .record(1, Err("No space left on device".into()));
        let why = ready.check().unwrap_err();
        for part in [
            "light: 1 of the 2 light nodes it needs are up",
            "mongo: no URI is configured",
            "log: its last write failed: No space left on device",
        ] {
            assert!(why.contains(part), "{part:?} in {why}");
        }

        nodes.write().unwrap()[1].up = true;
        assert_eq!(ready.check(), Ok(()), "two light nodes are up again");
        nodes.write().unwrap()[1].up = false;
        chain.health().record(1, Ok(()));
        assert_eq!(ready.check(), Ok(()), "the log wrote again");
    }
}

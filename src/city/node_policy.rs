//! The storage-node registry's view of each node, and the [`NodePolicy`] that scores
//! nodes 0–9 and chooses where a batch goes (upstream `select_nodes(flag, context)`).
//! The Prioritizer actor holds the registry and asks the policy; `GET /v1/nodes` reads the
//! [`NodesSnapshot`] it publishes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::config::{NodePolicyName, PrioritizerConfig, Role, Weights};
use crate::messages::{FlagKind, Placement, Target};
use crate::storage::nodes::KnownNode;

/// A node with less free space than this is not chosen (a batch could not fit).
pub const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// What the registry knows of one storage node.
#[derive(Debug, Clone)]
pub struct NodeStats {
    pub node: KnownNode,
    pub up: bool,
    pub consecutive_failures: u32,
    /// Smoothed write/probe latency; `None` until first seen.
    pub latency_ms: Option<f64>,
    pub successes: u64,
    pub attempts: u64,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub inflight: u64,
    /// In [0, 1], 1 for a node that never failed a repair challenge: multiplies its
    /// score. A failed challenge lowers it, passed ones restore it slowly (the rule is
    /// the rewards engine's, `engines::rewards`). Kept in memory: a restarted city starts
    /// every node at 1.
    pub reliability: f64,
}

impl NodeStats {
    pub fn new(node: KnownNode) -> Self {
        Self {
            node,
            // Optimistic until the first probe says otherwise, so a city can write from its
            // first second.
            up: true,
            consecutive_failures: 0,
            latency_ms: None,
            successes: 0,
            attempts: 0,
            used_bytes: 0,
            capacity_bytes: 0,
            inflight: 0,
            reliability: 1.0,
        }
    }

    pub fn id(&self) -> &str {
        &self.node.entry.id
    }

    pub fn observe(&mut self, ok: bool, latency: Duration, down_after: u32) {
        self.attempts += 1;
        let ms = latency.as_secs_f64() * 1000.0;
        if ok {
            self.successes += 1;
            self.consecutive_failures = 0;
            self.up = true;
            self.latency_ms = Some(match self.latency_ms {
                Some(old) => 0.8 * old + 0.2 * ms,
                None => ms,
            });
        } else {
            self.consecutive_failures += 1;
            if self.consecutive_failures >= down_after {
                self.up = false;
            }
        }
    }

    /// False once a probe showed the node nearly full: writing to it would only be refused.
    pub fn has_room(&self) -> bool {
        self.capacity_bytes == 0
            || self.capacity_bytes.saturating_sub(self.used_bytes) >= MIN_FREE_BYTES
    }

    pub fn target(&self) -> Target {
        self.node.target()
    }
}

/// The context of one choice.
#[derive(Debug, Clone)]
pub struct SelectContext {
    /// The continent of the city node choosing.
    pub continent: String,
    pub light_fanout: usize,
    /// Increases with every batch; breaks ties between equal scores so load spreads.
    pub rotation: usize,
}

/// Each factor in [0, 1], higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Factors {
    pub latency: f64,
    pub uptime: f64,
    pub capacity: f64,
    pub load: f64,
    pub same_continent: f64,
    /// Not weighted: multiplies the weighted sum ([`NodeStats::reliability`]).
    pub reliability: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// 0–9, as shown by `GET /v1/nodes`.
    pub value: u8,
    /// The weighted factor sum in [0, 1] the value is rounded from.
    pub raw: f64,
    pub factors: Factors,
}

/// Scores nodes and chooses where a batch goes (upstream `select_nodes(flag, context)`).
pub trait NodePolicy: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, node: &NodeStats, ctx: &SelectContext) -> Score;

    /// Up nodes with room only, best first: `light_fanout` light nodes (one per piece of
    /// the batch, whatever its flag: a piece goes to one node) and every full node.
    fn select_nodes(&self, _flag: FlagKind, ctx: &SelectContext, nodes: &[NodeStats]) -> Placement {
        let mut ranked: Vec<(Score, usize, &NodeStats)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up && n.has_room())
            .map(|(i, n)| (self.score(n, ctx), i, n))
            .collect();
        let count = nodes.len().max(1);
        // Equal scores are common (identical idle nodes); rotate among them so one node is
        // not chosen for every batch.
        ranked.sort_by(|a, b| {
            b.0.raw.total_cmp(&a.0.raw).then_with(|| {
                let ra = (a.1 + count - ctx.rotation % count) % count;
                let rb = (b.1 + count - ctx.rotation % count) % count;
                ra.cmp(&rb)
            })
        });
        let fanout = ctx.light_fanout;
        let light: Vec<_> = ranked
            .iter()
            .filter(|(_, _, n)| n.node.entry.role == Role::Light)
            .take(fanout)
            .collect();
        let full: Vec<_> = ranked
            .iter()
            .filter(|(_, _, n)| n.node.entry.role == Role::Full)
            .collect();
        Placement {
            scores: light
                .iter()
                .chain(&full)
                .map(|(s, _, n)| (n.id().to_owned(), s.value))
                .collect(),
            light: light.iter().map(|(_, _, n)| n.target()).collect(),
            full: full.iter().map(|(_, _, n)| n.target()).collect(),
        }
    }
}

/// The default policy: a weighted sum of latency, uptime, free capacity, load and
/// same-continent, with weights from `[prioritizer.weights]`.
pub struct WeightedPolicy {
    pub weights: Weights,
    /// Latency at which the latency factor is 0.5.
    pub latency_reference: Duration,
}

impl NodePolicy for WeightedPolicy {
    fn name(&self) -> &'static str {
        "weighted"
    }

    fn score(&self, n: &NodeStats, ctx: &SelectContext) -> Score {
        let reference = self.latency_reference.as_secs_f64() * 1000.0;
        let factors = Factors {
            // Unknown latency counts as the reference: neither favoured nor shunned.
            latency: reference / (reference + n.latency_ms.unwrap_or(reference)),
            // Laplace-smoothed success ratio: a new node starts at 0.5·(1+1)/(0+2) = 1.
            uptime: (n.successes + 1) as f64 / (n.attempts + 1) as f64,
            capacity: if n.capacity_bytes == 0 {
                1.0
            } else {
                1.0 - (n.used_bytes as f64 / n.capacity_bytes as f64).min(1.0)
            },
            load: 1.0 / (1.0 + n.inflight as f64 / 4.0),
            same_continent: if n.node.entry.continent == ctx.continent {
                1.0
            } else {
                0.0
            },
            reliability: n.reliability.clamp(0.0, 1.0),
        };
        let w = &self.weights;
        let total = w.latency + w.uptime + w.capacity + w.load + w.same_continent;
        let raw = if n.up {
            (w.latency * factors.latency
                + w.uptime * factors.uptime
                + w.capacity * factors.capacity
                + w.load * factors.load
                + w.same_continent * factors.same_continent)
                / total
                * factors.reliability
        } else {
            0.0
        };
        Score {
            value: (raw * 9.0).round().clamp(0.0, 9.0) as u8,
            raw,
            factors,
        }
    }
}

/// The policy `[prioritizer] policy` names.
pub fn policy_from_config(cfg: &PrioritizerConfig) -> Arc<dyn NodePolicy> {
    match cfg.policy {
        NodePolicyName::Weighted => Arc::new(WeightedPolicy {
            weights: cfg.weights.clone(),
            latency_reference: cfg.latency_reference,
        }),
    }
}

/// One node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub role: Role,
    pub url: String,
    pub continent: String,
    pub up: bool,
    pub score: u8,
    pub factors: Factors,
    pub latency_ms: Option<f64>,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// The published registry snapshot.
pub type NodesSnapshot = Arc<RwLock<Vec<NodeView>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageNodeEntry;
    use crate::crypto::SigningKey;

    fn node(id: &str, role: Role, continent: &str) -> NodeStats {
        let key = SigningKey::from_seed([3; 32]).unwrap();
        NodeStats::new(KnownNode {
            entry: StorageNodeEntry {
                id: id.into(),
                role,
                url: format!("http://127.0.0.1:1/{id}"),
                continent: continent.into(),
                public_key: String::new(),
            },
            public_key: Arc::from(key.public_key()),
        })
    }

    fn policy() -> WeightedPolicy {
        WeightedPolicy {
            weights: Weights::default(),
            latency_reference: Duration::from_millis(20),
        }
    }

    fn ctx(rotation: usize) -> SelectContext {
        SelectContext {
            continent: "asia".into(),
            light_fanout: 2,
            rotation,
        }
    }

    #[test]
    fn score_orders_by_latency_load_capacity_and_continent() {
        let p = policy();
        let mut fast = node("fast", Role::Light, "asia");
        fast.observe(true, Duration::from_millis(2), 2);
        let mut slow = node("slow", Role::Light, "asia");
        slow.observe(true, Duration::from_millis(200), 2);
        assert!(p.score(&fast, &ctx(0)).raw > p.score(&slow, &ctx(0)).raw);

        let mut busy = node("busy", Role::Light, "asia");
        busy.observe(true, Duration::from_millis(2), 2);
        busy.inflight = 40;
        assert!(p.score(&fast, &ctx(0)).raw > p.score(&busy, &ctx(0)).raw);

        let mut full = node("full", Role::Light, "asia");
        full.observe(true, Duration::from_millis(2), 2);
        full.capacity_bytes = 100;
        full.used_bytes = 95;
        assert!(p.score(&fast, &ctx(0)).raw > p.score(&full, &ctx(0)).raw);

        let mut far = node("far", Role::Light, "europe");
        far.observe(true, Duration::from_millis(2), 2);
        assert!(p.score(&fast, &ctx(0)).raw > p.score(&far, &ctx(0)).raw);

        let s = p.score(&fast, &ctx(0));
        assert!(
            s.value <= 9 && s.value >= 8,
            "a fast idle local node scores high: {s:?}"
        );
    }

    #[test]
    fn down_nodes_are_skipped_and_come_back_on_success() {
        let p = policy();
        let mut nodes = vec![
            node("l1", Role::Light, "asia"),
            node("l2", Role::Light, "asia"),
            node("l3", Role::Light, "asia"),
            node("f1", Role::Full, "asia"),
        ];
        nodes[0].observe(false, Duration::from_millis(5), 2);
        assert!(nodes[0].up, "one failure is not enough to go down");
        nodes[0].observe(false, Duration::from_millis(5), 2);
        assert!(!nodes[0].up);
        assert_eq!(p.score(&nodes[0], &ctx(0)).value, 0);
        for rotation in 0..6 {
            let placement = p.select_nodes(FlagKind::FreshTx, &ctx(rotation), &nodes);
            assert_eq!(placement.light.len(), 2);
            assert!(
                placement.light.iter().all(|t| t.node_id != "l1"),
                "{placement:?}"
            );
            assert_eq!(placement.full.len(), 1);
        }
        nodes[0].observe(true, Duration::from_millis(5), 2);
        assert!(nodes[0].up);

        // A node a probe found full is skipped too, until it has room again.
        nodes[1].capacity_bytes = 100 * 1024 * 1024;
        nodes[1].used_bytes = nodes[1].capacity_bytes - 1024;
        let wide = SelectContext {
            light_fanout: 3,
            ..ctx(0)
        };
        let placement = p.select_nodes(FlagKind::FreshTx, &wide, &nodes);
        assert_eq!(
            placement.light.len(),
            2,
            "only two light nodes have room: {placement:?}"
        );
        assert!(
            placement.light.iter().all(|t| t.node_id != "l2"),
            "{placement:?}"
        );
        nodes[1].used_bytes = 0;
        assert_eq!(
            p.select_nodes(FlagKind::FreshTx, &wide, &nodes).light.len(),
            3
        );
        let chosen: std::collections::BTreeSet<String> = (0..8)
            .flat_map(|r| p.select_nodes(FlagKind::FreshTx, &ctx(r), &nodes).light)
            .map(|t| t.node_id)
            .collect();
        assert!(
            chosen.contains("l1"),
            "a recovered node is chosen again: {chosen:?}"
        );
    }

    #[test]
    fn failed_challenges_lower_the_score_and_the_choice_and_placements_carry_scores() {
        let p = policy();
        let mut nodes: Vec<_> = (0..3)
            .map(|i| node(&format!("l{i}"), Role::Light, "asia"))
            .collect();
        for n in &mut nodes {
            n.observe(true, Duration::from_millis(2), 2);
        }
        let healthy = p.score(&nodes[0], &ctx(0));
        nodes[0].reliability = 0.5;
        let penalized = p.score(&nodes[0], &ctx(0));
        assert_eq!(penalized.factors.reliability, 0.5);
        assert!((penalized.raw - healthy.raw / 2.0).abs() < 1e-9);
        assert!(
            penalized.value < healthy.value,
            "{penalized:?} vs {healthy:?}"
        );
        for rotation in 0..6 {
            let placement = p.select_nodes(FlagKind::FreshTx, &ctx(rotation), &nodes);
            assert!(
                placement.light.iter().all(|t| t.node_id != "l0"),
                "a node that failed its challenges is chosen last: {placement:?}"
            );
            assert_eq!(placement.scores.len(), 2);
            for t in &placement.light {
                assert_eq!(placement.score_of(&t.node_id), healthy.value);
            }
            assert_eq!(placement.score_of("l0"), 0, "not chosen, no score");
        }
    }

    #[test]
    fn ties_rotate_and_every_flag_gets_one_node_per_piece() {
        let p = policy();
        let nodes: Vec<_> = (0..4)
            .map(|i| node(&format!("l{i}"), Role::Light, "asia"))
            .collect();
        let firsts: std::collections::BTreeSet<String> = (0..4)
            .map(|r| {
                p.select_nodes(FlagKind::FreshTx, &ctx(r), &nodes).light[0]
                    .node_id
                    .clone()
            })
            .collect();
        assert_eq!(firsts.len(), 4, "equal nodes take turns being first");
        let all = p.select_nodes(FlagKind::Checkpoint, &ctx(0), &nodes);
        assert_eq!(all.light.len(), 2, "one light node per piece");
        let ids: std::collections::BTreeSet<_> = all.light.iter().map(|t| &t.node_id).collect();
        assert_eq!(ids.len(), 2, "each piece on a different node");
    }
}

//! Prioritizer: the registry of storage nodes and the choice of where each batch goes.
//!
//! Knows every storage node from `[[storage.nodes]]`; learns about them from periodic
//! health probes and from every write the tiers report ([`NodeObservation`](crate::messages::NodeObservation)); marks a node
//! down after `down_after_failures` consecutive failures and up again on a good probe. A
//! [`NodePolicy`] (upstream `select_nodes(flag, context)`) scores nodes 0–9 and picks the
//! light and full nodes of each batch, and each placement carries the score of every node
//! it chose (what the node's proof of hold is credited by). Repair challenge results from
//! the Repairer move a node's reliability (the rewards engine's rule), which multiplies
//! its score. Receives sealed batches from the Flagger and sends
//! [`StoreJob`]s to the StorageWriter. `GET /v1/nodes` reads the published snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::{Mailbox, SendError};
use crate::city::msgs::{FailoverMsg, PrioritizerMsg, ProbeResult, SubmitError, WriterMsg};
use crate::city::node_policy::{NodePolicy, NodeStats, NodeView, NodesSnapshot, SelectContext};
use crate::config::PrioritizerConfig;
use crate::engines::rewards::RewardEngine;
use crate::messages::StoreJob;
use crate::storage::city_store::CityStore;
use crate::storage::nodes::NodeDirectory;
use crate::storage::peer::PeerClient;

/// Mailbox capacity (batches); the Flagger never has more than `max_inflight_batches` out.
pub const MAILBOX_CAPACITY: usize = 4096;

pub struct Prioritizer;

pub struct PrioritizerArgs {
    pub config: PrioritizerConfig,
    /// Light nodes each batch goes to: one per piece (`[storage.erasure]`, k + m).
    pub light_fanout: usize,
    pub continent: String,
    pub nodes: Arc<NodeDirectory>,
    pub policy: Arc<dyn NodePolicy>,
    /// Its rule moves a node's reliability after each repair challenge.
    pub rewards: Arc<dyn RewardEngine>,
    /// The rewards ledger: each node's reliability as its last challenge left it, read at
    /// every start so neither a restart nor a new process forgives a failing node.
    pub store: Arc<CityStore>,
    pub client: PeerClient,
    pub snapshot: NodesSnapshot,
    pub writer: Mailbox<WriterMsg>,
    pub failover: Mailbox<FailoverMsg>,
}

pub struct PrioritizerState {
    args: PrioritizerArgs,
    nodes: Vec<NodeStats>,
    rotation: usize,
    prober: Option<tokio::task::JoinHandle<()>>,
}

impl PrioritizerState {
    fn context(&self) -> SelectContext {
        SelectContext {
            continent: self.args.continent.clone(),
            light_fanout: self.args.light_fanout,
            rotation: self.rotation,
        }
    }

    fn publish(&self) {
        let ctx = self.context();
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|n| {
                let score = self.args.policy.score(n, &ctx);
                metrics::gauge!(crate::metrics::STORAGE_NODE_UP, "node" => n.node.entry.id.clone())
                    .set(if n.up { 1.0 } else { 0.0 });
                metrics::gauge!(crate::metrics::STORAGE_NODE_SCORE, "node" => n.node.entry.id.clone())
                    .set(score.value as f64);
                NodeView {
                    node_id: n.node.entry.id.clone(),
                    role: n.node.entry.role,
                    url: n.node.entry.url.clone(),
                    continent: n.node.entry.continent.clone(),
                    up: n.up,
                    score: score.value,
                    factors: score.factors,
                    latency_ms: n.latency_ms,
                    used_bytes: n.used_bytes,
                    capacity_bytes: n.capacity_bytes,
                }
            })
            .collect();
        *self.args.snapshot.write().expect("snapshot lock poisoned") = views;
    }

    fn node_mut(&mut self, id: &str) -> Option<&mut NodeStats> {
        self.nodes.iter_mut().find(|n| n.node.entry.id == id)
    }
}

/// Probes every node once, concurrently, each bounded by `timeout`.
async fn probe_all(
    client: &PeerClient,
    nodes: &[(String, String)],
    timeout: Duration,
) -> Vec<ProbeResult> {
    let probes = nodes.iter().map(|(id, url)| async move {
        let start = Instant::now();
        let r = client.health(url, timeout).await.map_err(|e| e.to_string());
        (id.clone(), start.elapsed(), r)
    });
    futures::future::join_all(probes).await
}

impl Actor for Prioritizer {
    type Msg = PrioritizerMsg;
    type State = PrioritizerState;
    type Arguments = PrioritizerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: PrioritizerArgs,
    ) -> Result<PrioritizerState, ActorProcessingErr> {
        let mut nodes: Vec<NodeStats> = args.nodes.iter().cloned().map(NodeStats::new).collect();
        let store = args.store.clone();
        match tokio::task::spawn_blocking(move || store.reward_accounts()).await? {
            Ok(accounts) => {
                for (id, account) in accounts {
                    if let Some(n) = nodes.iter_mut().find(|n| n.node.entry.id == id) {
                        n.reliability = account.reliability();
                    }
                }
            }
            // The ledger unreadable: start every node at full reliability rather than
            // not start; the next challenges move it again.
            Err(e) => {
                tracing::error!(error = %e, "reading node reliability from the rewards ledger")
            }
        }
        let state = PrioritizerState {
            args,
            nodes,
            rotation: 0,
            prober: None,
        };
        state.publish();
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut PrioritizerState,
    ) -> Result<(), ActorProcessingErr> {
        let client = state.args.client.clone();
        let targets: Vec<(String, String)> = state
            .nodes
            .iter()
            .map(|n| (n.node.entry.id.clone(), n.node.entry.url.clone()))
            .collect();
        let interval = state.args.config.probe_interval;
        let timeout = state.args.config.probe_timeout;
        state.prober = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let results = probe_all(&client, &targets, timeout).await;
                if myself.cast(PrioritizerMsg::Probed(results)).is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut PrioritizerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = state.prober.take() {
            p.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: PrioritizerMsg,
        state: &mut PrioritizerState,
    ) -> Result<(), ActorProcessingErr> {
        let down_after = state.args.config.down_after_failures;
        match msg {
            PrioritizerMsg::Route(sealed) => {
                state.rotation = state.rotation.wrapping_add(1);
                let ctx = state.context();
                let placement = state
                    .args
                    .policy
                    .select_nodes(sealed.flag(), &ctx, &state.nodes);
                let job = StoreJob { sealed, placement };
                if let Err(e) = state.args.writer.try_send(WriterMsg::Write(job)) {
                    let reason = match &e {
                        SendError::Full(_) => SubmitError::Overloaded(state.args.writer.depth()),
                        SendError::Closed(_) => SubmitError::ShuttingDown,
                    };
                    let WriterMsg::Write(job) = e.into_inner() else {
                        unreachable!("we sent a Write")
                    };
                    let _ = state.args.failover.cast(FailoverMsg::Undeliverable {
                        tx_ids: job.sealed.tx_ids,
                        reason,
                        holds_credit: true,
                    });
                }
            }
            PrioritizerMsg::Panic => panic!("fault injected into prioritizer"),
            PrioritizerMsg::Place {
                flag,
                exclude,
                reply,
            } => {
                state.rotation = state.rotation.wrapping_add(1);
                let ctx = state.context();
                let candidates: Vec<NodeStats> = state
                    .nodes
                    .iter()
                    .filter(|n| !exclude.contains(&n.node.entry.id))
                    .cloned()
                    .collect();
                let _ = reply.send(state.args.policy.select_nodes(flag, &ctx, &candidates));
            }
            PrioritizerMsg::Observe(observations) => {
                for o in observations {
                    if let Some(n) = state.node_mut(&o.node_id) {
                        let was_up = n.up;
                        n.observe(o.ok, o.latency, down_after);
                        if was_up && !n.up {
                            tracing::warn!(node = %o.node_id, "storage node marked down after failed writes");
                        }
                    }
                }
                state.publish();
            }
            PrioritizerMsg::Challenged(results) => {
                for (id, passed) in results {
                    let rewards = state.args.rewards.clone();
                    if let Some(n) = state.node_mut(&id) {
                        let before = n.reliability;
                        n.reliability = rewards.reliability_after(before, passed);
                        if !passed {
                            tracing::warn!(node = %id, reliability = n.reliability, "storage node failed a repair challenge; its score drops");
                        }
                    }
                }
                state.publish();
            }
            PrioritizerMsg::Probed(results) => {
                for (id, latency, result) in results {
                    let Some(n) = state.node_mut(&id) else {
                        continue;
                    };
                    let was_up = n.up;
                    match result {
                        Ok(h) => {
                            n.used_bytes = h.used_bytes;
                            n.capacity_bytes = h.capacity_bytes;
                            n.inflight = h.inflight;
                            n.observe(true, latency, down_after);
                        }
                        Err(e) => {
                            n.observe(false, latency, down_after);
                            tracing::debug!(node = %id, error = %e, "probe failed");
                        }
                    }
                    if was_up != n.up {
                        tracing::warn!(node = %id, up = n.up, "storage node changed state");
                    }
                }
                state.publish();
            }
        }
        Ok(())
    }
}

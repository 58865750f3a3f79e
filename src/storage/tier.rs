//! The storage-tier trait and the failover chain.
//!
//! A tier either makes a batch durable and says who holds it, or says why not. The chain
//! is built once from `[supervisor] chain`; adding a tier means implementing
//! [`StorageTier`] and adding one arm to [`TierChain::build`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::immutable_log::{ImmutableLog, RecordKind};
use super::mongo::MongoTier;
use super::peer::PeerClient;
use crate::config::Config;
use crate::crypto;
use crate::messages::{NodeObservation, PohAck, StoreJob, Target, Tier, now_ms};

/// A batch made durable by a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
}

/// What one tier attempt produced: the outcome, and what it saw of each node it tried.
#[derive(Debug)]
pub struct TierResult {
    pub outcome: Result<Stored, String>,
    pub observations: Vec<NodeObservation>,
}

#[async_trait::async_trait]
pub trait StorageTier: Send + Sync {
    fn tier(&self) -> Tier;
    /// Makes the job's batch durable on this tier, or explains why not, within the tier's
    /// own deadline.
    async fn store(&self, job: &StoreJob) -> TierResult;
}

/// The tiers in failover order.
#[derive(Clone)]
pub struct TierChain {
    tiers: Vec<Arc<dyn StorageTier>>,
}

impl TierChain {
    pub fn new(tiers: Vec<Arc<dyn StorageTier>>) -> Self {
        Self { tiers }
    }

    /// The chain named by `[supervisor] chain`, over the node's peer client and log.
    pub fn build(config: &Config, client: PeerClient, log: Arc<ImmutableLog>) -> Self {
        let s = &config.storage;
        let tiers = config
            .supervisor
            .chain
            .iter()
            .filter_map(|tier| -> Option<Arc<dyn StorageTier>> {
                Some(match tier {
                    Tier::Light => Arc::new(PeerTier {
                        tier: Tier::Light,
                        client: client.clone(),
                        min_acks: s.min_light_acks,
                        deadline: s.light_deadline,
                    }),
                    Tier::Full => Arc::new(PeerTier {
                        tier: Tier::Full,
                        client: client.clone(),
                        min_acks: s.min_full_acks,
                        deadline: s.full_deadline,
                    }),
                    Tier::Log => Arc::new(LogTier {
                        log: log.clone(),
                        holder: config.node.id.clone(),
                    }),
                    Tier::Mongo => match MongoTier::new(&s.mongo, &config.node.continent) {
                        Some(mongo) => Arc::new(mongo),
                        None => {
                            tracing::info!(
                                continent = %config.node.continent,
                                env = %crate::config::MongoConfig::env_var(&config.node.continent),
                                "no MongoDB URI for this continent; the mongo tier is skipped"
                            );
                            return None;
                        }
                    },
                })
            })
            .collect();
        Self { tiers }
    }

    pub fn get(&self, index: usize) -> Option<&Arc<dyn StorageTier>> {
        self.tiers.get(index)
    }

    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }
}

/// Light or full nodes: the batch goes to every chosen node in parallel and the tier holds
/// once `min_acks` valid proof-of-hold acks are back, before `deadline`.
pub struct PeerTier {
    pub tier: Tier,
    pub client: PeerClient,
    pub min_acks: usize,
    pub deadline: Duration,
}

#[async_trait::async_trait]
impl StorageTier for PeerTier {
    fn tier(&self) -> Tier {
        self.tier
    }

    async fn store(&self, job: &StoreJob) -> TierResult {
        let targets: &[Target] = match self.tier {
            Tier::Light => &job.placement.light,
            _ => &job.placement.full,
        };
        if targets.len() < self.min_acks {
            return TierResult {
                outcome: Err(format!(
                    "{} {} nodes up, {} acks needed",
                    targets.len(),
                    self.tier,
                    self.min_acks
                )),
                observations: Vec::new(),
            };
        }
        let started = Instant::now();
        let expected_hash = crypto::hash(&job.sealed.bytes);
        let batch_id = job.sealed.id;
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(|t| {
                let bytes = job.sealed.bytes.clone();
                async move {
                    let sent = Instant::now();
                    let answer = self
                        .client
                        .put_batch(&t.url, &batch_id, bytes, self.deadline)
                        .await;
                    let checked = match answer {
                        Ok(ack) => ack
                            .verify(&t.node_id, &t.public_key, &batch_id, &expected_hash, now_ms())
                            .map(|()| ack)
                            .map_err(|e| {
                                metrics::counter!(crate::metrics::ACKS_REJECTED, "reason" => ack_reason(&e))
                                    .increment(1);
                                format!("{}: invalid ack: {e}", t.node_id)
                            }),
                        Err(e) => Err(format!("{}: {e}", t.node_id)),
                    };
                    (t.node_id.clone(), sent.elapsed(), checked)
                }
            })
            .collect();

        let mut acks = Vec::new();
        let mut errors = Vec::new();
        let mut observations = Vec::new();
        let deadline = tokio::time::Instant::from_std(started + self.deadline);
        while acks.len() < self.min_acks {
            // Stop early once the acks still possible cannot reach the quorum.
            if acks.len() + pending.len() < self.min_acks {
                break;
            }
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(Some((node_id, latency, result))) => {
                    observations.push(NodeObservation {
                        node_id,
                        latency,
                        ok: result.is_ok(),
                    });
                    match result {
                        Ok(ack) => acks.push(ack),
                        Err(e) => errors.push(e),
                    }
                }
                Ok(None) => break,
                Err(_elapsed) => {
                    errors.push(format!("deadline of {:?} passed", self.deadline));
                    break;
                }
            }
        }
        if acks.len() >= self.min_acks {
            return TierResult {
                outcome: Ok(Stored {
                    holders: acks.iter().map(|a| a.holder_id.clone()).collect(),
                    acks,
                }),
                observations,
            };
        }
        // Nodes that had not answered by the end count as failed writes.
        let answered: Vec<String> = observations.iter().map(|o| o.node_id.clone()).collect();
        for t in targets.iter().filter(|t| !answered.contains(&t.node_id)) {
            observations.push(NodeObservation {
                node_id: t.node_id.clone(),
                latency: started.elapsed(),
                ok: false,
            });
        }
        TierResult {
            outcome: Err(format!(
                "{} of {} acks needed from the {} tier: {}",
                acks.len(),
                self.min_acks,
                self.tier,
                errors.join("; ")
            )),
            observations,
        }
    }
}

fn ack_reason(e: &crate::messages::AckError) -> &'static str {
    use crate::messages::AckError::*;
    match e {
        WrongBatch => "wrong_batch",
        WrongHolder => "wrong_holder",
        WrongHash => "wrong_hash",
        BadSignature => "bad_signature",
        Stale { .. } => "stale",
    }
}

/// The local immutable log: always there, fsynced before it answers.
pub struct LogTier {
    pub log: Arc<ImmutableLog>,
    /// This node's id, the holder named in status answers.
    pub holder: String,
}

#[async_trait::async_trait]
impl StorageTier for LogTier {
    fn tier(&self) -> Tier {
        Tier::Log
    }

    async fn store(&self, job: &StoreJob) -> TierResult {
        let outcome = self
            .log
            .append(RecordKind::Batch, job.sealed.bytes.to_vec())
            .await
            .map(|_receipt| Stored {
                holders: vec![self.holder.clone()],
                acks: Vec::new(),
            })
            .map_err(|e| format!("immutable log: {e}"));
        TierResult {
            outcome,
            observations: Vec::new(),
        }
    }
}

//! The light and full node tiers: a batch written to several storage nodes at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::peer::{Peer, PeerClient};
use super::tier::{NodeFailure, StorageTier, Stored, TierError, TierResult};
use crate::crypto;
use crate::messages::{BatchId, NodeObservation, StoreJob, Target, Tier, now_ms};

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
        self.write(job.sealed.id, &job.sealed.bytes, targets).await
    }
}

impl PeerTier {
    /// Writes the sealed `bytes` of batch `batch_id` to `targets` in parallel until
    /// `min_acks` valid acks over exactly these bytes are back, or the deadline passes.
    /// Repair moves sealed bytes between tiers through this, without ever opening them.
    pub async fn write(&self, batch_id: BatchId, bytes: &Bytes, targets: &[Target]) -> TierResult {
        if targets.len() < self.min_acks {
            return TierResult {
                outcome: Err(TierError::TooFewNodes {
                    tier: self.tier,
                    up: targets.len(),
                    needed: self.min_acks,
                }),
                observations: Vec::new(),
            };
        }
        let started = Instant::now();
        let expected_hash = crypto::hash(bytes);
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(|t| {
                let bytes = bytes.clone();
                async move {
                    let sent = Instant::now();
                    let answer = self
                        .client
                        .put_batch(
                            Peer { id: &t.node_id, url: &t.url },
                            &batch_id,
                            bytes,
                            self.deadline,
                        )
                        .await;
                    let checked = match answer {
                        Ok(ack) => ack
                            .verify(&t.node_id, &t.public_key, &batch_id, &expected_hash, now_ms())
                            .map(|()| ack)
                            .map_err(|e| {
                                metrics::counter!(crate::metrics::ACKS_REJECTED, "reason" => ack_reason(&e))
                                    .increment(1);
                                NodeFailure::InvalidAck { node: t.node_id.clone(), source: e }
                            }),
                        Err(e) => Err(NodeFailure::Peer { node: t.node_id.clone(), source: e }),
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
                    errors.push(NodeFailure::Deadline(self.deadline));
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
            outcome: Err(TierError::TooFewAcks {
                tier: self.tier,
                acks: acks.len(),
                needed: self.min_acks,
                failures: errors.into_boxed_slice(),
            }),
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
        NoPossession => "no_possession",
    }
}

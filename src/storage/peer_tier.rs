//! The light and full node tiers: a batch written to several storage nodes at once.
//!
//! Full nodes ([`PeerTier`]) each get the whole sealed batch. Light nodes
//! ([`PieceTier`]) each get one erasure-coded piece of it (`messages::piece`): the sealed
//! bytes cut into k data and m parity pieces, piece i to the i-th light node the
//! Prioritizer chose, every ack checked to bind that batch, that piece and its hash. The
//! light write holds once `min_acks` (k + the losses it must survive) pieces are acked.
//! [`read_pieces`] rebuilds the sealed bytes from any k of them.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::nodes::NodeDirectory;
use super::peer::{Peer, PeerClient};
use super::tier::{NodeFailure, StorageTier, Stored, TierError, TierResult};
use crate::crypto;
use crate::messages::{
    BatchId, Coding, Expected, NodeObservation, Piece, PieceError, PohAck, StoreJob, Target, Tier,
    now_ms,
};

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
        let expected_hash = crypto::hash(bytes);
        let attempts = targets.iter().map(|t| {
            let bytes = bytes.clone();
            let peer = Peer {
                id: &t.node_id,
                url: &t.url,
            };
            let write = self.client.put_batch(peer, &batch_id, bytes, self.deadline);
            (t.node_id.clone(), async move {
                match write.await {
                    Ok(ack) => ack
                        .verify(
                            &t.node_id,
                            &t.public_key,
                            &batch_id,
                            &expected_hash,
                            now_ms(),
                        )
                        .map(|()| ack)
                        .map_err(|e| invalid_ack(&t.node_id, e)),
                    Err(e) => Err(NodeFailure::Peer {
                        node: t.node_id.clone(),
                        source: e,
                    }),
                }
            })
        });
        gather(
            self.tier,
            self.deadline,
            self.min_acks,
            None,
            attempts.collect(),
        )
        .await
    }
}

/// The light tier: each batch cut into `coding.pieces()` pieces, one per chosen light
/// node; it holds once `min_acks` pieces are acked, each ack bound to its piece.
pub struct PieceTier {
    pub client: PeerClient,
    pub coding: Coding,
    /// k + the holders an acknowledged batch must survive losing.
    pub min_acks: usize,
    pub deadline: Duration,
}

/// After the quorum is in, the pieces still on their way get this share of the deadline
/// to land too (at most what is left of it): a batch with every piece placed survives
/// the loss of m holders, not only of the quorum's margin, and the Repairer has less to
/// place later. On loopback every piece lands within the same millisecond or two.
const STRAGGLER_SHARE: u32 = 4;

#[async_trait::async_trait]
impl StorageTier for PieceTier {
    fn tier(&self) -> Tier {
        Tier::Light
    }

    async fn store(&self, job: &StoreJob) -> TierResult {
        let targets = &job.placement.light;
        if targets.len() < self.min_acks {
            return too_few_nodes(Tier::Light, targets.len(), self.min_acks);
        }
        let (coding, id, bytes) = (self.coding, job.sealed.id, job.sealed.bytes.clone());
        // Encoding a batch of a megabyte or more is CPU work: off the async workers.
        let pieces = tokio::task::spawn_blocking(move || coding.encode(id, &bytes))
            .await
            .map_err(|e| PieceError::Codec(format!("the encoder panicked: {e}")))
            .and_then(|r| r);
        match pieces {
            Ok(pieces) => {
                let assigned = targets.iter().cloned().zip(pieces).collect();
                self.write_pieces(id, assigned, self.min_acks).await
            }
            Err(e) => TierResult {
                outcome: Err(TierError::Pieces(e)),
                observations: Vec::new(),
            },
        }
    }
}

impl PieceTier {
    /// Writes each piece to its target in parallel until `need` of them are acked (each
    /// ack from that target, for that batch and piece, over that piece's data), waiting a
    /// little longer for the rest (see [`STRAGGLER_SHARE`]), or until the deadline passes.
    /// Repair places regenerated pieces through this too.
    pub async fn write_pieces(
        &self,
        batch_id: BatchId,
        assigned: Vec<(Target, Piece)>,
        need: usize,
    ) -> TierResult {
        let attempts = assigned.into_iter().map(|(t, piece)| {
            let client = self.client.clone();
            let deadline = self.deadline;
            (t.node_id.clone(), async move {
                let r = piece.header.piece;
                let hash = piece.header.hash;
                let peer = Peer {
                    id: &t.node_id,
                    url: &t.url,
                };
                match client
                    .put_piece(peer, &batch_id, r.index, piece.to_bytes(), deadline)
                    .await
                {
                    Ok(ack) => ack
                        .verify_piece(&t.node_id, &t.public_key, &batch_id, &r, &hash, now_ms())
                        .map(|()| ack)
                        .map_err(|e| invalid_ack(&t.node_id, e)),
                    Err(e) => Err(NodeFailure::Peer {
                        node: t.node_id.clone(),
                        source: e,
                    }),
                }
            })
        });
        let grace = self.deadline / STRAGGLER_SHARE;
        gather(
            Tier::Light,
            self.deadline,
            need,
            Some(grace),
            attempts.collect(),
        )
        .await
    }
}

/// Reads the pieces `acks` name back from their holders (any order, stopping at k sound
/// ones) and rebuilds the sealed bytes of `batch_id`: each piece is held to the hash its
/// holder acked, the whole to the sealed hash the acks bind. `Err` says why not (too few
/// holders answered with a sound piece).
pub async fn read_pieces(
    client: &PeerClient,
    nodes: &NodeDirectory,
    batch_id: BatchId,
    acks: &[PohAck],
    timeout: Duration,
) -> Result<Vec<u8>, PieceError> {
    let Some(expected) = Expected::from_acks(batch_id, acks) else {
        return Err(PieceError::TooFew {
            valid: 0,
            needed: 1,
            refused: Vec::new(),
        });
    };
    let mut fetches: FuturesUnordered<_> = acks
        .iter()
        .filter_map(|ack| {
            let index = ack.piece?.index;
            let node = nodes.get(&ack.holder_id)?;
            Some(async move {
                let got = client
                    .get_piece(node.peer(), &batch_id, index, timeout)
                    .await;
                (index, got)
            })
        })
        .collect();
    let mut found: Vec<(u8, Piece)> = Vec::new();
    let mut refused = Vec::new();
    let mut sound = std::collections::BTreeSet::new();
    while let Some((index, got)) = fetches.next().await {
        match got {
            Ok(Some(bytes)) => match Piece::from_bytes(&bytes) {
                Ok(piece) => match expected.refuse(index, &piece) {
                    None => {
                        sound.insert(index);
                        found.push((index, piece));
                    }
                    Some(why) => refused.push((index, why)),
                },
                Err(e) => refused.push((index, e.to_string())),
            },
            Ok(None) => refused.push((index, "not held (404)".into())),
            Err(e) => refused.push((index, e.to_string())),
        }
        if sound.len() >= expected.coding.needed() {
            break;
        }
    }
    if sound.len() < expected.coding.needed() {
        return Err(PieceError::TooFew {
            valid: sound.len(),
            needed: expected.coding.needed(),
            refused,
        });
    }
    tokio::task::spawn_blocking(move || expected.rebuild(found))
        .await
        .map_err(|e| PieceError::Codec(format!("the decoder panicked: {e}")))?
}

fn too_few_nodes(tier: Tier, up: usize, needed: usize) -> TierResult {
    TierResult {
        outcome: Err(TierError::TooFewNodes { tier, up, needed }),
        observations: Vec::new(),
    }
}

fn invalid_ack(node: &str, e: crate::messages::AckError) -> NodeFailure {
    metrics::counter!(crate::metrics::ACKS_REJECTED, "reason" => ack_reason(&e)).increment(1);
    NodeFailure::InvalidAck {
        node: node.to_owned(),
        source: e,
    }
}

/// Runs `attempts` (one per node: its id and the write that yields a verified ack) in
/// parallel until `need` acks are in, then, with `grace`, up to that much longer for the
/// rest; stops early once the quorum is out of reach, and at `deadline`.
async fn gather<F>(
    tier: Tier,
    deadline: Duration,
    need: usize,
    grace: Option<Duration>,
    attempts: Vec<(String, F)>,
) -> TierResult
where
    F: Future<Output = Result<PohAck, NodeFailure>>,
{
    if attempts.len() < need {
        return too_few_nodes(tier, attempts.len(), need);
    }
    let started = Instant::now();
    let ids: Vec<String> = attempts.iter().map(|(id, _)| id.clone()).collect();
    let mut pending: FuturesUnordered<_> = attempts
        .into_iter()
        .map(|(node_id, write)| async move {
            let sent = Instant::now();
            let result = write.await;
            (node_id, sent.elapsed(), result)
        })
        .collect();

    let mut acks = Vec::new();
    let mut errors = Vec::new();
    let mut observations = Vec::new();
    let end = tokio::time::Instant::from_std(started + deadline);
    let mut until = end;
    loop {
        if acks.len() >= need {
            match grace {
                Some(g) if !pending.is_empty() => {
                    until = until.min(tokio::time::Instant::now() + g);
                }
                _ => break,
            }
        } else if acks.len() + pending.len() < need {
            // The acks still possible cannot reach the quorum.
            break;
        }
        match tokio::time::timeout_at(until, pending.next()).await {
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
                if acks.len() < need {
                    errors.push(NodeFailure::Deadline(deadline));
                }
                break;
            }
        }
    }
    if acks.len() >= need {
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
    for id in ids.into_iter().filter(|id| !answered.contains(id)) {
        observations.push(NodeObservation {
            node_id: id,
            latency: started.elapsed(),
            ok: false,
        });
    }
    TierResult {
        outcome: Err(TierError::TooFewAcks {
            tier,
            acks: acks.len(),
            needed: need,
            failures: errors.into_boxed_slice(),
        }),
        observations,
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
        WrongPiece => "wrong_piece",
    }
}

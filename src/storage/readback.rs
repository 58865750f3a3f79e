//! Reading a sealed batch back from the tier that holds it: rebuilt from any k of its
//! pieces on light nodes, whole from a full node, from MongoDB (`unfinished_` or
//! `finished_`), or from the city's immutable log. Shared by the Repairer (which moves the
//! bytes as they are) and the read path (`city::reads`, which opens them).
//!
//! Every read returns sealed bytes only when they decode as a sealed batch of the id asked
//! for; which bytes the holders acked (the sealed hash of a light batch) is checked by
//! [`read_pieces`] and by the Repairer before it writes anything.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::chain::TierChain;
use super::immutable_log::ImmutableLog;
use super::mongo::MongoTier;
use super::nodes::NodeDirectory;
use super::peer::PeerClient;
use super::peer_tier::read_pieces;
use crate::config::Role;
use crate::messages::{BatchId, PohAck, SealedEnvelope, hex32};

/// What reads a batch back from each tier.
#[derive(Clone)]
pub struct ReadBack {
    pub client: PeerClient,
    pub nodes: Arc<NodeDirectory>,
    pub mongo: Option<Arc<MongoTier>>,
    pub log: Arc<ImmutableLog>,
}

/// Whether `bytes` decode as the sealed batch `id`.
pub fn is_sealed_batch(bytes: &[u8], id: &BatchId) -> bool {
    SealedEnvelope::from_bytes(bytes).is_ok_and(|e| e.id() == *id)
}

impl ReadBack {
    pub fn of_chain(chain: &TierChain) -> Self {
        Self {
            client: chain.client().clone(),
            nodes: chain.nodes().clone(),
            mongo: chain.mongo().cloned(),
            log: chain.log().clone(),
        }
    }

    /// The sealed bytes rebuilt from any k of the pieces `acks` name (each held to the
    /// hash its holder acked, the whole to the sealed hash the acks bind).
    pub async fn light(
        &self,
        id: BatchId,
        acks: &[PohAck],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        read_pieces(&self.client, &self.nodes, id, acks, timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// The sealed bytes from the first of `holders` (all at once) to answer with the
    /// batch; with no holders given, from any configured full node.
    pub async fn full(
        &self,
        id: BatchId,
        holders: &[String],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let nodes: Vec<_> = if holders.is_empty() {
            self.nodes
                .iter()
                .filter(|n| n.entry.role == Role::Full)
                .collect()
        } else {
            holders.iter().filter_map(|h| self.nodes.get(h)).collect()
        };
        if nodes.is_empty() {
            return Err("no full node is known to hold it".into());
        }
        let mut asks: FuturesUnordered<_> = nodes
            .into_iter()
            .map(|node| async move {
                let got = self.client.get_batch(node.peer(), &id, timeout).await;
                (node.entry.id.as_str(), got)
            })
            .collect();
        let mut why = Vec::new();
        while let Some((node, got)) = asks.next().await {
            match got {
                Ok(Some(bytes)) if is_sealed_batch(&bytes, &id) => return Ok(bytes),
                Ok(Some(_)) => {
                    tracing::warn!(batch = %hex32(&id), %node, "a full node's copy is not this batch");
                    why.push(format!("{node}: not this batch"));
                }
                Ok(None) => why.push(format!("{node}: not held")),
                Err(e) => why.push(format!("{node}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    /// The sealed bytes from MongoDB (either collection of the batch's month).
    pub async fn mongo(&self, id: BatchId, created_at_ms: u64) -> Result<Vec<u8>, String> {
        let mongo = self.mongo.as_ref().ok_or("no MongoDB is configured")?;
        match mongo.get_batch(&id, created_at_ms).await {
            Ok(Some(bytes)) if is_sealed_batch(&bytes, &id) => Ok(bytes),
            Ok(Some(_)) => Err("MongoDB's copy is not this batch".into()),
            Ok(None) => Err("not in MongoDB".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The sealed bytes from the immutable log (a blocking file read, on the blocking
    /// pool).
    pub async fn log(&self, id: BatchId) -> Result<Vec<u8>, String> {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.read_batch(&id)).await {
            Ok(Ok(Some(bytes))) if is_sealed_batch(&bytes, &id) => Ok(bytes),
            Ok(Ok(Some(_))) => Err("the log's copy is not this batch".into()),
            Ok(Ok(None)) => Err("not on the log".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the log read panicked: {e}")),
        }
    }
}

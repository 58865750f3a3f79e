//! Messages that travel between the city pipeline's actors, in process.
//!
//! A transaction enters as a [`crate::messages::SignedTx`]; the DagBatcher seals a
//! [`SealedBatch`]; the Prioritizer turns it into a [`StoreJob`] by choosing where it goes;
//! the storage tiers answer with a [`crate::messages::StoreOutcome`] and the
//! [`NodeObservation`]s the Prioritizer learns from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::sealed::{Capsule, SealError, Sealer};
use super::{Batch, BatchId, FlagKind, TxId};

/// How urgently a transaction must be written (the Flagger's decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    /// May wait up to `batcher.deferred_delay` to share a batch.
    Deferred,
    /// Waits at most the adaptive batching window.
    Normal,
    /// Closes its batch at once.
    Immediate,
}

/// The flag of one transaction: its kind and how urgently it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub kind: FlagKind,
    pub urgency: Urgency,
}

/// A closed batch on its way to storage, sealed for the continent's key holder.
#[derive(Debug, Clone)]
pub struct SealedBatch {
    pub id: BatchId,
    /// The batch in the clear, for the city's own index. It never leaves the city.
    pub batch: Arc<Batch>,
    /// The batch's data key wrapped for the key holder, for the key vault. It never
    /// travels with the bytes.
    pub capsule: Arc<Capsule>,
    /// The batch's data key wrapped under the city's own read key, for its read vault
    /// (so the city can open what it reads back from a tier). Never travels either.
    pub read_key: Option<Arc<crate::crypto::vault::ReadWrapped>>,
    /// The sealed envelope's encoding: exactly the bytes every tier stores and every ack
    /// hashes.
    pub bytes: Bytes,
    pub tx_ids: Arc<Vec<TxId>>,
    pub urgency: Urgency,
    /// When the batch's oldest transaction arrived, for the end-to-end latency histogram.
    pub first_arrival: Instant,
    /// When it was sealed, for the stage latencies.
    pub sealed_at: Instant,
}

impl SealedBatch {
    /// Seals `batch` with `sealer`: a fresh data key, its capsule, the envelope's bytes.
    pub fn new(
        batch: Batch,
        tx_ids: Vec<TxId>,
        urgency: Urgency,
        first_arrival: Instant,
        sealer: &Sealer,
    ) -> Result<Self, SealError> {
        let sealed = sealer.seal_for_reading(&batch)?;
        let (envelope, capsule) = (sealed.envelope, sealed.capsule);
        Ok(Self {
            id: batch.id(),
            batch: Arc::new(batch),
            capsule: Arc::new(capsule),
            read_key: sealed.read.map(Arc::new),
            bytes: Bytes::from(envelope.to_bytes()),
            tx_ids: Arc::new(tx_ids),
            urgency,
            first_arrival,
            sealed_at: Instant::now(),
        })
    }

    pub fn flag(&self) -> FlagKind {
        self.batch.header.flag
    }
}

/// A storage node chosen for a batch, with what is needed to check its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node_id: String,
    pub url: String,
    pub public_key: Arc<[u8]>,
}

/// Where a batch goes, best first within each role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub light: Vec<Target>,
    pub full: Vec<Target>,
    /// Each chosen node's 0–9 score when it was chosen: what its proof of hold for this
    /// batch is credited by (`engines::rewards`), whenever the credit is written.
    pub scores: std::collections::BTreeMap<String, u8>,
}

impl Placement {
    /// The score node `id` had when chosen (0 if it was not).
    pub fn score_of(&self, id: &str) -> u8 {
        self.scores.get(id).copied().unwrap_or(0)
    }
}

/// A batch with its placement: what the StorageWriter and FailoverSupervisor work on.
#[derive(Debug, Clone)]
pub struct StoreJob {
    pub sealed: SealedBatch,
    pub placement: Placement,
}

/// What one write to one storage node showed: fed back to the Prioritizer's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObservation {
    pub node_id: String,
    pub latency: Duration,
    pub ok: bool,
}

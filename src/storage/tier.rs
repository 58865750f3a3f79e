//! The storage-tier trait and what a tier attempt produces.
//!
//! A tier either makes a batch durable and says who holds it, or says why not. This module
//! depends on no tier implementation (those live in `peer_tier`, `log_tier` and `mongo`, the
//! failover order in `chain`), so every tier can name the trait without an import cycle.

use crate::messages::{NodeObservation, PohAck, StoreJob, Tier};

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

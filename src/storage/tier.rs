//! The storage-tier trait and what a tier attempt produces.
//!
//! A tier either makes a batch durable and says who holds it, or says why not. This module
//! depends on no tier implementation (those live in `peer_tier`, `mongo_tier` and `log_tier`, the
//! failover order in `chain`), so every tier can name the trait without an import cycle.

use std::fmt;
use std::time::Duration;

use super::immutable_log::LogError;
use super::mongo::MongoError;
use super::peer::PeerError;
use crate::messages::{AckError, NodeObservation, PohAck, StoreJob, Tier};

/// A batch made durable by a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
}

/// What one tier attempt produced: the outcome, and what it saw of each node it tried.
#[derive(Debug)]
pub struct TierResult {
    pub outcome: Result<Stored, TierError>,
    pub observations: Vec<NodeObservation>,
}

/// Why a tier did not store a batch. The text ends up in logs and in the 503 a client
/// gets when every tier failed.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Fewer nodes were placed than the tier needs acks from; none was tried.
    #[error("{up} {tier} nodes up, {needed} acks needed")]
    TooFewNodes {
        tier: Tier,
        up: usize,
        needed: usize,
    },
    /// The nodes tried did not produce a quorum of valid acks; why each one failed. (Causes
    /// are boxed throughout: a tier result travels in actor messages, and stays as small
    /// as it was when its reasons were strings.)
    #[error("{acks} of {needed} acks needed from the {tier} tier: {}", Joined(.failures))]
    TooFewAcks {
        tier: Tier,
        acks: usize,
        needed: usize,
        failures: Box<[NodeFailure]>,
    },
    #[error("mongo ({continent}): {source}")]
    Mongo {
        continent: String,
        #[source]
        source: Box<MongoError>,
    },
    #[error("immutable log: {0}")]
    Log(#[source] Box<LogError>),
    /// The batch could not be cut into pieces (the light tier).
    #[error("cutting the batch into pieces: {0}")]
    Pieces(#[source] crate::messages::PieceError),
}

/// Why one storage node did not count towards a quorum.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error("{node}: invalid ack: {source}")]
    InvalidAck {
        node: String,
        #[source]
        source: AckError,
    },
    #[error("{node}: {source}")]
    Peer {
        node: String,
        #[source]
        source: PeerError,
    },
    /// The tier's deadline passed with nodes still unanswered.
    #[error("deadline of {0:?} passed")]
    Deadline(Duration),
}

/// Failures joined by "; ".
struct Joined<'a>(&'a [NodeFailure]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
pub trait StorageTier: Send + Sync {
    fn tier(&self) -> Tier;
    /// Makes the job's batch durable on this tier, or explains why not, within the tier's
    /// own deadline.
    async fn store(&self, job: &StoreJob) -> TierResult;
}

//! The messages of the continent's and the global node's actors, and the answers the HTTP
//! layer waits for. Like the city's `msgs`, it imports no actor.

use tokio::sync::oneshot;

use crate::city::mailbox::ActorMsg;
use crate::crypto::Hash32;
use crate::messages::federation::{CertifiedBatch, SignedCheckpoint, SignedContinentBatch};

/// Where a city batch was merged: the answer to one submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub continent_batch_id: Hash32,
    pub continent_seq: u64,
    pub entry_index: u32,
    /// It had been merged before.
    pub duplicate: bool,
}

/// Where a continent batch is in the global node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub record_index: u64,
    pub duplicate: bool,
}

/// Why a batch was not made durable; nothing was acknowledged and the sender may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotDurable {
    #[error("the log could not store it: {0}")]
    Storage(String),
    #[error("the node's index could not be read: {0}")]
    Index(String),
}

pub type MergeResult = Result<Merged, NotDurable>;
pub type ReceiveResult = Result<Received, NotDurable>;

/// To the Merger (continent).
pub enum MergerMsg {
    /// A verified city batch (from the HTTP layer) and where to answer.
    Submit {
        batch: CertifiedBatch,
        reply: oneshot::Sender<MergeResult>,
    },
    /// The window of the continent batch opened in generation `.0` ended.
    Tick(u64),
    /// The continent batch `seq` is durable at log record `.result`, or is not.
    Stored {
        seq: u64,
        result: Result<u64, String>,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Collector (global).
pub enum CollectorMsg {
    /// A verified continent batch (from the HTTP layer) and where to answer.
    Submit {
        batch: SignedContinentBatch,
        reply: oneshot::Sender<ReceiveResult>,
    },
    /// Continent batch `id` is durable at log record `.result`, or is not.
    Stored {
        id: Hash32,
        result: Result<u64, String>,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Checkpointer (global).
pub enum CheckpointerMsg {
    /// Time for a checkpoint, if the log grew.
    Tick,
    /// Checkpoint `seq` is durable at log record `.1`, or could not be written.
    Done {
        seq: u64,
        result: Result<(SignedCheckpoint, u64), String>,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Approver (continent).
pub enum ApproverMsg {
    /// A continent batch is durable (or the actor started): ask for what is unapproved.
    Kick,
    /// The backoff of timer `.0` ended.
    Retry(u64),
    /// A round ended: batches are still pending, something was approved, the lowest
    /// sequence number that may be unapproved, and where the next round looks first.
    Done {
        pending: bool,
        approved: bool,
        low: u64,
        next: u64,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

impl ActorMsg for ApproverMsg {
    fn panic() -> Self {
        ApproverMsg::Panic
    }
}

impl ActorMsg for MergerMsg {
    fn panic() -> Self {
        MergerMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, MergerMsg::Submit { .. })
    }
}

impl ActorMsg for CollectorMsg {
    fn panic() -> Self {
        CollectorMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, CollectorMsg::Submit { .. })
    }
}

impl ActorMsg for CheckpointerMsg {
    fn panic() -> Self {
        CheckpointerMsg::Panic
    }
}

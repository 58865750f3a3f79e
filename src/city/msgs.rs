//! The messages of the city pipeline: every message an actor receives, and the answers the
//! HTTP layer waits for.
//!
//! This module is the pipeline's ground floor: it imports nothing from the actors, so an
//! actor knows the messages it receives and sends and never another actor's module. The
//! types the messages carry (transactions, batches, jobs, tier results) come from
//! [`crate::messages`] and [`crate::storage`], below the city wing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::mailbox::ActorMsg;
use crate::config::ActorName;
use crate::engines::objects::ObjectConflict;
use crate::messages::{
    BatchId, FlagKind, NodeObservation, Placement, SealError, SealedBatch, SignedTx, StoreJob,
    StoreOutcome, Tier, TxId,
};
use crate::storage::city_store::{CityStoreError, TxRecord};
use crate::storage::peer::HealthReport;
use crate::storage::tier::{TierError, TierResult};
use crate::storage::upstream::Attempt;

/// A durable transaction, as `POST /v1/tx` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub tx_id: TxId,
    pub tier: Tier,
    pub batch_id: BatchId,
    pub acks: usize,
    pub flag: FlagKind,
    pub duplicate: bool,
}

impl Receipt {
    /// The answer to a transaction already stored as `rec`: a duplicate, where it is.
    pub fn of_stored(tx_id: TxId, rec: &TxRecord) -> Self {
        Self {
            tx_id,
            tier: rec.tier,
            batch_id: rec.batch_id,
            acks: rec.acks as usize,
            flag: rec.flag,
            duplicate: true,
        }
    }
}

/// Why a transaction was not made durable. Nothing was acknowledged; the client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the node is at capacity ({0} transactions in flight); retry shortly")]
    Overloaded(usize),
    #[error("intake queue is full")]
    QueueFull,
    #[error("no storage tier could make the batch durable: {0}")]
    StorageUnavailable(Unavailable),
    #[error("the pipeline is stopping or restarting; retrying the same transaction is safe")]
    ShuttingDown,
    #[error("the pipeline restarted before this transaction was durable; retrying it is safe")]
    Restarted,
    #[error("not durable within {0:?}; retrying the same transaction is safe")]
    TimedOut(Duration),
    /// The sender already used this nonce for another transaction (`taken_by`), stored or
    /// in flight. Not retryable: the client must pick another nonce.
    #[error("nonce already used by this sender for transaction {}", hex::encode(.taken_by))]
    NonceReused { taken_by: TxId },
    /// The transaction's objects conflict with a transaction in flight or with what the
    /// city holds durably (`engines::objects`). Nothing was recorded.
    #[error("{0}")]
    ObjectConflict(ObjectConflict),
}

impl SubmitError {
    /// The `reason` label of `citychain_tx_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            SubmitError::Overloaded(_) | SubmitError::QueueFull => "overloaded",
            SubmitError::ShuttingDown => "shutting_down",
            SubmitError::StorageUnavailable(_)
            | SubmitError::Restarted
            | SubmitError::TimedOut(_) => "storage_unavailable",
            SubmitError::NonceReused { .. } => "nonce_reused",
            SubmitError::ObjectConflict(_) => "object_conflict",
        }
    }
}

pub type SubmitResult = Result<Receipt, SubmitError>;

/// Why no durable home was found for a transaction, with the cause. Shared (`Arc`) because
/// one cause answers every client of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// Every tier of the chain failed; the last one's reason.
    #[error("{0}")]
    Tiers(Arc<TierError>),
    /// The batch is durable, but its record in the city store could not be written, so
    /// nothing may be promised.
    #[error("status index: {0}")]
    Index(Arc<CityStoreError>),
    /// Batch sequence numbers could not be reserved on disk.
    #[error("city store: {0}")]
    Reservation(Arc<CityStoreError>),
    /// The batch could not be sealed for the key holder, so it may not leave the city.
    #[error("sealing the batch: {0}")]
    Seal(Arc<SealError>),
    /// It waited longer than this (its actor failed, or storage is stuck).
    #[error("not durable within {0:?}")]
    Stale(Duration),
}

/// Errors compare by what they report: the causes (I/O, database) have no equality.
impl PartialEq for Unavailable {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Unavailable {}

/// To the Intake.
#[allow(clippy::large_enum_variant)] // Submit is the common case; boxing it would cost an allocation per request.
pub enum IntakeMsg {
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
    /// A verified transaction from the HTTP layer.
    Submit {
        tx: SignedTx,
        arrived: Instant,
        reply: oneshot::Sender<SubmitResult>,
    },
    /// A batch is durable and its record is in the city store (from the Failover actor).
    Stored {
        tx_ids: Arc<Vec<TxId>>,
        outcome: StoreOutcome,
    },
    /// Fail back what has waited longer than this (a periodic sweep: whatever was lost in a
    /// failed actor is answered with 503 rather than never).
    Sweep(Duration),
    /// These transactions could not be made durable.
    Failed {
        tx_ids: Arc<Vec<TxId>>,
        reason: SubmitError,
    },
}

/// To the DagBatcher.
#[allow(clippy::large_enum_variant)] // Add is the common case; Tick is rare and small.
pub enum BatcherMsg {
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
    /// An admitted transaction (from the Intake).
    Add {
        tx: SignedTx,
        arrived: Instant,
        /// The durable last writer of each of its objects, as the Intake read it.
        prior: Vec<(String, TxId)>,
    },
    /// The window of the batch opened in generation `.0` has ended.
    Tick(u64),
}

/// To the Flagger.
pub enum FlaggerMsg {
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
    /// A batch the DagBatcher closed.
    Sealed(SealedBatch),
    /// A batch left storage (durable or failed): one more may go.
    Done,
}

/// One storage node's answer to a health probe.
pub type ProbeResult = (String, Duration, Result<HealthReport, String>);

/// To the Prioritizer.
pub enum PrioritizerMsg {
    /// Where a batch of this flag would go now, leaving out `exclude` (for repairs).
    Place {
        flag: FlagKind,
        exclude: Vec<String>,
        reply: oneshot::Sender<Placement>,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
    /// A batch to place (from the Flagger).
    Route(SealedBatch),
    /// What writes showed (from the tiers, via the Failover actor).
    Observe(Vec<NodeObservation>),
    /// A probe round finished.
    Probed(Vec<ProbeResult>),
    /// Repair challenges answered (from the Repairer): node id, passed. Each moves the
    /// node's reliability by the rewards engine's rule.
    Challenged(Vec<(String, bool)>),
}

/// To the StorageWriter.
// `Write` is nearly every message this mailbox carries, so boxing it would add an
// allocation per batch and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum WriterMsg {
    /// A placed batch (from the Prioritizer).
    Write(StoreJob),
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Failover actor, which walks the tier chain and completes every batch.
// `TierDone` is nearly every message this mailbox carries, so boxing it would add an
// allocation per batch and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum FailoverMsg {
    /// Tier `index` of the chain finished with `job`.
    TierDone {
        job: StoreJob,
        index: usize,
        result: TierResult,
    },
    /// An actor could not pass these transactions on; answer their clients.
    Undeliverable {
        tx_ids: Arc<Vec<TxId>>,
        reason: SubmitError,
        /// The batch had been released by the Flagger, which must get its credit back.
        holds_credit: bool,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Repairer.
pub enum RepairMsg {
    Tick,
    /// A round finished; `backlog` when it found a full round of work, so the next one
    /// starts at once instead of after the interval.
    RoundDone {
        next_cursor: u64,
        backlog: bool,
    },
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the Uplink (a city's, or a continent's).
pub enum UplinkMsg {
    /// Something entered the outbox (or the actor started): forward what waits.
    Kick,
    /// The backoff of generation `.0` ended.
    Retry(u64),
    /// A forwarding attempt's task finished.
    Done(Attempt),
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

/// To the FailoverSupervisor.
pub enum SupervisorMsg {
    /// A backoff ended: start these actors again.
    Restart(Vec<ActorName>),
    /// Fault injection: make the named actor panic.
    Inject(ActorName),
}

impl ActorMsg for IntakeMsg {
    fn panic() -> Self {
        IntakeMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, IntakeMsg::Submit { .. })
    }
}

impl ActorMsg for BatcherMsg {
    fn panic() -> Self {
        BatcherMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, BatcherMsg::Add { .. })
    }
}

impl ActorMsg for FlaggerMsg {
    fn panic() -> Self {
        FlaggerMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, FlaggerMsg::Sealed(_))
    }
}

impl ActorMsg for PrioritizerMsg {
    fn panic() -> Self {
        PrioritizerMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, PrioritizerMsg::Route(_))
    }
}

impl ActorMsg for WriterMsg {
    fn panic() -> Self {
        WriterMsg::Panic
    }
    fn is_work(&self) -> bool {
        matches!(self, WriterMsg::Write(_))
    }
}

impl ActorMsg for FailoverMsg {
    fn panic() -> Self {
        FailoverMsg::Panic
    }
}

impl ActorMsg for RepairMsg {
    fn panic() -> Self {
        RepairMsg::Panic
    }
}

impl ActorMsg for UplinkMsg {
    fn panic() -> Self {
        UplinkMsg::Panic
    }
}

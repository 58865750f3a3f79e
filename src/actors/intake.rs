//! Intake: the city pipeline's front door.
//!
//! Receives authenticated transactions from the HTTP layer (which parses and verifies
//! signatures on its worker threads, in parallel, with [`SignedTx::from_request_bytes`]
//! and [`check_policy`]); de-duplicates them by id; admits at most `queue_capacity`
//! transactions that are not yet durable (past it: `overloaded`); feeds the DagBatcher;
//! and answers every waiting client once the FailoverSupervisor reports its batch durable
//! or failed (by then the FailoverSupervisor has written the batch's record to the city's
//! durable [`CityStore`]). It keeps the transactions in flight in memory; the
//! [`StatusIndex`] answers `GET /v1/tx/{id}` from them or from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::dag_batcher::BatcherMsg;
use super::mailbox::{Depth, Mailbox, SendError};
use crate::messages::{BatchId, FlagKind, SignedTx, StoreOutcome, Tier, TxId, TxValidationError};
use crate::storage::city_store::{BatchRecord, CityStore, CityStoreError, TxRecord};

/// Intake mailbox capacity (messages). Admission is bounded separately by
/// `[intake] queue_capacity`; this bound only protects the actor from a burst of requests.
pub const MAILBOX_CAPACITY: usize = 8192;

/// At most this many clients wait on the same pending transaction; more re-submissions of
/// it are told to come back later.
const MAX_WAITERS_PER_TX: usize = 16;

/// Policy checks that need the node's configuration or clock.
#[derive(Debug, Clone)]
pub struct IntakeLimits {
    pub city: String,
    pub max_clock_skew: Duration,
    pub max_payload_bytes: usize,
}

/// Checks a signed transaction against this node's policy.
pub fn check_policy(
    tx: &SignedTx,
    limits: &IntakeLimits,
    now_ms: u64,
) -> Result<(), TxValidationError> {
    let skew = now_ms.abs_diff(tx.tx.timestamp_ms);
    let limit = limits.max_clock_skew.as_millis() as u64;
    if skew > limit {
        return Err(TxValidationError::TimestampSkew {
            skew_ms: skew,
            limit_ms: limit,
        });
    }
    let size = tx.payload_size();
    if size > limits.max_payload_bytes {
        return Err(TxValidationError::PayloadTooLarge {
            size,
            limit: limits.max_payload_bytes,
        });
    }
    if tx.tx.city_id != limits.city {
        return Err(TxValidationError::WrongCity {
            got: tx.tx.city_id.clone(),
            expected: limits.city.clone(),
        });
    }
    Ok(())
}

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

/// Why a transaction was not made durable. Nothing was acknowledged; the client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the node is at capacity ({0} transactions in flight); retry shortly")]
    Overloaded(usize),
    #[error("no storage tier could make the batch durable: {0}")]
    StorageUnavailable(String),
    #[error("the pipeline is stopping or restarting; retrying the same transaction is safe")]
    ShuttingDown,
}

pub type SubmitResult = Result<Receipt, SubmitError>;

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
    /// A batch is durable and its record is in the city store (from the
    /// FailoverSupervisor).
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

/// A transaction admitted and not yet durable.
#[derive(Debug, Clone)]
pub struct PendingTx {
    pub flag: FlagKind,
    /// The signed canonical JSON of the transaction.
    pub canonical: Arc<str>,
}

/// What `GET /v1/tx/{id}` reads.
pub enum TxView {
    Pending(PendingTx),
    Stored(TxRecord),
}

/// The status index: transactions in flight (in memory, written by the Intake) over the
/// durable city store (written by the FailoverSupervisor before any client hears 200).
pub struct StatusIndex {
    pub pending: DashMap<TxId, PendingTx>,
    pub store: Arc<CityStore>,
}

impl StatusIndex {
    pub fn new(store: Arc<CityStore>) -> Self {
        Self {
            pending: DashMap::new(),
            store,
        }
    }

    pub fn tx(&self, id: &TxId) -> Result<Option<TxView>, CityStoreError> {
        if let Some(p) = self.pending.get(id) {
            return Ok(Some(TxView::Pending(p.clone())));
        }
        Ok(self.store.get_tx(id)?.map(TxView::Stored))
    }

    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>, CityStoreError> {
        self.store.get_batch(id)
    }
}

pub struct Intake;

pub struct IntakeArgs {
    pub queue_capacity: usize,
    /// Transactions waiting longer than this are failed back with 503.
    pub sweep_after: Duration,
    pub index: Arc<StatusIndex>,
    pub depth: Depth,
    pub batcher: Mailbox<BatcherMsg>,
}

struct Waiter {
    reply: oneshot::Sender<SubmitResult>,
    arrived: Instant,
    duplicate: bool,
}

pub struct IntakeState {
    args: IntakeArgs,
    waiters: HashMap<TxId, Vec<Waiter>>,
}

impl Intake {
    fn submit(
        state: &mut IntakeState,
        tx: SignedTx,
        arrived: Instant,
        reply: oneshot::Sender<SubmitResult>,
    ) {
        let index = &state.args.index;
        if index.pending.contains_key(&tx.id) {
            let waiters = state.waiters.entry(tx.id).or_default();
            if waiters.len() >= MAX_WAITERS_PER_TX {
                let _ = reply.send(Err(SubmitError::Overloaded(waiters.len())));
            } else {
                waiters.push(Waiter {
                    reply,
                    arrived,
                    duplicate: true,
                });
            }
            return;
        }
        match index.store.get_tx(&tx.id) {
            Ok(Some(rec)) => {
                let _ = reply.send(Ok(Receipt {
                    tx_id: tx.id,
                    tier: rec.tier,
                    batch_id: rec.batch_id,
                    acks: rec.acks as usize,
                    flag: rec.flag,
                    duplicate: true,
                }));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = reply.send(Err(SubmitError::StorageUnavailable(e.to_string())));
                return;
            }
        }
        let in_flight = state.waiters.len();
        if in_flight >= state.args.queue_capacity {
            metrics::counter!(crate::metrics::TX_REJECTED, "reason" => "overloaded").increment(1);
            let _ = reply.send(Err(SubmitError::Overloaded(in_flight)));
            return;
        }
        let id = tx.id;
        index.pending.insert(
            id,
            PendingTx {
                flag: tx.tx.kind,
                canonical: Arc::from(tx.canonical.as_str()),
            },
        );
        match state.args.batcher.try_send(BatcherMsg::Add { tx, arrived }) {
            Ok(()) => {
                state.waiters.insert(
                    id,
                    vec![Waiter {
                        reply,
                        arrived,
                        duplicate: false,
                    }],
                );
            }
            Err(e) => {
                index.pending.remove(&id);
                let err = match e {
                    SendError::Full(_) => SubmitError::Overloaded(in_flight),
                    SendError::Closed(_) => SubmitError::ShuttingDown,
                };
                metrics::counter!(crate::metrics::TX_REJECTED, "reason" => "overloaded")
                    .increment(1);
                let _ = reply.send(Err(err));
            }
        }
    }

    fn stored(state: &mut IntakeState, tx_ids: &[TxId], outcome: StoreOutcome) {
        let acks = outcome.acks.len();
        for id in tx_ids {
            // Absent when a sweep already failed it back: then nobody waits, and the
            // transaction is durable all the same (its record is in the store).
            let flag = state
                .args
                .index
                .pending
                .remove(id)
                .map_or(FlagKind::FreshTx, |(_, p)| p.flag);
            for w in state.waiters.remove(id).unwrap_or_default() {
                if !w.duplicate {
                    metrics::counter!(crate::metrics::TX_ACCEPTED).increment(1);
                    metrics::histogram!(crate::metrics::STORE_LATENCY)
                        .record(w.arrived.elapsed().as_secs_f64());
                }
                let _ = w.reply.send(Ok(Receipt {
                    tx_id: *id,
                    tier: outcome.tier,
                    batch_id: outcome.batch_id,
                    acks,
                    flag,
                    duplicate: w.duplicate,
                }));
            }
        }
    }

    fn sweep(state: &mut IntakeState, older_than: Duration) {
        let stale: Vec<TxId> = state
            .waiters
            .iter()
            .filter(|(_, ws)| ws.first().is_some_and(|w| w.arrived.elapsed() > older_than))
            .map(|(id, _)| *id)
            .collect();
        if !stale.is_empty() {
            tracing::warn!(
                txs = stale.len(),
                ?older_than,
                "failing back transactions that waited too long"
            );
            Self::failed(
                state,
                &stale,
                SubmitError::StorageUnavailable(format!("not durable within {older_than:?}")),
            );
        }
    }

    fn failed(state: &mut IntakeState, tx_ids: &[TxId], reason: SubmitError) {
        let code = match reason {
            SubmitError::Overloaded(_) => "overloaded",
            SubmitError::StorageUnavailable(_) => "storage_unavailable",
            SubmitError::ShuttingDown => "shutting_down",
        };
        for id in tx_ids {
            // Not durable: forget it, so a retry is a fresh submission.
            state.args.index.pending.remove(id);
            for w in state.waiters.remove(id).unwrap_or_default() {
                metrics::counter!(crate::metrics::TX_REJECTED, "reason" => code).increment(1);
                let _ = w.reply.send(Err(reason.clone()));
            }
        }
    }
}

impl Actor for Intake {
    type Msg = IntakeMsg;
    type State = IntakeState;
    type Arguments = IntakeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: IntakeArgs,
    ) -> Result<IntakeState, ActorProcessingErr> {
        Ok(IntakeState {
            args,
            waiters: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        let after = state.args.sweep_after;
        myself.send_interval(after / 4, move || IntakeMsg::Sweep(after));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: IntakeMsg,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IntakeMsg::Submit { tx, arrived, reply } => {
                state.args.depth.taken();
                Self::submit(state, tx, arrived, reply);
            }
            IntakeMsg::Stored { tx_ids, outcome } => Self::stored(state, &tx_ids, outcome),
            IntakeMsg::Sweep(older_than) => Self::sweep(state, older_than),
            IntakeMsg::Panic => panic!("fault injected into intake"),
            IntakeMsg::Failed { tx_ids, reason } => Self::failed(state, &tx_ids, reason),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        // Whoever still waits gets a clear answer instead of a dropped connection.
        let pending: Vec<TxId> = state.waiters.keys().copied().collect();
        Self::failed(state, &pending, SubmitError::ShuttingDown);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testkit::{recorder, signed_tx};
    use crate::crypto::SigningKey;
    use crate::messages::Batch;

    async fn intake(
        capacity: usize,
        dir: &std::path::Path,
    ) -> (
        ActorRef<IntakeMsg>,
        Arc<StatusIndex>,
        tokio::sync::mpsc::UnboundedReceiver<BatcherMsg>,
    ) {
        let (batcher, added) = recorder::<BatcherMsg>().await;
        let index = Arc::new(StatusIndex::new(Arc::new(CityStore::open(dir).unwrap())));
        let depth = Depth::new("test_intake");
        let (actor, _) = Actor::spawn(
            None,
            Intake,
            IntakeArgs {
                queue_capacity: capacity,
                sweep_after: Duration::from_secs(60),
                index: index.clone(),
                depth,
                batcher: Mailbox::new(batcher, Depth::new("test_batcher"), 64),
            },
        )
        .await
        .unwrap();
        (actor, index, added)
    }

    fn submit(actor: &ActorRef<IntakeMsg>, tx: SignedTx) -> oneshot::Receiver<SubmitResult> {
        let (reply, answer) = oneshot::channel();
        // Submissions normally come through a Mailbox, which counts them in.
        actor
            .cast(IntakeMsg::Submit {
                tx,
                arrived: Instant::now(),
                reply,
            })
            .unwrap();
        answer
    }

    #[tokio::test]
    async fn admits_up_to_capacity_dedups_and_answers_everyone_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (actor, index, mut added) = intake(1, dir.path()).await;
        let key = SigningKey::from_seed([5; 32]).unwrap();
        let first = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let second = signed_tx(&key, 2, FlagKind::FreshTx, 10);

        let a = submit(&actor, first.clone());
        let dup = submit(&actor, first.clone());
        let over = submit(&actor, second.clone());
        assert_eq!(over.await.unwrap(), Err(SubmitError::Overloaded(1)));
        assert!(
            !index.pending.contains_key(&second.id),
            "a refused transaction leaves no trace"
        );
        let Some(BatcherMsg::Add { tx, .. }) = added.recv().await else {
            panic!("the admitted transaction goes to the batcher")
        };
        assert_eq!(tx.id, first.id);
        assert!(matches!(
            index.tx(&first.id).unwrap(),
            Some(TxView::Pending(_))
        ));

        // What the FailoverSupervisor does: the record to disk first, then the news.
        let batch = Batch::build(
            "tokyo",
            0,
            vec![],
            FlagKind::FreshTx,
            std::slice::from_ref(&first),
            0,
        );
        let holders = vec!["l1".to_string(), "l2".into(), "l3".into()];
        let outcome = StoreOutcome {
            batch_id: batch.id(),
            tier: Tier::Light,
            holders: holders.clone(),
            acks: vec![],
        };
        index
            .store
            .record(
                BatchRecord {
                    header: batch.header.clone(),
                    tx_ids: vec![first.id],
                    tier: Tier::Light,
                    holders: holders.clone(),
                    acks: vec![],
                },
                vec![(
                    first.id,
                    TxRecord {
                        flag: FlagKind::FreshTx,
                        canonical: first.canonical.clone(),
                        batch_id: batch.id(),
                        tier: Tier::Light,
                        holders,
                        acks: 0,
                    },
                )],
            )
            .await
            .unwrap();
        actor
            .cast(IntakeMsg::Stored {
                tx_ids: Arc::new(vec![first.id]),
                outcome,
            })
            .unwrap();
        let receipt = a.await.unwrap().unwrap();
        assert_eq!((receipt.tier, receipt.duplicate), (Tier::Light, false));
        let receipt = dup.await.unwrap().unwrap();
        assert!(
            receipt.duplicate,
            "the second client waited for the same outcome"
        );
        assert!(index.batch(&batch.id()).unwrap().is_some());
        assert!(matches!(
            index.tx(&first.id).unwrap(),
            Some(TxView::Stored(_))
        ));
        assert!(index.pending.is_empty(), "stored transactions leave memory");

        // Capacity is free again, and a stored transaction answers at once as a duplicate.
        let again = submit(&actor, first.clone()).await.unwrap().unwrap();
        assert!(again.duplicate);
        let _b = submit(&actor, second.clone());
        assert!(matches!(added.recv().await, Some(BatcherMsg::Add { .. })));
    }

    #[tokio::test]
    async fn failed_batches_are_answered_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (actor, index, mut added) = intake(10, dir.path()).await;
        let key = SigningKey::from_seed([6; 32]).unwrap();
        let tx = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let answer = submit(&actor, tx.clone());
        added.recv().await.unwrap();
        actor
            .cast(IntakeMsg::Failed {
                tx_ids: Arc::new(vec![tx.id]),
                reason: SubmitError::StorageUnavailable("every tier failed".into()),
            })
            .unwrap();
        assert!(matches!(
            answer.await.unwrap(),
            Err(SubmitError::StorageUnavailable(_))
        ));
        assert!(
            !index.pending.contains_key(&tx.id),
            "a retry is a fresh submission"
        );
    }

    #[test]
    fn policy_checks_skew_payload_and_city() {
        let key = SigningKey::from_seed([7; 32]).unwrap();
        let tx = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let limits = IntakeLimits {
            city: "tokyo".into(),
            max_clock_skew: Duration::from_secs(60),
            max_payload_bytes: 10,
        };
        let now = tx.tx.timestamp_ms;
        assert_eq!(check_policy(&tx, &limits, now), Ok(()));
        assert!(matches!(
            check_policy(&tx, &limits, now + 61_000),
            Err(TxValidationError::TimestampSkew { .. })
        ));
        let osaka = IntakeLimits {
            city: "osaka".into(),
            ..limits.clone()
        };
        assert_eq!(
            check_policy(&tx, &osaka, now).unwrap_err().code(),
            "wrong_city"
        );
        let mut big = tx.clone();
        big.tx.payload = Some(
            serde_json::json!({"memo": "a long memo"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            check_policy(&big, &limits, now).unwrap_err().code(),
            "payload_too_large"
        );
    }
}

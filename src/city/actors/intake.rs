//! Intake: the city pipeline's front door.
//!
//! Receives transactions the HTTP layer has verified and admitted (signatures and
//! [`admission`](crate::city::admission) checks run on its worker threads, in parallel);
//! de-duplicates them by id; refuses a second transaction with a `(sender, nonce)` pair
//! already used, in flight or durable (being sequential, it decides races); admits at most `queue_capacity` transactions that are not yet
//! durable (past it: `overloaded`); feeds the DagBatcher; and answers every waiting client
//! once the Failover actor reports its batch durable or failed (by then the batch's record
//! is in the city's durable store). It keeps the transactions in flight in the
//! [`StatusIndex`], which answers `GET /v1/tx/{id}` from them or from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::city::mailbox::{Mailbox, SendError};
use crate::city::msgs::{BatcherMsg, IntakeMsg, Receipt, SubmitError, SubmitResult, Unavailable};
use crate::city::status::{PendingTx, StatusIndex};
use crate::engines::objects::ObjectEngine;
use crate::messages::{FlagKind, SignedTx, StoreOutcome, TxId};
use crate::storage::city_store::Lookup;

/// Intake mailbox capacity (messages). Admission is bounded separately by
/// `[intake] queue_capacity`; this bound only protects the actor from a burst of requests.
pub const MAILBOX_CAPACITY: usize = 8192;

/// At most this many clients wait on the same pending transaction; more re-submissions of
/// it are told to come back later.
const MAX_WAITERS_PER_TX: usize = 16;

pub struct Intake;

pub struct IntakeArgs {
    pub queue_capacity: usize,
    /// Transactions waiting longer than this are failed back with 503.
    pub sweep_after: Duration,
    pub index: Arc<StatusIndex>,
    pub batcher: Mailbox<BatcherMsg>,
    /// The object rules: conflicts with the transactions in flight and durable heads.
    pub objects: Arc<dyn ObjectEngine>,
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
        let nonce = tx.nonce_key();
        if let Some(owner) = index.nonces.get(&nonce).map(|o| *o)
            && owner != tx.id
        {
            Self::nonce_reused(reply, owner);
            return;
        }
        match index.store.lookup(&tx.id, &nonce) {
            // A transaction whose batch was lost from the log is stored anew.
            Ok(Lookup::Stored(rec)) if !rec.lost => {
                let _ = reply.send(Ok(Receipt::of_stored(tx.id, &rec)));
                return;
            }
            Ok(Lookup::NonceUsedBy(owner)) if owner != tx.id => {
                Self::nonce_reused(reply, owner);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let why = Unavailable::Index(Arc::new(e));
                let _ = reply.send(Err(SubmitError::StorageUnavailable(why)));
                return;
            }
        }
        let in_flight = state.waiters.len();
        if in_flight >= state.args.queue_capacity {
            metrics::counter!(crate::metrics::TX_REJECTED, "reason" => "overloaded").increment(1);
            let _ = reply.send(Err(SubmitError::Overloaded(in_flight)));
            return;
        }
        let prior = match Self::check_objects(state, &tx) {
            Ok(prior) => prior,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        let id = tx.id;
        index.pending.insert(
            id,
            PendingTx {
                flag: tx.tx.kind,
                canonical: Arc::from(tx.canonical.as_str()),
                nonce,
            },
        );
        index.nonces.insert(nonce, id);
        match state
            .args
            .batcher
            .try_send(BatcherMsg::Add { tx, arrived, prior })
        {
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
                index.forget(&id);
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

    /// Checks the transaction's objects against those of the transactions in flight and
    /// their durable heads (one read of the store) and takes its locks; returns the
    /// durable last writer of each object, for the batcher's edges. A refusal leaves
    /// nothing behind.
    fn check_objects(
        state: &IntakeState,
        tx: &SignedTx,
    ) -> Result<Vec<(String, TxId)>, SubmitError> {
        let engine = &state.args.objects;
        let objects = match tx.tx.objects.as_deref() {
            Some(objects) if !objects.is_empty() && engine.tracks() => objects,
            _ => return Ok(Vec::new()),
        };
        let index = &state.args.index;
        let heads = index
            .store
            .object_heads(objects.iter().map(|o| o.id.as_str()))
            .map_err(|e| SubmitError::StorageUnavailable(Unavailable::Index(Arc::new(e))))?;
        if let Err(conflict) =
            engine.admit(&mut index.objects(), tx.id, &tx.tx.sender, objects, &heads)
        {
            metrics::counter!(crate::metrics::OBJECT_CONFLICTS, "rule" => conflict.rule())
                .increment(1);
            metrics::counter!(crate::metrics::TX_REJECTED, "reason" => "object_conflict")
                .increment(1);
            return Err(SubmitError::ObjectConflict(conflict));
        }
        Ok(heads
            .into_iter()
            .filter_map(|(id, head)| head.last_tx.map(|tx| (id, tx)))
            .collect())
    }

    fn nonce_reused(reply: oneshot::Sender<SubmitResult>, owner: TxId) {
        metrics::counter!(crate::metrics::TX_REJECTED, "reason" => "nonce_reused").increment(1);
        let _ = reply.send(Err(SubmitError::NonceReused { taken_by: owner }));
    }

    fn stored(state: &mut IntakeState, tx_ids: &[TxId], outcome: StoreOutcome) {
        let acks = outcome.acks.len();
        state
            .args
            .index
            .activity
            .stored(outcome.tier, &outcome.batch_id, tx_ids);
        for id in tx_ids {
            // Absent when a sweep already failed it back: then nobody waits, and the
            // transaction is durable all the same (its record is in the store).
            let flag = state
                .args
                .index
                .forget(id)
                .map_or(FlagKind::FreshTx, |p| p.flag);
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
                SubmitError::StorageUnavailable(Unavailable::Stale(older_than)),
            );
        }
    }

    fn failed(state: &mut IntakeState, tx_ids: &[TxId], reason: SubmitError) {
        let code = reason.label();
        for id in tx_ids {
            // Not durable: forget it (and release its nonce), so a retry is a fresh
            // submission.
            state.args.index.forget(id);
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
            IntakeMsg::Submit { tx, arrived, reply } => Self::submit(state, tx, arrived, reply),
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
    use crate::city::mailbox::Depth;
    use crate::city::status::TxView;
    use crate::crypto::SigningKey;
    use crate::messages::Batch;
    use crate::messages::NonceKey;
    use crate::messages::Tier;
    use crate::storage::city_store::{BatchRecord, CityStore, NewBatch, TxRecord};
    use crate::testkit::{recorder, signed_tx};

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
        let (actor, _) = Actor::spawn(
            None,
            Intake,
            IntakeArgs {
                queue_capacity: capacity,
                sweep_after: Duration::from_secs(60),
                index: index.clone(),
                batcher: Mailbox::new(batcher, Depth::new("test_batcher"), 64),
                objects: crate::engines::objects::engine_from_config(&Default::default()),
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
            .record(NewBatch {
                nonces: NonceKey::of_canonical(&first.canonical)
                    .map(|k| (k, first.id))
                    .into_iter()
                    .collect(),
                ..NewBatch::new(
                    BatchRecord {
                        header: batch.header.clone(),
                        tx_ids: vec![first.id],
                        tier: Tier::Light,
                        holders: holders.clone(),
                        acks: vec![],
                        lost: false,
                    },
                    vec![(
                        first.id,
                        TxRecord {
                            flag: FlagKind::FreshTx,
                            batch_id: batch.id(),
                            tier: Tier::Light,
                            holders,
                            acks: 0,
                            lost: false,
                        },
                    )],
                    crate::testkit::sealer().seal(&batch).unwrap().1,
                )
            })
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
    async fn a_nonce_in_flight_or_stored_is_not_admitted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (actor, index, mut added) = intake(10, dir.path()).await;
        let key = SigningKey::from_seed([9; 32]).unwrap();
        let first = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let rival = signed_tx(&key, 1, FlagKind::FreshTx, 11);
        let _a = submit(&actor, first.clone());
        let refused = submit(&actor, rival.clone()).await.unwrap();
        assert_eq!(
            refused,
            Err(SubmitError::NonceReused { taken_by: first.id })
        );
        assert!(!index.pending.contains_key(&rival.id));
        added.recv().await.unwrap();
        // The same transaction again waits with the first: a duplicate, not a reuse.
        let dup = submit(&actor, first.clone());

        // The first one fails: its nonce is free again.
        actor
            .cast(IntakeMsg::Failed {
                tx_ids: Arc::new(vec![first.id]),
                reason: SubmitError::ShuttingDown,
            })
            .unwrap();
        assert_eq!(dup.await.unwrap(), Err(SubmitError::ShuttingDown));
        assert!(
            index.nonces.is_empty(),
            "a failed transaction releases its nonce"
        );
        let _b = submit(&actor, rival.clone());
        let Some(BatcherMsg::Add { tx, .. }) = added.recv().await else {
            panic!("the rival is admitted now")
        };
        assert_eq!(tx.id, rival.id);

        // Once the rival is durable, the store remembers its nonce for good.
        let batch = Batch::build(
            "tokyo",
            0,
            vec![],
            FlagKind::FreshTx,
            std::slice::from_ref(&rival),
            0,
        );
        index
            .store
            .record(NewBatch {
                nonces: NonceKey::of_canonical(&rival.canonical)
                    .map(|k| (k, rival.id))
                    .into_iter()
                    .collect(),
                ..NewBatch::new(
                    BatchRecord {
                        header: batch.header.clone(),
                        tx_ids: vec![rival.id],
                        tier: Tier::Log,
                        holders: vec![],
                        acks: vec![],
                        lost: false,
                    },
                    vec![(
                        rival.id,
                        TxRecord {
                            flag: FlagKind::FreshTx,
                            batch_id: batch.id(),
                            tier: Tier::Log,
                            holders: vec![],
                            acks: 0,
                            lost: false,
                        },
                    )],
                    crate::testkit::sealer().seal(&batch).unwrap().1,
                )
            })
            .await
            .unwrap();
        actor
            .cast(IntakeMsg::Stored {
                tx_ids: Arc::new(vec![rival.id]),
                outcome: StoreOutcome {
                    batch_id: batch.id(),
                    tier: Tier::Log,
                    holders: vec![],
                    acks: vec![],
                },
            })
            .unwrap();
        wait_until(|| index.pending.is_empty()).await;
        assert!(index.nonces.is_empty());
        let refused = submit(&actor, first.clone()).await.unwrap();
        assert_eq!(
            refused,
            Err(SubmitError::NonceReused { taken_by: rival.id })
        );
        let again = submit(&actor, rival.clone()).await.unwrap().unwrap();
        assert!(again.duplicate);
    }

    async fn wait_until(check: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the condition holds in time");
    }

    #[tokio::test]
    async fn an_object_conflict_records_nothing_and_the_lock_goes_with_its_holder() {
        use crate::engines::objects::ObjectConflict;
        use crate::messages::{ObjectAccess, ObjectKind, ObjectRef};
        let dir = tempfile::tempdir().unwrap();
        let (actor, index, mut added) = intake(10, dir.path()).await;
        let coin = |key: &SigningKey, nonce| {
            let mut tx = signed_tx(key, nonce, FlagKind::FreshTx, 10);
            tx.tx.objects = Some(vec![ObjectRef {
                id: "coin".into(),
                kind: ObjectKind::Owned,
                access: ObjectAccess::Write,
            }]);
            tx
        };
        let (alice, bob) = (
            SigningKey::from_seed([3; 32]).unwrap(),
            SigningKey::from_seed([4; 32]).unwrap(),
        );
        let first = coin(&alice, 1);
        let rival = coin(&bob, 1);
        let _a = submit(&actor, first.clone());
        let Some(BatcherMsg::Add { tx, prior, .. }) = added.recv().await else {
            panic!("the first writer is admitted")
        };
        assert_eq!((tx.id, prior.len()), (first.id, 0));
        let refused = submit(&actor, rival.clone()).await.unwrap();
        assert_eq!(
            refused,
            Err(SubmitError::ObjectConflict(ObjectConflict::InFlight {
                object: "coin".into(),
                tx: first.id
            }))
        );
        assert!(!index.pending.contains_key(&rival.id));
        assert!(
            !index.nonces.contains_key(&rival.nonce_key()),
            "a conflict uses no nonce"
        );
        assert!(!index.objects().holds(&rival.id));
        // The same transaction again waits with itself.
        let dup = submit(&actor, first.clone());
        actor
            .cast(IntakeMsg::Failed {
                tx_ids: Arc::new(vec![first.id]),
                reason: SubmitError::ShuttingDown,
            })
            .unwrap();
        assert_eq!(dup.await.unwrap(), Err(SubmitError::ShuttingDown));
        assert!(index.objects().is_empty(), "a failed writer releases");
        let _b = submit(&actor, rival.clone());
        let Some(BatcherMsg::Add { tx, .. }) = added.recv().await else {
            panic!("the rival is admitted now")
        };
        assert_eq!(tx.id, rival.id);
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
                reason: SubmitError::StorageUnavailable(Unavailable::Stale(Duration::from_secs(1))),
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
}

//! Failover: walks each batch down the tier chain until it is durable, and completes it.
//!
//! Receives every tier result ([`FailoverMsg::TierDone`]), first from the StorageWriter
//! (tier 0, the light nodes) and then from the fallback attempts it starts itself. A durable
//! batch has its record written to the city store (fsynced, on the store's writer thread),
//! then is reported to the Intake (which answers the clients) and the Flagger (one more
//! batch may go). A failed tier sends the whole batch to the next tier of the chain
//! (light → full → mongo → log); when even the last fails, the clients get 503
//! `storage_unavailable` and nothing is acknowledged. What each node's write showed goes to
//! the Prioritizer. Batches another actor could not pass on
//! ([`FailoverMsg::Undeliverable`]) are failed back to their clients, never dropped.
//!
//! The record carries the rewards ledger's entries for the batch's acks (one write credit
//! per acked holder, by the score the placement gave it, `engines::rewards`), written in
//! the record's own transaction and only with the batch's first record, so every stored
//! batch is credited exactly once, whatever crashes.
//!
//! The actor never waits: tier attempts and index writes are tasks of their own, and they
//! report back through this actor's mailbox, so a restarted Failover still hears them.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::Mailbox;
use crate::city::msgs::{
    FailoverMsg, FlaggerMsg, IntakeMsg, PrioritizerMsg, SubmitError, Unavailable,
};
use crate::engines::objects::ObjectEngine;
use crate::engines::rewards::{Credit, ProofKind, RewardEngine};
use crate::messages::{FlagKind, NonceKey, ObjectRef, SealedBatch, StoreJob, StoreOutcome, now_ms};
use crate::storage::chain::TierChain;
use crate::storage::city_store::{BatchRecord, CityStore, NewBatch, ObjectTouch, TxRecord};
use crate::storage::tier::{Stored, TierResult};

/// Mailbox capacity. Tier results are control messages (bounded by the batches in flight,
/// `[supervisor] max_inflight_batches`) and are never refused.
pub const MAILBOX_CAPACITY: usize = 4096;

pub struct Failover;

pub struct FailoverArgs {
    pub chain: TierChain,
    pub store: Arc<CityStore>,
    /// This actor's own mailbox, for the tasks it starts to report back through.
    pub me: Mailbox<FailoverMsg>,
    pub intake: Mailbox<IntakeMsg>,
    pub flagger: Mailbox<FlaggerMsg>,
    pub prioritizer: Mailbox<PrioritizerMsg>,
    /// Decides what each ack of a stored batch earns.
    pub rewards: Arc<dyn RewardEngine>,
    /// The object rules: whether a durable batch advances the object heads.
    pub objects: Arc<dyn ObjectEngine>,
}

impl Failover {
    fn tier_done(args: &FailoverArgs, job: StoreJob, index: usize, result: TierResult) {
        if !result.observations.is_empty() {
            let _ = args
                .prioritizer
                .cast(PrioritizerMsg::Observe(result.observations));
        }
        let tier = args
            .chain
            .get(index)
            .expect("index is within the chain")
            .tier();
        args.chain.health().record(
            index,
            result
                .outcome
                .as_ref()
                .map(|_| ())
                .map_err(ToString::to_string),
        );
        let reason = match result.outcome {
            Ok(stored) => return Self::complete(args, job, index, stored),
            Err(reason) => reason,
        };
        metrics::counter!(crate::metrics::TIER_FAILURES, "tier" => tier.as_str()).increment(1);
        let Some(next) = args.chain.get(index + 1) else {
            tracing::error!(
                batch = %hex::encode(job.sealed.id),
                %reason,
                "every storage tier failed; the batch's transactions are refused"
            );
            metrics::counter!(crate::metrics::BATCHES_FAILED).increment(1);
            let _ = args.intake.cast(IntakeMsg::Failed {
                tx_ids: job.sealed.tx_ids.clone(),
                reason: SubmitError::StorageUnavailable(Unavailable::Tiers(Arc::new(reason))),
            });
            let _ = args.flagger.cast(FlaggerMsg::Done);
            return;
        };
        tracing::warn!(
            batch = %hex::encode(job.sealed.id),
            failed = %tier,
            next = %next.tier(),
            %reason,
            "tier failed; trying the next"
        );
        let next = next.clone();
        let me = args.me.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = next.store(&job).await;
            tracing::debug!(elapsed = ?started.elapsed(), "fallback tier answered");
            let _ = me.cast(FailoverMsg::TierDone {
                job,
                index: index + 1,
                result,
            });
        });
    }

    fn complete(args: &FailoverArgs, job: StoreJob, index: usize, stored: Stored) {
        let tier = args
            .chain
            .get(index)
            .expect("index is within the chain")
            .tier();
        metrics::counter!(crate::metrics::BATCHES_STORED, "tier" => tier.as_str()).increment(1);
        if index > 0 {
            tracing::info!(
                batch = %hex::encode(job.sealed.id),
                %tier,
                "batch stored on a fallback tier"
            );
        }
        let outcome = StoreOutcome {
            batch_id: job.sealed.id,
            tier,
            holders: stored.holders,
            acks: stored.acks,
        };
        // The record goes to disk before any client hears 200: a city killed the moment
        // after still knows where every acknowledged transaction is.
        let store = args.store.clone();
        let intake = args.intake.clone();
        let flagger = args.flagger.clone();
        let credits = write_credits(args, &job, &outcome);
        let track_objects = args.objects.tracks();
        let answered = Instant::now();
        tokio::spawn(async move {
            let sealed = &job.sealed;
            let new = NewBatch {
                credits,
                ..records(sealed, &outcome, track_objects)
            };
            let recorded = store.record(new).await;
            metrics::histogram!(crate::metrics::STAGE_LATENCY, "stage" => "index")
                .record(answered.elapsed().as_secs_f64());
            let msg = match recorded {
                Ok(()) => IntakeMsg::Stored {
                    tx_ids: sealed.tx_ids.clone(),
                    outcome,
                },
                Err(e) => {
                    tracing::error!(error = %e, "the batch is durable but its index record is not; failing it back");
                    IntakeMsg::Failed {
                        tx_ids: sealed.tx_ids.clone(),
                        reason: SubmitError::StorageUnavailable(Unavailable::Index(Arc::new(e))),
                    }
                }
            };
            let _ = intake.cast(msg);
            let _ = flagger.cast(FlaggerMsg::Done);
        });
    }
}

/// The rewards ledger's entries for the acks of a stored batch: one write credit per
/// acked storage node, by the score its placement gave it.
fn write_credits(args: &FailoverArgs, job: &StoreJob, outcome: &StoreOutcome) -> Vec<Credit> {
    if !args.rewards.enabled() {
        return Vec::new();
    }
    let now = now_ms();
    outcome
        .acks
        .iter()
        .filter_map(|ack| {
            let node = args.chain.nodes().get(&ack.holder_id)?;
            args.rewards.proved(
                &ack.holder_id,
                ProofKind::Write,
                node.entry.role,
                job.placement.score_of(&ack.holder_id),
                now,
            )
        })
        .collect()
}

/// The index records of a durable batch and its transactions, the `(sender, nonce)` pairs,
/// its vault entries, its sealed bytes for the body cache and, when the object engine
/// tracks objects, every object access in batch order (the heads advance in the same
/// transaction).
fn records(sealed: &SealedBatch, outcome: &StoreOutcome, track_objects: bool) -> NewBatch {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: FlagKind,
    }
    let txs = sealed
        .tx_ids
        .iter()
        .zip(&sealed.batch.body)
        .map(|(id, stored)| {
            let flag = serde_json::from_str::<Kind>(&stored.canonical)
                .map(|k| k.kind)
                .expect("batched transactions were parsed before");
            (
                *id,
                TxRecord {
                    flag,
                    batch_id: outcome.batch_id,
                    tier: outcome.tier,
                    holders: outcome.holders.clone(),
                    acks: outcome.acks.len() as u32,
                    lost: false,
                },
            )
        })
        .collect();
    let batch = BatchRecord {
        header: sealed.batch.header.clone(),
        tx_ids: sealed.tx_ids.as_ref().clone(),
        tier: outcome.tier,
        holders: outcome.holders.clone(),
        acks: outcome.acks.clone(),
        lost: false,
    };
    let nonces = sealed
        .tx_ids
        .iter()
        .zip(&sealed.batch.body)
        .filter_map(|(id, stored)| NonceKey::of_canonical(&stored.canonical).map(|k| (k, *id)))
        .collect();
    let objects = if track_objects {
        object_touches(sealed)
    } else {
        Vec::new()
    };
    NewBatch {
        batch,
        txs,
        nonces,
        capsule: sealed.capsule.as_ref().clone(),
        read_key: sealed.read_key.as_deref().cloned(),
        sealed: Some(sealed.bytes.clone()),
        credits: Vec::new(),
        objects,
    }
}

/// Every object access of the batch's transactions, in batch order.
fn object_touches(sealed: &SealedBatch) -> Vec<ObjectTouch> {
    #[derive(serde::Deserialize)]
    struct Declared {
        sender: String,
        #[serde(default)]
        objects: Option<Vec<ObjectRef>>,
    }
    let mut out = Vec::new();
    for (id, stored) in sealed.tx_ids.iter().zip(&sealed.batch.body) {
        let declared = serde_json::from_str::<Declared>(&stored.canonical)
            .expect("batched transactions were parsed before");
        for object in declared.objects.unwrap_or_default() {
            out.push(ObjectTouch {
                tx: *id,
                sender: declared.sender.clone(),
                object,
            });
        }
    }
    out
}

impl Actor for Failover {
    type Msg = FailoverMsg;
    type State = FailoverArgs;
    type Arguments = FailoverArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: FailoverArgs,
    ) -> Result<FailoverArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: FailoverMsg,
        state: &mut FailoverArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FailoverMsg::TierDone { job, index, result } => {
                Self::tier_done(state, job, index, result)
            }
            FailoverMsg::Undeliverable {
                tx_ids,
                reason,
                holds_credit,
            } => {
                tracing::warn!(txs = tx_ids.len(), %reason, "transactions could not be passed on");
                let _ = state.intake.cast(IntakeMsg::Failed { tx_ids, reason });
                if holds_credit {
                    let _ = state.flagger.cast(FlaggerMsg::Done);
                }
            }
            FailoverMsg::Panic => panic!("fault injected into failover"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::city::mailbox::Depth;
    use crate::crypto::SigningKey;
    use crate::messages::{Batch, NodeObservation, Placement, Tier, Urgency};
    use crate::storage::immutable_log::ImmutableLog;
    use crate::storage::log_tier::LogTier;
    use crate::storage::tier::{StorageTier, TierError};
    use crate::testkit::{recorder, signed_tx};

    /// A tier with no nodes up: fails at once.
    struct Empty;

    #[async_trait::async_trait]
    impl StorageTier for Empty {
        fn tier(&self) -> Tier {
            Tier::Light
        }
        async fn store(&self, _job: &StoreJob) -> TierResult {
            TierResult {
                outcome: Err(TierError::TooFewNodes {
                    tier: Tier::Light,
                    up: 0,
                    needed: 3,
                }),
                observations: vec![],
            }
        }
    }

    struct Harness {
        failover: Mailbox<FailoverMsg>,
        intake: UnboundedReceiver<IntakeMsg>,
        flagger: UnboundedReceiver<FlaggerMsg>,
        prioritizer: UnboundedReceiver<PrioritizerMsg>,
        store: Arc<CityStore>,
        _dir: tempfile::TempDir,
    }

    /// A Failover actor over `tiers` (the log tier last, in a temp dir when `log`).
    async fn start(mut tiers: Vec<Arc<dyn StorageTier>>, log: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        if log {
            tiers.push(Arc::new(LogTier {
                log: journal.clone(),
                holder: "city-test".into(),
            }));
        }
        let chain = TierChain::new(tiers, crate::testkit::peer_client(), journal, None);
        let store = Arc::new(CityStore::open(dir.path()).unwrap());
        let (intake, intake_rx) = recorder::<IntakeMsg>().await;
        let (flagger, flagger_rx) = recorder::<FlaggerMsg>().await;
        let (prioritizer, prioritizer_rx) = recorder::<PrioritizerMsg>().await;
        let me = Mailbox::detached(Depth::new("test_failover"), 64);
        let (actor, _) = Actor::spawn(
            None,
            Failover,
            FailoverArgs {
                chain,
                store: store.clone(),
                me: me.clone(),
                intake: Mailbox::new(intake, Depth::new("test_intake"), 64),
                flagger: Mailbox::new(flagger, Depth::new("test_flagger"), 64),
                prioritizer: Mailbox::new(prioritizer, Depth::new("test_prioritizer"), 64),
                rewards: crate::engines::rewards::engine_from_config(&Default::default()),
                objects: crate::engines::objects::engine_from_config(&Default::default()),
            },
        )
        .await
        .unwrap();
        me.repoint(actor);
        Harness {
            failover: me,
            intake: intake_rx,
            flagger: flagger_rx,
            prioritizer: prioritizer_rx,
            store,
            _dir: dir,
        }
    }

    fn job() -> StoreJob {
        let key = SigningKey::from_seed([8; 32]).unwrap();
        let tx = signed_tx(&key, 1, FlagKind::FreshTx, 10);
        let batch = Batch::build(
            "tokyo",
            0,
            vec![],
            FlagKind::FreshTx,
            std::slice::from_ref(&tx),
            0,
        );
        StoreJob {
            sealed: SealedBatch::new(
                batch,
                vec![tx.id],
                Urgency::Normal,
                Instant::now(),
                &crate::testkit::sealer(),
            )
            .unwrap(),
            placement: Placement::default(),
        }
    }

    async fn next<M>(rx: &mut UnboundedReceiver<M>) -> M {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an answer within 10 s")
            .expect("the recorder is alive")
    }

    #[tokio::test]
    async fn a_failed_tier_walks_down_to_the_next_and_the_record_precedes_the_answer() {
        let mut h = start(vec![Arc::new(Empty)], true).await;
        let job = job();
        let (batch_id, tx_id) = (job.sealed.id, job.sealed.tx_ids[0]);
        let capsule = job.sealed.capsule.clone();
        let mut failed = Empty.store(&job).await;
        failed.observations.push(NodeObservation {
            node_id: "light-1".into(),
            latency: Duration::from_millis(3),
            ok: false,
        });
        h.failover
            .cast(FailoverMsg::TierDone {
                job,
                index: 0,
                result: failed,
            })
            .unwrap_or_else(|_| panic!("the failover actor runs"));
        match next(&mut h.prioritizer).await {
            PrioritizerMsg::Observe(o) => assert_eq!(o[0].node_id, "light-1"),
            _ => panic!("what the write showed goes to the Prioritizer"),
        }
        match next(&mut h.intake).await {
            IntakeMsg::Stored { tx_ids, outcome } => {
                assert_eq!(tx_ids.as_slice(), [tx_id]);
                assert_eq!(outcome.tier, Tier::Log, "the next tier took it");
                assert_eq!(outcome.holders, ["city-test"]);
            }
            _ => panic!("the Intake hears the batch is durable"),
        }
        assert!(matches!(next(&mut h.flagger).await, FlaggerMsg::Done));
        let rec = h
            .store
            .get_tx(&tx_id)
            .unwrap()
            .expect("recorded before the answer");
        assert_eq!((rec.tier, rec.batch_id), (Tier::Log, batch_id));
        assert_eq!(
            h.store.capsule(&batch_id).unwrap().as_ref(),
            Some(capsule.as_ref()),
            "the capsule is in the vault before the answer"
        );
    }

    #[tokio::test]
    async fn when_the_last_tier_fails_the_clients_are_refused_and_the_credit_returns() {
        let mut h = start(vec![Arc::new(Empty), Arc::new(Empty)], false).await;
        let job = job();
        let tx_id = job.sealed.tx_ids[0];
        let result = Empty.store(&job).await;
        h.failover
            .cast(FailoverMsg::TierDone {
                job,
                index: 0,
                result,
            })
            .unwrap_or_else(|_| panic!("the failover actor runs"));
        match next(&mut h.intake).await {
            IntakeMsg::Failed { tx_ids, reason } => {
                assert_eq!(tx_ids.as_slice(), [tx_id]);
                assert!(
                    matches!(&reason, SubmitError::StorageUnavailable(why @ Unavailable::Tiers(_)) if why.to_string().contains("0 light nodes up")),
                    "{reason}"
                );
            }
            _ => panic!("the Intake hears the batch failed"),
        }
        assert!(matches!(next(&mut h.flagger).await, FlaggerMsg::Done));
        assert!(
            h.store.get_tx(&tx_id).unwrap().is_none(),
            "nothing promised"
        );
    }
}

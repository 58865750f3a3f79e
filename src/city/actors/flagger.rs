//! Flagger: releases sealed batches downstream in flag order.
//!
//! How each transaction is flagged is the [`FlagPolicy`](crate::city::flag_policy)'s
//! decision, taken by the DagBatcher as transactions arrive. The Flagger receives every
//! sealed batch and keeps the pipeline's order of work: it lets at most
//! `[supervisor] max_inflight_batches` batches be in storage at once, and when more wait,
//! the highest flag goes first (CHECKPOINT > REPAIR_ACK > REPAIR_REQ > POH_ACK >
//! POH_REQUEST > FRESH_TX > SYSTEM_TX), then urgency, then age. It feeds the Prioritizer and
//! gets a credit back from the Failover actor for every batch that is finished.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::{Mailbox, SendError};
use crate::city::msgs::{FailoverMsg, FlaggerMsg, PrioritizerMsg, SubmitError};
use crate::messages::{SealedBatch, Urgency};

/// Mailbox capacity (sealed batches).
pub const MAILBOX_CAPACITY: usize = 4096;

pub struct Flagger;

pub struct FlaggerArgs {
    pub max_inflight: usize,
    pub prioritizer: Mailbox<PrioritizerMsg>,
    pub failover: Mailbox<FailoverMsg>,
    /// Where the Flagger publishes how many sealed batches are not yet finished (in
    /// storage or waiting here), for the DagBatcher.
    pub unfinished: Arc<AtomicUsize>,
}

pub struct FlaggerState {
    args: FlaggerArgs,
    waiting: BinaryHeap<Queued>,
    inflight: usize,
    arrivals: u64,
}

/// A waiting batch, ordered so the heap's top is the one to send next.
struct Queued {
    key: (u8, Urgency, std::cmp::Reverse<u64>),
    batch: SealedBatch,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl Flagger {
    fn release(state: &mut FlaggerState) {
        while state.inflight < state.args.max_inflight {
            let Some(next) = state.waiting.pop() else {
                break;
            };
            match state
                .args
                .prioritizer
                .try_send(PrioritizerMsg::Route(next.batch))
            {
                Ok(()) => state.inflight += 1,
                Err(e) => {
                    let reason = match &e {
                        SendError::Full(_) => SubmitError::Overloaded(state.inflight),
                        SendError::Closed(_) => SubmitError::ShuttingDown,
                    };
                    let PrioritizerMsg::Route(batch) = e.into_inner() else {
                        unreachable!("we sent a Route")
                    };
                    let _ = state.args.failover.cast(FailoverMsg::Undeliverable {
                        tx_ids: batch.tx_ids.clone(),
                        reason,
                        holds_credit: false,
                    });
                }
            }
        }
    }
}

impl Actor for Flagger {
    type Msg = FlaggerMsg;
    type State = FlaggerState;
    type Arguments = FlaggerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: FlaggerArgs,
    ) -> Result<FlaggerState, ActorProcessingErr> {
        Ok(FlaggerState {
            args,
            waiting: BinaryHeap::new(),
            inflight: 0,
            arrivals: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: FlaggerMsg,
        state: &mut FlaggerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FlaggerMsg::Sealed(batch) => {
                state.arrivals += 1;
                let key = (
                    batch.flag().priority(),
                    batch.urgency,
                    std::cmp::Reverse(state.arrivals),
                );
                state.waiting.push(Queued { key, batch });
            }
            FlaggerMsg::Done => state.inflight = state.inflight.saturating_sub(1),
            FlaggerMsg::Panic => panic!("fault injected into flagger"),
        }
        Self::release(state);
        state.args.unfinished.store(
            state.inflight + state.waiting.len(),
            AtomicOrdering::Relaxed,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::mailbox::Depth;
    use crate::crypto::SigningKey;
    use crate::messages::{Batch, FlagKind};
    use crate::testkit::{recorder, signed_tx};

    fn sealed(kind: FlagKind, urgency: Urgency, nonce: u64) -> SealedBatch {
        let key = SigningKey::from_seed([4; 32]).unwrap();
        let tx = signed_tx(&key, nonce, kind, 1);
        let batch = Batch::build("tokyo", nonce, vec![], kind, std::slice::from_ref(&tx), 0);
        SealedBatch::new(
            batch,
            vec![tx.id],
            urgency,
            std::time::Instant::now(),
            &crate::testkit::sealer(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn releases_in_flag_order_within_the_inflight_limit() {
        let (prioritizer, mut routed) = recorder::<PrioritizerMsg>().await;
        let (failover, _) = recorder::<FailoverMsg>().await;
        let (flagger, _) = Actor::spawn(
            None,
            Flagger,
            FlaggerArgs {
                max_inflight: 1,
                prioritizer: Mailbox::new(prioritizer, Depth::new("test_prioritizer"), 64),
                failover: Mailbox::new(failover, Depth::new("test_failover"), 64),
                unfinished: Arc::default(),
            },
        )
        .await
        .unwrap();
        let mut next = async || match routed.recv().await.unwrap() {
            PrioritizerMsg::Route(b) => b.flag(),
            _ => panic!("the flagger only routes"),
        };
        flagger
            .cast(FlaggerMsg::Sealed(sealed(
                FlagKind::FreshTx,
                Urgency::Normal,
                1,
            )))
            .unwrap();
        assert_eq!(
            next().await,
            FlagKind::FreshTx,
            "the first batch goes at once"
        );
        for (i, kind) in [
            FlagKind::SystemTx,
            FlagKind::FreshTx,
            FlagKind::Checkpoint,
            FlagKind::RepairReq,
        ]
        .into_iter()
        .enumerate()
        {
            flagger
                .cast(FlaggerMsg::Sealed(sealed(
                    kind,
                    Urgency::Normal,
                    2 + i as u64,
                )))
                .unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            flagger.cast(FlaggerMsg::Done).unwrap();
            order.push(next().await);
        }
        assert_eq!(
            order,
            vec![
                FlagKind::Checkpoint,
                FlagKind::RepairReq,
                FlagKind::FreshTx,
                FlagKind::SystemTx
            ]
        );
        assert!(
            routed.try_recv().is_err(),
            "nothing beyond the credits was released"
        );
    }
}

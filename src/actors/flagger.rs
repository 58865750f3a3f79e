//! Flagger: decides how each transaction is flagged and how urgently it is written, and
//! releases sealed batches downstream in flag order.
//!
//! The [`FlagPolicy`] (upstream `compute_flag`) is consulted by the DagBatcher as each
//! transaction arrives, because urgency decides when a batch closes. The Flagger actor then
//! receives every sealed batch and keeps the pipeline's order of work: it lets at most
//! `[supervisor] max_inflight_batches` batches be in storage at once, and when more wait,
//! the highest flag goes first (CHECKPOINT > REPAIR_ACK > REPAIR_REQ > POH_ACK >
//! POH_REQUEST > FRESH_TX > SYSTEM_TX), then urgency, then age. It feeds the Prioritizer and
//! gets a credit back from the FailoverSupervisor for every batch that is finished.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::failover_supervisor::SupervisorMsg;
use super::intake::SubmitError;
use super::mailbox::{Depth, Mailbox, SendError};
use super::prioritizer::PrioritizerMsg;
use crate::config::FlaggerConfig;
use crate::messages::{Flag, FlagKind, SealedBatch, Tx, Urgency};

/// Flag policies selectable by `[flagger] policy`.
pub const POLICIES: &[&str] = &["default", "always_immediate"];

/// Mailbox capacity (sealed batches).
pub const MAILBOX_CAPACITY: usize = 4096;

/// Decides a transaction's flag: its kind and how urgently it must be written.
pub trait FlagPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    /// The upstream `compute_flag(tx, context)`: write now, soon, or when convenient.
    fn compute_flag(&self, tx: &Tx) -> Flag;
}

/// The policy named in config. Unknown names are refused by config validation.
pub fn policy_from_config(cfg: &FlaggerConfig) -> Arc<dyn FlagPolicy> {
    match cfg.policy.as_str() {
        "always_immediate" => Arc::new(AlwaysImmediate),
        _ => Arc::new(RulePolicy::from_config(cfg)),
    }
}

/// The default rules: listed kinds and large amounts are immediate, listed kinds may wait,
/// everything else is normal.
#[derive(Debug, Clone)]
pub struct RulePolicy {
    pub immediate_amount: u64,
    pub immediate_kinds: Vec<FlagKind>,
    pub deferred_kinds: Vec<FlagKind>,
}

impl RulePolicy {
    pub fn from_config(cfg: &FlaggerConfig) -> Self {
        Self {
            immediate_amount: cfg.immediate_amount,
            immediate_kinds: cfg.immediate_kinds.clone(),
            deferred_kinds: cfg.deferred_kinds.clone(),
        }
    }
}

impl FlagPolicy for RulePolicy {
    fn name(&self) -> &'static str {
        "default"
    }

    fn compute_flag(&self, tx: &Tx) -> Flag {
        let urgency =
            if self.immediate_kinds.contains(&tx.kind) || tx.amount >= self.immediate_amount {
                Urgency::Immediate
            } else if self.deferred_kinds.contains(&tx.kind) {
                Urgency::Deferred
            } else {
                Urgency::Normal
            };
        Flag {
            kind: tx.kind,
            urgency,
        }
    }
}

/// Every transaction closes its batch at once: lowest latency, smallest batches.
pub struct AlwaysImmediate;

impl FlagPolicy for AlwaysImmediate {
    fn name(&self) -> &'static str {
        "always_immediate"
    }

    fn compute_flag(&self, tx: &Tx) -> Flag {
        Flag {
            kind: tx.kind,
            urgency: Urgency::Immediate,
        }
    }
}

pub enum FlaggerMsg {
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
    /// A batch the DagBatcher closed.
    Sealed(SealedBatch),
    /// A batch left storage (durable or failed): one more may go.
    Done,
}

pub struct Flagger;

pub struct FlaggerArgs {
    pub max_inflight: usize,
    pub depth: Depth,
    pub prioritizer: Mailbox<PrioritizerMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
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
                    let _ = state.args.supervisor.cast(SupervisorMsg::Undeliverable {
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
                state.args.depth.taken();
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;

    fn tx(kind: FlagKind, amount: u64) -> Tx {
        let key = SigningKey::from_seed([1; 32]).unwrap();
        Tx {
            kind,
            sender: key.address(),
            receiver: "r".into(),
            amount,
            timestamp_ms: 0,
            nonce: 0,
            city_id: "c".into(),
            continent: None,
            payload: None,
            pop: None,
        }
    }

    #[test]
    fn default_rules_decide_urgency() {
        let p = policy_from_config(&FlaggerConfig::default());
        assert_eq!(p.name(), "default");
        let u = |k, a| p.compute_flag(&tx(k, a)).urgency;
        assert_eq!(u(FlagKind::FreshTx, 10), Urgency::Normal);
        assert_eq!(
            u(FlagKind::FreshTx, 100_000_000),
            Urgency::Immediate,
            "large amounts go at once"
        );
        assert_eq!(u(FlagKind::Checkpoint, 1), Urgency::Immediate);
        assert_eq!(u(FlagKind::SystemTx, 1), Urgency::Deferred);
        assert_eq!(
            u(FlagKind::SystemTx, 100_000_000),
            Urgency::Immediate,
            "amount wins over kind"
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::PohAck, 1)).kind,
            FlagKind::PohAck
        );
    }

    #[test]
    fn config_picks_the_policy_and_its_rules() {
        let cfg = FlaggerConfig {
            policy: "default".into(),
            immediate_amount: 50,
            immediate_kinds: vec![],
            deferred_kinds: vec![FlagKind::FreshTx],
        };
        let p = policy_from_config(&cfg);
        assert_eq!(
            p.compute_flag(&tx(FlagKind::FreshTx, 49)).urgency,
            Urgency::Deferred
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::FreshTx, 50)).urgency,
            Urgency::Immediate
        );
        assert_eq!(
            p.compute_flag(&tx(FlagKind::Checkpoint, 1)).urgency,
            Urgency::Normal
        );

        let always = policy_from_config(&FlaggerConfig {
            policy: "always_immediate".into(),
            ..FlaggerConfig::default()
        });
        assert_eq!(always.name(), "always_immediate");
        assert_eq!(
            always.compute_flag(&tx(FlagKind::SystemTx, 1)).urgency,
            Urgency::Immediate
        );
    }
}

#[cfg(test)]
mod actor_tests {
    use super::*;
    use crate::actors::testkit::{recorder, signed_tx};
    use crate::crypto::SigningKey;
    use crate::messages::Batch;

    fn sealed(kind: FlagKind, urgency: Urgency, nonce: u64) -> SealedBatch {
        let key = SigningKey::from_seed([4; 32]).unwrap();
        let tx = signed_tx(&key, nonce, kind, 1);
        let batch = Batch::build("tokyo", nonce, vec![], kind, std::slice::from_ref(&tx), 0);
        SealedBatch::new(batch, vec![tx.id], urgency, std::time::Instant::now())
    }

    #[tokio::test]
    async fn releases_in_flag_order_within_the_inflight_limit() {
        let (prioritizer, mut routed) = recorder::<PrioritizerMsg>().await;
        let (supervisor, _) = recorder::<SupervisorMsg>().await;
        let (flagger, _) = Actor::spawn(
            None,
            Flagger,
            FlaggerArgs {
                max_inflight: 1,
                depth: Depth::new("test_flagger"),
                prioritizer: Mailbox::new(prioritizer, Depth::new("test_prioritizer"), 64),
                supervisor,
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

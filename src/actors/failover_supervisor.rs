//! FailoverSupervisor: the root of a city node's supervision tree and the walker of the
//! storage-tier chain.
//!
//! On start it spawns the pipeline, linked to itself, from the end backwards so that each
//! actor is born knowing whom it feeds: StorageWriter, Prioritizer, Flagger, DagBatcher,
//! Intake. At run time:
//! - every tier result comes here ([`SupervisorMsg::TierDone`]). A durable batch is
//!   reported to the Intake (which answers the clients), the Flagger (one more batch may
//!   go) and the Prioritizer (what each node's write showed). A failed tier sends the whole
//!   batch to the next tier of the chain (light → full → log); when even the last tier
//!   fails, the clients get 503 `storage_unavailable` and nothing is acknowledged.
//! - batches an actor could not pass on ([`SupervisorMsg::Undeliverable`]) are failed
//!   back to their clients, never dropped.
//! - an actor that fails is recorded for `GET /v1/actors` and the node stops being ready.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;

use super::dag_batcher::{self, BatcherArgs, DagBatcher};
use super::flagger::{self, FlagPolicy, Flagger, FlaggerArgs, FlaggerMsg};
use super::intake::{self, Intake, IntakeArgs, IntakeMsg, StatusIndex, SubmitError};
use super::mailbox::{Depth, Mailbox};
use super::prioritizer::{
    self, NodePolicy, NodesSnapshot, Prioritizer, PrioritizerArgs, PrioritizerMsg,
};
use super::storage_writer::{self, StorageWriter, WriterArgs};
use crate::config::Config;
use crate::messages::{BatchId, FlagKind, SealedBatch, StoreJob, StoreOutcome, TxId};
use crate::storage::city_store::{BatchRecord, CityStore, TxRecord};
use crate::storage::peer::PeerClient;
use crate::storage::tier::{TierChain, TierResult};

/// One actor as `GET /v1/actors` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActorView {
    pub name: String,
    pub status: String,
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub mailbox_depth: usize,
}

/// The supervision tree's published state, shared with the HTTP layer.
#[derive(Default)]
pub struct ActorTable {
    entries: RwLock<Vec<(ActorView, Option<Depth>)>>,
}

impl ActorTable {
    fn set(&self, name: &str, status: &str, failure: Option<String>, depth: Option<Depth>) {
        let mut entries = self.entries.write().expect("actor table lock poisoned");
        match entries.iter_mut().find(|(v, _)| v.name == name) {
            Some((v, d)) => {
                v.status = status.into();
                if failure.is_some() {
                    v.last_failure = failure;
                }
                if depth.is_some() {
                    *d = depth;
                }
            }
            None => entries.push((
                ActorView {
                    name: name.into(),
                    status: status.into(),
                    restarts: 0,
                    last_failure: failure,
                    mailbox_depth: 0,
                },
                depth,
            )),
        }
    }

    pub fn views(&self) -> Vec<ActorView> {
        let entries = self.entries.read().expect("actor table lock poisoned");
        entries
            .iter()
            .map(|(v, d)| ActorView {
                mailbox_depth: d.as_ref().map_or(0, Depth::get),
                ..v.clone()
            })
            .collect()
    }

    /// True while every actor in the table runs.
    pub fn all_running(&self) -> bool {
        let entries = self.entries.read().expect("actor table lock poisoned");
        !entries.is_empty() && entries.iter().all(|(v, _)| v.status == "running")
    }
}

/// A handle the HTTP layer reads; replaced when the actor behind it is.
pub type Slot<T> = Arc<RwLock<Option<T>>>;

pub enum SupervisorMsg {
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
}

pub struct FailoverSupervisor;

pub struct SupervisorArgs {
    pub config: Arc<Config>,
    pub chain: TierChain,
    pub client: PeerClient,
    pub flag_policy: Arc<dyn FlagPolicy>,
    pub node_policy: Arc<dyn NodePolicy>,
    pub index: Arc<StatusIndex>,
    pub nodes: NodesSnapshot,
    pub actors: Arc<ActorTable>,
    pub intake_slot: Slot<Mailbox<IntakeMsg>>,
    /// Where the DAG resumes: next sequence number and most recent batch ids.
    pub next_seq: u64,
    pub recent: Vec<BatchId>,
}

pub struct SupervisorState {
    chain: TierChain,
    store: Arc<CityStore>,
    actors: Arc<ActorTable>,
    names: HashMap<ActorId, &'static str>,
    intake: ActorRef<IntakeMsg>,
    flagger: ActorRef<FlaggerMsg>,
    prioritizer: ActorRef<PrioritizerMsg>,
}

impl FailoverSupervisor {
    fn complete(
        state: &SupervisorState,
        job: StoreJob,
        index: usize,
        stored: crate::storage::tier::Stored,
    ) {
        let tier = state
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
        let store = state.store.clone();
        let intake = state.intake.clone();
        let flagger = state.flagger.clone();
        tokio::spawn(async move {
            let sealed = &job.sealed;
            let (batch, txs) = records(sealed, &outcome);
            let msg = match store.record(batch, txs).await {
                Ok(()) => IntakeMsg::Stored {
                    tx_ids: sealed.tx_ids.clone(),
                    outcome,
                },
                Err(e) => {
                    tracing::error!(error = %e, "the batch is durable but its index record is not; failing it back");
                    IntakeMsg::Failed {
                        tx_ids: sealed.tx_ids.clone(),
                        reason: SubmitError::StorageUnavailable(format!("status index: {e}")),
                    }
                }
            };
            let _ = intake.cast(msg);
            let _ = flagger.cast(FlaggerMsg::Done);
        });
    }
}

/// The index records of a durable batch and its transactions.
fn records(sealed: &SealedBatch, outcome: &StoreOutcome) -> (BatchRecord, Vec<(TxId, TxRecord)>) {
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
                    canonical: stored.canonical.clone(),
                    batch_id: outcome.batch_id,
                    tier: outcome.tier,
                    holders: outcome.holders.clone(),
                    acks: outcome.acks.len() as u32,
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
    };
    (batch, txs)
}

impl Actor for FailoverSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let cfg = &args.config;
        let me: ActorCell = myself.get_cell();
        let mut names = HashMap::new();
        let table = &args.actors;

        // Spawned from the end of the pipeline backwards, each given its downstream.
        let first_tier = args
            .chain
            .get(0)
            .expect("validated: the chain is not empty")
            .clone();
        let depth = Depth::new("storage_writer");
        let (writer, _) = Actor::spawn_linked(
            None,
            StorageWriter,
            WriterArgs {
                first_tier,
                depth: depth.clone(),
                supervisor: myself.clone(),
            },
            me.clone(),
        )
        .await?;
        names.insert(writer.get_id(), "storage_writer");
        table.set("storage_writer", "running", None, Some(depth.clone()));
        let writer = Mailbox::new(writer, depth, storage_writer::MAILBOX_CAPACITY);

        let depth = Depth::new("prioritizer");
        let (prioritizer, _) = Actor::spawn_linked(
            None,
            Prioritizer,
            PrioritizerArgs {
                config: cfg.prioritizer.clone(),
                continent: cfg.node.continent.clone(),
                nodes: cfg.storage.nodes.clone(),
                policy: args.node_policy.clone(),
                client: args.client.clone(),
                snapshot: args.nodes.clone(),
                depth: depth.clone(),
                writer,
                supervisor: myself.clone(),
            },
            me.clone(),
        )
        .await?;
        names.insert(prioritizer.get_id(), "prioritizer");
        table.set("prioritizer", "running", None, Some(depth.clone()));
        let prioritizer_box =
            Mailbox::new(prioritizer.clone(), depth, prioritizer::MAILBOX_CAPACITY);

        let depth = Depth::new("flagger");
        let (flagger, _) = Actor::spawn_linked(
            None,
            Flagger,
            FlaggerArgs {
                max_inflight: cfg.supervisor.max_inflight_batches,
                depth: depth.clone(),
                prioritizer: prioritizer_box,
                supervisor: myself.clone(),
            },
            me.clone(),
        )
        .await?;
        names.insert(flagger.get_id(), "flagger");
        table.set("flagger", "running", None, Some(depth.clone()));
        let flagger_box = Mailbox::new(flagger.clone(), depth, flagger::MAILBOX_CAPACITY);

        let depth = Depth::new("dag_batcher");
        let (batcher, _) = Actor::spawn_linked(
            None,
            DagBatcher,
            BatcherArgs {
                config: cfg.batcher.clone(),
                city: cfg.node.city.clone().unwrap_or_default(),
                policy: args.flag_policy.clone(),
                depth: depth.clone(),
                flagger: flagger_box,
                supervisor: myself.clone(),
                next_seq: args.next_seq,
                recent: args.recent.clone(),
                store: args.index.store.clone(),
            },
            me.clone(),
        )
        .await?;
        names.insert(batcher.get_id(), "dag_batcher");
        table.set("dag_batcher", "running", None, Some(depth.clone()));
        let batcher_box = Mailbox::new(batcher, depth, dag_batcher::MAILBOX_CAPACITY);

        let depth = Depth::new("intake");
        let (intake, _) = Actor::spawn_linked(
            None,
            Intake,
            IntakeArgs {
                queue_capacity: cfg.intake.queue_capacity,
                sweep_after: cfg.intake.request_timeout * 2,
                index: args.index.clone(),
                depth: depth.clone(),
                batcher: batcher_box,
            },
            me.clone(),
        )
        .await?;
        names.insert(intake.get_id(), "intake");
        table.set("intake", "running", None, Some(depth.clone()));
        *args.intake_slot.write().expect("slot lock poisoned") = Some(Mailbox::new(
            intake.clone(),
            depth,
            intake::MAILBOX_CAPACITY,
        ));
        table.set("failover_supervisor", "running", None, None);

        Ok(SupervisorState {
            store: args.index.store.clone(),
            chain: args.chain,
            actors: args.actors,
            names,
            intake,
            flagger,
            prioritizer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::TierDone { job, index, result } => {
                if !result.observations.is_empty() {
                    let _ = state
                        .prioritizer
                        .cast(PrioritizerMsg::Observe(result.observations));
                }
                let tier = state
                    .chain
                    .get(index)
                    .expect("index is within the chain")
                    .tier();
                match result.outcome {
                    Ok(stored) => Self::complete(state, job, index, stored),
                    Err(reason) => {
                        metrics::counter!(crate::metrics::TIER_FAILURES, "tier" => tier.as_str())
                            .increment(1);
                        match state.chain.get(index + 1) {
                            Some(next) => {
                                tracing::warn!(
                                    batch = %hex::encode(job.sealed.id),
                                    failed = %tier,
                                    next = %next.tier(),
                                    %reason,
                                    "tier failed; trying the next"
                                );
                                let next = next.clone();
                                tokio::spawn(async move {
                                    let started = Instant::now();
                                    let result = next.store(&job).await;
                                    tracing::debug!(elapsed = ?started.elapsed(), "fallback tier answered");
                                    let _ = myself.cast(SupervisorMsg::TierDone {
                                        job,
                                        index: index + 1,
                                        result,
                                    });
                                });
                            }
                            None => {
                                tracing::error!(
                                    batch = %hex::encode(job.sealed.id),
                                    %reason,
                                    "every storage tier failed; the batch's transactions are refused"
                                );
                                metrics::counter!(crate::metrics::BATCHES_FAILED).increment(1);
                                let _ = state.intake.cast(IntakeMsg::Failed {
                                    tx_ids: job.sealed.tx_ids.clone(),
                                    reason: SubmitError::StorageUnavailable(reason),
                                });
                                let _ = state.flagger.cast(FlaggerMsg::Done);
                            }
                        }
                    }
                }
            }
            SupervisorMsg::Undeliverable {
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
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let name = state
                    .names
                    .get(&cell.get_id())
                    .copied()
                    .unwrap_or("unknown");
                tracing::error!(actor = name, error = %err, "actor failed; the node is no longer ready");
                state
                    .actors
                    .set(name, "failed", Some(err.to_string()), None);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let name = state
                    .names
                    .get(&cell.get_id())
                    .copied()
                    .unwrap_or("unknown");
                tracing::debug!(actor = name, ?reason, "actor stopped");
                state.actors.set(name, "stopped", None, None);
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .actors
            .set("failover_supervisor", "stopped", None, None);
        Ok(())
    }
}

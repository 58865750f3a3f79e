//! FailoverSupervisor: the root of a city node's supervision tree and the walker of the
//! storage-tier chain.
//!
//! On start it spawns the pipeline, linked to itself, from the end backwards so that each
//! actor is born knowing whom it feeds: StorageWriter, Prioritizer, Flagger, DagBatcher,
//! Intake. At run time:
//! - every tier result comes here ([`SupervisorMsg::TierDone`]). A durable batch has its
//!   record written to the city store, then is reported to the Intake (which answers the
//!   clients), the Flagger (one more batch may go) and the Prioritizer (what each node's
//!   write showed). A failed tier sends the whole batch to the next tier of the chain
//!   (light → full → mongo → log); when even the last fails, the clients get 503
//!   `storage_unavailable` and nothing is acknowledged.
//! - batches an actor could not pass on ([`SupervisorMsg::Undeliverable`]) are failed
//!   back to their clients, never dropped.
//! - an actor that fails is restarted by the `[supervisor]` policy, modelled on
//!   Erlang/OTP: a strategy (`one_for_one`, `one_for_all`, `rest_for_one`), a restart type
//!   per actor (`permanent`, `transient`, `temporary`), exponential backoff, and an
//!   intensity limit (`max_restarts` within `within`). Past the limit the supervisor gives
//!   up: the node reports not ready and exits non-zero instead of restarting in a loop.
//!   Restarted actors are reached through the same [`Mailbox`]es (re-pointed), and what
//!   the failed actor held is answered with 503 (dropped reply channels, the Intake's
//!   sweep), never silently lost; what was acknowledged is on disk and stays so.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;
use tokio::sync::Notify;

use super::dag_batcher::{self, BatcherArgs, BatcherMsg, DagBatcher};
use super::flagger::{self, FlagPolicy, Flagger, FlaggerArgs, FlaggerMsg};
use super::intake::{self, Intake, IntakeArgs, IntakeMsg, StatusIndex, SubmitError};
use super::mailbox::{Depth, Mailbox};
use super::prioritizer::{
    self, NodePolicy, NodesSnapshot, Prioritizer, PrioritizerArgs, PrioritizerMsg,
};
use super::repairer::{RepairArgs, RepairContext, RepairMsg, Repairer};
use super::storage_writer::{self, StorageWriter, WriterArgs, WriterMsg};
use crate::config::{Config, RestartType, Strategy};
use crate::messages::{FlagKind, SealedBatch, StoreJob, StoreOutcome, TxId};
use crate::storage::chain::TierChain;
use crate::storage::city_store::{BatchRecord, CityStore, TxRecord};
use crate::storage::peer::PeerClient;
use crate::storage::tier::TierResult;

/// The supervised actors, in start order (the end of the pipeline first).
pub const CHILDREN: [&str; 6] = [
    "storage_writer",
    "prioritizer",
    "repairer",
    "flagger",
    "dag_batcher",
    "intake",
];

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
    /// Set when the supervisor gave up; the node is not ready from then on.
    gave_up: RwLock<Option<String>>,
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

    fn restarted(&self, name: &str) {
        let mut entries = self.entries.write().expect("actor table lock poisoned");
        if let Some((v, _)) = entries.iter_mut().find(|(v, _)| v.name == name) {
            v.restarts += 1;
            v.status = "running".into();
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

    /// `Ok` while every actor runs; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self
            .gave_up
            .read()
            .expect("actor table lock poisoned")
            .clone()
        {
            return Err(reason);
        }
        let entries = self.entries.read().expect("actor table lock poisoned");
        match entries.iter().find(|(v, _)| v.status != "running") {
            None if !entries.is_empty() => Ok(()),
            None => Err("the pipeline has not started".into()),
            Some((v, _)) => Err(format!("actor {} is {}", v.name, v.status)),
        }
    }

    /// Why the supervisor gave up, if it did.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up
            .read()
            .expect("actor table lock poisoned")
            .clone()
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
    /// A backoff ended: start these actors again.
    Restart(Vec<&'static str>),
    /// Fault injection: make the named actor panic.
    Inject(String),
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
    /// Notified when the supervisor gives up; the node then exits non-zero.
    pub gave_up: Arc<Notify>,
}

/// The children's mailboxes: created at first start, re-pointed at every restart.
#[derive(Default)]
struct Boxes {
    writer: Option<Mailbox<WriterMsg>>,
    prioritizer: Option<Mailbox<PrioritizerMsg>>,
    flagger: Option<Mailbox<FlaggerMsg>>,
    batcher: Option<Mailbox<BatcherMsg>>,
    intake: Option<Mailbox<IntakeMsg>>,
    repairer: Option<ActorRef<RepairMsg>>,
}

impl Boxes {
    fn writer(&self) -> &Mailbox<WriterMsg> {
        self.writer.as_ref().expect("the writer has started")
    }
    fn prioritizer(&self) -> &Mailbox<PrioritizerMsg> {
        self.prioritizer
            .as_ref()
            .expect("the prioritizer has started")
    }
    fn flagger(&self) -> &Mailbox<FlaggerMsg> {
        self.flagger.as_ref().expect("the flagger has started")
    }
    fn batcher(&self) -> &Mailbox<BatcherMsg> {
        self.batcher.as_ref().expect("the batcher has started")
    }
    fn intake(&self) -> &Mailbox<IntakeMsg> {
        self.intake.as_ref().expect("the intake has started")
    }

    /// A new mailbox for a first start, or the existing one re-pointed at a restart.
    fn attach<M: ractor::Message>(
        slot: &mut Option<Mailbox<M>>,
        actor: ActorRef<M>,
        depth: Depth,
        capacity: usize,
    ) -> Mailbox<M> {
        match slot {
            Some(mailbox) => {
                mailbox.repoint(actor);
                mailbox.clone()
            }
            None => {
                let mailbox = Mailbox::new(actor, depth, capacity);
                *slot = Some(mailbox.clone());
                mailbox
            }
        }
    }
}

pub struct SupervisorState {
    args: SupervisorArgs,
    store: Arc<CityStore>,
    chain: TierChain,
    boxes: Boxes,
    names: HashMap<ActorId, &'static str>,
    /// When each recent restart happened, for the intensity limit.
    restarts: VecDeque<Instant>,
    /// Restarts per actor inside the current window, for its backoff.
    streak: HashMap<&'static str, u32>,
    /// Actors waiting out a backoff (their failures while waiting are not new failures).
    restarting: Vec<&'static str>,
}

impl FailoverSupervisor {
    /// Starts (or restarts) one child, wired to the others' mailboxes.
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: &'static str,
    ) -> Result<(), ActorProcessingErr> {
        let cfg = state.args.config.clone();
        let me: ActorCell = myself.get_cell();
        let id = match name {
            "storage_writer" => {
                let d = state
                    .boxes
                    .writer
                    .as_ref()
                    .map_or_else(|| Depth::new(name), |m| m.depth_handle());
                let (actor, _) = Actor::spawn_linked(
                    None,
                    StorageWriter,
                    WriterArgs {
                        first_tier: state
                            .chain
                            .get(0)
                            .expect("validated: the chain is not empty")
                            .clone(),
                        depth: d.clone(),
                        supervisor: myself.clone(),
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                Boxes::attach(
                    &mut state.boxes.writer,
                    actor,
                    d.clone(),
                    storage_writer::MAILBOX_CAPACITY,
                );
                state.args.actors.set(name, "running", None, Some(d));
                id
            }
            "prioritizer" => {
                let d = state
                    .boxes
                    .prioritizer
                    .as_ref()
                    .map_or_else(|| Depth::new(name), |m| m.depth_handle());
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Prioritizer,
                    PrioritizerArgs {
                        config: cfg.prioritizer.clone(),
                        continent: cfg.node.continent.clone(),
                        nodes: cfg.storage.nodes.clone(),
                        policy: state.args.node_policy.clone(),
                        client: state.args.client.clone(),
                        snapshot: state.args.nodes.clone(),
                        depth: d.clone(),
                        writer: state.boxes.writer().clone(),
                        supervisor: myself.clone(),
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                Boxes::attach(
                    &mut state.boxes.prioritizer,
                    actor,
                    d.clone(),
                    prioritizer::MAILBOX_CAPACITY,
                );
                state.args.actors.set(name, "running", None, Some(d));
                id
            }
            "repairer" => {
                if !cfg.repair.enabled {
                    return Ok(());
                }
                let context = RepairContext::from_config(
                    &cfg,
                    &state.chain,
                    state.store.clone(),
                    state.boxes.prioritizer().clone(),
                );
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Repairer,
                    RepairArgs {
                        context: Arc::new(context),
                        interval: cfg.repair.interval,
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                state.boxes.repairer = Some(actor);
                state.args.actors.set(name, "running", None, None);
                id
            }
            "flagger" => {
                let d = state
                    .boxes
                    .flagger
                    .as_ref()
                    .map_or_else(|| Depth::new(name), |m| m.depth_handle());
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Flagger,
                    FlaggerArgs {
                        max_inflight: cfg.supervisor.max_inflight_batches,
                        depth: d.clone(),
                        prioritizer: state.boxes.prioritizer().clone(),
                        supervisor: myself.clone(),
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                Boxes::attach(
                    &mut state.boxes.flagger,
                    actor,
                    d.clone(),
                    flagger::MAILBOX_CAPACITY,
                );
                state.args.actors.set(name, "running", None, Some(d));
                id
            }
            "dag_batcher" => {
                let d = state
                    .boxes
                    .batcher
                    .as_ref()
                    .map_or_else(|| Depth::new(name), |m| m.depth_handle());
                // Every start resumes from disk: past every reserved sequence number, on
                // the most recent durable batches.
                let (next_seq, recent) = state
                    .store
                    .resume_point(cfg.batcher.max_parents)
                    .map_err(|e| format!("reading the DAG resume point: {e}"))?;
                let (actor, _) = Actor::spawn_linked(
                    None,
                    DagBatcher,
                    BatcherArgs {
                        config: cfg.batcher.clone(),
                        city: cfg.node.city.clone().unwrap_or_default(),
                        policy: state.args.flag_policy.clone(),
                        depth: d.clone(),
                        flagger: state.boxes.flagger().clone(),
                        supervisor: myself.clone(),
                        next_seq,
                        recent,
                        store: state.store.clone(),
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                Boxes::attach(
                    &mut state.boxes.batcher,
                    actor,
                    d.clone(),
                    dag_batcher::MAILBOX_CAPACITY,
                );
                state.args.actors.set(name, "running", None, Some(d));
                id
            }
            "intake" => {
                let d = state
                    .boxes
                    .intake
                    .as_ref()
                    .map_or_else(|| Depth::new(name), |m| m.depth_handle());
                let (actor, _) = Actor::spawn_linked(
                    None,
                    Intake,
                    IntakeArgs {
                        queue_capacity: cfg.intake.queue_capacity,
                        sweep_after: cfg.intake.request_timeout * 2,
                        index: state.args.index.clone(),
                        depth: d.clone(),
                        batcher: state.boxes.batcher().clone(),
                    },
                    me,
                )
                .await?;
                let id = actor.get_id();
                let mailbox = Boxes::attach(
                    &mut state.boxes.intake,
                    actor,
                    d.clone(),
                    intake::MAILBOX_CAPACITY,
                );
                *state.args.intake_slot.write().expect("slot lock poisoned") = Some(mailbox);
                state.args.actors.set(name, "running", None, Some(d));
                id
            }
            other => unreachable!("{other} is not a child of the supervisor"),
        };
        state.names.insert(id, name);
        Ok(())
    }

    /// Applies the restart policy to a child that exited; `abnormal` for a panic or error.
    fn on_exit(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: &'static str,
        abnormal: bool,
        reason: String,
    ) {
        let sup = &state.args.config.supervisor;
        if state.restarting.contains(&name) {
            return;
        }
        let kind = sup
            .restart
            .get(name)
            .copied()
            .unwrap_or(RestartType::Permanent);
        let restart = match kind {
            RestartType::Permanent => true,
            RestartType::Transient => abnormal,
            RestartType::Temporary => false,
        };
        metrics::counter!(crate::metrics::ACTOR_FAILURES, "actor" => name).increment(1);
        if !restart {
            tracing::error!(actor = name, ?kind, %reason, "actor exited and is not restarted; the node is not ready");
            state.args.actors.set(name, "failed", Some(reason), None);
            return;
        }
        state
            .args
            .actors
            .set(name, "restarting", Some(reason.clone()), None);

        // Intensity: more than max_restarts within `within` and we give up.
        let now = Instant::now();
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > sup.within)
        {
            state.restarts.pop_front();
        }
        if state.restarts.is_empty() {
            state.streak.clear();
        }
        state.restarts.push_back(now);
        if state.restarts.len() > sup.max_restarts as usize {
            let why = format!(
                "supervisor gave up: {} restarts within {:?} (last: {name}: {reason})",
                state.restarts.len(),
                sup.within
            );
            tracing::error!("{why}");
            *state
                .args
                .actors
                .gave_up
                .write()
                .expect("actor table lock poisoned") = Some(why);
            state.args.gave_up.notify_one();
            return;
        }

        let group: Vec<&'static str> = match sup.strategy {
            Strategy::OneForOne => vec![name],
            Strategy::OneForAll => CHILDREN.to_vec(),
            Strategy::RestForOne => {
                let at = CHILDREN
                    .iter()
                    .position(|c| *c == name)
                    .expect("a known child");
                CHILDREN[at..].to_vec()
            }
        };
        // The others of the group stop now and start again with the failed one.
        for other in group.iter().filter(|c| **c != name) {
            state.restarting.push(other);
            state.args.actors.set(other, "restarting", None, None);
            Self::stop_child(state, other);
        }
        state.restarting.push(name);
        let streak = state.streak.entry(name).or_insert(0);
        let delay = sup
            .backoff_initial
            .mul_f64(sup.backoff_multiplier.powi(*streak as i32))
            .min(sup.backoff_max);
        *streak += 1;
        tracing::warn!(actor = name, ?delay, restart = ?group, "restarting after a failure");
        myself.send_after(delay, move || SupervisorMsg::Restart(group));
    }

    fn stop_child(state: &SupervisorState, name: &str) {
        let b = &state.boxes;
        let reason = Some("restarting with a failed sibling".to_string());
        match name {
            "storage_writer" => b.writer().actor().stop(reason),
            "prioritizer" => b.prioritizer().actor().stop(reason),
            "flagger" => b.flagger().actor().stop(reason),
            "dag_batcher" => b.batcher().actor().stop(reason),
            "intake" => b.intake().actor().stop(reason),
            "repairer" => {
                if let Some(r) = &b.repairer {
                    r.stop(reason)
                }
            }
            _ => {}
        }
    }

    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        names: &[&'static str],
    ) -> Result<(), ActorProcessingErr> {
        // In start order, so each actor's downstream is running before it.
        for name in CHILDREN.iter().filter(|c| names.contains(c)) {
            state.restarting.retain(|r| r != name);
            Self::start_child(myself, state, name).await?;
            state.args.actors.restarted(name);
            metrics::counter!(crate::metrics::ACTOR_RESTARTS, "actor" => *name).increment(1);
            tracing::info!(actor = *name, "actor restarted");
        }
        Ok(())
    }

    fn inject(state: &SupervisorState, name: &str) {
        if !state.args.config.supervisor.fault_injection {
            return;
        }
        tracing::warn!(actor = name, "injecting a panic");
        let b = &state.boxes;
        let _ = match name {
            "storage_writer" => b.writer().cast(WriterMsg::Panic).map_err(drop),
            "prioritizer" => b.prioritizer().cast(PrioritizerMsg::Panic).map_err(drop),
            "flagger" => b.flagger().cast(FlaggerMsg::Panic).map_err(drop),
            "dag_batcher" => b.batcher().cast(BatcherMsg::Panic).map_err(drop),
            "intake" => b.intake().cast(IntakeMsg::Panic).map_err(drop),
            "repairer" => match &b.repairer {
                Some(r) => r.cast(RepairMsg::Panic).map_err(drop),
                None => Ok(()),
            },
            _ => Ok(()),
        };
    }
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
        let intake = state.boxes.intake().clone();
        let flagger = state.boxes.flagger().clone();
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
        let mut state = SupervisorState {
            store: args.index.store.clone(),
            chain: args.chain.clone(),
            args,
            boxes: Boxes::default(),
            names: HashMap::new(),
            restarts: VecDeque::new(),
            streak: HashMap::new(),
            restarting: Vec::new(),
        };
        for name in CHILDREN {
            Self::start_child(&myself, &mut state, name).await?;
        }
        state
            .args
            .actors
            .set("failover_supervisor", "running", None, None);
        Ok(state)
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
                        .boxes
                        .prioritizer()
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
                                let _ = state.boxes.intake().cast(IntakeMsg::Failed {
                                    tx_ids: job.sealed.tx_ids.clone(),
                                    reason: SubmitError::StorageUnavailable(reason.to_string()),
                                });
                                let _ = state.boxes.flagger().cast(FlaggerMsg::Done);
                            }
                        }
                    }
                }
            }
            SupervisorMsg::Restart(names) => Self::restart(&myself, state, &names).await?,
            SupervisorMsg::Inject(name) => Self::inject(state, &name),
            SupervisorMsg::Undeliverable {
                tx_ids,
                reason,
                holds_credit,
            } => {
                tracing::warn!(txs = tx_ids.len(), %reason, "transactions could not be passed on");
                let _ = state
                    .boxes
                    .intake()
                    .cast(IntakeMsg::Failed { tx_ids, reason });
                if holds_credit {
                    let _ = state.boxes.flagger().cast(FlaggerMsg::Done);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, abnormal, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                (cell, reason != "normal", reason)
            }
            _ => return Ok(()),
        };
        // Only the current incarnation of a child matters; an old one we stopped on
        // purpose has been forgotten already.
        let Some(name) = state.names.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::error!(actor = name, %reason, "actor exited");
        Self::on_exit(&myself, state, name, abnormal, reason);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Front to back, so the Intake answers whoever still waits before the rest stops.
        state.names.clear();
        for name in CHILDREN.iter().rev() {
            if let Some(cell) = match *name {
                "intake" => state.boxes.intake.as_ref().map(|m| m.actor().get_cell()),
                "dag_batcher" => state.boxes.batcher.as_ref().map(|m| m.actor().get_cell()),
                "flagger" => state.boxes.flagger.as_ref().map(|m| m.actor().get_cell()),
                "prioritizer" => state
                    .boxes
                    .prioritizer
                    .as_ref()
                    .map(|m| m.actor().get_cell()),
                "repairer" => state.boxes.repairer.as_ref().map(|a| a.get_cell()),
                _ => state.boxes.writer.as_ref().map(|m| m.actor().get_cell()),
            } {
                let _ = cell
                    .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
            }
        }
        state
            .args
            .actors
            .set("failover_supervisor", "stopped", None, None);
        Ok(())
    }
}

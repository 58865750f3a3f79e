//! The city wing: the actor pipeline of a city node, its policies and its front door.
//!
//! ```text
//! HTTP ─▶ admission ─▶ Intake ─▶ DagBatcher ─▶ Flagger ─▶ Prioritizer ─▶ StorageWriter
//!           (checks)      ▲                       ▲            ▲               │ tier 0
//!                         │ Stored / Failed       │ Done       │ Observe       ▼
//!                         └──────────────────── Failover ◀─────┴──── (light → full → mongo → log)
//!                                           Repairer ─Place─▶ Prioritizer
//! ```
//!
//! - [`msgs`]: every message the actors exchange (the ground floor: it imports no actor).
//! - [`mailbox`]: bounded mailboxes that outlive the actors behind them.
//! - [`actors`]: one actor per file.
//! - [`supervisor`]: the FailoverSupervisor and its pure restart policy.
//! - [`flag_policy`], [`node_policy`]: the pluggable decisions, chosen by name in config.
//! - [`admission`]: checks on verified transactions, run on the HTTP blocking pool.
//! - [`status`]: the status index `GET /v1/tx` reads.
//! - [`activity`]: counts by tier and the recent transactions, for `GET /v1/status`.
//! - [`reads`]: the read path: a stored batch's body from the body cache or the tiers,
//!   opened with the city's read key.
//! - [`readiness`]: whether some storage tier works (`/readyz`).
//! - [`handle`]: the narrow [`CityHandle`] the HTTP layer uses.
//!
//! [`start`] below is the wiring: it creates every mailbox first, then describes each
//! child once in the supervisor's child table.

pub mod activity;
pub mod actors;
pub mod admission;
pub mod flag_policy;
pub mod handle;
pub mod mailbox;
pub mod msgs;
pub mod node_policy;
pub mod readiness;
pub mod reads;
pub mod status;
pub mod supervisor;

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;

use actors::dag_batcher::{BatcherArgs, DagBatcher};
use actors::failover::{Failover, FailoverArgs};
use actors::flagger::{Flagger, FlaggerArgs};
use actors::intake::{Intake, IntakeArgs};
use actors::prioritizer::{Prioritizer, PrioritizerArgs};
use actors::repairer::{RepairArgs, RepairContext, Repairer};
use actors::storage_writer::{StorageWriter, WriterArgs};
use actors::uplink::{Uplink, UplinkParts};
pub use handle::CityHandle;
use mailbox::{Depth, Mailbox};
use msgs::SupervisorMsg;
use supervisor::{ActorTable, Child, ChildSpec, FailoverSupervisor, SupervisorArgs};

use crate::config::{ActorName, Config};
use crate::storage::chain::TierChain;
use crate::storage::city_store::CityStore;

/// A running city pipeline.
pub struct City {
    pub handle: CityHandle,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub actors: Arc<ActorTable>,
    /// Notified when the supervisor gives up on the pipeline.
    pub gave_up: Arc<Notify>,
    /// Whether some storage tier works.
    pub storage_ready: readiness::TierReadiness,
}

/// Every actor's mailbox, created before any actor starts.
#[derive(Clone)]
struct Mailboxes {
    intake: Mailbox<msgs::IntakeMsg>,
    batcher: Mailbox<msgs::BatcherMsg>,
    flagger: Mailbox<msgs::FlaggerMsg>,
    prioritizer: Mailbox<msgs::PrioritizerMsg>,
    writer: Mailbox<msgs::WriterMsg>,
    failover: Mailbox<msgs::FailoverMsg>,
    repairer: Mailbox<msgs::RepairMsg>,
    uplink: Mailbox<msgs::UplinkMsg>,
    /// Sealed batches not yet durable, as the Flagger counts them: the DagBatcher holds a
    /// batch open while this is high ([`crate::config::BatcherConfig::busy_batches`]).
    /// Like the mailboxes, it outlives the actors.
    unfinished: Arc<std::sync::atomic::AtomicUsize>,
}

impl Mailboxes {
    fn new() -> Self {
        fn detached<M: ractor::Message>(name: ActorName, capacity: usize) -> Mailbox<M> {
            Mailbox::detached(Depth::new(name.as_str()), capacity)
        }
        use ActorName::*;
        Self {
            intake: detached(Intake, actors::intake::MAILBOX_CAPACITY),
            batcher: detached(DagBatcher, actors::dag_batcher::MAILBOX_CAPACITY),
            flagger: detached(Flagger, actors::flagger::MAILBOX_CAPACITY),
            prioritizer: detached(Prioritizer, actors::prioritizer::MAILBOX_CAPACITY),
            writer: detached(StorageWriter, actors::storage_writer::MAILBOX_CAPACITY),
            failover: detached(Failover, actors::failover::MAILBOX_CAPACITY),
            repairer: detached(Repairer, actors::repairer::MAILBOX_CAPACITY),
            uplink: detached(Uplink, actors::uplink::MAILBOX_CAPACITY),
            unfinished: Arc::default(),
        }
    }
}

/// Starts the city pipeline under its supervisor, on the tier chain (with its peer client,
/// node directory, MongoDB client and log) and the city store the node opened, with an
/// uplink to the continent when `uplink` is given, wrapping every batch's data key under
/// `read_key` as well; returns once every actor runs.
pub async fn start(
    config: Arc<Config>,
    chain: TierChain,
    store: Arc<CityStore>,
    uplink: Option<UplinkParts>,
    read_key: Arc<crate::crypto::vault::ReadKey>,
) -> anyhow::Result<City> {
    let boxes = Mailboxes::new();
    let index = Arc::new(status::StatusIndex::new(store.clone()));
    let nodes = node_policy::NodesSnapshot::default();
    let storage_ready = readiness::TierReadiness::new(&config, chain.clone(), nodes.clone());
    let flag_policy = flag_policy::policy_from_config(&config.flagger);
    let node_policy = node_policy::policy_from_config(&config.prioritizer);
    let place: Arc<dyn crate::engines::pop::PlaceEngine> =
        crate::engines::pop::build(&config.pop, config.node.city.as_deref().unwrap_or_default())
            .map_err(anyhow::Error::msg)?
            .into();
    let rewards = crate::engines::rewards::engine_from_config(&config.rewards);
    let objects = crate::engines::objects::engine_from_config(&config.objects);
    // Validation guarantees a city's [vault] has a current key that decodes.
    let sealer = config
        .vault
        .as_ref()
        .and_then(|v| v.sealer(&config.node.continent))
        .ok_or_else(|| anyhow::anyhow!("[vault] has no usable current key to seal batches for"))?
        // Every data key is wrapped for the city's own reads too (`reads`).
        .with_read_key(read_key);
    let b = &boxes;

    // The child table, in start order: each actor with what it waits for and whom it feeds.
    let mut children: Vec<Box<dyn Child>> = Vec::new();
    // Failover: tier results in; durable batches to the Intake, credits to the Flagger.
    children.push(ChildSpec::new(
        ActorName::Failover,
        || Failover,
        &b.failover,
        {
            let (b, chain, store) = (b.clone(), chain.clone(), store.clone());
            let rewards = rewards.clone();
            let objects = objects.clone();
            move || FailoverArgs {
                chain: chain.clone(),
                store: store.clone(),
                me: b.failover.clone(),
                intake: b.intake.clone(),
                flagger: b.flagger.clone(),
                prioritizer: b.prioritizer.clone(),
                rewards: rewards.clone(),
                objects: objects.clone(),
            }
        },
    ));
    // StorageWriter: placed batches in; each written to tier 0, the result to Failover.
    children.push(ChildSpec::new(
        ActorName::StorageWriter,
        || StorageWriter,
        &b.writer,
        {
            let (b, first) = (b.clone(), chain.get(0).expect("validated: a chain").clone());
            move || WriterArgs {
                first_tier: first.clone(),
                failover: b.failover.clone(),
            }
        },
    ));
    // Prioritizer: sealed batches in; placed batches to the StorageWriter.
    children.push(ChildSpec::new(
        ActorName::Prioritizer,
        || Prioritizer,
        &b.prioritizer,
        {
            let (b, cfg, nodes) = (b.clone(), config.clone(), nodes.clone());
            let client = chain.client().clone();
            let directory = chain.nodes().clone();
            let rewards = rewards.clone();
            let store = store.clone();
            move || PrioritizerArgs {
                config: cfg.prioritizer.clone(),
                light_fanout: cfg.storage.erasure.pieces(),
                continent: cfg.node.continent.clone(),
                nodes: directory.clone(),
                policy: node_policy.clone(),
                rewards: rewards.clone(),
                store: store.clone(),
                client: client.clone(),
                snapshot: nodes.clone(),
                writer: b.writer.clone(),
                failover: b.failover.clone(),
            }
        },
    ));
    // Repairer: its own rounds; placements asked of the Prioritizer.
    if config.repair.enabled {
        let context = Arc::new(RepairContext::from_config(
            &config,
            &chain,
            store.clone(),
            b.prioritizer.clone(),
            rewards.clone(),
            nodes.clone(),
        ));
        let interval = config.repair.interval;
        children.push(ChildSpec::new(
            ActorName::Repairer,
            || Repairer,
            &b.repairer,
            {
                move || RepairArgs {
                    context: context.clone(),
                    interval,
                }
            },
        ));
    }
    // Flagger: sealed batches in; released in flag order to the Prioritizer.
    children.push(ChildSpec::new(
        ActorName::Flagger,
        || Flagger,
        &b.flagger,
        {
            let (b, max_inflight) = (b.clone(), config.supervisor.max_inflight_batches);
            move || FlaggerArgs {
                max_inflight,
                prioritizer: b.prioritizer.clone(),
                failover: b.failover.clone(),
                unfinished: b.unfinished.clone(),
            }
        },
    ));
    // DagBatcher: admitted transactions in; sealed batches to the Flagger.
    children.push(ChildSpec::new(
        ActorName::DagBatcher,
        || DagBatcher,
        &b.batcher,
        {
            let (b, cfg, store) = (b.clone(), config.clone(), store.clone());
            let objects = objects.clone();
            move || BatcherArgs {
                objects: objects.clone(),
                config: cfg.batcher.clone(),
                city: cfg.node.city.clone().unwrap_or_default(),
                policy: flag_policy.clone(),
                flagger: b.flagger.clone(),
                failover: b.failover.clone(),
                unfinished: b.unfinished.clone(),
                store: store.clone(),
                sealer: sealer.clone(),
            }
        },
    ));
    // Intake: verified transactions in; admitted ones to the DagBatcher.
    children.push(ChildSpec::new(ActorName::Intake, || Intake, &b.intake, {
        let (b, cfg, index) = (b.clone(), config.clone(), index.clone());
        let objects = objects.clone();
        move || IntakeArgs {
            objects: objects.clone(),
            queue_capacity: cfg.intake.queue_capacity,
            sweep_after: cfg.intake.request_timeout * 2,
            index: index.clone(),
            batcher: b.batcher.clone(),
        }
    }));

    // Uplink: the city store's outbox (batches enter it with their records); certified
    // headers to the continent. Last, so that no other actor restarts with it.
    if let Some(parts) = uplink {
        children.push(ChildSpec::new(ActorName::Uplink, || Uplink, &b.uplink, {
            move || parts.args()
        }));
    }

    let actors = Arc::new(ActorTable::default());
    let gave_up = Arc::new(Notify::new());
    let (supervisor, _) = Actor::spawn(
        None,
        FailoverSupervisor,
        SupervisorArgs {
            name: supervisor::CITY_SUPERVISOR,
            children,
            config: config.supervisor.clone(),
            actors: actors.clone(),
            gave_up: gave_up.clone(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the city pipeline: {e}"))?;
    let handle = CityHandle::new(
        &config,
        place,
        boxes.intake,
        index,
        nodes,
        objects,
        config
            .supervisor
            .fault_injection
            .then(|| supervisor.clone()),
    );
    Ok(City {
        handle,
        supervisor,
        actors,
        gave_up,
        storage_ready,
    })
}

//! The federation wing: the continent and global roles as actor sets, under the same
//! supervisor as a city's pipeline.
//!
//! ```text
//! continent:  HTTP ─verify─▶ Merger ──(continent batch: log + index, fsynced)──▶ outbox ─▶ Uplink ─▶ global
//!                                                                   └──▶ Approver ─▶ representatives (votes)
//! global:     HTTP ─verify─▶ Collector ──(log + index, fsynced)
//!                            Checkpointer ──(every interval: signed root of the log, into the log)
//! ```
//!
//! - [`msgs`]: the messages of these actors (imports no actor).
//! - [`actors`]: the Merger, the Collector and the Checkpointer.
//! - [`verify`]: what a continent checks of a city's batch and the global node of a
//!   continent's (allow-lists, signatures, certificates), and the entries' Merkle tree.
//! - [`dpos`]: the continent's side of DPoS approval (the engine's rules over its store),
//!   shared by the Approver and the HTTP layer.
//! - [`proof`]: the inclusion proof from a city batch to a checkpoint, and its check.
//!
//! [`start_continent`] and [`start_global`] are the wiring: mailboxes first, then the
//! child table.

pub mod actors;
pub mod dpos;
pub mod msgs;
pub mod proof;
pub mod verify;

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;

use crate::city::actors::uplink::{Uplink, UplinkParts};
use crate::city::mailbox::{Depth, Mailbox};
use crate::city::msgs::{SupervisorMsg, UplinkMsg};
use crate::city::supervisor::{ActorTable, Child, ChildSpec, FailoverSupervisor, SupervisorArgs};
use crate::config::{ActorName, Config};
use crate::crypto::SigningKey;
use crate::storage::continent_store::ContinentStore;
use crate::storage::global_store::GlobalStore;
use actors::approver::{Approver, ApproverArgs};
use actors::checkpointer::{Checkpointer, CheckpointerArgs};
use actors::collector::{Collector, CollectorArgs};
use actors::merger::{Merger, MergerArgs, StoreHealth};
use msgs::{ApproverMsg, CheckpointerMsg, CollectorMsg, MergerMsg};

/// The name of a continent's supervisor in its actor table.
pub const CONTINENT_SUPERVISOR: &str = "continent_supervisor";
/// The name of the global node's supervisor in its actor table.
pub const GLOBAL_SUPERVISOR: &str = "global_supervisor";

/// A running actor set (continent or global).
pub struct Level<M: ractor::Message> {
    /// Where the HTTP layer sends verified batches: the Merger or the Collector.
    pub entry: Mailbox<M>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub actors: Arc<ActorTable>,
    /// Notified when the supervisor gives up.
    pub gave_up: Arc<Notify>,
    /// Why the last write to the log failed, while no later one succeeded.
    pub health: StoreHealth,
}

fn detached<M: ractor::Message>(name: ActorName, capacity: usize) -> Mailbox<M> {
    Mailbox::detached(Depth::new(name.as_str()), capacity)
}

async fn supervise<M: ractor::Message>(
    name: &'static str,
    config: &Config,
    children: Vec<Box<dyn Child>>,
    entry: Mailbox<M>,
    health: StoreHealth,
) -> anyhow::Result<Level<M>> {
    let actors = Arc::new(ActorTable::default());
    let gave_up = Arc::new(Notify::new());
    let (supervisor, _) = Actor::spawn(
        None,
        FailoverSupervisor,
        SupervisorArgs {
            name,
            children,
            config: config.supervisor.clone(),
            actors: actors.clone(),
            gave_up: gave_up.clone(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the {name}: {e}"))?;
    Ok(Level {
        entry,
        supervisor,
        actors,
        gave_up,
        health,
    })
}

/// Starts a continent's actors: the Merger over its store, the Uplink to the global node
/// when `uplink` is given, and the Approver when `dpos` runs an engine.
pub async fn start_continent(
    config: Arc<Config>,
    key: Arc<SigningKey>,
    store: Arc<ContinentStore>,
    uplink: Option<UplinkParts>,
    dpos: Arc<dpos::DposBook>,
) -> anyhow::Result<Level<MergerMsg>> {
    let merger: Mailbox<MergerMsg> = detached(ActorName::Merger, actors::merger::MAILBOX_CAPACITY);
    let uplink_box: Mailbox<UplinkMsg> = detached(
        ActorName::Uplink,
        crate::city::actors::uplink::MAILBOX_CAPACITY,
    );
    let approver: Mailbox<ApproverMsg> =
        detached(ActorName::Approver, actors::approver::MAILBOX_CAPACITY);
    let health = StoreHealth::default();
    let sequencer = Arc::new(tokio::sync::Mutex::new(()));
    let mut children: Vec<Box<dyn Child>> = Vec::new();
    // Merger: verified city batches in; continent batches to the log and the outbox.
    children.push(ChildSpec::new(ActorName::Merger, || Merger, &merger, {
        let (cfg, health, key) = (config.clone(), health.clone(), key.clone());
        move || MergerArgs {
            config: cfg.continent.clone(),
            continent: cfg.node.continent.clone(),
            node_id: cfg.node.id.clone(),
            key: key.clone(),
            store: store.clone(),
            sequencer: sequencer.clone(),
            health: health.clone(),
        }
    }));
    // Uplink: the outbox in; continent batches to the global node.
    if let Some(parts) = uplink {
        children.push(ChildSpec::new(ActorName::Uplink, || Uplink, &uplink_box, {
            move || parts.args()
        }));
    }
    // Approver: durable continent batches in; proposals to the representatives, their
    // votes to the store. Approval gates nothing the other two do.
    if dpos.enabled() {
        children.push(ChildSpec::new(
            ActorName::Approver,
            || Approver,
            &approver,
            {
                let cfg = config.clone();
                move || ApproverArgs {
                    config: cfg.dpos.clone(),
                    node_id: cfg.node.id.clone(),
                    key: key.clone(),
                    book: dpos.clone(),
                }
            },
        ));
    }
    supervise(CONTINENT_SUPERVISOR, &config, children, merger, health).await
}

/// Starts the global node's actors: the Collector and the Checkpointer over its store.
pub async fn start_global(
    config: Arc<Config>,
    key: Arc<SigningKey>,
    store: Arc<GlobalStore>,
) -> anyhow::Result<Level<CollectorMsg>> {
    let collector: Mailbox<CollectorMsg> =
        detached(ActorName::Collector, actors::collector::MAILBOX_CAPACITY);
    let checkpointer: Mailbox<CheckpointerMsg> = detached(
        ActorName::Checkpointer,
        actors::checkpointer::MAILBOX_CAPACITY,
    );
    let health = StoreHealth::default();
    let mut children: Vec<Box<dyn Child>> = Vec::new();
    // Collector: verified continent batches in; to the log.
    children.push(ChildSpec::new(
        ActorName::Collector,
        || Collector,
        &collector,
        {
            let (store, health) = (store.clone(), health.clone());
            move || CollectorArgs {
                store: store.clone(),
                health: health.clone(),
            }
        },
    ));
    // Checkpointer: its own timer; signed checkpoints to the log.
    children.push(ChildSpec::new(
        ActorName::Checkpointer,
        || Checkpointer,
        &checkpointer,
        {
            let (cfg, health) = (config.clone(), health.clone());
            let sequencer = Arc::new(tokio::sync::Mutex::new(()));
            move || CheckpointerArgs {
                interval: cfg.global.checkpoint_interval,
                key: key.clone(),
                store: store.clone(),
                sequencer: sequencer.clone(),
                health: health.clone(),
            }
        },
    ));
    supervise(GLOBAL_SUPERVISOR, &config, children, collector, health).await
}

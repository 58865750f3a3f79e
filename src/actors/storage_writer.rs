//! StorageWriter: writes each placed batch to the first tier of the chain.
//!
//! Receives [`StoreJob`]s from the Prioritizer. For each it starts one task that writes the
//! batch to the first tier (the light nodes, in parallel, collecting and verifying signed
//! proof-of-hold acks until `min_light_acks` are in or the tier's deadline passes), then
//! reports the result to the FailoverSupervisor, which completes the batch or walks it down
//! the chain. The actor itself never waits on the network, so one slow batch never holds
//! up the next.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::failover_supervisor::SupervisorMsg;
use super::mailbox::Depth;
use crate::messages::StoreJob;
use crate::storage::tier::StorageTier;

/// Mailbox capacity (batches).
pub const MAILBOX_CAPACITY: usize = 4096;

pub enum WriterMsg {
    Write(StoreJob),
    /// Fault injection (`[supervisor] fault_injection`): the actor panics.
    Panic,
}

pub struct StorageWriter;

pub struct WriterArgs {
    pub first_tier: Arc<dyn StorageTier>,
    pub depth: Depth,
    pub supervisor: ActorRef<SupervisorMsg>,
}

impl Actor for StorageWriter {
    type Msg = WriterMsg;
    type State = WriterArgs;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WriterArgs,
    ) -> Result<WriterArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: WriterMsg,
        state: &mut WriterArgs,
    ) -> Result<(), ActorProcessingErr> {
        let job = match msg {
            WriterMsg::Write(job) => job,
            WriterMsg::Panic => panic!("fault injected into storage_writer"),
        };
        state.depth.taken();
        let tier = state.first_tier.clone();
        let supervisor = state.supervisor.clone();
        tokio::spawn(async move {
            let result = tier.store(&job).await;
            // If the supervisor is gone the node is shutting down; the Intake answers the
            // waiting clients on its way out.
            let _ = supervisor.cast(SupervisorMsg::TierDone {
                job,
                index: 0,
                result,
            });
        });
        Ok(())
    }
}

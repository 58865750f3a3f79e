//! StorageWriter: writes each placed batch to the first tier of the chain.
//!
//! Receives [`StoreJob`](crate::messages::StoreJob)s from the Prioritizer. For each it starts one task that writes the
//! batch to the first tier (the light nodes, in parallel, collecting and verifying signed
//! proof-of-hold acks until `min_light_acks` are in or the tier's deadline passes), then
//! reports the result to the Failover actor, which completes the batch or walks it down the
//! chain. The actor itself never waits on the network, so one slow batch never holds
//! up the next.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::Mailbox;
use crate::city::msgs::{FailoverMsg, WriterMsg};
use crate::storage::tier::StorageTier;

/// Mailbox capacity (batches).
pub const MAILBOX_CAPACITY: usize = 4096;

pub struct StorageWriter;

pub struct WriterArgs {
    pub first_tier: Arc<dyn StorageTier>,
    pub failover: Mailbox<FailoverMsg>,
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
        let tier = state.first_tier.clone();
        let failover = state.failover.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            metrics::histogram!(crate::metrics::STAGE_LATENCY, "stage" => "queue")
                .record(started.duration_since(job.sealed.sealed_at).as_secs_f64());
            let result = tier.store(&job).await;
            metrics::histogram!(crate::metrics::STAGE_LATENCY, "stage" => "first_tier")
                .record(started.elapsed().as_secs_f64());
            // Through the mailbox, so a restarted Failover actor still hears it. If it is
            // gone for good the node is stopping; the Intake answers the waiting clients.
            let _ = failover.cast(FailoverMsg::TierDone {
                job,
                index: 0,
                result,
            });
        });
        Ok(())
    }
}

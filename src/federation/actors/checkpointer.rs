//! Checkpointer (global): signs a checkpoint over the global node's log at a fixed interval.
//!
//! Every `[global] checkpoint_interval` ([`CheckpointerMsg::Tick`]) it looks at the log's
//! Merkle tree: if records other than its own last checkpoint were added since that one,
//! it signs a [`Checkpoint`] (the next number, the tree's size and root, the time, the hash
//! of the previous checkpoint) and a task appends it to the same log
//! ([`CheckpointerMsg::Done`]). A checkpoint covers every record before it, earlier
//! checkpoints included, so checkpoints form a chain inside the tree they sign; the
//! inclusion proof of anything the log holds is the log's own Merkle proof. One checkpoint
//! is written at a time, and the actor never waits on the disk.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::merger::StoreHealth;
use crate::crypto::SigningKey;
use crate::federation::msgs::CheckpointerMsg;
use crate::messages::federation::{Checkpoint, SignedCheckpoint};
use crate::messages::now_ms;
use crate::storage::global_store::GlobalStore;

/// Mailbox capacity: timer ticks and one report at a time.
pub const MAILBOX_CAPACITY: usize = 64;

pub struct Checkpointer;

pub struct CheckpointerArgs {
    pub interval: Duration,
    pub key: Arc<SigningKey>,
    pub store: Arc<GlobalStore>,
    /// Held by the task writing a checkpoint; a restarted Checkpointer takes it before it
    /// reads the last checkpoint, so it never numbers one twice.
    pub sequencer: Arc<tokio::sync::Mutex<()>>,
    pub health: StoreHealth,
}

pub struct CheckpointerState {
    args: CheckpointerArgs,
    /// The last checkpoint written: (number, log size it covers, its hash).
    last: Option<(u64, u64, [u8; 32])>,
    /// The number of the checkpoint being written.
    in_flight: Option<u64>,
    timer: ractor::concurrency::JoinHandle<()>,
}

impl Checkpointer {
    fn tick(myself: &ActorRef<CheckpointerMsg>, state: &mut CheckpointerState) {
        if state.in_flight.is_some() {
            return;
        }
        let (size, root) = state.args.store.log().tree_head();
        // Past the last checkpoint's size there is its own record; anything more is new.
        let grown = match state.last {
            None => size > 0,
            Some((_, covered, _)) => size > covered + 1,
        };
        if !grown {
            return;
        }
        let checkpoint = Checkpoint {
            seq: state.last.map_or(0, |(seq, _, _)| seq + 1),
            size,
            root,
            time_ms: now_ms(),
            prev: state.last.map_or([0; 32], |(_, _, hash)| hash),
        };
        let signed = match SignedCheckpoint::sign(&state.args.key, checkpoint) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "signing a checkpoint failed");
                return;
            }
        };
        let seq = signed.checkpoint.seq;
        state.in_flight = Some(seq);
        let (store, me, sequencer) = (
            state.args.store.clone(),
            myself.clone(),
            state.args.sequencer.clone(),
        );
        tokio::spawn(async move {
            let _turn = sequencer.lock().await;
            let result = store
                .append_checkpoint(&signed)
                .await
                .map(|at| (signed, at))
                .map_err(|e| e.to_string());
            let _ = me.cast(CheckpointerMsg::Done { seq, result });
        });
    }

    fn done(
        state: &mut CheckpointerState,
        seq: u64,
        result: Result<(SignedCheckpoint, u64), String>,
    ) {
        if state.in_flight != Some(seq) {
            return;
        }
        state.in_flight = None;
        let mut health = state
            .args
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok((signed, record_index)) => {
                *health = None;
                let cp = &signed.checkpoint;
                metrics::counter!(crate::metrics::CHECKPOINTS).increment(1);
                tracing::info!(
                    seq = cp.seq,
                    size = cp.size,
                    root = %crate::messages::hex32(&cp.root),
                    record_index,
                    "checkpoint written"
                );
                state.last = Some((cp.seq, cp.size, signed.hash()));
            }
            Err(e) => {
                tracing::error!(error = %e, "a checkpoint could not be written");
                *health = Some(e);
            }
        }
    }
}

impl Actor for Checkpointer {
    type Msg = CheckpointerMsg;
    type State = CheckpointerState;
    type Arguments = CheckpointerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CheckpointerArgs,
    ) -> Result<CheckpointerState, ActorProcessingErr> {
        let last = {
            let _turn = args.sequencer.lock().await;
            let store = args.store.clone();
            tokio::task::spawn_blocking(move || store.latest_checkpoint()).await??
        };
        let timer = myself.send_interval(args.interval, || CheckpointerMsg::Tick);
        Ok(CheckpointerState {
            last: last.map(|info| {
                let cp = &info.signed.checkpoint;
                (cp.seq, cp.size, info.signed.hash())
            }),
            args,
            in_flight: None,
            timer,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: CheckpointerMsg,
        state: &mut CheckpointerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CheckpointerMsg::Tick => Self::tick(&myself, state),
            CheckpointerMsg::Done { seq, result } => Self::done(state, seq, result),
            CheckpointerMsg::Panic => panic!("fault injected into checkpointer"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut CheckpointerState,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }
}

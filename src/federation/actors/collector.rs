//! Collector (global): takes the continent batches its continents forward into the global
//! node's log.
//!
//! Receives verified continent batches from the HTTP layer ([`CollectorMsg::Submit`]). One
//! already in the log is answered at once with its record (a retried submission); one
//! being written gets the same answer as the first request for it; a new one is appended
//! to the log and indexed by a task of its own ([`GlobalStore::append_batch`]), and every
//! request waiting for it is answered once both are fsynced ([`CollectorMsg::Stored`]).
//! The continent forgets a batch only after that answer, so nothing is lost whichever of
//! the two is killed. The actor never waits on the disk.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::merger::StoreHealth;
use crate::crypto::Hash32;
use crate::federation::msgs::{CollectorMsg, NotDurable, ReceiveResult, Received};
use crate::messages::federation::SignedContinentBatch;
use crate::storage::global_store::GlobalStore;

/// Mailbox capacity (continent batches waiting to be stored).
pub const MAILBOX_CAPACITY: usize = 4096;

pub struct Collector;

pub struct CollectorArgs {
    pub store: Arc<GlobalStore>,
    pub health: StoreHealth,
}

pub struct CollectorState {
    args: CollectorArgs,
    /// Everyone waiting for a continent batch being written.
    waiting: HashMap<Hash32, Vec<oneshot::Sender<ReceiveResult>>>,
}

impl Collector {
    fn submit(
        myself: &ActorRef<CollectorMsg>,
        state: &mut CollectorState,
        batch: SignedContinentBatch,
        reply: oneshot::Sender<ReceiveResult>,
    ) {
        let id = batch.id();
        if let Some(waiters) = state.waiting.get_mut(&id) {
            waiters.push(reply);
            return;
        }
        match state.args.store.continent_batch(&id) {
            Ok(Some(info)) => {
                metrics::counter!(crate::metrics::CONTINENT_BATCHES_RECEIVED, "outcome" => "duplicate")
                    .increment(1);
                let _ = reply.send(Ok(Received {
                    record_index: info.record_index,
                    duplicate: true,
                }));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = reply.send(Err(NotDurable::Index(e.to_string())));
                return;
            }
        }
        state.waiting.insert(id, vec![reply]);
        let (store, me) = (state.args.store.clone(), myself.clone());
        tokio::spawn(async move {
            let result = store.append_batch(&batch).await.map_err(|e| e.to_string());
            let _ = me.cast(CollectorMsg::Stored { id, result });
        });
    }

    fn stored(state: &mut CollectorState, id: Hash32, result: Result<u64, String>) {
        let waiters = state.waiting.remove(&id).unwrap_or_default();
        let mut health = state
            .args
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(record_index) => {
                *health = None;
                metrics::counter!(crate::metrics::CONTINENT_BATCHES_RECEIVED, "outcome" => "received")
                    .increment(1);
                for w in waiters {
                    let _ = w.send(Ok(Received {
                        record_index,
                        duplicate: false,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(continent_batch = %crate::messages::hex32(&id), error = %e, "a continent batch could not be stored; its continent will send it again");
                *health = Some(e.clone());
                for w in waiters {
                    let _ = w.send(Err(NotDurable::Storage(e.clone())));
                }
            }
        }
    }
}

impl Actor for Collector {
    type Msg = CollectorMsg;
    type State = CollectorState;
    type Arguments = CollectorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CollectorArgs,
    ) -> Result<CollectorState, ActorProcessingErr> {
        Ok(CollectorState {
            args,
            waiting: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: CollectorMsg,
        state: &mut CollectorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CollectorMsg::Submit { batch, reply } => Self::submit(&myself, state, batch, reply),
            CollectorMsg::Stored { id, result } => Self::stored(state, id, result),
            CollectorMsg::Panic => panic!("fault injected into collector"),
        }
        Ok(())
    }
}

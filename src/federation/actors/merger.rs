//! Merger (continent): merges the city batches its cities forward into continent batches.
//!
//! Receives verified city batches from the HTTP layer ([`MergerMsg::Submit`]), each with the
//! channel its request waits on. A batch already merged is answered at once with where it
//! is (a retried submission); a new one joins the open continent batch. The open batch
//! closes when it holds `[continent] max_entries` city batches or `[continent] window`
//! after its first one arrived: its entries are sorted by city and sequence number (so a
//! city's batches follow their DAG parents), their Merkle root goes into a header that
//! names the previous continent batch as its parent (the continent's own chain), the
//! continent signs it, and a task appends it, with every city batch's certificate, to the
//! continent's immutable log and index ([`ContinentStore`]). Only when that is fsynced are
//! the waiting requests answered (and the batch enters the outbox for the global node), so
//! whatever a city was told is merged survives any crash; whatever it was not told, it
//! sends again.
//!
//! One continent batch is stored at a time, so sequence numbers and parents follow the log;
//! city batches arriving meanwhile wait in the next one. The actor never waits on the disk:
//! the append is a task that reports back ([`MergerMsg::Stored`]) to the incarnation that
//! started it (a successor resumes from the index, after the task's append).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::config::ContinentConfig;
use crate::crypto::{Hash32, SigningKey};
use crate::federation::msgs::{MergeResult, Merged, MergerMsg, NotDurable};
use crate::federation::verify::entries_root;
use crate::messages::federation::{
    CertifiedBatch, ContinentBatch, ContinentBatchHeader, ContinentEntry, ContinentRecord,
    SignedContinentBatch,
};
use crate::messages::{BatchId, now_ms};
use crate::storage::continent_store::ContinentStore;

/// Mailbox capacity (city batches waiting to be merged).
pub const MAILBOX_CAPACITY: usize = 16 * 1024;

/// Why the continent's last write failed, while no later one succeeded (`/readyz`).
pub type StoreHealth = Arc<Mutex<Option<String>>>;

pub struct Merger;

pub struct MergerArgs {
    pub config: ContinentConfig,
    pub continent: String,
    pub node_id: String,
    pub key: Arc<SigningKey>,
    pub store: Arc<ContinentStore>,
    /// Held by the task storing a continent batch; a restarted Merger takes it before it
    /// reads where the sequence resumes, so it never reuses the number of a batch still
    /// being written by its predecessor's task.
    pub sequencer: Arc<tokio::sync::Mutex<()>>,
    pub health: StoreHealth,
}

/// The continent batch being written.
struct InFlight {
    seq: u64,
    id: Hash32,
    entries: Vec<BatchId>,
}

pub struct MergerState {
    args: MergerArgs,
    next_seq: u64,
    parent: Option<Hash32>,
    /// City batches of the open continent batch, in arrival order.
    open: Vec<CertifiedBatch>,
    opened_at: Option<Instant>,
    /// The open batch's window timer; a tick of another generation is stale.
    generation: u64,
    in_flight: Option<InFlight>,
    /// Everyone waiting for a city batch that is open or being written.
    waiting: HashMap<BatchId, Vec<oneshot::Sender<MergeResult>>>,
}

impl Merger {
    fn submit(
        myself: &ActorRef<MergerMsg>,
        state: &mut MergerState,
        batch: CertifiedBatch,
        reply: oneshot::Sender<MergeResult>,
    ) {
        let id = batch.id();
        if let Some(waiters) = state.waiting.get_mut(&id) {
            waiters.push(reply);
            return;
        }
        // One page-cached B-tree lookup: a retry of what is merged is answered from disk.
        match state.args.store.city_batch(&id) {
            Ok(Some(place)) => {
                metrics::counter!(crate::metrics::CITY_BATCHES_RECEIVED, "outcome" => "duplicate")
                    .increment(1);
                let _ = reply.send(Ok(Merged {
                    continent_batch_id: place.continent_batch_id,
                    continent_seq: place.continent_seq,
                    entry_index: place.entry_index,
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
        state.open.push(batch);
        if state.open.len() == 1 {
            state.opened_at = Some(Instant::now());
            state.generation += 1;
            let generation = state.generation;
            myself.send_after(state.args.config.window, move || {
                MergerMsg::Tick(generation)
            });
        }
        if state.open.len() >= state.args.config.max_entries {
            Self::close(myself, state);
        }
    }

    fn due(state: &MergerState) -> bool {
        !state.open.is_empty()
            && (state.open.len() >= state.args.config.max_entries
                || state
                    .opened_at
                    .is_some_and(|t| t.elapsed() >= state.args.config.window))
    }

    /// Closes the open continent batch and starts storing it, unless one is being stored.
    fn close(myself: &ActorRef<MergerMsg>, state: &mut MergerState) {
        if state.in_flight.is_some() || state.open.is_empty() {
            return;
        }
        let take = state.open.len().min(state.args.config.max_entries);
        let mut certified: Vec<CertifiedBatch> = state.open.drain(..take).collect();
        if state.open.is_empty() {
            state.opened_at = None;
        }
        // A city's batches in sequence order follow their parents.
        certified.sort_by(|a, b| {
            (&a.header.city_id, a.header.seq).cmp(&(&b.header.city_id, b.header.seq))
        });
        let entries: Vec<ContinentEntry> = certified
            .iter()
            .map(|c| ContinentEntry {
                header: c.header.clone(),
                tier: c.certificate.tier,
            })
            .collect();
        let header = ContinentBatchHeader {
            continent: state.args.continent.clone(),
            seq: state.next_seq,
            parents: state.parent.into_iter().collect(),
            entries_root: entries_root(&entries),
            entry_count: entries.len() as u32,
            created_at_ms: now_ms(),
        };
        let ids: Vec<BatchId> = certified.iter().map(CertifiedBatch::id).collect();
        let batch = ContinentBatch { header, entries };
        let seq = batch.header.seq;
        let signed = match SignedContinentBatch::sign(&state.args.key, &state.args.node_id, batch) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "signing a continent batch failed; its city batches are not merged");
                for id in &ids {
                    for w in state.waiting.remove(id).unwrap_or_default() {
                        let _ = w.send(Err(NotDurable::Storage(format!("signing: {e}"))));
                    }
                }
                return;
            }
        };
        state.in_flight = Some(InFlight {
            seq,
            id: signed.id(),
            entries: ids,
        });
        let record = ContinentRecord {
            batch: signed,
            certified,
        };
        let (store, me, sequencer) = (
            state.args.store.clone(),
            myself.clone(),
            state.args.sequencer.clone(),
        );
        tokio::spawn(async move {
            let _turn = sequencer.lock().await;
            let result = store.append(&record).await.map_err(|e| e.to_string());
            let _ = me.cast(MergerMsg::Stored { seq, result });
        });
    }

    fn stored(
        myself: &ActorRef<MergerMsg>,
        state: &mut MergerState,
        seq: u64,
        result: Result<u64, String>,
    ) {
        let Some(flight) = state.in_flight.take_if(|f| f.seq == seq) else {
            return;
        };
        match result {
            Ok(record_index) => {
                *state
                    .args
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                metrics::counter!(crate::metrics::CONTINENT_BATCHES).increment(1);
                metrics::counter!(crate::metrics::CITY_BATCHES_RECEIVED, "outcome" => "merged")
                    .increment(flight.entries.len() as u64);
                tracing::debug!(
                    seq,
                    record_index,
                    entries = flight.entries.len(),
                    "continent batch stored"
                );
                for (i, id) in flight.entries.iter().enumerate() {
                    for w in state.waiting.remove(id).unwrap_or_default() {
                        let _ = w.send(Ok(Merged {
                            continent_batch_id: flight.id,
                            continent_seq: seq,
                            entry_index: i as u32,
                            duplicate: false,
                        }));
                    }
                }
                state.next_seq = seq + 1;
                state.parent = Some(flight.id);
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "a continent batch could not be stored; its cities will send its city batches again");
                *state
                    .args
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
                for id in &flight.entries {
                    for w in state.waiting.remove(id).unwrap_or_default() {
                        let _ = w.send(Err(NotDurable::Storage(e.clone())));
                    }
                }
            }
        }
        if Self::due(state) {
            Self::close(myself, state);
        }
    }
}

impl Actor for Merger {
    type Msg = MergerMsg;
    type State = MergerState;
    type Arguments = MergerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MergerArgs,
    ) -> Result<MergerState, ActorProcessingErr> {
        let (next_seq, parent) = {
            let _turn = args.sequencer.lock().await;
            let store = args.store.clone();
            tokio::task::spawn_blocking(move || store.resume_point()).await??
        };
        Ok(MergerState {
            args,
            next_seq,
            parent,
            open: Vec::new(),
            opened_at: None,
            generation: 0,
            in_flight: None,
            waiting: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: MergerMsg,
        state: &mut MergerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MergerMsg::Submit { batch, reply } => Self::submit(&myself, state, batch, reply),
            MergerMsg::Tick(generation) => {
                if generation == state.generation && Self::due(state) {
                    Self::close(&myself, state);
                }
            }
            MergerMsg::Stored { seq, result } => Self::stored(&myself, state, seq, result),
            MergerMsg::Panic => panic!("fault injected into merger"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::city::mailbox::{Bounded, Depth};
    use crate::messages::federation::Certificate;
    use crate::messages::{Batch, FlagKind, Tier};
    use crate::storage::immutable_log::ImmutableLog;

    fn certified(key: &SigningKey, seq: u64) -> CertifiedBatch {
        let header = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &[], seq).header;
        let cert = Certificate {
            tier: Tier::Log,
            holders: vec![],
            acks: vec![],
        };
        CertifiedBatch::sign(key, header, cert).unwrap()
    }

    async fn merger(
        store: Arc<ContinentStore>,
        max_entries: usize,
        window: Duration,
    ) -> ActorRef<MergerMsg> {
        let depth = Depth::new("merger");
        let args = MergerArgs {
            config: ContinentConfig {
                window,
                max_entries,
            },
            continent: "asia".into(),
            node_id: "continent-asia".into(),
            key: Arc::new(SigningKey::from_seed([5; 32]).unwrap()),
            store,
            sequencer: Arc::default(),
            health: StoreHealth::default(),
        };
        let (actor, _) = Actor::spawn(None, Bounded(Merger), (args, depth))
            .await
            .unwrap();
        actor
    }

    fn submit(
        actor: &ActorRef<MergerMsg>,
        batch: CertifiedBatch,
    ) -> oneshot::Receiver<MergeResult> {
        let (reply, answer) = oneshot::channel();
        actor.cast(MergerMsg::Submit { batch, reply }).unwrap();
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_close_on_size_or_window_chain_and_resume_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        let store = Arc::new(ContinentStore::open(dir.path(), 1 << 20, log).unwrap());
        let city = SigningKey::from_seed([6; 32]).unwrap();
        let actor = merger(store.clone(), 3, Duration::from_secs(3600)).await;

        // Full at three: closed at once, entries in sequence order whatever the arrival.
        let answers: Vec<_> = [2, 0, 1]
            .into_iter()
            .map(|seq| submit(&actor, certified(&city, seq)))
            .collect();
        let mut first = Vec::new();
        for a in answers {
            first.push(a.await.unwrap().unwrap());
        }
        assert!(first.iter().all(|m| m.continent_seq == 0 && !m.duplicate));
        assert_eq!(
            first.iter().map(|m| m.entry_index).collect::<Vec<_>>(),
            vec![2, 0, 1]
        );
        // A retry is answered from the index.
        let again = submit(&actor, certified(&city, 0)).await.unwrap().unwrap();
        assert!(again.duplicate);
        assert_eq!(again.continent_batch_id, first[1].continent_batch_id);
        actor.stop(None);

        // A restarted Merger resumes the sequence and the chain; a lone batch closes on
        // its window.
        let actor = merger(store.clone(), 3, Duration::from_millis(50)).await;
        let started = Instant::now();
        let lone = submit(&actor, certified(&city, 3)).await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(lone.continent_seq, 1);
        let (info, global) = store
            .continent_batch(&lone.continent_batch_id)
            .unwrap()
            .unwrap();
        assert_eq!(info.header.parents, vec![first[0].continent_batch_id]);
        assert!(global.is_none());
        let pending: Vec<u64> = store.pending(10).unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(pending, vec![0, 1], "both wait for the global node");
        let record = store.record(info.record_index).unwrap();
        assert_eq!(record.certified.len(), 1);
        assert_eq!(
            crate::federation::verify::entries_root(&record.batch.batch.entries),
            info.header.entries_root
        );
        actor.stop(None);
    }
}

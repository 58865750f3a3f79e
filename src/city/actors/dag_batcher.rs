//! DagBatcher: groups transactions into batches and links every batch into the city's DAG.
//!
//! Receives verified transactions from the Intake. A batch closes when it reaches
//! `max_batch_txs` or `max_batch_bytes`, when an `immediate` transaction joins it, or when
//! its window ends. The window adapts to load: a lone transaction waits only `min_delay`
//! (nobody else is coming), while under load the window widens towards `max_delay` so
//! batches fill. A batch of only `deferred` transactions waits up to `deferred_delay`.
//! Each batch names up to `max_parents` of the city's most recent batches as parents.
//! Sealed batches go to the Flagger.
//!
//! Inside a batch, transactions keep the order they were added in, which is the order the
//! Intake admitted them (its mailbox to this actor is FIFO and this actor never reorders):
//! the order is deterministic, and the batch records the object dependency edges between
//! them (`engines::objects`) so that a reader replays the same order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::flag_policy::FlagPolicy;
use crate::city::mailbox::{Mailbox, SendError};
use crate::city::msgs::{BatcherMsg, FailoverMsg, FlaggerMsg, SubmitError, Unavailable};
use crate::config::BatcherConfig;
use crate::engines::objects::{BatchEntry, EdgeTracker, ObjectEngine};
use crate::messages::TxId;
use crate::messages::{Batch, BatchId, FlagKind, SealedBatch, Sealer, SignedTx, Urgency, now_ms};
use crate::storage::city_store::{CityStore, SEQ_BLOCK};

/// Mailbox capacity (transactions).
pub const MAILBOX_CAPACITY: usize = 16_384;

/// How often the arrival-rate estimate is refreshed.
const RATE_PERIOD: Duration = Duration::from_millis(50);

pub struct DagBatcher;

pub struct BatcherArgs {
    pub config: BatcherConfig,
    pub city: String,
    pub policy: Arc<dyn FlagPolicy>,
    pub flagger: Mailbox<FlaggerMsg>,
    pub failover: Mailbox<FailoverMsg>,
    /// Sealed batches not yet finished, as the Flagger counts them.
    pub unfinished: Arc<std::sync::atomic::AtomicUsize>,
    /// Where sequence numbers are reserved before use, and where every start resumes the
    /// DAG from: past every reserved number, on the most recent durable batches.
    pub store: Arc<CityStore>,
    /// Seals every batch for the continent's key holder before it goes anywhere.
    pub sealer: Sealer,
    /// The object rules: the dependency edges each batch records.
    pub objects: Arc<dyn ObjectEngine>,
}

pub struct BatcherState {
    args: BatcherArgs,
    open: Vec<SignedTx>,
    /// Per open transaction, the durable last writers of its objects (from the Intake).
    open_prior: Vec<Vec<(String, TxId)>>,
    /// The last writer and readers of each object, across the batches sealed since start.
    edges: EdgeTracker,
    open_bytes: usize,
    open_flag: FlagKind,
    open_urgency: Urgency,
    first_arrival: Option<Instant>,
    opened_at: Option<tokio::time::Instant>,
    deadline: Option<tokio::time::Instant>,
    generation: u64,
    seq: u64,
    /// Sequence numbers below this are reserved on disk.
    reserved: u64,
    recent: VecDeque<BatchId>,
    rate: RateEstimate,
}

/// Arrivals per second, smoothed.
struct RateEstimate {
    period_start: tokio::time::Instant,
    count: u32,
    per_sec: f64,
}

impl RateEstimate {
    fn new() -> Self {
        Self {
            period_start: tokio::time::Instant::now(),
            count: 0,
            per_sec: 0.0,
        }
    }

    fn arrival(&mut self) {
        let now = tokio::time::Instant::now();
        let elapsed = now - self.period_start;
        if elapsed >= RATE_PERIOD {
            let sample = self.count as f64 / elapsed.as_secs_f64();
            // Idle gaps decay the estimate quickly: a long gap is one long, empty sample.
            self.per_sec = 0.5 * self.per_sec + 0.5 * sample;
            self.period_start = now;
            self.count = 0;
        }
        self.count += 1;
    }
}

/// Approximate bytes a transaction adds to a batch.
fn tx_bytes(tx: &SignedTx) -> usize {
    tx.canonical.len() + tx.public_key.len() + tx.signature.len() + 8
}

impl BatcherState {
    /// The batching window for the open batch's urgency at the current load.
    fn window(&self) -> Duration {
        let c = &self.args.config;
        match self.open_urgency {
            Urgency::Immediate => Duration::ZERO,
            Urgency::Deferred => c.deferred_delay,
            Urgency::Normal => {
                let expected = self.rate.per_sec * c.max_delay.as_secs_f64();
                let fill = ((expected - 1.0) / 7.0).clamp(0.0, 1.0);
                c.min_delay + (c.max_delay - c.min_delay).mul_f64(fill)
            }
        }
    }
}

impl BatcherState {
    /// Whether a batch whose window ended stays open because the pipeline is busy, and
    /// when to look again: only normal-urgency batches, while at least `busy_batches`
    /// sealed batches are unfinished, until `busy_max_delay` after the batch opened.
    fn hold(&self) -> Option<Duration> {
        let c = &self.args.config;
        let busy = c.busy_batches > 0
            && self
                .args
                .unfinished
                .load(std::sync::atomic::Ordering::Relaxed)
                >= c.busy_batches;
        if !busy || self.open_urgency != Urgency::Normal {
            return None;
        }
        let opened = self.opened_at?;
        let left =
            (opened + c.busy_max_delay).saturating_duration_since(tokio::time::Instant::now());
        // Never a zero delay: a timer that fires at once would spin.
        (!left.is_zero()).then(|| left.min(c.min_delay.max(Duration::from_millis(1))))
    }
}

impl DagBatcher {
    async fn add(
        myself: &ActorRef<BatcherMsg>,
        state: &mut BatcherState,
        tx: SignedTx,
        arrived: Instant,
        prior: Vec<(String, TxId)>,
    ) {
        state.rate.arrival();
        let flag = state.args.policy.compute_flag(&tx.tx);
        if state.open.is_empty() {
            state.open_urgency = flag.urgency;
            state.open_flag = flag.kind;
            state.first_arrival = Some(arrived);
            state.opened_at = Some(tokio::time::Instant::now());
        } else {
            state.open_urgency = state.open_urgency.max(flag.urgency);
            if flag.kind.priority() > state.open_flag.priority() {
                state.open_flag = flag.kind;
            }
        }
        state.open_bytes += tx_bytes(&tx);
        state.open.push(tx);
        state.open_prior.push(prior);

        let c = &state.args.config;
        if state.open_urgency == Urgency::Immediate
            || state.open.len() >= c.max_batch_txs
            || state.open_bytes >= c.max_batch_bytes
        {
            Self::close(state).await;
            return;
        }
        let opened = state.opened_at.expect("an open batch has an opening time");
        let deadline = opened + state.window();
        if state.deadline.is_none_or(|d| deadline < d) {
            state.deadline = Some(deadline);
            state.generation += 1;
            let generation = state.generation;
            let delay = deadline.saturating_duration_since(tokio::time::Instant::now());
            myself.send_after(delay, move || BatcherMsg::Tick(generation));
        }
    }

    async fn close(state: &mut BatcherState) {
        let txs = std::mem::take(&mut state.open);
        let prior = std::mem::take(&mut state.open_prior);
        state.open_bytes = 0;
        state.deadline = None;
        state.opened_at = None;
        state.generation += 1;
        let first_arrival = state.first_arrival.take().unwrap_or_else(Instant::now);
        if state.seq >= state.reserved {
            let upto = state.seq + SEQ_BLOCK;
            // An fsync, once every SEQ_BLOCK batches: on the blocking pool, not this thread.
            let store = state.args.store.clone();
            let refused = match tokio::task::spawn_blocking(move || store.reserve_seq(upto)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reserving batch sequence numbers failed");
                    Some(SubmitError::StorageUnavailable(Unavailable::Reservation(
                        Arc::new(e),
                    )))
                }
                // The runtime is stopping under us.
                Err(_) => Some(SubmitError::ShuttingDown),
            };
            if let Some(reason) = refused {
                // Without a reservation a restart could reuse this number; refuse the batch.
                let tx_ids = Arc::new(txs.iter().map(|t| t.id).collect());
                let _ = state.args.failover.cast(FailoverMsg::Undeliverable {
                    tx_ids,
                    reason,
                    holds_credit: false,
                });
                return;
            }
            state.reserved = upto;
        }
        let parents: Vec<BatchId> = state.recent.iter().rev().copied().collect();
        let entries: Vec<BatchEntry<'_>> = txs
            .iter()
            .zip(&prior)
            .map(|(t, prior)| BatchEntry {
                id: t.id,
                objects: t.tx.objects.as_deref().unwrap_or_default(),
                prior,
            })
            .collect();
        let deps = state.args.objects.edges(&mut state.edges, &entries);
        let batch = Batch::build_with_deps(
            &state.args.city,
            state.seq,
            parents,
            state.open_flag,
            &txs,
            deps,
            now_ms(),
        );
        let tx_ids: Vec<_> = txs.iter().map(|t| t.id).collect();
        metrics::histogram!(crate::metrics::BATCH_SIZE).record(tx_ids.len() as f64);
        let sealed = match SealedBatch::new(
            batch,
            tx_ids,
            state.open_urgency,
            first_arrival,
            &state.args.sealer,
        ) {
            Ok(sealed) => sealed,
            Err(e) => {
                // Only the crypto library failing gets here; nothing leaves unsealed.
                tracing::error!(error = %e, "sealing a batch failed; its transactions are refused");
                let _ = state.args.failover.cast(FailoverMsg::Undeliverable {
                    tx_ids: Arc::new(txs.iter().map(|t| t.id).collect()),
                    reason: SubmitError::StorageUnavailable(Unavailable::Seal(Arc::new(e))),
                    holds_credit: false,
                });
                return;
            }
        };
        metrics::histogram!(crate::metrics::STAGE_LATENCY, "stage" => "batch")
            .record(sealed.sealed_at.duration_since(first_arrival).as_secs_f64());
        state.seq += 1;
        state.recent.push_back(sealed.id);
        while state.recent.len() > state.args.config.max_parents {
            state.recent.pop_front();
        }
        if let Err(e) = state.args.flagger.try_send(FlaggerMsg::Sealed(sealed)) {
            let reason = match &e {
                SendError::Full(_) => SubmitError::Overloaded(state.args.flagger.depth()),
                SendError::Closed(_) => SubmitError::ShuttingDown,
            };
            let FlaggerMsg::Sealed(sealed) = e.into_inner() else {
                unreachable!("we sent Sealed")
            };
            let _ = state.args.failover.cast(FailoverMsg::Undeliverable {
                tx_ids: sealed.tx_ids,
                reason,
                holds_credit: false,
            });
        }
    }
}

impl Actor for DagBatcher {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BatcherArgs,
    ) -> Result<BatcherState, ActorProcessingErr> {
        let store = args.store.clone();
        let parents = args.config.max_parents;
        let (next_seq, recent) = tokio::task::spawn_blocking(move || store.resume_point(parents))
            .await?
            .map_err(|e| format!("reading the DAG resume point: {e}"))?;
        if next_seq > 0 {
            tracing::info!(
                next_seq,
                parents = recent.len(),
                "resuming the batch DAG from disk"
            );
        }
        Ok(BatcherState {
            seq: next_seq,
            reserved: next_seq,
            recent: recent.into_iter().collect(),
            args,
            open: Vec::new(),
            open_prior: Vec::new(),
            edges: EdgeTracker::default(),
            open_bytes: 0,
            open_flag: FlagKind::SystemTx,
            open_urgency: Urgency::Deferred,
            first_arrival: None,
            opened_at: None,
            deadline: None,
            generation: 0,
            rate: RateEstimate::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: BatcherMsg,
        state: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Add { tx, arrived, prior } => {
                Self::add(&myself, state, tx, arrived, prior).await
            }
            BatcherMsg::Panic => panic!("fault injected into dag_batcher"),
            BatcherMsg::Tick(generation) => {
                if generation == state.generation && !state.open.is_empty() {
                    if let Some(poll) = state.hold() {
                        // Still busy: look again shortly, with the same generation.
                        myself.send_after(poll, move || BatcherMsg::Tick(generation));
                    } else {
                        Self::close(state).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        // An open batch on shutdown is sealed and handed on rather than lost.
        if !state.open.is_empty() {
            Self::close(state).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::flag_policy::policy_from_config;
    use crate::city::mailbox::Depth;
    use crate::config::FlaggerConfig;
    use crate::crypto::SigningKey;
    use crate::testkit::{recorder, signed_tx};
    use tokio::sync::mpsc::UnboundedReceiver;

    struct Harness {
        batcher: ActorRef<BatcherMsg>,
        unfinished: Arc<std::sync::atomic::AtomicUsize>,
        sealed: UnboundedReceiver<FlaggerMsg>,
        key: SigningKey,
        nonce: u64,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start(config: BatcherConfig) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (flagger, sealed) = recorder::<FlaggerMsg>().await;
            let (failover, _) = recorder::<FailoverMsg>().await;
            let unfinished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (batcher, _) = Actor::spawn(
                None,
                DagBatcher,
                BatcherArgs {
                    config,
                    city: "tokyo".into(),
                    policy: policy_from_config(&FlaggerConfig {
                        immediate_amount: 1_000_000,
                        ..FlaggerConfig::default()
                    }),
                    flagger: Mailbox::new(flagger, Depth::new("test_flagger"), 64),
                    failover: Mailbox::new(failover, Depth::new("test_failover"), 64),
                    unfinished: unfinished.clone(),
                    store: Arc::new(CityStore::open(dir.path()).unwrap()),
                    sealer: crate::testkit::sealer(),
                    objects: crate::engines::objects::engine_from_config(&Default::default()),
                },
            )
            .await
            .unwrap();
            Self {
                batcher,
                unfinished,
                sealed,
                key: SigningKey::from_seed([9; 32]).unwrap(),
                nonce: 0,
                _dir: dir,
            }
        }

        fn send(&mut self, kind: FlagKind, amount: u64) {
            self.nonce += 1;
            let tx = signed_tx(&self.key, self.nonce, kind, amount);
            self.batcher
                .cast(BatcherMsg::Add {
                    tx,
                    arrived: Instant::now(),
                    prior: Vec::new(),
                })
                .unwrap();
        }

        /// The next sealed batch and the (paused, auto-advancing) time it took to come.
        async fn next(&mut self) -> (SealedBatch, Duration) {
            let start = tokio::time::Instant::now();
            match self.sealed.recv().await.expect("the batcher is alive") {
                FlaggerMsg::Sealed(b) => (b, start.elapsed()),
                _ => panic!("the batcher only sends Sealed"),
            }
        }
    }

    fn config(max_txs: usize, min: u64, max: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch_txs: max_txs,
            min_delay: Duration::from_millis(min),
            max_delay: Duration::from_millis(max),
            deferred_delay: Duration::from_millis(200),
            ..BatcherConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closes_on_size_without_waiting_for_the_window() {
        let mut h = Harness::start(config(3, 1000, 1000)).await;
        for _ in 0..3 {
            h.send(FlagKind::FreshTx, 10);
        }
        let (batch, waited) = h.next().await;
        assert_eq!(batch.batch.header.tx_count, 3);
        assert!(
            waited < Duration::from_millis(1000),
            "closed by size, not time: {waited:?}"
        );
        assert_eq!(batch.batch.header.seq, 0);
        assert!(batch.batch.header.parents.is_empty());
        batch.batch.check_integrity().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn closes_on_bytes() {
        let mut cfg = config(1000, 1000, 1000);
        // One ML-DSA-65 transaction is over 5 KB with its key and signature.
        cfg.max_batch_bytes = 12_000;
        let mut h = Harness::start(cfg).await;
        for _ in 0..3 {
            h.send(FlagKind::FreshTx, 10);
        }
        let (batch, waited) = h.next().await;
        assert_eq!(batch.batch.header.tx_count, 3);
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_transaction_closes_on_the_short_window() {
        let mut h = Harness::start(config(100, 2, 50)).await;
        h.send(FlagKind::FreshTx, 10);
        let (batch, waited) = h.next().await;
        assert_eq!(batch.batch.header.tx_count, 1);
        assert!(
            waited >= Duration::from_millis(2) && waited < Duration::from_millis(50),
            "light load uses min_delay: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_pipeline_holds_the_open_batch_until_it_frees_or_busy_max_delay() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cfg = config(100, 2, 50);
        cfg.busy_batches = 4;
        cfg.busy_max_delay = Duration::from_millis(30);
        let mut h = Harness::start(cfg).await;

        // Busy throughout: the batch stays open past its 2 ms window, gathers what comes
        // meanwhile, and closes at busy_max_delay.
        h.unfinished.store(4, Relaxed);
        h.send(FlagKind::FreshTx, 10);
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.send(FlagKind::FreshTx, 10);
        let (batch, waited) = h.next().await;
        assert_eq!(
            batch.batch.header.tx_count, 2,
            "held open, it took the second"
        );
        assert!(
            waited >= Duration::from_millis(19) && waited < Duration::from_millis(25),
            "closed at busy_max_delay after opening: {waited:?} after the second"
        );

        // Busy, then free: it closes within a poll of the pipeline freeing.
        h.send(FlagKind::FreshTx, 10);
        let freed = tokio::spawn({
            let unfinished = h.unfinished.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(8)).await;
                unfinished.store(3, Relaxed);
            }
        });
        let (batch, waited) = h.next().await;
        freed.await.unwrap();
        assert_eq!(batch.batch.header.tx_count, 1);
        assert!(
            waited >= Duration::from_millis(8) && waited < Duration::from_millis(12),
            "closed once the pipeline freed: {waited:?}"
        );

        // Not busy: the ordinary window.
        h.send(FlagKind::FreshTx, 10);
        let (_, waited) = h.next().await;
        assert!(waited < Duration::from_millis(5), "{waited:?}");

        // Immediate transactions are never held.
        h.unfinished.store(100, Relaxed);
        h.send(FlagKind::FreshTx, 1_000_000);
        let (_, waited) = h.next().await;
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn immediate_closes_at_once_and_deferred_waits() {
        let mut h = Harness::start(config(100, 5, 10)).await;
        h.send(FlagKind::FreshTx, 5_000_000);
        let (batch, waited) = h.next().await;
        assert_eq!(waited, Duration::ZERO, "a large amount is written at once");
        assert_eq!(batch.urgency, Urgency::Immediate);

        h.send(FlagKind::SystemTx, 1);
        let (batch, waited) = h.next().await;
        assert!(
            waited >= Duration::from_millis(200),
            "system txs may wait: {waited:?}"
        );
        assert_eq!(batch.flag(), FlagKind::SystemTx);

        // A normal transaction joining a deferred batch pulls its deadline in.
        h.send(FlagKind::SystemTx, 1);
        h.send(FlagKind::FreshTx, 1);
        let (batch, waited) = h.next().await;
        assert_eq!(batch.batch.header.tx_count, 2);
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        assert_eq!(
            batch.flag(),
            FlagKind::FreshTx,
            "the batch takes its highest flag"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_link_to_their_predecessors() {
        let mut h = Harness::start(config(1, 1, 1)).await;
        let mut ids = Vec::new();
        for seq in 0..4u64 {
            h.send(FlagKind::FreshTx, 10);
            let (batch, _) = h.next().await;
            assert_eq!(batch.batch.header.seq, seq);
            let parents = &batch.batch.header.parents;
            match seq {
                0 => assert!(parents.is_empty()),
                1 => assert_eq!(parents, &vec![ids[0]]),
                _ => assert_eq!(parents, &vec![ids[seq as usize - 1], ids[seq as usize - 2]]),
            }
            ids.push(batch.id);
        }
    }
}

//! DagBatcher: groups transactions into batches and links every batch into the city's DAG.
//!
//! Receives verified transactions from the Intake. A batch closes when it reaches
//! `max_batch_txs` or `max_batch_bytes`, when an `immediate` transaction joins it, or when
//! its window ends. The window adapts to load: a lone transaction waits only `min_delay`
//! (nobody else is coming), while under load the window widens towards `max_delay` so
//! batches fill. A batch of only `deferred` transactions waits up to `deferred_delay`.
//! Each batch names up to `max_parents` of the city's most recent batches as parents.
//! Sealed batches go to the Flagger.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::failover_supervisor::SupervisorMsg;
use super::flagger::{FlagPolicy, FlaggerMsg};
use super::intake::SubmitError;
use super::mailbox::{Depth, Mailbox, SendError};
use crate::config::BatcherConfig;
use crate::messages::{Batch, BatchId, FlagKind, SealedBatch, SignedTx, Urgency, now_ms};

/// Mailbox capacity (transactions).
pub const MAILBOX_CAPACITY: usize = 16_384;

/// How often the arrival-rate estimate is refreshed.
const RATE_PERIOD: Duration = Duration::from_millis(50);

#[allow(clippy::large_enum_variant)] // Add is the common case; Tick is rare and small.
pub enum BatcherMsg {
    Add {
        tx: SignedTx,
        arrived: Instant,
    },
    /// The window of the batch opened in generation `.0` has ended.
    Tick(u64),
}

pub struct DagBatcher;

pub struct BatcherArgs {
    pub config: BatcherConfig,
    pub city: String,
    pub policy: Arc<dyn FlagPolicy>,
    pub depth: Depth,
    pub flagger: Mailbox<FlaggerMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Sequence number of the next batch (0 on a new city).
    pub next_seq: u64,
    /// The most recent batch ids, oldest first, to parent the next batch on.
    pub recent: Vec<BatchId>,
}

pub struct BatcherState {
    args: BatcherArgs,
    open: Vec<SignedTx>,
    open_bytes: usize,
    open_flag: FlagKind,
    open_urgency: Urgency,
    first_arrival: Option<Instant>,
    opened_at: Option<tokio::time::Instant>,
    deadline: Option<tokio::time::Instant>,
    generation: u64,
    seq: u64,
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

impl DagBatcher {
    fn add(
        myself: &ActorRef<BatcherMsg>,
        state: &mut BatcherState,
        tx: SignedTx,
        arrived: Instant,
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

        let c = &state.args.config;
        if state.open_urgency == Urgency::Immediate
            || state.open.len() >= c.max_batch_txs
            || state.open_bytes >= c.max_batch_bytes
        {
            Self::close(state);
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

    fn close(state: &mut BatcherState) {
        let txs = std::mem::take(&mut state.open);
        state.open_bytes = 0;
        state.deadline = None;
        state.opened_at = None;
        state.generation += 1;
        let first_arrival = state.first_arrival.take().unwrap_or_else(Instant::now);
        let parents: Vec<BatchId> = state.recent.iter().rev().copied().collect();
        let batch = Batch::build(
            &state.args.city,
            state.seq,
            parents,
            state.open_flag,
            &txs,
            now_ms(),
        );
        let tx_ids: Vec<_> = txs.iter().map(|t| t.id).collect();
        metrics::histogram!(crate::metrics::BATCH_SIZE).record(tx_ids.len() as f64);
        let sealed = SealedBatch::new(batch, tx_ids, state.open_urgency, first_arrival);
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
            let _ = state.args.supervisor.cast(SupervisorMsg::Undeliverable {
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
        let recent = args.recent.iter().copied().collect();
        Ok(BatcherState {
            seq: args.next_seq,
            recent,
            args,
            open: Vec::new(),
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
            BatcherMsg::Add { tx, arrived } => {
                state.args.depth.taken();
                Self::add(&myself, state, tx, arrived);
            }
            BatcherMsg::Tick(generation) => {
                if generation == state.generation && !state.open.is_empty() {
                    Self::close(state);
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
            Self::close(state);
        }
        Ok(())
    }
}

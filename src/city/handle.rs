//! The city as the HTTP layer sees it: admit and submit a transaction, read statuses,
//! storage nodes and the supervision tree, inject a fault. Nothing of the actors' insides
//! leaks past this handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::oneshot;

use super::activity::ActivityView;
use super::admission::{IntakeLimits, check_policy, check_request};
use super::mailbox::{Mailbox, SendError};
use super::msgs::{IntakeMsg, Receipt, SubmitError, SubmitResult, SupervisorMsg};
use super::node_policy::{NodeView, NodesSnapshot};
use super::status::{StatusIndex, TxView};
use crate::config::{ActorName, Config};
use crate::engines::objects::ObjectEngine;
use crate::engines::pop::PlaceEngine;
use crate::messages::{BatchId, ObjectHead, ParsedTx, SignedTx, TxId, TxValidationError, now_ms};
use crate::storage::city_store::{BatchRecord, CityStoreError, UplinkState};

/// Why a request was refused before it reached the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Shed before a signature verification is spent on it.
    #[error("intake queue is full")]
    QueueFull,
    #[error(transparent)]
    Invalid(#[from] TxValidationError),
    /// The status index could not be read.
    #[error(transparent)]
    Index(#[from] CityStoreError),
}

/// What admission made of a request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // New is the common case; boxing it would cost an allocation per request.
pub enum Admitted {
    /// A transaction for the Intake.
    New(SignedTx),
    /// A transaction already durable: its receipt, marked as a duplicate.
    Known(Receipt),
}

/// Why a fault could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("fault injection is disabled")]
    Disabled,
    #[error("no actor {0:?}")]
    UnknownActor(String),
    #[error("the supervisor is not running")]
    SupervisorDown,
}

/// A cheap, cloneable handle on a running city pipeline.
#[derive(Clone)]
pub struct CityHandle {
    limits: IntakeLimits,
    request_timeout: Duration,
    intake: Mailbox<IntakeMsg>,
    index: Arc<StatusIndex>,
    nodes: NodesSnapshot,
    /// Present only with `[supervisor] fault_injection`.
    supervisor: Option<ActorRef<SupervisorMsg>>,
    /// Transactions admitted and not yet answered, and the most there may be
    /// (`[intake] queue_capacity`).
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// The object rules, for the declaration check before the signature.
    objects: Arc<dyn ObjectEngine>,
}

/// One of the `[intake] queue_capacity` places of a transaction admitted and not yet
/// answered; the place is free again when this is dropped (after the answer, whichever
/// way the request ends).
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(crate::metrics::TX_IN_FLIGHT).decrement(1.0);
    }
}

impl CityHandle {
    pub(super) fn new(
        config: &Config,
        place: Arc<dyn PlaceEngine>,
        intake: Mailbox<IntakeMsg>,
        index: Arc<StatusIndex>,
        nodes: NodesSnapshot,
        objects: Arc<dyn ObjectEngine>,
        supervisor: Option<ActorRef<SupervisorMsg>>,
    ) -> Self {
        Self {
            limits: IntakeLimits {
                city: config.node.city.clone().unwrap_or_default(),
                continent: config.node.continent.clone(),
                max_clock_skew: config.intake.max_clock_skew,
                max_payload_bytes: config.intake.max_payload_bytes,
                place,
            },
            request_timeout: config.intake.request_timeout,
            intake,
            index,
            nodes,
            supervisor,
            in_flight: Arc::default(),
            max_in_flight: config.intake.queue_capacity,
            objects,
        }
    }

    /// Takes a place for one more transaction, before any work is spent on it (signature
    /// checks included), or refuses at once with [`SubmitError::Overloaded`] when
    /// `[intake] queue_capacity` transactions are admitted and not yet answered. This is
    /// what turns a flood into quick 503s: the pipeline is never asked to hold more than it
    /// can answer within the request timeout.
    pub fn enter(&self) -> Result<InFlight, SubmitError> {
        let max = self.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(SubmitError::Overloaded)?;
        metrics::gauge!(crate::metrics::TX_IN_FLIGHT).increment(1.0);
        Ok(InFlight(self.in_flight.clone()))
    }

    /// Parses, verifies and checks a `POST /v1/tx` body, in the order of
    /// [`admission`](super::admission). Blocking (an ML-DSA-65 check): the HTTP layer runs
    /// it on its blocking pool, so checks spread over threads and the event loops stay free.
    pub fn admit(&self, body: &[u8]) -> Result<Admitted, AdmitError> {
        if self.intake.depth() >= self.intake.capacity() {
            return Err(AdmitError::QueueFull);
        }
        let parsed = ParsedTx::parse(body)?;
        check_request(&parsed)?;
        if let Some(objects) = &parsed.tx.objects {
            self.objects
                .validate(objects)
                .map_err(|e| TxValidationError::InvalidObjects(e.to_string()))?;
        }
        let tx = parsed.verify()?;
        // Known before the clock is looked at: a re-submission is answered however long
        // ago the transaction was stored. One whose batch the log lost is not stored any
        // more: it goes through as new.
        if let Some(rec) = self.index.store.get_tx(&tx.id)?
            && !rec.lost
        {
            return Ok(Admitted::Known(Receipt::of_stored(tx.id, &rec)));
        }
        check_policy(&tx, &self.limits, now_ms())?;
        Ok(Admitted::New(tx))
    }

    /// Hands an admitted transaction to the Intake and waits, at most `request_timeout`,
    /// until it is durable or refused.
    pub async fn submit(&self, tx: SignedTx, arrived: Instant) -> SubmitResult {
        let (reply, answer) = oneshot::channel();
        self.intake
            .try_send(IntakeMsg::Submit { tx, arrived, reply })
            .map_err(|e| match e {
                SendError::Full(_) => SubmitError::QueueFull,
                SendError::Closed(_) => SubmitError::ShuttingDown,
            })?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            // The Intake went away with the reply channel: it failed (and is being
            // restarted) or the node is stopping. Nothing was promised.
            Ok(Err(_dropped)) => Err(SubmitError::Restarted),
            Err(_elapsed) => Err(SubmitError::TimedOut(self.request_timeout)),
        }
    }

    pub fn tx(&self, id: &TxId) -> Result<Option<TxView>, CityStoreError> {
        self.index.tx(id)
    }

    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>, CityStoreError> {
        self.index.batch(id)
    }

    /// An object's durable head (`GET /v1/objects/{id}`).
    pub fn object(&self, id: &str) -> Result<Option<ObjectHead>, CityStoreError> {
        self.index.store.object_head(id)
    }

    /// Where batch `id` (sequence number `seq`) stands with the continent; `None` for a
    /// city without one.
    pub fn uplink(&self, id: &BatchId, seq: u64) -> Result<Option<UplinkState>, CityStoreError> {
        self.index.uplink(id, seq)
    }

    /// Node `id`'s account in the rewards ledger, if it has one.
    pub fn reward_account(
        &self,
        id: &str,
    ) -> Result<Option<crate::engines::rewards::Account>, CityStoreError> {
        self.index.store.reward_account(id)
    }

    /// Every account of the rewards ledger, by node id.
    pub fn reward_accounts(
        &self,
    ) -> Result<Vec<(String, crate::engines::rewards::Account)>, CityStoreError> {
        self.index.store.reward_accounts()
    }

    /// What was made durable since the node started: counts by tier and the recent
    /// transactions (`GET /v1/status`).
    pub fn activity(&self) -> ActivityView {
        self.index.activity.snapshot()
    }

    /// Transactions and batches in the status index (durable, since the store was made).
    pub fn record_counts(&self) -> Result<(u64, u64), CityStoreError> {
        self.index.store.record_counts()
    }

    /// Transactions admitted and not durable yet.
    pub fn pending(&self) -> usize {
        self.index.pending.len()
    }

    /// The storage nodes with their scores, as the Prioritizer last published them.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes.read().expect("snapshot lock poisoned").clone()
    }

    /// Makes the named actor panic (`[supervisor] fault_injection` only).
    pub fn inject(&self, name: &str) -> Result<ActorName, InjectError> {
        let supervisor = self.supervisor.as_ref().ok_or(InjectError::Disabled)?;
        let actor =
            ActorName::parse(name).ok_or_else(|| InjectError::UnknownActor(name.to_string()))?;
        supervisor
            .cast(SupervisorMsg::Inject(actor))
            .map_err(|_| InjectError::SupervisorDown)?;
        Ok(actor)
    }
}

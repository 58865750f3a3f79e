//! Repairer: keeps every durable batch where it belongs.
//!
//! A lower tier is a fallback, not a home. Every `[repair] interval` the Repairer runs one
//! round, in a task of its own so the actor never waits on the network:
//! 1. **Upward**: batches the status index holds on full nodes, MongoDB or the immutable
//!    log are read back from there and written to light nodes (placed by the
//!    Prioritizer, acks verified as for any write), or, while light nodes are still away,
//!    from MongoDB or the log to full nodes; their status follows.
//! 2. **Holdings**: for a window of light batches it sends each holder a `REPAIR_REQ`
//!    (`POST /internal/v1/batches/{id}/poh`), a possession challenge with a fresh nonce,
//!    and verifies the `REPAIR_ACK`: a fresh signed proof of hold plus the chunks of the
//!    bytes the nonce picked, tied to the hash recorded at write time. What a lost or lying
//!    holder held is re-replicated to other light nodes from a holder that still has it,
//!    and the batch's holders are updated.
//!
//! 0. **Lost from the log** (first): batches the start audit found missing from the
//!    immutable log (`storage::log_audit`) are searched for on every configured light and
//!    full node and in MongoDB (each at most every [`LOST_SEARCH_INTERVAL`]). A sound copy
//!    is written to light nodes, else full nodes, else appended to the log again, and the
//!    batch's status follows; a batch found nowhere is reported lost with its transaction
//!    ids, once per process, and searched for again later.
//!
//! Batches move as the sealed bytes the tiers hold, never opened (repair has no key):
//! a copy is used only if it is the sealed batch its record names and, when holders acked
//! it, exactly the bytes they acked.
//!
//! Every move is recorded in the city store (fsynced) before it is reported, so a restart
//! resumes exactly where repair stood.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::Mailbox;
use crate::city::msgs::{PrioritizerMsg, RepairMsg};
use crate::config::Config;
use crate::crypto::{self, Hash32};
use crate::messages::{
    BatchId, HoldChallenge, Placement, PohAck, SealedEnvelope, Tier, hex32, now_ms,
};
use crate::storage::chain::TierChain;
use crate::storage::city_store::{BatchRecord, CityStore};
use crate::storage::immutable_log::{ImmutableLog, RecordKind};
use crate::storage::mongo::MongoTier;
use crate::storage::nodes::{KnownNode, NodeDirectory};
use crate::storage::peer::PeerClient;
use crate::storage::peer_tier::PeerTier;

/// Mailbox capacity: only timer ticks and round reports, one round at a time.
pub const MAILBOX_CAPACITY: usize = 64;

/// Least time between two searches for the same batch lost from the log: a search asks
/// every configured storage node.
pub const LOST_SEARCH_INTERVAL: Duration = Duration::from_secs(10);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub moved_up: usize,
    pub rereplicated: usize,
    /// Batches lost from the log that were found elsewhere and given a new home.
    pub recovered: usize,
}

/// Everything a round needs, shared with its task.
pub struct RepairContext {
    pub store: Arc<CityStore>,
    pub client: PeerClient,
    pub prioritizer: Mailbox<PrioritizerMsg>,
    pub log: Arc<ImmutableLog>,
    pub mongo: Option<Arc<MongoTier>>,
    /// The configured light and full nodes, shared with the Prioritizer.
    pub nodes: Arc<NodeDirectory>,
    pub min_light_acks: usize,
    pub min_full_acks: usize,
    pub light_deadline: Duration,
    pub full_deadline: Duration,
    pub per_round: usize,
    /// This node's id: the holder of what it appends to its own log.
    pub holder: String,
    /// When each batch lost from the log was last searched for.
    searched: Mutex<HashMap<BatchId, Instant>>,
    /// Lost batches already reported as found nowhere, so each is said once.
    reported: Mutex<HashSet<BatchId>>,
}

impl RepairContext {
    pub fn from_config(
        config: &Config,
        chain: &TierChain,
        store: Arc<CityStore>,
        prioritizer: Mailbox<PrioritizerMsg>,
    ) -> Self {
        Self {
            store,
            client: chain.client().clone(),
            prioritizer,
            log: chain.log().clone(),
            mongo: chain.mongo().cloned(),
            nodes: chain.nodes().clone(),
            min_light_acks: config.storage.min_light_acks,
            min_full_acks: config.storage.min_full_acks,
            light_deadline: config.storage.light_deadline,
            full_deadline: config.storage.full_deadline,
            per_round: config.repair.batches_per_round,
            holder: config.node.id.clone(),
            searched: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    async fn place(&self, rec: &BatchRecord, exclude: Vec<String>) -> Option<Placement> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.prioritizer
            .cast(PrioritizerMsg::Place {
                flag: rec.header.flag,
                exclude,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }

    /// The batch's sealed bytes from wherever it is held now.
    async fn fetch(&self, rec: &BatchRecord) -> Option<Bytes> {
        self.fetch_vec(rec).await.map(Bytes::from)
    }

    async fn fetch_vec(&self, rec: &BatchRecord) -> Option<Vec<u8>> {
        let id = rec.header.id();
        match rec.tier {
            Tier::Light | Tier::Full => {
                for holder in &rec.holders {
                    let Some(node) = self.nodes.get(holder) else {
                        continue;
                    };
                    if let Ok(Some(bytes)) = self
                        .client
                        .get_batch(node.peer(), &id, self.light_deadline * 4)
                        .await
                    {
                        return Some(bytes);
                    }
                }
                None
            }
            Tier::Mongo => self
                .mongo
                .as_ref()?
                .get_batch(&id, rec.header.created_at_ms)
                .await
                .ok()?,
            Tier::Log => self.log.read_batch(&id).ok()?,
        }
    }

    /// Writes `bytes` of `rec` to `need` more light (or full) nodes, away from `exclude`.
    /// The bytes are sealed and move as they are, never opened: they must be the sealed
    /// batch the record names and, when holders acked it, exactly the bytes they acked.
    async fn write_to(
        &self,
        tier: Tier,
        rec: &BatchRecord,
        bytes: &Bytes,
        exclude: Vec<String>,
        need: usize,
    ) -> Option<crate::storage::tier::Stored> {
        let id = rec.header.id();
        let sound = match SealedEnvelope::from_bytes(bytes) {
            Ok(envelope) if envelope.id() != id => Err("a different batch".to_string()),
            Ok(_) => match rec.acks.first() {
                Some(ack) if ack.held_hash != crypto::hash(bytes) => {
                    Err("not the bytes its holders acked".to_string())
                }
                _ => Ok(()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = sound {
            tracing::error!(batch = %hex::encode(id), %why, "a held copy is not this batch as sealed; not repairing from it");
            return None;
        }
        let placement = self.place(rec, exclude).await?;
        let (targets, deadline) = match tier {
            Tier::Light => (placement.light, self.light_deadline),
            _ => (placement.full, self.full_deadline),
        };
        if targets.len() < need {
            return None;
        }
        let peers = PeerTier {
            tier,
            client: self.client.clone(),
            min_acks: need,
            deadline,
        };
        let result = peers.write(id, bytes, &targets).await;
        if !result.observations.is_empty() {
            let _ = self
                .prioritizer
                .cast(PrioritizerMsg::Observe(result.observations));
        }
        result.outcome.ok()
    }

    /// Another sound copy of a batch lost from the log: from any configured light or full
    /// node, or MongoDB. Returns the bytes and where they came from.
    async fn find_elsewhere(&self, rec: &BatchRecord) -> Option<(Vec<u8>, String)> {
        let id = rec.header.id();
        // A copy is sound if it is the sealed batch of this id (repair never opens it).
        let sound = |bytes: &[u8]| SealedEnvelope::from_bytes(bytes).is_ok_and(|e| e.id() == id);
        for node in self.nodes.iter() {
            if let Ok(Some(bytes)) = self
                .client
                .get_batch(node.peer(), &id, self.light_deadline * 4)
                .await
            {
                if sound(&bytes) {
                    return Some((bytes, node.entry.id.clone()));
                }
                tracing::warn!(batch = %hex32(&id), node = %node.entry.id, "a storage node's copy of a lost batch does not match its id");
            }
        }
        let mongo = self.mongo.as_ref()?;
        match mongo.get_batch(&id, rec.header.created_at_ms).await {
            Ok(Some(bytes)) if sound(&bytes) => Some((bytes, "mongo".into())),
            _ => None,
        }
    }

    /// Step 0 of a round: finds batches lost from the log elsewhere and rehomes them.
    async fn recover_lost(&self) -> usize {
        let lost = match self.store.lost_batches(self.per_round) {
            Ok(lost) => lost,
            Err(e) => {
                tracing::error!(error = %e, "reading the batches lost from the log");
                return 0;
            }
        };
        if lost.is_empty() {
            return 0;
        }
        let mut recovered = 0;
        for rec in lost {
            let id = rec.header.id();
            {
                let mut searched = self.searched.lock().unwrap_or_else(PoisonError::into_inner);
                if searched
                    .get(&id)
                    .is_some_and(|at| at.elapsed() < LOST_SEARCH_INTERVAL)
                {
                    continue;
                }
                searched.insert(id, Instant::now());
            }
            let Some((found, source)) = self.find_elsewhere(&rec).await else {
                let first = self
                    .reported
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id);
                if first {
                    let txs: Vec<String> = rec.tx_ids.iter().map(hex32).collect();
                    tracing::error!(
                        batch = %hex32(&id),
                        seq = rec.header.seq,
                        txs = %txs.join(","),
                        "batch LOST: the immutable log no longer holds it and no storage node or MongoDB has a copy; its transactions are not stored (their clients may submit them again)"
                    );
                }
                continue;
            };
            let bytes = Bytes::from(found);
            let home = match self
                .write_to(Tier::Light, &rec, &bytes, Vec::new(), self.min_light_acks)
                .await
            {
                Some(stored) => Some((Tier::Light, stored)),
                None => self
                    .write_to(Tier::Full, &rec, &bytes, Vec::new(), self.min_full_acks)
                    .await
                    .map(|stored| (Tier::Full, stored)),
            };
            let (tier, holders, acks) = match home {
                Some((tier, stored)) => (tier, stored.holders, stored.acks),
                None => match self.log.append(RecordKind::Batch, bytes.to_vec()).await {
                    Ok(_) => (Tier::Log, vec![self.holder.clone()], Vec::new()),
                    Err(e) => {
                        tracing::error!(batch = %hex32(&id), error = %e, "a lost batch was found but no tier takes it yet");
                        continue;
                    }
                },
            };
            match self.store.relocate(&id, tier, holders, acks) {
                Ok(()) => {
                    recovered += 1;
                    self.searched
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    metrics::counter!(crate::metrics::REPAIRS, "kind" => "recovered", "from" => "log").increment(1);
                    tracing::warn!(batch = %hex32(&id), %source, to = %tier, "a batch lost from the immutable log was recovered from another copy");
                }
                Err(e) => tracing::error!(error = %e, "recording a recovered batch"),
            }
        }
        if let Ok(n) = self.store.lost_count() {
            metrics::gauge!(crate::metrics::LOG_LOST_BATCHES).set(n as f64);
        }
        recovered
    }

    /// Files a batch repaired up from MongoDB under the month's `finished_` collection. A
    /// failure only leaves it under `unfinished_` (where its TTL still ends it), so it is
    /// logged, not retried.
    async fn finish_in_mongo(&self, rec: &BatchRecord) {
        let Some(mongo) = &self.mongo else {
            return;
        };
        if let Err(e) = mongo
            .finish(&rec.header.id(), rec.header.created_at_ms)
            .await
        {
            tracing::warn!(batch = %hex32(&rec.header.id()), error = %e, "could not move the batch to MongoDB's finished collection");
        }
    }

    /// One round: recover batches lost from the log, move batches up, then check a window
    /// of light holdings from `cursor`. Returns what it did and where the next window
    /// starts.
    pub async fn round(&self, cursor: u64) -> (RoundReport, u64) {
        let mut report = RoundReport {
            recovered: self.recover_lost().await,
            ..RoundReport::default()
        };
        let below = self
            .store
            .batches_below_light(self.per_round)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading the status index for repair");
                Vec::new()
            });
        let (mut light_back, mut full_back) = (true, true);
        for rec in below {
            let Some(bytes) = self.fetch(&rec).await else {
                tracing::warn!(batch = %hex::encode(rec.header.id()), tier = %rec.tier, "cannot read the batch back for repair yet");
                continue;
            };
            // Light nodes first; from MongoDB or the log, full nodes are a step up too. A
            // tier that failed once sits out the rest of the round, but other batches may
            // still go to the other tier.
            let mut moved = None;
            if light_back {
                match self
                    .write_to(Tier::Light, &rec, &bytes, Vec::new(), self.min_light_acks)
                    .await
                {
                    Some(stored) => moved = Some((Tier::Light, stored)),
                    None => light_back = false,
                }
            }
            if moved.is_none() && full_back && rec.tier > Tier::Full {
                match self
                    .write_to(Tier::Full, &rec, &bytes, Vec::new(), self.min_full_acks)
                    .await
                {
                    Some(stored) => moved = Some((Tier::Full, stored)),
                    None => full_back = false,
                }
            }
            let Some((to, stored)) = moved else {
                if !light_back && !full_back {
                    // No higher tier is back yet; try again next round.
                    break;
                }
                continue;
            };
            let id = rec.header.id();
            match self.store.relocate(&id, to, stored.holders, stored.acks) {
                Ok(()) => {
                    report.moved_up += 1;
                    metrics::counter!(crate::metrics::REPAIRS, "kind" => "upward", "from" => rec.tier.as_str()).increment(1);
                    tracing::info!(batch = %hex::encode(id), from = %rec.tier, %to, "batch repaired up");
                    if rec.tier == Tier::Mongo {
                        self.finish_in_mongo(&rec).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "recording a repair"),
            }
        }

        let window = self
            .store
            .batches_on(Tier::Light, cursor, self.per_round)
            .unwrap_or_default();
        let next_cursor = match window.last() {
            Some(last) if window.len() == self.per_round => last.header.seq + 1,
            _ => 0,
        };
        for rec in window {
            if self.check_holders(&rec).await {
                report.rereplicated += 1;
            }
        }
        (report, next_cursor)
    }

    /// REPAIR_REQ to every holder: each must prove it still holds the bytes (a possession
    /// challenge, see [`HoldChallenge`]); re-replicates what the others held. True if it did.
    async fn check_holders(&self, rec: &BatchRecord) -> bool {
        let id = rec.header.id();
        let Some(expected) = rec.acks.first().map(|a| a.held_hash) else {
            return false;
        };
        let mut alive = Vec::new();
        let mut acks = Vec::new();
        for holder in &rec.holders {
            let Some(node) = self.nodes.get(holder) else {
                continue;
            };
            if let Some(ack) = self.challenge(node, &id, &expected).await {
                alive.push(holder.clone());
                acks.push(ack);
            }
        }
        let lost: Vec<String> = rec
            .holders
            .iter()
            .filter(|h| !alive.contains(h))
            .cloned()
            .collect();
        if lost.is_empty() {
            return false;
        }
        let Some(source) = alive.first().and_then(|source| self.nodes.get(source)) else {
            tracing::error!(batch = %hex::encode(id), "no light holder still proves it holds this batch");
            return false;
        };
        let Some(bytes) = self
            .client
            .get_batch(source.peer(), &id, self.light_deadline * 4)
            .await
            .ok()
            .flatten()
            .map(Bytes::from)
        else {
            return false;
        };
        let exclude: Vec<String> = rec.holders.clone();
        let Some(stored) = self
            .write_to(Tier::Light, rec, &bytes, exclude, lost.len())
            .await
        else {
            tracing::warn!(batch = %hex::encode(id), lost = ?lost, "no light nodes to re-replicate to yet");
            return false;
        };
        alive.extend(stored.holders);
        acks.extend(stored.acks);
        match self.store.relocate(&id, Tier::Light, alive, acks) {
            Ok(()) => {
                metrics::counter!(crate::metrics::REPAIRS, "kind" => "rereplicate", "from" => "light").increment(1);
                tracing::info!(batch = %hex::encode(id), ?lost, "re-replicated what lost holders held");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "recording a re-replication");
                false
            }
        }
    }
}

impl RepairContext {
    /// Challenges `node` to prove it holds the bytes of batch `id` (recorded as hashing to
    /// `expected`); its fresh ack if the proof holds. A node that answers with a wrong proof
    /// is reported: that is a node claiming what it does not hold.
    async fn challenge(&self, node: &KnownNode, id: &BatchId, expected: &Hash32) -> Option<PohAck> {
        let challenge = HoldChallenge::fresh().ok()?;
        let answer = self
            .client
            .challenge(node.peer(), id, &challenge, self.light_deadline * 4)
            .await;
        let (outcome, ack) = match answer {
            Ok(Some(proof)) => match proof.verify(
                &node.entry.id,
                &node.public_key,
                id,
                expected,
                &challenge,
                now_ms(),
            ) {
                Ok(()) => ("proved", Some(proof.ack)),
                Err(e) => {
                    tracing::warn!(node = %node.entry.id, batch = %hex::encode(id), error = %e, "a holder failed its possession challenge");
                    ("refused", None)
                }
            },
            Ok(None) => ("missing", None),
            Err(e) => {
                tracing::debug!(node = %node.entry.id, error = %e, "possession challenge not answered");
                ("unreachable", None)
            }
        };
        metrics::counter!(crate::metrics::HOLD_CHALLENGES, "outcome" => outcome).increment(1);
        ack
    }
}

pub struct Repairer;

pub struct RepairArgs {
    pub context: Arc<RepairContext>,
    pub interval: Duration,
}

pub struct RepairState {
    args: RepairArgs,
    running: bool,
    cursor: u64,
}

impl Actor for Repairer {
    type Msg = RepairMsg;
    type State = RepairState;
    type Arguments = RepairArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RepairArgs,
    ) -> Result<RepairState, ActorProcessingErr> {
        myself.send_interval(args.interval, || RepairMsg::Tick);
        Ok(RepairState {
            args,
            running: false,
            cursor: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: RepairMsg,
        state: &mut RepairState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RepairMsg::Tick => {
                if state.running {
                    return Ok(());
                }
                state.running = true;
                let ctx = state.args.context.clone();
                let cursor = state.cursor;
                tokio::spawn(async move {
                    let (report, next_cursor) = ctx.round(cursor).await;
                    if report != RoundReport::default() {
                        tracing::info!(?report, "repair round");
                    }
                    let backlog = report.moved_up >= ctx.per_round;
                    let _ = myself.cast(RepairMsg::RoundDone {
                        next_cursor,
                        backlog,
                    });
                });
            }
            RepairMsg::RoundDone {
                next_cursor,
                backlog,
            } => {
                state.running = false;
                state.cursor = next_cursor;
                if backlog {
                    let _ = myself.cast(RepairMsg::Tick);
                }
            }
            RepairMsg::Panic => panic!("fault injected into repairer"),
        }
        Ok(())
    }
}

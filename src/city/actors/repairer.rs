//! Repairer: keeps every durable batch where it belongs.
//!
//! A lower tier is a fallback, not a home. Every `[repair] interval` the Repairer runs one
//! round, in a task of its own so the actor never waits on the network:
//! 1. **Upward**: batches the status index holds on full nodes, MongoDB or the immutable
//!    log are read back from there and written to light nodes as erasure-coded pieces
//!    (placed by the Prioritizer, one piece per node, each ack verified to bind its
//!    piece, as for any write), or, while light nodes are still away, from MongoDB or the
//!    log to full nodes; their status follows.
//! 2. **Holdings**: for a window of light batches it sends each holder a `REPAIR_REQ` for
//!    the piece it holds (`POST /internal/v1/batches/{id}/pieces/{index}/poh`), a
//!    possession challenge with a fresh nonce, and verifies the `REPAIR_ACK`: a fresh
//!    signed proof of hold of that piece plus the chunks of its data the nonce picked,
//!    tied to the piece hash recorded at write time. A piece whose holder is lost or lied,
//!    or that was never placed (its write missed the quorum's grace, or too few nodes were
//!    up), is regenerated: k sound pieces are read back from the other holders, the sealed
//!    bytes rebuilt and checked against the sealed hash the acks bind, cut again (the
//!    same pieces, bit for bit), and the missing ones placed on light nodes holding no
//!    piece of the batch; the batch's holders are updated. A holder whose challenge was
//!    refused for its rate (429) proves nothing either way and is left as it is.
//!
//! 3. **Retention** (between 1 and 2): light batches older than `[storage]
//!    light_retention` whose header the continent has acknowledged (with `[uplink]`: it
//!    left the outbox; see [`crate::storage::city_store::archivable`]) are archived, oldest
//!    first, at most `[repair] archive_per_round` per round, from the light index: their
//!    sealed bytes (the body cache, else rebuilt from k pieces) are written to full nodes
//!    (`min_full_acks` valid acks, as for the full tier), the move is recorded (tier full,
//!    the light tier a past home, the batch's home full by policy so repair upward leaves
//!    it, its pieces pending release), fsynced, and only then are its light pieces
//!    released, one request per holder for all of its pieces in a window
//!    (`POST /internal/v1/pieces/release`, one fsync there). Releases a node did
//!    not answer stay pending in `city.redb` and are tried again each round; a holder no
//!    longer configured is dropped from them (its piece stays there as garbage).
//!
//! 0. **Lost from the log** (first): batches the start audit found missing from the
//!    immutable log (`storage::log_audit`) are searched for on every configured light and
//!    full node, in MongoDB and in the city's body cache (each at most every [`LOST_SEARCH_INTERVAL`]). A sound copy
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
//!
//! **Rewards** (`engines::rewards`): the acks of every batch or piece a repair places are
//! credited to their nodes in the transaction that relocates the batch, by the scores the
//! placement gave them. Each challenge result is a ledger entry (a passed challenge is
//! credited by the node's score at the time, a failed one counts against it), all of a
//! round's written in one fsynced transaction at its end, and sent to the Prioritizer,
//! where a failure lowers the node's reliability and so its score. A rate-limited
//! challenge proves nothing and is left out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::city::mailbox::Mailbox;
use crate::city::msgs::{PrioritizerMsg, RepairMsg};
use crate::city::node_policy::NodesSnapshot;
use crate::config::Config;
use crate::crypto::{self, Hash32};
use crate::engines::rewards::{Credit, ProofKind, RewardEngine};
use crate::messages::storage::{MAX_RELEASE_PIECES, PieceId};
use crate::messages::{
    BatchId, Coding, Expected, HoldChallenge, Piece, Placement, PohAck, SealedEnvelope, Tier,
    hex32, now_ms,
};
use crate::storage::chain::TierChain;
use crate::storage::city_store::{Archived, BatchRecord, CityStore, PendingRelease};
use crate::storage::immutable_log::{ImmutableLog, RecordKind};
use crate::storage::mongo::MongoTier;
use crate::storage::nodes::{KnownNode, NodeDirectory};
use crate::storage::peer::{PeerClient, PeerError};
use crate::storage::peer_tier::{PeerTier, PieceTier, read_pieces};
use crate::storage::readback::ReadBack;

/// Mailbox capacity: only timer ticks and round reports, one round at a time.
pub const MAILBOX_CAPACITY: usize = 64;

/// Light batches archived, and archived batches' pieces released, at once.
const ARCHIVE_CONCURRENCY: usize = 4;

/// Least time between two searches for the same batch lost from the log: a search asks
/// every configured storage node.
pub const LOST_SEARCH_INTERVAL: Duration = Duration::from_secs(10);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub moved_up: usize,
    pub rereplicated: usize,
    /// Light batches archived to full nodes by retention.
    pub archived: usize,
    /// Light pieces of archived batches released.
    pub released: usize,
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
    /// How light batches are cut (`[storage.erasure]`).
    pub coding: Coding,
    /// Acked pieces a light write needs: k + the losses it must survive.
    pub min_light_acks: usize,
    pub min_full_acks: usize,
    pub light_deadline: Duration,
    pub full_deadline: Duration,
    pub per_round: usize,
    /// How long a batch stays on light nodes before retention archives it (0: never).
    pub light_retention: Duration,
    /// Light batches archived per window, at most; a round takes windows in a row for
    /// up to `interval` while they come back full.
    pub archive_per_round: usize,
    /// `[repair] interval`: the time a round spends on retention at most.
    pub interval: Duration,
    /// This node's id: the holder of what it appends to its own log.
    pub holder: String,
    /// Decides what each repair ack and challenge result earns.
    pub rewards: Arc<dyn RewardEngine>,
    /// The Prioritizer's published scores: a challenged node's score at the time.
    pub scores: NodesSnapshot,
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
        rewards: Arc<dyn RewardEngine>,
        scores: NodesSnapshot,
    ) -> Self {
        Self {
            store,
            client: chain.client().clone(),
            prioritizer,
            log: chain.log().clone(),
            mongo: chain.mongo().cloned(),
            nodes: chain.nodes().clone(),
            coding: config
                .storage
                .erasure
                .coding()
                .expect("validated: a coding"),
            min_light_acks: config.storage.min_light_acks(),
            min_full_acks: config.storage.min_full_acks,
            light_deadline: config.storage.light_deadline,
            full_deadline: config.storage.full_deadline,
            per_round: config.repair.batches_per_round,
            light_retention: config.storage.light_retention,
            archive_per_round: config.repair.archive_per_round,
            interval: config.repair.interval,
            holder: config.node.id.clone(),
            rewards,
            scores,
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

    /// The ledger entries of a repair's `acks`, by the scores of the placement that chose
    /// their holders.
    fn repair_credits(&self, acks: &[PohAck], placement: &Placement) -> Vec<Credit> {
        if !self.rewards.enabled() {
            return Vec::new();
        }
        let now = now_ms();
        acks.iter()
            .filter_map(|ack| {
                let node = self.nodes.get(&ack.holder_id)?;
                self.rewards.proved(
                    &ack.holder_id,
                    ProofKind::Repair,
                    node.entry.role,
                    placement.score_of(&ack.holder_id),
                    now,
                )
            })
            .collect()
    }

    /// Node `id`'s score as the Prioritizer last published it (0 if unknown).
    fn score_now(&self, id: &str) -> u8 {
        self.scores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|v| v.node_id == id)
            .map_or(0, |v| v.score)
    }

    /// The batch's sealed bytes from wherever it is held now.
    async fn fetch(&self, rec: &BatchRecord) -> Option<Bytes> {
        self.fetch_vec(rec).await.map(Bytes::from)
    }

    async fn fetch_vec(&self, rec: &BatchRecord) -> Option<Vec<u8>> {
        let id = rec.header.id();
        let read = self.readback();
        let timeout = self.light_deadline * 4;
        match rec.tier {
            Tier::Light => read.light(id, &rec.acks, timeout).await,
            Tier::Full => read.full(id, &rec.holders, timeout).await,
            Tier::Mongo => read.mongo(id, rec.header.created_at_ms).await,
            Tier::Log => read.log(id).await,
        }
        .inspect_err(
            |e| tracing::debug!(batch = %hex32(&id), tier = %rec.tier, error = %e, "reading a batch back"),
        )
        .ok()
    }

    /// What reads batches back from the tiers (the code the read path uses too).
    fn readback(&self) -> ReadBack {
        ReadBack {
            client: self.client.clone(),
            nodes: self.nodes.clone(),
            mongo: self.mongo.clone(),
            log: self.log.clone(),
        }
    }

    /// The light tier's writer, for placing pieces.
    fn light(&self) -> PieceTier {
        PieceTier {
            client: self.client.clone(),
            coding: self.coding,
            min_acks: self.min_light_acks,
            deadline: self.light_deadline,
        }
    }

    /// Writes `bytes` of `rec` to light nodes as pieces (all k + m, at least `need` acked)
    /// or to `need` more full nodes, away from `exclude`. The bytes are sealed and move
    /// as they are, never opened: they must be the sealed batch the record names and,
    /// when holders acked it, exactly the bytes they acked.
    async fn write_to(
        &self,
        tier: Tier,
        rec: &BatchRecord,
        bytes: &Bytes,
        exclude: Vec<String>,
        need: usize,
    ) -> Option<(crate::storage::tier::Stored, Vec<Credit>)> {
        let id = rec.header.id();
        let sound = match SealedEnvelope::from_bytes(bytes) {
            Ok(envelope) if envelope.id() != id => Err("a different batch".to_string()),
            Ok(_) => match acked_sealed_hash(&rec.acks) {
                Some(hash) if hash != crypto::hash(bytes) => {
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
        let result = match tier {
            Tier::Light => {
                let targets = placement.light.clone();
                if targets.len() < need {
                    return None;
                }
                let light = self.light();
                let pieces = cut(self.coding, id, bytes.clone()).await?;
                let assigned = targets.into_iter().zip(pieces).collect();
                light.write_pieces(id, assigned, need).await
            }
            _ => {
                let targets = placement.full.clone();
                if targets.len() < need {
                    return None;
                }
                let peers = PeerTier {
                    tier,
                    client: self.client.clone(),
                    min_acks: need,
                    deadline: self.full_deadline,
                };
                peers.write(id, bytes, &targets).await
            }
        };
        if !result.observations.is_empty() {
            let _ = self
                .prioritizer
                .cast(PrioritizerMsg::Observe(result.observations));
        }
        let stored = result.outcome.ok()?;
        let credits = self.repair_credits(&stored.acks, &placement);
        Some((stored, credits))
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
        if let Ok(bytes) = self.readback().mongo(id, rec.header.created_at_ms).await {
            return Some((bytes, "mongo".into()));
        }
        // The city's own body cache keeps the body of a batch marked lost.
        match self.store.cached_body(&id) {
            Ok(Some(bytes)) if sound(&bytes) => Some((bytes, "the city's body cache".into())),
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
            let (tier, holders, acks, credits) = match home {
                Some((tier, (stored, credits))) => (tier, stored.holders, stored.acks, credits),
                None => match self.log.append(RecordKind::Batch, bytes.to_vec()).await {
                    Ok(_) => (Tier::Log, vec![self.holder.clone()], Vec::new(), Vec::new()),
                    Err(e) => {
                        tracing::error!(batch = %hex32(&id), error = %e, "a lost batch was found but no tier takes it yet");
                        continue;
                    }
                },
            };
            match self
                .store
                .relocate_credited(&id, tier, holders, acks, &credits)
            {
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
            let Some((to, (stored, credits))) = moved else {
                if !light_back && !full_back {
                    // No higher tier is back yet; try again next round.
                    break;
                }
                continue;
            };
            let id = rec.header.id();
            match self
                .store
                .relocate_credited(&id, to, stored.holders, stored.acks, &credits)
            {
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

        self.report_backlog();

        // Retention keeps pace with writing: window after window while each comes back
        // full, for up to one interval, so a busy city does not archive only one window
        // per round (the holder checks below make a round much longer than a window).
        let started = Instant::now();
        loop {
            let archived = self.archive().await;
            report.archived += archived;
            if archived < self.archive_per_round || started.elapsed() >= self.interval {
                break;
            }
        }
        // Releases are one request per holder and window: cheap, so they get their own
        // interval, and what was archived above is released in this round.
        let started = Instant::now();
        loop {
            let (released, full_window) = self.release_pending().await;
            report.released += released;
            if !full_window || released == 0 || started.elapsed() >= self.interval {
                break;
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
        let mut challenged = Challenged::default();
        for rec in window {
            if self.check_holders(&rec, &mut challenged).await {
                report.rereplicated += 1;
            }
        }
        self.record_challenges(challenged).await;
        (report, next_cursor)
    }

    /// Publishes how many batches still wait below their home tier.
    fn report_backlog(&self) {
        match self.store.below_light_count() {
            Ok(n) => metrics::gauge!(crate::metrics::REPAIR_BACKLOG).set(n as f64),
            Err(e) => tracing::error!(error = %e, "counting the batches below their home tier"),
        }
    }

    /// Retention: archives the light batches the rule lets go (oldest first, at most
    /// `archive_per_round`) to full nodes and records them all in one fsynced transaction,
    /// each with its pieces pending release. Returns how many were archived.
    async fn archive(&self) -> usize {
        if self.light_retention.is_zero() {
            return 0;
        }
        let candidates = match self.store.archive_candidates(
            now_ms(),
            self.light_retention,
            self.archive_per_round,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reading the light index for retention");
                return 0;
            }
        };
        // A few at once: each is a read and a write to full nodes; then all of them are
        // recorded in one fsynced transaction.
        let full_refused = std::sync::atomic::AtomicBool::new(false);
        let copied: Vec<Archived> = futures::stream::iter(candidates)
            .map(|rec| self.copy_to_full(rec, &full_refused))
            .buffer_unordered(ARCHIVE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if copied.is_empty() {
            return 0;
        }
        let store = self.store.clone();
        let recorded = tokio::task::spawn_blocking(move || store.archive(&copied, now_ms())).await;
        match recorded {
            Ok(Ok(done)) => {
                let n = done.iter().filter(|d| **d).count();
                metrics::counter!(crate::metrics::ARCHIVED_BATCHES).increment(n as u64);
                tracing::debug!(archived = n, "light batches archived to full nodes");
                n
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "recording archived batches");
                0
            }
            Err(e) => {
                tracing::error!(error = %e, "recording archived batches panicked");
                0
            }
        }
    }

    /// Copies one light batch to full nodes, for [`RepairContext::archive`] to record; its
    /// full holders, if they took it. Once full nodes refused one, the rest of the round's
    /// window is left for the next round.
    async fn copy_to_full(
        &self,
        rec: BatchRecord,
        full_refused: &std::sync::atomic::AtomicBool,
    ) -> Option<Archived> {
        use std::sync::atomic::Ordering;
        if full_refused.load(Ordering::Relaxed) {
            return None;
        }
        let id = rec.header.id();
        let cached = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.cached_body(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        };
        let bytes = match cached {
            Some(bytes) => Some(Bytes::from(bytes)),
            None => self.fetch(&rec).await,
        };
        let Some(bytes) = bytes else {
            tracing::warn!(batch = %hex32(&id), "cannot read a light batch back to archive it yet");
            return None;
        };
        let Some((stored, credits)) = self
            .write_to(Tier::Full, &rec, &bytes, Vec::new(), self.min_full_acks)
            .await
        else {
            // Full nodes cannot take it now: the batch stays on light nodes, whole, and
            // retention tries again next round.
            full_refused.store(true, Ordering::Relaxed);
            tracing::debug!(batch = %hex32(&id), "full nodes did not take a light batch to archive; it stays on light nodes");
            return None;
        };
        Some(Archived {
            batch_id: id,
            holders: stored.holders,
            acks: stored.acks,
            credits,
        })
    }

    /// Releases the light pieces of archived batches still pending (a window, oldest
    /// first): a piece removed, or already gone (404), is done; one whose node did not
    /// answer stays pending for the next round; one whose holder is no longer configured
    /// is dropped (its piece stays there as garbage). Returns the pieces released, and
    /// whether the window read was full (more may be pending).
    async fn release_pending(&self) -> (usize, bool) {
        let window = self.archive_per_round.saturating_mul(2);
        let pending = match self.store.pending_releases(window) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reading the pending light releases");
                return (0, false);
            }
        };
        if pending.is_empty() {
            return (0, false);
        }
        let full_window = pending.len() >= window;
        let down: HashSet<String> = self
            .scores
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|v| !v.up)
            .map(|v| v.node_id.clone())
            .collect();
        let timeout = self.light_deadline * 4;
        // One request per holder (per MAX_RELEASE_PIECES of its pieces), not one per piece:
        // each is one fsynced transaction on the node, whatever the number of pieces.
        let mut by_holder: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (e, (_, entry)) in pending.iter().enumerate() {
            for (p, (holder, _)) in entry.pieces.iter().enumerate() {
                by_holder.entry(holder.clone()).or_default().push((e, p));
            }
        }
        let requests: Vec<(String, Vec<(usize, usize)>)> = by_holder
            .into_iter()
            .flat_map(|(holder, refs)| {
                refs.chunks(MAX_RELEASE_PIECES)
                    .map(|chunk| (holder.clone(), chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (pending_ref, down_ref) = (&pending, &down);
        let answers: Vec<(Vec<(usize, usize)>, Release)> = futures::stream::iter(requests)
            .map(|(holder, refs)| async move {
                let outcome = self
                    .release_on(&holder, &refs, pending_ref, down_ref, timeout)
                    .await;
                (refs, outcome)
            })
            .buffer_unordered(ARCHIVE_CONCURRENCY)
            .collect()
            .await;
        let mut outcomes: Vec<Vec<Release>> = pending
            .iter()
            .map(|(_, entry)| vec![Release::Later; entry.pieces.len()])
            .collect();
        for (refs, outcome) in answers {
            for (e, p) in refs {
                outcomes[e][p] = outcome;
            }
        }
        let released = outcomes
            .iter()
            .flatten()
            .filter(|o| **o == Release::Done)
            .count();
        metrics::counter!(crate::metrics::LIGHT_PIECES_RELEASED).increment(released as u64);
        // What is left of each entry whose pieces changed (none left: the entry goes).
        let left: Vec<(u64, PendingRelease)> = pending
            .into_iter()
            .zip(outcomes)
            .filter(|(_, outcome)| outcome.iter().any(|o| *o != Release::Later))
            .map(|((seq, mut entry), outcome)| {
                let mut outcome = outcome.into_iter();
                entry
                    .pieces
                    .retain(|_| outcome.next() == Some(Release::Later));
                (seq, entry)
            })
            .collect();
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.update_releases(&left)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "recording released light pieces"),
            Err(e) => tracing::error!(error = %e, "recording released light pieces panicked"),
        }
        (released, full_window)
    }

    /// Asks `holder` to release the pieces `refs` names (entry and piece positions in
    /// `pending`), in one request; what came of it, for all of them alike.
    async fn release_on(
        &self,
        holder: &str,
        refs: &[(usize, usize)],
        pending: &[(u64, PendingRelease)],
        down: &HashSet<String>,
        timeout: Duration,
    ) -> Release {
        let Some(node) = self.nodes.get(holder) else {
            tracing::warn!(%holder, pieces = refs.len(), "the holder of archived pieces is no longer configured; its pieces are left there");
            return Release::Dropped;
        };
        if down.contains(holder) {
            return Release::Later;
        }
        let pieces: Vec<PieceId> = refs
            .iter()
            .map(|&(e, p)| PieceId {
                batch_id: pending[e].1.batch_id,
                index: pending[e].1.pieces[p].1,
            })
            .collect();
        match self
            .client
            .release_pieces(node.peer(), &pieces, timeout)
            .await
        {
            Ok(_) => Release::Done,
            Err(e) => {
                tracing::debug!(%holder, pieces = pieces.len(), error = %e, "releasing light pieces failed; trying again next round");
                Release::Later
            }
        }
    }

    /// REPAIR_REQ to every holder for the piece it holds: each must prove it still holds
    /// it (a possession challenge, see [`HoldChallenge`]). Pieces lost, refused or never
    /// placed are regenerated from k others and placed on other light nodes. True if any
    /// was.
    async fn check_holders(&self, rec: &BatchRecord, challenged: &mut Challenged) -> bool {
        let id = rec.header.id();
        let Some(expected) = Expected::from_acks(id, &rec.acks) else {
            tracing::error!(batch = %hex32(&id), "a light batch's record holds no consistent piece acks; its holdings cannot be checked");
            return false;
        };
        let mut alive: Vec<PohAck> = Vec::new();
        let mut lost = Vec::new();
        for ack in &rec.acks {
            let Some(index) = ack.piece.map(|p| p.index) else {
                continue;
            };
            let Some(node) = self.nodes.get(&ack.holder_id) else {
                lost.push(format!("{}#{index}", ack.holder_id));
                continue;
            };
            let held = self.challenge(node, &expected, index, &ack.held_hash).await;
            challenged.add(self, node, &held);
            match held {
                Held::Proved(fresh) => alive.push(fresh),
                // A rate-limited challenge proves nothing either way: keep the holder.
                Held::Unknown => alive.push(ack.clone()),
                Held::Lost => lost.push(format!("{}#{index}", ack.holder_id)),
            }
        }
        // The Prioritizer hears the results before it is asked where missing pieces go, so
        // a holder that just failed is not handed its piece back at its old score.
        challenged.tell(self);
        let held: std::collections::BTreeSet<u8> = alive
            .iter()
            .filter_map(|a| a.piece.map(|p| p.index))
            .collect();
        let missing: Vec<u8> = (0..expected.coding.pieces() as u8)
            .filter(|i| !held.contains(i))
            .collect();
        if missing.is_empty() {
            return false;
        }
        if held.len() < expected.coding.needed() {
            tracing::error!(
                batch = %hex32(&id),
                held = held.len(),
                needed = expected.coding.needed(),
                ?lost,
                "too few light holders still prove their pieces to rebuild this batch"
            );
            return false;
        }
        let exclude: Vec<String> = alive.iter().map(|a| a.holder_id.clone()).collect();
        let Some(placement) = self.place(rec, exclude).await else {
            return false;
        };
        if placement.light.is_empty() {
            tracing::debug!(batch = %hex32(&id), ?missing, "no light node free to place missing pieces on yet");
            return false;
        }
        let bytes = match read_pieces(
            &self.client,
            &self.nodes,
            id,
            &alive,
            self.light_deadline * 4,
        )
        .await
        {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::warn!(batch = %hex32(&id), error = %e, "cannot rebuild a light batch to regenerate its missing pieces yet");
                return false;
            }
        };
        let Some(pieces) = cut(expected.coding, id, bytes).await else {
            return false;
        };
        // The same bytes cut the same way give the same pieces: one that differs from
        // what its holder acked would mean the coding changed under us.
        if pieces.iter().any(|p| {
            expected
                .hashes
                .get(&p.index())
                .is_some_and(|h| *h != p.header.hash)
        }) {
            tracing::error!(batch = %hex32(&id), "regenerated pieces differ from the acked ones; not placing them");
            return false;
        }
        let assigned: Vec<_> = placement
            .light
            .iter()
            .cloned()
            .zip(pieces.into_iter().filter(|p| missing.contains(&p.index())))
            .collect();
        let result = self.light().write_pieces(id, assigned, 1).await;
        if !result.observations.is_empty() {
            let _ = self
                .prioritizer
                .cast(PrioritizerMsg::Observe(result.observations));
        }
        let Ok(stored) = result.outcome else {
            tracing::warn!(batch = %hex32(&id), ?missing, "placing regenerated pieces failed; trying again next round");
            return false;
        };
        let placed: Vec<u8> = stored
            .acks
            .iter()
            .filter_map(|a| a.piece.map(|p| p.index))
            .collect();
        let credits = self.repair_credits(&stored.acks, &placement);
        alive.extend(stored.acks);
        let holders = alive.iter().map(|a| a.holder_id.clone()).collect();
        match self
            .store
            .relocate_credited(&id, Tier::Light, holders, alive, &credits)
        {
            Ok(()) => {
                metrics::counter!(crate::metrics::REPAIRS, "kind" => "rereplicate", "from" => "light").increment(1);
                tracing::info!(batch = %hex32(&id), ?lost, ?placed, "regenerated and placed missing pieces");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "recording regenerated pieces");
                false
            }
        }
    }
}

/// A round's challenge results: for the rewards ledger and the Prioritizer.
#[derive(Default)]
struct Challenged {
    credits: Vec<Credit>,
    /// Results the Prioritizer has not heard yet.
    results: Vec<(String, bool)>,
}

impl Challenged {
    /// Sends the results not sent yet to the Prioritizer (which moves each node's
    /// reliability by the rewards engine's rule).
    fn tell(&mut self, ctx: &RepairContext) {
        if self.results.is_empty() || !ctx.rewards.enabled() {
            self.results.clear();
            return;
        }
        let results = std::mem::take(&mut self.results);
        let _ = ctx.prioritizer.cast(PrioritizerMsg::Challenged(results));
    }

    /// Notes what challenging `node` showed (nothing, for a rate-limited challenge).
    fn add(&mut self, ctx: &RepairContext, node: &KnownNode, held: &Held) {
        let (id, role) = (&node.entry.id, node.entry.role);
        let passed = match held {
            Held::Proved(_) => true,
            Held::Lost => false,
            Held::Unknown => return,
        };
        self.results.push((id.clone(), passed));
        if !ctx.rewards.enabled() {
            return;
        }
        let credit = if passed {
            ctx.rewards
                .proved(id, ProofKind::Challenge, role, ctx.score_now(id), now_ms())
        } else {
            ctx.rewards.failed(id, role, now_ms())
        };
        self.credits.extend(credit);
    }
}

impl RepairContext {
    /// Writes a round's challenge results to the rewards ledger (one fsynced transaction,
    /// off the async workers).
    async fn record_challenges(&self, mut challenged: Challenged) {
        challenged.tell(self);
        let credits = challenged.credits;
        if credits.is_empty() {
            return;
        }
        let (store, rules) = (self.store.clone(), self.rewards.clone());
        match tokio::task::spawn_blocking(move || store.record_credits(&credits, rules.as_ref()))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "recording repair challenge results in the rewards ledger")
            }
            Err(e) => tracing::error!(error = %e, "the rewards ledger write panicked"),
        }
    }
}

/// What asking a light node to release archived pieces came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// It removed the pieces, or did not hold them.
    Done,
    /// The holder is no longer configured: the pieces are left there, not asked for again.
    Dropped,
    /// The node is down or did not answer: asked again next round.
    Later,
}

/// What a possession challenge showed of one holder's piece.
enum Held {
    /// It holds it: its fresh ack.
    Proved(PohAck),
    /// It does not (404), it answered with a proof that fails, or it did not answer.
    Lost,
    /// It refused for its rate: nothing is known.
    Unknown,
}

/// The sealed hash the acks of a record bind: a piece ack's sealed whole, or a whole
/// batch's held hash.
fn acked_sealed_hash(acks: &[PohAck]) -> Option<Hash32> {
    acks.first()
        .map(|a| a.piece.map_or(a.held_hash, |p| p.sealed_hash))
}

/// Cuts sealed `bytes` into their pieces, off the async workers.
async fn cut(coding: Coding, id: BatchId, bytes: Bytes) -> Option<Vec<Piece>> {
    match tokio::task::spawn_blocking(move || coding.encode(id, &bytes)).await {
        Ok(Ok(pieces)) => Some(pieces),
        Ok(Err(e)) => {
            tracing::error!(batch = %hex32(&id), error = %e, "cutting a batch into pieces");
            None
        }
        Err(e) => {
            tracing::error!(batch = %hex32(&id), error = %e, "the encoder panicked");
            None
        }
    }
}

impl RepairContext {
    /// Challenges `node` to prove it holds piece `index` of the batch `expected` describes,
    /// recorded as hashing to `piece_hash`. A node that answers with a wrong proof is
    /// reported: that is a node claiming what it does not hold.
    async fn challenge(
        &self,
        node: &KnownNode,
        expected: &Expected,
        index: u8,
        piece_hash: &Hash32,
    ) -> Held {
        let id = expected.batch_id;
        let Ok(challenge) = HoldChallenge::fresh() else {
            return Held::Unknown;
        };
        let answer = self
            .client
            .challenge_piece(node.peer(), &id, index, &challenge, self.light_deadline * 4)
            .await;
        let (outcome, held) = match answer {
            Ok(Some(proof)) => match proof.verify_piece(
                &node.entry.id,
                &node.public_key,
                &id,
                &expected.piece_ref(index),
                piece_hash,
                &challenge,
                now_ms(),
            ) {
                Ok(()) => ("proved", Held::Proved(proof.ack)),
                Err(e) => {
                    tracing::warn!(node = %node.entry.id, batch = %hex::encode(id), piece = index, error = %e, "a holder failed its possession challenge");
                    ("refused", Held::Lost)
                }
            },
            Ok(None) => ("missing", Held::Lost),
            Err(PeerError::Refused { status: 429, .. }) => ("rate_limited", Held::Unknown),
            Err(e) => {
                tracing::debug!(node = %node.entry.id, error = %e, "possession challenge not answered");
                ("unreachable", Held::Lost)
            }
        };
        metrics::counter!(crate::metrics::HOLD_CHALLENGES, "outcome" => outcome).increment(1);
        held
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
                    let backlog = report.moved_up >= ctx.per_round
                        || report.archived >= ctx.archive_per_round;
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

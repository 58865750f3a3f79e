//! The city node's own durable state: the status index (where every acknowledged
//! transaction and batch is held), and where the batch DAG resumes after a restart.
//!
//! A client gets 200 only after its batch's record is here, fsynced, so a city killed at
//! any moment still answers `GET /v1/tx/{id}` for every transaction it acknowledged.
//! Records are written by one [`GroupCommit`] thread: every record waiting when a write
//! starts shares its transaction and its fsync.
//!
//! Batch sequence numbers are reserved in blocks ([`SEQ_BLOCK`]) before use, so a restarted
//! city never reuses a number it may already have handed out.
//!
//! A city with a continent above it (`[uplink]`) keeps an **outbox**: each batch enters it
//! in the transaction that records the batch, and leaves it when the continent has merged
//! it (its place is kept, [`CityStore::uplink_delivered`]); so nothing acknowledged misses
//! the continent, whenever the city or the continent is killed.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::group_commit::{GroupCommit, GroupError, Options};
use crate::messages::federation::ContinentPlacement;
use crate::messages::{
    BatchHeader, BatchId, Capsule, FlagKind, NonceKey, PohAck, Tier, TxId, WireError,
};

pub const FILE_NAME: &str = "city.redb";

/// Sequence numbers reserved per disk write.
pub const SEQ_BLOCK: u64 = 1024;

/// Records waiting to be written, at most; past it `record` waits.
const QUEUE: usize = 4096;
/// Most records one transaction writes.
const MAX_GROUP: usize = 512;

const TXS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("txs");
const BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
const BY_SEQ: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("batches_by_seq");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Batches held below the light tier: what repair upward works through, without
/// scanning every batch.
const BELOW_LIGHT: TableDefinition<&[u8; 32], ()> = TableDefinition::new("below_light");
/// Batches the index placed on the immutable log that the log no longer holds (found at
/// a start), until they are found elsewhere and relocated: their transactions are not
/// `stored` meanwhile. Value: when the loss was found (ms since the epoch).
const LOST: TableDefinition<&[u8; 32], u64> = TableDefinition::new("lost_from_log");
/// `(sender, nonce)` → the one transaction that used it; written with the transaction's
/// record, in the same database transaction.
const NONCES: TableDefinition<&[u8; 28], &[u8; 32]> = TableDefinition::new("nonces");
const SEQ_RESERVED: &str = "seq_reserved";
/// Batches the continent has not merged yet: sequence number → batch id.
const UPLINK_OUTBOX: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("uplink_outbox");
/// Where the continent merged each batch it acknowledged: batch id → the placement.
const UPLINK_PLACED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("uplink_placed");
/// The key vault (see `storage::vault`): batch id → the encoded capsule.
pub(super) const CAPSULES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("vault_capsules");

#[derive(Debug, thiserror::Error)]
pub enum CityStoreError {
    #[error("city database: {0}")]
    Io(#[from] std::io::Error),
    #[error("city database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("city database: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("city database: {0}")]
    Table(#[from] redb::TableError),
    #[error("city database: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("city database: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("city database: {0}")]
    Commit(#[from] redb::CommitError),
    /// A stored record that does not decode.
    #[error("city database: {0}")]
    Decode(#[from] WireError),
    #[error("city database: no batch {}", hex::encode(.0))]
    NoBatch(BatchId),
    /// The write of the record's group failed; every record of the group gets this error.
    #[error(transparent)]
    Group(Arc<CityStoreError>),
    #[error("city database writer has stopped")]
    Closed,
}

pub type Result<T> = std::result::Result<T, CityStoreError>;

/// An acknowledged transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub flag: FlagKind,
    /// The signed canonical JSON.
    pub canonical: String,
    pub batch_id: BatchId,
    pub tier: Tier,
    pub holders: Vec<String>,
    pub acks: u32,
    /// The batch's only copy was lost from the immutable log and is not found elsewhere
    /// yet ([`CityStore::mark_lost`]). Not stored: filled in on reading.
    #[serde(skip)]
    pub lost: bool,
}

/// A durable batch: where it is and the acks that prove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub header: BatchHeader,
    pub tx_ids: Vec<TxId>,
    pub tier: Tier,
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
    /// See [`TxRecord::lost`]. Not stored: filled in on reading.
    #[serde(skip)]
    pub lost: bool,
}

/// What the store knows of a transaction ([`CityStore::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Stored(TxRecord),
    /// Not stored, but its `(sender, nonce)` pair was used by this transaction (which may
    /// be the same one, when a crash came between the two writes: they are one).
    NonceUsedBy(TxId),
    Unknown,
}

struct WriteReq {
    batch_id: BatchId,
    batch: BatchRecord,
    txs: Vec<(TxId, TxRecord)>,
    /// The `(sender, nonce)` pair of each transaction that has one.
    nonces: Vec<(NonceKey, TxId)>,
    /// The encoded capsule, for the key vault.
    capsule: Vec<u8>,
}

/// Dropping it lets the writer finish what it holds and releases the database, so it can be
/// opened again at once.
pub struct CityStore {
    db: Arc<Database>,
    writer: GroupCommit<WriteReq, (), CityStoreError>,
    /// Why the last write of records failed, until one succeeds (what `/readyz` reports).
    failure: Arc<Mutex<Option<String>>>,
    /// Notified when batches enter the outbox (only with an uplink).
    outbox_added: Arc<tokio::sync::Notify>,
}

/// Where a batch stands with the continent (`GET /v1/batches/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkState {
    /// In the outbox: the continent has not merged it yet.
    Waiting,
    Merged(ContinentPlacement),
}

impl CityStore {
    /// Opens or creates `DIR/city.redb` and starts its writer thread, with the default
    /// page cache (`[limits] store_cache_bytes`).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(
            dir,
            crate::config::LimitsConfig::default().store_cache_bytes,
        )
    }

    /// [`CityStore::open`] with a page cache of `cache_bytes` (redb's default, 1 GiB, would
    /// let the index grow the city's memory by that much).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self> {
        Self::open_with(dir, cache_bytes, false)
    }

    /// [`CityStore::open_with_cache`]; with `uplink`, every recorded batch also enters the
    /// outbox for the continent.
    pub fn open_with(dir: &Path, cache_bytes: usize, uplink: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(dir.join(FILE_NAME))?,
        );
        {
            let tx = db.begin_write()?;
            tx.open_table(TXS)?;
            tx.open_table(BATCHES)?;
            tx.open_table(BY_SEQ)?;
            tx.open_table(META)?;
            tx.open_table(BELOW_LIGHT)?;
            tx.open_table(LOST)?;
            tx.open_table(NONCES)?;
            tx.open_table(CAPSULES)?;
            tx.open_table(UPLINK_OUTBOX)?;
            tx.open_table(UPLINK_PLACED)?;
            tx.commit()?;
        }
        let options = Options {
            name: "city-store-writer",
            queue: QUEUE,
            max_requests: MAX_GROUP,
            max_weight: None,
            // A failed transaction leaves nothing behind: the next group may well succeed.
            stop_after_failure: false,
        };
        let thread_db = db.clone();
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = failure.clone();
        let outbox_added = Arc::new(tokio::sync::Notify::new());
        let thread_outbox = outbox_added.clone();
        let writer = GroupCommit::spawn(options, move |group: &mut [WriteReq]| {
            let written = write_group(&thread_db, group, uplink);
            if uplink && written.is_ok() {
                thread_outbox.notify_one();
            }
            *thread_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                written.as_ref().err().map(ToString::to_string);
            written
                .map(|()| vec![(); group.len()])
                .inspect_err(|e| {
                    tracing::error!(error = %e, records = group.len(), "writing the city's status index failed");
                })
        })?;
        Ok(Self {
            db,
            writer,
            failure,
            outbox_added,
        })
    }

    /// Why the last write of records failed, while no later one succeeded. (redb refuses
    /// every write on a handle after a failed one, so after a disk error this stays set
    /// until the node restarts.)
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes a stored batch and its transactions durable in the index, with the
    /// `(sender, nonce)` pair of each (a pair already recorded for another transaction
    /// keeps its first owner), and its capsule in the key vault, in one transaction;
    /// returns once fsynced.
    pub async fn record(
        &self,
        batch: BatchRecord,
        txs: Vec<(TxId, TxRecord)>,
        capsule: &Capsule,
    ) -> Result<()> {
        let batch_id = batch.header.id();
        let nonces = txs
            .iter()
            .filter_map(|(id, rec)| NonceKey::of_canonical(&rec.canonical).map(|k| (k, *id)))
            .collect();
        match self
            .writer
            .submit(WriteReq {
                batch_id,
                batch,
                txs,
                nonces,
                capsule: capsule.to_bytes(),
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(GroupError::Closed) => Err(CityStoreError::Closed),
            Err(GroupError::Failed(e)) => Err(CityStoreError::Group(e)),
        }
    }

    pub fn get_tx(&self, id: &TxId) -> Result<Option<TxRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TXS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        let mut rec: TxRecord = crate::messages::decode(v.value())?;
        rec.lost = tx.open_table(LOST)?.get(&rec.batch_id)?.is_some();
        Ok(Some(rec))
    }

    /// A transaction's record, or if there is none, the transaction that used its
    /// `(sender, nonce)` pair: what the Intake needs to know of a new transaction, in one
    /// read.
    pub fn lookup(&self, id: &TxId, nonce: &NonceKey) -> Result<Lookup> {
        let tx = self.db.begin_read()?;
        if let Some(v) = tx.open_table(TXS)?.get(id)? {
            let mut rec: TxRecord = crate::messages::decode(v.value())?;
            rec.lost = tx.open_table(LOST)?.get(&rec.batch_id)?.is_some();
            return Ok(Lookup::Stored(rec));
        }
        Ok(match tx.open_table(NONCES)?.get(&nonce.0)? {
            Some(owner) => Lookup::NonceUsedBy(*owner.value()),
            None => Lookup::Unknown,
        })
    }

    /// The batch's capsule from the key vault.
    pub fn capsule(&self, id: &BatchId) -> Result<Option<Capsule>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CAPSULES)?;
        table
            .get(id)?
            .map(|v| crate::messages::decode(v.value()).map_err(CityStoreError::from))
            .transpose()
    }

    pub fn get_batch(&self, id: &BatchId) -> Result<Option<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BATCHES)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        let mut rec: BatchRecord = crate::messages::decode(v.value())?;
        rec.lost = tx.open_table(LOST)?.get(id)?.is_some();
        Ok(Some(rec))
    }

    /// The batches this index places on the immutable log that `held` says the log does
    /// not hold, and that are not marked lost yet.
    pub fn log_batches_missing(&self, held: impl Fn(&BatchId) -> bool) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let below = tx.open_table(BELOW_LIGHT)?;
        let batches = tx.open_table(BATCHES)?;
        let lost = tx.open_table(LOST)?;
        let mut out = Vec::new();
        for entry in below.iter()? {
            let (id, _) = entry?;
            let id = *id.value();
            if held(&id) || lost.get(&id)?.is_some() {
                continue;
            }
            if let Some(v) = batches.get(&id)? {
                let rec: BatchRecord = crate::messages::decode(v.value())?;
                if rec.tier == Tier::Log {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Marks batches lost (fsynced): their transactions read as lost, not stored, and repair
    /// upward leaves them to the search for another copy, until [`CityStore::relocate`]
    /// gives them a new home.
    pub fn mark_lost(&self, ids: &[BatchId], found_ms: u64) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut lost = tx.open_table(LOST)?;
            let mut below = tx.open_table(BELOW_LIGHT)?;
            for id in ids {
                lost.insert(id, found_ms)?;
                below.remove(id)?;
            }
        }
        Ok(tx.commit()?)
    }

    /// Up to `limit` batches marked lost, in id order.
    pub fn lost_batches(&self, limit: usize) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let lost = tx.open_table(LOST)?;
        let batches = tx.open_table(BATCHES)?;
        let mut out = Vec::new();
        for entry in lost.iter()?.take(limit) {
            let (id, _) = entry?;
            if let Some(v) = batches.get(id.value())? {
                let mut rec: BatchRecord = crate::messages::decode(v.value())?;
                rec.lost = true;
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// How many batches are marked lost.
    pub fn lost_count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(LOST)?.len()?)
    }

    /// Where the DAG resumes: the first unreserved sequence number, and the ids of the
    /// `parents` most recent durable batches, oldest first.
    pub fn resume_point(&self, parents: usize) -> Result<(u64, Vec<BatchId>)> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let reserved = meta.get(SEQ_RESERVED)?.map_or(0, |v| v.value());
        let by_seq = tx.open_table(BY_SEQ)?;
        let mut recent: Vec<BatchId> = by_seq
            .iter()?
            .rev()
            .take(parents)
            .map(|e| e.map(|(_, id)| *id.value()).map_err(CityStoreError::from))
            .collect::<Result<_>>()?;
        recent.reverse();
        Ok((reserved, recent))
    }

    /// Reserves sequence numbers below `upto` (fsynced before it returns).
    pub fn reserve_seq(&self, upto: u64) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut meta = tx.open_table(META)?;
            let current = meta.get(SEQ_RESERVED)?.map_or(0, |v| v.value());
            meta.insert(SEQ_RESERVED, current.max(upto))?;
        }
        Ok(tx.commit()?)
    }

    /// Moves a batch (and its transactions) to a new home after a repair; fsynced.
    pub fn relocate(
        &self,
        batch_id: &BatchId,
        tier: Tier,
        holders: Vec<String>,
        acks: Vec<PohAck>,
    ) -> Result<()> {
        let Some(mut rec) = self.get_batch(batch_id)? else {
            return Err(CityStoreError::NoBatch(*batch_id));
        };
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut txs = tx.open_table(TXS)?;
            for id in &rec.tx_ids {
                let updated = match txs.get(id)? {
                    Some(v) => {
                        let mut t: TxRecord = crate::messages::decode(v.value())?;
                        // A transaction re-batched later keeps its newer home.
                        if t.batch_id != *batch_id {
                            continue;
                        }
                        t.tier = tier;
                        t.holders = holders.clone();
                        t.acks = acks.len() as u32;
                        t
                    }
                    None => continue,
                };
                txs.insert(id, crate::messages::encode(&updated).as_slice())?;
            }
            let mut below = tx.open_table(BELOW_LIGHT)?;
            if tier == Tier::Light {
                below.remove(batch_id)?;
            } else {
                below.insert(batch_id, ())?;
            }
            // A new home ends a loss.
            tx.open_table(LOST)?.remove(batch_id)?;
            rec.tier = tier;
            rec.holders = holders;
            rec.acks = acks;
            rec.lost = false;
            let mut batches = tx.open_table(BATCHES)?;
            batches.insert(batch_id, crate::messages::encode(&rec).as_slice())?;
        }
        Ok(tx.commit()?)
    }

    /// Up to `limit` batches on `tier` with sequence numbers from `from_seq` on, in order.
    pub fn batches_on(&self, tier: Tier, from_seq: u64, limit: usize) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let by_seq = tx.open_table(BY_SEQ)?;
        let batches = tx.open_table(BATCHES)?;
        let mut out = Vec::new();
        for entry in by_seq.range(from_seq..)? {
            let (_, id) = entry?;
            if let Some(v) = batches.get(id.value())? {
                let rec: BatchRecord = crate::messages::decode(v.value())?;
                if rec.tier == tier {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` durable batches held below the light tier (for repair upward).
    pub fn batches_below_light(&self, limit: usize) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let below = tx.open_table(BELOW_LIGHT)?;
        let batches = tx.open_table(BATCHES)?;
        let mut out = Vec::new();
        for entry in below.iter()?.take(limit) {
            let (id, _) = entry?;
            if let Some(v) = batches.get(id.value())? {
                out.push(crate::messages::decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Notified when batches enter the outbox.
    pub fn outbox_added(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_added.clone()
    }

    /// Up to `limit` batches waiting for the continent, oldest first, leaving out those
    /// in `skip` and those lost from the log (their certificate would name a tier that no
    /// longer holds them; they go once repair has found them a home).
    pub fn uplink_pending(
        &self,
        limit: usize,
        skip: &std::collections::HashSet<BatchId>,
    ) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        let outbox = tx.open_table(UPLINK_OUTBOX)?;
        let batches = tx.open_table(BATCHES)?;
        let lost = tx.open_table(LOST)?;
        let mut out = Vec::new();
        for entry in outbox.iter()? {
            if out.len() >= limit {
                break;
            }
            let (_, id) = entry?;
            let id = *id.value();
            if skip.contains(&id) || lost.get(&id)?.is_some() {
                continue;
            }
            if let Some(v) = batches.get(&id)? {
                out.push(crate::messages::decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// The continent merged these batches: they leave the outbox and their places are
    /// kept. Fsynced. Blocks.
    pub fn uplink_delivered(&self, done: &[(u64, BatchId, ContinentPlacement)]) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut outbox = tx.open_table(UPLINK_OUTBOX)?;
            let mut placed = tx.open_table(UPLINK_PLACED)?;
            for (seq, id, placement) in done {
                outbox.remove(seq)?;
                placed.insert(id, crate::messages::encode(placement).as_slice())?;
            }
        }
        Ok(tx.commit()?)
    }

    /// Where batch `id` (of sequence number `seq`) stands with the continent; `None` when
    /// it was never meant for one.
    pub fn uplink_state(&self, id: &BatchId, seq: u64) -> Result<Option<UplinkState>> {
        let tx = self.db.begin_read()?;
        if let Some(v) = tx.open_table(UPLINK_PLACED)?.get(id)? {
            return Ok(Some(UplinkState::Merged(crate::messages::decode(
                v.value(),
            )?)));
        }
        let waiting = tx
            .open_table(UPLINK_OUTBOX)?
            .get(seq)?
            .is_some_and(|v| v.value() == id);
        Ok(waiting.then_some(UplinkState::Waiting))
    }

    /// Batches waiting for the continent.
    pub fn uplink_depth(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(UPLINK_OUTBOX)?.len()?)
    }
}

fn write_group(db: &Database, group: &[WriteReq], uplink: bool) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut txs = tx.open_table(TXS)?;
        let mut batches = tx.open_table(BATCHES)?;
        let mut by_seq = tx.open_table(BY_SEQ)?;
        let mut below = tx.open_table(BELOW_LIGHT)?;
        let mut nonces = tx.open_table(NONCES)?;
        let mut capsules = tx.open_table(CAPSULES)?;
        let mut outbox = tx.open_table(UPLINK_OUTBOX)?;
        for req in group {
            capsules.insert(&req.batch_id, req.capsule.as_slice())?;
            if uplink {
                outbox.insert(req.batch.header.seq, &req.batch_id)?;
            }
            if req.batch.tier != Tier::Light {
                below.insert(&req.batch_id, ())?;
            }
            batches.insert(
                &req.batch_id,
                crate::messages::encode(&req.batch).as_slice(),
            )?;
            by_seq.insert(req.batch.header.seq, &req.batch_id)?;
            for (id, rec) in &req.txs {
                txs.insert(id, crate::messages::encode(rec).as_slice())?;
            }
            for (key, id) in &req.nonces {
                let owner = nonces.get(&key.0)?.map(|v| *v.value());
                match owner {
                    None => {
                        nonces.insert(&key.0, id)?;
                    }
                    Some(owner) if owner == *id => {}
                    // Only when the Intake forgot a transaction it had admitted (it waited
                    // past the sweep) and admitted another with the same nonce before the
                    // first one's batch landed after all. Both are durable now; the pair
                    // keeps its first owner.
                    Some(owner) => tracing::warn!(
                        tx = %hex::encode(id),
                        first = %hex::encode(owner),
                        "a second transaction with a used (sender, nonce) pair was stored"
                    ),
                }
            }
        }
    }
    Ok(tx.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Batch;

    use crate::testkit::stand_in_capsule as capsule;

    fn record(seq: u64) -> (BatchRecord, Vec<(TxId, TxRecord)>) {
        let header = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &[], seq).header;
        let batch_id = header.id();
        let tx_id = [seq as u8; 32];
        (
            BatchRecord {
                header,
                tx_ids: vec![tx_id],
                tier: Tier::Light,
                holders: vec!["light-1".into()],
                acks: vec![],
                lost: false,
            },
            vec![(
                tx_id,
                TxRecord {
                    flag: FlagKind::FreshTx,
                    canonical: "{}".into(),
                    batch_id,
                    tier: Tier::Light,
                    holders: vec!["light-1".into()],
                    acks: 3,
                    lost: false,
                },
            )],
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_survive_reopening_and_give_the_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CityStore::open(dir.path()).unwrap();
            assert_eq!(store.resume_point(2).unwrap(), (0, vec![]));
            store.reserve_seq(SEQ_BLOCK).unwrap();
            let writes: Vec<_> = (0..50u64)
                .map(|s| {
                    let (b, t) = record(s);
                    let c = capsule(b.header.id());
                    let store = &store;
                    async move { store.record(b, t, &c).await }
                })
                .collect();
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
        }
        // The vault reads back from a closed store, and the open store serves it too.
        let id7 = record(7).0.header.id();
        let reader = crate::storage::vault::VaultReader::open(dir.path()).unwrap();
        assert_eq!(reader.capsule(&id7).unwrap(), Some(capsule(id7)));
        assert_eq!(reader.capsule(&[9; 32]).unwrap(), None);
        drop(reader);
        let store = CityStore::open(dir.path()).unwrap();
        assert_eq!(store.capsule(&id7).unwrap(), Some(capsule(id7)));
        let (next, recent) = store.resume_point(2).unwrap();
        assert_eq!(next, SEQ_BLOCK, "resumes past every reserved number");
        assert_eq!(
            recent,
            vec![record(48).0.header.id(), record(49).0.header.id()]
        );
        let tx = store.get_tx(&[7; 32]).unwrap().unwrap();
        assert_eq!(tx.batch_id, record(7).0.header.id());
        let batch = store.get_batch(&tx.batch_id).unwrap().unwrap();
        assert_eq!(batch.tx_ids, vec![[7; 32]]);
        assert!(store.get_tx(&[200; 32]).unwrap().is_none());
        assert!(store.batches_below_light(10).unwrap().is_empty());
        // A batch on the log is listed for repair until it is relocated to light nodes.
        let (mut b, t) = record(60);
        b.tier = Tier::Log;
        let id = b.header.id();
        store.record(b, t, &capsule(id)).await.unwrap();
        let below = store.batches_below_light(10).unwrap();
        assert_eq!(below.len(), 1);
        assert_eq!(below[0].header.id(), id);
        store
            .relocate(&id, Tier::Light, vec!["light-2".into()], vec![])
            .unwrap();
        assert!(store.batches_below_light(10).unwrap().is_empty());
        assert_eq!(
            store.get_tx(&[60; 32]).unwrap().unwrap().holders,
            vec!["light-2".to_string()]
        );
        assert_eq!(store.batches_on(Tier::Light, 59, 10).unwrap().len(), 1);
    }
}

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
//! The store is an **index**, not a copy of the transactions: a transaction's record says
//! which batch holds it, its flag and where the batch is (tier, holders, acks); its body
//! is read back from the tiers (`city::reads`). Beside the index it keeps a **bounded
//! body cache**: the sealed bytes of recent batches (exactly what the tiers hold), written
//! with the batch's record and evicted oldest batch first once they pass
//! `[reads] body_cache_bytes`. Only batches stored on a tier are ever evicted; a batch
//! marked lost from the log keeps its cached body (it may be the last copy). Duplicate
//! detection reads only the index and the `(sender, nonce)` table.
//!
//! The **read vault** keeps, for every batch, its data key wrapped under the city's own
//! read key (`DATA_DIR/read.key`, not in this file), written in the transaction that
//! writes the capsule: the city can open what it sealed, and this file alone opens
//! nothing.
//!
//! The file carries its format ([`SCHEMA`]); one written by an earlier format (1 kept
//! every transaction body in it, 2 was written before batches carried object edges in
//! wire version 2) is refused with [`CityStoreError::Legacy`].
//!
//! The **object heads** (`engines::objects`): object id → its kind, owner, last writer and
//! version, advanced in the transaction that records the batch, so they are never ahead
//! of or behind the batches.
//!
//! **Retention** (`[storage] light_retention`): the batches whose home is the light tier are
//! indexed by sequence number (`light_by_seq`, built once from the records when a file
//! written before it is opened); [`CityStore::archive_candidates`] walks it oldest first
//! for those the rule [`archivable`] lets go, and [`CityStore::archive`] records them as
//! home on full nodes (`archived`: repair upward leaves it there) with its light pieces
//! pending release (`light_releases`), in one fsynced transaction, before any piece is
//! released.
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
use super::rewards::ACCOUNTS;
use crate::crypto::vault::ReadWrapped;
use crate::engines::rewards::{Account, Credit, RewardEngine};
use crate::messages::federation::ContinentPlacement;
use crate::messages::{
    BatchHeader, BatchId, Capsule, FlagKind, NonceKey, ObjectHead, ObjectRef, PohAck, Tier, TxId,
    WireError,
};

pub const FILE_NAME: &str = "city.redb";

/// The format of `city.redb` this version writes: 3, an index with a bounded cache of
/// sealed bodies and object heads, its records in wire version 2. (1, with no format
/// recorded, kept every transaction's signed JSON; 2 wrote wire version 1.)
pub const SCHEMA: u64 = 3;
const SCHEMA_KEY: &str = "schema";
/// Bytes of sealed bodies in the body cache.
const CACHE_USED_KEY: &str = "body_cache_bytes";

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
/// The read vault: batch id → its data key wrapped under the city's read key.
const READ_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("vault_read_keys");
/// The body cache: batch id → the sealed batch's bytes.
const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("body_cache");
/// The body cache in eviction order: batch sequence number → batch id.
const BODY_ORDER: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("body_cache_order");
/// The object heads: object id → its encoded [`ObjectHead`].
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("object_heads");
/// Where a batch was before repair moved it (the copies stay): batch id → encoded
/// `Vec<Home>`, oldest first.
const PAST_HOMES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("past_homes");
/// Batches whose home is the light tier, by sequence number: what retention archives
/// (oldest first) and repair challenges, without scanning every batch.
const LIGHT_BY_SEQ: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("light_by_seq");
/// Light batches archived to full nodes by retention: batch id → when (ms). Their home
/// is full by policy: repair upward leaves them there.
const ARCHIVED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("archived");
/// Light pieces of archived batches not released yet: batch sequence number → encoded
/// [`PendingRelease`]. Written with the archive record, so a crash before the releases
/// loses none of them.
const RELEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("light_releases");
/// Key in `META`: set once `LIGHT_BY_SEQ` holds every light batch (it is built from the
/// records the first time a `city.redb` written before it is opened).
const LIGHT_INDEX_KEY: &str = "light_index_built";

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
    /// A `city.redb` of an earlier format, which this version does not read.
    #[error(
        "{0} was written by an earlier citychain (format 1 kept every transaction body in it; format 2 wrote records before batches carried object dependency edges); this version writes format {SCHEMA} and does not convert it: move it aside to start with an empty index (the batches stay on their tiers)"
    )]
    Legacy(String),
}

pub type Result<T> = std::result::Result<T, CityStoreError>;

/// An acknowledged transaction: where it is, not what it says (its body is in its
/// batch, read back from the body cache or a tier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub flag: FlagKind,
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

/// A stored batch to record ([`CityStore::record`]).
pub struct NewBatch {
    pub batch: BatchRecord,
    pub txs: Vec<(TxId, TxRecord)>,
    /// The `(sender, nonce)` pair of each transaction that has one.
    pub nonces: Vec<(NonceKey, TxId)>,
    /// For the key vault.
    pub capsule: Capsule,
    /// For the read vault: the data key under the city's read key.
    pub read_key: Option<ReadWrapped>,
    /// The sealed bytes, for the body cache.
    pub sealed: Option<bytes::Bytes>,
    /// The rewards ledger's entries for the batch's write acks: added with the record,
    /// only if the batch was not recorded before (so each is credited once).
    pub credits: Vec<Credit>,
    /// Each object access of the batch's transactions, in batch order, to advance the
    /// object heads with (empty with `[objects] engine = "off"`).
    pub objects: Vec<ObjectTouch>,
}

/// One transaction's access to one object, as the heads record it.
#[derive(Debug, Clone)]
pub struct ObjectTouch {
    pub tx: TxId,
    pub sender: String,
    pub object: ObjectRef,
}

impl NewBatch {
    /// A record with no nonces, read key or body (tests add what they need).
    pub fn new(batch: BatchRecord, txs: Vec<(TxId, TxRecord)>, capsule: Capsule) -> Self {
        Self {
            batch,
            txs,
            nonces: Vec::new(),
            capsule,
            read_key: None,
            sealed: None,
            credits: Vec::new(),
            objects: Vec::new(),
        }
    }
}

/// The light pieces of an archived batch still to release: (holder, piece index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRelease {
    pub batch_id: BatchId,
    pub pieces: Vec<(String, u8)>,
}

/// A light batch retention copied to full nodes, to record as archived
/// ([`CityStore::archive`]): the full nodes that hold it, their acks, and the credits
/// those acks earn.
#[derive(Debug, Clone)]
pub struct Archived {
    pub batch_id: BatchId,
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
    pub credits: Vec<Credit>,
}

/// Where a batch stands with the continent, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The city has no `[uplink]`: there is no federation checkpoint to wait for.
    NoUplink,
    /// In the outbox: the continent has not acknowledged it yet.
    Waiting,
    /// The continent acknowledged (merged) it: it is in the federation's checkpoint flow.
    Acknowledged,
}

/// The retention rule: a light batch may be archived to full nodes (and its pieces
/// released) once it is at least `retention` old and, with an uplink, the continent has
/// acknowledged its header. A `retention` of zero archives nothing.
pub fn archivable(
    created_at_ms: u64,
    now_ms: u64,
    retention: std::time::Duration,
    upstream: Upstream,
) -> bool {
    if retention.is_zero() {
        return false;
    }
    let old_enough = now_ms.saturating_sub(created_at_ms) >= retention.as_millis() as u64;
    old_enough && upstream != Upstream::Waiting
}

/// Entries of the light index a retention window looks at, per batch it may return: the
/// oldest light batches may be waiting for the continent (skipped, not archived), so a
/// window looks a little past them, but never far.
const ARCHIVE_LOOKAHEAD: usize = 4;

/// One place a batch was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Home {
    pub tier: Tier,
    pub holders: Vec<String>,
}

struct WriteReq {
    batch_id: BatchId,
    batch: BatchRecord,
    txs: Vec<(TxId, TxRecord)>,
    nonces: Vec<(NonceKey, TxId)>,
    /// The encoded capsule, for the key vault.
    capsule: Vec<u8>,
    read_key: Option<Vec<u8>>,
    sealed: Option<bytes::Bytes>,
    credits: Vec<Credit>,
    objects: Vec<ObjectTouch>,
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
    /// Whether recorded batches enter the outbox for a continent.
    uplink: bool,
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
        Self::open_bounded(
            dir,
            cache_bytes,
            uplink,
            crate::config::ReadsConfig::default().body_cache_bytes,
        )
    }

    /// [`CityStore::open_with`], keeping at most `body_cache_bytes` of sealed bodies of
    /// stored batches in the body cache.
    pub fn open_bounded(
        dir: &Path,
        cache_bytes: usize,
        uplink: bool,
        body_cache_bytes: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(&path)?,
        );
        {
            let tx = db.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                let schema = meta.get(SCHEMA_KEY)?.map(|v| v.value());
                match schema {
                    Some(SCHEMA) => {}
                    Some(other) => {
                        return Err(CityStoreError::Legacy(format!(
                            "{} (format {other})",
                            path.display()
                        )));
                    }
                    None => {
                        // Format 1 wrote no format; a file with records in it is one.
                        if !tx.open_table(TXS)?.is_empty()?
                            || !tx.open_table(BATCHES)?.is_empty()?
                        {
                            return Err(CityStoreError::Legacy(path.display().to_string()));
                        }
                        meta.insert(SCHEMA_KEY, SCHEMA)?;
                    }
                }
            }
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
            tx.open_table(READ_KEYS)?;
            tx.open_table(BODIES)?;
            tx.open_table(BODY_ORDER)?;
            tx.open_table(PAST_HOMES)?;
            tx.open_table(ACCOUNTS)?;
            tx.open_table(OBJECTS)?;
            tx.open_table(ARCHIVED)?;
            tx.open_table(RELEASES)?;
            build_light_index(&tx)?;
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
            let written = write_group(&thread_db, group, uplink, body_cache_bytes).map(|cached| {
                metrics::gauge!(crate::metrics::BODY_CACHE_BYTES).set(cached as f64);
            });
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
            uplink,
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
    /// keeps its first owner), its capsule in the key vault, its read key in the read
    /// vault and its sealed bytes in the body cache (evicting the oldest stored bodies
    /// past the bound), in one transaction; returns once fsynced.
    pub async fn record(&self, new: NewBatch) -> Result<()> {
        let batch_id = new.batch.header.id();
        match self
            .writer
            .submit(WriteReq {
                batch_id,
                batch: new.batch,
                txs: new.txs,
                nonces: new.nonces,
                capsule: new.capsule.to_bytes(),
                read_key: new.read_key.as_ref().map(crate::messages::encode),
                sealed: new.sealed,
                credits: new.credits,
                objects: new.objects,
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

    /// The durable heads of those of `ids` the city has seen, in one read.
    pub fn object_heads<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<std::collections::HashMap<String, ObjectHead>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if let Some(v) = table.get(id)? {
                out.insert(id.to_string(), crate::messages::decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// One object's durable head.
    pub fn object_head(&self, id: &str) -> Result<Option<ObjectHead>> {
        Ok(self.object_heads([id])?.remove(id))
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

    /// The batch's data key wrapped under the city's read key, from the read vault.
    pub fn read_key(&self, id: &BatchId) -> Result<Option<ReadWrapped>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(READ_KEYS)?;
        table
            .get(id)?
            .map(|v| crate::messages::decode(v.value()).map_err(CityStoreError::from))
            .transpose()
    }

    /// The batch's sealed bytes, if the body cache holds them.
    pub fn cached_body(&self, id: &BatchId) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(BODIES)?.get(id)?.map(|v| v.value().to_vec()))
    }

    /// Batches and bytes in the body cache.
    pub fn cache_usage(&self) -> Result<(u64, u64)> {
        let tx = self.db.begin_read()?;
        let used = tx
            .open_table(META)?
            .get(CACHE_USED_KEY)?
            .map_or(0, |v| v.value());
        Ok((tx.open_table(BODIES)?.len()?, used))
    }

    /// Where the batch was before repair moved it, oldest first (its copies there stay).
    pub fn past_homes(&self, id: &BatchId) -> Result<Vec<Home>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(PAST_HOMES)?;
        Ok(match table.get(id)? {
            Some(v) => crate::messages::decode(v.value())?,
            None => Vec::new(),
        })
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
        self.relocate_credited(batch_id, tier, holders, acks, &[])
    }

    /// [`CityStore::relocate`], adding `credits` (the repair's acks) to the rewards
    /// ledger in the same transaction.
    pub fn relocate_credited(
        &self,
        batch_id: &BatchId,
        tier: Tier,
        holders: Vec<String>,
        acks: Vec<PohAck>,
        credits: &[Credit],
    ) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        move_batch_in(&tx, batch_id, tier, holders, acks, credits, None)?;
        tx.commit()?;
        super::rewards::count(credits);
        Ok(())
    }

    /// Retention: records each light batch of `batches` as moved to its full holders (their
    /// acks), its home full by policy (repair upward leaves it there), the light tier among
    /// its past homes, and every light piece its record names as pending release, all in
    /// one fsynced transaction, before any piece is released. For each, whether it was
    /// archived (`false`, and nothing written for it: no longer on light nodes). Blocks.
    pub fn archive(&self, batches: &[Archived], now_ms: u64) -> Result<Vec<bool>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut done = Vec::with_capacity(batches.len());
        for b in batches {
            done.push(move_batch_in(
                &tx,
                &b.batch_id,
                Tier::Full,
                b.holders.clone(),
                b.acks.clone(),
                &b.credits,
                Some(now_ms),
            )?);
        }
        if !done.contains(&true) {
            tx.abort()?;
            return Ok(done);
        }
        tx.commit()?;
        for (b, _) in batches.iter().zip(&done).filter(|(_, d)| **d) {
            super::rewards::count(&b.credits);
        }
        Ok(done)
    }

    /// Whether retention archived batch `id` to full nodes (its home is full by policy).
    pub fn is_archived(&self, id: &BatchId) -> Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ARCHIVED)?.get(id)?.is_some())
    }

    /// Up to `limit` light batches the retention rule ([`archivable`]) lets go now, oldest
    /// first, from the light index: it stops at the first batch too young and looks at no
    /// more than [`ARCHIVE_LOOKAHEAD`] entries per batch asked for.
    pub fn archive_candidates(
        &self,
        now_ms: u64,
        retention: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<BatchRecord>> {
        if retention.is_zero() || limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read()?;
        let light = tx.open_table(LIGHT_BY_SEQ)?;
        let batches = tx.open_table(BATCHES)?;
        let placed = tx.open_table(UPLINK_PLACED)?;
        let lost = tx.open_table(LOST)?;
        let mut out = Vec::new();
        for entry in light.iter()?.take(limit.saturating_mul(ARCHIVE_LOOKAHEAD)) {
            let (_, id) = entry?;
            let id = *id.value();
            let Some(v) = batches.get(&id)? else {
                continue;
            };
            let rec: BatchRecord = crate::messages::decode(v.value())?;
            if rec.tier != Tier::Light || lost.get(&id)?.is_some() {
                continue;
            }
            let upstream = if !self.uplink {
                Upstream::NoUplink
            } else if placed.get(&id)?.is_some() {
                Upstream::Acknowledged
            } else {
                Upstream::Waiting
            };
            if !archivable(
                rec.header.created_at_ms,
                now_ms,
                retention,
                Upstream::NoUplink,
            ) {
                // Too young; the batches after it are younger still.
                break;
            }
            if archivable(rec.header.created_at_ms, now_ms, retention, upstream) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` archived batches whose light pieces are not all released yet, oldest
    /// first: (sequence number, what is left to release).
    pub fn pending_releases(&self, limit: usize) -> Result<Vec<(u64, PendingRelease)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RELEASES)?;
        let mut out = Vec::new();
        for entry in table.iter()?.take(limit) {
            let (seq, v) = entry?;
            out.push((seq.value(), crate::messages::decode(v.value())?));
        }
        Ok(out)
    }

    /// Batches held below their home tier (full nodes, MongoDB or the log in place of light
    /// nodes), not marked lost: what repair upward has yet to move.
    pub fn below_light_count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(BELOW_LIGHT)?.len()?)
    }

    /// Archived batches whose light pieces are not all released yet.
    pub fn pending_release_count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(RELEASES)?.len()?)
    }

    /// What is left to release of each archived batch after a round of releases (an empty
    /// list: all released, the entry goes), in one transaction. Blocks.
    pub fn update_releases(&self, left: &[(u64, PendingRelease)]) -> Result<()> {
        if left.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut table = tx.open_table(RELEASES)?;
            for (seq, pending) in left {
                if pending.pieces.is_empty() {
                    table.remove(seq)?;
                } else {
                    table.insert(seq, crate::messages::encode(pending).as_slice())?;
                }
            }
        }
        Ok(tx.commit()?)
    }

    /// Adds `credits` (a repair round's challenge results) to the rewards ledger, in one
    /// transaction; returns once fsynced. Blocks.
    pub fn record_credits(&self, credits: &[Credit], engine: &dyn RewardEngine) -> Result<()> {
        if credits.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        super::rewards::apply::<CityStoreError>(
            &mut tx.open_table(ACCOUNTS)?,
            credits,
            Some(engine),
        )?;
        tx.commit()?;
        super::rewards::count(credits);
        Ok(())
    }

    /// The rewards ledger's account of node `id`, if it was ever credited or challenged.
    pub fn reward_account(&self, id: &str) -> Result<Option<Account>> {
        let tx = self.db.begin_read()?;
        match tx.open_table(ACCOUNTS)?.get(id)? {
            Some(v) => Ok(Some(crate::messages::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every account of the rewards ledger, by node id.
    pub fn reward_accounts(&self) -> Result<Vec<(String, Account)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, v) = entry?;
            out.push((id.value().to_owned(), crate::messages::decode(v.value())?));
        }
        Ok(out)
    }

    /// Up to `limit` batches on `tier` with sequence numbers from `from_seq` on, in order.
    pub fn batches_on(&self, tier: Tier, from_seq: u64, limit: usize) -> Result<Vec<BatchRecord>> {
        let tx = self.db.begin_read()?;
        // Light batches have an index of their own; the other tiers are found by a walk.
        let by_seq = tx.open_table(if tier == Tier::Light {
            LIGHT_BY_SEQ
        } else {
            BY_SEQ
        })?;
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

    /// How many transactions and batches the index holds (each count is kept by the
    /// database: no scan).
    pub fn record_counts(&self) -> Result<(u64, u64)> {
        let tx = self.db.begin_read()?;
        Ok((tx.open_table(TXS)?.len()?, tx.open_table(BATCHES)?.len()?))
    }

    /// Batches waiting for the continent.
    pub fn uplink_depth(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(UPLINK_OUTBOX)?.len()?)
    }
}

/// The writes of a batch's move to `tier` in `tx` ([`CityStore::relocate_credited`], and
/// [`CityStore::archive`] with `archived_at`); `false`, and nothing written, when
/// `archived_at` is given and the batch is no longer on light nodes.
fn move_batch_in(
    tx: &redb::WriteTransaction,
    batch_id: &BatchId,
    tier: Tier,
    holders: Vec<String>,
    acks: Vec<PohAck>,
    credits: &[Credit],
    archived_at: Option<u64>,
) -> Result<bool> {
    {
        let mut batches = tx.open_table(BATCHES)?;
        let mut rec: BatchRecord = match batches.get(batch_id)? {
            Some(v) => crate::messages::decode(v.value())?,
            None => return Err(CityStoreError::NoBatch(*batch_id)),
        };
        if archived_at.is_some() && rec.tier != Tier::Light {
            return Ok(false);
        }
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
        let mut archived = tx.open_table(ARCHIVED)?;
        if let Some(at) = archived_at {
            archived.insert(batch_id, at)?;
            let pieces: Vec<(String, u8)> = rec
                .acks
                .iter()
                .filter_map(|a| a.piece.map(|p| (a.holder_id.clone(), p.index)))
                .collect();
            if !pieces.is_empty() {
                let pending = PendingRelease {
                    batch_id: *batch_id,
                    pieces,
                };
                tx.open_table(RELEASES)?
                    .insert(rec.header.seq, crate::messages::encode(&pending).as_slice())?;
            }
        } else if tier == Tier::Light {
            archived.remove(batch_id)?;
        }
        // An archived batch on full nodes is home; anything else off the light tier
        // is a fallback that repair upward works through.
        let home_below =
            tier != Tier::Light && !(tier == Tier::Full && archived.get(batch_id)?.is_some());
        let mut below = tx.open_table(BELOW_LIGHT)?;
        if home_below {
            below.insert(batch_id, ())?;
        } else {
            below.remove(batch_id)?;
        }
        let mut light = tx.open_table(LIGHT_BY_SEQ)?;
        if tier == Tier::Light {
            light.insert(rec.header.seq, batch_id)?;
        } else {
            light.remove(rec.header.seq)?;
        }
        // A new home ends a loss.
        tx.open_table(LOST)?.remove(batch_id)?;
        // The old home keeps its copy: remembered, for reads.
        let old = Home {
            tier: rec.tier,
            holders: rec.holders.clone(),
        };
        if old.tier != tier || old.holders != holders {
            let mut past = tx.open_table(PAST_HOMES)?;
            let mut homes: Vec<Home> = match past.get(batch_id)? {
                Some(v) => crate::messages::decode(v.value())?,
                None => Vec::new(),
            };
            if !homes.contains(&old) {
                homes.push(old);
                past.insert(batch_id, crate::messages::encode(&homes).as_slice())?;
            }
        }
        rec.tier = tier;
        rec.holders = holders;
        rec.acks = acks;
        rec.lost = false;
        batches.insert(batch_id, crate::messages::encode(&rec).as_slice())?;
        // Repair acks: no challenge among them, no reliability to move.
        super::rewards::apply::<CityStoreError>(&mut tx.open_table(ACCOUNTS)?, credits, None)?;
    }
    Ok(true)
}

/// Writes a group in one transaction; returns the bytes in the body cache after it.
fn write_group(
    db: &Database,
    group: &[WriteReq],
    uplink: bool,
    body_cache_bytes: u64,
) -> Result<u64> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let cached;
    let mut credited = Vec::new();
    {
        let mut txs = tx.open_table(TXS)?;
        let mut batches = tx.open_table(BATCHES)?;
        let mut by_seq = tx.open_table(BY_SEQ)?;
        let mut below = tx.open_table(BELOW_LIGHT)?;
        let mut light = tx.open_table(LIGHT_BY_SEQ)?;
        let mut nonces = tx.open_table(NONCES)?;
        let mut capsules = tx.open_table(CAPSULES)?;
        let mut outbox = tx.open_table(UPLINK_OUTBOX)?;
        let mut read_keys = tx.open_table(READ_KEYS)?;
        let mut bodies = tx.open_table(BODIES)?;
        let mut order = tx.open_table(BODY_ORDER)?;
        let mut meta = tx.open_table(META)?;
        let lost = tx.open_table(LOST)?;
        let mut accounts = tx.open_table(ACCOUNTS)?;
        let mut objects = tx.open_table(OBJECTS)?;
        let mut used = meta.get(CACHE_USED_KEY)?.map_or(0, |v| v.value());
        for req in group {
            // A batch recorded once already (never expected) neither credits its write
            // acks nor advances object heads a second time.
            let first = batches.get(&req.batch_id)?.is_none();
            if first && !req.credits.is_empty() {
                // Write acks: no challenge among them, no reliability to move.
                super::rewards::apply::<CityStoreError>(&mut accounts, &req.credits, None)?;
                credited.extend(req.credits.iter().cloned());
            }
            if first {
                for touch in &req.objects {
                    let id = touch.object.id.as_str();
                    let head = objects
                        .get(id)?
                        .map(|v| crate::messages::decode::<ObjectHead>(v.value()))
                        .transpose()?;
                    // Admission order is batch sequence order: whether this write comes
                    // after the head's last writer, whose batch may be recorded later.
                    let later = match head.as_ref().and_then(|h| h.last_batch) {
                        Some(last) if last != req.batch_id => match batches.get(&last)? {
                            Some(v) => {
                                let rec: BatchRecord = crate::messages::decode(v.value())?;
                                rec.header.seq < req.batch.header.seq
                            }
                            None => true,
                        },
                        _ => true,
                    };
                    let head = crate::engines::objects::advance_head(
                        head,
                        &touch.object,
                        &touch.sender,
                        touch.tx,
                        req.batch_id,
                        later,
                    );
                    objects.insert(id, crate::messages::encode(&head).as_slice())?;
                }
            }
            capsules.insert(&req.batch_id, req.capsule.as_slice())?;
            if let Some(read_key) = &req.read_key {
                read_keys.insert(&req.batch_id, read_key.as_slice())?;
            }
            if let Some(sealed) = &req.sealed
                && bodies.get(&req.batch_id)?.is_none()
            {
                bodies.insert(&req.batch_id, sealed.as_ref())?;
                order.insert(req.batch.header.seq, &req.batch_id)?;
                used += sealed.len() as u64;
            }
            if uplink {
                outbox.insert(req.batch.header.seq, &req.batch_id)?;
            }
            if req.batch.tier != Tier::Light {
                below.insert(&req.batch_id, ())?;
            } else {
                light.insert(req.batch.header.seq, &req.batch_id)?;
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
        if used > body_cache_bytes {
            used -= evict(&mut bodies, &mut order, &lost, used - body_cache_bytes)?;
        }
        meta.insert(CACHE_USED_KEY, used)?;
        cached = used;
    }
    tx.commit()?;
    super::rewards::count(&credited);
    Ok(cached)
}

/// Fills the light index from the records once, in the opening transaction, for a
/// `city.redb` written before it existed (a walk of every batch, at that one start only).
fn build_light_index(tx: &redb::WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    if meta.get(LIGHT_INDEX_KEY)?.is_some() {
        return Ok(());
    }
    let mut light = tx.open_table(LIGHT_BY_SEQ)?;
    let by_seq = tx.open_table(BY_SEQ)?;
    let batches = tx.open_table(BATCHES)?;
    for entry in by_seq.iter()? {
        let (seq, id) = entry?;
        if let Some(v) = batches.get(id.value())? {
            let rec: BatchRecord = crate::messages::decode(v.value())?;
            if rec.tier == Tier::Light {
                light.insert(seq.value(), id.value())?;
            }
        }
    }
    meta.insert(LIGHT_INDEX_KEY, 1)?;
    Ok(())
}

/// Evicts the oldest cached bodies, at least `excess` bytes of them if there are, never
/// one of a batch marked lost (its body may be its last copy); returns the bytes evicted.
fn evict(
    bodies: &mut redb::Table<&[u8; 32], &[u8]>,
    order: &mut redb::Table<u64, &[u8; 32]>,
    lost: &redb::Table<&[u8; 32], u64>,
    excess: u64,
) -> Result<u64> {
    let mut victims = Vec::new();
    let mut freed = 0u64;
    for entry in order.iter()? {
        if freed >= excess {
            break;
        }
        let (seq, id) = entry?;
        let (seq, id) = (seq.value(), *id.value());
        if lost.get(&id)?.is_some() {
            continue;
        }
        let len = bodies.get(&id)?.map_or(0, |v| v.value().len() as u64);
        freed += len;
        victims.push((seq, id));
    }
    for (seq, id) in victims {
        order.remove(seq)?;
        bodies.remove(&id)?;
    }
    Ok(freed)
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
    async fn object_heads_advance_with_their_batch_records_and_survive_reopening() {
        use crate::messages::{ObjectAccess, ObjectKind};
        let dir = tempfile::tempdir().unwrap();
        let touch = |tx: u8, sender: &str, id: &str, kind, access| ObjectTouch {
            tx: [tx; 32],
            sender: sender.into(),
            object: ObjectRef {
                id: id.into(),
                kind,
                access,
            },
        };
        let (b1, t1) = record(1);
        let id1 = b1.header.id();
        {
            let store = CityStore::open(dir.path()).unwrap();
            assert_eq!(store.object_head("coin").unwrap(), None);
            let new = || NewBatch {
                objects: vec![
                    touch(1, "alice", "coin", ObjectKind::Owned, ObjectAccess::Write),
                    touch(1, "alice", "law", ObjectKind::Immutable, ObjectAccess::Read),
                    touch(2, "bob", "coin", ObjectKind::Owned, ObjectAccess::Read),
                ],
                ..NewBatch::new(b1.clone(), t1.clone(), capsule(id1))
            };
            store.record(new()).await.unwrap();
            // The same batch recorded again does not count its writes twice.
            store.record(new()).await.unwrap();
        }
        let store = CityStore::open(dir.path()).unwrap();
        let heads = store.object_heads(["coin", "law", "never"]).unwrap();
        assert_eq!(heads.len(), 2);
        let coin = &heads["coin"];
        assert_eq!(coin.kind, ObjectKind::Owned);
        assert_eq!(coin.owner.as_deref(), Some("alice"));
        assert_eq!(
            (coin.version, coin.last_tx, coin.last_batch),
            (1, Some([1; 32]), Some(id1))
        );
        let law = &heads["law"];
        assert_eq!(
            (law.kind, law.version, law.last_tx),
            (ObjectKind::Immutable, 0, None)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_object_s_last_writer_is_the_latest_admitted_whatever_the_record_order() {
        use crate::messages::{ObjectAccess, ObjectKind};
        let dir = tempfile::tempdir().unwrap();
        let store = CityStore::open(dir.path()).unwrap();
        let write = |tx: u8| ObjectTouch {
            tx: [tx; 32],
            sender: "alice".into(),
            object: ObjectRef {
                id: "pool".into(),
                kind: ObjectKind::Shared,
                access: ObjectAccess::Write,
            },
        };
        // Batches 1, 2 and 3 each write the pool; 3's storage finishes first, then 1, then 2.
        let batches: Vec<_> = (1..=3u64).map(record).collect();
        for i in [2usize, 0, 1] {
            let (b, t) = batches[i].clone();
            let id = b.header.id();
            store
                .record(NewBatch {
                    objects: vec![write(i as u8 + 1)],
                    ..NewBatch::new(b, t, capsule(id))
                })
                .await
                .unwrap();
        }
        let pool = store.object_head("pool").unwrap().unwrap();
        assert_eq!(
            (pool.version, pool.last_tx, pool.last_batch),
            (3, Some([3; 32]), Some(batches[2].0.header.id()))
        );
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
                    async move { store.record(NewBatch::new(b, t, c)).await }
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
        store
            .record(NewBatch::new(b, t, capsule(id)))
            .await
            .unwrap();
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

    /// `record(seq)` with a body of `len` bytes for the cache.
    fn with_body(seq: u64, len: usize) -> NewBatch {
        let (b, t) = record(seq);
        let id = b.header.id();
        let mut new = NewBatch::new(b, t, capsule(id));
        new.sealed = Some(bytes::Bytes::from(vec![seq as u8; len]));
        new
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_credits_enter_the_ledger_once_per_batch_and_survive_reopening() {
        use crate::config::{RewardsConfig, Role};
        use crate::engines::rewards::{Account, PohScore, ProofKind, RewardEngine};
        let engine = PohScore::from_config(&RewardsConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let credits = || {
            vec![
                engine
                    .proved("light-1", ProofKind::Write, Role::Light, 8, 10)
                    .unwrap(),
                engine
                    .proved("full-1", ProofKind::Write, Role::Full, 9, 10)
                    .unwrap(),
            ]
        };
        let (b, t) = record(0);
        let id = b.header.id();
        {
            let store = CityStore::open(dir.path()).unwrap();
            let first = NewBatch {
                credits: credits(),
                ..NewBatch::new(b.clone(), t.clone(), capsule(id))
            };
            store.record(first).await.unwrap();
            // The same batch recorded again (a retry, a replay): no second credit.
            let again = NewBatch {
                credits: credits(),
                ..NewBatch::new(b.clone(), t.clone(), capsule(id))
            };
            store.record(again).await.unwrap();
            // A repair's acks and a round's challenge results add to the same accounts.
            store
                .relocate_credited(
                    &id,
                    Tier::Light,
                    vec!["light-2".into()],
                    vec![],
                    &[engine
                        .proved("light-2", ProofKind::Repair, Role::Light, 5, 20)
                        .unwrap()],
                )
                .unwrap();
            store
                .record_credits(
                    &[
                        engine
                            .proved("light-1", ProofKind::Challenge, Role::Light, 9, 30)
                            .unwrap(),
                        engine.failed("light-2", Role::Light, 40).unwrap(),
                    ],
                    &engine,
                )
                .unwrap();
        }
        let store = CityStore::open(dir.path()).unwrap();
        assert_eq!(
            store.reward_account("light-1").unwrap(),
            Some(Account {
                role: Some(Role::Light),
                points: 80 + 90,
                write_acks: 1,
                repair_acks: 0,
                challenges_passed: 1,
                challenges_failed: 0,
                last_credit_ms: Some(30),
                // Passed at 1: stays 1.
                reliability: Some(1.0),
            })
        );
        let full = store.reward_account("full-1").unwrap().unwrap();
        assert_eq!((full.points, full.write_acks), (135, 1));
        let l2 = store.reward_account("light-2").unwrap().unwrap();
        assert_eq!(
            (l2.points, l2.repair_acks, l2.challenges_failed),
            (50, 1, 1)
        );
        // Its failed challenge halved its reliability, kept across the reopen; write and
        // repair acks never move it.
        assert_eq!(l2.reliability, Some(0.5));
        assert_eq!(full.reliability, None);
        assert_eq!(store.reward_account("nobody").unwrap(), None);
        let ids: Vec<String> = store
            .reward_accounts()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, ["full-1", "light-1", "light-2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_body_cache_keeps_to_its_bound_oldest_first_and_never_evicts_a_lost_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = CityStore::open_bounded(dir.path(), 1 << 20, false, 2500).unwrap();
        let id = |seq| record(seq).0.header.id();
        for seq in 0..2 {
            store.record(with_body(seq, 1000)).await.unwrap();
        }
        assert_eq!(store.cache_usage().unwrap(), (2, 2000));
        // A third body passes the bound: the oldest goes.
        store.record(with_body(2, 1000)).await.unwrap();
        assert_eq!(store.cache_usage().unwrap(), (2, 2000));
        assert_eq!(store.cached_body(&id(0)).unwrap(), None);
        assert_eq!(store.cached_body(&id(1)).unwrap(), Some(vec![1; 1000]));
        // The index still answers for the evicted batch.
        assert_eq!(store.get_tx(&[0; 32]).unwrap().unwrap().batch_id, id(0));

        // Batch 1 is marked lost: its body may be its last copy, so batch 2 goes instead.
        store.mark_lost(&[id(1)], 1).unwrap();
        store.record(with_body(3, 1000)).await.unwrap();
        assert_eq!(store.cached_body(&id(1)).unwrap(), Some(vec![1; 1000]));
        assert_eq!(store.cached_body(&id(2)).unwrap(), None);
        assert!(store.cached_body(&id(3)).unwrap().is_some());
        // Even when only lost bodies are left to evict, they stay (the bound is exceeded
        // rather than the last copy dropped).
        store.record(with_body(4, 3000)).await.unwrap();
        assert_eq!(store.cached_body(&id(1)).unwrap(), Some(vec![1; 1000]));
        assert_eq!(
            store.cached_body(&id(4)).unwrap(),
            None,
            "over the bound alone"
        );
        assert_eq!(store.cache_usage().unwrap(), (1, 1000));
        drop(store);
        // The accounting survives a restart; a smaller bound applies from the next write.
        let store = CityStore::open_bounded(dir.path(), 1 << 20, false, 0).unwrap();
        assert_eq!(store.cache_usage().unwrap(), (1, 1000));
        store
            .relocate(&id(1), Tier::Full, vec!["full-1".into()], vec![])
            .unwrap();
        store.record(with_body(5, 10)).await.unwrap();
        assert_eq!(
            store.cache_usage().unwrap(),
            (0, 0),
            "no longer lost: evicted"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relocation_remembers_where_the_old_copies_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = CityStore::open(dir.path()).unwrap();
        let (mut b, t) = record(1);
        b.tier = Tier::Log;
        b.holders = vec!["city-tokyo".into()];
        let id = b.header.id();
        store
            .record(NewBatch::new(b, t, capsule(id)))
            .await
            .unwrap();
        assert!(store.past_homes(&id).unwrap().is_empty());
        store
            .relocate(&id, Tier::Full, vec!["full-1".into()], vec![])
            .unwrap();
        store
            .relocate(&id, Tier::Light, vec!["light-1".into()], vec![])
            .unwrap();
        assert_eq!(
            store.past_homes(&id).unwrap(),
            vec![
                Home {
                    tier: Tier::Log,
                    holders: vec!["city-tokyo".into()]
                },
                Home {
                    tier: Tier::Full,
                    holders: vec!["full-1".into()]
                },
            ]
        );
    }

    #[test]
    fn a_city_database_of_the_earlier_format_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        // What the earlier format looks like: records, and no format written.
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TXS)
                .unwrap()
                .insert(&[1; 32], b"a record with its body".as_slice())
                .unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(SEQ_RESERVED, 1024)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = CityStore::open(dir.path()).err().expect("refused");
        assert!(matches!(err, CityStoreError::Legacy(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("city.redb") && text.contains("move it aside"),
            "{text}"
        );
        // Refused without being changed: still refused.
        assert!(matches!(
            CityStore::open(dir.path()),
            Err(CityStoreError::Legacy(_))
        ));

        // An empty database of no format is this format's, and stays so.
        let fresh = tempfile::tempdir().unwrap();
        drop(Database::create(fresh.path().join(FILE_NAME)).unwrap());
        drop(CityStore::open(fresh.path()).unwrap());
        drop(CityStore::open(fresh.path()).unwrap());
    }

    /// Not a check but a measurement: bytes of `city.redb` per transaction after 10,000
    /// transactions in batches of 32, with no body cache (the index alone) and with the
    /// default 64 MiB cache. `cargo test -p citychain --lib bytes_per_transaction -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn bytes_per_transaction_in_city_redb() {
        use crate::messages::{Batch, SealedBatch, Sealer, Urgency};
        let key = crate::crypto::SigningKey::from_seed([5; 32]).unwrap();
        let read = Arc::new(crate::crypto::vault::ReadKey::generate().unwrap());
        let sealer = Sealer::new(
            "asia",
            crate::crypto::vault::VaultKey::generate()
                .unwrap()
                .public()
                .clone(),
        )
        .with_read_key(read);
        let (txs, per_batch) = (10_000u64, 32u64);
        let batches: Vec<SealedBatch> = (0..txs / per_batch + 1)
            .map(|seq| {
                let signed: Vec<_> = (seq * per_batch..((seq + 1) * per_batch).min(txs))
                    .map(|n| crate::testkit::signed_tx(&key, n, FlagKind::FreshTx, 1000 + n))
                    .collect();
                let ids = signed.iter().map(|t| t.id).collect();
                let batch = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &signed, seq);
                SealedBatch::new(
                    batch,
                    ids,
                    Urgency::Normal,
                    std::time::Instant::now(),
                    &sealer,
                )
                .unwrap()
            })
            .filter(|b| !b.tx_ids.is_empty())
            .collect();
        let canonical: usize = batches
            .iter()
            .flat_map(|b| b.batch.body.iter())
            .map(|t| t.canonical.len())
            .sum();
        for (what, cache) in [("index only", 0), ("default 64 MiB body cache", 64 << 20)] {
            let dir = tempfile::tempdir().unwrap();
            let store = CityStore::open_bounded(dir.path(), 1 << 26, false, cache).unwrap();
            for b in &batches {
                let rec = BatchRecord {
                    header: b.batch.header.clone(),
                    tx_ids: b.tx_ids.as_ref().clone(),
                    tier: Tier::Light,
                    holders: (1..=6).map(|n| format!("light-{n}")).collect(),
                    acks: vec![],
                    lost: false,
                };
                let txs = b
                    .tx_ids
                    .iter()
                    .map(|id| {
                        (
                            *id,
                            TxRecord {
                                flag: FlagKind::FreshTx,
                                batch_id: b.id,
                                tier: Tier::Light,
                                holders: rec.holders.clone(),
                                acks: 6,
                                lost: false,
                            },
                        )
                    })
                    .collect();
                let nonces = b
                    .tx_ids
                    .iter()
                    .zip(&b.batch.body)
                    .filter_map(|(id, t)| NonceKey::of_canonical(&t.canonical).map(|k| (k, *id)))
                    .collect();
                store
                    .record(NewBatch {
                        nonces,
                        read_key: b.read_key.as_deref().cloned(),
                        sealed: Some(b.bytes.clone()),
                        ..NewBatch::new(rec, txs, b.capsule.as_ref().clone())
                    })
                    .await
                    .unwrap();
            }
            let (bodies, cached) = store.cache_usage().unwrap();
            drop(store);
            let size = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
            println!(
                "{what}: city.redb {size} bytes for {txs} transactions = {:.0} bytes/tx ({bodies} bodies, {cached} bytes cached)",
                size as f64 / txs as f64
            );
        }
        println!(
            "signed JSON the earlier format also kept per transaction: {:.0} bytes/tx on average",
            canonical as f64 / txs as f64
        );
    }

    #[test]
    fn the_retention_rule_wants_age_and_the_continents_acknowledgement() {
        use std::time::Duration;
        let r = Duration::from_secs(30);
        let now = 100_000;
        // Old enough and acknowledged upstream (or no continent above): archivable.
        assert!(archivable(70_000, now, r, Upstream::Acknowledged));
        assert!(archivable(10_000, now, r, Upstream::NoUplink));
        // Still in the outbox: never, however old.
        assert!(!archivable(0, now, r, Upstream::Waiting));
        // Too young: not yet, whatever the continent said.
        assert!(!archivable(70_001, now, r, Upstream::Acknowledged));
        assert!(!archivable(99_000, now, r, Upstream::NoUplink));
        // A clock that went back reads as young, not as old.
        assert!(!archivable(200_000, now, r, Upstream::Acknowledged));
        // Retention 0: light batches stay on light nodes.
        assert!(!archivable(0, now, Duration::ZERO, Upstream::Acknowledged));
    }

    /// A light record of batch `seq` whose two pieces' acks name `light-1` and `light-2`.
    fn light_record(seq: u64) -> (BatchRecord, Vec<(TxId, TxRecord)>) {
        let (mut b, t) = record(seq);
        let key = crate::crypto::SigningKey::generate().unwrap();
        let coding = crate::messages::Coding::new(1, 1).unwrap();
        b.acks = (0..2u8)
            .map(|index| {
                let piece = crate::messages::PieceRef {
                    index,
                    coding,
                    sealed_len: 10,
                    sealed_hash: [7; 32],
                };
                PohAck::sign_piece(
                    &key,
                    &format!("light-{}", index + 1),
                    b.header.id(),
                    piece,
                    [index; 32],
                    seq,
                )
                .unwrap()
            })
            .collect();
        b.holders = vec!["light-1".into(), "light-2".into()];
        (b, t)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_picks_old_acknowledged_light_batches_oldest_first_from_the_light_index() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = CityStore::open_with(dir.path(), 1 << 20, true).unwrap();
        // Batches 1..=6 created at 1..=6 s; 4 on full nodes (a fallback, not light).
        let mut ids = Vec::new();
        for seq in 1..=6u64 {
            let (mut b, t) = light_record(seq);
            b.header =
                Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &[], seq * 1000).header;
            if seq == 4 {
                b.tier = Tier::Full;
            }
            ids.push(b.header.id());
            store
                .record(NewBatch::new(b.clone(), t, capsule(b.header.id())))
                .await
                .unwrap();
        }
        let retention = Duration::from_secs(2);
        let picked = |now| {
            store
                .archive_candidates(now, retention, 10)
                .unwrap()
                .iter()
                .map(|r| r.header.seq)
                .collect::<Vec<_>>()
        };
        // Nothing acknowledged by the continent yet: nothing goes.
        assert_eq!(picked(100_000), Vec::<u64>::new());
        // The continent acknowledged 1, 2, 3, 5: at 6 s those 4 s old or more go (1, 2).
        let placement = ContinentPlacement {
            node: "continent-asia".into(),
            continent_batch_id: [1; 32],
            continent_seq: 1,
            entry_index: 0,
            time_ms: 0,
        };
        let done: Vec<_> = [1u64, 2, 3, 5]
            .iter()
            .map(|&seq| (seq, ids[seq as usize - 1], placement.clone()))
            .collect();
        store.uplink_delivered(&done).unwrap();
        assert_eq!(picked(4_000), vec![1, 2]);
        // Later, every acknowledged light one, never 4 (full) nor 6 (waiting).
        assert_eq!(picked(100_000), vec![1, 2, 3, 5]);
        assert_eq!(
            store
                .archive_candidates(100_000, retention, 2)
                .unwrap()
                .len(),
            2
        );
        assert!(
            store
                .archive_candidates(100_000, Duration::ZERO, 10)
                .unwrap()
                .is_empty()
        );
        // A city with no continent above archives on age alone.
        drop(store);
        let store = CityStore::open_with(dir.path(), 1 << 20, false).unwrap();
        let seqs: Vec<u64> = store
            .archive_candidates(100_000, retention, 10)
            .unwrap()
            .iter()
            .map(|r| r.header.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 5, 6]);
    }

    /// Batch `id` as copied to full node `holder`, to archive (no acks, no credits).
    fn archived(id: BatchId, holder: &str) -> Archived {
        Archived {
            batch_id: id,
            holders: vec![holder.into()],
            acks: vec![],
            credits: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_archived_batch_is_home_on_full_nodes_with_its_pieces_pending_release() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let (b, t) = light_record(1);
        let id = b.header.id();
        let tx_id = b.tx_ids[0];
        {
            let store = CityStore::open(dir.path()).unwrap();
            store
                .record(NewBatch::new(b.clone(), t, capsule(id)))
                .await
                .unwrap();
            assert_eq!(store.batches_on(Tier::Light, 0, 10).unwrap().len(), 1);
            assert_eq!(store.archive(&[archived(id, "full-1")], 5).unwrap(), [true]);
            // Only once: it is no longer on light nodes.
            assert_eq!(
                store.archive(&[archived(id, "full-2")], 6).unwrap(),
                [false]
            );
        }
        // Durable: a restart finds it archived, its releases still pending.
        let store = CityStore::open(dir.path()).unwrap();
        let rec = store.get_batch(&id).unwrap().unwrap();
        assert_eq!(
            (rec.tier, rec.holders.clone()),
            (Tier::Full, vec!["full-1".to_string()])
        );
        let tx = store.get_tx(&tx_id).unwrap().unwrap();
        assert_eq!(tx.tier, Tier::Full);
        assert!(store.is_archived(&id).unwrap());
        assert_eq!(
            store.past_homes(&id).unwrap(),
            vec![Home {
                tier: Tier::Light,
                holders: vec!["light-1".into(), "light-2".into()],
            }]
        );
        // Home by policy: repair upward does not see it, challenges do not either, and
        // retention does not pick it again.
        assert!(store.batches_below_light(10).unwrap().is_empty());
        assert!(store.batches_on(Tier::Light, 0, 10).unwrap().is_empty());
        assert!(
            store
                .archive_candidates(u64::MAX, Duration::from_secs(1), 10)
                .unwrap()
                .is_empty()
        );
        let pending = store.pending_releases(10).unwrap();
        assert_eq!(
            pending,
            vec![(
                1,
                PendingRelease {
                    batch_id: id,
                    pieces: vec![("light-1".into(), 0), ("light-2".into(), 1)],
                }
            )]
        );
        // One released, one left; then the other: the entry goes.
        store
            .update_releases(&[(
                1,
                PendingRelease {
                    batch_id: id,
                    pieces: vec![("light-2".into(), 1)],
                },
            )])
            .unwrap();
        assert_eq!(store.pending_releases(10).unwrap()[0].1.pieces.len(), 1);
        store
            .update_releases(&[(
                1,
                PendingRelease {
                    batch_id: id,
                    pieces: vec![],
                },
            )])
            .unwrap();
        assert_eq!(store.pending_release_count().unwrap(), 0);
        // A later move to full nodes that are not its archive (repair of a fallback) would
        // be below light; the archived one stays home even when relocated among full nodes.
        store
            .relocate(&id, Tier::Full, vec!["full-2".into()], vec![])
            .unwrap();
        assert!(store.batches_below_light(10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn many_batches_are_archived_in_one_transaction_and_one_no_longer_light_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = CityStore::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for seq in 1..=3 {
            let (b, t) = light_record(seq);
            let id = b.header.id();
            store
                .record(NewBatch::new(b, t, capsule(id)))
                .await
                .unwrap();
            ids.push(id);
        }
        assert_eq!(
            store.archive(&[archived(ids[1], "full-1")], 5).unwrap(),
            [true]
        );
        let done = store
            .archive(
                &[
                    archived(ids[0], "full-2"),
                    archived(ids[1], "full-2"),
                    archived(ids[2], "full-2"),
                ],
                7,
            )
            .unwrap();
        assert_eq!(done, vec![true, false, true]);
        for (id, holder) in [(ids[0], "full-2"), (ids[1], "full-1"), (ids[2], "full-2")] {
            let rec = store.get_batch(&id).unwrap().unwrap();
            assert_eq!(
                (rec.tier, rec.holders),
                (Tier::Full, vec![holder.to_string()])
            );
            assert!(store.is_archived(&id).unwrap());
        }
        assert!(store.batches_on(Tier::Light, 0, 10).unwrap().is_empty());
        assert_eq!(store.pending_release_count().unwrap(), 3);
        assert_eq!(store.archive(&[], 8).unwrap(), Vec::<bool>::new());
        // Nothing left to archive: nothing written, every one refused.
        assert_eq!(
            store.archive(&[archived(ids[0], "full-2")], 9).unwrap(),
            [false]
        );
    }
}

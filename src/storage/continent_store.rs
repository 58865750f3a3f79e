//! A continent node's durable state: its immutable log holds every continent batch with the
//! certified city batches it merged (the truth), and `continent.redb` indexes it
//! ([`super::ledger`]): where each city batch was merged, each continent batch by id and
//! by sequence number, and the **outbox** of continent batches the global node has not
//! acknowledged yet. A batch enters the outbox in the transaction that indexes its record,
//! and leaves it only when the global node answered for it, so a continent killed at any
//! moment forwards everything after its restart.

use std::path::Path;
use std::sync::Arc;

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::immutable_log::{ImmutableLog, RecordKind};
use super::ledger::{Ledger, LedgerError, LedgerIndex, Result};
use crate::crypto::Hash32;
use crate::messages::federation::{ContinentBatchHeader, ContinentRecord, GlobalPlacement};
use crate::messages::{BatchId, Tier, decode, encode};

pub const FILE_NAME: &str = "continent.redb";

const CITY_BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("city_batches");
pub(super) const CONTINENT_BATCHES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("continent_batches");
pub(super) const BY_SEQ: TableDefinition<u64, &[u8; 32]> =
    TableDefinition::new("continent_batches_by_seq");
/// Continent batches the global node has not acknowledged: seq → id.
const OUTBOX: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("outbox");
/// Continent batches the global node acknowledged: id → where it holds them.
const DELIVERED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("delivered");

// The DPoS tables (queried by `super::continent_dpos`, which documents them); created here
// with the rest so that every read finds them.
pub(super) const DPOS_VOTES: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("dpos_votes");
pub(super) const DPOS_BATCH_VOTERS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("dpos_batch_voters");
pub(super) const DPOS_EVIDENCE: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("dpos_evidence");
pub(super) const DPOS_SLASHED: TableDefinition<&str, u64> = TableDefinition::new("dpos_slashed");
pub(super) const DPOS_VOTES_CAST: TableDefinition<&str, u64> =
    TableDefinition::new("dpos_votes_cast");
pub(super) const DPOS_APPROVALS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("dpos_approvals");

/// Where a city batch was merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CityBatchPlace {
    pub city_id: String,
    pub seq: u64,
    pub tier: Tier,
    pub continent_batch_id: Hash32,
    pub continent_seq: u64,
    pub entry_index: u32,
    /// The record of this node's log holding the continent batch.
    pub record_index: u64,
}

/// A continent batch as the index keeps it (the whole of it is in the log's record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentBatchInfo {
    pub header: ContinentBatchHeader,
    pub record_index: u64,
    pub city_batches: Vec<BatchId>,
}

/// A continent batch waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub id: Hash32,
    pub record_index: u64,
}

/// What the continent's index holds, in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub continent_batches: u64,
    pub city_batches: u64,
    pub outbox: u64,
}

/// Indexes [`RecordKind::ContinentBatch`] records.
pub struct ContinentIndex;

impl LedgerIndex for ContinentIndex {
    fn create_tables(&self, tx: &WriteTransaction) -> Result<()> {
        tx.open_table(CITY_BATCHES)?;
        tx.open_table(CONTINENT_BATCHES)?;
        tx.open_table(BY_SEQ)?;
        tx.open_table(OUTBOX)?;
        tx.open_table(DELIVERED)?;
        tx.open_table(DPOS_VOTES)?;
        tx.open_table(DPOS_BATCH_VOTERS)?;
        tx.open_table(DPOS_EVIDENCE)?;
        tx.open_table(DPOS_SLASHED)?;
        tx.open_table(DPOS_VOTES_CAST)?;
        tx.open_table(DPOS_APPROVALS)?;
        Ok(())
    }

    fn apply(
        &self,
        tx: &WriteTransaction,
        index: u64,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<()> {
        if kind != RecordKind::ContinentBatch {
            return Ok(());
        }
        let record: ContinentRecord = decode(payload)?;
        let batch = &record.batch.batch;
        let id = record.batch.id();
        let mut batches = tx.open_table(CONTINENT_BATCHES)?;
        if batches.get(&id)?.is_some() {
            return Ok(());
        }
        let info = ContinentBatchInfo {
            header: batch.header.clone(),
            record_index: index,
            city_batches: batch.entries.iter().map(|e| e.header.id()).collect(),
        };
        batches.insert(&id, encode(&info).as_slice())?;
        tx.open_table(BY_SEQ)?.insert(batch.header.seq, &id)?;
        let mut cities = tx.open_table(CITY_BATCHES)?;
        for (i, entry) in batch.entries.iter().enumerate() {
            let city_id = entry.header.id();
            // A city batch merged twice (never, but for a continent that lost its index
            // entry of a batch it had merged) keeps its first place.
            if cities.get(&city_id)?.is_some() {
                continue;
            }
            let place = CityBatchPlace {
                city_id: entry.header.city_id.clone(),
                seq: entry.header.seq,
                tier: entry.tier,
                continent_batch_id: id,
                continent_seq: batch.header.seq,
                entry_index: i as u32,
                record_index: index,
            };
            cities.insert(&city_id, encode(&place).as_slice())?;
        }
        if tx.open_table(DELIVERED)?.get(&id)?.is_none() {
            tx.open_table(OUTBOX)?.insert(batch.header.seq, &id)?;
        }
        Ok(())
    }
}

/// The continent's ledger and the queries on its index.
pub struct ContinentStore {
    pub(super) ledger: Ledger<ContinentIndex>,
    /// Notified when a continent batch enters the outbox.
    pub outbox_added: Arc<tokio::sync::Notify>,
    /// Notified when a continent batch is durable (the Approver's cue).
    pub batch_added: Arc<tokio::sync::Notify>,
}

fn get<T: serde::de::DeserializeOwned>(
    tx: &ReadTransaction,
    table: TableDefinition<&[u8; 32], &[u8]>,
    id: &Hash32,
) -> Result<Option<T>> {
    let t = tx.open_table(table)?;
    let Some(v) = t.get(id)? else {
        return Ok(None);
    };
    Ok(Some(decode(v.value())?))
}

impl ContinentStore {
    /// Opens `DIR/continent.redb` over `log`, indexing what it has not seen yet.
    pub fn open(dir: &Path, cache_bytes: usize, log: Arc<ImmutableLog>) -> Result<Self> {
        Ok(Self {
            ledger: Ledger::open(dir, FILE_NAME, cache_bytes, log, ContinentIndex)?,
            outbox_added: Arc::new(tokio::sync::Notify::new()),
            batch_added: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Appends a continent batch's record and indexes it (with its city batches and its
    /// place in the outbox); returns the record's index once both are fsynced.
    pub async fn append(&self, record: &ContinentRecord) -> Result<u64> {
        let at = self
            .ledger
            .append(RecordKind::ContinentBatch, encode(record))
            .await?;
        self.outbox_added.notify_one();
        self.batch_added.notify_one();
        Ok(at)
    }

    pub fn log(&self) -> &Arc<ImmutableLog> {
        self.ledger.log()
    }

    /// The record of a continent batch, read back from the log.
    pub fn record(&self, record_index: u64) -> Result<ContinentRecord> {
        let record = self
            .ledger
            .record(record_index)?
            .ok_or(LedgerError::Record {
                index: record_index,
                reason: "past the end of the log".into(),
            })?;
        Ok(decode(&record.payload)?)
    }

    pub fn city_batch(&self, id: &BatchId) -> Result<Option<CityBatchPlace>> {
        self.ledger.read(|tx| get(tx, CITY_BATCHES, id))
    }

    pub fn continent_batch(
        &self,
        id: &Hash32,
    ) -> Result<Option<(ContinentBatchInfo, Option<GlobalPlacement>)>> {
        self.ledger.read(|tx| {
            let Some(info) = get::<ContinentBatchInfo>(tx, CONTINENT_BATCHES, id)? else {
                return Ok(None);
            };
            Ok(Some((info, get(tx, DELIVERED, id)?)))
        })
    }

    /// Where the continent's sequence resumes: the next number and the last batch's id.
    pub fn resume_point(&self) -> Result<(u64, Option<Hash32>)> {
        self.ledger.read(|tx| {
            let t = tx.open_table(BY_SEQ)?;
            Ok(match t.last()? {
                Some((seq, id)) => (seq.value() + 1, Some(*id.value())),
                None => (0, None),
            })
        })
    }

    /// Up to `limit` continent batches waiting for the global node, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>> {
        self.ledger.read(|tx| {
            let outbox = tx.open_table(OUTBOX)?;
            let batches = tx.open_table(CONTINENT_BATCHES)?;
            let mut out = Vec::new();
            for entry in outbox.iter()?.take(limit) {
                let (seq, id) = entry?;
                let id = *id.value();
                let Some(v) = batches.get(&id)? else { continue };
                let info: ContinentBatchInfo = decode(v.value())?;
                out.push(Pending {
                    seq: seq.value(),
                    id,
                    record_index: info.record_index,
                });
            }
            Ok(out)
        })
    }

    /// The global node acknowledged these continent batches: they leave the outbox.
    /// Fsynced. Blocks.
    pub fn delivered(&self, done: &[(Pending, GlobalPlacement)]) -> Result<()> {
        self.ledger.write(|tx| {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut delivered = tx.open_table(DELIVERED)?;
            for (p, placement) in done {
                outbox.remove(p.seq)?;
                delivered.insert(&p.id, encode(placement).as_slice())?;
            }
            Ok(())
        })
    }

    pub fn counts(&self) -> Result<Counts> {
        self.ledger.read(|tx| {
            Ok(Counts {
                continent_batches: tx.open_table(CONTINENT_BATCHES)?.len()?,
                city_batches: tx.open_table(CITY_BATCHES)?.len()?,
                outbox: tx.open_table(OUTBOX)?.len()?,
            })
        })
    }
}

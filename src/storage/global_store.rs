//! The global node's durable state: its immutable log holds every continent batch it
//! received (as signed by its continent) and every checkpoint it signed; `global.redb`
//! indexes it ([`super::ledger`]): continent batches and city batches by id, with the log
//! record that holds them, and checkpoints by number and by the log size they cover.
//!
//! The log is also the checkpoints' Merkle tree: a checkpoint signs the root of the log's
//! first `size` records, so the inclusion proof of a continent batch is the log's own
//! proof for its record, and every checkpoint covers the ones before it.

use std::path::Path;
use std::sync::Arc;

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::immutable_log::{ImmutableLog, RecordKind};
use super::ledger::{Ledger, LedgerError, LedgerIndex, Result};
use crate::crypto::Hash32;
use crate::messages::federation::{ContinentBatchHeader, SignedCheckpoint, SignedContinentBatch};
use crate::messages::{BatchId, decode, encode};

pub const FILE_NAME: &str = "global.redb";

const CONTINENT_BATCHES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("continent_batches");
const CITY_BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("city_batches");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
/// Size a checkpoint covers → its number; the first one covering record `i` is the first
/// entry above `i`.
const BY_SIZE: TableDefinition<u64, u64> = TableDefinition::new("checkpoints_by_size");

/// A continent batch as the index keeps it (the whole of it is in the log's record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedInfo {
    pub header: ContinentBatchHeader,
    pub signer: String,
    pub record_index: u64,
    pub city_batches: Vec<BatchId>,
}

/// Where a city batch is in the global node's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalCityPlace {
    pub continent: String,
    pub continent_batch_id: Hash32,
    pub entry_index: u32,
    pub record_index: u64,
}

/// A checkpoint and the record of the log holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub signed: SignedCheckpoint,
    pub record_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub continent_batches: u64,
    pub city_batches: u64,
    pub checkpoints: u64,
}

/// Indexes [`RecordKind::GlobalEntry`] and [`RecordKind::Checkpoint`] records.
pub struct GlobalIndex;

impl LedgerIndex for GlobalIndex {
    fn create_tables(&self, tx: &WriteTransaction) -> Result<()> {
        tx.open_table(CONTINENT_BATCHES)?;
        tx.open_table(CITY_BATCHES)?;
        tx.open_table(CHECKPOINTS)?;
        tx.open_table(BY_SIZE)?;
        Ok(())
    }

    fn apply(
        &self,
        tx: &WriteTransaction,
        index: u64,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<()> {
        match kind {
            RecordKind::GlobalEntry => {
                let signed: SignedContinentBatch = decode(payload)?;
                let id = signed.id();
                let mut batches = tx.open_table(CONTINENT_BATCHES)?;
                if batches.get(&id)?.is_some() {
                    return Ok(());
                }
                let header = &signed.batch.header;
                let info = ReceivedInfo {
                    header: header.clone(),
                    signer: signed.signer.clone(),
                    record_index: index,
                    city_batches: signed.batch.entries.iter().map(|e| e.header.id()).collect(),
                };
                batches.insert(&id, encode(&info).as_slice())?;
                let mut cities = tx.open_table(CITY_BATCHES)?;
                for (i, city_id) in info.city_batches.iter().enumerate() {
                    if cities.get(city_id)?.is_some() {
                        continue;
                    }
                    let place = GlobalCityPlace {
                        continent: header.continent.clone(),
                        continent_batch_id: id,
                        entry_index: i as u32,
                        record_index: index,
                    };
                    cities.insert(city_id, encode(&place).as_slice())?;
                }
            }
            RecordKind::Checkpoint => {
                let signed: SignedCheckpoint = decode(payload)?;
                let cp = &signed.checkpoint;
                tx.open_table(BY_SIZE)?.insert(cp.size, cp.seq)?;
                let info = CheckpointInfo {
                    record_index: index,
                    signed: signed.clone(),
                };
                tx.open_table(CHECKPOINTS)?
                    .insert(cp.seq, encode(&info).as_slice())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The global node's ledger and the queries on its index.
pub struct GlobalStore {
    ledger: Ledger<GlobalIndex>,
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

impl GlobalStore {
    /// Opens `DIR/global.redb` over `log`, indexing what it has not seen yet.
    pub fn open(dir: &Path, cache_bytes: usize, log: Arc<ImmutableLog>) -> Result<Self> {
        Ok(Self {
            ledger: Ledger::open(dir, FILE_NAME, cache_bytes, log, GlobalIndex)?,
        })
    }

    /// Appends a received continent batch and indexes it; its record's index once both
    /// are fsynced.
    pub async fn append_batch(&self, batch: &SignedContinentBatch) -> Result<u64> {
        self.ledger
            .append(RecordKind::GlobalEntry, encode(batch))
            .await
    }

    /// Appends a checkpoint and indexes it; its record's index once both are fsynced.
    pub async fn append_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<u64> {
        self.ledger
            .append(RecordKind::Checkpoint, encode(checkpoint))
            .await
    }

    pub fn log(&self) -> &Arc<ImmutableLog> {
        self.ledger.log()
    }

    /// Record `index` of the log: its body, the bytes its leaf hash covers.
    pub fn record_body(&self, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.ledger.log().record_body(index)?)
    }

    /// A received continent batch, read back from the log.
    pub fn received_batch(&self, record_index: u64) -> Result<SignedContinentBatch> {
        let record = self
            .ledger
            .record(record_index)?
            .ok_or(LedgerError::Record {
                index: record_index,
                reason: "past the end of the log".into(),
            })?;
        Ok(decode(&record.payload)?)
    }

    pub fn continent_batch(&self, id: &Hash32) -> Result<Option<ReceivedInfo>> {
        self.ledger.read(|tx| get(tx, CONTINENT_BATCHES, id))
    }

    pub fn city_batch(&self, id: &BatchId) -> Result<Option<GlobalCityPlace>> {
        self.ledger.read(|tx| get(tx, CITY_BATCHES, id))
    }

    pub fn checkpoint(&self, seq: u64) -> Result<Option<CheckpointInfo>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(CHECKPOINTS)?;
            t.get(seq)?
                .map(|v| decode(v.value()).map_err(LedgerError::from))
                .transpose()
        })
    }

    pub fn latest_checkpoint(&self) -> Result<Option<CheckpointInfo>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(CHECKPOINTS)?;
            t.last()?
                .map(|(_, v)| decode(v.value()).map_err(LedgerError::from))
                .transpose()
        })
    }

    /// The first checkpoint whose tree holds record `record_index`.
    pub fn covering(&self, record_index: u64) -> Result<Option<CheckpointInfo>> {
        let seq = self.ledger.read(|tx| {
            let t = tx.open_table(BY_SIZE)?;
            let first = t.range(record_index + 1..)?.next().transpose()?;
            Ok(first.map(|(_, seq)| seq.value()))
        })?;
        match seq {
            Some(seq) => self.checkpoint(seq),
            None => Ok(None),
        }
    }

    pub fn counts(&self) -> Result<Counts> {
        self.ledger.read(|tx| {
            Ok(Counts {
                continent_batches: tx.open_table(CONTINENT_BATCHES)?.len()?,
                city_batches: tx.open_table(CITY_BATCHES)?.len()?,
                checkpoints: tx.open_table(CHECKPOINTS)?.len()?,
            })
        })
    }
}

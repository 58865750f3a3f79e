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

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::group_commit::{GroupCommit, GroupError, Options};
use crate::messages::{BatchHeader, BatchId, Capsule, FlagKind, PohAck, Tier, TxId, WireError};

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
const SEQ_RESERVED: &str = "seq_reserved";
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
}

/// A durable batch: where it is and the acks that prove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub header: BatchHeader,
    pub tx_ids: Vec<TxId>,
    pub tier: Tier,
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
}

struct WriteReq {
    batch_id: BatchId,
    batch: BatchRecord,
    txs: Vec<(TxId, TxRecord)>,
    /// The encoded capsule, for the key vault.
    capsule: Vec<u8>,
}

/// Dropping it lets the writer finish what it holds and releases the database, so it can be
/// opened again at once.
pub struct CityStore {
    db: Arc<Database>,
    writer: GroupCommit<WriteReq, (), CityStoreError>,
}

impl CityStore {
    /// Opens or creates `DIR/city.redb` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(Database::create(dir.join(FILE_NAME))?);
        {
            let tx = db.begin_write()?;
            tx.open_table(TXS)?;
            tx.open_table(BATCHES)?;
            tx.open_table(BY_SEQ)?;
            tx.open_table(META)?;
            tx.open_table(BELOW_LIGHT)?;
            tx.open_table(CAPSULES)?;
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
        let writer = GroupCommit::spawn(options, move |group: &mut [WriteReq]| {
            write_group(&thread_db, group)
                .map(|()| vec![(); group.len()])
                .inspect_err(|e| {
                    tracing::error!(error = %e, records = group.len(), "writing the city's status index failed");
                })
        })?;
        Ok(Self { db, writer })
    }

    /// Makes a stored batch and its transactions durable in the index, and its capsule in
    /// the key vault, in one transaction; returns once fsynced.
    pub async fn record(
        &self,
        batch: BatchRecord,
        txs: Vec<(TxId, TxRecord)>,
        capsule: &Capsule,
    ) -> Result<()> {
        let batch_id = batch.header.id();
        match self
            .writer
            .submit(WriteReq {
                batch_id,
                batch,
                txs,
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
        table
            .get(id)?
            .map(|v| crate::messages::decode(v.value()).map_err(CityStoreError::from))
            .transpose()
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
        table
            .get(id)?
            .map(|v| crate::messages::decode(v.value()).map_err(CityStoreError::from))
            .transpose()
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
            rec.tier = tier;
            rec.holders = holders;
            rec.acks = acks;
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
}

fn write_group(db: &Database, group: &[WriteReq]) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut txs = tx.open_table(TXS)?;
        let mut batches = tx.open_table(BATCHES)?;
        let mut by_seq = tx.open_table(BY_SEQ)?;
        let mut below = tx.open_table(BELOW_LIGHT)?;
        let mut capsules = tx.open_table(CAPSULES)?;
        for req in group {
            capsules.insert(&req.batch_id, req.capsule.as_slice())?;
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
        }
    }
    Ok(tx.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::vault::WrappedKey;
    use crate::messages::Batch;

    /// A stand-in capsule for batch `id` (the vault stores it as it is).
    fn capsule(id: BatchId) -> Capsule {
        Capsule {
            batch_id: id,
            key_id: "00112233aabbccdd".into(),
            wrapped: WrappedKey {
                kem_ciphertext: vec![id[0]; 8],
                nonce: [1; 12],
                sealed_key: vec![2; 48],
            },
        }
    }

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

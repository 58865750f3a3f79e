//! A ledger: an immutable log that is the truth, and a redb index over it that can always
//! be brought back in step with it. Continent and global nodes keep what they receive this
//! way.
//!
//! A record is appended to the log (fsynced) first; then the role's [`LedgerIndex`] indexes
//! it in a redb transaction (fsynced) that also advances the **watermark**: every record
//! below it is indexed. Records indexed out of order (appends complete in any order) wait
//! in a small table until the watermark reaches them. At open, every record from the
//! watermark to the end of the log is indexed again, so a crash between the two writes
//! loses nothing: the log has the record, and the index catches up before the node serves.
//! Indexing must therefore be idempotent: a record indexed twice changes nothing.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::immutable_log::{ImmutableLog, LogError, Record, RecordKind};
use crate::messages::WireError;

/// `"indexed"` → the watermark: every record below it is indexed.
const META: TableDefinition<&str, u64> = TableDefinition::new("ledger_meta");
/// Records indexed above the watermark, until it reaches them.
const AHEAD: TableDefinition<u64, ()> = TableDefinition::new("ledger_ahead");
const WATERMARK: &str = "indexed";
/// Records indexed per transaction while catching up at open.
const CATCH_UP_CHUNK: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger index: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger index: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("ledger index: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("ledger index: {0}")]
    Table(#[from] redb::TableError),
    #[error("ledger index: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("ledger index: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("ledger index: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("ledger log: {0}")]
    Log(#[from] LogError),
    #[error("ledger record {index}: {reason}")]
    Record { index: u64, reason: String },
    #[error("ledger index: {0}")]
    Decode(#[from] WireError),
    #[error("ledger index task failed: {0}")]
    Join(String),
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// What a role indexes of its log.
pub trait LedgerIndex: Send + Sync + 'static {
    /// Creates the role's tables (called once at open, in a write transaction).
    fn create_tables(&self, tx: &WriteTransaction) -> Result<()>;
    /// Indexes record `index` of the log; must change nothing if it was indexed before.
    fn apply(
        &self,
        tx: &WriteTransaction,
        index: u64,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<()>;
}

/// The log and its index. `Send + Sync`; share it via `Arc`.
pub struct Ledger<I: LedgerIndex> {
    log: Arc<ImmutableLog>,
    db: Arc<Database>,
    index: Arc<I>,
}

impl<I: LedgerIndex> Ledger<I> {
    /// Opens (or creates) `DIR/FILE` over `log` and indexes every record the index has not
    /// seen yet. Blocks on file I/O.
    pub fn open(
        dir: &Path,
        file: &str,
        cache_bytes: usize,
        log: Arc<ImmutableLog>,
        index: I,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(dir.join(file))?,
        );
        {
            let tx = db.begin_write()?;
            tx.open_table(META)?;
            tx.open_table(AHEAD)?;
            index.create_tables(&tx)?;
            tx.commit()?;
        }
        let ledger = Self {
            log,
            db,
            index: Arc::new(index),
        };
        ledger.catch_up()?;
        Ok(ledger)
    }

    /// Indexes the records from the watermark to the end of the log.
    fn catch_up(&self) -> Result<()> {
        let end = self.log.size();
        let mut from = self.watermark()?;
        if from < end {
            tracing::info!(from, end, "indexing log records the index has not seen");
        }
        while from < end {
            let to = (from + CATCH_UP_CHUNK).min(end);
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            for i in from..to {
                let body = self.log.record_body(i)?.ok_or(LedgerError::Record {
                    index: i,
                    reason: "past the end of the log".into(),
                })?;
                let record = Record::decode(&body)
                    .map_err(|reason| LedgerError::Record { index: i, reason })?;
                apply_once(&tx, self.index.as_ref(), i, record.kind, &record.payload)?;
            }
            tx.commit()?;
            from = to;
        }
        Ok(())
    }

    /// Every record below this is indexed.
    pub fn watermark(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(META)?
            .get(WATERMARK)?
            .map_or(0, |v| v.value()))
    }

    /// Appends a record (fsynced), then indexes it (fsynced); returns its index in the log
    /// once both are durable.
    pub async fn append(&self, kind: RecordKind, payload: Vec<u8>) -> Result<u64> {
        let receipt = self.log.append(kind, payload.clone()).await?;
        let (db, index) = (self.db.clone(), self.index.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            apply_once(&tx, index.as_ref(), receipt.seq, kind, &payload)?;
            Ok(tx.commit()?)
        })
        .await
        .map_err(|e| LedgerError::Join(e.to_string()))??;
        Ok(receipt.seq)
    }

    /// Reads the index.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read()?;
        f(&tx)
    }

    /// Changes the index outside of a record (e.g. a delivery), fsynced. Blocks.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn log(&self) -> &Arc<ImmutableLog> {
        &self.log
    }

    pub fn index(&self) -> &I {
        &self.index
    }

    /// Record `index` of the log, decoded and checked.
    pub fn record(&self, index: u64) -> Result<Option<Record>> {
        let Some(body) = self.log.record_body(index)? else {
            return Ok(None);
        };
        Record::decode(&body)
            .map(Some)
            .map_err(|reason| LedgerError::Record { index, reason })
    }
}

/// Indexes record `index` unless it was already, and moves the watermark.
fn apply_once<I: LedgerIndex + ?Sized>(
    tx: &WriteTransaction,
    index: &I,
    at: u64,
    kind: RecordKind,
    payload: &[u8],
) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let mut ahead = tx.open_table(AHEAD)?;
    let mut watermark = meta.get(WATERMARK)?.map_or(0, |v| v.value());
    if at < watermark || ahead.get(at)?.is_some() {
        return Ok(());
    }
    index.apply(tx, at, kind, payload)?;
    if at == watermark {
        watermark += 1;
        while ahead.remove(watermark)?.is_some() {
            watermark += 1;
        }
        meta.insert(WATERMARK, watermark)?;
    } else {
        ahead.insert(at, ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::ReadableTable;

    use super::*;

    const SEEN: TableDefinition<u64, &[u8]> = TableDefinition::new("seen");

    /// Indexes each record's payload by its index, counting how often it was applied.
    #[derive(Default)]
    struct Seen(std::sync::atomic::AtomicUsize);

    impl LedgerIndex for Seen {
        fn create_tables(&self, tx: &WriteTransaction) -> Result<()> {
            tx.open_table(SEEN)?;
            Ok(())
        }
        fn apply(
            &self,
            tx: &WriteTransaction,
            i: u64,
            _: RecordKind,
            payload: &[u8],
        ) -> Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tx.open_table(SEEN)?.insert(i, payload)?;
            Ok(())
        }
    }

    fn seen(ledger: &Ledger<Seen>) -> Vec<(u64, Vec<u8>)> {
        ledger
            .read(|tx| {
                let t = tx.open_table(SEEN)?;
                let mut out = Vec::new();
                for e in t.iter()? {
                    let (k, v) = e?;
                    out.push((k.value(), v.value().to_vec()));
                }
                Ok(out)
            })
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_catches_up_with_what_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        {
            let ledger =
                Ledger::open(dir.path(), "l.redb", 1 << 20, log.clone(), Seen::default()).unwrap();
            // Appended concurrently: the index sees them in any order.
            let appends: Vec<_> = (0..20u8)
                .map(|i| ledger.append(RecordKind::GlobalEntry, vec![i]))
                .collect();
            futures::future::try_join_all(appends).await.unwrap();
            assert_eq!(ledger.watermark().unwrap(), 20);
            assert_eq!(seen(&ledger).len(), 20);
        }
        // Records the index never saw (a crash between the two writes).
        log.append(RecordKind::Checkpoint, b"a".to_vec())
            .await
            .unwrap();
        log.append(RecordKind::Checkpoint, b"b".to_vec())
            .await
            .unwrap();
        let ledger = Ledger::open(dir.path(), "l.redb", 1 << 20, log, Seen::default()).unwrap();
        assert_eq!(ledger.watermark().unwrap(), 22);
        assert_eq!(
            ledger.index().0.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "only what was missing is indexed again"
        );
        let all = seen(&ledger);
        assert_eq!(all[21], (21, b"b".to_vec()));
        assert_eq!(ledger.record(20).unwrap().unwrap().payload, b"a".to_vec());
    }

    #[test]
    fn records_indexed_out_of_order_wait_for_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        let index = Seen::default();
        let step = |at: u64| {
            let tx = db.begin_write().unwrap();
            tx.open_table(SEEN).unwrap();
            apply_once(&tx, &index, at, RecordKind::Checkpoint, &[at as u8]).unwrap();
            let w = tx
                .open_table(META)
                .unwrap()
                .get(WATERMARK)
                .unwrap()
                .map_or(0, |v| v.value());
            tx.commit().unwrap();
            w
        };
        assert_eq!(step(1), 0);
        assert_eq!(step(3), 0);
        assert_eq!(step(1), 0, "twice is once");
        assert_eq!(step(0), 2);
        assert_eq!(step(2), 4);
        assert_eq!(step(0), 4);
        assert_eq!(index.0.load(std::sync::atomic::Ordering::Relaxed), 4);
    }
}

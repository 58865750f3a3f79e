//! The store a storage node (light or full) keeps: batches by id in one redb file, under a
//! capacity limit.
//!
//! Every put is fsynced before it returns, because the node signs a proof-of-hold ack right
//! after it and a city node counts that ack as durability. Puts are serialized by one mutex
//! around "is it there, does it fit, write it", so concurrent puts can never overshoot the
//! capacity. The bytes held are kept in a small meta table updated in the same transaction
//! as the batch itself, so opening a large store does not read every value back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// Batch id → the exact bytes received.
const BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
/// Bookkeeping kept in step with `BATCHES`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in `META`: total length of the values in `BATCHES`.
const USED_BYTES_KEY: &str = "used_bytes";

/// The file inside the node's data directory.
pub const FILE_NAME: &str = "batches.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("capacity exceeded: {needed} bytes needed, {free} bytes free")]
    CapacityExceeded { needed: u64, free: u64 },
    #[error("storage database: creating {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("storage database: opening {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("storage database: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("storage database: {0}")]
    Table(#[from] redb::TableError),
    #[error("storage database: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("storage database: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("storage database: {0}")]
    Commit(#[from] redb::CommitError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a successful [`BatchStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written and fsynced now.
    Stored,
    /// The id was already held; nothing was written.
    AlreadyHeld,
}

pub struct BatchStore {
    db: Database,
    capacity_bytes: u64,
    /// Serializes puts: the duplicate check, the capacity check and the write happen as one.
    write_lock: Mutex<()>,
    /// Mirrors of what is on disk, changed only under `write_lock` after a commit, so that
    /// readers (health probes) never wait behind an fsync.
    used_bytes: AtomicU64,
    batch_count: AtomicU64,
}

impl std::fmt::Debug for BatchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchStore")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("used_bytes", &self.used_bytes())
            .field("batch_count", &self.batch_count())
            .finish_non_exhaustive()
    }
}

impl BatchStore {
    /// Opens or creates `dir/batches.redb` (creating `dir` if needed). `capacity_bytes` is
    /// the most value bytes the store will hold; it may be lowered below what is already
    /// held, in which case every new put is refused.
    pub fn open(dir: &Path, capacity_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;

        // Create both tables on first open, so that readers can always open them.
        let tx = db.begin_write()?;
        let (used, count) = {
            let batches = tx.open_table(BATCHES)?;
            let meta = tx.open_table(META)?;
            let used = meta.get(USED_BYTES_KEY)?.map_or(0, |g| g.value());
            (used, batches.len()?)
        };
        tx.commit()?;

        Ok(Self {
            db,
            capacity_bytes,
            write_lock: Mutex::new(()),
            used_bytes: AtomicU64::new(used),
            batch_count: AtomicU64::new(count),
        })
    }

    /// Every batch held in the store at `dir`, read-only (for a key holder's audit with
    /// `citychain vault open`; the node must be stopped, as the file admits one process).
    pub fn read_all(dir: &Path) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        let path = dir.join(FILE_NAME);
        let db = super::offline::OfflineDb::open(&path)
            .map_err(|source| StoreError::Open { path, source })?;
        let tx = db.begin_read()?;
        let batches = tx.open_table(BATCHES)?;
        let mut out = Vec::new();
        for entry in batches.iter()? {
            let (id, bytes) = entry?;
            out.push((*id.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores `bytes` under `batch_id`, durably (fsynced) before returning. The same id
    /// again returns [`PutOutcome::AlreadyHeld`] without writing. A put that does not fit
    /// returns [`StoreError::CapacityExceeded`] and writes nothing.
    ///
    /// Blocking: call it from a blocking thread in async code.
    pub fn put(&self, batch_id: &[u8; 32], bytes: &[u8]) -> Result<PutOutcome> {
        // A panic under this lock can only come from redb itself, before our counters are
        // touched, so a poisoned lock still guards consistent state.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let used = {
            let mut batches = tx.open_table(BATCHES)?;
            if batches.get(batch_id)?.is_some() {
                drop(batches);
                tx.abort()?;
                return Ok(PutOutcome::AlreadyHeld);
            }
            let used = self.used_bytes.load(Ordering::Acquire);
            let needed = bytes.len() as u64;
            let free = self.capacity_bytes.saturating_sub(used);
            if needed > free {
                drop(batches);
                tx.abort()?;
                return Err(StoreError::CapacityExceeded { needed, free });
            }
            batches.insert(batch_id, bytes)?;
            let mut meta = tx.open_table(META)?;
            meta.insert(USED_BYTES_KEY, used + needed)?;
            used + needed
        };
        tx.commit()?;
        self.used_bytes.store(used, Ordering::Release);
        self.batch_count.fetch_add(1, Ordering::AcqRel);
        Ok(PutOutcome::Stored)
    }

    /// The bytes stored under `batch_id`, if any. Blocking.
    pub fn get(&self, batch_id: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let batches = tx.open_table(BATCHES)?;
        let value = batches.get(batch_id)?;
        Ok(value.map(|g| g.value().to_vec()))
    }

    /// Whether `batch_id` is held. Blocking.
    pub fn contains(&self, batch_id: &[u8; 32]) -> Result<bool> {
        let tx = self.db.begin_read()?;
        let batches = tx.open_table(BATCHES)?;
        Ok(batches.get(batch_id)?.is_some())
    }

    /// Total bytes of the values held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Number of batches held.
    pub fn batch_count(&self) -> u64 {
        self.batch_count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn put_get_and_idempotent_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = BatchStore::open(dir.path(), 1000).unwrap();
        assert_eq!(store.get(&id(1)).unwrap(), None);
        assert!(!store.contains(&id(1)).unwrap());

        assert_eq!(store.put(&id(1), b"hello").unwrap(), PutOutcome::Stored);
        assert_eq!(store.get(&id(1)).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(store.contains(&id(1)).unwrap());
        assert_eq!((store.used_bytes(), store.batch_count()), (5, 1));

        // The same id again writes nothing, even with other bytes.
        assert_eq!(
            store.put(&id(1), b"other!").unwrap(),
            PutOutcome::AlreadyHeld
        );
        assert_eq!(store.get(&id(1)).unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!((store.used_bytes(), store.batch_count()), (5, 1));
        assert_eq!(store.capacity_bytes(), 1000);
    }

    #[test]
    fn over_capacity_writes_nothing_but_a_held_id_is_still_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = BatchStore::open(dir.path(), 10).unwrap();
        assert_eq!(store.put(&id(1), &[0; 6]).unwrap(), PutOutcome::Stored);
        match store.put(&id(2), &[0; 5]) {
            Err(StoreError::CapacityExceeded { needed, free }) => {
                assert_eq!((needed, free), (5, 4));
            }
            other => panic!("expected CapacityExceeded, got {other:?}"),
        }
        assert!(!store.contains(&id(2)).unwrap());
        assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
        // A retry of what is already held is not a capacity question.
        assert_eq!(store.put(&id(1), &[0; 6]).unwrap(), PutOutcome::AlreadyHeld);
        // Exactly filling the store is allowed.
        assert_eq!(store.put(&id(3), &[0; 4]).unwrap(), PutOutcome::Stored);
        assert_eq!(store.used_bytes(), 10);
    }

    #[test]
    fn data_and_usage_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = BatchStore::open(dir.path(), 100).unwrap();
            store.put(&id(1), b"first batch").unwrap();
            store.put(&id(2), b"second").unwrap();
        }
        assert!(dir.path().join(FILE_NAME).is_file());
        let store = BatchStore::open(dir.path(), 20).unwrap();
        assert_eq!(
            store.get(&id(1)).unwrap().as_deref(),
            Some(&b"first batch"[..])
        );
        assert_eq!(store.get(&id(2)).unwrap().as_deref(), Some(&b"second"[..]));
        assert_eq!((store.used_bytes(), store.batch_count()), (17, 2));
        // The reopened store counts what it already holds against its capacity.
        assert!(matches!(
            store.put(&id(3), b"1234"),
            Err(StoreError::CapacityExceeded { needed: 4, free: 3 })
        ));
        assert_eq!(store.put(&id(3), b"123").unwrap(), PutOutcome::Stored);
        drop(store);
        let store = BatchStore::open(dir.path(), 20).unwrap();
        assert_eq!((store.used_bytes(), store.batch_count()), (20, 3));
    }

    #[test]
    fn open_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let store = BatchStore::open(&nested, 10).unwrap();
        assert_eq!(store.batch_count(), 0);
        assert!(nested.join(FILE_NAME).is_file());
    }

    #[test]
    fn concurrent_puts_never_overshoot_capacity() {
        const THREADS: usize = 8;
        const SIZE: u64 = 100;
        let dir = tempfile::tempdir().unwrap();
        // Room for exactly three of the eight.
        let store = Arc::new(BatchStore::open(dir.path(), 3 * SIZE + SIZE / 2).unwrap());
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    store.put(&id(i as u8), &[i as u8; SIZE as usize])
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok(PutOutcome::Stored)))
            .count();
        let full = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::CapacityExceeded { .. })))
            .count();
        assert_eq!((stored, full), (3, THREADS - 3), "{results:?}");
        assert_eq!(store.used_bytes(), 3 * SIZE);
        assert_eq!(store.batch_count(), 3);
        let held = (0..THREADS)
            .filter(|i| store.contains(&id(*i as u8)).unwrap())
            .count();
        assert_eq!(held, 3);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BatchStore>();
    }
}

//! The store a storage node (light or full) keeps: batches by id in one redb file, under a
//! capacity limit.
//!
//! Every put is fsynced before it returns, because the node signs a proof-of-hold ack right
//! after it and a city node counts that ack as durability. Puts are serialized by one mutex
//! around "is it there, does it fit, write it", so concurrent puts can never overshoot the
//! capacity. The bytes held are kept in a small meta table updated in the same transaction
//! as the batch itself, so opening a large store does not read every value back.
//!
//! **Disk faults.** After a failed write (ENOSPC, EIO, EPERM…) redb refuses every later
//! operation on that handle ("Previous I/O error occurred") until the database is closed
//! and opened again. So the first database error puts the store in a *failing* state: the
//! handle is dropped, every operation answers [`StoreError::Unavailable`] with the cause,
//! and the store is reopened, under the write lock, after `retry_initial`, then twice as
//! long after each failed attempt, up to `retry_max` ([`BatchStore::recover_if_due`],
//! driven by [`spawn_recovery`] and by the next put). A reopen waits until the disk has
//! room for the largest batch the node accepts, and counts only if a durable write commits,
//! so a disk that is still full or still refuses writes keeps the store failing; a store
//! that fails again soon after reopening goes on with its backoff rather than start over. Nothing
//! acknowledged is lost: a put whose commit failed was never acked, and redb's commit
//! protocol leaves the last successful commit in place, which the reopened store reads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::messages::storage::PieceId;

/// Batch id → the exact bytes received.
const BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
/// Erasure-coded pieces (light nodes): [`piece_key`] → the encoded piece received.
const PIECES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pieces");
/// Bookkeeping kept in step with `BATCHES`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in `META`: total length of the values in `BATCHES`.
const USED_BYTES_KEY: &str = "used_bytes";
/// Key in `META`: when the store was last (re)opened, in ms; written durably on every open
/// to prove the disk takes writes.
const OPENED_KEY: &str = "opened_at_ms";

/// The file inside the node's data directory.
pub const FILE_NAME: &str = "batches.redb";

/// Where piece `index` of batch `batch_id` is kept: a hash of both, so pieces share the
/// batches' key type and a batch id never names a piece.
pub fn piece_key(batch_id: &[u8; 32], index: u8) -> [u8; 32] {
    let mut input = Vec::with_capacity(33);
    input.extend_from_slice(batch_id);
    input.push(index);
    crate::crypto::hash(&crate::crypto::tagged("citychain/piece-key/v1", &input))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("capacity exceeded: {needed} bytes needed, {free} bytes free")]
    CapacityExceeded { needed: u64, free: u64 },
    /// The store failed (a database or disk error) and is not open yet again.
    #[error("the store is failing since {since_ms} ms ago and is being reopened: {reason}")]
    Unavailable { reason: String, since_ms: u128 },
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

impl StoreError {
    /// Errors of the database itself (not of the request): they put the store in its
    /// failing state until it is reopened.
    fn is_fault(&self) -> bool {
        !matches!(
            self,
            StoreError::CapacityExceeded { .. } | StoreError::Unavailable { .. }
        )
    }
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

/// How a store is opened, and reopened after a fault.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most value bytes the store will hold.
    pub capacity_bytes: u64,
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Wait before the first reopen after a fault; doubled after each failed attempt.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Free disk space a failed store waits for before it is reopened: the largest batch
    /// the node accepts, so that a store that reopens can take any batch again.
    pub min_free_bytes: u64,
}

impl StoreOptions {
    /// `capacity_bytes` with the `[limits]` defaults for the rest.
    pub fn with_capacity(capacity_bytes: u64) -> Self {
        let limits = crate::config::LimitsConfig::default();
        Self {
            capacity_bytes,
            cache_bytes: limits.store_cache_bytes,
            retry_initial: limits.store_retry_initial,
            retry_max: limits.store_retry_max,
            min_free_bytes: 0,
        }
    }
}

/// Why and since when the store is failing, and when it is tried again.
#[derive(Debug, Clone)]
struct Fault {
    reason: String,
    since: Instant,
    /// Reopen attempts that failed, and why the last one did.
    attempts: u32,
    last_attempt: Option<String>,
    next_try: Instant,
}

pub struct BatchStore {
    path: PathBuf,
    options: StoreOptions,
    /// The open database; `None` while the store is failing.
    db: RwLock<Option<Arc<Database>>>,
    /// Serializes puts and reopens: the duplicate check, the capacity check and the write
    /// happen as one, and a reopen never races a write.
    write_lock: Mutex<()>,
    fault: Mutex<Option<Fault>>,
    /// Mirrors `fault.is_some()`, for readers that must not wait.
    failing: AtomicBool,
    /// When the store last reopened and after how many attempts: a store that fails again
    /// soon after goes on with its backoff instead of starting over, so a disk that keeps
    /// failing does not make the node flap between ready and not ready.
    recovered: Mutex<Option<(Instant, u32)>>,
    /// Mirrors of what is on disk, changed only under `write_lock` after a commit, so that
    /// readers (health probes) never wait behind an fsync.
    used_bytes: AtomicU64,
    batch_count: AtomicU64,
}

impl std::fmt::Debug for BatchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchStore")
            .field("capacity_bytes", &self.options.capacity_bytes)
            .field("used_bytes", &self.used_bytes())
            .field("batch_count", &self.batch_count())
            .field("failing", &self.failure())
            .finish_non_exhaustive()
    }
}

impl BatchStore {
    /// Opens or creates `dir/batches.redb` (creating `dir` if needed). `capacity_bytes` is
    /// the most value bytes the store will hold; it may be lowered below what is already
    /// held, in which case every new put is refused.
    pub fn open(dir: &Path, capacity_bytes: u64) -> Result<Self> {
        Self::open_with(dir, StoreOptions::with_capacity(capacity_bytes))
    }

    /// [`BatchStore::open`] with every option.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let (db, used, count) = open_db(&path, options.cache_bytes)?;
        Ok(Self {
            path,
            options,
            db: RwLock::new(Some(Arc::new(db))),
            write_lock: Mutex::new(()),
            fault: Mutex::new(None),
            failing: AtomicBool::new(false),
            recovered: Mutex::new(None),
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

    /// Every piece held in the store at `dir` (encoded as received), read-only, like
    /// [`BatchStore::read_all`].
    pub fn read_all_pieces(dir: &Path) -> Result<Vec<Vec<u8>>> {
        let path = dir.join(FILE_NAME);
        let db = super::offline::OfflineDb::open(&path)
            .map_err(|source| StoreError::Open { path, source })?;
        let tx = db.begin_read()?;
        let pieces = match tx.open_table(PIECES) {
            Ok(t) => t,
            // A store written before pieces existed has none.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in pieces.iter()? {
            let (_, bytes) = entry?;
            out.push(bytes.value().to_vec());
        }
        Ok(out)
    }

    /// Stores `bytes` under `batch_id`, durably (fsynced) before returning. The same id
    /// again returns [`PutOutcome::AlreadyHeld`] without writing. A put that does not fit
    /// returns [`StoreError::CapacityExceeded`] and writes nothing. While the store is
    /// failing, [`StoreError::Unavailable`] (after a reopen attempt, if one is due).
    ///
    /// Blocking: call it from a blocking thread in async code.
    pub fn put(&self, batch_id: &[u8; 32], bytes: &[u8]) -> Result<PutOutcome> {
        self.put_into(BATCHES, batch_id, bytes)
    }

    /// Stores the encoded piece `bytes` as piece `index` of batch `batch_id`, as
    /// [`BatchStore::put`] stores a batch (fsynced, idempotent, within the capacity, which
    /// batches and pieces share).
    pub fn put_piece(&self, batch_id: &[u8; 32], index: u8, bytes: &[u8]) -> Result<PutOutcome> {
        self.put_into(PIECES, &piece_key(batch_id, index), bytes)
    }

    /// The encoded piece `index` of batch `batch_id`, if held. Blocking.
    pub fn get_piece(&self, batch_id: &[u8; 32], index: u8) -> Result<Option<Vec<u8>>> {
        self.get_from(PIECES, &piece_key(batch_id, index))
    }

    /// Removes the pieces `pieces` names and frees their bytes from the used capacity, all
    /// in one fsynced transaction (the city releases the light pieces of the batches it
    /// archived to full nodes, many at a time). Returns, for each, the bytes freed, or
    /// `None` if it was not held (a release is idempotent). Blocking.
    pub fn release_pieces(&self, pieces: &[PieceId]) -> Result<Vec<Option<u64>>> {
        self.write(|db| self.release_in(db, pieces))
    }

    /// Runs `f` as the store's one writer on its database (reopened first if it failed
    /// and is due), and watches the result for a failing disk.
    fn write<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        // A panic under this lock can only come from redb itself, before our counters are
        // touched, so a poisoned lock still guards consistent state.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.recover_locked()?;
        let db = self.handle()?;
        let result = f(&db);
        self.watch(result, db)
    }

    fn release_in(&self, db: &Database, pieces: &[PieceId]) -> Result<Vec<Option<u64>>> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let (freed, used) = {
            let mut values = tx.open_table(PIECES)?;
            let mut freed = Vec::with_capacity(pieces.len());
            for p in pieces {
                let key = piece_key(&p.batch_id, p.index);
                freed.push(values.remove(&key)?.map(|g| g.value().len() as u64));
            }
            if freed.iter().all(Option::is_none) {
                drop(values);
                tx.abort()?;
                return Ok(freed);
            }
            let total: u64 = freed.iter().flatten().sum();
            let used = self
                .used_bytes
                .load(Ordering::Acquire)
                .saturating_sub(total);
            tx.open_table(META)?.insert(USED_BYTES_KEY, used)?;
            (freed, used)
        };
        tx.commit()?;
        self.used_bytes.store(used, Ordering::Release);
        let removed = freed.iter().flatten().count() as u64;
        self.batch_count.fetch_sub(removed, Ordering::AcqRel);
        Ok(freed)
    }

    fn put_into(
        &self,
        table: TableDefinition<'static, &'static [u8; 32], &'static [u8]>,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<PutOutcome> {
        self.write(|db| self.put_in(db, table, key, bytes))
    }

    fn put_in(
        &self,
        db: &Database,
        table: TableDefinition<'static, &'static [u8; 32], &'static [u8]>,
        batch_id: &[u8; 32],
        bytes: &[u8],
    ) -> Result<PutOutcome> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let used = {
            let mut batches = tx.open_table(table)?;
            if batches.get(batch_id)?.is_some() {
                drop(batches);
                tx.abort()?;
                return Ok(PutOutcome::AlreadyHeld);
            }
            let used = self.used_bytes.load(Ordering::Acquire);
            let needed = bytes.len() as u64;
            let free = self.options.capacity_bytes.saturating_sub(used);
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
        self.get_from(BATCHES, batch_id)
    }

    fn get_from(
        &self,
        table: TableDefinition<'static, &'static [u8; 32], &'static [u8]>,
        batch_id: &[u8; 32],
    ) -> Result<Option<Vec<u8>>> {
        let db = self.handle()?;
        let read = || -> Result<Option<Vec<u8>>> {
            let tx = db.begin_read()?;
            let batches = tx.open_table(table)?;
            let value = batches.get(batch_id)?;
            Ok(value.map(|g| g.value().to_vec()))
        };
        let result = read();
        self.watch(result, db)
    }

    /// Whether `batch_id` is held. Blocking.
    pub fn contains(&self, batch_id: &[u8; 32]) -> Result<bool> {
        let db = self.handle()?;
        let read = || -> Result<bool> {
            let tx = db.begin_read()?;
            let batches = tx.open_table(BATCHES)?;
            Ok(batches.get(batch_id)?.is_some())
        };
        let result = read();
        self.watch(result, db)
    }

    /// Total bytes of the values held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.options.capacity_bytes
    }

    /// The most the store can hold now: its capacity, or less when its disk has less free
    /// space than the capacity leaves (what the health report tells the city, so it stops
    /// choosing a node whose disk is nearly full).
    pub fn effective_capacity_bytes(&self) -> u64 {
        let capacity = self.options.capacity_bytes;
        match disk_free_bytes(&self.path) {
            Some(free) => capacity.min(self.used_bytes().saturating_add(free)),
            None => capacity,
        }
    }

    /// Number of batches and pieces held.
    pub fn batch_count(&self) -> u64 {
        self.batch_count.load(Ordering::Acquire)
    }

    /// Why the store is failing, if it is: what `/readyz` and the health report say.
    pub fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        fault.as_ref().map(|f| {
            let mut why = format!(
                "{}; failing for {:.1} s",
                f.reason,
                f.since.elapsed().as_secs_f64()
            );
            if let Some(last) = &f.last_attempt {
                why.push_str(&format!(
                    "; {} reopen attempts failed, the last: {last}",
                    f.attempts
                ));
            }
            why
        })
    }

    /// Reopens a failing store if its next attempt is due; `Ok` when the store is open
    /// (again, or all along). Blocking: it may repair and fsync the database.
    pub fn recover_if_due(&self) -> Result<()> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.recover_locked()
    }

    /// The open handle, or why there is none.
    fn handle(&self) -> Result<Arc<Database>> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match &*db {
            Some(db) => Ok(db.clone()),
            None => Err(self.unavailable()),
        }
    }

    fn unavailable(&self) -> StoreError {
        let fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        match &*fault {
            Some(f) => StoreError::Unavailable {
                reason: f.reason.clone(),
                since_ms: f.since.elapsed().as_millis(),
            },
            None => StoreError::Unavailable {
                reason: "the store is being reopened".into(),
                since_ms: 0,
            },
        }
    }

    /// Passes on `result`, which `db` gave; a database error first puts the store in its
    /// failing state.
    fn watch<T>(&self, result: Result<T>, db: Arc<Database>) -> Result<T> {
        if let Err(e) = &result
            && e.is_fault()
        {
            self.fail(e.to_string(), &db);
        }
        result
    }

    /// Drops the database handle `failed` (redb will not write through it again) and
    /// schedules a reopen. An error from a handle the store no longer holds (it has been
    /// reopened since) changes nothing.
    fn fail(&self, reason: String, failed: &Arc<Database>) {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !db
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, failed))
        {
            return;
        }
        // Readers holding a clone finish with it; the database closes after the last one.
        db.take();
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let recovered = *self
            .recovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let attempts = match recovered {
            Some((at, attempts)) if at.elapsed() < self.options.retry_max => attempts,
            _ => 0,
        };
        let wait = self.backoff(attempts);
        tracing::error!(
            path = %self.path.display(),
            error = %reason,
            retry_in = ?wait,
            "the batch store failed; it reports not ready and will be reopened"
        );
        *fault = Some(Fault {
            reason,
            since: now,
            attempts,
            last_attempt: None,
            next_try: now + wait,
        });
        self.failing.store(true, Ordering::Release);
        metrics::gauge!(crate::metrics::STORE_FAILING).set(1.0);
    }

    /// With the write lock held: nothing to do if the store is open; otherwise reopen it
    /// if an attempt is due, or say why not.
    fn recover_locked(&self) -> Result<()> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        let due = {
            let fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
            fault.as_ref().is_none_or(|f| f.next_try <= Instant::now())
        };
        if !due {
            return Err(self.unavailable());
        }
        let reopened = match disk_free_bytes(&self.path) {
            Some(free) if free < self.options.min_free_bytes => Err(format!(
                "waiting for free disk space: {free} bytes free, {} needed",
                self.options.min_free_bytes
            )),
            _ => open_db(&self.path, self.options.cache_bytes).map_err(|e| e.to_string()),
        };
        match reopened {
            Ok((db, used, count)) => {
                self.used_bytes.store(used, Ordering::Release);
                self.batch_count.store(count, Ordering::Release);
                // The handle, the fault and the flag change together, under the handle's
                // lock, as in `fail`: a reader failing on the new handle at once finds the
                // store open and fails it anew.
                let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
                let fault = self
                    .fault
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                *slot = Some(Arc::new(db));
                self.failing.store(false, Ordering::Release);
                drop(slot);
                metrics::gauge!(crate::metrics::STORE_FAILING).set(0.0);
                *self
                    .recovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    fault.as_ref().map(|f| (Instant::now(), f.attempts + 1));
                if let Some(f) = fault {
                    tracing::warn!(
                        path = %self.path.display(),
                        failed_for = ?f.since.elapsed(),
                        attempts = f.attempts + 1,
                        batches = count,
                        "the batch store is open again"
                    );
                }
                Ok(())
            }
            Err(e) => {
                let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(f) = fault.as_mut() {
                    f.attempts += 1;
                    f.last_attempt = Some(e.clone());
                    let wait = self.backoff(f.attempts);
                    f.next_try = Instant::now() + wait;
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        attempts = f.attempts,
                        retry_in = ?wait,
                        "reopening the batch store failed"
                    );
                }
                drop(fault);
                Err(self.unavailable())
            }
        }
    }
}

impl BatchStore {
    /// The wait before reopen attempt `attempts + 1`: `retry_initial`, doubled per attempt
    /// already made, at most `retry_max`.
    fn backoff(&self, attempts: u32) -> Duration {
        self.options
            .retry_initial
            .saturating_mul(2u32.saturating_pow(attempts.min(16)))
            .min(self.options.retry_max)
    }
}

/// Free bytes (for an unprivileged user) on the file system holding `path`.
fn disk_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads a NUL-terminated path we own and writes one struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // fsblkcnt_t and c_ulong are not u64 everywhere
    Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// Opens (or creates) the database, makes sure both tables exist, reads the counters, and
/// commits one durable write, so that an open that succeeds is a disk that takes writes.
fn open_db(path: &Path, cache_bytes: usize) -> Result<(Database, u64, u64)> {
    let db = Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let (used, count) = {
        let batches = tx.open_table(BATCHES)?;
        let pieces = tx.open_table(PIECES)?;
        let mut meta = tx.open_table(META)?;
        let used = meta.get(USED_BYTES_KEY)?.map_or(0, |g| g.value());
        meta.insert(OPENED_KEY, crate::messages::now_ms())?;
        (used, batches.len()? + pieces.len()?)
    };
    tx.commit()?;
    Ok((db, used, count))
}

/// Reopens `store` in the background while it is failing, so it recovers even when no
/// write comes to try (the city stops sending to a node that says it is not ready). Ends
/// when the store is dropped.
pub fn spawn_recovery(store: &Arc<BatchStore>) -> tokio::task::JoinHandle<()> {
    let weak: Weak<BatchStore> = Arc::downgrade(store);
    let every = store.options.retry_initial.min(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            if store.failing.load(Ordering::Acquire) {
                let _ = tokio::task::spawn_blocking(move || store.recover_if_due()).await;
            }
        }
    })
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
    fn pieces_are_kept_apart_from_batches_under_the_same_capacity() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = BatchStore::open(dir.path(), 20).unwrap();
            assert_eq!(store.put(&id(1), b"batch").unwrap(), PutOutcome::Stored);
            assert_eq!(store.get_piece(&id(1), 0).unwrap(), None);
            assert_eq!(
                store.put_piece(&id(1), 0, b"piece0").unwrap(),
                PutOutcome::Stored
            );
            assert_eq!(
                store.put_piece(&id(1), 1, b"piece1").unwrap(),
                PutOutcome::Stored
            );
            assert_eq!(
                store.put_piece(&id(1), 1, b"other").unwrap(),
                PutOutcome::AlreadyHeld
            );
            assert_eq!(
                store.get_piece(&id(1), 1).unwrap().as_deref(),
                Some(&b"piece1"[..])
            );
            assert_eq!(store.get(&id(1)).unwrap().as_deref(), Some(&b"batch"[..]));
            assert_eq!((store.used_bytes(), store.batch_count()), (17, 3));
            assert!(matches!(
                store.put_piece(&id(2), 0, b"1234"),
                Err(StoreError::CapacityExceeded { needed: 4, free: 3 })
            ));
        }
        assert_eq!(
            BatchStore::read_all_pieces(dir.path()).unwrap().len(),
            2,
            "an offline reader finds the pieces"
        );
        assert_eq!(BatchStore::read_all(dir.path()).unwrap().len(), 1);
        let store = BatchStore::open(dir.path(), 20).unwrap();
        assert_eq!((store.used_bytes(), store.batch_count()), (17, 3));
        assert_ne!(piece_key(&id(1), 0), piece_key(&id(1), 1));
        assert_ne!(piece_key(&id(1), 0), id(1));
    }

    #[test]
    fn releasing_a_piece_frees_its_bytes_for_new_puts_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let piece = |batch: u8, index: u8| {
            [PieceId {
                batch_id: id(batch),
                index,
            }]
        };
        {
            let store = BatchStore::open(dir.path(), 12).unwrap();
            store.put_piece(&id(1), 0, b"piece0").unwrap();
            store.put_piece(&id(1), 1, b"piece1").unwrap();
            assert!(matches!(
                store.put_piece(&id(2), 0, b"x"),
                Err(StoreError::CapacityExceeded { needed: 1, free: 0 })
            ));
            assert_eq!(store.release_pieces(&piece(1, 0)).unwrap(), [Some(6)]);
            assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
            assert_eq!(store.get_piece(&id(1), 0).unwrap(), None);
            // Idempotent: an absent piece frees nothing and changes nothing.
            assert_eq!(store.release_pieces(&piece(1, 0)).unwrap(), [None]);
            assert_eq!(store.release_pieces(&piece(9, 3)).unwrap(), [None]);
            assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
            // The space is there for new pieces.
            assert_eq!(
                store.put_piece(&id(2), 0, b"piece2").unwrap(),
                PutOutcome::Stored
            );
            assert_eq!(store.used_bytes(), 12);
        }
        let store = BatchStore::open(dir.path(), 12).unwrap();
        assert_eq!((store.used_bytes(), store.batch_count()), (12, 2));
        assert_eq!(store.get_piece(&id(1), 0).unwrap(), None);
    }

    #[test]
    fn a_release_of_many_pieces_frees_those_held_in_one_transaction_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let piece = |batch: u8, index: u8| PieceId {
            batch_id: id(batch),
            index,
        };
        {
            let store = BatchStore::open(dir.path(), 100).unwrap();
            store.put_piece(&id(1), 0, b"piece0").unwrap();
            store.put_piece(&id(1), 1, b"piece1").unwrap();
            store.put_piece(&id(2), 4, b"p2").unwrap();
            // Held, never held, held, and the same piece named twice.
            let freed = store
                .release_pieces(&[piece(1, 0), piece(3, 0), piece(2, 4), piece(1, 0)])
                .unwrap();
            assert_eq!(freed, vec![Some(6), None, Some(2), None]);
            assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
            assert_eq!(store.get_piece(&id(2), 4).unwrap(), None);
            assert!(store.get_piece(&id(1), 1).unwrap().is_some());
            // Nothing held among them: nothing changes.
            assert_eq!(
                store.release_pieces(&[piece(1, 0), piece(9, 9)]).unwrap(),
                vec![None, None]
            );
            assert_eq!(
                store.release_pieces(&[]).unwrap(),
                Vec::<Option<u64>>::new()
            );
            assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
        }
        let store = BatchStore::open(dir.path(), 100).unwrap();
        assert_eq!((store.used_bytes(), store.batch_count()), (6, 1));
        assert_eq!(store.get_piece(&id(1), 0).unwrap(), None);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BatchStore>();
    }
}

//! The immutable log: the last-resort storage tier of a city node.
//!
//! An append-only file, `DIR/immutable.log`, in which every record is hash-chained to the
//! one before it and on disk (`sync_data`) before its append is acknowledged. When every
//! peer tier fails, a batch still lands here, and the chain lets `citychain log verify`
//! prove afterwards that nothing acknowledged was rewritten.
//!
//! # Format
//!
//! ```text
//! b"CCLOG\0\0\x01"                              8-byte file magic
//! [u32 LE length][postcard(Record)]             one frame per record, seq 0, 1, 2, ...
//! ```
//!
//! A record's hash is `BLAKE3("citychain/log/v1\0" ‖ postcard((seq, prev_hash, time_ms,
//! kind, payload)))`. Postcard encodes a struct as its fields in order, so a record's body
//! is exactly that hash preimage followed by the 32 hash bytes. Reading insists on this
//! canonical form (the body must re-encode byte for byte), which pins every byte of a
//! frame: the length prefix to the body length, the body to the decoded fields, the
//! fields to the hash, the hash to the next record's `prev_hash`. Any single changed byte
//! therefore fails verification.
//!
//! # Writing
//!
//! One dedicated [`GroupCommit`] thread owns the file. [`ImmutableLog::append`] queues a
//! request and awaits its reply. The thread takes everything queued while its previous
//! write+fsync ran, writes the whole group with one `write` and one `sync_data`, then
//! answers every request in the group. If the write or the fsync fails, every append in
//! the group fails and the thread stops: after a failed fsync the kernel may have dropped
//! dirty pages, so nothing it says later can be trusted.
//!
//! # Crashes
//!
//! A crash mid-write leaves a torn final frame, which was never acknowledged. `open` cuts
//! it away (with a warning); any other damage refuses to open. `verify` is strict and
//! reports a torn tail too. An exclusive file lock keeps two writers off one log.

mod format;
pub mod heads;
mod index;
pub mod merkle;
#[cfg(test)]
mod merkle_tests;
mod record;
mod scan;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use self::format::FRAME_HEADER_LEN;
use self::index::{BatchIndex, Located};
use self::merkle::{ProofError, Tree};
pub use self::record::{
    AppendReceipt, LOG_FILE, LogError, MAGIC, MAX_PAYLOAD_LEN, MAX_RECORD_LEN, Record, RecordKind,
    Result, VerifyError, VerifyReport,
};
use self::scan::{Scan, Scanned, scan};
#[cfg(test)]
use self::writer::TestHooks;
use self::writer::{Records, Request, Shared, Writer};
use super::group_commit::{GroupCommit, GroupError, Options};
use crate::crypto::Hash32;
use crate::messages::BatchId;

/// Appends that may wait for the writer thread before `append` itself waits.
const QUEUE_CAPACITY: usize = 1024;
/// Most records one group commit writes.
const MAX_GROUP_RECORDS: usize = 1024;
/// Payload bytes after which a group stops taking more records.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// The append-only, hash-chained, fsynced log. `Send + Sync`; share it via `Arc`.
/// Dropping it stops the writer thread after the appends already queued and waits for it,
/// so the file (and its lock) is closed when the handle is gone and the directory can be
/// reopened at once.
pub struct ImmutableLog {
    path: PathBuf,
    /// Read-only descriptor for [`ImmutableLog::read_batch`].
    reader: File,
    writer: GroupCommit<Request, AppendReceipt, io::Error>,
    shared: Arc<Shared>,
}

impl ImmutableLog {
    /// Opens or creates `DIR/immutable.log` (creating `DIR`). Scans the file: a torn final
    /// record (a partial write cut off by a crash — never acknowledged, since fsync
    /// precedes the ack) is truncated away with a warning; any other damage is
    /// [`LogError::Corrupt`] and the log refuses to open. Blocks on file I/O for a scan
    /// of the whole file.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        // O_APPEND: every write lands at the end, whatever the read cursor did.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        lock_exclusive(&file, &path)?;

        let mut batches = BatchIndex::new();
        let mut records = Records::default();
        let mut index_batch = |Scanned {
                                   frame,
                                   body,
                                   record,
                               }: Scanned<'_>| {
            records.push(frame, body);
            if record.kind == RecordKind::Batch
                && let Some(id) = index::batch_id(&record.payload)
            {
                let offset = frame + FRAME_HEADER_LEN;
                batches.insert(
                    id,
                    Located {
                        seq: record.seq,
                        offset,
                        len: body.len() as u32,
                    },
                );
            }
        };
        let scan = if file.metadata()?.len() == 0 {
            write_header(&file, dir)?;
            Scan::default()
        } else {
            let scan = scan(&file, &mut index_batch)?;
            if let Some(torn) = &scan.torn {
                tracing::warn!(
                    path = %path.display(),
                    offset = torn.offset,
                    dropped_bytes = scan.file_len - scan.valid_len,
                    reason = %torn.reason,
                    "cutting a torn final record from the immutable log (never acknowledged)"
                );
                if scan.valid_len < MAGIC.len() as u64 {
                    file.set_len(0)?;
                    write_header(&file, dir)?;
                } else {
                    file.set_len(scan.valid_len)?;
                    file.sync_all()?;
                }
            }
            scan
        };
        tracing::debug!(path = %path.display(), records = scan.records, "immutable log open");
        debug_assert_eq!(records.tree.len(), scan.records);

        // A second descriptor for reads by offset: the writer's is append-only in spirit.
        let reader = File::open(&path)?;
        let end = file.metadata()?.len();
        let shared = Arc::new(Shared {
            head: Mutex::new((scan.records, scan.head_hash)),
            batches: Mutex::new(batches),
            tree: RwLock::new(records),
            appended: tokio::sync::watch::channel(scan.records).0,
            fsyncs: AtomicU64::new(0),
            #[cfg(test)]
            hooks: TestHooks::default(),
        });
        let mut writer = Writer {
            file,
            shared: shared.clone(),
            path: path.clone(),
            next_seq: scan.records,
            prev_hash: scan.head_hash,
            last_time_ms: scan.last_time_ms,
            end,
            buf: Vec::new(),
        };
        let options = Options {
            name: "immutable-log",
            queue: QUEUE_CAPACITY,
            max_requests: MAX_GROUP_RECORDS,
            max_weight: Some((MAX_GROUP_BYTES, |r: &Request| r.payload.len())),
            stop_after_failure: true,
        };
        let writer =
            GroupCommit::spawn(options, move |group: &mut [Request]| writer.commit(group))?;
        Ok(Self {
            path,
            reader,
            writer,
            shared,
        })
    }

    /// Appends a record and returns once it is on disk. Appends arriving while a write is
    /// in progress share the next fsync. [`LogError::Closed`] once the log was closed or
    /// its writer stopped; a write or fsync error fails every append of its group and
    /// closes the log. Payloads over [`MAX_PAYLOAD_LEN`] are refused (`Io`,
    /// `InvalidInput`) without using a seq. Dropping the future after the request was
    /// queued does not withdraw it: the record may still be written.
    pub async fn append(&self, kind: RecordKind, payload: Vec<u8>) -> Result<AppendReceipt> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(LogError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "payload of {} bytes exceeds the immutable log's limit of {MAX_PAYLOAD_LEN}",
                    payload.len()
                ),
            )));
        }
        match self.writer.submit(Request { kind, payload }).await {
            Ok(receipt) => Ok(receipt),
            Err(GroupError::Closed) => Err(LogError::Closed),
            Err(GroupError::Failed(e)) => Err(LogError::Io(io::Error::new(
                e.kind(),
                format!("write or fsync failed: {e}"),
            ))),
        }
    }

    /// Records on disk and the hash of the last one (zeros when empty).
    pub fn head(&self) -> (u64, Hash32) {
        *self
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Fsyncs done for appends since open: one per group commit.
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends: later ones fail with [`LogError::Closed`]; those already
    /// queued are still written. The writer thread exits on its own.
    pub fn close(&self) {
        self.writer.close();
    }

    /// Checks a log end to end without opening it for writing (`citychain log verify`):
    /// magic, complete frames, canonical decoding, seq continuity, the chain of
    /// `prev_hash`es and every hash. Strict: a torn tail is reported too (its reason
    /// says "truncated"). [`LogError::Corrupt`] names the first bad record.
    pub fn verify(dir: &Path) -> Result<VerifyReport> {
        Self::verify_tree(dir, |_, _| {}).map(|(report, _)| report)
    }

    /// [`ImmutableLog::verify`], also building the Merkle tree over the records so that
    /// it can be held against signed tree heads. `progress(bytes_read, file_len)` is called
    /// after every record.
    pub fn verify_tree(
        dir: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(VerifyReport, Tree)> {
        let file = File::open(dir.join(LOG_FILE))?;
        let file_len = file.metadata()?.len();
        let mut tree = Tree::new();
        let scan = scan(&file, |s| {
            tree.push(merkle::leaf_hash(s.body));
            progress(s.frame + FRAME_HEADER_LEN + s.body.len() as u64, file_len);
        })?;
        if let Some(torn) = scan.torn {
            return Err(LogError::Corrupt(torn));
        }
        let report = VerifyReport {
            records: scan.records,
            bytes: scan.file_len,
            head_hash: scan.head_hash,
        };
        Ok((report, tree))
    }

    /// Records on disk: the size of the log's Merkle tree.
    pub fn size(&self) -> u64 {
        self.records().tree.len()
    }

    /// The Merkle root over the first `size` records (`None` past the end).
    pub fn root(&self, size: u64) -> Option<Hash32> {
        self.records().tree.root(size)
    }

    /// The size of the tree and its root, read together.
    pub fn tree_head(&self) -> (u64, Hash32) {
        let records = self.records();
        let size = records.tree.len();
        let root = records.tree.root(size).expect("the whole tree has a root");
        (size, root)
    }

    /// The audit path of record `index` in the tree of the first `size` records.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> std::result::Result<Vec<Hash32>, ProofError> {
        self.records().tree.inclusion_proof(index, size)
    }

    /// The proof that the tree of `from` records is a prefix of the tree of `to`.
    pub fn consistency_proof(
        &self,
        from: u64,
        to: u64,
    ) -> std::result::Result<Vec<Hash32>, ProofError> {
        self.records().tree.consistency_proof(from, to)
    }

    /// Wakes on every group commit with the number of records on disk.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// Whether the log holds a record of batch `id`.
    pub fn holds_batch(&self, id: &BatchId) -> bool {
        self.batch_record(id).is_some()
    }

    /// The index (seq) of the last record holding batch `id`.
    pub fn batch_record(&self, id: &BatchId) -> Option<u64> {
        self.shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|at| at.seq)
    }

    /// The body of record `index` (the bytes its leaf hash covers), checked against the
    /// record's own hash and the tree's leaf; `None` past the end. Blocks on two reads.
    pub fn record_body(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let (frame, leaf) = {
            let records = self.records();
            match (records.frames.get(index as usize), records.tree.leaf(index)) {
                (Some(&frame), Some(leaf)) => (frame, leaf),
                _ => return Ok(None),
            }
        };
        let corrupt = |reason: String| {
            LogError::Corrupt(VerifyError {
                offset: frame,
                seq: index,
                reason,
            })
        };
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        index::read_exact_at(&self.reader, &mut header, frame)?;
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_RECORD_LEN {
            return Err(corrupt(format!("frame length {len} exceeds the limit")));
        }
        let mut body = vec![0; len];
        index::read_exact_at(&self.reader, &mut body, frame + FRAME_HEADER_LEN)?;
        if merkle::leaf_hash(&body) != leaf {
            return Err(corrupt("record changed since it was written".into()));
        }
        Ok(Some(body))
    }

    fn records(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.shared
            .tree
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The payload of the last batch record for batch `id` (the batch's encoding), read by
    /// offset and checked against the record's own hash; `None` if the log holds no such
    /// batch. Only durable records are found: a batch is indexed once its append's fsync
    /// succeeded. Blocks on one read.
    pub fn read_batch(&self, id: &BatchId) -> Result<Option<Vec<u8>>> {
        let Some(at) = self
            .shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| {
            LogError::Corrupt(VerifyError {
                offset: at.offset - FRAME_HEADER_LEN,
                seq: at.seq,
                reason,
            })
        };
        let mut body = vec![0; at.len as usize];
        index::read_exact_at(&self.reader, &mut body, at.offset)?;
        let record = format::decode_record(&body).map_err(corrupt)?;
        if record.seq != at.seq || record.kind != RecordKind::Batch {
            return Err(corrupt(format!(
                "{:?} record {} where batch record {} was indexed",
                record.kind, record.seq, at.seq
            )));
        }
        Ok(Some(record.payload))
    }

    /// Reads every record, checked as `verify` does. Like `open`, it tolerates a torn
    /// tail (with a warning) and returns the records before it — the ones `open` keeps.
    pub fn read_all(dir: &Path) -> Result<Vec<Record>> {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path)?;
        let mut records = Vec::new();
        let scan = scan(&file, |s| records.push(s.record))?;
        if let Some(torn) = scan.torn {
            tracing::warn!(path = %path.display(), %torn, "immutable log has a torn tail");
        }
        Ok(records)
    }

    /// Requests waiting for the writer thread.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.writer.queued()
    }
}

impl Record {
    /// Decodes a record's body (a frame's bytes after its length prefix), checking that it
    /// is the canonical encoding and that its hash matches its contents (not the chain).
    pub fn decode(body: &[u8]) -> std::result::Result<Self, String> {
        format::decode_record(body)
    }
}

impl fmt::Debug for ImmutableLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (records, head) = self.head();
        f.debug_struct("ImmutableLog")
            .field("path", &self.path)
            .field("records", &records)
            .field("head_hash", &hex::encode(head))
            .finish()
    }
}

/// Takes the exclusive lock that keeps a second writer (another process, or a second
/// handle in this one) off the log. Filesystems without locks only get a warning: the
/// last-resort tier must not fail for want of a lock.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is already open for writing", path.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot lock the immutable log");
            Ok(())
        }
    }
}

/// Writes the magic into an empty file and makes the file's existence durable.
fn write_header(mut file: &File, dir: &Path) -> io::Result<()> {
    file.write_all(MAGIC)?;
    file.sync_all()?;
    // The new directory entry is only durable once the directory itself is synced.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

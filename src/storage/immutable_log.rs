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

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::group_commit::{GroupCommit, GroupError, Options};
use crate::crypto::{self, Hash32};

/// The log's file name inside its directory.
pub const LOG_FILE: &str = "immutable.log";
/// The first eight bytes of every log file; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"CCLOG\0\0\x01";
/// Largest record body (bytes) a frame may declare; anything larger is corruption.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;
/// Worst-case postcard bytes around a payload: seq varint (10), prev_hash (32), time_ms
/// varint (10), kind (1), payload length varint (10), hash (32).
const RECORD_OVERHEAD: usize = 10 + 32 + 10 + 1 + 10 + 32;
/// Largest payload (bytes) `append` accepts, so that every record written fits
/// [`MAX_RECORD_LEN`] and stays readable.
pub const MAX_PAYLOAD_LEN: usize = MAX_RECORD_LEN - RECORD_OVERHEAD;

/// Domain tag of record hashes.
const HASH_TAG: &str = "citychain/log/v1";
/// Bytes of a frame's length prefix.
const FRAME_HEADER_LEN: u64 = 4;
/// Appends that may wait for the writer thread before `append` itself waits.
const QUEUE_CAPACITY: usize = 1024;
/// Most records one group commit writes.
const MAX_GROUP_RECORDS: usize = 1024;
/// Payload bytes after which a group stops taking more records.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Read buffer of scans (bytes).
const SCAN_BUFFER: usize = 256 * 1024;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A sealed batch no other tier could store.
    Batch,
    /// A checkpoint (Merkle root) written by a global node.
    Checkpoint,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// Hash of the previous record; zeros for seq 0.
    pub prev_hash: Hash32,
    /// Wall-clock milliseconds since the Unix epoch when the record was written;
    /// non-decreasing within one writer.
    pub time_ms: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
    /// BLAKE3 over the domain tag and the fields above, see the module docs.
    pub hash: Hash32,
}

/// Proof that an append is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub seq: u64,
    pub hash: Hash32,
}

/// Errors of the immutable log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("immutable log I/O: {0}")]
    Io(#[from] io::Error),
    #[error("immutable log is corrupt: {0}")]
    Corrupt(#[from] VerifyError),
    #[error("immutable log is closed")]
    Closed,
}

pub type Result<T> = std::result::Result<T, LogError>;

/// The first bad record of a log: where it starts and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("record {seq} at byte {offset}: {reason}")]
pub struct VerifyError {
    /// Byte offset of the frame (or of the file header, for magic errors).
    pub offset: u64,
    /// The seq the record at `offset` should have.
    pub seq: u64,
    pub reason: String,
}

/// What `verify` found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// File length, header included.
    pub bytes: u64,
    /// Hash of the last record; zeros for an empty log.
    pub head_hash: Hash32,
}

/// The append-only, hash-chained, fsynced log. `Send + Sync`; share it via `Arc`.
/// Dropping it stops the writer thread after the appends already queued and waits for it,
/// so the file (and its lock) is closed when the handle is gone and the directory can be
/// reopened at once.
pub struct ImmutableLog {
    path: PathBuf,
    writer: GroupCommit<Request, AppendReceipt, io::Error>,
    shared: Arc<Shared>,
}

/// State the writer thread publishes to the handle.
#[derive(Debug)]
struct Shared {
    /// Records on disk and the hash of the last one.
    head: Mutex<(u64, Hash32)>,
    /// Successful `sync_data` calls of appends, one per group.
    fsyncs: AtomicU64,
    #[cfg(test)]
    hooks: TestHooks,
}

/// Fault injection for tests.
#[cfg(test)]
#[derive(Debug, Default)]
struct TestHooks {
    /// Makes the next fsync fail after the group's bytes were written.
    fail_next_sync: std::sync::atomic::AtomicBool,
}

struct Request {
    kind: RecordKind,
    payload: Vec<u8>,
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

        let scan = if file.metadata()?.len() == 0 {
            write_header(&file, dir)?;
            Scan::default()
        } else {
            let scan = scan(&file, |_| {})?;
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

        let shared = Arc::new(Shared {
            head: Mutex::new((scan.records, scan.head_hash)),
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
        let file = File::open(dir.join(LOG_FILE))?;
        let scan = scan(&file, |_| {})?;
        if let Some(torn) = scan.torn {
            return Err(LogError::Corrupt(torn));
        }
        Ok(VerifyReport {
            records: scan.records,
            bytes: scan.file_len,
            head_hash: scan.head_hash,
        })
    }

    /// Reads every record, checked as `verify` does. Like `open`, it tolerates a torn
    /// tail (with a warning) and returns the records before it — the ones `open` keeps.
    pub fn read_all(dir: &Path) -> Result<Vec<Record>> {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path)?;
        let mut records = Vec::new();
        let scan = scan(&file, |record| records.push(record))?;
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

/// The writer thread's state: the file and the chain's tip.
struct Writer {
    file: File,
    shared: Arc<Shared>,
    path: PathBuf,
    next_seq: u64,
    prev_hash: Hash32,
    last_time_ms: u64,
    /// The frames of one group, reused from group to group.
    buf: Vec<u8>,
}

impl Writer {
    /// Writes and fsyncs `group`; one receipt per record. On error the chain's tip is
    /// unchanged, and the group commit thread stops after failing the whole group.
    fn commit(&mut self, group: &mut [Request]) -> io::Result<Vec<AppendReceipt>> {
        let written = self.write(group);
        if let Err(e) = &written {
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                records = group.len(),
                "immutable log write failed; failing the group and closing the log"
            );
        }
        written
    }

    fn write(&mut self, group: &mut [Request]) -> io::Result<Vec<AppendReceipt>> {
        let buf = &mut self.buf;
        buf.clear();
        let time_ms = now_ms().max(self.last_time_ms);
        let (mut seq, mut prev_hash) = (self.next_seq, self.prev_hash);
        let mut receipts = Vec::with_capacity(group.len());
        for request in group.iter_mut() {
            let payload = std::mem::take(&mut request.payload);
            let preimage = hash_preimage(seq, &prev_hash, time_ms, request.kind, &payload);
            let hash = record_hash(&preimage);
            let body_len = preimage.len() + hash.len();
            // `append` bounds payloads by MAX_PAYLOAD_LEN, whose margin covers the overhead.
            assert!(
                body_len <= MAX_RECORD_LEN,
                "record body of {body_len} bytes"
            );
            buf.extend_from_slice(&(body_len as u32).to_le_bytes());
            buf.extend_from_slice(&preimage);
            buf.extend_from_slice(&hash);
            receipts.push(AppendReceipt { seq, hash });
            seq += 1;
            prev_hash = hash;
        }
        self.file.write_all(buf)?;
        self.sync()?;

        self.next_seq = seq;
        self.prev_hash = prev_hash;
        self.last_time_ms = time_ms;
        *self
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (seq, prev_hash);
        metrics::counter!(crate::metrics::LOG_APPENDS).increment(receipts.len() as u64);
        Ok(receipts)
    }

    fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self
            .shared
            .hooks
            .fail_next_sync
            .swap(false, Ordering::SeqCst)
        {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.file.sync_data()?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The postcard bytes a record's hash covers; also the record's body minus the hash.
fn hash_preimage(
    seq: u64,
    prev_hash: &Hash32,
    time_ms: u64,
    kind: RecordKind,
    payload: &[u8],
) -> Vec<u8> {
    postcard::to_stdvec(&(seq, prev_hash, time_ms, kind, payload))
        .expect("postcard encodes integers, arrays, unit variants and byte vectors")
}

fn record_hash(preimage: &[u8]) -> Hash32 {
    crypto::hash(&crypto::tagged(HASH_TAG, preimage))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

/// What a scan of a log file found.
#[derive(Debug, Default)]
struct Scan {
    records: u64,
    head_hash: Hash32,
    last_time_ms: u64,
    file_len: u64,
    /// Bytes up to the end of the last sound record (the header, at least, if sound).
    valid_len: u64,
    /// An incomplete final frame (or header), or a zero-filled tail: what a crash during
    /// a write leaves. `None` when the file ends on a record boundary.
    torn: Option<VerifyError>,
}

/// Reads the log from the start, checking every record and handing it to `each`.
/// Damage other than a torn tail is `Err(Corrupt)`.
fn scan(file: &File, mut each: impl FnMut(Record)) -> Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0))?;
    // Only what exists now: a live log may grow while it is verified.
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, reader.take(file_len));
    let corrupt = |offset, seq, reason: String| {
        LogError::Corrupt(VerifyError {
            offset,
            seq,
            reason,
        })
    };

    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    let mut magic = [0u8; MAGIC.len()];
    let n = read_up_to(&mut reader, &mut magic)?;
    if magic[..n] != MAGIC[..n] {
        return Err(corrupt(0, 0, format!("bad file magic {:?}", &magic[..n])));
    }
    if n < MAGIC.len() {
        scan.torn = Some(VerifyError {
            offset: 0,
            seq: 0,
            reason: format!("truncated file header: {n} of {} magic bytes", MAGIC.len()),
        });
        return Ok(scan);
    }

    let mut pos = MAGIC.len() as u64;
    let mut body = Vec::new();
    loop {
        scan.valid_len = pos;
        let seq = scan.records;
        let remaining = file_len - pos;
        if remaining == 0 {
            return Ok(scan);
        }
        let torn = |reason| {
            Some(VerifyError {
                offset: pos,
                seq,
                reason,
            })
        };
        if remaining < FRAME_HEADER_LEN {
            scan.torn = torn(format!(
                "truncated frame header: {remaining} of {FRAME_HEADER_LEN} bytes"
            ));
            return Ok(scan);
        }
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut header)?;
        let len = u64::from(u32::from_le_bytes(header));
        let available = remaining - FRAME_HEADER_LEN;
        if len == 0 {
            // Some filesystems leave zeros where an unsynced append was cut off.
            if all_zero(&mut reader)? {
                scan.torn = torn(format!(
                    "truncated write: the last {remaining} bytes are zeros"
                ));
                return Ok(scan);
            }
            return Err(corrupt(pos, seq, "zero-length frame".into()));
        }
        if len > MAX_RECORD_LEN as u64 {
            return Err(corrupt(
                pos,
                seq,
                format!("frame length {len} exceeds the limit of {MAX_RECORD_LEN} bytes"),
            ));
        }
        if len > available {
            scan.torn = torn(format!(
                "truncated record: frame of {len} bytes but only {available} remain"
            ));
            return Ok(scan);
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body)?;
        let record = check_record(&body, seq, &scan.head_hash)
            .map_err(|reason| corrupt(pos, seq, reason))?;
        scan.records += 1;
        scan.head_hash = record.hash;
        scan.last_time_ms = record.time_ms;
        pos += FRAME_HEADER_LEN + len;
        each(record);
    }
}

/// Decodes a frame's body and checks it against the chain so far.
fn check_record(
    body: &[u8],
    expected_seq: u64,
    prev_hash: &Hash32,
) -> std::result::Result<Record, String> {
    let record: Record =
        postcard::from_bytes(body).map_err(|e| format!("undecodable record: {e}"))?;
    let preimage = hash_preimage(
        record.seq,
        &record.prev_hash,
        record.time_ms,
        record.kind,
        &record.payload,
    );
    // The body must be exactly preimage ‖ hash: this catches a changed length prefix,
    // trailing bytes and non-canonical encodings that still decode.
    if body.len() != preimage.len() + record.hash.len() || body[..preimage.len()] != preimage {
        return Err("record encoding is not canonical (altered length or trailing bytes)".into());
    }
    if record_hash(&preimage) != record.hash {
        return Err("hash does not match the record's contents".into());
    }
    if record.seq != expected_seq {
        return Err(format!(
            "sequence number {} where {expected_seq} was expected",
            record.seq
        ));
    }
    if record.prev_hash != *prev_hash {
        return Err("prev_hash does not match the previous record's hash".into());
    }
    Ok(record)
}

/// Fills as much of `buf` as the reader has; returns the bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether everything left in the reader is zero bytes.
fn all_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = read_up_to(reader, &mut chunk)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < chunk.len() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: usize) -> Vec<u8> {
        format!("batch number {i}").into_bytes()
    }

    /// A log in a fresh temp dir holding `n` records with `payload(i)`.
    async fn log_with(n: usize) -> (tempfile::TempDir, ImmutableLog, Vec<AppendReceipt>) {
        let dir = tempfile::tempdir().unwrap();
        let log = ImmutableLog::open(dir.path()).unwrap();
        let mut receipts = Vec::new();
        for i in 0..n {
            receipts.push(log.append(RecordKind::Batch, payload(i)).await.unwrap());
        }
        (dir, log, receipts)
    }

    fn log_bytes(dir: &Path) -> Vec<u8> {
        fs::read(dir.join(LOG_FILE)).unwrap()
    }

    fn write_log(dir: &Path, bytes: &[u8]) {
        fs::write(dir.join(LOG_FILE), bytes).unwrap();
    }

    fn corrupt_error(result: Result<impl fmt::Debug>) -> VerifyError {
        match result {
            Err(LogError::Corrupt(e)) => e,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// Waits, without sleeping, until `n` appends are queued for the writer thread.
    async fn wait_queued(log: &ImmutableLog, n: usize) {
        while log.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn the_log_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ImmutableLog>();
    }

    #[test]
    fn record_body_is_hash_preimage_then_hash() {
        let preimage = hash_preimage(7, &[9; 32], 1234, RecordKind::Checkpoint, &[1, 2, 3]);
        let hash = record_hash(&preimage);
        let record = Record {
            seq: 7,
            prev_hash: [9; 32],
            time_ms: 1234,
            kind: RecordKind::Checkpoint,
            payload: vec![1, 2, 3],
            hash,
        };
        let body = postcard::to_stdvec(&record).unwrap();
        assert_eq!(body, [preimage.as_slice(), &hash].concat());
        assert_eq!(check_record(&body, 7, &[9; 32]), Ok(record));
        let expected = crypto::hash(&crypto::tagged(
            "citychain/log/v1",
            &postcard::to_stdvec(&(
                7u64,
                &[9u8; 32],
                1234u64,
                RecordKind::Checkpoint,
                &vec![1u8, 2, 3],
            ))
            .unwrap(),
        ));
        assert_eq!(hash, expected);
    }

    #[tokio::test]
    async fn appends_chain_and_reopen_continues_the_chain() {
        let (dir, log, receipts) = log_with(3).await;
        assert_eq!(
            receipts.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(log.head(), (3, receipts[2].hash));
        drop(log);

        let log = ImmutableLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), (3, receipts[2].hash));
        let next = log
            .append(RecordKind::Checkpoint, b"root".to_vec())
            .await
            .unwrap();
        assert_eq!(next.seq, 3);
        assert_eq!(log.head(), (4, next.hash));
        drop(log);

        let records = ImmutableLog::read_all(dir.path()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].prev_hash, [0; 32]);
        for (i, pair) in records.windows(2).enumerate() {
            assert_eq!(
                pair[1].prev_hash, pair[0].hash,
                "chain broken after record {i}"
            );
            assert!(pair[1].time_ms >= pair[0].time_ms);
        }
        assert_eq!(records[3].seq, 3);
        assert_eq!(records[3].prev_hash, receipts[2].hash);
        assert_eq!(records[3].hash, next.hash);
        assert_eq!(records[3].kind, RecordKind::Checkpoint);
    }

    #[tokio::test]
    async fn verify_passes_on_a_good_log_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = ImmutableLog::open(dir.path()).unwrap();
        let empty = ImmutableLog::verify(dir.path()).unwrap();
        assert_eq!(
            empty,
            VerifyReport {
                records: 0,
                bytes: MAGIC.len() as u64,
                head_hash: [0; 32]
            }
        );
        let mut last = None;
        for i in 0..5 {
            last = Some(log.append(RecordKind::Batch, payload(i)).await.unwrap());
        }
        let report = ImmutableLog::verify(dir.path()).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.head_hash, last.unwrap().hash);
        assert_eq!(report.bytes, log_bytes(dir.path()).len() as u64);
    }

    #[tokio::test]
    async fn read_all_returns_payloads_in_order() {
        let (dir, log, receipts) = log_with(10).await;
        drop(log);
        let records = ImmutableLog::read_all(dir.path()).unwrap();
        let payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads, (0..10).map(payload).collect::<Vec<_>>());
        let hashes: Vec<_> = records.iter().map(|r| r.hash).collect();
        assert_eq!(hashes, receipts.iter().map(|r| r.hash).collect::<Vec<_>>());
    }

    /// The product promise: any single changed byte is caught by `verify`.
    #[tokio::test]
    async fn flipping_any_byte_makes_verify_fail() {
        let (dir, log, _) = log_with(3).await;
        drop(log);
        let good = log_bytes(dir.path());
        ImmutableLog::verify(dir.path()).unwrap();

        let scratch = tempfile::tempdir().unwrap();
        let mut undetected = Vec::new();
        for offset in 0..good.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[offset] ^= mask;
                write_log(scratch.path(), &bad);
                match ImmutableLog::verify(scratch.path()) {
                    Err(LogError::Corrupt(e)) => {
                        assert!(e.offset <= offset as u64, "{e} reported past byte {offset}")
                    }
                    other => undetected.push((offset, mask, format!("{other:?}"))),
                }
            }
        }
        assert!(undetected.is_empty(), "undetected flips: {undetected:?}");
    }

    /// A frame holding a well-formed record with a correct hash of its own contents.
    fn frame(seq: u64, prev_hash: &Hash32, payload: &[u8]) -> Vec<u8> {
        let preimage = hash_preimage(seq, prev_hash, 1, RecordKind::Batch, payload);
        let hash = record_hash(&preimage);
        let body = [preimage.as_slice(), &hash].concat();
        [&(body.len() as u32).to_le_bytes()[..], &body].concat()
    }

    #[tokio::test]
    async fn self_consistent_records_that_break_the_chain_are_caught() {
        let (dir, log, receipts) = log_with(3).await;
        drop(log);
        let good = log_bytes(dir.path());
        let records = ImmutableLog::read_all(dir.path()).unwrap();
        let first_frame = MAGIC.len() + 4 + postcard::to_stdvec(&records[0]).unwrap().len();
        let second_frame = first_frame + 4 + postcard::to_stdvec(&records[1]).unwrap().len();

        // Record 1 replaced by a record that hashes correctly but hangs off nothing.
        let forged = [
            &good[..first_frame],
            &frame(1, &[7; 32], b"forged"),
            &good[second_frame..],
        ]
        .concat();
        write_log(dir.path(), &forged);
        let e = corrupt_error(ImmutableLog::verify(dir.path()));
        assert_eq!((e.seq, e.offset), (1, first_frame as u64));
        assert!(e.reason.contains("prev_hash"), "{e}");

        // Record 1 removed: record 2 follows record 0.
        write_log(
            dir.path(),
            &[&good[..first_frame], &good[second_frame..]].concat(),
        );
        let e = corrupt_error(ImmutableLog::verify(dir.path()));
        assert_eq!((e.seq, e.offset), (1, first_frame as u64));
        assert!(e.reason.contains("sequence"), "{e}");

        // A correctly chained record appended by hand is accepted: the checks are the
        // chain, not some property of how our writer happened to produce bytes.
        let extended = [&good[..], &frame(3, &receipts[2].hash, b"by hand")].concat();
        write_log(dir.path(), &extended);
        assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 4);
    }

    #[tokio::test]
    async fn torn_tail_is_reported_by_verify_and_cut_by_open() {
        let (dir, log, receipts) = log_with(3).await;
        drop(log);
        let good = log_bytes(dir.path());
        let last_frame = good.len() - (FRAME_HEADER_LEN as usize + postcard_len(&dir));

        // Every cut inside the final frame, header included, is a torn write.
        for cut in last_frame + 1..good.len() {
            let scratch = tempfile::tempdir().unwrap();
            write_log(scratch.path(), &good[..cut]);

            let e = corrupt_error(ImmutableLog::verify(scratch.path()));
            assert!(e.reason.contains("truncated"), "cut at {cut}: {e}");
            assert_eq!((e.seq, e.offset), (2, last_frame as u64));
            assert_eq!(ImmutableLog::read_all(scratch.path()).unwrap().len(), 2);

            let log = ImmutableLog::open(scratch.path()).unwrap();
            assert_eq!(log.head(), (2, receipts[1].hash), "cut at {cut}");
            assert_eq!(log_bytes(scratch.path()), good[..last_frame]);
            let again = log.append(RecordKind::Batch, payload(9)).await.unwrap();
            assert_eq!(again.seq, 2);
            drop(log);
            let report = ImmutableLog::verify(scratch.path()).unwrap();
            assert_eq!((report.records, report.head_hash), (3, again.hash));
        }
    }

    /// Body length of the last record of the log in `dir`.
    fn postcard_len(dir: &tempfile::TempDir) -> usize {
        let last = ImmutableLog::read_all(dir.path()).unwrap().pop().unwrap();
        postcard::to_stdvec(&last).unwrap().len()
    }

    #[tokio::test]
    async fn torn_header_of_a_new_log_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &MAGIC[..5]);
        let e = corrupt_error(ImmutableLog::verify(dir.path()));
        assert!(e.reason.contains("truncated"), "{e}");
        let log = ImmutableLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), (0, [0; 32]));
        log.append(RecordKind::Batch, payload(0)).await.unwrap();
        drop(log);
        assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 1);
    }

    #[tokio::test]
    async fn zero_filled_tail_is_treated_as_torn() {
        let (dir, log, receipts) = log_with(2).await;
        drop(log);
        let good = log_bytes(dir.path());
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 100]);
        write_log(dir.path(), &padded);

        let e = corrupt_error(ImmutableLog::verify(dir.path()));
        assert!(e.reason.contains("truncated"), "{e}");
        let log = ImmutableLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), (2, receipts[1].hash));
        drop(log);
        assert_eq!(log_bytes(dir.path()), good);
    }

    #[tokio::test]
    async fn open_refuses_damage_that_is_not_a_torn_tail() {
        let (dir, log, _) = log_with(3).await;
        drop(log);
        let good = log_bytes(dir.path());
        let body_len = postcard_len(&dir);
        let cases = [
            ("a byte inside the first record", MAGIC.len() + 4 + 40),
            ("payload byte of the last record", good.len() - 40),
            ("hash byte of the last record", good.len() - 1),
            ("magic", 2),
        ];
        for (what, offset) in cases {
            let mut bad = good.clone();
            bad[offset] ^= 0x55;
            write_log(dir.path(), &bad);
            let e = corrupt_error(ImmutableLog::open(dir.path()));
            assert!(e.offset <= offset as u64, "{what}: {e}");
            assert_eq!(log_bytes(dir.path()), bad, "{what}: open must not repair");
        }

        // Absurd length on the final frame: not something a torn write produces.
        let mut bad = good.clone();
        let last_frame = good.len() - 4 - body_len;
        bad[last_frame + 3] = 0x10;
        write_log(dir.path(), &bad);
        let e = corrupt_error(ImmutableLog::open(dir.path()));
        assert!(e.reason.contains("exceeds"), "{e}");

        // Garbage after the last record.
        let mut bad = good.clone();
        bad.extend_from_slice(&[7; 3]);
        bad.extend_from_slice(&good[MAGIC.len()..]);
        write_log(dir.path(), &bad);
        corrupt_error(ImmutableLog::open(dir.path()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_distinct_consecutive_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap().seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
        assert_eq!(log.head().0, 200);
        assert!(log.fsync_count() <= 200);
        let report = ImmutableLog::verify(dir.path()).unwrap();
        assert_eq!((report.records, report.head_hash), log.head());
    }

    #[tokio::test]
    async fn appends_arriving_during_a_write_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
        // Hold the writer as if its fsync were slow, and let 200 appends pile up.
        let gate = log.writer.gate().lock().await;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
            })
            .collect();
        // The writer holds the first request at the gate, or has not taken it yet.
        wait_queued(&log, 199).await;
        drop(gate);

        let mut by_seq = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            by_seq.push((task.await.unwrap().unwrap().seq, i));
        }
        by_seq.sort_unstable();
        assert_eq!(
            by_seq.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>()
        );
        let fsyncs = log.fsync_count();
        assert!((1..=2).contains(&fsyncs), "{fsyncs} fsyncs for 200 appends");

        let records = ImmutableLog::read_all(dir.path()).unwrap();
        for (seq, task) in by_seq {
            assert_eq!(records[seq as usize].payload, payload(task));
        }
        assert_eq!(ImmutableLog::verify(dir.path()).unwrap().records, 200);
    }

    #[tokio::test]
    async fn failed_fsync_fails_the_whole_group_and_closes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
        let first = log.append(RecordKind::Batch, payload(0)).await.unwrap();

        let gate = log.writer.gate().lock().await;
        let tasks: Vec<_> = (1..=5)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(RecordKind::Batch, payload(i)).await })
            })
            .collect();
        wait_queued(&log, 4).await;
        log.shared
            .hooks
            .fail_next_sync
            .store(true, Ordering::SeqCst);
        drop(gate);

        let mut failed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Err(LogError::Io(_)) | Err(LogError::Closed) => failed += 1,
                Ok(receipt) => panic!("acknowledged {receipt:?} after a failed fsync"),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(failed, 5);
        assert_eq!(
            log.head(),
            (1, first.hash),
            "head moved past what is on disk"
        );
        assert!(matches!(
            log.append(RecordKind::Batch, payload(6)).await,
            Err(LogError::Closed)
        ));
        drop(log);

        // The bytes were written before the fsync "failed": reopening finds a sound log.
        let log = ImmutableLog::open(dir.path()).unwrap();
        assert!(log.head().0 >= 1);
        drop(log);
        ImmutableLog::verify(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_lone_failed_append_gets_the_io_error() {
        let (_dir, log, _) = log_with(1).await;
        log.shared
            .hooks
            .fail_next_sync
            .store(true, Ordering::SeqCst);
        let result = log.append(RecordKind::Batch, payload(1)).await;
        assert!(matches!(result, Err(LogError::Io(_))), "{result:?}");
        assert_eq!(log.head().0, 1);
    }

    #[tokio::test]
    async fn closed_log_refuses_appends() {
        let (_dir, log, _) = log_with(1).await;
        log.close();
        assert!(matches!(
            log.append(RecordKind::Batch, payload(1)).await,
            Err(LogError::Closed)
        ));
        assert_eq!(log.head().0, 1);
    }

    #[tokio::test]
    async fn oversized_payload_is_refused_without_using_a_seq() {
        let (_dir, log, _) = log_with(1).await;
        let result = log
            .append(RecordKind::Batch, vec![0; MAX_PAYLOAD_LEN + 1])
            .await;
        match result {
            Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        assert_eq!(
            log.append(RecordKind::Batch, payload(1)).await.unwrap().seq,
            1
        );
    }

    #[tokio::test]
    async fn a_second_writer_is_refused() {
        let (dir, log, _) = log_with(1).await;
        match ImmutableLog::open(dir.path()) {
            Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("expected the lock to refuse, got {other:?}"),
        }
        drop(log);
        ImmutableLog::open(dir.path()).unwrap();
    }
}

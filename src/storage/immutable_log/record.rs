//! What the log holds and answers: records, receipts, reports, errors, and the limits of
//! its format.

use std::io;

use serde::{Deserialize, Serialize};

use crate::crypto::Hash32;

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

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A sealed batch no other tier could store.
    Batch,
    /// A checkpoint (Merkle root) written by a global node.
    Checkpoint,
    /// A continent batch with the certified city batches it merged (continent nodes).
    ContinentBatch,
    /// A continent batch as the global node received it.
    GlobalEntry,
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

//! The writer thread's side of the log: framing a group of appends, writing and
//! fsyncing it, and moving the chain's tip.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::format::{FRAME_HEADER_LEN, hash_preimage, record_hash};
use super::index::{self, BatchIndex, Located};
use super::merkle::{Tree, leaf_hash};
use super::record::{AppendReceipt, MAX_RECORD_LEN, RecordKind};
use crate::crypto::Hash32;
use crate::messages::now_ms;

/// State the writer thread publishes to the handle.
#[derive(Debug)]
pub(super) struct Shared {
    /// Records on disk and the hash of the last one.
    pub(super) head: Mutex<(u64, Hash32)>,
    /// Where each batch record on disk is.
    pub(super) batches: Mutex<BatchIndex>,
    /// The Merkle tree over every record on disk, and where each record's frame is.
    pub(super) tree: std::sync::RwLock<Records>,
    /// Records on disk, published after every fsync (for whoever signs tree heads).
    pub(super) appended: tokio::sync::watch::Sender<u64>,
    /// Successful `sync_data` calls of appends, one per group.
    pub(super) fsyncs: AtomicU64,
    #[cfg(test)]
    pub(super) hooks: TestHooks,
}

/// Fault injection for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct TestHooks {
    /// Makes the next fsync fail after the group's bytes were written.
    pub(super) fail_next_sync: std::sync::atomic::AtomicBool,
}

/// The tree over the records on disk and the byte offset of each record's frame.
#[derive(Debug, Default)]
pub(super) struct Records {
    pub(super) tree: Tree,
    pub(super) frames: Vec<u64>,
}

impl Records {
    pub(super) fn push(&mut self, frame: u64, body: &[u8]) {
        self.tree.push(leaf_hash(body));
        self.frames.push(frame);
    }
}

pub(super) struct Request {
    pub(super) kind: RecordKind,
    pub(super) payload: Vec<u8>,
}

/// The writer thread's state: the file and the chain's tip.
pub(super) struct Writer {
    pub(super) file: File,
    pub(super) shared: Arc<Shared>,
    pub(super) path: PathBuf,
    pub(super) next_seq: u64,
    pub(super) prev_hash: Hash32,
    pub(super) last_time_ms: u64,
    /// File length: where the next frame starts.
    pub(super) end: u64,
    /// The frames of one group, reused from group to group.
    pub(super) buf: Vec<u8>,
}

impl Writer {
    /// Writes and fsyncs `group`; one receipt per record. On error the chain's tip is
    /// unchanged, and the group commit thread stops after failing the whole group.
    pub(super) fn commit(&mut self, group: &mut [Request]) -> io::Result<Vec<AppendReceipt>> {
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
        // Batch records of the group and where they will be, indexed once they are durable.
        let mut batches = Vec::new();
        // Every record's frame offset and leaf hash, added to the tree once durable.
        let mut leaves = Vec::with_capacity(group.len());
        for request in group.iter_mut() {
            let payload = std::mem::take(&mut request.payload);
            let batch_id = match request.kind {
                RecordKind::Batch => index::batch_id(&payload),
                RecordKind::Checkpoint | RecordKind::ContinentBatch | RecordKind::GlobalEntry => {
                    None
                }
            };
            let preimage = hash_preimage(seq, &prev_hash, time_ms, request.kind, &payload);
            let hash = record_hash(&preimage);
            let body_len = preimage.len() + hash.len();
            // `append` bounds payloads by MAX_PAYLOAD_LEN, whose margin covers the overhead.
            assert!(
                body_len <= MAX_RECORD_LEN,
                "record body of {body_len} bytes"
            );
            if let Some(id) = batch_id {
                let offset = self.end + (buf.len() + FRAME_HEADER_LEN as usize) as u64;
                let len = body_len as u32;
                batches.push((id, Located { seq, offset, len }));
            }
            let frame = self.end + buf.len() as u64;
            buf.extend_from_slice(&(body_len as u32).to_le_bytes());
            let body_start = buf.len();
            buf.extend_from_slice(&preimage);
            buf.extend_from_slice(&hash);
            leaves.push((frame, leaf_hash(&buf[body_start..])));
            receipts.push(AppendReceipt { seq, hash });
            seq += 1;
            prev_hash = hash;
        }
        self.file.write_all(buf)?;
        let written = buf.len() as u64;
        self.sync()?;

        self.next_seq = seq;
        self.prev_hash = prev_hash;
        self.last_time_ms = time_ms;
        self.end += written;
        self.shared
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batches);
        {
            let mut records = self
                .shared
                .tree
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (frame, leaf) in leaves {
                records.tree.push(leaf);
                records.frames.push(frame);
            }
        }
        *self
            .shared
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (seq, prev_hash);
        self.shared.appended.send_replace(seq);
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

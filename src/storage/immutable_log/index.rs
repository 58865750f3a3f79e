//! Where each batch record of the log is, so that repair reads one record instead of the
//! whole file. Built by the scan at open and extended by the writer after every fsync.

use std::collections::HashMap;
use std::fs::File;
use std::io;

use crate::messages::{BatchId, ClearHeader};

/// One batch record's body in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Located {
    pub(super) seq: u64,
    /// Byte offset of the record's body (just past its length prefix).
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// Batch id → where its record is. A batch appended twice (a retried store) maps to its
/// last record; both hold the same bytes.
pub(super) type BatchIndex = HashMap<BatchId, Located>;

/// The id of the batch a batch record's payload (a sealed batch) holds, or `None` if it is
/// not one. Only the clear header at its front is decoded: the id is the hash of the
/// header, and whoever reads the batch back checks the whole of it before using it.
pub(super) fn batch_id(payload: &[u8]) -> Option<BatchId> {
    crate::messages::decode::<ClearHeader>(payload)
        .ok()
        .map(|header| header.id())
}

/// Reads exactly `buf.len()` bytes at `offset` without moving any cursor, so readers
/// never disturb each other or the writer.
pub(super) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

//! Reading a log from the start: every record checked against the chain, a torn tail
//! told apart from damage.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use super::format::{FRAME_HEADER_LEN, check_record};
use super::{LogError, MAGIC, MAX_RECORD_LEN, Record, Result, VerifyError};
use crate::crypto::Hash32;

/// Read buffer of scans (bytes).
const SCAN_BUFFER: usize = 256 * 1024;

/// What a scan of a log file found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) records: u64,
    pub(super) head_hash: Hash32,
    pub(super) last_time_ms: u64,
    pub(super) file_len: u64,
    /// Bytes up to the end of the last sound record (the header, at least, if sound).
    pub(super) valid_len: u64,
    /// An incomplete final frame (or header), or a zero-filled tail: what a crash during
    /// a write leaves. `None` when the file ends on a record boundary.
    pub(super) torn: Option<VerifyError>,
}

/// One sound record as a scan hands it out.
pub(super) struct Scanned<'a> {
    /// Byte offset of the record's frame.
    pub(super) frame: u64,
    /// The frame's body: the bytes a leaf hash covers.
    pub(super) body: &'a [u8],
    pub(super) record: Record,
}

/// Reads the log from the start, checking every record and handing it to `each`.
/// Damage other than a torn tail is `Err(Corrupt)`.
pub(super) fn scan(file: &File, mut each: impl FnMut(Scanned<'_>)) -> Result<Scan> {
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
        each(Scanned {
            frame: pos,
            body: &body,
            record,
        });
        pos += FRAME_HEADER_LEN + len;
    }
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

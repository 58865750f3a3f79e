//! Record framing and hashing: what the bytes of a record are and how they are checked.

use super::{Record, RecordKind};
use crate::crypto::{self, Hash32};

/// Domain tag of record hashes.
const HASH_TAG: &str = "citychain/log/v1";
/// Bytes of a frame's length prefix.
pub(super) const FRAME_HEADER_LEN: u64 = 4;

/// The postcard bytes a record's hash covers; also the record's body minus the hash.
pub(super) fn hash_preimage(
    seq: u64,
    prev_hash: &Hash32,
    time_ms: u64,
    kind: RecordKind,
    payload: &[u8],
) -> Vec<u8> {
    postcard::to_stdvec(&(seq, prev_hash, time_ms, kind, payload))
        .expect("postcard encodes integers, arrays, unit variants and byte vectors")
}

pub(super) fn record_hash(preimage: &[u8]) -> Hash32 {
    crypto::hash(&crypto::tagged(HASH_TAG, preimage))
}

/// Decodes a frame's body and checks it against the chain so far.
pub(super) fn check_record(
    body: &[u8],
    expected_seq: u64,
    prev_hash: &Hash32,
) -> std::result::Result<Record, String> {
    let record = decode_record(body)?;
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

/// Decodes a frame's body and checks it against its own hash (not against the chain).
pub(super) fn decode_record(body: &[u8]) -> std::result::Result<Record, String> {
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
    Ok(record)
}

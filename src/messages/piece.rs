//! Erasure-coded pieces of a sealed batch: what light nodes hold.
//!
//! The light tier does not keep whole copies. The sealed bytes of a batch (exactly what
//! every other tier stores) are cut into `k` data pieces and `m` parity pieces with
//! Reed-Solomon coding (`reed-solomon-simd`); any `k` of the `k + m` pieces rebuild the
//! sealed bytes, so a batch on light nodes survives the loss of up to `m` of its holders
//! while each holder keeps about `1/k` of it.
//!
//! ```text
//! Piece        header  PieceHeader
//!              data    one shard: the sealed bytes cut into k equal shards (zero-padded
//!                      at the end), or one of m parity shards computed from them
//! PieceHeader  batch_id     the batch the piece belongs to
//!              piece        PieceRef: index, coding (k, m), sealed_len, sealed_hash
//!              hash         BLAKE3 of data
//! ```
//!
//! A piece is self-describing: a storage node that receives one can check, without any
//! other piece, that it is canonically encoded, that its coding is one we can decode,
//! that its index is within it, that its data has exactly the shard length the coding
//! and the sealed length imply, and that the data hashes to the hash it names. It cannot
//! check that the shard belongs to the batch (that takes `k` pieces): the city checks it
//! when it rebuilds, against the hashes the holders acked ([`Expected`]), and the rebuilt
//! whole against the sealed hash every ack binds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::batch::BatchId;
use super::wire::{WireError, decode, encode};
use crate::crypto::{self, Hash32};

/// The most pieces (data and parity together) a batch may be cut into.
pub const MAX_PIECES: usize = 64;

/// How a batch is cut: `data_pieces` (k) shards of the sealed bytes and `parity_pieces`
/// (m) parity shards; any k of the k + m rebuild the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Coding {
    pub data_pieces: u8,
    pub parity_pieces: u8,
}

/// Why pieces could not be made, read, or rebuilt into a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    #[error(
        "unsupported coding: {data} data and {parity} parity pieces (each at least 1, at most {MAX_PIECES} together)"
    )]
    Coding { data: u8, parity: u8 },
    #[error("nothing to cut: the sealed bytes are empty")]
    Empty,
    #[error("not a piece: {0}")]
    Wire(String),
    #[error("the bytes are not the canonical encoding of the piece they decode to")]
    NotCanonical,
    #[error("piece index {index} is outside its coding of {pieces} pieces")]
    Index { index: u8, pieces: usize },
    #[error("the piece holds {got} bytes; its coding and sealed length make a piece {want}")]
    Length { got: usize, want: usize },
    #[error("the piece's data does not hash to the hash it names")]
    Hash,
    #[error("piece {index}: {why}")]
    Refused { index: u8, why: String },
    #[error("{valid} sound pieces of the {needed} needed to rebuild the batch{}", refused_list(.refused))]
    TooFew {
        valid: usize,
        needed: usize,
        refused: Vec<(u8, String)>,
    },
    #[error("the rebuilt bytes do not hash to the sealed hash the holders acked")]
    WrongWhole,
    #[error("reed-solomon: {0}")]
    Codec(String),
}

fn refused_list(refused: &[(u8, String)]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = refused
        .iter()
        .map(|(i, why)| format!("{i}: {why}"))
        .collect();
    format!(" (refused: {})", parts.join("; "))
}

impl From<WireError> for PieceError {
    fn from(e: WireError) -> Self {
        PieceError::Wire(e.to_string())
    }
}

impl Coding {
    /// k data and m parity pieces, if they are a coding we can encode and decode.
    pub fn new(data_pieces: u8, parity_pieces: u8) -> Result<Self, PieceError> {
        let coding = Self {
            data_pieces,
            parity_pieces,
        };
        if data_pieces == 0
            || parity_pieces == 0
            || coding.pieces() > MAX_PIECES
            || !reed_solomon_simd::ReedSolomonEncoder::supports(
                data_pieces.into(),
                parity_pieces.into(),
            )
        {
            return Err(PieceError::Coding {
                data: data_pieces,
                parity: parity_pieces,
            });
        }
        Ok(coding)
    }

    /// k + m.
    pub fn pieces(&self) -> usize {
        usize::from(self.data_pieces) + usize::from(self.parity_pieces)
    }

    /// k.
    pub fn needed(&self) -> usize {
        self.data_pieces.into()
    }

    /// Bytes of each piece's data for sealed bytes of `sealed_len`: a k-th of them,
    /// rounded up to an even number (the codec works on 16-bit words), at least 2.
    pub fn shard_len(&self, sealed_len: u64) -> usize {
        let k = u64::from(self.data_pieces.max(1));
        let per = sealed_len.div_ceil(k).max(1);
        (per + per % 2) as usize
    }

    /// Cuts `sealed` (the sealed bytes of batch `batch_id`) into its k + m pieces, in
    /// index order: the data pieces first, then the parity pieces.
    pub fn encode(&self, batch_id: BatchId, sealed: &[u8]) -> Result<Vec<Piece>, PieceError> {
        Coding::new(self.data_pieces, self.parity_pieces)?;
        if sealed.is_empty() {
            return Err(PieceError::Empty);
        }
        let len = sealed.len() as u64;
        let shard = self.shard_len(len);
        let mut data: Vec<Vec<u8>> = (0..self.needed())
            .map(|i| {
                let start = (i * shard).min(sealed.len());
                let end = ((i + 1) * shard).min(sealed.len());
                let mut s = sealed[start..end].to_vec();
                s.resize(shard, 0);
                s
            })
            .collect();
        let parity =
            reed_solomon_simd::encode(self.data_pieces.into(), self.parity_pieces.into(), &data)
                .map_err(|e| PieceError::Codec(e.to_string()))?;
        data.extend(parity);
        let sealed_hash = crypto::hash(sealed);
        Ok(data
            .into_iter()
            .enumerate()
            .map(|(index, data)| {
                Piece::new(
                    batch_id,
                    PieceRef {
                        index: index as u8,
                        coding: *self,
                        sealed_len: len,
                        sealed_hash,
                    },
                    data,
                )
            })
            .collect())
    }
}

/// Which piece of which coding of which sealed bytes: what a piece's proof-of-hold ack
/// binds, beside the batch id and the piece's own hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PieceRef {
    /// 0..k are data pieces, k..k+m parity pieces.
    pub index: u8,
    pub coding: Coding,
    /// Length of the whole sealed bytes.
    pub sealed_len: u64,
    /// BLAKE3 of the whole sealed bytes: what the rebuilt batch must hash to.
    pub sealed_hash: Hash32,
}

/// What a piece says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceHeader {
    pub batch_id: BatchId,
    pub piece: PieceRef,
    /// BLAKE3 of the piece's data: what its holder acks and is challenged on.
    pub hash: Hash32,
}

/// One piece as a light node receives and keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub header: PieceHeader,
    /// (`serde_bytes`: the same postcard bytes as a plain `Vec<u8>`, written at once.)
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Piece {
    fn new(batch_id: BatchId, piece: PieceRef, data: Vec<u8>) -> Self {
        Self {
            header: PieceHeader {
                batch_id,
                piece,
                hash: crypto::hash(&data),
            },
            data,
        }
    }

    pub fn index(&self) -> u8 {
        self.header.piece.index
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads a piece as a storage node must before acking it: it decodes, is the
    /// canonical encoding of itself, names a coding we can decode and an index within
    /// it, holds exactly the shard length its coding and sealed length imply, and its
    /// data hashes to the hash it names.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PieceError> {
        let piece: Self = decode(bytes)?;
        if encode(&piece) != bytes {
            return Err(PieceError::NotCanonical);
        }
        piece.check()?;
        Ok(piece)
    }

    /// The checks of [`Piece::from_bytes`] after decoding.
    pub fn check(&self) -> Result<(), PieceError> {
        let r = &self.header.piece;
        let coding = Coding::new(r.coding.data_pieces, r.coding.parity_pieces)?;
        if usize::from(r.index) >= coding.pieces() {
            return Err(PieceError::Index {
                index: r.index,
                pieces: coding.pieces(),
            });
        }
        if r.sealed_len == 0 {
            return Err(PieceError::Empty);
        }
        let want = coding.shard_len(r.sealed_len);
        if self.data.len() != want {
            return Err(PieceError::Length {
                got: self.data.len(),
                want,
            });
        }
        if crypto::hash(&self.data) != self.header.hash {
            return Err(PieceError::Hash);
        }
        Ok(())
    }
}

/// What the acks of a batch's holders promise: the coding, the sealed whole, and the hash
/// of each piece acked (`Expected::from_acks`, beside the acks). Pieces read back are held
/// to it, and so is the rebuilt whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub batch_id: BatchId,
    pub coding: Coding,
    pub sealed_len: u64,
    pub sealed_hash: Hash32,
    /// Piece index → the hash its holder acked.
    pub hashes: BTreeMap<u8, Hash32>,
}

impl Expected {
    /// The reference piece `index` must carry.
    pub fn piece_ref(&self, index: u8) -> PieceRef {
        PieceRef {
            index,
            coding: self.coding,
            sealed_len: self.sealed_len,
            sealed_hash: self.sealed_hash,
        }
    }

    /// Why `piece` is not piece `index` of this batch as acked, if it is not.
    pub fn refuse(&self, index: u8, piece: &Piece) -> Option<String> {
        if let Err(e) = piece.check() {
            return Some(e.to_string());
        }
        let h = &piece.header;
        if h.batch_id != self.batch_id {
            return Some("a piece of another batch".into());
        }
        if h.piece != self.piece_ref(index) {
            return Some("another index, coding or sealed whole than acked".into());
        }
        match self.hashes.get(&index) {
            Some(acked) if *acked != h.hash => Some("not the piece its holder acked".into()),
            _ => None,
        }
    }

    /// Rebuilds the sealed bytes from `pieces` (each with the index it was asked for).
    /// A piece that is not what was acked is refused, never used; any k sound pieces
    /// suffice; the result must hash to the sealed hash.
    pub fn rebuild(
        &self,
        pieces: impl IntoIterator<Item = (u8, Piece)>,
    ) -> Result<Vec<u8>, PieceError> {
        let k = self.coding.needed();
        let mut sound: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut refused = Vec::new();
        for (index, piece) in pieces {
            if sound.len() >= k {
                break;
            }
            match self.refuse(index, &piece) {
                None => {
                    sound.entry(index).or_insert(piece.data);
                }
                Some(why) => refused.push((index, why)),
            }
        }
        if sound.len() < k {
            return Err(PieceError::TooFew {
                valid: sound.len(),
                needed: k,
                refused,
            });
        }
        let shard = self.coding.shard_len(self.sealed_len);
        let kk = self.coding.data_pieces;
        let mut data: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut parity: Vec<(usize, &[u8])> = Vec::new();
        for (index, bytes) in &sound {
            if *index < kk {
                data.insert(*index, bytes.clone());
            } else {
                parity.push((usize::from(index - kk), bytes.as_slice()));
            }
        }
        if data.len() < k {
            let restored = reed_solomon_simd::decode(
                k,
                self.coding.parity_pieces.into(),
                data.iter().map(|(i, d)| (usize::from(*i), d.as_slice())),
                parity,
            )
            .map_err(|e| PieceError::Codec(e.to_string()))?;
            for (i, d) in restored {
                data.insert(i as u8, d);
            }
        }
        let mut whole = Vec::with_capacity(k * shard);
        for i in 0..kk {
            let d = data
                .get(&i)
                .ok_or_else(|| PieceError::Codec(format!("data piece {i} was not restored")))?;
            whole.extend_from_slice(d);
        }
        whole.truncate(self.sealed_len as usize);
        if crypto::hash(&whole) != self.sealed_hash {
            return Err(PieceError::WrongWhole);
        }
        Ok(whole)
    }
}

/// Rebuilds every batch that `pieces` (found wherever, e.g. in stopped light nodes'
/// stores, with no acks to hold them to) hold at least k consistent pieces of: each
/// piece must be self-consistent, and the rebuilt whole must hash to the sealed hash its
/// pieces name. Batch id → the sealed bytes, or why they could not be rebuilt.
pub fn rebuild_found(
    pieces: impl IntoIterator<Item = Piece>,
) -> BTreeMap<BatchId, Result<Vec<u8>, PieceError>> {
    // Pieces of one batch cut one way (the same coding of the same sealed whole).
    let mut groups: BTreeMap<(BatchId, u8, u8, u64, Hash32), Vec<Piece>> = BTreeMap::new();
    for piece in pieces {
        if piece.check().is_err() {
            continue;
        }
        let r = piece.header.piece;
        groups
            .entry((
                piece.header.batch_id,
                r.coding.data_pieces,
                r.coding.parity_pieces,
                r.sealed_len,
                r.sealed_hash,
            ))
            .or_default()
            .push(piece);
    }
    let mut out: BTreeMap<BatchId, Result<Vec<u8>, PieceError>> = BTreeMap::new();
    for ((batch_id, data, parity, sealed_len, sealed_hash), found) in groups {
        if matches!(out.get(&batch_id), Some(Ok(_))) {
            continue;
        }
        let expected = Expected {
            batch_id,
            coding: Coding {
                data_pieces: data,
                parity_pieces: parity,
            },
            sealed_len,
            sealed_hash,
            hashes: BTreeMap::new(),
        };
        let rebuilt = expected.rebuild(found.into_iter().map(|p| (p.index(), p)));
        out.insert(batch_id, rebuilt);
    }
    out
}

#[cfg(test)]
mod tests;

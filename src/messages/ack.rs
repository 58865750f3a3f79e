//! Proof-of-hold acknowledgements: a storage node's signed statement that it holds, on
//! disk, bytes with a given hash for a given batch, and the possession proof a node answers
//! a repair challenge with.
//!
//! An ack alone only shows that a node can sign a name: a node that kept the hash and threw
//! the bytes away could sign it forever. A challenge ([`HoldChallenge`]) therefore carries a
//! fresh random nonce that picks a few 1 KiB chunks of the bytes, and the answer
//! ([`HoldProof`]) carries those chunks with the BLAKE3 tree nodes that tie each of them to
//! the ack's hash (BLAKE3 verified streaming, the `bao` format). The checker needs only the
//! hash it recorded when the batch was written, not the bytes; a node can answer only if it
//! holds the chunks the nonce picked, and the nonce is unknown in advance.

use std::io::{Cursor, Read};

use serde::{Deserialize, Serialize};

use super::batch::BatchId;
use super::piece::{Expected, PieceRef};
use crate::crypto::{self, Hash32, SigningKey};

/// Domain-separation tag of proof-of-hold signatures over whole batches.
pub const POH_TAG: &str = "citychain/poh/v1";
/// Domain-separation tag of proof-of-hold signatures over one piece of a batch: an ack for
/// a piece can never be read as an ack for a whole batch, nor the other way round.
pub const POH_PIECE_TAG: &str = "citychain/poh-piece/v1";

/// How long an ack is accepted after it was made (upstream: one minute).
pub const ACK_VALIDITY_MS: u64 = 60_000;

/// Allowed clock difference between a holder and the city node checking its ack.
const CLOCK_TOLERANCE_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PohAck {
    pub holder_id: String,
    pub batch_id: BatchId,
    /// BLAKE3 of the exact bytes the holder stored: the sealed batch, or for a piece, the
    /// piece's data.
    pub held_hash: Hash32,
    pub time_ms: u64,
    /// ML-DSA-65 signature by the holder's node key. (`serde_bytes`: the same postcard
    /// bytes as a plain `Vec<u8>`, written at once rather than byte by byte.)
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// For a light node's ack: which piece of which coding of which sealed bytes it holds
    /// (signed with the rest under [`POH_PIECE_TAG`]). `None` for a whole batch.
    pub piece: Option<PieceRef>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error("ack is for another batch")]
    WrongBatch,
    #[error("ack names another holder")]
    WrongHolder,
    #[error("ack hash does not match the bytes sent")]
    WrongHash,
    #[error("ack signature does not verify with the holder's key")]
    BadSignature,
    #[error("ack is {age_ms} ms old or from the future")]
    Stale { age_ms: i64 },
    #[error("the possession proof does not show the challenged bytes")]
    NoPossession,
    #[error(
        "ack is for another piece, coding or sealed whole (or for a whole batch where a piece was asked, or the reverse)"
    )]
    WrongPiece,
}

impl PohAck {
    fn signed_bytes(
        holder_id: &str,
        batch_id: &BatchId,
        held_hash: &Hash32,
        time_ms: u64,
        piece: Option<&PieceRef>,
    ) -> Vec<u8> {
        match piece {
            None => {
                let fields = postcard::to_stdvec(&(holder_id, batch_id, held_hash, time_ms))
                    .expect("ack fields encode");
                crypto::tagged(POH_TAG, &fields)
            }
            Some(piece) => {
                let fields = postcard::to_stdvec(&(holder_id, batch_id, held_hash, time_ms, piece))
                    .expect("ack fields encode");
                crypto::tagged(POH_PIECE_TAG, &fields)
            }
        }
    }

    /// Signs an ack for `held` (the bytes stored) as `holder_id`.
    pub fn sign(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        held: &[u8],
        time_ms: u64,
    ) -> crypto::Result<Self> {
        Self::sign_hash(key, holder_id, batch_id, crypto::hash(held), time_ms, None)
    }

    /// Signs an ack for piece `piece` of batch `batch_id`, whose data hashes to
    /// `held_hash`, as `holder_id`.
    pub fn sign_piece(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        piece: PieceRef,
        held_hash: Hash32,
        time_ms: u64,
    ) -> crypto::Result<Self> {
        Self::sign_hash(key, holder_id, batch_id, held_hash, time_ms, Some(piece))
    }

    fn sign_hash(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        held_hash: Hash32,
        time_ms: u64,
        piece: Option<PieceRef>,
    ) -> crypto::Result<Self> {
        let signature = key.sign(&Self::signed_bytes(
            holder_id,
            &batch_id,
            &held_hash,
            time_ms,
            piece.as_ref(),
        ))?;
        Ok(Self {
            holder_id: holder_id.to_owned(),
            batch_id,
            held_hash,
            time_ms,
            signature,
            piece,
        })
    }

    /// Accepts the ack only if it is a whole-batch ack from `holder_id`, for `batch_id`,
    /// over bytes hashing to `expected_hash`, recent, and signed by `holder_key`.
    pub fn verify(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        expected_hash: &Hash32,
        now_ms: u64,
    ) -> Result<(), AckError> {
        self.verify_as(holder_id, holder_key, batch_id, None, expected_hash, now_ms)
    }

    /// Accepts the ack only if it is from `holder_id`, for exactly piece `piece` of
    /// `batch_id`, over piece data hashing to `expected_hash`, recent, and signed by
    /// `holder_key`.
    pub fn verify_piece(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        piece: &PieceRef,
        expected_hash: &Hash32,
        now_ms: u64,
    ) -> Result<(), AckError> {
        self.verify_as(
            holder_id,
            holder_key,
            batch_id,
            Some(piece),
            expected_hash,
            now_ms,
        )
    }

    /// Accepts the ack as it stands, whole-batch or piece: only that it is `holder_id`'s,
    /// for `batch_id`, and signed by `holder_key`. Its hash and age are its own, so this
    /// proves that the holder acked the batch (or a piece of it) at some time, nothing more;
    /// for checking a certificate forwarded long after the write.
    pub fn verify_as_signed(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
    ) -> Result<(), AckError> {
        self.verify_as(
            holder_id,
            holder_key,
            batch_id,
            self.piece.as_ref(),
            &self.held_hash,
            self.time_ms,
        )
    }

    fn verify_as(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        piece: Option<&PieceRef>,
        expected_hash: &Hash32,
        now_ms: u64,
    ) -> Result<(), AckError> {
        if &self.batch_id != batch_id {
            return Err(AckError::WrongBatch);
        }
        if self.piece.as_ref() != piece {
            return Err(AckError::WrongPiece);
        }
        if self.holder_id != holder_id {
            return Err(AckError::WrongHolder);
        }
        if &self.held_hash != expected_hash {
            return Err(AckError::WrongHash);
        }
        let age_ms = now_ms as i64 - self.time_ms as i64;
        if age_ms > ACK_VALIDITY_MS as i64 || age_ms < -(CLOCK_TOLERANCE_MS as i64) {
            return Err(AckError::Stale { age_ms });
        }
        let msg = Self::signed_bytes(
            &self.holder_id,
            &self.batch_id,
            &self.held_hash,
            self.time_ms,
            self.piece.as_ref(),
        );
        crypto::verify(holder_key, &msg, &self.signature).map_err(|_| AckError::BadSignature)
    }
}

impl Expected {
    /// From piece acks of batch `batch_id`; `None` if there is none, or if they disagree
    /// about the coding or the sealed whole (acks the city verified never do).
    pub fn from_acks<'a>(
        batch_id: BatchId,
        acks: impl IntoIterator<Item = &'a PohAck>,
    ) -> Option<Self> {
        let mut out: Option<Self> = None;
        for ack in acks {
            let r = ack.piece?;
            if ack.batch_id != batch_id {
                return None;
            }
            let e = out.get_or_insert_with(|| Self {
                batch_id,
                coding: r.coding,
                sealed_len: r.sealed_len,
                sealed_hash: r.sealed_hash,
                hashes: std::collections::BTreeMap::new(),
            });
            if (e.coding, e.sealed_len, e.sealed_hash) != (r.coding, r.sealed_len, r.sealed_hash) {
                return None;
            }
            if *e.hashes.entry(r.index).or_insert(ack.held_hash) != ack.held_hash {
                return None;
            }
        }
        out
    }
}

/// Chunks of the held bytes a challenge picks at random; the final chunk is always added,
/// because only it proves the length the other chunks are placed by.
pub const CHALLENGE_CHUNKS: usize = 4;
/// The BLAKE3 chunk: the unit of a possession proof.
const CHUNK_LEN: u64 = 1024;
/// Length of the content-length header that starts every slice.
const SLICE_HEADER_LEN: usize = 8;

/// `REPAIR_REQ` body: prove you still hold the bytes of this batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldChallenge {
    /// Fresh random bytes chosen by the challenger; they pick the chunks to show.
    pub nonce: [u8; 32],
}

impl HoldChallenge {
    pub fn fresh() -> crypto::Result<Self> {
        let mut nonce = [0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| crypto::CryptoError::Library)?;
        Ok(Self { nonce })
    }

    /// Start offsets of the chunks this challenge asks for in `len` bytes: a few picked by
    /// the nonce, then the last one.
    pub fn chunk_offsets(&self, len: u64) -> Vec<u64> {
        let chunks = len.div_ceil(CHUNK_LEN).max(1);
        let mut offsets: Vec<u64> = (0..CHALLENGE_CHUNKS as u64)
            .map(|i| {
                let h = blake3::keyed_hash(&self.nonce, &i.to_le_bytes());
                let pick = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
                (pick % chunks) * CHUNK_LEN
            })
            .collect();
        offsets.push((chunks - 1) * CHUNK_LEN);
        offsets
    }
}

/// `REPAIR_ACK`: a fresh ack over the bytes held, and the chunks the challenge picked, each
/// as a verifiable BLAKE3 slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldProof {
    pub ack: PohAck,
    /// Length of the bytes held; the slices prove it.
    pub len: u64,
    /// One slice per offset of [`HoldChallenge::chunk_offsets`], in that order.
    pub slices: Vec<Vec<u8>>,
}

impl HoldProof {
    /// Answers `challenge` for `held` (the bytes stored) as `holder_id`.
    pub fn prove(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        held: &[u8],
        challenge: &HoldChallenge,
        time_ms: u64,
    ) -> crypto::Result<Self> {
        let ack = PohAck::sign(key, holder_id, batch_id, held, time_ms)?;
        Ok(Self::with_ack(ack, held, challenge))
    }

    /// Answers `challenge` for piece `piece` of batch `batch_id`, whose data is `held`, as
    /// `holder_id`: the ack binds the piece, the slices are of its data.
    pub fn prove_piece(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        piece: PieceRef,
        held: &[u8],
        challenge: &HoldChallenge,
        time_ms: u64,
    ) -> crypto::Result<Self> {
        let ack = PohAck::sign_piece(key, holder_id, batch_id, piece, crypto::hash(held), time_ms)?;
        Ok(Self::with_ack(ack, held, challenge))
    }

    fn with_ack(ack: PohAck, held: &[u8], challenge: &HoldChallenge) -> Self {
        let len = held.len() as u64;
        let (outboard, _) = bao::encode::outboard(held);
        let slices = challenge
            .chunk_offsets(len)
            .into_iter()
            .map(|start| {
                let mut slice = Vec::new();
                bao::encode::SliceExtractor::new_outboard(
                    Cursor::new(held),
                    Cursor::new(&outboard),
                    start,
                    CHUNK_LEN,
                )
                .read_to_end(&mut slice)
                .expect("slicing bytes in memory cannot fail");
                slice
            })
            .collect();
        Self { ack, len, slices }
    }

    /// Accepts the proof only if its ack verifies (see [`PohAck::verify`]) and every chunk
    /// `challenge` picked is shown and ties to `expected_hash`.
    pub fn verify(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        expected_hash: &Hash32,
        challenge: &HoldChallenge,
        now_ms: u64,
    ) -> Result<(), AckError> {
        self.ack
            .verify(holder_id, holder_key, batch_id, expected_hash, now_ms)?;
        self.verify_slices(expected_hash, challenge)
    }

    /// [`HoldProof::verify`] for piece `piece` of `batch_id`, whose data was acked as
    /// hashing to `expected_hash`: the ack must bind that piece (see
    /// [`PohAck::verify_piece`]) and the chunks tie to the piece's hash.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_piece(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        piece: &PieceRef,
        expected_hash: &Hash32,
        challenge: &HoldChallenge,
        now_ms: u64,
    ) -> Result<(), AckError> {
        self.ack.verify_piece(
            holder_id,
            holder_key,
            batch_id,
            piece,
            expected_hash,
            now_ms,
        )?;
        self.verify_slices(expected_hash, challenge)
    }

    fn verify_slices(
        &self,
        expected_hash: &Hash32,
        challenge: &HoldChallenge,
    ) -> Result<(), AckError> {
        let offsets = challenge.chunk_offsets(self.len);
        if self.slices.len() != offsets.len() {
            return Err(AckError::NoPossession);
        }
        let root = bao::Hash::from(*expected_hash);
        for (slice, start) in self.slices.iter().zip(offsets) {
            // Every slice opens with the content length; the one holding the final chunk
            // proves it, so all must state the same.
            let stated = slice
                .get(..SLICE_HEADER_LEN)
                .map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")));
            if stated != Some(self.len) {
                return Err(AckError::NoPossession);
            }
            let mut shown = Vec::new();
            bao::decode::SliceDecoder::new(&slice[..], &root, start, CHUNK_LEN)
                .read_to_end(&mut shown)
                .map_err(|_| AckError::NoPossession)?;
            if shown.is_empty() && self.len > 0 {
                return Err(AckError::NoPossession);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_verification_rejects_wrong_hash_signature_holder_and_age() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let batch = [7u8; 32];
        let held = b"batch bytes";
        let ack = PohAck::sign(&key, "light-1", batch, held, 1_000_000).unwrap();
        let h = crypto::hash(held);
        let now = 1_000_500;

        assert_eq!(
            ack.verify("light-1", key.public_key(), &batch, &h, now),
            Ok(())
        );
        assert_eq!(
            ack.verify(
                "light-1",
                key.public_key(),
                &batch,
                &crypto::hash(b"other"),
                now
            ),
            Err(AckError::WrongHash)
        );
        assert_eq!(
            ack.verify("light-1", other.public_key(), &batch, &h, now),
            Err(AckError::BadSignature)
        );
        let mut forged = ack.clone();
        forged.signature[100] ^= 0x40;
        assert_eq!(
            forged.verify("light-1", key.public_key(), &batch, &h, now),
            Err(AckError::BadSignature)
        );
        assert_eq!(
            ack.verify("light-2", key.public_key(), &batch, &h, now),
            Err(AckError::WrongHolder)
        );
        assert_eq!(
            ack.verify("light-1", key.public_key(), &[8u8; 32], &h, now),
            Err(AckError::WrongBatch)
        );
        assert!(matches!(
            ack.verify(
                "light-1",
                key.public_key(),
                &batch,
                &h,
                now + ACK_VALIDITY_MS
            ),
            Err(AckError::Stale { .. })
        ));
    }

    fn held(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn possession_proof_verifies_only_for_its_challenge_and_bytes() {
        let key = SigningKey::generate().unwrap();
        let batch = [3u8; 32];
        for len in [1usize, 1000, 1024, 1025, 70_000, 300_001] {
            let bytes = held(len);
            let h = crypto::hash(&bytes);
            let challenge = HoldChallenge::fresh().unwrap();
            let proof =
                HoldProof::prove(&key, "light-1", batch, &bytes, &challenge, 5_000).unwrap();
            assert_eq!(
                proof.verify("light-1", key.public_key(), &batch, &h, &challenge, 5_100),
                Ok(()),
                "len {len}"
            );
            // Another challenge picks other chunks (or, for tiny inputs, the same one):
            // an old proof does not answer a new nonce unless the chunks coincide.
            let other = HoldChallenge { nonce: [9u8; 32] };
            if other.chunk_offsets(len as u64) != challenge.chunk_offsets(len as u64) {
                assert_eq!(
                    proof.verify("light-1", key.public_key(), &batch, &h, &other, 5_100),
                    Err(AckError::NoPossession),
                    "len {len}"
                );
            }
            // Bytes that differ where the challenge looks do not tie to the recorded hash.
            let start = challenge.chunk_offsets(len as u64)[0] as usize;
            let mut changed = bytes.clone();
            changed[start] ^= 1;
            let forged = HoldProof {
                ack: proof.ack.clone(),
                ..HoldProof::prove(&key, "light-1", batch, &changed, &challenge, 5_000).unwrap()
            };
            assert_eq!(
                forged.verify("light-1", key.public_key(), &batch, &h, &challenge, 5_100),
                Err(AckError::NoPossession),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_node_that_kept_only_part_cannot_claim_a_shorter_length() {
        // A node that kept the first chunk and the hash claims the bytes were one chunk long,
        // so that every challenge would pick chunk 0.
        let key = SigningKey::generate().unwrap();
        let batch = [4u8; 32];
        let bytes = held(50_000);
        let h = crypto::hash(&bytes);
        let challenge = HoldChallenge::fresh().unwrap();
        let honest = HoldProof::prove(&key, "light-1", batch, &bytes, &challenge, 5_000).unwrap();
        let short = HoldChallenge {
            nonce: challenge.nonce,
        };
        let offsets = short.chunk_offsets(1024);
        assert!(offsets.iter().all(|&o| o == 0));
        let (outboard, _) = bao::encode::outboard(&bytes);
        let first_chunk_slice = {
            let mut s = Vec::new();
            bao::encode::SliceExtractor::new_outboard(
                Cursor::new(&bytes),
                Cursor::new(&outboard),
                0,
                CHUNK_LEN,
            )
            .read_to_end(&mut s)
            .unwrap();
            s
        };
        let mut lie = HoldProof {
            ack: honest.ack.clone(),
            len: 1024,
            slices: vec![first_chunk_slice.clone(); offsets.len()],
        };
        assert_eq!(
            lie.verify("light-1", key.public_key(), &batch, &h, &challenge, 5_100),
            Err(AckError::NoPossession)
        );
        // Rewriting the stated length inside the slices does not help either: the final
        // chunk is not where the real tree says it is.
        for s in &mut lie.slices {
            s[..8].copy_from_slice(&1024u64.to_le_bytes());
        }
        assert_eq!(
            lie.verify("light-1", key.public_key(), &batch, &h, &challenge, 5_100),
            Err(AckError::NoPossession)
        );
        // And too few slices is no proof.
        let mut few = honest.clone();
        few.slices.pop();
        assert_eq!(
            few.verify("light-1", key.public_key(), &batch, &h, &challenge, 5_100),
            Err(AckError::NoPossession)
        );
    }

    #[test]
    fn a_piece_ack_binds_its_piece_and_is_never_a_whole_batch_ack() {
        use crate::messages::piece::Coding;
        let key = SigningKey::generate().unwrap();
        let batch = [5u8; 32];
        let sealed = held(10_000);
        let pieces = Coding::new(4, 2).unwrap().encode(batch, &sealed).unwrap();
        let p = &pieces[4];
        let r = p.header.piece;
        let ack = PohAck::sign_piece(&key, "light-1", batch, r, p.header.hash, 1_000).unwrap();
        let pk = key.public_key();
        assert_eq!(
            ack.verify_piece("light-1", pk, &batch, &r, &p.header.hash, 1_100),
            Ok(())
        );
        // Not as an ack of the whole batch, whatever hash is offered.
        assert_eq!(
            ack.verify("light-1", pk, &batch, &p.header.hash, 1_100),
            Err(AckError::WrongPiece)
        );
        // Not for another index, coding or sealed whole.
        for other in [
            PieceRef { index: 3, ..r },
            PieceRef {
                sealed_len: r.sealed_len + 1,
                ..r
            },
            PieceRef {
                sealed_hash: [0; 32],
                ..r
            },
            PieceRef {
                coding: Coding::new(3, 3).unwrap(),
                ..r
            },
        ] {
            assert_eq!(
                ack.verify_piece("light-1", pk, &batch, &other, &p.header.hash, 1_100),
                Err(AckError::WrongPiece)
            );
        }
        // A piece ref changed after signing does not verify.
        let mut moved = ack.clone();
        moved.piece = Some(PieceRef { index: 0, ..r });
        assert_eq!(
            moved.verify_piece(
                "light-1",
                pk,
                &batch,
                &PieceRef { index: 0, ..r },
                &p.header.hash,
                1_100
            ),
            Err(AckError::BadSignature)
        );
        // And a whole-batch ack is not a piece ack.
        let whole = PohAck::sign(&key, "light-1", batch, &sealed, 1_000).unwrap();
        assert_eq!(
            whole.verify_piece("light-1", pk, &batch, &r, &crypto::hash(&sealed), 1_100),
            Err(AckError::WrongPiece)
        );

        // Possession proofs go per piece, over the piece's data.
        let challenge = HoldChallenge::fresh().unwrap();
        let proof =
            HoldProof::prove_piece(&key, "light-1", batch, r, &p.data, &challenge, 1_000).unwrap();
        assert_eq!(
            proof.verify_piece("light-1", pk, &batch, &r, &p.header.hash, &challenge, 1_100),
            Ok(())
        );
        let other = pieces[5].header.hash;
        assert_eq!(
            proof.verify_piece("light-1", pk, &batch, &r, &other, &challenge, 1_100),
            Err(AckError::WrongHash)
        );
        let forged = HoldProof {
            ack: proof.ack.clone(),
            ..HoldProof::prove_piece(
                &key,
                "light-1",
                batch,
                r,
                &pieces[5].data,
                &challenge,
                1_000,
            )
            .unwrap()
        };
        assert_eq!(
            forged.verify_piece("light-1", pk, &batch, &r, &p.header.hash, &challenge, 1_100),
            Err(AckError::NoPossession)
        );
    }
}

//! The federation's vocabulary: what a city forwards to its continent, what a continent
//! forwards to the global node, and the checkpoints the global node signs.
//!
//! ```text
//! city batch ──CertifiedBatch──▶ continent ──SignedContinentBatch──▶ global ──SignedCheckpoint
//!  (header + certificate           (entries: the city batch headers,     (a signed Merkle root
//!   of availability, signed         their Merkle root in a header          over its log, which
//!   by the city)                    the continent signs)                   holds what it received)
//! ```
//!
//! **The certificate of availability** of a city batch is what shows where it is held:
//! the tier the batch record names, its holders, and the signed proof-of-hold acks the
//! record holds (for light and full nodes: at least the tier's quorum of distinct holders
//! whose acks are signed by their node keys for that batch id). It counts holders, not
//! bytes: an ack's `held_hash` is whatever its holder stored (a whole batch or a piece of
//! one), so the certificate holds whichever acks the record keeps. MongoDB and the city's
//! own immutable log sign nothing; for batches there, the city's own signature over the
//! certificate is the only witness, and the continent records it as such. The city signs
//! every certificate it forwards ([`CertifiedBatch`]), so a continent's log shows, for
//! each city batch, who vouched for it.
//!
//! Every signature is domain-separated by its tag; every structure is encoded with the
//! versioned postcard envelope ([`super::encode`]) wherever it is hashed, signed or sent.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{BatchHeader, BatchId, PohAck, Tier};
use crate::crypto::{self, Hash32, SigningKey};

/// Domain tag of a city's signature over a certificate of availability.
pub const CERTIFICATE_TAG: &str = "citychain/certificate/v1";
/// Domain tag of a continent's signature over a continent batch.
pub const CONTINENT_BATCH_TAG: &str = "citychain/continent-batch/v1";
/// Domain tag of the global node's signature over a checkpoint.
pub const CHECKPOINT_TAG: &str = "citychain/checkpoint/v1";

/// Where cities send certified batch headers on their continent (signed requests).
pub const CITY_BATCHES_PATH: &str = "/internal/v1/city-batches";
/// Where continents send their batches on the global node (signed requests).
pub const CONTINENT_BATCHES_PATH: &str = "/internal/v1/continent-batches";
/// Largest submission body a continent or global node reads, in bytes.
pub const MAX_SUBMISSION_BYTES: usize = 8 * 1024 * 1024;
/// Most batches one submission may carry.
pub const MAX_SUBMISSION_ITEMS: usize = 1024;

/// Where a city batch is held and what proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub tier: Tier,
    pub holders: Vec<String>,
    /// The acks the batch record holds: for light and full nodes, at least the tier's
    /// quorum; none for MongoDB and the log.
    pub acks: Vec<PohAck>,
}

/// Why a certificate does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error(
        "{valid} distinct {tier} holders with valid acks, {needed} needed{}",
        if .refused.is_empty() { String::new() } else { format!(" (refused: {})", .refused.join("; ")) }
    )]
    TooFewAcks {
        tier: Tier,
        valid: usize,
        needed: usize,
        refused: Vec<String>,
    },
}

impl Certificate {
    /// Checks the certificate of batch `id`: for light and full nodes, at least
    /// `needed(tier)` distinct holders of that tier (`holder_key` gives a known holder's tier
    /// and ML-DSA-65 public key) whose acks name this batch and verify with their keys. An
    /// ack's age does not matter here (a certificate is forwarded after the write, maybe
    /// much later), nor what bytes it hashes (a whole batch or a piece). MongoDB and the log
    /// sign nothing: their certificates pass here and rest on the city's signature.
    pub fn check<'k>(
        &self,
        id: &BatchId,
        holder_key: impl Fn(&str) -> Option<(Tier, &'k [u8])>,
        needed: impl Fn(Tier) -> usize,
    ) -> Result<(), CertificateError> {
        if !matches!(self.tier, Tier::Light | Tier::Full) {
            return Ok(());
        }
        let mut valid = BTreeSet::new();
        let mut pieces = BTreeSet::new();
        let mut refused = Vec::new();
        for ack in &self.acks {
            let holder = ack.holder_id.as_str();
            let why = match holder_key(holder) {
                None => Some("not a storage node this node knows".to_string()),
                Some((tier, _)) if tier != self.tier => Some(format!("a {tier} node")),
                // The ack checked against itself: its own hash, time and piece, so only
                // the batch, the holder and the signature can fail.
                Some((_, key)) => ack
                    .verify_as_signed(holder, key, id)
                    .err()
                    .map(|e| e.to_string()),
            };
            // Piece acks count once per piece: holders of the same piece add nothing to
            // what can be rebuilt.
            let why = why.or_else(|| match ack.piece {
                Some(p) if !pieces.insert(p.index) => {
                    Some(format!("a second ack for piece {}", p.index))
                }
                _ => None,
            });
            match why {
                None => {
                    valid.insert(holder);
                }
                Some(why) => refused.push(format!("{holder}: {why}")),
            }
        }
        let needed = needed(self.tier);
        if valid.len() >= needed {
            Ok(())
        } else {
            Err(CertificateError::TooFewAcks {
                tier: self.tier,
                valid: valid.len(),
                needed,
                refused,
            })
        }
    }
}

/// A city batch as its city forwards it: the clear header, the certificate, and the city's
/// signature over both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedBatch {
    pub header: BatchHeader,
    pub certificate: Certificate,
    /// The city's ML-DSA-65 signature over [`CertifiedBatch::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl CertifiedBatch {
    /// `CERTIFICATE_TAG ‖ 0 ‖ encode((batch id, certificate))`.
    pub fn signed_bytes(id: &BatchId, certificate: &Certificate) -> Vec<u8> {
        crypto::tagged(CERTIFICATE_TAG, &super::encode(&(id, certificate)))
    }

    pub fn sign(
        key: &SigningKey,
        header: BatchHeader,
        certificate: Certificate,
    ) -> crypto::Result<Self> {
        let signature = key.sign(&Self::signed_bytes(&header.id(), &certificate))?;
        Ok(Self {
            header,
            certificate,
            signature,
        })
    }

    pub fn id(&self) -> BatchId {
        self.header.id()
    }

    /// Checks the city's signature under `city_key`.
    pub fn verify_signature(&self, city_key: &[u8]) -> crypto::Result<()> {
        crypto::verify(
            city_key,
            &Self::signed_bytes(&self.id(), &self.certificate),
            &self.signature,
        )
    }
}

/// The body of `POST /internal/v1/city-batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitySubmission {
    pub batches: Vec<CertifiedBatch>,
}

/// One city batch inside a continent batch: a leaf of the continent batch's Merkle tree,
/// hashed as its [`super::encode`]ing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentEntry {
    pub header: BatchHeader,
    /// The tier the certificate showed when the continent merged it.
    pub tier: Tier,
}

impl ContinentEntry {
    /// The bytes its leaf hash covers.
    pub fn leaf_bytes(&self) -> Vec<u8> {
        super::encode(self)
    }
}

/// A continent batch's header; its id is the hash of its encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentBatchHeader {
    pub continent: String,
    /// Position in this continent's sequence of batches, from 0.
    pub seq: u64,
    /// The continent batches this one follows (the previous one; none for the first).
    pub parents: Vec<Hash32>,
    /// RFC 6962 Merkle root (BLAKE3) over the entries' encodings, in order.
    pub entries_root: Hash32,
    pub entry_count: u32,
    pub created_at_ms: u64,
}

impl ContinentBatchHeader {
    pub fn id(&self) -> Hash32 {
        crypto::hash(&super::encode(self))
    }
}

/// City batches merged by a continent: its header and the entries, in leaf order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentBatch {
    pub header: ContinentBatchHeader,
    pub entries: Vec<ContinentEntry>,
}

/// A continent batch signed by the continent node that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedContinentBatch {
    pub batch: ContinentBatch,
    /// The continent node's id.
    pub signer: String,
    /// ML-DSA-65 signature over `CONTINENT_BATCH_TAG ‖ 0 ‖ id`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedContinentBatch {
    pub fn sign(key: &SigningKey, signer: &str, batch: ContinentBatch) -> crypto::Result<Self> {
        let signature = key.sign(&crypto::tagged(CONTINENT_BATCH_TAG, &batch.header.id()))?;
        Ok(Self {
            batch,
            signer: signer.to_owned(),
            signature,
        })
    }

    pub fn id(&self) -> Hash32 {
        self.batch.header.id()
    }

    /// Checks the continent's signature over the header under `key`. (Whether the entries
    /// are the ones the header's root commits to is the Merkle tree's business.)
    pub fn verify_signature(&self, key: &[u8]) -> crypto::Result<()> {
        crypto::verify(
            key,
            &crypto::tagged(CONTINENT_BATCH_TAG, &self.id()),
            &self.signature,
        )
    }
}

/// What a continent keeps in its immutable log for each continent batch: the batch as it
/// was forwarded, and each city batch as its city certified it (in entry order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentRecord {
    pub batch: SignedContinentBatch,
    pub certified: Vec<CertifiedBatch>,
}

/// The body of `POST /internal/v1/continent-batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentSubmission {
    pub batches: Vec<SignedContinentBatch>,
}

/// "The first `size` records of my log have Merkle root `root`", numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// From 0, one more per checkpoint.
    pub seq: u64,
    /// Records of the global node's log the root covers.
    pub size: u64,
    /// RFC 6962 root (BLAKE3) over the first `size` records of the log.
    pub root: Hash32,
    pub time_ms: u64,
    /// [`SignedCheckpoint::hash`] of the previous checkpoint; zeros for the first.
    pub prev: Hash32,
}

/// A checkpoint signed by the global node's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// ML-DSA-65 signature over `CHECKPOINT_TAG ‖ 0 ‖ encode(checkpoint)`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedCheckpoint {
    pub fn signed_bytes(checkpoint: &Checkpoint) -> Vec<u8> {
        crypto::tagged(CHECKPOINT_TAG, &super::encode(checkpoint))
    }

    pub fn sign(key: &SigningKey, checkpoint: Checkpoint) -> crypto::Result<Self> {
        let signature = key.sign(&Self::signed_bytes(&checkpoint))?;
        Ok(Self {
            checkpoint,
            signature,
        })
    }

    pub fn verify(&self, key: &[u8]) -> crypto::Result<()> {
        crypto::verify(key, &Self::signed_bytes(&self.checkpoint), &self.signature)
    }

    /// What the next checkpoint's `prev` names: the hash of this one's encoding.
    pub fn hash(&self) -> Hash32 {
        crypto::hash(&super::encode(&self.checkpoint))
    }
}

/// `POST /internal/v1/city-batches` answers 200 with this (JSON): where each batch was
/// merged, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeReply {
    pub merged: Vec<MergedBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedBatch {
    pub batch_id: String,
    pub continent_batch_id: String,
    pub continent_seq: u64,
    pub entry_index: u32,
    /// It had been merged before (a retried submission).
    pub duplicate: bool,
}

/// `POST /internal/v1/continent-batches` answers 200 with this (JSON), in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveReply {
    pub received: Vec<ReceivedBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedBatch {
    pub continent_batch_id: String,
    /// The record of the global node's log that holds it.
    pub record_index: u64,
    pub duplicate: bool,
}

/// Where a city batch was merged, as its city records it once the continent answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinentPlacement {
    /// The continent node that merged it.
    pub node: String,
    pub continent_batch_id: Hash32,
    pub continent_seq: u64,
    pub entry_index: u32,
    pub time_ms: u64,
}

/// Where a continent batch went on the global node, as its continent records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalPlacement {
    pub node: String,
    pub record_index: u64,
    pub time_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Batch, FlagKind, now_ms};

    fn header(seq: u64) -> BatchHeader {
        Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &[], 7).header
    }

    struct Holders(Vec<(String, Tier, SigningKey)>);

    impl Holders {
        fn new(light: usize, full: usize) -> Self {
            let mut v = Vec::new();
            for i in 0..light {
                v.push((
                    format!("light-{i}"),
                    Tier::Light,
                    SigningKey::from_seed([i as u8 + 1; 32]).unwrap(),
                ));
            }
            for i in 0..full {
                v.push((
                    format!("full-{i}"),
                    Tier::Full,
                    SigningKey::from_seed([i as u8 + 100; 32]).unwrap(),
                ));
            }
            Self(v)
        }

        fn key(&self, id: &str) -> Option<(Tier, &[u8])> {
            self.0
                .iter()
                .find(|(h, _, _)| h == id)
                .map(|(_, t, k)| (*t, k.public_key()))
        }

        fn ack(&self, i: usize, batch: BatchId, held: &[u8]) -> PohAck {
            let (id, _, key) = &self.0[i];
            PohAck::sign(key, id, batch, held, now_ms()).unwrap()
        }
    }

    fn needed(tier: Tier) -> usize {
        match tier {
            Tier::Light => 3,
            _ => 1,
        }
    }

    #[test]
    fn a_certificate_needs_a_quorum_of_distinct_known_holders_with_valid_acks() {
        let h = Holders::new(4, 1);
        let id = header(0).id();
        // Acks over different bytes (whole batches or pieces) count alike.
        let acks: Vec<PohAck> = (0..3).map(|i| h.ack(i, id, &[i as u8; 10])).collect();
        let cert = Certificate {
            tier: Tier::Light,
            holders: vec!["light-0".into(), "light-1".into(), "light-2".into()],
            acks: acks.clone(),
        };
        cert.check(&id, |x| h.key(x), needed).unwrap();

        // An old ack is still a proof: the certificate travels after the write.
        let mut old = cert.clone();
        old.acks[0] = PohAck::sign(&h.0[0].2, "light-0", id, b"x", 1_000).unwrap();
        old.check(&id, |x| h.key(x), needed).unwrap();

        // The same holder twice is one holder.
        let mut twice = cert.clone();
        twice.acks[2] = h.ack(0, id, b"again");
        let err = twice.check(&id, |x| h.key(x), needed).unwrap_err();
        assert!(
            matches!(err, CertificateError::TooFewAcks { valid: 2, .. }),
            "{err}"
        );

        // Another batch's ack, a forged signature, an unknown holder, a full node's ack
        // in a light certificate: each is refused, and the quorum fails.
        let other = header(1).id();
        let mut forged = h.ack(1, id, b"y");
        forged.signature[10] ^= 1;
        let stranger = SigningKey::from_seed([9; 32]).unwrap();
        for bad in [
            h.ack(2, other, b"z"),
            forged,
            PohAck::sign(&stranger, "light-9", id, b"w", now_ms()).unwrap(),
            h.ack(4, id, b"v"),
        ] {
            let mut c = cert.clone();
            c.acks[1] = bad;
            let err = c.check(&id, |x| h.key(x), needed).unwrap_err();
            let CertificateError::TooFewAcks { valid, refused, .. } = &err;
            assert_eq!((*valid, refused.len()), (2, 1), "{err}");
        }

        // MongoDB and the log rest on the city's signature alone.
        let log = Certificate {
            tier: Tier::Log,
            holders: vec!["city-tokyo".into()],
            acks: vec![],
        };
        log.check(&id, |x| h.key(x), needed).unwrap();
    }

    #[test]
    fn piece_acks_count_once_per_holder_and_once_per_piece() {
        use crate::messages::{Coding, PieceRef};
        let h = Holders::new(4, 0);
        let id = header(0).id();
        let piece = |index| PieceRef {
            index,
            coding: Coding {
                data_pieces: 2,
                parity_pieces: 2,
            },
            sealed_len: 100,
            sealed_hash: [7; 32],
        };
        let ack = |i: usize, index| {
            let (holder, _, key) = &h.0[i];
            PohAck::sign_piece(key, holder, id, piece(index), [index; 32], now_ms()).unwrap()
        };
        let cert = Certificate {
            tier: Tier::Light,
            holders: (0..3).map(|i| format!("light-{i}")).collect(),
            acks: (0..3).map(|i| ack(i, i as u8)).collect(),
        };
        cert.check(&id, |x| h.key(x), needed).unwrap();

        // Two holders acking the same piece hold no more of the batch than one.
        let mut same_piece = cert.clone();
        same_piece.acks[2] = ack(2, 0);
        let err = same_piece.check(&id, |x| h.key(x), needed).unwrap_err();
        let CertificateError::TooFewAcks { valid, refused, .. } = &err;
        assert_eq!((*valid, refused.len()), (2, 1), "{err}");
        assert!(refused[0].contains("second ack for piece 0"), "{err}");

        // A piece ack whose piece was changed after signing does not verify.
        let mut moved = cert.clone();
        moved.acks[1].piece = Some(piece(3));
        let err = moved.check(&id, |x| h.key(x), needed).unwrap_err();
        assert!(
            matches!(err, CertificateError::TooFewAcks { valid: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn signatures_bind_what_they_cover() {
        let city = SigningKey::from_seed([3; 32]).unwrap();
        let cert = Certificate {
            tier: Tier::Log,
            holders: vec![],
            acks: vec![],
        };
        let signed = CertifiedBatch::sign(&city, header(0), cert).unwrap();
        signed.verify_signature(city.public_key()).unwrap();
        let mut moved = signed.clone();
        moved.certificate.tier = Tier::Light;
        assert!(moved.verify_signature(city.public_key()).is_err());
        let mut other = signed.clone();
        other.header.seq = 5;
        assert!(other.verify_signature(city.public_key()).is_err());
        let stranger = SigningKey::from_seed([4; 32]).unwrap();
        assert!(signed.verify_signature(stranger.public_key()).is_err());

        let batch = ContinentBatch {
            header: ContinentBatchHeader {
                continent: "asia".into(),
                seq: 0,
                parents: vec![],
                entries_root: [1; 32],
                entry_count: 1,
                created_at_ms: 5,
            },
            entries: vec![],
        };
        let cb = SignedContinentBatch::sign(&city, "continent-asia", batch).unwrap();
        cb.verify_signature(city.public_key()).unwrap();
        let mut changed = cb.clone();
        changed.batch.header.entries_root[0] ^= 1;
        assert!(changed.verify_signature(city.public_key()).is_err());

        let cp = SignedCheckpoint::sign(
            &city,
            Checkpoint {
                seq: 0,
                size: 3,
                root: [2; 32],
                time_ms: 9,
                prev: [0; 32],
            },
        )
        .unwrap();
        cp.verify(city.public_key()).unwrap();
        let mut grown = cp.clone();
        grown.checkpoint.size = 4;
        assert!(grown.verify(city.public_key()).is_err());
        assert_ne!(cp.hash(), grown.hash());
    }
}

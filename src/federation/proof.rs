//! The inclusion proof from a city batch to the global checkpoint that covers it, as the
//! global node serves it (`GET /v1/checkpoints/proof`) and as anyone checks it offline
//! ([`CheckpointProof::verify`], `citychain checkpoint prove` / `checkpoint verify`).
//!
//! Three links, each checked against something signed:
//!
//! 1. the **checkpoint** is signed by the global node's key, over the size and root of its
//!    log's Merkle tree;
//! 2. the **record** (a record of the global node's log, holding the continent batch as its
//!    continent signed it) is leaf `record_index` of that tree (`record_proof`, RFC 6962
//!    audit path, BLAKE3), and the continent's signature over the batch's header verifies;
//! 3. the city batch's **entry** (its header and tier) is leaf `entry_index` of the
//!    continent batch's entries tree, whose root the signed header carries
//!    (`entry_proof`), and the entry's header hashes to the batch id.
//!
//! The entry's header carries the Merkle root of the batch's transaction ids, so a
//! transaction's place in its batch (which its city can show) extends the chain to it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::crypto::{Hash32, address_of};
use crate::messages::federation::{
    Checkpoint, ContinentEntry, SignedCheckpoint, SignedContinentBatch,
};
use crate::messages::{decode, hex32, parse_hex32};
use crate::storage::immutable_log::heads::{base64_bytes, hex_hash};
use crate::storage::immutable_log::merkle::verify_inclusion;
use crate::storage::immutable_log::{Record, RecordKind};

/// A checkpoint as JSON: hashes in hex, the signature in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointView {
    pub seq: u64,
    pub size: u64,
    #[serde(with = "hex_hash")]
    pub root: Hash32,
    pub time_ms: u64,
    #[serde(with = "hex_hash")]
    pub prev: Hash32,
    #[serde(with = "base64_bytes")]
    pub signature: Vec<u8>,
}

impl From<&SignedCheckpoint> for CheckpointView {
    fn from(s: &SignedCheckpoint) -> Self {
        let c = &s.checkpoint;
        Self {
            seq: c.seq,
            size: c.size,
            root: c.root,
            time_ms: c.time_ms,
            prev: c.prev,
            signature: s.signature.clone(),
        }
    }
}

impl CheckpointView {
    pub fn signed(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: Checkpoint {
                seq: self.seq,
                size: self.size,
                root: self.root,
                time_ms: self.time_ms,
                prev: self.prev,
            },
            signature: self.signature.clone(),
        }
    }
}

/// Lists of hashes as lists of hex strings.
pub mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::crypto::Hash32;

    pub fn serialize<S: Serializer>(hashes: &[Hash32], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hashes.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash32>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| {
                crate::messages::parse_hex32(h)
                    .ok_or_else(|| serde::de::Error::custom("a hash must be 64 hex characters"))
            })
            .collect()
    }
}

/// `GET /v1/checkpoints/proof?batch=ID`: city batch → continent batch → global log →
/// signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointProof {
    /// The city batch proven.
    pub batch_id: String,
    pub checkpoint: CheckpointView,
    /// The global node's address and its ML-DSA-65 public key (base64).
    pub signer: String,
    #[serde(with = "base64_bytes")]
    pub public_key: Vec<u8>,
    /// The record of the global node's log holding the continent batch: its index, its
    /// body (base64, the bytes its leaf hash covers) and its audit path to the root.
    pub record_index: u64,
    #[serde(with = "base64_bytes")]
    pub record: Vec<u8>,
    #[serde(with = "hex_list")]
    pub record_proof: Vec<Hash32>,
    /// The continent batch and the continent node that signed it, with its public key.
    pub continent_batch_id: String,
    pub continent_signer: String,
    #[serde(with = "base64_bytes")]
    pub continent_public_key: Vec<u8>,
    /// The city batch's entry in the continent batch and its audit path to the entries
    /// root.
    pub entry_index: u32,
    #[serde(with = "hex_list")]
    pub entry_proof: Vec<Hash32>,
}

/// What a proof that verifies shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub checkpoint: Checkpoint,
    /// The global node's address.
    pub signer: String,
    pub continent: String,
    pub continent_seq: u64,
    /// The continent node's address.
    pub continent_signer: String,
    pub entry: ContinentEntry,
}

impl CheckpointProof {
    /// Checks every link, with the global node's key `global_key` and the continent's key
    /// `continent_key` (the ones the proof presents unless the caller pins others).
    pub fn verify(&self, global_key: &[u8], continent_key: &[u8]) -> Result<Proven, String> {
        let wanted = parse_hex32(&self.batch_id).ok_or("batch_id is not 64 hex characters")?;
        let signed = self.checkpoint.signed();
        signed.verify(global_key).map_err(|_| {
            "BAD SIGNATURE: the checkpoint does not verify with the global node's key".to_string()
        })?;
        let cp = &signed.checkpoint;
        verify_inclusion(
            &cp.root,
            cp.size,
            self.record_index,
            &self.record,
            &self.record_proof,
        )
        .map_err(|e| {
            format!(
                "NOT PROVEN: record {} is not in the checkpoint's tree of {} records: {e}",
                self.record_index, cp.size
            )
        })?;
        let record = Record::decode(&self.record)
            .map_err(|e| format!("NOT PROVEN: the proven bytes are no log record: {e}"))?;
        if record.seq != self.record_index || record.kind != RecordKind::GlobalEntry {
            return Err(format!(
                "NOT PROVEN: the proven record is a {:?} record {}, not the continent batch at {}",
                record.kind, record.seq, self.record_index
            ));
        }
        let batch: SignedContinentBatch = decode(&record.payload)
            .map_err(|e| format!("NOT PROVEN: the record holds no continent batch: {e}"))?;
        if hex32(&batch.id()) != self.continent_batch_id.to_ascii_lowercase() {
            return Err(format!(
                "NOT PROVEN: the record holds continent batch {}, not {}",
                hex32(&batch.id()),
                self.continent_batch_id
            ));
        }
        batch.verify_signature(continent_key).map_err(|_| {
            format!(
                "BAD SIGNATURE: continent batch {} does not verify with the continent's key",
                self.continent_batch_id
            )
        })?;
        let header = &batch.batch.header;
        let entry = batch
            .batch
            .entries
            .get(self.entry_index as usize)
            .ok_or_else(|| {
                format!(
                    "NOT PROVEN: the continent batch has no entry {}",
                    self.entry_index
                )
            })?;
        if entry.header.id() != wanted {
            return Err(format!(
                "NOT PROVEN: entry {} of the continent batch is batch {}, not {}",
                self.entry_index,
                hex32(&entry.header.id()),
                self.batch_id
            ));
        }
        verify_inclusion(
            &header.entries_root,
            u64::from(header.entry_count),
            u64::from(self.entry_index),
            &entry.leaf_bytes(),
            &self.entry_proof,
        )
        .map_err(|e| {
            format!(
                "NOT PROVEN: entry {} is not under the continent batch's signed entries root: {e}",
                self.entry_index
            )
        })?;
        Ok(Proven {
            checkpoint: cp.clone(),
            signer: address_of(global_key),
            continent: header.continent.clone(),
            continent_seq: header.seq,
            continent_signer: address_of(continent_key),
            entry: entry.clone(),
        })
    }

    /// The proof as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a proof serializes")
    }
}

/// Base64 of a public key, for messages.
pub fn key_b64(key: &[u8]) -> String {
    B64.encode(key)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::SigningKey;
    use crate::federation::verify::{entries_root, entries_tree};
    use crate::messages::federation::{ContinentBatch, ContinentBatchHeader};
    use crate::messages::{Batch, FlagKind, Tier, encode};
    use crate::storage::immutable_log::ImmutableLog;

    /// A real proof: three city batches in a continent batch in a log with other records,
    /// a signed checkpoint over it.
    async fn proof() -> (CheckpointProof, SigningKey, SigningKey) {
        let global = SigningKey::from_seed([1; 32]).unwrap();
        let continent = SigningKey::from_seed([2; 32]).unwrap();
        let entries: Vec<ContinentEntry> = (0..3)
            .map(|seq| ContinentEntry {
                header: Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &[], 5).header,
                tier: Tier::Light,
            })
            .collect();
        let batch = ContinentBatch {
            header: ContinentBatchHeader {
                continent: "asia".into(),
                seq: 0,
                parents: vec![],
                entries_root: entries_root(&entries),
                entry_count: 3,
                created_at_ms: 6,
            },
            entries,
        };
        let signed = SignedContinentBatch::sign(&continent, "continent-asia", batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(dir.path()).unwrap());
        log.append(RecordKind::GlobalEntry, b"other".to_vec())
            .await
            .unwrap();
        let at = log
            .append(RecordKind::GlobalEntry, encode(&signed))
            .await
            .unwrap()
            .seq;
        log.append(RecordKind::Checkpoint, b"x".to_vec())
            .await
            .unwrap();
        let (size, root) = log.tree_head();
        let cp = SignedCheckpoint::sign(
            &global,
            Checkpoint {
                seq: 0,
                size,
                root,
                time_ms: 7,
                prev: [0; 32],
            },
        )
        .unwrap();
        let tree = entries_tree(&signed.batch.entries);
        let p = CheckpointProof {
            batch_id: hex32(&signed.batch.entries[1].header.id()),
            checkpoint: (&cp).into(),
            signer: address_of(global.public_key()),
            public_key: global.public_key().to_vec(),
            record_index: at,
            record: log.record_body(at).unwrap().unwrap(),
            record_proof: log.inclusion_proof(at, size).unwrap(),
            continent_batch_id: hex32(&signed.id()),
            continent_signer: address_of(continent.public_key()),
            continent_public_key: continent.public_key().to_vec(),
            entry_index: 1,
            entry_proof: tree.inclusion_proof(1, 3).unwrap(),
        };
        (p, global, continent)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proof_verifies_and_any_change_breaks_it() {
        let (p, global, continent) = proof().await;
        let proven = p
            .verify(global.public_key(), continent.public_key())
            .unwrap();
        assert_eq!(proven.entry.header.seq, 1);
        assert_eq!(proven.continent, "asia");
        // It survives JSON.
        let back: CheckpointProof = serde_json::from_str(&p.to_json()).unwrap();
        back.verify(global.public_key(), continent.public_key())
            .unwrap();

        let other = SigningKey::from_seed([3; 32]).unwrap();
        assert!(
            p.verify(other.public_key(), continent.public_key())
                .is_err()
        );
        assert!(p.verify(global.public_key(), other.public_key()).is_err());
        let mut tampered: Vec<CheckpointProof> = Vec::new();
        let mut t = p.clone();
        t.checkpoint.root[0] ^= 1;
        tampered.push(t);
        let mut t = p.clone();
        t.checkpoint.size += 1;
        tampered.push(t);
        let mut t = p.clone();
        t.record_proof[0][5] ^= 1;
        tampered.push(t);
        let mut t = p.clone();
        let n = t.record.len();
        t.record[n - 40] ^= 1;
        tampered.push(t);
        let mut t = p.clone();
        t.record_index = 0;
        tampered.push(t);
        let mut t = p.clone();
        t.entry_proof[0][0] ^= 1;
        tampered.push(t);
        let mut t = p.clone();
        t.entry_index = 2;
        tampered.push(t);
        let mut t = p.clone();
        t.batch_id = hex32(&[7; 32]);
        tampered.push(t);
        for (i, t) in tampered.iter().enumerate() {
            assert!(
                t.verify(global.public_key(), continent.public_key())
                    .is_err(),
                "tampered proof {i} verified"
            );
        }
    }
}

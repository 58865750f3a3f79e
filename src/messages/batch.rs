//! Batches: the unit that is stored, replicated and linked into the DAG.
//!
//! A batch id is BLAKE3 of its encoded header. The header commits to the body twice: the
//! Merkle root of the transaction ids (what a client's proof needs) and the hash of the
//! encoded body (so keys and signatures cannot be swapped under a valid root).
//!
//! The body is the transactions in batch order, then the batch's object dependency edges
//! ([`Dep`], `engines::objects`): both are under the body hash (wire version 2; version 1
//! bodies had no edges and are refused by [`super::decode`]).

use serde::{Deserialize, Serialize};

use super::objects::Dep;
use super::tx::{FlagKind, SignedTx, TxId, signed_bytes};
use crate::crypto::{self, Hash32};

pub type BatchId = Hash32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub city_id: String,
    /// Position in this city's sequence of batches, from 0.
    pub seq: u64,
    /// Batches this one builds on (the DAG edges). Empty only for a city's first batch.
    pub parents: Vec<BatchId>,
    pub merkle_root: Hash32,
    pub tx_count: u32,
    pub body_hash: Hash32,
    /// The highest-priority flag among the batch's transactions.
    pub flag: FlagKind,
    pub created_at_ms: u64,
}

/// A transaction as stored: the signed canonical JSON with the key and signature, enough
/// for anyone to re-verify it and recompute its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTx {
    pub canonical: String,
    /// (`serde_bytes`: encoded as a plain `Vec<u8>` is, only faster.)
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl StoredTx {
    pub fn id(&self) -> TxId {
        crypto::hash(&signed_bytes(&self.canonical))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub header: BatchHeader,
    pub body: Vec<StoredTx>,
    /// Dependency edges between the transactions (`to` and in-batch `from` are indexes in
    /// `body`); empty when no transaction declares objects.
    pub deps: Vec<Dep>,
}

/// The encoded body as it is hashed and sealed: the transactions, then the edges.
#[derive(Serialize)]
struct BodyRef<'a> {
    txs: &'a [StoredTx],
    deps: &'a [Dep],
}

#[derive(Deserialize)]
struct BodyOwned {
    txs: Vec<StoredTx>,
    deps: Vec<Dep>,
}

/// The bytes of a batch body (unversioned postcard: it travels inside a versioned
/// envelope or under a header that commits to it).
pub fn encode_body(txs: &[StoredTx], deps: &[Dep]) -> Vec<u8> {
    postcard::to_stdvec(&BodyRef { txs, deps }).expect("body encodes")
}

/// Reads bytes written by [`encode_body`].
pub fn decode_body(bytes: &[u8]) -> Result<(Vec<StoredTx>, Vec<Dep>), postcard::Error> {
    let body: BodyOwned = postcard::from_bytes(bytes)?;
    Ok((body.txs, body.deps))
}

impl Batch {
    /// Assembles a batch over `txs` (in order), with no dependency edges, and fills in its
    /// commitments.
    pub fn build(
        city_id: &str,
        seq: u64,
        parents: Vec<BatchId>,
        flag: FlagKind,
        txs: &[SignedTx],
        created_at_ms: u64,
    ) -> Self {
        Self::build_with_deps(city_id, seq, parents, flag, txs, Vec::new(), created_at_ms)
    }

    /// [`Batch::build`] with the dependency edges `deps`.
    pub fn build_with_deps(
        city_id: &str,
        seq: u64,
        parents: Vec<BatchId>,
        flag: FlagKind,
        txs: &[SignedTx],
        deps: Vec<Dep>,
        created_at_ms: u64,
    ) -> Self {
        let body: Vec<StoredTx> = txs
            .iter()
            .map(|t| StoredTx {
                canonical: t.canonical.clone(),
                public_key: t.public_key.clone(),
                signature: t.signature.clone(),
            })
            .collect();
        let ids: Vec<TxId> = txs.iter().map(|t| t.id).collect();
        let header = BatchHeader {
            city_id: city_id.to_owned(),
            seq,
            parents,
            merkle_root: crypto::merkle_root(&ids),
            tx_count: txs.len() as u32,
            body_hash: crypto::hash(&encode_body(&body, &deps)),
            flag,
            created_at_ms,
        };
        Self { header, body, deps }
    }

    pub fn id(&self) -> BatchId {
        self.header.id()
    }

    pub fn tx_ids(&self) -> Vec<TxId> {
        self.body.iter().map(StoredTx::id).collect()
    }

    /// Checks that the body matches the header's commitments. Storage nodes run this on
    /// every batch they accept.
    pub fn check_integrity(&self) -> Result<(), String> {
        if self.body.len() != self.header.tx_count as usize {
            return Err(format!(
                "header says {} transactions, body has {}",
                self.header.tx_count,
                self.body.len()
            ));
        }
        if crypto::merkle_root(&self.tx_ids()) != self.header.merkle_root {
            return Err("Merkle root does not match the transaction ids".into());
        }
        if crypto::hash(&encode_body(&self.body, &self.deps)) != self.header.body_hash {
            return Err("body hash does not match".into());
        }
        Ok(())
    }
}

impl BatchHeader {
    pub fn id(&self) -> BatchId {
        crypto::hash(&super::encode(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &crypto::SigningKey, nonce: u64) -> SignedTx {
        crate::testkit::signed_tx(key, nonce, FlagKind::FreshTx, 5)
    }

    #[test]
    fn id_commits_to_header_and_body() {
        let key = crypto::SigningKey::generate().unwrap();
        let txs = vec![signed(&key, 1), signed(&key, 2)];
        let b = Batch::build("tokyo", 0, vec![], FlagKind::FreshTx, &txs, 10);
        b.check_integrity().unwrap();
        let bytes = super::super::encode(&b);
        let back: Batch = super::super::decode(&bytes).unwrap();
        assert_eq!(back.id(), b.id());

        let mut tampered = b.clone();
        tampered.body[0].signature[0] ^= 1;
        assert!(tampered.check_integrity().is_err());

        let mut swapped = b.clone();
        swapped.body.swap(0, 1);
        assert!(swapped.check_integrity().is_err());

        // The edges are under the body hash too.
        let dep = Dep {
            from: crate::messages::DepFrom::InBatch(0),
            to: 1,
            object: "coin".into(),
            kind: crate::messages::DepKind::WriteAfterWrite,
        };
        let with =
            Batch::build_with_deps("tokyo", 0, vec![], FlagKind::FreshTx, &txs, vec![dep], 10);
        with.check_integrity().unwrap();
        assert_ne!(with.id(), b.id());
        let (txs_back, deps_back) = decode_body(&encode_body(&with.body, &with.deps)).unwrap();
        assert_eq!(
            (txs_back, deps_back),
            (with.body.clone(), with.deps.clone())
        );
        let mut stripped = with.clone();
        stripped.deps.clear();
        assert!(stripped.check_integrity().is_err());

        let mut child = Batch::build("tokyo", 1, vec![b.id()], FlagKind::FreshTx, &txs, 11);
        let id = child.id();
        child.header.parents.clear();
        assert_ne!(child.id(), id, "parents are part of the id");
    }
}

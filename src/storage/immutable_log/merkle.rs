//! The Merkle tree over the log's records: RFC 6962 in shape, BLAKE3 in substance.
//!
//! - leaf hash = `BLAKE3(0x00 ‖ record body)`, where the body is a frame's bytes after its
//!   length prefix (the record's postcard encoding, its chain hash included);
//! - node hash = `BLAKE3(0x01 ‖ left ‖ right)`;
//! - the tree of `n` records splits at the largest power of two below `n` (RFC 6962 §2.1);
//!   the empty tree's root is `BLAKE3("")`.
//!
//! BLAKE3 because every other digest of citychain (ids, record chain, batch Merkle roots)
//! is BLAKE3; one hash function, one set of assumptions.
//!
//! Proof shapes and their verification come from the `ct-merkle` crate: its
//! `indices_for_inclusion_proof` / `indices_for_consistency_proof` name the tree nodes a
//! proof needs, for trees it does not hold, and `RootHash::verify_*` checks proofs. The
//! node hashes themselves come from [`Tree`], which keeps the hash of every complete,
//! aligned subtree (`2n` hashes for `n` records), so the hash of any node of any tree
//! size is at most `O(log n)` combinations away and proofs cost `O(log² n)`. The log builds
//! it in memory while it scans the file at open and extends it after every fsync.

use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};

use crate::crypto::Hash32;

/// The digest ct-merkle hashes with: BLAKE3 through its `digest` traits.
type H = blake3::Hasher;

/// `BLAKE3(0x00 ‖ body)`: the leaf hash of a record whose body is `body`.
pub fn leaf_hash(body: &[u8]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(body);
    *h.finalize().as_bytes()
}

/// `BLAKE3(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The root of the empty tree, `BLAKE3("")`.
pub fn empty_root() -> Hash32 {
    crate::crypto::hash(&[])
}

/// The hash of every complete, aligned subtree of a log: `levels[k][i]` is the root of
/// leaves `i·2^k .. (i+1)·2^k`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    levels: Vec<Vec<Hash32>>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (leaves) in the tree.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash and every complete subtree it closes.
    pub fn push(&mut self, leaf: Hash32) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            if row.len() % 2 == 1 {
                return;
            }
            hash = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// Forgets every leaf from `size` on (and the subtrees over them).
    pub fn truncate(&mut self, size: u64) {
        for (k, row) in self.levels.iter_mut().enumerate() {
            row.truncate((size >> k) as usize);
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
    }

    /// The leaf hash of record `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash32> {
        self.levels.first()?.get(index as usize).copied()
    }

    /// The root of the tree of the first `size` records; `None` past the end.
    pub fn root(&self, size: u64) -> Option<Hash32> {
        match size {
            0 => Some(empty_root()),
            s if s <= self.len() => Some(self.range(0, s)),
            _ => None,
        }
    }

    /// RFC 6962's `MTH(D[start:end])` for a non-empty range within the tree whose `start`
    /// is a multiple of the largest power of two not above its length, as every subtree of
    /// an RFC 6962 tree is.
    fn range(&self, start: u64, end: u64) -> Hash32 {
        let n = end - start;
        debug_assert!(n > 0 && end <= self.len());
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(start >> k) as usize];
        }
        let split = 1u64 << (63 - (n - 1).leading_zeros());
        node_hash(
            &self.range(start, start + split),
            &self.range(start + split, end),
        )
    }

    /// The hash of node `index` of ct-merkle's array layout (leaves at even indices, a node
    /// of level `k` has `k` trailing one bits) in the tree of the first `size` records.
    fn node(&self, index: u64, size: u64) -> Hash32 {
        let level = index.trailing_ones();
        let first = (index >> (level + 1)) << level;
        let end = (first + (1u64 << level)).min(size);
        self.range(first, end)
    }

    /// The audit path of record `index` in the tree of the first `size` records, leaf to
    /// root (RFC 6962 `PATH(m, D[n])`).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeOutOfRange {
                size,
                records: self.len(),
            });
        }
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        Ok(ct_merkle::indices_for_inclusion_proof(size, index)
            .into_iter()
            .map(|i| self.node(i, size))
            .collect())
    }

    /// The proof that the tree of the first `from` records is a prefix of the tree of the
    /// first `to` (RFC 6962 `PROOF(m, D[n])`).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash32>, ProofError> {
        if to > self.len() {
            return Err(ProofError::SizeOutOfRange {
                size: to,
                records: self.len(),
            });
        }
        if from == 0 || from > to {
            return Err(ProofError::BadRange { from, to });
        }
        Ok(ct_merkle::indices_for_consistency_proof(from, to - from)
            .into_iter()
            .map(|i| self.node(i, to))
            .collect())
    }
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} exceeds the log's {records} records")]
    SizeOutOfRange { size: u64, records: u64 },
    #[error("a consistency proof needs 0 < from ≤ to, not from {from} to {to}")]
    BadRange { from: u64, to: u64 },
    #[error("the proof does not lead to the root: {0}")]
    Invalid(String),
}

fn root_hash(root: &Hash32, size: u64) -> RootHash<H> {
    RootHash::new((*root).into(), size)
}

fn concat(proof: &[Hash32]) -> Vec<u8> {
    proof.iter().flatten().copied().collect()
}

/// Checks that `record` (a record body) is leaf `index` of the tree of `size` leaves whose
/// root is `root`.
pub fn verify_inclusion(
    root: &Hash32,
    size: u64,
    index: u64,
    record: &[u8],
    proof: &[Hash32],
) -> Result<(), ProofError> {
    let proof = InclusionProof::<H>::try_from_bytes(concat(proof))
        .map_err(|e| ProofError::Invalid(e.to_string()))?;
    root_hash(root, size)
        .verify_inclusion(&record, index, &proof)
        .map_err(|e| ProofError::Invalid(e.to_string()))
}

/// Checks that the tree of `from` leaves with root `from_root` is a prefix of the tree of
/// `to` leaves with root `to_root`. Equal sizes need an empty proof and equal roots.
pub fn verify_consistency(
    from: u64,
    from_root: &Hash32,
    to: u64,
    to_root: &Hash32,
    proof: &[Hash32],
) -> Result<(), ProofError> {
    if from == 0 || from > to {
        return Err(ProofError::BadRange { from, to });
    }
    if from == to {
        return if proof.is_empty() && from_root == to_root {
            Ok(())
        } else {
            Err(ProofError::Invalid(
                "equal sizes need equal roots and an empty proof".into(),
            ))
        };
    }
    let proof = ConsistencyProof::<H>::try_from_bytes(concat(proof))
        .map_err(|e| ProofError::Invalid(e.to_string()))?;
    root_hash(to_root, to)
        .verify_consistency(&root_hash(from_root, from), &proof)
        .map_err(|e| ProofError::Invalid(e.to_string()))
}

/// Keeps ct-merkle's digest and ours in step: its hash of a leaf must be [`leaf_hash`].
#[cfg(test)]
pub(super) fn ct_merkle_leaf_hash(body: &[u8]) -> Hash32 {
    use ct_merkle::digest::Digest;
    let mut h = <H as Digest>::new_with_prefix([0x00]);
    Digest::update(&mut h, body);
    Digest::finalize(h).into()
}

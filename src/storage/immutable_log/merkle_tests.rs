//! The log's Merkle tree: RFC 6962 roots, and proofs that verify exactly when they should.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use proptest::prelude::*;

use super::merkle::*;
use crate::crypto::Hash32;

fn record(i: u64) -> Vec<u8> {
    format!("record {i}").into_bytes()
}

fn tree_of(n: u64) -> Tree {
    let mut tree = Tree::new();
    for i in 0..n {
        tree.push(leaf_hash(&record(i)));
    }
    tree
}

/// RFC 6962 §2.1, `MTH(D[n])`, written the way the RFC states it.
fn mth(leaves: &[Vec<u8>]) -> Hash32 {
    match leaves.len() {
        0 => crate::crypto::hash(&[]),
        1 => leaf_hash(&leaves[0]),
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

#[test]
fn leaf_and_node_hashes_are_the_rfc_6962_prefixed_blake3() {
    let body = b"a record body";
    assert_eq!(
        leaf_hash(body),
        crate::crypto::hash(&[&[0x00][..], body].concat())
    );
    assert_eq!(leaf_hash(body), ct_merkle_leaf_hash(body));
    let (l, r) = ([1u8; 32], [2u8; 32]);
    assert_eq!(
        node_hash(&l, &r),
        crate::crypto::hash(&[&[0x01][..], &l, &r].concat())
    );
    assert_eq!(Tree::new().root(0), Some(crate::crypto::hash(b"")));
}

#[test]
fn every_prefix_root_is_the_rfc_6962_tree_hash() {
    let leaves: Vec<_> = (0..70).map(record).collect();
    let tree = tree_of(70);
    for size in 0..=70 {
        assert_eq!(
            tree.root(size),
            Some(mth(&leaves[..size as usize])),
            "size {size}"
        );
    }
    assert_eq!(tree.root(71), None);
}

#[test]
fn roots_and_proofs_equal_ct_merkles_in_memory_tree() {
    let mut theirs = MemoryBackedTree::<blake3::Hasher, Vec<u8>>::new();
    let mut ours = Tree::new();
    for n in 1..=40u64 {
        theirs.push(record(n - 1));
        ours.push(leaf_hash(&record(n - 1)));
        assert_eq!(
            ours.root(n).unwrap().as_slice(),
            theirs.root().as_bytes().as_slice(),
            "root of {n}"
        );
        for index in 0..n {
            let proof: Vec<u8> = ours.inclusion_proof(index, n).unwrap().concat();
            assert_eq!(
                proof,
                theirs.prove_inclusion(index as usize).as_bytes(),
                "inclusion of {index} in {n}"
            );
        }
        for additions in 0..n {
            let proof: Vec<u8> = ours.consistency_proof(n - additions, n).unwrap().concat();
            assert_eq!(
                proof,
                theirs.prove_consistency(additions as usize).as_bytes(),
                "consistency of {} with {n}",
                n - additions
            );
        }
    }
}

#[test]
fn truncating_gives_the_tree_of_the_prefix() {
    for n in 0..40 {
        for k in 0..=n {
            let mut tree = tree_of(n);
            tree.truncate(k);
            assert_eq!(tree, tree_of(k), "{n} cut to {k}");
        }
    }
}

#[test]
fn proofs_outside_the_tree_are_refused() {
    let tree = tree_of(5);
    assert_eq!(
        tree.inclusion_proof(5, 5),
        Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        tree.inclusion_proof(0, 6),
        Err(ProofError::SizeOutOfRange {
            size: 6,
            records: 5
        })
    );
    assert_eq!(
        tree.consistency_proof(0, 3),
        Err(ProofError::BadRange { from: 0, to: 3 })
    );
    assert_eq!(
        tree.consistency_proof(4, 3),
        Err(ProofError::BadRange { from: 4, to: 3 })
    );
    assert!(matches!(
        tree.consistency_proof(2, 6),
        Err(ProofError::SizeOutOfRange { .. })
    ));
    // Equal sizes: an empty proof, and only equal roots pass.
    let root = tree.root(3).unwrap();
    assert_eq!(tree.consistency_proof(3, 3), Ok(vec![]));
    verify_consistency(3, &root, 3, &root, &[]).unwrap();
    assert!(verify_consistency(3, &root, 3, &[0; 32], &[]).is_err());
}

/// One byte of one hash of a proof, flipped.
fn tamper(proof: &[Hash32], which: usize, byte: usize) -> Vec<Hash32> {
    let mut bad = proof.to_vec();
    let i = which % bad.len();
    bad[i][byte % 32] ^= 0x01;
    bad
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_inclusion_proof_verifies_and_a_tampered_one_fails(
        n in 1u64..600,
        picks in (any::<u64>(), any::<u64>(), any::<usize>(), any::<usize>()),
    ) {
        let (a, b, which, byte) = picks;
        let tree = tree_of(n);
        let size = 1 + a % n;
        let index = b % size;
        let root = tree.root(size).unwrap();
        let proof = tree.inclusion_proof(index, size).unwrap();
        prop_assert!(verify_inclusion(&root, size, index, &record(index), &proof).is_ok());

        // Another record, another index, another size or another root: refused.
        prop_assert!(verify_inclusion(&root, size, index, &record(index + 1), &proof).is_err());
        if size > 1 {
            let other = (index + 1) % size;
            prop_assert!(verify_inclusion(&root, size, other, &record(index), &proof).is_err());
        }
        // The root of another size (a proof does not bind the size alone: the signed
        // root does).
        if let Some(other) = tree.root(size - 1).filter(|_| size > 1) {
            prop_assert!(verify_inclusion(&other, size, index, &record(index), &proof).is_err());
        }
        let mut wrong_root = root;
        wrong_root[byte % 32] ^= 0x80;
        prop_assert!(verify_inclusion(&wrong_root, size, index, &record(index), &proof).is_err());
        if !proof.is_empty() {
            let bad = tamper(&proof, which, byte);
            prop_assert!(verify_inclusion(&root, size, index, &record(index), &bad).is_err());
            // A hash missing or added is refused too.
            prop_assert!(verify_inclusion(&root, size, index, &record(index), &proof[1..]).is_err());
        }
        let mut longer = proof.clone();
        longer.push([0; 32]);
        prop_assert!(verify_inclusion(&root, size, index, &record(index), &longer).is_err());
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_tampered_one_fails(
        n in 1u64..600,
        picks in (any::<u64>(), any::<u64>(), any::<usize>(), any::<usize>()),
    ) {
        let (a, b, which, byte) = picks;
        let tree = tree_of(n);
        let to = 1 + a % n;
        let from = 1 + b % to;
        let (from_root, to_root) = (tree.root(from).unwrap(), tree.root(to).unwrap());
        let proof = tree.consistency_proof(from, to).unwrap();
        prop_assert!(verify_consistency(from, &from_root, to, &to_root, &proof).is_ok());

        // A different old tree (one record changed) is not a prefix of the new one.
        let mut other = Tree::new();
        for i in 0..from {
            other.push(leaf_hash(&record(if i == from - 1 { i + 1000 } else { i })));
        }
        let forged_root = other.root(from).unwrap();
        prop_assert!(verify_consistency(from, &forged_root, to, &to_root, &proof).is_err());
        let mut wrong_new = to_root;
        wrong_new[byte % 32] ^= 0x01;
        prop_assert!(verify_consistency(from, &from_root, to, &wrong_new, &proof).is_err());
        if !proof.is_empty() {
            let bad = tamper(&proof, which, byte);
            prop_assert!(verify_consistency(from, &from_root, to, &to_root, &bad).is_err());
        }
        // Roots swapped: the newer tree is no prefix of the older.
        if from < to && from_root != to_root {
            prop_assert!(verify_consistency(from, &to_root, to, &from_root, &proof).is_err());
        }
    }
}

//! Merkle root over transaction ids, RFC 6962 style (leaf prefix 0x00, node prefix 0x01).
//!
//! A batch only needs the root, not proofs, so these few lines stand in for a crate; the
//! immutable log's inclusion proofs are where a full RFC 6962 implementation belongs.

use super::Hash32;

/// Root of the Merkle tree whose leaves are `leaves`, in order. The empty tree's root is
/// BLAKE3 of nothing, as in RFC 6962.
pub fn merkle_root(leaves: &[Hash32]) -> Hash32 {
    if leaves.is_empty() {
        return super::hash(&[]);
    }
    let mut level: Vec<Hash32> = leaves.iter().map(|l| node(0x00, &[l])).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => node(0x01, &[a, b]),
                // An odd node is promoted unchanged (RFC 6962 splits at the largest power of
                // two, which yields the same root for the left-filled trees built here).
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

fn node(prefix: u8, parts: &[&Hash32]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(&[prefix]);
    for p in parts {
        h.update(*p);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_depends_on_every_leaf_and_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let c = [3u8; 32];
        let r = merkle_root(&[a, b, c]);
        assert_ne!(r, merkle_root(&[a, c, b]));
        assert_ne!(r, merkle_root(&[a, b]));
        assert_ne!(
            merkle_root(&[a]),
            a,
            "leaves are prefixed, never the raw id"
        );
        assert_eq!(r, merkle_root(&[a, b, c]));
    }
}

use proptest::prelude::*;

use super::*;
use crate::crypto::SigningKey;
use crate::messages::PohAck;

const BATCH: BatchId = [7; 32];

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn expected(pieces: &[Piece]) -> Expected {
    let key = SigningKey::from_seed([1; 32]).unwrap();
    let acks: Vec<PohAck> = pieces
        .iter()
        .map(|p| PohAck::sign_piece(&key, "l", BATCH, p.header.piece, p.header.hash, 1).unwrap())
        .collect();
    Expected::from_acks(BATCH, &acks).expect("the acks agree")
}

/// Every subset of `n` indices with `k` members.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u64..1 << n)
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn any_k_of_k_plus_m_pieces_rebuild_the_sealed_bytes() {
    for (k, m) in [(4u8, 2u8), (1, 1), (2, 3), (3, 1)] {
        let coding = Coding::new(k, m).unwrap();
        for len in [1usize, 2, 7, 1000, 1024 * 5 + 3] {
            let sealed = bytes(len, len as u8);
            let pieces = coding.encode(BATCH, &sealed).unwrap();
            assert_eq!(pieces.len(), coding.pieces());
            let exp = expected(&pieces);
            for subset in subsets(coding.pieces(), k.into()) {
                let chosen = subset.iter().map(|&i| (i as u8, pieces[i].clone()));
                assert_eq!(
                    exp.rebuild(chosen).unwrap(),
                    sealed,
                    "k {k}, m {m}, len {len}, pieces {subset:?}"
                );
            }
            // Fewer than k never rebuild.
            let few = pieces[..usize::from(k) - 1]
                .iter()
                .map(|p| (p.index(), p.clone()));
            assert!(matches!(
                exp.rebuild(few),
                Err(PieceError::TooFew { valid, needed, .. }) if valid == usize::from(k) - 1 && needed == usize::from(k)
            ));
        }
    }
}

#[test]
fn pieces_are_about_a_kth_of_the_batch_and_self_describing() {
    let coding = Coding::new(4, 2).unwrap();
    let sealed = bytes(1_000_001, 3);
    let pieces = coding.encode(BATCH, &sealed).unwrap();
    for (i, p) in pieces.iter().enumerate() {
        assert_eq!(p.index() as usize, i);
        assert_eq!(p.data.len(), 250_002, "a quarter, rounded up to even");
        let back = Piece::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(&back, p);
        assert_eq!(back.header.batch_id, BATCH);
        assert_eq!(back.header.piece.sealed_len, 1_000_001);
        assert_eq!(back.header.piece.sealed_hash, crypto::hash(&sealed));
        assert_eq!(back.header.piece.coding, coding);
    }
    // Cutting the same bytes again gives the same pieces: a lost piece is regenerated
    // exactly as it was acked.
    assert_eq!(coding.encode(BATCH, &sealed).unwrap(), pieces);
}

fn corrupt_copy(bad: &Piece, rehashed: &Piece, kind: &str) -> Piece {
    if kind == "bad" {
        bad.clone()
    } else {
        rehashed.clone()
    }
}

#[test]
fn a_corrupted_piece_is_refused_never_used() {
    let coding = Coding::new(4, 2).unwrap();
    let sealed = bytes(40_000, 9);
    let pieces = coding.encode(BATCH, &sealed).unwrap();
    let exp = expected(&pieces);

    // One byte of a piece's data changed, its header left alone: its hash gives it away.
    let mut bad = pieces[1].clone();
    bad.data[17] ^= 1;
    assert_eq!(Piece::from_bytes(&bad.to_bytes()), Err(PieceError::Hash));
    // With the header's hash "fixed" too, it is still not what its holder acked.
    let mut rehashed = bad.clone();
    rehashed.header.hash = crypto::hash(&rehashed.data);
    assert!(Piece::from_bytes(&rehashed.to_bytes()).is_ok());
    assert_eq!(
        exp.refuse(1, &rehashed).as_deref(),
        Some("not the piece its holder acked")
    );
    // Offered first, either is refused and the rebuild uses sound pieces only.
    for corrupt_kind in ["bad", "rehashed"] {
        let corrupt = corrupt_copy(&bad, &rehashed, corrupt_kind);
        let offered = std::iter::once((1u8, corrupt))
            .chain([0usize, 2, 3, 4].map(|i| (i as u8, pieces[i].clone())));
        assert_eq!(exp.rebuild(offered).unwrap(), sealed);
        // With too few sound ones, the rebuild fails and says which piece was refused.
        let offered = std::iter::once((1u8, corrupt_copy(&bad, &rehashed, corrupt_kind)))
            .chain([0usize, 2, 3].map(|i| (i as u8, pieces[i].clone())));
        match exp.rebuild(offered) {
            Err(PieceError::TooFew {
                valid: 3,
                needed: 4,
                refused,
            }) => {
                assert_eq!(refused.len(), 1);
                assert_eq!(refused[0].0, 1);
            }
            other => panic!("expected TooFew, got {other:?}"),
        }
    }

    // A sound piece offered under another index, or of another batch, is refused.
    assert!(exp.refuse(2, &pieces[1]).is_some());
    let mut other_batch = pieces[1].clone();
    other_batch.header.batch_id = [8; 32];
    assert!(exp.refuse(1, &other_batch).is_some());

    // Pieces that were never acked (no hash on record) but are consistent still count;
    // if they are consistent with each other yet not this batch, the whole's hash
    // catches it.
    let mut unacked = exp.clone();
    unacked.hashes.clear();
    let forged: Vec<Piece> = {
        let other = bytes(40_000, 10);
        let mut ps = coding.encode(BATCH, &other).unwrap();
        for p in &mut ps {
            // Claim to be pieces of the acked whole.
            p.header.piece.sealed_hash = exp.sealed_hash;
        }
        ps
    };
    assert_eq!(
        unacked.rebuild(forged.into_iter().map(|p| (p.index(), p))),
        Err(PieceError::WrongWhole)
    );
}

#[test]
fn wrong_codings_and_malformed_pieces_are_refused() {
    for (k, m) in [(0u8, 2u8), (4, 0), (0, 0), (60, 5), (64, 64)] {
        assert!(
            matches!(Coding::new(k, m), Err(PieceError::Coding { .. })),
            "{k}+{m}"
        );
        let coding = Coding {
            data_pieces: k,
            parity_pieces: m,
        };
        assert!(coding.encode(BATCH, b"abc").is_err(), "{k}+{m}");
    }
    let coding = Coding::new(4, 2).unwrap();
    assert_eq!(coding.encode(BATCH, b""), Err(PieceError::Empty));
    let pieces = coding.encode(BATCH, &bytes(999, 1)).unwrap();
    let exp = expected(&pieces);

    // A piece of a batch cut another way is refused by the expectation.
    let other = Coding::new(3, 3)
        .unwrap()
        .encode(BATCH, &bytes(999, 1))
        .unwrap();
    assert!(exp.refuse(0, &other[0]).is_some());
    assert!(matches!(
        exp.rebuild(other.iter().map(|p| (p.index(), p.clone()))),
        Err(PieceError::TooFew { valid: 0, .. })
    ));

    let refused = |p: &Piece| Piece::from_bytes(&p.to_bytes()).unwrap_err();
    let mut p = pieces[0].clone();
    p.header.piece.index = 6;
    assert_eq!(
        refused(&p),
        PieceError::Index {
            index: 6,
            pieces: 6
        }
    );
    let mut p = pieces[0].clone();
    p.header.piece.coding.parity_pieces = 0;
    assert!(matches!(refused(&p), PieceError::Coding { .. }));
    let mut p = pieces[0].clone();
    p.data.push(0);
    p.header.hash = crypto::hash(&p.data);
    assert!(matches!(refused(&p), PieceError::Length { .. }));
    let mut p = pieces[0].clone();
    p.header.piece.sealed_len = 5_000;
    assert!(matches!(refused(&p), PieceError::Length { .. }));
    let mut p = pieces[0].clone();
    p.header.piece.sealed_len = 0;
    assert_eq!(refused(&p), PieceError::Empty);
    // Not canonical: trailing bytes; garbage; another wire version.
    let mut trailing = pieces[0].to_bytes();
    trailing.push(0);
    assert!(Piece::from_bytes(&trailing).is_err());
    assert!(Piece::from_bytes(b"garbage").is_err());
    let mut other_version = pieces[0].to_bytes();
    other_version[0] = 9;
    assert!(matches!(
        Piece::from_bytes(&other_version),
        Err(PieceError::Wire(_))
    ));
}

#[test]
fn acks_that_disagree_make_no_expectation() {
    let key = SigningKey::from_seed([1; 32]).unwrap();
    let coding = Coding::new(4, 2).unwrap();
    let a = coding.encode(BATCH, &bytes(500, 1)).unwrap();
    let b = coding.encode(BATCH, &bytes(500, 2)).unwrap();
    let ack =
        |p: &Piece| PohAck::sign_piece(&key, "l", BATCH, p.header.piece, p.header.hash, 1).unwrap();
    assert!(Expected::from_acks(BATCH, &[ack(&a[0]), ack(&b[1])]).is_none());
    assert!(Expected::from_acks(BATCH, &[ack(&a[0]), ack(&a[1])]).is_some());
    assert!(Expected::from_acks([9; 32], &[ack(&a[0])]).is_none());
    assert!(Expected::from_acks(BATCH, &[]).is_none());
    let whole = PohAck::sign(&key, "l", BATCH, b"x", 1).unwrap();
    assert!(Expected::from_acks(BATCH, &[ack(&a[0]), whole]).is_none());
}

#[test]
fn pieces_found_anywhere_rebuild_the_batches_they_hold_k_of() {
    let coding = Coding::new(4, 2).unwrap();
    let a = bytes(3000, 1);
    let b = bytes(5000, 2);
    let pa = coding.encode([1; 32], &a).unwrap();
    let pb = coding.encode([2; 32], &b).unwrap();
    // All of a's (one twice), three of b's, and a damaged one of b's.
    let mut damaged = pb[4].clone();
    damaged.data[0] ^= 1;
    let found = pa
        .iter()
        .cloned()
        .chain([pa[2].clone()])
        .chain(pb[..3].iter().cloned())
        .chain([damaged]);
    let out = rebuild_found(found);
    assert_eq!(out.len(), 2);
    assert_eq!(out[&[1; 32]].as_deref(), Ok(&a[..]));
    assert!(matches!(
        out[&[2; 32]],
        Err(PieceError::TooFew {
            valid: 3,
            needed: 4,
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any k pieces, in any order, rebuild exactly the bytes that were cut.
    #[test]
    fn any_k_pieces_in_any_order_rebuild(
        sealed in proptest::collection::vec(any::<u8>(), 1..5000),
        k in 1u8..=8,
        m in 1u8..=6,
        seed in any::<u64>(),
    ) {
        let coding = Coding::new(k, m).unwrap();
        let pieces = coding.encode(BATCH, &sealed).unwrap();
        let exp = expected(&pieces);
        let mut order: Vec<usize> = (0..coding.pieces()).collect();
        // Fisher-Yates driven by the seed (splitmix64).
        let mut state = seed;
        for i in (1..order.len()).rev() {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            order.swap(i, (z % (i as u64 + 1)) as usize);
        }
        let chosen = order[..usize::from(k)].iter().map(|&i| (i as u8, pieces[i].clone()));
        prop_assert_eq!(exp.rebuild(chosen).unwrap(), sealed);
    }

    /// A change anywhere in a piece's encoding is refused or leaves the piece unchanged;
    /// a piece that passes is never one whose data differs from what was acked.
    #[test]
    fn damaged_pieces_never_pass_as_acked(
        sealed in proptest::collection::vec(any::<u8>(), 1..3000),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        which in 0usize..6,
    ) {
        let coding = Coding::new(4, 2).unwrap();
        let pieces = coding.encode(BATCH, &sealed).unwrap();
        let exp = expected(&pieces);
        let mut raw = pieces[which].to_bytes();
        let i = at.index(raw.len());
        raw[i] ^= flip;
        if let Ok(p) = Piece::from_bytes(&raw) {
            prop_assert!(exp.refuse(which as u8, &p).is_some() || p == pieces[which]);
        }
    }
}

/// The light tier's cost per batch at the default batch size (256 transactions): bytes
/// held per transaction with whole copies (the four light nodes a batch went to before
/// erasure coding) and with pieces, and the time to cut a sealed batch into its pieces
/// and to rebuild it (from the four data pieces, and from two data and two parity
/// pieces, the worst case). Measured, not asserted:
/// `cargo test --release -p citychain --lib erasure_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn erasure_cost_at_the_default_batch_size() {
    use crate::crypto::vault::VaultKey;
    use crate::messages::Sealer;

    let plain = crate::testkit::full_default_batch();
    let n = plain.body.len();
    let erasure = crate::config::ErasureConfig::default();
    let coding = erasure.coding().unwrap();
    let holder = VaultKey::generate().unwrap();
    let (envelope, _) = Sealer::new("asia", holder.public().clone())
        .seal(&plain)
        .unwrap();
    let sealed = envelope.to_bytes();
    let id = BATCH;
    let time = |f: &mut dyn FnMut()| crate::testkit::time_rounds(200, f);
    let pieces = coding.encode(id, &sealed).unwrap();
    let exp = expected(&pieces);
    let piece_bytes: usize = pieces.iter().map(|p| p.to_bytes().len()).sum();
    let (encode_p50, encode_mean) = time(&mut || {
        let ps = coding.encode(id, &sealed).unwrap();
        std::hint::black_box(ps.iter().map(Piece::to_bytes).count());
    });
    let data_only: Vec<(u8, Piece)> = pieces[..4].iter().map(|p| (p.index(), p.clone())).collect();
    let (fast_p50, fast_mean) = time(&mut || {
        std::hint::black_box(exp.rebuild(data_only.clone()).unwrap());
    });
    let with_parity: Vec<(u8, Piece)> = [2usize, 3, 4, 5]
        .iter()
        .map(|&i| (i as u8, pieces[i].clone()))
        .collect();
    let (slow_p50, slow_mean) = time(&mut || {
        std::hint::black_box(exp.rebuild(with_parity.clone()).unwrap());
    });
    let whole_copies = 4;
    println!(
        "batch of {n} transactions: {} bytes sealed; k = {}, m = {}, {} pieces of {} bytes encoded",
        sealed.len(),
        coding.data_pieces,
        coding.parity_pieces,
        pieces.len(),
        pieces[0].to_bytes().len()
    );
    println!(
        "light tier bytes per transaction: whole copies on {whole_copies} nodes {:.0}, pieces on {} nodes {:.0} ({:.2}x the sealed bytes instead of {whole_copies}x)",
        (whole_copies * sealed.len()) as f64 / n as f64,
        pieces.len(),
        piece_bytes as f64 / n as f64,
        piece_bytes as f64 / sealed.len() as f64,
    );
    for (what, p50, mean) in [
        ("cut into 6 pieces", encode_p50, encode_mean),
        ("rebuild, 4 data pieces", fast_p50, fast_mean),
        ("rebuild, 2 data + 2 parity", slow_p50, slow_mean),
    ] {
        println!(
            "{what:<28} p50 {:>8.1} µs  mean {:>8.1} µs",
            p50.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
    }
}

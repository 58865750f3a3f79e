//! Fuzzing entry points: one per decoder of bytes that arrive from the network or from
//! disk. Each takes arbitrary bytes, must never panic, and asserts what must hold of
//! anything the decoder accepts (it re-encodes to what it decoded, ids are what they
//! claim, a verifier answers instead of crashing).
//!
//! Two drivers run them: `fuzz/` holds cargo-fuzz targets (libFuzzer, coverage-guided,
//! nightly; `scripts/fuzz` runs them), and the property tests below run them on stable
//! Rust in every `cargo test`, on random bytes and on valid encodings with random damage.
//! Compiled only for those two (`cfg(test)` or cargo-fuzz's `cfg(fuzzing)`).

use std::io::Write;

use crate::crypto;
use crate::messages::{
    self, Batch, Capsule, HoldChallenge, HoldProof, Piece, PohAck, SealedEnvelope, SignedTx,
};
use crate::storage::city_store::{BatchRecord, TxRecord};
use crate::storage::immutable_log::heads::HeadsFile;
use crate::storage::immutable_log::{ImmutableLog, LOG_FILE, Record};

/// A batch body as a storage node receives it (`PUT /internal/v1/batches/{id}`): a sealed
/// envelope, or one piece of it (`…/pieces/{index}`); and the plain batch and the capsule a
/// city reads back from its tiers and vault.
pub fn batch(data: &[u8]) {
    if let Ok(piece) = Piece::from_bytes(data) {
        assert_eq!(
            piece.to_bytes(),
            data,
            "a piece accepted is its own encoding"
        );
        // A piece accepted alone rebuilds nothing unless k = 1, and then only what its
        // own sealed hash names.
        for (_, rebuilt) in messages::piece::rebuild_found([piece.clone()]) {
            if let Ok(bytes) = rebuilt {
                assert_eq!(crypto::hash(&bytes), piece.header.piece.sealed_hash);
            }
        }
    }
    if let Ok(envelope) = SealedEnvelope::from_bytes(data) {
        let again = SealedEnvelope::from_bytes(&envelope.to_bytes()).expect("re-encoding decodes");
        assert_eq!(
            again.id(),
            envelope.id(),
            "an envelope survives re-encoding"
        );
    }
    if let Ok(capsule) = messages::decode::<Capsule>(data) {
        assert_eq!(
            messages::decode::<Capsule>(&messages::encode(&capsule)).ok(),
            Some(capsule)
        );
    }
    let Ok(batch) = messages::decode::<Batch>(data) else {
        return;
    };
    let again = messages::encode(&batch);
    let back: Batch = messages::decode(&again).expect("a re-encoded batch decodes");
    assert_eq!(back, batch, "a batch survives re-encoding");
    // The integrity check answers for anything that decodes.
    let _ = batch.check_integrity();
    let _ = batch.tx_ids();
}

/// An ack, a possession proof or a challenge as a city or a storage node receives it.
pub fn ack(data: &[u8]) {
    let key = test_key();
    if let Ok(ack) = messages::decode::<PohAck>(data) {
        assert_eq!(
            messages::decode::<PohAck>(&messages::encode(&ack)).ok(),
            Some(ack.clone())
        );
        let _ = ack.verify(
            &ack.holder_id,
            key.public_key(),
            &ack.batch_id,
            &ack.held_hash,
            0,
        );
    }
    if let Ok(ack) = messages::decode::<PohAck>(data)
        && let Some(piece) = ack.piece
    {
        let _ = ack.verify_piece(
            &ack.holder_id,
            key.public_key(),
            &ack.batch_id,
            &piece,
            &ack.held_hash,
            0,
        );
    }
    if let Ok(proof) = messages::decode::<HoldProof>(data) {
        let challenge = HoldChallenge { nonce: [7; 32] };
        let a = &proof.ack;
        let _ = proof.verify(
            &a.holder_id,
            key.public_key(),
            &a.batch_id,
            &a.held_hash,
            &challenge,
            a.time_ms,
        );
    }
    if let Ok(challenge) = messages::decode::<HoldChallenge>(data) {
        let len = u64::from_le_bytes(challenge.nonce[..8].try_into().expect("8 bytes"));
        let offsets = challenge.chunk_offsets(len);
        assert!(
            offsets.iter().all(|&o| o < len.max(1)),
            "offsets stay inside the bytes"
        );
    }
}

/// A `POST /v1/tx` body.
pub fn tx_request(data: &[u8]) {
    let Ok(tx) = SignedTx::from_request_bytes(data) else {
        return;
    };
    // Accepted means signed: the id is the hash of exactly the signed bytes.
    assert_eq!(tx.id, crypto::hash(&messages::signed_bytes(&tx.canonical)));
}

/// The city's records in `city.redb` (postcard values).
pub fn city_record(data: &[u8]) {
    if let Ok(rec) = postcard::from_bytes::<BatchRecord>(data) {
        let again = postcard::to_stdvec(&rec).expect("encodes");
        assert_eq!(postcard::from_bytes::<BatchRecord>(&again).ok(), Some(rec));
    }
    if let Ok(rec) = postcard::from_bytes::<TxRecord>(data) {
        let again = postcard::to_stdvec(&rec).expect("encodes");
        assert_eq!(postcard::from_bytes::<TxRecord>(&again).ok(), Some(rec));
    }
}

/// A submission as a continent or the global node receives it, and what they keep on their
/// logs: decoded, re-encoded alike, and checked (signatures, certificates) without a panic.
pub fn federation(data: &[u8]) {
    use crate::messages::federation::{
        CitySubmission, ContinentRecord, ContinentSubmission, SignedCheckpoint,
    };
    let key = test_key();
    if let Ok(sub) = messages::decode::<CitySubmission>(data) {
        assert_eq!(
            messages::decode::<CitySubmission>(&messages::encode(&sub)).ok(),
            Some(sub.clone())
        );
        for b in &sub.batches {
            let _ = b.verify_signature(key.public_key());
            let _ = b.certificate.check(
                &b.id(),
                |_| Some((messages::Tier::Light, key.public_key())),
                |_| 1,
            );
        }
    }
    if let Ok(sub) = messages::decode::<ContinentSubmission>(data) {
        assert_eq!(
            messages::decode::<ContinentSubmission>(&messages::encode(&sub)).ok(),
            Some(sub.clone())
        );
        for b in &sub.batches {
            let _ = b.verify_signature(key.public_key());
            let _ = crate::federation::verify::entries_root(&b.batch.entries);
        }
    }
    if let Ok(rec) = messages::decode::<ContinentRecord>(data) {
        let _ = rec.batch.id();
    }
    if let Ok(cp) = messages::decode::<SignedCheckpoint>(data) {
        let _ = cp.verify(key.public_key());
        let _ = cp.hash();
    }
}

/// An immutable log file as found on disk: verifying and opening it answer (open may cut a
/// torn tail or refuse damage); the same bytes as one record's body, and as the signed
/// heads file kept beside the log, are refused or accepted without a panic.
pub fn log_file(data: &[u8]) {
    if let Ok(record) = Record::decode(data) {
        assert!(record.payload.len() <= data.len());
    }
    let dir = scratch_dir();
    let heads = HeadsFile::path_in(&dir);
    std::fs::write(&heads, data).expect("writing the scratch heads file");
    let _ = HeadsFile::load(&heads);
    let _ = std::fs::remove_file(&heads);
    std::fs::File::create(dir.join(LOG_FILE))
        .and_then(|mut f| f.write_all(data))
        .expect("writing the scratch log");
    let _ = ImmutableLog::verify(&dir);
    if let Ok(log) = ImmutableLog::open(&dir) {
        let _ = log.head();
        drop(log);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn test_key() -> &'static crypto::SigningKey {
    static KEY: std::sync::OnceLock<crypto::SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| crypto::SigningKey::from_seed([1; 32]).expect("a key"))
}

/// A fresh directory under the system's temp dir, unique in this process.
fn scratch_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("citychain-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::messages::FlagKind;

    /// Damage done to a valid encoding: what a fuzzer's mutations look like.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn damage() -> impl Strategy<Value = Vec<Damage>> {
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Damage::Flip(i, b)),
                (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
                any::<usize>().prop_map(Damage::Remove),
                any::<usize>().prop_map(Damage::Truncate),
            ],
            1..4,
        )
    }

    fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
        for d in damage {
            let n = bytes.len();
            match *d {
                Damage::Flip(i, b) if n > 0 => bytes[i % n] ^= b,
                Damage::Insert(i, b) => bytes.insert(i % (n + 1), b),
                Damage::Remove(i) if n > 0 => {
                    bytes.remove(i % n);
                }
                Damage::Truncate(i) => bytes.truncate(i % (n + 1)),
                _ => {}
            }
        }
        bytes
    }

    fn valid_batch() -> &'static (Batch, Vec<u8>) {
        static B: std::sync::OnceLock<(Batch, Vec<u8>)> = std::sync::OnceLock::new();
        B.get_or_init(|| {
            let key = crypto::SigningKey::from_seed([2; 32]).unwrap();
            let txs: Vec<_> = (1..=3)
                .map(|n| crate::testkit::signed_tx(&key, n, FlagKind::FreshTx, 10))
                .collect();
            let b = Batch::build("tokyo", 4, vec![[9; 32]], FlagKind::FreshTx, &txs, 1_000);
            let bytes = messages::encode(&b);
            (b, bytes)
        })
    }

    /// A valid piece (the second parity piece of the valid batch's sealed encoding) and
    /// an ack of it, encoded.
    fn valid_piece() -> &'static (Vec<u8>, Vec<u8>) {
        static P: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        P.get_or_init(|| {
            let (b, _) = valid_batch();
            let (envelope, _) = crate::testkit::sealer().seal(b).unwrap();
            let pieces = crate::messages::Coding::new(4, 2)
                .unwrap()
                .encode(b.id(), &envelope.to_bytes())
                .unwrap();
            let p = &pieces[5];
            let ack = PohAck::sign_piece(
                test_key(),
                "light-1",
                b.id(),
                p.header.piece,
                p.header.hash,
                1,
            )
            .unwrap();
            (p.to_bytes(), messages::encode(&ack))
        })
    }

    fn valid_tx_body() -> &'static Vec<u8> {
        static T: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            let key = crypto::SigningKey::from_seed([3; 32]).unwrap();
            let tx = crate::testkit::signed_tx(&key, 1, FlagKind::FreshTx, 10);
            let req = crate::messages::TxRequest {
                tx: tx.tx.clone(),
                public_key: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &tx.public_key,
                ),
                signature: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &tx.signature,
                ),
            };
            serde_json::to_vec(&req).unwrap()
        })
    }

    fn valid_proof() -> &'static Vec<u8> {
        static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        P.get_or_init(|| {
            let (b, bytes) = valid_batch();
            let challenge = HoldChallenge { nonce: [5; 32] };
            let proof =
                HoldProof::prove(test_key(), "light-1", b.id(), bytes, &challenge, 1).unwrap();
            messages::encode(&proof)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn batch_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            batch(&bytes);
        }

        #[test]
        fn damaged_batches_never_panic_and_never_pass_as_the_original(d in damage()) {
            let (b, bytes) = valid_batch();
            let damaged = apply(bytes.clone(), &d);
            batch(&damaged);
            if damaged != *bytes
                && let Ok(decoded) = messages::decode::<Batch>(&damaged)
            {
                // Whatever still decodes is either another batch or fails its integrity
                // check; it never passes as the original with other bytes.
                prop_assert!(decoded.id() != b.id() || decoded.check_integrity().is_err()
                    || messages::encode(&decoded) != damaged);
            }
        }

        #[test]
        fn damaged_pieces_never_panic_and_never_pass_as_the_original(d in damage()) {
            let (bytes, ack_bytes) = valid_piece();
            let damaged = apply(bytes.clone(), &d);
            batch(&damaged);
            ack(&apply(ack_bytes.clone(), &d));
            let original = Piece::from_bytes(bytes).unwrap();
            if damaged != *bytes
                && let Ok(p) = Piece::from_bytes(&damaged)
            {
                // Whatever still passes the node's checks is another piece: it never
                // carries the original's hash with other data.
                prop_assert!(p.header != original.header || p.data == original.data);
                prop_assert!(p.header.hash != original.header.hash || p.data == original.data);
            }
        }

        #[test]
        fn ack_proof_and_challenge_decoders_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            d in damage(),
        ) {
            ack(&bytes);
            ack(&apply(valid_proof().clone(), &d));
        }

        #[test]
        fn tx_decoder_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..1024),
            d in damage(),
        ) {
            tx_request(&bytes);
            tx_request(&apply(valid_tx_body().clone(), &d));
        }

        #[test]
        fn city_record_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            city_record(&bytes);
        }

        #[test]
        fn ack_round_trips(
            holder in "[a-z0-9-]{1,20}",
            batch_id in any::<[u8; 32]>(),
            held in prop::collection::vec(any::<u8>(), 1..5000),
            time_ms in any::<u64>(),
            nonce in any::<[u8; 32]>(),
        ) {
            let challenge = HoldChallenge { nonce };
            let proof = HoldProof::prove(test_key(), &holder, batch_id, &held, &challenge, time_ms).unwrap();
            let back: HoldProof = messages::decode(&messages::encode(&proof)).unwrap();
            prop_assert_eq!(&back, &proof);
            prop_assert_eq!(
                back.verify(&holder, test_key().public_key(), &batch_id, &crypto::hash(&held), &challenge, time_ms),
                Ok(())
            );
            let offsets = challenge.chunk_offsets(held.len() as u64);
            prop_assert!(offsets.iter().all(|&o| o < held.len() as u64));
            prop_assert_eq!(*offsets.last().unwrap(), (held.len() as u64 - 1) / 1024 * 1024);
        }
    }

    fn valid_submission() -> &'static Vec<u8> {
        static S: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        S.get_or_init(|| {
            use crate::messages::federation::{Certificate, CertifiedBatch, CitySubmission};
            let (b, bytes) = valid_batch();
            let ack = PohAck::sign(test_key(), "light-1", b.id(), bytes, 1).unwrap();
            let cert = Certificate {
                tier: messages::Tier::Light,
                holders: vec!["light-1".into()],
                acks: vec![ack],
            };
            let batch = CertifiedBatch::sign(test_key(), b.header.clone(), cert).unwrap();
            messages::encode(&CitySubmission {
                batches: vec![batch],
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn federation_decoders_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            d in damage(),
        ) {
            federation(&bytes);
            federation(&apply(valid_submission().clone(), &d));
        }
    }

    proptest! {
        // Each case writes and opens a log file: fewer cases.
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn log_files_never_panic_the_reader(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            log_file(&bytes);
        }
    }
}

//! Sealed batches: the only form in which a batch leaves the city, for every tier.
//!
//! ```text
//! SealedEnvelope  header      ClearHeader, in clear, authenticated as associated data
//!                 nonce
//!                 ciphertext  AES-256-GCM(data key, the batch body), tag appended
//! ClearHeader     batch       the BatchHeader (city, seq, parents, Merkle root of the tx
//!                             ids, body hash, tx count, flag, created time): the batch
//!                             id is its hash, exactly as for a plain batch
//!                 continent, key_id, capsule (BLAKE3 of the capsule: the reference)
//! Capsule         batch_id, key_id, the data key wrapped with ML-KEM-768 for the key
//!                 holder: kept in the key vault, never beside the bytes
//! ```
//!
//! Every batch gets a fresh data key. What the tiers, repair and the federation levels
//! need (ids, DAG edges, commitments, where it comes from, which key) stays readable; the
//! transactions themselves (senders, receivers, amounts, payloads, keys, signatures, and
//! so their ids) are readable only with the capsule from the vault and the holder's key.
//! Changing any header field, the ciphertext, or pairing the envelope with another
//! batch's capsule makes opening fail.

use serde::{Deserialize, Serialize};

use super::batch::{Batch, BatchHeader, BatchId};
use super::wire::{WireError, decode, encode};
use crate::crypto::vault::{
    DataKey, KEY_ID_LEN, ReadKey, ReadWrapped, TAG_LEN, VaultError, VaultKey, VaultPublicKey,
    WrappedKey,
};
use crate::crypto::{self, Hash32};

/// Domain tag of a sealed body's associated data.
const SEAL_TAG: &str = "citychain/seal/v1";
/// Domain tag of a capsule's associated data and of capsule references.
const CAPSULE_TAG: &str = "citychain/capsule/v1";

/// Why a batch could not be sealed, or a sealed batch not read or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Crypto(#[from] VaultError),
    #[error("not a sealed batch: {0}")]
    Wire(#[from] WireError),
    #[error("the bytes are not the canonical encoding of the sealed batch they decode to")]
    NotCanonical,
    #[error("malformed sealed batch: {0}")]
    Malformed(&'static str),
    #[error("the capsule is for batch {found}, not {expected}")]
    CapsuleOfAnotherBatch { expected: String, found: String },
    #[error("the capsule is not the one the batch header references")]
    WrongCapsule,
    #[error("sealed for key {0}, which is not among the keys given")]
    UnknownKey(String),
    #[error("the opened body does not decode: {0}")]
    Body(#[source] postcard::Error),
    #[error("the opened batch fails its integrity check: {0}")]
    Integrity(String),
}

/// What every tier can read of a sealed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearHeader {
    /// The plain batch's header: its hash is the batch id.
    pub batch: BatchHeader,
    /// The continent whose key holder can open the batch.
    pub continent: String,
    /// The holder key the data key is wrapped for.
    pub key_id: String,
    /// The capsule reference: BLAKE3 (tagged) of the capsule in the key vault.
    pub capsule: Hash32,
}

impl ClearHeader {
    /// The batch id: the hash of the plain header, so acks, the DAG and every index mean
    /// the same as for a plain batch.
    pub fn id(&self) -> BatchId {
        self.batch.id()
    }

    fn aad(&self) -> Vec<u8> {
        crypto::tagged(SEAL_TAG, &encode(self))
    }
}

/// A batch as every tier stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEnvelope {
    pub header: ClearHeader,
    pub nonce: [u8; 12],
    /// The postcard encoding of the batch body, sealed with the batch's data key.
    /// (`serde_bytes`: the same postcard bytes as a plain `Vec<u8>`, written at once.)
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl SealedEnvelope {
    pub fn id(&self) -> BatchId {
        self.header.id()
    }

    /// Reads sealed bytes as a storage node, repair or a reader must: they decode, are the
    /// canonical encoding of what they decode to (so one id always means the same bytes),
    /// and are well formed. The ciphertext itself can only be checked by opening it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let envelope: Self = decode(bytes)?;
        if encode(&envelope) != bytes {
            return Err(SealError::NotCanonical);
        }
        if envelope.ciphertext.len() < TAG_LEN {
            return Err(SealError::Malformed(
                "the ciphertext is shorter than its tag",
            ));
        }
        if envelope.header.key_id.len() != KEY_ID_LEN
            || !envelope
                .header
                .key_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        {
            return Err(SealError::Malformed("the key id is not 16 hex characters"));
        }
        Ok(envelope)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
}

/// A batch's data key, wrapped for the continent's key holder: what the key vault keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capsule {
    pub batch_id: BatchId,
    pub key_id: String,
    pub wrapped: WrappedKey,
}

impl Capsule {
    /// The reference a sealed batch's header carries.
    pub fn id(&self) -> Hash32 {
        crypto::hash(&crypto::tagged(CAPSULE_TAG, &encode(self)))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        Ok(decode(bytes)?)
    }

    /// The wrapped key is bound to its batch and key id.
    fn aad(batch_id: &BatchId, key_id: &str) -> Vec<u8> {
        let mut payload = batch_id.to_vec();
        payload.extend_from_slice(key_id.as_bytes());
        crypto::tagged(CAPSULE_TAG, &payload)
    }
}

/// Seals a city's batches for its continent's current holder key (and, with a read key,
/// wraps each data key for the city itself as well).
#[derive(Debug, Clone)]
pub struct Sealer {
    continent: String,
    key: VaultPublicKey,
    read: Option<std::sync::Arc<ReadKey>>,
}

/// What sealing one batch produces.
pub struct Sealed {
    pub envelope: SealedEnvelope,
    /// For the key vault: the data key wrapped for the continent's key holder.
    pub capsule: Capsule,
    /// For the city's read vault: the data key wrapped under the city's read key (with a
    /// read key only).
    pub read: Option<ReadWrapped>,
}

impl Sealer {
    pub fn new(continent: impl Into<String>, key: VaultPublicKey) -> Self {
        Self {
            continent: continent.into(),
            key,
            read: None,
        }
    }

    /// Also wraps every data key under `read`, the city's own read key.
    pub fn with_read_key(mut self, read: std::sync::Arc<ReadKey>) -> Self {
        self.read = Some(read);
        self
    }

    /// Seals `batch` as [`Sealer::seal`] does and, with a read key, wraps its data key for
    /// the city too.
    pub fn seal_for_reading(&self, batch: &Batch) -> Result<Sealed, SealError> {
        let data_key = DataKey::generate()?;
        let (envelope, capsule) = self.seal_with(batch, &data_key)?;
        let read = self
            .read
            .as_ref()
            .map(|r| r.wrap(&envelope.id(), &data_key))
            .transpose()?;
        Ok(Sealed {
            envelope,
            capsule,
            read,
        })
    }

    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// Seals `batch` under a fresh data key; returns the envelope and the capsule for the
    /// vault.
    pub fn seal(&self, batch: &Batch) -> Result<(SealedEnvelope, Capsule), SealError> {
        self.seal_with(batch, &DataKey::generate()?)
    }

    fn seal_with(
        &self,
        batch: &Batch,
        data_key: &DataKey,
    ) -> Result<(SealedEnvelope, Capsule), SealError> {
        let batch_id = batch.id();
        let key_id = self.key.id().to_owned();
        let capsule = Capsule {
            batch_id,
            wrapped: self.key.wrap(data_key, &Capsule::aad(&batch_id, &key_id))?,
            key_id: key_id.clone(),
        };
        let header = ClearHeader {
            batch: batch.header.clone(),
            continent: self.continent.clone(),
            key_id,
            capsule: capsule.id(),
        };
        let body = super::batch::encode_body(&batch.body, &batch.deps);
        let (nonce, ciphertext) = data_key.seal(&header.aad(), body)?;
        Ok((
            SealedEnvelope {
                header,
                nonce,
                ciphertext,
            },
            capsule,
        ))
    }
}

/// Opens a sealed batch with its capsule and the holder key it names among `keys`, and
/// checks the batch against its header (Merkle root, body hash, count).
pub fn open(
    envelope: &SealedEnvelope,
    capsule: &Capsule,
    keys: &[VaultKey],
) -> Result<Batch, SealError> {
    let header = &envelope.header;
    let id = header.id();
    if capsule.batch_id != id {
        return Err(SealError::CapsuleOfAnotherBatch {
            expected: hex::encode(id),
            found: hex::encode(capsule.batch_id),
        });
    }
    if capsule.id() != header.capsule || capsule.key_id != header.key_id {
        return Err(SealError::WrongCapsule);
    }
    let key = keys
        .iter()
        .find(|k| k.id() == header.key_id)
        .ok_or_else(|| SealError::UnknownKey(header.key_id.clone()))?;
    let data_key = key.unwrap(&capsule.wrapped, &Capsule::aad(&id, &capsule.key_id))?;
    open_body(envelope, &data_key)
}

/// Opens a batch the city sealed itself, read back from a tier as `bytes`: the bytes must
/// be a well-formed sealed batch of id `expected`, its data key comes from `wrapped` (the
/// city's read vault entry for `expected`) under the city's `read` key, and the opened
/// batch must match its header (Merkle root, body hash, count).
pub fn open_as_sealer(
    bytes: &[u8],
    expected: &BatchId,
    wrapped: &ReadWrapped,
    read: &ReadKey,
) -> Result<Batch, SealError> {
    let envelope = SealedEnvelope::from_bytes(bytes)?;
    let id = envelope.id();
    if id != *expected {
        return Err(SealError::CapsuleOfAnotherBatch {
            expected: hex::encode(expected),
            found: hex::encode(id),
        });
    }
    let data_key = read.unwrap(expected, wrapped)?;
    open_body(&envelope, &data_key)
}

fn open_body(envelope: &SealedEnvelope, data_key: &DataKey) -> Result<Batch, SealError> {
    let header = &envelope.header;
    let body = data_key.open(&envelope.nonce, &header.aad(), envelope.ciphertext.clone())?;
    let (body, deps) = super::batch::decode_body(&body).map_err(SealError::Body)?;
    let batch = Batch {
        header: header.batch.clone(),
        body,
        deps,
    };
    batch.check_integrity().map_err(SealError::Integrity)?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::{FlagKind, SignedTx, Tx};

    const MARKER: &str = "receiver-marker-5b1f";

    fn batch(seq: u64) -> Batch {
        let key = SigningKey::from_seed([seq as u8; 32]).unwrap();
        let txs: Vec<SignedTx> = (0..3)
            .map(|n| {
                let tx = Tx {
                    kind: FlagKind::FreshTx,
                    sender: key.address(),
                    receiver: MARKER.into(),
                    amount: 10 + n,
                    timestamp_ms: crate::messages::now_ms(),
                    nonce: n,
                    city_id: "tokyo".into(),
                    continent: None,
                    payload: None,
                    pop: None,
                    objects: None,
                };
                let req = SignedTx::sign(tx, &key).unwrap();
                SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).unwrap()
            })
            .collect();
        Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &txs, 7)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_sealed_batch_opens_with_its_capsule_and_holder_key_and_shows_nothing_in_clear() {
        let holder = VaultKey::generate().unwrap();
        let sealer = Sealer::new("asia", holder.public().clone());
        let plain = batch(1);
        let (envelope, capsule) = sealer.seal(&plain).unwrap();
        assert_eq!(envelope.id(), plain.id(), "the id is the plain batch's");
        assert_eq!(envelope.header.key_id, holder.id());
        assert_eq!(envelope.header.continent, "asia");

        let bytes = envelope.to_bytes();
        let read = SealedEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!(open(&read, &capsule, &[holder]).unwrap(), plain);

        // Nothing of the transactions is in the stored bytes or in the capsule.
        let tx = &plain.body[0];
        for stored in [&bytes, &capsule.to_bytes()] {
            assert!(!contains(stored, MARKER.as_bytes()));
            assert!(!contains(stored, &plain.tx_ids()[0]));
            assert!(!contains(stored, &tx.public_key[..32]));
            assert!(!contains(stored, &tx.signature[..32]));
            let sender = serde_json::from_str::<Tx>(&tx.canonical).unwrap().sender;
            assert!(!contains(stored, sender.as_bytes()));
        }
    }

    #[test]
    fn every_batch_gets_its_own_data_key_and_the_capsule_never_holds_it_in_clear() {
        let holder = VaultKey::generate().unwrap();
        let sealer = Sealer::new("asia", holder.public().clone());
        let plain = batch(2);
        let data_key = DataKey::generate().unwrap();
        let (envelope, capsule) = sealer.seal_with(&plain, &data_key).unwrap();
        for stored in [&capsule.to_bytes(), &envelope.to_bytes()] {
            assert!(!contains(stored, data_key.expose()));
        }
        let (again, other) = sealer.seal(&plain).unwrap();
        assert_ne!(again.ciphertext, envelope.ciphertext);
        assert_ne!(other.wrapped, capsule.wrapped);
    }

    #[test]
    fn changed_ciphertext_header_or_capsule_never_opens() {
        let holder = VaultKey::generate().unwrap();
        let sealer = Sealer::new("asia", holder.public().clone());
        let (envelope, capsule) = sealer.seal(&batch(3)).unwrap();
        let keys = [holder];
        let fails = |e: &SealedEnvelope, c: &Capsule| open(e, c, &keys).is_err();

        let mut e = envelope.clone();
        e.ciphertext[5] ^= 1;
        assert!(fails(&e, &capsule), "ciphertext");
        let mut e = envelope.clone();
        e.nonce[0] ^= 1;
        assert!(fails(&e, &capsule), "nonce");

        // Every clear field is authenticated (a changed batch header also changes the id,
        // so the capsule no longer matches; the others fail the AEAD check).
        let mut e = envelope.clone();
        e.header.continent = "europe".into();
        assert!(matches!(
            open(&e, &capsule, &keys),
            Err(SealError::Crypto(_))
        ));
        let mut e = envelope.clone();
        e.header.batch.seq += 1;
        assert!(fails(&e, &capsule), "seq");
        let mut e = envelope.clone();
        e.header.batch.created_at_ms += 1;
        assert!(fails(&e, &capsule), "created time");
        let mut e = envelope.clone();
        e.header.capsule[0] ^= 1;
        assert!(matches!(
            open(&e, &capsule, &keys),
            Err(SealError::WrongCapsule)
        ));

        // A capsule changed in the vault, or another batch's capsule, does not open it.
        let mut c = capsule.clone();
        c.wrapped.sealed_key[0] ^= 1;
        assert!(fails(&envelope, &c), "changed capsule");
        let (_, foreign) = sealer.seal(&batch(4)).unwrap();
        assert!(matches!(
            open(&envelope, &foreign, &keys),
            Err(SealError::CapsuleOfAnotherBatch { .. })
        ));
    }

    #[test]
    fn the_wrong_key_or_key_id_never_opens() {
        let holder = VaultKey::generate().unwrap();
        let stranger = VaultKey::generate().unwrap();
        let (envelope, capsule) = Sealer::new("asia", holder.public().clone())
            .seal(&batch(5))
            .unwrap();
        // Without the key it names.
        assert!(matches!(
            open(&envelope, &capsule, &[stranger]),
            Err(SealError::UnknownKey(id)) if id == holder.id()
        ));
        // Relabelled to claim another key id: the header no longer matches the capsule,
        // and a capsule relabelled as well no longer unwraps.
        let stranger = VaultKey::generate().unwrap();
        let mut e = envelope.clone();
        let mut c = capsule.clone();
        e.header.key_id = stranger.id().to_owned();
        c.key_id = stranger.id().to_owned();
        e.header.capsule = c.id();
        assert!(matches!(
            open(&e, &c, &[stranger]),
            Err(SealError::Crypto(VaultError::Unwrap(_)))
        ));
    }

    #[test]
    fn after_rotation_old_batches_open_with_the_old_key() {
        let old = VaultKey::generate().unwrap();
        let new = VaultKey::generate().unwrap();
        let (e1, c1) = Sealer::new("asia", old.public().clone())
            .seal(&batch(6))
            .unwrap();
        let (e2, c2) = Sealer::new("asia", new.public().clone())
            .seal(&batch(7))
            .unwrap();
        assert_ne!(e1.header.key_id, e2.header.key_id);
        let keyring = [old, new];
        assert_eq!(open(&e1, &c1, &keyring).unwrap().id(), e1.id());
        assert_eq!(open(&e2, &c2, &keyring).unwrap().id(), e2.id());
        assert!(
            open(&e1, &c1, &keyring[1..]).is_err(),
            "the old key is needed"
        );
    }

    #[test]
    fn the_city_opens_what_it_sealed_with_its_read_key_and_nothing_else() {
        let holder = VaultKey::generate().unwrap();
        let read = std::sync::Arc::new(ReadKey::generate().unwrap());
        let sealer = Sealer::new("asia", holder.public().clone()).with_read_key(read.clone());
        let plain = batch(9);
        let sealed = sealer.seal_for_reading(&plain).unwrap();
        let wrapped = sealed.read.clone().expect("a read wrapping");
        let bytes = sealed.envelope.to_bytes();
        let id = plain.id();
        assert_eq!(open_as_sealer(&bytes, &id, &wrapped, &read).unwrap(), plain);
        // The holder opens it as before.
        assert_eq!(
            open(&sealed.envelope, &sealed.capsule, &[holder]).unwrap(),
            plain
        );
        // Another batch's bytes under this id, another batch's wrapping, another read
        // key, changed bytes: refused.
        let other = sealer.seal_for_reading(&batch(10)).unwrap();
        assert!(matches!(
            open_as_sealer(&other.envelope.to_bytes(), &id, &wrapped, &read),
            Err(SealError::CapsuleOfAnotherBatch { .. })
        ));
        assert!(open_as_sealer(&bytes, &id, other.read.as_ref().unwrap(), &read).is_err());
        assert!(open_as_sealer(&bytes, &id, &wrapped, &ReadKey::generate().unwrap()).is_err());
        let mut changed = sealed.envelope.clone();
        changed.ciphertext[3] ^= 1;
        assert!(open_as_sealer(&changed.to_bytes(), &id, &wrapped, &read).is_err());
        // Without a read key nothing is wrapped for the city.
        assert!(
            Sealer::new("asia", VaultKey::generate().unwrap().public().clone())
                .seal_for_reading(&plain)
                .unwrap()
                .read
                .is_none()
        );
    }

    #[test]
    fn byte_fields_encode_exactly_as_plain_byte_vectors() {
        // `serde_bytes` only makes postcard write bytes at once: the encoding, hence every
        // hash and id over it, is the one a plain `Vec<u8>` has.
        let bytes: Vec<u8> = (0..=255).chain(0..40).collect();
        assert_eq!(
            postcard::to_stdvec(&bytes).unwrap(),
            postcard::to_stdvec(serde_bytes::Bytes::new(&bytes)).unwrap()
        );
    }

    #[test]
    fn only_canonical_well_formed_bytes_are_read() {
        let holder = VaultKey::generate().unwrap();
        let (envelope, _) = Sealer::new("asia", holder.public().clone())
            .seal(&batch(8))
            .unwrap();
        let bytes = envelope.to_bytes();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            SealedEnvelope::from_bytes(&longer),
            Err(SealError::NotCanonical)
        ));
        assert!(SealedEnvelope::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        // A plain batch is not a sealed one.
        assert!(SealedEnvelope::from_bytes(&encode(&batch(8))).is_err());
        let mut short = envelope.clone();
        short.ciphertext.truncate(3);
        assert!(matches!(
            SealedEnvelope::from_bytes(&short.to_bytes()),
            Err(SealError::Malformed(_))
        ));
    }

    /// Not a check but a measurement: what sealing costs per batch at the default batch
    /// size, beside what encoding the plain batch costs. Run it in release:
    /// `cargo test --release -p citychain --lib sealing_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn sealing_cost_at_the_default_batch_size() {
        let plain = crate::testkit::full_default_batch();
        let n = plain.body.len();
        let holder = VaultKey::generate().unwrap();
        let sealer = Sealer::new("asia", holder.public().clone());
        let time = |f: &mut dyn FnMut()| crate::testkit::time_rounds(200, f);
        let plain_bytes = encode(&plain).len();
        let (encode_p50, encode_mean) = time(&mut || {
            std::hint::black_box(encode(&plain));
        });
        let (seal_p50, seal_mean) = time(&mut || {
            let (e, c) = sealer.seal(&plain).unwrap();
            std::hint::black_box((e.to_bytes(), c));
        });
        let (envelope, capsule) = sealer.seal(&plain).unwrap();
        let sealed_bytes = envelope.to_bytes().len();
        let keys = [holder];
        let (open_p50, open_mean) = time(&mut || {
            std::hint::black_box(open(&envelope, &capsule, &keys).unwrap());
        });
        println!(
            "batch of {n} transactions, {plain_bytes} bytes plain, {sealed_bytes} sealed, capsule {} bytes",
            capsule.to_bytes().len()
        );
        for (what, p50, mean) in [
            ("encode plain batch", encode_p50, encode_mean),
            ("seal + encode", seal_p50, seal_mean),
            ("open (holder)", open_p50, open_mean),
        ] {
            println!(
                "{what:<22} p50 {:>8.1} µs  mean {:>8.1} µs",
                p50.as_secs_f64() * 1e6,
                mean.as_secs_f64() * 1e6
            );
        }
    }
}

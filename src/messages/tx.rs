//! The transaction request of API.md, its signed bytes and its id.
//!
//! Signed bytes are `citychain/tx/v1 \0 JCS(tx)`: the RFC 8785 canonical form of the `tx`
//! object exactly as the client sent it, so a client in any language signs the same bytes
//! we verify. JCS writes numbers as IEEE doubles, so integer fields are limited to
//! 2^53 − 1 ([`MAX_SAFE_AMOUNT`]) to keep every integer exact.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::names::NameError;
use super::objects::ObjectRef;
use super::strict_json::{StrictValue, is_duplicate_key};
use crate::crypto::{self, Hash32};

/// Domain-separation tag of transaction signatures.
pub const TX_TAG: &str = "citychain/tx/v1";

/// Largest integer JSON carries exactly (2^53 − 1).
pub const MAX_SAFE_AMOUNT: u64 = (1 << 53) - 1;

/// A transaction id: BLAKE3 of the signed bytes.
pub type TxId = Hash32;

pub fn tx_id_hex(id: &TxId) -> String {
    hex::encode(id)
}

/// Flag kinds from the upstream design, in the order they are processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    FreshTx,
    PohRequest,
    PohAck,
    RepairReq,
    RepairAck,
    Checkpoint,
    SystemTx,
}

impl FlagKind {
    pub const ALL: [FlagKind; 7] = [
        FlagKind::Checkpoint,
        FlagKind::RepairAck,
        FlagKind::RepairReq,
        FlagKind::PohAck,
        FlagKind::PohRequest,
        FlagKind::FreshTx,
        FlagKind::SystemTx,
    ];

    /// Processing priority: higher goes first
    /// (CHECKPOINT > REPAIR_ACK > REPAIR_REQ > POH_ACK > POH_REQUEST > FRESH_TX > SYSTEM_TX).
    pub fn priority(self) -> u8 {
        match self {
            FlagKind::Checkpoint => 6,
            FlagKind::RepairAck => 5,
            FlagKind::RepairReq => 4,
            FlagKind::PohAck => 3,
            FlagKind::PohRequest => 2,
            FlagKind::FreshTx => 1,
            FlagKind::SystemTx => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::FreshTx => "fresh_tx",
            FlagKind::PohRequest => "poh_request",
            FlagKind::PohAck => "poh_ack",
            FlagKind::RepairReq => "repair_req",
            FlagKind::RepairAck => "repair_ack",
            FlagKind::Checkpoint => "checkpoint",
            FlagKind::SystemTx => "system_tx",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether clients may submit this kind on `/v1/tx`. The others are the nodes' own
    /// (checkpoints, repair and proof-of-hold traffic, system transactions): they jump
    /// the queue and close batches at once, so a client sending them would push honest
    /// transactions back.
    pub fn client_may_submit(self) -> bool {
        matches!(self, FlagKind::FreshTx)
    }
}

/// Proof of place: where the sender claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pop {
    /// Degrees of latitude (WGS 84).
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    /// Degrees of longitude (WGS 84).
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
}

/// The `tx` object of a transaction request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tx {
    pub kind: FlagKind,
    pub sender: String,
    pub receiver: String,
    /// Minor units; never a float.
    pub amount: u64,
    pub timestamp_ms: u64,
    pub nonce: u64,
    pub city_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pop: Option<Pop>,
    /// The objects the transaction reads or writes (`engines::objects`). Absent from the
    /// signed bytes when not given, so transactions without it keep their ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<ObjectRef>>,
}

/// The body of `POST /v1/tx`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxRequest {
    pub tx: Tx,
    /// Base64 of the raw ML-DSA-65 public key.
    pub public_key: String,
    /// Base64 of the ML-DSA-65 signature over the signed bytes.
    pub signature: String,
}

/// The first request envelope parse keeps `tx` raw, so the signed bytes are computed from
/// what the client sent rather than from our re-serialization of it. Every object in it,
/// at any depth, must have unique keys ([`StrictValue`]); the envelope's own fields are
/// checked by the derive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTxRequest {
    tx: StrictValue,
    public_key: String,
    signature: String,
}

/// Why a request was refused, each with the API.md error code it answers with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TxValidationError {
    #[error("malformed JSON: {0}")]
    InvalidJson(String),
    #[error("repeated key: {0}")]
    DuplicateKey(String),
    #[error("kind {} is for nodes only; clients submit fresh_tx", .0.as_str())]
    KindNotAllowed(FlagKind),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("unknown field: {0}")]
    UnknownField(String),
    #[error("missing field: {0}")]
    MissingField(String),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("amount must be between 1 and {MAX_SAFE_AMOUNT} minor units")]
    InvalidAmount,
    #[error("{0} must be at most {MAX_SAFE_AMOUNT}")]
    IntegerTooLarge(&'static str),
    #[error("sender {sender} is not the address of the public key ({expected})")]
    SenderMismatch { sender: String, expected: String },
    #[error("timestamp is {skew_ms} ms away from the node's clock (limit {limit_ms} ms)")]
    TimestampSkew { skew_ms: u64, limit_ms: u64 },
    #[error("payload is {size} bytes of JSON (limit {limit})")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("{0} is not valid base64")]
    InvalidEncoding(&'static str),
    #[error("public key is not an ML-DSA-65 key")]
    InvalidPublicKey,
    #[error("signature does not verify for this transaction and public key")]
    BadSignature,
    #[error("transaction is for city {got}, this node serves {expected}")]
    WrongCity { got: String, expected: String },
    #[error("transaction names continent {got}, this city is in {expected}")]
    WrongContinent { got: String, expected: String },
    #[error("pop ({lat}, {lon}) is outside the fence of city {city}")]
    PopOutsideCity { city: String, lat: f64, lon: f64 },
    #[error("city {city} requires pop (the sender's position) on every transaction")]
    PopRequired { city: String },
    #[error("objects: {0}")]
    InvalidObjects(String),
}

impl TxValidationError {
    /// The API.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::DuplicateKey(_) => "duplicate_key",
            Self::KindNotAllowed(_) => "kind_not_allowed",
            Self::InvalidName(_) => "invalid_name",
            Self::UnknownField(_) => "unknown_field",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidAmount => "invalid_amount",
            Self::IntegerTooLarge(_) => "invalid_field",
            Self::SenderMismatch { .. } => "sender_mismatch",
            Self::TimestampSkew { .. } => "timestamp_skew",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InvalidEncoding(_) => "invalid_encoding",
            Self::InvalidPublicKey => "invalid_public_key",
            Self::BadSignature => "bad_signature",
            Self::WrongCity { .. } => "wrong_city",
            Self::WrongContinent { .. } => "wrong_continent",
            Self::PopOutsideCity { .. } => "pop_outside_city",
            Self::PopRequired { .. } => "pop_required",
            Self::InvalidObjects(_) => "invalid_objects",
        }
    }

    /// HTTP status: 401 for a bad signature, 403 for a kind clients may not submit, 400
    /// for everything else.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadSignature => 401,
            Self::KindNotAllowed(_) => 403,
            _ => 400,
        }
    }
}

fn classify_serde(e: serde_json::Error) -> TxValidationError {
    let msg = e.to_string();
    if e.is_syntax() || e.is_eof() || e.is_io() {
        TxValidationError::InvalidJson(msg)
    } else if is_duplicate_key(&e) {
        TxValidationError::DuplicateKey(msg)
    } else if msg.starts_with("unknown field") {
        TxValidationError::UnknownField(msg)
    } else if msg.starts_with("missing field") {
        TxValidationError::MissingField(msg)
    } else {
        TxValidationError::InvalidField(msg)
    }
}

/// A transaction whose request parsed, whose sender matches its key and whose signature
/// verifies. Policy checks (clock skew, payload size, city) are the Intake's.
#[derive(Debug, Clone)]
pub struct SignedTx {
    pub id: TxId,
    pub tx: Tx,
    /// JCS canonical JSON of `tx`, exactly the signed part.
    pub canonical: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A request that parsed, whose integers are in range and whose sender is its key's
/// address, with its id computed; its signature is not checked yet
/// ([`ParsedTx::verify`]). Cheap checks (kind, names) can refuse it before the costly
/// signature verification.
#[derive(Debug, Clone)]
pub struct ParsedTx {
    pub id: TxId,
    pub tx: Tx,
    /// JCS canonical JSON of `tx`, exactly the signed part.
    pub canonical: String,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

impl ParsedTx {
    /// Parses a request body (one pass over the bytes, duplicate keys refused at any
    /// depth) and computes its id.
    pub fn parse(body: &[u8]) -> Result<Self, TxValidationError> {
        let raw: RawTxRequest = serde_json::from_slice(body).map_err(classify_serde)?;
        let raw_tx = raw.tx.0;
        if !raw_tx.is_object() {
            return Err(TxValidationError::InvalidField(
                "tx must be a JSON object".into(),
            ));
        }
        let tx: Tx = Tx::deserialize(&raw_tx).map_err(classify_serde)?;
        if tx.amount == 0 || tx.amount > MAX_SAFE_AMOUNT {
            return Err(TxValidationError::InvalidAmount);
        }
        if tx.nonce > MAX_SAFE_AMOUNT {
            return Err(TxValidationError::IntegerTooLarge("nonce"));
        }
        if tx.timestamp_ms > MAX_SAFE_AMOUNT {
            return Err(TxValidationError::IntegerTooLarge("timestamp_ms"));
        }
        let public_key = B64
            .decode(raw.public_key.as_bytes())
            .map_err(|_| TxValidationError::InvalidEncoding("public_key"))?;
        let signature = B64
            .decode(raw.signature.as_bytes())
            .map_err(|_| TxValidationError::InvalidEncoding("signature"))?;
        if public_key.len() != crypto::PUBLIC_KEY_LEN {
            return Err(TxValidationError::InvalidPublicKey);
        }
        let expected = crypto::address_of(&public_key);
        if tx.sender != expected {
            return Err(TxValidationError::SenderMismatch {
                sender: tx.sender,
                expected,
            });
        }
        let canonical = serde_jcs::to_string(&raw_tx)
            .map_err(|e| TxValidationError::InvalidField(e.to_string()))?;
        Ok(Self {
            id: crypto::hash(&signed_bytes(&canonical)),
            tx,
            canonical,
            public_key,
            signature,
        })
    }

    /// Checks the signature over the signed bytes.
    pub fn verify(self) -> Result<SignedTx, TxValidationError> {
        crypto::verify(
            &self.public_key,
            &signed_bytes(&self.canonical),
            &self.signature,
        )
        .map_err(|e| match e {
            crypto::CryptoError::BadPublicKey => TxValidationError::InvalidPublicKey,
            _ => TxValidationError::BadSignature,
        })?;
        Ok(SignedTx {
            id: self.id,
            tx: self.tx,
            canonical: self.canonical,
            public_key: self.public_key,
            signature: self.signature,
        })
    }
}

impl SignedTx {
    /// Parses and authenticates a request body.
    pub fn from_request_bytes(body: &[u8]) -> Result<Self, TxValidationError> {
        ParsedTx::parse(body)?.verify()
    }

    /// The key under which this transaction's `(sender, nonce)` pair is recorded.
    pub fn nonce_key(&self) -> NonceKey {
        NonceKey::of(&self.tx.sender, self.tx.nonce)
            .expect("a verified sender is its key's hex address")
    }

    /// Builds and signs a request for `tx` (the CLI's `tx`, `send` and `bench`).
    pub fn sign(tx: Tx, key: &crypto::SigningKey) -> crypto::Result<TxRequest> {
        let value = serde_json::to_value(&tx).expect("Tx serializes");
        let canonical = serde_jcs::to_string(&value).expect("JSON value canonicalizes");
        let sig = key.sign(&signed_bytes(&canonical))?;
        Ok(TxRequest {
            tx,
            public_key: B64.encode(key.public_key()),
            signature: B64.encode(sig),
        })
    }

    /// The size, in bytes of JSON, of the payload object.
    pub fn payload_size(&self) -> usize {
        self.tx
            .payload
            .as_ref()
            .map(|p| {
                serde_json::to_string(p)
                    .map(|s| s.len())
                    .unwrap_or(usize::MAX)
            })
            .unwrap_or(0)
    }

    pub fn to_stored(&self) -> StoredTxRef<'_> {
        StoredTxRef {
            canonical: &self.canonical,
            public_key: &self.public_key,
            signature: &self.signature,
        }
    }
}

/// Borrowed form of [`super::StoredTx`], used to build batches without copying.
pub struct StoredTxRef<'a> {
    pub canonical: &'a str,
    pub public_key: &'a [u8],
    pub signature: &'a [u8],
}

/// A `(sender, nonce)` pair as the city records it: the sender's 20 address bytes, then
/// the nonce, big-endian. A sender may use each nonce for one transaction only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NonceKey(pub [u8; 28]);

impl NonceKey {
    /// `None` when `sender` is not 40 hex characters (verified senders always are).
    pub fn of(sender: &str, nonce: u64) -> Option<Self> {
        let mut key = [0u8; 28];
        hex::decode_to_slice(sender, &mut key[..20]).ok()?;
        key[20..].copy_from_slice(&nonce.to_be_bytes());
        Some(Self(key))
    }

    /// The pair of a transaction's canonical JSON, if it has one.
    pub fn of_canonical(canonical: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Pair<'a> {
            #[serde(borrow)]
            sender: std::borrow::Cow<'a, str>,
            nonce: u64,
        }
        let pair: Pair = serde_json::from_str(canonical).ok()?;
        Self::of(&pair.sender, pair.nonce)
    }
}

/// `citychain/tx/v1 \0 canonical`.
pub fn signed_bytes(canonical: &str) -> Vec<u8> {
    crypto::tagged(TX_TAG, canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_tx(key: &crypto::SigningKey) -> Tx {
        Tx {
            kind: FlagKind::FreshTx,
            sender: key.address(),
            receiver: "bob".into(),
            amount: 1250,
            timestamp_ms: 1_763_870_000_000,
            nonce: 1,
            city_id: "tokyo".into(),
            continent: Some("asia".into()),
            payload: Some(Map::new()),
            pop: Some(Pop {
                lat: 35.68,
                lon: 139.76,
            }),
            objects: None,
        }
    }

    #[test]
    fn signed_request_roundtrips_and_id_is_stable() {
        let key = crypto::SigningKey::generate().unwrap();
        let req = SignedTx::sign(sample_tx(&key), &key).unwrap();
        let body = serde_json::to_vec(&req).unwrap();
        let a = SignedTx::from_request_bytes(&body).unwrap();
        let b = SignedTx::from_request_bytes(&body).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.tx, req.tx);
        // Without objects, the field is not in the signed bytes (earlier ids stay); with
        // them, it is signed like the rest.
        assert!(!a.canonical.contains("objects"));
        let mut tx = sample_tx(&key);
        tx.objects = Some(vec![ObjectRef {
            id: "coin".into(),
            kind: super::super::ObjectKind::Owned,
            access: super::super::ObjectAccess::Write,
        }]);
        let req = SignedTx::sign(tx, &key).unwrap();
        let signed = SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert!(
            signed
                .canonical
                .contains(r#""objects":[{"access":"write","id":"coin","kind":"owned"}]"#)
        );
        assert_eq!(signed.tx.objects, req.tx.objects);
        let mut forged = serde_json::to_value(&req).unwrap();
        forged["tx"]["objects"][0]["access"] = "read".into();
        let err = SignedTx::from_request_bytes(forged.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code(), "bad_signature");
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_signed_bytes() {
        let key = crypto::SigningKey::generate().unwrap();
        let req = SignedTx::sign(sample_tx(&key), &key).unwrap();
        let reference = SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).unwrap();
        // Same object, keys in another order and pretty-printed, as another client might send.
        let mut obj: Map<String, Value> = Map::new();
        let tx = serde_json::to_value(&req.tx).unwrap();
        let mut keys: Vec<_> = tx.as_object().unwrap().keys().cloned().collect();
        keys.reverse();
        for k in keys {
            obj.insert(k.clone(), tx[&k].clone());
        }
        let body = format!(
            "{{\n  \"signature\": \"{}\",\n  \"public_key\": \"{}\",\n  \"tx\": {}\n}}",
            req.signature,
            req.public_key,
            serde_json::to_string_pretty(&Value::Object(obj)).unwrap()
        );
        let other = SignedTx::from_request_bytes(body.as_bytes()).unwrap();
        assert_eq!(other.id, reference.id);
    }

    #[test]
    fn refusals_carry_their_codes() {
        let key = crypto::SigningKey::generate().unwrap();
        let good = SignedTx::sign(sample_tx(&key), &key).unwrap();
        let check = |v: Value, code: &str| {
            let err = SignedTx::from_request_bytes(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        };
        let base = serde_json::to_value(&good).unwrap();

        let mut v = base.clone();
        v["tx"]["amount"] = 0.into();
        check(v, "invalid_amount");

        let mut v = base.clone();
        v["tx"]["extra"] = 1.into();
        check(v, "unknown_field");

        let mut v = base.clone();
        v["tx"].as_object_mut().unwrap().remove("receiver");
        check(v, "missing_field");

        let mut v = base.clone();
        v["tx"]["amount"] = 12.5.into();
        check(v, "invalid_field");

        let mut v = base.clone();
        v["tx"]["sender"] = "00".repeat(20).into();
        check(v, "sender_mismatch");

        let mut v = base.clone();
        v["tx"]["receiver"] = "mallory".into();
        check(v, "bad_signature");

        let mut v = base.clone();
        v["tx"]["objects"] =
            serde_json::json!([{"id": "coin", "kind": "owned", "access": "write", "extra": 1}]);
        check(v, "unknown_field");

        let mut v = base.clone();
        v["tx"]["objects"] =
            serde_json::json!([{"id": "coin", "kind": "borrowed", "access": "write"}]);
        check(v, "invalid_field");

        let mut v = base.clone();
        v["tx"]["objects"] = serde_json::json!({"id": "coin"});
        check(v, "invalid_field");

        let err = SignedTx::from_request_bytes(b"{\"tx\":").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
    }

    #[test]
    fn repeated_keys_are_refused_at_every_depth() {
        let key = crypto::SigningKey::generate().unwrap();
        let mut tx = sample_tx(&key);
        tx.payload = Some(
            serde_json::json!({"memo": {"note": "lunch"}})
                .as_object()
                .unwrap()
                .clone(),
        );
        let body = serde_json::to_string(&SignedTx::sign(tx, &key).unwrap()).unwrap();
        assert!(SignedTx::from_request_bytes(body.as_bytes()).is_ok());
        for (from, to) in [
            ("\"amount\":1250", "\"amount\":1250,\"amount\":1"),
            ("\"note\":\"lunch\"", "\"note\":\"lunch\",\"note\":\"x\""),
            ("\"lat\":35.68", "\"lat\":35.68,\"lat\":0"),
            ("{\"tx\":", "{\"signature\":\"\",\"tx\":"),
        ] {
            let bad = body.replacen(from, to, 1);
            assert_ne!(bad, body, "{from}");
            let err = SignedTx::from_request_bytes(bad.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "duplicate_key", "{from}: {err}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn only_fresh_tx_is_for_clients_and_nonce_keys_follow_sender_and_nonce() {
        let clients: Vec<_> = FlagKind::ALL
            .into_iter()
            .filter(|k| k.client_may_submit())
            .collect();
        assert_eq!(clients, vec![FlagKind::FreshTx]);
        assert_eq!(
            TxValidationError::KindNotAllowed(FlagKind::Checkpoint).status(),
            403
        );
        let key = crypto::SigningKey::generate().unwrap();
        let req = SignedTx::sign(sample_tx(&key), &key).unwrap();
        let signed = SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).unwrap();
        let k = signed.nonce_key();
        assert_eq!(NonceKey::of_canonical(&signed.canonical), Some(k));
        assert_eq!(hex::encode(&k.0[..20]), key.address());
        assert_eq!(k.0[20..], 1u64.to_be_bytes());
        assert_ne!(NonceKey::of(&key.address(), 2), Some(k));
        assert_eq!(NonceKey::of("not hex", 1), None);
    }
}

//! Unit-test helpers of the library: a recorder actor that stands in for an actor's
//! downstream and hands every message it receives to the test, and signed transactions to
//! feed the pipeline. (Integration tests and tools have their own kit in the harness crate.)

use std::marker::PhantomData;

use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use tokio::sync::mpsc;

use crate::crypto::SigningKey;
use crate::crypto::vault::VaultKey;
use crate::messages::{FlagKind, Sealer, SignedTx, Tx};

pub struct Recorder<M>(PhantomData<fn() -> M>);

impl<M: Message> Actor for Recorder<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<M>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<M>,
        msg: M,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

/// Spawns a recorder; the receiver gets whatever is sent to the returned actor.
pub async fn recorder<M: Message>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Recorder::<M>(PhantomData), tx)
        .await
        .expect("recorder starts");
    (actor, rx)
}

/// A verified transaction of `kind` and `amount` from `key`.
pub fn signed_tx(key: &SigningKey, nonce: u64, kind: FlagKind, amount: u64) -> SignedTx {
    let tx = Tx {
        kind,
        sender: key.address(),
        receiver: "bob".into(),
        amount,
        timestamp_ms: crate::messages::now_ms(),
        nonce,
        city_id: "tokyo".into(),
        continent: None,
        payload: None,
        pop: None,
        objects: None,
    };
    let req = SignedTx::sign(tx, key).expect("signing works");
    SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).expect("a valid request")
}

/// The node key and id of the city that unit tests' storage clients sign as.
pub fn test_city_key() -> std::sync::Arc<SigningKey> {
    static KEY: std::sync::OnceLock<std::sync::Arc<SigningKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| std::sync::Arc::new(SigningKey::generate().expect("key generation")))
        .clone()
}

pub const TEST_CITY_ID: &str = "city-test";

/// A storage client signing as [`TEST_CITY_ID`] with [`test_city_key`].
pub fn peer_client() -> crate::storage::peer::PeerClient {
    crate::storage::peer::PeerClient::new(crate::messages::auth::RequestSigner::new(
        TEST_CITY_ID,
        test_city_key(),
    ))
}

/// A sealer for a fresh key holder in "asia" (tests that open what it seals make their own
/// [`VaultKey`]).
pub fn sealer() -> Sealer {
    Sealer::new("asia", VaultKey::generate().unwrap().public().clone())
}

/// An empty batch `seq` of the city "tokyo" and its sealed encoding, as the log tier and
/// the storage nodes hold it.
pub fn sealed_empty_batch(seq: u64) -> (crate::messages::Batch, Vec<u8>) {
    let batch = crate::messages::Batch::build(
        "tokyo",
        seq,
        vec![],
        FlagKind::FreshTx,
        &[],
        1_700_000_000_000 + seq,
    );
    let (envelope, _) = sealer().seal(&batch).unwrap();
    (batch, envelope.to_bytes())
}

/// A stand-in capsule for batch `id`, for tests that only store it (the vault keeps it as
/// it is).
pub fn stand_in_capsule(id: crate::messages::BatchId) -> crate::messages::Capsule {
    crate::messages::Capsule {
        batch_id: id,
        key_id: "00112233aabbccdd".into(),
        wrapped: crate::crypto::vault::WrappedKey {
            kem_ciphertext: vec![id[0]; 8],
            nonce: [1; 12],
            sealed_key: vec![2; 48],
        },
    }
}

/// A full batch of the default size (`[batcher] max_batch_txs` signed transactions of
/// tokyo), as the cost measurements take it.
pub fn full_default_batch() -> crate::messages::Batch {
    let n = crate::config::BatcherConfig::default().max_batch_txs;
    let key = SigningKey::from_seed([3; 32]).unwrap();
    let txs: Vec<SignedTx> = (0..n as u64)
        .map(|nonce| signed_tx(&key, nonce, FlagKind::FreshTx, 10))
        .collect();
    crate::messages::Batch::build("tokyo", 0, vec![], FlagKind::FreshTx, &txs, 7)
}

/// Runs `f` once to warm up, then `rounds` times: the median and the mean time.
pub fn time_rounds(rounds: u32, f: &mut dyn FnMut()) -> (std::time::Duration, std::time::Duration) {
    f();
    let mut samples: Vec<std::time::Duration> = (0..rounds)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let mean = samples.iter().sum::<std::time::Duration>() / rounds;
    (samples[rounds as usize / 2], mean)
}

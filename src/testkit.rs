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
    };
    let req = SignedTx::sign(tx, key).expect("signing works");
    SignedTx::from_request_bytes(&serde_json::to_vec(&req).unwrap()).expect("a valid request")
}

/// A sealer for a fresh key holder in "asia" (tests that open what it seals make their own
/// [`VaultKey`]).
pub fn sealer() -> Sealer {
    Sealer::new("asia", VaultKey::generate().unwrap().public().clone())
}

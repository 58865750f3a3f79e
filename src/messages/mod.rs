//! Typed messages that cross actors or nodes: transactions, batches, proof-of-hold acks and
//! store outcomes.
//!
//! A batch leaves the city only sealed ([`sealed`]): its header in clear, its body
//! encrypted under a data key that is wrapped for the continent's key holder. Its header
//! goes up the federation with a certificate of availability ([`federation`]).
//!
//! Everything that crosses the network or reaches disk is encoded with postcard inside a
//! versioned envelope ([`encode`], [`decode`]) that carries a format version, so a node can refuse bytes it does not
//! understand instead of misreading them.

mod ack;
pub mod auth;
mod batch;
pub mod dpos;
pub mod federation;
pub mod names;
pub mod objects;
mod outcome;
pub mod piece;
mod pipeline;
pub mod sealed;
pub mod storage;
pub mod strict_json;
mod tx;
mod wire;

pub use ack::{ACK_VALIDITY_MS, AckError, CHALLENGE_CHUNKS, HoldChallenge, HoldProof, PohAck};
pub use batch::{Batch, BatchHeader, BatchId, StoredTx};
pub use objects::{Dep, DepFrom, DepKind, ObjectAccess, ObjectHead, ObjectKind, ObjectRef};
pub use outcome::{StoreOutcome, Tier};
pub use piece::{Coding, Expected, Piece, PieceError, PieceHeader, PieceRef};
pub use pipeline::{Flag, NodeObservation, Placement, SealedBatch, StoreJob, Target, Urgency};
pub use sealed::{Capsule, ClearHeader, SealError, Sealed, SealedEnvelope, Sealer};
pub use tx::{
    FlagKind, MAX_SAFE_AMOUNT, NonceKey, ParsedTx, Pop, SignedTx, Tx, TxId, TxRequest,
    TxValidationError, signed_bytes, tx_id_hex,
};
pub use wire::{WIRE_VERSION, WireError, decode, encode, hex32, now_ms, parse_hex32};

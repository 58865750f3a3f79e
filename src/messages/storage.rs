//! The internal storage API between a city node and its light and full nodes: its paths,
//! its content type and the health report, shared by the client (`storage::peer`) and the
//! server (`http::storage_api`) so that neither depends on the other.
//!
//! - `PUT {BATCHES_PATH}/{id}`: store a batch, answer a proof-of-hold ack.
//! - `GET {BATCHES_PATH}/{id}`: the stored bytes.
//! - `POST {BATCHES_PATH}/{id}{POH_SUFFIX}`: a fresh proof-of-hold ack (`REPAIR_REQ`).
//! - `PUT {BATCHES_PATH}/{id}{PIECES_SEGMENT}/{index}`: store one erasure-coded piece of a
//!   batch (an encoded [`crate::messages::Piece`]), answer a proof-of-hold ack for it.
//! - `GET {BATCHES_PATH}/{id}{PIECES_SEGMENT}/{index}`: the stored piece.
//! - `POST {BATCHES_PATH}/{id}{PIECES_SEGMENT}/{index}{POH_SUFFIX}`: a fresh proof of hold
//!   of that piece.
//! - `POST {RELEASE_PATH}`: release many pieces at once, in one fsynced transaction (body:
//!   an encoded `Vec<`[`PieceId`]`>` of at most [`MAX_RELEASE_PIECES`]; answer: an encoded
//!   `Vec<bool>`, one per piece, true if it was removed, false if it was not held).
//! - `POST {SESSIONS_PATH}`: open a session (body: an ML-KEM-768 encapsulation key; answer:
//!   a [`SessionOpened`], JSON); see [`crate::messages::auth`].
//! - `GET {HEALTH_PATH}`: a [`HealthReport`] (JSON).

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// Where batches live, by hex id: `{BATCHES_PATH}/{id}`.
pub const BATCHES_PATH: &str = "/internal/v1/batches";
/// Appended to a batch's path to ask for a fresh proof of hold.
pub const POH_SUFFIX: &str = "/poh";
/// Between a batch's path and a piece index: `{BATCHES_PATH}/{id}{PIECES_SEGMENT}/{index}`.
pub const PIECES_SEGMENT: &str = "/pieces";
/// Where sessions are opened.
pub const SESSIONS_PATH: &str = "/internal/v1/sessions";
/// Where a city releases many light pieces in one request.
pub const RELEASE_PATH: &str = "/internal/v1/pieces/release";
/// Most pieces one release request names.
pub const MAX_RELEASE_PIECES: usize = 1024;
/// A storage node's health report.
pub const HEALTH_PATH: &str = "/internal/v1/health";
/// Content type of batch bodies and of acks (postcard).
pub const OCTET_STREAM: &str = "application/octet-stream";

/// One piece of one batch, as a release request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PieceId {
    pub batch_id: [u8; 32],
    pub index: u8,
}

/// What a storage node reports on `GET /internal/v1/health` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub node_id: String,
    pub role: Role,
    pub continent: String,
    /// Bytes of batches held.
    pub used_bytes: u64,
    /// Bytes the node will hold at most: its configured capacity, or less when its disk
    /// has less free space than that leaves.
    pub capacity_bytes: u64,
    /// Batches and pieces held.
    pub batches: u64,
    /// Write requests being served right now.
    pub inflight: u64,
    /// Why the node's store is failing (a disk or database error), while it is; the node
    /// then answers its health with 503 and takes no batch until the store is reopened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// What `POST /internal/v1/sessions` answers (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOpened {
    /// The session id, hex (16 bytes).
    pub session: String,
    /// The ML-KEM-768 ciphertext to the offered key, base64.
    pub ciphertext: String,
    /// How long the node keeps the session.
    pub expires_in_ms: u64,
}

//! The object vocabulary: what a transaction declares it touches (`tx.objects`), the
//! dependency edges a batch records between its transactions, and an object's durable head.
//! The rules over them are `engines::objects`.

use serde::{Deserialize, Serialize};

use crate::crypto::Hash32;

/// A transaction id (the same type as `tx::TxId`, named here so this module imports no
/// other message module).
type TxId = Hash32;

/// How an object may be shared (fixed the first time a city sees the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// One writer at a time, and only its owner (the sender who first wrote it).
    Owned,
    /// Any number of readers and writers; the batch order decides.
    Shared,
    /// Read by anyone, never written.
    Immutable,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owned => "owned",
            Self::Shared => "shared",
            Self::Immutable => "immutable",
        }
    }
}

/// What a transaction does with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectAccess {
    Read,
    Write,
}

/// One entry of `tx.objects`: `{"id", "kind", "access"}`, part of the signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub id: String,
    pub kind: ObjectKind,
    pub access: ObjectAccess,
}

impl ObjectRef {
    pub fn writes(&self) -> bool {
        self.access == ObjectAccess::Write
    }
}

/// Where a dependency edge starts: a transaction of the same batch (its index in the
/// body) or of an earlier batch (its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DepFrom {
    InBatch(u32),
    Earlier(TxId),
}

/// Why one transaction must come after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepKind {
    /// Reads what `from` wrote.
    ReadAfterWrite,
    /// Overwrites what `from` wrote.
    WriteAfterWrite,
    /// Overwrites what `from` read.
    WriteAfterRead,
}

impl DepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadAfterWrite => "read_after_write",
            Self::WriteAfterWrite => "write_after_write",
            Self::WriteAfterRead => "write_after_read",
        }
    }
}

/// A dependency edge of a batch: transaction `to` (its index in the body) follows `from`
/// on `object`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dep {
    pub from: DepFrom,
    pub to: u32,
    pub object: String,
    pub kind: DepKind,
}

/// What the city knows durably of an object (`city.redb`, written with the batch records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHead {
    pub kind: ObjectKind,
    /// The sender who first wrote it (owned objects only).
    pub owner: Option<String>,
    /// The last transaction that wrote it, and its batch.
    pub last_tx: Option<TxId>,
    pub last_batch: Option<Hash32>,
    /// Writes so far.
    pub version: u64,
}

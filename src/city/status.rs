//! The status index: what `GET /v1/tx/{id}` and de-duplication read.
//!
//! Transactions in flight live in memory (written by the Intake); durable ones in the city
//! store (written by the Failover actor, fsynced, before any client hears 200).

use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;

use super::activity::Activity;
use crate::engines::objects::ObjectLocks;
use crate::messages::{BatchId, FlagKind, NonceKey, TxId};
use crate::storage::city_store::{BatchRecord, CityStore, CityStoreError, TxRecord, UplinkState};

/// A transaction admitted and not yet durable.
#[derive(Debug, Clone)]
pub struct PendingTx {
    pub flag: FlagKind,
    /// The signed canonical JSON of the transaction.
    pub canonical: Arc<str>,
    /// Its `(sender, nonce)` pair, held in [`StatusIndex::nonces`] while it is pending.
    pub nonce: NonceKey,
}

/// What `GET /v1/tx/{id}` reads.
pub enum TxView {
    Pending(PendingTx),
    Stored(TxRecord),
}

/// Transactions in flight (in memory, written by the Intake) over the durable city store
/// (written by the Failover actor before any client hears 200).
pub struct StatusIndex {
    pub pending: DashMap<TxId, PendingTx>,
    /// The `(sender, nonce)` pairs of the pending transactions, so that of two different
    /// transactions with one pair in flight at once only the first is admitted. Durable
    /// pairs are in the store.
    pub nonces: DashMap<NonceKey, TxId>,
    /// The objects the pending transactions hold (`engines::objects`), released with
    /// them. Here rather than in the Intake, so that a restarted Intake still sees them.
    pub objects: Mutex<ObjectLocks>,
    pub store: Arc<CityStore>,
    /// What was made durable since the node started, for `GET /v1/status`.
    pub activity: Activity,
}

impl StatusIndex {
    pub fn new(store: Arc<CityStore>) -> Self {
        Self {
            pending: DashMap::new(),
            nonces: DashMap::new(),
            objects: Mutex::default(),
            store,
            activity: Activity::default(),
        }
    }

    pub fn tx(&self, id: &TxId) -> Result<Option<TxView>, CityStoreError> {
        if let Some(p) = self.pending.get(id) {
            return Ok(Some(TxView::Pending(p.clone())));
        }
        Ok(self.store.get_tx(id)?.map(TxView::Stored))
    }

    /// Forgets a pending transaction (durable or failed now) and releases its pair and
    /// its objects.
    pub fn forget(&self, id: &TxId) -> Option<PendingTx> {
        let (_, p) = self.pending.remove(id)?;
        self.nonces.remove_if(&p.nonce, |_, owner| owner == id);
        self.objects().release(id);
        Some(p)
    }

    /// The object locks of the pending transactions.
    pub fn objects(&self) -> std::sync::MutexGuard<'_, ObjectLocks> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>, CityStoreError> {
        self.store.get_batch(id)
    }

    /// Where batch `id` (sequence number `seq`) stands with the continent.
    pub fn uplink(&self, id: &BatchId, seq: u64) -> Result<Option<UplinkState>, CityStoreError> {
        self.store.uplink_state(id, seq)
    }
}

//! The status index: what `GET /v1/tx/{id}` and de-duplication read.
//!
//! Transactions in flight live in memory (written by the Intake); durable ones in the city
//! store (written by the Failover actor, fsynced, before any client hears 200).

use std::sync::Arc;

use dashmap::DashMap;

use crate::messages::{BatchId, FlagKind, TxId};
use crate::storage::city_store::{BatchRecord, CityStore, CityStoreError, TxRecord};

/// A transaction admitted and not yet durable.
#[derive(Debug, Clone)]
pub struct PendingTx {
    pub flag: FlagKind,
    /// The signed canonical JSON of the transaction.
    pub canonical: Arc<str>,
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
    pub store: Arc<CityStore>,
}

impl StatusIndex {
    pub fn new(store: Arc<CityStore>) -> Self {
        Self {
            pending: DashMap::new(),
            store,
        }
    }

    pub fn tx(&self, id: &TxId) -> Result<Option<TxView>, CityStoreError> {
        if let Some(p) = self.pending.get(id) {
            return Ok(Some(TxView::Pending(p.clone())));
        }
        Ok(self.store.get_tx(id)?.map(TxView::Stored))
    }

    pub fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>, CityStoreError> {
        self.store.get_batch(id)
    }
}

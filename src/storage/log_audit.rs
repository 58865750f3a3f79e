//! The start audit of a city's immutable log against its status index.
//!
//! A batch that no other tier could take is acknowledged once its record is fsynced in the
//! log; the status index (`city.redb`) then places it on the log. If that record is gone
//! when the city starts (cut from the log's end, or changed so that it no longer encodes
//! the batch), claiming the transactions `stored` would be a lie. The audit finds every
//! such batch, whether or not a signed head covered its record, marks it lost in the index
//! (its transactions then read `lost`, and a client may submit them again), and says so at
//! error level. The Repairer then searches the storage nodes and MongoDB for another copy
//! and gives the batch a new home, or reports it lost with its transaction ids.

use super::city_store::{BatchRecord, CityStore, CityStoreError};
use super::immutable_log::ImmutableLog;
use crate::messages::{hex32, now_ms};

/// Marks the batches the index places on `log` that `log` does not hold; returns them.
/// Blocks on the index.
pub fn audit(store: &CityStore, log: &ImmutableLog) -> Result<Vec<BatchRecord>, CityStoreError> {
    let missing = store.log_batches_missing(|id| log.holds_batch(id))?;
    if !missing.is_empty() {
        let ids: Vec<_> = missing.iter().map(|b| b.header.id()).collect();
        store.mark_lost(&ids, now_ms())?;
        for batch in &missing {
            let txs: Vec<String> = batch.tx_ids.iter().map(hex32).collect();
            tracing::error!(
                batch = %hex32(&batch.header.id()),
                seq = batch.header.seq,
                txs = %txs.join(","),
                "a batch acknowledged on the immutable log is gone from it: its transactions are reported lost, not stored, until another copy is found"
            );
        }
    }
    let lost = store.lost_count()?;
    metrics::gauge!(crate::metrics::LOG_LOST_BATCHES).set(lost as f64);
    if lost > 0 {
        tracing::error!(
            lost,
            newly = missing.len(),
            "batches acknowledged on the immutable log are missing from it; searching the storage nodes and MongoDB for other copies"
        );
    }
    Ok(missing)
}

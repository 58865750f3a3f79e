//! The city's actors, one per file, each only actor code: what it owns, receives and sends
//! is in its `//!` paragraph; its messages are in [`crate::city::msgs`].
//!
//! - [`intake`]: de-duplicates verified transactions, admits or refuses them, answers
//!   clients.
//! - [`dag_batcher`]: groups transactions into batches and links them into the DAG.
//! - [`flagger`]: the order in which sealed batches go to storage.
//! - [`prioritizer`]: the storage-node registry, health probes, and node selection.
//! - [`storage_writer`]: writes each batch to the first tier (light nodes).
//! - [`failover`]: walks failed batches down the tier chain and completes every batch.
//! - [`repairer`]: moves batches back up to light nodes and re-replicates lost holdings.
//! - [`uplink`]: forwards the outbox to the node above, until acknowledged (a city's
//!   batches to its continent; a continent runs it too, for the global node).

pub mod dag_batcher;
pub mod failover;
pub mod flagger;
pub mod intake;
pub mod prioritizer;
pub mod repairer;
pub mod storage_writer;
pub mod uplink;

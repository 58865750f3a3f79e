//! The city pipeline, one actor per file, in flow order:
//!
//! - [`intake`]: de-duplicates verified transactions, admits or refuses them, answers
//!   clients, owns the status index.
//! - [`dag_batcher`]: groups transactions into batches and links them into the DAG.
//! - [`flagger`]: the flag policy, and the order in which sealed batches go to storage.
//! - [`prioritizer`]: the storage-node registry, health probes, scores and node selection.
//! - [`storage_writer`]: writes each batch to the first tier (light nodes).
//! - [`repairer`]: moves batches back up to light nodes and re-replicates lost holdings.
//! - [`failover_supervisor`]: the supervision tree's root; walks failed batches down the
//!   tier chain and completes every batch.
//! - [`mailbox`]: the bounded mailboxes they talk through.

pub mod dag_batcher;
pub mod failover_supervisor;
pub mod flagger;
pub mod intake;
pub mod mailbox;
pub mod prioritizer;
pub mod repairer;
pub mod storage_writer;
#[cfg(test)]
pub(crate) mod testkit;

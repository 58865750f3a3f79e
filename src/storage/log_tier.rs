//! The immutable-log tier: the last resort, on this node's own disk.

use std::sync::Arc;

use super::immutable_log::{ImmutableLog, RecordKind};
use super::tier::{StorageTier, Stored, TierError, TierResult};
use crate::messages::{StoreJob, Tier};

/// The local immutable log: always there, fsynced before it answers.
pub struct LogTier {
    pub log: Arc<ImmutableLog>,
    /// This node's id, the holder named in status answers.
    pub holder: String,
}

#[async_trait::async_trait]
impl StorageTier for LogTier {
    fn tier(&self) -> Tier {
        Tier::Log
    }

    async fn store(&self, job: &StoreJob) -> TierResult {
        let outcome = self
            .log
            .append(RecordKind::Batch, job.sealed.bytes.to_vec())
            .await
            .map(|_receipt| Stored {
                holders: vec![self.holder.clone()],
                acks: Vec::new(),
            })
            .map_err(|e| TierError::Log(Box::new(e)));
        TierResult {
            outcome,
            observations: Vec::new(),
        }
    }
}

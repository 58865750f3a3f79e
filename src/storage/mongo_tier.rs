//! The MongoDB tier: the continent's deployment, between full nodes and the immutable log.
//!
//! The MongoDB client itself lives in `storage::mongo`; keeping the tier's trait
//! implementation here lets `storage::tier` name MongoDB's errors without an import cycle.

use super::mongo::MongoTier;
use super::tier::{StorageTier, Stored, TierError, TierResult};
use crate::messages::{StoreJob, Tier};

#[async_trait::async_trait]
impl StorageTier for MongoTier {
    fn tier(&self) -> Tier {
        Tier::Mongo
    }

    async fn store(&self, job: &StoreJob) -> TierResult {
        let outcome = self
            .put_batch(&job.sealed)
            .await
            .map(|()| Stored {
                holders: vec![self.holder()],
                acks: Vec::new(),
            })
            .map_err(|source| TierError::Mongo {
                continent: self.continent().to_owned(),
                source: Box::new(source),
            });
        TierResult {
            outcome,
            observations: Vec::new(),
        }
    }
}

//! The failover chain: the tiers a city tries, in order, built once from config.
//!
//! Adding a tier means implementing [`StorageTier`] and adding one arm to
//! [`TierChain::build`].

use std::sync::Arc;

use super::immutable_log::ImmutableLog;
use super::log_tier::LogTier;
use super::mongo::MongoTier;
use super::peer::PeerClient;
use super::peer_tier::PeerTier;
use super::tier::StorageTier;
use crate::config::Config;
use crate::messages::Tier;

/// The tiers in failover order.
#[derive(Clone)]
pub struct TierChain {
    tiers: Vec<Arc<dyn StorageTier>>,
}

impl TierChain {
    pub fn new(tiers: Vec<Arc<dyn StorageTier>>) -> Self {
        Self { tiers }
    }

    /// The chain named by `[supervisor] chain`, over the node's peer client and log.
    pub fn build(config: &Config, client: PeerClient, log: Arc<ImmutableLog>) -> Self {
        let s = &config.storage;
        let tiers = config
            .supervisor
            .chain
            .iter()
            .filter_map(|tier| -> Option<Arc<dyn StorageTier>> {
                Some(match tier {
                    Tier::Light => Arc::new(PeerTier {
                        tier: Tier::Light,
                        client: client.clone(),
                        min_acks: s.min_light_acks,
                        deadline: s.light_deadline,
                    }),
                    Tier::Full => Arc::new(PeerTier {
                        tier: Tier::Full,
                        client: client.clone(),
                        min_acks: s.min_full_acks,
                        deadline: s.full_deadline,
                    }),
                    Tier::Log => Arc::new(LogTier {
                        log: log.clone(),
                        holder: config.node.id.clone(),
                    }),
                    Tier::Mongo => match MongoTier::new(&s.mongo, &config.node.continent) {
                        Some(mongo) => Arc::new(mongo),
                        None => {
                            tracing::info!(
                                continent = %config.node.continent,
                                env = %crate::config::MongoConfig::env_var(&config.node.continent),
                                "no MongoDB URI for this continent; the mongo tier is skipped"
                            );
                            return None;
                        }
                    },
                })
            })
            .collect();
        Self { tiers }
    }

    pub fn get(&self, index: usize) -> Option<&Arc<dyn StorageTier>> {
        self.tiers.get(index)
    }

    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }
}

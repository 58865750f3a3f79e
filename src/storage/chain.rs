//! The failover chain: the tiers a city tries, in order, built once from config. It also
//! hands out what the tiers are built on (the peer client, the immutable log, the MongoDB
//! deployment), so that repair reads back through the same connections and the same log
//! handle the writes went through.
//!
//! Adding a tier means implementing [`StorageTier`] and adding one arm to
//! [`TierChain::build`].

use std::sync::Arc;

use super::immutable_log::ImmutableLog;
use super::log_tier::LogTier;
use super::mongo::MongoTier;
use super::nodes::{BadNodeKey, NodeDirectory};
use super::peer::PeerClient;
use super::peer_tier::{PeerTier, PieceTier};
use super::tier::StorageTier;
use super::tier_health::TierHealth;
use crate::config::Config;
use crate::messages::Tier;

/// The tiers in failover order, and what they are built on.
#[derive(Clone)]
pub struct TierChain {
    tiers: Vec<Arc<dyn StorageTier>>,
    client: PeerClient,
    nodes: Arc<NodeDirectory>,
    log: Arc<ImmutableLog>,
    mongo: Option<Arc<MongoTier>>,
    /// The last attempt on each tier, recorded by the Failover actor.
    health: Arc<TierHealth>,
}

impl TierChain {
    /// A chain of `tiers` over the given client, log and MongoDB deployment, with no
    /// configured storage nodes.
    pub fn new(
        tiers: Vec<Arc<dyn StorageTier>>,
        client: PeerClient,
        log: Arc<ImmutableLog>,
        mongo: Option<Arc<MongoTier>>,
    ) -> Self {
        Self {
            health: Arc::new(TierHealth::new(tiers.len())),
            tiers,
            client,
            nodes: Arc::default(),
            log,
            mongo,
        }
    }

    /// The chain named by `[supervisor] chain`, over the node's peer client and log. The
    /// continent's MongoDB deployment is set up whenever a URI is configured, even if the
    /// chain leaves it out: batches a previous configuration stored there are still read
    /// back by repair.
    pub fn build(
        config: &Config,
        client: PeerClient,
        log: Arc<ImmutableLog>,
    ) -> Result<Self, BadNodeKey> {
        let s = &config.storage;
        let nodes = Arc::new(NodeDirectory::from_config(&s.nodes)?);
        let vault_collection = config
            .vault
            .as_ref()
            .map_or(super::mongo::DEFAULT_VAULT_COLLECTION, |v| {
                v.mongo_collection.as_str()
            });
        let mongo = MongoTier::new(&s.mongo, &config.node.continent)
            .map(|m| Arc::new(m.with_vault_collection(vault_collection)));
        let tiers: Vec<Arc<dyn StorageTier>> = config
            .supervisor
            .chain
            .iter()
            .filter_map(|tier| -> Option<Arc<dyn StorageTier>> {
                Some(match tier {
                    Tier::Light => Arc::new(PieceTier {
                        client: client.clone(),
                        coding: s.erasure.coding().expect("validated: a coding"),
                        min_acks: s.min_light_acks(),
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
                    Tier::Mongo => match &mongo {
                        Some(mongo) => mongo.clone(),
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
        Ok(Self {
            health: Arc::new(TierHealth::new(tiers.len())),
            tiers,
            client,
            nodes,
            log,
            mongo,
        })
    }

    /// The HTTP client of the light and full node tiers.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// The configured light and full nodes, keys decoded.
    pub fn nodes(&self) -> &Arc<NodeDirectory> {
        &self.nodes
    }

    /// The node's immutable log, the one the log tier appends to.
    pub fn log(&self) -> &Arc<ImmutableLog> {
        &self.log
    }

    /// The continent's MongoDB deployment, when a URI is configured for it.
    pub fn mongo(&self) -> Option<&Arc<MongoTier>> {
        self.mongo.as_ref()
    }

    /// The last attempt on each tier of this chain.
    pub fn health(&self) -> &Arc<TierHealth> {
        &self.health
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

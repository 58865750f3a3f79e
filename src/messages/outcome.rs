//! Where a batch ended up: the storage tiers, and a store's outcome.

use super::{BatchId, PohAck};

/// Storage tiers in failover order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Light,
    Full,
    Mongo,
    Log,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Light => "light",
            Tier::Full => "full",
            Tier::Mongo => "mongo",
            Tier::Log => "log",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a batch ended up: the tier reached, who holds it, and the acks that prove it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreOutcome {
    pub batch_id: BatchId,
    pub tier: Tier,
    pub holders: Vec<String>,
    pub acks: Vec<PohAck>,
}

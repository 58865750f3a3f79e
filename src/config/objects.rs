//! `[objects]`: the object-dependency engine (`engines::objects`).

use serde::{Deserialize, Serialize};

/// The most objects `[objects] max_per_tx` may allow.
pub const MAX_OBJECTS_PER_TX_LIMIT: usize = 1024;

/// The object engines a city can run (`[objects] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectEngineName {
    /// Declarations are checked; owned objects have one writer at a time and belong to
    /// their first writer; batches record dependency edges.
    #[default]
    OwnedExclusive,
    /// No checks and no edges: `tx.objects` is carried as signed, nothing more.
    Off,
}

/// `[objects]`: declared object access of transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// Engine: `"owned_exclusive"` or `"off"`.
    pub engine: ObjectEngineName,
    /// Most entries in one transaction's `objects` (count).
    pub max_per_tx: usize,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            engine: ObjectEngineName::OwnedExclusive,
            max_per_tx: 32,
        }
    }
}

impl ObjectsConfig {
    /// Problems of this section, in the words of the config file.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_per_tx == 0 || self.max_per_tx > MAX_OBJECTS_PER_TX_LIMIT {
            p.push(format!(
                "[objects] max_per_tx must be between 1 and {MAX_OBJECTS_PER_TX_LIMIT} (got {})",
                self.max_per_tx
            ));
        }
        p
    }
}

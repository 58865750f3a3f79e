//! The storage nodes a city writes to: `[[storage.nodes]]` with each public key decoded,
//! built once with the tier chain and shared by everything that talks to them (the
//! Prioritizer's registry scores and picks them, the Repairer checks and reads holdings).

use std::sync::Arc;

use crate::config::{StorageNodeEntry, decode_public_key};
use crate::messages::Target;

/// A configured storage node and the key its acks must verify with.
#[derive(Debug, Clone)]
pub struct KnownNode {
    pub entry: StorageNodeEntry,
    pub public_key: Arc<[u8]>,
}

impl KnownNode {
    /// Where to write to it, and how to check its ack.
    pub fn target(&self) -> Target {
        Target {
            node_id: self.entry.id.clone(),
            url: self.entry.url.clone(),
            public_key: self.public_key.clone(),
        }
    }

    /// How the storage client addresses it.
    pub fn peer(&self) -> crate::storage::peer::Peer<'_> {
        crate::storage::peer::Peer {
            id: &self.entry.id,
            url: &self.entry.url,
        }
    }
}

/// A storage node whose configured public key is not an ML-DSA-65 key.
#[derive(Debug, thiserror::Error)]
#[error("storage node {0}: the public key is not a base64 ML-DSA-65 public key")]
pub struct BadNodeKey(pub String);

/// Every configured storage node, in config order.
#[derive(Debug, Default)]
pub struct NodeDirectory {
    nodes: Vec<KnownNode>,
}

impl NodeDirectory {
    pub fn from_config(entries: &[StorageNodeEntry]) -> Result<Self, BadNodeKey> {
        let nodes = entries
            .iter()
            .map(|entry| {
                let key = decode_public_key(&entry.public_key)
                    .ok_or_else(|| BadNodeKey(entry.id.clone()))?;
                Ok(KnownNode {
                    entry: entry.clone(),
                    public_key: Arc::from(key),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nodes })
    }

    pub fn get(&self, id: &str) -> Option<&KnownNode> {
        self.nodes.iter().find(|n| n.entry.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &KnownNode> {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::crypto::SigningKey;

    fn entry(id: &str, key: String) -> StorageNodeEntry {
        StorageNodeEntry {
            id: id.into(),
            role: Role::Light,
            url: format!("http://127.0.0.1:1/{id}"),
            continent: "asia".into(),
            public_key: key,
        }
    }

    #[test]
    fn decodes_every_key_once_and_refuses_a_bad_one() {
        use base64::Engine;
        let key = SigningKey::from_seed([3; 32]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        let dir =
            NodeDirectory::from_config(&[entry("l1", b64.clone()), entry("l2", b64)]).unwrap();
        let l2 = dir.get("l2").unwrap();
        assert_eq!(&*l2.public_key, key.public_key());
        assert_eq!(l2.target().url, "http://127.0.0.1:1/l2");
        assert!(dir.get("l3").is_none());
        assert_eq!(dir.iter().count(), 2);
        let err = NodeDirectory::from_config(&[entry("bad", "AAAA".into())]).unwrap_err();
        assert_eq!(err.0, "bad");
    }
}

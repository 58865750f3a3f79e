//! What a continent checks of a city's batch, and the global node of a continent's,
//! before either is merged: who may speak for which city or continent, their signatures,
//! and (on a continent) the certificate of availability against the storage nodes' keys.
//! Run on the HTTP layer's blocking pool: each batch costs a few ML-DSA-65 verifications.

use std::collections::HashMap;

use crate::config::{Config, Role, decode_public_key};
use crate::crypto::Hash32;
use crate::messages::Tier;
use crate::messages::federation::{CertifiedBatch, ContinentEntry, SignedContinentBatch};
use crate::storage::immutable_log::merkle::{Tree, leaf_hash};

/// Why a batch is refused: an HTTP status (400 for a malformed batch, 403 for one this
/// peer may not send or cannot prove), a code of docs/API.md and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: String) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// The Merkle tree over a continent batch's entries (leaf = the entry's encoding).
pub fn entries_tree(entries: &[ContinentEntry]) -> Tree {
    let mut tree = Tree::new();
    for e in entries {
        tree.push(leaf_hash(&e.leaf_bytes()));
    }
    tree
}

/// The root a continent batch header must carry for `entries`.
pub fn entries_root(entries: &[ContinentEntry]) -> Hash32 {
    let tree = entries_tree(entries);
    tree.root(tree.len()).expect("the whole tree has a root")
}

/// A continent's checks of city batches.
pub struct CityBatchCheck {
    /// City node id → (the city it speaks for, its public key).
    cities: HashMap<String, (String, Vec<u8>)>,
    /// Storage node id → (its tier, its public key).
    holders: HashMap<String, (Tier, Vec<u8>)>,
    min_light_acks: usize,
    min_full_acks: usize,
}

impl CityBatchCheck {
    /// The cities of `[[auth.peers]]`, the storage nodes of `[[storage.nodes]]` and the
    /// quorums of `[storage]` (validated before a node starts).
    pub fn from_config(config: &Config) -> Self {
        let cities = config
            .auth
            .peers
            .iter()
            .filter(|p| p.role == Role::City)
            .filter_map(|p| {
                Some((
                    p.id.clone(),
                    (p.city.clone()?, decode_public_key(&p.public_key)?),
                ))
            })
            .collect();
        let holders = config
            .storage
            .nodes
            .iter()
            .filter_map(|n| {
                let tier = match n.role {
                    Role::Light => Tier::Light,
                    Role::Full => Tier::Full,
                    _ => return None,
                };
                Some((n.id.clone(), (tier, decode_public_key(&n.public_key)?)))
            })
            .collect();
        Self {
            cities,
            holders,
            min_light_acks: config.storage.min_light_acks(),
            min_full_acks: config.storage.min_full_acks,
        }
    }

    /// Checks a batch `peer` (an authenticated node of the allow-list) forwarded: it is
    /// its own city's, signed with its key, and its certificate holds.
    pub fn check(&self, peer: &str, batch: &CertifiedBatch) -> Result<(), Refusal> {
        let id = crate::messages::hex32(&batch.id());
        let Some((city, key)) = self.cities.get(peer) else {
            return Err(refuse(
                403,
                "not_a_city",
                format!("{peer} is not a city this continent serves"),
            ));
        };
        if &batch.header.city_id != city {
            return Err(refuse(
                403,
                "wrong_city",
                format!(
                    "batch {id} is of city {:?}; {peer} speaks for {city:?} only",
                    batch.header.city_id
                ),
            ));
        }
        if batch.verify_signature(key).is_err() {
            return Err(refuse(
                403,
                "bad_certificate_signature",
                format!("the certificate of batch {id} is not signed by {peer}'s key"),
            ));
        }
        let needed = |tier| match tier {
            Tier::Light => self.min_light_acks,
            Tier::Full => self.min_full_acks,
            _ => 0,
        };
        batch
            .certificate
            .check(
                &batch.id(),
                |h| self.holders.get(h).map(|(t, k)| (*t, k.as_slice())),
                needed,
            )
            .map_err(|e| {
                refuse(
                    403,
                    "invalid_certificate",
                    format!("batch {id} is not shown available: {e}"),
                )
            })
    }
}

/// The global node's checks of continent batches.
pub struct ContinentBatchCheck {
    /// Continent node id → (the continent it speaks for, its public key).
    continents: HashMap<String, (String, Vec<u8>)>,
}

impl ContinentBatchCheck {
    pub fn from_config(config: &Config) -> Self {
        let continents = config
            .auth
            .peers
            .iter()
            .filter(|p| p.role == Role::Continent)
            .filter_map(|p| {
                Some((
                    p.id.clone(),
                    (p.continent.clone()?, decode_public_key(&p.public_key)?),
                ))
            })
            .collect();
        Self { continents }
    }

    /// The public key of continent node `id`, if it is one this node serves.
    pub fn key_of(&self, id: &str) -> Option<&[u8]> {
        self.continents.get(id).map(|(_, k)| k.as_slice())
    }

    /// Checks a batch `peer` forwarded: its own continent's, signed by it, its entries the
    /// ones its header commits to.
    pub fn check(&self, peer: &str, batch: &SignedContinentBatch) -> Result<(), Refusal> {
        let id = crate::messages::hex32(&batch.id());
        let Some((continent, key)) = self.continents.get(peer) else {
            return Err(refuse(
                403,
                "not_a_continent",
                format!("{peer} is not a continent this node serves"),
            ));
        };
        let header = &batch.batch.header;
        if &header.continent != continent || batch.signer != peer {
            return Err(refuse(
                403,
                "wrong_continent",
                format!(
                    "continent batch {id} is of {:?}, signed as {:?}; {peer} speaks for {continent:?} only",
                    header.continent, batch.signer
                ),
            ));
        }
        if batch.verify_signature(key).is_err() {
            return Err(refuse(
                403,
                "bad_batch_signature",
                format!("continent batch {id} is not signed by {peer}'s key"),
            ));
        }
        let entries = &batch.batch.entries;
        if entries.is_empty() || header.entry_count as usize != entries.len() {
            return Err(refuse(
                400,
                "invalid_batch",
                format!(
                    "continent batch {id} says {} entries and holds {}",
                    header.entry_count,
                    entries.len()
                ),
            ));
        }
        if entries_root(entries) != header.entries_root {
            return Err(refuse(
                400,
                "invalid_batch",
                format!("the entries of continent batch {id} are not the ones its root commits to"),
            ));
        }
        Ok(())
    }
}

//! `[vault]`: who can read sealed batches. The continent key holder's public keys (the
//! keyring, current and past, by id), which one new batches are sealed for, and where the
//! capsules are kept besides the city's own store.
//!
//! ```toml
//! [vault]
//! current = "5f1c0e9a2b7d4c13"          # the key id new batches are sealed for
//! [[vault.keys]]
//! id = "5f1c0e9a2b7d4c13"               # 16 hex: the fingerprint of the public key
//! public_key = "…"                      # base64 ML-KEM-768 public key (1184 bytes)
//! ```
//!
//! A city needs only public keys. Keys stay in the keyring after a rotation, so an
//! operator can see which ids its batches may carry; the holder keeps every secret key
//! whose batches must stay readable.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::crypto::vault::VaultPublicKey;
use crate::messages::Sealer;

/// `[vault]`: the continent key holder's keyring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Id of the key new batches are sealed for; one of `keys`.
    pub current: String,
    /// MongoDB collection of capsules in the continent's deployment (`[storage.mongo]`),
    /// written beside every batch the MongoDB tier stores.
    #[serde(default = "default_collection")]
    pub mongo_collection: String,
    /// The holder's public keys, current and past.
    #[serde(default)]
    pub keys: Vec<VaultKeyEntry>,
}

fn default_collection() -> String {
    "vault".into()
}

/// One public key of the keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKeyEntry {
    /// The key's id: 16 hex characters derived from the public key.
    pub id: String,
    /// Base64 of the raw ML-KEM-768 public key.
    pub public_key: String,
}

impl VaultConfig {
    /// The keyring of a single key.
    pub fn with_key(key: &VaultPublicKey) -> Self {
        Self {
            current: key.id().to_owned(),
            mongo_collection: default_collection(),
            keys: vec![VaultKeyEntry {
                id: key.id().to_owned(),
                public_key: key.to_base64(),
            }],
        }
    }

    /// Adds `key` to the keyring (once) and makes it current.
    pub fn rotate_to(&mut self, key: &VaultPublicKey) {
        if !self.keys.iter().any(|k| k.id == key.id()) {
            self.keys.push(VaultKeyEntry {
                id: key.id().to_owned(),
                public_key: key.to_base64(),
            });
        }
        self.current = key.id().to_owned();
    }

    /// The current public key, decoded.
    pub fn current_key(&self) -> Option<VaultPublicKey> {
        let entry = self.keys.iter().find(|k| k.id == self.current)?;
        VaultPublicKey::from_base64(&entry.public_key).ok()
    }

    /// What a city in `continent` seals its batches with: the current key. `None` when it
    /// does not decode (which validation reports).
    pub fn sealer(&self, continent: &str) -> Option<Sealer> {
        Some(Sealer::new(continent, self.current_key()?))
    }

    /// Every problem with the keyring.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut ids = BTreeSet::new();
        for (n, entry) in self.keys.iter().enumerate() {
            let at = format!("[[vault.keys]] #{} ({})", n + 1, entry.id);
            if !ids.insert(entry.id.as_str()) {
                p.push(format!("{at}: duplicate id"));
            }
            match VaultPublicKey::from_base64(&entry.public_key) {
                Err(_) => p.push(format!(
                    "{at}: public_key is not a base64 ML-KEM-768 public key"
                )),
                Ok(key) if key.id() != entry.id => p.push(format!(
                    "{at}: id does not match the public key (whose id is {})",
                    key.id()
                )),
                Ok(_) => {}
            }
        }
        if !ids.contains(self.current.as_str()) {
            p.push(format!(
                "[vault] current = {:?} is not the id of any [[vault.keys]]",
                self.current
            ));
        }
        if self.mongo_collection.trim().is_empty() {
            p.push("[vault] mongo_collection must not be empty".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::crypto::vault::VaultKey;

    const CITY: &str = r#"
[node]
id = "city-tokyo"
role = "city"
listen = "127.0.0.1:0"
data_dir = "/tmp/x"
city = "tokyo"
continent = "asia"
[supervisor]
chain = ["log"]
"#;

    #[test]
    fn a_city_needs_a_keyring_whose_current_key_is_in_it() {
        let err = Config::parse(CITY).unwrap_err().problems.join("\n");
        assert!(err.contains("[vault] is required"), "{err}");

        let a = VaultKey::generate().unwrap();
        let b = VaultKey::generate().unwrap();
        let good = format!(
            "{CITY}[vault]\ncurrent = \"{}\"\n[[vault.keys]]\nid = \"{}\"\npublic_key = \"{}\"\n",
            a.id(),
            a.id(),
            a.public().to_base64()
        );
        let config = Config::parse(&good).unwrap();
        let vault = config.vault.as_ref().unwrap();
        assert_eq!(vault.sealer("asia").unwrap().key_id(), a.id());
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);

        // A current id not in the ring, an id that is not the key's, a broken key.
        let bad = format!(
            "{CITY}[vault]\ncurrent = \"{}\"\n[[vault.keys]]\nid = \"{}\"\npublic_key = \"{}\"\n[[vault.keys]]\nid = \"0011223344556677\"\npublic_key = \"AAAA\"\n",
            b.id(),
            b.id(),
            a.public().to_base64()
        );
        let err = Config::parse(&bad).unwrap_err().problems.join("\n");
        assert!(err.contains("id does not match the public key"), "{err}");
        assert!(err.contains("not a base64 ML-KEM-768 public key"), "{err}");

        let mut rotated = config.vault.clone().unwrap();
        rotated.rotate_to(b.public());
        rotated.rotate_to(b.public());
        assert_eq!(rotated.keys.len(), 2, "old keys stay, a key is listed once");
        assert_eq!(rotated.current, b.id());
    }
}

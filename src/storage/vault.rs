//! The key vault: each batch's capsule (its data key, wrapped for the continent's key
//! holder), kept apart from the sealed bytes the tiers hold.
//!
//! The local vault is a table of the city store (`city.redb`), written in the same
//! transaction and fsync as the batch's record: a batch the city acknowledged always has
//! its capsule. Where MongoDB is configured for the continent, the MongoDB tier also writes
//! the capsule of each batch it stores to the `[vault] mongo_collection` collection of that
//! deployment (see `storage::mongo`). Capsules never go to light or full nodes: a storage
//! node holds ciphertext it has no wrapped key for, so even a future break of the KEM
//! would not open what it holds without the vault as well.
//!
//! [`VaultReader`] reads a stopped city's vault (the store admits one process at a time),
//! for `citychain vault open`.

use std::path::Path;

use super::city_store::{CAPSULES, CityStoreError, FILE_NAME};
use super::offline::OfflineDb;
use crate::messages::{BatchId, Capsule};

/// The vault of a city store that no process has open.
pub struct VaultReader {
    db: OfflineDb,
}

impl VaultReader {
    /// Opens `DIR/city.redb` for reading, never writing it.
    pub fn open(city_data_dir: &Path) -> Result<Self, CityStoreError> {
        Ok(Self {
            db: OfflineDb::open(&city_data_dir.join(FILE_NAME))?,
        })
    }

    pub fn capsule(&self, batch_id: &BatchId) -> Result<Option<Capsule>, CityStoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CAPSULES)?;
        table
            .get(batch_id)?
            .map(|v| crate::messages::decode(v.value()).map_err(CityStoreError::from))
            .transpose()
    }
}

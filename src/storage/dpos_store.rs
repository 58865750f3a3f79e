//! A representative's durable vote store (`DATA_DIR/dpos.redb`): (continent, slot) → the
//! one vote it signed there. A vote is recorded (fsynced) before it is answered, and
//! [`DposStore::vote_once`] signs only when the slot is free, so an honest
//! representative never signs two batch ids for one slot, across crashes too.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};

use crate::messages::dpos::SignedVote;
use crate::messages::{WireError, decode, encode};

pub const FILE_NAME: &str = "dpos.redb";

const VOTES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("votes");

#[derive(Debug, thiserror::Error)]
pub enum DposStoreError {
    #[error("vote store: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("vote store: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("vote store: {0}")]
    Table(#[from] redb::TableError),
    #[error("vote store: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("vote store: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("vote store: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("vote store: {0}")]
    Decode(#[from] WireError),
    #[error("vote store: {0}")]
    Io(#[from] std::io::Error),
    #[error("signing the vote: {0}")]
    Sign(String),
}

pub type Result<T> = std::result::Result<T, DposStoreError>;

/// What [`DposStore::vote_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voted {
    /// Signed and recorded now.
    New(SignedVote),
    /// The slot already held this vote (for this batch or another).
    Earlier(SignedVote),
}

pub struct DposStore {
    db: Database,
    /// One vote decision at a time: read the slot, sign, record.
    turn: Mutex<()>,
}

impl DposStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(FILE_NAME))?;
        let tx = db.begin_write()?;
        tx.open_table(VOTES)?;
        tx.commit()?;
        Ok(Self {
            db,
            turn: Mutex::new(()),
        })
    }

    /// The vote for `(continent, slot)`: the recorded one, or a new one from `sign`,
    /// recorded (fsynced) before it is returned. Blocks.
    pub fn vote_once(
        &self,
        continent: &str,
        slot: u64,
        sign: impl FnOnce() -> std::result::Result<SignedVote, String>,
    ) -> Result<Voted> {
        let _turn = self
            .turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(VOTES)?;
            if let Some(v) = t.get((continent, slot))? {
                return Ok(Voted::Earlier(decode(v.value())?));
            }
        }
        let vote = sign().map_err(DposStoreError::Sign)?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.open_table(VOTES)?
            .insert((continent, slot), encode(&vote).as_slice())?;
        tx.commit()?;
        Ok(Voted::New(vote))
    }

    /// Votes signed so far.
    pub fn count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(VOTES)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::dpos::Vote;

    #[test]
    fn one_vote_per_slot_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed([1; 32]).unwrap();
        let sign = |batch: u8| {
            let key = &key;
            move || {
                SignedVote::sign(
                    key,
                    Vote {
                        continent: "asia".into(),
                        slot: 0,
                        batch_id: [batch; 32],
                        representative: "rep-1".into(),
                    },
                )
                .map_err(|e| e.to_string())
            }
        };
        let store = DposStore::open(dir.path()).unwrap();
        let Voted::New(first) = store.vote_once("asia", 0, sign(1)).unwrap() else {
            panic!("a first vote")
        };
        drop(store);
        let store = DposStore::open(dir.path()).unwrap();
        assert_eq!(
            store.vote_once("asia", 0, sign(2)).unwrap(),
            Voted::Earlier(first)
        );
        assert!(matches!(
            store.vote_once("asia", 1, sign(2)).unwrap(),
            Voted::New(_)
        ));
        assert_eq!(store.count().unwrap(), 2);
    }
}

//! Reading a stopped node's redb file without changing it, for the key holder's
//! `citychain vault open`.
//!
//! A file whose process did not close it (a node killed, or stopped without dropping its
//! database) must be repaired before it can be read, and a read-only open cannot repair.
//! Then a private copy is repaired and read instead, and removed when done: the node's own
//! file is never written.

use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, TransactionError,
};

/// A redb file opened for reading only.
pub struct OfflineDb {
    // Dropped before the copy it may read.
    db: Db,
    _copy: Option<RemoveOnDrop>,
}

enum Db {
    ReadOnly(ReadOnlyDatabase),
    RepairedCopy(Database),
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl OfflineDb {
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        match ReadOnlyDatabase::open(path) {
            Ok(db) => Ok(Self {
                db: Db::ReadOnly(db),
                _copy: None,
            }),
            Err(DatabaseError::RepairAborted) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let copy = std::env::temp_dir().join(format!(
                    "citychain-offline-{}-{nanos}.redb",
                    std::process::id()
                ));
                let guard = RemoveOnDrop(copy.clone());
                std::fs::copy(path, &copy)?;
                Ok(Self {
                    db: Db::RepairedCopy(Database::open(&copy)?),
                    _copy: Some(guard),
                })
            }
            Err(e) => Err(e),
        }
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match &self.db {
            Db::ReadOnly(db) => db.begin_read(),
            Db::RepairedCopy(db) => db.begin_read(),
        }
    }
}

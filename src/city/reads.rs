//! The read path: the body of a stored batch (and so of its transactions), for
//! `GET /v1/tx/{id}` and `GET /v1/batches/{id}?txs=true`.
//!
//! The city store is an index: it knows where a batch is, not what it says. A body comes
//! from the first source that answers, each tier within its own deadline (`[reads]`):
//! 1. the city's **body cache** (sealed bytes of recent batches, in `city.redb`);
//! 2. **light** nodes: any k of its pieces, rebuilt (only for a batch on light nodes,
//!    whose acks name the pieces);
//! 3. a **full** node: the holders the index names now or named before repair moved the
//!    batch up (their copies stay), or else any configured full node;
//! 4. **MongoDB** (`unfinished_` or `finished_` of the batch's month);
//! 5. the city's **immutable log**.
//!
//! Whatever comes back is sealed; the city opens it with the data key it wrapped under
//! its own read key when it sealed the batch (`DATA_DIR/read.key`, the read vault in
//! `city.redb`), and checks it: the bytes must be a sealed batch of the id asked for, the
//! opened body must match the header's Merkle root, body hash and count, and a
//! transaction must be one of its members. A source whose bytes fail any check is skipped
//! (and logged) as if it had not answered.
//!
//! Reads run in the HTTP handlers and their own tasks, never in an actor; at most
//! `[reads] max_concurrent` run at once (each holds at most one batch), and a read past
//! that is refused at once with 503 `overloaded`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ReadsConfig;
use crate::crypto::vault::ReadKey;
use crate::messages::sealed::open_as_sealer;
use crate::messages::{Batch, BatchId, StoredTx, Tier, TxId, hex32};
use crate::storage::city_store::{BatchRecord, CityStore, CityStoreError};
use crate::storage::readback::ReadBack;

/// Where a body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedFrom {
    Cache,
    Light,
    Full,
    Mongo,
    Log,
}

impl ServedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Light => "light",
            Self::Full => "full",
            Self::Mongo => "mongo",
            Self::Log => "log",
        }
    }
}

/// Why no body could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0} reads of transaction bodies in progress; retry shortly")]
    Overloaded(usize),
    /// No source answered with a sound copy in time: what each said.
    #[error("no storage tier returned the batch in time: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Index(#[from] CityStoreError),
}

/// An opened batch and where it came from.
#[derive(Debug)]
pub struct Opened {
    pub batch: Batch,
    pub from: ServedFrom,
}

impl Opened {
    /// The member `id` of the batch, if it is one (the batch was checked against its
    /// header, so its members are exactly the ids its Merkle root commits to).
    pub fn tx(&self, id: &TxId) -> Option<&StoredTx> {
        self.batch.body.iter().find(|t| t.id() == *id)
    }
}

/// One read's place among the `[reads] max_concurrent`.
pub struct ReadPermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// Reads and opens stored batches. Cheap to share.
pub struct Reader {
    store: Arc<CityStore>,
    back: ReadBack,
    key: Arc<ReadKey>,
    config: ReadsConfig,
    permits: Arc<Semaphore>,
}

impl Reader {
    pub fn new(
        store: Arc<CityStore>,
        back: ReadBack,
        key: Arc<ReadKey>,
        config: ReadsConfig,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            store,
            back,
            key,
            config,
        }
    }

    /// A place for one read, or [`ReadError::Overloaded`] at once when every place is
    /// taken.
    pub fn enter(&self) -> Result<ReadPermit, ReadError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map(ReadPermit)
            .map_err(|_| {
                metrics::counter!(crate::metrics::READS, "tier" => "none", "outcome" => "overloaded")
                    .increment(1);
                ReadError::Overloaded(self.config.max_concurrent)
            })
    }

    /// Opens `bytes` as batch `id` with the city's read key (on the blocking pool).
    async fn open(&self, id: BatchId, bytes: Vec<u8>) -> Result<Batch, String> {
        let store = self.store.clone();
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || {
            let wrapped = store
                .read_key(&id)
                .map_err(|e| e.to_string())?
                .ok_or("the read vault holds no key for this batch")?;
            let batch = open_as_sealer(&bytes, &id, &wrapped, &key).map_err(|e| e.to_string())?;
            // Edges that do not replay (a cycle, a forward edge) mean forged or corrupted
            // bytes, whatever their hash says.
            crate::engines::objects::verify_edges(&batch.deps, batch.body.len())
                .map_err(|e| format!("dependency edges: {e}"))?;
            Ok(batch)
        })
        .await
        .map_err(|e| format!("opening panicked: {e}"))?
    }

    /// The body of stored batch `rec`, from the first source that answers with a sound
    /// copy (see the module docs).
    pub async fn batch(
        &self,
        _permit: &ReadPermit,
        rec: &BatchRecord,
    ) -> Result<Opened, ReadError> {
        let id = rec.header.id();
        let started = Instant::now();
        let mut why = Vec::new();
        // The cache: local, no deadline beyond the open itself.
        let cached = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.cached_body(&id))
                .await
                .map_err(|e| ReadError::Unavailable(format!("the cache read panicked: {e}")))??
        };
        if let Some(bytes) = cached {
            match self.open(id, bytes).await {
                Ok(batch) => return Ok(self.served(ServedFrom::Cache, batch, started)),
                Err(e) => {
                    tracing::error!(batch = %hex32(&id), error = %e, "a cached body does not open");
                    self.failed(ServedFrom::Cache, "failed");
                    why.push(format!("cache: {e}"));
                }
            }
        }
        let past = self.store.past_homes(&id)?;
        let mut full_holders: Vec<String> = Vec::new();
        for home in past
            .iter()
            .chain(std::iter::once(&crate::storage::city_store::Home {
                tier: rec.tier,
                holders: rec.holders.clone(),
            }))
        {
            if home.tier == Tier::Full {
                for h in &home.holders {
                    if !full_holders.contains(h) {
                        full_holders.push(h.clone());
                    }
                }
            }
        }
        let light_acks = (rec.tier == Tier::Light && !rec.lost).then_some(&rec.acks);
        // MongoDB is asked only for a batch the index ever placed there: for any other,
        // a MongoDB that is down would cost every read its server selection timeout.
        let ever_in_mongo =
            rec.tier == Tier::Mongo || past.iter().any(|home| home.tier == Tier::Mongo);
        for from in [
            ServedFrom::Light,
            ServedFrom::Full,
            ServedFrom::Mongo,
            ServedFrom::Log,
        ] {
            let deadline = self.deadline(from);
            let fetch = async {
                match from {
                    ServedFrom::Light => match light_acks {
                        Some(acks) => self.back.light(id, acks, deadline).await,
                        None => Err("not on light nodes".into()),
                    },
                    ServedFrom::Full => self.back.full(id, &full_holders, deadline).await,
                    ServedFrom::Mongo => match self.back.mongo {
                        Some(_) if ever_in_mongo => {
                            self.back.mongo(id, rec.header.created_at_ms).await
                        }
                        Some(_) => Err("never stored on MongoDB".into()),
                        None => Err("no MongoDB is configured".into()),
                    },
                    ServedFrom::Log => self.back.log(id).await,
                    ServedFrom::Cache => unreachable!("the cache is read first"),
                }
            };
            let skipped = (from == ServedFrom::Light && light_acks.is_none())
                || (from == ServedFrom::Mongo && (self.back.mongo.is_none() || !ever_in_mongo));
            let bytes = match tokio::time::timeout(deadline, fetch).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    if !skipped {
                        self.failed(from, "failed");
                        tracing::debug!(batch = %hex32(&id), tier = from.as_str(), error = %e, "a tier did not return the batch");
                    }
                    why.push(format!("{}: {e}", from.as_str()));
                    continue;
                }
                Err(_) => {
                    self.failed(from, "timeout");
                    why.push(format!(
                        "{}: no answer within {} ms",
                        from.as_str(),
                        deadline.as_millis()
                    ));
                    continue;
                }
            };
            match self.open(id, bytes).await {
                Ok(batch) => return Ok(self.served(from, batch, started)),
                Err(e) => {
                    tracing::error!(batch = %hex32(&id), tier = from.as_str(), error = %e, "a copy read back does not open as the batch the city sealed");
                    self.failed(from, "failed");
                    why.push(format!("{}: {e}", from.as_str()));
                }
            }
        }
        metrics::counter!(crate::metrics::READS, "tier" => "none", "outcome" => "unavailable")
            .increment(1);
        Err(ReadError::Unavailable(why.join("; ")))
    }

    fn deadline(&self, from: ServedFrom) -> Duration {
        match from {
            ServedFrom::Cache | ServedFrom::Light => self.config.light_deadline,
            ServedFrom::Full => self.config.full_deadline,
            ServedFrom::Mongo => self.config.mongo_deadline,
            ServedFrom::Log => self.config.log_deadline,
        }
    }

    fn served(&self, from: ServedFrom, batch: Batch, started: Instant) -> Opened {
        metrics::counter!(crate::metrics::READS, "tier" => from.as_str(), "outcome" => "served")
            .increment(1);
        metrics::histogram!(crate::metrics::READ_LATENCY, "tier" => from.as_str())
            .record(started.elapsed().as_secs_f64());
        Opened { batch, from }
    }

    fn failed(&self, from: ServedFrom, outcome: &'static str) {
        metrics::counter!(crate::metrics::READS, "tier" => from.as_str(), "outcome" => outcome)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::{FlagKind, SealedBatch, Sealer, Urgency};
    use crate::storage::city_store::{NewBatch, TxRecord};
    use crate::storage::immutable_log::{ImmutableLog, RecordKind};

    struct Setup {
        reader: Reader,
        store: Arc<CityStore>,
        log: Arc<ImmutableLog>,
        _dir: tempfile::TempDir,
    }

    fn setup(body_cache_bytes: u64, max_concurrent: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            CityStore::open_bounded(dir.path(), 1 << 20, false, body_cache_bytes).unwrap(),
        );
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        let back = ReadBack {
            client: crate::testkit::peer_client(),
            nodes: Arc::new(crate::storage::nodes::NodeDirectory::from_config(&[]).unwrap()),
            mongo: None,
            log: log.clone(),
        };
        let key = Arc::new(ReadKey::load_or_create(&dir.path().join("read.key")).unwrap());
        let config = ReadsConfig {
            max_concurrent,
            ..ReadsConfig::default()
        };
        Setup {
            reader: Reader::new(store.clone(), back, key, config),
            store,
            log,
            _dir: dir,
        }
    }

    /// A sealed batch `seq` of three transactions, sealed with the setup's read key.
    fn sealed(setup: &Setup, seq: u64) -> SealedBatch {
        let key = SigningKey::from_seed([seq as u8 + 1; 32]).unwrap();
        let txs: Vec<_> = (0..3)
            .map(|n| crate::testkit::signed_tx(&key, n, FlagKind::FreshTx, 10 + n))
            .collect();
        let ids = txs.iter().map(|t| t.id).collect();
        let batch = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &txs, 7);
        let sealer = Sealer::new(
            "asia",
            crate::crypto::vault::VaultKey::generate()
                .unwrap()
                .public()
                .clone(),
        )
        .with_read_key(setup.reader.key.clone());
        SealedBatch::new(
            batch,
            ids,
            Urgency::Normal,
            std::time::Instant::now(),
            &sealer,
        )
        .unwrap()
    }

    async fn record(setup: &Setup, sealed: &SealedBatch, tier: Tier) -> BatchRecord {
        let rec = BatchRecord {
            header: sealed.batch.header.clone(),
            tx_ids: sealed.tx_ids.as_ref().clone(),
            tier,
            holders: vec![],
            acks: vec![],
            lost: false,
        };
        let txs = sealed
            .tx_ids
            .iter()
            .map(|id| {
                (
                    *id,
                    TxRecord {
                        flag: FlagKind::FreshTx,
                        batch_id: sealed.id,
                        tier,
                        holders: vec![],
                        acks: 0,
                        lost: false,
                    },
                )
            })
            .collect();
        let mut new = NewBatch::new(rec.clone(), txs, sealed.capsule.as_ref().clone());
        new.read_key = sealed.read_key.as_deref().cloned();
        new.sealed = Some(sealed.bytes.clone());
        setup.store.record(new).await.unwrap();
        rec
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_comes_from_the_cache_then_from_the_log_once_evicted() {
        // Room for one batch's body, not two.
        let size = sealed(&setup(0, 4), 0).bytes.len() as u64;
        let s = setup(size + size / 2, 4);
        let first = sealed(&s, 0);
        let rec0 = record(&s, &first, Tier::Log).await;
        s.log
            .append(RecordKind::Batch, first.bytes.to_vec())
            .await
            .unwrap();
        let permit = s.reader.enter().unwrap();
        let opened = s.reader.batch(&permit, &rec0).await.unwrap();
        assert_eq!(opened.from, ServedFrom::Cache);
        assert_eq!(opened.batch, *first.batch);
        let tx = opened.tx(&first.tx_ids[1]).unwrap();
        assert_eq!(tx.canonical, first.batch.body[1].canonical);
        assert!(opened.tx(&[9; 32]).is_none(), "not a member");

        // A second batch pushes the first out of the cache: it reads back from the log.
        let second = sealed(&s, 1);
        let rec1 = record(&s, &second, Tier::Log).await;
        assert_eq!(s.store.cached_body(&first.id).unwrap(), None);
        assert!(s.store.cached_body(&second.id).unwrap().is_some());
        let opened = s.reader.batch(&permit, &rec0).await.unwrap();
        assert_eq!(opened.from, ServedFrom::Log);
        assert_eq!(opened.batch, *first.batch);
        // The second is on no tier but in the cache: read from the cache. Once evicted
        // too, nothing holds it: unavailable, saying why.
        assert_eq!(
            s.reader.batch(&permit, &rec1).await.unwrap().from,
            ServedFrom::Cache
        );
        let third = sealed(&s, 2);
        record(&s, &third, Tier::Log).await;
        match s.reader.batch(&permit, &rec1).await {
            Err(ReadError::Unavailable(why)) => assert!(why.contains("not on the log"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_past_the_limit_are_refused_at_once() {
        let s = setup(1 << 20, 2);
        let a = s.reader.enter().unwrap();
        let _b = s.reader.enter().unwrap();
        assert!(matches!(s.reader.enter(), Err(ReadError::Overloaded(2))));
        drop(a);
        assert!(s.reader.enter().is_ok(), "a place is free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_read_key_nothing_opens() {
        let s = setup(1 << 20, 4);
        let first = sealed(&s, 0);
        let rec = record(&s, &first, Tier::Log).await;
        s.log
            .append(RecordKind::Batch, first.bytes.to_vec())
            .await
            .unwrap();
        // The same city.redb and log with another read key: neither the cached body nor
        // the log's copy opens.
        let stranger = Reader::new(
            s.store.clone(),
            s.reader.back.clone(),
            Arc::new(ReadKey::generate().unwrap()),
            s.reader.config.clone(),
        );
        let permit = stranger.enter().unwrap();
        match stranger.batch(&permit, &rec).await {
            Err(ReadError::Unavailable(why)) => {
                assert!(why.contains("cache:") && why.contains("log:"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // With its own key, the city opens it.
        let permit = s.reader.enter().unwrap();
        assert_eq!(
            s.reader.batch(&permit, &rec).await.unwrap().from,
            ServedFrom::Cache
        );
    }
}

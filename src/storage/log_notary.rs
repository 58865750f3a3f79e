//! The log notary: signs a city's tree heads and holds its log against them at start.
//!
//! **When heads are signed.** After a group commit of the log, at most once per
//! [`HEAD_INTERVAL`], and once more when the node stops. A head costs an ML-DSA-65
//! signature (about 0.2 ms) and an atomic rewrite of the heads file (two fsyncs); signing
//! on every group commit would add both to the last-resort tier's write path, and a
//! rate-limited signer keeps the cost to one head a second under any load. Records
//! appended within the last interval before a crash are not covered by a head yet; the
//! city's status index still names every batch it acknowledged on the log, and the start
//! audit (`storage::log_audit`) checks the log holds each of them, so a record cut from
//! that window is found as well.
//!
//! **At start** ([`LogNotary::open`]) the log must still match every head in the file. If
//! it does not (records were cut from its end, or changed with the chain rebuilt), the
//! notary says so at error level, moves the heads the log no longer matches into the
//! file's list of losses (with the latest one as signed evidence), and signs a head over
//! the log as it now is, so that it can go on. `citychain log verify` keeps failing on the
//! recorded loss.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::immutable_log::ImmutableLog;
use super::immutable_log::heads::{Break, HeadsError, HeadsFile, Loss, SignedHead, Standing};
use crate::crypto::{CryptoError, SigningKey};
use crate::messages::now_ms;

/// Least time between two signed heads while the log grows.
pub const HEAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    #[error(transparent)]
    Heads(#[from] HeadsError),
    #[error("signing a log head: {0}")]
    Sign(#[from] CryptoError),
}

/// What the notary found when the node started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFinding {
    /// No head had been signed: a new log, or one kept before heads were signed.
    FirstHead { records: u64 },
    /// The log holds everything its heads cover; `unsigned` records followed the latest.
    Sound { unsigned: u64 },
    /// The log lost records its heads covered, or they were changed.
    Broken(Break),
}

/// Signs heads over one log and keeps the heads file. `Send + Sync`; share it via `Arc`.
pub struct LogNotary {
    path: PathBuf,
    key: Arc<SigningKey>,
    log: Arc<ImmutableLog>,
    file: Mutex<HeadsFile>,
}

impl LogNotary {
    /// Opens the heads file in `data_dir` (or starts one), checks it was signed by `key`,
    /// holds `log` against it, records a loss if there is one, and signs a head over the
    /// log as it is. Blocks on file I/O and signatures.
    pub fn open(
        data_dir: &Path,
        log: Arc<ImmutableLog>,
        key: impl Into<Arc<SigningKey>>,
    ) -> Result<(Self, StartFinding), NotaryError> {
        let key = key.into();
        let path = HeadsFile::path_in(data_dir);
        let records = log.size();
        metrics::gauge!(crate::metrics::LOG_RECORDS_LOST).set(0.0);
        let (file, finding) = match HeadsFile::load(&path)? {
            None => {
                if records > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        records,
                        "no signed head for a log that holds records (kept before heads were signed, or the heads file was removed); signing one now"
                    );
                }
                (HeadsFile::new(&key), StartFinding::FirstHead { records })
            }
            Some(mut file) => {
                file.verify(&path, Some(key.public_key()))?;
                let finding = match super::immutable_log::heads::standing(
                    &file.heads,
                    records,
                    |size| log.root(size),
                ) {
                    Standing::Unsigned { records } => StartFinding::FirstHead { records },
                    Standing::Matches { .. } => StartFinding::Sound { unsigned: 0 },
                    Standing::Ahead { head, records } => {
                        tracing::info!(
                            signed = head.size,
                            records,
                            "records were appended after the latest signed head (the node stopped before signing them); signing them now"
                        );
                        StartFinding::Sound {
                            unsigned: records - head.size,
                        }
                    }
                    Standing::Broken(brk) => {
                        tracing::error!(
                            log = %log.path().display(),
                            heads = %path.display(),
                            records,
                            signed = brk.head.size,
                            first_bad = brk.first_bad,
                            missing = brk.missing(),
                            "the immutable log does not hold what this node signed: {brk}"
                        );
                        metrics::gauge!(crate::metrics::LOG_RECORDS_LOST)
                            .set((brk.head.size - brk.first_bad) as f64);
                        file.record_loss(&brk, records, now_ms());
                        StartFinding::Broken(brk)
                    }
                };
                (file, finding)
            }
        };
        let notary = Self {
            path,
            key,
            log,
            file: Mutex::new(file),
        };
        // The file is written even when the latest head still fits: a loss just recorded
        // (or a first file) must reach the disk.
        notary.sign(true)?;
        Ok((notary, finding))
    }

    /// Signs a head over the log if it grew since the latest one; returns it.
    pub fn sign_now(&self) -> Result<Option<SignedHead>, NotaryError> {
        self.sign(false)
    }

    fn sign(&self, always_save: bool) -> Result<Option<SignedHead>, NotaryError> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let (size, root) = self.log.tree_head();
        let fresh = file
            .latest()
            .is_some_and(|h| h.size == size && h.root == root);
        let head = if fresh {
            None
        } else {
            let head = SignedHead::sign(&self.key, size, root, now_ms())?;
            file.push(head.clone());
            Some(head)
        };
        if head.is_some() || always_save {
            file.save(&self.path)?;
        }
        if head.is_some() {
            metrics::counter!(crate::metrics::LOG_HEADS_SIGNED).increment(1);
        }
        Ok(head)
    }

    /// The latest signed head.
    pub fn latest(&self) -> SignedHead {
        self.lock()
            .latest()
            .cloned()
            .expect("open signs a head before the notary is handed out")
    }

    /// The signed head of exactly `size` records, if the history still holds one.
    pub fn at(&self, size: u64) -> Option<SignedHead> {
        self.lock().at(size).cloned()
    }

    /// Every loss the heads file records.
    pub fn losses(&self) -> Vec<Loss> {
        self.lock().losses.clone()
    }

    /// The signing key's raw public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// The signing key's address.
    pub fn signer(&self) -> String {
        self.key.address()
    }

    /// The heads file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeadsFile> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs a head after each group commit, at most once per `interval`, until the
    /// returned task is stopped; [`NotaryTask::stop`] signs a last one.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> NotaryTask {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let notary = self.clone();
        let mut appended = self.log.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { break },
                    _ = stop_rx.changed() => break,
                }
                let signer = notary.clone();
                match tokio::task::spawn_blocking(move || signer.sign_now()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        metrics::counter!(crate::metrics::LOG_HEAD_FAILURES).increment(1);
                        tracing::error!(error = %e, "signing the immutable log's head failed; records appended since the last head are not covered");
                    }
                    Err(e) => tracing::error!(error = %e, "the log head signer panicked"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop_rx.changed() => break,
                }
            }
        });
        NotaryTask {
            notary: self.clone(),
            stop: stop_tx,
            task,
        }
    }
}

/// The running signer of [`LogNotary::spawn`].
pub struct NotaryTask {
    notary: Arc<LogNotary>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NotaryTask {
    /// Stops the signer and signs a head over whatever the log holds now.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let notary = self.notary;
        match tokio::task::spawn_blocking(move || notary.sign_now()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "signing the log's last head failed"),
            Err(e) => tracing::error!(error = %e, "the log head signer panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::messages::{Batch, FlagKind, Tier};
    use crate::storage::city_store::{BatchRecord, CityStore, TxRecord};
    use crate::storage::immutable_log::heads::{HISTORY, Standing, standing};
    use crate::storage::immutable_log::{LOG_FILE, RecordKind};

    fn key() -> SigningKey {
        SigningKey::from_seed([7; 32]).unwrap()
    }

    /// A real (empty) batch `seq` and its sealed encoding.
    fn batch(seq: u64) -> (Batch, Vec<u8>) {
        crate::testkit::sealed_empty_batch(seq)
    }

    /// A data dir with a log of `n` batch records and a notary over it.
    async fn city_log(n: u64) -> (tempfile::TempDir, Arc<ImmutableLog>, LogNotary) {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        let (notary, finding) = LogNotary::open(dir.path(), log.clone(), key()).unwrap();
        assert_eq!(finding, StartFinding::FirstHead { records: 0 });
        for seq in 0..n {
            log.append(RecordKind::Batch, batch(seq).1).await.unwrap();
        }
        (dir, log, notary)
    }

    /// Cuts the last `k` whole records from the log file in `dir/log`.
    fn cut_records(dir: &Path, k: usize) {
        let file = dir.join("log").join(LOG_FILE);
        let records = ImmutableLog::read_all(&dir.join("log")).unwrap();
        let tail: usize = records[records.len() - k..]
            .iter()
            .map(|r| 4 + postcard::to_stdvec(r).unwrap().len())
            .sum();
        let bytes = fs::read(&file).unwrap();
        fs::write(&file, &bytes[..bytes.len() - tail]).unwrap();
    }

    #[tokio::test]
    async fn heads_are_signed_over_the_log_and_kept_apart_from_it() {
        let (dir, log, notary) = city_log(3).await;
        assert_eq!(notary.latest().size, 0, "a head over the empty log at open");
        let head = notary.sign_now().unwrap().expect("the log grew");
        assert_eq!((head.size, Some(head.root)), (3, log.root(3)));
        head.verify(key().public_key()).unwrap();
        assert_eq!(notary.sign_now().unwrap(), None, "nothing new to sign");

        let file = HeadsFile::load(
            &dir.path()
                .join(crate::storage::immutable_log::heads::HEADS_FILE),
        )
        .unwrap()
        .unwrap();
        file.verify(notary.path(), Some(key().public_key()))
            .unwrap();
        assert_eq!(file.latest(), Some(&head));
        assert_eq!(file.at(0).map(|h| h.size), Some(0));
        // A signature does not carry over to another size or root.
        let mut forged = head.clone();
        forged.size = 2;
        assert!(forged.verify(key().public_key()).is_err());
        let other = SigningKey::from_seed([8; 32]).unwrap();
        assert!(head.verify(other.public_key()).is_err());
    }

    #[tokio::test]
    async fn the_history_is_bounded() {
        let (_dir, log, notary) = city_log(0).await;
        for seq in 0..(HISTORY as u64 + 5) {
            log.append(RecordKind::Batch, batch(seq).1).await.unwrap();
            notary.sign_now().unwrap().unwrap();
        }
        let file = notary.lock().clone();
        assert_eq!(file.heads.len(), HISTORY);
        assert_eq!(file.latest().unwrap().size, HISTORY as u64 + 5);
    }

    #[tokio::test]
    async fn the_signer_task_signs_after_appends_and_at_stop() {
        let (_dir, log, notary) = city_log(0).await;
        let notary = Arc::new(notary);
        let task = notary.spawn(Duration::from_millis(10));
        log.append(RecordKind::Batch, batch(0).1).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while notary.latest().size < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "no head after an append"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        log.append(RecordKind::Batch, batch(1).1).await.unwrap();
        task.stop().await;
        assert_eq!(notary.latest().size, 2, "a last head at stop");
    }

    #[tokio::test]
    async fn a_log_cut_below_its_signed_head_is_found_and_the_loss_recorded() {
        let (dir, log, notary) = city_log(5).await;
        notary.sign_now().unwrap().unwrap();
        drop((notary, log));
        cut_records(dir.path(), 2);

        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        assert_eq!(log.size(), 3);
        let (notary, finding) = LogNotary::open(dir.path(), log.clone(), key()).unwrap();
        let StartFinding::Broken(brk) = finding else {
            panic!("expected a break, got {finding:?}");
        };
        assert!(brk.is_truncation());
        assert_eq!((brk.first_bad, brk.exact, brk.missing()), (3, true, 2));
        // The loss is on disk with the head that proves it; the node goes on with a head
        // over what the log holds now.
        let losses = notary.losses();
        assert_eq!(losses.len(), 1);
        assert_eq!((losses[0].head.size, losses[0].first_bad), (5, 3));
        assert_eq!(notary.latest().size, 3);
        assert_eq!(Some(notary.latest().root), log.root(3));
        drop((notary, log));
        let file = HeadsFile::load(&HeadsFile::path_in(dir.path()))
            .unwrap()
            .unwrap();
        file.verify(Path::new("x"), Some(key().public_key()))
            .unwrap();
        assert_eq!(file.losses.len(), 1);
        assert!(file.heads.iter().all(|h| h.size <= 3));

        // The next start finds the log sound against its heads; the loss stays recorded.
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        let (notary, finding) = LogNotary::open(dir.path(), log, key()).unwrap();
        assert_eq!(finding, StartFinding::Sound { unsigned: 0 });
        assert_eq!(notary.losses().len(), 1);
    }

    #[tokio::test]
    async fn heads_of_another_key_or_forged_heads_refuse_to_open() {
        let (dir, log, notary) = city_log(2).await;
        notary.sign_now().unwrap();
        drop(notary);
        let other = SigningKey::from_seed([9; 32]).unwrap();
        match LogNotary::open(dir.path(), log.clone(), other) {
            Err(NotaryError::Heads(HeadsError::WrongKey { .. })) => {}
            other => panic!("expected WrongKey, got {:?}", other.map(|(_, f)| f)),
        }
        // A head whose root was changed by hand no longer verifies.
        let path = HeadsFile::path_in(dir.path());
        let mut file = HeadsFile::load(&path).unwrap().unwrap();
        file.heads.last_mut().unwrap().root[0] ^= 1;
        file.save(&path).unwrap();
        match LogNotary::open(dir.path(), log, key()) {
            Err(NotaryError::Heads(HeadsError::BadSignature { .. })) => {}
            other => panic!("expected BadSignature, got {:?}", other.map(|(_, f)| f)),
        }
    }

    #[test]
    fn standing_names_where_a_log_stops_matching() {
        use crate::storage::immutable_log::merkle::{Tree, leaf_hash};
        let tree = |n: u64, changed: Option<u64>| {
            let mut t = Tree::new();
            for i in 0..n {
                let body = if Some(i) == changed {
                    format!("x{i}")
                } else {
                    format!("r{i}")
                };
                t.push(leaf_hash(body.as_bytes()));
            }
            t
        };
        let signed = tree(10, None);
        let heads: Vec<_> = [0u64, 4, 7, 10]
            .iter()
            .map(|&s| SignedHead::sign(&key(), s, signed.root(s).unwrap(), s).unwrap())
            .collect();
        let at = |t: &Tree| standing(&heads, t.len(), |s| t.root(s));

        assert!(matches!(at(&signed), Standing::Matches { .. }));
        assert!(matches!(
            at(&tree(12, None)),
            Standing::Ahead { records: 12, .. }
        ));
        assert!(matches!(
            standing(&[], 3, |_| None),
            Standing::Unsigned { records: 3 }
        ));
        // Cut to 8: record 8 is the first missing.
        let Standing::Broken(brk) = at(&tree(8, None)) else {
            panic!()
        };
        assert_eq!(
            (brk.good, brk.head.size, brk.first_bad, brk.exact),
            (7, 10, 8, true)
        );
        // Record 5 changed with the chain rebuilt: somewhere in 4..7.
        let Standing::Broken(brk) = at(&tree(10, Some(5))) else {
            panic!()
        };
        assert_eq!(
            (brk.good, brk.head.size, brk.first_bad, brk.exact),
            (4, 7, 4, false)
        );
        assert!(brk.to_string().contains("among 4..6"), "{brk}");
    }

    fn log_batch_record(seq: u64) -> (BatchRecord, Vec<(crate::messages::TxId, TxRecord)>) {
        let (b, _) = batch(seq);
        let tx_id = [seq as u8 + 1; 32];
        (
            BatchRecord {
                header: b.header.clone(),
                tx_ids: vec![tx_id],
                tier: Tier::Log,
                holders: vec!["city-tokyo".into()],
                acks: vec![],
                lost: false,
            },
            vec![(
                tx_id,
                TxRecord {
                    flag: FlagKind::FreshTx,
                    batch_id: b.id(),
                    tier: Tier::Log,
                    holders: vec!["city-tokyo".into()],
                    acks: 0,
                    lost: false,
                },
            )],
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_start_audit_marks_batches_the_log_lost_and_relocation_ends_it() {
        let (dir, log, notary) = city_log(3).await;
        let store = CityStore::open(dir.path()).unwrap();
        for seq in 0..3 {
            let (b, t) = log_batch_record(seq);
            let capsule = crate::testkit::stand_in_capsule(b.header.id());
            store
                .record(crate::storage::city_store::NewBatch::new(b, t, capsule))
                .await
                .unwrap();
        }
        assert!(
            crate::storage::log_audit::audit(&store, &log)
                .unwrap()
                .is_empty()
        );
        drop((notary, log));
        cut_records(dir.path(), 1);
        let log = ImmutableLog::open(&dir.path().join("log")).unwrap();

        let lost = crate::storage::log_audit::audit(&store, &log).unwrap();
        let gone = batch(2).0.id();
        assert_eq!(
            lost.iter().map(|b| b.header.id()).collect::<Vec<_>>(),
            [gone]
        );
        let tx = store.get_tx(&[3; 32]).unwrap().unwrap();
        assert!(tx.lost, "the cut batch's transaction is not stored");
        assert!(!store.get_tx(&[1; 32]).unwrap().unwrap().lost);
        assert!(store.get_batch(&gone).unwrap().unwrap().lost);
        assert_eq!(store.lost_count().unwrap(), 1);
        // Not found again at the next start, and left out of repair upward.
        assert!(
            crate::storage::log_audit::audit(&store, &log)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .batches_below_light(10)
                .unwrap()
                .iter()
                .all(|b| b.header.id() != gone)
        );

        store
            .relocate(&gone, Tier::Full, vec!["full-1".into()], vec![])
            .unwrap();
        assert!(!store.get_tx(&[3; 32]).unwrap().unwrap().lost);
        assert_eq!(store.lost_count().unwrap(), 0);
        assert!(store.lost_batches(10).unwrap().is_empty());
    }
}

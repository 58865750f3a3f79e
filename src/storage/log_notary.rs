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
    key: SigningKey,
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
        key: SigningKey,
    ) -> Result<(Self, StartFinding), NotaryError> {
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

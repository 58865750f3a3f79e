//! Signed tree heads: a city's ML-DSA-65 signature over the size and Merkle root of its
//! log, kept apart from the log in `DATA_DIR/log-heads.json`.
//!
//! The hash chain proves that the records of a log follow one another; it cannot prove
//! that records are missing from its end, nor that nobody rebuilt the chain after changing
//! a record. A signed head can: the log must still hold a tree with the signed root at the
//! signed size. The heads file holds the latest head and the ones before it (at most
//! [`HISTORY`]), the node's public key, and every loss the city found at a start (a head
//! it had signed that its log no longer matched), so the evidence outlives the restart.
//!
//! The signed bytes are `"citychain/log-head/v1" ‖ 0x00 ‖ postcard((size, root, time_ms))`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::{self, Hash32, SigningKey};

/// The heads file's name in the node's data dir.
pub const HEADS_FILE: &str = "log-heads.json";
/// Domain tag of head signatures.
pub const HEAD_TAG: &str = "citychain/log-head/v1";
/// Heads kept in the file, the latest included. Each is about 4.5 KB of JSON (the
/// signature), and the file is rewritten whole at every head.
pub const HISTORY: usize = 32;
/// Losses kept in the file, the most recent ones.
pub const MAX_LOSSES: usize = 16;
/// Version of the file's format.
pub const FORMAT_VERSION: u32 = 1;

/// A signed statement: "my log's first `size` records have Merkle root `root`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub size: u64,
    /// Hex of the RFC 6962 root (BLAKE3) over the first `size` records.
    #[serde(with = "hex_hash")]
    #[schema(value_type = String)]
    pub root: Hash32,
    /// When it was signed, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Base64 of the ML-DSA-65 signature over [`SignedHead::signed_bytes`].
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String)]
    pub signature: Vec<u8>,
}

impl SignedHead {
    /// The bytes a head's signature covers.
    pub fn signed_bytes(size: u64, root: &Hash32, time_ms: u64) -> Vec<u8> {
        let body = postcard::to_stdvec(&(size, root, time_ms))
            .expect("postcard encodes integers and byte arrays");
        crypto::tagged(HEAD_TAG, &body)
    }

    pub fn sign(key: &SigningKey, size: u64, root: Hash32, time_ms: u64) -> crypto::Result<Self> {
        let signature = key.sign(&Self::signed_bytes(size, &root, time_ms))?;
        Ok(Self {
            size,
            root,
            time_ms,
            signature,
        })
    }

    /// Checks the signature under `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> crypto::Result<()> {
        crypto::verify(
            public_key,
            &Self::signed_bytes(self.size, &self.root, self.time_ms),
            &self.signature,
        )
    }
}

/// A head the city had signed that its log no longer matched when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Loss {
    /// When the city found it, milliseconds since the Unix epoch.
    pub detected_ms: u64,
    /// Records the log held then.
    pub log_records: u64,
    /// The first record index that was missing or no longer matched (see [`Break`]).
    pub first_bad: u64,
    /// Whether `first_bad` is exact, or only the earliest record that may be bad.
    pub exact: bool,
    /// The head that covered the lost records, as it was signed.
    pub head: SignedHead,
}

/// `DATA_DIR/log-heads.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsFile {
    pub version: u32,
    /// The signer's address (hex of the first 20 bytes of BLAKE3 of its public key).
    pub signer: String,
    /// Base64 of the signer's ML-DSA-65 public key.
    #[serde(with = "base64_bytes")]
    pub public_key: Vec<u8>,
    /// Signed heads by increasing size, the latest last.
    pub heads: Vec<SignedHead>,
    /// Losses found at a start, oldest first.
    #[serde(default)]
    pub losses: Vec<Loss>,
}

/// Why a heads file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a heads file: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: {what} does not verify under the file's public key")]
    BadSignature { path: String, what: String },
    #[error(
        "{path}: signed by {found}, not by this node's key {expected}: the heads file belongs to another key"
    )]
    WrongKey {
        path: String,
        found: String,
        expected: String,
    },
}

impl HeadsFile {
    pub fn new(key: &SigningKey) -> Self {
        Self {
            version: FORMAT_VERSION,
            signer: key.address(),
            public_key: key.public_key().to_vec(),
            heads: Vec::new(),
            losses: Vec::new(),
        }
    }

    /// The heads file of the node whose data dir is `data_dir`.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(HEADS_FILE)
    }

    /// Reads the file; `Ok(None)` if there is none. Checks its form, not its signatures.
    pub fn load(path: &Path) -> Result<Option<Self>, HeadsError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(HeadsError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let format = |reason: String| HeadsError::Format {
            path: path.display().to_string(),
            reason,
        };
        let file: Self = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(format(format!("unsupported version {}", file.version)));
        }
        if file.signer != crypto::address_of(&file.public_key) {
            return Err(format("signer is not the public key's address".into()));
        }
        if file.heads.windows(2).any(|w| w[0].size > w[1].size) {
            return Err(format("heads are not in order of size".into()));
        }
        Ok(Some(file))
    }

    /// Checks every head's and every loss's signature under the file's public key, and,
    /// given `expected`, that the file's key is that one.
    pub fn verify(&self, path: &Path, expected: Option<&[u8]>) -> Result<(), HeadsError> {
        if let Some(expected) = expected
            && expected != self.public_key.as_slice()
        {
            return Err(HeadsError::WrongKey {
                path: path.display().to_string(),
                found: self.signer.clone(),
                expected: crypto::address_of(expected),
            });
        }
        let bad = |what: String| HeadsError::BadSignature {
            path: path.display().to_string(),
            what,
        };
        for head in &self.heads {
            head.verify(&self.public_key)
                .map_err(|_| bad(format!("the head of size {}", head.size)))?;
        }
        for loss in &self.losses {
            loss.head.verify(&self.public_key).map_err(|_| {
                bad(format!(
                    "the lost head of size {} (found {})",
                    loss.head.size, loss.detected_ms
                ))
            })?;
        }
        Ok(())
    }

    /// Writes the file atomically: a temporary file, fsynced, renamed over the old one,
    /// and the directory fsynced, so a crash leaves the old file or the new, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), HeadsError> {
        let io = |source| HeadsError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("a heads file serializes");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&text).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, path).map_err(io)?;
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    pub fn latest(&self) -> Option<&SignedHead> {
        self.heads.last()
    }

    /// The signed head of exactly `size` records, if the history holds one.
    pub fn at(&self, size: u64) -> Option<&SignedHead> {
        self.heads.iter().rev().find(|h| h.size == size)
    }

    /// Adds the newest head, keeping at most [`HISTORY`].
    pub fn push(&mut self, head: SignedHead) {
        self.heads.push(head);
        if self.heads.len() > HISTORY {
            let excess = self.heads.len() - HISTORY;
            self.heads.drain(..excess);
        }
    }

    /// Records a loss: the heads the log no longer matches leave the history, and the
    /// latest of them is kept as the loss's evidence.
    pub fn record_loss(&mut self, brk: &Break, records: u64, now_ms: u64) {
        let Some(latest) = self.heads.last().cloned() else {
            return;
        };
        self.heads.retain(|h| h.size <= brk.good);
        self.losses.push(Loss {
            detected_ms: now_ms,
            log_records: records,
            first_bad: brk.first_bad,
            exact: brk.exact,
            head: latest,
        });
        if self.losses.len() > MAX_LOSSES {
            let excess = self.losses.len() - MAX_LOSSES;
            self.losses.drain(..excess);
        }
    }
}

/// How a log stands against the heads signed over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No head was signed yet.
    Unsigned { records: u64 },
    /// The log is exactly what the latest head covers.
    Matches { head: SignedHead },
    /// Every head matches a prefix of the log; the records past the latest are not signed
    /// yet (appended since, or a crash came before their head).
    Ahead { head: SignedHead, records: u64 },
    /// The log does not hold what a signed head covers.
    Broken(Break),
}

/// Where a log stops matching its signed heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Size of the largest head the log still matches (0 if none).
    pub good: u64,
    /// The smallest head it does not match.
    pub head: SignedHead,
    /// Records in the log.
    pub records: u64,
    /// The first bad record index. When the log is shorter than `head` (records were cut
    /// from its end) that is `records`, the first missing one. When the log is long enough
    /// but its root differs (records were changed and the chain rebuilt), the first bad
    /// record lies in `good..head.size` and this is `good`, the earliest it can be.
    pub first_bad: u64,
    /// Whether `first_bad` is known exactly.
    pub exact: bool,
}

impl Break {
    /// Whether records were cut from the log's end (rather than changed).
    pub fn is_truncation(&self) -> bool {
        self.records < self.head.size
    }

    /// Records the signed head covered that are missing from the log.
    pub fn missing(&self) -> u64 {
        self.head.size.saturating_sub(self.records)
    }
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_truncation() {
            write!(
                f,
                "first bad record {}: missing. The log holds {} records, but a head signed at {} ms covers {}",
                self.records, self.records, self.head.time_ms, self.head.size
            )?;
            if self.good < self.records {
                write!(
                    f,
                    " (records {}..{} are chained soundly, but only the head of size {} still vouches for the log)",
                    self.good,
                    self.records - 1,
                    self.good
                )?;
            }
            Ok(())
        } else if self.exact {
            write!(
                f,
                "first bad record {}: changed. The log no longer has the root signed at {} ms for its first {} records",
                self.first_bad, self.head.time_ms, self.head.size
            )
        } else {
            write!(
                f,
                "first bad record among {}..{}: changed, with the chain rebuilt over it. The log matches the head of size {} but not the one signed at {} ms for its first {} records",
                self.good,
                self.head.size - 1,
                self.good,
                self.head.time_ms,
                self.head.size
            )
        }
    }
}

/// Holds a log of `records` records against `heads` (by increasing size); `root_at(size)`
/// is the log's root over its first `size` records.
pub fn standing(
    heads: &[SignedHead],
    records: u64,
    root_at: impl Fn(u64) -> Option<Hash32>,
) -> Standing {
    let mut good = 0;
    for head in heads {
        if root_at(head.size) == Some(head.root) {
            good = head.size;
            continue;
        }
        let (first_bad, exact) = if records < head.size {
            (records, true)
        } else {
            (good, head.size == good + 1)
        };
        return Standing::Broken(Break {
            good,
            head: head.clone(),
            records,
            first_bad,
            exact,
        });
    }
    match heads.last() {
        None => Standing::Unsigned { records },
        Some(head) if head.size == records => Standing::Matches { head: head.clone() },
        Some(head) => Standing::Ahead {
            head: head.clone(),
            records,
        },
    }
}

/// Hex of a 32-byte hash in JSON.
pub mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::crypto::Hash32;

    pub fn serialize<S: Serializer>(h: &Hash32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash32, D::Error> {
        let text = String::deserialize(d)?;
        crate::messages::parse_hex32(&text)
            .ok_or_else(|| D::Error::custom("expected 64 hex characters"))
    }
}

/// Base64 of bytes in JSON.
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(D::Error::custom)
    }
}

//! The MongoDB tier: one deployment per continent, between full nodes and the immutable log.
//!
//! A city writes to its own continent's MongoDB (`[storage.mongo] uris`, or
//! `CITYCHAIN_MONGO_URI_<CONTINENT>`). Each batch becomes one document in the collection of
//! its creation month, `unfinished_YYYYMM` (UTC), keyed by the hex batch id and written with
//! `$setOnInsert` and `upsert`, so a retried write neither duplicates nor rewrites it. The
//! write concern is majority with journaling: an acknowledged batch survives the loss of
//! the primary.
//!
//! Like every tier this is a fallback, bounded by its deadline: the whole attempt
//! (resolving the URI, connecting, selecting a server, the majority write) fits in
//! `[storage.mongo] deadline`, so a dead cluster costs at most that before the chain moves
//! on to the log. The driver's client is created on first use, not at node start, so a
//! node whose MongoDB is down still starts.
//!
//! Documents hold the sealed batch (see `messages::sealed`) and only its clear routing
//! fields (city, sequence, key id, transaction count, times), never transaction ids. The
//! batch's capsule goes first to the `[vault] mongo_collection` collection (`vault` by
//! default) of the same deployment, keyed by batch id and never expiring, so every batch
//! this deployment holds can be opened by the continent's key holder from it alone.
//!
//! Once the city's Repairer has moved a batch up to full or light nodes, the document
//! moves to the month's `finished_YYYYMM` collection ([`MongoTier::finish`]): copied
//! first, then removed from `unfinished_`, so an interrupted move leaves it in both, never
//! in neither. Reads look in both.
//!
//! Each month's collection gets its TTL index on `created_at` (documents are dropped after
//! [`TTL`]) the first time this process writes to it. It is built in the background so
//! the month's first write is not slowed; a failure is logged and retried on a later
//! write, and never fails the write itself.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::bson::document::ValueAccessError;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, DateTime, Document, doc};
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::OnceCell;

use crate::config::MongoConfig;
use crate::crypto;
use crate::messages::{Capsule, SealError, SealedBatch, SealedEnvelope, hex32};

/// Prefix of the monthly collections of batches not yet repaired to a higher tier.
pub const UNFINISHED_PREFIX: &str = "unfinished_";
/// Prefix of the monthly collections of batches a higher tier holds again.
pub const FINISHED_PREFIX: &str = "finished_";
/// How long a document is kept after its batch was created (the TTL index).
pub const TTL: Duration = Duration::from_secs(180 * 24 * 60 * 60);
/// The collection of capsules unless `[vault] mongo_collection` names another.
pub const DEFAULT_VAULT_COLLECTION: &str = "vault";
/// The application name the driver reports to the server (visible in its logs).
const APP_NAME: &str = "citychain";
/// MongoDB's duplicate-key error: two concurrent upserts of one id, one of which lost.
const DUPLICATE_KEY: i32 = 11000;
/// Longest index build this process waits for before it gives up and retries later.
const INDEX_TIMEOUT: Duration = Duration::from_secs(30);
/// Characters of a driver error kept in a failure reason; topology dumps run long.
const MAX_REASON_CHARS: usize = 240;
const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;

/// Why a MongoDB operation failed. Driver errors keep their cause; their text is cut to one
/// short line because topology dumps run long in a failure reason.
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("invalid MongoDB URI: {}", short(&.0.kind))]
    Uri(#[source] DriverError),
    #[error("cannot create the client: {}", short(&.0.kind))]
    Client(#[source] DriverError),
    #[error("{}", short(&.0.kind))]
    Driver(#[from] DriverError),
    #[error("no answer within the deadline of {0:?}")]
    Deadline(Duration),
    #[error("seq {0} does not fit a BSON int64")]
    SeqOutOfRange(u64),
    #[error("stored document has no binary `bytes`: {0}")]
    NoBytes(#[source] ValueAccessError),
    #[error("stored document has no `blake3`: {0}")]
    NoHash(#[source] ValueAccessError),
    #[error("stored bytes do not match their blake3")]
    HashMismatch,
    #[error("stored bytes are a different batch")]
    OtherBatch,
    #[error("stored bytes are not a sealed batch: {0}")]
    NotABatch(#[source] SealError),
}

/// The MongoDB deployment of one continent. It serves as a storage tier (see
/// `storage::mongo_tier`) and as a source for repair.
///
/// No `Debug`: the URI may carry credentials.
pub struct MongoTier {
    continent: String,
    uri: String,
    database: String,
    deadline: Duration,
    connect_timeout: Duration,
    server_selection_timeout: Duration,
    /// The collection capsules are written to.
    vault_collection: String,
    /// Created on first use; stays empty after a failed attempt, so the next one retries.
    client: OnceCell<Client>,
    /// Collections whose indexes are built or being built by this process.
    prepared: Arc<Mutex<HashSet<String>>>,
}

impl MongoTier {
    /// The tier for `continent`, or `None` when no URI is configured for it. Cheap and
    /// offline: the URI is not even parsed until the first write.
    pub fn new(cfg: &MongoConfig, continent: &str) -> Option<Self> {
        let uri = cfg.uri_for(continent)?;
        Some(Self {
            continent: continent.to_owned(),
            uri,
            database: cfg.database.clone(),
            deadline: cfg.deadline,
            connect_timeout: cfg.connect_timeout,
            server_selection_timeout: cfg.server_selection_timeout,
            vault_collection: DEFAULT_VAULT_COLLECTION.into(),
            client: OnceCell::new(),
            prepared: Arc::default(),
        })
    }

    /// Writes capsules to `collection` instead of [`DEFAULT_VAULT_COLLECTION`].
    pub fn with_vault_collection(mut self, collection: &str) -> Self {
        self.vault_collection = collection.to_owned();
        self
    }

    /// The capsule of batch `batch_id` from this deployment's vault collection, for a key
    /// holder opening what MongoDB holds. Bounded by the tier's deadline.
    pub async fn get_capsule(&self, batch_id: &[u8; 32]) -> Result<Option<Capsule>, MongoError> {
        let read = async {
            let coll = self.collection(&self.vault_collection).await?;
            let found = coll.find_one(doc! { "_id": hex32(batch_id) }).await?;
            found
                .map(|d| {
                    let bytes = d
                        .get_binary_generic("capsule")
                        .map_err(MongoError::NoBytes)?;
                    match Capsule::from_bytes(bytes) {
                        Ok(c) if c.batch_id == *batch_id => Ok(c),
                        Ok(_) => Err(MongoError::OtherBatch),
                        Err(e) => Err(MongoError::NotABatch(e)),
                    }
                })
                .transpose()
        };
        self.bounded(read).await
    }

    /// The continent whose deployment this is.
    pub fn continent(&self) -> &str {
        &self.continent
    }

    /// The holder named in store outcomes: `mongo:<continent>`.
    pub fn holder(&self) -> String {
        format!("mongo:{}", self.continent)
    }

    /// The stored encoding of a batch, for repair: `None` when this deployment does not
    /// hold it. `created_at_ms` (the batch header's) names the month's collection. Bounded
    /// by the tier's deadline; the bytes are checked against the stored BLAKE3 and the
    /// batch id before they are returned.
    pub async fn get_batch(
        &self,
        batch_id: &[u8; 32],
        created_at_ms: u64,
    ) -> Result<Option<Vec<u8>>, MongoError> {
        let read = async {
            for name in [
                collection_for(created_at_ms),
                finished_collection_for(created_at_ms),
            ] {
                let found = self
                    .collection(&name)
                    .await?
                    .find_one(doc! { "_id": hex32(batch_id) })
                    .projection(doc! { "bytes": 1, "blake3": 1 })
                    .await?;
                if let Some(d) = found {
                    return checked_bytes(&d, batch_id).map(Some);
                }
            }
            Ok(None)
        };
        self.bounded(read).await
    }

    /// Writes a batch, once, after its capsule: a retried write neither duplicates nor
    /// rewrites either. The whole attempt is bounded by the tier's deadline.
    pub async fn put_batch(&self, sealed: &SealedBatch) -> Result<(), MongoError> {
        self.bounded(async {
            self.upsert_capsule(sealed).await?;
            self.upsert(sealed).await
        })
        .await
    }

    /// Moves batch `batch_id` (created at `created_at_ms`) from its month's `unfinished_`
    /// collection to `finished_`, once a higher tier holds it again: the document is
    /// copied (once) before it is removed, so a move cut short leaves it in both and a
    /// later call finishes it. False if `unfinished_` does not hold it (already moved, or
    /// never here). Bounded by the tier's deadline.
    pub async fn finish(
        &self,
        batch_id: &[u8; 32],
        created_at_ms: u64,
    ) -> Result<bool, MongoError> {
        self.bounded(async {
            let id = hex32(batch_id);
            let from = self.collection(&collection_for(created_at_ms)).await?;
            let Some(mut fields) = from.find_one(doc! { "_id": &id }).await? else {
                return Ok(false);
            };
            fields.remove("_id");
            fields.insert("finished_at", DateTime::now());
            let name = finished_collection_for(created_at_ms);
            let to = self.collection(&name).await?;
            insert_once(&to, &id, fields).await?;
            self.prepare(to, name);
            from.delete_one(doc! { "_id": &id }).await?;
            Ok(true)
        })
        .await
    }

    /// Runs `op` within the deadline.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, MongoError>>,
    ) -> Result<T, MongoError> {
        tokio::time::timeout(self.deadline, op)
            .await
            .unwrap_or(Err(MongoError::Deadline(self.deadline)))
    }

    async fn client(&self) -> Result<&Client, MongoError> {
        self.client
            .get_or_try_init(|| async {
                // For mongodb+srv:// this resolves DNS, hence async and inside the deadline.
                let mut opts = ClientOptions::parse(&self.uri)
                    .await
                    .map_err(MongoError::Uri)?;
                opts.app_name = Some(APP_NAME.into());
                opts.connect_timeout = Some(self.connect_timeout);
                opts.server_selection_timeout = Some(self.server_selection_timeout);
                let client = Client::with_options(opts).map_err(MongoError::Client)?;
                tracing::debug!(continent = %self.continent, "MongoDB client created");
                Ok(client)
            })
            .await
    }

    /// The collection `name` with the majority, journaled write concern.
    async fn collection(&self, name: &str) -> Result<Collection<Document>, MongoError> {
        let write_concern = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            // Let the server report a slow majority itself rather than only time out here.
            .w_timeout(self.deadline)
            .build();
        let options = CollectionOptions::builder()
            .write_concern(write_concern)
            .build();
        Ok(self
            .client()
            .await?
            .database(&self.database)
            .collection_with_options(name, options))
    }

    async fn upsert_capsule(&self, sealed: &SealedBatch) -> Result<(), MongoError> {
        let coll = self.collection(&self.vault_collection).await?;
        insert_once(
            &coll,
            &hex32(&sealed.id),
            capsule_fields(sealed, DateTime::now()),
        )
        .await
    }

    async fn upsert(&self, sealed: &SealedBatch) -> Result<(), MongoError> {
        let name = collection_for(sealed.batch.header.created_at_ms);
        let fields = insert_fields(sealed, DateTime::now())?;
        let coll = self.collection(&name).await?;
        insert_once(&coll, &hex32(&sealed.id), fields).await?;
        self.prepare(coll, name);
        Ok(())
    }

    /// Builds the collection's indexes in the background, once per collection and process.
    fn prepare(&self, coll: Collection<Document>, name: String) {
        if !self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone())
        {
            return;
        }
        let prepared = self.prepared.clone();
        let continent = self.continent.clone();
        tokio::spawn(async move {
            let built = match tokio::time::timeout(
                INDEX_TIMEOUT,
                coll.create_indexes(index_models()),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(MongoError::from(e)),
                Err(_elapsed) => Err(MongoError::Deadline(INDEX_TIMEOUT)),
            };
            match built {
                Ok(()) => {
                    tracing::debug!(%continent, collection = %name, "MongoDB indexes ready")
                }
                Err(error) => {
                    tracing::warn!(
                        %continent,
                        collection = %name,
                        %error,
                        "could not create the MongoDB indexes; will retry on a later write"
                    );
                    prepared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&name);
                }
            }
        });
    }
}

/// The collection of a batch created at `created_at_ms` (Unix ms): `unfinished_YYYYMM`,
/// the UTC month.
pub fn collection_for(created_at_ms: u64) -> String {
    let (year, month) = year_month(created_at_ms);
    format!("{UNFINISHED_PREFIX}{year:04}{month:02}")
}

/// The collection of a batch created at `created_at_ms` once a higher tier holds it again:
/// `finished_YYYYMM`.
pub fn finished_collection_for(created_at_ms: u64) -> String {
    let (year, month) = year_month(created_at_ms);
    format!("{FINISHED_PREFIX}{year:04}{month:02}")
}

/// The UTC year and month (1–12) of a Unix time in milliseconds. Howard Hinnant's
/// `civil_from_days`, restricted to days on or after 1970-01-01 so it stays unsigned.
fn year_month(ms: u64) -> (u64, u64) {
    // Days since 0000-03-01, counting in 400-year eras of 146 097 days whose years start
    // in March, so the leap day is the last day of its year.
    let z = ms / MS_PER_DAY + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month)
}

/// The document's fields other than `_id`, as first written: the sealed bytes and only
/// clear routing fields.
fn insert_fields(sealed: &SealedBatch, stored_at: DateTime) -> Result<Document, MongoError> {
    let header = &sealed.batch.header;
    let seq = i64::try_from(header.seq).map_err(|_| MongoError::SeqOutOfRange(header.seq))?;
    Ok(doc! {
        "city_id": &header.city_id,
        "seq": seq,
        "tx_count": i64::from(header.tx_count),
        "key_id": &sealed.capsule.key_id,
        "bytes": Binary { subtype: BinarySubtype::Generic, bytes: sealed.bytes.to_vec() },
        "blake3": hex32(&crypto::hash(&sealed.bytes)),
        "created_at": DateTime::from_millis(i64::try_from(header.created_at_ms).unwrap_or(i64::MAX)),
        "stored_at": stored_at,
    })
}

/// The vault document of a batch's capsule, other than `_id` (the batch id).
fn capsule_fields(sealed: &SealedBatch, stored_at: DateTime) -> Document {
    doc! {
        "key_id": &sealed.capsule.key_id,
        "capsule": Binary { subtype: BinarySubtype::Generic, bytes: sealed.capsule.to_bytes() },
        "created_at": DateTime::from_millis(i64::try_from(sealed.batch.header.created_at_ms).unwrap_or(i64::MAX)),
        "stored_at": stored_at,
    }
}

/// The `bytes` of a stored document, refused unless they hash to its `blake3` and are a
/// sealed batch `batch_id`.
fn checked_bytes(doc: &Document, batch_id: &[u8; 32]) -> Result<Vec<u8>, MongoError> {
    let bytes = doc
        .get_binary_generic("bytes")
        .map_err(MongoError::NoBytes)?;
    let blake3 = doc.get_str("blake3").map_err(MongoError::NoHash)?;
    if hex32(&crypto::hash(bytes)) != blake3.to_ascii_lowercase() {
        return Err(MongoError::HashMismatch);
    }
    match SealedEnvelope::from_bytes(bytes) {
        Ok(envelope) if envelope.id() == *batch_id => Ok(bytes.clone()),
        Ok(_) => Err(MongoError::OtherBatch),
        Err(e) => Err(MongoError::NotABatch(e)),
    }
}

/// A TTL index on `created_at`. (No index by transaction: transaction ids are not stored
/// in clear; the city's own status index finds a transaction's batch.)
fn index_models() -> Vec<IndexModel> {
    vec![
        IndexModel::builder()
            .keys(doc! { "created_at": 1 })
            .options(IndexOptions::builder().expire_after(TTL).build())
            .build(),
    ]
}

/// Writes `fields` as document `id` (a hex batch id) unless it is there already: a
/// repeated write, or a concurrent one that inserted it first, finds it stored.
async fn insert_once(
    coll: &Collection<Document>,
    id: &str,
    fields: Document,
) -> Result<(), MongoError> {
    let written = coll
        .update_one(doc! { "_id": id }, doc! { "$setOnInsert": fields })
        .upsert(true)
        .await;
    match written {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn is_duplicate_key(e: &DriverError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY
    )
}

/// An error on one line, cut to [`MAX_REASON_CHARS`]. Driver errors pass their `kind`:
/// the rest (labels, source) is noise in a failure reason.
fn short(e: &impl Display) -> String {
    let text = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests;

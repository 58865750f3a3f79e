//! The MongoDB tier against a real MongoDB.
//!
//! Every test is skipped (and says so) unless `CITYCHAIN_TEST_MONGO_URI` names a server,
//! e.g. `mongodb://127.0.0.1:27017/?directConnection=true`. Each test works in a database
//! of its own, `citychain_test_<pid>_<random>`, and drops it at the end, even when it fails.
//! The batches are created "now" or later, so the 180-day TTL monitor cannot remove them
//! while a test runs.

mod common;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use citychain::config::MongoConfig;
use citychain::crypto::vault::VaultKey;
use citychain::crypto::{self, SigningKey};
use citychain::messages::{
    Batch, FlagKind, Placement, SealedBatch, SealedEnvelope, Sealer, SignedTx, StoreJob, Urgency,
    hex32, now_ms,
};
use citychain::storage::mongo::{MongoTier, TTL, collection_for};
use citychain::storage::tier::StorageTier;
use citychain_harness::client::TxDraft;
use futures::{FutureExt, TryStreamExt};
use mongodb::Client;
use mongodb::bson::{Document, doc};

const SKIP: &str = "skipped: no MongoDB (set CITYCHAIN_TEST_MONGO_URI to run)";
/// A continent no `CITYCHAIN_MONGO_URI_<CONTINENT>` variable overrides.
const CONTINENT: &str = "test-integration";
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Generous timers: these tests check what is stored, not how fast.
fn config(uri: &str, database: &str) -> MongoConfig {
    MongoConfig {
        uris: BTreeMap::from([(CONTINENT.to_owned(), uri.to_owned())]),
        database: database.to_owned(),
        deadline: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        server_selection_timeout: Duration::from_secs(5),
    }
}

/// Runs `body` with a tier over a fresh database and a client of its own, then drops the
/// database whether or not `body` panicked.
async fn with_database<F, Fut>(uri: &str, body: F)
where
    F: FnOnce(MongoTier, Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let database = format!(
        "citychain_test_{}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    let tier = MongoTier::new(&config(uri, &database), CONTINENT).expect("a URI is configured");
    let client = Client::with_uri_str(uri).await.expect("a valid test URI");
    let outcome = AssertUnwindSafe(body(tier, client.clone(), database.clone()))
        .catch_unwind()
        .await;
    if let Err(e) = client.database(&database).drop().await {
        eprintln!("could not drop {database}: {e}");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn signed(key: &SigningKey, nonce: u64) -> SignedTx {
    let body = TxDraft::new("bob", 5, "tokyo", nonce)
        .sign_body(key)
        .unwrap();
    SignedTx::from_request_bytes(&body).unwrap()
}

/// A real batch of two signed transactions created at `created_at_ms`.
fn job(seq: u64, created_at_ms: u64) -> StoreJob {
    let key = SigningKey::generate().unwrap();
    let txs = vec![signed(&key, 1), signed(&key, 2)];
    let tx_ids = txs.iter().map(|t| t.id).collect();
    let batch = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &txs, created_at_ms);
    let sealer = Sealer::new(CONTINENT, holder().public().clone());
    StoreJob {
        sealed: SealedBatch::new(batch, tx_ids, Urgency::Normal, Instant::now(), &sealer).unwrap(),
        placement: Placement::default(),
    }
}

/// The key holder the test batches are sealed for.
fn holder() -> &'static VaultKey {
    static KEY: std::sync::OnceLock<VaultKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| VaultKey::generate().unwrap())
}

fn created_at(job: &StoreJob) -> u64 {
    job.sealed.batch.header.created_at_ms
}

async fn store_ok(tier: &MongoTier, job: &StoreJob) {
    let result = tier.store(job).await;
    let stored = result.outcome.expect("MongoDB stores the batch");
    assert_eq!(stored.holders, vec![format!("mongo:{CONTINENT}")]);
    assert!(stored.acks.is_empty());
}

#[tokio::test]
async fn a_stored_batch_reads_back_byte_for_byte() {
    let Some(uri) = std::env::var("CITYCHAIN_TEST_MONGO_URI").ok() else {
        println!("{SKIP}");
        return;
    };
    with_database(&uri, |tier, _client, _database| async move {
        let job = job(0, now_ms());
        store_ok(&tier, &job).await;
        let back = tier.get_batch(&job.sealed.id, created_at(&job)).await;
        assert_eq!(back.unwrap(), Some(job.sealed.bytes.to_vec()));
        let missing = tier.get_batch(&[7; 32], created_at(&job)).await;
        assert_eq!(missing.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn storing_twice_keeps_one_unchanged_document() {
    let Some(uri) = std::env::var("CITYCHAIN_TEST_MONGO_URI").ok() else {
        println!("{SKIP}");
        return;
    };
    with_database(&uri, |tier, client, database| async move {
        let job = job(0, now_ms());
        let coll = client
            .database(&database)
            .collection::<Document>(&collection_for(created_at(&job)));
        let filter = doc! { "_id": hex32(&job.sealed.id) };

        store_ok(&tier, &job).await;
        let first = coll.find_one(filter.clone()).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store_ok(&tier, &job).await;
        let second = coll.find_one(filter.clone()).await.unwrap().unwrap();

        assert_eq!(coll.count_documents(filter).await.unwrap(), 1);
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
        assert_eq!(first, second, "a retry does not rewrite the document");
    })
    .await;
}

#[tokio::test]
async fn the_month_collection_gets_a_ttl_index_and_none_by_transaction() {
    let Some(uri) = std::env::var("CITYCHAIN_TEST_MONGO_URI").ok() else {
        println!("{SKIP}");
        return;
    };
    with_database(&uri, |tier, client, database| async move {
        let job = job(0, now_ms());
        store_ok(&tier, &job).await;
        let coll = client
            .database(&database)
            .collection::<Document>(&collection_for(created_at(&job)));

        // The tier builds indexes in the background after the month's first write.
        let waited = Instant::now();
        let indexes = loop {
            let names = coll.list_index_names().await.unwrap();
            if names.len() >= 2 || waited.elapsed() > Duration::from_secs(20) {
                let models: Vec<_> = coll
                    .list_indexes()
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                break (names, models);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (names, models) = indexes;
        println!("indexes: {names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("created_at")),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with("tx_ids")), "{names:?}");
        let ttl = models
            .iter()
            .find(|m| m.keys == doc! { "created_at": 1 })
            .expect("an index on created_at");
        let expire_after = ttl.options.as_ref().and_then(|o| o.expire_after);
        assert_eq!(expire_after, Some(TTL), "expireAfterSeconds of 180 days");
    })
    .await;
}

#[tokio::test]
async fn each_batch_lands_in_its_months_collection_with_its_fields() {
    let Some(uri) = std::env::var("CITYCHAIN_TEST_MONGO_URI").ok() else {
        println!("{SKIP}");
        return;
    };
    with_database(&uri, |tier, client, database| async move {
        let now = now_ms();
        // 40 days apart: always two different months.
        let jobs = [job(0, now), job(1, now + 40 * DAY_MS)];
        for job in &jobs {
            store_ok(&tier, job).await;
        }
        let db = client.database(&database);
        let names = db.list_collection_names().await.unwrap();
        println!("collections: {names:?}");
        assert_ne!(
            collection_for(created_at(&jobs[0])),
            collection_for(created_at(&jobs[1]))
        );
        for (seq, job) in jobs.iter().enumerate() {
            let name = collection_for(created_at(job));
            assert!(names.contains(&name), "{name} in {names:?}");
            let doc = db
                .collection::<Document>(&name)
                .find_one(doc! { "_id": hex32(&job.sealed.id) })
                .await
                .unwrap()
                .expect("the batch is in its month's collection");
            assert_eq!(doc.get_str("city_id").unwrap(), "tokyo");
            assert_eq!(doc.get_i64("seq").unwrap(), seq as i64);
            assert_eq!(doc.get_i64("tx_count").unwrap(), 2);
            // Sealed bytes, and no transaction id anywhere in the document.
            let raw = mongodb::bson::to_vec(&doc).unwrap();
            for id in job.sealed.tx_ids.iter() {
                for needle in [id.to_vec(), hex32(id).into_bytes()] {
                    assert!(!raw.windows(needle.len()).any(|w| w == needle.as_slice()));
                }
            }
            assert_eq!(
                doc.get_binary_generic("bytes").unwrap(),
                &job.sealed.bytes.to_vec()
            );
            // The capsule is in the deployment's vault collection, and with the holder's
            // key it opens what MongoDB holds.
            let capsule = tier
                .get_capsule(&job.sealed.id)
                .await
                .unwrap()
                .expect("the capsule is in the vault collection");
            let envelope =
                SealedEnvelope::from_bytes(doc.get_binary_generic("bytes").unwrap()).unwrap();
            let opened = citychain::messages::sealed::open(
                &envelope,
                &capsule,
                std::slice::from_ref(holder()),
            )
            .unwrap();
            assert_eq!(opened, *job.sealed.batch);
            assert_eq!(
                doc.get_str("blake3").unwrap(),
                hex32(&crypto::hash(&job.sealed.bytes))
            );
            let created = doc.get_datetime("created_at").unwrap();
            assert_eq!(created.timestamp_millis() as u64, created_at(job));
            assert!(doc.get_datetime("stored_at").is_ok());
        }
    })
    .await;
}

/// Runs everywhere, no MongoDB needed: a city whose MongoDB is unreachable still answers
/// within the 500 ms budget, from the immutable log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mongodb_falls_through_to_the_log_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{}

[supervisor]
chain = ["mongo", "log"]

[storage.mongo]
deadline = "200ms"
connect_timeout = "100ms"
server_selection_timeout = "150ms"

[storage.mongo.uris]
asia = "mongodb://127.0.0.1:1/?directConnection=true"
"#,
        common::city_node_section(dir.path())
    );
    let node = common::spawn_node(dir.path(), &config, true).await;
    let client = common::client();
    let key = citychain::crypto::SigningKey::generate().unwrap();
    for n in 0..3 {
        let started = std::time::Instant::now();
        let (status, body) = common::post(&client, &node.url, &common::signed(&key, n)).await;
        let took = started.elapsed();
        println!("request {n}: {took:?}");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tier"], "log", "{body}");
        assert!(
            took < std::time::Duration::from_millis(500),
            "answered in {took:?}, over the 500 ms budget"
        );
    }
    let metrics = common::metrics(&client, &node.url).await;
    assert!(
        metrics.contains("citychain_tier_failures_total{tier=\"mongo\"} 3"),
        "{metrics}"
    );
}

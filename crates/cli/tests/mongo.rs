//! The MongoDB tier against a MongoDB wire server.
//!
//! The server is the one `CITYCHAIN_TEST_MONGO_URI` names (e.g.
//! `mongodb://127.0.0.1:27017/?directConnection=true`), or else a wire-protocol stand-in
//! (nx-27017, on SQLite) that the test installs under `target/` and starts on loopback
//! ([`citychain_harness::mongo_stand_in`]); only without either, and without `python3`,
//! is a test skipped, and it says so. What only a real deployment has (majority write
//! concern, replica-set failover) is not tested against the stand-in. Each test works in
//! a database of its own, `citychain_test_<pid>_<random>`, and drops it at the end, even
//! when it fails.
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
use citychain::storage::mongo::{MongoTier, TTL, collection_for, finished_collection_for};
use citychain::storage::tier::StorageTier;
use citychain_harness::client::TxDraft;
use citychain_harness::mongo_stand_in::MongoServer;
use futures::{FutureExt, TryStreamExt};
use mongodb::Client;
use mongodb::bson::{Document, doc};

const SKIP: &str =
    "skipped: no MongoDB (set CITYCHAIN_TEST_MONGO_URI, or install python3 for the stand-in)";
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

/// The MongoDB to test against, with its data (if a stand-in) under `dir`; `None` (and the
/// test is skipped) only when there is neither a configured server nor Python.
fn mongo_server(dir: &std::path::Path) -> Option<MongoServer> {
    let install = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mongo-stand-in");
    let server = MongoServer::start(dir, &install).expect("a MongoDB to test against");
    if server.is_none() {
        println!("{SKIP}");
    }
    server
}

/// Runs `body` with a tier over a fresh database and a client of its own, then drops the
/// database whether or not `body` panicked.
async fn with_database<F, Fut>(body: F)
where
    F: FnOnce(MongoTier, Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = mongo_server(dir.path()) else {
        return;
    };
    let uri = server.uri.as_str();
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

/// An integer field, written as Int64; read as either width, since some wire servers hand
/// small Int64 values back as Int32.
fn int(doc: &Document, key: &str) -> i64 {
    match doc.get(key) {
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        other => panic!("{key} is not an integer: {other:?}"),
    }
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
    with_database(|tier, _client, _database| async move {
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
    with_database(|tier, client, database| async move {
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
    with_database(|tier, client, database| async move {
        let job = job(0, now_ms());
        store_ok(&tier, &job).await;
        let coll = client
            .database(&database)
            .collection::<Document>(&collection_for(created_at(&job)));

        // The tier builds indexes in the background after the month's first write. They
        // are found by their keys: servers name them as they like.
        let models = common::wait_for(
            "an index on created_at",
            Duration::from_secs(20),
            || async {
                let models: Vec<_> = coll
                    .list_indexes()
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                models
                    .iter()
                    .any(|m| m.keys == doc! { "created_at": 1 })
                    .then_some(models)
            },
        )
        .await;
        let keys: Vec<_> = models.iter().map(|m| &m.keys).collect();
        println!("index keys: {keys:?}");
        assert!(
            !keys.iter().any(|k| k.contains_key("tx_ids")),
            "no index by transaction: {keys:?}"
        );
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
    with_database(|tier, client, database| async move {
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
            assert_eq!(int(&doc, "seq"), seq as i64);
            assert_eq!(int(&doc, "tx_count"), 2);
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

#[tokio::test]
async fn a_finished_batch_moves_to_its_finished_collection_and_still_reads_back() {
    with_database(|tier, client, database| async move {
        let job = job(0, now_ms());
        store_ok(&tier, &job).await;
        let db = client.database(&database);
        let filter = doc! { "_id": hex32(&job.sealed.id) };
        let (unfinished, finished) = (
            db.collection::<Document>(&collection_for(created_at(&job))),
            db.collection::<Document>(&finished_collection_for(created_at(&job))),
        );
        let before = unfinished.find_one(filter.clone()).await.unwrap().unwrap();

        assert!(tier.finish(&job.sealed.id, created_at(&job)).await.unwrap());
        assert_eq!(unfinished.count_documents(filter.clone()).await.unwrap(), 0);
        let after = finished.find_one(filter.clone()).await.unwrap().unwrap();
        for field in ["bytes", "blake3", "city_id", "created_at", "stored_at"] {
            assert_eq!(after.get(field), before.get(field), "{field} kept");
        }
        assert!(after.get_datetime("finished_at").is_ok());
        let back = tier.get_batch(&job.sealed.id, created_at(&job)).await;
        assert_eq!(back.unwrap(), Some(job.sealed.bytes.to_vec()));

        // Again: nothing left to move, and still one copy.
        assert!(!tier.finish(&job.sealed.id, created_at(&job)).await.unwrap());
        assert_eq!(finished.count_documents(filter).await.unwrap(), 1);
        // A move cut short after its copy (the batch in both) completes on the next call.
        store_ok(&tier, &job).await;
        assert!(tier.finish(&job.sealed.id, created_at(&job)).await.unwrap());
        assert_eq!(unfinished.count_documents(doc! {}).await.unwrap(), 0);
        assert_eq!(finished.count_documents(doc! {}).await.unwrap(), 1);
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

/// A city whose full node is down stores on MongoDB (the batch and, in the vault
/// collection, its capsule), answers `tier:"mongo"`, and repairs the batch up to the full
/// node once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_stores_on_mongodb_while_its_full_node_is_down_and_repairs_up_to_it() {
    use base64::Engine;
    let root = tempfile::tempdir().unwrap();
    let Some(server) = mongo_server(root.path()) else {
        return;
    };
    let database = format!("citychain_test_{}_city", std::process::id());
    let (city_dir, full_dir) = (root.path().join("city"), root.path().join("full"));
    let full_key = SigningKey::generate().unwrap();
    full_key.save(&full_dir.join("data/node.key")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    common::give_test_city_key(&city_dir.join("data"));
    let city_config = format!(
        r#"{}

[supervisor]
chain = ["full", "mongo", "log"]

[repair]
interval = "100ms"

[storage]
full_deadline = "300ms"

[[storage.nodes]]
id = "full-1"
role = "full"
url = "http://127.0.0.1:{port}"
continent = "asia"
public_key = "{}"

[storage.mongo]
database = "{database}"

[storage.mongo.uris]
asia = "{}"
"#,
        common::city_node_section(&city_dir),
        base64::engine::general_purpose::STANDARD.encode(full_key.public_key()),
        server.uri,
    );
    let city = common::spawn_node(&city_dir, &city_config, true).await;
    let client = common::client();
    let key = SigningKey::generate().unwrap();
    let req = common::signed(&key, 1);
    let (status, body) = common::post(&client, &city.url, &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "mongo", "the full node is down: {body}");
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();

    // MongoDB holds the sealed batch and, in the vault collection, its capsule.
    let mongo = Client::with_uri_str(&server.uri).await.unwrap();
    let db = mongo.database(&database);
    let filter = doc! { "_id": &batch_id };
    let mut held = 0;
    for name in db.list_collection_names().await.unwrap() {
        held += db
            .collection::<Document>(&name)
            .count_documents(filter.clone())
            .await
            .unwrap();
    }
    assert_eq!(held, 2, "the batch and its capsule");

    let full_config = format!(
        "[node]\nid = \"full-1\"\nrole = \"full\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{}",
        full_dir.join("data").display(),
        common::serves_test_city()
    );
    let _full = common::spawn_node(&full_dir, &full_config, true).await;
    let url = format!("{}/v1/tx/{}", city.url, common::tx_id(&req));
    let repaired = common::wait_for(
        "the batch repaired up to the full node",
        Duration::from_secs(30),
        || async {
            let (_, b) = common::get(&client, &url).await;
            (b["tier"] == "full").then_some(b)
        },
    )
    .await;
    assert_eq!(repaired["holders"][0], "full-1", "{repaired}");
    assert_eq!(repaired["batch_id"], batch_id.as_str(), "{repaired}");
    // Repaired up, the batch is filed under the month's finished collection.
    common::wait_for(
        "the batch filed as finished in MongoDB",
        Duration::from_secs(10),
        || async {
            let mut at = Vec::new();
            for name in db.list_collection_names().await.ok()? {
                if db
                    .collection::<Document>(&name)
                    .count_documents(filter.clone())
                    .await
                    .ok()?
                    > 0
                {
                    at.push(name);
                }
            }
            at.sort();
            (at.len() == 2 && at[0].starts_with("finished_") && at[1] == "vault").then_some(())
        },
    )
    .await;
    let _ = db.drop().await;
}

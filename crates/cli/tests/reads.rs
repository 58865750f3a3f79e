//! The read path on a real federation of child processes: the city keeps an index and a
//! bounded cache of sealed bodies, and reads a transaction's body back from the first
//! source that answers: its body cache, any k pieces on light nodes, a full node, MongoDB
//! (the stand-in of `mongo.rs`), its immutable log. Each read says where the body came
//! from, the per-tier metrics move, a read no tier can answer is a 503 that still carries
//! the index fields, and the cache keeps to its bound while evicted bodies read back from
//! the tiers.
//!
//! Batches reach several tiers the way they do in service: stored on a lower tier while
//! the upper ones are stopped, then repaired up by the Repairer once they are back (the
//! lower copies stay).

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use citychain::config::{Config, Role};
use citychain::crypto::SigningKey;
use citychain::messages::TxRequest;
use citychain_harness::federation::{Federation, FederationSpec, watchful};
use citychain_harness::mongo_stand_in::MongoServer;
use common::*;
use serde_json::Value;

/// The MongoDB the city of [`tiers_then_reads`] uses (set before its federation is
/// planned; a tweak is a plain function).
static MONGO_URI: OnceLock<String> = OnceLock::new();

/// Bytes of body cache in [`small_cache`]: room for about one single-transaction batch.
const SMALL_CACHE: u64 = 9_000;

/// Generous read deadlines: these runs check where a body comes from, not how fast (a
/// loaded 2-core machine must not turn a slow light read into a full one). No cache, so
/// every read goes to the tiers; MongoDB when the test has one.
fn no_cache(c: &mut Config) {
    watchful(c);
    generous(c);
    c.reads.body_cache_bytes = 0;
    if let Some(uri) = MONGO_URI.get() {
        c.storage.mongo.uris.insert("asia".into(), uri.clone());
        c.storage.mongo.deadline = Duration::from_secs(5);
    }
}

fn small_cache(c: &mut Config) {
    watchful(c);
    generous(c);
    c.reads.body_cache_bytes = SMALL_CACHE;
}

fn generous(c: &mut Config) {
    c.reads.light_deadline = Duration::from_secs(5);
    c.reads.full_deadline = Duration::from_secs(5);
    c.reads.mongo_deadline = Duration::from_secs(5);
    c.reads.log_deadline = Duration::from_secs(5);
}

async fn launch(dir: &std::path::Path, tweak: fn(&mut Config)) -> Federation {
    let spec = FederationSpec {
        tweak,
        ..citychain_harness::testkit::watchful_spec(dir.to_path_buf(), binary())
    };
    Federation::launch(spec)
        .await
        .expect("the federation starts")
}

/// `GET /v1/tx/{id}` of `req`: 200, served from `tier`, the body the one sent. Returns the
/// answer and how long it took.
async fn read_from(
    client: &reqwest::Client,
    city: &str,
    req: &TxRequest,
    tier: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let (status, got) = get(client, &format!("{city}/v1/tx/{}", tx_id(req))).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["served_from"], tier, "{got}");
    assert_the_body_sent(req, &got);
    (got, took)
}

/// The answer's `tx` is the transaction sent: the same JSON, whose canonical bytes give
/// the same transaction id under the signature sent.
fn assert_the_body_sent(req: &TxRequest, got: &Value) {
    assert_eq!(got["tx"], serde_json::to_value(&req.tx).unwrap(), "{got}");
    let back: citychain::messages::Tx = serde_json::from_value(got["tx"].clone()).unwrap();
    let again = TxRequest {
        tx: back,
        public_key: req.public_key.clone(),
        signature: req.signature.clone(),
    };
    assert_eq!(tx_id(&again), tx_id(req));
    assert_eq!(got["tx_id"], tx_id(req));
}

/// Waits until the city's index places the batch of `tx` (a receipt) on `tier`.
async fn wait_tier(client: &reqwest::Client, city: &str, tx: &Value, tier: &str) -> Value {
    wait_for(
        &format!("the batch to be repaired up to {tier}"),
        Duration::from_secs(60),
        || async {
            let batch = batch_of(client, city, tx).await;
            (batch["tier"] == tier).then_some(batch)
        },
    )
    .await
}

/// Posts `req`, expecting it stored on `tier`.
async fn post_to(client: &reqwest::Client, city: &str, req: &TxRequest, tier: &str) -> Value {
    let (status, stored) = post(client, city, req).await;
    assert_eq!(
        (status, stored["tier"].as_str()),
        (200, Some(tier)),
        "{stored}"
    );
    stored
}

async fn kill_all(fed: &mut Federation, client: &reqwest::Client, role: Role) {
    let ids = fed.ids(role);
    for id in &ids {
        fed.kill(id).unwrap();
    }
    wait_nodes(client, &fed.city_url(), &ids, false).await;
}

async fn restart_all(fed: &mut Federation, client: &reqwest::Client, role: Role) {
    let ids = fed.ids(role);
    for id in &ids {
        fed.restart(id).await.unwrap();
    }
    wait_nodes(client, &fed.city_url(), &ids, true).await;
}

/// The value of counter `citychain_reads_total{tier,outcome}` (0 when absent).
fn reads_total(metrics: &str, tier: &str, outcome: &str) -> u64 {
    let labels = [format!("tier=\"{tier}\""), format!("outcome=\"{outcome}\"")];
    metrics
        .lines()
        .filter(|l| l.starts_with("citychain_reads_total{"))
        .filter(|l| labels.iter().all(|x| l.contains(x.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Read latencies of one source, in ms.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn report(&mut self, tier: &str, target_ms: Option<u64>) {
        self.0.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| self.0[((self.0.len() as f64 * q).ceil() as usize).saturating_sub(1)];
        println!(
            "{tier:<6} reads {:>4}  p50 {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms{}",
            self.0.len(),
            at(0.5),
            at(0.95),
            at(1.0),
            target_ms.map_or(String::new(), |t| format!("  (deadline {t} ms)"))
        );
    }
}

/// The whole walk down the tiers. With `samples` > 1, each tier's read is repeated that
/// many times and its latency reported (the measurement).
async fn tiers_then_reads(samples: usize) {
    let dir = tempfile::tempdir().unwrap();
    let install = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mongo-stand-in");
    let Some(mongo) = MongoServer::start(dir.path(), &install).expect("a MongoDB to test against")
    else {
        println!("skipped: no MongoDB (set CITYCHAIN_TEST_MONGO_URI, or install python3)");
        return;
    };
    MONGO_URI
        .set(mongo.uri.clone())
        .expect("one walk down the tiers per test process (run the measurement on its own)");
    let mut mongo = Some(mongo);
    let mut fed = launch(dir.path(), no_cache).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let mut measured: Vec<(&str, Samples)> = Vec::new();
    let read = async |req: &TxRequest, tier: &'static str, measured: &mut Vec<_>| {
        let mut s = Samples::default();
        for _ in 0..samples {
            s.0.push(read_from(&client, &city, req, tier).await.1.as_secs_f64() * 1e3);
        }
        measured.push((tier, s));
    };

    // Light and full nodes stopped: a batch goes to MongoDB, and reads back from there.
    kill_all(&mut fed, &client, Role::Light).await;
    kill_all(&mut fed, &client, Role::Full).await;
    let tx_m = signed(&key, 1);
    let stored_m = post_to(&client, &city, &tx_m, "mongo").await;
    read(&tx_m, "mongo", &mut measured).await;

    // Full nodes back: the Repairer moves it up to them; reads come from a full node.
    // With them stopped again, from MongoDB (its `finished_` copy).
    restart_all(&mut fed, &client, Role::Full).await;
    wait_tier(&client, &city, &stored_m, "full").await;
    read(&tx_m, "full", &mut measured).await;
    kill_all(&mut fed, &client, Role::Full).await;
    read(&tx_m, "mongo", &mut measured).await;

    // MongoDB stopped too: the next batch goes to the log and reads back from there; the
    // first is on no tier that answers: 503 with the index fields.
    drop(mongo.take());
    let tx_l = signed(&key, 2);
    let stored_l = post_to(&client, &city, &tx_l, "log").await;
    read(&tx_l, "log", &mut measured).await;
    let (status, got) = get(&client, &format!("{city}/v1/tx/{}", tx_id(&tx_m))).await;
    assert_eq!(status, 503, "{got}");
    assert_eq!(got["error"]["code"], "body_unavailable", "{got}");
    for tier in ["light", "full", "mongo", "log"] {
        assert!(
            got["error"]["message"].as_str().unwrap().contains(tier),
            "says what each tier answered: {got}"
        );
    }
    assert_eq!(
        (
            &got["tx_id"],
            &got["status"],
            &got["tier"],
            &got["batch_id"]
        ),
        (
            &Value::from(tx_id(&tx_m)),
            &Value::from("stored"),
            &Value::from("full"),
            &stored_m["batch_id"]
        ),
        "the index still answers: {got}"
    );
    assert!(got["tx"].is_null() && got["served_from"].is_null(), "{got}");
    let (status, got) = get(
        &client,
        &format!(
            "{city}/v1/batches/{}?txs=true",
            stored_m["batch_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 503, "{got}");
    assert_eq!(got["error"]["code"], "body_unavailable", "{got}");
    assert_eq!(got["batch_id"], stored_m["batch_id"], "{got}");

    // Full nodes back: the log's batch moves up to them (and reads from there); light
    // nodes back: both move up to light nodes, and read from any k of their pieces.
    restart_all(&mut fed, &client, Role::Full).await;
    wait_tier(&client, &city, &stored_l, "full").await;
    read(&tx_l, "full", &mut measured).await;
    restart_all(&mut fed, &client, Role::Light).await;
    wait_tier(&client, &city, &stored_l, "light").await;
    read(&tx_l, "light", &mut measured).await;
    // All six pieces placed (the write holds at k + 1; repair places the rest).
    let batch = wait_for(
        "six pieces on six light nodes",
        Duration::from_secs(60),
        || async {
            let batch = batch_of(&client, &city, &stored_l).await;
            let holders: std::collections::BTreeSet<&str> = batch["holders"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (batch["tier"] == "light" && holders.len() == 6).then_some(batch.clone())
        },
    )
    .await;
    let (status, whole) = get(
        &client,
        &format!(
            "{city}/v1/batches/{}?txs=true",
            stored_l["batch_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["served_from"], "light", "{whole}");
    assert_eq!(whole["txs"][0]["tx_id"], tx_id(&tx_l), "{whole}");
    assert_eq!(
        whole["txs"][0]["tx"],
        serde_json::to_value(&tx_l.tx).unwrap()
    );

    // m = 2 of its light holders stopped: still rebuilt from the other four.
    let holders: Vec<String> = batch["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    for h in &holders[..2] {
        fed.kill(h).unwrap();
    }
    wait_nodes(&client, &city, &holders[..2], false).await;
    read(&tx_l, "light", &mut measured).await;
    // Every light node stopped: from the full node it was repaired up from; those
    // stopped too: from the log, which keeps its copy.
    kill_all(&mut fed, &client, Role::Light).await;
    read(&tx_l, "full", &mut measured).await;
    kill_all(&mut fed, &client, Role::Full).await;
    read(&tx_l, "log", &mut measured).await;

    // Every tier that served counted its reads; the unavailable ones were counted too.
    let m = metrics(&client, &city).await;
    for tier in ["light", "full", "mongo", "log"] {
        assert!(reads_total(&m, tier, "served") >= 1, "{tier} served: {m}");
    }
    assert!(reads_total(&m, "none", "unavailable") >= 2, "{m}");
    assert!(reads_total(&m, "light", "failed") >= 1, "{m}");
    assert!(
        m.contains("citychain_read_latency_seconds_bucket{tier=\"light\""),
        "a latency histogram per tier: {m}"
    );

    if samples > 1 {
        println!("read latency per tier, {samples} sequential reads each (GET /v1/tx/{{id}}):");
        let reads = citychain::config::ReadsConfig::default();
        for (tier, mut s) in measured {
            let target = match tier {
                "light" => reads.light_deadline,
                "full" => reads.full_deadline,
                "mongo" => reads.mongo_deadline,
                _ => reads.log_deadline,
            };
            s.report(tier, Some(target.as_millis() as u64));
        }
    }
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_each_lower_tier_in_turn() {
    tiers_then_reads(1).await;
}

/// Not a check but a measurement: read latency per tier over 200 reads each. Run it on a
/// release build:
/// `cargo test --release -p citychain-cli --test reads -- --ignored --nocapture read_latency`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn read_latency_per_tier() {
    tiers_then_reads(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_cache_evicts_and_evicted_bodies_read_back_from_the_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = launch(dir.path(), small_cache).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    let sent: Vec<TxRequest> = (1..=6).map(|n| signed(&key, n)).collect();
    for (n, req) in sent.iter().enumerate() {
        post_to(&client, &city, req, "light").await;
        // The newest body is in the cache...
        read_from(&client, &city, req, "cache").await;
        // ...and the cache holds no more than its bound.
        let m = metrics(&client, &city).await;
        let cached: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("citychain_body_cache_bytes "))
            .expect("the cache gauge")
            .trim()
            .parse()
            .unwrap();
        assert!(
            cached > 0.0 && cached <= SMALL_CACHE as f64,
            "{cached} bytes cached"
        );
        // The older ones were evicted: they read back from light nodes.
        if n > 0 {
            read_from(&client, &city, &sent[n - 1], "light").await;
        }
    }
    // Every body still reads, the evicted ones from light nodes, the newest from the
    // cache. With the light nodes stopped, the newest still reads from the cache; an
    // evicted one (on light nodes only) is a 503 that still gives the index fields.
    for req in &sent[..5] {
        read_from(&client, &city, req, "light").await;
    }
    read_from(&client, &city, &sent[5], "cache").await;
    kill_all(&mut fed, &client, Role::Light).await;
    read_from(&client, &city, &sent[5], "cache").await;
    let (status, got) = get(&client, &format!("{city}/v1/tx/{}", tx_id(&sent[0]))).await;
    assert_eq!(status, 503, "{got}");
    assert_eq!(got["error"]["code"], "body_unavailable", "{got}");
    assert_eq!(
        (&got["status"], &got["tier"]),
        (&Value::from("stored"), &Value::from("light"))
    );
    let batch_url = format!("{city}/v1/batches/{}", got["batch_id"].as_str().unwrap());
    let (status, bad) = get(&client, &format!("{batch_url}?txs=maybe")).await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &Value::from("invalid_parameter"))
    );
    let (status, plain) = get(&client, &batch_url).await;
    assert_eq!(status, 200, "without ?txs=true no body is read: {plain}");
    assert!(plain.get("txs").is_none() && plain.get("served_from").is_none());
    let m = metrics(&client, &city).await;
    assert!(reads_total(&m, "cache", "served") >= 8, "{m}");
    assert!(reads_total(&m, "light", "served") >= 10, "{m}");
    fed.shutdown().await.unwrap();
}

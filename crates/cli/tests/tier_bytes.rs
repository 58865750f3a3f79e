//! A measurement, not a check: bytes stored per transaction on each tier a real federation
//! writes to (light pieces, whole batches on full nodes, the city's immutable log) and in
//! the city's own `city.redb`. Ignored by `cargo test`; run it on a release build:
//!
//! ```sh
//! cargo test --release -p citychain-cli --test tier_bytes -- --ignored --nocapture
//! ```
//!
//! The city writes each batch to one tier: to light nodes while enough are up, to full
//! nodes when they are stopped, to the log when full nodes are stopped too. Each round
//! sends the same number of transactions in concurrent waves (so batches hold several),
//! then reads what the tier's nodes report (`used_bytes` of their health reports) or the
//! log's file size.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain_harness::federation::Federation;
use common::*;
use serde_json::Value;

const TXS_PER_ROUND: u64 = 1_024;
const WAVE: u64 = 128;

/// Sends `TXS_PER_ROUND` transactions from nonce `first`; every one must be stored on
/// `tier`. Returns the batches they went into.
async fn round(c: &reqwest::Client, city: &str, key: &SigningKey, first: u64, tier: &str) -> usize {
    let mut batches = BTreeSet::new();
    for wave in (first..first + TXS_PER_ROUND).step_by(WAVE as usize) {
        let sends = (wave..wave + WAVE).map(|n| {
            let req = signed(key, n);
            async move { post(c, city, &req).await }
        });
        for (status, v) in futures::future::join_all(sends).await {
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["tier"], tier, "{v}");
            batches.insert(v["batch_id"].as_str().unwrap().to_string());
        }
    }
    batches.len()
}

/// What the storage nodes of `role` report holding, summed.
async fn used_bytes(c: &reqwest::Client, fed: &Federation, role: Role) -> u64 {
    let mut total = 0;
    for id in fed.ids(role) {
        let (_, h): (u16, Value) =
            get(c, &format!("{}/internal/v1/health", fed.node(&id).url)).await;
        total += h["used_bytes"].as_u64().expect("a health report");
    }
    total
}

fn size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| size(&e.unwrap().path()))
            .sum()
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on a release build with --nocapture"]
async fn bytes_stored_per_transaction_on_each_tier() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let c = client();
    let city = fed.city_url();
    let city_cfg = fed.node(&fed.ids(Role::City)[0]).config.clone();
    let log_dir = city_cfg.log_dir();
    let key = SigningKey::generate().unwrap();
    let n = TXS_PER_ROUND as f64;
    let per_tx = |bytes: u64| bytes as f64 / n;

    let light_before = used_bytes(&c, &fed, Role::Light).await;
    let batches = round(&c, &city, &key, 0, "light").await;
    let light = used_bytes(&c, &fed, Role::Light).await - light_before;
    println!(
        "light: {TXS_PER_ROUND} txs in {batches} batches; {light} bytes on {} light nodes: {:.0} bytes per tx",
        fed.ids(Role::Light).len(),
        per_tx(light)
    );

    let lights = fed.ids(Role::Light);
    for id in &lights {
        fed.stop(id, Duration::from_secs(5)).await.unwrap();
    }
    wait_nodes(&c, &city, &lights, false).await;
    let full_before = used_bytes(&c, &fed, Role::Full).await;
    let batches = round(&c, &city, &key, TXS_PER_ROUND, "full").await;
    let full = used_bytes(&c, &fed, Role::Full).await - full_before;
    println!(
        "full: {TXS_PER_ROUND} txs in {batches} batches; {full} bytes on {} full nodes: {:.0} bytes per tx ({:.0} per node)",
        fed.ids(Role::Full).len(),
        per_tx(full),
        per_tx(full) / fed.ids(Role::Full).len() as f64
    );

    let fulls = fed.ids(Role::Full);
    for id in &fulls {
        fed.stop(id, Duration::from_secs(5)).await.unwrap();
    }
    wait_nodes(&c, &city, &fulls, false).await;
    let log_before = size(&log_dir);
    let batches = round(&c, &city, &key, 2 * TXS_PER_ROUND, "log").await;
    let log = size(&log_dir) - log_before;
    println!(
        "log: {TXS_PER_ROUND} txs in {batches} batches; {log} bytes of log files: {:.0} bytes per tx",
        per_tx(log)
    );

    let city_id = fed.ids(Role::City)[0].clone();
    fed.stop(&city_id, Duration::from_secs(10)).await.unwrap();
    let redb = size(&city_cfg.node.data_dir.join("city.redb"));
    println!(
        "city.redb: {redb} bytes after {} txs: {:.0} bytes per tx",
        3 * TXS_PER_ROUND,
        redb as f64 / (3.0 * n)
    );
    assert!(light > 0 && full > 0 && log > 0 && redb > 0);
}

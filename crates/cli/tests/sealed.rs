//! Sealed batches against a real federation: what the untrusted storage nodes (and the
//! immutable log) hold reveals no transaction, in any encoding, while the city still reads
//! every transaction back and repair still moves batches between tiers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain::messages::TxRequest;
use citychain_harness::federation::Federation;
use common::*;
use serde_json::{Value, json};

/// A transaction whose receiver and payload both carry `marker`.
fn marked(key: &SigningKey, marker: &str, nonce: u64) -> TxRequest {
    let mut payload = serde_json::Map::new();
    payload.insert("memo".into(), json!(format!("{marker}-memo")));
    let mut d = draft(nonce, 1000 + nonce).payload(payload);
    d.to = format!("{marker}-to");
    d.sign(key).unwrap()
}

/// Every way `bytes` could show up in a file: raw, hex (both cases), and base64 (standard
/// and URL-safe) at each of the three alignments a longer encoded stream could give it.
fn encodings(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), bytes.to_vec()),
        ("hex".to_string(), hex::encode(bytes).into_bytes()),
        (
            "HEX".to_string(),
            hex::encode(bytes).to_uppercase().into_bytes(),
        ),
    ];
    let engines = [
        ("base64", &base64::engine::general_purpose::STANDARD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE),
    ];
    for (name, engine) in engines {
        for shift in 0..3 {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(bytes);
            let text = engine.encode(&shifted);
            // The first and last 4-character groups depend on the neighbouring bytes; the
            // middle is the same in any stream that holds `bytes` at this alignment.
            if text.len() > 12 {
                out.push((
                    format!("{name}+{shift}"),
                    text.as_bytes()[4..text.len() - 4].to_vec(),
                ));
            }
        }
    }
    out
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

/// Panics naming the file and the encoding if any needle is found in any file.
fn assert_nowhere(files: &[PathBuf], needles: &[(String, Vec<u8>)]) {
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        for (what, needle) in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds {what} in clear",
                file.display()
            );
        }
    }
}

/// Waits until the city says transaction `id` is on `tier`; returns its status.
async fn wait_tier(client: &reqwest::Client, city: &str, id: &str, tier: &str) -> Value {
    let url = format!("{city}/v1/tx/{id}");
    wait_for(
        &format!("transaction {id} on the {tier} tier"),
        Duration::from_secs(40),
        || async {
            let (_, b) = get(client, &url).await;
            (b["tier"] == tier).then_some(b)
        },
    )
    .await
}

/// What an untrusted machine of the federation holds: every file of every storage node
/// (its data dir and its process log) and the city's immutable log.
fn untrusted_files(fed: &Federation) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for n in fed.nodes.iter().filter(|n| n.role.is_storage()) {
        files.extend(files_under(&n.config.node.data_dir));
        files.push(n.log_path(&fed.spec.dir));
    }
    let city = fed.ids(Role::City).remove(0);
    files.extend(files_under(&fed.node(&city).config.log_dir()));
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_storage_node_nor_the_log_holds_a_transaction_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let marker = format!("sealmark{:016x}", fastrand::u64(..));
    let mut sent: Vec<TxRequest> = Vec::new();

    // Some batches on light nodes, some on full nodes, some on the log.
    for n in 0..6 {
        let req = marked(&key, &marker, n);
        let (status, body) = post(&client, &city, &req).await;
        assert_eq!(
            (status, body["tier"].as_str()),
            (200, Some("light")),
            "{body}"
        );
        sent.push(req);
    }
    let lights = fed.ids(Role::Light);
    for id in &lights {
        fed.kill(id).unwrap();
    }
    for n in 6..9 {
        let req = marked(&key, &marker, n);
        let (status, body) = post(&client, &city, &req).await;
        assert_eq!(
            (status, body["tier"].as_str()),
            (200, Some("full")),
            "{body}"
        );
        sent.push(req);
    }
    for id in fed.ids(Role::Full) {
        fed.kill(&id).unwrap();
    }
    for n in 9..12 {
        let req = marked(&key, &marker, n);
        let (status, body) = post(&client, &city, &req).await;
        assert_eq!(
            (status, body["tier"].as_str()),
            (200, Some("log")),
            "{body}"
        );
        sent.push(req);
    }

    // Every node back: repair moves the sealed batches up to light nodes, and the city
    // still reads every transaction back, body included.
    for id in fed.ids(Role::Full).iter().chain(&lights) {
        fed.restart(id).await.unwrap();
    }
    for req in &sent {
        let body = wait_tier(&client, &city, &tx_id(req), "light").await;
        assert_eq!(body["tx"]["receiver"], format!("{marker}-to"), "{body}");
        assert_eq!(body["tx"]["payload"]["memo"], format!("{marker}-memo"));
    }
    fed.shutdown().await.unwrap();

    let mut needles = encodings(marker.as_bytes());
    let sender = key.address();
    needles.extend(encodings(&hex::decode(&sender).unwrap()));
    needles.extend(encodings(&key.public_key()[..48]));
    for req in &sent {
        let id = tx_id(req);
        needles.extend(encodings(&hex::decode(&id).unwrap()));
    }
    let files = untrusted_files(&fed);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with(citychain::storage::store::FILE_NAME)),
        "the storage nodes' stores are searched"
    );
    assert_nowhere(&files, &needles);
}

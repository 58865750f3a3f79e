//! Sealed batches against a real federation: what the untrusted storage nodes (and the
//! immutable log) hold reveals no transaction, in any encoding, while the city still reads
//! every transaction back and repair still moves batches between tiers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain::messages::{SealedEnvelope, TxRequest, parse_hex32};
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

    // The key holder reads every batch back: rebuilt from the pieces in the light nodes'
    // stores (any four of each batch's six would do: here all but two stores), and from
    // the log, with the holder's key and the city's key vault.
    let holder_key = Federation::vault_key_path(dir.path(), "asia");
    let city_dir = fed.node("city-tokyo").config.node.data_dir.clone();
    let mut opened = std::collections::BTreeSet::new();
    let stores: Vec<PathBuf> = lights
        .iter()
        .map(|id| fed.node(id).config.node.data_dir.clone())
        .collect();
    let all: Vec<(&str, &Path)> = stores.iter().map(|s| ("--store", s.as_path())).collect();
    for batch in vault_open(&[&holder_key], &city_dir, &all) {
        for tx in batch["txs"].as_array().unwrap() {
            assert_eq!(tx["tx"]["receiver"], format!("{marker}-to"), "{tx}");
            opened.insert(tx["tx_id"].as_str().unwrap().to_string());
        }
    }
    let log_dir = fed.node("city-tokyo").config.log_dir();
    let from_log = vault_open(&[&holder_key], &city_dir, &[("--log", &log_dir)]);
    assert!(!from_log.is_empty(), "batches written to the log open too");
    for req in &sent {
        assert!(opened.contains(&tx_id(req)), "{} opens", tx_id(req));
    }

    // Any other key opens nothing.
    let stranger = dir.path().join("stranger.key");
    let (code, _, _) = run(&["vault", "keygen", "--out", path(&stranger)]);
    assert_eq!(code, Some(0));
    let (code, out, err) = run(&[
        "vault",
        "open",
        "--key",
        path(&stranger),
        "--vault",
        path(&city_dir),
        "--log",
        path(&log_dir),
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.is_empty(), "nothing opened: {out}");
    assert!(err.contains("not among the keys given"), "{err}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the binary; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `citychain vault open` with `keys` on the batches of `sources` (`--store` dirs or a
/// `--log` dir); every batch must open. The opened batches, one JSON object each.
fn vault_open(keys: &[&Path], vault: &Path, sources: &[(&str, &Path)]) -> Vec<Value> {
    let mut args = vec!["vault", "open", "--vault", path(vault)];
    for (source, dir) in sources {
        args.extend([*source, path(dir)]);
    }
    for k in keys {
        args.extend(["--key", path(k)]);
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, Some(0), "vault open {args:?}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The key id light batch `batch_id` is sealed for, read from its clear header once
/// rebuilt from its holders' pieces over the storage API.
async fn sealed_key_id(
    fed: &Federation,
    client: &reqwest::Client,
    city: &str,
    batch_id: &str,
) -> String {
    let id = parse_hex32(batch_id).unwrap();
    let (_, batch) = get(client, &format!("{city}/v1/batches/{batch_id}")).await;
    let bytes = rebuild_light(fed, &batch, &[]).await;
    let envelope = SealedEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(envelope.id(), id);
    envelope.header.key_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_new_batches_use_the_new_key_and_old_ones_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let first_key = Federation::vault_key_path(dir.path(), "asia");
    let first_id = citychain::crypto::vault::VaultKey::load(&first_key)
        .unwrap()
        .id()
        .to_string();

    let before = signed(&key, 1);
    let (status, old) = post(&client, &city, &before).await;
    assert_eq!(
        (status, old["tier"].as_str()),
        (200, Some("light")),
        "{old}"
    );
    assert_eq!(
        sealed_key_id(&fed, &client, &city, old["batch_id"].as_str().unwrap()).await,
        first_id
    );

    // Rotate through the CLI on the running federation's city config, then restart the
    // city on it.
    let city_config = fed.node("city-tokyo").config_path.clone();
    let second_key = dir.path().join("vault").join("asia-2.key");
    let (code, out, err) = run(&[
        "vault",
        "rotate",
        "--config",
        path(&city_config),
        "--out",
        path(&second_key),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let second_id = citychain::crypto::vault::VaultKey::load(&second_key)
        .unwrap()
        .id()
        .to_string();
    assert!(out.contains(&second_id) && out.contains(&first_id), "{out}");
    let (code, out, _) = run(&["config", "check", path(&city_config)]);
    assert_eq!(code, Some(0), "{out}");
    fed.reload_config("city-tokyo").unwrap();
    let vault = fed.node("city-tokyo").config.vault.clone().unwrap();
    assert_eq!(vault.current, second_id);
    assert_eq!(vault.keys.len(), 2, "the old key stays in the keyring");
    fed.kill("city-tokyo").unwrap();
    fed.restart("city-tokyo").await.unwrap();

    let after = signed(&key, 2);
    let (status, new) = post(&client, &city, &after).await;
    assert_eq!(
        (status, new["tier"].as_str()),
        (200, Some("light")),
        "{new}"
    );
    assert_eq!(
        sealed_key_id(&fed, &client, &city, new["batch_id"].as_str().unwrap()).await,
        second_id
    );
    // Both still read back through the city.
    for req in [&before, &after] {
        let (status, body) = get(&client, &format!("{city}/v1/tx/{}", tx_id(req))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tx"]["nonce"], req.tx.nonce);
    }
    fed.shutdown().await.unwrap();

    // The holder, with both keys, opens both batches (rebuilt from the light nodes'
    // pieces); with only the new key, not the old.
    let city_dir = fed.node("city-tokyo").config.node.data_dir.clone();
    let keys_dir = dir.path().join("vault");
    let mut stores = Vec::new();
    for id in fed.ids(Role::Light) {
        stores.push("--store".to_string());
        stores.push(path(&fed.node(&id).config.node.data_dir).to_string());
    }
    let stores: Vec<&str> = stores.iter().map(String::as_str).collect();
    for (batch, req) in [(&old, &before), (&new, &after)] {
        let id = batch["batch_id"].as_str().unwrap();
        let mut args = vec![
            "vault",
            "open",
            "--key",
            path(&keys_dir),
            "--vault",
            path(&city_dir),
            "--id",
            id,
        ];
        args.extend(&stores);
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{err}");
        let opened: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(opened["batch_id"], id);
        assert_eq!(opened["txs"][0]["tx_id"], tx_id(req));
    }
    let mut args = vec![
        "vault",
        "open",
        "--key",
        path(&second_key),
        "--vault",
        path(&city_dir),
        "--id",
        old["batch_id"].as_str().unwrap(),
    ];
    args.extend(&stores);
    let (code, _, err) = run(&args);
    assert_eq!(code, Some(1));
    assert!(err.contains(&first_id), "names the key it needs: {err}");
}

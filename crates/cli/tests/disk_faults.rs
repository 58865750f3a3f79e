//! Disk faults, injected for real: the node's files live on a small tmpfs that the test
//! fills until writes fail with ENOSPC, then frees. Mounting needs root (or
//! `CAP_SYS_ADMIN`); where it is impossible each test says so and is skipped.
//!
//! - A storage node whose disk fills reports not ready (and says so to the city's probes)
//!   while its store fails, recovers by itself once there is room again, and keeps every
//!   batch it acknowledged.
//! - A city with no working storage tier (its full node down, no MongoDB configured, its
//!   immutable log on a full disk) reports not ready, and ready again once a tier works.
//! - A city whose own disk fills is not ready until restarted, and then answers for
//!   everything it acknowledged.

mod attack;
mod common;

use std::time::Duration;

use attack::Tmpfs;
use base64::Engine;
use citychain::crypto::SigningKey;

use citychain::storage::peer::PeerError;
use common::*;

fn mount_or_skip(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(path, size) {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here ({why}); this test needs root");
            None
        }
    }
}

async fn status_of(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    get(client, url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_recovers_from_a_full_disk_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount_or_skip(&dir.path().join("data"), "6m") else {
        return;
    };
    let config = format!(
        "[node]\nid = \"light-1\"\nrole = \"light\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{}",
        disk.path.display(),
        serves_test_city()
    );
    let node = spawn_node(dir.path(), &config, true).await;
    let client = client();
    let peers = test_city_client();
    let light = storage_peer("light-1", &node.url);
    let t = Duration::from_secs(10);
    let key = SigningKey::generate().unwrap();

    let (first, first_bytes) = sealed_batch(&key, 1, 2);
    peers
        .put_batch(light, &first, first_bytes.clone(), t)
        .await
        .expect("the first batch is stored");

    // The disk fills up: a batch that needs new pages cannot be written.
    let filler = disk.fill();
    let (big, big_bytes) = sealed_batch(&key, 2, 200);
    match peers.put_batch(light, &big, big_bytes.clone(), t).await {
        Err(PeerError::Refused { status: 503, .. }) => {}
        other => panic!("a write to a full disk answers 503, got {other:?}"),
    }
    let (status, ready) = status_of(&client, &format!("{}/readyz", node.url)).await;
    assert_eq!(
        status, 503,
        "a node whose store fails is not ready: {ready}"
    );
    assert_eq!(ready["status"], "not_ready");
    assert!(
        ready["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{ready}"
    );
    let (status, health) = status_of(&client, &format!("{}/internal/v1/health", node.url)).await;
    assert_eq!(
        status, 503,
        "health tells the city's probes the truth: {health}"
    );
    assert!(health["store_error"].is_string(), "{health}");
    // The node keeps trying to reopen its store, and stays not ready while the disk is
    // full, whatever is offered.
    wait_for(
        "failed reopen attempts",
        Duration::from_secs(10),
        || async {
            let (status, ready) = status_of(&client, &format!("{}/readyz", node.url)).await;
            let reason = ready["reason"].as_str()?.to_string();
            (status == 503 && reason.contains("2 reopen attempts failed")).then_some(reason)
        },
    )
    .await;
    let (small, small_bytes) = sealed_batch(&key, 3, 1);
    assert!(
        peers
            .put_batch(light, &small, small_bytes.clone(), t)
            .await
            .is_err()
    );

    // Room again: the node recovers on its own, without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "the node to be ready again",
        Duration::from_secs(20),
        || async {
            let r = client
                .get(format!("{}/readyz", node.url))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let (status, health) = status_of(&client, &format!("{}/internal/v1/health", node.url)).await;
    assert_eq!(status, 200, "{health}");
    peers
        .put_batch(light, &big, big_bytes.clone(), t)
        .await
        .expect("the refused batch is stored on retry");
    peers
        .put_batch(light, &small, small_bytes.clone(), t)
        .await
        .expect("new batches are stored");
    // Everything acknowledged, before and after the fault, reads back as sent.
    for (id, bytes) in [(first, first_bytes), (big, big_bytes), (small, small_bytes)] {
        let held = peers.get_batch(light, &id, t).await.unwrap();
        assert_eq!(held.as_deref(), Some(bytes.as_slice()));
    }
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_with_no_working_tier_is_not_ready_until_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(log_disk) = mount_or_skip(&dir.path().join("log"), "2m") else {
        return;
    };
    // The full node's key and port are fixed now; the node itself starts later.
    let full_dir = dir.path().join("full");
    std::fs::create_dir_all(full_dir.join("data")).unwrap();
    let full_key = SigningKey::generate().unwrap();
    full_key
        .save(&full_dir.join("data").join("node.key"))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let city_dir = dir.path().join("city");
    std::fs::create_dir_all(&city_dir).unwrap();
    give_test_city_key(&city_dir.join("data"));
    let config = format!(
        r#"{}
[supervisor]
chain = ["full", "mongo", "log"]

[prioritizer]
probe_interval = "100ms"

[storage]
log_dir = "{}"

[[storage.nodes]]
id = "full-1"
role = "full"
url = "http://127.0.0.1:{port}"
continent = "asia"
public_key = "{}"
"#,
        city_node_section(&city_dir),
        log_disk.path.display(),
        base64::engine::general_purpose::STANDARD.encode(full_key.public_key()),
    );
    let city = spawn_node(&city_dir, &config, true).await;
    let client = client();
    wait_nodes(&client, &city.url, &["full-1".to_string()], false).await;
    let (status, ready) = status_of(&client, &format!("{}/readyz", city.url)).await;
    assert_eq!(status, 200, "the log still works: {ready}");

    // The log's disk fills: no tier can take a batch.
    let _filler = log_disk.fill();
    let key = SigningKey::generate().unwrap();
    let (status, body) = post(&client, &city.url, &signed(&key, 1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let (status, ready) = status_of(&client, &format!("{}/readyz", city.url)).await;
    assert_eq!(status, 503, "no tier works: {ready}");
    let reason = ready["reason"].as_str().unwrap_or_default().to_string();
    for tier in ["full", "mongo", "log"] {
        assert!(reason.contains(tier), "the reason names {tier}: {reason}");
    }

    // The full node comes up: a tier works again.
    let full_config = format!(
        "[node]\nid = \"full-1\"\nrole = \"full\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n{}",
        full_dir.join("data").display(),
        serves_test_city()
    );
    let _full = spawn_node(&full_dir, &full_config, true).await;
    wait_for(
        "the city to be ready again",
        Duration::from_secs(20),
        || async {
            let r = client
                .get(format!("{}/readyz", city.url))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let (status, body) = post(&client, &city.url, &signed(&key, 2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tier"], "full", "{body}");
    drop(city);
}

/// A city whose own disk fills (its immutable log is its only tier here) refuses what it
/// cannot make durable and is not ready; its log closes for good after the failed write,
/// so it stays not ready until restarted, and once restarted with room again it answers
/// for everything it acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_whose_disk_fills_recovers_on_restart_with_everything_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount_or_skip(&dir.path().join("data"), "8m") else {
        return;
    };
    let config = format!(
        "{}\n[supervisor]\nchain = [\"log\"]\n",
        city_node_section(dir.path())
    );
    let city = spawn_node(dir.path(), &config, true).await;
    let client = client();
    let key = SigningKey::generate().unwrap();
    let first = signed(&key, 1);
    let (status, body) = post(&client, &city.url, &first).await;
    assert_eq!(status, 200, "{body}");

    let filler = disk.fill();
    let (status, body) = post(&client, &city.url, &signed(&key, 2)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let (status, ready) = status_of(&client, &format!("{}/readyz", city.url)).await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap_or_default().contains("log"),
        "{ready}"
    );

    // Room again; the closed log keeps the city not ready until it restarts.
    std::fs::remove_file(&filler).unwrap();
    let (status, ready) = status_of(&client, &format!("{}/readyz", city.url)).await;
    assert_eq!(status, 503, "{ready}");
    drop(city);
    // The killed node's address file would otherwise be read before the new one is written.
    std::fs::remove_file(disk.path.join(citychain::node::LISTEN_ADDR_FILE)).unwrap();
    let city = spawn_node(dir.path(), &config, true).await;
    let (status, tx) = get(&client, &format!("{}/v1/tx/{}", city.url, tx_id(&first))).await;
    assert_eq!(status, 200, "{tx}");
    assert_eq!(tx["status"], "stored", "{tx}");
    let (status, body) = post(&client, &city.url, &signed(&key, 2)).await;
    assert_eq!(status, 200, "{body}");
    drop(city);
}

//! A whole federation of real child processes on loopback: transactions end to end, the
//! failover chain with nodes stopped, and every kind of bad input.

mod common;

use std::time::Duration;

use citychain::config::Role;
use citychain::crypto::SigningKey;
use citychain_harness::client::TxDraft;
use citychain_harness::federation::{Federation, FederationSpec, ManifestEntry};
use common::*;
use futures::StreamExt;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_signed_transactions_are_stored_on_light_nodes_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();

    // federation.json names every node with its pid and config.
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&std::fs::read(dir.path().join("federation.json")).unwrap())
            .unwrap();
    assert_eq!(manifest.len(), 11);
    for role in [Role::City, Role::Continent, Role::Global] {
        assert_eq!(manifest.iter().filter(|m| m.role == role).count(), 1);
    }
    assert_eq!(manifest.iter().filter(|m| m.role == Role::Light).count(), 6);
    assert_eq!(manifest.iter().filter(|m| m.role == Role::Full).count(), 2);
    assert!(
        manifest
            .iter()
            .all(|m| m.pid.is_some() && m.config.exists())
    );

    let key = SigningKey::generate().unwrap();
    let requests: Vec<_> = (0..1000).map(|n| signed(&key, n)).collect();
    let answers: Vec<(String, u16, Value)> = futures::stream::iter(requests.iter())
        .map(|req| {
            let client = client.clone();
            let city = city.clone();
            async move {
                let (status, body) = post(&client, &city, req).await;
                (tx_id(req), status, body)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    let mut batches = std::collections::BTreeSet::new();
    for (id, status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["status"], "stored");
        assert_eq!(body["tier"], "light", "{body}");
        assert_eq!(body["tx_id"].as_str(), Some(id.as_str()));
        assert_eq!(body["duplicate"], false);
        assert_eq!(body["flag"], "fresh_tx");
        assert!(
            body["acks"].as_u64().unwrap() >= 5,
            "k + 1 pieces acked: {body}"
        );
        batches.insert(body["batch_id"].as_str().unwrap().to_string());
    }
    assert!(batches.len() < 1000, "transactions share batches");

    for (id, _, posted) in &answers {
        let (status, body) = get(&client, &format!("{city}/v1/tx/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "stored");
        assert_eq!(body["tier"], "light");
        assert_eq!(body["batch_id"], posted["batch_id"]);
        assert!(body["holders"].as_array().unwrap().len() >= 3);
        assert_eq!(body["tx"]["receiver"], "bob");
    }

    // A batch links into the DAG, its acks name its holders and the piece each holds,
    // every holder really has its piece on disk (asked over the storage node's own API),
    // and the pieces rebuild the sealed batch.
    let some_batch = batches.iter().next().unwrap();
    let (status, batch) = get(&client, &format!("{city}/v1/batches/{some_batch}")).await;
    assert_eq!(status, 200);
    assert_eq!(batch["tier"], "light");
    let holders: Vec<String> = batch["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(batch["acks"].as_array().unwrap().len(), holders.len());
    let distinct: std::collections::BTreeSet<&String> = holders.iter().collect();
    assert_eq!(distinct.len(), holders.len(), "one piece per holder");
    for ack in batch["acks"].as_array().unwrap() {
        let h = ack["holder_id"].as_str().unwrap();
        let index = ack["piece"]["index"].as_u64().unwrap() as u8;
        assert!(
            holds_piece(&fed, h, some_batch, index).await,
            "holder {h} has piece {index}"
        );
        assert!(
            !holds(&fed, h, some_batch).await,
            "no light node holds it whole"
        );
    }
    let sealed = rebuild_light(&fed, &batch, &[]).await;
    let envelope = citychain::messages::SealedEnvelope::from_bytes(&sealed).unwrap();
    assert_eq!(hex::encode(envelope.id()), *some_batch);
    let seqs: Vec<u64> = {
        let mut v = Vec::new();
        for b in &batches {
            let (_, body) = get(&client, &format!("{city}/v1/batches/{b}")).await;
            if body["seq"].as_u64().unwrap() > 0 {
                assert!(!body["parents"].as_array().unwrap().is_empty(), "{body}");
            }
            v.push(body["seq"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(seqs.len(), batches.len());

    // Re-submitting answers with the stored status.
    let (status, again) = post(&client, &city, &requests[0]).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        again["batch_id"],
        answers
            .iter()
            .find(|a| a.0 == tx_id(&requests[0]))
            .unwrap()
            .2["batch_id"]
    );

    let (status, _) = get(&client, &format!("{city}/v1/tx/{}", "ab".repeat(32))).await;
    assert_eq!(status, 404);

    let metrics = metrics(&client, &city).await;
    for name in [
        "citychain_tx_accepted_total",
        "citychain_batches_stored_total{tier=\"light\"}",
        "citychain_store_latency_seconds_bucket",
        "citychain_mailbox_depth{actor=\"intake\"}",
        "citychain_storage_node_up{node=\"light-1\"}",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    let (_, actors) = get(&client, &format!("{city}/v1/actors")).await;
    let names: Vec<&str> = actors
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for a in [
        "intake",
        "dag_batcher",
        "flagger",
        "prioritizer",
        "storage_writer",
        "failover_supervisor",
    ] {
        assert!(names.contains(&a), "{a} missing from {names:?}");
    }
    fed.shutdown().await.unwrap();
}

/// With the timers of `citychain up` (not the watchful ones), the first batch of a fresh
/// federation lands on light nodes within the light deadline: no node makes it wait on
/// a one-time start-up cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_federations_first_transaction_is_stored_on_light_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FederationSpec::local(dir.path().to_path_buf(), binary());
    let mut fed = Federation::launch(spec)
        .await
        .expect("the federation starts");
    let client = client();
    let key = SigningKey::generate().unwrap();
    let (status, body) = post(&client, &fed.city_url(), &signed(&key, 0)).await;
    assert_eq!(
        (status, body["tier"].as_str()),
        (200, Some("light")),
        "{body}"
    );
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_fall_through_to_full_nodes_then_to_the_verified_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    let (status, body) = post(&client, &city, &signed(&key, 0)).await;
    assert_eq!(
        (status, body["tier"].as_str()),
        (200, Some("light")),
        "{body}"
    );

    let lights = fed.ids(Role::Light);
    for id in &lights {
        fed.kill(id).unwrap();
    }
    for n in 1..=20 {
        let req = signed(&key, n);
        let (status, body) = post(&client, &city, &req).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tier"], "full", "{body}");
        let (_, read) = get(&client, &format!("{city}/v1/tx/{}", tx_id(&req))).await;
        assert_eq!(read["tier"], "full");
        let holders = read["holders"].as_array().unwrap();
        assert!(
            holders
                .iter()
                .all(|h| h.as_str().unwrap().starts_with("full-")),
            "{read}"
        );
    }
    wait_nodes(&client, &city, &lights, false).await;

    for id in fed.ids(Role::Full) {
        fed.kill(&id).unwrap();
    }
    let mut on_log = Vec::new();
    for n in 21..=40 {
        let req = signed(&key, n);
        let (status, body) = post(&client, &city, &req).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tier"], "log", "{body}");
        on_log.push(tx_id(&req));
    }
    let (_, read) = get(&client, &format!("{city}/v1/tx/{}", on_log[0])).await;
    assert_eq!(read["tier"], "log");
    assert_eq!(read["holders"][0], "city-tokyo");

    // The log verifies, and stops verifying after one byte of it changes.
    let log_dir = fed.node("city-tokyo").config.log_dir();
    fed.shutdown().await.unwrap();
    let verify = |dir: &std::path::Path| {
        std::process::Command::new(binary())
            .args(["log", "verify", "--dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let ok = verify(&log_dir);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let file = log_dir.join(citychain::storage::immutable_log::LOG_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let bad = verify(&log_dir);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("TAMPERED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let good = signed(&key, 7);
    let good_json = serde_json::to_value(&good).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good_json.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let other = SigningKey::generate().unwrap();

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"tx\": {".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            "application/json",
            with(&|v| v["tx"]["colour"] = "red".into()),
            400,
            "unknown_field",
        ),
        (
            "unknown top-level field",
            "application/json",
            with(&|v| v["extra"] = 1.into()),
            400,
            "unknown_field",
        ),
        (
            "missing field",
            "application/json",
            with(&|v| {
                v["tx"].as_object_mut().unwrap().remove("amount");
            }),
            400,
            "missing_field",
        ),
        (
            "zero amount",
            "application/json",
            with(&|v| v["tx"]["amount"] = 0.into()),
            400,
            "invalid_amount",
        ),
        (
            "negative amount",
            "application/json",
            with(&|v| v["tx"]["amount"] = (-5).into()),
            400,
            "invalid_field",
        ),
        (
            "wrong sender",
            "application/json",
            with(&|v| v["tx"]["sender"] = other.address().into()),
            400,
            "sender_mismatch",
        ),
        (
            "tampered signature",
            "application/json",
            with(&|v| {
                let sig = v["signature"].as_str().unwrap();
                let flipped = if sig.starts_with('A') { "B" } else { "A" };
                v["signature"] = format!("{flipped}{}", &sig[1..]).into();
            }),
            401,
            "bad_signature",
        ),
        (
            "tampered amount",
            "application/json",
            with(&|v| v["tx"]["amount"] = 999_999.into()),
            401,
            "bad_signature",
        ),
        (
            "old timestamp",
            "application/json",
            serde_json::to_vec(&{
                draft(8, 5)
                    .timestamp_ms(citychain::messages::now_ms() - 10 * 60 * 1000)
                    .sign(&key)
                    .unwrap()
            })
            .unwrap(),
            400,
            "timestamp_skew",
        ),
        (
            "another city",
            "application/json",
            serde_json::to_vec(&TxDraft::new("bob", 5, "osaka", 9).sign(&key).unwrap()).unwrap(),
            400,
            "wrong_city",
        ),
        (
            "another continent",
            "application/json",
            serde_json::to_vec(&draft(10, 5).continent("europe").sign(&key).unwrap()).unwrap(),
            400,
            "wrong_continent",
        ),
        (
            "oversized body",
            "application/json",
            {
                let mut v = good_json.clone();
                v["tx"]["payload"] = serde_json::json!({"blob": "x".repeat(100 * 1024)});
                serde_json::to_vec(&v).unwrap()
            },
            413,
            "payload_too_large",
        ),
        (
            "wrong content type",
            "text/plain",
            serde_json::to_vec(&good).unwrap(),
            415,
            "unsupported_media_type",
        ),
    ];

    let batches_before = stored_batches(&client, &fed).await;
    for (what, content_type, body, want_status, want_code) in cases {
        let (status, answer) = post_raw(&client, &city, content_type, body).await;
        assert_eq!(status, want_status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // The transaction the tampered variants came from was never stored, and no storage
    // node holds anything new.
    let (status, _) = get(&client, &format!("{city}/v1/tx/{}", tx_id(&good))).await;
    assert_eq!(status, 404);
    assert_eq!(stored_batches(&client, &fed).await, batches_before);
    let metrics = metrics(&client, &city).await;
    assert!(
        metrics.contains("citychain_tx_rejected_total{reason=\"bad_signature\"} 2"),
        "{metrics}"
    );

    // Unknown routes and malformed ids answer JSON too.
    let (status, body) = get(&client, &format!("{city}/v1/nope")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = get(&client, &format!("{city}/v1/tx/not-hex")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_id"))
    );

    // And the good one still goes through afterwards.
    let (status, body) = post(&client, &city, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(stored_batches(&client, &fed).await, batches_before);
    fed.shutdown().await.unwrap();
}

/// Batches held by each storage node, from their health reports.
async fn stored_batches(
    client: &reqwest::Client,
    fed: &citychain_harness::federation::Federation,
) -> Vec<u64> {
    let mut out = Vec::new();
    for n in fed.nodes.iter().filter(|n| n.role.is_storage()) {
        let (_, h) = get(client, &format!("{}/internal/v1/health", n.url)).await;
        out.push(h["batches"].as_u64().expect("health has a batch count"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    fed.kill("light-1").unwrap();
    wait_nodes(&client, &city, &["light-1".to_string()], false).await;
    fed.restart("light-1").await.unwrap();
    wait_nodes(&client, &city, &["light-1".to_string()], true).await;
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&std::fs::read(dir.path().join("federation.json")).unwrap())
            .unwrap();
    let entry = manifest.iter().find(|m| m.node_id == "light-1").unwrap();
    assert_eq!(entry.pid, fed.node("light-1").pid());
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_city_resumes_its_index_and_dag_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    let mut promised = Vec::new();
    let requests: Vec<_> = (0..30).map(|n| signed(&key, n)).collect();
    for req in &requests {
        let (status, body) = post(&client, &city, req).await;
        assert_eq!(status, 200, "{body}");
        promised.push((tx_id(req), body));
    }
    let last_seq = {
        let (_, b) = get(
            &client,
            &format!(
                "{city}/v1/batches/{}",
                promised[29].1["batch_id"].as_str().unwrap()
            ),
        )
        .await;
        b["seq"].as_u64().unwrap()
    };

    // SIGKILL: no shutdown path runs.
    fed.kill("city-tokyo").unwrap();
    fed.restart("city-tokyo").await.unwrap();

    for (id, posted) in &promised {
        let (status, body) = get(&client, &format!("{city}/v1/tx/{id}")).await;
        assert_eq!(
            status, 200,
            "acknowledged transaction {id} unknown after a crash"
        );
        assert_eq!(body["status"], "stored");
        assert_eq!(body["batch_id"], posted["batch_id"]);
        assert_eq!(body["tier"], posted["tier"]);
    }
    // A re-submission is still recognized as a duplicate.
    let (status, again) = post(&client, &city, &requests[3]).await;
    assert_eq!(
        (status, again["duplicate"].as_bool()),
        (200, Some(true)),
        "{again}"
    );

    // The DAG goes on: a higher sequence number, parented on batches from before the crash.
    let (status, body) = post(&client, &city, &signed(&key, 100)).await;
    assert_eq!(status, 200, "{body}");
    let (_, batch) = get(
        &client,
        &format!("{city}/v1/batches/{}", body["batch_id"].as_str().unwrap()),
    )
    .await;
    assert!(batch["seq"].as_u64().unwrap() > last_seq, "{batch}");
    let parents: Vec<&str> = batch["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(!parents.is_empty());
    for p in parents {
        let (status, _) = get(&client, &format!("{city}/v1/batches/{p}")).await;
        assert_eq!(status, 200, "parent {p} is a known batch");
    }
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_held_on_lower_tiers_are_repaired_up_and_lost_holdings_re_replicated() {
    let dir = tempfile::tempdir().unwrap();
    // One light node more than a batch has pieces, so a lost holder's piece has a home.
    let mut fed = federation_with_lights(dir.path(), 7).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    // Light nodes down: to full. Full nodes down too: to the log.
    let lights = fed.ids(Role::Light);
    for id in &lights {
        fed.kill(id).unwrap();
    }
    let on_full = signed(&key, 1);
    let (status, body) = post(&client, &city, &on_full).await;
    assert_eq!(
        (status, body["tier"].as_str()),
        (200, Some("full")),
        "{body}"
    );
    for id in fed.ids(Role::Full) {
        fed.kill(&id).unwrap();
    }
    let on_log = signed(&key, 2);
    let (status, body) = post(&client, &city, &on_log).await;
    assert_eq!(
        (status, body["tier"].as_str()),
        (200, Some("log")),
        "{body}"
    );

    // Full nodes come back first: the log-held batch moves up to them.
    for id in fed.ids(Role::Full) {
        fed.restart(&id).await.unwrap();
    }
    let url = format!("{city}/v1/tx/{}", tx_id(&on_log));
    let body = wait_for(
        "repair from the log up to full nodes",
        Duration::from_secs(30),
        || async {
            let (_, b) = get(&client, &url).await;
            (b["tier"] == "full").then_some(b)
        },
    )
    .await;
    assert!(
        body["holders"][0].as_str().unwrap().starts_with("full-"),
        "{body}"
    );

    // Then light nodes: both batches move up to them, and their status says so.
    for id in fed.ids(Role::Light) {
        fed.restart(&id).await.unwrap();
    }
    for req in [&on_full, &on_log] {
        let url = format!("{city}/v1/tx/{}", tx_id(req));
        let body = wait_for(
            "repair up to light nodes",
            Duration::from_secs(30),
            || async {
                let (_, b) = get(&client, &url).await;
                (b["tier"] == "light").then_some(b)
            },
        )
        .await;
        let holders = body["holders"].as_array().unwrap();
        assert!(holders.len() >= 5, "at least k + 1 pieces: {body}");
        assert!(
            holders
                .iter()
                .all(|h| h.as_str().unwrap().starts_with("light-")),
            "{body}"
        );
    }

    // A light holder is lost for good: its piece is regenerated from the others and
    // placed elsewhere.
    let (_, body) = get(&client, &format!("{city}/v1/tx/{}", tx_id(&on_full))).await;
    let victim = body["holders"][0].as_str().unwrap().to_string();
    fed.kill(&victim).unwrap();
    let url = format!("{city}/v1/tx/{}", tx_id(&on_full));
    let body = wait_for(
        "re-replication away from the lost holder",
        Duration::from_secs(30),
        || async {
            let (_, b) = get(&client, &url).await;
            let holders: Vec<&str> = b["holders"]
                .as_array()?
                .iter()
                .filter_map(|h| h.as_str())
                .collect();
            (!holders.contains(&victim.as_str()) && holders.len() == 6).then_some(b.clone())
        },
    )
    .await;
    assert_eq!(body["tier"], "light");
    // And the holders really have their pieces, which rebuild the batch.
    let batch_id = body["batch_id"].as_str().unwrap();
    let batch = batch_of(&client, &city, &body).await;
    for ack in batch["acks"].as_array().unwrap() {
        let (h, index) = (
            ack["holder_id"].as_str().unwrap(),
            ack["piece"]["index"].as_u64().unwrap() as u8,
        );
        assert!(holds_piece(&fed, h, batch_id, index).await, "{h} #{index}");
    }
    rebuild_light(&fed, &batch, &[]).await;
    fed.shutdown().await.unwrap();
}

//! Light-node retention on a real federation of child processes: light batches older than
//! `[storage] light_retention` whose header the continent acknowledged are archived to
//! full nodes and their light pieces released, so light nodes with room for a fraction of
//! what is sent keep taking every batch, and every transaction stays readable (from full
//! nodes). With the full nodes down nothing is released and nothing is lost; once they are
//! back the batches are archived.

mod common;

use std::time::Duration;

use citychain::config::{Config, Role};
use citychain::crypto::SigningKey;
use citychain::messages::TxRequest;
use citychain_harness::federation::{Federation, FederationSpec, watchful};
use common::*;
use serde_json::Value;

/// Room on a light node for pieces: the city stops choosing a node with less than
/// `MIN_FREE_BYTES` free, so the capacity is that much more.
const ROOM: u64 = 96 * 1024;

/// The watchful timers, a one-second retention, light nodes with [`ROOM`] for pieces, and
/// a body cache too small to serve reads (so they come from the tiers).
fn retentive(c: &mut Config) {
    watchful(c);
    match c.node.role {
        Role::City => {
            c.storage.light_retention = Duration::from_secs(1);
            c.reads.body_cache_bytes = 1;
            // Windows of one batch: a round that found several eligible must take
            // window after window to keep pace.
            c.repair.archive_per_round = 1;
        }
        Role::Light => {
            c.storage.capacity_bytes = citychain::city::node_policy::MIN_FREE_BYTES + ROOM;
        }
        _ => {}
    }
}

async fn launch(dir: &std::path::Path) -> Federation {
    let spec = FederationSpec {
        tweak: retentive,
        ..citychain_harness::testkit::watchful_spec(dir.to_path_buf(), binary())
    };
    Federation::launch(spec)
        .await
        .expect("the federation starts")
}

/// Bytes each light node holds, as the city's registry last saw them.
async fn light_used(client: &reqwest::Client, city: &str) -> Vec<u64> {
    let (_, nodes) = get(client, &format!("{city}/v1/nodes")).await;
    nodes
        .as_array()
        .expect("a node list")
        .iter()
        .filter(|n| n["role"] == "light")
        .map(|n| n["used_bytes"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

/// Waits until every light node holds nothing (all pieces archived and released).
async fn wait_lights_empty(client: &reqwest::Client, city: &str) {
    wait_for(
        "light nodes emptied by retention",
        Duration::from_secs(60),
        || async {
            let used = light_used(client, city).await;
            (!used.is_empty() && used.iter().all(|u| *u == 0)).then_some(())
        },
    )
    .await;
}

/// Sends `req` and checks it was stored on light nodes.
async fn send_light(client: &reqwest::Client, city: &str, req: &TxRequest) -> Value {
    let (status, stored) = post(client, city, req).await;
    assert_eq!(
        (status, stored["tier"].as_str()),
        (200, Some("light")),
        "light nodes take every batch: {stored}"
    );
    stored
}

/// The value of counter `name` in a `/metrics` text (0 when absent).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether any of `batch`'s light acks still names a piece its holder serves.
async fn any_piece_held(fed: &Federation, batch_id: &str, acks: &[Value]) -> bool {
    for ack in acks {
        let (Some(h), Some(index)) = (ack["holder_id"].as_str(), ack["piece"]["index"].as_u64())
        else {
            continue;
        };
        if holds_piece(fed, h, batch_id, index as u8).await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_empties_light_nodes_and_every_transaction_stays_readable_from_full_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = launch(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let fulls = fed.ids(Role::Full);

    // One batch to learn what a piece weighs on a light node.
    let first = send_light(&client, &city, &signed(&key, 1)).await;
    let first_batch = batch_of(&client, &city, &first).await;
    let first_acks = first_batch["acks"].as_array().unwrap().clone();
    let piece = wait_for(
        "the probes to see the first pieces",
        Duration::from_secs(10),
        || async {
            light_used(&client, &city)
                .await
                .into_iter()
                .max()
                .filter(|u| *u > 0)
        },
    )
    .await;
    // Waves of batches, each well within a light node's room; between them, retention
    // must empty the light nodes. All of them together would not fit: without retention,
    // the light nodes would have filled and the last batches fallen to full nodes.
    let per_wave = (ROOM / 2 / piece).max(1);
    let waves = 3 * ROOM / (per_wave * piece) + 1;
    assert!(
        waves * per_wave * piece > 2 * ROOM,
        "the test sends more than light nodes hold"
    );
    let mut sent = vec![first];
    wait_lights_empty(&client, &city).await;
    let mut nonce = 1;
    for _ in 0..waves {
        for _ in 0..per_wave {
            nonce += 1;
            sent.push(send_light(&client, &city, &signed(&key, nonce)).await);
        }
        wait_lights_empty(&client, &city).await;
    }

    // Every transaction reads back, from full nodes; its batch is home there.
    for stored in &sent {
        let tx_id = stored["tx_id"].as_str().unwrap();
        let (status, got) = get(&client, &format!("{city}/v1/tx/{tx_id}")).await;
        assert_eq!(
            (status, got["status"].as_str(), got["served_from"].as_str()),
            (200, Some("stored"), Some("full")),
            "{got}"
        );
        let batch = batch_of(&client, &city, stored).await;
        assert_eq!(batch["tier"], "full", "{batch}");
        for h in batch["holders"].as_array().unwrap() {
            assert!(fulls.iter().any(|f| f == h.as_str().unwrap()), "{batch}");
        }
    }
    // The first batch's pieces are gone from its light holders, and its sealed bytes are
    // on the full nodes.
    let first_id = first_batch["batch_id"].as_str().unwrap();
    assert!(!any_piece_held(&fed, first_id, &first_acks).await);
    let archived = batch_of(&client, &city, &sent[0]).await;
    for h in archived["holders"].as_array().unwrap() {
        assert!(holds(&fed, h.as_str().unwrap(), first_id).await);
    }
    let m = metrics(&client, &city).await;
    let batches = sent.len() as f64;
    assert!(
        counter(&m, "citychain_archived_batches_total") >= batches,
        "every batch archived: {m}"
    );
    assert!(
        counter(&m, "citychain_light_pieces_released_total") >= batches * 5.0,
        "their pieces released"
    );
    // Some round archived more than one window's worth, window after window.
    let log = std::fs::read_to_string(
        dir.path()
            .join("logs")
            .join(format!("{}.log", fed.ids(Role::City)[0])),
    )
    .unwrap();
    let most = log
        .lines()
        .filter(|l| l.contains("repair round"))
        .filter_map(|l| {
            l.split("archived: ")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(most > 1, "no round took more than one window of one batch");
    // Repair upward leaves archived batches on full nodes: they stay there, light nodes
    // stay empty, a few rounds later.
    let rounds_before = counter(&m, "citychain_hold_challenges_total");
    nonce += 1;
    let last = send_light(&client, &city, &signed(&key, nonce)).await;
    wait_for("more repair rounds", Duration::from_secs(30), || async {
        let m = metrics(&client, &city).await;
        (counter(&m, "citychain_hold_challenges_total") > rounds_before + 5.0).then_some(())
    })
    .await;
    wait_lights_empty(&client, &city).await;
    let batch = batch_of(&client, &city, &sent[1]).await;
    assert_eq!(batch["tier"], "full", "{batch}");
    let batch = batch_of(&client, &city, &last).await;
    assert_eq!(batch["tier"], "full", "{batch}");
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_full_nodes_down_nothing_is_released_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = launch(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let fulls = fed.ids(Role::Full);
    for id in &fulls {
        fed.kill(id).unwrap();
    }
    wait_nodes(&client, &city, &fulls, false).await;

    let mut sent = Vec::new();
    for nonce in 1..=4 {
        sent.push(send_light(&client, &city, &signed(&key, nonce)).await);
    }
    // Old enough and acknowledged by the continent: retention would archive them now.
    let mut batches = Vec::new();
    for stored in &sent {
        let batch = wait_for(
            "the continent to acknowledge the batch",
            Duration::from_secs(30),
            || async {
                let b = batch_of(&client, &city, stored).await;
                b["continent"]["continent_batch_id"]
                    .is_string()
                    .then_some(b)
            },
        )
        .await;
        batches.push(batch);
    }
    let newest = batches
        .iter()
        .filter_map(|b| b["created_at_ms"].as_u64())
        .max()
        .unwrap();
    wait_for(
        "the batches to pass retention",
        Duration::from_secs(10),
        || async { (citychain::messages::now_ms() > newest + 1_100).then_some(()) },
    )
    .await;
    let used_before = light_used(&client, &city).await;
    // Several repair rounds later (each challenges every light piece after its retention
    // step), nothing has moved: the full nodes cannot take the batches.
    let m = metrics(&client, &city).await;
    let challenged = counter(&m, "citychain_hold_challenges_total");
    wait_for("more repair rounds", Duration::from_secs(30), || async {
        let m = metrics(&client, &city).await;
        (counter(&m, "citychain_hold_challenges_total") >= challenged + 3.0 * 24.0).then_some(())
    })
    .await;
    let m = metrics(&client, &city).await;
    assert_eq!(counter(&m, "citychain_archived_batches_total"), 0.0, "{m}");
    assert_eq!(counter(&m, "citychain_light_pieces_released_total"), 0.0);
    assert_eq!(light_used(&client, &city).await, used_before);
    for (stored, before) in sent.iter().zip(&batches) {
        let batch = batch_of(&client, &city, stored).await;
        assert_eq!(batch["tier"], "light", "{batch}");
        let id = batch["batch_id"].as_str().unwrap();
        for ack in before["acks"].as_array().unwrap() {
            let (h, index) = (
                ack["holder_id"].as_str().unwrap(),
                ack["piece"]["index"].as_u64().unwrap() as u8,
            );
            assert!(
                holds_piece(&fed, h, id, index).await,
                "{h} keeps piece {index}"
            );
        }
        let tx_id = stored["tx_id"].as_str().unwrap();
        let (status, got) = get(&client, &format!("{city}/v1/tx/{tx_id}")).await;
        assert_eq!(
            (status, got["status"].as_str(), got["served_from"].as_str()),
            (200, Some("stored"), Some("light")),
            "{got}"
        );
    }

    // The full nodes are back: the batches are archived, their pieces released, and they
    // read from full nodes.
    for id in &fulls {
        fed.restart(id).await.unwrap();
    }
    wait_nodes(&client, &city, &fulls, true).await;
    wait_lights_empty(&client, &city).await;
    for (stored, before) in sent.iter().zip(&batches) {
        let batch = batch_of(&client, &city, stored).await;
        assert_eq!(batch["tier"], "full", "{batch}");
        let id = batch["batch_id"].as_str().unwrap();
        assert!(!any_piece_held(&fed, id, before["acks"].as_array().unwrap()).await);
        let tx_id = stored["tx_id"].as_str().unwrap();
        let (status, got) = get(&client, &format!("{city}/v1/tx/{tx_id}")).await;
        assert_eq!(
            (status, got["status"].as_str(), got["served_from"].as_str()),
            (200, Some("stored"), Some("full")),
            "{got}"
        );
    }
    fed.shutdown().await.unwrap();
}

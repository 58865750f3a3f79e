//! The light tier's erasure coding on a real federation of child processes: each batch
//! is cut into k = 4 data and m = 2 parity pieces, one per light node; it stays
//! rebuildable with any m of its holders stopped, the Repairer regenerates a lost holder's
//! piece from k others and places it on another light node, and a write that gets fewer
//! than k + 1 acked pieces fails over to the full nodes (and is repaired up as pieces once
//! light nodes are back).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use citychain::config::Role;
use citychain::crypto::{SigningKey, merkle_root};
use citychain::messages::{SealedEnvelope, parse_hex32};
use common::*;
use serde_json::Value;

/// The light holders of `batch` (a city's batch answer), in ack order.
fn holders(batch: &Value) -> Vec<String> {
    batch["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

/// `sealed` is the sealed batch `batch` describes: its id, and a header committing to the
/// transactions the city lists.
fn assert_is_the_batch(sealed: &[u8], batch: &Value) {
    let envelope = SealedEnvelope::from_bytes(sealed).expect("a sealed batch");
    assert_eq!(
        hex::encode(envelope.id()),
        batch["batch_id"].as_str().unwrap()
    );
    let listed: Vec<[u8; 32]> = batch["tx_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| parse_hex32(t.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(envelope.header.batch.merkle_root, merkle_root(&listed));
}

/// Waits until the city records all six pieces of the batch of `tx` (the write's
/// stragglers, or the Repairer, place what the quorum left out), none on `avoid`.
async fn wait_all_pieces(
    client: &reqwest::Client,
    city: &str,
    tx: &Value,
    avoid: &[String],
) -> Value {
    wait_for(
        "six pieces on six light nodes",
        Duration::from_secs(30),
        || async {
            let batch = batch_of(client, city, tx).await;
            let hs = holders(&batch);
            let distinct: BTreeSet<&String> = hs.iter().collect();
            let indices: BTreeSet<u64> = batch["acks"]
                .as_array()?
                .iter()
                .filter_map(|a| a["piece"]["index"].as_u64())
                .collect();
            (batch["tier"] == "light"
                && distinct.len() == 6
                && indices.len() == 6
                && hs.iter().all(|h| !avoid.contains(h)))
            .then_some(batch)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stays_rebuildable_with_any_m_light_holders_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // Two light nodes beyond a batch's six pieces: where the Repairer puts what stopped
    // holders held.
    let mut fed = federation_with_lights(dir.path(), 8).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    let (status, stored) = post(&client, &city, &signed(&key, 1)).await;
    assert_eq!(
        (status, stored["tier"].as_str()),
        (200, Some("light")),
        "{stored}"
    );
    assert!(
        stored["acks"].as_u64().unwrap() >= 5,
        "k + 1 acked: {stored}"
    );
    let batch = wait_all_pieces(&client, &city, &stored, &[]).await;
    let hs = holders(&batch);

    // Any two holders away (every pair): the other four rebuild the sealed batch.
    for (i, a) in hs.iter().enumerate() {
        for b in &hs[i + 1..] {
            let sealed = rebuild_light(&fed, &batch, &[a, b]).await;
            assert_is_the_batch(&sealed, &batch);
        }
    }
    // Any three away: too few pieces, and the rebuild says so rather than guess.
    let peers = fed.storage_client().unwrap();
    let three: Vec<&str> = hs[..3].iter().map(String::as_str).collect();
    let err = citychain_harness::testkit::rebuild_light(&fed, &peers, &batch, &three)
        .await
        .unwrap_err();
    assert!(err.contains("3 sound pieces of the 4 needed"), "{err}");

    // Two holders really stopped (SIGKILL): the batch still rebuilds from the rest, and
    // the city's Repairer regenerates their pieces from four others and places them on
    // the two light nodes that held none.
    let stopped = vec![hs[1].clone(), hs[4].clone()];
    for id in &stopped {
        fed.kill(id).unwrap();
    }
    let sealed = rebuild_light(&fed, &batch, &[&stopped[0], &stopped[1]]).await;
    assert_is_the_batch(&sealed, &batch);
    let repaired = wait_all_pieces(&client, &city, &stored, &stopped).await;
    let new_holders: BTreeSet<String> = holders(&repaired).into_iter().collect();
    let spares: BTreeSet<String> = fed
        .ids(Role::Light)
        .into_iter()
        .filter(|id| !hs.contains(id))
        .collect();
    assert!(spares.is_subset(&new_holders), "{repaired}");
    for ack in repaired["acks"].as_array().unwrap() {
        let (h, index) = (
            ack["holder_id"].as_str().unwrap(),
            ack["piece"]["index"].as_u64().unwrap() as u8,
        );
        assert!(
            holds_piece(&fed, h, repaired["batch_id"].as_str().unwrap(), index).await,
            "{h} holds piece {index}"
        );
    }
    // The regenerated pieces are the ones acked at write time, bit for bit.
    for index in 0..6u64 {
        let hash = |b: &Value| {
            b["acks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["piece"]["index"].as_u64() == Some(index))
                .map(|a| a["held_hash"].clone())
        };
        assert_eq!(hash(&batch), hash(&repaired), "piece {index}");
    }
    // And the batch survives another two losses: any two of its new holders away, among
    // them both regenerated pieces.
    let spare: Vec<&String> = spares.iter().collect();
    let sealed = rebuild_light(&fed, &repaired, &[spare[0], spare[1]]).await;
    assert_is_the_batch(&sealed, &repaired);
    // The transaction itself reads back through the city all along.
    let (status, tx) = get(
        &client,
        &format!("{city}/v1/tx/{}", stored["tx_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        (status, tx["status"].as_str()),
        (200, Some("stored")),
        "{tx}"
    );
    fed.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_acked_pieces_fail_over_to_full_nodes_and_repair_writes_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    // Two of six light nodes gone before the city notices: the batch is cut and placed
    // on all six as before, only four pieces are acked, one short of k + 1.
    let lights = fed.ids(Role::Light);
    for id in &lights[..2] {
        fed.kill(id).unwrap();
    }
    let (status, body) = post(&client, &city, &signed(&key, 1)).await;
    assert_eq!(
        (status, body["tier"].as_str()),
        (200, Some("full")),
        "{body}"
    );
    let m = metrics(&client, &city).await;
    // The counter is exported at 0 from the start: its value tells.
    let light_failures = m
        .lines()
        .find_map(|l| l.strip_prefix("citychain_tier_failures_total{tier=\"light\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        light_failures >= Some(1.0),
        "the light tier's failure is counted: {light_failures:?}"
    );
    // Once the city sees them down, it does not even try: four nodes cannot hold k + 1.
    wait_nodes(&client, &city, &lights[..2], false).await;
    let (status, second) = post(&client, &city, &signed(&key, 2)).await;
    assert_eq!(
        (status, second["tier"].as_str()),
        (200, Some("full")),
        "{second}"
    );

    // Back again: the Repairer moves both batches up to the light tier as six pieces.
    for id in &lights[..2] {
        fed.restart(id).await.unwrap();
    }
    for tx in [&body, &second] {
        let url = format!("{city}/v1/tx/{}", tx["tx_id"].as_str().unwrap());
        wait_for(
            "repair up to light nodes",
            Duration::from_secs(30),
            || async {
                let (_, b) = get(&client, &url).await;
                (b["tier"] == "light").then_some(())
            },
        )
        .await;
        let batch = wait_all_pieces(&client, &city, tx, &[]).await;
        let sealed = rebuild_light(&fed, &batch, &[]).await;
        assert_is_the_batch(&sealed, &batch);
    }
    fed.shutdown().await.unwrap();
}

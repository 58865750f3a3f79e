//! Storage rewards on a real federation of child processes: every valid proof of hold is
//! credited to its node by the rules of `engines::rewards` (score × 1.0 × 10 for a light
//! node, × 1.5 for a full one), repair challenges credit the holders that pass them, a
//! light node that lost its pieces fails its challenges, stops earning and drops in score,
//! and the ledger in `city.redb` survives a SIGKILL of the city unchanged and never
//! credits a batch twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use citychain::config::{Config, Role};
use citychain::crypto::SigningKey;
use citychain::storage::city_store::CityStore;
use common::*;
use serde_json::Value;

/// Transactions stored before the challenges.
const TXS: u64 = 4;

/// `GET /v1/rewards`, by node id.
async fn rewards(client: &reqwest::Client, city: &str) -> BTreeMap<String, Value> {
    let (status, list) = get(client, &format!("{city}/v1/rewards")).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|r| (r["node_id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Proofs of hold credited to a node: write and repair acks and passed challenges.
fn proofs(v: &Value) -> u64 {
    num(v, "write_acks") + num(v, "repair_acks") + num(v, "challenges_passed")
}

/// The engine's rule for a light node: each proof earns score × 1.0 × 10 with a score of
/// 0–9 (the score the city gave the node when it chose or challenged it, which the test
/// cannot see): a multiple of 10, at most 90 per proof, and something for a healthy node.
fn assert_light_rule(v: &Value) {
    let (points, proofs) = (num(v, "points"), proofs(v));
    assert_eq!(points % 10, 0, "score × 1.0 × 10 is a multiple of 10: {v}");
    assert!(points <= 90 * proofs, "at most 9 × 10 per proof: {v}");
    assert!(
        proofs == 0 || points > 0,
        "a healthy node earns something: {v}"
    );
}

/// `GET /v1/nodes` scores of the nodes up, by node id.
async fn scores(client: &reqwest::Client, city: &str) -> BTreeMap<String, u64> {
    let (_, nodes) = get(client, &format!("{city}/v1/nodes")).await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] == true)
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["score"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_of_hold_earn_points_failed_challenges_cost_score_and_the_ledger_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // Two light nodes beyond a batch's six pieces: where the Repairer puts the pieces of
    // the node that loses its store.
    let mut fed = federation_with_lights(dir.path(), 8).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();
    let lights = fed.ids(Role::Light);
    let fulls = fed.ids(Role::Full);

    // Bad input first: an id the city never knew is a clear 404 and changes nothing.
    for bad in ["nobody", "light-%00", "%F0%9F%92%A5", &"x".repeat(2000)] {
        let (status, body) = get(&client, &format!("{city}/v1/rewards/{bad}")).await;
        assert_eq!(status, 404, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "unknown_node", "{body}");
    }
    // A configured node is known before it earns anything.
    let (status, empty) = get(&client, &format!("{city}/v1/rewards/{}", lights[0])).await;
    assert_eq!((status, num(&empty, "points")), (200, 0), "{empty}");
    assert_eq!(empty["role"], "light", "{empty}");

    // N stored transactions, every one on the light tier.
    let mut acked = 0;
    let first = signed(&key, 1);
    for nonce in 1..=TXS {
        let req = if nonce == 1 {
            first.clone()
        } else {
            signed(&key, nonce)
        };
        let (status, stored) = post(&client, &city, &req).await;
        assert_eq!(
            (status, stored["tier"].as_str()),
            (200, Some("light")),
            "{stored}"
        );
        acked += num(&stored, "acks");
    }
    // The light nodes that acked are credited by the rule for each ack, exactly once:
    // all acks of the N batches, at most one piece per node per batch; full nodes, which
    // held nothing, have nothing.
    let ledger = wait_for(
        "every write ack in the ledger",
        Duration::from_secs(10),
        || async {
            let ledger = rewards(&client, &city).await;
            let written: u64 = ledger.values().map(|v| num(v, "write_acks")).sum();
            (written == acked).then_some(ledger)
        },
    )
    .await;
    for id in &lights {
        let v = &ledger[id];
        assert_eq!(v["role"], "light", "{v}");
        assert!(num(v, "write_acks") <= TXS, "one piece per batch: {v}");
        assert_light_rule(v);
        if num(v, "write_acks") > 0 {
            assert!(v["last_credit_ms"].as_u64().is_some(), "{v}");
        }
    }
    for id in &fulls {
        let v = &ledger[id];
        assert_eq!(
            (v["role"].as_str(), num(v, "points"), proofs(v)),
            (Some("full"), 0, 0),
            "no batch fell to full nodes: {v}"
        );
    }
    let metrics_text = metrics(&client, &city).await;
    assert!(
        metrics_text.contains("citychain_reward_points_total{role=\"light\"}"),
        "reward points are counted"
    );

    // Repair challenges credit the holders that pass them.
    let holders: Vec<String> = lights
        .iter()
        .filter(|id| num(&ledger[*id], "write_acks") > 0)
        .cloned()
        .collect();
    assert!(holders.len() >= 5, "k + 1 pieces per batch: {ledger:?}");
    let passed = wait_for(
        "every holder to pass a repair challenge",
        Duration::from_secs(30),
        || async {
            let ledger = rewards(&client, &city).await;
            holders
                .iter()
                .all(|id| num(&ledger[id], "challenges_passed") > 0)
                .then_some(ledger)
        },
    )
    .await;
    for id in &holders {
        let (before, after) = (&ledger[id], &passed[id]);
        assert!(num(after, "points") > num(before, "points"), "{after}");
        assert_light_rule(after);
        assert_eq!(num(after, "challenges_failed"), 0, "{after}");
    }

    // One holder loses its store (killed, its batches file removed, restarted empty): it
    // fails its challenges, stops earning while the others keep earning, and its score
    // drops below theirs.
    let lost = holders[0].clone();
    let score_before = scores(&client, &city).await[&lost];
    fed.kill(&lost).unwrap();
    let store_file = fed
        .node(&lost)
        .config
        .node
        .data_dir
        .join(citychain::storage::store::FILE_NAME);
    std::fs::remove_file(&store_file).expect("the light node's store file");
    fed.restart(&lost).await.unwrap();
    let failed = wait_for(
        "the emptied node to fail its challenges",
        Duration::from_secs(30),
        || async {
            let ledger = rewards(&client, &city).await;
            (num(&ledger[&lost], "challenges_failed") > 0).then_some(ledger)
        },
    )
    .await;
    let frozen = num(&failed[&lost], "points");
    let others: Vec<&String> = holders.iter().filter(|id| **id != lost).collect();
    let grown = wait_for(
        "the other holders to keep earning",
        Duration::from_secs(30),
        || async {
            let ledger = rewards(&client, &city).await;
            others
                .iter()
                .all(|id| num(&ledger[*id], "points") > num(&failed[*id], "points"))
                .then_some(ledger)
        },
    )
    .await;
    assert_eq!(
        num(&grown[&lost], "points"),
        frozen,
        "a node that lost its pieces earns nothing more: {}",
        grown[&lost]
    );
    assert!(num(&grown[&lost], "challenges_failed") >= 1);
    wait_for(
        "the failed node's score to drop below the others'",
        Duration::from_secs(10),
        || async {
            let s = scores(&client, &city).await;
            let lowest_other = others.iter().filter_map(|id| s.get(*id)).min()?;
            let now = *s.get(&lost)?; // up again, yet scored lower
            (now < score_before && now < *lowest_other).then_some(())
        },
    )
    .await;
    let (_, reply) = get(&client, &format!("{city}/v1/rewards/{lost}")).await;
    assert!(reply["score"].as_u64().unwrap() < score_before, "{reply}");
    let m = metrics(&client, &city).await;
    assert!(
        m.contains("citychain_repair_challenges_total{outcome=\"failed\"}")
            && m.contains("citychain_repair_challenges_total{outcome=\"passed\"}"),
        "challenge results are counted"
    );

    // The city killed at any moment: its ledger as the crash left it on disk is what the
    // restarted city serves, with no batch credited twice (restarted without repair
    // rounds, so nothing new is earned meanwhile).
    let city_id = fed.ids(Role::City).remove(0);
    fed.kill(&city_id).unwrap();
    let on_disk: BTreeMap<String, (u64, u64, u64, u64, u64)> = {
        let store = CityStore::open(&fed.node(&city_id).config.node.data_dir).unwrap();
        store
            .reward_accounts()
            .unwrap()
            .into_iter()
            .map(|(id, a)| {
                let counts = (
                    a.points,
                    a.write_acks,
                    a.repair_acks,
                    a.challenges_passed,
                    a.challenges_failed,
                );
                (id, counts)
            })
            .collect()
    };
    let written: u64 = on_disk.values().map(|c| c.1).sum();
    assert_eq!(written, acked, "each write ack credited once");
    let lost_reliability = CityStore::open(&fed.node(&city_id).config.node.data_dir)
        .unwrap()
        .reward_account(&lost)
        .unwrap()
        .unwrap()
        .reliability();
    assert!(
        lost_reliability < 1.0,
        "its failures are on disk: {lost_reliability}"
    );
    let path = fed.node(&city_id).config_path.clone();
    let mut config = Config::load(&path).unwrap();
    config.repair.enabled = false;
    std::fs::write(&path, config.to_toml()).unwrap();
    fed.reload_config(&city_id).unwrap();
    fed.restart(&city_id).await.unwrap();
    let after = rewards(&client, &city).await;
    for (id, counts) in &on_disk {
        let v = &after[id];
        assert_eq!(
            (
                num(v, "points"),
                num(v, "write_acks"),
                num(v, "repair_acks"),
                num(v, "challenges_passed"),
                num(v, "challenges_failed"),
            ),
            *counts,
            "{id}: the ledger is unchanged by the crash and restart"
        );
    }
    // Nor does the restart forgive the failing node: the Prioritizer starts it where its
    // challenges left it, and its score is multiplied by that.
    assert_eq!(after[&lost]["reliability"].as_f64(), Some(lost_reliability));
    let nodes = get(&client, &format!("{city}/v1/nodes")).await.1;
    let view = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap()
            .clone()
    };
    let lost_view = view(&lost);
    assert_eq!(
        lost_view["factors"]["reliability"].as_f64(),
        Some(lost_reliability)
    );
    // A transaction stored again is a duplicate: no new batch, no new credit.
    let (status, dup) = post(&client, &city, &first).await;
    assert_eq!(
        (status, dup["duplicate"].as_bool()),
        (200, Some(true)),
        "{dup}"
    );
    let again = rewards(&client, &city).await;
    let written: u64 = again.values().map(|v| num(v, "write_acks")).sum();
    assert_eq!(written, acked, "a duplicate earns nothing");
    fed.shutdown().await.unwrap();
}

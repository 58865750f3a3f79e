//! The object-dependency engine on a real federation of child processes: owned objects have
//! one writer and one owner, shared objects take every writer in a recorded order,
//! immutable ones are never written, and a refused transaction changes nothing (its nonce
//! stays free).

mod common;

use std::time::Duration;

use citychain::crypto::SigningKey;
use citychain::messages::{ObjectAccess, ObjectKind, ObjectRef, TxRequest};
use common::*;
use serde_json::Value;

fn object(id: &str, kind: ObjectKind, access: ObjectAccess) -> ObjectRef {
    ObjectRef {
        id: id.into(),
        kind,
        access,
    }
}

fn with_objects(key: &SigningKey, nonce: u64, objects: Vec<ObjectRef>) -> TxRequest {
    draft(nonce, 1000 + nonce)
        .objects(objects)
        .sign(key)
        .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// `GET /v1/batches/{id}?txs=true`, waiting out a 503 from a read that found no source in
/// time (a loaded machine).
async fn batch_with_txs(c: &reqwest::Client, city: &str, batch: &str) -> Value {
    wait_for(
        "the batch's body to read back",
        Duration::from_secs(30),
        || async {
            let (status, b) = get(c, &format!("{city}/v1/batches/{batch}?txs=true")).await;
            (status == 200).then_some(b)
        },
    )
    .await
}

/// The index of transaction `tx` in a batch answer's `txs`.
fn index_in(batch: &Value, tx: &str) -> usize {
    batch["txs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t["tx_id"] == tx)
        .unwrap_or_else(|| panic!("{tx} is in its batch: {batch}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owned_shared_and_immutable_objects_follow_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let fed = federation(dir.path()).await;
    let c = client();
    let city = fed.city_url();
    use ObjectAccess::*;
    use ObjectKind::*;

    // Many senders write one new owned object at once: one wins; every other is refused
    // while the winner is in flight (one writer) or after it is durable (its owner).
    let keys: Vec<SigningKey> = (0..8).map(|_| SigningKey::generate().unwrap()).collect();
    let reqs: Vec<TxRequest> = keys
        .iter()
        .map(|k| with_objects(k, 1, vec![object("coin-1", Owned, Write)]))
        .collect();
    let answers = futures::future::join_all(reqs.iter().map(|r| post(&c, &city, r))).await;
    let winners: Vec<usize> = (0..answers.len())
        .filter(|i| answers[*i].0 == 200)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0];
    for (i, (status, answer)) in answers.iter().enumerate() {
        if i != winner {
            assert_eq!(
                (*status, code(answer)),
                (409, "object_conflict"),
                "{answer}"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("coin-1"),
                "{answer}"
            );
            let (status, _) = get(&c, &format!("{city}/v1/tx/{}", tx_id(&reqs[i]))).await;
            assert_eq!(status, 404, "a refused transaction is not recorded");
        }
    }
    let first_id = tx_id(&reqs[winner]);
    let (status, head) = get(&c, &format!("{city}/v1/objects/coin-1")).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(head["kind"], "owned");
    assert_eq!(head["owner"], keys[winner].address());
    assert_eq!(head["version"], 1);
    assert_eq!(head["last_tx"], first_id.as_str());
    assert_eq!(head["last_batch"], answers[winner].1["batch_id"]);

    // Another sender may still not write it (it has an owner now), nor declare it shared.
    let loser = (winner + 1) % keys.len();
    let (status, answer) = post(
        &c,
        &city,
        &with_objects(&keys[loser], 2, vec![object("coin-1", Owned, Write)]),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (409, "object_conflict"),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owned by"),
        "{answer}"
    );
    let (status, answer) = post(
        &c,
        &city,
        &with_objects(&keys[loser], 3, vec![object("coin-1", Shared, Read)]),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (409, "object_conflict"),
        "{answer}"
    );

    // A 409 left the loser's nonce unused: another transaction with it is stored.
    let (status, answer) = post(&c, &city, &signed(&keys[loser], 1)).await;
    assert_eq!(status, 200, "{answer}");

    // The owner writes again: its batch records the edge from the first write.
    let second = with_objects(&keys[winner], 2, vec![object("coin-1", Owned, Write)]);
    let (status, stored) = post(&c, &city, &second).await;
    assert_eq!(status, 200, "{stored}");
    let second_id = tx_id(&second);
    let batch = batch_with_txs(&c, &city, stored["batch_id"].as_str().unwrap()).await;
    let at = index_in(&batch, &second_id);
    let deps = batch["deps"].as_array().unwrap();
    assert!(
        deps.iter().any(|d| d["from"] == first_id.as_str()
            && d["to"] == at
            && d["object"] == "coin-1"
            && d["kind"] == "write_after_write"),
        "{batch}"
    );
    let (_, head) = get(&c, &format!("{city}/v1/objects/coin-1")).await;
    assert_eq!(
        (head["version"].as_u64(), head["last_tx"].as_str()),
        (Some(2), Some(second_id.as_str()))
    );

    // Shared writes all commit, and the recorded edges replay their order.
    let writers: Vec<TxRequest> = keys
        .iter()
        .map(|k| with_objects(k, 10, vec![object("pool", Shared, Write)]))
        .collect();
    let answers = futures::future::join_all(writers.iter().map(|r| post(&c, &city, r))).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
    }
    let mut batches: Vec<Value> = Vec::new();
    for (_, answer) in &answers {
        let id = answer["batch_id"].as_str().unwrap();
        if !batches.iter().any(|b| b["batch_id"] == id) {
            batches.push(batch_with_txs(&c, &city, id).await);
        }
    }
    batches.sort_by_key(|b| b["seq"].as_u64().unwrap());
    let ours: Vec<String> = writers.iter().map(tx_id).collect();
    // Walk the writes in batch order; each after the first follows the one before it.
    let mut previous: Option<(String, String, usize)> = None; // (batch, tx, index)
    let mut seen = 0;
    for b in &batches {
        let deps = b["deps"].as_array().unwrap();
        for (i, t) in b["txs"].as_array().unwrap().iter().enumerate() {
            let id = t["tx_id"].as_str().unwrap().to_string();
            if !ours.contains(&id) {
                continue;
            }
            seen += 1;
            if let Some((pb, ptx, pi)) = &previous {
                let from: Value = if *pb == b["batch_id"] {
                    (*pi).into()
                } else {
                    ptx.as_str().into()
                };
                assert!(
                    deps.iter().any(|d| d["from"] == from
                        && d["to"] == i
                        && d["object"] == "pool"
                        && d["kind"] == "write_after_write"),
                    "write {i} of {} follows {from}: {b}",
                    b["batch_id"]
                );
            } else {
                assert!(
                    !deps.iter().any(|d| d["to"] == i && d["object"] == "pool"),
                    "the first write of a new object follows nothing: {b}"
                );
            }
            previous = Some((b["batch_id"].as_str().unwrap().into(), id, i));
        }
    }
    assert_eq!(seen, ours.len());
    let (_, head) = get(&c, &format!("{city}/v1/objects/pool")).await;
    assert_eq!(head["kind"], "shared");
    assert_eq!(head["owner"], Value::Null);
    assert_eq!(head["version"], ours.len());
    assert_eq!(head["last_tx"], previous.unwrap().1.as_str());

    // Immutable objects are read, never written; malformed declarations are 400s.
    let key = SigningKey::generate().unwrap();
    let (status, answer) = post(
        &c,
        &city,
        &with_objects(&key, 1, vec![object("law", Immutable, Read)]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let too_many: Vec<ObjectRef> = (0..33)
        .map(|i| object(&format!("o{i}"), Shared, Read))
        .collect();
    for bad in [
        vec![object("law", Immutable, Write)],
        vec![object("a", Owned, Read), object("a", Owned, Write)],
        vec![object("bad\nid", Shared, Read)],
        too_many,
    ] {
        let (status, answer) = post(&c, &city, &with_objects(&key, 2, bad)).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "invalid_objects"),
            "{answer}"
        );
    }
    // None of them used nonce 2.
    let (status, answer) = post(&c, &city, &signed(&key, 2)).await;
    assert_eq!(status, 200, "{answer}");

    let (status, answer) = get(&c, &format!("{city}/v1/objects/never-seen")).await;
    assert_eq!((status, code(&answer)), (404, "unknown_object"), "{answer}");
    let text = metrics(&c, &city).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("citychain_object_conflicts_total")),
        "{text}"
    );
}

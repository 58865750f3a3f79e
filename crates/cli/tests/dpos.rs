//! DPoS approval of continent batches with real processes on loopback: three
//! representatives of stake 100 each, every one its own process. A continent batch is
//! approved with them all up; with one of three running (a third of the stake) a batch
//! stays pending until a second one comes back; a representative whose key signs two
//! different batch ids for one slot is proven to equivocate, slashed to 0, and its vote
//! no longer counts; forged, unknown and malformed votes are refused and change nothing.
//! With unequal stakes the one holding 65% cannot approve alone; a continent restarted
//! while a batch is pending asks again by itself; a representative answers only its
//! continent node's signed proposals and never signs two batch ids for one slot.

mod common;

use std::sync::Arc;
use std::time::Duration;

use citychain::crypto::{SigningKey, tagged};
use citychain::messages::auth::RequestSigner;
use citychain::messages::dpos::{DposProposal, PROPOSALS_PATH, SignedVote, Vote};
use citychain::messages::federation::{CONTINENT_BATCH_TAG, ContinentBatchHeader};
use citychain::messages::{encode, parse_hex32};
use citychain_harness::federation::{Federation, FederationSpec};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn launch(dir: &std::path::Path) -> Federation {
    let spec = FederationSpec {
        representatives_per_continent: 3,
        ..citychain_harness::testkit::watchful_spec(dir.to_path_buf(), binary())
    };
    Federation::launch(spec)
        .await
        .expect("the federation starts")
}

/// Sends one transaction and waits until its city batch is in a continent batch; that
/// continent batch's id and sequence number.
async fn new_continent_batch(
    c: &reqwest::Client,
    fed: &Federation,
    key: &SigningKey,
    nonce: u64,
) -> (String, u64) {
    let (status, stored) = post(c, &fed.city_url(), &signed(key, nonce)).await;
    assert_eq!(status, 200, "{stored}");
    let batch = stored["batch_id"].as_str().unwrap().to_string();
    let continent = fed.continent_url("asia");
    let id = wait_for("the continent to merge the batch", WAIT, || async {
        let (s, v) = get(c, &format!("{continent}/v1/city-batches/{batch}")).await;
        (s == 200).then(|| v["continent_batch_id"].as_str().unwrap().to_string())
    })
    .await;
    let (_, v) = get(c, &format!("{continent}/v1/continent-batches/{id}")).await;
    (id, v["seq"].as_u64().unwrap())
}

async fn approval(c: &reqwest::Client, fed: &Federation, id: &str) -> Value {
    let (s, v) = get(
        c,
        &format!("{}/v1/continent-batches/{id}", fed.continent_url("asia")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["approval"].clone()
}

async fn wait_approval(
    c: &reqwest::Client,
    fed: &Federation,
    id: &str,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, WAIT, || async {
        let a = approval(c, fed, id).await;
        want(&a).then_some(a)
    })
    .await
}

fn rep_key(fed: &Federation, id: &str) -> SigningKey {
    SigningKey::load(&fed.node(id).config.node.key_path()).unwrap()
}

fn vote(key: &SigningKey, rep: &str, slot: u64, batch_id: [u8; 32]) -> SignedVote {
    SignedVote::sign(
        key,
        Vote {
            continent: "asia".into(),
            slot,
            batch_id,
            representative: rep.into(),
        },
    )
    .unwrap()
}

async fn post_vote(c: &reqwest::Client, fed: &Federation, body: Vec<u8>) -> (u16, Value) {
    let resp = c
        .post(format!("{}/v1/dpos/votes", fed.continent_url("asia")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the continent answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn representatives(c: &reqwest::Client, fed: &Federation) -> Value {
    let (s, v) = get(
        c,
        &format!("{}/v1/dpos/representatives", fed.continent_url("asia")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

fn rep<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["representatives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no representative {id} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_approved_by_two_thirds_of_the_stake_and_equivocation_is_slashed() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = launch(dir.path()).await;
    let c = client();
    let key = SigningKey::generate().unwrap();
    let (r1, r2, r3) = ("rep-asia-1", "rep-asia-2", "rep-asia-3");
    let grace = Duration::from_secs(5);

    // All three up: approved, by at least two thirds of 300.
    let (first, _) = new_continent_batch(&c, &fed, &key, 1).await;
    let a = wait_approval(&c, &fed, &first, "the first batch approved", |a| {
        a["status"] == "approved"
    })
    .await;
    assert_eq!(a["total_stake"], 300, "{a}");
    assert!(a["stake"].as_u64().unwrap() >= 200, "{a}");
    assert!(a["approved_at_ms"].as_u64().is_some(), "{a}");

    // One of three running (a third of the stake): the batch stays pending with that
    // one's vote, and is approved once a second representative is back.
    fed.stop(r2, grace).await.unwrap();
    fed.stop(r3, grace).await.unwrap();
    let (second, second_slot) = new_continent_batch(&c, &fed, &key, 2).await;
    let a = wait_approval(&c, &fed, &second, "rep-asia-1's vote", |a| {
        a["stake"] == 100
    })
    .await;
    assert_eq!(a["status"], "pending", "{a}");
    assert_eq!(a["voters"], serde_json::json!([r1]), "{a}");
    assert!(a["approved_at_ms"].is_null(), "{a}");
    fed.restart(r2).await.unwrap();
    let a = wait_approval(&c, &fed, &second, "the second batch approved", |a| {
        a["status"] == "approved"
    })
    .await;
    assert_eq!(
        (a["stake"].as_u64(), a["total_stake"].as_u64()),
        (Some(200), Some(300))
    );

    // rep-asia-3's key (its process is down) signs the real batch of the second slot,
    // then another batch id for the same slot: equivocation.
    let k3 = rep_key(&fed, r3);
    let honest = vote(&k3, r3, second_slot, parse_hex32(&second).unwrap());
    let (s, v) = post_vote(&c, &fed, serde_json::to_vec(&honest).unwrap()).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("recorded")), "{v}");
    let (s, v) = post_vote(&c, &fed, serde_json::to_vec(&honest).unwrap()).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("duplicate")), "{v}");
    let double = vote(&k3, r3, second_slot, [0xEE; 32]);
    let (s, v) = post_vote(&c, &fed, serde_json::to_vec(&double).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outcome"], "equivocation", "{v}");
    assert_eq!(v["slashed"], 100, "{v}");
    // Sent again, it is no second offence.
    let (_, v) = post_vote(&c, &fed, serde_json::to_vec(&double).unwrap()).await;
    assert!(v["slashed"].is_null(), "{v}");
    let reps = representatives(&c, &fed).await;
    assert_eq!(reps["total_stake"], 200, "{reps}");
    let three = rep(&reps, r3);
    assert_eq!(three["stake"], 0, "{reps}");
    assert_eq!(three["slashed"], true, "{reps}");
    assert_eq!(three["slashed_stake"], 100, "{reps}");
    assert_eq!(rep(&reps, r1)["slashed"], false, "{reps}");
    let (_, ev) = get(
        &c,
        &format!("{}/v1/dpos/evidence", fed.continent_url("asia")),
    )
    .await;
    let ev = ev["evidence"].as_array().unwrap().clone();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["representative"], r3);
    assert_eq!(ev[0]["slot"], second_slot);
    assert_eq!(ev[0]["first"]["batch_id"], second.as_str());
    assert_eq!(ev[0]["second"]["batch_id"], hex::encode([0xEE; 32]));
    // The approval recorded before the offence stands.
    assert_eq!(approval(&c, &fed, &second).await["status"], "approved");

    // rep-asia-1 alone is half of the stake in force (200): pending; rep-asia-3's vote
    // counts for nothing now; rep-asia-2 back makes it.
    fed.stop(r2, grace).await.unwrap();
    let (third, third_slot) = new_continent_batch(&c, &fed, &key, 3).await;
    wait_approval(&c, &fed, &third, "rep-asia-1's vote", |a| {
        a["voters"] == serde_json::json!([r1])
    })
    .await;
    let slashed_vote = vote(&k3, r3, third_slot, parse_hex32(&third).unwrap());
    let (s, v) = post_vote(&c, &fed, serde_json::to_vec(&slashed_vote).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["approved_now"], false, "{v}");
    let a = approval(&c, &fed, &third).await;
    assert_eq!(a["status"], "pending", "{a}");
    assert_eq!(
        (a["stake"].as_u64(), a["total_stake"].as_u64()),
        (Some(100), Some(200))
    );

    // Forged, unknown, inconsistent and malformed votes: refused, nothing changes.
    let before = representatives(&c, &fed).await;
    let stranger = SigningKey::generate().unwrap();
    let forged = vote(&stranger, r2, third_slot, parse_hex32(&third).unwrap());
    let unknown = vote(
        &stranger,
        "rep-nobody",
        third_slot,
        parse_hex32(&third).unwrap(),
    );
    let wrong_slot = vote(
        &rep_key(&fed, r2),
        r2,
        third_slot + 7,
        parse_hex32(&third).unwrap(),
    );
    // A representative's own vote for a slot the continent has not produced: refused,
    // so votes cannot pile up ahead of the continent.
    let future_slot = vote(&rep_key(&fed, r2), r2, third_slot + 1_000_000, [3; 32]);
    let mut other_continent = vote(&stranger, r2, third_slot, [1; 32]);
    other_continent.continent = "europe".into();
    for (what, body, status, code) in [
        (
            "forged",
            serde_json::to_vec(&forged).unwrap(),
            401,
            "bad_signature",
        ),
        (
            "unknown",
            serde_json::to_vec(&unknown).unwrap(),
            403,
            "unknown_representative",
        ),
        (
            "wrong slot",
            serde_json::to_vec(&wrong_slot).unwrap(),
            400,
            "invalid_vote",
        ),
        (
            "future slot",
            serde_json::to_vec(&future_slot).unwrap(),
            400,
            "unknown_slot",
        ),
        (
            "other continent",
            serde_json::to_vec(&other_continent).unwrap(),
            400,
            "invalid_vote",
        ),
        ("not JSON", b"{\"continent\":".to_vec(), 400, "invalid_vote"),
        (
            "missing fields",
            b"{\"slot\":1}".to_vec(),
            400,
            "invalid_vote",
        ),
    ] {
        let (s, v) = post_vote(&c, &fed, body).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
    }
    assert_eq!(representatives(&c, &fed).await, before);
    let a = approval(&c, &fed, &third).await;
    assert_eq!(a["status"], "pending", "{a}");

    fed.restart(r2).await.unwrap();
    let a = wait_approval(&c, &fed, &third, "the third batch approved", |a| {
        a["status"] == "approved"
    })
    .await;
    assert_eq!(
        (a["stake"].as_u64(), a["total_stake"].as_u64()),
        (Some(200), Some(200))
    );
    assert!(
        !a["voters"].as_array().unwrap().iter().any(|v| v == r3),
        "{a}"
    );

    let continent = fed.continent_url("asia");
    let m = metrics(&c, &continent).await;
    assert!(m.contains("citychain_dpos_approved_batches_total 3"), "{m}");
    assert!(m.contains("citychain_dpos_slashed_stake 100"), "{m}");
    assert!(
        m.contains("citychain_dpos_votes_total{outcome=\"bad_signature\"} 1"),
        "{m}"
    );
    let (_, status) = get(&c, &format!("{continent}/v1/federation/status")).await;
    assert_eq!(status["dpos"]["approved_batches"], 3, "{status}");
    assert_eq!(status["dpos"]["evidence"], 1, "{status}");
    fed.shutdown().await.unwrap();
}

/// POSTs a proposal to representative `rep`, signed as `signer` (the continent node, or
/// not); the status and the JSON answer.
async fn propose(
    c: &reqwest::Client,
    fed: &Federation,
    rep: &str,
    signer: &RequestSigner,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = c
        .post(format!("{}{PROPOSALS_PATH}", fed.node(rep).url))
        .header("content-type", "application/octet-stream");
    for (name, value) in signer.headers("POST", PROPOSALS_PATH, rep, &body).unwrap() {
        req = req.header(name, value);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .expect("the representative answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn proposal(key: &SigningKey, continent: &str, seq: u64, root: u8) -> Vec<u8> {
    let header = ContinentBatchHeader {
        continent: continent.into(),
        seq,
        parents: vec![],
        entries_root: [root; 32],
        entry_count: 1,
        // Fixed, so that the same arguments make the same batch id.
        created_at_ms: 1,
    };
    let signature = key
        .sign(&tagged(CONTINENT_BATCH_TAG, &header.id()))
        .unwrap();
    encode(&DposProposal {
        header,
        signer: "continent-asia".into(),
        signature,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stake_not_heads_decides_a_restarted_continent_asks_again_and_representatives_vote_once() {
    let dir = tempfile::tempdir().unwrap();
    // 65% + 17.5% + 17.5%: the big one alone is short of two thirds.
    let spec = FederationSpec {
        representatives_per_continent: 3,
        representative_stakes: vec![650, 175, 175],
        ..citychain_harness::testkit::watchful_spec(dir.path().to_path_buf(), binary())
    };
    let mut fed = Federation::launch(spec)
        .await
        .expect("the federation starts");
    let c = client();
    let key = SigningKey::generate().unwrap();
    let grace = Duration::from_secs(5);

    // A representative answers its continent node only, for its continent, on a batch its
    // continent signed, and never signs two batch ids for one slot.
    let continent_key =
        Arc::new(SigningKey::load(&fed.node("continent-asia").config.node.key_path()).unwrap());
    let as_continent = RequestSigner::new("continent-asia", continent_key.clone());
    let r1 = "rep-asia-1";
    let (s, first) = propose(
        &c,
        &fed,
        r1,
        &as_continent,
        proposal(&continent_key, "asia", 1000, 1),
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["earlier"], false, "{first}");
    let (s, again) = propose(
        &c,
        &fed,
        r1,
        &as_continent,
        proposal(&continent_key, "asia", 1000, 1),
    )
    .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        again["vote"], first["vote"],
        "the same vote for the same batch"
    );
    let (s, other) = propose(
        &c,
        &fed,
        r1,
        &as_continent,
        proposal(&continent_key, "asia", 1000, 2),
    )
    .await;
    assert_eq!(s, 409, "{other}");
    assert_eq!(other["error"]["code"], "already_voted", "{other}");
    assert_eq!(
        other["vote"], first["vote"],
        "its earlier vote, not a second one"
    );
    let stranger = Arc::new(SigningKey::generate().unwrap());
    let as_stranger = RequestSigner::new("continent-asia", stranger.clone());
    let as_unknown = RequestSigner::new("someone", stranger.clone());
    for (what, signer, body, status, code) in [
        (
            "a forged request",
            &as_stranger,
            proposal(&continent_key, "asia", 1001, 1),
            401,
            "bad_signature",
        ),
        (
            "an unknown node",
            &as_unknown,
            proposal(&continent_key, "asia", 1001, 1),
            401,
            "unknown_peer",
        ),
        (
            "a batch it did not sign",
            &as_continent,
            proposal(&stranger, "asia", 1001, 1),
            403,
            "bad_batch_signature",
        ),
        (
            "another continent",
            &as_continent,
            proposal(&continent_key, "europe", 1001, 1),
            403,
            "not_this_continent",
        ),
        (
            "not a proposal",
            &as_continent,
            b"junk".to_vec(),
            400,
            "invalid_body",
        ),
    ] {
        let (s, v) = propose(&c, &fed, r1, signer, body).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
    }
    // None of them took slot 1001.
    let (s, v) = propose(
        &c,
        &fed,
        r1,
        &as_continent,
        proposal(&continent_key, "asia", 1001, 3),
    )
    .await;
    assert_eq!((s, v["earlier"].as_bool()), (200, Some(false)), "{v}");

    // The 65% representative alone: pending, across a restart of the continent; a 17.5%
    // one back makes 82.5%, and the restarted continent asks again by itself.
    fed.stop("rep-asia-2", grace).await.unwrap();
    fed.stop("rep-asia-3", grace).await.unwrap();
    let (id, _) = new_continent_batch(&c, &fed, &key, 1).await;
    let a = wait_approval(&c, &fed, &id, "the big representative's vote", |a| {
        a["stake"] == 650
    })
    .await;
    assert_eq!(a["status"], "pending", "{a}");
    assert_eq!(a["total_stake"], 1000, "{a}");
    fed.stop("continent-asia", grace).await.unwrap();
    fed.restart("continent-asia").await.unwrap();
    assert_eq!(approval(&c, &fed, &id).await["status"], "pending");
    fed.restart("rep-asia-3").await.unwrap();
    let a = wait_approval(&c, &fed, &id, "the batch approved", |a| {
        a["status"] == "approved"
    })
    .await;
    assert_eq!(
        (a["stake"].as_u64(), a["total_stake"].as_u64()),
        (Some(825), Some(1000))
    );
    let reps = representatives(&c, &fed).await;
    assert_eq!(rep(&reps, "rep-asia-2")["votes_cast"], 0, "{reps}");
    fed.shutdown().await.unwrap();
}

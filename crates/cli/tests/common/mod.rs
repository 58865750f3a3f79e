//! Helpers shared by the integration tests: the `citychain` binary under test, signed
//! test transactions, and test-failing wrappers over [`citychain_harness::testkit`] (a
//! federation of real child processes on loopback, waiting on conditions instead of
//! sleeping).

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use citychain::crypto::SigningKey;
use citychain::crypto::vault::VaultKey;
use citychain::messages::{Batch, BatchId, FlagKind, Sealer, SignedTx, TxRequest, now_ms};
use citychain_harness::client::{TxClient, TxDraft};
use citychain_harness::federation::Federation;
use citychain_harness::testkit;
pub use citychain_harness::testkit::{ChildNode, city_node_section, wait_for};
use serde_json::Value;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_citychain"))
}

pub async fn federation(dir: &Path) -> Federation {
    testkit::launch_watchful(dir, &binary())
        .await
        .expect("the federation starts")
}

/// A federation as [`federation`], with `lights` light nodes.
pub async fn federation_with_lights(dir: &Path, lights: usize) -> Federation {
    let spec = citychain_harness::federation::FederationSpec {
        lights,
        ..testkit::watchful_spec(dir.to_path_buf(), binary())
    };
    Federation::launch(spec)
        .await
        .expect("the federation starts")
}

pub fn client() -> reqwest::Client {
    testkit::http_client(Duration::from_secs(20))
}

/// Test transaction `nonce`: `amount` to bob, in tokyo, asia.
pub fn draft(nonce: u64, amount: u64) -> TxDraft {
    TxDraft::new("bob", amount, "tokyo", nonce).continent("asia")
}

pub fn signed(key: &SigningKey, nonce: u64) -> TxRequest {
    draft(nonce, 1000 + nonce).sign(key).unwrap()
}

/// A real batch of `txs` transactions signed by `key`, sealed for a fresh key holder in
/// asia: what a city sends a storage node.
pub fn sealed_batch(key: &SigningKey, seq: u64, txs: u64) -> (BatchId, Vec<u8>) {
    let signed: Vec<SignedTx> = (0..txs)
        .map(|n| {
            let body = draft(seq * 10_000 + n, 1 + n).sign_body(key).unwrap();
            SignedTx::from_request_bytes(&body).unwrap()
        })
        .collect();
    let batch = Batch::build("tokyo", seq, vec![], FlagKind::FreshTx, &signed, now_ms());
    let holder = VaultKey::generate().unwrap();
    let (envelope, _capsule) = Sealer::new("asia", holder.public().clone())
        .seal(&batch)
        .unwrap();
    (batch.id(), envelope.to_bytes())
}

/// The tx id of a request, computed as the node does.
pub fn tx_id(req: &TxRequest) -> String {
    citychain_harness::client::tx_id(req).unwrap()
}

pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let answer = TxClient::new(client.clone(), url)
        .post_raw(content_type, body)
        .await
        .expect("the city answers");
    let status = answer.status;
    let json = answer
        .json
        .clone()
        .unwrap_or_else(|| panic!("answer is not JSON ({status}): {}", answer.text()));
    (status, json)
}

pub async fn post(client: &reqwest::Client, url: &str, req: &TxRequest) -> (u16, Value) {
    post_raw(
        client,
        url,
        "application/json",
        serde_json::to_vec(req).unwrap(),
    )
    .await
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client.get(url).send().await.expect("the node answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The node's `/metrics` text.
pub async fn metrics(client: &reqwest::Client, base: &str) -> String {
    testkit::metrics(client, base)
        .await
        .expect("the node answers")
}

/// Waits until the city's registry shows every node in `ids` with `up == want`.
pub async fn wait_nodes(client: &reqwest::Client, city: &str, ids: &[String], want: bool) {
    wait_for(
        "the city to see the node states",
        Duration::from_secs(10),
        || async {
            let (_, nodes) = get(client, &format!("{city}/v1/nodes")).await;
            let ok = nodes.as_array()?.iter().all(|n| {
                let id = n["node_id"].as_str().unwrap_or_default().to_string();
                !ids.contains(&id) || n["up"].as_bool() == Some(want)
            });
            ok.then_some(())
        },
    )
    .await
}

/// Whether storage node `node` serves batch `batch_id` (hex) to its city.
pub async fn holds(fed: &Federation, node: &str, batch_id: &str) -> bool {
    let n = fed.node(node);
    let id = citychain::messages::parse_hex32(batch_id).expect("a hex batch id");
    let peer = citychain::storage::peer::Peer {
        id: &n.id,
        url: &n.url,
    };
    fed.storage_client()
        .expect("the city's key is readable")
        .get_batch(peer, &id, Duration::from_secs(10))
        .await
        .expect("the storage node answers")
        .is_some()
}

/// Whether light node `node` serves piece `index` of batch `batch_id` (hex) to its city.
pub async fn holds_piece(fed: &Federation, node: &str, batch_id: &str, index: u8) -> bool {
    let n = fed.node(node);
    let id = citychain::messages::parse_hex32(batch_id).expect("a hex batch id");
    let peer = citychain::storage::peer::Peer {
        id: &n.id,
        url: &n.url,
    };
    fed.storage_client()
        .expect("the city's key is readable")
        .get_piece(peer, &id, index, Duration::from_secs(10))
        .await
        .expect("the storage node answers")
        .is_some()
}

/// The city's `GET /v1/batches/{id}` answer for the batch of `tx` (a `GET /v1/tx` or
/// `POST /v1/tx` answer).
pub async fn batch_of(client: &reqwest::Client, city: &str, tx: &Value) -> Value {
    let id = tx["batch_id"].as_str().expect("a batch id");
    let (status, batch) = get(client, &format!("{city}/v1/batches/{id}")).await;
    assert_eq!(status, 200, "{batch}");
    batch
}

/// The sealed bytes of light batch `batch` (the city's answer for it), rebuilt from the
/// pieces of its holders not in `skip`; fails the test if they cannot be.
pub async fn rebuild_light(fed: &Federation, batch: &Value, skip: &[&str]) -> Vec<u8> {
    let peers = fed.storage_client().expect("the city's key is readable");
    testkit::rebuild_light(fed, &peers, batch, skip)
        .await
        .unwrap_or_else(|e| panic!("the batch rebuilds from its light holders: {e}"))
}

/// Writes `config` (TOML) to `dir/node.toml`, runs `citychain node` on it with its log in
/// `dir/node.log`, and waits until it listens (its data dir must be `dir/data`) and, if
/// `ready`, until `/readyz` answers 200.
pub async fn spawn_node(dir: &Path, config: &str, ready: bool) -> ChildNode {
    testkit::spawn_node(&binary(), dir, config, ready).await
}

/// The id of the city that lone test nodes serve ([`test_city_key`]).
pub const TEST_CITY: &str = "city-tokyo";

/// A fixed key for the city of tests that start storage nodes by hand.
pub fn test_city_key() -> SigningKey {
    SigningKey::from_seed([42; 32]).unwrap()
}

/// Writes [`test_city_key`] where a city whose data dir is `data_dir` reads its node key,
/// so storage nodes listing [`serves_test_city`] serve it.
pub fn give_test_city_key(data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    test_city_key().save(&data_dir.join("node.key")).unwrap();
}

/// The `[[auth.peers]]` entry (TOML, to be appended last) of a storage node serving the
/// test city.
pub fn serves_test_city() -> String {
    use base64::Engine;
    format!(
        "\n[[auth.peers]]\nid = \"{TEST_CITY}\"\nrole = \"city\"\npublic_key = \"{}\"\n",
        base64::engine::general_purpose::STANDARD.encode(test_city_key().public_key())
    )
}

/// A storage client signing as the test city.
pub fn test_city_client() -> citychain::storage::peer::PeerClient {
    citychain::storage::peer::PeerClient::new(citychain::messages::auth::RequestSigner::new(
        TEST_CITY,
        std::sync::Arc::new(test_city_key()),
    ))
}

/// How a test addresses a storage node it started: its id and URL.
pub fn storage_peer<'a>(id: &'a str, url: &'a str) -> citychain::storage::peer::Peer<'a> {
    citychain::storage::peer::Peer { id, url }
}

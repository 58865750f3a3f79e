//! Storage nodes on an open network, attacked as a stranger would, with real processes on
//! loopback: nobody but their city can write to them, read from them or make them sign a
//! proof of hold, and every refusal changes nothing. The city's own repair challenges, on
//! the other hand, are answered with proofs that verify.

mod common;

use std::sync::Arc;
use std::time::Duration;

use citychain::crypto::SigningKey;
use citychain::messages::auth::RequestSigner;
use citychain::messages::{self, HoldChallenge};
use citychain::storage::peer::{Peer, PeerClient, PeerError};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn refusal<T: std::fmt::Debug>(r: Result<T, PeerError>) -> (u16, String) {
    match r {
        Err(PeerError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What a storage node reports holding: (batches, bytes).
async fn holdings(client: &reqwest::Client, url: &str) -> (u64, u64) {
    let (_, h) = get(client, &format!("{url}/internal/v1/health")).await;
    (
        h["batches"].as_u64().expect("batches"),
        h["used_bytes"].as_u64().expect("used_bytes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_write_read_or_get_proofs_from_storage_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();

    // Something real to steal: a stored transaction and the batch holding it.
    let key = SigningKey::generate().unwrap();
    let (status, stored) = post(&client, &city, &signed(&key, 1)).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["tier"], "light", "{stored}");
    let batch_hex = stored["batch_id"].as_str().unwrap().to_string();
    let batch_id = messages::parse_hex32(&batch_hex).unwrap();
    let holder = stored_holder(&client, &city, &stored).await;
    let node = fed.node(&holder);
    let peer = Peer {
        id: &node.id,
        url: &node.url,
    };
    let before = holdings(&client, &node.url).await;

    // A junk batch that would pass every content check: sealed, well formed, its own id.
    let junk_key = SigningKey::generate().unwrap();
    let (junk_id, junk_bytes) = sealed_batch(&junk_key, 0, 1);

    // 1. No credentials at all, on every route.
    let url = format!("{}/internal/v1/batches", node.url);
    let challenge = HoldChallenge::fresh().unwrap();
    for (what, req) in [
        (
            "write",
            client
                .put(format!("{url}/{}", messages::hex32(&junk_id)))
                .body(junk_bytes.clone()),
        ),
        ("read", client.get(format!("{url}/{batch_hex}"))),
        (
            "proof",
            client
                .post(format!("{url}/{batch_hex}/poh"))
                .body(messages::encode(&challenge)),
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{what}: {body}");
    }

    // 2. A node of its own, with a key, that the storage node does not serve.
    let stranger = PeerClient::new(RequestSigner::new(
        "city-mallory",
        Arc::new(SigningKey::generate().unwrap()),
    ));
    // 3. The city's name with another key.
    let impostor = PeerClient::new(RequestSigner::new(
        fed.nodes
            .iter()
            .find(|n| n.role == citychain::config::Role::City)
            .unwrap()
            .id
            .clone(),
        Arc::new(SigningKey::generate().unwrap()),
    ));
    for (who, c, code) in [
        ("stranger", &stranger, "unknown_peer"),
        ("impostor", &impostor, "bad_signature"),
    ] {
        let r = c.put_batch(peer, &junk_id, junk_bytes.clone(), T).await;
        assert_eq!(refusal(r), (401, code.into()), "{who} write");
        let r = c.get_batch(peer, &batch_id, T).await;
        assert_eq!(refusal(r), (401, code.into()), "{who} read");
        let r = c.challenge(peer, &batch_id, &challenge, T).await;
        assert_eq!(refusal(r), (401, code.into()), "{who} proof");
    }

    // Nothing changed on the node, and the junk is nowhere.
    assert_eq!(holdings(&client, &node.url).await, before);
    let city_client = fed.storage_client().unwrap();
    assert_eq!(
        city_client.get_batch(peer, &junk_id, T).await.unwrap(),
        None
    );
    // The city itself still reads its batch and gets proofs that verify.
    let held = city_client
        .get_batch(peer, &batch_id, T)
        .await
        .unwrap()
        .expect("the city reads its batch");
    let proof = city_client
        .challenge(peer, &batch_id, &challenge, T)
        .await
        .unwrap()
        .expect("the holder proves it");
    let (_, batch) = get(&client, &format!("{city}/v1/batches/{batch_hex}")).await;
    assert!(
        batch["holders"]
            .as_array()
            .unwrap()
            .contains(&Value::from(holder.clone()))
    );
    let node_key = SigningKey::load(&node.config.node.key_path()).unwrap();
    let node_key = node_key.public_key();
    let held_hash = citychain::crypto::hash(&held);
    proof
        .verify(
            &holder,
            node_key,
            &batch_id,
            &held_hash,
            &challenge,
            messages::now_ms(),
        )
        .expect("the city's challenge is answered with a valid proof");

    // The refusals are counted where an operator looks.
    let m = metrics(&client, &node.url).await;
    for reason in ["unauthenticated", "unknown_peer", "bad_signature"] {
        let line = format!("citychain_auth_refused_total{{reason=\"{reason}\"}}");
        assert!(m.contains(&line), "{line} missing");
    }

    // The city's repairer challenges its holders and counts proofs that hold.
    wait_for("the repairer's proofs", Duration::from_secs(30), || async {
        let m = metrics(&client, &city).await;
        m.contains("citychain_hold_challenges_total{outcome=\"proved\"}")
            .then_some(())
    })
    .await;
    fed.shutdown().await.unwrap();
}

/// One holder of the stored transaction's batch.
async fn stored_holder(client: &reqwest::Client, city: &str, stored: &Value) -> String {
    let id = stored["tx_id"].as_str().unwrap();
    let (_, tx) = get(client, &format!("{city}/v1/tx/{id}")).await;
    tx["holders"][0].as_str().expect("a holder").to_string()
}

/// How a rogue light node lies in its acks.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Signs with a key that is not the one the city has for it.
    OtherKey,
    /// Answers every write with a valid ack it made earlier, for another batch.
    Replay,
    /// Signs, with its real key, a hash of bytes it did not store.
    WrongHash,
    /// Signs, with its real key, an ack two minutes old.
    Stale,
}

/// A light node served by the test: stores nothing, answers health probes, and answers
/// every write with an ack that lies as `lie` says. Returns its `[[storage.nodes]]` entry.
fn rogue_light(id: &'static str, lie: Lie) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use base64::Engine;
    use citychain::messages::PohAck;
    use citychain::messages::storage::HealthReport;

    let real = Arc::new(SigningKey::generate().unwrap());
    let other = Arc::new(SigningKey::generate().unwrap());
    // A genuine ack of this node, for a batch written before the test looks.
    let earlier =
        Arc::new(PohAck::sign(&real, id, [0xaa; 32], b"earlier", messages::now_ms()).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let entry = format!(
        "[[storage.nodes]]\nid = \"{id}\"\nrole = \"light\"\nurl = \"{url}\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
        base64::engine::general_purpose::STANDARD.encode(real.public_key())
    );
    let server = HttpServer::new(move || {
        let (real, other, earlier) = (real.clone(), other.clone(), earlier.clone());
        App::new()
            .route(
                "/internal/v1/health",
                web::get().to(move || async move {
                    HttpResponse::Ok().json(HealthReport {
                        node_id: id.into(),
                        role: citychain::config::Role::Light,
                        continent: "asia".into(),
                        used_bytes: 0,
                        capacity_bytes: 1 << 30,
                        batches: 0,
                        inflight: 0,
                        store_error: None,
                    })
                }),
            )
            .route(
                "/internal/v1/batches/{id}",
                web::put().to(move |path: web::Path<String>, body: web::Bytes| {
                    let (real, other, earlier) = (real.clone(), other.clone(), earlier.clone());
                    async move {
                        let batch = messages::parse_hex32(&path).unwrap();
                        let now = messages::now_ms();
                        let ack = match lie {
                            Lie::OtherKey => PohAck::sign(&other, id, batch, &body, now).unwrap(),
                            Lie::WrongHash => {
                                PohAck::sign(&real, id, batch, b"not it", now).unwrap()
                            }
                            Lie::Stale => {
                                PohAck::sign(&real, id, batch, &body, now - 120_000).unwrap()
                            }
                            Lie::Replay => (*earlier).clone(),
                        };
                        HttpResponse::Ok()
                            .content_type("application/octet-stream")
                            .body(messages::encode(&ack))
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (entry, handle)
}

/// A city whose only light nodes lie in their acks never counts a lying ack: every
/// transaction is stored on the next tier (the log), and each lie is counted by reason.
/// (The rogue nodes are actix servers in this process, hence actix's test runtime.)
#[actix_web::test]
async fn forged_replayed_and_stale_acks_are_rejected_by_a_real_city() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = String::new();
    let mut servers = Vec::new();
    for (id, lie) in [
        ("rogue-other-key", Lie::OtherKey),
        ("rogue-replay", Lie::Replay),
        ("rogue-wrong-hash", Lie::WrongHash),
        ("rogue-stale", Lie::Stale),
    ] {
        let (entry, server) = rogue_light(id, lie);
        entries.push_str(&entry);
        servers.push(server);
    }
    // One ack would be enough: any lie that passed would show as tier "light".
    let config = format!(
        "{}\n[storage]\nmin_light_acks = 1\n[prioritizer]\nlight_fanout = 4\n[supervisor]\nchain = [\"light\", \"log\"]\n\n{entries}",
        city_node_section(dir.path())
    );
    let city = spawn_node(dir.path(), &config, true).await;
    let client = client();
    wait_nodes(
        &client,
        &city.url,
        &[
            "rogue-other-key".into(),
            "rogue-replay".into(),
            "rogue-wrong-hash".into(),
            "rogue-stale".into(),
        ],
        true,
    )
    .await;
    let key = SigningKey::generate().unwrap();
    for n in 1..=2 {
        let (status, body) = post(&client, &city.url, &signed(&key, n)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tier"], "log", "a lying ack was counted: {body}");
    }
    let m = metrics(&client, &city.url).await;
    for reason in ["bad_signature", "wrong_batch", "wrong_hash", "stale"] {
        let line = format!("citychain_acks_rejected_total{{reason=\"{reason}\"}}");
        assert!(m.contains(&line), "{line} missing");
    }
    for s in servers {
        s.stop(false).await;
    }
}

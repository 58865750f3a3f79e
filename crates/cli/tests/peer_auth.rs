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
    // One holder and the piece of the batch it holds, as the city recorded them.
    let (_, batch) = get(&client, &format!("{city}/v1/batches/{batch_hex}")).await;
    let (pieces, expected) =
        citychain_harness::testkit::light_expectation(&batch).expect("a light batch");
    let (holder, index) = pieces[0].clone();
    let node = fed.node(&holder);
    let peer = Peer {
        id: &node.id,
        url: &node.url,
    };
    let before = holdings(&client, &node.url).await;

    // A junk piece that would pass every content check: self-consistent, of a sealed,
    // well formed batch under its own id.
    let junk_key = SigningKey::generate().unwrap();
    let (junk_id, junk_bytes) = sealed_batch(&junk_key, 0, 1);
    let junk = citychain::messages::Coding::new(4, 2)
        .unwrap()
        .encode(junk_id, &junk_bytes)
        .unwrap()
        .remove(0)
        .to_bytes();

    // 1. No credentials at all, on every route, whole batches and pieces.
    let url = format!("{}/internal/v1/batches", node.url);
    let challenge = HoldChallenge::fresh().unwrap();
    let junk_hex = messages::hex32(&junk_id);
    for (what, req) in [
        (
            "write",
            client
                .put(format!("{url}/{junk_hex}"))
                .body(junk_bytes.clone()),
        ),
        (
            "piece write",
            client
                .put(format!("{url}/{junk_hex}/pieces/0"))
                .body(junk.clone()),
        ),
        ("read", client.get(format!("{url}/{batch_hex}"))),
        (
            "piece read",
            client.get(format!("{url}/{batch_hex}/pieces/{index}")),
        ),
        (
            "proof",
            client
                .post(format!("{url}/{batch_hex}/poh"))
                .body(messages::encode(&challenge)),
        ),
        (
            "piece proof",
            client
                .post(format!("{url}/{batch_hex}/pieces/{index}/poh"))
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
        let r = c.put_piece(peer, &junk_id, 0, junk.clone(), T).await;
        assert_eq!(refusal(r), (401, code.into()), "{who} piece write");
        let r = c.get_piece(peer, &batch_id, index, T).await;
        assert_eq!(refusal(r), (401, code.into()), "{who} read");
        let r = c
            .challenge_piece(peer, &batch_id, index, &challenge, T)
            .await;
        assert_eq!(refusal(r), (401, code.into()), "{who} proof");
    }

    // Nothing changed on the node, and the junk is nowhere.
    assert_eq!(holdings(&client, &node.url).await, before);
    let city_client = fed.storage_client().unwrap();
    assert_eq!(
        city_client.get_batch(peer, &junk_id, T).await.unwrap(),
        None
    );
    assert_eq!(
        city_client.get_piece(peer, &junk_id, 0, T).await.unwrap(),
        None
    );
    // The city itself still reads its piece and gets proofs of it that verify.
    let held = city_client
        .get_piece(peer, &batch_id, index, T)
        .await
        .unwrap()
        .expect("the city reads its piece");
    let held = citychain::messages::Piece::from_bytes(&held).unwrap();
    assert_eq!(expected.refuse(index, &held), None, "the piece acked");
    let proof = city_client
        .challenge_piece(peer, &batch_id, index, &challenge, T)
        .await
        .unwrap()
        .expect("the holder proves it");
    let node_key = SigningKey::load(&node.config.node.key_path()).unwrap();
    proof
        .verify_piece(
            &holder,
            node_key.public_key(),
            &batch_id,
            &expected.piece_ref(index),
            &expected.hashes[&index],
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
    /// Signs, with its real key, an ack for another piece of the same batch.
    OtherPiece,
    /// Signs, with its real key, an ack for the whole batch instead of its piece.
    Whole,
}

/// A light node served by the test: stores nothing, answers health probes, and answers
/// every piece written with an ack that lies as `lie` says. Returns its `[[storage.nodes]]`
/// entry.
fn rogue_light(id: &'static str, lie: Lie) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use base64::Engine;
    use citychain::messages::PohAck;
    use citychain::messages::storage::HealthReport;

    let real = Arc::new(SigningKey::generate().unwrap());
    let other = Arc::new(SigningKey::generate().unwrap());
    // A genuine ack of this node, for a batch written before the test looks.
    let earlier = {
        let pieces = citychain::messages::Coding::new(1, 5)
            .unwrap()
            .encode([0xaa; 32], b"earlier")
            .unwrap();
        let p = &pieces[0].header;
        Arc::new(
            PohAck::sign_piece(&real, id, [0xaa; 32], p.piece, p.hash, messages::now_ms()).unwrap(),
        )
    };
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
                "/internal/v1/batches/{id}/pieces/{index}",
                web::put().to(move |path: web::Path<(String, u8)>, body: web::Bytes| {
                    let (real, other, earlier) = (real.clone(), other.clone(), earlier.clone());
                    async move {
                        let batch = messages::parse_hex32(&path.0).unwrap();
                        let piece = citychain::messages::Piece::from_bytes(&body).unwrap();
                        let (r, h) = (piece.header.piece, piece.header.hash);
                        let now = messages::now_ms();
                        let sign = |key: &SigningKey, r, h, t| {
                            PohAck::sign_piece(key, id, batch, r, h, t).unwrap()
                        };
                        let ack = match lie {
                            Lie::OtherKey => sign(&other, r, h, now),
                            Lie::WrongHash => {
                                sign(&real, r, citychain::crypto::hash(b"not it"), now)
                            }
                            Lie::Stale => sign(&real, r, h, now - 120_000),
                            Lie::Replay => (*earlier).clone(),
                            Lie::OtherPiece => {
                                let other_index = citychain::messages::PieceRef {
                                    index: (r.index + 1) % 6,
                                    ..r
                                };
                                sign(&real, other_index, h, now)
                            }
                            Lie::Whole => PohAck::sign(&real, id, batch, &body, now).unwrap(),
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
        ("rogue-other-piece", Lie::OtherPiece),
        ("rogue-whole", Lie::Whole),
    ] {
        let (entry, server) = rogue_light(id, lie);
        entries.push_str(&entry);
        servers.push(server);
    }
    // One acked piece would be enough (one data piece, five parity pieces, one per rogue):
    // any lie that passed would show as tier "light".
    let config = format!(
        "{}\n[storage.erasure]\ndata_pieces = 1\nparity_pieces = 5\nsurvive_losses = 0\n[supervisor]\nchain = [\"light\", \"log\"]\n\n{entries}",
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
            "rogue-other-piece".into(),
            "rogue-whole".into(),
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
    for reason in [
        "bad_signature",
        "wrong_batch",
        "wrong_hash",
        "stale",
        "wrong_piece",
    ] {
        let line = format!("citychain_acks_rejected_total{{reason=\"{reason}\"}}");
        assert!(m.contains(&line), "{line} missing");
    }
    for s in servers {
        s.stop(false).await;
    }
}

/// The value of an unlabelled counter in a `/metrics` text, 0 when absent.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The city signs its first request to each storage node and opens a session with it; its
/// later requests carry MACs. A storage node that restarts forgets every session: the city's
/// next request to it is refused as `unknown_session`, sent again signed, and a new session
/// is opened, so writes keep reaching the light tier and no transaction is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_works_in_sessions_and_a_restarted_node_that_forgot_them_still_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path()).await;
    let city = fed.city_url();
    let client = client();
    let key = SigningKey::generate().unwrap();

    let (status, stored) = post(&client, &city, &signed(&key, 1)).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["tier"], "light", "{stored}");
    let lights = fed.ids(citychain::config::Role::Light);
    let light = lights[0].clone();
    let url = fed.node(&light).url.clone();
    // Sessions opened, and later writes pass in them: no signature refused, none replayed.
    let text = metrics(&client, &url).await;
    assert_eq!(
        counter(&text, "citychain_sessions_opened_total"),
        1.0,
        "{text}"
    );
    for nonce in 2..=6 {
        let (status, stored) = post(&client, &city, &signed(&key, nonce)).await;
        assert_eq!(status, 200, "{stored}");
    }
    let text = metrics(&client, &url).await;
    assert_eq!(
        counter(&text, "citychain_sessions_opened_total"),
        1.0,
        "one session serves every later request: {text}"
    );
    assert!(
        !text.contains("citychain_auth_refused_total"),
        "nothing refused: {text}"
    );

    // The node crashes and comes back with no memory of the session.
    fed.kill(&light).unwrap();
    fed.restart(&light).await.unwrap();
    wait_nodes(&client, &city, std::slice::from_ref(&light), true).await;
    let mut nonce = 7;
    let reopened = wait_for(
        "the city to reopen a session with the restarted node",
        Duration::from_secs(20),
        || {
            nonce += 1;
            let (client, city, url, key) = (&client, &city, &url, &key);
            let n = nonce;
            async move {
                let (status, stored) = post(client, city, &signed(key, n)).await;
                assert_eq!(status, 200, "{stored}");
                let text = metrics(client, url).await;
                (counter(&text, "citychain_sessions_opened_total") >= 1.0).then_some(text)
            }
        },
    )
    .await;
    assert!(
        reopened.contains(r#"citychain_auth_refused_total{reason="unknown_session"}"#),
        "the first request after the restart was in the forgotten session: {reopened}"
    );
    // Its pieces are acked again: a batch written now names the restarted node as a holder
    // whenever the Prioritizer chose it; every write still reaches the light tier.
    for _ in 0..5 {
        nonce += 1;
        let (status, stored) = post(&client, &city, &signed(&key, nonce)).await;
        assert_eq!(status, 200, "{stored}");
        assert_eq!(stored["tier"], "light", "{stored}");
    }
    fed.shutdown().await.unwrap();
}

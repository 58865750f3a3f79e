use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer};

use super::*;
use crate::config::{AuthConfig, PeerKeyEntry};
use crate::crypto;
use crate::messages::auth::RequestSigner;
use crate::messages::{Batch, FlagKind, PieceRef, SignedTx};
use crate::storage::peer::{Peer, PeerClient, PeerError};

const T: Duration = Duration::from_secs(10);

/// One storage node on a loopback port, with its store in a temp dir.
struct Node {
    url: String,
    state: web::Data<StorageState>,
    server: actix_web::dev::ServerHandle,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    /// A node with its own temp dir.
    fn start(capacity_bytes: u64, max_batch_bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Self::start_in(dir.path(), capacity_bytes, max_batch_bytes);
        node._dir = Some(dir);
        node
    }

    /// A node keeping its store in `dir`.
    fn start_in(dir: &std::path::Path, capacity_bytes: u64, max_batch_bytes: usize) -> Self {
        // Install the recorder before anything is counted.
        let _ = crate::metrics::handle();
        let state = web::Data::new(StorageState {
            node_id: "light-test".into(),
            role: Role::Light,
            continent: "asia".into(),
            store: Arc::new(BatchStore::open(dir, capacity_bytes).unwrap()),
            key: Arc::new(SigningKey::generate().unwrap()),
            max_batch_bytes,
            inflight: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = state.clone();
        let auth = web::Data::new(PeerAuth::new("light-test", &test_auth()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(auth.clone())
                .configure(configure)
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url,
            state,
            server: handle,
            _dir: None,
        }
    }

    fn peer(&self) -> Peer<'_> {
        Peer {
            id: "light-test",
            url: &self.url,
        }
    }

    fn verify(&self, ack: &PohAck, id: &BatchId, bytes: &[u8]) {
        ack.verify(
            &self.state.node_id,
            self.state.key.public_key(),
            id,
            &crypto::hash(bytes),
            messages::now_ms(),
        )
        .expect("the ack verifies");
    }

    fn assert_empty(&self) {
        let h = self.state.health();
        assert_eq!((h.used_bytes, h.batches, h.inflight), (0, 0, 0), "{h:?}");
    }
}

/// The allow-list of the test node: the unit tests' city, and challenges limited to a
/// burst of 4.
fn test_auth() -> AuthConfig {
    use base64::Engine;
    AuthConfig {
        peers: vec![PeerKeyEntry {
            id: crate::testkit::TEST_CITY_ID.into(),
            role: Role::City,
            public_key: base64::engine::general_purpose::STANDARD
                .encode(crate::testkit::test_city_key().public_key()),
            city: None,
            continent: None,
        }],
        challenges_per_second: 1,
        challenge_burst: 4,
        ..AuthConfig::default()
    }
}

fn signed(key: &SigningKey, nonce: u64) -> SignedTx {
    crate::testkit::signed_tx(key, nonce, FlagKind::FreshTx, 5)
}

/// A valid batch of `n` transactions and its sealed encoding (what a city sends).
fn batch(seq: u64, n: u64) -> (Batch, Vec<u8>) {
    let key = SigningKey::generate().unwrap();
    let txs: Vec<_> = (0..n).map(|i| signed(&key, i + 1)).collect();
    let b = Batch::build(
        "tokyo",
        seq,
        vec![],
        FlagKind::FreshTx,
        &txs,
        messages::now_ms(),
    );
    let (envelope, _capsule) = crate::testkit::sealer().seal(&b).unwrap();
    (b, envelope.to_bytes())
}

fn rendered_metrics() -> String {
    crate::metrics::handle().render()
}

#[actix_web::test]
async fn put_returns_a_valid_ack_and_retries_are_idempotent() {
    let node = Node::start(1 << 20, 1 << 20);
    let client = crate::testkit::peer_client();
    let (b, bytes) = batch(0, 3);
    let id = b.id();

    assert_eq!(client.get_batch(node.peer(), &id, T).await.unwrap(), None);

    let ack = client
        .put_batch(node.peer(), &id, bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&ack, &id, &bytes);
    assert!(node.state.store.contains(&id).unwrap());

    // A retry gets a fresh ack and writes nothing more.
    let again = client
        .put_batch(node.peer(), &id, web::Bytes::from(bytes.clone()), T)
        .await
        .unwrap();
    node.verify(&again, &id, &bytes);

    let h = client.health(&node.url, T).await.unwrap();
    assert_eq!(
        h,
        HealthReport {
            node_id: "light-test".into(),
            role: Role::Light,
            continent: "asia".into(),
            used_bytes: bytes.len() as u64,
            capacity_bytes: 1 << 20,
            batches: 1,
            inflight: 0,
            store_error: None,
        }
    );
    assert_eq!(
        client
            .get_batch(node.peer(), &id, T)
            .await
            .unwrap()
            .as_deref(),
        Some(&bytes[..])
    );
    let (other, _) = batch(1, 1);
    assert_eq!(
        client.get_batch(node.peer(), &other.id(), T).await.unwrap(),
        None
    );

    let metrics = rendered_metrics();
    for outcome in ["stored", "duplicate"] {
        let line = format!(
            "{}{{outcome=\"{outcome}\"}}",
            crate::metrics::STORE_REQUESTS
        );
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    node.server.stop(true).await;
}

#[actix_web::test]
async fn wrong_or_tampered_batches_are_refused_and_not_stored() {
    let node = Node::start(1 << 20, 1 << 20);
    let client = crate::testkit::peer_client();
    let (b, bytes) = batch(0, 2);
    let (other, _) = batch(1, 1);

    // A valid batch sent under another batch's id.
    let mut refused = vec![
        client
            .put_batch(node.peer(), &other.id(), bytes.clone(), T)
            .await,
    ];
    // The batch in plain form: a storage node never takes readable transactions.
    refused.push(
        client
            .put_batch(node.peer(), &b.id(), messages::encode(&b), T)
            .await,
    );
    // A clear header field changed: the header no longer hashes to the id.
    let mut envelope = SealedEnvelope::from_bytes(&bytes).unwrap();
    envelope.header.batch.seq += 1;
    refused.push(
        client
            .put_batch(node.peer(), &b.id(), envelope.to_bytes(), T)
            .await,
    );
    // Cut short on the wire.
    refused.push(
        client
            .put_batch(node.peer(), &b.id(), bytes[..bytes.len() - 1].to_vec(), T)
            .await,
    );
    // Trailing bytes after a valid encoding.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"junk");
    refused.push(client.put_batch(node.peer(), &b.id(), padded, T).await);
    // Not a batch at all.
    refused.push(
        client
            .put_batch(node.peer(), &b.id(), b"garbage".to_vec(), T)
            .await,
    );

    for (i, r) in refused.into_iter().enumerate() {
        match r {
            Err(PeerError::Refused {
                status: 400, code, ..
            }) => {
                assert_eq!(code, "invalid_batch", "case {i}")
            }
            other => panic!("case {i}: expected 400 invalid_batch, got {other:?}"),
        }
    }
    assert!(!node.state.store.contains(&b.id()).unwrap());
    assert!(!node.state.store.contains(&other.id()).unwrap());
    assert_eq!(
        client.get_batch(node.peer(), &b.id(), T).await.unwrap(),
        None
    );
    node.assert_empty();

    // The untouched batch is still accepted afterwards.
    let ack = client
        .put_batch(node.peer(), &b.id(), bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&ack, &b.id(), &bytes);
    assert!(rendered_metrics().contains(&format!(
        "{}{{outcome=\"rejected\"}}",
        crate::metrics::STORE_REQUESTS
    )));
    node.server.stop(true).await;
}

#[actix_web::test]
async fn bad_hex_ids_get_invalid_id() {
    let node = Node::start(1 << 20, 1 << 20);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let signer = RequestSigner::new(
        crate::testkit::TEST_CITY_ID,
        crate::testkit::test_city_key(),
    );
    for (method, id) in [
        (reqwest::Method::PUT, "zz"),
        (reqwest::Method::GET, "abc"),
        (reqwest::Method::PUT, &"g".repeat(64)),
    ] {
        let path = format!("/internal/v1/batches/{id}");
        let body: &[u8] = if method == reqwest::Method::GET {
            b""
        } else {
            b"abc"
        };
        let mut req = http
            .request(method.clone(), format!("{}{path}", node.url))
            .body(body.to_vec());
        for (k, v) in signer
            .headers(method.as_str(), &path, "light-test", body)
            .unwrap()
        {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{method} {id}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_id", "{method} {id}: {body}");
    }
    node.assert_empty();
    node.server.stop(true).await;
}

#[actix_web::test]
async fn over_capacity_is_507_and_nothing_is_stored() {
    let (b, bytes) = batch(0, 2);
    let node = Node::start(bytes.len() as u64 - 1, 1 << 20);
    let client = crate::testkit::peer_client();
    match client
        .put_batch(node.peer(), &b.id(), bytes.clone(), T)
        .await
    {
        Err(PeerError::Refused {
            status: 507, code, ..
        }) => {
            assert_eq!(code, "capacity_exceeded")
        }
        other => panic!("expected 507, got {other:?}"),
    }
    assert!(!node.state.store.contains(&b.id()).unwrap());
    assert_eq!(
        client.get_batch(node.peer(), &b.id(), T).await.unwrap(),
        None
    );
    let h = client.health(&node.url, T).await.unwrap();
    assert_eq!((h.used_bytes, h.batches, h.inflight), (0, 0, 0));
    assert!(rendered_metrics().contains(&format!(
        "{}{{outcome=\"full\"}}",
        crate::metrics::STORE_REQUESTS
    )));
    node.server.stop(true).await;
}

#[actix_web::test]
async fn oversized_bodies_are_413() {
    let (b, bytes) = batch(0, 1);
    let node = Node::start(1 << 20, bytes.len() - 1);
    let client = crate::testkit::peer_client();
    match client
        .put_batch(node.peer(), &b.id(), bytes.clone(), T)
        .await
    {
        Err(PeerError::Refused {
            status: 413, code, ..
        }) => {
            assert_eq!(code, "payload_too_large")
        }
        other => panic!("expected 413, got {other:?}"),
    }
    node.assert_empty();
    node.server.stop(true).await;
}

#[actix_web::test]
async fn acked_batches_survive_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = crate::testkit::peer_client();
    let (b, bytes) = batch(0, 2);
    let node = Node::start_in(dir.path(), 1 << 20, 1 << 20);
    let ack = client
        .put_batch(node.peer(), &b.id(), bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&ack, &b.id(), &bytes);

    // Stop the node and wait until its store is closed (the workers dropped it).
    let store = Arc::downgrade(&node.state.store);
    node.server.stop(true).await;
    drop(node);
    let deadline = std::time::Instant::now() + T;
    while store.strong_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store was never closed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    // The last holder may still be inside the store's drop, closing its file: wait until
    // the file can be opened again.
    while let Err(e) = BatchStore::open(dir.path(), 1 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the store's file never closed: {e}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }

    let node = Node::start_in(dir.path(), 1 << 20, 1 << 20);
    assert_eq!(
        client
            .get_batch(node.peer(), &b.id(), T)
            .await
            .unwrap()
            .as_deref(),
        Some(&bytes[..])
    );
    let h = client.health(&node.url, T).await.unwrap();
    assert_eq!((h.used_bytes, h.batches), (bytes.len() as u64, 1));
    // Still idempotent after the restart.
    let again = client
        .put_batch(node.peer(), &b.id(), bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&again, &b.id(), &bytes);
    assert_eq!(node.state.store.batch_count(), 1);
    node.server.stop(true).await;
}

/// What a refused request answered: status and error code.
fn refusal<T: std::fmt::Debug>(r: Result<T, PeerError>) -> (u16, String) {
    match r {
        Err(PeerError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A city not on the allow-list and one that signs as the allowed city with another key,
/// each with the code its requests are refused with.
fn outsiders() -> [(&'static str, PeerClient, &'static str); 2] {
    let stranger = PeerClient::new(RequestSigner::new(
        "city-elsewhere",
        Arc::new(SigningKey::generate().unwrap()),
    ));
    let impostor = PeerClient::new(RequestSigner::new(
        crate::testkit::TEST_CITY_ID,
        Arc::new(SigningKey::generate().unwrap()),
    ));
    [
        ("stranger", stranger, "unknown_peer"),
        ("impostor", impostor, "bad_signature"),
    ]
}

#[actix_web::test]
async fn strangers_cannot_write_read_or_challenge_and_change_nothing() {
    let node = Node::start(1 << 20, 1 << 20);
    let (b, bytes) = batch(0, 2);
    let id = b.id();
    let outsiders = outsiders();
    let challenge = HoldChallenge::fresh().unwrap();
    for (who, client, code) in &outsiders {
        let r = client.put_batch(node.peer(), &id, bytes.clone(), T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} put");
        let r = client.get_batch(node.peer(), &id, T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} get");
        let r = client.challenge(node.peer(), &id, &challenge, T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} challenge");
    }
    // No headers at all, on every route.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/internal/v1/batches/{}", node.url, messages::hex32(&id));
    for req in [
        http.put(&url).body(bytes.clone()),
        http.get(&url),
        http.post(format!("{url}/poh"))
            .body(messages::encode(&challenge)),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }
    node.assert_empty();

    // Once the city stored it, strangers still cannot read it back or ask for a proof.
    let client = crate::testkit::peer_client();
    client
        .put_batch(node.peer(), &id, bytes.clone(), T)
        .await
        .unwrap();
    let stranger = &outsiders[0].1;
    let r = stranger.get_batch(node.peer(), &id, T).await;
    assert_eq!(refusal(r).0, 401);
    let r = stranger.challenge(node.peer(), &id, &challenge, T).await;
    assert_eq!(refusal(r).0, 401);
    assert!(rendered_metrics().contains(&format!(
        "{}{{reason=\"unknown_peer\"}}",
        crate::metrics::AUTH_REFUSED
    )));
    node.server.stop(true).await;
}

#[actix_web::test]
async fn replayed_and_rebodied_requests_are_refused() {
    let node = Node::start(1 << 20, 1 << 20);
    let (b, bytes) = batch(0, 2);
    let (_, other_bytes) = batch(1, 1);
    let path = format!("/internal/v1/batches/{}", messages::hex32(&b.id()));
    let signer = RequestSigner::new(
        crate::testkit::TEST_CITY_ID,
        crate::testkit::test_city_key(),
    );
    let headers = signer.headers("PUT", &path, "light-test", &bytes).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |body: Vec<u8>| {
        let mut req = http.put(format!("{}{path}", node.url)).body(body);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        req.send()
    };
    // Signed headers carrying other bytes: refused, nothing stored.
    let resp = send(other_bytes).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_mismatch", "{body}");
    node.assert_empty();
    // The same signed request a second time is a replay, whatever its body.
    let resp = send(bytes.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "replayed_request", "{body}");
    node.assert_empty();
    node.server.stop(true).await;
}

#[actix_web::test]
async fn possession_challenges_prove_the_bytes_and_are_rate_limited() {
    let node = Node::start(1 << 20, 1 << 20);
    let client = crate::testkit::peer_client();
    let (b, bytes) = batch(0, 20);
    let id = b.id();
    client
        .put_batch(node.peer(), &id, bytes.clone(), T)
        .await
        .unwrap();
    let expected = crypto::hash(&bytes);
    let mut proofs = 0;
    loop {
        let challenge = HoldChallenge::fresh().unwrap();
        match client.challenge(node.peer(), &id, &challenge, T).await {
            Ok(Some(proof)) => {
                proof
                    .verify(
                        "light-test",
                        node.state.key.public_key(),
                        &id,
                        &expected,
                        &challenge,
                        messages::now_ms(),
                    )
                    .expect("the proof verifies");
                proofs += 1;
            }
            Err(PeerError::Refused {
                status: 429, code, ..
            }) => {
                assert_eq!(code, "rate_limited");
                break;
            }
            other => panic!("expected a proof or 429, got {other:?}"),
        }
        assert!(proofs <= 6, "the rate limit never applied");
    }
    // The burst is 4 at 1 per second; a slow machine may have earned one more meanwhile.
    assert!(
        (4..=5).contains(&proofs),
        "{proofs} proofs before the limit"
    );
    // A batch not held is a 404 (after the limit refills).
    let (other, _) = batch(1, 1);
    let deadline = std::time::Instant::now() + T;
    loop {
        match client
            .challenge(
                node.peer(),
                &other.id(),
                &HoldChallenge::fresh().unwrap(),
                T,
            )
            .await
        {
            Ok(None) => break,
            Err(PeerError::Refused { status: 429, .. }) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the limit never refilled"
                );
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected 404, got {other:?}"),
        }
    }
    node.server.stop(true).await;
}

/// The pieces of a sealed batch of `n` transactions, cut 4 + 2.
fn pieces(seq: u64, n: u64) -> (BatchId, Vec<u8>, Vec<Piece>) {
    let (b, bytes) = batch(seq, n);
    let pieces = crate::messages::Coding::new(4, 2)
        .unwrap()
        .encode(b.id(), &bytes)
        .unwrap();
    (b.id(), bytes, pieces)
}

#[actix_web::test]
async fn a_piece_is_stored_acked_for_that_piece_read_back_and_proved() {
    let node = Node::start(1 << 20, 1 << 20);
    let client = crate::testkit::peer_client();
    let (id, sealed, pieces) = pieces(0, 4);
    let p = &pieces[5];
    let r = p.header.piece;
    assert_eq!(
        client.get_piece(node.peer(), &id, 5, T).await.unwrap(),
        None
    );
    let ack = client
        .put_piece(node.peer(), &id, 5, p.to_bytes(), T)
        .await
        .unwrap();
    let pk = node.state.key.public_key();
    ack.verify_piece(
        "light-test",
        pk,
        &id,
        &r,
        &p.header.hash,
        messages::now_ms(),
    )
    .expect("the ack binds that piece");
    assert_eq!(ack.piece, Some(r));
    assert_eq!(r.sealed_hash, crypto::hash(&sealed));
    // Idempotent: the retry acks the same piece again and stores nothing more.
    let used = node.state.store.used_bytes();
    let again = client
        .put_piece(node.peer(), &id, 5, p.to_bytes(), T)
        .await
        .unwrap();
    again
        .verify_piece(
            "light-test",
            pk,
            &id,
            &r,
            &p.header.hash,
            messages::now_ms(),
        )
        .unwrap();
    assert_eq!(node.state.store.used_bytes(), used);
    // Read back byte for byte; other indices and the whole batch are not held.
    assert_eq!(
        client.get_piece(node.peer(), &id, 5, T).await.unwrap(),
        Some(p.to_bytes())
    );
    assert_eq!(
        client.get_piece(node.peer(), &id, 4, T).await.unwrap(),
        None
    );
    assert_eq!(client.get_batch(node.peer(), &id, T).await.unwrap(), None);
    // A possession challenge of that piece proves its data, bound to that piece.
    let challenge = HoldChallenge::fresh().unwrap();
    let proof = client
        .challenge_piece(node.peer(), &id, 5, &challenge, T)
        .await
        .unwrap()
        .expect("held");
    proof
        .verify_piece(
            "light-test",
            pk,
            &id,
            &r,
            &p.header.hash,
            &challenge,
            messages::now_ms(),
        )
        .expect("the proof verifies for the piece");
    assert_eq!(
        proof.verify_piece(
            "light-test",
            pk,
            &id,
            &PieceRef { index: 4, ..r },
            &p.header.hash,
            &challenge,
            messages::now_ms()
        ),
        Err(crate::messages::AckError::WrongPiece)
    );
    // A piece not held: 404 for the challenge.
    let none = client
        .challenge_piece(node.peer(), &id, 0, &HoldChallenge::fresh().unwrap(), T)
        .await
        .unwrap();
    assert!(none.is_none());
    node.server.stop(true).await;
}

#[actix_web::test]
async fn malformed_or_misfiled_pieces_are_refused_with_a_clear_4xx() {
    let node = Node::start(1 << 20, 64 * 1024);
    let client = crate::testkit::peer_client();
    let (id, _, pieces) = pieces(0, 3);
    let p = &pieces[1];
    let mut refused = Vec::new();
    // Filed under another index, or another batch.
    refused.push((
        "another index",
        client.put_piece(node.peer(), &id, 2, p.to_bytes(), T).await,
    ));
    refused.push((
        "another batch",
        client
            .put_piece(node.peer(), &[9; 32], 1, p.to_bytes(), T)
            .await,
    ));
    // Data that does not hash to the hash it names.
    let mut bad = p.clone();
    bad.data[0] ^= 1;
    refused.push((
        "wrong hash",
        client
            .put_piece(node.peer(), &id, 1, bad.to_bytes(), T)
            .await,
    ));
    // A shard of the wrong length for its coding and sealed length.
    let mut short = p.clone();
    short.data.truncate(10);
    short.header.hash = crypto::hash(&short.data);
    refused.push((
        "wrong length",
        client
            .put_piece(node.peer(), &id, 1, short.to_bytes(), T)
            .await,
    ));
    // A coding nobody can decode, and an index outside its coding.
    let mut coding = p.clone();
    coding.header.piece.coding.parity_pieces = 0;
    refused.push((
        "no parity",
        client
            .put_piece(node.peer(), &id, 1, coding.to_bytes(), T)
            .await,
    ));
    let mut outside = pieces[0].clone();
    outside.header.piece.index = 6;
    refused.push((
        "index outside the coding",
        client
            .put_piece(node.peer(), &id, 6, outside.to_bytes(), T)
            .await,
    ));
    // Not canonical, not a piece at all, a whole sealed batch.
    let mut trailing = p.to_bytes();
    trailing.push(0);
    refused.push((
        "trailing bytes",
        client.put_piece(node.peer(), &id, 1, trailing, T).await,
    ));
    refused.push((
        "garbage",
        client
            .put_piece(node.peer(), &id, 1, b"garbage".to_vec(), T)
            .await,
    ));
    let (_, sealed) = batch(0, 1);
    refused.push((
        "a whole batch",
        client.put_piece(node.peer(), &id, 1, sealed, T).await,
    ));
    for (what, r) in refused {
        assert_eq!(refusal(r), (400, "invalid_piece".to_string()), "{what}");
    }
    // An index that is no number, or past 255, in the path.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let signer = RequestSigner::new(
        crate::testkit::TEST_CITY_ID,
        crate::testkit::test_city_key(),
    );
    for index in ["x", "256", "-1"] {
        let path = format!(
            "/internal/v1/batches/{}/pieces/{index}",
            messages::hex32(&id)
        );
        let body = p.to_bytes();
        let mut req = http.put(format!("{}{path}", node.url)).body(body.clone());
        for (k, v) in signer.headers("PUT", &path, "light-test", &body).unwrap() {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "index {index}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_index", "{body}");
    }
    // Larger than the node accepts: 413 before anything is decoded.
    let big = vec![0u8; 64 * 1024 + 1];
    assert_eq!(
        refusal(client.put_piece(node.peer(), &id, 1, big, T).await),
        (413, "payload_too_large".to_string())
    );
    node.assert_empty();
    node.server.stop(true).await;
}

#[actix_web::test]
async fn strangers_cannot_write_read_or_challenge_pieces() {
    let node = Node::start(1 << 20, 1 << 20);
    let (id, _, pieces) = pieces(0, 2);
    let p = &pieces[0];
    let outsiders = outsiders();
    let challenge = HoldChallenge::fresh().unwrap();
    for (who, client, code) in &outsiders {
        let r = client.put_piece(node.peer(), &id, 0, p.to_bytes(), T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} put");
        let r = client.get_piece(node.peer(), &id, 0, T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} get");
        let r = client
            .challenge_piece(node.peer(), &id, 0, &challenge, T)
            .await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who} challenge");
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!(
        "{}/internal/v1/batches/{}/pieces/0",
        node.url,
        messages::hex32(&id)
    );
    for req in [
        http.put(&url).body(p.to_bytes()),
        http.get(&url),
        http.post(format!("{url}/poh"))
            .body(messages::encode(&challenge)),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }
    node.assert_empty();
    // Stored by the city, still not readable or provable by a stranger.
    let client = crate::testkit::peer_client();
    client
        .put_piece(node.peer(), &id, 0, p.to_bytes(), T)
        .await
        .unwrap();
    let stranger = &outsiders[0].1;
    assert_eq!(
        refusal(stranger.get_piece(node.peer(), &id, 0, T).await).0,
        401
    );
    assert_eq!(
        refusal(
            stranger
                .challenge_piece(node.peer(), &id, 0, &challenge, T)
                .await
        )
        .0,
        401
    );
    node.server.stop(true).await;
}

#[actix_web::test]
async fn pieces_count_against_the_capacity() {
    let (id, _, pieces) = pieces(0, 3);
    let one = pieces[0].to_bytes().len() as u64;
    let node = Node::start(one + one / 2, 1 << 20);
    let client = crate::testkit::peer_client();
    client
        .put_piece(node.peer(), &id, 0, pieces[0].to_bytes(), T)
        .await
        .unwrap();
    let r = client
        .put_piece(node.peer(), &id, 1, pieces[1].to_bytes(), T)
        .await;
    assert_eq!(refusal(r), (507, "capacity_exceeded".to_string()));
    assert_eq!(
        client.get_piece(node.peer(), &id, 1, T).await.unwrap(),
        None
    );
    node.server.stop(true).await;
}

#[actix_web::test]
async fn the_city_releases_many_pieces_in_one_request_and_hostile_releases_change_nothing() {
    let (id, _, pieces) = pieces(0, 3);
    let one = pieces[0].to_bytes().len() as u64;
    // Room for three pieces and a half.
    let node = Node::start(3 * one + one / 2, 1 << 20);
    let client = crate::testkit::peer_client();
    for (i, p) in pieces.iter().enumerate().take(3) {
        client
            .put_piece(node.peer(), &id, i as u8, p.to_bytes(), T)
            .await
            .unwrap();
    }
    let r = client
        .put_piece(node.peer(), &id, 3, pieces[3].to_bytes(), T)
        .await;
    assert_eq!(refusal(r), (507, "capacity_exceeded".to_string()));
    let held = node.state.health();
    assert_eq!(held.batches, 3);
    let piece = |index: u8| PieceId {
        batch_id: id,
        index,
    };

    // Strangers, impostors, unsigned and re-bodied requests release nothing.
    for (who, c, code) in outsiders() {
        let r = c.release_pieces(node.peer(), &[piece(0)], T).await;
        assert_eq!(refusal(r), (401, code.to_string()), "{who}");
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}{RELEASE_PATH}", node.url);
    let body = messages::encode(&vec![piece(0)]);
    let resp = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "unauthenticated", "{answer}");
    let signer = RequestSigner::new(
        crate::testkit::TEST_CITY_ID,
        crate::testkit::test_city_key(),
    );
    let post = |signed_body: Vec<u8>, sent_body: Vec<u8>| {
        let mut req = http.post(&url).body(sent_body);
        for (k, v) in signer
            .headers("POST", RELEASE_PATH, "light-test", &signed_body)
            .unwrap()
        {
            req = req.header(k, v);
        }
        req.send()
    };
    // Signed for one list, sent with another.
    let other = messages::encode(&vec![piece(1)]);
    let resp = post(body.clone(), other).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "body_mismatch", "{answer}");
    // Not a list of pieces, or more than one request may name.
    let too_many = messages::encode(&vec![piece(0); MAX_RELEASE_PIECES + 1]);
    for (what, bad) in [("garbage", b"not a list".to_vec()), ("too many", too_many)] {
        let resp = post(bad.clone(), bad).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{what}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            answer["error"]["code"], "invalid_release",
            "{what}: {answer}"
        );
    }
    // Larger than any list may be: 413 before anything is decoded.
    let big = vec![0u8; MAX_RELEASE_BYTES + 1];
    let resp = post(big.clone(), big).await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(node.state.health(), held);

    // The city releases two held pieces and one never held, in one request.
    let removed = client
        .release_pieces(node.peer(), &[piece(0), piece(9), piece(2)], T)
        .await
        .unwrap();
    assert_eq!(removed, vec![true, false, true]);
    let h = node.state.health();
    assert_eq!(h.batches, 1, "{h:?}");
    assert_eq!(h.used_bytes, one, "{h:?}");
    assert_eq!(
        client.get_piece(node.peer(), &id, 0, T).await.unwrap(),
        None
    );
    assert!(
        client
            .get_piece(node.peer(), &id, 1, T)
            .await
            .unwrap()
            .is_some()
    );
    // Again: gone already, nothing changes.
    let again = client
        .release_pieces(node.peer(), &[piece(0), piece(2)], T)
        .await
        .unwrap();
    assert_eq!(again, vec![false, false]);
    assert_eq!(node.state.health(), h);
    // The freed bytes take new pieces.
    client
        .put_piece(node.peer(), &id, 3, pieces[3].to_bytes(), T)
        .await
        .expect("the freed space takes a new piece");
    node.server.stop(true).await;
}

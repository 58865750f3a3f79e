use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer};

use super::*;
use crate::crypto;
use crate::messages::{Batch, FlagKind, SignedTx};
use crate::storage::peer::{PeerClient, PeerError};

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
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).configure(configure))
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
    let client = PeerClient::new();
    let (b, bytes) = batch(0, 3);
    let id = b.id();

    assert_eq!(client.get_batch(&node.url, &id, T).await.unwrap(), None);

    let ack = client
        .put_batch(&node.url, &id, bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&ack, &id, &bytes);
    assert!(node.state.store.contains(&id).unwrap());

    // A retry gets a fresh ack and writes nothing more.
    let again = client
        .put_batch(&node.url, &id, web::Bytes::from(bytes.clone()), T)
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
        }
    );
    assert_eq!(
        client
            .get_batch(&node.url, &id, T)
            .await
            .unwrap()
            .as_deref(),
        Some(&bytes[..])
    );
    let (other, _) = batch(1, 1);
    assert_eq!(
        client.get_batch(&node.url, &other.id(), T).await.unwrap(),
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
    let client = PeerClient::new();
    let (b, bytes) = batch(0, 2);
    let (other, _) = batch(1, 1);

    // A valid batch sent under another batch's id.
    let mut refused = vec![
        client
            .put_batch(&node.url, &other.id(), bytes.clone(), T)
            .await,
    ];
    // The batch in plain form: a storage node never takes readable transactions.
    refused.push(
        client
            .put_batch(&node.url, &b.id(), messages::encode(&b), T)
            .await,
    );
    // A clear header field changed: the header no longer hashes to the id.
    let mut envelope = SealedEnvelope::from_bytes(&bytes).unwrap();
    envelope.header.batch.seq += 1;
    refused.push(
        client
            .put_batch(&node.url, &b.id(), envelope.to_bytes(), T)
            .await,
    );
    // Cut short on the wire.
    refused.push(
        client
            .put_batch(&node.url, &b.id(), bytes[..bytes.len() - 1].to_vec(), T)
            .await,
    );
    // Trailing bytes after a valid encoding.
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"junk");
    refused.push(client.put_batch(&node.url, &b.id(), padded, T).await);
    // Not a batch at all.
    refused.push(
        client
            .put_batch(&node.url, &b.id(), b"garbage".to_vec(), T)
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
    assert_eq!(client.get_batch(&node.url, &b.id(), T).await.unwrap(), None);
    node.assert_empty();

    // The untouched batch is still accepted afterwards.
    let ack = client
        .put_batch(&node.url, &b.id(), bytes.clone(), T)
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
    for (method, id) in [
        (reqwest::Method::PUT, "zz"),
        (reqwest::Method::GET, "abc"),
        (reqwest::Method::PUT, &"g".repeat(64)),
    ] {
        let resp = http
            .request(
                method.clone(),
                format!("{}/internal/v1/batches/{id}", node.url),
            )
            .body(vec![1, 2, 3])
            .send()
            .await
            .unwrap();
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
    let client = PeerClient::new();
    match client.put_batch(&node.url, &b.id(), bytes.clone(), T).await {
        Err(PeerError::Refused {
            status: 507, code, ..
        }) => {
            assert_eq!(code, "capacity_exceeded")
        }
        other => panic!("expected 507, got {other:?}"),
    }
    assert!(!node.state.store.contains(&b.id()).unwrap());
    assert_eq!(client.get_batch(&node.url, &b.id(), T).await.unwrap(), None);
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
    let client = PeerClient::new();
    match client.put_batch(&node.url, &b.id(), bytes.clone(), T).await {
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
    let client = PeerClient::new();
    let (b, bytes) = batch(0, 2);
    let node = Node::start_in(dir.path(), 1 << 20, 1 << 20);
    let ack = client
        .put_batch(&node.url, &b.id(), bytes.clone(), T)
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

    let node = Node::start_in(dir.path(), 1 << 20, 1 << 20);
    assert_eq!(
        client
            .get_batch(&node.url, &b.id(), T)
            .await
            .unwrap()
            .as_deref(),
        Some(&bytes[..])
    );
    let h = client.health(&node.url, T).await.unwrap();
    assert_eq!((h.used_bytes, h.batches), (bytes.len() as u64, 1));
    // Still idempotent after the restart.
    let again = client
        .put_batch(&node.url, &b.id(), bytes.clone(), T)
        .await
        .unwrap();
    node.verify(&again, &b.id(), &bytes);
    assert_eq!(node.state.store.batch_count(), 1);
    node.server.stop(true).await;
}

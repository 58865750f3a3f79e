//! The versioned internal API of light and full nodes, the server side of the storage
//! client (paths and types in [`crate::messages::storage`]):
//!
//! - `PUT /internal/v1/batches/{id}`: check and store a batch, answer a signed
//!   proof-of-hold ack (postcard, `application/octet-stream`).
//! - `GET /internal/v1/batches/{id}`: the stored bytes, or a JSON 404.
//! - `GET /internal/v1/health`: a [`HealthReport`] (JSON), what the city's probes read.
//!
//! A node signs an ack only for a batch that decodes, is the canonical encoding of itself,
//! carries the id it is stored under, passes its integrity check, and is fsynced to disk:
//! the ack is the city's proof of durability, so nothing short of that earns one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;

use crate::config::Role;
use crate::crypto::SigningKey;
use crate::http::{ApiError, ApiResult};
use crate::messages::storage::{BATCHES_PATH, HEALTH_PATH, HealthReport, OCTET_STREAM, POH_SUFFIX};
use crate::messages::{self, Batch, BatchId, PohAck};
use crate::storage::store::{BatchStore, PutOutcome, StoreError};

/// What the storage routes share; register it as `web::Data<StorageState>`.
pub struct StorageState {
    pub node_id: String,
    pub role: Role,
    pub continent: String,
    pub store: Arc<BatchStore>,
    /// The node key acks are signed with.
    pub key: Arc<SigningKey>,
    /// Largest batch accepted, in bytes; larger bodies get 413 `payload_too_large`.
    pub max_batch_bytes: usize,
    /// Batch writes being served now (reported by health, read by the city's load factor).
    pub inflight: AtomicU64,
}

impl StorageState {
    pub fn health(&self) -> HealthReport {
        HealthReport {
            node_id: self.node_id.clone(),
            role: self.role,
            continent: self.continent.clone(),
            used_bytes: self.store.used_bytes(),
            capacity_bytes: self.store.capacity_bytes(),
            batches: self.store.batch_count(),
            inflight: self.inflight.load(Ordering::Relaxed),
        }
    }
}

/// The storage routes. Expects `web::Data<StorageState>` registered by the caller. The PUT
/// body is read from the raw payload under `max_batch_bytes`, so no `PayloadConfig` is
/// needed and an oversized body still gets the JSON error format.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(format!("{BATCHES_PATH}/{{id}}"))
            .route(web::put().to(put_batch))
            .route(web::get().to(get_batch)),
    )
    .service(
        web::resource(format!("{BATCHES_PATH}/{{id}}{POH_SUFFIX}"))
            .route(web::post().to(prove_hold)),
    )
    .service(web::resource(HEALTH_PATH).route(web::get().to(health)));
}

/// Counts a request in `inflight` for as long as it lives, whichever way it ends.
struct InflightGuard<'a>(&'a AtomicU64);

impl<'a> InflightGuard<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_id(s: &str) -> ApiResult<BatchId> {
    messages::parse_hex32(s).ok_or_else(|| {
        ApiError::bad_request("invalid_id", "a batch id is 64 hex characters (32 bytes)")
    })
}

fn invalid_batch(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_batch", format!("refused batch: {why}"))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "internal", format!("{what}: {e}"))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("a batch may be at most {max} bytes"),
    )
}

async fn put_batch(
    state: web::Data<StorageState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let _inflight = InflightGuard::enter(&state.inflight);
    let result = accept_batch(&state, &path, &req, payload).await;
    let outcome = match &result {
        Ok((PutOutcome::Stored, _)) => "stored",
        Ok((PutOutcome::AlreadyHeld, _)) => "duplicate",
        Err(e) if e.status.as_u16() == 507 => "full",
        Err(e) if e.status.is_server_error() => "error",
        Err(_) => "rejected",
    };
    metrics::counter!(crate::metrics::STORE_REQUESTS, "outcome" => outcome).increment(1);
    metrics::gauge!(crate::metrics::STORE_USED_BYTES).set(state.store.used_bytes() as f64);
    match &result {
        Ok(_) => tracing::debug!(batch = %path, outcome, "batch accepted"),
        Err(e) if e.status.is_server_error() && e.status.as_u16() != 507 => {
            // The node cannot store what it is offered: its disk or database needs an operator.
            tracing::error!(batch = %path, error = %e, "storing a batch failed");
        }
        Err(e) => tracing::debug!(batch = %path, error = %e, "batch refused"),
    }
    let (_, ack) = result?;
    Ok(HttpResponse::Ok().content_type(OCTET_STREAM).body(ack))
}

/// Checks and stores one batch; returns what the store did and the encoded ack.
async fn accept_batch(
    state: &StorageState,
    raw_id: &str,
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<(PutOutcome, Vec<u8>)> {
    let id = parse_id(raw_id)?;
    let body = read_body(req, payload, state.max_batch_bytes).await?;

    let store = state.store.clone();
    let key = state.key.clone();
    let node_id = state.node_id.clone();
    // Decoding, hashing a batch of up to megabytes, the fsync and the ML-DSA signature are
    // all blocking work: keep them off the HTTP workers.
    web::block(move || {
        let batch: Batch = messages::decode(&body).map_err(invalid_batch)?;
        if batch.id() != id {
            return Err(invalid_batch(format!(
                "its id is {}, not the {} it was sent as",
                messages::hex32(&batch.id()),
                messages::hex32(&id)
            )));
        }
        // Only the canonical encoding is stored, so one id always means the same bytes and
        // an ack for a retry is true of the bytes held (decoding alone ignores trailing bytes).
        if messages::encode(&batch) != body {
            return Err(invalid_batch(
                "the body is not the batch's canonical encoding",
            ));
        }
        batch.check_integrity().map_err(invalid_batch)?;
        let outcome = store.put(&id, &body).map_err(|e| match e {
            StoreError::CapacityExceeded { .. } => {
                ApiError::new(507, "capacity_exceeded", e.to_string())
            }
            _ => internal("storing the batch", e),
        })?;
        let ack = PohAck::sign(&key, &node_id, id, &body, messages::now_ms())
            .map_err(|e| internal("signing the ack", e))?;
        Ok((outcome, messages::encode(&ack)))
    })
    .await
    .map_err(|e| internal("storage worker", e))?
}

/// Reads the whole body, refusing it as soon as it is known to exceed `max` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> ApiResult<web::Bytes> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_body", format!("reading the body failed: {e}"))
        })?;
        if body.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn get_batch(
    state: web::Data<StorageState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let store = state.store.clone();
    let held = web::block(move || store.get(&id))
        .await
        .map_err(|e| internal("storage worker", e))?
        .map_err(|e| internal("reading the batch", e))?;
    match held {
        Some(bytes) => Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, OCTET_STREAM))
            .body(bytes)),
        None => Err(ApiError::not_found(format!(
            "batch {} is not held here",
            messages::hex32(&id)
        ))),
    }
}

/// `REPAIR_REQ`: a fresh proof-of-hold ack over the bytes this node holds now for the
/// batch (the `REPAIR_ACK`), or 404 if it does not hold it any more. The city uses it to
/// check that its light-node holdings still exist.
async fn prove_hold(
    state: web::Data<StorageState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let st = state.clone();
    let ack = web::block(move || -> Result<Option<PohAck>, String> {
        match st.store.get(&id).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(bytes) => PohAck::sign(&st.key, &st.node_id, id, &bytes, messages::now_ms())
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .map_err(|e| internal("storage worker", e))?
    .map_err(|e| internal("proving a hold", e))?;
    match ack {
        Some(ack) => Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, OCTET_STREAM))
            .body(messages::encode(&ack))),
        None => Err(ApiError::not_found(format!(
            "batch {} is not held here",
            messages::hex32(&id)
        ))),
    }
}

async fn health(state: web::Data<StorageState>) -> HttpResponse {
    HttpResponse::Ok().json(state.health())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use actix_web::{App, HttpServer};

    use super::*;
    use crate::crypto;
    use crate::messages::{FlagKind, SignedTx};
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
        crate::actors::testkit::signed_tx(key, nonce, FlagKind::FreshTx, 5)
    }

    /// A valid batch of `n` transactions and its encoding.
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
        let bytes = messages::encode(&b);
        (b, bytes)
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
        // A transaction's signature changed: the header no longer matches the body.
        let mut tampered = b.clone();
        tampered.body[0].signature[0] ^= 1;
        refused.push(
            client
                .put_batch(&node.url, &b.id(), messages::encode(&tampered), T)
                .await,
        );
        // The last byte flipped on the wire.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        refused.push(client.put_batch(&node.url, &b.id(), flipped, T).await);
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
}

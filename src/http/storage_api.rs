//! The versioned internal API of light and full nodes, the server side of the storage
//! client (paths and types in [`crate::messages::storage`]):
//!
//! - `PUT /internal/v1/batches/{id}`: check and store a batch, answer a signed
//!   proof-of-hold ack (postcard, `application/octet-stream`).
//! - `GET /internal/v1/batches/{id}`: the stored bytes, or a JSON 404.
//! - `GET /internal/v1/health`: a [`HealthReport`] (JSON), what the city's probes read.
//!
//! A node signs an ack only for a sealed batch that decodes, is the canonical encoding of
//! itself, is well formed, carries the id it is stored under (its clear header hashes to
//! it), and is fsynced to disk: the ack is the city's proof of durability, so nothing
//! short of that earns one. The body is ciphertext the node has no key for; it checks the
//! envelope, never the transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::config::Role;
use crate::crypto::SigningKey;
use crate::http::common::{BodyError, read_limited_body};
use crate::http::{ApiError, ApiResult};
use crate::messages::storage::{BATCHES_PATH, HEALTH_PATH, HealthReport, OCTET_STREAM, POH_SUFFIX};
use crate::messages::{self, BatchId, PohAck, SealedEnvelope};
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
    super::common::parse_id(s, "batch_id")
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
        // A batch arrives sealed: the node checks what it can without the key (it decodes,
        // is the canonical encoding of itself, so one id always means the same bytes and an
        // ack for a retry is true of the bytes held, is well formed, and its clear header
        // hashes to the id it was sent as). The body is ciphertext it cannot read.
        let envelope = SealedEnvelope::from_bytes(&body).map_err(invalid_batch)?;
        if envelope.id() != id {
            return Err(invalid_batch(format!(
                "its id is {}, not the {} it was sent as",
                messages::hex32(&envelope.id()),
                messages::hex32(&id)
            )));
        }
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
async fn read_body(req: &HttpRequest, payload: web::Payload, max: usize) -> ApiResult<web::Bytes> {
    match read_limited_body(req, payload, max).await {
        Ok(body) => Ok(body.freeze()),
        Err(BodyError::TooLarge) => Err(too_large(max)),
        Err(BodyError::Read(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("reading the body failed: {e}"),
        )),
    }
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
mod tests;

//! The versioned internal API of light and full nodes, the server side of the storage
//! client (paths and types in [`crate::messages::storage`]):
//!
//! - `PUT /internal/v1/batches/{id}`: check and store a batch, answer a signed
//!   proof-of-hold ack (postcard, `application/octet-stream`).
//! - `GET /internal/v1/batches/{id}`: the stored bytes, or a JSON 404.
//! - `POST /internal/v1/batches/{id}/poh`: answer a possession challenge (a postcard
//!   [`HoldChallenge`]) with a [`HoldProof`], or a JSON 404.
//! - `PUT /internal/v1/batches/{id}/pieces/{index}`: check and store one erasure-coded
//!   piece (a postcard [`Piece`]), answer a proof-of-hold ack bound to that piece.
//! - `GET /internal/v1/batches/{id}/pieces/{index}`: the stored piece, or a JSON 404.
//! - `POST /internal/v1/batches/{id}/pieces/{index}/poh`: a possession proof of that piece's
//!   data, or a JSON 404.
//! - `POST /internal/v1/pieces/release`: release pieces (the city archived their batches
//!   to full nodes), many in one fsynced transaction (an encoded list of batch id and
//!   index, at most 1,024; the answer: one `bool` each, true if removed, false if not held:
//!   a release is idempotent, the city counts both as done), their bytes free for new
//!   pieces.
//! - `GET /internal/v1/health`: a [`HealthReport`] (JSON), what the city's probes read.
//!
//! Every route but health serves only the nodes on this node's allow-list, by signed
//! request ([`AuthenticatedPeer`], see [`crate::http::peer_auth`]): anyone else gets 401 and
//! changes nothing, before any body is read.
//!
//! A node signs an ack only for a sealed batch that decodes, is the canonical encoding of
//! itself, is well formed, carries the id it is stored under (its clear header hashes to
//! it), and is fsynced to disk: the ack is the city's proof of durability, so nothing
//! short of that earns one. The body is ciphertext the node has no key for; it checks the
//! envelope, never the transactions. A piece earns an ack only if it is self-consistent
//! ([`Piece::from_bytes`]: canonical, a coding we decode, an index within it, the shard
//! length its coding implies, data that hashes to the hash it names), is filed under the
//! batch id and index it names, and is fsynced; the ack binds the piece's index, coding
//! and sealed whole beside its hash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::config::Role;
use crate::crypto::SigningKey;
use crate::http::common::{BodyError, BoundedBody, read_limited_body};
use crate::http::peer_auth::{AuthenticatedPeer, PeerAuth};
use crate::http::{ApiError, ApiResult};
use crate::messages::storage::{
    BATCHES_PATH, HEALTH_PATH, HealthReport, MAX_RELEASE_PIECES, OCTET_STREAM, PIECES_SEGMENT,
    POH_SUFFIX, PieceId, RELEASE_PATH, SESSIONS_PATH,
};
use crate::messages::{self, BatchId, HoldChallenge, HoldProof, Piece, PohAck, SealedEnvelope};
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
            capacity_bytes: self.store.effective_capacity_bytes(),
            batches: self.store.batch_count(),
            inflight: self.inflight.load(Ordering::Relaxed),
            store_error: self.store.failure(),
        }
    }
}

/// The storage routes. Expects `web::Data<StorageState>` and `web::Data<PeerAuth>`
/// registered by the caller. The PUT
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
    .service(
        web::resource(format!("{BATCHES_PATH}/{{id}}{PIECES_SEGMENT}/{{index}}"))
            .route(web::put().to(put_piece))
            .route(web::get().to(get_piece)),
    )
    .service(
        web::resource(format!(
            "{BATCHES_PATH}/{{id}}{PIECES_SEGMENT}/{{index}}{POH_SUFFIX}"
        ))
        .route(web::post().to(prove_piece)),
    )
    .service(web::resource(RELEASE_PATH).route(web::post().to(release_pieces)))
    .service(web::resource(SESSIONS_PATH).route(web::post().to(open_session)))
    .service(web::resource(HEALTH_PATH).route(web::get().to(health)));
}

/// An ML-KEM-768 encapsulation key is 1,184 bytes.
const MAX_SESSION_OFFER_BYTES: usize = 2048;

/// Opens a request session for the (signed) requester: later requests carry a MAC under
/// the session key instead of a signature.
async fn open_session(
    peer: AuthenticatedPeer,
    auth: web::Data<PeerAuth>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = read_body(&req, payload, MAX_SESSION_OFFER_BYTES).await?;
    peer.check_body(&body)?;
    Ok(HttpResponse::Ok().json(auth.open_session(&peer, &body)?))
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

/// A piece index: a decimal number below 256.
fn parse_index(s: &str) -> ApiResult<u8> {
    s.parse::<u8>().map_err(|_| {
        ApiError::bad_request(
            "invalid_index",
            format!("piece index {s:?} is not a number from 0 to 255"),
        )
    })
}

fn invalid_piece(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_piece", format!("refused piece: {why}"))
}

fn not_held(id: &BatchId, index: Option<u8>) -> ApiError {
    ApiError::not_found(match index {
        None => format!("batch {} is not held here", messages::hex32(id)),
        Some(i) => format!(
            "piece {i} of batch {} is not held here",
            messages::hex32(id)
        ),
    })
}

fn invalid_batch(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_batch", format!("refused batch: {why}"))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "internal", format!("{what}: {e}"))
}

/// The store cannot serve now (a disk or database error; it is being reopened): 503, so
/// the city tries another node and retries later.
fn store_failing(what: &str, e: StoreError) -> ApiError {
    ApiError::storage_unavailable(format!("{what}: {e}"))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("a batch may be at most {max} bytes"),
    )
}

async fn put_batch(
    peer: AuthenticatedPeer,
    state: web::Data<StorageState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let _inflight = InflightGuard::enter(&state.inflight);
    let result = accept_batch(&state, &peer, &path, &req, payload).await;
    answer_put(&state, "batch", &path, result)
}

async fn put_piece(
    peer: AuthenticatedPeer,
    state: web::Data<StorageState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let _inflight = InflightGuard::enter(&state.inflight);
    let (id, index) = path.into_inner();
    let result = accept_piece(&state, &peer, &id, &index, &req, payload).await;
    answer_put(&state, "piece", &format!("{id}/{index}"), result)
}

/// Counts and logs a write of a batch or piece, and answers it with the ack.
/// Publishes the bytes the store holds and the most it can hold now (its capacity, or less
/// when its disk has less room), so an alert can warn before writes are refused `full`.
pub fn publish_usage(store: &BatchStore) {
    metrics::gauge!(crate::metrics::STORE_USED_BYTES).set(store.used_bytes() as f64);
    metrics::gauge!(crate::metrics::STORE_CAPACITY_BYTES)
        .set(store.effective_capacity_bytes() as f64);
}

fn answer_put(
    state: &StorageState,
    what: &'static str,
    name: &str,
    result: ApiResult<(PutOutcome, Vec<u8>)>,
) -> ApiResult<HttpResponse> {
    let outcome = match &result {
        Ok((PutOutcome::Stored, _)) => "stored",
        Ok((PutOutcome::AlreadyHeld, _)) => "duplicate",
        Err(e) if e.status.as_u16() == 507 => "full",
        Err(e) if e.status.is_server_error() => "error",
        Err(_) => "rejected",
    };
    metrics::counter!(crate::metrics::STORE_REQUESTS, "outcome" => outcome).increment(1);
    publish_usage(&state.store);
    match &result {
        Ok(_) => tracing::debug!(%what, %name, outcome, "accepted"),
        Err(e) if e.status.as_u16() == 503 => {
            // Logged once, when the store started failing.
            tracing::debug!(%what, %name, error = %e, "refused: the store is failing");
        }
        Err(e) if e.status.is_server_error() && e.status.as_u16() != 507 => {
            // The node cannot store what it is offered: its disk or database needs an operator.
            tracing::error!(%what, %name, error = %e, "storing failed");
        }
        Err(e) => tracing::debug!(%what, %name, error = %e, "refused"),
    }
    let (_, ack) = result?;
    Ok(HttpResponse::Ok().content_type(OCTET_STREAM).body(ack))
}

fn store_refusal(what: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::CapacityExceeded { .. } => {
            ApiError::new(507, "capacity_exceeded", e.to_string())
        }
        _ => store_failing(what, e),
    }
}

/// Checks and stores one piece; returns what the store did and the encoded ack.
async fn accept_piece(
    state: &StorageState,
    peer: &AuthenticatedPeer,
    raw_id: &str,
    raw_index: &str,
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<(PutOutcome, Vec<u8>)> {
    let id = parse_id(raw_id)?;
    let index = parse_index(raw_index)?;
    let body = read_body(req, payload, state.max_batch_bytes).await?;
    peer.check_body(&body)?;

    let store = state.store.clone();
    let key = state.key.clone();
    let node_id = state.node_id.clone();
    web::block(move || {
        let piece = Piece::from_bytes(&body).map_err(invalid_piece)?;
        let header = &piece.header;
        if header.batch_id != id || header.piece.index != index {
            return Err(invalid_piece(format!(
                "it is piece {} of batch {}, not the piece {index} of {} it was sent as",
                header.piece.index,
                messages::hex32(&header.batch_id),
                messages::hex32(&id)
            )));
        }
        let outcome = store
            .put_piece(&id, index, &body)
            .map_err(|e| store_refusal("storing the piece", e))?;
        // On a retry the piece held is the one first stored under this key; ack what is
        // held, which a canonical, self-hashing piece of the same id and index can differ
        // from only if the city sent two different pieces under one name.
        let held = match outcome {
            PutOutcome::Stored => piece,
            PutOutcome::AlreadyHeld => store
                .get_piece(&id, index)
                .map_err(|e| store_failing("reading the piece back", e))?
                .as_deref()
                .map(Piece::from_bytes)
                .transpose()
                .map_err(|e| internal("a held piece does not decode", e))?
                .ok_or_else(|| internal("reading the piece back", "gone"))?,
        };
        let ack = PohAck::sign_piece(
            &key,
            &node_id,
            id,
            held.header.piece,
            held.header.hash,
            messages::now_ms(),
        )
        .map_err(|e| internal("signing the ack", e))?;
        Ok((outcome, messages::encode(&ack)))
    })
    .await
    .map_err(|e| internal("storage worker", e))?
}

/// Checks and stores one batch; returns what the store did and the encoded ack.
async fn accept_batch(
    state: &StorageState,
    peer: &AuthenticatedPeer,
    raw_id: &str,
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<(PutOutcome, Vec<u8>)> {
    let id = parse_id(raw_id)?;
    let body = read_body(req, payload, state.max_batch_bytes).await?;
    peer.check_body(&body)?;

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
        let outcome = store
            .put(&id, &body)
            .map_err(|e| store_refusal("storing the batch", e))?;
        let ack = PohAck::sign(&key, &node_id, id, &body, messages::now_ms())
            .map_err(|e| internal("signing the ack", e))?;
        Ok((outcome, messages::encode(&ack)))
    })
    .await
    .map_err(|e| internal("storage worker", e))?
}

/// Reads the whole body, refusing it as soon as it is known to exceed `max` bytes.
async fn read_body(req: &HttpRequest, payload: web::Payload, max: usize) -> ApiResult<BoundedBody> {
    match read_limited_body(req, payload, max).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(too_large(max)),
        Err(BodyError::Read(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("reading the body failed: {e}"),
        )),
        Err(e @ (BodyError::TimedOut(_) | BodyError::Overloaded)) => Err(e.refusal()),
    }
}

async fn get_batch(
    peer: AuthenticatedPeer,
    state: web::Data<StorageState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    peer.check_body(&[])?;
    let id = parse_id(&path)?;
    let store = state.store.clone();
    let held = web::block(move || store.get(&id))
        .await
        .map_err(|e| internal("storage worker", e))?
        .map_err(|e| store_failing("reading the batch", e))?;
    match held {
        Some(bytes) => Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, OCTET_STREAM))
            .body(bytes)),
        None => Err(not_held(&id, None)),
    }
}

async fn get_piece(
    peer: AuthenticatedPeer,
    state: web::Data<StorageState>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    peer.check_body(&[])?;
    let (id, index) = path.into_inner();
    let id = parse_id(&id)?;
    let index = parse_index(&index)?;
    let store = state.store.clone();
    let held = web::block(move || store.get_piece(&id, index))
        .await
        .map_err(|e| internal("storage worker", e))?
        .map_err(|e| store_failing("reading the piece", e))?;
    match held {
        Some(bytes) => Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, OCTET_STREAM))
            .body(bytes)),
        None => Err(not_held(&id, Some(index))),
    }
}

/// Largest release body: [`MAX_RELEASE_PIECES`] pieces of 33 bytes each, and the framing.
const MAX_RELEASE_BYTES: usize = MAX_RELEASE_PIECES * 40 + 64;

/// Releases many pieces at once (the city archived their batches to full nodes): removes
/// those held and frees their bytes in one fsynced transaction, then answers one `bool`
/// per piece named, true if it was removed, false if it was not held (gone either way).
/// Only the allowed cities may ask, as for every internal route.
async fn release_pieces(
    peer: AuthenticatedPeer,
    state: web::Data<StorageState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = read_body(&req, payload, MAX_RELEASE_BYTES).await?;
    peer.check_body(&body)?;
    let pieces: Vec<PieceId> = messages::decode(&body).map_err(|e| {
        ApiError::bad_request("invalid_release", format!("refused release list: {e}"))
    })?;
    if pieces.len() > MAX_RELEASE_PIECES {
        return Err(ApiError::bad_request(
            "invalid_release",
            format!(
                "{} pieces named; at most {MAX_RELEASE_PIECES} per request",
                pieces.len()
            ),
        ));
    }
    let store = state.store.clone();
    let freed = web::block(move || store.release_pieces(&pieces))
        .await
        .map_err(|e| internal("storage worker", e))?
        .map_err(|e| store_failing("releasing pieces", e))?;
    let released = freed.iter().flatten().count();
    publish_usage(&state.store);
    metrics::counter!(crate::metrics::STORE_PIECES_RELEASED).increment(released as u64);
    tracing::debug!(
        asked = freed.len(),
        released,
        bytes = freed.iter().flatten().sum::<u64>(),
        "pieces released"
    );
    let removed: Vec<bool> = freed.iter().map(Option::is_some).collect();
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, OCTET_STREAM))
        .body(messages::encode(&removed)))
}

/// Largest possession challenge body accepted (a challenge is a nonce and its envelope).
const MAX_CHALLENGE_BYTES: usize = 256;

/// `REPAIR_REQ`: answers a possession challenge with a fresh proof-of-hold ack over the
/// bytes this node holds now for the batch and the chunks the challenge picked (the
/// `REPAIR_ACK`), or 404 if it does not hold it any more. Rate-limited per peer: each
/// answer costs a signature and a pass over the bytes.
async fn prove_hold(
    peer: AuthenticatedPeer,
    auth: web::Data<PeerAuth>,
    state: web::Data<StorageState>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path)?;
    let challenge = read_challenge(&peer, &auth, &req, payload).await?;
    let st = state.clone();
    let proof = web::block(move || -> ApiResult<Option<HoldProof>> {
        match st
            .store
            .get(&id)
            .map_err(|e| store_failing("proving a hold", e))?
        {
            None => Ok(None),
            Some(bytes) => HoldProof::prove(
                &st.key,
                &st.node_id,
                id,
                &bytes,
                &challenge,
                messages::now_ms(),
            )
            .map(Some)
            .map_err(|e| internal("proving a hold", e)),
        }
    })
    .await
    .map_err(|e| internal("storage worker", e))??;
    answer_proof(proof, &id, None)
}

/// A possession challenge's body, read, checked and decoded, within the peer's rate.
async fn read_challenge(
    peer: &AuthenticatedPeer,
    auth: &PeerAuth,
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<HoldChallenge> {
    let body = read_body(req, payload, MAX_CHALLENGE_BYTES).await?;
    peer.check_body(&body)?;
    let challenge: HoldChallenge = messages::decode(&body).map_err(|e| {
        ApiError::bad_request("invalid_challenge", format!("refused challenge: {e}"))
    })?;
    auth.allow_challenge(peer)?;
    Ok(challenge)
}

fn answer_proof(
    proof: Option<HoldProof>,
    id: &BatchId,
    index: Option<u8>,
) -> ApiResult<HttpResponse> {
    match proof {
        Some(proof) => Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, OCTET_STREAM))
            .body(messages::encode(&proof))),
        None => Err(not_held(id, index)),
    }
}

/// `REPAIR_REQ` for one piece: a fresh ack bound to the piece held and the chunks of its
/// data the challenge picked, or 404. Rate-limited with the batch challenges.
async fn prove_piece(
    peer: AuthenticatedPeer,
    auth: web::Data<PeerAuth>,
    state: web::Data<StorageState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (id, index) = path.into_inner();
    let id = parse_id(&id)?;
    let index = parse_index(&index)?;
    let challenge = read_challenge(&peer, &auth, &req, payload).await?;
    let st = state.clone();
    let proof = web::block(move || -> ApiResult<Option<HoldProof>> {
        let Some(bytes) = st
            .store
            .get_piece(&id, index)
            .map_err(|e| store_failing("proving a hold", e))?
        else {
            return Ok(None);
        };
        let piece =
            Piece::from_bytes(&bytes).map_err(|e| internal("a held piece does not decode", e))?;
        HoldProof::prove_piece(
            &st.key,
            &st.node_id,
            id,
            piece.header.piece,
            &piece.data,
            &challenge,
            messages::now_ms(),
        )
        .map(Some)
        .map_err(|e| internal("proving a hold", e))
    })
    .await
    .map_err(|e| internal("storage worker", e))??;
    answer_proof(proof, &id, Some(index))
}

/// The health report; 503 (with the same report, saying why) while the store is failing,
/// so the city's probes count the node down instead of choosing it for writes it would
/// refuse.
async fn health(state: web::Data<StorageState>) -> HttpResponse {
    let report = state.health();
    if report.store_error.is_some() {
        HttpResponse::ServiceUnavailable().json(report)
    } else {
        HttpResponse::Ok().json(report)
    }
}

#[cfg(test)]
mod tests;

//! The routes of the continent and global nodes (docs/API.md, "Continent and global
//! nodes"): the signed internal endpoints the level below forwards to, and public read
//! endpoints for what each level holds, where a city batch ended up, the checkpoints and
//! the inclusion proof from a city batch to a checkpoint.
//!
//! A submission is checked in this order, cheapest first: the request's signature against
//! the allow-list (401, before the body is read); the body's hash, size and encoding (400,
//! 413); then each batch, on the blocking pool (403 for what this peer may not send or
//! cannot prove, 400 for a malformed batch). One refused batch refuses the request, and a
//! refused request changes nothing. Then every batch goes to the Merger or the Collector,
//! and the answer comes once all of them are durable (503 if the actor or the log failed:
//! nothing is promised, and sending again is safe).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tokio::sync::oneshot;

use super::common::{BodyError, parse_id, read_limited_body};
use super::log_api::{number, query};
use super::peer_auth::AuthenticatedPeer;
use super::{ApiError, ApiResult};
use crate::city::mailbox::{Mailbox, SendError};
use crate::crypto::{Hash32, address_of};
use crate::federation::msgs::{CollectorMsg, MergerMsg, NotDurable};
use crate::federation::proof::{CheckpointProof, CheckpointView};
use crate::federation::verify::{CityBatchCheck, ContinentBatchCheck, Refusal, entries_tree};
use crate::messages::federation::{
    CITY_BATCHES_PATH, CONTINENT_BATCHES_PATH, CitySubmission, ContinentSubmission,
    MAX_SUBMISSION_BYTES, MAX_SUBMISSION_ITEMS, MergeReply, MergedBatch, ReceiveReply,
    ReceivedBatch,
};
use crate::messages::{Tier, decode, hex32};
use crate::storage::continent_store::ContinentStore;
use crate::storage::global_store::{CheckpointInfo, GlobalStore};
use crate::storage::immutable_log::heads::base64_bytes;

/// How long a submission waits for its batches to be durable before it is answered 503
/// (a continent batch closes within its window; a stuck log must not hold connections).
const DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// What the continent's routes need, registered as `web::Data<ContinentState>`.
pub struct ContinentState {
    pub merger: Mailbox<MergerMsg>,
    pub store: Arc<ContinentStore>,
    pub check: Arc<CityBatchCheck>,
    /// DPoS approval of its continent batches (maybe off).
    pub dpos: Arc<crate::federation::dpos::DposBook>,
}

/// What the global node's routes need, registered as `web::Data<GlobalState>`.
pub struct GlobalState {
    pub collector: Mailbox<CollectorMsg>,
    pub store: Arc<GlobalStore>,
    pub check: Arc<ContinentBatchCheck>,
    /// The node's ML-DSA-65 public key, which checkpoints verify with.
    pub public_key: Vec<u8>,
}

pub fn configure_continent(cfg: &mut web::ServiceConfig) {
    cfg.route(CITY_BATCHES_PATH, web::post().to(merge))
        .route("/v1/city-batches/{id}", web::get().to(continent_city_batch))
        .route("/v1/continent-batches/{id}", web::get().to(continent_batch))
        .route("/v1/federation/status", web::get().to(continent_status));
}

pub fn configure_global(cfg: &mut web::ServiceConfig) {
    cfg.route(CONTINENT_BATCHES_PATH, web::post().to(receive))
        .route("/v1/city-batches/{id}", web::get().to(global_city_batch))
        .route(
            "/v1/continent-batches/{id}",
            web::get().to(global_continent_batch),
        )
        .route("/v1/checkpoints/latest", web::get().to(latest_checkpoint))
        .route("/v1/checkpoints/proof", web::get().to(checkpoint_proof))
        .route("/v1/checkpoints/{seq}", web::get().to(checkpoint_by_seq))
        .route("/v1/federation/status", web::get().to(global_status));
}

fn refused(r: Refusal) -> ApiError {
    ApiError::new(r.status, r.code, r.message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "internal", format!("{what}: {e}"))
}

fn not_durable(e: NotDurable) -> ApiError {
    ApiError::storage_unavailable(format!("not durable, nothing was merged: {e}"))
}

/// Reads and decodes a signed submission body; 400 unless it decodes with 1 to
/// [`MAX_SUBMISSION_ITEMS`] batches.
async fn submission<T: serde::de::DeserializeOwned>(
    peer: &AuthenticatedPeer,
    req: &HttpRequest,
    payload: web::Payload,
    count: impl Fn(&T) -> usize,
) -> ApiResult<T> {
    let body = read_limited_body(req, payload, MAX_SUBMISSION_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                413,
                "payload_too_large",
                format!("a submission may be at most {MAX_SUBMISSION_BYTES} bytes"),
            ),
            e => e.refusal(),
        })?;
    peer.check_body(&body)?;
    let sub: T = decode(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("not a submission of batches: {e}"))
    })?;
    let n = count(&sub);
    if n == 0 || n > MAX_SUBMISSION_ITEMS {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("a submission carries 1 to {MAX_SUBMISSION_ITEMS} batches, not {n}"),
        ));
    }
    Ok(sub)
}

/// Checks every batch of a submission from `peer` on the blocking pool (signatures cost
/// milliseconds); one refused batch refuses them all, counted under `metric`.
async fn checked<B: Send + 'static>(
    peer: &AuthenticatedPeer,
    batches: Vec<B>,
    check: impl Fn(&str, &B) -> Result<(), Refusal> + Send + 'static,
    metric: &'static str,
) -> ApiResult<Vec<B>> {
    let who = peer.id.clone();
    let verdict = web::block(move || -> Result<Vec<B>, Refusal> {
        for b in &batches {
            check(&who, b)?;
        }
        Ok(batches)
    })
    .await
    .map_err(|e| internal("checking the batches", e))?;
    verdict.map_err(|r| {
        metrics::counter!(metric, "outcome" => "refused").increment(1);
        tracing::warn!(peer = %peer.id, code = r.code, "refused a submission: {}", r.message);
        refused(r)
    })
}

/// Hands each item to the actor behind `mailbox` with its own answer channel and waits
/// for all of them.
async fn dispatch<M: crate::city::mailbox::ActorMsg, I, R>(
    mailbox: &Mailbox<M>,
    items: Vec<I>,
    msg: impl Fn(I, oneshot::Sender<Result<R, NotDurable>>) -> M,
) -> ApiResult<Vec<R>> {
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let (tx, rx) = oneshot::channel();
        mailbox.try_send(msg(item, tx)).map_err(|e| match e {
            SendError::Full(_) => ApiError::overloaded("too many batches waiting; retry shortly"),
            SendError::Closed(_) => {
                ApiError::storage_unavailable("the node is stopping or restarting; retry")
            }
        })?;
        answers.push(rx);
    }
    let all = tokio::time::timeout(DURABLE_WITHIN, futures::future::join_all(answers))
        .await
        .map_err(|_| {
            ApiError::storage_unavailable(format!("not durable within {DURABLE_WITHIN:?}"))
        })?;
    all.into_iter()
        .map(|a| match a {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(not_durable(e)),
            Err(_) => Err(ApiError::storage_unavailable(
                "the actor restarted before the batch was durable; retry",
            )),
        })
        .collect()
}

/// `POST /internal/v1/city-batches` (signed by a city on the allow-list).
async fn merge(
    peer: AuthenticatedPeer,
    state: web::Data<ContinentState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let sub: CitySubmission =
        submission(&peer, &req, payload, |s: &CitySubmission| s.batches.len()).await?;
    let check = state.check.clone();
    let batches = checked(
        &peer,
        sub.batches,
        move |who, b| check.check(who, b),
        crate::metrics::CITY_BATCHES_RECEIVED,
    )
    .await?;
    let ids: Vec<Hash32> = batches.iter().map(|b| b.id()).collect();
    let merged = dispatch(&state.merger, batches, |batch, reply| MergerMsg::Submit {
        batch,
        reply,
    })
    .await?;
    let merged = ids
        .iter()
        .zip(merged)
        .map(|(id, m)| MergedBatch {
            batch_id: hex32(id),
            continent_batch_id: hex32(&m.continent_batch_id),
            continent_seq: m.continent_seq,
            entry_index: m.entry_index,
            duplicate: m.duplicate,
        })
        .collect();
    Ok(HttpResponse::Ok().json(MergeReply { merged }))
}

/// `POST /internal/v1/continent-batches` (signed by a continent on the allow-list).
async fn receive(
    peer: AuthenticatedPeer,
    state: web::Data<GlobalState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let sub: ContinentSubmission = submission(&peer, &req, payload, |s: &ContinentSubmission| {
        s.batches.len()
    })
    .await?;
    let check = state.check.clone();
    let batches = checked(
        &peer,
        sub.batches,
        move |who, b| check.check(who, b),
        crate::metrics::CONTINENT_BATCHES_RECEIVED,
    )
    .await?;
    let ids: Vec<Hash32> = batches.iter().map(|b| b.id()).collect();
    let received = dispatch(&state.collector, batches, |batch, reply| {
        CollectorMsg::Submit { batch, reply }
    })
    .await?;
    let received = ids
        .iter()
        .zip(received)
        .map(|(id, r)| ReceivedBatch {
            continent_batch_id: hex32(id),
            record_index: r.record_index,
            duplicate: r.duplicate,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ReceiveReply { received }))
}

/// Where the global node holds a continent batch (null until it answered for it).
#[derive(Debug, Serialize)]
pub struct GlobalPlaceReply {
    pub node: String,
    pub record_index: u64,
    pub time_ms: u64,
}

/// `GET /v1/city-batches/{id}` on a continent: where the city batch was merged.
#[derive(Debug, Serialize)]
pub struct ContinentCityBatchReply {
    pub batch_id: String,
    pub city_id: String,
    pub seq: u64,
    pub tier: Tier,
    pub continent_batch_id: String,
    pub continent_seq: u64,
    pub entry_index: u32,
    /// The record of the continent's log holding the continent batch.
    pub record_index: u64,
    pub global: Option<GlobalPlaceReply>,
}

/// `GET /v1/continent-batches/{id}` on a continent.
#[derive(Debug, Serialize)]
pub struct ContinentBatchReply {
    pub continent_batch_id: String,
    pub continent: String,
    pub seq: u64,
    pub parents: Vec<String>,
    pub entries_root: String,
    pub entry_count: u32,
    pub created_at_ms: u64,
    pub record_index: u64,
    pub city_batches: Vec<String>,
    pub global: Option<GlobalPlaceReply>,
    /// DPoS approval; null when the continent runs none.
    pub approval: Option<ApprovalReply>,
}

/// A continent batch's DPoS approval.
#[derive(Debug, Serialize)]
pub struct ApprovalReply {
    /// `approved` or `pending`.
    pub status: &'static str,
    /// Stake in force of the representatives that voted for it (at approval, once
    /// approved).
    pub stake: u64,
    pub total_stake: u64,
    pub voters: Vec<String>,
    pub approved_at_ms: Option<u64>,
}

fn approval_of(
    dpos: &crate::federation::dpos::DposBook,
    id: &Hash32,
) -> ApiResult<Option<ApprovalReply>> {
    if !dpos.enabled() {
        return Ok(None);
    }
    if let Some(a) = dpos.store.dpos_approval(id).map_err(store_error)? {
        return Ok(Some(ApprovalReply {
            status: "approved",
            stake: a.stake,
            total_stake: a.total_stake,
            voters: a.voters,
            approved_at_ms: Some(a.approved_at_ms),
        }));
    }
    let (tally, voters) = dpos.tally(id).map_err(store_error)?;
    Ok(Some(ApprovalReply {
        status: "pending",
        stake: tally.voted,
        total_stake: tally.total,
        voters,
        approved_at_ms: None,
    }))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    internal("reading the index", e)
}

async fn continent_city_batch(
    path: web::Path<String>,
    state: web::Data<ContinentState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "batch_id")?;
    let place = state
        .store
        .city_batch(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no city batch {}", path.as_str())))?;
    let global = state
        .store
        .continent_batch(&place.continent_batch_id)
        .map_err(store_error)?
        .and_then(|(_, g)| g);
    Ok(HttpResponse::Ok().json(ContinentCityBatchReply {
        batch_id: hex32(&id),
        city_id: place.city_id,
        seq: place.seq,
        tier: place.tier,
        continent_batch_id: hex32(&place.continent_batch_id),
        continent_seq: place.continent_seq,
        entry_index: place.entry_index,
        record_index: place.record_index,
        global: global.map(|g| GlobalPlaceReply {
            node: g.node,
            record_index: g.record_index,
            time_ms: g.time_ms,
        }),
    }))
}

async fn continent_batch(
    path: web::Path<String>,
    state: web::Data<ContinentState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "continent_batch_id")?;
    let (info, global) = state
        .store
        .continent_batch(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no continent batch {}", path.as_str())))?;
    let approval = approval_of(&state.dpos, &id)?;
    let h = &info.header;
    Ok(HttpResponse::Ok().json(ContinentBatchReply {
        continent_batch_id: hex32(&id),
        continent: h.continent.clone(),
        seq: h.seq,
        parents: h.parents.iter().map(hex32).collect(),
        entries_root: hex32(&h.entries_root),
        entry_count: h.entry_count,
        created_at_ms: h.created_at_ms,
        record_index: info.record_index,
        city_batches: info.city_batches.iter().map(hex32).collect(),
        global: global.map(|g| GlobalPlaceReply {
            node: g.node,
            record_index: g.record_index,
            time_ms: g.time_ms,
        }),
        approval,
    }))
}

/// `GET /v1/federation/status` on a continent.
#[derive(Debug, Serialize)]
pub struct ContinentStatusReply {
    pub role: &'static str,
    pub continent_batches: u64,
    pub city_batches: u64,
    /// Continent batches the global node has not acknowledged.
    pub outbox: u64,
    pub log_records: u64,
    /// DPoS counts; null when the continent runs no approval.
    pub dpos: Option<crate::storage::continent_dpos::DposCounts>,
}

async fn continent_status(state: web::Data<ContinentState>) -> ApiResult<HttpResponse> {
    let c = state.store.counts().map_err(store_error)?;
    let dpos = if state.dpos.enabled() {
        Some(state.store.dpos_counts().map_err(store_error)?)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(ContinentStatusReply {
        role: "continent",
        continent_batches: c.continent_batches,
        city_batches: c.city_batches,
        outbox: c.outbox,
        log_records: state.store.log().size(),
        dpos,
    }))
}

/// A checkpoint, as the global node answers it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckpointReply {
    pub checkpoint: CheckpointView,
    /// The record of the global log holding it.
    pub record_index: u64,
    /// The global node's address and public key (base64), which it verifies with.
    pub signer: String,
    #[serde(with = "base64_bytes")]
    pub public_key: Vec<u8>,
}

/// A checkpoint's place, in answers about what it covers.
#[derive(Debug, Serialize)]
pub struct CoveredBy {
    pub seq: u64,
    pub size: u64,
    pub root: String,
    pub time_ms: u64,
}

impl From<&CheckpointInfo> for CoveredBy {
    fn from(i: &CheckpointInfo) -> Self {
        let c = &i.signed.checkpoint;
        Self {
            seq: c.seq,
            size: c.size,
            root: hex32(&c.root),
            time_ms: c.time_ms,
        }
    }
}

/// `GET /v1/city-batches/{id}` on the global node.
#[derive(Debug, Serialize)]
pub struct GlobalCityBatchReply {
    pub batch_id: String,
    pub continent: String,
    pub continent_batch_id: String,
    pub entry_index: u32,
    pub record_index: u64,
    /// The first checkpoint covering it; null until one does.
    pub checkpoint: Option<CoveredBy>,
}

/// `GET /v1/continent-batches/{id}` on the global node.
#[derive(Debug, Serialize)]
pub struct GlobalContinentBatchReply {
    pub continent_batch_id: String,
    pub continent: String,
    pub seq: u64,
    pub signer: String,
    pub entry_count: u32,
    pub record_index: u64,
    pub city_batches: Vec<String>,
    pub checkpoint: Option<CoveredBy>,
}

async fn global_city_batch(
    path: web::Path<String>,
    state: web::Data<GlobalState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "batch_id")?;
    let place = state
        .store
        .city_batch(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no city batch {}", path.as_str())))?;
    let covering = state
        .store
        .covering(place.record_index)
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(GlobalCityBatchReply {
        batch_id: hex32(&id),
        continent: place.continent,
        continent_batch_id: hex32(&place.continent_batch_id),
        entry_index: place.entry_index,
        record_index: place.record_index,
        checkpoint: covering.as_ref().map(CoveredBy::from),
    }))
}

async fn global_continent_batch(
    path: web::Path<String>,
    state: web::Data<GlobalState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "continent_batch_id")?;
    let info = state
        .store
        .continent_batch(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no continent batch {}", path.as_str())))?;
    let covering = state
        .store
        .covering(info.record_index)
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(GlobalContinentBatchReply {
        continent_batch_id: hex32(&id),
        continent: info.header.continent.clone(),
        seq: info.header.seq,
        signer: info.signer,
        entry_count: info.header.entry_count,
        record_index: info.record_index,
        city_batches: info.city_batches.iter().map(hex32).collect(),
        checkpoint: covering.as_ref().map(CoveredBy::from),
    }))
}

fn checkpoint_reply(state: &GlobalState, info: &CheckpointInfo) -> CheckpointReply {
    CheckpointReply {
        checkpoint: (&info.signed).into(),
        record_index: info.record_index,
        signer: address_of(&state.public_key),
        public_key: state.public_key.clone(),
    }
}

async fn latest_checkpoint(state: web::Data<GlobalState>) -> ApiResult<HttpResponse> {
    let info = state
        .store
        .latest_checkpoint()
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("no checkpoint has been written yet"))?;
    Ok(HttpResponse::Ok().json(checkpoint_reply(&state, &info)))
}

fn parse_seq(s: &str) -> ApiResult<u64> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("a checkpoint number is a non-negative integer, not {s:?}"),
        )
    })
}

async fn checkpoint_by_seq(
    path: web::Path<String>,
    state: web::Data<GlobalState>,
) -> ApiResult<HttpResponse> {
    let seq = parse_seq(&path)?;
    let info = state
        .store
        .checkpoint(seq)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no checkpoint {seq}")))?;
    Ok(HttpResponse::Ok().json(checkpoint_reply(&state, &info)))
}

/// `GET /v1/checkpoints/proof?batch=ID[&checkpoint=SEQ]`: the proof against checkpoint
/// SEQ (default: the latest), which must cover the batch.
async fn checkpoint_proof(
    req: HttpRequest,
    state: web::Data<GlobalState>,
) -> ApiResult<HttpResponse> {
    let q = query(&req, &["batch", "checkpoint"])?;
    let Some(batch) = q.get("batch") else {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "batch (a city batch id) is required",
        ));
    };
    let id = parse_id(batch, "batch")?;
    let wanted = number(&q, "checkpoint")?;
    let place = state
        .store
        .city_batch(&id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no city batch {batch}")))?;
    let info = match wanted {
        Some(seq) => state
            .store
            .checkpoint(seq)
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(format!("no checkpoint {seq}")))?,
        None => state
            .store
            .latest_checkpoint()
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "not_checkpointed",
                    "no checkpoint has been written yet",
                )
            })?,
    };
    let cp = &info.signed.checkpoint;
    if place.record_index >= cp.size {
        return Err(ApiError::new(
            404,
            "not_checkpointed",
            format!(
                "checkpoint {} covers {} records; city batch {batch} is in record {}",
                cp.seq, cp.size, place.record_index
            ),
        ));
    }
    let store = state.store.clone();
    let (record_index, size) = (place.record_index, cp.size);
    let (record, record_proof, batch_signed) = web::block(move || {
        let record = store.record_body(record_index).map_err(|e| e.to_string())?;
        let proof = store
            .log()
            .inclusion_proof(record_index, size)
            .map_err(|e| e.to_string())?;
        let batch = store
            .received_batch(record_index)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((record, proof, batch))
    })
    .await
    .map_err(|e| internal("reading the log", e))?
    .map_err(|e| internal("reading the log", e))?;
    let record = record.ok_or_else(|| internal("reading the log", "record missing"))?;
    let tree = entries_tree(&batch_signed.batch.entries);
    let entry_proof = tree
        .inclusion_proof(u64::from(place.entry_index), tree.len())
        .map_err(|e| internal("the entries tree", e))?;
    let continent_key = state
        .check
        .key_of(&batch_signed.signer)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(CheckpointProof {
        batch_id: hex32(&id),
        checkpoint: (&info.signed).into(),
        signer: address_of(&state.public_key),
        public_key: state.public_key.clone(),
        record_index: place.record_index,
        record,
        record_proof,
        continent_batch_id: hex32(&place.continent_batch_id),
        continent_signer: batch_signed.signer.clone(),
        continent_public_key: continent_key,
        entry_index: place.entry_index,
        entry_proof,
    }))
}

/// `GET /v1/federation/status` on the global node.
#[derive(Debug, Serialize)]
pub struct GlobalStatusReply {
    pub role: &'static str,
    pub continent_batches: u64,
    pub city_batches: u64,
    pub checkpoints: u64,
    pub log_records: u64,
    pub latest_checkpoint: Option<CoveredBy>,
}

async fn global_status(state: web::Data<GlobalState>) -> ApiResult<HttpResponse> {
    let c = state.store.counts().map_err(store_error)?;
    let latest = state.store.latest_checkpoint().map_err(store_error)?;
    Ok(HttpResponse::Ok().json(GlobalStatusReply {
        role: "global",
        continent_batches: c.continent_batches,
        city_batches: c.city_batches,
        checkpoints: c.checkpoints,
        log_records: state.store.log().size(),
        latest_checkpoint: latest.as_ref().map(CoveredBy::from),
    }))
}

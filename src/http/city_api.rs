//! The public API of a city node (API.md): submit a transaction, read transactions,
//! batches, storage nodes and the supervision tree.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use tokio::sync::oneshot;

use super::common::{read_body, require_json};
use super::{ApiError, ApiResult};
use crate::actors::failover_supervisor::{CHILDREN, Slot, SupervisorMsg};
use crate::actors::intake::{
    IntakeLimits, IntakeMsg, Receipt, StatusIndex, SubmitError, TxView, check_policy,
};
use crate::actors::mailbox::{Mailbox, SendError};
use crate::actors::prioritizer::NodesSnapshot;
use crate::messages::{SignedTx, hex32, now_ms, parse_hex32};

/// What the city routes need, registered as `web::Data<CityState>`.
pub struct CityState {
    pub limits: IntakeLimits,
    pub max_body_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub intake: Slot<Mailbox<IntakeMsg>>,
    pub index: Arc<StatusIndex>,
    pub nodes: NodesSnapshot,
    /// Set only with `[supervisor] fault_injection`.
    pub supervisor: Option<ractor::ActorRef<SupervisorMsg>>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tx", web::post().to(submit))
        .route("/v1/tx/{tx_id}", web::get().to(get_tx))
        .route("/v1/batches/{batch_id}", web::get().to(get_batch))
        .route("/v1/nodes", web::get().to(nodes))
        .route("/v1/actors/{name}/panic", web::post().to(inject_panic));
}

fn rejected(e: ApiError) -> ApiError {
    metrics::counter!(crate::metrics::TX_REJECTED, "reason" => e.code).increment(1);
    e
}

async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let arrived = Instant::now();
    require_json(&req).map_err(rejected)?;
    let body = read_body(&req, payload, state.max_body_bytes)
        .await
        .map_err(rejected)?;
    let intake = state
        .intake
        .read()
        .expect("slot lock poisoned")
        .clone()
        .ok_or_else(|| rejected(ApiError::storage_unavailable("the pipeline is not running")))?;
    // Shed load before spending a signature verification on it.
    if intake.depth() >= intake.capacity() {
        return Err(rejected(ApiError::overloaded("intake queue is full")));
    }
    let tx = SignedTx::from_request_bytes(&body).map_err(|e| rejected(e.into()))?;
    check_policy(&tx, &state.limits, now_ms()).map_err(|e| rejected(e.into()))?;

    let (reply, answer) = oneshot::channel();
    intake
        .try_send(IntakeMsg::Submit { tx, arrived, reply })
        .map_err(|e| {
            rejected(match e {
                SendError::Full(_) => ApiError::overloaded("intake queue is full"),
                SendError::Closed(_) => ApiError::storage_unavailable("the node is shutting down"),
            })
        })?;
    let result = match tokio::time::timeout(state.request_timeout, answer).await {
        Ok(Ok(result)) => result,
        // The Intake went away with the reply channel: it failed (and is being restarted)
        // or the node is stopping. Nothing was promised.
        Ok(Err(_dropped)) => {
            return Err(rejected(ApiError::storage_unavailable(
                "the pipeline restarted before this transaction was durable; retrying it is safe",
            )));
        }
        Err(_elapsed) => {
            return Err(rejected(ApiError::storage_unavailable(format!(
                "not durable within {:?}; retrying the same transaction is safe",
                state.request_timeout
            ))));
        }
    };
    match result {
        Ok(r) => Ok(HttpResponse::Ok().json(receipt_json(&r))),
        Err(SubmitError::Overloaded(n)) => Err(ApiError::overloaded(format!(
            "{n} transactions in flight; retry shortly"
        ))),
        Err(e) => Err(ApiError::storage_unavailable(e.to_string())),
    }
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    json!({
        "tx_id": hex32(&r.tx_id),
        "status": "stored",
        "tier": r.tier,
        "batch_id": hex32(&r.batch_id),
        "acks": r.acks,
        "flag": r.flag,
        "duplicate": r.duplicate,
    })
}

fn parse_id(s: &str, what: &str) -> ApiResult<[u8; 32]> {
    parse_hex32(s).ok_or_else(|| {
        ApiError::bad_request("invalid_id", format!("{what} must be 64 hex characters"))
    })
}

fn index_error(e: crate::storage::city_store::CityStoreError) -> ApiError {
    tracing::error!(error = %e, "reading the status index failed");
    ApiError::new(500, "internal", e.to_string())
}

async fn get_tx(path: web::Path<String>, state: web::Data<CityState>) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "tx_id")?;
    let view = state
        .index
        .tx(&id)
        .map_err(index_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown transaction {}", path.as_str())))?;
    let parse = |canonical: &str| -> serde_json::Value {
        serde_json::from_str(canonical).expect("the index holds canonical JSON")
    };
    let body = match view {
        TxView::Pending(p) => json!({
            "tx_id": hex32(&id), "status": "pending", "tier": null, "batch_id": null,
            "holders": [], "flag": p.flag, "tx": parse(&p.canonical),
        }),
        TxView::Stored(r) => json!({
            "tx_id": hex32(&id), "status": "stored", "tier": r.tier,
            "batch_id": hex32(&r.batch_id), "holders": r.holders, "flag": r.flag,
            "tx": parse(&r.canonical),
        }),
    };
    Ok(HttpResponse::Ok().json(body))
}

async fn get_batch(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "batch_id")?;
    let b = state
        .index
        .batch(&id)
        .map_err(index_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown batch {}", path.as_str())))?;
    let h = &b.header;
    Ok(HttpResponse::Ok().json(json!({
        "batch_id": hex32(&id),
        "city_id": h.city_id,
        "seq": h.seq,
        "parents": h.parents.iter().map(hex32).collect::<Vec<_>>(),
        "tx_ids": b.tx_ids.iter().map(hex32).collect::<Vec<_>>(),
        "merkle_root": hex32(&h.merkle_root),
        "flag": h.flag,
        "created_at_ms": h.created_at_ms,
        "tier": b.tier,
        "holders": b.holders,
        "acks": b.acks.iter().map(|a| json!({
            "holder_id": a.holder_id,
            "held_hash": hex32(&a.held_hash),
            "time_ms": a.time_ms,
            "signature": B64.encode(&a.signature),
        })).collect::<Vec<_>>(),
    })))
}

/// Fault injection: `POST /v1/actors/{name}/panic` makes that actor panic. 404 unless
/// `[supervisor] fault_injection = true`.
async fn inject_panic(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let Some(supervisor) = &state.supervisor else {
        return Err(ApiError::not_found("fault injection is disabled"));
    };
    let name = path.into_inner();
    if !CHILDREN.contains(&name.as_str()) {
        return Err(ApiError::not_found(format!("no actor {name:?}")));
    }
    supervisor
        .cast(SupervisorMsg::Inject(name.clone()))
        .map_err(|_| ApiError::storage_unavailable("the supervisor is not running"))?;
    Ok(HttpResponse::Accepted().json(json!({"injected": name})))
}

async fn nodes(state: web::Data<CityState>) -> HttpResponse {
    let views = state.nodes.read().expect("snapshot lock poisoned").clone();
    HttpResponse::Ok().json(views)
}

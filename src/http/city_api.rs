//! The public API of a city node (docs/API.md): submit a transaction, read transactions,
//! batches, storage nodes and the supervision tree. Every answer is a `Serialize` type
//! below, so the contract is visible in the code; each handler's `#[utoipa::path]` says
//! which statuses it answers with which body, and [`super::openapi`] gathers them into the
//! city's OpenAPI document.

use std::time::Instant;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::common::{Endpoint, parse_id, read_body, register, require_json};
use super::error::ErrorReply;
use super::error::OrError;
use super::{ApiError, ApiResult};
use crate::city::CityHandle;
use crate::city::handle::{AdmitError, Admitted, InjectError};
use crate::city::msgs::{Receipt, SubmitError};
use crate::city::reads::{ReadError, Reader};
use crate::city::status::TxView;
use crate::messages::{Dep, DepFrom, FlagKind, ObjectHead, ObjectKind, PohAck, Tier, hex32};
use crate::storage::city_store::{BatchRecord, CityStoreError, UplinkState};

/// What the city routes need, registered as `web::Data<CityState>`.
pub struct CityState {
    pub city: CityHandle,
    /// The read path: bodies from the body cache or the tiers.
    pub reader: std::sync::Arc<Reader>,
    pub max_body_bytes: usize,
}

/// The city's own routes.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/tx", submit),
        Endpoint::new(Method::GET, "/v1/tx/{tx_id}", get_tx),
        Endpoint::new(Method::GET, "/v1/batches/{batch_id}", get_batch),
        Endpoint::new(Method::GET, "/v1/objects/{object_id}", get_object),
        Endpoint::new(Method::GET, "/v1/nodes", nodes),
        Endpoint::new(Method::GET, "/v1/rewards", all_rewards),
        Endpoint::new(Method::GET, "/v1/rewards/{node_id}", node_rewards),
        Endpoint::new(Method::POST, "/v1/actors/{name}/panic", inject_panic),
    ]
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    register(cfg, endpoints());
}

/// `POST /v1/tx` → 200: the transaction is durable.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptReply {
    pub tx_id: String,
    /// Always `stored`.
    pub status: &'static str,
    pub tier: Tier,
    pub batch_id: String,
    pub acks: usize,
    pub flag: FlagKind,
    pub duplicate: bool,
}

impl From<&Receipt> for ReceiptReply {
    fn from(r: &Receipt) -> Self {
        Self {
            tx_id: hex32(&r.tx_id),
            status: "stored",
            tier: r.tier,
            batch_id: hex32(&r.batch_id),
            acks: r.acks,
            flag: r.flag,
            duplicate: r.duplicate,
        }
    }
}

/// `GET /v1/tx/{id}`: a pending or stored transaction with its signed JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TxReply {
    pub tx_id: String,
    /// `pending`, `stored` or `lost`.
    pub status: &'static str,
    pub tier: Option<Tier>,
    pub batch_id: Option<String>,
    pub holders: Vec<String>,
    pub flag: FlagKind,
    /// The signed transaction; null only in a 503 `body_unavailable` answer.
    #[schema(value_type = Option<Object>)]
    pub tx: Option<serde_json::Value>,
    /// Where `tx` came from: `pending` (in memory, not durable yet), `cache`, `light`,
    /// `full`, `mongo` or `log`; null when no source answered.
    pub served_from: Option<&'static str>,
}

/// 503 `body_unavailable`: the error, with every field the index still answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnavailableReply<'a, T: Serialize> {
    pub error: super::error::ErrorBody<'a>,
    #[serde(flatten)]
    pub index: T,
}

/// One transaction of `GET /v1/batches/{id}?txs=true`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchTxReply {
    pub tx_id: String,
    #[schema(value_type = Object)]
    pub tx: serde_json::Value,
}

/// `GET /v1/batches/{id}`: a durable batch, where it is and the acks that prove it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchReply {
    pub batch_id: String,
    /// `stored`, or `lost` when its only copy was lost from the immutable log and is not
    /// found elsewhere yet (then `tier` is null and `holders` empty).
    pub status: &'static str,
    pub city_id: String,
    pub seq: u64,
    pub parents: Vec<String>,
    pub tx_ids: Vec<String>,
    pub merkle_root: String,
    pub flag: FlagKind,
    pub created_at_ms: u64,
    pub tier: Option<Tier>,
    pub holders: Vec<String>,
    pub acks: Vec<AckReply>,
    /// Where the batch stands with the continent (null for a city without one).
    pub continent: Option<ContinentReply>,
    /// With `?txs=true`: the transactions, in batch order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txs: Option<Vec<BatchTxReply>>,
    /// With `?txs=true`: where the body came from (as for `GET /v1/tx/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_from: Option<&'static str>,
    /// With `?txs=true`: the object dependency edges the batch records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deps: Option<Vec<DepReply>>,
}

/// Where a dependency edge starts, as `DepReply::from` is written: an index in `txs`, or
/// the id of a transaction of an earlier batch.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only describes `DepReply::from` in the OpenAPI document.
pub enum DepFromReply {
    InBatch(u32),
    Earlier(String),
}

/// One dependency edge of `GET /v1/batches/{id}?txs=true`: transaction `to` (an index in
/// `txs`) follows `from` on `object`; `from` is an index in `txs` (a number) or the id of
/// a transaction of an earlier batch (a hex string).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DepReply {
    #[schema(value_type = DepFromReply)]
    pub from: serde_json::Value,
    pub to: u32,
    pub object: String,
    /// `read_after_write`, `write_after_write` or `write_after_read`.
    pub kind: &'static str,
}

impl From<&Dep> for DepReply {
    fn from(d: &Dep) -> Self {
        Self {
            from: match d.from {
                DepFrom::InBatch(i) => i.into(),
                DepFrom::Earlier(tx) => hex32(&tx).into(),
            },
            to: d.to,
            object: d.object.clone(),
            kind: d.kind.as_str(),
        }
    }
}

/// `GET /v1/objects/{id}`: an object's durable head.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ObjectReply {
    pub id: String,
    pub kind: ObjectKind,
    /// The sender who first wrote it (owned objects), else null.
    pub owner: Option<String>,
    /// Writes recorded so far.
    pub version: u64,
    /// The last transaction that wrote it and its batch (null before any write).
    pub last_tx: Option<String>,
    pub last_batch: Option<String>,
}

impl ObjectReply {
    fn of(id: &str, h: ObjectHead) -> Self {
        Self {
            id: id.to_string(),
            kind: h.kind,
            owner: h.owner,
            version: h.version,
            last_tx: h.last_tx.as_ref().map(hex32),
            last_batch: h.last_batch.as_ref().map(hex32),
        }
    }
}

/// Where a batch stands with the city's continent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContinentReply {
    /// `waiting` (in the outbox) or `merged`.
    pub status: &'static str,
    /// The continent node that merged it, the continent batch and the batch's place in it.
    pub node: Option<String>,
    pub continent_batch_id: Option<String>,
    pub continent_seq: Option<u64>,
    pub entry_index: Option<u32>,
    /// When the continent's answer came (ms since the epoch).
    pub merged_at_ms: Option<u64>,
}

impl From<UplinkState> for ContinentReply {
    fn from(s: UplinkState) -> Self {
        match s {
            UplinkState::Waiting => Self {
                status: "waiting",
                node: None,
                continent_batch_id: None,
                continent_seq: None,
                entry_index: None,
                merged_at_ms: None,
            },
            UplinkState::Merged(p) => Self {
                status: "merged",
                node: Some(p.node),
                continent_batch_id: Some(hex32(&p.continent_batch_id)),
                continent_seq: Some(p.continent_seq),
                entry_index: Some(p.entry_index),
                merged_at_ms: Some(p.time_ms),
            },
        }
    }
}

/// One signed proof-of-hold ack.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AckReply {
    pub holder_id: String,
    pub held_hash: String,
    pub time_ms: u64,
    /// Base64 of the holder's ML-DSA-65 signature.
    pub signature: String,
    /// For a light node's ack: the piece it holds (`held_hash` is then the piece's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub piece: Option<PieceReply>,
}

/// Which piece of the batch a light holder acked, as its ack binds it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PieceReply {
    pub index: u8,
    pub data_pieces: u8,
    pub parity_pieces: u8,
    pub sealed_len: u64,
    pub sealed_hash: String,
}

impl From<&PohAck> for AckReply {
    fn from(a: &PohAck) -> Self {
        Self {
            holder_id: a.holder_id.clone(),
            held_hash: hex32(&a.held_hash),
            time_ms: a.time_ms,
            signature: B64.encode(&a.signature),
            piece: a.piece.map(|p| PieceReply {
                index: p.index,
                data_pieces: p.coding.data_pieces,
                parity_pieces: p.coding.parity_pieces,
                sealed_len: p.sealed_len,
                sealed_hash: hex32(&p.sealed_hash),
            }),
        }
    }
}

impl BatchReply {
    fn of(id: &[u8; 32], b: &BatchRecord, continent: Option<UplinkState>) -> Self {
        let h = &b.header;
        Self {
            batch_id: hex32(id),
            status: if b.lost { "lost" } else { "stored" },
            city_id: h.city_id.clone(),
            seq: h.seq,
            parents: h.parents.iter().map(hex32).collect(),
            tx_ids: b.tx_ids.iter().map(hex32).collect(),
            merkle_root: hex32(&h.merkle_root),
            flag: h.flag,
            created_at_ms: h.created_at_ms,
            tier: (!b.lost).then_some(b.tier),
            holders: if b.lost { vec![] } else { b.holders.clone() },
            acks: b.acks.iter().map(AckReply::from).collect(),
            continent: continent.map(ContinentReply::from),
            txs: None,
            served_from: None,
            deps: None,
        }
    }
}

/// `POST /v1/actors/{name}/panic` → 202.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InjectedReply {
    pub injected: String,
}

/// Counts a refusal the HTTP layer made itself (the Intake counts its own).
fn rejected(e: ApiError) -> ApiError {
    metrics::counter!(crate::metrics::TX_REJECTED, "reason" => e.code).increment(1);
    e
}

/// Submits a signed transaction; answers once it is durable.
#[utoipa::path(post, path = "/v1/tx", tag = "transactions",
    request_body(content = crate::messages::TxRequest, content_type = "application/json",
        description = "A signed transaction (docs/API.md, \"Transaction request\")."),
    responses(
        (status = 200, description = "Durable (or a known transaction sent again: `duplicate` true).", body = ReceiptReply),
        (status = 400, description = "Not a valid request: `invalid_json`, `duplicate_key`, `unknown_field`, `missing_field`, `invalid_field`, `invalid_name`, `invalid_objects`, `sender_mismatch`, `timestamp_skew`, `payload_too_large`, `wrong_city`, `wrong_continent`, `pop_required`, `pop_outside_city`, `invalid_body`, ...", body = ErrorReply),
        (status = 401, description = "`bad_signature`.", body = ErrorReply),
        (status = 403, description = "`kind_not_allowed`: a node-internal kind.", body = ErrorReply),
        (status = 408, description = "`request_timeout`: the body stopped arriving.", body = ErrorReply),
        (status = 409, description = "`nonce_reused` or `object_conflict`; nothing changed.", body = ErrorReply),
        (status = 413, description = "`payload_too_large`: the body is over `[intake] max_body_bytes`.", body = ErrorReply),
        (status = 415, description = "`unsupported_media_type`: the content type is not application/json.", body = ErrorReply),
        (status = 500, description = "`internal`: the node could not run the check (a fault of the node).", body = ErrorReply),
        (status = 503, description = "`overloaded` or `storage_unavailable` (with `Retry-After`): nothing was acknowledged; retry.", body = ErrorReply),
    ))]
pub(crate) async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let arrived = Instant::now();
    require_json(&req).map_err(rejected)?;
    let body = read_body(&req, payload, state.max_body_bytes)
        .await
        .map_err(rejected)?;
    // Held until the answer is sent: a place among the transactions the city admits at once.
    let _place = state.city.enter().map_err(|e| rejected(overloaded(&e)))?;
    // Parsing and the ML-DSA-65 check run on the blocking pool (a few threads per worker),
    // so the workers' event loops stay free to read requests and refuse them at once.
    let city = state.city.clone();
    let admitted = web::block(move || city.admit(&body))
        .await
        .map_err(|e| rejected(ApiError::new(500, "internal", e.to_string())))?;
    let tx = match admitted {
        Ok(Admitted::New(tx)) => tx,
        Ok(Admitted::Known(receipt)) => {
            return Ok(HttpResponse::Ok().json(ReceiptReply::from(&receipt)));
        }
        Err(AdmitError::Index(e)) => {
            return Err(rejected(ApiError::storage_unavailable(e.to_string())));
        }
        Err(e @ AdmitError::QueueFull) => {
            return Err(rejected(ApiError::overloaded(e.to_string())));
        }
        Err(AdmitError::Invalid(e)) => return Err(rejected(e.into())),
    };
    match state.city.submit(tx, arrived).await {
        Ok(r) => Ok(HttpResponse::Ok().json(ReceiptReply::from(&r))),
        Err(e @ SubmitError::Overloaded(_)) => Err(overloaded(&e)),
        // Refused before the Intake took it, or lost with a failed actor: counted here.
        Err(e @ SubmitError::QueueFull) => Err(rejected(ApiError::overloaded(e.to_string()))),
        // Counted by the Intake.
        Err(e @ SubmitError::NonceReused { .. }) => {
            Err(ApiError::new(409, "nonce_reused", e.to_string()))
        }
        Err(e @ SubmitError::ObjectConflict(_)) => {
            Err(ApiError::new(409, "object_conflict", e.to_string()))
        }
        Err(e @ (SubmitError::Restarted | SubmitError::TimedOut(_))) => {
            Err(rejected(ApiError::storage_unavailable(e.to_string())))
        }
        Err(e) => Err(ApiError::storage_unavailable(e.to_string())),
    }
}

fn overloaded(e: &SubmitError) -> ApiError {
    match e {
        SubmitError::Overloaded(n) => {
            ApiError::overloaded(format!("{n} transactions in flight; retry shortly"))
        }
        other => ApiError::overloaded(other.to_string()),
    }
}

fn index_error(e: CityStoreError) -> ApiError {
    tracing::error!(error = %e, "reading the status index failed");
    ApiError::new(500, "internal", e.to_string())
}

/// 503 `body_unavailable` (Retry-After: 1) carrying the index fields.
fn unavailable<T: Serialize>(message: &str, index: T) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((actix_web::http::header::RETRY_AFTER, 1))
        .json(UnavailableReply {
            error: super::error::ErrorBody {
                code: "body_unavailable",
                message,
            },
            index,
        })
}

fn read_refused(e: ReadError) -> ApiError {
    match e {
        e @ ReadError::Overloaded(_) => ApiError::overloaded(e.to_string()),
        ReadError::Index(e) => index_error(e),
        e @ ReadError::Unavailable(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(503, "body_unavailable", e.to_string())
        },
    }
}

fn parse_canonical(canonical: &str) -> serde_json::Value {
    serde_json::from_str(canonical).expect("stored transactions are canonical JSON")
}

/// A transaction: where it is, and its signed body.
#[utoipa::path(get, path = "/v1/tx/{tx_id}", tag = "transactions",
    params(("tx_id" = String, Path, description = "The transaction id (64 hex characters).", pattern = "^[0-9a-fA-F]{64}$")),
    responses(
        (status = 200, description = "Pending or stored, with its signed body.", body = TxReply),
        (status = 400, description = "`invalid_id`: not 64 hex characters.", body = ErrorReply),
        (status = 404, description = "`not_found`: unknown transaction.", body = ErrorReply),
        (status = 500, description = "`internal`: the status index could not be read.", body = ErrorReply),
        (status = 503, description = "`body_unavailable` (no source answered in time; the index fields are in the answer) or `overloaded`, with `Retry-After`.", body = OrError<UnavailableReply<TxReply>>),
    ))]
pub(crate) async fn get_tx(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "tx_id")?;
    let view = state
        .city
        .tx(&id)
        .map_err(index_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown transaction {}", path.as_str())))?;
    let r = match view {
        TxView::Pending(p) => {
            return Ok(HttpResponse::Ok().json(TxReply {
                tx_id: hex32(&id),
                status: "pending",
                tier: None,
                batch_id: None,
                holders: vec![],
                flag: p.flag,
                tx: Some(parse_canonical(&p.canonical)),
                served_from: Some("pending"),
            }));
        }
        TxView::Stored(r) => r,
    };
    // A batch lost from the log and not found elsewhere yet: not stored.
    let mut reply = TxReply {
        tx_id: hex32(&id),
        status: if r.lost { "lost" } else { "stored" },
        tier: (!r.lost).then_some(r.tier),
        batch_id: Some(hex32(&r.batch_id)),
        holders: if r.lost { vec![] } else { r.holders },
        flag: r.flag,
        tx: None,
        served_from: None,
    };
    let permit = state.reader.enter().map_err(read_refused)?;
    let Some(batch) = state.city.batch(&r.batch_id).map_err(index_error)? else {
        return Ok(unavailable("the index has no record of its batch", reply));
    };
    match state.reader.batch(&permit, &batch).await {
        Ok(opened) => match opened.tx(&id) {
            Some(tx) => {
                reply.tx = Some(parse_canonical(&tx.canonical));
                reply.served_from = Some(opened.from.as_str());
                Ok(HttpResponse::Ok().json(reply))
            }
            None => {
                tracing::error!(tx = %hex32(&id), batch = %hex32(&r.batch_id), "the index places a transaction in a batch that does not hold it");
                Ok(unavailable("its batch does not hold it", reply))
            }
        },
        Err(e @ ReadError::Unavailable(_)) => Ok(unavailable(&e.to_string(), reply)),
        Err(e) => Err(read_refused(e)),
    }
}

/// A durable batch, where it is and the acks that prove it.
#[utoipa::path(get, path = "/v1/batches/{batch_id}", tag = "transactions",
    params(
        ("batch_id" = String, Path, description = "The batch id (64 hex characters).", pattern = "^[0-9a-fA-F]{64}$"),
        ("txs" = Option<bool>, Query, description = "Also the batch's transactions and their dependency edges."),
    ),
    responses(
        (status = 200, description = "The batch.", body = BatchReply),
        (status = 400, description = "`invalid_id`, `invalid_parameter` (`txs` not `true` or `false`, an unknown or repeated parameter) or `invalid_query`.", body = ErrorReply),
        (status = 404, description = "`not_found`: unknown batch.", body = ErrorReply),
        (status = 500, description = "`internal`: the status index could not be read.", body = ErrorReply),
        (status = 503, description = "With `txs=true`: `body_unavailable` (the batch fields are in the answer) or `overloaded`, with `Retry-After`.", body = OrError<UnavailableReply<BatchReply>>),
    ))]
pub(crate) async fn get_batch(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let id = parse_id(&path, "batch_id")?;
    // `?txs=true`: also the transactions, read back as for `GET /v1/tx/{id}`.
    let with_txs = match super::log_api::query(&req, &["txs"])?
        .get("txs")
        .map(String::as_str)
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("txs must be true or false, not {other:?}"),
            ));
        }
    };
    let b = state
        .city
        .batch(&id)
        .map_err(index_error)?
        .ok_or_else(|| ApiError::not_found(format!("unknown batch {}", path.as_str())))?;
    let continent = state.city.uplink(&id, b.header.seq).map_err(index_error)?;
    let mut reply = BatchReply::of(&id, &b, continent);
    if !with_txs {
        return Ok(HttpResponse::Ok().json(reply));
    }
    let permit = state.reader.enter().map_err(read_refused)?;
    match state.reader.batch(&permit, &b).await {
        Ok(opened) if opened.batch.tx_ids() == b.tx_ids => {
            reply.txs = Some(
                opened
                    .batch
                    .body
                    .iter()
                    .map(|t| BatchTxReply {
                        tx_id: hex32(&t.id()),
                        tx: parse_canonical(&t.canonical),
                    })
                    .collect(),
            );
            reply.served_from = Some(opened.from.as_str());
            reply.deps = Some(opened.batch.deps.iter().map(DepReply::from).collect());
            Ok(HttpResponse::Ok().json(reply))
        }
        Ok(_) => {
            tracing::error!(batch = %hex32(&id), "the batch read back lists other transactions than its index record");
            Ok(unavailable(
                "the batch read back does not match its index record",
                reply,
            ))
        }
        Err(e @ ReadError::Unavailable(_)) => Ok(unavailable(&e.to_string(), reply)),
        Err(e) => Err(read_refused(e)),
    }
}

/// `GET /v1/objects/{id}`: the object's durable head, 404 `unknown_object` when the city
/// has recorded no transaction touching it.
#[utoipa::path(get, path = "/v1/objects/{object_id}", tag = "transactions",
    params(("object_id" = String, Path, description = "The object's id (the name rule of docs/API.md).")),
    responses(
        (status = 200, description = "The object's durable head.", body = ObjectReply),
        (status = 400, description = "`invalid_name`: the id breaks the name rule.", body = ErrorReply),
        (status = 404, description = "`unknown_object`: no stored transaction touched it.", body = ErrorReply),
        (status = 500, description = "`internal`: the status index could not be read.", body = ErrorReply),
    ))]
pub(crate) async fn get_object(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    crate::messages::names::check_name("object_id", &id)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let head = state
        .city
        .object(&id)
        .map_err(index_error)?
        .ok_or_else(|| {
            ApiError::new(
                404,
                "unknown_object",
                format!("no transaction touched object {id:?}"),
            )
        })?;
    Ok(HttpResponse::Ok().json(ObjectReply::of(&id, head)))
}

/// Fault injection: `POST /v1/actors/{name}/panic` makes that actor panic. 404 unless
/// `[supervisor] fault_injection = true`.
#[utoipa::path(post, path = "/v1/actors/{name}/panic", tag = "operations",
    params(("name" = String, Path, description = "The actor (`GET /v1/actors`).")),
    responses(
        (status = 202, description = "The actor was told to panic.", body = InjectedReply),
        (status = 404, description = "`not_found`: fault injection is off, or no such actor.", body = ErrorReply),
        (status = 503, description = "`storage_unavailable`: the supervisor is down.", body = ErrorReply),
    ))]
pub(crate) async fn inject_panic(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    match state.city.inject(&path) {
        Ok(actor) => Ok(HttpResponse::Accepted().json(InjectedReply {
            injected: actor.to_string(),
        })),
        Err(e @ (InjectError::Disabled | InjectError::UnknownActor(_))) => {
            Err(ApiError::not_found(e.to_string()))
        }
        Err(e @ InjectError::SupervisorDown) => Err(ApiError::storage_unavailable(e.to_string())),
    }
}

/// The storage nodes this city knows, with their scores.
#[utoipa::path(get, path = "/v1/nodes", tag = "storage",
    responses((status = 200, description = "Every configured storage node.", body = Vec<crate::city::node_policy::NodeView>)))]
pub(crate) async fn nodes(state: web::Data<CityState>) -> HttpResponse {
    HttpResponse::Ok().json(state.city.nodes())
}

/// `GET /v1/rewards/{node_id}`: one storage node's standing in the rewards ledger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RewardReply {
    pub node_id: String,
    pub role: Option<crate::config::Role>,
    pub points: u64,
    pub write_acks: u64,
    pub repair_acks: u64,
    pub challenges_passed: u64,
    pub challenges_failed: u64,
    /// The node's score now (0–9), as `GET /v1/nodes` shows it; `null` for a node no
    /// longer configured.
    pub score: Option<u8>,
    /// What its repair challenges left of its reliability (1 until it failed one), the
    /// factor that multiplies its score.
    pub reliability: f64,
    pub last_credit_ms: Option<u64>,
}

impl RewardReply {
    fn of(
        node_id: String,
        account: crate::engines::rewards::Account,
        node: Option<&crate::city::node_policy::NodeView>,
    ) -> Self {
        Self {
            role: account.role.or(node.map(|n| n.role)),
            score: node.map(|n| n.score),
            node_id,
            points: account.points,
            write_acks: account.write_acks,
            repair_acks: account.repair_acks,
            challenges_passed: account.challenges_passed,
            challenges_failed: account.challenges_failed,
            reliability: account.reliability(),
            last_credit_ms: account.last_credit_ms,
        }
    }
}

/// A configured storage node with no ledger entry yet has an empty account; an id the
/// city never knew is 404 `unknown_node`.
#[utoipa::path(get, path = "/v1/rewards/{node_id}", tag = "storage",
    params(("node_id" = String, Path, description = "A storage node's id.")),
    responses(
        (status = 200, description = "The node's standing in the rewards ledger.", body = RewardReply),
        (status = 404, description = "`unknown_node`: the city never knew this node.", body = ErrorReply),
        (status = 500, description = "`internal`: the ledger could not be read.", body = ErrorReply),
    ))]
pub(crate) async fn node_rewards(
    path: web::Path<String>,
    state: web::Data<CityState>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let nodes = state.city.nodes();
    let node = nodes.iter().find(|n| n.node_id == id);
    let account = state.city.reward_account(&id).map_err(index_error)?;
    if account.is_none() && node.is_none() {
        return Err(ApiError::new(
            404,
            "unknown_node",
            format!("no storage node {id:?} is known to this city"),
        ));
    }
    Ok(HttpResponse::Ok().json(RewardReply::of(id, account.unwrap_or_default(), node)))
}

/// `GET /v1/rewards`: every configured storage node and every node in the ledger, by id.
#[utoipa::path(get, path = "/v1/rewards", tag = "storage",
    responses(
        (status = 200, description = "Every storage node's standing, by id.", body = Vec<RewardReply>),
        (status = 500, description = "`internal`: the ledger could not be read.", body = ErrorReply),
    ))]
pub(crate) async fn all_rewards(state: web::Data<CityState>) -> ApiResult<HttpResponse> {
    let nodes = state.city.nodes();
    let mut accounts: std::collections::BTreeMap<String, crate::engines::rewards::Account> = state
        .city
        .reward_accounts()
        .map_err(index_error)?
        .into_iter()
        .collect();
    for n in &nodes {
        accounts.entry(n.node_id.clone()).or_default();
    }
    let replies: Vec<RewardReply> = accounts
        .into_iter()
        .map(|(id, account)| {
            let node = nodes.iter().find(|n| n.node_id == id);
            RewardReply::of(id, account, node)
        })
        .collect();
    Ok(HttpResponse::Ok().json(replies))
}

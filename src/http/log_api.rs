//! The immutable log's proofs on a city node (docs/API.md, "The immutable log"): the
//! latest signed tree head, inclusion proofs for records (by index or by batch id),
//! consistency proofs between two tree sizes, and what the node lost from its log.
//!
//! Every answer is a `Serialize + Deserialize` type below: the node writes them and
//! `citychain log prove` / `log consistency` read them back and check them with
//! [`crate::storage::immutable_log::merkle`] and the head's signature.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::common::{Endpoint, register};
use super::error::ErrorReply;
use super::{ApiError, ApiResult};
use crate::crypto::Hash32;
use crate::messages::{hex32, parse_hex32};
use crate::storage::city_store::CityStore;
use crate::storage::immutable_log::ImmutableLog;
use crate::storage::immutable_log::heads::{Loss, SignedHead, base64_bytes, hex_hash};
use crate::storage::immutable_log::merkle::{ProofError, leaf_hash};
use crate::storage::log_notary::LogNotary;

/// Lost batches listed by `GET /v1/log/status`, at most.
const MAX_LISTED_LOST: usize = 1000;

/// What the log routes need, registered as `web::Data<LogState>`.
pub struct LogState {
    pub log: Arc<ImmutableLog>,
    pub notary: Arc<LogNotary>,
    /// The city's status index (city nodes): what `/v1/log/status` lists as lost. Continent
    /// and global nodes keep no batch on their logs for a city, so they lose none of them.
    pub store: Option<Arc<CityStore>>,
}

/// The log's routes.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/v1/log/head", head),
        Endpoint::new(Method::GET, "/v1/log/status", status),
        Endpoint::new(Method::GET, "/v1/log/proof/inclusion", inclusion),
        Endpoint::new(Method::GET, "/v1/log/proof/consistency", consistency),
    ]
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    register(cfg, endpoints());
}

/// `GET /v1/log/head`: the latest signed tree head and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeadReply {
    pub head: SignedHead,
    /// The signer's address (hex of the first 20 bytes of BLAKE3 of its public key).
    pub signer: String,
    /// Base64 of the signer's ML-DSA-65 public key.
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String)]
    pub public_key: Vec<u8>,
    /// Records in the log now; ahead of `head.size` until the next head is signed.
    pub log_records: u64,
}

/// `GET /v1/log/proof/inclusion`: record `index` is leaf `index` of the tree of `size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionReply {
    pub index: u64,
    pub size: u64,
    /// Root of the tree of the first `size` records.
    #[serde(with = "hex_hash")]
    #[schema(value_type = String)]
    pub root: Hash32,
    /// The signed head of exactly `size` records, if the node still has one.
    pub head: Option<SignedHead>,
    /// Base64 of the record's body, the bytes its leaf hash covers.
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String)]
    pub record: Vec<u8>,
    #[serde(with = "hex_hash")]
    #[schema(value_type = String)]
    pub leaf_hash: Hash32,
    /// The batch the record holds, when asked for by batch id.
    pub batch_id: Option<String>,
    /// The audit path, leaf to root, hex.
    #[serde(with = "hex_hashes")]
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<Hash32>,
}

/// `GET /v1/log/proof/consistency`: the tree of `from` records is a prefix of the tree of
/// `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyReply {
    pub from: u64,
    pub to: u64,
    #[serde(with = "hex_hash")]
    #[schema(value_type = String)]
    pub from_root: Hash32,
    #[serde(with = "hex_hash")]
    #[schema(value_type = String)]
    pub to_root: Hash32,
    /// Signed heads of exactly those sizes, if the node still has them.
    pub from_head: Option<SignedHead>,
    pub to_head: Option<SignedHead>,
    #[serde(with = "hex_hashes")]
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<Hash32>,
}

/// `GET /v1/log/status`: the log against its heads, and what it lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogStatusReply {
    pub log_records: u64,
    pub head: SignedHead,
    pub signer: String,
    /// Heads the node had signed that its log no longer matched at a start.
    pub losses: Vec<Loss>,
    /// Batches acknowledged on the log that it no longer holds and that were not found
    /// elsewhere yet (at most 1,000 listed); their transactions read `lost`.
    pub lost_batches: Vec<LostBatch>,
    pub lost_batches_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LostBatch {
    pub batch_id: String,
    pub seq: u64,
    pub tx_ids: Vec<String>,
}

/// The query parameters of a request: each at most once, none unknown.
pub(super) fn query(req: &HttpRequest, allowed: &[&str]) -> ApiResult<HashMap<String, String>> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("unknown parameter {k:?} (allowed: {})", allowed.join(", ")),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("parameter {k:?} given twice"),
            ));
        }
    }
    Ok(out)
}

pub(super) fn number(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("{name} must be a non-negative integer, not {v:?}"),
                )
            })
        })
        .transpose()
}

fn proof_error(e: ProofError) -> ApiError {
    let code = match e {
        ProofError::IndexOutOfRange { .. } => "index_out_of_range",
        ProofError::SizeOutOfRange { .. } => "size_out_of_range",
        ProofError::BadRange { .. } => "invalid_range",
        ProofError::Invalid(_) => "internal",
    };
    ApiError::bad_request(code, e.to_string())
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(500, "internal", format!("{what}: {e}"))
}

/// The latest signed tree head of the city's immutable log.
#[utoipa::path(get, path = "/v1/log/head", tag = "log",
    responses((status = 200, description = "The latest signed head and its signer.", body = HeadReply)))]
pub(crate) async fn head(state: web::Data<LogState>) -> HttpResponse {
    HttpResponse::Ok().json(HeadReply {
        head: state.notary.latest(),
        signer: state.notary.signer(),
        public_key: state.notary.public_key().to_vec(),
        log_records: state.log.size(),
    })
}

/// An inclusion proof for one record of the log.
#[utoipa::path(get, path = "/v1/log/proof/inclusion", tag = "log",
    params(
        ("index" = Option<u64>, Query, description = "The record's index (exactly one of `index` and `batch`)."),
        ("batch" = Option<String>, Query, description = "A batch id: the last record holding that batch.", pattern = "^[0-9a-fA-F]{64}$"),
        ("size" = Option<u64>, Query, description = "The tree size (default: the latest signed head's)."),
    ),
    responses(
        (status = 200, description = "The record and its audit path.", body = InclusionReply),
        (status = 400, description = "`invalid_parameter`, `invalid_query`, `invalid_id`, `index_out_of_range`, `size_out_of_range`.", body = ErrorReply),
        (status = 404, description = "`not_found`: the log holds no record of that batch.", body = ErrorReply),
        (status = 500, description = "`internal`: the record could not be read from the log.", body = ErrorReply),
    ))]
pub(crate) async fn inclusion(
    req: HttpRequest,
    state: web::Data<LogState>,
) -> ApiResult<HttpResponse> {
    let q = query(&req, &["index", "batch", "size"])?;
    let (index, batch_id) = match (number(&q, "index")?, q.get("batch")) {
        (Some(index), None) => (index, None),
        (None, Some(hex)) => {
            let id = parse_hex32(hex).ok_or_else(|| {
                ApiError::bad_request("invalid_id", "batch must be 64 hex characters")
            })?;
            let index = state.log.batch_record(&id).ok_or_else(|| {
                ApiError::not_found(format!("the log holds no record of batch {hex}"))
            })?;
            (index, Some(hex32(&id)))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "give exactly one of index or batch",
            ));
        }
    };
    let latest = state.notary.latest();
    let asked = number(&q, "size")?;
    let size = asked.unwrap_or(latest.size);
    if asked.is_none() && index >= size && index < state.log.size() {
        return Err(ApiError::bad_request(
            "index_out_of_range",
            format!(
                "record {index} is not covered by the latest signed head ({size} records) yet; retry shortly or name a size"
            ),
        ));
    }
    let proof = state
        .log
        .inclusion_proof(index, size)
        .map_err(proof_error)?;
    let root = state
        .log
        .root(size)
        .expect("a size that has a proof has a root");
    let log = state.log.clone();
    let record = web::block(move || log.record_body(index))
        .await
        .map_err(|e| internal("log reader", e))?
        .map_err(|e| internal("reading the log record", e))?
        .ok_or_else(|| internal("reading the log record", "gone"))?;
    Ok(HttpResponse::Ok().json(InclusionReply {
        index,
        size,
        root,
        head: state.notary.at(size),
        leaf_hash: leaf_hash(&record),
        record,
        batch_id,
        proof,
    }))
}

/// A consistency proof between two sizes of the log.
#[utoipa::path(get, path = "/v1/log/proof/consistency", tag = "log",
    params(
        ("from" = u64, Query, description = "The smaller tree size."),
        ("to" = Option<u64>, Query, description = "The larger tree size (default: the latest signed head's)."),
    ),
    responses(
        (status = 200, description = "The proof and both roots.", body = ConsistencyReply),
        (status = 400, description = "`invalid_parameter`, `invalid_query`, `invalid_range`, `size_out_of_range`.", body = ErrorReply),
    ))]
pub(crate) async fn consistency(
    req: HttpRequest,
    state: web::Data<LogState>,
) -> ApiResult<HttpResponse> {
    let q = query(&req, &["from", "to"])?;
    let from = number(&q, "from")?.ok_or_else(|| {
        ApiError::bad_request("invalid_parameter", "from (a tree size) is required")
    })?;
    let to = number(&q, "to")?.unwrap_or(state.notary.latest().size);
    let proof = state.log.consistency_proof(from, to).map_err(proof_error)?;
    let root = |size| {
        state
            .log
            .root(size)
            .expect("sizes that have a proof have roots")
    };
    Ok(HttpResponse::Ok().json(ConsistencyReply {
        from,
        to,
        from_root: root(from),
        to_root: root(to),
        from_head: state.notary.at(from),
        to_head: state.notary.at(to),
        proof,
    }))
}

/// The log against its signed heads, and what it lost.
#[utoipa::path(get, path = "/v1/log/status", tag = "log",
    responses(
        (status = 200, description = "Records, the latest head, losses and lost batches.", body = LogStatusReply),
        (status = 500, description = "`internal`: the status index could not be read.", body = ErrorReply),
    ))]
pub(crate) async fn status(state: web::Data<LogState>) -> ApiResult<HttpResponse> {
    let store = state.store.clone();
    let (lost, total) = web::block(
        move || -> Result<_, crate::storage::city_store::CityStoreError> {
            match store {
                Some(store) => Ok((store.lost_batches(MAX_LISTED_LOST)?, store.lost_count()?)),
                None => Ok((Vec::new(), 0)),
            }
        },
    )
    .await
    .map_err(|e| internal("status reader", e))?
    .map_err(|e| internal("reading the status index", e))?;
    Ok(HttpResponse::Ok().json(LogStatusReply {
        log_records: state.log.size(),
        head: state.notary.latest(),
        signer: state.notary.signer(),
        losses: state.notary.losses(),
        lost_batches: lost
            .iter()
            .map(|b| LostBatch {
                batch_id: hex32(&b.header.id()),
                seq: b.header.seq,
                tx_ids: b.tx_ids.iter().map(hex32).collect(),
            })
            .collect(),
        lost_batches_total: total,
    }))
}

/// A list of 32-byte hashes as hex strings in JSON.
pub mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    use crate::crypto::Hash32;

    pub fn serialize<S: Serializer>(hashes: &[Hash32], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for h in hashes {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash32>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| {
                crate::messages::parse_hex32(h)
                    .ok_or_else(|| D::Error::custom("expected 64 hex characters"))
            })
            .collect()
    }
}

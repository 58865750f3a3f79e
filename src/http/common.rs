//! Routes every role serves: `/healthz`, `/readyz`, `/metrics`, and JSON answers for
//! unknown paths and malformed path parameters.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;

use super::{ApiError, ApiResult};
use crate::city::supervisor::ActorTable;

/// Whether the node can do its job now; `Err` says why not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Who a node is, as `/healthz` tells it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: crate::config::Role,
    pub city: Option<String>,
    pub continent: String,
}

impl NodeIdentity {
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            node_id: config.node.id.clone(),
            role: config.node.role,
            city: config.node.city.clone(),
            continent: config.node.continent.clone(),
        }
    }
}

/// `/healthz`, `/readyz`, `/metrics`. Expects `web::Data<ReadinessCheck>` and
/// `web::Data<NodeIdentity>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text));
}

/// `/v1/actors`. Expects `web::Data<Arc<ActorTable>>`.
pub fn configure_actors(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/actors", web::get().to(actors));
}

/// The JSON 404 for paths no route matches.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// JSON errors for path parameters that do not parse.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into())
}

/// `GET /healthz`: the process is up, and who it is.
#[derive(Debug, serde::Serialize)]
pub struct HealthReply<'a> {
    pub status: &'static str,
    #[serde(flatten)]
    pub node: &'a NodeIdentity,
}

/// `GET /readyz`: 200 `ready`, or 503 `not_ready` with the reason.
#[derive(Debug, serde::Serialize)]
pub struct ReadyReply {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

async fn healthz(me: web::Data<NodeIdentity>) -> HttpResponse {
    HttpResponse::Ok().json(HealthReply {
        status: "ok",
        node: &me,
    })
}

async fn readyz(check: web::Data<ReadinessCheck>) -> HttpResponse {
    match (check.get_ref())() {
        Ok(()) => HttpResponse::Ok().json(ReadyReply {
            status: "ready",
            reason: None,
        }),
        Err(reason) => HttpResponse::ServiceUnavailable().json(ReadyReply {
            status: "not_ready",
            reason: Some(reason),
        }),
    }
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::handle().render())
}

async fn actors(table: web::Data<Arc<ActorTable>>) -> HttpResponse {
    HttpResponse::Ok().json(table.views())
}

/// Reads a request body of at most `limit` bytes, answering 413 past it without reading
/// the rest.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> ApiResult<web::BytesMut> {
    read_limited_body(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                413,
                "payload_too_large",
                format!("request body is larger than {limit} bytes"),
            ),
            BodyError::Read(e) => ApiError::bad_request("invalid_body", e.to_string()),
        })
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Declared or found to be over the limit; the rest was not read.
    TooLarge,
    /// The connection failed mid-body.
    Read(actix_web::error::PayloadError),
}

/// Reads a request body of at most `limit` bytes, stopping as soon as it is known to be
/// larger (from `Content-Length`, or while reading). For routes whose answers word these
/// errors their own way; [`read_body`] gives the common ones.
pub async fn read_limited_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a 32-byte id written as 64 hex characters; `what` names it in the 400 answer.
pub fn parse_id(s: &str, what: &str) -> ApiResult<[u8; 32]> {
    crate::messages::parse_hex32(s).ok_or_else(|| {
        ApiError::bad_request("invalid_id", format!("{what} must be 64 hex characters"))
    })
}

/// Refuses anything but `application/json` (parameters such as `charset` allowed).
pub fn require_json(req: &HttpRequest) -> ApiResult<()> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!("content type must be application/json, not {ct:?}"),
        ))
    }
}

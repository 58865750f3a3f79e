//! Routes every role serves: `/healthz`, `/readyz`, `/metrics`, and JSON answers for
//! unknown paths and malformed path parameters; and [`Endpoint`], a route kept as a value
//! (method, path, handler), so the routes a node registers can be listed, e.g. checked
//! against the city's OpenAPI document ([`super::openapi`]).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder, web};
use futures::StreamExt;
use tokio::time::Instant;

use super::error::ErrorReply;
use super::limits::{BodyGrant, Limits};
use super::{ApiError, ApiResult};
use crate::city::supervisor::ActorTable;

/// Whether the node can do its job now; `Err` says why not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Who a node is, as `/healthz` tells it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
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

/// One route: its method, its path pattern and the handler actix-web runs for it.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    route: actix_web::Route,
}

impl Endpoint {
    pub fn new<F, Args>(method: Method, path: &'static str, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        Self {
            route: web::method(method.clone()).to(handler),
            method,
            path,
        }
    }
}

/// Registers `endpoints` on `cfg`: one resource per path, which answers any other method
/// with 405 `method_not_allowed` and an `Allow` header naming the methods it has.
pub fn register(cfg: &mut web::ServiceConfig, endpoints: Vec<Endpoint>) {
    let mut paths: Vec<(&'static str, Vec<Endpoint>)> = Vec::new();
    for e in endpoints {
        match paths.iter_mut().find(|(path, _)| *path == e.path) {
            Some((_, group)) => group.push(e),
            None => paths.push((e.path, vec![e])),
        }
    }
    for (path, group) in paths {
        let allow: Vec<&str> = group.iter().map(|e| e.method.as_str()).collect();
        let allow = allow.join(", ");
        let resource = group
            .into_iter()
            .fold(web::resource(path), |r, e| r.route(e.route))
            .default_service(web::to(move |req: HttpRequest| {
                let allow = allow.clone();
                async move { method_not_allowed(&req, &allow) }
            }));
        cfg.service(resource);
    }
}

/// 405 `method_not_allowed` for a method the path does not have.
fn method_not_allowed(req: &HttpRequest, allow: &str) -> HttpResponse {
    let mut res = actix_web::ResponseError::error_response(&ApiError::new(
        405,
        "method_not_allowed",
        format!(
            "{} {} is not served; allowed: {allow}",
            req.method(),
            req.path()
        ),
    ));
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    res
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/healthz", healthz),
        Endpoint::new(Method::GET, "/readyz", readyz),
        Endpoint::new(Method::GET, "/metrics", metrics_text),
    ]
}

/// `/healthz`, `/readyz`, `/metrics`. Expects `web::Data<ReadinessCheck>` and
/// `web::Data<NodeIdentity>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    register(cfg, endpoints());
}

/// `/v1/actors`.
pub fn actor_endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/v1/actors", actors)]
}

/// `/v1/actors`. Expects `web::Data<Arc<ActorTable>>`.
pub fn configure_actors(cfg: &mut web::ServiceConfig) {
    register(cfg, actor_endpoints());
}

/// What `GET /v1/uplink` reads on a node with a node above it.
pub struct UplinkInfo {
    pub status: Arc<crate::storage::upstream::UplinkStatus>,
    pub outbox: Arc<dyn crate::storage::upstream::Outbox>,
}

/// `/v1/uplink`.
pub fn uplink_endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/v1/uplink", uplink)]
}

/// `/v1/uplink`: the link to the node above. Expects `web::Data<UplinkInfo>` when the node
/// has one; answers 404 otherwise.
pub fn configure_uplink(cfg: &mut web::ServiceConfig) {
    register(cfg, uplink_endpoints());
}

/// The link to the node above.
#[utoipa::path(get, path = "/v1/uplink", tag = "federation",
    responses(
        (status = 200, description = "The link to the node above and its outbox.", body = crate::storage::upstream::UplinkView),
        (status = 404, description = "`not_found`: this node forwards to no node above it.", body = ErrorReply),
    ))]
pub(crate) async fn uplink(info: Option<web::Data<UplinkInfo>>) -> ApiResult<HttpResponse> {
    let info = info.ok_or_else(|| ApiError::not_found("this node forwards to no node above it"))?;
    Ok(HttpResponse::Ok().json(info.status.view(info.outbox.waiting())))
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
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HealthReply<'a> {
    /// Always `ok`.
    pub status: &'static str,
    #[serde(flatten)]
    pub node: &'a NodeIdentity,
}

/// `GET /readyz`: 200 `ready`, or 503 `not_ready` with the reason.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReadyReply {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The process is up, and who it is.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process lives.", body = HealthReply)))]
pub(crate) async fn healthz(me: web::Data<NodeIdentity>) -> HttpResponse {
    HttpResponse::Ok().json(HealthReply {
        status: "ok",
        node: &me,
    })
}

/// Whether the node can do its job now.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`ready`: every actor runs, the city store takes writes and a storage tier can make a batch durable.", body = ReadyReply),
        (status = 503, description = "`not_ready` with the reason, or `overloaded` (the error body) at a connection bound.", body = super::error::OrError<ReadyReply>),
    ))]
pub(crate) async fn readyz(check: web::Data<ReadinessCheck>) -> HttpResponse {
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::handle().render())
}

/// The supervision tree.
#[utoipa::path(get, path = "/v1/actors", tag = "operations",
    responses((status = 200, description = "Every actor and its state.", body = Vec<crate::city::supervisor::ActorView>)))]
pub(crate) async fn actors(table: web::Data<Arc<ActorTable>>) -> HttpResponse {
    HttpResponse::Ok().json(table.views())
}

/// Reads a request body of at most `limit` bytes, answering 413 past it without reading
/// the rest, 408 when it stops arriving and 503 `overloaded` when the node's body budget
/// cannot hold it.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> ApiResult<BoundedBody> {
    read_limited_body(req, payload, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                413,
                "payload_too_large",
                format!("request body is larger than {limit} bytes"),
            ),
            BodyError::Read(e) => ApiError::bad_request("invalid_body", e.to_string()),
            e @ (BodyError::TimedOut(_) | BodyError::Overloaded) => e.refusal(),
        })
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Declared or found to be over the limit; the rest was not read.
    TooLarge,
    /// The connection failed mid-body.
    Read(actix_web::error::PayloadError),
    /// The body stopped arriving: no piece within `[limits] body_idle_timeout`, or not
    /// all of it within `body_deadline` (which of the two is given).
    TimedOut(Duration),
    /// The node's body budget (or this peer's share of it) cannot hold the body now.
    Overloaded,
}

impl BodyError {
    /// The answer to a body that timed out (408) or did not fit the budget (503
    /// `overloaded`); both close the connection, whose body was not read to its end.
    /// Other errors are worded by each route.
    pub fn refusal(self) -> ApiError {
        match self {
            BodyError::TimedOut(after) => {
                metrics::counter!(crate::metrics::HTTP_REFUSED, "reason" => "body_timeout")
                    .increment(1);
                ApiError::new(
                    408,
                    "request_timeout",
                    format!("the request body stopped arriving (waited {after:?})"),
                )
            }
            BodyError::Overloaded => {
                metrics::counter!(crate::metrics::HTTP_REFUSED, "reason" => "body_budget")
                    .increment(1);
                ApiError::overloaded(
                    "the node holds as many request bodies as it can; retry shortly",
                )
            }
            BodyError::TooLarge => ApiError::new(413, "payload_too_large", "body too large"),
            BodyError::Read(e) => ApiError::bad_request("invalid_body", e.to_string()),
        }
        .closing()
    }
}

/// A request body read whole, with the share of the node's body budget it holds until it
/// is dropped. Derefs to its bytes.
pub struct BoundedBody {
    bytes: web::Bytes,
    _grant: BodyGrant,
}

impl BoundedBody {
    pub fn bytes(&self) -> &web::Bytes {
        &self.bytes
    }
}

impl std::ops::Deref for BoundedBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a request body of at most `limit` bytes, stopping as soon as it is known to be
/// larger (from `Content-Length`, or while reading), or once it stops arriving
/// (`[limits] body_idle_timeout` between pieces, `body_deadline` for the whole). Nothing
/// is buffered before the node's [`BodyBudget`](super::limits::BodyBudget) grants it: the
/// declared length up front, or each piece of a chunked body as it comes. For routes whose
/// answers word these errors their own way; [`read_body`] gives the common ones.
pub async fn read_limited_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BoundedBody, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let limits = Limits::of(req);
    let peer = req.peer_addr().map(|a| a.ip());
    let mut grant = limits
        .budget
        .try_grant(peer, declared.unwrap_or(0))
        .ok_or(BodyError::Overloaded)?;
    let mut body = web::BytesMut::with_capacity(grant.bytes());
    let idle = limits.config.body_idle_timeout;
    let whole = limits.config.body_deadline;
    let deadline = Instant::now() + whole;
    loop {
        let (until, waited) = match Instant::now() + idle {
            soon if soon < deadline => (soon, idle),
            _ => (deadline, whole),
        };
        let Ok(next) = tokio::time::timeout_at(until, payload.next()).await else {
            return Err(BodyError::TimedOut(waited));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(BodyError::Read)?;
        let len = body.len() + chunk.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if len > grant.bytes() && !grant.try_grow(len - grant.bytes()) {
            return Err(BodyError::Overloaded);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(BoundedBody {
        bytes: body.freeze(),
        _grant: grant,
    })
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

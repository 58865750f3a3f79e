//! HTTP: the routes of every role, each in one `configure` function used by the node and
//! by tests alike.
//!
//! - [`city_api`]: `/v1/tx`, `/v1/batches`, `/v1/nodes`, `/v1/actors` on city nodes.
//! - [`log_api`]: `/v1/log/…` on city nodes: signed heads and Merkle proofs of the log.
//! - [`federation_api`]: continent and global nodes: the signed internal endpoints the
//!   level below forwards to, what each level holds, checkpoints and their proofs.
//! - [`dpos_api`]: DPoS approval: a representative's proposal endpoint, a continent's
//!   votes, representatives and evidence.
//! - [`storage_api`]: the versioned internal API of light and full nodes.
//! - [`peer_auth`]: who may call it: signed requests checked against an allow-list.
//! - [`status_page`]: a city's live status page (`/status`) and the JSON it polls
//!   (`/v1/status`).
//! - [`common`]: `/healthz`, `/readyz`, `/metrics`, JSON 404s, shared by every role.
//! - [`openapi`]: the city's public API as an OpenAPI document (`/openapi.json`),
//!   generated from the handlers' annotations, and the list of the city's public routes.
//! - [`error`]: the JSON error body.
//! - [`server`]: the one server every role runs, with a JSON error body on every error,
//!   including the HTTP/1 protocol errors actix-http answers by itself.
//! - [`limits`]: connections, body timeouts and the body-memory budget (`[limits]`).

pub mod city_api;
pub mod common;
pub mod dpos_api;
pub mod error;
pub mod federation_api;
pub mod limits;
pub mod log_api;
pub mod openapi;
pub mod peer_auth;
pub mod server;
pub mod status_page;
pub mod storage_api;

pub use error::{ApiError, ApiResult};

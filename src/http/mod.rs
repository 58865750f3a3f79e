//! HTTP: the routes of every role, each in one `configure` function used by the node and
//! by tests alike.
//!
//! - [`city_api`]: `/v1/tx`, `/v1/batches`, `/v1/nodes`, `/v1/actors` on city nodes.
//! - [`storage_api`]: the versioned internal API of light and full nodes.
//! - [`common`]: `/healthz`, `/readyz`, `/metrics`, JSON 404s, shared by every role.
//! - [`error`]: the JSON error body.
//! - [`limits`]: connections, body timeouts and the body-memory budget (`[limits]`).

pub mod city_api;
pub mod common;
pub mod error;
pub mod limits;
pub mod storage_api;

pub use error::{ApiError, ApiResult};

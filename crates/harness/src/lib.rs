//! citychain-harness: test and operations tooling around the citychain node runtime.
//!
//! Module map:
//! - [`client`]: the one transaction signer and `POST /v1/tx` client every tool uses.
//! - [`federation`]: plans and launches a local federation of child processes (`up`).
//! - [`bench`](mod@bench): open-loop signed load generator (`citychain bench`).
//! - [`chaos`]: fault injection: kill and restart nodes while checking every promise.
//! - [`testkit`]: child-process nodes, `/metrics`, waiting with deadlines; shared by the
//!   integration tests and fault injection.

pub mod bench;
pub mod chaos;
pub mod client;
pub mod federation;
pub mod testkit;

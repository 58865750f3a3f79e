//! citychain: the node runtime of the City Chain federation, every role in one library
//! (the `citychain` binary, the local federation launcher and the load and fault tools are
//! the workspace's `citychain-cli` and `citychain-harness` crates; this library imports
//! neither).
//!
//! Module map:
//! - [`config`]: one TOML file per node; defaults, validation, every problem at once.
//! - [`crypto`]: ML-DSA-65 keys and signatures, BLAKE3 ids, the batch Merkle root.
//! - [`messages`]: typed messages that cross actors or nodes (transactions, batches,
//!   proof-of-hold acks, store outcomes) and their versioned postcard encoding.
//! - [`engines`]: the domain engines (proof of place, object dependencies, DPoS approval,
//!   storage rewards), each a trait chosen by name in config.
//! - [`city`]: the city wing: the actor pipeline Intake → DagBatcher → Flagger →
//!   Prioritizer → StorageWriter → Failover (+ Repairer) under the FailoverSupervisor, its
//!   messages, policies, admission checks and the `CityHandle` the HTTP layer uses.
//! - [`federation`]: the continent and global roles as actor sets: merging city batches,
//!   collecting continent batches, signed checkpoints and their inclusion proofs.
//! - [`storage`]: the tiers: light/full peer client and server store, immutable log; the
//!   continent's and global node's ledgers; the outboxes of the links up.
//! - [`http`]: HTTP routes of every role, JSON errors, `/metrics`.
//! - [`node`]: role wiring: which actors and routes a role starts, and clean shutdown.
//! - [`metrics`]: metric names and the Prometheus recorder.

pub mod city;
pub mod config;
pub mod crypto;
pub mod engines;
pub mod federation;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod http;
pub mod messages;
pub mod metrics;
pub mod node;
pub mod storage;
#[cfg(test)]
pub(crate) mod testkit;

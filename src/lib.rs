//! citychain: one binary for every node role of the City Chain federation.
//!
//! Module map:
//! - [`config`]: one TOML file per node; defaults, validation, every problem at once.
//! - [`crypto`]: ML-DSA-65 keys and signatures, BLAKE3 ids, the batch Merkle root.
//! - [`messages`]: typed messages that cross actors or nodes (transactions, batches,
//!   proof-of-hold acks, store outcomes) and their versioned postcard encoding.
//! - [`actors`]: the city pipeline, one actor per file: Intake → DagBatcher → Flagger →
//!   Prioritizer → StorageWriter, with the FailoverSupervisor walking the tier chain.
//! - [`storage`]: the tiers: light/full peer client and server store, immutable log.
//! - [`http`]: HTTP routes of every role, JSON errors, `/metrics`.
//! - [`node`]: role wiring: which actors and routes a role starts, and clean shutdown.
//! - [`metrics`]: metric names and the Prometheus recorder.

pub mod actors;
pub mod config;
pub mod crypto;
pub mod http;
pub mod messages;
pub mod metrics;
pub mod node;
pub mod storage;

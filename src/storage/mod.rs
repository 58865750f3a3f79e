//! Storage: the tiers a city writes to and the store a storage node keeps.
//!
//! - [`city_store`]: the city's durable status index and DAG resume point.
//! - [`tier`]: the `StorageTier` trait and the failover chain built from config.
//! - [`peer`]: the client side of light and full nodes (write a batch, verify its ack).
//! - [`store`]: the server side: a storage node's redb store with its capacity limit.
//! - [`mongo`]: one MongoDB deployment per continent, between full nodes and the log.
//! - [`immutable_log`]: the append-only, hash-chained, fsynced last resort.

pub mod city_store;
pub mod immutable_log;
pub mod mongo;
pub mod peer;
pub mod store;
pub mod tier;

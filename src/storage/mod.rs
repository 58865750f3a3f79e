//! Storage: the tiers a city writes to and the store a storage node keeps.
//!
//! - [`tier`]: the `StorageTier` trait and the failover chain built from config.
//! - [`peer`]: the client side of light and full nodes (write a batch, verify its ack).
//! - [`store`]: the server side: a storage node's redb store with its capacity limit.
//! - [`immutable_log`]: the append-only, hash-chained, fsynced last resort.

pub mod immutable_log;
pub mod peer;
pub mod store;
pub mod tier;

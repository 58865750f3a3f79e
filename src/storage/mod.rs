//! Storage: the tiers a city writes to and the store a storage node keeps.
//!
//! - [`city_store`]: the city's durable status index and DAG resume point.
//! - [`group_commit`]: the writer thread that shares one fsync among many writes.
//! - [`tier`]: the `StorageTier` trait and what a tier attempt produces.
//! - [`chain`]: the failover chain built from config.
//! - [`tier_health`]: the last attempt on each tier of the chain (read by readiness).
//! - [`peer_tier`], [`mongo_tier`], [`log_tier`]: the tier implementations.
//! - [`readback`]: reading a sealed batch back from the tier that holds it (repair and
//!   the city's read path share it).
//! - [`nodes`]: the configured light and full nodes with their keys, shared by all users.
//! - [`peer`]: the client side of light and full nodes (write a batch, verify its ack).
//! - [`store`]: the server side: a storage node's redb store with its capacity limit.
//! - [`mongo`]: one MongoDB deployment per continent, between full nodes and the log.
//! - [`immutable_log`]: the append-only, hash-chained, fsynced last resort, with its
//!   Merkle tree and signed heads.
//! - [`log_notary`]: signs the log's tree heads and holds the log against them at start.
//! - [`log_audit`]: at start, finds batches acknowledged on the log that it lost.
//! - [`immutable_log`]: the append-only, hash-chained, fsynced last resort.
//! - [`offline`]: reading a stopped node's redb file without changing it.
//! - [`rewards`]: the storage-rewards ledger (a table of `city.redb`).
//! - [`vault`]: the key vault: every batch's capsule, kept apart from its sealed bytes.
//! - [`ledger`]: an immutable log as the truth and a redb index kept in step with it, for
//!   the continent and global nodes ([`continent_store`], [`global_store`]).
//! - [`upstream`]: the link to the node above (signed client, outbox trait, link state);
//!   [`outboxes`]: a city's and a continent's outbox.
//! - [`continent_dpos`]: the continent's DPoS tables (votes, evidence, stake ledger,
//!   approvals); [`dpos_store`]: a representative's own vote store.

pub mod chain;
pub mod city_store;
pub mod continent_dpos;
pub mod continent_store;
pub mod dpos_store;
pub mod global_store;
pub mod group_commit;
pub mod immutable_log;
pub mod ledger;
pub mod log_audit;
pub mod log_notary;
pub mod log_tier;
pub mod mongo;
pub mod mongo_tier;
pub mod nodes;
pub mod offline;
pub mod outboxes;
pub mod peer;
pub mod peer_tier;
pub mod readback;
pub mod rewards;
pub mod store;
pub mod tier;
pub mod tier_health;
pub mod upstream;
pub mod vault;

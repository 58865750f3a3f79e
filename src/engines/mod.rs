//! The domain engines: the rules the upstream design puts between intake and storage.
//!
//! - [`pop`]: proof of place, a transaction's position inside its city's geofence.
//! - [`objects`]: object dependencies, read and write sets over owned, shared and
//!   immutable objects, conflicts and the order a batch records.
//! - [`dpos`]: approval of continent batches by a stake-weighted 2/3 of representatives,
//!   with equivocation evidence and slashing.
//! - [`rewards`]: credits for every valid proof of hold a storage node gives.
//!
//! Each engine is a trait with its default implementation in its own file, chosen by name
//! in the node's config (a serde enum, like the flag and node policies), so another rule
//! set can replace it without touching the pipeline. Engines hold rules, not I/O: they
//! import `config`, `messages` and `crypto` only, and what they decide is kept by the
//! store of the role that runs them.

pub mod dpos;
pub mod objects;
pub mod pop;
pub mod rewards;

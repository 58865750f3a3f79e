//! The actors of the federation levels, one per file; their messages are in
//! [`crate::federation::msgs`]. A continent also runs the city wing's
//! [`Uplink`](crate::city::actors::uplink), over its own outbox.
//!
//! - [`merger`] (continent): merges verified city batches into continent batches, stores
//!   them, answers the cities.
//! - [`approver`] (continent): gathers the representatives' votes on each continent batch
//!   (DPoS approval).
//! - [`collector`] (global): stores the continent batches its continents forward.
//! - [`checkpointer`] (global): signs a checkpoint over the global log at an interval.

pub mod approver;
pub mod checkpointer;
pub mod collector;
pub mod merger;

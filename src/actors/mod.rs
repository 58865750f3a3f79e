//! The city pipeline, one actor per file.
pub mod flagger;
pub mod prioritizer;

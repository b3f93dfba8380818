//! Evaluation: teacher-forced token accuracy on training prompts (recall) and held-out probes
//! (generalisation), locality on unrelated prompts, free (greedy) answers scored by key-detail recall
//! and F1, and retention
//! (which earlier facts are scored when, and the fact × step matrix; tch-free, for the reports too).
pub mod batch;
pub mod free;
pub mod locality;
pub mod metrics;
pub mod probe;
pub mod retention;

pub use batch::{Batch, Example};

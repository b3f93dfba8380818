//! Evaluation: teacher-forced token accuracy on training prompts (recall) and held-out probes
//! (generalisation), locality on unrelated prompts, and greedy generation scored by F1.
pub mod batch;
pub mod locality;
pub mod metrics;
pub mod probe;

pub use batch::{Batch, Example};

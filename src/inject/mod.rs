//! Injection: a run's stages — plan (which run, which facts, which steps), prepare (base answers,
//! preservation, projections, replay), then per injection step train (one fresh adapter on a group of
//! facts), merge, evaluate and commit — and the weights' state (hash, replay of stored deltas).
pub mod driver;
pub mod evaluate;
pub mod plan;
pub mod prepare;
pub mod preserve;
pub mod state;
pub mod step;

pub use driver::{resume, run, Progress, RunOutcome, Silent};

//! Injection: a run's stages — plan (which run, which facts, which steps), prepare (base answers,
//! preservation, projections, replay), then per injection step train (one fresh adapter on a group of
//! facts), merge, evaluate and commit — and the weights' state (hash, replay of stored deltas).
pub mod driver;
pub mod evaluate;
pub mod plan;
pub mod prepare;
pub mod preserve;
pub mod schedule;
pub mod state;
pub mod step;
mod trainer;

pub use driver::{repair, resume, run, Progress, Repair, RunOutcome, Silent};

use std::time::Instant;

/// Laps of wall-clock time, for the phases recorded in the ledger.
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Seconds since the start or the previous lap.
    pub(crate) fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let s = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        s
    }
}

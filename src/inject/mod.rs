//! Injection: one step (train a fresh adapter on a group of facts), strategies (how facts are
//! grouped into steps) and the driver that runs, records and resumes them.
pub mod driver;
pub mod step;
pub mod strategy;

pub use driver::{run, Progress, RunConfig, RunOutcome, Silent};
pub use step::TrainConfig;
pub use strategy::Strategy;

//! `injector`: inject facts into a language model by fine-tuning AdaLoRA adapters and merging them,
//! and treat the model as a knowledge store with a ledger of every change.
pub mod adapter;
pub mod config;
pub mod cuda;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod inject;
pub mod knowledge;
pub mod ledger;
pub mod model;
pub mod paths;
pub mod report;
pub mod rng;

pub use error::{Error, Result};

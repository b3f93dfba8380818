//! AdaLoRA: the adapter layer, its rank allocator, merging and the stored form of updates.
pub mod adalora;
pub mod adamw;
pub mod budget;
pub mod merge;

pub use adalora::AdaLora;

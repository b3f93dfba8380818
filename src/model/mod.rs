//! The language model: configuration, weights, layers, tokenizer and generation.
pub mod config;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod quant;
pub mod tokenizer;
pub mod weights;

pub use config::Config;
pub use llama::{base_graph_shape, base_graphs_on, Adapter, Cache, FixedCache, Llama, NoAdapter, Proj};
pub use tokenizer::Tokenizer;
pub use weights::{load, load_with_template, Loaded};

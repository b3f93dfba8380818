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
pub use weights::{
    auto_kind, base_kind, cpu_has_bf16, dtype_name, dtype_to_record, load, load_as, load_with_template, parse_dtype,
    Loaded,
};

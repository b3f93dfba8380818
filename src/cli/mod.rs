//! Command-line surface: global options and one module per subcommand.
pub mod query;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Inject facts into a language model and treat it as a knowledge store.
#[derive(Parser, Debug)]
#[command(name = "injector", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Model: a .gguf file or a Hugging Face folder (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Random seed for everything that samples.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    /// The model path, defaulting to the embedded model.
    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(injector::paths::default_model)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask the model a question and stream its answer.
    Query(query::QueryArgs),
}

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Query(a) => query::run(a, &cli.global),
    }
}

//! Rows of the ledger as Rust types.
use serde::{Deserialize, Serialize};

/// One run: a strategy applied to a knowledge directory on a model, with a config and seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub key: String,
    pub created: String,
    pub strategy: String,
    /// The full configuration as JSON (saved before the first step).
    pub config: String,
    pub model_path: String,
    pub model_hash: String,
    pub knowledge_dir: String,
    pub knowledge_hash: String,
    pub seed: i64,
    /// running | finished | failed
    pub status: String,
    pub base_weights_hash: String,
    pub weights_hash: String,
    pub finished: Option<String>,
}

/// One committed step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRow {
    pub run: String,
    pub idx: i64,
    /// Hashes of the facts injected by the step.
    pub facts: Vec<String>,
    /// Hashes of earlier facts rehearsed (replay strategies).
    pub rehearsed: Vec<String>,
    pub optimizer_steps: i64,
    pub losses: Vec<f64>,
    pub seconds: f64,
    pub eval_seconds: f64,
    pub tokens: i64,
    pub peak_rss_bytes: i64,
    pub delta_file: String,
    /// Unmasked rank per adapted weight.
    pub rank_pattern: Vec<(String, i64)>,
    pub weights_hash: String,
    pub created: String,
}

/// Scores of one fact after one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeRow {
    pub step: i64,
    pub fact: String,
    pub recall: f64,
    pub general: Option<f64>,
    pub previous: Option<f64>,
    /// Per-prompt accuracies: {"recall": [...], "general": [...]}.
    pub detail: String,
}

/// A greedy generation and its F1 against the answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationRow {
    pub step: i64,
    pub fact: String,
    pub prompt: String,
    pub text: String,
    pub f1: f64,
}

/// The base model's own answer to one locality prompt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalityBase {
    pub prompt: String,
    pub prompt_ids: Vec<i64>,
    pub answer_ids: Vec<i64>,
    pub answer: String,
}

/// Everything one step writes, committed together.
pub struct StepRecord {
    pub step: StepRow,
    pub probes: Vec<ProbeRow>,
    pub generations: Vec<GenerationRow>,
    pub locality: Option<f64>,
}

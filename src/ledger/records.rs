//! Rows of the ledger as Rust types.
use crate::config::LrScheduler;
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
    /// Whether its merges make ΔW on the weights' device (runs since session 6) or on the host
    /// (older runs); replay repeats the run's own arithmetic (see `adapter::merge::merge`).
    #[serde(default)]
    pub merge_on_device: bool,
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
    /// The GPU's peak of allocated bytes during the step (training and evaluation); 0 off a GPU and
    /// in steps recorded before it was.
    #[serde(default)]
    pub peak_gpu_bytes: i64,
    pub delta_file: String,
    /// Unmasked rank per adapted weight.
    pub rank_pattern: Vec<(String, i64)>,
    pub weights_hash: String,
    pub created: String,
    /// Where the step's time went (all zero for steps recorded before phases were).
    pub phases: StepPhases,
    /// For `spaced:K`, each rehearsed fact with why it was picked (empty for other strategies).
    #[serde(default)]
    pub rehearsal: Vec<Rehearsed>,
    /// How a repair's consolidation trained (`None` for every other step, and for steps recorded
    /// before it was): its flags are not in the run's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidation: Option<Consolidation>,
}

/// The settings of a consolidation step (`injector repair`, a step of more facts than a mini-batch:
/// epochs over shuffled mini-batches; `inject::Repair`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consolidation {
    /// The most epochs it could train.
    pub epochs: i64,
    pub lr_scheduler: LrScheduler,
    /// Facts per optimizer step.
    pub mixed_batch: usize,
    /// Weight of its preservation term (`train.preserve`); absent from records before it could differ
    /// from the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve: Option<f64>,
    /// Share of its null-space projection (`train.null_space`, 0 = trained without it); absent from
    /// records before it could differ from the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_space: Option<f64>,
    /// Weight of its interference penalty (`train.protect`); absent from records before it could
    /// differ from the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect: Option<f64>,
    /// How many of each fact's training prompts an epoch trained on, in turn (absent: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<usize>,
}

/// Why a fact was rehearsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Measured below the threshold at its latest check.
    Fell,
    /// Its review interval had passed.
    Due,
    /// At or above the threshold at its latest check, and trained in a consolidation with the facts
    /// that fell (`repair --consolidate`), so that training them does not disturb it.
    Held,
}

/// One rehearsal of one fact at one step, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rehearsed {
    pub fact: String,
    pub reason: Reason,
    /// Its latest measured recall before the step (`None`: never measured since its own step).
    pub recall: Option<f64>,
    /// Its review interval, in steps, when it was picked.
    pub interval: i64,
}

#[cfg(test)]
impl StepRow {
    /// A step of run "r" with only its facts and rehearsed facts set, for tests.
    pub fn for_tests(idx: i64, facts: Vec<String>, rehearsed: Vec<String>) -> Self {
        StepRow {
            run: "r".into(),
            idx,
            facts,
            rehearsed,
            optimizer_steps: 1,
            losses: vec![],
            seconds: 0.0,
            eval_seconds: 0.0,
            tokens: 0,
            peak_rss_bytes: 0,
            peak_gpu_bytes: 0,
            delta_file: String::new(),
            rank_pattern: vec![],
            weights_hash: String::new(),
            created: String::new(),
            phases: Default::default(),
            rehearsal: vec![],
            consolidation: None,
        }
    }
}

/// Seconds spent in each phase of one injection step, in order. Each phase ends with a read of its
/// results on the host, so on a GPU its time is the work's, not the launches'.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepPhases {
    /// Adapter, optimizer and batches made for the step.
    pub setup: f64,
    /// The eager optimizer steps before the CUDA graphs are captured, and the captures (GPU only).
    pub warmup: f64,
    /// The other optimizer steps (graph replays on a GPU).
    pub train: f64,
    /// The factors merged into the weights and stored (with `train.protect`, the step's facts' inputs
    /// recorded too).
    pub merge: f64,
    /// The step's own facts scored.
    pub own_probes: f64,
    /// Earlier facts scored (retention checks).
    pub retention: f64,
    /// Free (greedy) answers to the scored facts' prompts and probes, at full checks.
    pub free_decoding: f64,
    /// Greedy answers after the step (the reports' "after" samples).
    pub generations: f64,
    /// Locality scored (full checks).
    pub locality: f64,
    /// The edited weights hashed.
    pub hash: f64,
}

impl StepPhases {
    /// (name, seconds) of every phase, in order.
    pub fn named(&self) -> [(&'static str, f64); 10] {
        [
            ("setup", self.setup),
            ("warmup", self.warmup),
            ("train", self.train),
            ("merge", self.merge),
            ("own_probes", self.own_probes),
            ("retention", self.retention),
            ("free_decoding", self.free_decoding),
            ("generations", self.generations),
            ("locality", self.locality),
            ("hash", self.hash),
        ]
    }

    pub fn total(&self) -> f64 {
        self.named().iter().map(|(_, s)| s).sum()
    }

    /// Adds another step's phases to these.
    pub fn add(&mut self, o: &StepPhases) {
        self.setup += o.setup;
        self.warmup += o.warmup;
        self.train += o.train;
        self.merge += o.merge;
        self.own_probes += o.own_probes;
        self.retention += o.retention;
        self.free_decoding += o.free_decoding;
        self.generations += o.generations;
        self.locality += o.locality;
        self.hash += o.hash;
    }
}

/// Seconds of one invocation's work outside its steps (the model load is measured by the caller).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FixedPhases {
    /// Reading the checkpoint and building the model.
    pub model_load: f64,
    /// Finding or recording the run; for a new run, the base model's answers to the locality prompts.
    pub plan: f64,
    /// The base model's answers and log-probabilities on the preservation prompts.
    pub preservation: f64,
    /// The null-space projections.
    pub projections: f64,
    /// Committed steps merged back onto the base weights.
    pub replay: f64,
    /// Every fact's examples tokenised.
    pub tokenize: f64,
    /// The base model's greedy answers to the sampled facts (the reports' "before" samples).
    pub before: f64,
    /// The steps' SQLite commits, together.
    pub commit: f64,
}

/// One invocation of a run (`run`, a resume, a continuation): when, how many steps, and where its
/// time went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InvocationRow {
    pub run: String,
    pub idx: i64,
    pub started: String,
    pub finished: String,
    /// Steps this invocation committed.
    pub steps: i64,
    /// Wall seconds from the start of the driver to the end (the model load is before it).
    pub seconds: f64,
    pub fixed: FixedPhases,
    /// The sum of its steps' phases.
    pub step_phases: StepPhases,
}

/// Scores of one fact after one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeRow {
    pub step: i64,
    pub fact: String,
    pub recall: f64,
    pub general: Option<f64>,
    pub previous: Option<f64>,
    /// Free-decoding key-detail recall on the training prompts (see `eval::free`); `None` where
    /// free answers were not decoded (between full checks, or in runs recorded before them).
    pub free_recall: Option<f64>,
    /// The same on the held-out probes.
    pub free_general: Option<f64>,
    /// Per-prompt accuracies and, where decoded, the free answers:
    /// {"recall": [...], "general": [...], "free": FreeScore}.
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

/// One `injector revert`: the run taken back to the weights after step `to_step` (-1: the base),
/// with the steps (and their scores) it removed, kept here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevertRow {
    pub run: String,
    /// The run's n-th revert, from 0.
    pub idx: i64,
    pub created: String,
    pub to_step: i64,
    /// The run's weights hash after the revert: the one recorded after `to_step`.
    pub weights_hash: String,
    /// The steps taken back, in order.
    pub steps: Vec<StepRow>,
    /// Their probe rows.
    pub probes: Vec<ProbeRow>,
}

/// Everything one step writes, committed together.
pub struct StepRecord {
    pub step: StepRow,
    pub probes: Vec<ProbeRow>,
    pub generations: Vec<GenerationRow>,
    pub locality: Option<f64>,
    /// The general check measured with locality: the perplexity of the base model's own answers
    /// to the locality prompts ([`crate::eval::probe::LocalityScore`]).
    pub perplexity: Option<f64>,
}

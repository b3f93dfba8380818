//! A run's whole configuration, free of tch: the strategy, the seed, training, AdaLoRA (targets and
//! layers), and the evaluation cadence, with the defaults, the presets and the one validation that
//! every way a config enters goes through (flags, `--preset`, `--config-json`, `--resume`, a config
//! read back from the ledger).
//!
//! The defaults live in the `Default` impls below and nowhere else: changing one is a one-line change
//! here. The serialised form is part of a run's identity (the run key hashes it), so field names
//! never change, and a field added later carries a serde default that reproduces the behaviour from
//! before it existed (not today's default), so ledgers written by earlier releases still open, resume
//! and keep their run keys.
mod proj;
mod strategy;

pub use proj::Proj;
pub use strategy::Strategy;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Adapter hyper-parameters (Zhang et al., arXiv:2303.10512; names and meaning as in peft's
/// `AdaLoraConfig`): peft's defaults, except where measurement chose otherwise (README, "Choosing the
/// defaults"): alpha 32 and the MLP projections instead of alpha 8 on q_proj/v_proj.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaLoraConfig {
    /// Initial rank of every adapted module.
    pub init_r: i64,
    /// Average rank per module that the rank allocator's budget ends at.
    pub target_r: i64,
    /// The scaling (`lora_alpha`; the update is multiplied by alpha / (init_r + 1e-5)).
    pub lora_alpha: f64,
    /// Dropout on the adapter input, in [0, 1).
    pub dropout: f64,
    /// Weight of the orthogonal regulariser ‖AAᵀ−I‖ + ‖BᵀB−I‖.
    pub orth_reg_weight: f64,
    /// EMA factors of the sensitivity and its uncertainty, in [0, 1).
    pub beta1: f64,
    pub beta2: f64,
    /// Optimizer steps of warm-up before the budget starts falling, and of the final phase at the target
    /// budget.
    pub tinit: i64,
    pub tfinal: i64,
    /// Optimizer steps between two maskings.
    pub delta_t: i64,
    /// Projections to adapt.
    pub targets: Vec<Proj>,
    /// Layers to adapt; empty means all.
    pub layers: Vec<usize>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        AdaLoraConfig {
            init_r: 12,
            target_r: 8,
            lora_alpha: 32.0,
            dropout: 0.0,
            orth_reg_weight: 0.5,
            beta1: 0.85,
            beta2: 0.85,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            targets: vec![Proj::Gate, Proj::Up, Proj::Down],
            layers: Vec::new(),
        }
    }
}

/// Training hyper-parameters of an injection step (saved with the run, so results can be reproduced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub adalora: AdaLoraConfig,
    /// AdamW's learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW's β1 and β2 (names as in transformers' TrainingArguments). Left out of the serialised
    /// config at 0.9 / 0.999, the values every run used before they were configurable, so run keys
    /// stay the same.
    #[serde(default = "adam_beta1", skip_serializing_if = "is_adam_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "adam_beta2", skip_serializing_if = "is_adam_beta2")]
    pub adam_beta2: f64,
    /// Most optimizer steps of one injection step (also the allocator's total_step).
    pub max_steps: i64,
    /// Training of a step stops once every fact's token accuracy on its training prompts reaches
    /// this (1.0 by default: stopping at 0.9 leaves facts at the edge, where later edits push them out).
    pub threshold: f64,
    /// Optimizer steps trained on once every fact has first met `threshold` (0, the default: stop
    /// there): a margin, so that a fact's free greedy answer survives the small changes later steps
    /// make (at the threshold each answer token is just the argmax; bench/NOTES.md item 40). For
    /// `mixed` at scale, epochs. Every fact must still meet the threshold when training stops.
    /// Less than `max_steps - 1`. Left out of the serialised config when 0, so earlier keys stay.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub extra_steps: i64,
    /// Padded tokens per micro-batch; a larger group is split and its gradients accumulated.
    pub max_batch_tokens: usize,
    /// Global gradient-norm clip.
    pub clip_grad_norm: f64,
    /// Multiplies the merged update (1 = merge as trained).
    pub merge_scale: f64,
    /// Weight of the preservation term: KL(base ‖ current) of the next-token distributions on the
    /// base model's own answers to unrelated prompts (0 = off; absent from the first release's configs).
    #[serde(default)]
    pub preserve: f64,
    /// Preservation prompts per optimizer step (taken in turn from the whole set).
    #[serde(default = "legacy_preserve_batch")]
    pub preserve_batch: usize,
    /// How many of the built-in preservation prompts the preservation term and the null-space
    /// projection draw on: the first `preserve_prompts` of
    /// `eval::locality::preserve_prompts` (48 by default, the set of every run before the field
    /// existed; at most 256). Left out of the serialised config at 48, so earlier keys stay.
    #[serde(
        default = "default_preserve_prompts",
        skip_serializing_if = "is_default_preserve_prompts"
    )]
    pub preserve_prompts: usize,
    /// Null-space projection (0 = off): each adapter sees its input with the principal directions
    /// that carry this share of the base model's input energy on the preservation prompts removed, so
    /// its update barely moves what those prompts produce (after AlphaEdit, arXiv:2410.02355).
    /// Measured on the shipped facts: locality 0.864 → 0.909 at the same recall (README, "Choosing the
    /// defaults"). Left out of the serialised config when 0, so the run keys of configurations from
    /// before it existed stay the same.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub null_space: f64,
    /// How the learning rate falls over a training's `max_steps` optimizer steps (transformers'
    /// `lr_scheduler_type`, without warm-up). `mixed` at scale counts every mini-batch of every
    /// epoch. Left out of the serialised config when constant (every run before it existed), so
    /// their keys stay the same.
    #[serde(default, skip_serializing_if = "LrScheduler::is_constant")]
    pub lr_scheduler: LrScheduler,
    /// Weight of the interference penalty (0 = off): the merged update's squared change to the
    /// activations of every fact injected before, at every adapted site, summed over those facts (so
    /// a fixed weight grows stronger as facts accumulate; over their mean with `protect_mean`;
    /// `inject::preserve::Protected`, the soft form of AlphaEdit's term for earlier edits' keys). The inputs are recorded at the weights
    /// after each fact's step; an invocation that goes on with a recorded run (`--resume`, new facts,
    /// `repair`) records its earlier facts at the weights it starts from, so it does not repeat an
    /// uninterrupted run bit for bit. With rehearsal it also resists the repairs. Left out of the
    /// serialised config when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub protect: f64,
    /// The interference penalty over the mean of the earlier facts' activations instead of their
    /// sum, so its strength stays the same as facts accumulate (`protect` is then the weight of one
    /// average earlier fact, as MEMIT's key second moment is a mean: Meng et al., arXiv:2210.07229).
    /// Only with `protect` > 0. Left out of the serialised config when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect_mean: bool,
}

/// The learning-rate schedules (names as transformers' `SchedulerType`): the rate at optimizer step
/// t of T is `lr · factor(t, T)`, with `factor` 1 (constant), 1 − t/T (linear) or (1 + cos πt/T)/2
/// (cosine; transformers' `get_cosine_schedule_with_warmup` with no warm-up and half a cycle).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    #[default]
    Constant,
    Linear,
    Cosine,
}

impl LrScheduler {
    pub const NAMES: [&'static str; 3] = ["constant", "linear", "cosine"];

    fn is_constant(&self) -> bool {
        *self == LrScheduler::Constant
    }

    /// Its name, as the flag and the serialised config spell it.
    pub fn name(self) -> &'static str {
        match self {
            LrScheduler::Constant => "constant",
            LrScheduler::Linear => "linear",
            LrScheduler::Cosine => "cosine",
        }
    }

    /// The multiplier of the learning rate at optimizer step `t` (0 for the first) of `total`.
    pub fn factor(self, t: i64, total: i64) -> f64 {
        let x = (t as f64 / total.max(1) as f64).clamp(0.0, 1.0);
        match self {
            LrScheduler::Constant => 1.0,
            LrScheduler::Linear => 1.0 - x,
            LrScheduler::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
        }
    }
}

impl std::str::FromStr for LrScheduler {
    type Err = Error;

    /// Errors: bad input naming the schedules known.
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::BadInput(format!(
                "unknown --lr-scheduler '{s}': expected {}",
                LrScheduler::NAMES.join(", ")
            ))
        })
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn adam_beta1() -> f64 {
    0.9
}

fn adam_beta2() -> f64 {
    0.999
}

fn is_adam_beta1(v: &f64) -> bool {
    *v == adam_beta1()
}

fn is_adam_beta2(v: &f64) -> bool {
    *v == adam_beta2()
}

/// The preservation prompts of every run before `preserve_prompts` existed.
fn default_preserve_prompts() -> usize {
    crate::eval::locality::PRESERVE_PROMPTS.len()
}

fn is_default_preserve_prompts(n: &usize) -> bool {
    *n == default_preserve_prompts()
}

/// `preserve_batch` of configs written before the field existed.
fn legacy_preserve_batch() -> usize {
    8
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            adalora: AdaLoraConfig::default(),
            lr: 5e-3,
            weight_decay: 0.01,
            adam_beta1: adam_beta1(),
            adam_beta2: adam_beta2(),
            max_steps: 60,
            threshold: 1.0,
            extra_steps: 0,
            max_batch_tokens: 4096,
            clip_grad_norm: 1.0,
            merge_scale: 1.0,
            preserve: 4.0,
            preserve_batch: 8,
            preserve_prompts: default_preserve_prompts(),
            null_space: 0.9,
            lr_scheduler: LrScheduler::Constant,
            protect: 0.0,
            protect_mean: false,
        }
    }
}

/// `--consolidate`'s epochs unless `--consolidate-epochs` is given: `repair --epochs`'s default,
/// the setting measured at 1,000 facts.
pub const CONSOLIDATE_EPOCHS: i64 = 12;

/// The names `TrainConfig::preset` knows.
pub const PRESETS: [&str; 2] = ["default", "article"];

impl TrainConfig {
    /// A named starting point: `default` (the measured defaults above) or `article` (the source
    /// article's settings: q_proj/v_proj, alpha 32, dropout 0.1, stop at 0.9, no preservation and no
    /// null-space projection). Errors: an unknown name (bad input).
    pub fn preset(name: &str) -> Result<TrainConfig> {
        match name {
            "default" => Ok(TrainConfig::default()),
            "article" => Ok(TrainConfig {
                lr: 5e-3,
                threshold: 0.9,
                preserve: 0.0,
                null_space: 0.0,
                adalora: AdaLoraConfig {
                    lora_alpha: 32.0,
                    dropout: 0.1,
                    targets: vec![Proj::Q, Proj::V],
                    ..AdaLoraConfig::default()
                },
                ..TrainConfig::default()
            }),
            other => Err(Error::BadInput(format!(
                "unknown --preset '{other}': expected {}",
                PRESETS.join(" or ")
            ))),
        }
    }
}

/// Everything that decides a run's outcome; saved as the run's config before its first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `sequential`, `batch:K`, `mixed` or `replay:K` (see [`Strategy`]).
    pub strategy: String,
    pub seed: u64,
    pub train: TrainConfig,
    /// Evaluate retention (earlier facts) after every k-th injection step; always after the last.
    pub retention_every: usize,
    /// At intermediate retention checks, score only a seeded sample of this many earlier facts; 0 = all.
    pub retention_sample: usize,
    /// Tokens of the base model's greedy answers kept for locality (and for the preservation set).
    pub locality_tokens: usize,
    /// Padded tokens per evaluation batch.
    pub eval_batch_tokens: usize,
    /// Decode greedy answers to the scored facts' prompts and probes and score them by key-detail
    /// recall and F1 (`eval::free`), after the steps `free_every` picks. Evaluation only: the
    /// weights do not depend on it. Absent in configs recorded before it: on.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub free_decoding: bool,
    /// Free answers after every k-th injection step (of the facts scored then: the step's own, and
    /// the earlier ones at a retention check) and always after an invocation's last step (of every
    /// fact); 0 = after the last step only. Greedy decoding is one forward per token, so on a GPU
    /// each decoding pass costs about the same whatever its batch: the default keeps it to one.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub free_every: usize,
    /// `mixed`: facts per optimizer step. With more facts than this, `mixed` trains in epochs over
    /// shuffled mini-batches of this many facts, and `train.max_steps` counts epochs.
    #[serde(default = "mixed_batch", skip_serializing_if = "is_mixed_batch")]
    pub mixed_batch: usize,
    /// The rehearsal rules: `spaced:K`'s choice of facts, and the prompts a rehearsed fact trains on
    /// (`spaced:K` and `replay:K`; unused by the others).
    #[serde(default, skip_serializing_if = "Rehearsal::is_default")]
    pub rehearsal: Rehearsal,
    /// The chat template the prompts are rendered with, by name (`--chat-template`), for checkpoints
    /// that ship several; `None` is the checkpoint's default (also what `default` names), so a run
    /// made without the flag keeps its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// `bf16` for a run whose base weights were bf16 on the CPU (`--base-dtype bf16`, or `auto` on a
    /// CPU with AVX512-BF16); `None` for the device's fixed type (f32 on the CPU, bf16 on a GPU), so
    /// a run made in it keeps its key. A run replays only with its type: `--resume`, `repair`,
    /// `revert` and `--run` use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dtype: Option<String>,
    /// After the run's last fact (0 = never, the default): when any fact is not word-perfect on a
    /// training prompt, one more step of every fact of the run, a consolidation of at most this
    /// many epochs over shuffled `mixed_batch`-fact mini-batches with a cosine learning rate — what
    /// `injector repair RUN --below 1 --consolidate --epochs N` does after the run, in the same
    /// process (`inject::Repair`). Not for `mixed`, which trains every fact at once. Left out of the
    /// serialised config when 0, so earlier runs keep their keys.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub consolidate_epochs: i64,
    /// How many of each fact's training prompts the closing consolidation trains on an epoch, taken
    /// in turn from one epoch to the next so that successive epochs cover them all (0 = all, the
    /// default). Fewer make an epoch cheaper. Only with `consolidate_epochs`; left out of the
    /// serialised config when 0.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub consolidate_prompts: usize,
}

/// How `spaced:K` picks the facts it rehearses (see `inject::schedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rehearsal {
    /// A fact whose recall (teacher-forced, on its training prompts) is measured below this has
    /// fallen: it is rehearsed first, and its interval starts again.
    pub below: f64,
    /// Extra tokens rehearsal may spend, as a multiple of the tokens of the facts' own steps
    /// (1.0: at most twice plain sequential's tokens).
    pub budget: f64,
    /// How many of a rehearsed fact's training prompts it is rehearsed with, taken in turn from one
    /// rehearsal of the fact to its next, so that successive rehearsals cover them all; 0 (the
    /// default) for all of them. Fewer prompts make a rehearsal cheaper, so the budget covers more
    /// facts. For `replay:K` too; repair's steps take every prompt but a consolidation's, which
    /// takes `repair --prompts` or the run's `consolidate_prompts`.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub prompts: usize,
}

impl Default for Rehearsal {
    fn default() -> Self {
        Rehearsal {
            below: 0.95,
            budget: 1.0,
            prompts: 0,
        }
    }
}

impl Rehearsal {
    /// The examples a fact trains on at its rehearsal number `turn` (0 for its first), of its
    /// training examples `all`: all of them, or [`prompts`](Self::prompts) of them from position
    /// `turn · prompts` on (wrapping), so any ⌈n / prompts⌉ successive rehearsals cover all n.
    pub fn examples<'e, T>(&self, all: &'e [T], turn: usize) -> Vec<&'e T> {
        let n = all.len();
        if self.prompts == 0 || self.prompts >= n {
            return all.iter().collect();
        }
        let start = turn.wrapping_mul(self.prompts) % n;
        (0..self.prompts).map(|i| &all[(start + i) % n]).collect()
    }
}

impl Rehearsal {
    fn is_default(&self) -> bool {
        *self == Rehearsal::default()
    }
}

fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

const MIXED_BATCH: usize = 16;

fn mixed_batch() -> usize {
    MIXED_BATCH
}

fn is_mixed_batch(v: &usize) -> bool {
    *v == MIXED_BATCH
}

fn yes() -> bool {
    true
}

fn is_yes(v: &bool) -> bool {
    *v
}

impl Default for RunConfig {
    /// Sequential, seed 0, the default training, retention after every step of every earlier fact.
    fn default() -> Self {
        RunConfig {
            strategy: Strategy::Batch(1).to_string(),
            seed: 0,
            train: TrainConfig::default(),
            retention_every: 1,
            retention_sample: 0,
            locality_tokens: 24,
            eval_batch_tokens: 8192,
            free_decoding: true,
            free_every: 0,
            mixed_batch: MIXED_BATCH,
            rehearsal: Rehearsal::default(),
            chat_template: None,
            base_dtype: None,
            consolidate_epochs: 0,
            consolidate_prompts: 0,
        }
    }
}

impl RunConfig {
    /// The settings of one kind of strategy back at their defaults under the others, where they
    /// change nothing but the run's key: `mixed_batch` (mixed), `rehearsal.budget` (spaced:K),
    /// `rehearsal.prompts` (spaced:K and replay:K). `rehearsal.below` stays: it is also `repair`'s
    /// threshold for any run. For a new run's config, after validation.
    pub fn drop_unused(&mut self) {
        let strategy = self.strategy.parse::<Strategy>();
        let defaults = RunConfig::default();
        // A consolidation trains in mini-batches of `mixed_batch` facts too.
        if !matches!(strategy, Ok(Strategy::Mixed)) && self.consolidate_epochs == 0 {
            self.mixed_batch = defaults.mixed_batch;
        }
        if !matches!(strategy, Ok(Strategy::Spaced(_))) {
            self.rehearsal.budget = defaults.rehearsal.budget;
        }
        if !matches!(strategy, Ok(Strategy::Spaced(_) | Strategy::Replay(_))) {
            self.rehearsal.prompts = defaults.rehearsal.prompts;
        }
    }

    /// `train` under `strategy` and `seed`, with the default evaluation cadence (retention after
    /// every step, of every earlier fact).
    pub fn new(strategy: Strategy, seed: u64, train: TrainConfig) -> Self {
        RunConfig {
            strategy: strategy.to_string(),
            seed,
            train,
            ..RunConfig::default()
        }
    }

    pub fn strategy(&self) -> Result<Strategy> {
        self.strategy.parse()
    }

    /// Parses a config from JSON (`--config-json`, a run's config in the ledger) and validates it.
    /// Errors: malformed JSON, an unknown key or an invalid value (bad input, naming `what`).
    pub fn from_json(json: &str, what: &str) -> Result<RunConfig> {
        let c: RunConfig =
            serde_json::from_str(json).map_err(|e| Error::BadInput(format!("{what}: not a run config: {e}")))?;
        c.validate().map_err(|e| Error::BadInput(format!("{what}: {e}")))?;
        Ok(c)
    }

    /// Reads a config the ledger recorded for a run, for uses that only read the run (its replayed
    /// weights, its report): typed, not range-checked, so a run recorded by an earlier, laxer release
    /// can still be read. Continuing to train it goes through [`RunConfig::from_json`].
    /// Errors: a config that does not parse (a ledger error naming the run).
    pub fn from_ledger(json: &str, run: &str) -> Result<RunConfig> {
        serde_json::from_str(json).map_err(|e| Error::Ledger(format!("run {run}: unreadable config: {e}")))
    }

    /// The config as JSON, as the ledger stores it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a config serialises")
    }

    /// Checks every value (errors name the flag and the config field, bad input): numbers finite and
    /// in range, counts at least 1, a known strategy, targets and layers without repeats. What depends
    /// on the model (layers that exist) is checked by [`RunConfig::check_layers`].
    pub fn validate(&self) -> Result<()> {
        self.strategy()?;
        let (t, a) = (&self.train, &self.train.adalora);
        let mut c = Checks::default();
        c.positive(t.lr, "--lr", "train.lr");
        c.non_negative(t.weight_decay, "", "train.weight_decay");
        c.within(t.adam_beta1, false, "", "train.adam_beta1");
        c.within(t.adam_beta2, false, "", "train.adam_beta2");
        c.at_least_one(t.max_steps, "--max-steps", "train.max_steps");
        c.within(t.threshold, true, "--threshold", "train.threshold");
        // The threshold is met at the second optimizer step at the earliest, so a margin of
        // max_steps - 1 could never end.
        c.check(
            (0..t.max_steps - 1).contains(&t.extra_steps) || t.extra_steps == 0,
            "--extra-steps",
            "train.extra_steps",
            "0 to --max-steps − 2",
            t.extra_steps,
        );
        c.at_least_one(t.max_batch_tokens as u64, "", "train.max_batch_tokens");
        c.positive(t.clip_grad_norm, "", "train.clip_grad_norm");
        c.non_negative(t.merge_scale, "--merge-scale", "train.merge_scale");
        c.non_negative(t.preserve, "--preserve", "train.preserve");
        c.at_least_one(t.preserve_batch as u64, "--preserve-batch", "train.preserve_batch");
        let most = crate::eval::locality::MAX_PRESERVE_PROMPTS;
        c.check(
            (1..=most).contains(&t.preserve_prompts),
            "--preserve-prompts",
            "train.preserve_prompts",
            &format!("between 1 and {most}"),
            t.preserve_prompts,
        );
        // The set feeds the preservation term and the projection alone: without either, another
        // size would change nothing but the run's key.
        c.check(
            t.preserve_prompts == default_preserve_prompts() || t.preserve > 0.0 || t.null_space > 0.0,
            "--preserve-prompts",
            "train.preserve_prompts",
            "set only with --preserve or --null-space above 0",
            format!("with --preserve {} --null-space {}", t.preserve, t.null_space),
        );
        c.within(t.null_space, false, "--null-space", "train.null_space");
        c.non_negative(t.protect, "--protect", "train.protect");
        c.check(
            !t.protect_mean || t.protect > 0.0,
            "--protect-mean",
            "train.protect_mean",
            "set only with --protect above 0",
            format!("with --protect {}", t.protect),
        );
        c.within(self.rehearsal.below, true, "--rehearse-below", "rehearsal.below");
        c.at_least_one(self.mixed_batch as u64, "--mixed-batch", "mixed_batch");
        c.non_negative(self.rehearsal.budget, "--rehearse-budget", "rehearsal.budget");
        c.at_least_one(a.init_r, "--init-r", "train.adalora.init_r");
        c.check(
            (1..=a.init_r).contains(&a.target_r),
            "--target-r",
            "train.adalora.target_r",
            "between 1 and --init-r",
            a.target_r,
        );
        c.positive(a.lora_alpha, "--alpha", "train.adalora.lora_alpha");
        c.within(a.dropout, false, "--dropout", "train.adalora.dropout");
        c.non_negative(a.orth_reg_weight, "--orth-reg", "train.adalora.orth_reg_weight");
        c.within(a.beta1, false, "", "train.adalora.beta1");
        c.within(a.beta2, false, "", "train.adalora.beta2");
        c.check(a.tinit >= 0, "", "train.adalora.tinit", "at least 0", a.tinit);
        c.check(a.tfinal >= 0, "", "train.adalora.tfinal", "at least 0", a.tfinal);
        c.at_least_one(a.delta_t, "", "train.adalora.delta_t");
        // The budget falls between tinit and max_steps - tfinal (peft asserts the same).
        c.check(
            a.tinit + a.tfinal < t.max_steps,
            "",
            "train.adalora.tinit + train.adalora.tfinal",
            "less than --max-steps",
            a.tinit + a.tfinal,
        );
        let targets: Vec<&str> = a.targets.iter().map(|p| p.name()).collect();
        c.check(
            !targets.is_empty() && !has_repeats(&targets),
            "--targets",
            "train.adalora.targets",
            "a non-empty list without repeats",
            format!("[{}]", targets.join(",")),
        );
        c.check(
            !has_repeats(&a.layers),
            "--layers",
            "train.adalora.layers",
            "a list without repeats",
            format!("{:?}", a.layers),
        );
        c.check(
            (0..=10_000).contains(&self.consolidate_epochs),
            "--consolidate-epochs",
            "consolidate_epochs",
            "1 to 10000 (0 in a config: no consolidation)",
            self.consolidate_epochs,
        );
        c.check(
            self.consolidate_prompts == 0 || self.consolidate_epochs > 0,
            "--consolidate-prompts",
            "consolidate_prompts",
            "set only with --consolidate",
            format!("{} without it", self.consolidate_prompts),
        );
        if self.consolidate_epochs > 0 {
            if matches!(self.strategy(), Ok(Strategy::Mixed)) {
                c.problems.push(
                    "--consolidate: not with mixed, which trains every fact at once (compare: leave mixed out)".into(),
                );
            }
            // At least two mini-batches an epoch: AdaLoRA's budget needs an optimizer step between.
            c.check(
                a.tinit + a.tfinal < 2 * self.consolidate_epochs,
                "--consolidate-epochs",
                "consolidate_epochs",
                "more than (train.adalora.tinit + tfinal) / 2",
                self.consolidate_epochs,
            );
        }
        c.at_least_one(self.retention_every as u64, "--retention-every", "retention_every");
        c.at_least_one(self.locality_tokens as u64, "", "locality_tokens");
        c.at_least_one(self.eval_batch_tokens as u64, "", "eval_batch_tokens");
        if let Some(name) = &self.chat_template {
            c.check(
                !name.trim().is_empty() && name != "default",
                "--chat-template",
                "chat_template",
                "a template's name other than `default` (which is recorded as no name)",
                format!("{name:?}"),
            );
        }
        if let Some(t) = &self.base_dtype {
            c.check(
                t == "bf16",
                "--base-dtype",
                "base_dtype",
                "bf16 (f32 on the CPU is recorded as none)",
                format!("{t:?}"),
            );
        }
        match c.problems.is_empty() {
            true => Ok(()),
            false => Err(Error::BadInput(c.problems.join("; "))),
        }
    }

    /// The `--base-dtype` a recorded run (or a `--config-json`, `what`) on `device` is rebuilt or
    /// continued with: its recorded type, which `flag` may only repeat (or leave `auto`); with none
    /// recorded, `flag`, where `auto` means the device's fixed type
    /// ([`base_kind`](crate::model::base_kind): f32 on the CPU, whatever `auto` gives there now).
    /// An explicit flag is taken for a run that records no type because bf16 runs on the CPU of
    /// session 9 recorded none; replaying with a type the run was not made with fails the weights
    /// hash check. Errors: a type other than the recorded one (bad input naming both).
    pub fn recorded_base_dtype(&self, flag: &str, device: tch::Device, what: &str) -> Result<String> {
        use crate::model::{base_kind, dtype_name};
        match self.base_dtype.as_deref() {
            Some(r) if flag == "auto" || flag == r => Ok(r.to_string()),
            Some(r) => Err(Error::BadInput(format!(
                "--base-dtype {flag}: {what} was made with {r}"
            ))),
            None if flag == "auto" => Ok(dtype_name(base_kind(device))),
            None => Ok(flag.to_string()),
        }
    }

    /// Records `--chat-template NAME` for a new run: `default` is the checkpoint's default, the same
    /// as no flag, and is recorded as no name.
    pub fn set_chat_template(&mut self, name: Option<&str>) {
        self.chat_template = name.filter(|n| *n != "default").map(str::to_string);
    }

    /// The chat template a recorded run (or a `--config-json`, `what`) is rebuilt or continued with;
    /// `flag` (`--chat-template`) may only repeat it. Errors: another template (bad input naming
    /// both).
    pub fn recorded_chat_template(&self, flag: Option<&str>, what: &str) -> Result<Option<&str>> {
        let recorded = self.chat_template.as_deref();
        match flag {
            Some(f) if (f != "default" || recorded.is_some()) && Some(f) != recorded => Err(Error::BadInput(format!(
                "--chat-template {f}: {what} was made with {}",
                recorded.map_or("the model's default chat template".to_string(), |r| format!(
                    "the chat template named {r}"
                ))
            ))),
            _ => Ok(recorded),
        }
    }

    /// Checks the layers to adapt against a model of `n_layers` layers (bad input).
    pub fn check_layers(&self, n_layers: usize) -> Result<()> {
        match self.train.adalora.layers.iter().find(|&&l| l >= n_layers) {
            Some(l) => Err(Error::BadInput(format!(
                "--layers: layer {l} does not exist; the model has layers 0-{}",
                n_layers.saturating_sub(1)
            ))),
            None => Ok(()),
        }
    }
}

fn has_repeats<T: PartialEq>(v: &[T]) -> bool {
    v.iter().enumerate().any(|(i, x)| v[..i].contains(x))
}

/// The problems [`RunConfig::validate`] found, each naming the flag (when there is one) and the field.
#[derive(Default)]
struct Checks {
    problems: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, flag: &str, field: &str, rule: &str, value: impl std::fmt::Display) {
        if ok {
            return;
        }
        self.problems.push(match flag {
            "" => format!("{field} must be {rule}, not {value}"),
            _ => format!("{flag} ({field}) must be {rule}, not {value}"),
        });
    }

    fn positive(&mut self, v: f64, flag: &str, field: &str) {
        self.check(v.is_finite() && v > 0.0, flag, field, "a finite number > 0", v);
    }

    fn non_negative(&mut self, v: f64, flag: &str, field: &str) {
        self.check(v.is_finite() && v >= 0.0, flag, field, "a finite number ≥ 0", v);
    }

    /// In [0, 1] (`closed`) or [0, 1).
    fn within(&mut self, v: f64, closed: bool, flag: &str, field: &str) {
        let ok = v >= 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
        self.check(ok, flag, field, if closed { "in [0, 1]" } else { "in [0, 1)" }, v);
    }

    fn at_least_one(&mut self, v: impl Into<i128> + Copy + std::fmt::Display, flag: &str, field: &str) {
        self.check(v.into() >= 1, flag, field, "at least 1", v);
    }
}

/// Parses `--layers`: `all` (empty: every layer), a range such as `8-20`, a list such as `3,5,7`, or
/// a mix (`1,4-6`). Errors: anything else (bad input).
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    if s == "all" {
        return Ok(Vec::new());
    }
    let bad = || {
        Error::BadInput(format!(
            "--layers '{s}': expected all, a range like 8-20, or a list like 3,5,7"
        ))
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

/// Parses `--targets`: comma-separated projection names (`q_proj,v_proj` or `q,v`). Errors: an unknown
/// name (bad input).
pub fn parse_targets(s: &str) -> Result<Vec<Proj>> {
    s.split(',')
        .map(|p| Proj::parse(p.trim()).ok_or_else(|| Error::BadInput(format!("--targets: unknown projection '{p}'"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig::new(Strategy::Batch(1), 0, TrainConfig::default())
    }

    /// A rehearsal's prompts are taken in turn: with 3 of 8, each rehearsal of a fact starts 3
    /// further on than its last (wrapping), so any 3 successive rehearsals cover every prompt; 0,
    /// or more than there are, takes them all.
    #[test]
    fn rehearsal_prompts_are_taken_in_turn() {
        let all: Vec<usize> = (0..8).collect();
        let rules = |prompts| Rehearsal {
            prompts,
            ..Rehearsal::default()
        };
        let at = |p, idx| rules(p).examples(&all, idx).into_iter().copied().collect::<Vec<_>>();
        assert_eq!(at(3, 0), [0, 1, 2]);
        assert_eq!(at(3, 1), [3, 4, 5]);
        assert_eq!(at(3, 2), [6, 7, 0]);
        let mut seen: Vec<usize> = (5..8).flat_map(|i| at(3, i)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, all);
        assert_eq!(at(0, 4), all);
        assert_eq!(at(9, 4), all);
        // The default leaves the config's JSON (and so every run key) as it was.
        assert!(!RunConfig::default().to_json().contains("prompts"));
        let mut c = RunConfig::default();
        c.rehearsal.prompts = 2;
        assert!(c.to_json().contains(r#""prompts":2"#));
    }

    /// One strategy's settings go back to their defaults under the others; `rehearsal.below`
    /// (repair's threshold too) stays.
    #[test]
    fn settings_of_other_strategies_are_dropped() {
        let c = RunConfig {
            mixed_batch: 4,
            rehearsal: Rehearsal {
                below: 0.9,
                budget: 0.5,
                prompts: 1,
            },
            ..RunConfig::default()
        };
        let with = |s: &str| {
            let mut x = RunConfig {
                strategy: s.into(),
                ..c.clone()
            };
            x.drop_unused();
            (
                x.mixed_batch,
                x.rehearsal.budget,
                x.rehearsal.prompts,
                x.rehearsal.below,
            )
        };
        assert_eq!(with("mixed"), (4, 1.0, 0, 0.9));
        assert_eq!(with("spaced:8"), (MIXED_BATCH, 0.5, 1, 0.9));
        assert_eq!(with("replay:2"), (MIXED_BATCH, 1.0, 1, 0.9));
        assert_eq!(with("sequential"), (MIXED_BATCH, 1.0, 0, 0.9));
    }

    /// The schedules' factors at the ends and the middle; an unknown name is bad input, in a
    /// recorded config too.
    #[test]
    fn lr_schedules_fall_from_one_as_named() {
        let f = |s: LrScheduler, t| s.factor(t, 10);
        assert_eq!([f(LrScheduler::Constant, 0), f(LrScheduler::Constant, 9)], [1.0, 1.0]);
        assert_eq!([f(LrScheduler::Linear, 0), f(LrScheduler::Linear, 5)], [1.0, 0.5]);
        assert!((f(LrScheduler::Linear, 9) - 0.1).abs() < 1e-12);
        assert_eq!(f(LrScheduler::Cosine, 0), 1.0);
        assert!((f(LrScheduler::Cosine, 5) - 0.5).abs() < 1e-12);
        assert!((f(LrScheduler::Cosine, 9) - 0.5 * (1.0 + (0.9 * std::f64::consts::PI).cos())).abs() < 1e-12);
        assert_eq!("cosine".parse::<LrScheduler>().unwrap(), LrScheduler::Cosine);
        let e = "step".parse::<LrScheduler>().unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("constant, linear, cosine"),
            "{e}"
        );
        let json = config()
            .to_json()
            .replace("\"null_space\":0.9", "\"null_space\":0.9,\"lr_scheduler\":\"step\"");
        assert!(RunConfig::from_json(&json, "x").unwrap_err().is_bad_input());
    }

    #[test]
    fn defaults_and_presets_are_valid() {
        for name in PRESETS {
            let c = RunConfig::new(Strategy::Mixed, 3, TrainConfig::preset(name).unwrap());
            c.validate().unwrap();
            assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap(), c);
        }
        assert!(TrainConfig::preset("fast").unwrap_err().is_bad_input());
    }

    /// The serialised form is a run's identity: the default config must serialise exactly as the
    /// releases before this module did (same keys, null_space left out when 0).
    #[test]
    fn serialised_form_is_stable() {
        let json = config().to_json();
        assert_eq!(
            json,
            r#"{"strategy":"sequential","seed":0,"train":{"adalora":{"init_r":12,"target_r":8,"lora_alpha":32.0,"dropout":0.0,"orth_reg_weight":0.5,"beta1":0.85,"beta2":0.85,"tinit":0,"tfinal":0,"delta_t":1,"targets":["Gate","Up","Down"],"layers":[]},"lr":0.005,"weight_decay":0.01,"max_steps":60,"threshold":1.0,"max_batch_tokens":4096,"clip_grad_norm":1.0,"merge_scale":1.0,"preserve":4.0,"preserve_batch":8,"null_space":0.9},"retention_every":1,"retention_sample":0,"locality_tokens":24,"eval_batch_tokens":8192}"#
        );
        let mut off = config();
        off.train.null_space = 0.0;
        assert!(!off.to_json().contains("null_space"));
        (off.train.protect, off.train.protect_mean) = (0.03, true);
        assert!(off.to_json().contains(r#""protect":0.03,"protect_mean":true"#));
        assert!(RunConfig::from_json(&off.to_json(), "x").unwrap().train.protect_mean);
        off.train.adam_beta1 = 0.8;
        assert!(off.to_json().contains(r#""adam_beta1":0.8"#));
        // The preservation set's size is written only when it is not the first release's 48.
        assert!(!json.contains("preserve_prompts"));
        off.train.preserve_prompts = 256;
        assert!(off.to_json().contains(r#""preserve_prompts":256"#));
        assert_eq!(
            RunConfig::from_json(&off.to_json(), "x")
                .unwrap()
                .train
                .preserve_prompts,
            256
        );
        assert_eq!(RunConfig::from_json(&json, "x").unwrap().train.preserve_prompts, 48);
    }

    /// A config of the first release (no preserve, preserve_batch or null_space) reads with the
    /// behaviour it had: no preservation and no projection.
    #[test]
    fn first_release_configs_read_as_they_ran() {
        let mut v: serde_json::Value = serde_json::from_str(&config().to_json()).unwrap();
        let t = v["train"].as_object_mut().unwrap();
        for k in ["preserve", "preserve_batch", "null_space"] {
            t.remove(k);
        }
        let c = RunConfig::from_json(&v.to_string(), "ledger").unwrap();
        assert_eq!(
            (c.train.preserve, c.train.preserve_batch, c.train.null_space),
            (0.0, 8, 0.0)
        );
    }

    /// Each schedule's name is the one the flag parses and the config serialises.
    #[test]
    fn lr_scheduler_names_round_trip() {
        for name in LrScheduler::NAMES {
            let s: LrScheduler = name.parse().unwrap();
            assert_eq!(s.name(), name);
            assert_eq!(serde_json::to_value(s).unwrap(), name);
        }
    }

    #[test]
    fn bad_values_are_refused_with_their_names() {
        type Edit = Box<dyn Fn(&mut RunConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.train.lr = f64::NAN), "--lr"),
            (Box::new(|c| c.train.lr = f64::INFINITY), "--lr"),
            (Box::new(|c| c.train.lr = 0.0), "--lr"),
            (Box::new(|c| c.train.adalora.lora_alpha = f64::NAN), "--alpha"),
            (Box::new(|c| c.train.adalora.lora_alpha = 0.0), "--alpha"),
            (Box::new(|c| c.train.merge_scale = f64::NAN), "--merge-scale"),
            (Box::new(|c| c.train.merge_scale = -1.0), "--merge-scale"),
            (Box::new(|c| c.train.adam_beta2 = 1.0), "adam_beta2"),
            (Box::new(|c| c.train.adalora.tinit = 60), "tinit + train.adalora.tfinal"),
            (Box::new(|c| c.train.preserve = -1.0), "--preserve"),
            (Box::new(|c| c.train.adalora.orth_reg_weight = -5.0), "--orth-reg"),
            (Box::new(|c| c.train.null_space = 1.0), "--null-space"),
            (Box::new(|c| c.train.protect = f64::NAN), "--protect"),
            (Box::new(|c| c.train.protect = -1.0), "--protect"),
            (Box::new(|c| c.train.protect_mean = true), "--protect-mean"),
            (Box::new(|c| c.train.threshold = 1.5), "--threshold"),
            (Box::new(|c| c.train.max_steps = 0), "--max-steps"),
            (Box::new(|c| c.train.extra_steps = -1), "--extra-steps"),
            (
                Box::new(|c| c.train.extra_steps = c.train.max_steps - 1),
                "--extra-steps",
            ),
            (Box::new(|c| c.train.adalora.target_r = 13), "--target-r"),
            (Box::new(|c| c.train.adalora.dropout = 1.0), "--dropout"),
            (Box::new(|c| c.train.adalora.targets.clear()), "--targets"),
            (Box::new(|c| c.train.adalora.layers = vec![2, 2]), "--layers"),
            (Box::new(|c| c.retention_every = 0), "--retention-every"),
            (Box::new(|c| c.train.preserve_batch = 0), "--preserve-batch"),
            (Box::new(|c| c.train.preserve_prompts = 0), "--preserve-prompts"),
            (Box::new(|c| c.train.preserve_prompts = 257), "--preserve-prompts"),
            (
                Box::new(|c| {
                    c.train.preserve_prompts = 256;
                    (c.train.preserve, c.train.null_space) = (0.0, 0.0);
                }),
                "--preserve-prompts",
            ),
            (Box::new(|c| c.strategy = "random".into()), "unknown strategy"),
            (Box::new(|c| c.consolidate_epochs = -1), "--consolidate-epochs"),
            (Box::new(|c| c.consolidate_epochs = 10_001), "--consolidate-epochs"),
            (Box::new(|c| c.consolidate_prompts = 4), "--consolidate-prompts"),
            (
                Box::new(|c| {
                    c.consolidate_epochs = 12;
                    c.strategy = "mixed".into();
                }),
                "--consolidate",
            ),
            (
                Box::new(|c| {
                    c.consolidate_epochs = 1;
                    c.train.adalora.tinit = 2;
                }),
                "--consolidate-epochs",
            ),
        ];
        for (edit, name) in cases {
            let mut c = config();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.is_bad_input() && e.to_string().contains(name), "{name}: {e}");
        }
        // NaN cannot even be written as JSON: serde writes null, which reads back as an error.
        let mut c = config();
        c.train.lr = f64::NAN;
        assert!(RunConfig::from_json(&c.to_json(), "--config-json")
            .unwrap_err()
            .is_bad_input());
        // A run without a closing consolidation keeps the key it had before the field existed; one
        // with it keeps its mini-batch whatever the strategy.
        assert!(!config().to_json().contains("consolidate"));
        let mut c = config();
        (c.consolidate_epochs, c.mixed_batch) = (12, 4);
        c.drop_unused();
        assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap().mixed_batch, 4);
        assert!(!c.to_json().contains("consolidate_prompts"));
        c.consolidate_prompts = 4;
        assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap().consolidate_prompts, 4);
        let unknown = config().to_json().replace("\"seed\"", "\"sead\"");
        let e = RunConfig::from_json(&unknown, "--config-json").unwrap_err();
        assert!(e.to_string().contains("sead"), "{e}");
    }

    /// A bf16 run on the CPU records its type; the device's fixed type (f32 on the CPU, bf16 on a
    /// GPU) is recorded as none — so a CPU run made before `auto` meant bf16 there still replays in
    /// f32 by default — and a recorded run only takes its own type again.
    #[test]
    fn base_dtypes_are_recorded_for_bf16_on_the_cpu_only() {
        let cpu = tch::Device::Cpu;
        let mut c = RunConfig::default();
        assert_eq!(c.recorded_base_dtype("auto", cpu, "run r").unwrap(), "f32");
        assert_eq!(c.recorded_base_dtype("f32", cpu, "run r").unwrap(), "f32");
        // Session 9's bf16 CPU runs recorded no type: an explicit flag replays them.
        assert_eq!(c.recorded_base_dtype("bf16", cpu, "run r").unwrap(), "bf16");
        assert_eq!(
            c.recorded_base_dtype("auto", tch::Device::Cuda(0), "run r").unwrap(),
            "bf16"
        );
        assert_eq!(
            c.recorded_base_dtype("bf16", tch::Device::Cuda(0), "run r").unwrap(),
            "bf16"
        );
        c.base_dtype = Some("bf16".into());
        assert!(c.to_json().ends_with(r#","base_dtype":"bf16"}"#));
        assert_eq!(c.recorded_base_dtype("auto", cpu, "run r").unwrap(), "bf16");
        assert_eq!(c.recorded_base_dtype("bf16", cpu, "run r").unwrap(), "bf16");
        let e = c.recorded_base_dtype("f32", cpu, "run r").unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("run r was made with bf16"),
            "{e}"
        );
        c.base_dtype = Some("f32".into());
        assert!(c.validate().unwrap_err().is_bad_input());
    }

    /// A run records the chosen template by name; `default` and no flag are the same run, and a
    /// recorded run only takes its own template again.
    #[test]
    fn chat_templates_are_recorded_by_name() {
        let mut c = config();
        c.set_chat_template(Some("default"));
        assert_eq!(c.to_json(), config().to_json(), "no flag and `default` are one run");
        c.set_chat_template(Some("tool_use"));
        assert!(
            c.to_json().ends_with(r#","chat_template":"tool_use"}"#),
            "{}",
            c.to_json()
        );
        assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap(), c);
        assert_eq!(c.recorded_chat_template(None, "run r").unwrap(), Some("tool_use"));
        assert_eq!(
            c.recorded_chat_template(Some("tool_use"), "run r").unwrap(),
            Some("tool_use")
        );
        let e = c.recorded_chat_template(Some("rag"), "run r").unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("named tool_use"), "{e}");
        let plain = config();
        assert_eq!(plain.recorded_chat_template(Some("default"), "run r").unwrap(), None);
        let e = plain.recorded_chat_template(Some("rag"), "run r").unwrap_err();
        assert!(e.to_string().contains("the model's default chat template"), "{e}");
        for bad in ["", " ", "default"] {
            let mut c = config();
            c.chat_template = Some(bad.into());
            assert!(
                c.validate().unwrap_err().to_string().contains("--chat-template"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn layers_and_targets_parse() {
        assert_eq!(parse_layers("all").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_layers("1,4-6").unwrap(), vec![1, 4, 5, 6]);
        assert!(parse_layers("6-4").is_err() && parse_layers("x").is_err());
        assert_eq!(parse_targets("q, v_proj").unwrap(), vec![Proj::Q, Proj::V]);
        assert!(parse_targets("q,lm_head").unwrap_err().is_bad_input());
        let mut c = config();
        c.train.adalora.layers = vec![0, 29];
        assert!(c.check_layers(30).is_ok());
        c.train.adalora.layers = vec![99];
        assert!(c.check_layers(30).unwrap_err().to_string().contains("layer 99"));
    }
}

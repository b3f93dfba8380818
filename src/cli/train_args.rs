//! Training and evaluation flags shared by `run` (and `compare`), resolved into a [`RunConfig`].
use clap::Args;
use injector::config::{parse_layers, parse_targets, LrScheduler, RunConfig, Strategy, TrainConfig};
use injector::Error;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Start from a named preset: `default` (the measured defaults; README, "Choosing the defaults")
    /// or `article` (the source article: q_proj/v_proj,
    /// alpha 32, dropout 0.1, no preservation, stop at 0.9). Flags below override it (the defaults they
    /// name are the `default` preset's); `ledger show` prints a run's whole config.
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Learning rate of AdamW (default 0.005).
    #[arg(long)]
    pub lr: Option<f64>,
    /// How the learning rate falls over a training's --max-steps optimizer steps (for mixed at scale,
    /// over every mini-batch of every epoch): constant, linear or cosine (default constant).
    #[arg(long, value_parser = LrScheduler::NAMES)]
    pub lr_scheduler: Option<String>,
    /// AdaLoRA lora_alpha (the scaling; default 32).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// AdaLoRA initial rank per module (default 12).
    #[arg(long)]
    pub init_r: Option<i64>,
    /// AdaLoRA target rank per module (the budget the allocator ends at; default 8).
    #[arg(long)]
    pub target_r: Option<i64>,
    /// Projections to adapt, comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
    /// (default gate_proj,up_proj,down_proj).
    #[arg(long)]
    pub targets: Option<String>,
    /// Layers to adapt: all (the default), or a list/range such as `8-20` or `3,5,7`.
    #[arg(long)]
    pub layers: Option<String>,
    /// Dropout on the adapter input (default 0).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Weight of AdaLoRA's orthogonal regulariser (default 0.5).
    #[arg(long)]
    pub orth_reg: Option<f64>,
    /// Most optimizer steps per injection step (also the allocator's total_step; default 60).
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Token accuracy on the training prompts at which a step's training stops, in [0, 1] (default 1).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Optimizer steps trained on after every fact first meets --threshold, a margin (for mixed at
    /// scale, epochs; not in repair's consolidations); 0 to --max-steps − 2 (default 0: stop there).
    /// Measured: free recall no better (README, Capacity, session 12).
    #[arg(long)]
    pub extra_steps: Option<i64>,
    /// Multiply each merged update by this (default 1).
    #[arg(long)]
    pub merge_scale: Option<f64>,
    /// Weight of the preservation term (KL to the base model on unrelated prompts); 0 turns it off
    /// (default 4).
    #[arg(long)]
    pub preserve: Option<f64>,
    /// Preservation prompts per optimizer step (taken in turn from the set), at least 1
    /// (default 8).
    #[arg(long)]
    pub preserve_batch: Option<usize>,
    /// How many built-in unrelated prompts make the preservation set, for the preservation term and
    /// the null-space projection (refused when both are 0; both are on by default): 1 to 256
    /// (default 48, the set of every earlier run). The added prompts ask none of the locality
    /// prompts' questions, though some share a broad topic. Each keeps its base log-probabilities
    /// in memory (~5 MB with SmolLM2's vocabulary: 1.2 GB at 256). Experimental (README Capacity,
    /// session 17).
    #[arg(long)]
    pub preserve_prompts: Option<usize>,
    /// Null-space projection: each adapter's input loses the principal directions carrying this
    /// share, in [0, 1), of the base model's input energy on the preservation prompts (0 = off;
    /// default 0.9).
    #[arg(long)]
    pub null_space: Option<f64>,
    /// Weight of the interference penalty: the update's squared change to the activations of every
    /// fact injected before, at every adapted site, summed over those facts, so a fixed weight grows
    /// stronger with their number (with --protect-mean: their mean) (0 = off, the default). Trades
    /// tokens for locality (README Capacity, session 11); with spaced/replay or repair it also resists the repairs. A run that
    /// goes on in a later invocation records its earlier facts at the weights it resumes from, so it
    /// does not end at an uninterrupted run's weights.
    #[arg(long)]
    pub protect: Option<f64>,
    /// The interference penalty over the mean of the earlier facts' activations, not their sum: a
    /// fixed strength as facts accumulate (`--protect` is then one average earlier fact's weight).
    /// Needs --protect above 0. Experimental (README Capacity, session 14).
    #[arg(long)]
    pub protect_mean: bool,
    /// Evaluate every injected fact (retention) after every k-th step (k ≥ 1; default 1); always
    /// after the last.
    #[arg(long)]
    pub retention_every: Option<usize>,
    /// At intermediate retention checks, score only a seeded sample of this many earlier facts (0 = all,
    /// the default).
    #[arg(long)]
    pub retention_sample: Option<usize>,
    /// Skip the free-decoding scores (greedy answers to the scored facts' prompts and probes);
    /// teacher-forced scores only. Evaluation only: the weights are the same.
    #[arg(long)]
    pub no_free_decoding: bool,
    /// Free-decoding scores also after every k-th step (of the facts scored then), not only after the
    /// last step (0, the default). Each pass costs about one decoding batch on a GPU.
    #[arg(long)]
    pub free_every: Option<usize>,
    /// mixed, and --consolidate (ignored otherwise): facts per optimizer step; with more facts,
    /// mixed (and the closing consolidation) trains in epochs over shuffled mini-batches of this
    /// many facts, and --max-steps (--consolidate-epochs) counts epochs (default 16).
    #[arg(long)]
    pub mixed_batch: Option<usize>,
    /// After the last fact, when any fact is not word-perfect on a training prompt: one more step of
    /// every fact of the run, as `repair RUN --below 1 --consolidate` does after a run, in the same
    /// process (the same weights). Past --mixed-batch facts it is a consolidation (epochs over
    /// shuffled --mixed-batch-fact mini-batches with a cosine learning rate); with fewer, one step
    /// under the run's training flags. Not with mixed (in compare, leave mixed out). At 1,000
    /// facts (README, Capacity): alone, recall 0.77 → 0.995, free recall 0.05 → 0.98, 1.93×
    /// sequential's tokens, locality ~0.80 (session 13); with --protect 2 --protect-mean
    /// --preserve-prompts 256 --consolidate-epochs 20 --consolidate-prompts 2, recall 0.99, free
    /// 0.96–0.98, locality 0.908 / 0.902 / 0.894 at three seeds (0.9 missed at the third),
    /// 1.57–1.60× (session 17).
    #[arg(long)]
    pub consolidate: bool,
    /// --consolidate's most epochs when it is a consolidation, 1 to 10000 (default 12).
    #[arg(long, requires = "consolidate")]
    pub consolidate_epochs: Option<i64>,
    /// --consolidate's training prompts per fact an epoch, taken in turn from one epoch to the next
    /// so that successive epochs cover them all (default 0: all of them); fewer make an epoch
    /// cheaper. Experimental: README, Capacity, sessions 15–16.
    #[arg(long, requires = "consolidate")]
    pub consolidate_prompts: Option<usize>,
    /// spaced:K: a fact measured below this recall has fallen and is rehearsed first (default 0.95;
    /// also `repair`'s default threshold for the run).
    #[arg(long)]
    pub rehearse_below: Option<f64>,
    /// spaced:K only (ignored by the others): extra tokens rehearsal may spend, as a multiple of the
    /// facts' own tokens (default 1).
    #[arg(long)]
    pub rehearse_budget: Option<f64>,
    /// spaced:K and replay:K: rehearse a fact with this many of its training prompts, taken in turn
    /// from one of its rehearsals to the next (default 0: all of them; other strategies ignore it).
    #[arg(long)]
    pub rehearse_prompts: Option<usize>,
}

impl TrainArgs {
    /// The flags given that change a run's config (`--preset` other than `default` included), by
    /// name: a resumed run keeps its recorded config, so `run --resume` refuses them.
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut on = |set: bool, name: &'static str| {
            if set {
                v.push(name);
            }
        };
        on(self.preset != "default", "--preset");
        on(self.lr.is_some(), "--lr");
        on(self.lr_scheduler.is_some(), "--lr-scheduler");
        on(self.alpha.is_some(), "--alpha");
        on(self.init_r.is_some(), "--init-r");
        on(self.target_r.is_some(), "--target-r");
        on(self.targets.is_some(), "--targets");
        on(self.layers.is_some(), "--layers");
        on(self.dropout.is_some(), "--dropout");
        on(self.orth_reg.is_some(), "--orth-reg");
        on(self.max_steps.is_some(), "--max-steps");
        on(self.threshold.is_some(), "--threshold");
        on(self.extra_steps.is_some(), "--extra-steps");
        on(self.merge_scale.is_some(), "--merge-scale");
        on(self.preserve.is_some(), "--preserve");
        on(self.preserve_batch.is_some(), "--preserve-batch");
        on(self.preserve_prompts.is_some(), "--preserve-prompts");
        on(self.null_space.is_some(), "--null-space");
        on(self.protect.is_some(), "--protect");
        on(self.protect_mean, "--protect-mean");
        on(self.retention_every.is_some(), "--retention-every");
        on(self.retention_sample.is_some(), "--retention-sample");
        on(self.no_free_decoding, "--no-free-decoding");
        on(self.free_every.is_some(), "--free-every");
        on(self.mixed_batch.is_some(), "--mixed-batch");
        on(self.consolidate, "--consolidate");
        on(self.consolidate_epochs.is_some(), "--consolidate-epochs");
        on(self.consolidate_prompts.is_some(), "--consolidate-prompts");
        on(self.rehearse_below.is_some(), "--rehearse-below");
        on(self.rehearse_budget.is_some(), "--rehearse-budget");
        on(self.rehearse_prompts.is_some(), "--rehearse-prompts");
        v
    }

    /// The preset with the flags applied, under `strategy` and `seed` (the config's defaults when not
    /// given), validated (bad input).
    pub fn run_config(&self, strategy: Option<Strategy>, seed: Option<u64>) -> Result<RunConfig, Error> {
        let mut t = TrainConfig::preset(&self.preset)?;
        let a = &mut t.adalora;
        set(&mut a.lora_alpha, self.alpha);
        set(&mut a.init_r, self.init_r);
        set(&mut a.target_r, self.target_r);
        set(&mut a.dropout, self.dropout);
        set(&mut a.orth_reg_weight, self.orth_reg);
        if let Some(s) = &self.targets {
            a.targets = parse_targets(s)?;
        }
        if let Some(s) = &self.layers {
            a.layers = parse_layers(s)?;
        }
        set(&mut t.lr, self.lr);
        if let Some(s) = &self.lr_scheduler {
            t.lr_scheduler = s.parse()?;
        }
        set(&mut t.max_steps, self.max_steps);
        set(&mut t.threshold, self.threshold);
        set(&mut t.extra_steps, self.extra_steps);
        set(&mut t.merge_scale, self.merge_scale);
        set(&mut t.preserve, self.preserve);
        set(&mut t.preserve_batch, self.preserve_batch);
        set(&mut t.preserve_prompts, self.preserve_prompts);
        set(&mut t.null_space, self.null_space);
        set(&mut t.protect, self.protect);
        t.protect_mean |= self.protect_mean;
        let mut c = RunConfig {
            train: t,
            ..RunConfig::default()
        };
        if let Some(s) = strategy {
            c.strategy = s.to_string();
        }
        set(&mut c.seed, seed);
        set(&mut c.retention_every, self.retention_every);
        set(&mut c.retention_sample, self.retention_sample);
        c.free_decoding = !self.no_free_decoding;
        set(&mut c.free_every, self.free_every);
        set(&mut c.mixed_batch, self.mixed_batch);
        set(&mut c.rehearsal.below, self.rehearse_below);
        set(&mut c.rehearsal.budget, self.rehearse_budget);
        set(&mut c.rehearsal.prompts, self.rehearse_prompts);
        if self.consolidate {
            c.consolidate_epochs = match self.consolidate_epochs.unwrap_or(CONSOLIDATE_EPOCHS) {
                n if n < 1 => {
                    return Err(Error::BadInput(format!(
                        "--consolidate-epochs {n}: expected 1 to 10000"
                    )));
                }
                n => n,
            };
            set(&mut c.consolidate_prompts, self.consolidate_prompts);
        }
        c.validate()?;
        // Once checked, the flags of one strategy change nothing under the others but the key.
        c.drop_unused();
        Ok(c)
    }
}

pub use injector::config::CONSOLIDATE_EPOCHS;

fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// `--rehearse-prompts` reaches the strategies that rehearse and no other: a sequential or
    /// mixed run made with it keeps the key it has without it.
    /// Every default a flag's help names is the `default` preset's (or the run config's), so the
    /// help cannot drift from what a run without the flag uses.
    #[test]
    fn the_help_names_the_defaults_runs_use() {
        use clap::CommandFactory;
        let c = RunConfig::default();
        let (t, a) = (&c.train, &c.train.adalora);
        assert_eq!(TrainConfig::preset("default").unwrap(), *t);
        let cmd = Flags::command();
        let help = |id: &str| -> String {
            let arg = cmd
                .get_arguments()
                .find(|x| x.get_id() == id)
                .unwrap_or_else(|| panic!("{id}"));
            arg.get_long_help()
                .or(arg.get_help())
                .unwrap()
                .to_string()
                .replace('\n', " ")
        };
        let g = |v: f64| format!("{v}");
        for (id, want) in [
            ("lr", format!("default {}", g(t.lr))),
            (
                "lr_scheduler",
                format!(
                    "default {}",
                    serde_json::to_value(t.lr_scheduler).unwrap().as_str().unwrap()
                ),
            ),
            ("alpha", format!("default {}", g(a.lora_alpha))),
            ("init_r", format!("default {}", a.init_r)),
            ("target_r", format!("default {}", a.target_r)),
            ("dropout", format!("default {}", g(a.dropout))),
            ("orth_reg", format!("default {}", g(a.orth_reg_weight))),
            ("max_steps", format!("default {}", t.max_steps)),
            ("threshold", format!("default {}", g(t.threshold))),
            ("extra_steps", format!("default {}", t.extra_steps)),
            ("merge_scale", format!("default {}", g(t.merge_scale))),
            ("preserve", format!("default {}", g(t.preserve))),
            ("preserve_batch", format!("default {}", t.preserve_batch)),
            ("preserve_prompts", format!("default {}", t.preserve_prompts)),
            ("null_space", format!("default {}", g(t.null_space))),
            ("protect", "(0 = off, the default)".to_string()),
            ("retention_every", format!("default {}", c.retention_every)),
            ("mixed_batch", format!("default {}", c.mixed_batch)),
            ("rehearse_below", format!("default {}", g(c.rehearsal.below))),
            ("rehearse_budget", format!("default {}", g(c.rehearsal.budget))),
            ("rehearse_prompts", format!("default {}", c.rehearsal.prompts)),
            ("consolidate_epochs", format!("default {CONSOLIDATE_EPOCHS}")),
            ("consolidate_prompts", "default 0".to_string()),
        ] {
            assert!(help(id).contains(&want), "--{id}: {:?} lacks {want:?}", help(id));
        }
        assert_eq!((c.retention_sample, c.free_every), (0, 0));
        assert!(
            help("retention_sample").contains("0 = all, the default")
                && help("free_every").contains("(0, the default)")
        );
        let names: Vec<&str> = a.targets.iter().map(|p| p.name()).collect();
        assert!(
            help("targets").contains(&format!("default {}", names.join(","))),
            "{names:?}"
        );
        assert!(a.layers.is_empty() && help("layers").contains("all (the default)"));
    }

    /// Every training flag, given, is named by `given` (so `run --resume` refuses each of them).
    #[test]
    fn every_training_flag_given_is_named() {
        use clap::CommandFactory;
        let cmd = Flags::command();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect();
        assert!(flags.len() >= 23, "{flags:?}");
        assert!(Flags::parse_from(["x"]).train.given().is_empty());
        for f in &flags {
            if f == "--consolidate-epochs" || f == "--consolidate-prompts" {
                // Only beside --consolidate.
                let given = Flags::parse_from(["x", "--consolidate", f, "3"]).train.given();
                assert_eq!(given, ["--consolidate", f.as_str()]);
                assert!(Flags::try_parse_from(["x", f, "3"]).is_err());
                continue;
            }
            let value = match f.as_str() {
                "--no-free-decoding" | "--consolidate" | "--protect-mean" => None,
                "--preset" => Some("article"),
                "--targets" => Some("gate_proj"),
                "--layers" => Some("1-2"),
                "--lr-scheduler" => Some("cosine"),
                _ => Some("1"),
            };
            let mut argv = vec!["x", f.as_str()];
            argv.extend(value);
            assert_eq!(Flags::parse_from(argv).train.given(), [f.as_str()]);
        }
    }

    #[test]
    fn rehearse_prompts_applies_only_where_facts_are_rehearsed() {
        let args = Flags::parse_from(["x", "--rehearse-prompts", "1"]).train;
        let prompts = |s: &str| {
            args.run_config(Some(s.parse().unwrap()), None)
                .unwrap()
                .rehearsal
                .prompts
        };
        assert_eq!((prompts("spaced:8"), prompts("replay:2")), (1, 1));
        assert_eq!((prompts("sequential"), prompts("mixed"), prompts("batch:4")), (0, 0, 0));
        let plain = Flags::parse_from(["x"]).train;
        let key = |a: &TrainArgs| a.run_config(Some(Strategy::Mixed), None).unwrap().to_json();
        assert_eq!(key(&args), key(&plain));
        // --mixed-batch reaches mixed alone and --rehearse-budget spaced alone (checked either way).
        let one = Flags::parse_from(["x", "--mixed-batch", "4", "--rehearse-budget", "0.5"]).train;
        let config = |a: &TrainArgs, s: &str| a.run_config(Some(s.parse().unwrap()), None).unwrap();
        assert_eq!(
            (
                config(&one, "mixed").mixed_batch,
                config(&one, "spaced:8").rehearsal.budget
            ),
            (4, 0.5)
        );
        for s in ["sequential", "batch:4", "replay:2"] {
            assert_eq!(config(&one, s).to_json(), config(&plain, s).to_json(), "{s}");
        }
        let bad = Flags::parse_from(["x", "--mixed-batch", "0"]).train;
        assert!(bad
            .run_config(Some(Strategy::Batch(1)), None)
            .unwrap_err()
            .is_bad_input());
    }

    /// `--lr-scheduler` reaches the config; its default (constant) leaves the key of a run made
    /// before the flag existed.
    #[test]
    fn the_lr_scheduler_flag_sets_the_schedule_and_constant_keeps_the_key() {
        let config = |argv: &[&str]| {
            let args = Flags::parse_from(std::iter::once("x").chain(argv.iter().copied())).train;
            args.run_config(Some(Strategy::Mixed), None).unwrap()
        };
        assert_eq!(
            config(&["--lr-scheduler", "cosine"]).train.lr_scheduler,
            LrScheduler::Cosine
        );
        assert_eq!(config(&["--lr-scheduler", "constant"]).to_json(), config(&[]).to_json());
        assert!(!config(&[]).to_json().contains("lr_scheduler"));
        assert!(config(&["--lr-scheduler", "linear"])
            .to_json()
            .contains("\"lr_scheduler\":\"linear\""));
        assert!(Flags::try_parse_from(["x", "--lr-scheduler", "step"]).is_err());
    }
}

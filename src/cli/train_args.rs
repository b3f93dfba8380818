//! Training and evaluation flags shared by `run` (and `compare`), resolved into a [`RunConfig`].
use clap::Args;
use injector::adapter::AdaLoraConfig;
use injector::inject::{RunConfig, Strategy, TrainConfig};
use injector::model::Proj;
use injector::Error;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Start from a named preset: `default` (MLP projections, alpha 32, preservation 4, null-space
    /// projection 0.9, stop at accuracy 1.0) or `article` (the source article: q_proj/v_proj, alpha 32, dropout 0.1, no
    /// preservation, stop at 0.9). Flags below override it.
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Learning rate of AdamW.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdaLoRA lora_alpha (the scaling).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// AdaLoRA initial rank per module.
    #[arg(long)]
    pub init_r: Option<i64>,
    /// AdaLoRA target rank per module (the budget the allocator ends at).
    #[arg(long)]
    pub target_r: Option<i64>,
    /// Projections to adapt, comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long)]
    pub targets: Option<String>,
    /// Layers to adapt: all, or a list/range such as `8-20` or `3,5,7`.
    #[arg(long)]
    pub layers: Option<String>,
    /// Dropout on the adapter input.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Weight of AdaLoRA's orthogonal regulariser.
    #[arg(long)]
    pub orth_reg: Option<f64>,
    /// Most optimizer steps per injection step (also the allocator's total_step).
    #[arg(long)]
    pub max_steps: Option<i64>,
    /// Token accuracy on the training prompts at which a step's training stops (default 1.0).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Multiply each merged update by this.
    #[arg(long)]
    pub merge_scale: Option<f64>,
    /// Weight of the preservation term (KL to the base model on unrelated prompts); 0 turns it off.
    #[arg(long)]
    pub preserve: Option<f64>,
    /// Preservation prompts per optimizer step (taken in turn from the set of 48).
    #[arg(long)]
    pub preserve_batch: Option<usize>,
    /// Null-space projection: each adapter's input loses the principal directions carrying this
    /// share (0–1) of the base model's input energy on the preservation prompts (default 0.9;
    /// 0 = off, the defaults before it).
    #[arg(long)]
    pub null_space: Option<f64>,
    /// Evaluate every injected fact (retention) after every k-th step; always after the last.
    #[arg(long)]
    pub retention_every: Option<usize>,
    /// At intermediate retention checks, score only a fixed sample of this many earlier facts.
    #[arg(long)]
    pub retention_sample: Option<usize>,
}

fn parse_layers(s: &str) -> Result<Vec<usize>, Error> {
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

impl TrainArgs {
    /// The preset with the flags applied.
    pub fn train_config(&self) -> Result<TrainConfig, Error> {
        let mut t = match self.preset.as_str() {
            "default" => TrainConfig::default(),
            "article" => TrainConfig {
                lr: 5e-3,
                threshold: 0.9,
                preserve: 0.0,
                null_space: 0.0,
                adalora: AdaLoraConfig {
                    lora_alpha: 32.0,
                    dropout: 0.1,
                    targets: vec![Proj::Q, Proj::V],
                    ..Default::default()
                },
                ..TrainConfig::default()
            },
            other => {
                return Err(Error::BadInput(format!(
                    "unknown --preset '{other}': expected default or article"
                )))
            }
        };
        let a = &mut t.adalora;
        if let Some(v) = self.alpha {
            a.lora_alpha = v;
        }
        if let Some(v) = self.init_r {
            a.init_r = v;
        }
        if let Some(v) = self.target_r {
            a.target_r = v;
        }
        if let Some(v) = self.dropout {
            a.dropout = v;
        }
        if let Some(v) = self.orth_reg {
            a.orth_reg_weight = v;
        }
        if let Some(s) = &self.targets {
            a.targets = s
                .split(',')
                .map(|p| {
                    Proj::parse(p.trim()).ok_or_else(|| Error::BadInput(format!("--targets: unknown projection '{p}'")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(s) = &self.layers {
            a.layers = parse_layers(s)?;
        }
        if a.init_r < 1 || a.target_r < 1 || a.target_r > a.init_r {
            return Err(Error::BadInput("need 1 ≤ --target-r ≤ --init-r".into()));
        }
        if !(0.0..1.0).contains(&a.dropout) {
            return Err(Error::BadInput("--dropout must be in [0, 1)".into()));
        }
        if let Some(v) = self.lr {
            t.lr = v;
        }
        if let Some(v) = self.max_steps {
            t.max_steps = v;
        }
        if let Some(v) = self.threshold {
            t.threshold = v;
        }
        if let Some(v) = self.merge_scale {
            t.merge_scale = v;
        }
        if let Some(v) = self.preserve {
            t.preserve = v;
        }
        if let Some(v) = self.preserve_batch {
            t.preserve_batch = v.max(1);
        }
        if let Some(v) = self.null_space {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::BadInput("--null-space: expected a share in [0, 1)".into()));
            }
            t.null_space = v;
        }
        if t.lr <= 0.0 || t.max_steps < 1 || !(0.0..=1.0).contains(&t.threshold) {
            return Err(Error::BadInput(
                "need --lr > 0, --max-steps ≥ 1 and --threshold in [0, 1]".into(),
            ));
        }
        Ok(t)
    }

    /// The full run configuration for `strategy`.
    pub fn run_config(&self, strategy: Strategy, seed: u64) -> Result<RunConfig, Error> {
        let mut c = RunConfig::new(strategy, seed, self.train_config()?);
        if let Some(v) = self.retention_every {
            c.retention_every = v.max(1);
        }
        if let Some(v) = self.retention_sample {
            c.retention_sample = v;
        }
        Ok(c)
    }
}

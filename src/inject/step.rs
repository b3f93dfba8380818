//! One injection step: a fresh AdaLoRA adapter trained on every prompt of the group's facts until
//! each fact reaches the recall threshold on its training prompts (or max_steps), then its factors.
use crate::adapter::merge::{factors, Factor};
use crate::adapter::{AdaLora, AdaLoraConfig};
use crate::error::Result;
use crate::eval::batch::{build, loss_sum, token_accuracy, Batch, Example};
use crate::model::{Llama, Proj};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{Kind, Tensor};

/// Training hyper-parameters of a step (saved with the run, so results can be reproduced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub adalora: AdaLoraConfig,
    pub lr: f64,
    pub weight_decay: f64,
    pub max_steps: i64,
    /// Training of a step stops once every fact's token accuracy on its training prompts reaches
    /// this (1.0 by default: stopping at 0.9 leaves facts at the edge, where later edits push them out).
    pub threshold: f64,
    /// Padded tokens per micro-batch; a larger group is split and its gradients accumulated.
    pub max_batch_tokens: usize,
    pub clip_grad_norm: f64,
    /// Multiplies the merged update (1 = merge as trained).
    pub merge_scale: f64,
    /// Weight of the preservation term: KL(base ‖ current) of the next-token distributions on the
    /// base model's own answers to unrelated prompts (0 = off).
    #[serde(default)]
    pub preserve: f64,
    /// Preservation prompts per optimizer step (taken in turn from the whole set).
    #[serde(default = "default_preserve_batch")]
    pub preserve_batch: usize,
}

fn default_preserve_batch() -> usize {
    8
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            adalora: AdaLoraConfig::default(),
            lr: 5e-3,
            weight_decay: 0.01,
            max_steps: 60,
            threshold: 1.0,
            max_batch_tokens: 4096,
            clip_grad_norm: 1.0,
            merge_scale: 1.0,
            preserve: 4.0,
            preserve_batch: default_preserve_batch(),
        }
    }
}

/// The preservation set: unrelated prompts with the base model's own answers, in batches of a few
/// prompts each, with the base model's log-probabilities at their target positions. Optimizer step
/// s uses batch s mod n, so over a step's training every prompt takes its turn.
pub struct Preserve {
    pub batches: Vec<Batch>,
    pub base_logp: Vec<Tensor>,
}

impl Preserve {
    /// Caches the base model's distributions (call before any edit).
    pub fn new(model: &Llama, examples: &[Example], per_batch: usize) -> Self {
        let batches: Vec<Batch> = examples
            .chunks(per_batch.max(1))
            .map(|c| build(c, usize::MAX, model.device()).remove(0))
            .collect();
        let base_logp = tch::no_grad(|| {
            batches
                .iter()
                .map(|b| b.logits(model, &crate::model::NoAdapter).log_softmax(-1, Kind::Float))
                .collect()
        });
        Preserve { batches, base_logp }
    }

    /// Mean over the positions of batch `step mod n` of KL(base ‖ current).
    fn kl(&self, model: &Llama, ad: &AdaLora, step: i64) -> Tensor {
        let i = step as usize % self.batches.len();
        let (b, base) = (&self.batches[i], &self.base_logp[i]);
        let cur = b.logits(model, ad).log_softmax(-1, Kind::Float);
        (base.exp() * (base - cur)).sum(Kind::Float) / base.size()[0].max(1) as f64
    }
}

/// What a step produced.
pub struct Trained {
    pub factors: Vec<Factor>,
    pub optimizer_steps: i64,
    /// Training loss (cross-entropy + orthogonal regularisation) per optimizer step.
    pub losses: Vec<f64>,
    /// Recall per fact of the group when training stopped (teacher-forced, training prompts).
    pub recall: Vec<f64>,
    /// Real tokens processed in forward passes.
    pub tokens: usize,
    pub seconds: f64,
    /// Unmasked rank per adapted weight.
    pub rank_pattern: Vec<(String, i64)>,
}

/// The (layer, projection, out, in) of every weight the adapter attaches to.
pub fn adapter_shapes(model: &Llama, cfg: &AdaLoraConfig) -> Vec<(usize, Proj, i64, i64)> {
    let layers: Vec<usize> = if cfg.layers.is_empty() {
        (0..model.cfg.num_hidden_layers).collect()
    } else {
        cfg.layers.clone()
    };
    let mut v = Vec::new();
    for l in layers {
        for &p in &cfg.targets {
            if let Some(w) = model.weight(&p.weight_key(l)) {
                v.push((l, p, w.size()[0], w.size()[1]));
            }
        }
    }
    v
}

fn per_fact(acc: &[f64], owner: &[usize], n_facts: usize) -> Vec<f64> {
    let mut sum = vec![0.0; n_facts];
    let mut cnt = vec![0usize; n_facts];
    for (a, &o) in acc.iter().zip(owner) {
        sum[o] += a;
        cnt[o] += 1;
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
        .collect()
}

/// One adapter being trained on pre-built batches: the loop body of [`train`], also timed by
/// `bench/train_step.rs`.
pub struct Trainer<'a> {
    model: &'a Llama,
    pub batches: Vec<Batch>,
    n_examples: usize,
    n_targets: usize,
    pub adapter: AdaLora,
    opt: tch::nn::Optimizer,
    cfg: TrainConfig,
    preserve: Option<&'a Preserve>,
    step: i64,
    /// Real tokens through forward passes so far.
    pub tokens: usize,
}

impl<'a> Trainer<'a> {
    pub fn new(
        model: &'a Llama,
        examples: &[Example],
        cfg: &TrainConfig,
        preserve: Option<&'a Preserve>,
        seed: u64,
    ) -> Result<Self> {
        let dev = model.device();
        let batches = build(examples, cfg.max_batch_tokens, dev);
        let adapter = AdaLora::new(
            &cfg.adalora,
            &adapter_shapes(model, &cfg.adalora),
            dev,
            seed,
            cfg.max_steps,
        );
        let opt = tch::nn::adamw(0.9, 0.999, cfg.weight_decay).build(&adapter.vs, cfg.lr)?;
        Ok(Trainer {
            model,
            batches,
            n_examples: examples.len(),
            n_targets: examples.iter().map(|e| e.target.len()).sum(),
            adapter,
            opt,
            cfg: cfg.clone(),
            preserve,
            step: 0,
            tokens: 0,
        })
    }

    /// Forward and backward over every micro-batch; returns the loss (a scalar tensor, not read here)
    /// and the per-example (correct, total) argmax counts of this pass.
    pub fn forward_backward(&mut self) -> (Tensor, Vec<(usize, usize)>) {
        self.opt.zero_grad();
        self.adapter.training = true;
        let mut acc = vec![(0usize, 0usize); self.n_examples];
        let mut total = Tensor::zeros([], (Kind::Float, self.model.device()));
        for b in &self.batches {
            let logits = b.logits(self.model, &self.adapter);
            b.count_correct(&logits, &mut acc);
            let loss = loss_sum(b, &logits) / self.n_targets as f64;
            loss.backward();
            total += loss.detach();
            self.tokens += b.tokens;
        }
        (total, acc)
    }

    /// Regularisers, clipping, the optimizer step and the rank allocator; returns the regulariser.
    pub fn update(&mut self) -> Tensor {
        let orth = self.adapter.orth_reg();
        let reg = match (self.preserve, self.cfg.preserve > 0.0) {
            (Some(p), true) => orth + p.kl(self.model, &self.adapter, self.step) * self.cfg.preserve,
            _ => orth,
        };
        reg.backward();
        self.adapter.clip_grad_norm(self.cfg.clip_grad_norm);
        self.opt.step();
        self.adapter.update_and_allocate(self.step);
        self.step += 1;
        reg.detach()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }
}

/// Trains one adapter on `examples` (`owner[i]` = which of the `n_facts` facts example i belongs to)
/// until every fact reaches the threshold or `max_steps`. `on_step(step, loss, min_recall)` reports.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Llama,
    examples: &[Example],
    owner: &[usize],
    n_facts: usize,
    cfg: &TrainConfig,
    preserve: Option<&Preserve>,
    seed: u64,
    mut on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    let t0 = Instant::now();
    let mut tr = Trainer::new(model, examples, cfg, preserve, seed)?;
    let check_separately = cfg.adalora.dropout > 0.0;
    let mut losses = Vec::new();
    let mut recall = vec![0.0; n_facts];
    for step in 0..cfg.max_steps {
        let (loss, acc) = tr.forward_backward();
        // With dropout off, this pass's argmax is exactly the current weights' recall: stopping
        // here costs no extra forward. With dropout on, measure without it every 5 steps.
        let ex_acc: Vec<f64> = if check_separately {
            if step % 5 == 0 {
                tr.adapter.training = false;
                token_accuracy(model, &tr.adapter, &tr.batches, examples.len())
            } else {
                vec![0.0; examples.len()]
            }
        } else {
            acc.iter()
                .map(|&(c, t)| if t == 0 { 0.0 } else { c as f64 / t as f64 })
                .collect()
        };
        recall = per_fact(&ex_acc, owner, n_facts);
        let min_recall = recall.iter().cloned().fold(f64::INFINITY, f64::min);
        if step > 0 && min_recall >= cfg.threshold {
            on_step(step, loss.double_value(&[]), min_recall);
            break;
        }
        let reg = tr.update();
        let loss_total = (loss + reg).double_value(&[]);
        losses.push(loss_total);
        on_step(step, loss_total, min_recall);
    }
    let steps = tr.steps();
    if steps == cfg.max_steps {
        // Stopped by max_steps: measure where the last update left the facts.
        tr.adapter.training = false;
        let acc = token_accuracy(model, &tr.adapter, &tr.batches, examples.len());
        recall = per_fact(&acc, owner, n_facts);
    }
    let mut fs = factors(&tr.adapter);
    for f in &mut fs {
        f.scale *= cfg.merge_scale;
    }
    Ok(Trained {
        factors: fs,
        optimizer_steps: steps,
        losses,
        recall,
        tokens: tr.tokens,
        seconds: t0.elapsed().as_secs_f64(),
        rank_pattern: tr.adapter.rank_pattern(),
    })
}

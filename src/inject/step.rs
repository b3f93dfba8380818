//! One injection step: a fresh AdaLoRA adapter trained on every prompt of the group's facts until
//! each fact reaches the recall threshold on its training prompts (or max_steps), then its factors.
use super::preserve::{kl_terms, Preserve, Protected};
use crate::adapter::adamw::AdamW;
use crate::adapter::merge::{factors, Factor};
use crate::adapter::AdaLora;
use crate::config::{AdaLoraConfig, LrScheduler, Proj, TrainConfig};
use crate::cuda::{Graph, SideStream};
use crate::error::{Error, Result};
use crate::eval::batch::{build, gathered_logits, loss_sum, token_accuracy, Batch, Example, Shape};
use crate::model::Llama;
use std::time::Instant;
use tch::{Kind, Tensor};

/// The preservation batches padded to one shape (rows × length, and one count of scored positions)
/// plus static tensors that each optimizer step's batch is copied into. A CUDA graph captured over
/// an optimizer step reads the static tensors, so one capture serves every batch; with a graph per
/// batch, each batch's first use cost a capture (about the cost of an eager step) and a step's training
/// rarely lasts long enough to replay them. Right padding and zero weights leave the value of
/// [`Preserve::kl`] unchanged.
struct StaticPreserve {
    ids: Tensor,
    gather: Tensor,
    base: Tensor,
    /// 1/n on each of a batch's n scored positions, 0 on padding.
    weight: Tensor,
    /// Per batch: ids, gather, base, weight, padded.
    padded: Vec<[Tensor; 4]>,
}

impl StaticPreserve {
    fn new(p: &Preserve) -> Self {
        let max = |f: &dyn Fn(usize) -> i64| (0..p.batches.len()).map(f).max().unwrap_or(1).max(1);
        let rows = max(&|i| p.batches[i].ids.size()[0]);
        let len = max(&|i| p.batches[i].ids.size()[1]);
        let scored = max(&|i| p.base_logp[i].size()[0]);
        let vocab = p.base_logp.first().map(|t| t.size()[1]).unwrap_or(1);
        let dev = p.base_logp.first().map(|t| t.device()).unwrap_or(tch::Device::Cpu);
        let padded: Vec<[Tensor; 4]> = tch::no_grad(|| {
            p.batches
                .iter()
                .zip(&p.base_logp)
                .map(|(b, base)| {
                    let (r, l) = b.ids.size2().expect("ids are [rows, length]");
                    let k = base.size()[0];
                    let ids = Tensor::zeros([rows, len], (Kind::Int64, dev));
                    ids.narrow(0, 0, r).narrow(1, 0, l).copy_(&b.ids);
                    // Flat position row·l + col in the batch -> row·len + col in the padded one.
                    let at = b.gather.divide_scalar_mode(l, "floor") * len + b.gather.remainder(l);
                    let gather = Tensor::zeros([scored], (Kind::Int64, dev));
                    gather.narrow(0, 0, k).copy_(&at);
                    let padded_base = Tensor::zeros([scored, vocab], (Kind::Float, dev));
                    padded_base.narrow(0, 0, k).copy_(base);
                    let weight = Tensor::zeros([scored], (Kind::Float, dev));
                    let _ = weight.narrow(0, 0, k).fill_(1.0 / k.max(1) as f64);
                    [ids, gather, padded_base, weight]
                })
                .collect()
        });
        let [ids, gather, base, weight] = padded[0].each_ref().map(|t| t.copy());
        StaticPreserve {
            ids,
            gather,
            base,
            weight,
            padded,
        }
    }

    /// Copies batch `i` into the static tensors.
    fn load(&mut self, i: usize) {
        tch::no_grad(|| {
            for (dst, src) in [&mut self.ids, &mut self.gather, &mut self.base, &mut self.weight]
                .into_iter()
                .zip(&self.padded[i])
            {
                dst.copy_(src);
            }
        });
    }

    /// [`Preserve::kl`] of the loaded batch.
    fn kl(&self, model: &Llama, ad: &AdaLora) -> Tensor {
        self.kl_of(&gathered_logits(model, ad, &self.ids, &self.gather))
    }

    /// The KL term given the current logits at the loaded batch's scored positions ([scored, vocab]).
    fn kl_of(&self, logits: &Tensor) -> Tensor {
        let cur = logits.log_softmax(-1, Kind::Float);
        let per_position = kl_terms(&self.base, &cur).sum_dim_intlist(-1, false, Kind::Float);
        (per_position * &self.weight).sum(Kind::Float)
    }
}

/// The objective of one example batch `b` and the loaded preservation batch `sp` in one forward and
/// one backward, instead of a pass each: on a GPU a pass costs its ~4,000 kernels more than its
/// rows, so one pass over both batches' rows takes about half the time of two (bench/NOTES.md item
/// 26). The rows of both are right-padded to the longer length; padding after a row's tokens
/// changes none of its causal logits, and positions count from each row's start, so the loss
/// (cross-entropy × `inv_targets` + `reg` + `preserve` × KL) and the gradients are those of the two
/// passes up to rounding. Returns the loss (detached) and each example's count of right argmax
/// targets (float [n_examples]). Backward is called here.
/// Whether one pass over both batches beats two: padding the shorter rows to the longer length must
/// not cost more than a quarter more positions than the two passes' (a long example would otherwise
/// pad every preservation row to its length).
fn fusing_pays(b: &Batch, sp: &StaticPreserve) -> bool {
    let (rows, len) = b.ids.size2().expect("ids are [rows, length]");
    let (prows, plen) = sp.ids.size2().expect("ids are [rows, length]");
    4 * (rows + prows) * len.max(plen) <= 5 * (rows * len + prows * plen)
}

/// The factor on the summed cross-entropy of [`fused_pass`]: a pooled trainer's device scalar (its
/// graph reads each injection step's count) or a fresh trainer's constant.
enum Scale<'t> {
    Tensor(&'t Tensor),
    By(f64),
}

#[allow(clippy::too_many_arguments)]
fn fused_pass(
    model: &Llama,
    ad: &AdaLora,
    b: &Batch,
    sp: &StaticPreserve,
    inv_targets: Scale,
    preserve: f64,
    protect: Option<(&Protected, f64)>,
    n_examples: usize,
) -> Pass {
    let (rows, len) = b.ids.size2().expect("ids are [rows, length]");
    let (_, plen) = sp.ids.size2().expect("ids are [rows, length]");
    let l = len.max(plen);
    let ids = Tensor::cat(&[b.ids.constant_pad_nd([0, l - len]), sp.ids.constant_pad_nd([0, l - plen])], 0);
    // A flat position row·width + col of a batch whose first row is joint row `first`, in the joint batch.
    let joint = |g: &Tensor, width: i64, first: i64| (g.divide_scalar_mode(width, "floor") + first) * l + g.remainder(width);
    let h = model.hidden(&ids, None, ad);
    let flat = h.view([-1, h.size()[2]]);
    let logits = model.logits(&flat.index_select(0, &joint(&b.gather, len, 0)));
    let mut correct = Tensor::zeros([n_examples as i64], (Kind::Float, model.device()));
    b.add_correct(&logits, &mut correct);
    let ce = match inv_targets {
        Scale::Tensor(inv) => loss_sum(b, &logits) * inv,
        Scale::By(k) => loss_sum(b, &logits) * k,
    };
    let kl = sp.kl_of(&model.logits(&flat.index_select(0, &joint(&sp.gather, plen, rows))));
    let reg = regularisers(ad, protect) + kl * preserve;
    (&ce + &reg).backward();
    Pass {
        loss: ce.detach() + reg.detach(),
        correct,
    }
}

/// AdaLoRA's orthogonal regulariser, plus with `protect` = (the injected facts' inputs, weight) the
/// weighted change the adapter makes to their activations ([`AdaLora::interference`]).
fn regularisers(ad: &AdaLora, protect: Option<(&Protected, f64)>) -> Tensor {
    let reg = ad.orth_reg();
    match protect {
        Some((p, w)) => {
            let k = p.for_groups(ad.groups.iter().map(|g| (g.proj, g.layers.as_slice())));
            reg + ad.interference(&k) * w
        }
        None => reg,
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
    /// Wall seconds of the whole training, of which `setup_seconds` made the adapter, optimizer and
    /// batches and `warmup_seconds` ran the eager optimizer steps and the captures (GPU only).
    pub seconds: f64,
    pub setup_seconds: f64,
    pub warmup_seconds: f64,
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

/// Eager optimizer steps before the optimizer step is captured as CUDA graphs: the first backward allocates the
/// gradients the graph then accumulates into, and cuBLAS sets up its workspace on the stream. One is
/// enough (three until session 9: the same weights, 0.9 s less warm-up on the shipped set; bench/NOTES.md
/// item 34); `INJECTOR_EAGER_STEPS` (at least 1) overrides it, for measuring what the warm-up costs.
fn eager_steps() -> i64 {
    static N: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("INJECTOR_EAGER_STEPS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(1, |n| n.max(1))
    })
}

/// An optimizer step's outputs: the loss (cross-entropy + regularisers, a float scalar) and each example's
/// count of right argmax target tokens (float [n_examples]), both on the device.
pub struct Pass {
    pub loss: Tensor,
    pub correct: Tensor,
}

impl Pass {
    fn shallow_clone(&self) -> Pass {
        Pass {
            loss: self.loss.shallow_clone(),
            correct: self.correct.shallow_clone(),
        }
    }
}

/// The captured graphs of a trainer on a GPU: the forward+backward (the preservation batch of each
/// optimizer step copied into [`StaticPreserve`]'s tensors first) and the update.
struct Graphs {
    forward_backward: Option<(Graph, Pass)>,
    update: Option<Graph>,
    preserve: Option<StaticPreserve>,
    // Last: the stream is left (and the device synchronised) after the graphs are freed. None when
    // the trainer belongs to a [`Trainers`] pool, which holds the stream.
    _stream: Option<SideStream>,
}

/// One adapter being trained on pre-built batches: the loop body of [`train`], also timed by
/// `bench/train_step.rs`. On a GPU of a CUDA build, after [`eager_steps`] eager steps each
/// forward+backward and each update before the allocator's final step is a replayed CUDA graph.
pub struct Trainer<'a> {
    model: &'a Llama,
    pub batches: Vec<Batch>,
    n_examples: usize,
    n_targets: usize,
    /// 1 / target tokens as a device scalar, for a pooled trainer (its graph must read the count
    /// of each injection step's examples; a fresh trainer divides by the constant).
    inv_targets: Option<Tensor>,
    pub adapter: AdaLora,
    opt: AdamW,
    cfg: TrainConfig,
    preserve: Option<&'a Preserve>,
    /// Optimizer steps taken.
    opt_step: i64,
    /// Real tokens through forward passes so far.
    pub tokens: usize,
    graphs: Option<Graphs>,
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
        // Everything the graphs touch is created on the side stream they are captured on.
        let stream = if crate::cuda::available(dev) {
            Some(SideStream::enter(dev)?)
        } else {
            None
        };
        Ok(Self::on_examples(model, examples, cfg, preserve, seed, stream))
    }

    /// A trainer on `examples` that never captures graphs (every optimizer step eager), whose
    /// examples can be swapped between optimizer steps ([`set_examples`](Self::set_examples)).
    pub fn eager(
        model: &'a Llama,
        examples: &[Example],
        cfg: &TrainConfig,
        preserve: Option<&'a Preserve>,
        seed: u64,
    ) -> Self {
        Self::on_examples(model, examples, cfg, preserve, seed, None)
    }

    /// A fresh trainer on `examples`' own batches; with `stream`, its graphs are captured there.
    fn on_examples(
        model: &'a Llama,
        examples: &[Example],
        cfg: &TrainConfig,
        preserve: Option<&'a Preserve>,
        seed: u64,
        stream: Option<SideStream>,
    ) -> Self {
        let batches = build(examples, cfg.max_batch_tokens, model.device());
        let (adapter, opt, static_preserve) = Self::parts(model, cfg, preserve, seed, stream.is_some());
        Trainer {
            model,
            batches,
            n_examples: examples.len(),
            n_targets: examples.iter().map(|e| e.target.len()).sum(),
            inv_targets: None,
            adapter,
            opt,
            cfg: cfg.clone(),
            preserve,
            opt_step: 0,
            tokens: 0,
            graphs: stream.map(|s| Graphs {
                forward_backward: None,
                update: None,
                preserve: static_preserve,
                _stream: Some(s),
            }),
        }
    }

    /// Trains the next optimizer steps on `examples` instead, keeping the adapter and the optimizer
    /// state (mini-batches of an epoch). Only for an [`eager`](Self::eager) trainer: a captured graph
    /// reads fixed batch tensors.
    pub fn set_examples(&mut self, examples: &[Example]) {
        assert!(self.graphs.is_none(), "a trainer with graphs keeps its batches");
        self.batches = build(examples, self.cfg.max_batch_tokens, self.model.device());
        self.n_examples = examples.len();
        self.n_targets = examples.iter().map(|e| e.target.len()).sum();
    }

    fn preserving(&self) -> Option<&'a Preserve> {
        self.preserve
            .filter(|p| self.cfg.preserve > 0.0 && !p.batches.is_empty())
    }

    /// The injected facts' inputs and the penalty's weight, when `protect` is on: `protect` ×
    /// merge_scale², the merged update being merge_scale · ΔW.
    fn protecting(&self) -> Option<(&'a Protected, f64)> {
        let p = self.preserve.and_then(|p| p.protected.as_ref())?;
        let s = self.cfg.merge_scale;
        (self.cfg.protect > 0.0).then_some((p, self.cfg.protect * s * s))
    }

    /// Forward and backward of the step's whole objective: cross-entropy over every micro-batch,
    /// the orthogonal regulariser and the preservation term.
    fn forward_backward_eager(&mut self) -> Pass {
        self.opt.zero_grad();
        self.adapter.training = true;
        let dev = self.model.device();
        // With graphs (a GPU), one batch and preservation on: one pass over both.
        if let (Some(sp), [b]) = (self.graphs.as_ref().and_then(|g| g.preserve.as_ref()), self.batches.as_slice()) {
            if std::env::var("INJECTOR_FUSED_PASS").as_deref() != Ok("0") && fusing_pays(b, sp) {
                // A fresh trainer divides by a constant: nothing may be copied to the device while
                // the pass is being captured.
                let scale = match &self.inv_targets {
                    Some(inv) => Scale::Tensor(inv),
                    None => Scale::By(1.0 / self.n_targets.max(1) as f64),
                };
                let protect = self.protecting();
                return fused_pass(self.model, &self.adapter, b, sp, scale, self.cfg.preserve, protect, self.n_examples);
            }
        }
        let mut correct = Tensor::zeros([self.n_examples as i64], (Kind::Float, dev));
        let mut total = Tensor::zeros([], (Kind::Float, dev));
        for b in &self.batches {
            let logits = b.logits(self.model, &self.adapter);
            b.add_correct(&logits, &mut correct);
            let loss = match &self.inv_targets {
                Some(inv) => loss_sum(b, &logits) * inv,
                None => loss_sum(b, &logits) / self.n_targets as f64,
            };
            loss.backward();
            total += loss.detach();
        }
        let mut reg = regularisers(&self.adapter, self.protecting());
        if let Some(p) = self.preserving() {
            let kl = match self.graphs.as_ref().and_then(|g| g.preserve.as_ref()) {
                Some(loaded) => loaded.kl(self.model, &self.adapter),
                None => p.kl(self.model, &self.adapter, self.opt_step),
            };
            reg += kl * self.cfg.preserve;
        }
        reg.backward();
        Pass {
            loss: total + reg.detach(),
            correct,
        }
    }

    /// Forward and backward over every micro-batch. The returned tensors are not read here; on a
    /// GPU they are the graph's outputs, valid until the next call.
    pub fn forward_backward(&mut self) -> Result<Pass> {
        self.tokens += self.batches.iter().map(|b| b.tokens).sum::<usize>();
        let opt_step = self.opt_step as usize;
        if let Some(p) = self.graphs.as_mut().and_then(|g| g.preserve.as_mut()) {
            p.load(opt_step % p.padded.len());
        }
        let captured = self.graphs.as_ref().is_some_and(|g| g.forward_backward.is_some());
        if self.graphs.is_none() || (!captured && self.opt_step < eager_steps()) {
            if self.graphs.is_some() {
                tracing::debug!("eager optimizer step {} before the capture", self.opt_step);
            }
            return Ok(self.forward_backward_eager());
        }
        if self.graphs.as_ref().is_some_and(|g| g.forward_backward.is_none()) {
            crate::cuda::empty_cache()?;
            tracing::debug!("capturing the forward+backward after {} eager optimizer steps", self.opt_step);
            let captured = Graph::capture(|| self.forward_backward_eager())?;
            tracing::debug!("captured the forward+backward");
            if let Some(g) = self.graphs.as_mut() {
                g.forward_backward = Some(captured);
            }
        }
        let (graph, pass) = self
            .graphs
            .as_ref()
            .and_then(|g| g.forward_backward.as_ref())
            .expect("captured");
        graph.replay()?;
        Ok(pass.shallow_clone())
    }

    /// Clipping, the optimizer step and the rank allocator, in place.
    fn update_eager(&mut self, before_final: bool) {
        self.adapter.clip_grad_norm(self.cfg.clip_grad_norm);
        self.opt.step();
        if before_final {
            self.adapter.allocate_in_graph();
        } else {
            self.adapter.update_and_allocate(self.opt_step);
        }
    }

    /// The optimizer step after [`forward_backward`](Self::forward_backward).
    pub fn update(&mut self) -> Result<()> {
        if self.cfg.lr_scheduler != LrScheduler::Constant {
            // Written before the (captured) update, which reads it on the device.
            self.opt
                .set_lr(self.cfg.lr * self.cfg.lr_scheduler.factor(self.opt_step, self.cfg.max_steps));
        }
        let before_final = self.adapter.plan_allocation(self.opt_step);
        let captured = self.graphs.as_ref().is_some_and(|g| g.update.is_some());
        if self.graphs.is_none() || !before_final || (!captured && self.opt_step < eager_steps()) {
            self.update_eager(before_final);
        } else {
            if self.graphs.as_ref().is_some_and(|g| g.update.is_none()) {
                tracing::debug!("capturing the update");
                let (graph, ()) = Graph::capture(|| self.update_eager(true))?;
                tracing::debug!("captured the update");
                if let Some(g) = self.graphs.as_mut() {
                    g.update = Some(graph);
                }
            }
            self.graphs
                .as_ref()
                .and_then(|g| g.update.as_ref())
                .expect("captured")
                .replay()?;
        }
        self.opt_step += 1;
        Ok(())
    }

    /// Whether the next optimizer step is still eager or a capture (on a GPU of a CUDA build).
    pub fn warming_up(&self) -> bool {
        self.graphs
            .as_ref()
            .is_some_and(|g| (g.forward_backward.is_none() || g.update.is_none()) && self.opt_step <= eager_steps())
    }

    /// A trainer for examples of `shape`, to be [`reset`](Self::reset) before each use; on a GPU its
    /// graphs, once captured, serve every later use. For a [`Trainers`] pool on a GPU.
    /// A fresh adapter from `seed` (with the preservation set's projections), its optimizer, and the
    /// preservation batches padded for graph capture when `graphs` and preservation are on.
    fn parts(
        model: &Llama,
        cfg: &TrainConfig,
        preserve: Option<&Preserve>,
        seed: u64,
        graphs: bool,
    ) -> (AdaLora, AdamW, Option<StaticPreserve>) {
        let mut adapter = AdaLora::new(
            &cfg.adalora,
            &adapter_shapes(model, &cfg.adalora),
            model.device(),
            seed,
            cfg.max_steps,
        );
        if let Some(p) = preserve.filter(|p| !p.projections.is_empty()) {
            adapter.set_projections(&p.projections);
        }
        let mut opt = AdamW::new(
            adapter.params(),
            cfg.lr,
            cfg.adam_beta1,
            cfg.adam_beta2,
            cfg.weight_decay,
        );
        if cfg.lr_scheduler != LrScheduler::Constant {
            opt.schedule();
        }
        let static_preserve = preserve
            .filter(|p| graphs && cfg.preserve > 0.0 && !p.batches.is_empty())
            .map(StaticPreserve::new);
        (adapter, opt, static_preserve)
    }

    pub fn pooled(model: &'a Llama, shape: Shape, cfg: &TrainConfig, preserve: Option<&'a Preserve>) -> Self {
        Self::on_padded(model, &[shape], cfg, preserve)
    }

    /// A trainer whose optimizer step goes through padded micro-batches of `shapes`, in order, to be
    /// [`reset`](Self::reset) before use and [`load`](Self::load)ed between optimizer steps; on a GPU
    /// its graphs, once captured, serve every later load.
    fn on_padded(model: &'a Llama, shapes: &[Shape], cfg: &TrainConfig, preserve: Option<&'a Preserve>) -> Self {
        let dev = model.device();
        let (adapter, opt, static_preserve) = Self::parts(model, cfg, preserve, 0, true);
        Trainer {
            model,
            batches: shapes.iter().map(|&s| Batch::padded(s, dev)).collect(),
            n_examples: shapes.iter().map(|s| s.rows).sum(),
            n_targets: 0,
            inv_targets: Some(Tensor::zeros([], (Kind::Float, dev))),
            adapter,
            opt,
            cfg: cfg.clone(),
            preserve,
            opt_step: 0,
            tokens: 0,
            graphs: crate::cuda::available(dev).then_some(Graphs {
                forward_backward: None,
                update: None,
                preserve: static_preserve,
                _stream: None,
            }),
        }
    }

    /// Makes a pooled trainer what [`Trainer::new`] on `examples` with `seed` makes (up to the
    /// padding of its batch), in place: the examples written into its batch, the adapter drawn
    /// again, the optimizer's and allocator's state cleared.
    pub fn reset(&mut self, examples: &[Example], seed: u64) {
        self.load(examples);
        self.adapter.reset(&adapter_shapes(self.model, &self.cfg.adalora), seed);
        self.opt.reset();
        self.opt_step = 0;
        self.tokens = 0;
    }

    /// Writes `examples` into a padded trainer's micro-batches in order (example i in row i of the
    /// rows laid end to end; `Pass::correct` is indexed the same way, padding rows counting 0) and
    /// sets the 1 / target-tokens scalar, keeping the adapter and the optimizer's state: the next
    /// optimizer steps train on them. Panics when they do not fit the batches' shapes.
    fn load(&mut self, examples: &[Example]) {
        let mut at = 0;
        for b in &mut self.batches {
            let rows = b.ids.size()[0] as usize;
            let (from, to) = (at.min(examples.len()), (at + rows).min(examples.len()));
            b.fill_from(&examples[from..to], at);
            at += rows;
        }
        assert!(examples.len() <= at, "{} examples for {at} padded rows", examples.len());
        self.n_examples = at;
        self.n_targets = examples.iter().map(|e| e.target.len()).sum();
        if let Some(inv) = &mut self.inv_targets {
            let _ = inv.fill_(1.0 / self.n_targets.max(1) as f64);
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> i64 {
        self.opt_step
    }
}

/// Trainers a [`Trainers`] pool keeps at most: each holds its graphs' memory, its adapter and optimizer
/// state and its copy of the preservation batches, so a run whose steps come in many shapes keeps the
/// most recent few (most runs have one or two shapes; each new one costs a capture).
const MAX_POOLED: usize = 4;

/// The trainers of a run's injection steps. On a GPU of a CUDA build, a step whose examples fit one
/// batch is trained by a trainer kept per padded batch [`Shape`] and reset in place, so its CUDA
/// graphs are captured once per run and shape instead of once per injection step (their warm-up
/// and capture cost more than the replays of a step's ~14 optimizer steps). Elsewhere, and for
/// larger groups, each step gets a fresh [`Trainer`], as before.
pub struct Trainers<'a> {
    model: &'a Llama,
    cfg: TrainConfig,
    preserve: Option<&'a Preserve>,
    /// Least recently used first; at most [`MAX_POOLED`].
    pooled: Vec<(Shape, Trainer<'a>)>,
    // Last: left (the device synchronised) after the pooled trainers' graphs are freed.
    stream: Option<SideStream>,
}

impl Drop for Trainers<'_> {
    fn drop(&mut self) {
        crate::adapter::adalora::AdaLora::forget_draws_ahead();
    }
}

impl<'a> Trainers<'a> {
    pub fn new(model: &'a Llama, cfg: &TrainConfig, preserve: Option<&'a Preserve>) -> Result<Self> {
        let dev = model.device();
        let stream = match crate::cuda::available(dev) && std::env::var("INJECTOR_REUSE_GRAPHS").as_deref() != Ok("0") {
            true => Some(SideStream::enter(dev)?),
            false => None,
        };
        Ok(Trainers {
            model,
            cfg: cfg.clone(),
            preserve,
            pooled: Vec::new(),
            stream,
        })
    }
}

/// The trained adapter's factors as they will be merged (scaled by `merge_scale`).
/// Errors: [`Error::Diverged`] when one is not finite — a finite last loss does not make a finite
/// update: the last optimizer step can still overflow.
fn merged_factors(adapter: &AdaLora, merge_scale: f64) -> Result<Vec<Factor>> {
    let mut fs = factors(adapter);
    for f in &mut fs {
        f.scale *= merge_scale;
    }
    if let Some(f) = fs.iter().find(|f| !f.is_finite()) {
        return Err(Error::Diverged(format!("the update of {} is not finite", f.key)));
    }
    Ok(fs)
}

/// Trains one adapter on many facts in epochs over shuffled mini-batches of `batch_facts` facts
/// (`facts[i]`: fact i's examples), one optimizer step per mini-batch, until every fact reaches the
/// threshold (and `extra_steps` epochs after that) or `max_steps` epochs have run — `mixed` at scale, where one optimizer step over every
/// fact would take `max_steps` steps in all. With at most `batch_facts` facts it is [`train`] (one
/// mini-batch, an epoch per optimizer step). The stop is checked at the end of an epoch whose
/// mini-batches all met the threshold (or, with dropout, every epoch; once met, at the end of the
/// `extra_steps` epochs after, and every epoch after those) by measuring every fact again, without
/// dropout, at the current weights. The order is drawn from `seed`.
///
/// On a GPU of a CUDA build (a pool with graphs), every mini-batch is written into the same padded
/// micro-batches ([`epoch_shapes`]), so the optimizer step is captured once and replayed for every
/// mini-batch; elsewhere each mini-batch is packed afresh and run eagerly. The two agree up to
/// float rounding (padding changes no logit; `tests/cuda.rs` and this module's tests check it).
/// Errors: [`Error::Diverged`] when the loss or the update is not finite.
pub fn train_epochs(
    trainers: &mut Trainers,
    facts: &[Vec<Example>],
    batch_facts: usize,
    seed: u64,
    on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    let padded = trainers.stream.is_some();
    let cfg = trainers.cfg.clone();
    train_epochs_with(trainers, &cfg, facts, batch_facts, seed, padded, on_step)
}

/// [`train_epochs`] under `cfg` instead of the pool's config (a repair's consolidation: its own
/// epochs and schedule). `facts` must be more than `batch_facts`, so that no trainer of the pool is
/// used (they keep the pool's config). Errors: as [`train_epochs`]; bad input when AdaLoRA's
/// `tinit + tfinal` leaves no optimizer step of the consolidation's for the budget to fall in.
pub fn consolidate(
    trainers: &mut Trainers,
    cfg: &TrainConfig,
    facts: &[Vec<Example>],
    batch_facts: usize,
    seed: u64,
    on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    assert!(facts.len() > batch_facts.max(1), "a consolidation trains more facts than a mini-batch");
    let total = cfg.max_steps * facts.len().div_ceil(batch_facts) as i64;
    let a = &cfg.adalora;
    if a.tinit + a.tfinal >= total {
        return Err(Error::BadInput(format!(
            "a consolidation of {total} optimizer steps leaves none between train.adalora.tinit ({}) and \
             tfinal ({}); raise --epochs",
            a.tinit, a.tfinal
        )));
    }
    let padded = trainers.stream.is_some();
    train_epochs_with(trainers, cfg, facts, batch_facts, seed, padded, on_step)
}

/// The padded micro-batches that any mini-batch of at most `batch_facts` of `facts` fits: rows for
/// the `batch_facts` facts with the most examples, at the longest example's length rounded up to 16,
/// split into micro-batches of at most `max_tokens` padded tokens (at least a row each) of as even a
/// row count as may be, each with target slots for its row count's longest targets (rounded up to 64).
pub fn epoch_shapes(facts: &[Vec<Example>], batch_facts: usize, max_tokens: usize) -> Vec<Shape> {
    let up = Shape::round_up;
    let mut counts: Vec<usize> = facts.iter().map(Vec::len).collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let rows = counts.iter().take(batch_facts.max(1)).sum::<usize>().max(1);
    let len = up(facts.iter().flatten().map(Example::len).max().unwrap_or(1), 16);
    let mut targets: Vec<usize> = facts.iter().flatten().map(|e| e.target.len()).collect();
    targets.sort_unstable_by(|a, b| b.cmp(a));
    let parts = rows.div_ceil((max_tokens / len).max(1));
    let per = rows.div_ceil(parts);
    (0..parts)
        .map(|j| per.min(rows - j * per))
        .map(|r| Shape {
            rows: r,
            len,
            targets: up(targets.iter().take(r).sum(), 64),
        })
        .collect()
}

/// [`train_epochs`] under `cfg` (the pool's, but for a consolidation) with the caller's choice of how
/// mini-batches are laid out: written into padded micro-batches (`padded`; replayed from captured
/// graphs where the pool has a GPU stream), or packed afresh and run eagerly. For the tests that hold
/// the two to the same training. At most `batch_facts` facts go to [`train`], under the pool's config.
pub fn train_epochs_with(
    trainers: &mut Trainers,
    cfg: &TrainConfig,
    facts: &[Vec<Example>],
    batch_facts: usize,
    seed: u64,
    padded: bool,
    mut on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    let n = facts.len();
    if n <= batch_facts.max(1) {
        let examples: Vec<Example> = facts.iter().flatten().cloned().collect();
        let owner: Vec<usize> = facts.iter().enumerate().flat_map(|(i, f)| vec![i; f.len()]).collect();
        return train(trainers, &examples, &owner, n, seed, on_step);
    }
    let t0 = Instant::now();
    let batches_per_epoch = n.div_ceil(batch_facts);
    let epochs = cfg.max_steps;
    // The AdaLoRA budget schedule spans every optimizer step of every epoch.
    let cfg = TrainConfig {
        max_steps: epochs * batches_per_epoch as i64,
        ..cfg.clone()
    };
    let (model, preserve) = (trainers.model, trainers.preserve);
    let all: Vec<Example> = facts.iter().flatten().cloned().collect();
    let owner: Vec<usize> = facts.iter().enumerate().flat_map(|(i, f)| vec![i; f.len()]).collect();
    let mut tr = if padded {
        let mut tr = Trainer::on_padded(model, &epoch_shapes(facts, batch_facts, cfg.max_batch_tokens), &cfg, preserve);
        tr.reset(&facts[0], seed);
        tr
    } else {
        Trainer::eager(model, &facts[0], &cfg, preserve, seed)
    };
    let setup_seconds = t0.elapsed().as_secs_f64();
    let mut warm_end: Option<Instant> = None;
    let mut rng = crate::rng::SplitMix64(seed ^ 0x6d69_7865_6421);
    let mut order: Vec<usize> = (0..n).collect();
    let mut recall = vec![0.0; n];
    let mut losses = Vec::new();
    let mut stopped = false;
    let measure = |tr: &mut Trainer| -> Vec<f64> {
        tr.adapter.training = false;
        let acc = token_accuracy(
            model,
            &tr.adapter,
            &build(&all, cfg.max_batch_tokens, model.device()),
            all.len(),
        );
        per_fact(&acc, &owner, n)
    };
    // The epoch at which every fact first met the threshold.
    let mut met: Option<i64> = None;
    for epoch in 0..epochs {
        // Fisher–Yates with the run's generator: the same order on every device and resume.
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for chunk in order.chunks(batch_facts) {
            let examples: Vec<Example> = chunk.iter().flat_map(|&f| facts[f].iter().cloned()).collect();
            let totals: Vec<f64> = examples.iter().map(|e| e.target.len() as f64).collect();
            if padded {
                tr.load(&examples);
            } else {
                tr.set_examples(&examples);
            }
            if warm_end.is_none() && !tr.warming_up() {
                warm_end = Some(Instant::now());
            }
            let pass = tr.forward_backward()?;
            let read = Vec::<f32>::try_from(Tensor::cat(&[pass.loss.view([1]), pass.correct.shallow_clone()], 0))?;
            let loss = read[0] as f64;
            if !loss.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss is {loss} at optimizer step {}; nothing of the step was kept (try a lower --lr)",
                    tr.steps()
                )));
            }
            let mut at = 0;
            for &f in chunk {
                let k = facts[f].len();
                let (c, t): (f64, f64) =
                    (at..at + k).fold((0.0, 0.0), |(c, t), i| (c + read[1 + i] as f64, t + totals[i]));
                recall[f] = if t == 0.0 { 0.0 } else { c / t };
                at += k;
            }
            tr.update()?;
            losses.push(loss);
            on_step(
                tr.steps() - 1,
                loss,
                recall.iter().cloned().fold(f64::INFINITY, f64::min),
            );
        }
        let dropout = cfg.adalora.dropout > 0.0;
        let all_met = |r: &[f64]| r.iter().all(|&r| r >= cfg.threshold);
        // Measured when the passes say every fact met it (or, with dropout, every epoch); once met,
        // at the end of the `extra_steps` epochs after.
        let check = match met {
            Some(m) => epoch - m >= cfg.extra_steps,
            None => dropout || all_met(&recall),
        };
        if check {
            recall = measure(&mut tr);
            if all_met(&recall) {
                let m = *met.get_or_insert(epoch);
                if epoch - m >= cfg.extra_steps {
                    stopped = true;
                    break;
                }
            }
        }
    }
    if !stopped {
        recall = measure(&mut tr);
    }
    Ok(Trained {
        factors: merged_factors(&tr.adapter, cfg.merge_scale)?,
        optimizer_steps: tr.steps(),
        losses,
        recall,
        tokens: tr.tokens,
        seconds: t0.elapsed().as_secs_f64(),
        setup_seconds,
        // Training that ended while still warming up was all warm-up (0 where nothing is captured).
        warmup_seconds: match (padded, warm_end) {
            (false, _) => 0.0,
            (true, end) => end.unwrap_or_else(Instant::now).duration_since(t0).as_secs_f64() - setup_seconds,
        },
        rank_pattern: tr.adapter.rank_pattern(),
    })
}

/// Trains one adapter on `examples` (`owner[i]` = which of the `n_facts` facts example i belongs to)
/// until every fact reaches the threshold, and `extra_steps` optimizer steps after that, or `max_steps`. `on_step(opt_step, loss, min_recall)` reports.
#[allow(clippy::too_many_arguments)]
pub fn train(
    trainers: &mut Trainers,
    examples: &[Example],
    owner: &[usize],
    n_facts: usize,
    seed: u64,
    mut on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    let t0 = Instant::now();
    let (model, cfg, preserve) = (trainers.model, &trainers.cfg.clone(), trainers.preserve);
    let shape = Shape::of(examples);
    let mut fresh;
    let tr: &mut Trainer = if trainers.stream.is_some() && shape.rows * shape.len <= cfg.max_batch_tokens {
        let pool = &mut trainers.pooled;
        let entry = match pool.iter().position(|(s, _)| *s == shape) {
            Some(i) => pool.remove(i),
            None => {
                if pool.len() >= MAX_POOLED {
                    pool.remove(0);
                }
                (shape, Trainer::pooled(model, shape, cfg, preserve))
            }
        };
        pool.push(entry);
        let tr = &mut pool.last_mut().expect("just pushed").1;
        tr.reset(examples, seed);
        tr
    } else {
        fresh = Trainer::new(model, examples, cfg, preserve, seed)?;
        &mut fresh
    };
    let setup_seconds = t0.elapsed().as_secs_f64();
    let mut warm_end: Option<Instant> = None;
    let check_separately = cfg.adalora.dropout > 0.0;
    let totals = examples.iter().map(|e| e.target.len() as f64).collect::<Vec<_>>();
    let mut losses = Vec::new();
    let mut recall = vec![0.0; n_facts];
    // The optimizer step at which every fact first met the threshold.
    let mut met: Option<i64> = None;
    for opt_step in 0..cfg.max_steps {
        if warm_end.is_none() && !tr.warming_up() {
            warm_end = Some(Instant::now());
        }
        let pass = tr.forward_backward()?;
        // One read per optimizer step: the loss and the argmax counts of this pass.
        let read = Vec::<f32>::try_from(Tensor::cat(&[pass.loss.view([1]), pass.correct.shallow_clone()], 0))?;
        let loss = read[0] as f64;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!(
                "the loss is {loss} at optimizer step {opt_step}; nothing of the step was kept (try a lower --lr)"
            )));
        }
        // With dropout off, this pass's argmax is exactly the current weights' recall: stopping
        // here costs no extra forward. With dropout on, measure without it every 5 steps.
        let margin_done = met.is_some_and(|m| opt_step - m >= cfg.extra_steps);
        let ex_acc: Vec<f64> = if check_separately {
            if opt_step % 5 == 0 || margin_done {
                tr.adapter.training = false;
                token_accuracy(model, &tr.adapter, &tr.batches, examples.len())
            } else {
                vec![0.0; examples.len()]
            }
        } else {
            read[1..]
                .iter()
                .zip(&totals)
                .map(|(&c, &t)| if t == 0.0 { 0.0 } else { c as f64 / t })
                .collect()
        };
        recall = per_fact(&ex_acc, owner, n_facts);
        let min_recall = recall.iter().cloned().fold(f64::INFINITY, f64::min);
        let meets = opt_step > 0 && min_recall >= cfg.threshold;
        if meets && met.is_none() {
            met = Some(opt_step);
        }
        // Past the threshold by `extra_steps` (a margin), every fact still meeting it.
        if meets && met.is_some_and(|m| opt_step - m >= cfg.extra_steps) {
            on_step(opt_step, loss, min_recall);
            break;
        }
        tr.update()?;
        losses.push(loss);
        on_step(opt_step, loss, min_recall);
    }
    let steps = tr.steps();
    if let Some(m) = met.filter(|_| steps == cfg.max_steps && cfg.extra_steps > 0) {
        tracing::warn!(
            "training reached --max-steps {} before the --extra-steps {} margin past the threshold (met at \
             optimizer step {m})",
            cfg.max_steps,
            cfg.extra_steps
        );
    }
    if steps == cfg.max_steps {
        // Stopped by max_steps: measure where the last update left the facts.
        tr.adapter.training = false;
        let acc = token_accuracy(model, &tr.adapter, &tr.batches, examples.len());
        recall = per_fact(&acc, owner, n_facts);
    }
    Ok(Trained {
        factors: merged_factors(&tr.adapter, cfg.merge_scale)?,
        optimizer_steps: steps,
        losses,
        recall,
        tokens: tr.tokens,
        seconds: t0.elapsed().as_secs_f64(),
        setup_seconds,
        // Training that ended while still warming up was all warm-up.
        warmup_seconds: warm_end.unwrap_or_else(Instant::now).duration_since(t0).as_secs_f64() - setup_seconds,
        rank_pattern: tr.adapter.rank_pattern(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;
    use std::collections::HashMap;
    use tch::Device;

    /// A random 2-layer model (vocabulary 97) on the CPU, drawn from the global generator.
    fn tiny_model() -> Llama {
        let cfg = Config {
            architecture: "llama".into(),
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            attention_bias: false,
        };
        Llama::random(&cfg, Device::Cpu, Kind::Float).unwrap()
    }

    /// libtorch's random generator is global: tests that seed it and draw run one at a time.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A short training for the tiny model: rate 0.05, AdaLoRA's budget between its first and last
    /// optimizer steps (each test sets `max_steps` and what else it needs).
    fn quick_cfg() -> TrainConfig {
        TrainConfig {
            lr: 0.05,
            adalora: AdaLoraConfig {
                tinit: 1,
                tfinal: 1,
                ..AdaLoraConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    /// Four examples of one made-up fact `k` (prompts of 3–6 tokens, a 4-token answer).
    fn group(k: i64) -> Vec<Example> {
        (0..4i64)
            .map(|i| Example {
                prompt: (0..3 + i).map(|j| (7 * i + 3 * j + k) % 97).collect(),
                target: (0..4).map(|j| (11 * k + j) % 97).collect(),
            })
            .collect()
    }

    /// With the interference penalty on a first group's recorded inputs, training a second group
    /// changes the first group's logits far less than without it, while the second group still
    /// learns; a scheduled learning rate trains too. (The penalty itself is checked against a
    /// direct sum in `preserve`'s tests.)
    #[test]
    fn the_interference_penalty_keeps_protected_facts_outputs() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let (a, b) = (group(1), group(2));
        let base_cfg = TrainConfig {
            max_steps: 12,
            null_space: 0.0,
            ..quick_cfg()
        };
        let sites: Vec<(usize, Proj)> = adapter_shapes(&model, &base_cfg.adalora)
            .into_iter()
            .map(|(l, p, _, _)| (l, p))
            .collect();
        let preserve = Preserve {
            batches: Vec::new(),
            base_logp: Vec::new(),
            projections: HashMap::new(),
            protected: Some(Protected::new(&model, &sites)),
        };
        preserve.protected.as_ref().unwrap().add(&model, &[&a]);
        let a_batch = build(&a, usize::MAX, Device::Cpu).remove(0);
        let base = tch::no_grad(|| a_batch.logits(&model, &crate::model::NoAdapter));
        // (mean squared change of a's logits, b's first and last loss)
        let train_b = |protect: f64, lr_scheduler: LrScheduler| {
            let cfg = TrainConfig {
                protect,
                lr_scheduler,
                ..base_cfg.clone()
            };
            let mut tr = Trainer::new(&model, &b, &cfg, Some(&preserve), 5).unwrap();
            let mut losses = Vec::new();
            for _ in 0..12 {
                losses.push(tr.forward_backward().unwrap().loss.double_value(&[]));
                tr.update().unwrap();
            }
            tr.adapter.training = false;
            let now = tch::no_grad(|| a_batch.logits(&model, &tr.adapter));
            // The rate of the last update, as the optimizer read it.
            let last_lr = tr.opt.lr();
            ((now - &base).square().mean(Kind::Float).double_value(&[]), losses[0], losses[11], last_lr)
        };
        let (free, f0, f1, lr) = train_b(0.0, LrScheduler::Constant);
        assert_eq!(lr, 0.05);
        let (kept, k0, k1, _) = train_b(1.0, LrScheduler::Constant);
        assert!(f1 < 0.75 * f0 && k1 < 0.75 * k0, "b did not learn: {f0} -> {f1}, protected {k0} -> {k1}");
        assert!(kept < 0.2 * free, "a's logits moved {kept} with the penalty, {free} without");
        let (_, c0, c1, lr) = train_b(0.0, LrScheduler::Cosine);
        assert!(c1 < 0.8 * c0, "cosine: {c0} -> {c1}");
        let want = 0.05 * LrScheduler::Cosine.factor(11, 12);
        assert!((lr - want).abs() < 1e-7, "the last update's rate {lr}, the schedule's {want}");
    }

    /// A pooled trainer, reset for one group and then for another, trains each as a fresh trainer
    /// does (the same factors up to the float rounding of its padded batch): nothing of the first
    /// group's adapter, optimizer or allocator survives the reset.
    #[test]
    fn a_reset_trainer_trains_like_a_fresh_one() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let (a, b) = (group(1), group(2));
        let train_cfg = TrainConfig {
            max_steps: 6,
            ..quick_cfg()
        };
        let run = |tr: &mut Trainer| -> Vec<Factor> {
            for _ in 0..6 {
                tr.forward_backward().unwrap();
                tr.update().unwrap();
            }
            factors(&tr.adapter)
        };
        let close = |x: &[Factor], y: &[Factor]| {
            for (f, g) in x.iter().zip(y) {
                let d = (f.delta_weight() - g.delta_weight()).abs().max().double_value(&[]);
                let scale = g.delta_weight().abs().max().double_value(&[]);
                assert!(scale > 0.0 && d <= 1e-4 * scale, "{}: {d} vs {scale}", f.key);
                assert_eq!(f.rank, g.rank, "{}", f.key);
            }
        };
        let mut pooled = Trainer::pooled(&model, Shape::of(&a), &train_cfg, None);
        pooled.reset(&a, 5);
        let first = run(&mut pooled);
        close(
            &first,
            &run(&mut Trainer::new(&model, &a, &train_cfg, None, 5).unwrap()),
        );
        // Same shape, other examples and seed: the trainer's state is all new.
        assert_eq!(Shape::of(&a), Shape::of(&b));
        pooled.reset(&b, 9);
        close(
            &run(&mut pooled),
            &run(&mut Trainer::new(&model, &b, &train_cfg, None, 9).unwrap()),
        );
    }

    /// `extra_steps` trains exactly that many optimizer steps (epochs, for mini-batches) past the
    /// point where every fact first met the threshold, ends with every fact still meeting it, and
    /// leaves a lower loss (the margin it is for).
    #[test]
    fn extra_steps_train_past_the_threshold() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let cfg = |extra_steps: i64| TrainConfig {
            max_steps: 40,
            extra_steps,
            null_space: 0.0,
            ..quick_cfg()
        };
        let examples = group(3);
        let owner = vec![0; examples.len()];
        let one = |extra: i64| {
            let mut pool = Trainers::new(&model, &cfg(extra), None).unwrap();
            train(&mut pool, &examples, &owner, 1, 5, |_, _, _| {}).unwrap()
        };
        let (at, past) = (one(0), one(4));
        assert!(at.optimizer_steps < 30, "the fact was not learnt: {} steps", at.optimizer_steps);
        assert_eq!(past.optimizer_steps, at.optimizer_steps + 4);
        assert_eq!((at.recall[0], past.recall[0]), (1.0, 1.0));
        assert!(past.losses.last() < at.losses.last(), "{:?} vs {:?}", past.losses, at.losses);
        // Mini-batches: epochs more, of three optimizer steps each.
        let facts = uneven_facts(7);
        let epochs = |extra: i64| {
            let c = TrainConfig { threshold: 0.6, ..cfg(extra) };
            let mut pool = Trainers::new(&model, &c, None).unwrap();
            train_epochs_with(&mut pool, &c, &facts, 3, 11, false, |_, _, _| {}).unwrap()
        };
        let at = epochs(0);
        assert!(at.recall.iter().all(|&r| r >= 0.6), "not learnt in 40 epochs: {:?}", at.recall);
        assert!(at.optimizer_steps < 40 * 3);
        assert_eq!(epochs(1).optimizer_steps, at.optimizer_steps + 3);
        // Two epochs on (more if a fact dipped below the threshold meanwhile: training goes on until
        // all meet it again).
        let past = epochs(2);
        assert!(past.optimizer_steps >= at.optimizer_steps + 6 && past.optimizer_steps % 3 == 0);
        assert!(past.recall.iter().all(|&r| r >= 0.6), "{:?}", past.recall);
    }

    /// Facts of 2–4 examples of different lengths, for the mini-batch tests.
    fn uneven_facts(n: i64) -> Vec<Vec<Example>> {
        (0..n)
            .map(|f| {
                (0..2 + f % 3)
                    .map(|i| Example {
                        prompt: (0..3 + (f + i) % 5).map(|j| (7 * f + 3 * j + i) % 97).collect(),
                        target: (0..2 + (f * i) % 4).map(|j| (11 * f + 5 * i + j) % 97).collect(),
                    })
                    .collect()
            })
            .collect()
    }

    /// Any mini-batch of at most `batch_facts` facts, in any order, fits the padded micro-batches:
    /// rows, length and target slots, each micro-batch within `max_tokens` padded tokens.
    #[test]
    fn every_mini_batch_fits_the_epoch_shapes() {
        let facts = uneven_facts(9);
        for (batch_facts, max_tokens) in [(2, 4096), (4, 40), (3, 16), (9, 1)] {
            let shapes = epoch_shapes(&facts, batch_facts, max_tokens);
            let len = shapes[0].len;
            assert!(shapes.iter().all(|s| s.len == len && s.rows > 0));
            if len <= max_tokens {
                assert!(shapes.iter().all(|s| s.rows * s.len <= max_tokens), "{shapes:?}");
            }
            let rows: usize = shapes.iter().map(|s| s.rows).sum();
            let mut rng = crate::rng::SplitMix64(batch_facts as u64);
            for _ in 0..50 {
                let mut order: Vec<usize> = (0..facts.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                }
                for chunk in order.chunks(batch_facts) {
                    let ex: Vec<&Example> = chunk.iter().flat_map(|&f| &facts[f]).collect();
                    assert!(ex.len() <= rows && ex.iter().all(|e| e.len() <= len));
                    let mut at = 0;
                    for s in &shapes {
                        let part = &ex[at.min(ex.len())..(at + s.rows).min(ex.len())];
                        assert!(part.iter().map(|e| e.target.len()).sum::<usize>() <= s.targets);
                        at += s.rows;
                    }
                }
            }
        }
    }

    /// Mini-batches written into padded micro-batches (the GPU's way, where the step is a replayed
    /// graph) train as mini-batches packed afresh: the same losses, recall, tokens and factors up
    /// to float rounding, over three epochs of uneven mini-batches split into several micro-batches;
    /// and the argmax counts of one mini-batch land on the right examples.
    #[test]
    fn padded_mini_batches_train_like_packed_ones() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let facts = uneven_facts(7);
        let train_cfg = TrainConfig {
            max_steps: 3,
            threshold: 1.0 + 1e-9,
            max_batch_tokens: 40,
            ..quick_cfg()
        };
        assert!(epoch_shapes(&facts, 3, 40).len() > 1, "the test needs several micro-batches");
        // The weakest fact's recall reported after each optimizer step comes from that step's
        // argmax counts, read from the micro-batches.
        let run = |padded: bool| {
            let mut pool = Trainers::new(&model, &train_cfg, None).unwrap();
            let mut weakest = Vec::new();
            let t = train_epochs_with(&mut pool, &train_cfg, &facts, 3, 11, padded, |_, _, r| weakest.push(r)).unwrap();
            (t, weakest)
        };
        let ((p, pw), (e, ew)) = (run(true), run(false));
        assert_eq!(pw, ew);
        assert_eq!(p.optimizer_steps, 9);
        assert_eq!((p.optimizer_steps, p.tokens), (e.optimizer_steps, e.tokens));
        for (a, b) in p.losses.iter().zip(&e.losses) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "loss {a} vs {b}");
        }
        for (a, b) in p.recall.iter().zip(&e.recall) {
            assert!((a - b).abs() < 1e-9, "recall {a} vs {b}");
        }
        for (f, g) in p.factors.iter().zip(&e.factors) {
            let d = (f.delta_weight() - g.delta_weight()).abs().max().double_value(&[]);
            let scale = g.delta_weight().abs().max().double_value(&[]);
            assert!(scale > 0.0 && d <= 1e-4 * scale, "{}: {d} vs {scale}", f.key);
        }
        // Each example's argmax count lands on that example, micro-batch after micro-batch: half the
        // examples' targets are the model's own greedy tokens (every one right), half are not.
        let greedy = |prompt: Vec<i64>, n: usize| {
            let mut seq = prompt.clone();
            for _ in 0..n {
                let ids = Tensor::from_slice(&seq).view([1, -1]);
                let at = Tensor::from_slice(&[seq.len() as i64 - 1]);
                let next = gathered_logits(&model, &crate::model::NoAdapter, &ids, &at).argmax(-1, false);
                seq.push(next.int64_value(&[0]));
            }
            Example { target: seq[prompt.len()..].to_vec(), prompt }
        };
        let mixed: Vec<Vec<Example>> = facts
            .iter()
            .map(|f| {
                f.iter()
                    .enumerate()
                    .map(|(i, e)| if i % 2 == 0 { greedy(e.prompt.clone(), e.target.len()) } else { e.clone() })
                    .collect()
            })
            .collect();
        let batch: Vec<Example> = mixed[..3].iter().flatten().cloned().collect();
        let shapes = epoch_shapes(&mixed, 3, 40);
        assert!(shapes.len() > 1);
        let mut padded = Trainer::on_padded(&model, &shapes, &train_cfg, None);
        padded.reset(&batch, 3);
        let mut eager = Trainer::eager(&model, &batch, &train_cfg, None, 3);
        let counts = |t: &mut Trainer| Vec::<f32>::try_from(t.forward_backward().unwrap().correct).unwrap();
        let (cp, ce) = (counts(&mut padded), counts(&mut eager));
        assert!(cp.len() >= batch.len() && cp[batch.len()..].iter().all(|&c| c == 0.0));
        assert_eq!(&cp[..batch.len()], &ce[..]);
        assert!(ce.iter().any(|&c| c > 0.0) && ce.contains(&0.0), "{ce:?}");
    }

    /// A default adapter whose E holds random values × `scale` (a fresh one's E is zero: it changes
    /// nothing), so that it moves the model's distributions.
    fn adapter_that_moves(model: &Llama, scale: f64) -> AdaLora {
        let ac = AdaLoraConfig::default();
        let ad = AdaLora::new(&ac, &adapter_shapes(model, &ac), Device::Cpu, 1, 10);
        tch::no_grad(|| {
            for g in &ad.groups {
                g.e.shallow_clone()
                    .copy_(&(Tensor::randn(g.e.size(), (Kind::Float, Device::Cpu)) * scale));
            }
        });
        ad
    }

    /// The padded static batches give each preservation batch the KL of the batch itself (batches of
    /// different row counts and lengths), with an adapter that moves the distributions.
    #[test]
    fn static_preservation_batches_give_the_same_kl() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let examples: Vec<Example> = (0..7i64)
            .map(|i| Example {
                prompt: (0..3 + i).map(|j| (7 * i + 3 * j) % 97).collect(),
                target: (0..1 + i % 3).map(|j| (11 * i + j) % 97).collect(),
            })
            .collect();
        let preserve = Preserve::new(&model, &examples, 3);
        assert_eq!(preserve.batches.len(), 3);
        let ad = adapter_that_moves(&model, 5.0);
        let mut fixed = StaticPreserve::new(&preserve);
        for i in 0..3 {
            let want = preserve.kl(&model, &ad, i as i64).double_value(&[]);
            fixed.load(i);
            let got = fixed.kl(&model, &ad).double_value(&[]);
            assert!(want > 1e-4, "the adapter must move batch {i}: KL {want}");
            assert!((got - want).abs() < 1e-5 * want.max(1.0), "batch {i}: {got} vs {want}");
        }
    }

    /// The one-pass objective of the GPU path equals the two passes' (loss, argmax counts and
    /// every adapter gradient), for example rows shorter and longer than the preservation rows.
    #[test]
    fn the_fused_pass_equals_two_passes() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let model = tiny_model();
        let kept: Vec<Example> = (0..5i64)
            .map(|i| Example {
                prompt: (0..4 + i).map(|j| (5 * i + 3 * j) % 97).collect(),
                target: (0..2 + i % 2).map(|j| (13 * i + j) % 97).collect(),
            })
            .collect();
        let preserve = Preserve::new(&model, &kept, 2);
        let mut ad = adapter_that_moves(&model, 3.0);
        // The interference penalty goes into the fused pass's objective too.
        let sites: Vec<(usize, Proj)> = ad.groups.iter().flat_map(|g| g.layers.iter().map(|&l| (l, g.proj))).collect();
        let protected = Protected::new(&model, &sites);
        protected.add(&model, &[&kept[..2], &kept[2..]]);
        ad.training = true;
        let mut sp = StaticPreserve::new(&preserve);
        sp.load(1);
        let grads = |ad: &AdaLora| -> Vec<Tensor> {
            ad.params()
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.copy()
                    } else {
                        p.zeros_like()
                    }
                })
                .collect()
        };
        let zero = |ad: &AdaLora| {
            for p in ad.params() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        };
        for prompt_len in [2i64, 30] {
            let examples: Vec<Example> = (0..3i64)
                .map(|i| Example {
                    prompt: (0..prompt_len + i).map(|j| (7 * i + 2 * j + 1) % 97).collect(),
                    target: (0..2 + i).map(|j| (3 * i + 5 * j) % 97).collect(),
                })
                .collect();
            let batches = build(&examples, 1 << 20, Device::Cpu);
            assert_eq!(batches.len(), 1);
            let b = &batches[0];
            let n_targets: usize = examples.iter().map(|e| e.target.len()).sum();
            let inv = Tensor::from(1.0 / n_targets as f64).to_kind(Kind::Float);
            let preserve_weight = 2.5;

            zero(&ad);
            let logits = b.logits(&model, &ad);
            let mut correct = Tensor::zeros([3], (Kind::Float, Device::Cpu));
            b.add_correct(&logits, &mut correct);
            let ce = loss_sum(b, &logits) * &inv;
            ce.backward();
            let k = protected.for_groups(ad.groups.iter().map(|g| (g.proj, g.layers.as_slice())));
            let reg = ad.orth_reg() + sp.kl(&model, &ad) * preserve_weight + ad.interference(&k) * 0.3;
            reg.backward();
            let want_loss = (ce.detach() + reg.detach()).double_value(&[]);
            let (want_correct, want_grads) = (Vec::<f32>::try_from(&correct).unwrap(), grads(&ad));

            zero(&ad);
            let protect = Some((&protected, 0.3));
            let pass = fused_pass(&model, &ad, b, &sp, Scale::Tensor(&inv), preserve_weight, protect, 3);
            let got_loss = pass.loss.double_value(&[]);
            assert!((got_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0), "{got_loss} vs {want_loss}");
            assert_eq!(Vec::<f32>::try_from(&pass.correct).unwrap(), want_correct);
            for (g, w) in grads(&ad).iter().zip(&want_grads) {
                let d = (g - w).abs().max().double_value(&[]);
                let scale = w.abs().max().double_value(&[]).max(1e-6);
                assert!(d <= 1e-4 * scale, "prompt length {prompt_len}: gradient differs by {d} (scale {scale})");
            }
            assert!(want_grads.iter().any(|w| w.abs().max().double_value(&[]) > 0.0));
            // A fresh trainer's constant factor gives the same loss as a pooled one's scalar.
            zero(&ad);
            let by = fused_pass(&model, &ad, b, &sp, Scale::By(1.0 / n_targets as f64), preserve_weight, protect, 3);
            assert!((by.loss.double_value(&[]) - got_loss).abs() < 1e-6 * got_loss.abs().max(1.0));
        }
    }
}

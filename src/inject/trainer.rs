//! The trainer of one injection step's adapter: its objective (cross-entropy, AdaLoRA's orthogonal
//! regulariser, the preservation KL and the interference penalty, one fused pass on the GPU), its
//! optimizer step, and on a GPU of a CUDA build the CUDA graphs that replay both; plus the pool of
//! trainers a run keeps per batch shape. `step` drives them.
use super::preserve::{kl_terms, Preserve, Protected};
use super::step::adapter_shapes;
use crate::adapter::adamw::AdamW;
use crate::adapter::AdaLora;
use crate::config::{LrScheduler, TrainConfig};
use crate::cuda::{Graph, SideStream};
use crate::error::Result;
use crate::eval::batch::{build, gathered_logits, loss_sum, Batch, Example, Shape};
use crate::model::Llama;
use tch::{Kind, Tensor};
/// The preservation batches padded to one shape (rows × length, and one count of scored positions)
/// plus static tensors that each optimizer step's batch is copied into. A CUDA graph captured over
/// an optimizer step reads the static tensors, so one capture serves every batch; with a graph per
/// batch, each batch's first use cost a capture (about the cost of an eager step) and a step's training
/// rarely lasts long enough to replay them. Right padding and zero weights leave the value of
/// [`Preserve::kl`] unchanged.
pub(super) struct StaticPreserve {
    pub(super) ids: Tensor,
    pub(super) gather: Tensor,
    pub(super) base: Tensor,
    /// 1/n on each of a batch's n scored positions, 0 on padding.
    pub(super) weight: Tensor,
    /// Per batch: ids, gather, base, weight, padded.
    pub(super) padded: Vec<[Tensor; 4]>,
}

impl StaticPreserve {
    pub(super) fn new(p: &Preserve) -> Self {
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
    pub(super) fn load(&mut self, i: usize) {
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
    pub(super) fn kl(&self, model: &Llama, ad: &AdaLora) -> Tensor {
        self.kl_of(&gathered_logits(model, ad, &self.ids, &self.gather))
    }

    /// The KL term given the current logits at the loaded batch's scored positions ([scored, vocab]).
    pub(super) fn kl_of(&self, logits: &Tensor) -> Tensor {
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
pub(super) fn fusing_pays(b: &Batch, sp: &StaticPreserve) -> bool {
    let (rows, len) = b.ids.size2().expect("ids are [rows, length]");
    let (prows, plen) = sp.ids.size2().expect("ids are [rows, length]");
    4 * (rows + prows) * len.max(plen) <= 5 * (rows * len + prows * plen)
}

/// The factor on the summed cross-entropy of [`fused_pass`]: a pooled trainer's device scalar (its
/// graph reads each injection step's count) or a fresh trainer's constant.
pub(super) enum Scale<'t> {
    Tensor(&'t Tensor),
    By(f64),
}

#[allow(clippy::too_many_arguments)]
pub(super) fn fused_pass(
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
    let ids = Tensor::cat(
        &[
            b.ids.constant_pad_nd([0, l - len]),
            sp.ids.constant_pad_nd([0, l - plen]),
        ],
        0,
    );
    // A flat position row·width + col of a batch whose first row is joint row `first`, in the joint batch.
    let joint =
        |g: &Tensor, width: i64, first: i64| (g.divide_scalar_mode(width, "floor") + first) * l + g.remainder(width);
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
pub(super) fn regularisers(ad: &AdaLora, protect: Option<(&Protected, f64)>) -> Tensor {
    let reg = ad.orth_reg();
    match protect {
        Some((p, w)) => {
            let k = p.for_groups(ad.groups.iter().map(|g| (g.proj, g.layers.as_slice())));
            reg + ad.interference(&k) * w
        }
        None => reg,
    }
}

/// Eager optimizer steps before the optimizer step is captured as CUDA graphs: the first backward allocates the
/// gradients the graph then accumulates into, and cuBLAS sets up its workspace on the stream. One is
/// enough (three until session 9: the same weights, 0.9 s less warm-up on the shipped set; bench/NOTES.md
/// item 34); `INJECTOR_EAGER_STEPS` (at least 1) overrides it, for measuring what the warm-up costs.
pub(super) fn eager_steps() -> i64 {
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
    pub(super) fn shallow_clone(&self) -> Pass {
        Pass {
            loss: self.loss.shallow_clone(),
            correct: self.correct.shallow_clone(),
        }
    }
}

/// The captured graphs of a trainer on a GPU: the forward+backward (the preservation batch of each
/// optimizer step copied into [`StaticPreserve`]'s tensors first) and the update.
pub(super) struct Graphs {
    pub(super) forward_backward: Option<(Graph, Pass)>,
    pub(super) update: Option<Graph>,
    pub(super) preserve: Option<StaticPreserve>,
    // Last: the stream is left (and the device synchronised) after the graphs are freed. None when
    // the trainer belongs to a [`Trainers`] pool, which holds the stream.
    pub(super) _stream: Option<SideStream>,
}

/// One adapter being trained on pre-built batches: the loop body of [`train`](super::step::train), also timed by
/// `bench/train_step.rs`. On a GPU of a CUDA build, after [`eager_steps`] eager steps each
/// forward+backward and each update before the allocator's final step is a replayed CUDA graph.
pub struct Trainer<'a> {
    pub(super) model: &'a Llama,
    pub batches: Vec<Batch>,
    pub(super) n_examples: usize,
    pub(super) n_targets: usize,
    /// 1 / target tokens as a device scalar, for a pooled trainer (its graph must read the count
    /// of each injection step's examples; a fresh trainer divides by the constant).
    pub(super) inv_targets: Option<Tensor>,
    pub adapter: AdaLora,
    pub(super) opt: AdamW,
    pub(super) cfg: TrainConfig,
    pub(super) preserve: Option<&'a Preserve>,
    /// Optimizer steps taken.
    pub(super) opt_step: i64,
    /// Real tokens through forward passes so far.
    pub tokens: usize,
    pub(super) graphs: Option<Graphs>,
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
    pub(super) fn on_examples(
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

    pub(super) fn preserving(&self) -> Option<&'a Preserve> {
        self.preserve
            .filter(|p| self.cfg.preserve > 0.0 && !p.batches.is_empty())
    }

    /// The injected facts' inputs and the penalty's weight, when `protect` is on: `protect` ×
    /// merge_scale², the merged update being merge_scale · ΔW.
    pub(super) fn protecting(&self) -> Option<(&'a Protected, f64)> {
        let p = self.preserve.and_then(|p| p.protected.as_ref())?;
        let s = self.cfg.merge_scale;
        (self.cfg.protect > 0.0).then_some((p, self.cfg.protect * s * s))
    }

    /// Forward and backward of the step's whole objective: cross-entropy over every micro-batch,
    /// the orthogonal regulariser and the preservation term.
    pub(super) fn forward_backward_eager(&mut self) -> Pass {
        self.opt.zero_grad();
        self.adapter.training = true;
        let dev = self.model.device();
        // With graphs (a GPU), one batch and preservation on: one pass over both.
        if let (Some(sp), [b]) = (
            self.graphs.as_ref().and_then(|g| g.preserve.as_ref()),
            self.batches.as_slice(),
        ) {
            if std::env::var("INJECTOR_FUSED_PASS").as_deref() != Ok("0") && fusing_pays(b, sp) {
                // A fresh trainer divides by a constant: nothing may be copied to the device while
                // the pass is being captured.
                let scale = match &self.inv_targets {
                    Some(inv) => Scale::Tensor(inv),
                    None => Scale::By(1.0 / self.n_targets.max(1) as f64),
                };
                let protect = self.protecting();
                return fused_pass(
                    self.model,
                    &self.adapter,
                    b,
                    sp,
                    scale,
                    self.cfg.preserve,
                    protect,
                    self.n_examples,
                );
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
            tracing::debug!(
                "capturing the forward+backward after {} eager optimizer steps",
                self.opt_step
            );
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
    pub(super) fn update_eager(&mut self, before_final: bool) {
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
    pub(super) fn parts(
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
        // A consolidation may train without the run's projections (`train.null_space` 0).
        if let Some(p) = preserve.filter(|p| cfg.null_space > 0.0 && !p.projections.is_empty()) {
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
    pub(super) fn on_padded(
        model: &'a Llama,
        shapes: &[Shape],
        cfg: &TrainConfig,
        preserve: Option<&'a Preserve>,
    ) -> Self {
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
    pub(super) fn load(&mut self, examples: &[Example]) {
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
pub(super) const MAX_POOLED: usize = 4;

/// The trainers of a run's injection steps. On a GPU of a CUDA build, a step whose examples fit one
/// batch is trained by a trainer kept per padded batch [`Shape`] and reset in place, so its CUDA
/// graphs are captured once per run and shape instead of once per injection step (their warm-up
/// and capture cost more than the replays of a step's ~14 optimizer steps). Elsewhere, and for
/// larger groups, each step gets a fresh [`Trainer`], as before.
pub struct Trainers<'a> {
    pub(super) model: &'a Llama,
    pub(super) cfg: TrainConfig,
    pub(super) preserve: Option<&'a Preserve>,
    /// Least recently used first; at most [`MAX_POOLED`].
    pub(super) pooled: Vec<(Shape, Trainer<'a>)>,
    // Last: left (the device synchronised) after the pooled trainers' graphs are freed.
    pub(super) stream: Option<SideStream>,
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

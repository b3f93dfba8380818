//! One injection step: a fresh AdaLoRA adapter trained on every prompt of the group's facts until
//! each fact reaches the recall threshold on its training prompts (or max_steps), then its factors.
use super::trainer::MAX_POOLED;
pub use super::trainer::{Pass, Trainer, Trainers};
use crate::adapter::merge::{factors, Factor};
use crate::adapter::AdaLora;
use crate::config::{AdaLoraConfig, Proj, TrainConfig};
use crate::error::{Error, Result};
use crate::eval::batch::{build, token_accuracy, Example, Shape};
use crate::model::Llama;
use std::time::Instant;
use tch::Tensor;

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
    train_epochs_with(trainers, &cfg, facts, (batch_facts, 0), seed, padded, on_step)
}

/// [`train_epochs`] under `cfg` instead of the pool's config (a repair's consolidation: its own
/// epochs and schedule), each fact trained in an epoch on `prompts` of its examples, taken in turn
/// from one epoch to the next (0: all of them; see [`epoch_examples`]). `facts` must be more than
/// `batch_facts`, so that no trainer of the pool is used (they keep the pool's config).
/// Errors: as [`train_epochs`]; bad input when AdaLoRA's `tinit + tfinal` leaves no optimizer step
/// of the consolidation's for the budget to fall in.
pub fn consolidate(
    trainers: &mut Trainers,
    cfg: &TrainConfig,
    facts: &[Vec<Example>],
    (batch_facts, prompts): (usize, usize),
    seed: u64,
    on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    assert!(
        facts.len() > batch_facts.max(1),
        "a consolidation trains more facts than a mini-batch"
    );
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
    train_epochs_with(trainers, cfg, facts, (batch_facts, prompts), seed, padded, on_step)
}

/// The examples of a fact that trains on `prompts` of its examples `all` an epoch (0 or at least
/// `all.len()`: all of them), at its epoch `epoch`: from position `epoch · prompts` on, wrapping, so
/// any ⌈n / prompts⌉ successive epochs cover all n (as `spaced`'s rehearsals take them,
/// [`Rehearsal::examples`](crate::config::Rehearsal::examples)).
pub fn epoch_examples<T>(all: &[T], prompts: usize, epoch: usize) -> Vec<&T> {
    crate::config::Rehearsal {
        prompts,
        ..Default::default()
    }
    .examples(all, epoch)
}

/// The padded micro-batches that any mini-batch of at most `batch_facts` of `facts` fits, each fact
/// with at most `prompts` of its examples (0: all): rows for the `batch_facts` facts with the most
/// examples, at the longest example's length rounded up to 16,
/// split into micro-batches of at most `max_tokens` padded tokens (at least a row each) of as even a
/// row count as may be, each with target slots for its row count's longest targets (rounded up to 64).
pub fn epoch_shapes(facts: &[Vec<Example>], (batch_facts, prompts): (usize, usize), max_tokens: usize) -> Vec<Shape> {
    let up = Shape::round_up;
    // Every epoch takes as many of a fact's examples as its first does.
    let mut counts: Vec<usize> = facts.iter().map(|f| epoch_examples(f, prompts, 0).len()).collect();
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

/// [`train_epochs`] under `cfg` (the pool's, but for a consolidation), each fact trained on
/// `prompts` of its examples an epoch (0: all; [`epoch_examples`]), with the caller's choice of how
/// mini-batches are laid out: written into padded micro-batches (`padded`; replayed from captured
/// graphs where the pool has a GPU stream), or packed afresh and run eagerly. For the tests that hold
/// the two to the same training. At most `batch_facts` facts go to [`train`], under the pool's config;
/// they train on all their examples, so `prompts` must then be 0 (panics otherwise: a caller's bug).
pub fn train_epochs_with(
    trainers: &mut Trainers,
    cfg: &TrainConfig,
    facts: &[Vec<Example>],
    (batch_facts, prompts): (usize, usize),
    seed: u64,
    padded: bool,
    mut on_step: impl FnMut(i64, f64, f64),
) -> Result<Trained> {
    let n = facts.len();
    if n <= batch_facts.max(1) {
        assert_eq!(prompts, 0, "a mini-batch of every fact trains on all their examples");
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
        let mut tr = Trainer::on_padded(
            model,
            &epoch_shapes(facts, (batch_facts, prompts), cfg.max_batch_tokens),
            &cfg,
            preserve,
        );
        // Fact 0 as the first epoch takes it: the rows are sized for `prompts` examples a fact.
        let first: Vec<Example> = epoch_examples(&facts[0], prompts, 0).into_iter().cloned().collect();
        tr.reset(&first, seed);
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
            let chosen: Vec<Vec<&Example>> = chunk
                .iter()
                .map(|&f| epoch_examples(&facts[f], prompts, epoch as usize))
                .collect();
            let examples: Vec<Example> = chosen.iter().flatten().map(|&e| e.clone()).collect();
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
            for (&f, own) in chunk.iter().zip(&chosen) {
                let k = own.len();
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
#[path = "step_tests.rs"]
mod tests;

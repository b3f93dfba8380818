//! AdaLoRA's rank allocator (Zhang et al., "AdaLoRA", ICLR 2023, arXiv:2303.10512; reference:
//! peft `tuners/adalora/layer.py`, `RankAllocator`): sensitivity-times-uncertainty importance of every
//! A/E/B entry, a cubic budget schedule, and masking of the least important singular values.
//!
//! The schedule is a pure function; the scores work on explicit tensors and their `.grad()`, so the
//! allocator can be checked against peft on the same tensors and gradients.
use tch::{Kind, Tensor};

/// The allocator's schedule settings (peft's names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub init_r: i64,
    pub target_r: i64,
    pub tinit: i64,
    pub tfinal: i64,
    pub delta_t: i64,
    pub total_step: i64,
    pub beta1: f64,
    pub beta2: f64,
}

/// The budget at `step` and whether to mask at this step (peft `RankAllocator.budget_schedule`).
pub fn budget_schedule(s: &Schedule, n_modules: i64, step: i64) -> (i64, bool) {
    let init = s.init_r * n_modules;
    let target = s.target_r * n_modules;
    if step <= s.tinit {
        (init, false)
    } else if step > s.total_step - s.tfinal {
        (target, true)
    } else {
        let span = (s.total_step - s.tfinal - s.tinit).max(1) as f64;
        let mul = 1.0 - (step - s.tinit) as f64 / span;
        let budget = ((init - target) as f64 * mul.powi(3) + target as f64) as i64;
        (budget, step % s.delta_t.max(1) == 0)
    }
}

/// Exponential moving averages of importance for one parameter tensor.
struct Ema {
    ipt: Tensor,
    unc: Tensor,
}

impl Ema {
    fn new(p: &Tensor) -> Self {
        Ema {
            ipt: p.zeros_like(),
            unc: p.zeros_like(),
        }
    }

    /// I = |p ⊙ ∇p|; Ī ← β1 Ī + (1−β1) I; Ū ← β2 Ū + (1−β2) |I − Ī| (in place: a captured graph
    /// must read and write the same tensors on every replay).
    fn update(&mut self, p: &Tensor, b1: f64, b2: f64) {
        let g = p.grad();
        if !g.defined() {
            return;
        }
        let i = (p.detach() * g).abs();
        let _ = self.ipt.g_mul_scalar_(b1);
        let _ = self.ipt.g_add_(&(&i * (1.0 - b1)));
        let _ = self.unc.g_mul_scalar_(b2);
        let _ = self.unc.g_add_(&((&i - &self.ipt).abs() * (1.0 - b2)));
    }

    fn reset(&mut self) {
        let _ = self.ipt.zero_();
        let _ = self.unc.zero_();
    }

    fn score(&self) -> Tensor {
        &self.ipt * &self.unc
    }
}

/// The adapted tensors of a group of same-shaped modules, stacked along a leading module axis.
pub struct Triplet<'a> {
    /// [L, r, in]
    pub a: &'a Tensor,
    /// [L, r, 1]
    pub e: &'a Tensor,
    /// [L, out, r]
    pub b: &'a Tensor,
}

/// Importance state for every module of an adapter. All work is a few batched kernels per group,
/// nothing is read back to the host, and the number of values to mask is a device tensor: before
/// the final step the update is the same kernels at every step, which a CUDA graph can replay.
pub struct RankAllocator {
    pub schedule: Schedule,
    emas: Vec<[Ema; 3]>,
    /// Which singular values survived the last masking, per group: bool [L, r] (`true` = kept).
    pub keep: Option<Vec<Tensor>>,
    /// How many singular values the next masking drops (int64 [1] on the adapter's device; ≤ 0 = none).
    k: Tensor,
}

impl RankAllocator {
    pub fn new(schedule: Schedule, groups: &[Triplet]) -> Self {
        let emas = groups
            .iter()
            .map(|m| [Ema::new(m.a), Ema::new(m.e), Ema::new(m.b)])
            .collect();
        let device = groups.first().map(|g| g.a.device()).unwrap_or(tch::Device::Cpu);
        RankAllocator {
            schedule,
            emas,
            keep: None,
            k: Tensor::zeros([1], (Kind::Int64, device)),
        }
    }

    /// Back to the state of a new allocator (importance averages zero), in place. `keep` stays: a
    /// captured graph writes its masks there, and every masking sets it before it is read.
    pub fn reset(&mut self) {
        tch::no_grad(|| self.emas.iter_mut().flatten().for_each(Ema::reset));
        let _ = self.k.zero_();
    }

    fn n_modules(groups: &[Triplet]) -> i64 {
        groups.iter().map(|g| g.a.size()[0]).sum()
    }

    fn update_ipt(&mut self, groups: &[Triplet]) {
        let (b1, b2) = (self.schedule.beta1, self.schedule.beta2);
        tch::no_grad(|| {
            for (m, e) in groups.iter().zip(self.emas.iter_mut()) {
                e[0].update(m.a, b1, b2);
                e[1].update(m.e, b1, b2);
                e[2].update(m.b, b1, b2);
            }
        });
    }

    /// Score of each singular value, per group [L, r]: s(E_i) + mean_j s(A_ij) + mean_k s(B_ki).
    pub fn triplet_scores(&self) -> Vec<Tensor> {
        self.emas
            .iter()
            .map(|[a, e, b]| {
                let sa = a.score().mean_dim(2, false, Kind::Float);
                let sb = b.score().mean_dim(1, false, Kind::Float);
                e.score().squeeze_dim(-1) + sa + sb
            })
            .collect()
    }

    /// Zeroes E_i wherever the score is at or below the k-th smallest (k = `self.k`, read on the
    /// device: the k-th smallest is element k−1 of the sorted scores; k ≤ 0 drops nothing).
    fn mask_to_budget(&mut self, groups: &[Triplet]) {
        let scores = self.triplet_scores();
        let flat: Vec<Tensor> = scores.iter().map(|s| s.reshape([-1])).collect();
        let keep = tch::no_grad(|| {
            let sorted = Tensor::cat(&flat, 0).sort(0, false).0;
            let kth = sorted.index_select(0, &(&self.k - 1).clamp_min(0));
            let threshold = kth.where_scalarother(&self.k.gt(0), f64::NEG_INFINITY);
            scores
                .iter()
                .zip(groups)
                .map(|(s, g)| {
                    let drop = s.le_tensor(&threshold);
                    let mut e = g.e.shallow_clone();
                    let _ = e.masked_fill_(&drop.unsqueeze(-1), 0.0);
                    drop.logical_not()
                })
                .collect()
        });
        self.keep = Some(keep);
    }

    fn mask_using_pattern(&self, groups: &[Triplet]) {
        let Some(keep) = &self.keep else { return };
        tch::no_grad(|| {
            for (g, k) in groups.iter().zip(keep) {
                let mut e = g.e.shallow_clone();
                let _ = e.masked_fill_(&k.logical_not().unsqueeze(-1), 0.0);
            }
        });
    }

    /// Sets up the allocator for optimizer step `step` (0-based) and says whether the step is one of
    /// the steps before the final one, whose work is [`update_in_graph`](Self::update_in_graph):
    /// the same kernels every time, with the budget carried in a device tensor set here.
    pub fn plan(&mut self, groups: &[Triplet], step: i64) -> (i64, bool) {
        let s = &self.schedule;
        let n = Self::n_modules(groups);
        let (budget, mask) = budget_schedule(s, n, step);
        let total = s.init_r * n;
        let k = if mask || step == s.total_step - s.tfinal {
            total - budget
        } else {
            0
        };
        let _ = self.k.fill_(k);
        (budget, step < s.total_step - s.tfinal)
    }

    /// The allocator's work at a step before the final one: importance averages, then masking to
    /// the budget [`plan`](Self::plan) set (a no-op mask when the step does not mask).
    pub fn update_in_graph(&mut self, groups: &[Triplet]) {
        self.update_ipt(groups);
        self.mask_to_budget(groups);
    }

    /// Runs after the optimizer step `step` (0-based), with gradients still in place
    /// (peft `AdaLoraModel.update_and_allocate`). Returns the budget in force.
    pub fn update_and_allocate(&mut self, groups: &[Triplet], step: i64) -> i64 {
        let (budget, before_final) = self.plan(groups, step);
        if before_final {
            self.update_in_graph(groups);
        } else if step == self.schedule.total_step - self.schedule.tfinal {
            self.mask_to_budget(groups);
            tch::no_grad(|| self.emas.iter_mut().flatten().for_each(Ema::reset));
        } else {
            self.mask_using_pattern(groups);
        }
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn sched() -> Schedule {
        Schedule {
            init_r: 12,
            target_r: 8,
            tinit: 2,
            tfinal: 3,
            delta_t: 2,
            total_step: 20,
            beta1: 0.85,
            beta2: 0.85,
        }
    }

    #[test]
    fn budget_follows_the_cubic_schedule() {
        let s = sched();
        // 4 modules: init 48, target 32; span = 20 - 3 - 2 = 15.
        assert_eq!(budget_schedule(&s, 4, 0), (48, false));
        assert_eq!(budget_schedule(&s, 4, 2), (48, false));
        // step 3: mul = 1 - 1/15; 16 * (14/15)^3 + 32 = 45.0074 -> 45; 3 % 2 != 0.
        assert_eq!(budget_schedule(&s, 4, 3), (45, false));
        // step 10: mul = 1 - 8/15 = 7/15; 16 * 0.1016 + 32 = 33.63 -> 33, masks (10 % 2 == 0).
        assert_eq!(budget_schedule(&s, 4, 10), (33, true));
        assert_eq!(budget_schedule(&s, 4, 17), (32, false));
        assert_eq!(budget_schedule(&s, 4, 18), (32, true));
    }

    /// A one-module group: the values with a leading module axis of 1.
    fn param(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v)
            .reshape(shape)
            .unsqueeze(0)
            .set_requires_grad(true)
    }

    fn keep(alloc: &RankAllocator) -> Vec<bool> {
        Vec::<bool>::try_from(alloc.keep.as_ref().unwrap()[0].reshape([-1])).unwrap()
    }

    /// Gives each parameter the gradient `g` by backpropagating sum(p ⊙ g).
    fn set_grad(p: &Tensor, g: &Tensor) {
        (p * g).sum(Kind::Float).backward();
    }

    #[test]
    fn masking_drops_the_lowest_scored_singular_values() {
        // One module, r = 3, in = 2, out = 2. With β1 = β2 = 0 after one update:
        // Ī = I = |p g|, Ū = |I − Ī| = 0 — so use β = 0.5 to get a non-zero product:
        // Ī = 0.5 I, Ū = 0.5 |I − 0.5 I| = 0.25 I, score = 0.125 I².
        let a = param(&[1., 1., 2., 2., 3., 3.], &[3, 2]);
        let e = param(&[1., 1., 1.], &[3, 1]);
        let b = param(&[1., 2., 1., 2., 1., 2.], &[2, 3]);
        set_grad(&a, &Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)));
        set_grad(&e, &Tensor::from_slice(&[3f32, 0., 1.]).view([1, 3, 1]));
        set_grad(&b, &Tensor::ones([1, 2, 3], (Kind::Float, Device::Cpu)));
        let s = Schedule {
            init_r: 3,
            target_r: 1,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            total_step: 2,
            beta1: 0.5,
            beta2: 0.5,
        };
        let m = [Triplet { a: &a, e: &e, b: &b }];
        let mut alloc = RankAllocator::new(s, &m);
        // step 1: mul = 1 - 1/2, budget = int(2 * 0.125 + 1) = 1, mask.
        alloc.update_and_allocate(&m, 1);
        // I_A rows: [1,1],[2,2],[3,3] -> mean score 0.125·[1,4,9]; I_E: [3,0,1] -> 0.125·[9,0,1];
        // I_B cols: mean over [1,2] of 0.125·I² = 0.125·[2.5, 2.5, 2.5].
        // totals (/0.125): [12.5, 6.5, 12.5] -> keep only... k = 3 - 1 = 2: threshold = 12.5, so
        // every value ≤ 12.5 is dropped (ties at the threshold are dropped, as in peft).
        let scores = Vec::<f32>::try_from(alloc.triplet_scores()[0].reshape([-1])).unwrap();
        let want = [12.5f32 * 0.125, 6.5 * 0.125, 12.5 * 0.125];
        for (s, w) in scores.iter().zip(want) {
            assert!((s - w).abs() < 1e-6, "{scores:?} vs {want:?}");
        }
        assert_eq!(keep(&alloc), vec![false, false, false]);
        assert_eq!(Vec::<f32>::try_from(e.view([-1])).unwrap(), vec![0., 0., 0.]);
    }

    #[test]
    fn masking_keeps_the_top_budget() {
        let a = param(&[1., 1., 2., 2., 3., 3.], &[3, 2]);
        let e = param(&[1., 1., 1.], &[3, 1]);
        let b = param(&[1., 1., 1., 1., 1., 1.], &[2, 3]);
        set_grad(&a, &Tensor::ones([1, 3, 2], (Kind::Float, Device::Cpu)));
        set_grad(&e, &Tensor::zeros([1, 3, 1], (Kind::Float, Device::Cpu)));
        set_grad(&b, &Tensor::zeros([1, 2, 3], (Kind::Float, Device::Cpu)));
        let s = Schedule {
            init_r: 3,
            target_r: 2,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            total_step: 2,
            beta1: 0.5,
            beta2: 0.5,
        };
        let m = [Triplet { a: &a, e: &e, b: &b }];
        let mut alloc = RankAllocator::new(s, &m);
        // budget = int(1 * 0.125 + 2) = 2, k = 1: the row of A with the smallest |a g| (row 0) goes.
        alloc.update_and_allocate(&m, 1);
        assert_eq!(keep(&alloc), vec![false, true, true]);
        assert_eq!(Vec::<f32>::try_from(e.view([-1])).unwrap(), vec![0., 1., 1.]);
    }
}

//! AdaLoRA adapters (Zhang et al., arXiv:2303.10512; reference: peft `tuners/adalora`), SVD form:
//! for each adapted weight W [out, in] with r = init_r, A [r, in] ~ N(0, 0.02), E [r, 1] = 0,
//! B [out, r] ~ N(0, 0.02), and
//!
//! `y = W x + dropout(x) (A ⊙ E)ᵀ Bᵀ · scaling / (ranknum + 1e-5)`, scaling = lora_alpha, ranknum = r.
//!
//! The adapter lives in its own `VarStore`, the only one handed to the optimizer.
use super::budget::{RankAllocator, Schedule, Triplet};
use crate::config::{AdaLoraConfig, Proj};
use crate::model::Adapter;
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

/// The adapted projections of one kind (`q_proj`, …) across layers, stacked: every tensor has a
/// leading module axis, so the regulariser, the allocator, clipping and AdamW each touch a few large
/// tensors instead of one small tensor per layer.
pub struct Group {
    pub proj: Proj,
    pub layers: Vec<usize>,
    /// [L, r, in]
    pub a: Tensor,
    /// [L, r, 1]
    pub e: Tensor,
    /// [L, out, r]
    pub b: Tensor,
}

/// Layers, A draws and B draws of one projection, before stacking.
type Drawn = (Vec<usize>, Vec<Tensor>, Vec<Tensor>);

/// A and B of each projection, stacked over its layers as a [`Group`] holds them.
type Stacked = BTreeMap<Proj, (Tensor, Tensor)>;

/// Draws for a later [`AdaLora::reset`], being made on another thread.
struct Ahead {
    seed: u64,
    init_r: i64,
    shapes: Vec<(usize, Proj, i64, i64)>,
    handle: std::thread::JoinHandle<crate::error::Result<Stacked>>,
}

/// The draws made ahead for the next reset of any adapter: a run's pooled trainers (one per batch
/// shape) share them, since the next injection step may take another trainer than this one.
static AHEAD: std::sync::Mutex<Option<Ahead>> = std::sync::Mutex::new(None);

/// A set of AdaLoRA modules over a model, with its rank allocator.
pub struct AdaLora {
    pub vs: nn::VarStore,
    pub cfg: AdaLoraConfig,
    pub groups: Vec<Group>,
    index: BTreeMap<(usize, Proj), (usize, i64)>,
    pub allocator: RankAllocator,
    pub training: bool,
    /// Per group, [L, in, in] projections applied to the input before A (null-space editing).
    projections: Vec<Option<Tensor>>,
}

impl AdaLora {
    /// A fresh adapter on the given (layer, projection, out, in) sites, initialised from `seed` (drawn
    /// on the CPU, module by module in the order given, so the values do not depend on the device).
    pub fn new(
        cfg: &AdaLoraConfig,
        shapes: &[(usize, Proj, i64, i64)],
        device: Device,
        seed: u64,
        total_step: i64,
    ) -> Self {
        let vs = nn::VarStore::new(device);
        let (order, mut drawn) = Self::draw(cfg, shapes, seed, None);
        let r = cfg.init_r;
        let mut groups = Vec::new();
        let mut index = BTreeMap::new();
        for proj in order {
            let (layers, a, b) = drawn.remove(&proj).expect("drawn group");
            let p = vs.root() / proj.name();
            let a = p.var_copy("lora_A", &Tensor::stack(&a, 0));
            let e = p.var_copy(
                "lora_E",
                &Tensor::zeros([layers.len() as i64, r, 1], (Kind::Float, Device::Cpu)),
            );
            let b = p.var_copy("lora_B", &Tensor::stack(&b, 0));
            for (slot, &l) in layers.iter().enumerate() {
                index.insert((l, proj), (groups.len(), slot as i64));
            }
            groups.push(Group { proj, layers, a, e, b });
        }
        let schedule = Schedule {
            init_r: cfg.init_r,
            target_r: cfg.target_r,
            tinit: cfg.tinit,
            tfinal: cfg.tfinal,
            delta_t: cfg.delta_t,
            total_step,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
        };
        let allocator = RankAllocator::new(schedule, &Self::triplets_of(&groups));
        let projections = groups.iter().map(|_| None).collect();
        AdaLora {
            vs,
            cfg: cfg.clone(),
            groups,
            index,
            allocator,
            training: true,
            projections,
        }
    }

    /// The initial A and B of every site, drawn on the CPU from `seed` in the order of `shapes` (so
    /// they do not depend on the device), grouped by projection in order of first appearance.
    /// `normals`, when given, are those standard normal draws made already (A then B of each site,
    /// as [`cuda::randn_private`](crate::cuda::randn_private) makes them); otherwise they are drawn
    /// here from libtorch's global generator, seeded with `seed`.
    fn draw(
        cfg: &AdaLoraConfig,
        shapes: &[(usize, Proj, i64, i64)],
        seed: u64,
        normals: Option<Vec<Tensor>>,
    ) -> (Vec<Proj>, BTreeMap<Proj, Drawn>) {
        let normals = normals.unwrap_or_else(|| {
            tch::manual_seed(seed as i64);
            Self::draw_shapes(cfg, shapes)
                .iter()
                .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)))
                .collect()
        });
        let mut normals = normals.into_iter();
        let mut drawn: BTreeMap<Proj, Drawn> = BTreeMap::new();
        let mut order: Vec<Proj> = Vec::new();
        for &(layer, proj, _, _) in shapes {
            let a = normals.next().expect("A of every site") * 0.02;
            let b = normals.next().expect("B of every site") * 0.02;
            let entry = drawn.entry(proj).or_insert_with(|| {
                order.push(proj);
                (Vec::new(), Vec::new(), Vec::new())
            });
            entry.0.push(layer);
            entry.1.push(a);
            entry.2.push(b);
        }
        (order, drawn)
    }

    /// The shapes of [`AdaLora::draw`]'s draws: [r, in] (A) and [out, r] (B) of every site, in order.
    fn draw_shapes(cfg: &AdaLoraConfig, shapes: &[(usize, Proj, i64, i64)]) -> Vec<Vec<i64>> {
        let r = cfg.init_r;
        shapes
            .iter()
            .flat_map(|&(_, _, out, inp)| [vec![r, inp], vec![out, r]])
            .collect()
    }

    /// A and B of every projection for [`AdaLora::reset`] with `seed`, stacked as the groups hold
    /// them, drawn on another thread from a private generator (`None` without one, that is without
    /// a CUDA build): on a GPU the draw (~4 M normals on one core for SmolLM2's defaults, ~25 ms)
    /// then overlaps the step before instead of holding the GPU idle (bench/NOTES.md).
    fn draw_ahead(cfg: &AdaLoraConfig, shapes: &[(usize, Proj, i64, i64)], seed: u64) -> Option<Ahead> {
        if !cfg!(injector_cuda) {
            return None; // no private generator to draw from
        }
        let init_r = cfg.init_r;
        let (cfg, sites) = (cfg.clone(), shapes.to_vec());
        // No thread to be had (the OS refused one): the next reset draws on its own thread.
        let handle = std::thread::Builder::new()
            .spawn(move || -> crate::error::Result<Stacked> {
                let normals =
                    crate::cuda::randn_private(seed, &Self::draw_shapes(&cfg, &sites)).expect("a CUDA build")?;
                let (_, drawn) = Self::draw(&cfg, &sites, seed, Some(normals));
                Ok(drawn
                    .into_iter()
                    .map(|(p, (_, a, b))| (p, (Tensor::stack(&a, 0), Tensor::stack(&b, 0))))
                    .collect())
            })
            .ok()?;
        Some(Ahead {
            seed,
            init_r,
            shapes: shapes.to_vec(),
            handle,
        })
    }

    /// Makes this adapter what [`AdaLora::new`] with `seed` on the same `shapes` makes, in place (the
    /// same tensors, as a captured CUDA graph needs): A and B drawn again, E zero, the allocator's
    /// state cleared. Projections stay.
    ///
    /// On a GPU of a CUDA build the draws for `seed + 1` (the next injection step's seed) are then
    /// started on another thread, and the next reset of any adapter with that seed and these sites
    /// (a run's pooled trainers share them) takes them instead of drawing: the values are the same
    /// bit for bit. libtorch's global generators are seeded with `seed` either way (dropout on the
    /// GPU draws from them), but the CPU one is then not advanced past the draws.
    pub fn reset(&mut self, shapes: &[(usize, Proj, i64, i64)], seed: u64) {
        let taken = AHEAD.lock().unwrap_or_else(|p| p.into_inner()).take();
        let ahead = taken.filter(|a| a.seed == seed && a.init_r == self.cfg.init_r && a.shapes == shapes);
        let mut stacked: Stacked = match ahead.map(|a| a.handle.join()) {
            Some(Ok(Ok(stacked))) => {
                tch::manual_seed(seed as i64);
                stacked
            }
            // A failed thread (an allocation) or no draws ahead: draw here.
            _ => {
                let (_, drawn) = Self::draw(&self.cfg, shapes, seed, None);
                drawn
                    .into_iter()
                    .map(|(p, (_, a, b))| (p, (Tensor::stack(&a, 0), Tensor::stack(&b, 0))))
                    .collect()
            }
        };
        tch::no_grad(|| {
            for g in &mut self.groups {
                let (a, b) = stacked.remove(&g.proj).expect("the same sites as at creation");
                g.a.copy_(&a);
                g.b.copy_(&b);
                let _ = g.e.zero_();
            }
        });
        self.allocator.reset();
        if self.vs.device().is_cuda() {
            *AHEAD.lock().unwrap_or_else(|p| p.into_inner()) =
                Self::draw_ahead(&self.cfg, shapes, seed.wrapping_add(1));
        }
    }

    /// Waits for draws made ahead and drops them: a thread still drawing when the process exits
    /// would race libtorch's static destructors. [`crate::inject::step::Trainers`] calls it when
    /// dropped.
    pub fn forget_draws_ahead() {
        let ahead = AHEAD.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(a) = ahead {
            let _ = a.handle.join();
        }
    }

    fn triplets_of(groups: &[Group]) -> Vec<Triplet<'_>> {
        groups
            .iter()
            .map(|g| Triplet {
                a: &g.a,
                e: &g.e,
                b: &g.b,
            })
            .collect()
    }

    /// scaling / (ranknum + 1e-5), with ranknum = init_r (peft keeps it constant).
    pub fn scale(&self) -> f64 {
        self.cfg.lora_alpha / (self.cfg.init_r as f64 + 1e-5)
    }

    /// orth_reg_weight · mean over all A and B of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F (batched per group).
    pub fn orth_reg(&self) -> Tensor {
        let dev = self.vs.device();
        let eye = Tensor::eye(self.cfg.init_r, (Kind::Float, dev));
        let mut terms = Vec::with_capacity(2 * self.groups.len());
        for g in &self.groups {
            let aat = g.a.bmm(&g.a.transpose(1, 2)) - &eye;
            let btb = g.b.transpose(1, 2).bmm(&g.b) - &eye;
            terms.push(aat.square().sum_dim_intlist(&[1i64, 2][..], false, Kind::Float).sqrt());
            terms.push(btb.square().sum_dim_intlist(&[1i64, 2][..], false, Kind::Float).sqrt());
        }
        Tensor::cat(&terms, 0).mean(Kind::Float) * self.cfg.orth_reg_weight
    }

    /// Σ over adapted sites of tr(ΔW K ΔWᵀ) = Σ_x ‖ΔW x‖² for the inputs whose second moment K is
    /// given per group (`energies[g]`: [L, in, in], aligned with [`groups`](Self::groups); `None`
    /// skips a group), with ΔW = B·scaling·diag(E)·A as applied (A after any projection). Computed
    /// from r×r products, tr(BᵀB · A K Aᵀ) with the scaling and E folded in: a float scalar with
    /// gradients to A, E and B.
    pub fn interference(&self, energies: &[Option<Tensor>]) -> Tensor {
        let mut total = Tensor::zeros([], (Kind::Float, self.vs.device()));
        for (gi, (g, k)) in self.groups.iter().zip(energies).enumerate() {
            let Some(k) = k else { continue };
            let ae = self.effective_a(gi) * &g.e;
            let m = ae.bmm(k).bmm(&ae.transpose(1, 2));
            let b = &g.b * self.scale();
            let btb = b.transpose(1, 2).bmm(&b);
            total += (m * btb).sum(Kind::Float);
        }
        total
    }

    /// Scales all gradients so that their global norm is at most `max_norm`, without reading it
    /// back to the host.
    pub fn clip_grad_norm(&self, max_norm: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .groups
                .iter()
                .flat_map(|g| [g.a.grad(), g.e.grad(), g.b.grad()])
                .filter(|t| t.defined())
                .collect();
            if grads.is_empty() {
                return;
            }
            let sq: Vec<Tensor> = grads.iter().map(|t| t.square().sum(Kind::Float)).collect();
            let total = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
            let coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
            for mut g in grads {
                let _ = g.g_mul_(&coef);
            }
        });
    }

    /// Runs the rank allocator after optimizer step `step`; returns the budget.
    pub fn update_and_allocate(&mut self, step: i64) -> i64 {
        let triplets = Self::triplets_of(&self.groups);
        self.allocator.update_and_allocate(&triplets, step)
    }

    /// [`RankAllocator::plan`] for this adapter: true when step `step`'s allocator work is
    /// [`allocate_in_graph`](Self::allocate_in_graph).
    pub fn plan_allocation(&mut self, step: i64) -> bool {
        let triplets = Self::triplets_of(&self.groups);
        self.allocator.plan(&triplets, step).1
    }

    /// The allocator's work at a step before the final one, after [`plan_allocation`](Self::plan_allocation).
    pub fn allocate_in_graph(&mut self) {
        let triplets = Self::triplets_of(&self.groups);
        self.allocator.update_in_graph(&triplets)
    }

    /// Makes every adapted site with a projection P see P·x instead of x (its A becomes A·P, in
    /// training and in the merged factors).
    pub fn set_projections(&mut self, by_site: &std::collections::HashMap<(usize, Proj), Tensor>) {
        let device = self.vs.device();
        for (gi, g) in self.groups.iter().enumerate() {
            let ps: Option<Vec<Tensor>> = g
                .layers
                .iter()
                .map(|&l| by_site.get(&(l, g.proj)).map(|p| p.to_device(device)))
                .collect();
            self.projections[gi] = ps.map(|ps| Tensor::stack(&ps, 0));
        }
    }

    /// The A of group `gi` as the adapter applies it: [L, r, in].
    pub fn effective_a(&self, gi: usize) -> Tensor {
        match &self.projections[gi] {
            Some(p) => self.groups[gi].a.bmm(p),
            None => self.groups[gi].a.shallow_clone(),
        }
    }

    /// Every trained tensor (A, E, B of each group).
    pub fn params(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .flat_map(|g| [g.a.shallow_clone(), g.e.shallow_clone(), g.b.shallow_clone()])
            .collect()
    }

    /// Current rank (unmasked singular values) per adapted weight, in site order within groups.
    pub fn rank_pattern(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        tch::no_grad(|| {
            for g in &self.groups {
                let ranks = g.e.ne(0.0).sum_dim_intlist(&[1i64, 2][..], false, Kind::Int64);
                let ranks = Vec::<i64>::try_from(ranks.to_device(Device::Cpu)).expect("ranks");
                for (l, r) in g.layers.iter().zip(ranks) {
                    out.push((g.proj.weight_key(*l), r));
                }
            }
        });
        out
    }
}

/// One forward's view of an [`AdaLora`]: every site's factors derived from the stacked parameters
/// in a few kernels per group (A⊙E and B·scaling in the activations' kind, then split by layer),
/// where doing it per layer and per forward cost a few kernels per site each way, and gradients of
/// per-layer slices came back as full-size zero tensors summed layer by layer.
struct Prepared<'a> {
    ada: &'a AdaLora,
    /// Per group, per layer slot: (A⊙E [r, in], B·scaling [out, r]).
    factors: Vec<(Vec<Tensor>, Vec<Tensor>)>,
}

impl<'a> Prepared<'a> {
    fn new(ada: &'a AdaLora, kind: Kind) -> Self {
        let factors = ada
            .groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                let ae = (ada.effective_a(gi) * &g.e).to_kind(kind).unbind(0);
                let b = (&g.b * ada.scale()).to_kind(kind).unbind(0);
                (ae, b)
            })
            .collect();
        Prepared { ada, factors }
    }
}

impl Adapter for Prepared<'_> {
    /// In fp32 on an fp32 base. On a bf16 base the product runs in bf16 like peft under autocast
    /// (the parameters, their gradients and the optimizer stay fp32; the casts are differentiable):
    /// an fp32 copy of every adapted input would cost a cast kernel each way and, at 7B, a
    /// gigabyte of saved activations.
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        let &(gi, slot) = self.ada.index.get(&(layer, proj))?;
        let (ae, b) = &self.factors[gi];
        let x = if self.ada.training && self.ada.cfg.dropout > 0.0 {
            x.dropout(self.ada.cfg.dropout, true)
        } else {
            x.shallow_clone()
        };
        Some(
            x.linear::<Tensor>(&ae[slot as usize], None)
                .linear::<Tensor>(&b[slot as usize], None),
        )
    }
}

impl Adapter for AdaLora {
    /// The model calls [`prepare`](Adapter::prepare) and uses its result; this serves a direct call
    /// by preparing every group for it.
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        Prepared::new(self, x.kind()).delta(layer, proj, x)
    }

    fn prepare(&self, kind: Kind) -> Option<Box<dyn Adapter + '_>> {
        Some(Box::new(Prepared::new(self, kind)))
    }
}

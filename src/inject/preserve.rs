//! The preservation set (unrelated prompts with the base model's own answers and log-probabilities,
//! for the KL term of training) and the null-space projections of adapter inputs (after AlphaEdit,
//! Fang et al., arXiv:2410.02355), both made from the base weights before any edit.
use crate::adapter::AdaLora;
use crate::error::Result;
use crate::eval::batch::{build, Batch, Example};
use crate::model::{Llama, Proj};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// The preservation set: unrelated prompts with the base model's own answers, in batches of a few
/// prompts each, with the base model's log-probabilities at their target positions. Optimizer step
/// s uses batch s mod n, so over a step's training every prompt takes its turn.
pub struct Preserve {
    pub batches: Vec<Batch>,
    pub base_logp: Vec<Tensor>,
    /// Per adapted (layer, projection): the projection [in, in] onto the null space of the base
    /// model's inputs there (empty when `null_space` is off).
    pub projections: HashMap<(usize, Proj), Tensor>,
    /// The inputs of the facts injected so far, for the interference penalty (`train.protect`).
    pub protected: Option<Protected>,
}

/// Facts per forward pass of [`Protected::add`].
const ADD_FACTS: usize = 64;

/// The inputs of the facts a run has injected, at every adapted site: K = Σ_f (1/T_f) Σ_t x_t x_tᵀ
/// over each injected fact f's T_f training tokens (prompt and answer, all positions), at the
/// weights after its step. An adapter's update ΔW then changes the outputs there by
/// tr(ΔW K ΔWᵀ) = Σ_f mean_t ‖ΔW x_t‖²: the mean squared change it makes to each earlier fact's
/// activations, summed over facts — zero at every site means every earlier fact's forward pass is
/// unchanged. The penalty on it (`train.protect`) is the soft form of AlphaEdit's term for the keys
/// of earlier edits (Fang et al., arXiv:2410.02355, eq. 9 with K_p), in the spirit of MEMIT's key
/// second moments (Meng et al., arXiv:2210.07229).
///
/// With `mean` (`train.protect_mean`) K is instead the mean over the facts, (1/F) Σ_f …, so the
/// penalty keeps one strength as facts accumulate.
///
/// Per adapter group (projection kind, its layers in order) one f32 tensor [L, in, in] on the
/// model's device, updated in place, so a captured CUDA graph that reads it sees every fact added
/// since. Sites that share an input (q/k/v; gate/up) are recorded once, and groups of them at the
/// same layers share one tensor.
pub struct Protected {
    /// (projection, its layers in order, [L, in, in]) per adapter group; groups that read the same
    /// input at the same layers (gate and up; q, k and v) hold one tensor between them.
    sums: Vec<(Proj, Vec<usize>, Tensor)>,
    facts: std::cell::Cell<usize>,
    /// K is the mean over the facts, not their sum.
    mean: bool,
}

impl Protected {
    /// Nothing protected yet, for the adapted `sites` of `model`; K a mean over the facts when
    /// `mean`, else their sum.
    pub fn new(model: &Llama, sites: &[(usize, Proj)], mean: bool) -> Self {
        let mut groups: Vec<(Proj, Vec<usize>)> = Vec::new();
        for &(l, p) in sites {
            match groups.iter_mut().find(|(q, _)| *q == p) {
                Some((_, layers)) if !layers.contains(&l) => layers.push(l),
                Some(_) => {}
                None => groups.push((p, vec![l])),
            }
        }
        let c = &model.cfg;
        let mut sums: Vec<(Proj, Vec<usize>, Tensor)> = Vec::new();
        for (p, layers) in groups {
            let shared = sums
                .iter()
                .find(|(q, l, _)| same_input(*q) == same_input(p) && *l == layers)
                .map(|(_, _, t)| t.shallow_clone());
            let t = shared.unwrap_or_else(|| {
                let n = match same_input(p) {
                    Proj::Down => c.intermediate_size,
                    Proj::O => c.num_attention_heads * c.head_dim,
                    _ => c.hidden_size,
                } as i64;
                Tensor::zeros([layers.len() as i64, n, n], (Kind::Float, model.device()))
            });
            sums.push((p, layers, t));
        }
        Protected {
            sums,
            facts: std::cell::Cell::new(0),
            mean,
        }
    }

    /// Facts added so far.
    pub fn facts(&self) -> usize {
        self.facts.get()
    }

    /// Adds the inputs of `facts` (each fact's training examples) at the model's current weights:
    /// one forward of all their examples, each position weighted by 1 / its fact's token count.
    pub fn add(&self, model: &Llama, facts: &[&[Example]]) {
        // A forward of [`ADD_FACTS`] facts at a time bounds the activations kept for the energies.
        for chunk in facts.chunks(ADD_FACTS) {
            self.add_chunk(model, chunk);
        }
    }

    fn add_chunk(&self, model: &Llama, facts: &[&[Example]]) {
        let examples: Vec<Example> = facts.iter().flat_map(|f| f.iter().cloned()).collect();
        if examples.is_empty() {
            return;
        }
        let device = model.device();
        let (ids, mask) = padded(&examples, device);
        // √(1 / T_f) on fact f's rows: x·√w squared gives w·xxᵀ.
        let len = ids.size()[1];
        let mut weights = Vec::with_capacity(examples.len());
        for f in facts {
            let tokens = f.iter().map(Example::len).sum::<usize>().max(1);
            weights.extend(std::iter::repeat_n((1.0 / tokens as f64).sqrt(), f.len()));
        }
        let rows = Tensor::from_slice(&weights)
            .to_device(device)
            .repeat_interleave_self_int(len, 0, None);
        let mask = (mask.view([-1]) * rows).view([-1, 1]).to_kind(Kind::Float);
        let rec = InputEnergy {
            sites: self
                .sums
                .iter()
                .flat_map(|(p, layers, _)| layers.iter().map(move |&l| (l, same_input(*p))))
                .collect(),
            mask,
            sums: RefCell::new(HashMap::new()),
        };
        // As a mean: K ← (n·K + Σ_new) / (n + m) for n facts so far and m new ones.
        let (n, m) = (self.facts.get() as f64, facts.len() as f64);
        let (keep, add) = (n / (n + m), 1.0 / (n + m));
        tch::no_grad(|| {
            let _ = model.hidden(&ids, None, &rec);
            let sums = rec.sums.into_inner();
            for (i, (p, layers, t)) in self.sums.iter().enumerate() {
                // A tensor shared with an earlier group is that group's, already updated.
                if self.sums[..i].iter().any(|(_, _, u)| u.data_ptr() == t.data_ptr()) {
                    continue;
                }
                if self.mean {
                    let _ = t.shallow_clone().g_mul_scalar_(keep);
                }
                for (slot, &l) in layers.iter().enumerate() {
                    if let Some(k) = sums.get(&(l, same_input(*p))) {
                        // A sum adds K itself (no scaled copy); `sums` is read by every group.
                        let k = if self.mean { k * add } else { k.shallow_clone() };
                        let _ = t.get(slot as i64).g_add_(&k);
                    }
                }
            }
        });
        self.facts.set(self.facts.get() + facts.len());
    }

    /// K of each of `groups` (a projection and its layers, as an adapter stacks them). Panics for a
    /// group not recorded here: `Protected::new` takes the adapter's own sites, so that is a bug.
    pub fn for_groups<'g>(&self, groups: impl Iterator<Item = (Proj, &'g [usize])>) -> Vec<Option<Tensor>> {
        groups
            .map(|(p, layers)| {
                let k = self
                    .sums
                    .iter()
                    .find(|(q, l, _)| *q == p && l.as_slice() == layers)
                    .map(|(_, _, t)| t.shallow_clone());
                Some(k.unwrap_or_else(|| panic!("no protected inputs for {p:?} at layers {layers:?}")))
            })
            .collect()
    }
}

/// Records Σ xᵀx of the inputs of chosen projections during forwards of the base model, over the
/// positions that `mask` ([rows·length, 1], 1 for real tokens; √w weighs a position by w) keeps, in
/// `mask`'s kind.
struct InputEnergy {
    sites: HashSet<(usize, Proj)>,
    mask: Tensor,
    sums: RefCell<HashMap<(usize, Proj), Tensor>>,
}

impl crate::model::Adapter for InputEnergy {
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        if self.sites.contains(&(layer, proj)) {
            let n = x.size().last().copied().unwrap_or(1);
            let x = x.reshape([-1, n]).to_kind(self.mask.kind()) * &self.mask;
            let xtx = x.transpose(0, 1).matmul(&x);
            let mut sums = self.sums.borrow_mut();
            match sums.get_mut(&(layer, proj)) {
                Some(t) => *t += xtx,
                None => {
                    sums.insert((layer, proj), xtx);
                }
            }
        }
        None
    }
}

/// The projection whose input `p` shares: q/k/v read the same normed hidden state, and so do
/// gate/up, so one energy matrix (and one projection) serves each of these groups.
fn same_input(p: Proj) -> Proj {
    match p {
        Proj::Q | Proj::K | Proj::V => Proj::Q,
        Proj::Gate | Proj::Up => Proj::Gate,
        other => other,
    }
}

/// `examples` as one right-padded batch: ids [rows, length] and the mask of real positions
/// [rows·length, 1] (double). With causal attention, padding after a sequence changes nothing of it.
fn padded(examples: &[Example], device: tch::Device) -> (Tensor, Tensor) {
    let len = examples.iter().map(Example::len).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; examples.len() * len];
    let mut mask = vec![0f64; examples.len() * len];
    for (row, e) in examples.iter().enumerate() {
        for (j, &t) in e.prompt.iter().chain(&e.target).enumerate() {
            ids[row * len + j] = t;
            mask[row * len + j] = 1.0;
        }
    }
    let rows = examples.len() as i64;
    (
        Tensor::from_slice(&ids).view([rows, len as i64]).to_device(device),
        Tensor::from_slice(&mask).view([-1, 1]).to_device(device),
    )
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric `k`, on its own device (cuSOLVER on a
/// GPU), or on the CPU when that fails.
fn eigh(k: &Tensor) -> Result<(Tensor, Tensor)> {
    match k.f_linalg_eigh("L") {
        Ok(r) => Ok(r),
        Err(_) if k.device() != tch::Device::Cpu => {
            let (vals, vecs) = k.to_device(tch::Device::Cpu).f_linalg_eigh("L")?;
            Ok((vals, vecs.to_device(k.device())))
        }
        Err(e) => Err(e.into()),
    }
}

/// I − U Uᵀ for the fewest principal directions U of the symmetric energy `k` ([n, n], f64) that
/// carry `share` of its trace: [n, n], f32, on `k`'s device.
fn null_space_of(k: &Tensor, share: f64) -> Result<Tensor> {
    let (vals, vecs) = eigh(k)?;
    // Eigenvalues ascending: walk from the largest until `share` of the energy is covered.
    let vals = Vec::<f64>::try_from(vals.clamp_min(0.0).to_device(tch::Device::Cpu))?;
    let total: f64 = vals.iter().sum();
    let mut acc = 0.0;
    let mut top = 0;
    for v in vals.iter().rev() {
        if total <= 0.0 || acc >= share * total {
            break;
        }
        acc += v;
        top += 1;
    }
    let n = vals.len() as i64;
    let u = vecs.narrow(1, n - top as i64, top as i64);
    let p = Tensor::eye(n, (Kind::Double, k.device())) - u.matmul(&u.transpose(0, 1));
    Ok(p.to_kind(Kind::Float))
}

/// For each site, I − U Uᵀ where U holds the fewest principal directions of the base model's inputs
/// there (on `examples`, padding excluded) that carry `share` of their energy. Sites that share an
/// input (q/k/v; gate/up) share one projection. Shapes: [in, in] per site, f32, on the model's device.
pub fn null_space_projections(
    model: &Llama,
    examples: &[Example],
    sites: &[(usize, Proj)],
    share: f64,
) -> Result<HashMap<(usize, Proj), Tensor>> {
    let device = model.device();
    let (ids, mask) = padded(examples, device);
    let rec = InputEnergy {
        sites: sites.iter().map(|&(l, p)| (l, same_input(p))).collect(),
        mask,
        sums: RefCell::new(HashMap::new()),
    };
    tch::no_grad(|| {
        let _ = model.hidden(&ids, None, &rec);
    });
    let mut by_input = HashMap::new();
    for (site, k) in rec.sums.into_inner() {
        by_input.insert(site, null_space_of(&k, share)?);
    }
    Ok(sites
        .iter()
        .filter_map(|&(l, p)| by_input.get(&(l, same_input(p))).map(|t| ((l, p), t.shallow_clone())))
        .collect())
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
        Preserve {
            batches,
            base_logp,
            projections: HashMap::new(),
            protected: None,
        }
    }

    /// Mean over the positions of batch `opt_step mod n` of KL(base ‖ current).
    pub(crate) fn kl(&self, model: &Llama, ad: &AdaLora, opt_step: i64) -> Tensor {
        let i = opt_step as usize % self.batches.len();
        let (b, base) = (&self.batches[i], &self.base_logp[i]);
        let cur = b.logits(model, ad).log_softmax(-1, Kind::Float);
        kl_terms(base, &cur).sum(Kind::Float) / base.size()[0].max(1) as f64
    }
}

/// KL(base ‖ current) before summing: p·(log p − log q) per position and vocabulary entry, from
/// log-probabilities.
pub(crate) fn kl_terms(base: &Tensor, cur: &Tensor) -> Tensor {
    base.exp() * (base - cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;
    use tch::Device;

    fn tiny() -> Llama {
        tch::manual_seed(3);
        let cfg = Config {
            architecture: "llama".into(),
            vocab_size: 61,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
        };
        Llama::random(&cfg, Device::Cpu, Kind::Float).unwrap()
    }

    /// The energy of one padded batch with padding masked out equals the sum of the examples' own
    /// energies (no padding), so batching the forward changes nothing.
    #[test]
    fn padded_batch_energy_equals_the_sum_of_single_examples() {
        let model = tiny();
        let examples: Vec<Example> = (0..5i64)
            .map(|i| Example {
                prompt: (0..2 + 2 * i).map(|j| (5 * i + 7 * j) % 61).collect(),
                target: (0..1 + i % 3).map(|j| (3 * i + j) % 61).collect(),
            })
            .collect();
        let sites: HashSet<(usize, Proj)> = [(0, Proj::Q), (1, Proj::Down)].into_iter().collect();
        let energy = |ex: &[Example]| {
            let (ids, mask) = padded(ex, Device::Cpu);
            let rec = InputEnergy {
                sites: sites.clone(),
                mask,
                sums: RefCell::new(HashMap::new()),
            };
            let _ = tch::no_grad(|| model.hidden(&ids, None, &rec));
            rec.sums.into_inner()
        };
        let batched = energy(&examples);
        for site in &sites {
            let single: Tensor = examples
                .iter()
                .map(|e| energy(std::slice::from_ref(e))[site].shallow_clone())
                .reduce(|a, b| a + b)
                .unwrap();
            let diff = (&batched[site] - &single).abs().max().double_value(&[]);
            let scale = single.abs().max().double_value(&[]);
            assert!(diff <= 1e-9 * scale.max(1.0), "{site:?}: {diff} vs {scale}");
        }
    }

    /// The adapter's interference on the recorded inputs is Σ_f mean_t ‖ΔW x_t‖² summed over sites,
    /// computed here directly from each fact's own forward (no padding, no batching), with a
    /// projection on one group: the r×r form, the per-fact weights and the batched recording agree.
    #[test]
    fn interference_is_the_mean_squared_change_summed_over_facts_and_sites() {
        use crate::config::AdaLoraConfig;
        let model = tiny();
        let cfg = AdaLoraConfig::default();
        let shapes: Vec<(usize, Proj, i64, i64)> = [
            (0, Proj::Gate, 32, 16),
            (1, Proj::Gate, 32, 16),
            (0, Proj::Up, 32, 16),
            (1, Proj::Up, 32, 16),
            (1, Proj::Down, 16, 32),
            (0, Proj::V, 8, 16),
        ]
        .into_iter()
        .collect();
        let mut ad = AdaLora::new(&cfg, &shapes, tch::Device::Cpu, 7, 10);
        tch::no_grad(|| {
            for g in &ad.groups {
                g.e.shallow_clone()
                    .copy_(&(Tensor::randn(g.e.size(), (Kind::Float, tch::Device::Cpu)) * 0.3));
            }
        });
        let mut proj = HashMap::new();
        let q = Tensor::linalg_qr(&Tensor::randn([32, 3], (Kind::Double, tch::Device::Cpu)), "reduced").0;
        proj.insert(
            (1, Proj::Down),
            (Tensor::eye(32, (Kind::Double, tch::Device::Cpu)) - q.matmul(&q.tr())).to_kind(Kind::Float),
        );
        ad.set_projections(&proj);
        let fact = |k: i64, n: i64| -> Vec<Example> {
            (0..n)
                .map(|i| Example {
                    prompt: (0..2 + i + k).map(|j| (13 * k + 5 * i + 3 * j) % 61).collect(),
                    target: (0..1 + (i + k) % 3).map(|j| (7 * k + j) % 61).collect(),
                })
                .collect()
        };
        let facts = [fact(1, 3), fact(2, 2)];
        let sites: Vec<(usize, Proj)> = shapes.iter().map(|&(l, p, _, _)| (l, p)).collect();
        let protected = Protected::new(&model, &sites, false);
        protected.add(&model, &[&facts[0], &facts[1]]);
        assert_eq!(protected.facts(), 2);
        let k = protected.for_groups(ad.groups.iter().map(|g| (g.proj, g.layers.as_slice())));
        assert!(k.iter().all(Option::is_some));
        // Gate and up read the same input at the same layers: one tensor between them.
        let (gate, up) = (k[0].as_ref().unwrap(), k[1].as_ref().unwrap());
        assert_eq!((ad.groups[0].proj, ad.groups[1].proj), (Proj::Gate, Proj::Up));
        assert_eq!(gate.data_ptr(), up.data_ptr());
        let got = tch::no_grad(|| ad.interference(&k)).double_value(&[]);

        /// Σ over the chosen sites of ‖ΔW x‖² at every position of one unpadded example.
        struct Change<'a> {
            ad: &'a AdaLora,
            sites: &'a [(usize, Proj)],
            sum: RefCell<f64>,
        }
        impl crate::model::Adapter for Change<'_> {
            fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
                if self.sites.contains(&(layer, proj)) {
                    let d = crate::model::Adapter::delta(self.ad, layer, proj, x)?;
                    *self.sum.borrow_mut() += d.square().sum(Kind::Double).double_value(&[]);
                }
                None
            }
        }
        let mut want = 0.0;
        for f in &facts {
            let tokens: usize = f.iter().map(Example::len).sum();
            let rec = Change {
                ad: &ad,
                sites: &sites,
                sum: RefCell::new(0.0),
            };
            for e in f {
                let ids: Vec<i64> = e.prompt.iter().chain(&e.target).copied().collect();
                let _ = tch::no_grad(|| model.hidden(&Tensor::from_slice(&ids).view([1, -1]), None, &rec));
            }
            want += rec.sum.into_inner() / tokens as f64;
        }
        assert!(want > 0.0);
        assert!((got - want).abs() <= 1e-4 * want, "interference {got}, direct {want}");
        // As a mean (`protect_mean`), added one fact at a time: half the sum of the two facts, and
        // the same after a single fact as its own term.
        let mean = Protected::new(&model, &sites, true);
        let interference = |p: &Protected| {
            let k = p.for_groups(ad.groups.iter().map(|g| (g.proj, g.layers.as_slice())));
            tch::no_grad(|| ad.interference(&k)).double_value(&[])
        };
        mean.add(&model, &[&facts[0]]);
        let first = interference(&mean);
        mean.add(&model, &[&facts[1]]);
        assert_eq!(mean.facts(), 2);
        let both = interference(&mean);
        assert!(
            (both - want / 2.0).abs() <= 1e-4 * want,
            "mean {both}, want {}",
            want / 2.0
        );
        let sum_first = Protected::new(&model, &sites, false);
        sum_first.add(&model, &[&facts[0]]);
        assert!(
            (first - interference(&sum_first)).abs() <= 1e-4 * want,
            "one fact: mean {first}"
        );
    }

    #[test]
    fn sites_that_share_an_input_share_a_projection() {
        let model = tiny();
        let examples: Vec<Example> = (0..4i64)
            .map(|i| Example {
                prompt: (0..6).map(|j| (11 * i + j) % 61).collect(),
                target: vec![(i + 1) % 61],
            })
            .collect();
        let sites = [
            (0, Proj::Gate),
            (0, Proj::Up),
            (1, Proj::Down),
            (1, Proj::V),
            (1, Proj::Q),
        ];
        let p = null_space_projections(&model, &examples, &sites, 0.9).unwrap();
        assert_eq!(p.len(), sites.len());
        assert!(p[&(0, Proj::Gate)].equal(&p[&(0, Proj::Up)]));
        assert!(p[&(1, Proj::Q)].equal(&p[&(1, Proj::V)]));
        assert_eq!(p[&(1, Proj::Down)].size(), [32, 32]);
        // Symmetric and idempotent.
        let d = &p[&(1, Proj::Down)];
        let err = (d.matmul(d) - d).abs().max().double_value(&[]);
        assert!(err < 1e-4, "{err}");
    }
}

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
}

/// Records Σ xᵀx of the inputs of chosen projections during forwards of the base model.
struct InputEnergy {
    sites: HashSet<(usize, Proj)>,
    sums: RefCell<HashMap<(usize, Proj), Tensor>>,
}

impl crate::model::Adapter for InputEnergy {
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        if self.sites.contains(&(layer, proj)) {
            let n = x.size().last().copied().unwrap_or(1);
            let x = x.reshape([-1, n]).to_kind(Kind::Double);
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

/// For each site, I − U Uᵀ where U holds the fewest principal directions of the base model's inputs
/// (on `examples`, each run alone, so no padding) that carry `share` of their energy.
pub fn null_space_projections(
    model: &Llama,
    examples: &[Example],
    sites: &[(usize, Proj)],
    share: f64,
) -> Result<HashMap<(usize, Proj), Tensor>> {
    let rec = InputEnergy {
        sites: sites.iter().copied().collect(),
        sums: RefCell::new(HashMap::new()),
    };
    tch::no_grad(|| {
        for e in examples {
            let ids: Vec<i64> = e.prompt.iter().chain(&e.target).copied().collect();
            let ids = Tensor::from_slice(&ids).unsqueeze(0).to_device(model.device());
            let _ = model.hidden(&ids, None, &rec);
        }
    });
    let mut out = HashMap::new();
    for (site, k) in rec.sums.into_inner() {
        // On the CPU in double precision whatever the model's device: small matrices, once per run.
        let device = k.device();
        let k = k.to_device(tch::Device::Cpu);
        let (vals, vecs) = k.linalg_eigh("L");
        // Eigenvalues ascending: walk from the largest until `share` of the energy is covered.
        let vals = Vec::<f64>::try_from(vals.clamp_min(0.0))?;
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
        let p = Tensor::eye(n, (Kind::Double, tch::Device::Cpu)) - u.matmul(&u.transpose(0, 1));
        out.insert(site, p.to_kind(Kind::Float).to_device(device));
    }
    Ok(out)
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

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

/// Records Σ xᵀx of the inputs of chosen projections during forwards of the base model, over the
/// positions that `mask` ([rows·length, 1], 1 for real tokens) keeps.
struct InputEnergy {
    sites: HashSet<(usize, Proj)>,
    mask: Tensor,
    sums: RefCell<HashMap<(usize, Proj), Tensor>>,
}

impl crate::model::Adapter for InputEnergy {
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        if self.sites.contains(&(layer, proj)) {
            let n = x.size().last().copied().unwrap_or(1);
            let x = x.reshape([-1, n]).to_kind(Kind::Double) * &self.mask;
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
        let (vals, vecs) = eigh(&k)?;
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
        let p = Tensor::eye(n, (Kind::Double, device)) - u.matmul(&u.transpose(0, 1));
        by_input.insert(site, p.to_kind(Kind::Float));
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

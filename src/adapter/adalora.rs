//! AdaLoRA adapters (Zhang et al., arXiv:2303.10512; reference: peft `tuners/adalora`), SVD form:
//! for each adapted weight W [out, in] with r = init_r, A [r, in] ~ N(0, 0.02), E [r, 1] = 0,
//! B [out, r] ~ N(0, 0.02), and
//!
//! `y = W x + dropout(x) (A ⊙ E)ᵀ Bᵀ · scaling / (ranknum + 1e-5)`, scaling = lora_alpha, ranknum = r.
//!
//! The adapter lives in its own `VarStore`, the only one handed to the optimizer.
use super::budget::{RankAllocator, Schedule, Triplet};
use crate::model::{Adapter, Proj};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

/// Adapter hyper-parameters: peft's defaults, except where measurement chose otherwise (README,
/// "Choosing the defaults"): alpha 32 and the MLP projections instead of alpha 8 on q_proj/v_proj.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaLoraConfig {
    pub init_r: i64,
    pub target_r: i64,
    pub lora_alpha: f64,
    pub dropout: f64,
    pub orth_reg_weight: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub tinit: i64,
    pub tfinal: i64,
    pub delta_t: i64,
    pub targets: Vec<Proj>,
    /// Layers to adapt; empty means all.
    pub layers: Vec<usize>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        AdaLoraConfig {
            init_r: 12,
            target_r: 8,
            lora_alpha: 32.0,
            dropout: 0.0,
            orth_reg_weight: 0.5,
            beta1: 0.85,
            beta2: 0.85,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            targets: vec![Proj::Gate, Proj::Up, Proj::Down],
            layers: Vec::new(),
        }
    }
}

/// One adapted projection.
pub struct Module {
    pub layer: usize,
    pub proj: Proj,
    pub a: Tensor,
    pub e: Tensor,
    pub b: Tensor,
}

impl Module {
    /// The checkpoint name of the adapted weight.
    pub fn key(&self) -> String {
        self.proj.weight_key(self.layer)
    }

    /// ΔW = B (A ⊙ E) · scale, in fp32: [out, in].
    pub fn delta_weight(&self, scale: f64) -> Tensor {
        tch::no_grad(|| self.b.matmul(&(&self.a * &self.e)) * scale)
    }

    /// Number of singular values not masked.
    pub fn rank(&self) -> i64 {
        tch::no_grad(|| self.e.ne(0.0).sum(Kind::Int64).int64_value(&[]))
    }
}

/// A set of AdaLoRA modules over a model, with its rank allocator.
pub struct AdaLora {
    pub vs: nn::VarStore,
    pub cfg: AdaLoraConfig,
    pub modules: Vec<Module>,
    index: BTreeMap<(usize, Proj), usize>,
    pub allocator: RankAllocator,
    pub training: bool,
}

impl AdaLora {
    /// A fresh adapter for `targets` on `layers` of a model with the given projection shapes,
    /// initialised from `seed` (drawn on the CPU, so the values do not depend on the device).
    pub fn new(
        cfg: &AdaLoraConfig,
        shapes: &[(usize, Proj, i64, i64)],
        device: Device,
        seed: u64,
        total_step: i64,
    ) -> Self {
        let vs = nn::VarStore::new(device);
        let gen_cpu = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.02;
        tch::manual_seed(seed as i64);
        let mut modules = Vec::new();
        let mut index = BTreeMap::new();
        let r = cfg.init_r;
        for &(layer, proj, out, inp) in shapes {
            let p = vs.root() / format!("l{layer}") / proj.name();
            let a = p.var_copy("lora_A", &gen_cpu(&[r, inp]));
            let e = p.var_copy("lora_E", &Tensor::zeros([r, 1], (Kind::Float, Device::Cpu)));
            let b = p.var_copy("lora_B", &gen_cpu(&[out, r]));
            index.insert((layer, proj), modules.len());
            modules.push(Module { layer, proj, a, e, b });
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
        let triplets: Vec<Triplet> = modules
            .iter()
            .map(|m| Triplet {
                a: &m.a,
                e: &m.e,
                b: &m.b,
            })
            .collect();
        let allocator = RankAllocator::new(schedule, &triplets);
        AdaLora {
            vs,
            cfg: cfg.clone(),
            modules,
            index,
            allocator,
            training: true,
        }
    }

    /// scaling / (ranknum + 1e-5), with ranknum = init_r (peft keeps it constant).
    pub fn scale(&self) -> f64 {
        self.cfg.lora_alpha / (self.cfg.init_r as f64 + 1e-5)
    }

    /// orth_reg_weight · mean over all A and B of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F.
    pub fn orth_reg(&self) -> Tensor {
        let dev = self.vs.device();
        let mut terms = Vec::with_capacity(2 * self.modules.len());
        for m in &self.modules {
            let r = m.a.size()[0];
            let eye = Tensor::eye(r, (Kind::Float, dev));
            terms.push((m.a.matmul(&m.a.tr()) - &eye).square().sum(Kind::Float).sqrt());
            terms.push((m.b.tr().matmul(&m.b) - &eye).square().sum(Kind::Float).sqrt());
        }
        Tensor::stack(&terms, 0).mean(Kind::Float) * self.cfg.orth_reg_weight
    }

    /// Runs the rank allocator after optimizer step `step`; returns the budget.
    pub fn update_and_allocate(&mut self, step: i64) -> i64 {
        let triplets: Vec<Triplet> = self
            .modules
            .iter()
            .map(|m| Triplet {
                a: &m.a,
                e: &m.e,
                b: &m.b,
            })
            .collect();
        self.allocator.update_and_allocate(&triplets, step)
    }

    /// Current rank (unmasked singular values) per module.
    pub fn rank_pattern(&self) -> Vec<(String, i64)> {
        self.modules.iter().map(|m| (m.key(), m.rank())).collect()
    }
}

impl Adapter for AdaLora {
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<Tensor> {
        let m = &self.modules[*self.index.get(&(layer, proj))?];
        let xf = x.to_kind(Kind::Float);
        let xf = if self.training && self.cfg.dropout > 0.0 {
            xf.dropout(self.cfg.dropout, true)
        } else {
            xf
        };
        let y = xf.linear::<Tensor>(&(&m.a * &m.e), None).linear::<Tensor>(&m.b, None) * self.scale();
        Some(y.to_kind(x.kind()))
    }
}

//! AdamW (Loshchilov & Hutter; the same update as `torch.optim.AdamW`) with its step count on the
//! device, so a captured CUDA graph of the update stays right on every replay: torch's C++ optimizer
//! keeps the count on the host and would bake the bias corrections of the captured step into the
//! graph. Every state update is in place.
use tch::{Kind, Tensor};

pub struct AdamW {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken, a float scalar on the parameters' device.
    t: Tensor,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, lr: f64, beta1: f64, beta2: f64, weight_decay: f64) -> Self {
        let device = params.first().map(|p| p.device()).unwrap_or(tch::Device::Cpu);
        let m = params.iter().map(|p| p.zeros_like()).collect();
        let v = params.iter().map(|p| p.zeros_like()).collect();
        AdamW {
            params,
            m,
            v,
            t: Tensor::zeros([], (Kind::Float, device)),
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Back to the state of a new optimizer (moments and step count zero), in place.
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            for t in self.m.iter_mut().chain(self.v.iter_mut()) {
                let _ = t.zero_();
            }
            let _ = self.t.zero_();
        });
    }

    /// Zeroes the gradients in place (they stay allocated, as a captured graph needs).
    pub fn zero_grad(&self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            let _ = self.t.g_add_scalar_(1.0);
            // 1 − β^t computed on the device from the device-side count.
            let bc1 = -(&self.t * self.beta1.ln()).exp() + 1.0;
            let bc2 = -(&self.t * self.beta2.ln()).exp() + 1.0;
            let step_size = bc1.reciprocal() * self.lr;
            let bc2_sqrt = bc2.sqrt();
            for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
                let _ = m.g_mul_scalar_(self.beta1);
                let _ = m.g_add_(&(&g * (1.0 - self.beta1)));
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.g_add_(&(g.square() * (1.0 - self.beta2)));
                let denom = v.sqrt() / &bc2_sqrt + self.eps;
                let _ = p.g_sub_(&(&*m / denom * &step_size));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same trajectory as tch's (torch's C++) AdamW on a small quadratic.
    #[test]
    fn matches_torch_adamw() {
        tch::manual_seed(3);
        let target = Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu));
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let w_ref = vs
            .root()
            .var_copy("w", &Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu)));
        let w_ours = w_ref.detach().copy().set_requires_grad(true);
        let mut reference = tch::nn::OptimizerConfig::build(tch::nn::adamw(0.85, 0.95, 0.01), &vs, 0.05).unwrap();
        let mut ours = AdamW::new(vec![w_ours.shallow_clone()], 0.05, 0.85, 0.95, 0.01);
        let start = (&w_ours - &target).abs().max().double_value(&[]);
        for _ in 0..40 {
            reference.zero_grad();
            (&w_ref - &target).square().sum(Kind::Float).backward();
            reference.step();
            ours.zero_grad();
            (&w_ours - &target).square().sum(Kind::Float).backward();
            ours.step();
        }
        let diff = (&w_ref - &w_ours).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max |diff| {diff}");
        let moved = (&w_ours - &target).abs().max().double_value(&[]);
        assert!(moved < 0.5 * start, "did not train: {start} -> {moved}");
    }
}

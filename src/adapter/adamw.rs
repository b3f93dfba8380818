//! AdamW (Loshchilov & Hutter; the same update as `torch.optim.AdamW`) with its step count on the
//! device, so a captured CUDA graph of the update stays right on every replay: torch's C++ optimizer
//! keeps the count on the host and would bake the bias corrections of the captured step into the
//! graph. Every state update is in place. A scheduled learning rate lives on the device too
//! ([`AdamW::schedule`]), written between steps, for the same reason.
use tch::{Kind, Tensor};

/// The device-side learning rate of a scheduled optimizer and its weight-decay factor 1 − lr·λ,
/// float scalars written (from f64, as a host scalar would be rounded) before each step.
struct Scheduled {
    lr: Tensor,
    decay: Tensor,
}

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
    scheduled: Option<Scheduled>,
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
            scheduled: None,
        }
    }

    /// Reads the learning rate from the device from now on, so that [`set_lr`](Self::set_lr) can
    /// change it under a captured graph. Until the first `set_lr` it is the rate given to `new`,
    /// and each step's arithmetic is the same as with the host rate.
    pub fn schedule(&mut self) {
        let device = self.t.device();
        let scalar = |v: f64| Tensor::full([], v, (Kind::Float, device));
        self.scheduled = Some(Scheduled {
            lr: scalar(self.lr),
            decay: scalar(1.0 - self.lr * self.weight_decay),
        });
    }

    /// The learning rate of the next steps (`lr` = the base rate × the schedule's factor), written in
    /// place on the device. Panics unless [`schedule`](Self::schedule)d.
    pub fn set_lr(&mut self, lr: f64) {
        let s = self
            .scheduled
            .as_mut()
            .expect("set_lr on an optimizer without a schedule");
        let _ = s.lr.fill_(lr);
        let _ = s.decay.fill_(1.0 - lr * self.weight_decay);
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

    /// The learning rate the next step takes: the device's scheduled rate (read back), else the
    /// rate given to `new`.
    pub fn lr(&self) -> f64 {
        match &self.scheduled {
            Some(s) => s.lr.double_value(&[]),
            None => self.lr,
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            let _ = self.t.g_add_scalar_(1.0);
            // 1 − β^t computed on the device from the device-side count.
            let bc1 = -(&self.t * self.beta1.ln()).exp() + 1.0;
            let bc2 = -(&self.t * self.beta2.ln()).exp() + 1.0;
            let step_size = match &self.scheduled {
                Some(s) => bc1.reciprocal() * &s.lr,
                None => bc1.reciprocal() * self.lr,
            };
            let bc2_sqrt = bc2.sqrt();
            for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let _ = match &self.scheduled {
                    Some(s) => p.g_mul_(&s.decay),
                    None => p.g_mul_scalar_(1.0 - self.lr * self.weight_decay),
                };
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

    /// Same trajectory as tch's (torch's C++) AdamW on a small quadratic. The values are fixed, not
    /// drawn: libtorch's generator is global, and tests running beside this one reseed it (the draw
    /// once came out far enough from the target that 40 steps did not halve the distance).
    #[test]
    fn matches_torch_adamw() {
        let k = Tensor::arange(20, (Kind::Float, tch::Device::Cpu)).view([5, 4]);
        let target = k.sin() * 0.8;
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let w_ref = vs.root().var_copy("w", &(k.cos() * 0.8));
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

    /// A scheduled optimizer at a fixed rate takes bit for bit the steps of the host-rate one; with
    /// the rate changed between steps it takes torch's steps at each step's rate (torch's AdamW
    /// with its learning rate set before each step, as transformers' schedulers do).
    #[test]
    fn a_scheduled_rate_is_the_host_rate_and_follows_set_lr() {
        tch::manual_seed(5);
        let target = Tensor::randn([6, 3], (Kind::Float, tch::Device::Cpu));
        let init = Tensor::randn([6, 3], (Kind::Float, tch::Device::Cpu));
        let run = |scheduled: bool, rates: &[f64]| -> Tensor {
            let w = init.copy().set_requires_grad(true);
            let mut opt = AdamW::new(vec![w.shallow_clone()], 0.05, 0.9, 0.999, 0.01);
            if scheduled {
                opt.schedule();
            }
            for &lr in rates {
                if scheduled {
                    opt.set_lr(lr);
                }
                opt.zero_grad();
                (&w - &target).square().sum(Kind::Float).backward();
                opt.step();
            }
            w.detach()
        };
        let fixed = [0.05; 30];
        let diff = (run(false, &fixed) - run(true, &fixed)).abs().max().double_value(&[]);
        assert_eq!(
            diff, 0.0,
            "a scheduled optimizer at the base rate is not the host-rate one"
        );
        let falling: Vec<f64> = (0..30).map(|t| 0.05 * (1.0 - t as f64 / 30.0)).collect();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let w_ref = vs.root().var_copy("w", &init);
        let mut reference = tch::nn::OptimizerConfig::build(tch::nn::adamw(0.9, 0.999, 0.01), &vs, 0.05).unwrap();
        for &lr in &falling {
            reference.set_lr(lr);
            reference.zero_grad();
            (&w_ref - &target).square().sum(Kind::Float).backward();
            reference.step();
        }
        let ours = run(true, &falling);
        let diff = (&ours - &w_ref.detach()).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max |diff| against torch with the same rates: {diff}");
        let unscheduled = (&ours - run(false, &fixed)).abs().max().double_value(&[]);
        assert!(unscheduled > 1e-3, "the falling rate changed nothing: {unscheduled}");
    }
}

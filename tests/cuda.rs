//! GPU-only checks, for CUDA builds (INJECTOR_CUDA=1) on a machine with a GPU. Elsewhere each test
//! prints that it skipped: the CPU machines of CI have no GPU, and the GPU runs of bench/NOTES.md
//! carry this binary there.
use tch::{Device, Kind, Tensor};

fn gpu() -> Option<Device> {
    let dev = Device::Cuda(0);
    if tch::Cuda::is_available() && injector::cuda::available(dev) {
        Some(dev)
    } else {
        eprintln!("skipped: not a CUDA build on a GPU");
        None
    }
}

/// A random-model shape small enough for any test.
fn tiny_config() -> injector::model::Config {
    use injector::model::Config;
    Config {
        architecture: "llama".into(),
        vocab_size: 97,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        attention_bias: false,
    }
}

/// The shim's SwiGLU saves less for backward but computes the same kernels: forward and both
/// gradients equal libtorch's silu(g)·u exactly.
#[test]
fn shim_swiglu_equals_silu_times_u() {
    let Some(dev) = gpu() else { return };
    for kind in [Kind::BFloat16, Kind::Float] {
        let leaf = || Tensor::randn([96, 300], (kind, dev)).set_requires_grad(true);
        let (g, u) = (leaf(), leaf());
        let dh = Tensor::randn([96, 300], (kind, dev));
        let ours = injector::cuda::swiglu(&g, &u);
        (&ours * &dh).sum(Kind::Float).backward();
        let (g2, u2) = (g.detach().set_requires_grad(true), u.detach().set_requires_grad(true));
        let reference = g2.silu() * &u2;
        (&reference * &dh).sum(Kind::Float).backward();
        assert!(ours.equal(&reference), "{kind:?} forward");
        assert!(g.grad().equal(&g2.grad()), "{kind:?} d/dg");
        assert!(u.grad().equal(&u2.grad()), "{kind:?} d/du");
    }
}

/// Graphs captured once per run (issue #11): a run's trainer pool captures on its first group, then
/// replays from the first optimizer step after each reset. Each group's update equals that of a
/// fresh trainer (which captures its own graphs) within float rounding, for three groups in a row.
#[test]
fn pooled_trainers_replay_like_fresh_ones() {
    use injector::adapter::merge::factors;
    use injector::config::{AdaLoraConfig, TrainConfig};
    use injector::eval::batch::Example;
    use injector::inject::step::{train, Trainer, Trainers};
    use injector::model::Llama;
    let Some(dev) = gpu() else { return };
    tch::manual_seed(0);
    let cfg = tiny_config();
    let model = Llama::random(&cfg, dev, Kind::Float).unwrap();
    let group = |k: i64| -> Vec<Example> {
        (0..4i64)
            .map(|i| Example {
                prompt: (0..3 + i).map(|j| (7 * i + 3 * j + k) % 97).collect(),
                target: (0..4 + k % 2).map(|j| (11 * k + j) % 97).collect(),
            })
            .collect()
    };
    // Unreachable threshold: every group trains exactly max_steps optimizer steps.
    let train_cfg = TrainConfig {
        lr: 0.05,
        max_steps: 8,
        threshold: 1.0 + 1e-9,
        adalora: AdaLoraConfig {
            tinit: 1,
            tfinal: 1,
            ..AdaLoraConfig::default()
        },
        ..TrainConfig::default()
    };
    let mut pool = Trainers::new(&model, &train_cfg, None).unwrap();
    for (k, seed) in [(1, 5), (3, 9), (1, 7)] {
        let ex = group(k);
        let owner: Vec<usize> = vec![0; ex.len()];
        let pooled = train(&mut pool, &ex, &owner, 1, seed, |_, _, _| {}).unwrap();
        assert_eq!(pooled.optimizer_steps, 8);
        let mut fresh = Trainer::new(&model, &ex, &train_cfg, None, seed).unwrap();
        for _ in 0..8 {
            fresh.forward_backward().unwrap();
            fresh.update().unwrap();
        }
        for (p, f) in pooled.factors.iter().zip(factors(&fresh.adapter)) {
            let (dp, df) = (p.delta_weight(), f.delta_weight());
            let d = (&dp - &df).abs().max().double_value(&[]);
            let scale = df.abs().max().double_value(&[]);
            assert!(scale > 0.0 && d <= 1e-3 * scale, "group {k}, {}: {d} vs {scale}", p.key);
        }
    }
}

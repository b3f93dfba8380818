//! `cargo bench --bench train_step [-- SHAPES [DEVICE]]`: time of one AdaLoRA training step of ours on
//! Llama shapes with random weights, the workload of the peer `../shared/peers/peft_bench.py`: batch
//! 8 × 96 tokens (loss on the last 64 of each row), AdaLoRA init_r 12 on q_proj/v_proj, alpha 32,
//! dropout 0.1, allocator every step (tinit 2, tfinal 2, total_step 35), AdamW lr 5e-3, clip 1.0.
//! bf16 base weights on CUDA, fp32 on the CPU. Prints one JSON line per shape, as the peer does.
use injector::config::{AdaLoraConfig, Proj, TrainConfig};
use injector::eval::batch::Example;
use injector::inject::step::Trainer;
use injector::model::{Config, Llama};
use std::time::Instant;
use tch::{Device, Kind};

fn shape(name: &str) -> Config {
    let (h, i, l, nh, nkv, v, tied) = match name {
        "smollm2-135m" => (576, 1536, 30, 9, 3, 49152, true),
        "smollm2-1.7b" => (2048, 8192, 24, 32, 32, 49152, true),
        "llama-7b" => (4096, 11008, 32, 32, 32, 32000, false),
        other => panic!("unknown shape {other}"),
    };
    Config {
        architecture: "llama".into(),
        vocab_size: v,
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: l,
        num_attention_heads: nh,
        num_key_value_heads: nkv,
        head_dim: h / nh,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: tied,
        attention_bias: false,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let names = args
        .first()
        .cloned()
        .unwrap_or_else(|| "smollm2-135m,smollm2-1.7b,llama-7b".into());
    let device = match args.get(1).map(String::as_str) {
        Some(d) => injector::device::parse_device(d).expect("device"),
        None => injector::device::parse_device("auto").expect("device"),
    };
    let kind = if device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
    let (b, t) = (8usize, 96usize);
    for name in names.split(',') {
        tch::manual_seed(0);
        let cfg = shape(name);
        let model = Llama::random(&cfg, device, kind).expect("model");
        let mut seed = 1u64;
        let mut tok = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % cfg.vocab_size as u64) as i64
        };
        let examples: Vec<Example> = (0..b)
            .map(|_| Example {
                prompt: (0..t / 3).map(|_| tok()).collect(),
                target: (0..t - t / 3).map(|_| tok()).collect(),
            })
            .collect();
        let steps = 30;
        let train = TrainConfig {
            adalora: AdaLoraConfig {
                lora_alpha: 32.0,
                dropout: 0.1,
                tinit: 2,
                tfinal: 2,
                targets: vec![Proj::Q, Proj::V],
                ..Default::default()
            },
            max_steps: steps + 5,
            max_batch_tokens: b * t,
            ..Default::default()
        };
        let mut tr = Trainer::new(&model, &examples, &train, None, 0).expect("trainer");
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        // Warm-up (untimed), like the peer's 3 steps: here the 3 eager steps and, on a GPU, the step
        // that captures the CUDA graphs (capture records the kernels without running them).
        let warm = 4;
        for _ in 0..warm {
            tr.forward_backward().expect("forward_backward");
            tr.update().expect("update");
        }
        sync();
        let t0 = Instant::now();
        let mut loss = None;
        for _ in warm..steps {
            loss = Some(tr.forward_backward().expect("forward_backward").loss);
            tr.update().expect("update");
        }
        sync();
        let s = t0.elapsed().as_secs_f64() / (steps - warm) as f64;
        let loss = loss.map(|l| l.double_value(&[])).unwrap_or(f64::NAN);
        // Where the time goes: forward+backward alone, then the update alone (synchronised), on
        // the steps before the allocator's final one (33), like the timed ones.
        let (mut fb, mut up) = (0.0, 0.0);
        for _ in 0..3 {
            let t = Instant::now();
            tr.forward_backward().expect("forward_backward");
            sync();
            fb += t.elapsed().as_secs_f64();
            let t = Instant::now();
            tr.update().expect("update");
            sync();
            up += t.elapsed().as_secs_f64();
        }
        eprintln!(
            "{name}: forward+backward {:.1} ms, update (clip, AdamW, allocator) {:.1} ms, CUDA graphs {}",
            fb * 1e3 / 3.0,
            up * 1e3 / 3.0,
            if injector::cuda::available(device) { "on" } else { "off" }
        );
        let params = cfg.num_params() as f64;
        let flops = 4.0 * params * (b * t) as f64;
        println!(
            "{name} {{\"step_ms\": {:.2}, \"tokens_per_s\": {:.0}, \"tflops\": {:.2}, \"params\": {}, \"loss\": {:.4}}}",
            s * 1e3,
            (b * t) as f64 / s,
            flops / s / 1e12,
            params as u64,
            loss
        );
    }
}

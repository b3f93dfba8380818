//! Model mechanics on a tiny random Llama: both loaders agree, the KV cache changes nothing,
//! a truncated or fuzzed GGUF gives an error and never panics.
mod common;

use common::*;
use injector::model::generate::{generate, greedy_batch, greedy_batch_fixed, Sampling};
use injector::model::gguf::Gguf;
use injector::model::{load, Cache, FixedCache, NoAdapter};
use tch::{Device, Kind, Tensor};

/// A tiny random model (`write_tiny_gguf` with `seed`) loaded on the CPU; keep the folder while
/// the model is in use.
fn tiny_loaded(seed: u64) -> (tempfile::TempDir, injector::model::Loaded) {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, seed);
    let m = load(&g, Device::Cpu).unwrap();
    (dir, m)
}

#[test]
fn gguf_and_hf_folder_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, 7);
    write_tiny_hf(&dir.path().join("hf"), 7);
    let a = load(&g, Device::Cpu).unwrap();
    let b = load(&dir.path().join("hf"), Device::Cpu).unwrap();
    let chat = [("user", "Hello there, 12 + 7?")];
    let ids = a.tokenizer.encode_chat(&chat, true).unwrap();
    assert_eq!(ids, b.tokenizer.encode_chat(&chat, true).unwrap());
    let x = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
    let la = tch::no_grad(|| a.model.forward(&x, None, &NoAdapter));
    let lb = tch::no_grad(|| b.model.forward(&x, None, &NoAdapter));
    let diff = (la - lb).abs().max().double_value(&[]);
    assert!(
        diff < 1e-5,
        "GGUF (with Q/K un-permuted) and safetensors disagree by {diff}"
    );
}

/// Left-padded rows of different lengths, decoded together with one cache, give each row the
/// logits it gets alone: padding shifts neither positions nor attention.
/// Three token rows of 9, 4 and 13 tokens, their ids left-padded into one [3, 13] batch (row-major),
/// and each row's padding.
fn left_padded_rows() -> (Vec<Vec<i64>>, Vec<i64>, Vec<i64>) {
    let rows: Vec<Vec<i64>> = [9usize, 4, 13]
        .iter()
        .enumerate()
        .map(|(r, &n)| (0..n as i64).map(|i| 3 + ((i + 7 * r as i64) * 41 % 250)).collect())
        .collect();
    let len = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0i64; rows.len() * len];
    let pad: Vec<i64> = rows.iter().map(|r| (len - r.len()) as i64).collect();
    for (i, r) in rows.iter().enumerate() {
        ids[i * len + pad[i] as usize..(i + 1) * len].copy_from_slice(r);
    }
    (rows, ids, pad)
}

#[test]
fn padded_batch_rows_match_each_row_alone() {
    let (_dir, m) = tiny_loaded(5);
    let (rows, ids, pad) = left_padded_rows();
    let next: Vec<i64> = vec![17, 99, 200];
    let len = rows.iter().map(Vec::len).max().unwrap();
    let pad_t = Tensor::from_slice(&pad);
    let mut cache = Cache::new(&m.model.cfg);
    let (prefill, step) = tch::no_grad(|| {
        let h = m.model.hidden_padded(
            &Tensor::from_slice(&ids).view([rows.len() as i64, len as i64]),
            Some(&mut cache),
            Some(&pad_t),
            &NoAdapter,
        );
        let h2 = m.model.hidden_padded(
            &Tensor::from_slice(&next).view([-1, 1]),
            Some(&mut cache),
            Some(&pad_t),
            &NoAdapter,
        );
        (m.model.logits(&h), m.model.logits(&h2))
    });
    for (i, r) in rows.iter().enumerate() {
        let mut alone_ids = r.clone();
        alone_ids.push(next[i]);
        let alone = tch::no_grad(|| {
            m.model
                .forward(&Tensor::from_slice(&alone_ids).unsqueeze(0), None, &NoAdapter)
        });
        let n = r.len() as i64;
        let got = Tensor::cat(&[prefill.get(i as i64).narrow(0, pad[i], n), step.get(i as i64)], 0);
        let diff = (alone.get(0) - got).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "row {i} differs from its forward alone by {diff}");
    }
    // No padding at all: the padded path is the plain one.
    let plain = tch::no_grad(|| {
        m.model
            .forward(&Tensor::from_slice(&rows[2]).unsqueeze(0), None, &NoAdapter)
    });
    let zero = tch::no_grad(|| {
        m.model.logits(&m.model.hidden_padded(
            &Tensor::from_slice(&rows[2]).unsqueeze(0),
            None,
            Some(&Tensor::from_slice(&[0i64])),
            &NoAdapter,
        ))
    });
    assert!((plain - zero).abs().max().double_value(&[]) < 1e-5);
}

/// The decoding step a CUDA graph captures (a cache of fixed shape, the position read from the
/// device) gives the logits of the growing cache, step after step, for left-padded rows; and the
/// greedy answers of a batch decoded that way are the growing cache's.
#[test]
fn fixed_cache_decoding_matches_the_growing_cache() {
    let (_dir, m) = tiny_loaded(5);
    let (rows, ids, pad) = left_padded_rows();
    let (b, len) = (rows.len() as i64, rows.iter().map(Vec::len).max().unwrap() as i64);
    let pad = Tensor::from_slice(&pad);
    tch::no_grad(|| {
        let mut cache = Cache::new(&m.model.cfg);
        let ids = Tensor::from_slice(&ids).view([b, len]);
        let _ = m.model.hidden_padded(&ids, Some(&mut cache), Some(&pad), &NoAdapter);
        let fixed = FixedCache::from_prefill(&cache, &pad, len + 6).unwrap();
        for (s, next) in [[17i64, 99, 200], [5, 6, 7], [250, 3, 41]].iter().enumerate() {
            let next = Tensor::from_slice(next).view([b, 1]);
            let grow = m
                .model
                .logits(&m.model.hidden_padded(&next, Some(&mut cache), Some(&pad), &NoAdapter));
            let got = m.model.logits(&m.model.decode_fixed(&next, &fixed, &NoAdapter));
            let _ = fixed.pos.shallow_clone().g_add_scalar_(1);
            let diff = (grow - got).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "step {s}: the fixed cache's logits differ by {diff}");
        }
        assert_eq!(fixed.pos.int64_value(&[0]), len + 3);
    });
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r.iter().map(|&t| t as u32).collect()).collect();
    let want = greedy_batch(&m.model, &m.tokenizer, &prompts, 12, &NoAdapter).unwrap();
    let got = greedy_batch_fixed(&m.model, &m.tokenizer, &prompts, 12, &NoAdapter, false).unwrap();
    assert!(want.iter().any(|a| a.len() > 3), "too short to test decoding: {want:?}");
    assert_eq!(got, want);
}

#[test]
fn kv_cache_matches_full_recompute() {
    let (_dir, m) = tiny_loaded(3);
    let ids: Vec<i64> = (0..20).map(|i| 3 + (i * 37 % 250)).collect();
    let full = tch::no_grad(|| {
        m.model
            .forward(&Tensor::from_slice(&ids).unsqueeze(0), None, &NoAdapter)
    });
    let mut cache = Cache::new(&m.model.cfg);
    let head = tch::no_grad(|| {
        m.model.forward(
            &Tensor::from_slice(&ids[..12]).unsqueeze(0),
            Some(&mut cache),
            &NoAdapter,
        )
    });
    // A multi-token chunk after the cache (masked path), then single tokens.
    let mid = tch::no_grad(|| {
        m.model.forward(
            &Tensor::from_slice(&ids[12..15]).unsqueeze(0),
            Some(&mut cache),
            &NoAdapter,
        )
    });
    let mut parts = vec![head, mid];
    for &t in &ids[15..] {
        parts.push(tch::no_grad(|| {
            m.model
                .forward(&Tensor::from_slice(&[t]).unsqueeze(0), Some(&mut cache), &NoAdapter)
        }));
    }
    let inc = Tensor::cat(&parts, 1);
    let diff = (full - inc).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "cached decoding differs from a full forward by {diff}");
    assert_eq!(cache.len(), 20);
}

#[test]
fn sampling_is_seeded_and_greedy_is_deterministic() {
    let (_dir, m) = tiny_loaded(5);
    let ids = m
        .tokenizer
        .encode_markup("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let run = |s: &Sampling| generate(&m.model, &m.tokenizer, &ids, s, &NoAdapter, |_| {}).unwrap();
    let greedy = Sampling {
        max_tokens: 12,
        ..Default::default()
    };
    assert_eq!(run(&greedy), run(&greedy));
    let hot = |seed| Sampling {
        temperature: 1.5,
        top_p: 0.95,
        seed,
        max_tokens: 12,
    };
    assert_eq!(run(&hot(1)), run(&hot(1)));
    let differ = (2..6).any(|s| run(&hot(s)) != run(&hot(1)));
    assert!(differ, "different seeds never changed a sampled answer");
}

#[test]
fn truncated_and_fuzzed_gguf_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, 1);
    let bytes = std::fs::read(&g).unwrap();
    let bad = dir.path().join("bad.gguf");
    let mut state = 12345u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    let cuts: Vec<usize> = (0..40).map(|i| i * bytes.len() / 40).collect();
    for cut in cuts {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        if load(&bad, Device::Cpu).is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 40, "every truncation must be refused");
    for _ in 0..200 {
        let mut b = bytes.clone();
        // Flip bytes in the header and directory, where lengths and offsets live.
        let header_len = 4096.min(b.len());
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % header_len;
            b[i] = next() as u8;
        }
        std::fs::write(&bad, &b).unwrap();
        let r = std::panic::catch_unwind(|| {
            let _ = Gguf::open(&bad).map(|g| {
                for t in &g.tensors {
                    let _ = g.tensor_f32(t);
                }
            });
            let _ = load(&bad, Device::Cpu);
        });
        assert!(r.is_ok(), "a corrupted GGUF made the loader panic");
    }
}

#[test]
fn parameter_count_matches_the_loaded_weights() {
    let (_dir, m) = tiny_loaded(1);
    assert_eq!(m.model.kind(), Kind::Float);
    assert!(
        m.model.vs.variables().values().all(|t| !t.requires_grad()),
        "base weights must be frozen"
    );
    let n: i64 = m.model.vs.variables().values().map(|t| t.numel() as i64).sum();
    assert_eq!(m.model.cfg.num_params() as i64, n);
}

#[test]
fn weights_keep_the_requested_kind() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, 1);
    let gg = injector::model::gguf::Gguf::open(&g).unwrap();
    let cfg = injector::model::Config::from_gguf(&gg).unwrap();
    let m = injector::model::Llama::random(&cfg, Device::Cpu, Kind::BFloat16).unwrap();
    assert!(
        m.vs.variables().values().all(|t| t.kind() == Kind::BFloat16),
        "bf16 weights must stay bf16"
    );
    let ids = Tensor::from_slice(&[3i64, 4, 5]).unsqueeze(0);
    let logits = tch::no_grad(|| m.forward(&ids, None, &NoAdapter));
    assert_eq!(logits.kind(), Kind::Float);
}

/// The general check's perplexity from batched, gathered logits (several batches of rows of
/// different lengths) equals exp of the mean negative log-likelihood computed one example at a time
/// from full logits; its accuracy is the mean of the examples' token accuracies; no examples give 1.0 and 1.0.
#[test]
fn locality_perplexity_is_the_per_example_likelihood() {
    use injector::eval::batch::Example;
    use injector::eval::batch::{build, token_accuracy};
    use injector::eval::probe::locality_scores;
    let (_dir, m) = tiny_loaded(11);
    let m = m.model;
    let examples: Vec<Example> = [(5usize, 3usize), (9, 1), (2, 6), (12, 4), (7, 7)]
        .iter()
        .enumerate()
        .map(|(k, &(p, t))| Example {
            prompt: (0..p as i64).map(|i| 3 + (i * 17 + 5 * k as i64) % 250).collect(),
            target: (0..t as i64).map(|i| 3 + (i * 29 + 11 * k as i64) % 250).collect(),
        })
        .collect();
    let (mut nll, mut n) = (0.0f64, 0usize);
    for e in &examples {
        let ids: Vec<i64> = e.prompt.iter().chain(&e.target).copied().collect();
        let x = Tensor::from_slice(&ids).unsqueeze(0);
        let logp = tch::no_grad(|| m.forward(&x, None, &NoAdapter)).log_softmax(-1, Kind::Float);
        for (j, &t) in e.target.iter().enumerate() {
            let at = (e.prompt.len() + j - 1) as i64;
            nll -= logp.double_value(&[0, at, t]);
            n += 1;
        }
    }
    let expected = (nll / n as f64).exp();
    // 24 tokens a batch: the five examples go through in several batches.
    let got = locality_scores(&m, &examples, 24);
    assert!(got.perplexity > 1.0);
    assert!(
        (got.perplexity - expected).abs() < 1e-4 * expected,
        "{} vs {expected}",
        got.perplexity
    );
    // Accuracy: the mean over examples of each one's teacher-forced token accuracy.
    let each = token_accuracy(&m, &NoAdapter, &build(&examples, 24, Device::Cpu), examples.len());
    assert_eq!(got.accuracy, each.iter().sum::<f64>() / each.len() as f64);
    let none = locality_scores(&m, &[], 24);
    assert_eq!((none.accuracy, none.perplexity), (1.0, 1.0));
}

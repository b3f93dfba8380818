//! Shared test helpers: a tiny random Llama written as GGUF and as a Hugging Face folder, the real
//! embedded model's path, and running the binary.
#![allow(dead_code)]
pub mod export;
pub mod knowledge;
use injector::model::gguf::{self, Value, WriteTensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Shape of the tiny model.
pub struct Tiny {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

pub const TINY: Tiny = Tiny {
    hidden: 32,
    inter: 64,
    layers: 2,
    heads: 4,
    kv_heads: 2,
};

/// GPT-2's byte-to-unicode table: the 256 single-character tokens of a byte-level vocabulary.
pub fn byte_tokens() -> Vec<String> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(_, c)| char::from_u32(c).unwrap().to_string())
        .collect()
}

/// The tiny vocabulary: three specials, then the 256 byte tokens.
pub fn vocab() -> Vec<String> {
    SPECIALS.iter().map(|s| s.to_string()).chain(byte_tokens()).collect()
}

/// Deterministic pseudo-random weights in HF names and shapes (PyTorch order).
pub fn tiny_weights(seed: u64) -> Vec<(String, Vec<i64>, Vec<f32>)> {
    let t = TINY;
    let hd = t.hidden / t.heads;
    let v = vocab().len();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut rnd = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut w = Vec::new();
    let mut add = |name: String, shape: Vec<i64>, vals: Vec<f32>| w.push((name, shape, vals));
    add(
        "model.embed_tokens.weight".into(),
        vec![v as i64, t.hidden as i64],
        rnd(v * t.hidden, 1.0),
    );
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        let h = t.hidden as i64;
        let lin = [
            ("self_attn.q_proj", (t.heads * hd) as i64, h),
            ("self_attn.k_proj", (t.kv_heads * hd) as i64, h),
            ("self_attn.v_proj", (t.kv_heads * hd) as i64, h),
            ("self_attn.o_proj", h, (t.heads * hd) as i64),
            ("mlp.gate_proj", t.inter as i64, h),
            ("mlp.up_proj", t.inter as i64, h),
            ("mlp.down_proj", h, t.inter as i64),
        ];
        for (n, o, i) in lin {
            let scale = 1.0 / (i as f32).sqrt();
            add(
                format!("{p}.{n}.weight"),
                vec![o, i],
                rnd((o * i) as usize, scale * 1.7),
            );
        }
        let norm = |r: Vec<f32>| r.into_iter().map(|x| 1.0 + 0.1 * x).collect::<Vec<f32>>();
        add(format!("{p}.input_layernorm.weight"), vec![h], norm(rnd(t.hidden, 1.0)));
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            norm(rnd(t.hidden, 1.0)),
        );
    }
    add("model.norm.weight".into(), vec![t.hidden as i64], vec![1.0; t.hidden]);
    w
}

/// llama.cpp's Q/K row permutation (convert_hf_to_gguf.py `LlamaModel.permute`).
fn permute(vals: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; vals.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..hd / 2 {
                let src = h * hd + s * (hd / 2) + j;
                let dst = h * hd + j * 2 + s;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&vals[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, tail) = rest.split_once('.').unwrap();
    let part = tail
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("input_layernorm", "attn_norm");
    format!("blk.{l}.{part}")
}

/// GGUF metadata of the tiny model; `arch` lets tests write an unsupported one.
pub fn tiny_metadata(arch: &str) -> Vec<(String, Value)> {
    let t = TINY;
    let s = |x: &str| Value::Str(x.into());
    let vocab = vocab();
    let mut types = vec![Value::I32(3); SPECIALS.len()];
    types.extend(std::iter::repeat_n(Value::I32(1), vocab.len() - SPECIALS.len()));
    vec![
        ("general.architecture".into(), s(arch)),
        (format!("{arch}.block_count"), Value::U32(t.layers as u32)),
        (format!("{arch}.context_length"), Value::U32(256)),
        (format!("{arch}.embedding_length"), Value::U32(t.hidden as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(t.inter as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(t.heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(t.kv_heads as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(vocab.iter().map(|x| s(x)).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::strings(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.chat_template".into(), s(CHAT_TEMPLATE)),
    ]
}

/// Writes the tiny model as GGUF (F32 tensors, Q/K permuted like llama.cpp does).
pub fn write_tiny_gguf(path: &Path, seed: u64) {
    write_tiny_gguf_with(path, seed, "llama", |_| {});
}

/// Like [`write_tiny_gguf`], with another architecture name and a hook to alter the tensors.
pub fn write_tiny_gguf_with(path: &Path, seed: u64, arch: &str, edit: impl FnOnce(&mut Vec<WriteTensor>)) {
    let mut tensors = tiny_gguf_tensors(seed);
    edit(&mut tensors);
    gguf::write(path, &tiny_metadata(arch), &tensors).unwrap();
}

/// Like [`write_tiny_gguf`], with a hook to alter the metadata.
pub fn write_tiny_gguf_meta(path: &Path, seed: u64, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let mut meta = tiny_metadata("llama");
    edit(&mut meta);
    gguf::write(path, &meta, &tiny_gguf_tensors(seed)).unwrap();
}

/// The tiny model's tensors in GGUF names (F32, Q/K permuted like llama.cpp does).
fn tiny_gguf_tensors(seed: u64) -> Vec<WriteTensor> {
    let t = TINY;
    tiny_weights(seed)
        .into_iter()
        .map(|(name, shape, vals)| {
            let (rows, cols) = (shape[0] as usize, shape.get(1).copied().unwrap_or(1) as usize);
            let vals = if name.contains("q_proj") {
                permute(&vals, rows, cols, t.heads)
            } else if name.contains("k_proj") {
                permute(&vals, rows, cols, t.kv_heads)
            } else {
                vals
            };
            WriteTensor::f32(&gguf_name(&name), &shape, &vals)
        })
        .collect()
}

/// Writes the tiny model as a Hugging Face folder (config.json, model.safetensors, tokenizer files).
pub fn write_tiny_hf(dir: &Path, seed: u64) {
    let t = TINY;
    std::fs::create_dir_all(dir).unwrap();
    let vocab = vocab();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab.len(),
        "hidden_size": t.hidden, "intermediate_size": t.inter, "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads, "num_key_value_heads": t.kv_heads, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = tiny_weights(seed)
        .into_iter()
        .map(|(n, s, v)| (n, tch::Tensor::from_slice(&v).reshape(&s)))
        .collect();
    tch::Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let vmap: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vmap, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg =
        serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// The embedded SmolLM2 model that `setup.sh` fetches; the tests that need it say so when it is absent.
pub fn real_model() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(injector::paths::EMBEDDED_MODEL);
    assert!(p.exists(), "{} is missing: run `bash setup.sh` first", p.display());
    p
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Runs the `injector` binary with `args` in `cwd`.
pub fn injector(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

//! Loading a checkpoint — a GGUF file or a Hugging Face folder (config.json + safetensors, sharded
//! too) — into [`Llama`] and its [`Tokenizer`].
use super::config::Config;
use super::gguf::Gguf;
use super::llama::{Llama, Weights};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A loaded model with its tokenizer and where it came from.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// blake3 of the checkpoint's bytes (the file, or the folder's weight files in name order).
    pub source_hash: String,
    /// Wall seconds the load took (reading, dequantising, building the model, hashing the source).
    pub load_seconds: f64,
}

/// llama.cpp's names of the whole-model tensors and Hugging Face's (`convert_hf_to_gguf.py`'s table).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names of the parts of layer `blk.N` and Hugging Face's of `model.layers.N`.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// GGUF tensor names to Hugging Face names.
pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = MODEL_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = tail.rsplit_once('.')?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Hugging Face names to GGUF tensor names: the inverse of [`hf_name`].
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = MODEL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = tail.rsplit_once('.')?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Undoes llama.cpp's row permutation of Q/K (it interleaves the two RoPE halves per head).
/// w: [n_head * head_dim, in] in GGUF order -> the same in Hugging Face's rotate-half order.
pub fn unpermute_qk(w: &Tensor, n_head: i64) -> Tensor {
    let size = w.size();
    let (out, rest) = (size[0], &size[1..]);
    let mut shape = vec![n_head, out / n_head / 2, 2];
    shape.extend_from_slice(rest);
    w.reshape(&shape).transpose(1, 2).reshape(&size)
}

fn load_gguf(path: &Path, template: Option<&str>) -> Result<(Config, Weights, Tokenizer)> {
    let g = Gguf::open(path)?;
    let cfg = Config::from_gguf(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g, template)?;
    // Check every tensor's type before decoding any, so the error names the first unsupported one.
    for t in &g.tensors {
        if super::quant::GgmlType::from_id(t.type_id).is_err() && hf_name(&t.name).is_some() {
            return Err(Error::UnsupportedTensorType {
                path: path.into(),
                tensor: t.name.clone(),
                ty: Gguf::type_name(t),
            });
        }
    }
    let decoded: Vec<(String, Vec<f32>, Vec<i64>)> = g
        .tensors
        .par_iter()
        .filter_map(|t| hf_name(&t.name).map(|n| (n, t)))
        .map(|(n, t)| {
            let (v, s) = g.tensor_f32(t)?;
            if !v.iter().all(|x| x.is_finite()) {
                return Err(Error::bad_model(
                    path,
                    format!("tensor '{}' holds NaN or infinite values", t.name),
                ));
            }
            Ok((n, v, s))
        })
        .collect::<Result<_>>()?;
    let permute = cfg.architecture != "qwen2";
    let (hidden, head_dim) = (cfg.hidden_size as i64, cfg.head_dim as i64);
    let mut w = Weights::new();
    for (name, values, shape) in decoded {
        let t = Tensor::from_slice(&values).reshape(&shape);
        let heads = match name.rsplit('.').nth(1) {
            Some("q_proj") if permute => Some(cfg.num_attention_heads as i64),
            Some("k_proj") if permute => Some(cfg.num_key_value_heads as i64),
            _ => None,
        };
        let t = match heads {
            // The shape is checked here, before the rows are regrouped by head, rather than when
            // the model is built: rows that do not split into the heads cannot be regrouped.
            Some(n) if shape != [n * head_dim, hidden] => {
                let gguf_name = g.tensors.iter().find(|t| hf_name(&t.name).as_ref() == Some(&name));
                return Err(Error::bad_model(
                    path,
                    format!(
                        "tensor '{}' has shape {shape:?}, expected {:?}",
                        gguf_name.map_or(name.as_str(), |t| t.name.as_str()),
                        [n * head_dim, hidden]
                    ),
                ));
            }
            Some(n) => unpermute_qk(&t, n),
            None => t,
        };
        w.insert(name, t);
    }
    Ok((cfg, w, tokenizer))
}

fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::bad_model(&index, e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::bad_model(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_model(&index, "no weight_map"))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::bad_model(
        dir,
        "no model.safetensors or model.safetensors.index.json",
    ))
}

/// The tensors of one safetensors file as fp32, refusing what a model cannot be built from: a
/// file that is not safetensors, a tensor of a type other than a float (integers, bools, 8-bit
/// floats), a weight that is NaN or infinite.
fn read_safetensors(f: &Path) -> Result<Vec<(String, Tensor)>> {
    use safetensors::Dtype;
    let file = std::fs::File::open(f).map_err(|e| Error::bad_model(f, format!("cannot open: {e}")))?;
    // SAFETY: read-only map of a file the loader does not change, as in `Gguf::open`.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::bad_model(f, format!("cannot map: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| Error::bad_model(f, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(Error::UnsupportedTensorType {
                    path: f.into(),
                    tensor: name,
                    ty: format!("{other:?}"),
                })
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?.to_kind(Kind::Float);
        if !bool::try_from(t.isfinite().all())? {
            return Err(Error::bad_model(
                f,
                format!("tensor '{name}' holds NaN or infinite values"),
            ));
        }
        out.push((name, t));
    }
    Ok(out)
}

/// The number of decoder layers the weights hold (`model.layers.{i}.…`: the largest i, plus one).
fn layers_held<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

fn load_hf_dir(dir: &Path, template: Option<&str>) -> Result<(Config, Weights, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    let cfg = Config::from_hf_json(&cfg_path)?;
    let tokenizer = Tokenizer::from_hf_dir(dir, template)?;
    let mut w = Weights::new();
    for f in safetensor_files(dir)? {
        w.extend(read_safetensors(&f)?);
    }
    // Layers beyond the config's count would be dropped without a word (fewer are named as a
    // missing tensor when the model is built).
    let held = layers_held(w.keys());
    if held > cfg.num_hidden_layers {
        return Err(Error::bad_model(
            &cfg_path,
            format!(
                "num_hidden_layers is {} but the weights hold {held} layers",
                cfg.num_hidden_layers
            ),
        ));
    }
    Ok((cfg, w, tokenizer))
}

fn hash_source(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let files = if path.is_dir() {
        safetensor_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        h.update_mmap_rayon(&f)
            .map_err(|e| Error::bad_model(&f, e.to_string()))?;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The kind of the base weights of a run that records no type (`RunConfig::base_dtype` none): bf16
/// on CUDA, fp32 on the CPU — every CPU run before `auto` chose bf16 there.
pub fn base_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Whether this CPU multiplies bf16 natively (x86-64 with AVX512-BF16, which the CPUs with AMX
/// have), so that bf16 base weights train faster than fp32 ones rather than slower.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What `--base-dtype auto` gives on `device`: bf16 on CUDA; on the CPU bf16 where it multiplies
/// bf16 natively ([`cpu_has_bf16`]; 1.7–2.6× faster training on this project's AMX machine, the
/// shipped set's recall, generalisation and locality within 0.01 of fp32's: bench/NOTES.md item
/// 35), else fp32.
pub fn auto_kind(device: Device) -> Kind {
    if device.is_cuda() || cpu_has_bf16() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// The kind of the base weights `--base-dtype` asks for on `device`: `auto` ([`auto_kind`]), `f32` (the
/// CPU only) or `bf16` (on a CPU, products in bf16: on CPUs with AMX, as this project's machine has,
/// training runs 1.7–2.6× faster than in fp32; bench/NOTES.md item 35). Adapters, optimizer state
/// and merges stay fp32 either way (merges accumulate in an fp32 master copy of each edited weight).
/// A run's weights hash depends on it, as on the device: resume and replay a run with the type it
/// was made with.
///
/// Errors: bad input for another name, or f32 on a GPU (its training graphs are made for bf16).
pub fn parse_dtype(s: &str, device: Device) -> Result<Kind> {
    match s {
        "auto" => Ok(auto_kind(device)),
        "bf16" => Ok(Kind::BFloat16),
        "f32" if device.is_cuda() => Err(Error::BadInput(
            "--base-dtype f32: on a GPU the base weights are bf16 (use auto or bf16)".into(),
        )),
        "f32" => Ok(Kind::Float),
        _ => Err(Error::BadInput(format!(
            "unknown --base-dtype '{s}': expected auto, f32 or bf16"
        ))),
    }
}

/// What a new run records of `--base-dtype` `flag` on `device` (`RunConfig::base_dtype`): the type
/// where it is not [`base_kind`] (bf16 on the CPU, `auto` included where it gives bf16), else
/// nothing. Errors: as [`parse_dtype`].
pub fn dtype_to_record(flag: &str, device: Device) -> Result<Option<String>> {
    let kind = parse_dtype(flag, device)?;
    Ok((kind != base_kind(device)).then(|| dtype_name(kind)))
}

/// The `--base-dtype` name of a base-weight kind (`f32`, `bf16`; others by libtorch's name).
pub fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::BFloat16 => "bf16".into(),
        k => format!("{k:?}"),
    }
}

/// Loads a checkpoint: a `.gguf` file or a Hugging Face folder, with its default chat template.
/// Base weights are [`base_kind`]'s: fp32 on the CPU and bf16 on CUDA (the CLI's `auto` may choose
/// bf16 on the CPU: [`load_as`]).
pub fn load(path: &Path, device: Device) -> Result<Loaded> {
    load_with_template(path, device, None)
}

/// [`load`] with the chat template named `template` (`--chat-template`), for checkpoints that
/// ship several; `None` is the checkpoint's default.
pub fn load_with_template(path: &Path, device: Device, template: Option<&str>) -> Result<Loaded> {
    load_as(path, device, base_kind(device), template)
}

/// [`load_with_template`] with base weights of `kind` ([`parse_dtype`]).
pub fn load_as(path: &Path, device: Device, kind: Kind, template: Option<&str>) -> Result<Loaded> {
    let t0 = std::time::Instant::now();
    if !path.exists() {
        return Err(Error::bad_model(path, "no such file or folder"));
    }
    // A GPU's context takes about a second to create (driver, libraries, allocator): it is made on
    // another thread while this one reads and dequantises the checkpoint, which needs no GPU.
    let (parsed, source_hash) = std::thread::scope(|s| {
        let context = device
            .is_cuda()
            .then(|| s.spawn(move || drop(Tensor::f_zeros([1], (Kind::Float, device)))));
        // The hash runs beside the parse (the file is read twice, the second time from the page
        // cache); a checkpoint the parse refuses is reported once the hash is done.
        let hash = s.spawn(|| hash_source(path));
        let parsed = if path.is_dir() {
            load_hf_dir(path, template)
        } else {
            load_gguf(path, template)
        };
        if let Some(c) = context {
            // A failed context shows again, with its message, when the weights go to the device.
            let _ = c.join();
        }
        (parsed, hash.join().expect("hashing the checkpoint panicked"))
    });
    let (cfg, weights, tokenizer) = parsed?;
    // Every id the tokenizer can give must have a row of the embedding, or the first forward of
    // such a token fails inside libtorch. Ids need not be dense: the largest one counts.
    let (count, top) = (tokenizer.vocab_size(), tokenizer.max_id().map_or(0, |i| i as usize + 1));
    if count == 0 || count > cfg.vocab_size {
        return Err(Error::bad_model(
            path,
            format!(
                "the tokenizer has {count} tokens but the model embeds {}",
                cfg.vocab_size
            ),
        ));
    }
    if top > cfg.vocab_size {
        return Err(Error::bad_model(
            path,
            format!(
                "the tokenizer gives token id {} but the model embeds {} tokens",
                top - 1,
                cfg.vocab_size
            ),
        ));
    }
    let model = Llama::new(&cfg, weights, device, kind).map_err(|e| match e {
        Error::BadInput(msg) => Error::bad_model(path, msg),
        other => other,
    })?;
    let source_hash = source_hash?;
    Ok(Loaded {
        model,
        tokenizer,
        source_hash,
        load_seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_by_name_and_device() {
        // auto on the CPU: bf16 where the CPU multiplies it natively, and then recorded.
        let cpu_auto = if cpu_has_bf16() { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(parse_dtype("auto", Device::Cpu).unwrap(), cpu_auto);
        assert_eq!(base_kind(Device::Cpu), Kind::Float);
        assert_eq!(parse_dtype("auto", Device::Cuda(0)).unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("bf16", Device::Cpu).unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("f32", Device::Cpu).unwrap(), Kind::Float);
        assert!(parse_dtype("f32", Device::Cuda(0)).unwrap_err().is_bad_input());
        assert!(parse_dtype("fp8", Device::Cpu).unwrap_err().is_bad_input());
        assert_eq!(dtype_name(Kind::Float), "f32");
        assert_eq!(dtype_name(Kind::BFloat16), "bf16");
        assert_eq!(dtype_to_record("bf16", Device::Cpu).unwrap().as_deref(), Some("bf16"));
        assert_eq!(
            dtype_to_record("auto", Device::Cpu).unwrap(),
            cpu_has_bf16().then(|| "bf16".to_string())
        );
        assert_eq!(dtype_to_record("f32", Device::Cpu).unwrap(), None);
        assert_eq!(dtype_to_record("auto", Device::Cuda(0)).unwrap(), None);
        assert_eq!(dtype_to_record("bf16", Device::Cuda(0)).unwrap(), None);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output_norm.weight").unwrap(), "model.norm.weight");
        assert!(hf_name("rope_freqs.weight").is_none());
        for g in [
            "token_embd.weight",
            "output.weight",
            "blk.12.attn_k.bias",
            "blk.0.ffn_norm.weight",
        ] {
            assert_eq!(gguf_name(&hf_name(g).unwrap()).as_deref(), Some(g));
        }
        assert!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }

    #[test]
    fn layers_held_counts_from_the_names() {
        let names: Vec<String> = [
            "model.embed_tokens.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.11.input_layernorm.weight",
            "model.layers.x.y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(layers_held(names.iter()), 12);
        assert_eq!(layers_held(names[..1].iter()), 0);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(w.shape)
        let (n_head, hd, inp) = (3i64, 8i64, 5i64);
        let hf = Tensor::randn([n_head * hd, inp], (Kind::Float, Device::Cpu));
        let gguf = hf
            .reshape([n_head, 2, hd / 2, inp])
            .transpose(1, 2)
            .reshape([n_head * hd, inp]);
        let back = unpermute_qk(&gguf, n_head);
        assert!(back.equal(&hf));
    }
}

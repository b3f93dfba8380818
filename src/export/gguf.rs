//! A model as one GGUF v3 file that llama.cpp loads (format:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>; names, keys and tensor types as
//! llama.cpp's `convert_hf_to_gguf.py` writes them for `LlamaForCausalLM` and `Qwen2ForCausalLM`).
//!
//! - Metadata: `general.*`, the `{arch}.*` hyper-parameters, and the tokenizer — the source GGUF's
//!   `tokenizer.*` keys carried across unchanged, or built from `tokenizer.json` ([`super::gguf_vocab`]).
//! - Tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, …, `output` only when untied).
//!   Our weights hold Q/K rows in Hugging Face's rotate-half order (the GGUF loader undid llama.cpp's
//!   interleaving), so for `llama` they are permuted back: the exact inverse of
//!   [`crate::model::weights::unpermute_qk`]. Qwen2 is not permuted (llama.cpp runs it in NeoX order).
//! - Types: 1-D tensors (norms, biases) stay F32; 2-D ones take the chosen type, computed from the
//!   fp32 weights with [`crate::model::quant::quantize`] (ggml's reference quantisers). For q4_1 the
//!   output projection (the token embedding when tied) is Q8_0, as llama.cpp's `llama-quantize`
//!   keeps it at higher precision (the embedded SmolLM2 Q4_1 file has it so). A row whose length
//!   is not a whole number of 32-element blocks falls back to F16, as `convert_hf_to_gguf.py` does.
//! - Data streamed tensor by tensor, each at a multiple of `general.alignment` (32).
use super::gguf_vocab;
use crate::error::{Error, Result};
use crate::model::gguf::{self, TensorEntry, Value};
use crate::model::quant::{quantize, requantize_stochastic, GgmlType};
use crate::model::{Config, Llama, Tokenizer};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use tch::Tensor;

/// The type the 2-D weights of a GGUF export are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_1,
}

impl GgufType {
    /// The type when `--dtype` is not given: f16, so that llama.cpp answers as the run does. Each
    /// weight is rounded once (relative error ≤ 2⁻¹¹), and llama.cpp multiplies f16 weights in
    /// floating point; with q8_0 or q4_1 weights it also rounds the activations to 8 bits. On the
    /// embedded SmolLM2, whose greedy first answer token wins by 0.08 logits, that rounding moves
    /// llama.cpp's logits by up to 1.4 and turns "The capital of France is Paris." into "L'Étoile,
    /// …" — for llama.cpp's own Q4_1 file as for our q8_0 and q4_1 exports — while the f16 export
    /// answers as injector does (`tests/interop/check_gguf.py`). It is also what llama.cpp's
    /// `convert_hf_to_gguf.py` writes by default. q8_0 (half the size) and q4_1 are a flag away.
    pub const DEFAULT: GgufType = GgufType::F16;

    /// Parses `--dtype` for `--format gguf`.
    ///
    /// Errors: bad input naming the value and the types there are.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(GgufType::F32),
            "f16" => Ok(GgufType::F16),
            "bf16" => Ok(GgufType::Bf16),
            "q8_0" => Ok(GgufType::Q8_0),
            "q4_1" => Ok(GgufType::Q4_1),
            other => Err(Error::BadInput(format!(
                "--dtype: unknown type '{other}' for --format gguf (supported: f16 (default), bf16, f32, q8_0, q4_1)"
            ))),
        }
    }

    /// The `--dtype` name.
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::Bf16 => "bf16",
            GgufType::Q8_0 => "q8_0",
            GgufType::Q4_1 => "q4_1",
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, …).
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_1 => 3,
            GgufType::Q8_0 => 7,
            GgufType::Bf16 => 32,
        }
    }

    /// The GGML type of a 2-D weight whose rows are whole blocks.
    pub fn matrix_type(self) -> GgmlType {
        match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Bf16 => GgmlType::BF16,
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q4_1 => GgmlType::Q4_1,
        }
    }

    /// The GGML type of tensor `name` (a GGUF name) of PyTorch shape `shape`.
    pub fn tensor_type(self, name: &str, shape: &[i64], tied: bool) -> GgmlType {
        if shape.len() < 2 {
            return GgmlType::F32;
        }
        let wanted = match self {
            GgufType::F32 | GgufType::F16 | GgufType::Bf16 => return self.matrix_type(),
            GgufType::Q8_0 => GgmlType::Q8_0,
            GgufType::Q4_1 => {
                let output = name == "output.weight" || (tied && name == "token_embd.weight");
                if output {
                    GgmlType::Q8_0
                } else {
                    GgmlType::Q4_1
                }
            }
        };
        let row = *shape.last().expect("2-D") as usize;
        if row.is_multiple_of(wanted.block_len()) {
            wanted
        } else {
            GgmlType::F16
        }
    }
}

/// The weights a run changed, stored unlike the rest so that the update survives quantisation:
/// rounded to nearest, a quantised type gives back the base weights wherever the update moved a
/// weight by less than half a step — on the embedded SmolLM2 (itself Q4_1) a q4_1 export of a run
/// keeps about 6 % of its update, and its facts' recall falls to the base model's (README, "Does
/// knowledge survive the way out?").
pub struct Trained<'a> {
    /// Hugging Face names of the weights the run's steps changed.
    pub names: HashSet<String>,
    /// Store them in this type rather than the file's (`--trained-dtype`; rows that are not whole
    /// blocks of it keep the file's choice).
    pub ty: Option<GgmlType>,
    /// Round them stochastically on the grid the base weights take in the stored type
    /// ([`requantize_stochastic`]), drawing with the seed (`--stochastic-rounding`).
    pub base: Option<(&'a Llama, u64)>,
}

impl Trained<'_> {
    fn has(&self, hf: &str) -> bool {
        self.names.contains(hf)
    }
}

/// llama.cpp's architecture for ours, and whether its Q/K rows are interleaved for RoPE.
///
/// Errors: bad input for a model llama.cpp would run differently from us: another architecture, or
/// Llama 3 rope scaling (llama.cpp keeps it as a `rope_freqs` tensor, which our loader does not
/// read back).
fn llama_cpp_arch(cfg: &Config) -> Result<(&'static str, bool)> {
    if cfg.rope_scaling.is_some() {
        return Err(Error::BadInput(
            "export --format gguf: models with Llama 3 rope scaling are not supported yet \
             (llama.cpp needs a rope_freqs tensor); use --format hf"
                .into(),
        ));
    }
    match cfg.architecture.as_str() {
        // convert_hf_to_gguf.py writes Mistral's checkpoints as `llama` too.
        "llama" | "mistral" => Ok(("llama", true)),
        "qwen2" => Ok(("qwen2", false)),
        other => Err(Error::BadInput(format!(
            "export --format gguf: no llama.cpp architecture for '{other}'"
        ))),
    }
}

/// The `general.*` and `{arch}.*` metadata of `cfg` stored as `ty`.
fn model_metadata(cfg: &Config, arch: &str, ty: GgufType) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(gguf::ALIGNMENT as u32)),
    ];
    let hp = [
        ("vocab_size", u(cfg.vocab_size)),
        ("context_length", u(cfg.max_position_embeddings)),
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.num_hidden_layers)),
        ("feed_forward_length", u(cfg.intermediate_size)),
        ("attention.head_count", u(cfg.num_attention_heads)),
        ("attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
        ("rope.dimension_count", u(cfg.head_dim)),
        ("rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
    ];
    m.extend(hp.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    m
}

/// llama.cpp's row order of Q/K: w: [n_head * head_dim, in] in Hugging Face's rotate-half order ->
/// the two RoPE halves of each head interleaved (`convert_hf_to_gguf.py`'s `LlamaModel.permute`).
pub fn permute_qk(w: &Tensor, n_head: i64) -> Tensor {
    let size = w.size();
    let (out, rest) = (size[0], &size[1..]);
    let mut shape = vec![n_head, 2, out / n_head / 2];
    shape.extend_from_slice(rest);
    w.reshape(&shape).transpose(1, 2).reshape(&size)
}

/// One tensor of the file: its GGUF name, the weight it comes from, and how it is stored.
struct Planned {
    name: String,
    hf: String,
    shape: Vec<i64>,
    ty: GgmlType,
    /// The head count of a Q/K weight to permute.
    permute: Option<i64>,
}

/// Every weight of `model` under its GGUF name, in llama.cpp's order (embedding, layers, output).
fn plan(model: &Llama, ty: GgufType, permute: bool, trained: Option<&Trained>) -> Result<Vec<Planned>> {
    let cfg = &model.cfg;
    let mut out = Vec::new();
    for hf in model.weight_names() {
        let name = crate::model::weights::gguf_name(&hf)
            .ok_or_else(|| Error::BadInput(format!("export --format gguf: no GGUF name for weight '{hf}'")))?;
        let shape = model
            .weight(&hf)
            .map(|t| t.size())
            .ok_or_else(|| Error::BadInput(format!("export: model has no weight '{hf}'")))?;
        let heads = match hf.rsplit('.').nth(1) {
            Some("q_proj") if permute => Some(cfg.num_attention_heads as i64),
            Some("k_proj") if permute => Some(cfg.num_key_value_heads as i64),
            _ => None,
        };
        let mut stored = ty.tensor_type(&name, &shape, cfg.tie_word_embeddings);
        if let Some(t) = trained.filter(|t| t.has(&hf)).and_then(|t| t.ty) {
            let row = *shape.last().expect("a weight has a shape") as usize;
            if shape.len() == 2 && row.is_multiple_of(t.block_len()) {
                stored = t;
            }
        }
        out.push(Planned {
            ty: stored,
            name,
            hf,
            shape,
            permute: heads,
        });
    }
    let rank = |n: &str| -> (usize, usize) {
        match n.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((l, _)) => (1, l.parse().unwrap_or(0)),
            None if n.starts_with("token_embd") => (0, 0),
            None => (2, 0),
        }
    };
    out.sort_by(|a, b| rank(&a.name).cmp(&rank(&b.name)).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// The values of weight `p` of `model` in file order: the fp32 weight (its merge master where there
/// is one), Q/K rows permuted.
fn values(model: &Llama, p: &Planned) -> Result<Vec<f32>> {
    let t = model
        .weight_f32(&p.hf)
        .ok_or_else(|| Error::BadInput(format!("export: model has no weight '{}'", p.hf)))?;
    let t = tch::no_grad(|| match p.permute {
        Some(n_head) => permute_qk(&t, n_head),
        None => t,
    });
    Ok(Vec::<f32>::try_from(t.contiguous().view([-1]))?)
}

/// The stored bytes of one planned tensor: its values encoded, rounded to nearest, or for a weight
/// of `trained` with base weights, stochastically on their grid.
fn tensor_bytes(model: &Llama, p: &Planned, trained: Option<&Trained>) -> Result<Vec<u8>> {
    let run = values(model, p)?;
    let grid = matches!(p.ty, GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q4_0);
    match trained.filter(|t| grid && t.has(&p.hf)).and_then(|t| t.base) {
        Some((base, seed)) => {
            // Each tensor draws its own stream, so the bytes do not depend on the tensors' order.
            let name = blake3::hash(p.name.as_bytes());
            let seed = seed ^ u64::from_le_bytes(name.as_bytes()[..8].try_into().expect("8 bytes"));
            Ok(requantize_stochastic(
                p.ty,
                &quantize(p.ty, &values(base, p)?),
                &run,
                seed,
            ))
        }
        None => Ok(quantize(p.ty, &run)),
    }
}

/// Writes `model` with tokenizer `tok` as the GGUF file `path`, 2-D weights stored as `ty` (the
/// weights of `trained` as it says).
///
/// Errors: bad input for a model or tokenizer llama.cpp cannot be given (see [`llama_cpp_arch`] and
/// [`gguf_vocab::metadata`]), checked before anything is written; an I/O error.
pub fn write_file(path: &Path, model: &Llama, tok: &Tokenizer, ty: GgufType, trained: Option<&Trained>) -> Result<()> {
    let cfg = &model.cfg;
    let (arch, permute) = llama_cpp_arch(cfg)?;
    let mut meta = model_metadata(cfg, arch, ty);
    meta.extend(gguf_vocab::metadata(tok, cfg.vocab_size)?);
    let planned = plan(model, ty, permute, trained)?;
    let entries: Vec<TensorEntry> = planned
        .iter()
        .map(|p| {
            let numel: i64 = p.shape.iter().product();
            TensorEntry {
                name: p.name.clone(),
                dims: p.shape.iter().rev().map(|&d| d as u64).collect(),
                type_id: p.ty.id(),
                bytes: numel as u64 / p.ty.block_len() as u64 * p.ty.block_bytes() as u64,
            }
        })
        .collect();
    let (head, offsets) = gguf::header(&meta, &entries);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&head)?;
    let mut at = 0u64;
    for ((p, e), off) in planned.iter().zip(&entries).zip(offsets) {
        let bytes = tensor_bytes(model, p, trained)?;
        assert_eq!(bytes.len() as u64, e.bytes, "{}: size as planned", p.name);
        f.write_all(&vec![0u8; (off - at) as usize])?;
        f.write_all(&bytes)?;
        at = off + e.bytes;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::unpermute_qk;
    use tch::{Device, Kind};

    fn cfg(arch: &str) -> Config {
        Config {
            architecture: arch.into(),
            vocab_size: 100,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: None,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: arch == "qwen2",
        }
    }

    #[test]
    fn permute_is_the_inverse_of_the_loaders_unpermute() {
        let (n_head, hd, inp) = (3i64, 8i64, 5i64);
        let hf = Tensor::randn([n_head * hd, inp], (Kind::Float, Device::Cpu));
        let gguf = permute_qk(&hf, n_head);
        assert!(!gguf.equal(&hf));
        assert!(unpermute_qk(&gguf, n_head).equal(&hf));
        // Row h·hd + 2j + s of llama.cpp's order is row h·hd + s·hd/2 + j of Hugging Face's
        // (here h = 0, j = 1, s = 1).
        assert!(gguf.get(3).equal(&hf.get(hd / 2 + 1)));
    }

    #[test]
    fn types_per_tensor_follow_llama_cpp() {
        let t = GgufType::Q4_1;
        assert_eq!(t.tensor_type("blk.0.attn_norm.weight", &[64], true), GgmlType::F32);
        assert_eq!(t.tensor_type("blk.0.attn_q.weight", &[64, 64], true), GgmlType::Q4_1);
        assert_eq!(t.tensor_type("token_embd.weight", &[100, 64], true), GgmlType::Q8_0);
        assert_eq!(t.tensor_type("token_embd.weight", &[100, 64], false), GgmlType::Q4_1);
        assert_eq!(t.tensor_type("output.weight", &[100, 64], false), GgmlType::Q8_0);
        let q8 = GgufType::Q8_0;
        assert_eq!(q8.tensor_type("token_embd.weight", &[100, 64], true), GgmlType::Q8_0);
        assert_eq!(q8.tensor_type("blk.0.ffn_down.weight", &[64, 48], true), GgmlType::F16);
        assert_eq!(
            GgufType::Bf16.tensor_type("blk.0.attn_k.bias", &[32], true),
            GgmlType::F32
        );
        assert_eq!(
            GgufType::F32.tensor_type("output.weight", &[100, 64], false),
            GgmlType::F32
        );
    }

    #[test]
    fn dtypes_parse_and_refuse() {
        for name in ["f32", "f16", "bf16", "q8_0", "q4_1"] {
            assert_eq!(GgufType::parse(name).unwrap().name(), name);
        }
        let e = GgufType::parse("q4_k").unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("unknown type 'q4_k' for --format gguf"));
        assert_eq!(GgufType::DEFAULT.file_type(), 1);
    }

    #[test]
    fn metadata_holds_what_llama_cpp_reads() {
        let m = model_metadata(&cfg("llama"), "llama", GgufType::Q8_0);
        let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("general.architecture"), Some(Value::Str("llama".into())));
        assert_eq!(get("general.alignment"), Some(Value::U32(32)));
        assert_eq!(get("llama.attention.head_count_kv"), Some(Value::U32(2)));
        assert_eq!(get("llama.rope.dimension_count"), Some(Value::U32(16)));
        assert_eq!(get("llama.rope.freq_base"), Some(Value::F32(500000.0)));
        assert_eq!(get("llama.context_length"), Some(Value::U32(512)));
        assert_eq!(llama_cpp_arch(&cfg("mistral")).unwrap(), ("llama", true));
        assert_eq!(llama_cpp_arch(&cfg("qwen2")).unwrap(), ("qwen2", false));
        let mut scaled = cfg("llama");
        scaled.rope_scaling = Some(crate::model::config::Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        assert!(llama_cpp_arch(&scaled).unwrap_err().is_bad_input());
    }
}

//! Model configuration: deserialised from Hugging Face `config.json` or built from GGUF metadata,
//! then resolved into the one [`Config`] the layers use.
use super::gguf::Gguf;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Llama 3 style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The resolved configuration of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
}

/// `config.json` as Hugging Face writes it; missing keys take transformers' defaults.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    2048
}

const ARCHES: [&str; 3] = ["llama", "qwen2", "mistral"];

/// Bounds no real checkpoint reaches (the largest open models have ~128 layers, widths of ~16k
/// and vocabularies of ~256k); beyond them a count is corrupt.
const MAX_LAYERS: usize = 4096;
const MAX_WIDTH: usize = 1 << 17;
const MAX_HEADS: usize = 4096;
const MAX_VOCAB: usize = 1 << 24;

impl Config {
    /// Reads `config.json` of a Hugging Face model folder.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::bad_model(path, format!("cannot read: {e}")))?;
        let raw: RawConfig =
            serde_json::from_str(&text).map_err(|e| Error::bad_model(path, format!("invalid config.json: {e}")))?;
        let arch = if raw.model_type.is_empty() {
            raw.architectures
                .first()
                .map(|a| a.to_lowercase().replace("forcausallm", ""))
                .unwrap_or_default()
        } else {
            raw.model_type.clone()
        };
        if !ARCHES.contains(&arch.as_str()) {
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                arch,
            });
        }
        let rope_scaling = match &raw.rope_scaling {
            Some(v) if v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()) == Some("llama3") => Some(
                serde_json::from_value(v.clone()).map_err(|e| Error::bad_model(path, format!("rope_scaling: {e}")))?,
            ),
            Some(serde_json::Value::Null) | None => None,
            Some(v) => {
                let kind = v.get("rope_type").or(v.get("type")).unwrap_or(v).clone();
                if kind.as_str() == Some("default") {
                    None
                } else {
                    return Err(Error::bad_model(path, format!("unsupported rope_scaling {kind}")));
                }
            }
        };
        let heads = raw.num_attention_heads;
        let cfg = Config {
            attention_bias: raw.attention_bias.unwrap_or(arch == "qwen2"),
            architecture: arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Builds the configuration from GGUF metadata (`{arch}.block_count`, …).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let path = &g.path;
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if !ARCHES.contains(&arch.as_str()) {
            return Err(Error::UnsupportedArchitecture {
                path: path.clone(),
                arch,
            });
        }
        let req = |k: &str| -> Result<u64> {
            g.get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| Error::bad_model(path, format!("missing metadata '{arch}.{k}'")))
        };
        let opt_f = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_f64());
        let hidden = req("embedding_length")? as usize;
        let heads = req("attention.head_count")? as usize;
        let kv_heads = req("attention.head_count_kv").unwrap_or(heads as u64) as usize;
        let vocab = match g.get(&format!("{arch}.vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| Error::bad_model(path, "no vocab size and no token list"))?,
        };
        let tied = g.tensor_info("output.weight").is_none();
        let bias = g.tensor_info("blk.0.attn_q.bias").is_some();
        let head_dim = g
            .get(&format!("{arch}.attention.key_length"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(hidden / heads.max(1));
        let rope_scaling = match g.get(&format!("{arch}.rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("llama3") => Some(Llama3Scaling {
                factor: opt_f("rope.scaling.factor").unwrap_or(8.0),
                low_freq_factor: opt_f("rope.scaling.low_freq_factor").unwrap_or(1.0),
                high_freq_factor: opt_f("rope.scaling.high_freq_factor").unwrap_or(4.0),
                original_max_position_embeddings: opt_f("rope.scaling.original_context_length").unwrap_or(8192.0)
                    as usize,
            }),
            Some("none") | None => None,
            Some(other) => return Err(Error::bad_model(path, format!("unsupported rope scaling '{other}'"))),
        };
        let cfg = Config {
            architecture: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")? as usize,
            num_hidden_layers: req("block_count")? as usize,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: req("context_length").unwrap_or(2048) as usize,
            tie_word_embeddings: tied,
            attention_bias: bias,
        };
        cfg.validate(path)?;
        // The layer count must be the layers the file holds: blk.0 … blk.{n-1}, no blk.{n}.
        let layer = |i: usize| g.tensor_info(&format!("blk.{i}.attn_norm.weight")).is_some();
        if !layer(cfg.num_hidden_layers - 1) || layer(cfg.num_hidden_layers) {
            let held = (0..).take_while(|&i| layer(i)).count();
            return Err(Error::bad_model(
                path,
                format!(
                    "{arch}.block_count is {} but the file holds {held} layers",
                    cfg.num_hidden_layers
                ),
            ));
        }
        Ok(cfg)
    }

    /// Checks that the model can be built and run: shapes that fit together, counts no checkpoint
    /// reaches (a corrupt count must not become an allocation of hundreds of GB), and rotary and
    /// normalisation constants that are finite and positive.
    /// Errors: bad model naming `path` and what is wrong.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::bad_model(path, msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0: a model needs at least 1"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim is {}: rotary embeddings need an even head dimension",
                self.head_dim
            ));
        }
        for (name, v, max) in [
            ("layers", self.num_hidden_layers, MAX_LAYERS),
            ("hidden size", self.hidden_size, MAX_WIDTH),
            ("intermediate size", self.intermediate_size, MAX_WIDTH * 8),
            ("attention heads", self.num_attention_heads, MAX_HEADS),
            ("key-value heads", self.num_key_value_heads, MAX_HEADS),
            ("head dimension", self.head_dim, MAX_WIDTH),
            ("vocabulary", self.vocab_size, MAX_VOCAB),
        ] {
            if v > max {
                return Err(Error::bad_model(
                    path,
                    format!("{v} {name} is beyond any model (at most {max})"),
                ));
            }
        }
        let mut constants = vec![("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)];
        if let Some(r) = &self.rope_scaling {
            constants.extend([
                ("rope_scaling.factor", r.factor),
                ("rope_scaling.low_freq_factor", r.low_freq_factor),
                ("rope_scaling.high_freq_factor", r.high_freq_factor),
            ]);
        }
        if let Some((name, v)) = constants.into_iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::bad_model(
                path,
                format!("{name} is {v}: expected a finite positive number"),
            ));
        }
        Ok(())
    }

    /// Number of parameters in the decoder (embeddings counted once when tied).
    pub fn num_params(&self) -> usize {
        let (h, i, l, v) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.vocab_size,
        );
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h;
        let per_layer = attn + 3 * h * i + 2 * h;
        v * h * if self.tie_word_embeddings { 1 } else { 2 } + l * per_layer + h
    }
}

//! A model as a Hugging Face folder that transformers' `AutoModelForCausalLM` and `AutoTokenizer`
//! load: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`.
//!
//! The config follows transformers' `LlamaConfig` / `MistralConfig` / `Qwen2Config` (keys as
//! `configuration_llama.py` names them); the weights are the model's own, under the names of
//! `modeling_llama.py` (`model.layers.{i}.self_attn.q_proj.weight`, …), Q/K rows already in Hugging
//! Face's rotate-half order (the GGUF loader undid llama.cpp's interleaving), and no `lm_head.weight`
//! when the embeddings are tied.
use super::safetensors;
use super::Dtype;
use crate::error::{Error, Result};
use crate::model::{Config, Llama, Tokenizer};
use serde_json::{json, Value};
use std::path::Path;
use tch::Tensor;

/// transformers' class and `model_type` for an architecture the loader accepts.
///
/// Errors: bad input for any other architecture.
pub fn class_of(architecture: &str) -> Result<(&'static str, &'static str)> {
    match architecture {
        "llama" => Ok(("LlamaForCausalLM", "llama")),
        "mistral" => Ok(("MistralForCausalLM", "mistral")),
        "qwen2" => Ok(("Qwen2ForCausalLM", "qwen2")),
        other => Err(Error::BadInput(format!(
            "export: no Hugging Face class for architecture '{other}'"
        ))),
    }
}

/// The special-token ids transformers reads from `config.json`: bos, eos (one id, the tokenizer's
/// eos) — `None` where the tokenizer has none.
fn special_ids(tok: &Tokenizer) -> (Option<u32>, Option<u32>) {
    let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    (id(&tok.bos_token), id(&tok.eos_token))
}

/// `config.json` for `cfg` with the tokenizer's `bos`/`eos` ids, the weights stored as `dtype`.
///
/// Errors: an architecture [`class_of`] does not know.
pub fn config_json(cfg: &Config, bos: Option<u32>, eos: Option<u32>, dtype: Dtype) -> Result<Value> {
    let (class, model_type) = class_of(&cfg.architecture)?;
    let rope_scaling = cfg.rope_scaling.as_ref().map(|s| {
        json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })
    });
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype.torch_name(),
        "use_cache": true,
    });
    // This decoder attends to every earlier position: no sliding window, whatever the class's
    // default (Mistral's is 4096).
    if model_type != "llama" {
        v["sliding_window"] = Value::Null;
        v["use_sliding_window"] = false.into();
    }
    Ok(v)
}

/// `generation_config.json`: greedy decoding that stops where injector's generation stops (every
/// stop id: eos and the end-of-turn token), padding with eos.
pub fn generation_config_json(tok: &Tokenizer) -> Value {
    let (bos, eos) = special_ids(tok);
    let stops: Vec<u32> = tok.stop_ids.clone();
    json!({
        "bos_token_id": bos,
        "eos_token_id": if stops.is_empty() { json!(eos) } else { json!(stops) },
        "pad_token_id": eos.or(stops.first().copied()),
        "do_sample": false,
    })
}

/// `tokenizer_config.json`: the generic fast tokenizer class (so `tokenizer.json` is used as it is,
/// with no class adding a BOS of its own), the bos/eos strings, the chat template and the model's
/// positions as `model_max_length`.
pub fn tokenizer_config_json(cfg: &Config, tok: &Tokenizer) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.eos_token,
        "chat_template": tok.chat_template(),
        "model_max_length": cfg.max_position_embeddings,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
    })
}

/// Every weight of `model` under its Hugging Face name, sorted, converted to `dtype` on the CPU:
/// fp32 values (the merges' fp32 masters where there are some) rounded once to the target type.
pub fn weights(model: &Llama, dtype: Dtype) -> Result<Vec<(String, Tensor)>> {
    model
        .weight_names()
        .into_iter()
        .map(|name| {
            let t = model
                .weight_f32(&name)
                .ok_or_else(|| Error::BadInput(format!("export: model has no weight '{name}'")))?;
            let t = tch::no_grad(|| t.to_kind(dtype.kind()).contiguous());
            Ok((name, t))
        })
        .collect()
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::BadInput(format!("export: {e}")))?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// Writes the five files of a Hugging Face folder for `model` and `tok` into `dir` (which exists).
///
/// Errors: an I/O error, or an architecture with no Hugging Face class.
pub fn write_folder(dir: &Path, model: &Llama, tok: &Tokenizer, dtype: Dtype) -> Result<()> {
    let cfg = &model.cfg;
    let (bos, eos) = special_ids(tok);
    write_json(&dir.join("config.json"), &config_json(cfg, bos, eos, dtype)?)?;
    write_json(&dir.join("generation_config.json"), &generation_config_json(tok))?;
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config_json(cfg, tok))?;
    std::fs::write(dir.join("tokenizer.json"), tok.to_json()?)?;
    let tensors = weights(model, dtype)?;
    safetensors::write(&dir.join("model.safetensors"), &tensors, &[("format", "pt")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Llama3Scaling;

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
            tie_word_embeddings: false,
            attention_bias: arch == "qwen2",
        }
    }

    #[test]
    fn config_names_the_class_and_every_shape_field() {
        let mut c = cfg("llama");
        c.rope_scaling = Some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let v = config_json(&c, Some(1), Some(2), Dtype::Bf16).unwrap();
        assert_eq!(v["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(v["head_dim"], 16);
        assert_eq!(v["num_key_value_heads"], 2);
        assert_eq!(v["tie_word_embeddings"], false);
        assert_eq!(v["torch_dtype"], "bfloat16");
        assert_eq!(
            (v["bos_token_id"].clone(), v["eos_token_id"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(v["rope_scaling"]["rope_type"], "llama3");
        assert_eq!(v["rope_scaling"]["original_max_position_embeddings"], 8192);
        assert!(v.get("sliding_window").is_none());
    }

    #[test]
    fn qwen2_and_mistral_attend_without_a_window() {
        let v = config_json(&cfg("qwen2"), None, Some(3), Dtype::F32).unwrap();
        assert_eq!(v["architectures"], json!(["Qwen2ForCausalLM"]));
        assert_eq!(v["attention_bias"], true);
        assert!(v["sliding_window"].is_null() && v["bos_token_id"].is_null());
        let v = config_json(&cfg("mistral"), None, None, Dtype::F16).unwrap();
        assert_eq!(v["model_type"], "mistral");
        assert!(v["sliding_window"].is_null());
        assert!(config_json(&cfg("gpt2"), None, None, Dtype::F32)
            .unwrap_err()
            .is_bad_input());
    }
}

//! The tokenizer of a GGUF export, as llama.cpp reads it (`tokenizer.ggml.*` and
//! `tokenizer.chat_template`).
//!
//! A tokenizer that came from a GGUF file has its `tokenizer.*` metadata carried across unchanged.
//! One from `tokenizer.json` is written the way `convert_hf_to_gguf.py` writes a byte-level BPE
//! (llama.cpp's `gpt2` model): the tokens by id (ids the vocabulary lacks up to the model's
//! `vocab_size` as `[PAD{id}]`, type unused), their types (normal; added tokens control when
//! special, user-defined otherwise), the merges as `"left right"` strings, the pre-tokenizer's
//! llama.cpp name, the special ids and whether a BOS is added. The pre-tokenizers named are the
//! ones injector's GGUF loader builds back (`crate::model::tokenizer`), so the export encodes text
//! as the source did.
use crate::error::{Error, Result};
use crate::model::gguf::Value;
use crate::model::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};
use crate::model::Tokenizer;
use serde_json::Value as J;
use std::collections::HashSet;

/// GGUF token types (llama.cpp `llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn refuse(why: String) -> Error {
    Error::BadInput(format!("export --format gguf: {why}"))
}

/// The `tokenizer.*` metadata for `tok` in a model of `vocab_size` embedding rows.
///
/// Errors: bad input for a tokenizer llama.cpp would read differently: not a byte-level BPE, a
/// pre-tokenizer or normaliser it has no name for, an id beyond `vocab_size`, or two ids with the
/// same text.
pub fn metadata(tok: &Tokenizer, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    if !tok.gguf_metadata().is_empty() {
        return Ok(tok.gguf_metadata().to_vec());
    }
    let spec: J = serde_json::from_str(&tok.to_json()?).map_err(|e| refuse(format!("tokenizer JSON: {e}")))?;
    let model = &spec["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(refuse(format!(
            "the tokenizer is a {} model{}; only byte-level BPE (llama.cpp's gpt2) is written",
            model["type"].as_str().unwrap_or("non-BPE"),
            if model["byte_fallback"] == true {
                " with byte fallback"
            } else {
                ""
            }
        )));
    }
    match spec["normalizer"].get("type").and_then(J::as_str) {
        // Qwen2 ships NFC; llama.cpp's conversion drops it too.
        None | Some("NFC") => {}
        Some(other) => {
            return Err(refuse(format!(
                "the tokenizer's {other} normalizer has no llama.cpp equivalent"
            )))
        }
    }
    let pre = pre_name(&spec["pre_tokenizer"]).ok_or_else(|| {
        refuse(format!(
            "the pre-tokenizer {} has no llama.cpp name (known: GPT-2's byte level, SmolLM's, Llama 3's, Qwen2's)",
            spec["pre_tokenizer"]
        ))
    })?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            refuse(format!(
                "token '{text}' has id {id}, beyond the model's {vocab_size} rows"
            ))
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        put(id.as_u64().unwrap_or(u64::MAX), text, NORMAL)?;
    }
    for t in spec["added_tokens"].as_array().into_iter().flatten() {
        let ty = if t["special"] == true { CONTROL } else { USER_DEFINED };
        put(
            t["id"].as_u64().unwrap_or(u64::MAX),
            t["content"].as_str().unwrap_or(""),
            ty,
        )?;
    }
    let (texts, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED)))
        .unzip();
    let mut seen = HashSet::new();
    if let Some(dup) = texts.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(refuse(format!(
            "token '{dup}' has two ids (llama.cpp needs one text per id)"
        )));
    }
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            J::String(s) => Ok(s.clone()),
            J::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or(""),
                pair[1].as_str().unwrap_or("")
            )),
            other => Err(refuse(format!("merge {other} is not a pair"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let id = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    let (bos, eos) = (id(&tok.bos_token), id(&tok.eos_token));
    let unk = model["unk_token"].as_str().and_then(|t| tok.token_id(t));
    let s = |x: &str| Value::Str(x.to_string());
    let mut m: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
        ("tokenizer.ggml.tokens".into(), Value::strings(texts)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::strings(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(adds(&spec["post_processor"], &tok.bos_token, true)),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            Value::Bool(adds(&spec["post_processor"], &tok.eos_token, false)),
        ),
    ];
    for (key, v) in [("bos", bos), ("eos", eos), ("unknown", unk), ("padding", eos)] {
        if let Some(v) = v {
            m.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(v)));
        }
    }
    if let Some(t) = tok.chat_template() {
        m.push(("tokenizer.chat_template".into(), s(t)));
    }
    Ok(m)
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer: the inverse of the GGUF loader's table.
fn pre_name(pre: &J) -> Option<&'static str> {
    let byte_level = |p: &J, regex: bool| {
        p["type"] == "ByteLevel" && p["use_regex"].as_bool().unwrap_or(true) == regex && p["add_prefix_space"] != true
    };
    let split = |p: &J, pattern: &str| {
        p["type"] == "Split" && p["pattern"]["Regex"] == pattern && p["behavior"] == "Isolated" && p["invert"] != true
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    match pre["pretokenizers"].as_array().map(Vec::as_slice) {
        Some([d, b]) if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) => {
            Some("smollm")
        }
        Some([s, b]) if split(s, LLAMA3_SPLIT) && byte_level(b, false) => Some("llama-bpe"),
        Some([s, b]) if split(s, QWEN2_SPLIT) && byte_level(b, false) => Some("qwen2"),
        _ => None,
    }
}

/// Whether the post-processor puts `token` first (`first`) or last in a single sequence, as a
/// `TemplateProcessing` (alone or in a `Sequence`) does for the BOS of Llama 3.
fn adds(post: &J, token: &Option<String>, first: bool) -> bool {
    let Some(token) = token else { return false };
    if let Some(list) = post["processors"].as_array() {
        return list.iter().any(|p| adds(p, &Some(token.clone()), first));
    }
    let single = post["single"].as_array();
    let end = single.and_then(|s| if first { s.first() } else { s.last() });
    post["type"] == "TemplateProcessing" && end.is_some_and(|e| e["SpecialToken"]["id"] == token.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_get_llama_cpp_names() {
        let bl = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": regex});
        assert_eq!(pre_name(&bl(true)), Some("gpt-2"));
        let digits = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_name(&digits), Some("smollm"));
        let split = |p: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}, bl(false)]})
        };
        assert_eq!(pre_name(&split(LLAMA3_SPLIT)), Some("llama-bpe"));
        assert_eq!(pre_name(&split(QWEN2_SPLIT)), Some("qwen2"));
        assert_eq!(pre_name(&split(r"\s+")), None);
        assert_eq!(pre_name(&json!({"type": "Metaspace"})), None);
        assert_eq!(
            pre_name(&json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true})),
            None
        );
    }

    #[test]
    fn a_template_processing_bos_is_found() {
        let bos = Some("<s>".to_string());
        let tp = json!({"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]});
        assert!(adds(&tp, &bos, true));
        assert!(!adds(&tp, &bos, false));
        assert!(adds(
            &json!({"type": "Sequence", "processors": [{"type": "ByteLevel"}, tp]}),
            &bos,
            true
        ));
        assert!(!adds(&J::Null, &bos, true));
        assert!(!adds(&json!({"type": "ByteLevel"}), &None, true));
    }
}

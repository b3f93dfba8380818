//! Tokenizer and chat template: Hugging Face `tokenizers` built from `tokenizer.json` or from GGUF
//! metadata (gpt2 byte-level BPE with the pre-tokenizer llama.cpp names), and the checkpoint's own
//! Jinja chat template rendered with minijinja, as Hugging Face's servers do.
use super::gguf::{Gguf, Value};
use crate::error::{Error, Result};
use serde_json::json;
use std::path::Path;

/// Llama 3's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
pub(crate) const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the special tokens and chat template the model was trained with.
pub struct Tokenizer {
    /// Recognises special-token markup: only for text the chat template produced.
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token matching off: for user text, where `<|im_end|>` is
    /// ten characters, not the end of a turn.
    plain: tokenizers::Tokenizer,
    /// The special tokens' strings and ids, longest first (so that one that starts another wins).
    specials: Vec<(String, u32)>,
    /// Tokens that end a turn (eos and, for chat models, the end-of-turn marker).
    pub stop_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    chat_template: Option<String>,
    /// The `tokenizer.*` metadata of the GGUF file it was built from (empty for `tokenizer.json`),
    /// kept so that a GGUF export carries it across unchanged.
    gguf_metadata: Vec<(String, Value)>,
}

fn split(regex: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF `tokenizer.ggml.*` metadata, with the chat template of
    /// `tokenizer.chat_template`, or the one named `template` (`tokenizer.chat_template.NAME`).
    ///
    /// Errors: bad model naming the file — an unsupported tokenizer, missing or malformed metadata, a
    /// chat template that cannot be chosen (see [`gguf_templates`]) or rendered.
    pub fn from_gguf(g: &Gguf, template: Option<&str>) -> Result<Self> {
        let path = &g.path;
        let bad = |msg: String| Error::bad_model(path, msg);
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer model '{model}' is not supported from GGUF (supported: gpt2 byte-level BPE); \
                 use the Hugging Face folder with tokenizer.json instead"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("missing metadata '{key}'")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("'{key}' holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let pre_tokenizer = match pre {
            "default" | "gpt2" | "gpt-2" => byte_level(true),
            // SmolLM splits every digit, then applies GPT-2's split.
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama3" | "llama-bpe" | "llama-v3" => {
                json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
            }
            "qwen2" => {
                json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
            }
            other => return Err(bad(format!("tokenizer pre-type '{other}' is not supported"))),
        };
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": types[i] == 3})
            })
            .collect();
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| bad(format!("cannot build tokenizer from metadata: {e}")))?;
        let id_of = |key: &str| g.get(key).and_then(Value::as_u64).map(|v| v as usize);
        let token_at = |id: Option<usize>| id.and_then(|i| tokens.get(i).cloned());
        let bos_token = token_at(id_of("tokenizer.ggml.bos_token_id"));
        let eos_token = token_at(id_of("tokenizer.ggml.eos_token_id"));
        let chat_template = gguf_templates(g)?.pick(template, path, |names| {
            format!("chat templates named {names} but none is the default")
        })?;
        let mut tok = Self::finish(inner, bos_token, eos_token, chat_template, path)?;
        tok.gguf_metadata = g
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(tok)
    }

    /// Loads `tokenizer.json` and `tokenizer_config.json` from a Hugging Face model folder, with the
    /// checkpoint's chat template, or the one named `template` (see [`hf_templates`]).
    ///
    /// Errors: bad model naming the file — a tokenizer or config that does not parse, a chat template
    /// that cannot be chosen or rendered.
    pub fn from_hf_dir(dir: &Path, template: Option<&str>) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| Error::bad_model(&tj, format!("{e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| Error::bad_model(&cfg_path, format!("{e}")))?,
            Err(_) => json!({}),
        };
        let tok_str = |k: &str| match cfg.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => v.get("content").and_then(|c| c.as_str()).map(str::to_string),
            None => None,
        };
        let (found, source) = hf_templates(dir, &cfg, &cfg_path)?;
        let chosen = found.pick(template, &source, |names| {
            format!("chat_template lists {names} but none named 'default'")
        })?;
        Self::finish(inner, tok_str("bos_token"), tok_str("eos_token"), chosen, dir)
    }

    /// The tokenizer around `inner`, its chat template checked by rendering one user turn: a
    /// template that cannot render is refused here, before any work, naming `source`; a model
    /// without one is named in a warning (its prompts are plain `role: text` lines).
    fn finish(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        chat_template: Option<String>,
        source: &Path,
    ) -> Result<Self> {
        let mut stop_ids: Vec<u32> = Vec::new();
        for t in eos_token
            .iter()
            .map(String::as_str)
            .chain(["<|im_end|>", "<|eot_id|>", "<|end_of_text|>"])
        {
            if let Some(id) = inner.token_to_id(t) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let tok = Tokenizer {
            inner,
            plain,
            specials,
            stop_ids,
            bos_token,
            eos_token,
            chat_template: chat_template.filter(|t| !t.trim().is_empty()),
            gguf_metadata: Vec::new(),
        };
        if tok.chat_template.is_none() {
            tracing::warn!(
                "{}: no chat template; prompts are rendered as plain `role: text` lines",
                source.display()
            );
        }
        tok.render_chat(&[("user", "hi")], true)
            .map_err(|e| Error::bad_model(source, e.to_string()))?;
        Ok(tok)
    }

    /// Token ids of user text (a fact, a question): special-token strings in it are plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        ids_of(&self.plain, text)
    }

    /// Token ids of text the chat template produced, its special-token markup recognised. Never
    /// for user text: see [`Tokenizer::encode_chat`].
    pub fn encode_markup(&self, text: &str) -> Result<Vec<u32>> {
        ids_of(&self.inner, text)
    }

    /// A conversation rendered with the chat template and encoded: the template's own markup
    /// becomes special tokens, the messages' text is encoded as plain text (see
    /// [`Tokenizer::encode`]). The template is rendered with a placeholder for each message, which
    /// marks where the messages' text goes.
    ///
    /// Errors: a template that fails to render ([`Tokenizer::render_chat`]), or text the tokenizer
    /// cannot encode.
    pub fn encode_chat(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<Vec<u32>> {
        // Text with no special-token string in it encodes as it always did: the template rendered
        // with the real messages and encoded in one call (a template may trim or test a message,
        // and a Metaspace tokenizer marks the start of each separately encoded piece).
        if !messages.iter().any(|(_, m)| self.first_special(m).is_some()) {
            return self.encode_markup(&self.render_chat(messages, add_generation_prompt)?);
        }
        let marks: Vec<String> = (0..messages.len()).map(placeholder).collect();
        let marked: Vec<(&str, &str)> = messages
            .iter()
            .zip(&marks)
            .map(|((r, _), m)| (*r, m.as_str()))
            .collect();
        let rendered = self.render_chat(&marked, add_generation_prompt)?;
        let mut ids = Vec::new();
        let mut text = String::new();
        for piece in split_placeholders(&rendered, messages.len()) {
            match piece {
                Piece::Message(i) => text.push_str(messages[i].1),
                Piece::Markup(mut markup) => {
                    while let Some((at, token, id)) = self.first_special(markup) {
                        text.push_str(&markup[..at]);
                        ids.extend(self.encode(&std::mem::take(&mut text))?);
                        ids.push(id);
                        markup = &markup[at + token.len()..];
                    }
                    text.push_str(markup);
                }
            }
        }
        ids.extend(self.encode(&text)?);
        Ok(ids)
    }

    /// The first special token in `markup`: its byte offset, string and id.
    fn first_special<'a>(&'a self, markup: &str) -> Option<(usize, &'a str, u32)> {
        let mut best: Option<(usize, &'a str, u32)> = None;
        for (token, id) in &self.specials {
            if let Some(at) = markup.find(token.as_str()) {
                // Longest first, so a later token only wins by starting earlier.
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, token.as_str(), *id));
                }
            }
        }
        best
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The tokenizer as `tokenizer.json` text (the one that recognises special-token markup), for
    /// exports that other programs load with Hugging Face `tokenizers`.
    ///
    /// Errors: the tokenizer cannot be serialised (bad input naming the cause).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::BadInput(format!("tokenizer: {e}")))
    }

    /// The `tokenizer.*` metadata of the GGUF file this tokenizer was built from, sorted by key;
    /// empty when it came from `tokenizer.json`.
    pub fn gguf_metadata(&self) -> &[(String, Value)] {
        &self.gguf_metadata
    }

    /// The checkpoint's chat template (Jinja), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The most bytes one token's vocabulary entry spells (its string as stored: a byte-level
    /// token's characters stand for one byte each, so this bounds the bytes of text it covers).
    pub fn max_token_bytes(&self) -> usize {
        self.inner.get_vocab(true).keys().map(String::len).max().unwrap_or(0)
    }

    /// The largest id the tokenizer can give (its vocabulary and added tokens), if it has any: ids
    /// need not be dense, so this can exceed [`Tokenizer::vocab_size`].
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    /// The end-of-turn token the chat template closes an assistant answer with.
    pub fn end_of_turn_id(&self) -> Option<u32> {
        let preferred = ["<|im_end|>", "<|eot_id|>"]
            .into_iter()
            .find_map(|t| self.inner.token_to_id(t));
        preferred.or_else(|| self.stop_ids.first().copied())
    }

    /// Renders a conversation with the checkpoint's chat template (a plain fallback when it has none).
    pub fn render_chat(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<serde_json::Value> = messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect();
        let Some(tpl) = &self.chat_template else {
            let mut s = String::new();
            for (r, c) in messages {
                s.push_str(&format!("{r}: {c}\n"));
            }
            if add_generation_prompt {
                s.push_str("assistant:");
            }
            return Ok(s);
        };
        let mut env = minijinja::Environment::new();
        // A chat template renders in a few thousand instructions; one that loops for ever (or for
        // 10,000 × 10,000 rounds) runs out of fuel and is refused instead of hanging the tool.
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", tpl)
            .map_err(|e| Error::BadInput(format!("chat template: {e}")))?;
        let ctx = json!({
            "messages": msgs, "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token.clone().unwrap_or_default(),
            "eos_token": self.eos_token.clone().unwrap_or_default(),
        });
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::BadInput(format!("chat template: {e}")))
    }
}

/// Instructions a chat template may take to render (minijinja's fuel).
const TEMPLATE_FUEL: u64 = 1_000_000;

fn ids_of(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, false)
        .map_err(|e| Error::BadInput(format!("tokenizer: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// What the template is given in place of message `i`: private-use characters no template
/// writes, so that the rendered text shows where each message's text goes.
fn placeholder(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

/// A part of a rendered conversation: the template's markup, or where message i goes.
enum Piece<'a> {
    Markup(&'a str),
    Message(usize),
}

/// Splits `rendered` at the placeholders of messages `0..n` (a template may drop a message, or
/// repeat it).
fn split_placeholders(rendered: &str, n: usize) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find('\u{F8F0}') {
        let after = &rest[start + '\u{F8F0}'.len_utf8()..];
        let Some((digits, tail)) = after.split_once('\u{F8F1}') else {
            break;
        };
        match digits.parse::<usize>() {
            Ok(i) if i < n => {
                pieces.push(Piece::Markup(&rest[..start]));
                pieces.push(Piece::Message(i));
                rest = tail;
            }
            _ => {
                // Not one of ours: markup.
                pieces.push(Piece::Markup(&rest[..start + '\u{F8F0}'.len_utf8()]));
                rest = after;
            }
        }
    }
    pieces.push(Piece::Markup(rest));
    pieces
}

/// The chat templates a checkpoint ships: none, one, or several by name.
enum Templates {
    None,
    One(String),
    Named(Vec<(String, String)>),
}

impl Templates {
    /// The template to use: the one named `want` (`--chat-template`) when given, else the only one
    /// or the one named `default`. `default` also names a checkpoint's only template (transformers
    /// saves a list that holds nothing else as a plain string).
    ///
    /// Errors (bad model naming `source`): a name the checkpoint does not have (its names are
    /// listed), a name for a checkpoint with no template or a single one, and a list without a
    /// `default` when no name is given (`no_default` words that).
    fn pick(self, want: Option<&str>, source: &Path, no_default: impl Fn(&str) -> String) -> Result<Option<String>> {
        let flag = |w: &str, msg: String| Err(Error::bad_model(source, format!("--chat-template {w}: {msg}")));
        match (self, want) {
            (Templates::None, None) => Ok(None),
            (Templates::None, Some(w)) => flag(w, "the model has no chat template".into()),
            (Templates::One(t), None | Some("default")) => Ok(Some(t)),
            (Templates::One(_), Some(w)) => flag(
                w,
                "the model has a single chat template, not named ones (leave the flag out, or give `default`)".into(),
            ),
            (Templates::Named(list), want) => {
                let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
                match list.iter().find(|(n, _)| n == want.unwrap_or("default")) {
                    Some((_, t)) => Ok(Some(t.clone())),
                    None => match want {
                        None => Err(Error::bad_model(source, no_default(&names.join(", ")))),
                        Some(w) => flag(
                            w,
                            format!("no chat template has that name; there are {}", names.join(", ")),
                        ),
                    },
                }
            }
        }
    }
}

/// The chat templates of a GGUF file: `tokenizer.chat_template` is the default one, and llama.cpp
/// writes the other named ones as `tokenizer.chat_template.NAME` (the default too, at times, as
/// `tokenizer.chat_template.default`).
///
/// Errors: the default key holds something other than text.
fn gguf_templates(g: &Gguf) -> Result<Templates> {
    const KEY: &str = "tokenizer.chat_template";
    let default = match g.get(KEY) {
        Some(Value::Str(t)) => Some(t.clone()),
        Some(_) => return Err(Error::bad_model(&g.path, format!("'{KEY}' is not text"))),
        None => None,
    };
    let prefix = format!("{KEY}.");
    let mut named: Vec<(String, String)> = g
        .metadata
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.as_str()?.to_string())))
        .collect();
    if named.is_empty() {
        return Ok(default.map_or(Templates::None, Templates::One));
    }
    if let Some(t) = default {
        named.retain(|(n, _)| n != "default");
        named.insert(0, ("default".into(), t));
    }
    Ok(Templates::Named(named))
}

/// The chat templates of a Hugging Face folder: `chat_template` of `tokenizer_config.json`, else
/// `chat_template.jinja`, else `chat_template` of `chat_template.json`; and the named ones newer
/// transformers saves beside the default as `additional_chat_templates/NAME.jinja`. With the file
/// or folder they came from, for messages.
///
/// Errors: a file that is not JSON, or a template entry [`templates_of`] refuses.
fn hf_templates(dir: &Path, cfg: &serde_json::Value, cfg_path: &Path) -> Result<(Templates, std::path::PathBuf)> {
    let mut found = (
        templates_of(cfg.get("chat_template"), cfg_path)?,
        cfg_path.to_path_buf(),
    );
    if matches!(found.0, Templates::None) {
        let jinja = dir.join("chat_template.jinja");
        let path = dir.join("chat_template.json");
        if let Ok(t) = std::fs::read_to_string(&jinja) {
            found = (Templates::One(t), jinja);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::bad_model(&path, e.to_string()))?;
            found = (templates_of(v.get("chat_template"), &path)?, path);
        }
    }
    let extra_dir = dir.join("additional_chat_templates");
    let mut extra: Vec<(String, String)> = std::fs::read_dir(&extra_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?.strip_suffix(".jinja")?.to_string();
            Some((name, std::fs::read_to_string(&p).ok()?))
        })
        .collect();
    if extra.is_empty() {
        return Ok(found);
    }
    extra.sort();
    let mut list = match found.0 {
        Templates::None => Vec::new(),
        Templates::One(t) => vec![("default".to_string(), t)],
        Templates::Named(list) => list,
    };
    for (n, t) in extra {
        if !list.iter().any(|(m, _)| *m == n) {
            list.push((n, t));
        }
    }
    Ok((Templates::Named(list), extra_dir))
}

/// A `chat_template` entry: a string, or the list form `[{"name": …, "template": …}, …]` some
/// checkpoints ship (an empty list is none).
///
/// Errors (naming `path`): an entry without a text name and template, or a value of another shape.
fn templates_of(v: Option<&serde_json::Value>, path: &Path) -> Result<Templates> {
    use serde_json::Value as J;
    fn named(e: &J) -> Option<(String, String)> {
        Some((
            e.get("name")?.as_str()?.to_string(),
            e.get("template")?.as_str()?.to_string(),
        ))
    }
    match v {
        None | Some(J::Null) => Ok(Templates::None),
        Some(J::String(t)) => Ok(Templates::One(t.clone())),
        Some(J::Array(list)) if list.is_empty() => Ok(Templates::None),
        Some(J::Array(list)) => {
            let entries: Vec<(String, String)> = list.iter().filter_map(named).collect();
            if entries.len() != list.len() {
                return Err(Error::bad_model(
                    path,
                    "chat_template: every entry of the list needs a text 'name' and 'template'",
                ));
            }
            Ok(Templates::Named(entries))
        }
        Some(_) => Err(Error::bad_model(
            path,
            "chat_template is neither text nor a list of {name, template}",
        )),
    }
}

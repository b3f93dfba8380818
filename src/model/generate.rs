//! Text generation with a KV cache: greedy, or temperature / top-p sampling from a seeded generator.
use super::config::Config;
use super::llama::{Adapter, Cache, FixedCache, Llama};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::rng::SplitMix64 as Rng;
use tch::{Kind, Tensor};

/// How to pick each next token.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub max_tokens: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 256,
        }
    }
}

/// Picks a token from logits [vocab] (fp32).
fn pick(logits: &Tensor, s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return logits.argmax(-1, false).int64_value(&[]) as u32;
    }
    let probs = (logits / s.temperature).softmax(-1, Kind::Float);
    let (sorted, idx) = probs.sort(-1, true);
    let p: Vec<f32> = Vec::<f32>::try_from(&sorted).unwrap_or_default();
    let idx: Vec<i64> = Vec::<i64>::try_from(&idx).unwrap_or_default();
    let mut keep = p.len();
    let mut acc = 0.0;
    for (i, v) in p.iter().enumerate() {
        acc += *v as f64;
        if acc >= s.top_p {
            keep = i + 1;
            break;
        }
    }
    let total: f64 = p[..keep].iter().map(|&v| v as f64).sum();
    let mut r = rng.next_f64() * total;
    for i in 0..keep {
        r -= p[i] as f64;
        if r <= 0.0 {
            return idx[i] as u32;
        }
    }
    idx[keep - 1] as u32
}

/// How many tokens may follow a prompt of `len` tokens (the longest, for a batch) within the model's
/// positions, at most `wanted`.
///
/// Errors: bad input when the prompt alone fills the model's positions.
fn room(cfg: &Config, len: usize, wanted: usize) -> Result<usize> {
    let limit = cfg.max_position_embeddings;
    if len >= limit {
        return Err(Error::BadInput(format!(
            "the prompt is {len} tokens with its template; the model's limit is {limit}"
        )));
    }
    Ok(wanted.min(limit - len))
}

/// The note when generation stopped at the model's positions rather than at a stop token or
/// `max_tokens`.
fn note_limit(cfg: &Config) {
    tracing::warn!(
        "generation stopped at the model's limit of {} positions",
        cfg.max_position_embeddings
    );
}

/// Generates after `prompt` and calls `on_text` with each new piece of text as it is decoded; the
/// prompt and the answer together stay within the model's positions (a warning says when that cut
/// the answer short). Returns the generated token ids (without the stop token).
///
/// Errors: bad input when the prompt alone fills the model's positions; libtorch's errors.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    s: &Sampling,
    ad: &dyn Adapter,
    mut on_text: impl FnMut(&str),
) -> Result<Vec<u32>> {
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let mut cache = Cache::new(&model.cfg);
    let mut rng = Rng(s.seed);
    let mut out: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut input = Tensor::from_slice(&ids).unsqueeze(0).to_device(dev);
    let steps = room(&model.cfg, prompt.len(), s.max_tokens)?;
    let mut stopped = false;
    for _ in 0..steps {
        let logits = model.forward(&input, Some(&mut cache), ad);
        let last = logits.get(0).get(-1).to_device(tch::Device::Cpu);
        let next = pick(&last, s, &mut rng);
        if tok.stop_ids.contains(&next) {
            stopped = true;
            break;
        }
        out.push(next);
        // Decode the whole answer and emit the new suffix, holding back a partial UTF-8 character.
        let text = tok.decode(&out);
        if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed) {
            on_text(&text[printed..]);
            printed = text.len();
        }
        input = Tensor::from_slice(&[next as i64]).unsqueeze(0).to_device(dev);
    }
    let text = tok.decode(&out);
    if text.len() > printed && text.is_char_boundary(printed) {
        on_text(&text[printed..]);
    }
    if !stopped && steps < s.max_tokens {
        note_limit(&model.cfg);
    }
    Ok(out)
}

/// Greedy answers to several prompts at once: the prompts are left-padded into one batch and
/// decoded together with one cache, one forward per new token for all of them (rows that have
/// stopped ride along until every row has). Each row's answer is the one [`generate`] gives for
/// that prompt alone, up to floating-point differences of batched arithmetic; the longest prompt and
/// its answer stay within the model's positions. On a GPU of a CUDA build the decoding steps run
/// as one captured CUDA graph ([`greedy_batch_fixed`]). Returns the token ids of each answer,
/// without the stop token.
///
/// Errors: bad input when the longest prompt alone fills the model's positions; libtorch's errors.
pub fn greedy_batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    ad: &dyn Adapter,
) -> Result<Vec<Vec<u32>>> {
    let graphs = crate::cuda::available(model.device());
    if graphs && std::env::var("INJECTOR_GRAPH_DECODING").as_deref() != Ok("0") {
        return greedy_batch_fixed(model, tok, prompts, max_tokens, ad, true);
    }
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let Some(batch) = LeftPadded::new(model, prompts, max_tokens)? else {
        return Ok(vec![Vec::new(); prompts.len()]);
    };
    let mut input = batch.ids.to_device(dev);
    let pad = batch.pad.to_device(dev);
    let mut cache = Cache::new(&model.cfg);
    let mut outs = Answers::new(prompts.len());
    for _ in 0..batch.steps {
        let h = model.hidden_padded(&input, Some(&mut cache), Some(&pad), ad);
        let next = model.logits(&h.select(1, -1)).argmax(-1, false);
        if outs.take(tok, &next)? {
            break;
        }
        input = next.view([prompts.len() as i64, 1]);
    }
    Ok(outs.finish(model, batch.steps, max_tokens))
}

/// [`greedy_batch`] with decoding steps of fixed shape: the prompts are prefilled as there, then
/// each new token is one [`Llama::decode_fixed`] step on a [`FixedCache`] of the longest prompt
/// plus the answer's room. With `graphs` (a GPU of a CUDA build), the first step runs eagerly, the
/// second is captured as a CUDA graph and every later one replays it: a step of SmolLM2 is ~1,000
/// small kernels, whose launches cost far more than their arithmetic (bench/NOTES.md). Without,
/// every step is eager (for tests on the CPU). Answers equal [`greedy_batch`]'s up to floating-point
/// differences (the attention runs over all of the cache's positions, masked).
///
/// Errors: as [`greedy_batch`]; a failed capture or replay.
pub fn greedy_batch_fixed(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    ad: &dyn Adapter,
    graphs: bool,
) -> Result<Vec<Vec<u32>>> {
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let Some(batch) = LeftPadded::new(model, prompts, max_tokens)? else {
        return Ok(vec![Vec::new(); prompts.len()]);
    };
    // Graphs are captured on a side stream; everything they touch is made on it.
    let _stream = match graphs {
        true => crate::cuda::SideStream::unless_inside(dev)?,
        false => None,
    };
    let b = prompts.len() as i64;
    let pad = batch.pad.to_device(dev);
    let mut cache = Cache::new(&model.cfg);
    let h = model.hidden_padded(&batch.ids.to_device(dev), Some(&mut cache), Some(&pad), ad);
    let mut next = model.logits(&h.select(1, -1)).argmax(-1, false);
    drop(h);
    // Step i writes the token of step i - 1 at position len + i - 1, the last at len + steps - 2.
    let fixed = FixedCache::from_prefill(&cache, &pad, batch.len + batch.steps as i64)?;
    drop(cache);
    // The step's input, rewritten in place by each step with the token it picked.
    let input = next.view([b, 1]).copy();
    let step = || -> Tensor {
        let h = model.decode_fixed(&input, &fixed, ad);
        let picked = model.logits(&h.select(1, 0)).argmax(-1, false);
        input.shallow_clone().copy_(&picked.view([b, 1]));
        let _ = fixed.pos.shallow_clone().g_add_scalar_(1);
        picked
    };
    let mut graph: Option<(crate::cuda::Graph, Tensor)> = None;
    let mut outs = Answers::new(prompts.len());
    for i in 0..batch.steps {
        if outs.take(tok, &next)? || i + 1 == batch.steps {
            break;
        }
        next = match &graph {
            Some((g, picked)) => {
                g.replay()?;
                picked.shallow_clone()
            }
            None if graphs && i >= 1 => {
                let (g, picked) = crate::cuda::Graph::capture(step)?;
                g.replay()?;
                let out = picked.shallow_clone();
                graph = Some((g, picked));
                out
            }
            None => step(),
        };
    }
    // A dropped graph's private pool is only marked freeable: hand it back now, or a later capture
    // (which never retries an allocation after emptying the cache) can run out of memory. Leaving
    // the side stream empties the cache too.
    if graph.take().is_some() && _stream.is_none() {
        crate::cuda::empty_cache()?;
    }
    Ok(outs.finish(model, batch.steps, max_tokens))
}

/// Prompts left-padded into one batch: ids int64 [b, len] and each row's padding int64 [b] (on the
/// host), and how many tokens may follow within the model's positions.
struct LeftPadded {
    ids: Tensor,
    pad: Tensor,
    len: i64,
    steps: usize,
}

impl LeftPadded {
    /// `None` for no prompts or only empty ones. Errors: as [`room`].
    fn new(model: &Llama, prompts: &[Vec<u32>], max_tokens: usize) -> Result<Option<Self>> {
        let b = prompts.len();
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || len == 0 {
            return Ok(None);
        }
        let mut ids = vec![0i64; b * len];
        let mut pad = vec![0i64; b];
        for (i, p) in prompts.iter().enumerate() {
            pad[i] = (len - p.len()) as i64;
            for (j, &t) in p.iter().enumerate() {
                ids[i * len + pad[i] as usize + j] = t as i64;
            }
        }
        Ok(Some(LeftPadded {
            ids: Tensor::from_slice(&ids).view([b as i64, len as i64]),
            pad: Tensor::from_slice(&pad),
            len: len as i64,
            steps: room(&model.cfg, len, max_tokens)?,
        }))
    }
}

/// The answers of a batch as its tokens arrive: a row ends at its first stop token.
struct Answers {
    outs: Vec<Vec<u32>>,
    done: Vec<bool>,
}

impl Answers {
    fn new(b: usize) -> Self {
        Answers {
            outs: vec![Vec::new(); b],
            done: vec![false; b],
        }
    }

    /// Adds each row's next token (int64 [b], read back to the host); true when every row is done.
    fn take(&mut self, tok: &Tokenizer, next: &Tensor) -> Result<bool> {
        let picked = Vec::<i64>::try_from(next.to_device(tch::Device::Cpu))?;
        for (i, &t) in picked.iter().enumerate() {
            if self.done[i] {
                continue;
            }
            if tok.stop_ids.contains(&(t as u32)) {
                self.done[i] = true;
            } else {
                self.outs[i].push(t as u32);
            }
        }
        Ok(self.done.iter().all(|&d| d))
    }

    /// The answers, with the note when the model's positions (not `max_tokens`) cut one short.
    fn finish(self, model: &Llama, steps: usize, max_tokens: usize) -> Vec<Vec<u32>> {
        if steps < max_tokens && self.done.iter().any(|&d| !d) {
            note_limit(&model.cfg);
        }
        self.outs
    }
}

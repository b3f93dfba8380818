//! Scoring facts at the model's current weights: recall on the training prompts, generalisation on
//! the held-out probes, and for updates how much of the previous answer still comes out. All
//! examples of all facts asked for go through one set of large batched passes.
use super::batch::{build_for_base, sequence_logprob, token_accuracy, Example};
use super::metrics::{key_details, token_f1};
use crate::error::Result;
use crate::knowledge::Fact;
use crate::model::generate::greedy_batch;
use crate::model::{Llama, NoAdapter, Tokenizer};
use serde::Serialize;

/// What a fact is measured on, tokenised once.
pub struct FactExamples {
    pub recall: Vec<Example>,
    pub general: Vec<Example>,
    pub previous: Vec<Example>,
    /// The answer, for scoring free answers.
    pub answer: String,
    /// The answer's key details ([`key_details`]).
    pub details: Vec<String>,
}

impl FactExamples {
    pub fn new(tok: &Tokenizer, f: &Fact) -> Result<Self> {
        let ex = |qs: &[String], a: &str| qs.iter().map(|q| Example::chat(tok, q, a)).collect::<Result<Vec<_>>>();
        Ok(FactExamples {
            recall: ex(&f.prompts, &f.answer)?,
            general: ex(&f.probes, &f.answer)?,
            previous: match &f.previous {
                Some(p) => ex(&f.prompts, p)?,
                None => Vec::new(),
            },
            answer: f.answer.clone(),
            details: key_details(&f.answer, &f.subject),
        })
    }
}

/// Token accuracies of one fact (means, and per prompt).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FactScore {
    pub recall: f64,
    pub general: Option<f64>,
    pub previous: Option<f64>,
    /// For updates: the share of the training prompts on which the model finds the new answer
    /// likelier than the previous one ([`sequence_logprob`]): what the model would say, where
    /// `previous` (token accuracy on the old answer) also credits the tokens the two answers share.
    #[serde(default)]
    pub prefers_new: Option<f64>,
    pub recall_each: Vec<f64>,
    pub general_each: Vec<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Scores every fact in `facts` in one batched teacher-forced sweep.
pub fn score(model: &Llama, facts: &[&FactExamples], max_batch_tokens: usize) -> Vec<FactScore> {
    let mut all: Vec<Example> = Vec::new();
    for f in facts {
        all.extend(f.recall.iter().cloned());
        all.extend(f.general.iter().cloned());
        all.extend(f.previous.iter().cloned());
    }
    let batches = build_for_base(&all, max_batch_tokens, model.device());
    let acc = token_accuracy(model, &NoAdapter, &batches, all.len());
    let mut at = 0;
    let mut take = |n: usize| {
        let s = acc[at..at + n].to_vec();
        at += n;
        s
    };
    let prefers = prefers_new(model, facts, max_batch_tokens);
    facts
        .iter()
        .zip(prefers)
        .map(|(f, prefers_new)| {
            let recall_each = take(f.recall.len());
            let general_each = take(f.general.len());
            let previous_each = take(f.previous.len());
            FactScore {
                recall: mean(&recall_each).unwrap_or(0.0),
                general: mean(&general_each),
                previous: mean(&previous_each),
                prefers_new,
                recall_each,
                general_each,
            }
        })
        .collect()
}

/// Per fact, for updates (facts with previous-answer examples): the share of training prompts on
/// which the new answer's sequence log-likelihood beats the previous one's; `None` for the others.
/// One extra batched pass over the updates' prompts with both answers, none when there are none.
fn prefers_new(model: &Llama, facts: &[&FactExamples], max_batch_tokens: usize) -> Vec<Option<f64>> {
    let mut pairs: Vec<Example> = Vec::new();
    for f in facts.iter().filter(|f| !f.previous.is_empty()) {
        // Same prompts, in the same order: the new answer's example, then the previous one's.
        for (new, old) in f.recall.iter().zip(&f.previous) {
            pairs.push(new.clone());
            pairs.push(old.clone());
        }
    }
    if pairs.is_empty() {
        return vec![None; facts.len()];
    }
    let logp = sequence_logprob(
        model,
        &NoAdapter,
        &build_for_base(&pairs, max_batch_tokens, model.device()),
        pairs.len(),
    );
    let mut at = 0;
    facts
        .iter()
        .map(|f| {
            let k = f.recall.len().min(f.previous.len());
            if f.previous.is_empty() || k == 0 {
                return None;
            }
            let wins = (0..k).filter(|i| logp[at + 2 * i] > logp[at + 2 * i + 1]).count();
            at += 2 * k;
            Some(wins as f64 / k as f64)
        })
        .collect()
}

/// Mean teacher-forced accuracy on fixed examples (locality against the base answers).
pub fn mean_accuracy(model: &Llama, examples: &[Example], max_batch_tokens: usize) -> f64 {
    locality_scores(model, examples, max_batch_tokens).accuracy
}

/// Locality and the general check, from one teacher-forced pass over the base model's own answers
/// to the locality prompts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalityScore {
    /// Mean over the answers of the share of their tokens whose argmax is right ([`mean_accuracy`]).
    pub accuracy: f64,
    /// exp of the mean negative log-likelihood (nats) over all the answers' target tokens: the
    /// perplexity of the base model's own text at these weights (≥ 1; the base model scores its
    /// greedy answers low, and a model whose general behaviour an edit damaged scores them higher).
    /// Issue #12's general check; a standard perplexity over a fixed corpus (token-weighted).
    pub perplexity: f64,
}

/// [`LocalityScore`] of `examples` (the base model's answers, as ids) at the model's weights: one
/// batched pass of at most `max_batch_tokens` padded tokens a batch. With no examples, accuracy
/// 1.0 and perplexity 1.0.
pub fn locality_scores(model: &Llama, examples: &[Example], max_batch_tokens: usize) -> LocalityScore {
    let _g = tch::no_grad_guard();
    let batches = build_for_base(examples, max_batch_tokens, model.device());
    let mut acc = vec![(0usize, 0usize); examples.len()];
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    for b in &batches {
        let logits = b.logits(model, &NoAdapter);
        b.count_correct(&logits, &mut acc);
        let logp = b.target_logprob(&logits);
        nll -= logp.iter().sum::<f64>();
        tokens += logp.len();
    }
    let each: Vec<f64> = acc
        .iter()
        .map(|&(c, t)| if t == 0 { 0.0 } else { c as f64 / t as f64 })
        .collect();
    LocalityScore {
        accuracy: mean(&each).unwrap_or(1.0),
        // Diverged weights (NaN logits) score as infinitely perplexed, which the ledger keeps as a
        // number, rather than NaN, which SQLite would store as "not measured".
        perplexity: match (nll / tokens.max(1) as f64).exp() {
            _ if tokens == 0 => 1.0,
            p if p.is_nan() => f64::INFINITY,
            p => p,
        },
    }
}

/// A greedy answer to `question` and its F1 against `answer`.
pub fn generate_f1(model: &Llama, tok: &Tokenizer, question: &str, answer: &str) -> Result<(String, f64)> {
    Ok(generate_f1_all(model, tok, &[(question, answer)])?.remove(0))
}

/// [`generate_f1`] for several (question, answer) pairs, decoded together in one batch; each
/// answer is capped at its own length, as alone.
pub fn generate_f1_all(model: &Llama, tok: &Tokenizer, qa: &[(&str, &str)]) -> Result<Vec<(String, f64)>> {
    let mut prompts = Vec::with_capacity(qa.len());
    let mut caps = Vec::with_capacity(qa.len());
    for (q, a) in qa {
        let prompt = Example::chat(tok, q, "")?.prompt;
        prompts.push(prompt.iter().map(|&t| t as u32).collect::<Vec<u32>>());
        caps.push(tok.encode(a)?.len() + 16);
    }
    let max = caps.iter().copied().max().unwrap_or(0);
    let outs = greedy_batch(model, tok, &prompts, max, &NoAdapter)?;
    Ok(outs
        .into_iter()
        .zip(caps)
        .zip(qa)
        .map(|((mut out, cap), (_, a))| {
            out.truncate(cap);
            let text = tok.decode(&out);
            let f1 = token_f1(&text, a);
            (text, f1)
        })
        .collect())
}

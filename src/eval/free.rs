//! Free-decoding recall: greedy answers to each fact's training prompts and held-out probes, scored
//! against its answer by key-detail recall and token F1 ([`super::metrics`]). Teacher-forced token
//! accuracy only asks for the next token after a correct prefix, so a fact can score 0.99 there
//! while its free answer loops or borrows another fact's details; the knowledge-editing literature
//! reports free-decoding figures for this reason (e.g. WISE, Wang et al. 2024; AlphaEdit, Fang et
//! al. 2025). All rows of all facts asked for are decoded in a few large left-padded batches.
use super::metrics::{key_detail_recall, token_f1};
use super::probe::FactExamples;
use crate::error::Result;
use crate::model::generate::greedy_batch;
use crate::model::{Llama, NoAdapter, Tokenizer};
use serde::{Deserialize, Serialize};

/// Tokens a free answer may run past the reference answer's length before it is cut.
pub const SLACK_TOKENS: usize = 16;

/// One free answer and its scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FreeAnswer {
    pub text: String,
    /// Share of the answer's key details in `text`.
    pub key: f64,
    /// Token F1 of `text` against the answer.
    pub f1: f64,
}

/// A fact's free-decoding scores: means over its training prompts (`recall*`) and its probes
/// (`general*`, `None` without probes), and each answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FreeScore {
    /// Mean key-detail recall of the greedy answers to the training prompts.
    pub recall: f64,
    /// The same on the held-out probes.
    pub general: Option<f64>,
    pub recall_f1: f64,
    pub general_f1: Option<f64>,
    pub recall_each: Vec<FreeAnswer>,
    pub general_each: Vec<FreeAnswer>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl FreeAnswer {
    /// `text` scored against a fact's `answer` and its key `details` ([`key_details`]).
    pub fn score(text: String, answer: &str, details: &[String]) -> Self {
        FreeAnswer {
            key: key_detail_recall(&text, details),
            f1: token_f1(&text, answer),
            text,
        }
    }
}

impl FreeScore {
    /// The means of a fact's answers to its training prompts (`recall_each`) and its probes.
    pub fn new(recall_each: Vec<FreeAnswer>, general_each: Vec<FreeAnswer>) -> Self {
        FreeScore {
            recall: mean(recall_each.iter().map(|a| a.key)).unwrap_or(0.0),
            general: mean(general_each.iter().map(|a| a.key)),
            recall_f1: mean(recall_each.iter().map(|a| a.f1)).unwrap_or(0.0),
            general_f1: mean(general_each.iter().map(|a| a.f1)),
            recall_each,
            general_each,
        }
    }
}

/// One prompt to decode: its ids and its cap in tokens.
struct Row<'a> {
    prompt: &'a [i64],
    cap: usize,
}

/// Greedy answers to every training prompt and probe of `facts`, scored. Rows are sorted by prompt
/// length and decoded in batches of at most `max_batch_tokens` positions (rows × (longest prompt +
/// longest cap)), each answer cut at its reference's length plus [`SLACK_TOKENS`].
///
/// Errors: a token id the tokenizer cannot decode (not expected from the model's own vocabulary).
pub fn free_score(
    model: &Llama,
    tok: &Tokenizer,
    facts: &[&FactExamples],
    max_batch_tokens: usize,
) -> Result<Vec<FreeScore>> {
    let mut rows: Vec<Row> = Vec::new();
    // In fact order, each fact's training prompts then its probes.
    for f in facts {
        for e in f.recall.iter().chain(&f.general) {
            rows.push(Row {
                prompt: &e.prompt,
                // The target ends with the end-of-turn token; the answer is the rest.
                cap: e.target.len().saturating_sub(1) + SLACK_TOKENS,
            });
        }
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&r| rows[r].prompt.len());
    let mut texts: Vec<String> = vec![String::new(); rows.len()];
    let mut start = 0;
    while start < order.len() {
        // Grow the batch while it fits the budget (at least one row).
        let (mut end, mut cap) = (start, 0);
        while end < order.len() {
            let r = &rows[order[end]];
            let c = cap.max(r.cap);
            if end > start && (end + 1 - start) * (r.prompt.len() + c) > max_batch_tokens {
                break;
            }
            cap = c;
            end += 1;
        }
        let prompts: Vec<Vec<u32>> = order[start..end]
            .iter()
            .map(|&r| rows[r].prompt.iter().map(|&t| t as u32).collect())
            .collect();
        let outs = greedy_batch(model, tok, &prompts, cap, &NoAdapter)?;
        for (&r, mut out) in order[start..end].iter().zip(outs) {
            out.truncate(rows[r].cap);
            texts[r] = tok.decode(&out);
        }
        start = end;
    }
    let mut texts = texts.into_iter();
    Ok(facts
        .iter()
        .map(|f| {
            let mut answer = |n: usize| -> Vec<FreeAnswer> {
                texts
                    .by_ref()
                    .take(n)
                    .map(|text| FreeAnswer::score(text, &f.answer, &f.details))
                    .collect()
            };
            let recall_each = answer(f.recall.len());
            let general_each = answer(f.general.len());
            FreeScore::new(recall_each, general_each)
        })
        .collect())
}

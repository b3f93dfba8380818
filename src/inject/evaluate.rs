//! The evaluation stage after an injection step's merge: the step's own facts and, at retention checks
//! (see [`Cadence`]), earlier facts, scored in batched teacher-forced passes; at those checks, free
//! (greedy) answers to every scored fact's prompts and probes; greedy generations for the reports'
//! "after" samples (at the last step); locality at full checks; the new weights' hash.
use super::plan::Plan;
use super::prepare::Prepared;
use super::state::{start_weights_hash, PendingHash};
use super::Clock;
use crate::config::RunConfig;
use crate::error::Result;
use crate::eval::free::{free_score, FreeScore};
use crate::eval::probe::{generate_f1_all, locality_scores, score, FactExamples, FactScore, LocalityScore};
use crate::eval::retention::Cadence;
use crate::knowledge::Fact;
use crate::ledger::{GenerationRow, ProbeRow, StepPhases};
use crate::model::{Llama, Loaded, Tokenizer};
use std::collections::HashMap;

/// Greedy generations (before and after) are sampled for this many facts of a run, the first ones.
const MAX_SAMPLED_GENERATIONS: usize = 64;

/// Free answers are decoded in batches of this many times `eval_batch_tokens` positions (on the
/// CPU; on a GPU four times as many): decoding is one forward per token for the whole batch, so on
/// a GPU, where a forward costs its launches more than its rows, wide batches cost little more than
/// narrow ones (a 1,000-fact run's last pass decodes ~7,000 answers; bench/NOTES.md item 27).
const FREE_BATCH_FACTOR: usize = 4;

/// What the evaluation after one step measured.
pub struct Evaluated {
    pub probes: Vec<ProbeRow>,
    /// Greedy answers after the step: at an invocation's last step, to every sampled injected fact;
    /// none before it.
    pub generations: Vec<GenerationRow>,
    /// Locality and the general check's perplexity, at full checks.
    pub locality: Option<LocalityScore>,
    /// The new weights' hash, being digested (its copy's seconds are in `phases.hash`; the wait
    /// is the committer's).
    pub weights_hash: PendingHash,
    /// The lowest recall among the step's own facts (none for a step without any).
    pub own_recall: Option<f64>,
    /// Seconds of the evaluation's phases (the others are zero).
    pub phases: StepPhases,
}

/// Those of `facts` whose greedy answers the reports show (the run's first ones).
pub fn sampled<'a>(plan: &Plan, facts: impl IntoIterator<Item = &'a Fact>) -> Vec<&'a Fact> {
    let position: HashMap<&str, usize> = plan
        .facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.hash.as_str(), i))
        .collect();
    facts
        .into_iter()
        .filter(|f| position[f.hash.as_str()] < MAX_SAMPLED_GENERATIONS)
        .collect()
}

/// Evaluates the model after step `idx` (`last`: the last step of this invocation) that injected
/// `own`; `injected` holds every fact injected so far, in order, `own` included. `rehearsed`: facts
/// the step rehearsed for a reason (`spaced:K`, `repair`), scored too.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    loaded: &Loaded,
    prepared: &Prepared,
    config: &RunConfig,
    plan: &Plan,
    idx: i64,
    last: bool,
    own: &[&Fact],
    injected: &[String],
    rehearsed: &[String],
) -> Result<Evaluated> {
    let model = &loaded.model;
    let mut clock = Clock::start();
    let mut phases = StepPhases::default();
    let cadence = Cadence::of(config);
    let own_hashes: Vec<String> = own.iter().map(|f| f.hash.clone()).collect();
    let mut scored = cadence.facts_to_score(idx, last, &own_hashes, injected);
    let extra: Vec<String> = rehearsed.iter().filter(|h| !scored.contains(h)).cloned().collect();
    scored.extend(extra);
    // Own facts and earlier ones in two passes, so each has its time.
    let (own_part, earlier) = scored.split_at(own.len());
    let mut scores = score_facts(model, prepared, config, own_part);
    phases.own_probes = clock.lap();
    scores.extend(score_facts(model, prepared, config, earlier));
    phases.retention = clock.lap();
    let free: Vec<Option<FreeScore>> = if cadence.is_free(idx, last) {
        let ex: Vec<&FactExamples> = scored.iter().map(|h| &prepared.examples[h]).collect();
        let budget = config.eval_batch_tokens * FREE_BATCH_FACTOR * if model.device().is_cuda() { 4 } else { 1 };
        free_score(model, &loaded.tokenizer, &ex, budget)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; scored.len()]
    };
    phases.free_decoding = clock.lap();
    // The reports show the samples after the last step only: none are decoded before it. Where
    // the facts were free-decoded, their answers to the first probe are the samples.
    let shown: Vec<&Fact> = if last {
        let by_hash: HashMap<&str, &Fact> = plan.facts.iter().map(|f| (f.hash.as_str(), f)).collect();
        sampled(plan, injected.iter().filter_map(|h| by_hash.get(h.as_str()).copied()))
    } else {
        Vec::new()
    };
    let decoded: HashMap<&str, &FreeScore> = scored
        .iter()
        .zip(&free)
        .filter_map(|(h, f)| f.as_ref().map(|f| (h.as_str(), f)))
        .collect();
    let (reused, to_decode): (Vec<&Fact>, Vec<&Fact>) =
        shown.into_iter().partition(|f| decoded.contains_key(f.hash.as_str()));
    let mut generations: Vec<GenerationRow> = reused
        .iter()
        .map(|f| sample_from_free(f, decoded[f.hash.as_str()], idx))
        .collect();
    generations.extend(sample_generations(model, &loaded.tokenizer, &to_decode, idx)?);
    phases.generations = clock.lap();
    let probes: Vec<ProbeRow> = scored
        .iter()
        .zip(&scores)
        .zip(free)
        .map(|((h, s), free)| probe_row(idx, h, s, free))
        .collect();
    let locality = cadence
        .is_full(idx, last)
        .then(|| locality_scores(model, &prepared.locality, config.eval_batch_tokens));
    phases.locality = clock.lap();
    let weights_hash = start_weights_hash(model, &loaded.source_hash, &config.train)?;
    phases.hash = clock.lap();
    let own_recall = scores[..own.len()].iter().map(|s| s.recall).reduce(f64::min);
    Ok(Evaluated {
        probes,
        generations,
        locality,
        weights_hash,
        own_recall,
        phases,
    })
}

/// The ledger row of one fact's scores after step `step`.
fn probe_row(step: i64, fact: &str, s: &FactScore, free: Option<FreeScore>) -> ProbeRow {
    let mut detail = serde_json::json!({"recall": s.recall_each, "general": s.general_each});
    if let Some(p) = s.prefers_new {
        detail["prefers_new"] = p.into();
    }
    if let Some(f) = &free {
        detail["free"] = serde_json::to_value(f).expect("scores serialise");
    }
    ProbeRow {
        step,
        fact: fact.to_string(),
        recall: s.recall,
        general: s.general,
        previous: s.previous,
        free_recall: free.as_ref().map(|f| f.recall),
        free_general: free.as_ref().and_then(|f| f.general),
        detail: detail.to_string(),
    }
}

/// Scores the facts of `hashes` in one batched pass (none: no pass).
fn score_facts(model: &Llama, prepared: &Prepared, config: &RunConfig, hashes: &[String]) -> Vec<FactScore> {
    if hashes.is_empty() {
        return Vec::new();
    }
    let ex: Vec<&FactExamples> = hashes.iter().map(|h| &prepared.examples[h]).collect();
    score(model, &ex, config.eval_batch_tokens)
}

/// The sample of [`sample_generations`] for `f` taken from its free answers (the same question, the
/// same cap, decoded in the same kind of batch).
fn sample_from_free(f: &Fact, free: &FreeScore, step: i64) -> GenerationRow {
    let (prompt, answer) = match (f.probes.first(), free.general_each.first()) {
        (Some(q), Some(a)) => (q, a),
        _ => (&f.prompts[0], &free.recall_each[0]),
    };
    GenerationRow {
        step,
        fact: f.hash.clone(),
        prompt: prompt.clone(),
        text: answer.text.clone(),
        f1: answer.f1,
    }
}

/// Greedy answers to each fact's first probe (its first prompt when it has none), decoded
/// together, as the reports' before/after samples of step `step` (-1: before any step of the run).
pub fn sample_generations(model: &Llama, tok: &Tokenizer, facts: &[&Fact], step: i64) -> Result<Vec<GenerationRow>> {
    if facts.is_empty() {
        return Ok(Vec::new());
    }
    let qa: Vec<(&str, &str)> = facts
        .iter()
        .map(|f| (f.probes.first().unwrap_or(&f.prompts[0]).as_str(), f.answer.as_str()))
        .collect();
    Ok(generate_f1_all(model, tok, &qa)?
        .into_iter()
        .zip(facts.iter().zip(&qa))
        .map(|((text, f1), (f, (q, _)))| GenerationRow {
            step,
            fact: f.hash.clone(),
            prompt: q.to_string(),
            text,
            f1,
        })
        .collect())
}

//! The second stage of a run, before its first new step: the base model's answers (to the locality
//! prompts for a new run, to the preservation prompts for the KL term, to the sampled facts for the
//! reports' "before" column), the null-space projections, the committed steps replayed onto the
//! model, and every fact's examples tokenised once.
use super::evaluate::{sample_generations, sampled};
use super::plan::Plan;
use super::preserve::{null_space_projections, Preserve, Protected};
use super::state::replay;
use super::step::adapter_shapes;
use super::Clock;
use crate::config::{Proj, RunConfig};
use crate::error::Result;
use crate::eval::batch::Example;
use crate::eval::locality::{base_answers, preserve_prompts, LOCALITY_PROMPTS};
use crate::eval::probe::{locality_scores, FactExamples};
use crate::ledger::{FixedPhases, GenerationRow, Ledger, LocalityBase};
use crate::model::Loaded;
use std::collections::HashMap;

/// What the training and evaluation of the coming steps read.
pub struct Prepared {
    /// The preservation set and projections (None when both are off).
    pub preserve: Option<Preserve>,
    /// Per fact hash, its training, probe and previous-answer examples.
    pub examples: HashMap<String, FactExamples>,
    /// The base model's answers to the locality prompts, as examples.
    pub locality: Vec<Example>,
    /// Seconds of preparing (preservation, projections, replay, tokenize, before samples).
    pub phases: FixedPhases,
    /// The base model's greedy answers to the sampled pending facts (the reports' "before" samples,
    /// step -1), by fact hash; committed with the step that injects the fact.
    pub before: HashMap<String, GenerationRow>,
}

/// Raised whenever what [`base_answers`] decodes for the same prompts changes, so that answers kept by
/// an earlier version are not read back. 2: on a GPU the prompts are decoded 64 a batch (16
/// before), which changes a few answers' tokens there (bench/NOTES.md item 44); the CPU's are the
/// same. A GPU run kept from before decodes them anew when it goes on (`--resume`, `repair`), so its
/// later steps train against the new answers.
const BASE_ANSWERS_VERSION: u32 = 2;

/// The base model's greedy answers (`tokens` at most) to `prompts`, as examples: from the ledger when
/// a run of this model (same weights, same weight type) has kept them, else decoded now and kept.
/// Call before any edit of the weights.
pub fn base_answers_kept(
    ledger: &mut Ledger,
    loaded: &Loaded,
    prompts: &[&str],
    tokens: usize,
) -> Result<Vec<Example>> {
    let kind = format!("{:?}", loaded.model.kind());
    // The source hash covers a GGUF file whole but only the weight files of a Hugging Face folder:
    // the rendered prompts (tokenizer, chat template), the stop tokens and the model's config go into
    // the key too, with the version of how answers are made.
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "base-answers v{BASE_ANSWERS_VERSION}\n{:?}\n{:?}\n",
            loaded.model.cfg, loaded.tokenizer.stop_ids
        )
        .as_bytes(),
    );
    for p in prompts {
        let ids = Example::chat(&loaded.tokenizer, p, "")?.prompt;
        h.update(&ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>());
        h.update(b"\n");
    }
    let set = h.finalize().to_hex().to_string();
    if let Some(kept) = ledger.base_answers(&loaded.source_hash, &kind, &set, tokens)? {
        if kept.len() == prompts.len() {
            return Ok(kept
                .into_iter()
                .map(|(prompt, target)| Example { prompt, target })
                .collect());
        }
    }
    let answers = base_answers(&loaded.model, &loaded.tokenizer, prompts, tokens)?;
    let rows: Vec<(Vec<i64>, Vec<i64>)> = answers.iter().map(|e| (e.prompt.clone(), e.target.clone())).collect();
    ledger.keep_base_answers(&loaded.source_hash, &kind, &set, tokens, &rows)?;
    Ok(answers)
}

/// The base model's greedy answers (`tokens` at most) to the locality prompts, for a new run's record.
pub fn locality_baseline(ledger: &mut Ledger, loaded: &Loaded, tokens: usize) -> Result<Vec<LocalityBase>> {
    let tok = &loaded.tokenizer;
    let answers = base_answers_kept(ledger, loaded, &LOCALITY_PROMPTS, tokens)?;
    Ok(LOCALITY_PROMPTS
        .iter()
        .zip(answers)
        .map(|(p, e)| LocalityBase {
            prompt: p.to_string(),
            answer: tok.decode(&e.target.iter().map(|&t| t as u32).collect::<Vec<_>>()),
            prompt_ids: e.prompt,
            answer_ids: e.target,
        })
        .collect())
}

/// The preservation set and null-space projections of `config`, from the (still unedited) base
/// model; their seconds go to `phases`.
fn preservation(
    ledger: &mut Ledger,
    loaded: &Loaded,
    config: &RunConfig,
    phases: &mut FixedPhases,
) -> Result<Option<Preserve>> {
    let t = &config.train;
    if t.preserve <= 0.0 && t.null_space <= 0.0 && t.protect <= 0.0 {
        return Ok(None);
    }
    let mut clock = Clock::start();
    let model = &loaded.model;
    let prompts = preserve_prompts(t.preserve_prompts);
    let ex = base_answers_kept(ledger, loaded, &prompts, config.locality_tokens)?;
    let mut p = Preserve::new(model, &ex, t.preserve_batch);
    phases.preservation = clock.lap();
    let sites: Vec<(usize, Proj)> = adapter_shapes(model, &t.adalora)
        .into_iter()
        .map(|(l, p, _, _)| (l, p))
        .collect();
    if t.protect > 0.0 {
        p.protected = Some(Protected::new(model, &sites, t.protect_mean));
    }
    if t.null_space > 0.0 {
        p.projections = null_space_projections(model, &ex, &sites, t.null_space)?;
        phases.projections = clock.lap();
    }
    Ok(Some(p))
}

/// Prepares the coming steps of `plan`: the preservation targets come from the base weights, so they
/// are made before the committed steps are replayed onto the model.
pub fn prepare(ledger: &mut Ledger, loaded: &Loaded, config: &RunConfig, plan: &Plan) -> Result<Prepared> {
    let mut phases = FixedPhases::default();
    let preserve = preservation(ledger, loaded, config, &mut phases)?;
    let mut clock = Clock::start();
    // Still the base model: one batch of greedy answers for every sampled fact still to inject.
    let pending = plan.groups.iter().flatten().map(|&i| &plan.facts[i]);
    let before = sample_generations(&loaded.model, &loaded.tokenizer, &sampled(plan, pending), -1)?
        .into_iter()
        .map(|g| (g.fact.clone(), g))
        .collect();
    let locality: Vec<Example> = ledger
        .locality_base(&plan.run.id)?
        .into_iter()
        .map(|b| Example {
            prompt: b.prompt_ids,
            target: b.answer_ids,
        })
        .collect();
    // The general check on the base model itself (step -1), the scale for every step's: once per
    // run, here while the weights are still the base's (a run recorded before schema 7 gets it
    // when resumed).
    if ledger.perplexity(&plan.run.id)?.first().is_none_or(|(s, _)| *s != -1) {
        let base = locality_scores(&loaded.model, &locality, config.eval_batch_tokens);
        ledger.set_base_perplexity(&plan.run.id, base.perplexity)?;
    }
    phases.before = clock.lap();
    replay(ledger, &plan.run, loaded, &config.train, None)?;
    phases.replay = clock.lap();
    let mut examples = HashMap::new();
    for f in &plan.facts {
        examples.insert(f.hash.clone(), FactExamples::new(&loaded.tokenizer, f)?);
    }
    phases.tokenize = clock.lap();
    Ok(Prepared {
        preserve,
        examples,
        locality,
        phases,
        before,
    })
}

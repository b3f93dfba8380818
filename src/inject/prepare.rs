//! The second stage of a run, before its first new step: the base model's answers (to the locality
//! prompts for a new run, to the preservation prompts for the KL term), the null-space projections,
//! the committed steps replayed onto the model, and every fact's examples tokenised once.
use super::plan::Plan;
use super::preserve::{null_space_projections, Preserve};
use super::state::replay;
use super::step::adapter_shapes;
use super::Clock;
use crate::config::{Proj, RunConfig};
use crate::error::Result;
use crate::eval::batch::Example;
use crate::eval::locality::{base_answers, LOCALITY_PROMPTS, PRESERVE_PROMPTS};
use crate::eval::probe::FactExamples;
use crate::ledger::{FixedPhases, Ledger, LocalityBase};
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
    /// Seconds of preparing (preservation, projections, replay, tokenize).
    pub phases: FixedPhases,
}

/// The base model's greedy answers (`tokens` at most) to the locality prompts, for a new run's record.
pub fn locality_baseline(loaded: &Loaded, tokens: usize) -> Result<Vec<LocalityBase>> {
    let tok = &loaded.tokenizer;
    let answers = base_answers(&loaded.model, tok, &LOCALITY_PROMPTS, tokens)?;
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
fn preservation(loaded: &Loaded, config: &RunConfig, phases: &mut FixedPhases) -> Result<Option<Preserve>> {
    let t = &config.train;
    if t.preserve <= 0.0 && t.null_space <= 0.0 {
        return Ok(None);
    }
    let mut clock = Clock::start();
    let model = &loaded.model;
    let ex = base_answers(model, &loaded.tokenizer, &PRESERVE_PROMPTS, config.locality_tokens)?;
    let mut p = Preserve::new(model, &ex, t.preserve_batch);
    phases.preservation = clock.lap();
    if t.null_space > 0.0 {
        let sites: Vec<(usize, Proj)> = adapter_shapes(model, &t.adalora)
            .into_iter()
            .map(|(l, p, _, _)| (l, p))
            .collect();
        p.projections = null_space_projections(model, &ex, &sites, t.null_space)?;
        phases.projections = clock.lap();
    }
    Ok(Some(p))
}

/// Prepares the coming steps of `plan`: the preservation targets come from the base weights, so they
/// are made before the committed steps are replayed onto the model.
pub fn prepare(ledger: &Ledger, loaded: &Loaded, config: &RunConfig, plan: &Plan) -> Result<Prepared> {
    let mut phases = FixedPhases::default();
    let preserve = preservation(loaded, config, &mut phases)?;
    let mut clock = Clock::start();
    replay(ledger, &plan.run, loaded, &config.train, None)?;
    phases.replay = clock.lap();
    let mut examples = HashMap::new();
    for f in &plan.facts {
        examples.insert(f.hash.clone(), FactExamples::new(&loaded.tokenizer, f)?);
    }
    let locality = ledger
        .locality_base(&plan.run.id)?
        .into_iter()
        .map(|b| Example {
            prompt: b.prompt_ids,
            target: b.answer_ids,
        })
        .collect();
    phases.tokenize = clock.lap();
    Ok(Prepared {
        preserve,
        examples,
        locality,
        phases,
    })
}

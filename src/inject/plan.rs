//! The first stage of a run: which run this is (found in the ledger by its key, or recorded now), the
//! facts it holds, what its committed steps injected, and how the facts still to inject are grouped
//! into the coming injection steps. No training here; a new run's record includes the base model's
//! answers to the locality prompts, made before any edit.
use super::prepare::locality_baseline;
use super::state::start_weights_hash;
use crate::config::{RunConfig, Strategy};
use crate::error::{Error, Result};
use crate::eval::probe::FactExamples;
use crate::knowledge::{Fact, Knowledge};
use crate::ledger::{Ledger, Rehearsed, RunRow};
use crate::model::Loaded;
use std::collections::HashSet;

/// What a run will do in this invocation.
pub struct Plan {
    pub run: RunRow,
    pub strategy: Strategy,
    /// Every fact of the run, in the order it was added to the run.
    pub facts: Vec<Fact>,
    /// Hashes of the facts injected by the committed steps, in injection order.
    pub injected: Vec<String>,
    /// Committed steps.
    pub done_steps: usize,
    /// The coming injection steps: indices into `facts` of each step's facts.
    pub groups: Vec<Vec<usize>>,
    /// For `repair`: the facts each coming step rehearses, decided before it (one entry per group;
    /// empty when the strategy decides as it goes).
    pub preset: Vec<Vec<Rehearsed>>,
}

impl Plan {
    /// The index the `g`-th coming step will have in the ledger.
    pub fn step_index(&self, g: usize) -> i64 {
        (self.done_steps + g) as i64
    }
}

/// The identity of a run: same model, knowledge directory and config give the same run.
pub fn run_key(model_hash: &str, knowledge_dir: &str, config: &RunConfig) -> String {
    let s = serde_json::json!({"model": model_hash, "knowledge": knowledge_dir, "config": config});
    blake3::hash(s.to_string().as_bytes()).to_hex().to_string()
}

fn canonical_dir(k: &Knowledge) -> String {
    std::fs::canonicalize(&k.dir)
        .unwrap_or_else(|_| k.dir.clone())
        .display()
        .to_string()
}

/// The key of the run of `knowledge` under `config` on the loaded model (see [`run_key`]).
pub fn key_of(loaded: &Loaded, knowledge: &Knowledge, config: &RunConfig) -> String {
    run_key(&loaded.source_hash, &canonical_dir(knowledge), config)
}

/// The run of `knowledge` under `config` on the loaded model: found by its key, or recorded now.
pub fn find_or_record(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    knowledge: &Knowledge,
    config: &RunConfig,
) -> Result<RunRow> {
    let dir = canonical_dir(knowledge);
    let key = key_of(loaded, knowledge, config);
    match ledger.find_run_by_key(&key)? {
        Some(r) => Ok(r),
        None => record_run(ledger, loaded, model_path, knowledge, config, &key, &dir),
    }
}

/// Records a new run: its config, the base weights' hash, the base model's answers to the locality
/// prompts (generated now, before any edit).
fn record_run(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    knowledge: &Knowledge,
    config: &RunConfig,
    key: &str,
    dir: &str,
) -> Result<RunRow> {
    // On a GPU the hash is digested on another thread while the base answers are decoded.
    let hashing = start_weights_hash(&loaded.model, &loaded.source_hash, &config.train)?;
    let base = locality_baseline(ledger, loaded, config.locality_tokens)?;
    let base_hash = hashing.wait()?;
    let row = RunRow {
        id: format!("run-{}", &key[..8]),
        key: key.to_string(),
        // The ledger stamps the time of creation.
        created: String::new(),
        strategy: config.strategy.clone(),
        config: config.to_json(),
        model_path: model_path.to_string(),
        model_hash: loaded.source_hash.clone(),
        knowledge_dir: dir.to_string(),
        knowledge_hash: knowledge.hash(),
        seed: config.seed as i64,
        status: "running".into(),
        base_weights_hash: base_hash.clone(),
        weights_hash: base_hash,
        finished: None,
        merge_on_device: true,
    };
    ledger.create_run(&row, &base)?;
    // The general check's base figure comes with the run's first preparation (`prepare`).
    ledger.set_locality(&row.id, -1, 1.0, None)?;
    ledger.run(&row.id)
}

/// Checks that `run` was made with the loaded model (bad input otherwise).
pub fn check_model(run: &RunRow, loaded: &Loaded, model_path: &str) -> Result<()> {
    if loaded.source_hash == run.model_hash {
        return Ok(());
    }
    Err(Error::BadInput(format!(
        "{model_path}: not the model run {} was made with (hash {} vs {})",
        run.id,
        &loaded.source_hash[..12],
        &run.model_hash[..12]
    )))
}

/// Checks that each fact's longest example — the chat template around a training prompt or probe,
/// with the answer (or the previous answer) and the end-of-turn token — fits the model's positions.
/// Call before any work: a fact that does not fit cannot be trained or scored.
///
/// Errors: bad input `file:line: fact X is N tokens with its template; the model's limit is M`, for
/// the first fact that does not fit (`… has an answer of more than M tokens …` for a field far
/// too long, see [`field_beyond`]); the tokenizer's errors.
pub fn check_fit(facts: &[Fact], loaded: &Loaded) -> Result<()> {
    let limit = loaded.model.cfg.max_position_embeddings;
    let tok = &loaded.tokenizer;
    // A token spans at most this many bytes of text (byte-level and SentencePiece vocabularies
    // spell every byte with at least one byte), so a longer prefix holds more than `limit` tokens.
    let prefix = 2 * (limit + 1) * tok.max_token_bytes().max(1);
    for f in facts {
        if let Some(field) = field_beyond(f, tok, limit, prefix)? {
            return Err(Error::BadInput(format!(
                "{}: fact {} has {field} of more than {limit} tokens; the model's limit is {limit}",
                f.source, f.id
            )));
        }
        let ex = FactExamples::new(&loaded.tokenizer, f)?;
        let longest = ex
            .recall
            .iter()
            .chain(&ex.general)
            .chain(&ex.previous)
            .map(|e| e.len())
            .max();
        if let Some(n) = longest.filter(|&n| n > limit) {
            return Err(Error::BadInput(format!(
                "{}: fact {} is {n} tokens with its template; the model's limit is {limit}",
                f.source, f.id
            )));
        }
    }
    Ok(())
}

/// The first field of `f` longer than `prefix` bytes whose first `prefix` bytes alone are more than
/// `limit` tokens, named for the message (`an answer`, `a prompt`, …). Tokenizing such a field
/// whole — a 5 MB answer, eight prompts around a 1 MB subject — would take minutes and gigabytes
/// to refuse it.
fn field_beyond(f: &Fact, tok: &crate::model::Tokenizer, limit: usize, prefix: usize) -> Result<Option<&'static str>> {
    let fields = f
        .prompts
        .iter()
        .map(|p| ("a prompt", p))
        .chain(f.probes.iter().map(|p| ("a probe", p)))
        .chain([("an answer", &f.answer)])
        .chain(f.previous.iter().map(|p| ("a previous answer", p)));
    for (name, text) in fields.filter(|(_, t)| t.len() > prefix) {
        let mut end = prefix;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if tok.encode(&text[..end])?.len() > limit {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Adds the knowledge's facts to `run` (facts it holds already are kept) and plans the steps that
/// inject the ones no committed step has.
pub fn plan(ledger: &mut Ledger, run: RunRow, knowledge: &Knowledge, config: &RunConfig) -> Result<Plan> {
    let strategy = config.strategy()?;
    ledger.add_facts(&run.id, &knowledge.facts)?;
    let facts = ledger.run_facts(&run.id)?;
    let steps = ledger.steps(&run.id)?;
    let injected: Vec<String> = steps.iter().flat_map(|s| s.facts.iter().cloned()).collect();
    let done: HashSet<&str> = injected.iter().map(String::as_str).collect();
    let pending: Vec<usize> = (0..facts.len())
        .filter(|&i| !done.contains(facts[i].hash.as_str()))
        .collect();
    let groups = strategy
        .groups(pending.len())
        .into_iter()
        .map(|g| g.into_iter().map(|i| pending[i]).collect())
        .collect();
    Ok(Plan {
        run,
        strategy,
        facts,
        injected,
        done_steps: steps.len(),
        groups,
        preset: Vec::new(),
    })
}

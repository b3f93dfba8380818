//! `injector score-answers DIR ANSWERS` (hidden, for checks against other programs): scores free
//! answers that another program decoded — llama.cpp on an exported GGUF (`bench/export_recall.sh`)
//! — by injector's own key-detail recall and token F1, so that both sides are scored by one metric.
//! ANSWERS is JSON, `[{"id": FACT, "recall": [TEXT per training prompt], "general": [TEXT per
//! probe]}]`; the output is `probe --json`'s rows (`id`, `hash`, `free`), without `score`. No model
//! is loaded.
use super::Global;
use clap::Args;
use injector::error::Error;
use injector::eval::free::{FreeAnswer, FreeScore};
use injector::eval::metrics::key_details;
use injector::knowledge::load_dir;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreAnswersArgs {
    /// The knowledge directory (or one YAML file) the answers answer.
    pub dir: PathBuf,
    /// The answers, as JSON (see the command's description).
    pub answers: PathBuf,
}

/// One fact's answers, in the order of its training prompts and of its probes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answers {
    id: String,
    recall: Vec<String>,
    general: Vec<String>,
}

pub fn run(a: ScoreAnswersArgs, _g: &Global) -> anyhow::Result<()> {
    let knowledge = load_dir(&a.dir)?;
    let bad = |why: String| Error::BadInput(format!("{}: {why}", a.answers.display()));
    let text = std::fs::read_to_string(&a.answers).map_err(|e| bad(e.to_string()))?;
    let answers: Vec<Answers> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for given in &answers {
        let f = knowledge
            .facts
            .iter()
            .find(|f| f.id == given.id)
            .ok_or_else(|| bad(format!("no fact '{}' in {}", given.id, a.dir.display())))?;
        if given.recall.len() != f.prompts.len() || given.general.len() != f.probes.len() {
            return Err(bad(format!(
                "fact '{}' has {} prompt(s) and {} probe(s), the answers {} and {}",
                f.id,
                f.prompts.len(),
                f.probes.len(),
                given.recall.len(),
                given.general.len()
            ))
            .into());
        }
        // As `eval::free` scores injector's own greedy answers.
        let details = key_details(&f.answer, &f.subject);
        let scored = |texts: &[String]| -> Vec<FreeAnswer> {
            texts
                .iter()
                .map(|t| FreeAnswer::score(t.clone(), &f.answer, &details))
                .collect()
        };
        let free = FreeScore::new(scored(&given.recall), scored(&given.general));
        rows.push(serde_json::json!({"id": f.id, "hash": f.hash, "free": free}));
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

//! `injector probe DIR [--run RUN]`: score facts on the base model or a run's weights, no training.
use super::Global;
use clap::Args;
use injector::config::RunConfig;
use injector::eval::probe::{score, FactExamples};
use injector::knowledge::load_dir;
use injector::report::num;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The knowledge directory (or one YAML file).
    pub dir: PathBuf,
    /// Score on this run's current weights (default: the base model).
    #[arg(long)]
    pub run: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ProbeArgs, g: &Global) -> anyhow::Result<()> {
    let knowledge = load_dir(&a.dir)?;
    let loaded = super::load_model(g, a.run.as_deref())?;
    injector::inject::plan::check_fit(&knowledge.facts, &loaded)?;
    let ex: Vec<FactExamples> = knowledge
        .facts
        .iter()
        .map(|f| FactExamples::new(&loaded.tokenizer, f))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&FactExamples> = ex.iter().collect();
    let scores = score(&loaded.model, &refs, RunConfig::default().eval_batch_tokens);
    if a.json {
        let rows: Vec<_> = knowledge
            .facts
            .iter()
            .zip(&scores)
            .map(|(f, s)| serde_json::json!({"id": f.id, "hash": f.hash, "score": s}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<28} {:>8} {:>8} {:>8}", "fact", "recall", "general", "previous");
    for (fact, s) in knowledge.facts.iter().zip(&scores) {
        println!(
            "{:<28} {:>8.2} {:>8} {:>8}",
            fact.id,
            s.recall,
            num(s.general),
            num(s.previous)
        );
    }
    Ok(())
}

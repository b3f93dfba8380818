//! `injector probe DIR [--run RUN]`: score facts on the base model or a run's weights, no training:
//! teacher-forced token accuracy and free (greedy) answers' key-detail recall.
use super::Global;
use clap::Args;
use injector::config::RunConfig;
use injector::eval::free::free_score;
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
    let budget = RunConfig::default().eval_batch_tokens;
    let scores = score(&loaded.model, &refs, budget);
    let free = free_score(&loaded.model, &loaded.tokenizer, &refs, budget * 4)?;
    if a.json {
        let rows: Vec<_> = knowledge
            .facts
            .iter()
            .zip(scores.iter().zip(&free))
            .map(|(f, (s, fr))| serde_json::json!({"id": f.id, "hash": f.hash, "score": s, "free": fr}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // Teacher-forced token accuracy, then the free answers' key-detail recall.
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "fact", "recall", "general", "previous", "free", "free-g"
    );
    for (fact, (s, fr)) in knowledge.facts.iter().zip(scores.iter().zip(&free)) {
        println!(
            "{:<28} {:>8.2} {:>8} {:>8} {:>6} {:>6}",
            fact.id,
            s.recall,
            num(s.general),
            num(s.previous),
            num(Some(fr.recall)),
            num(fr.general)
        );
    }
    Ok(())
}

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
    /// Teacher-forced scores only: no greedy answers (they cost a decoding pass per batch of
    /// prompts, which matters on the CPU for thousands of facts).
    #[arg(long)]
    pub no_free_decoding: bool,
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
    let free = if a.no_free_decoding {
        Vec::new()
    } else {
        free_score(&loaded.model, &loaded.tokenizer, &refs, budget * 4)?
    };
    if a.json {
        let rows: Vec<_> = knowledge
            .facts
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(i, (f, s))| serde_json::json!({"id": f.id, "hash": f.hash, "score": s, "free": free.get(i)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // Teacher-forced token accuracy, then the free answers' key-detail recall.
    // `prefers`: for updates, the share of prompts on which the new answer is likelier than the old.
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "fact", "recall", "general", "previous", "prefers", "free", "free-g"
    );
    for (i, (fact, s)) in knowledge.facts.iter().zip(&scores).enumerate() {
        let fr = free.get(i);
        println!(
            "{:<28} {:>8.2} {:>8} {:>8} {:>8} {:>6} {:>6}",
            fact.id,
            s.recall,
            num(s.general),
            num(s.previous),
            num(s.prefers_new),
            num(fr.map(|f| f.recall)),
            num(fr.and_then(|f| f.general))
        );
    }
    Ok(())
}

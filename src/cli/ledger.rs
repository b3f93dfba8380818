//! `injector ledger list | show RUN`: what the ledger holds.
use super::Global;
use clap::{Args, Subcommand};
use injector::config::RunConfig;
use injector::eval::retention::Matrix;
use injector::ledger::Ledger;
use injector::report::num;
use std::collections::HashMap;

#[derive(Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// One line per run.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's config, steps and facts.
    Show {
        /// Run id (or a unique prefix).
        run: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: LedgerArgs, g: &Global) -> anyhow::Result<()> {
    let ledger = Ledger::open_read_only(&g.ledger)?;
    match a.command {
        LedgerCommand::List { json } => {
            let runs = ledger.list_runs()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
                return Ok(());
            }
            println!(
                "{:<14} {:<21} {:<12} {:<9} {:>5} {:>5}  knowledge",
                "run", "created", "strategy", "status", "steps", "facts"
            );
            for r in runs {
                let steps = ledger.steps(&r.id)?;
                let facts: usize = steps.iter().map(|s| s.facts.len()).sum();
                println!(
                    "{:<14} {:<21} {:<12} {:<9} {:>5} {:>5}  {}",
                    r.id,
                    r.created,
                    r.strategy,
                    r.status,
                    steps.len(),
                    facts,
                    r.knowledge_dir
                );
            }
        }
        LedgerCommand::Show { run, json } => {
            let r = ledger.run(&run)?;
            let steps = ledger.steps(&r.id)?;
            let probes = ledger.probes(&r.id)?;
            let locality = ledger.locality(&r.id)?;
            let facts = ledger.run_facts(&r.id)?;
            if json {
                let v = serde_json::json!({
                    "run": r, "config": serde_json::from_str::<serde_json::Value>(&r.config)?,
                    "facts": facts, "steps": steps, "probes": probes, "locality": locality,
                    "perplexity": ledger.perplexity(&r.id)?,
                    "generations": ledger.generations(&r.id)?,
                    "summary": Matrix::new(&steps, &facts, probes.clone()).fact_summaries(&steps),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let ids: HashMap<&str, &str> = facts.iter().map(|f| (f.hash.as_str(), f.id.as_str())).collect();
            println!(
                "run {}  strategy {}  status {}  seed {}",
                r.id, r.strategy, r.status, r.seed
            );
            println!("model {} ({})", r.model_path, &r.model_hash[..12]);
            println!("knowledge {} ({} facts)", r.knowledge_dir, facts.len());
            println!(
                "weights {} (base {})",
                &r.weights_hash[..12],
                &r.base_weights_hash[..12]
            );
            println!("config {}", r.config);
            println!(
                "{:>4}  {:<30} {:>6} {:>9} {:>8} {:>8} {:>9}",
                "step", "facts", "opt", "loss", "train s", "eval s", "locality"
            );
            let loc: HashMap<i64, f64> = locality.into_iter().collect();
            // A step's own facts, then what it rehearsed: a repair's steps have no facts of their
            // own (a repair's, a run's closing one), and a consolidation rehearses every fact of the run.
            let config = RunConfig::from_ledger(&r.config, &r.id).ok();
            let mixed_batch = config.map_or(16, |c| c.mixed_batch);
            for s in &steps {
                let names = |hashes: &[String]| -> String {
                    let v: Vec<&str> = hashes
                        .iter()
                        .map(|h| ids.get(h.as_str()).copied().unwrap_or("?"))
                        .collect();
                    v.join(",")
                };
                let n = s.rehearsed.len();
                let consolidation = s.consolidation.is_some() || (s.facts.is_empty() && n > mixed_batch);
                let mut label = match (s.facts.is_empty(), n) {
                    (true, _) if consolidation => format!("consolidation of {n} facts"),
                    (true, _) => format!("rehearsal of {}", names(&s.rehearsed)),
                    (false, 0) => names(&s.facts),
                    (false, _) => format!("{} +{n} rehearsed", names(&s.facts)),
                };
                if label.chars().count() > 30 {
                    label = label.chars().take(29).collect::<String>() + "…";
                }
                println!(
                    "{:>4}  {:<30} {:>6} {:>9.4} {:>8.1} {:>8.1} {:>9}",
                    s.idx,
                    label,
                    s.optimizer_steps,
                    s.losses.last().copied().unwrap_or(f64::NAN),
                    s.seconds,
                    s.eval_seconds,
                    loc.get(&s.idx).map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
                );
            }
            if let Some(last) = steps.last() {
                println!(
                    "facts, at their latest measurement (after step {} unless said):",
                    last.idx
                );
                println!(
                    "{:<28} {:>4} {:>11} {:>8} {:>8} {:>6} {:>6} {:>8}",
                    "fact", "step", "recall@step", "recall", "general", "free", "free-g", "previous"
                );
                let matrix = Matrix::new(&steps, &facts, probes);
                for f in matrix.fact_summaries(&steps) {
                    let at = if f.measured_at == last.idx {
                        String::new()
                    } else {
                        format!("  (after step {})", f.measured_at)
                    };
                    println!(
                        "{:<28} {:>4} {:>11} {:>8} {:>8} {:>6} {:>6} {:>8}{at}",
                        f.id,
                        f.step,
                        num(Some(f.recall_at_step)),
                        num(Some(f.recall)),
                        num(f.general),
                        num(f.free_recall),
                        num(f.free_general),
                        num(f.previous)
                    );
                }
            }
        }
    }
    Ok(())
}

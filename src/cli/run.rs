//! `injector run DIR`: inject every fact of a knowledge directory, resuming where the ledger stops.
use super::progress::Bar;
use super::train_args::TrainArgs;
use super::Global;
use clap::Args;
use injector::inject::{self, RunConfig, RunOutcome, Strategy};
use injector::knowledge::load_dir;
use injector::ledger::Ledger;
use injector::Error;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The knowledge directory (or one YAML file). Optional with --resume.
    pub dir: Option<PathBuf>,
    /// sequential, batch:K, mixed or replay:K.
    #[arg(long, default_value = "sequential")]
    pub strategy: String,
    /// Continue this run with the config it recorded (the same command again does the same).
    #[arg(long)]
    pub resume: Option<String>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The whole run configuration as JSON (used by `compare` for its child processes).
    #[arg(long, hide = true)]
    pub config_json: Option<String>,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(a: RunArgs, g: &Global) -> anyhow::Result<()> {
    // Everything the user typed is checked before the ledger is opened or a model loaded.
    let (dir, config, model_path) = match &a.resume {
        Some(id) => {
            let ledger = Ledger::open_existing(&g.ledger)?;
            let r = ledger.run(id)?;
            let config: RunConfig = serde_json::from_str(&r.config)?;
            let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&r.knowledge_dir));
            (
                dir,
                config,
                g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path)),
            )
        }
        None => {
            let dir = a
                .dir
                .clone()
                .ok_or_else(|| Error::BadInput("give a knowledge directory (or --resume RUN)".into()))?;
            let config = match &a.config_json {
                Some(j) => serde_json::from_str(j).map_err(|e| Error::BadInput(format!("--config-json: {e}")))?,
                None => a.train.run_config(a.strategy.parse::<Strategy>()?, g.seed)?,
            };
            (dir, config, g.model_path())
        }
    };
    let knowledge = load_dir(&dir)?;
    let device = injector::device::parse_device(&g.device)?;
    let loaded = injector::model::load(&model_path, device)?;
    let mut ledger = Ledger::open(&g.ledger)?;
    let mut bar = Bar::new(g.quiet || a.json);
    let out = inject::run(
        &mut ledger,
        &loaded,
        &model_path.display().to_string(),
        &knowledge,
        &config,
        &mut bar,
    )?;
    let page = injector::report::write_run(&ledger, &g.reports, &out.run)?;
    injector::report::write_index(&ledger, &g.reports)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !g.quiet {
        print_summary(&out);
        println!("report: {}", page.display());
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// The one-screen summary: per fact recall / generalisation / seconds, then the run's totals.
pub fn print_summary(o: &RunOutcome) {
    if o.new_steps == 0 {
        println!(
            "{}: up to date ({} steps already in the ledger); nothing to do",
            o.run, o.total_steps
        );
    }
    println!(
        "{:<28} {:>4} {:>10} {:>8} {:>8} {:>8}",
        "fact", "step", "recall@step", "recall", "general", "seconds"
    );
    for f in &o.facts {
        println!(
            "{:<28} {:>4} {:>10.2} {:>8.2} {:>8} {:>8.1}",
            truncate(&f.id, 28),
            f.step,
            f.recall_at_step,
            f.recall,
            opt(f.general),
            f.seconds
        );
    }
    let mean = |get: &dyn Fn(&inject::driver::FactSummary) -> Option<f64>| {
        let v: Vec<f64> = o.facts.iter().filter_map(get).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    println!(
        "{} ({}): {} facts, {} steps; mean recall {} generalisation {} locality {}; {:.0}s; weights {}",
        o.run,
        o.strategy,
        o.facts.len(),
        o.total_steps,
        opt(mean(&|f| Some(f.recall))),
        opt(mean(&|f| f.general)),
        opt(o.locality),
        o.seconds,
        &o.weights_hash[..12]
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

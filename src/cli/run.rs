//! `injector run DIR`: inject every fact of a knowledge directory, resuming where the ledger stops.
use super::progress::Bar;
use super::train_args::TrainArgs;
use super::Global;
use clap::Args;
use injector::config::{RunConfig, Strategy};
use injector::inject::{self, RunOutcome};
use injector::knowledge::load_dir;
use injector::ledger::Ledger;
use injector::report::num;
use injector::Error;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The knowledge directory (or one YAML file). Optional with --resume.
    pub dir: Option<PathBuf>,
    /// sequential (the default), batch:K, mixed, replay:K (K random earlier facts rehearsed a step)
    /// or spaced:K (up to K earlier facts rehearsed a step, chosen by retention).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Continue this run with the config it recorded, on the facts of DIR (default: the folder it was
    /// made from); facts it has injected are skipped. The same command again does the same. Flags
    /// that would change the config (--strategy, --seed, the training flags) are refused.
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
    let device = injector::device::parse_device(&g.device)?;
    g.check_outputs()?;
    let flag = g.chat_template.as_deref();
    // The flags that make a config; --resume and --config-json take a whole config instead.
    let mut given = a.train.given();
    if a.strategy.is_some() {
        given.insert(0, "--strategy");
    }
    if g.seed.is_some() {
        given.push("--seed");
    }
    if a.config_json.is_some() && (a.resume.is_some() || !given.is_empty()) {
        let mut also = given.clone();
        if a.resume.is_some() {
            also.insert(0, "--resume");
        }
        return Err(Error::BadInput(format!(
            "{}: --config-json carries the run's whole config; give it alone",
            also.join(", ")
        ))
        .into());
    }
    let (resumed, config, dir, model_path, template) = match &a.resume {
        Some(id) => {
            if !given.is_empty() {
                return Err(Error::BadInput(format!(
                    "{}: --resume {id} continues the run with the config it recorded (`ledger show {id}`); \
                     to train with other settings, start a new run without --resume",
                    given.join(", ")
                ))
                .into());
            }
            let r = Ledger::open_read_only(&g.ledger)?.run(id)?;
            // The recorded config goes through the same validation as flags before anything loads.
            let config = RunConfig::from_json(&r.config, &format!("run {}'s config in the ledger", r.id))?;
            let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&r.knowledge_dir));
            let model = g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path));
            let template = config
                .recorded_chat_template(flag, &format!("run {}", r.id))?
                .map(str::to_string);
            (Some(r), config, dir, model, template)
        }
        None => {
            let dir = a
                .dir
                .clone()
                .ok_or_else(|| Error::BadInput("give a knowledge directory (or --resume RUN)".into()))?;
            let config = match &a.config_json {
                Some(j) => {
                    let mut c = RunConfig::from_json(j, "--config-json")?;
                    c.drop_unused();
                    c.recorded_chat_template(flag, "--config-json")?;
                    c.recorded_base_dtype(&g.base_dtype, device, "--config-json")?;
                    c
                }
                None => {
                    let strategy = a.strategy.as_deref().map(str::parse::<Strategy>).transpose()?;
                    let mut c = a.train.run_config(strategy, g.seed)?;
                    c.set_chat_template(flag);
                    c.base_dtype = injector::model::dtype_to_record(&g.base_dtype, device)?;
                    c.validate()?;
                    c
                }
            };
            // The flag as given: `default` names no template of a model that has none.
            let template = flag.map(str::to_string).or_else(|| config.chat_template.clone());
            (None, config, dir, g.model_path(), template)
        }
    };
    let what = resumed
        .as_ref()
        .map_or("--config-json".to_string(), |r| format!("run {}", r.id));
    let dtype = config.recorded_base_dtype(&g.base_dtype, device, &what)?;
    let knowledge = load_dir(&dir)?;
    tracing::debug!("loading {} onto {device:?} ({dtype})", model_path.display());
    let loaded = g.load(&model_path, device, &dtype, template.as_deref())?;
    tracing::debug!("model loaded");
    if let Some(r) = &resumed {
        inject::plan::check_model(r, &loaded, &model_path.display().to_string())?;
    }
    config.check_layers(loaded.model.cfg.num_hidden_layers)?;
    inject::plan::check_fit(&knowledge.facts, &loaded)?;
    let mut ledger = Ledger::open(&g.ledger)?;
    let mut bar = Bar::new(g.quiet, a.json);
    let path = model_path.display().to_string();
    let out = match resumed {
        Some(r) => inject::resume(&mut ledger, &loaded, &path, r, &knowledge, &mut bar)?,
        None => inject::run(&mut ledger, &loaded, &path, &knowledge, &config, &mut bar)?,
    };
    tracing::debug!("run finished; writing the reports");
    let page = injector::report::write_run(&ledger, &g.reports, &out.run)?;
    injector::report::write_index(&ledger, &g.reports)?;
    tracing::debug!("reports written");
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !g.quiet {
        print_summary(&out);
        println!("report: {}", page.display());
    }
    Ok(())
}

/// The one-screen summary: per fact recall / generalisation / seconds, then the run's totals.
pub fn print_summary(o: &RunOutcome) {
    if o.new_steps == 0 {
        println!(
            "{}: up to date ({} steps already in the ledger); nothing to do",
            o.run, o.total_steps
        );
    }
    // Teacher-forced token accuracy, then the free (greedy) answers' key-detail recall.
    println!(
        "{:<28} {:>4} {:>11} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "fact", "step", "recall@step", "recall", "general", "free", "free-g", "seconds"
    );
    for f in &o.facts {
        println!(
            "{:<28} {:>4} {:>11} {:>7} {:>7} {:>7} {:>7} {:>8.1}",
            truncate(&f.id, 28),
            f.step,
            num(Some(f.recall_at_step)),
            num(Some(f.recall)),
            num(f.general),
            num(f.free_recall),
            num(f.free_general),
            f.seconds
        );
    }
    let m = &o.means;
    println!(
        "{} ({}): {} facts, {} steps; mean recall {} generalisation {} (free {} / {}) locality {} perplexity {} (base {}); {:.0}s; weights {}",
        o.run,
        o.strategy,
        o.facts.len(),
        o.total_steps,
        num(m.recall),
        num(m.general),
        num(m.free_recall),
        num(m.free_general),
        num(o.locality),
        o.perplexity.map_or("-".into(), |p| format!("{p:.2}")),
        o.base_perplexity.map_or("-".into(), |p| format!("{p:.2}")),
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

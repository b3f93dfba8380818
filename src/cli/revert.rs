//! `injector revert RUN --to-step N`: take a run back to its weights after step N, exactly (issue
//! #13): the weights are rebuilt and their hash checked against the one recorded after N before the
//! ledger changes; the later steps are kept in the ledger's revert record, and the run can go on.
use super::Global;
use clap::Args;
use injector::config::RunConfig;
use injector::ledger::Ledger;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The run to take back.
    pub run: String,
    /// The step whose weights the run keeps (-1: the base model).
    #[arg(long, allow_hyphen_values = true)]
    pub to_step: i64,
    /// Print the revert as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RevertArgs, g: &Global) -> anyhow::Result<()> {
    let device = injector::device::parse_device(&g.device)?;
    g.check_outputs()?;
    let r = Ledger::open_read_only(&g.ledger)?.run(&a.run)?;
    Ledger::open_read_only(&g.ledger)?.check_revert(&r, a.to_step)?;
    // The weights after the step, rebuilt and checked against the ledger before anything changes.
    let config = RunConfig::from_ledger(&r.config, &r.id)?;
    let path = g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path));
    let template = config.recorded_chat_template(g.chat_template.as_deref(), &format!("run {}", r.id))?;
    let dtype = config.recorded_base_dtype(&g.base_dtype, device, &format!("run {}", r.id))?;
    let loaded = g.load(&path, device, &dtype, template)?;
    injector::inject::plan::check_model(&r, &loaded, &path.display().to_string())?;
    let ledger = Ledger::open(&g.ledger)?;
    // Not while another process trains the run: its next commit would follow the steps taken back.
    let _lock = ledger.lock_run(&r.key)?;
    ledger.check_revert(&r, a.to_step)?;
    injector::inject::state::replay(&ledger, &r, &loaded, &config.train, Some(a.to_step))?;
    let mut ledger = ledger;
    let rev = ledger.revert(&r.id, a.to_step)?;
    injector::report::write_run(&ledger, &g.reports, &r.id)?;
    injector::report::write_index(&ledger, &g.reports)?;
    if a.json {
        let out = serde_json::json!({
            "run": rev.run, "revert": rev.idx, "to_step": rev.to_step, "weights_hash": rev.weights_hash,
            "steps_taken_back": rev.steps.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !g.quiet {
        println!(
            "{}: back to the weights after step {} ({}…); {} later steps taken back and kept in the ledger; \
             `injector run` on its facts goes on from there",
            rev.run,
            rev.to_step,
            &rev.weights_hash[..12],
            rev.steps.len()
        );
    }
    Ok(())
}

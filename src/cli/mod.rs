//! Command-line surface: global options and one module per subcommand.
pub mod chat;
pub mod compare;
pub mod export;
pub mod facts;
pub mod ledger;
pub mod logits;
pub mod probe;
mod progress;
pub mod query;
pub mod repair;
pub mod report;
pub mod revert;
pub mod run;
pub mod score_answers;
mod train_args;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Inject facts into a language model and treat it as a knowledge store.
#[derive(Parser, Debug)]
#[command(name = "injector", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Model: a .gguf file or a Hugging Face folder (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// The base weights' type: auto (bf16 on a GPU and on a CPU with AVX512-BF16; on this project's
    /// AMX machine training runs 1.7-2.6x faster than in f32; f32 on other CPUs), f32 (CPU only) or
    /// bf16. A run is resumed, replayed and reverted with the type it was made with.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "f32", "bf16"])]
    pub base_dtype: String,
    /// The SQLite ledger of runs.
    #[arg(long, global = true, default_value = "injector.db")]
    pub ledger: PathBuf,
    /// Where HTML reports are written.
    #[arg(long, global = true, default_value = "reports")]
    pub reports: PathBuf,
    /// The chat template to render prompts with, by name, for a checkpoint that ships several
    /// (default: the one named `default`). A run records it: `--resume`, `repair`, `revert` and
    /// `--run` use the run's own.
    #[arg(long, global = true, value_name = "NAME")]
    pub chat_template: Option<String>,
    /// Random seed for everything that samples (default: the run config's, 0).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    /// Checks that `--ledger` and `--reports` can be written, and that an existing `--ledger` is an
    /// injector ledger, for the commands that write both: before any model loads, so a wrong path
    /// costs nothing.
    ///
    /// Errors: bad input naming the path (see [`injector::paths::check_file_writable`]).
    pub fn check_outputs(&self) -> injector::Result<()> {
        injector::paths::check_file_writable(&self.ledger, "--ledger")?;
        injector::ledger::Ledger::check(&self.ledger)?;
        injector::paths::check_dir_writable(&self.reports, "--reports")
    }

    /// Loads the checkpoint at `path` onto `device` with base weights of `dtype` (`--base-dtype`, or
    /// a run's recorded type) and the chat template `template`. Errors: as
    /// [`injector::model::load_as`]; a type the device lacks.
    pub fn load(
        &self,
        path: &std::path::Path,
        device: tch::Device,
        dtype: &str,
        template: Option<&str>,
    ) -> injector::Result<injector::model::Loaded> {
        let kind = injector::model::parse_dtype(dtype, device)?;
        injector::model::load_as(path, device, kind, template)
    }

    /// The model path, defaulting to the embedded model.
    pub fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(injector::paths::default_model)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inject every fact of a knowledge directory (resumes where the ledger stops).
    Run(run::RunArgs),
    /// Ask the model (or a run's current weights) a question and stream its answer.
    Query(query::QueryArgs),
    /// Chat with the model (or a run's current weights) in the terminal: history, /reset, Ctrl-D.
    Chat(chat::ChatArgs),
    /// Score facts on the base model or a run's weights, without training.
    Probe(probe::ProbeArgs),
    /// What the ledger holds.
    Ledger(ledger::LedgerArgs),
    /// Re-inject a run's facts that fell below the threshold, as new steps that rehearse them (with
    /// --consolidate, all its facts in one step of epochs).
    Repair(repair::RepairArgs),
    /// Take a run back to its exact weights after a step; the later steps are kept in the ledger.
    Revert(revert::RevertArgs),
    /// Run several strategies on the same facts and write the comparison report.
    Compare(compare::CompareArgs),
    /// (Re)render the HTML reports from the ledger alone.
    Report(report::ReportArgs),
    /// Knowledge-file tools (`facts generate`, `facts resolve`).
    Facts(facts::FactsArgs),
    /// Write a run's weights (after any step) as a folder other programs load (`--format hf|gguf`).
    Export(export::ExportArgs),
    /// Debugging: the model's logits on a prompt, as JSON (for comparisons with other programs).
    #[command(hide = true)]
    Logits(logits::LogitsArgs),
    /// Checks: free answers another program decoded, scored as `probe` scores injector's (JSON).
    #[command(hide = true)]
    ScoreAnswers(score_answers::ScoreAnswersArgs),
}

/// Loads the model: the base (`--model` or the embedded one), or a run's current weights when `run`
/// is given (its recorded model, replayed from the ledger's stored deltas).
pub fn load_model(g: &Global, run: Option<&str>) -> anyhow::Result<injector::model::Loaded> {
    let device = injector::device::parse_device(&g.device)?;
    let Some(id) = run else {
        let template = g.chat_template.as_deref();
        return Ok(g.load(&g.model_path(), device, &g.base_dtype, template)?);
    };
    let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
    let r = ledger.run(id)?;
    load_run_at(g, &ledger, &r, None)
}

/// The step to stop after, checked against the run's `n` committed steps, for [`load_run_at`]:
/// `None` asks for the last one (`None` back when the run has none: nothing to apply), -1 for the
/// base weights (`Some(-1)`: no step applied).
///
/// Errors: bad input for a step the run does not have.
pub fn resolve_step(step: Option<i64>, n: usize, run: &str) -> injector::Result<Option<i64>> {
    match step {
        None => Ok(n.checked_sub(1).map(|s| s as i64)),
        Some(-1) => Ok(Some(-1)),
        Some(s) if s >= 0 && (s as usize) < n => Ok(Some(s)),
        Some(s) => Err(injector::Error::BadInput(format!(
            "--step {s}: run {run} has {n} step(s), numbered 0 to {} (-1: the base weights)",
            n as i64 - 1
        ))),
    }
}

/// Loads the model run `r` was made with (`--model`, else the recorded path) with the chat template it
/// recorded, and replays its committed steps up to `upto` (all when `None`, none when -1), checking
/// the recorded weights hash.
pub fn load_run_at(
    g: &Global,
    ledger: &injector::ledger::Ledger,
    r: &injector::ledger::RunRow,
    upto: Option<i64>,
) -> anyhow::Result<injector::model::Loaded> {
    let device = injector::device::parse_device(&g.device)?;
    let config = injector::config::RunConfig::from_ledger(&r.config, &r.id)?;
    let path = g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path));
    let template = config.recorded_chat_template(g.chat_template.as_deref(), &format!("run {}", r.id))?;
    let dtype = config.recorded_base_dtype(&g.base_dtype, device, &format!("run {}", r.id))?;
    let loaded = g.load(&path, device, &dtype, template)?;
    injector::inject::plan::check_model(r, &loaded, &path.display().to_string())?;
    injector::inject::state::replay(ledger, r, &loaded, &config.train, upto)?;
    Ok(loaded)
}

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let ledger = cli.global.ledger.clone();
    let out = match cli.command {
        Command::Run(a) => run::run(a, &cli.global),
        Command::Query(a) => query::run(a, &cli.global),
        Command::Chat(a) => chat::run(a, &cli.global),
        Command::Probe(a) => probe::run(a, &cli.global),
        Command::Ledger(a) => ledger::run(a, &cli.global),
        Command::Repair(a) => repair::run(a, &cli.global),
        Command::Revert(a) => revert::run(a, &cli.global),
        Command::Compare(a) => compare::run(a, &cli.global),
        Command::Report(a) => report::run(a, &cli.global),
        Command::Facts(a) => facts::run(a, &cli.global),
        Command::Export(a) => export::run(a, &cli.global),
        Command::Logits(a) => logits::run(a, &cli.global),
        Command::ScoreAnswers(a) => score_answers::run(a, &cli.global),
    };
    out.map_err(|e| name_full_ledger(name_unreadable_rows(e, &ledger), &ledger))
}

/// A ledger write that fails for want of space (SQLite's "database or disk is full") names the
/// ledger, as every other write that fails names its file; it is the run's failure (exit 1).
fn name_full_ledger(e: anyhow::Error, ledger: &std::path::Path) -> anyhow::Error {
    let full = |s: &rusqlite::Error| s.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
    let is_full = e.chain().any(|c| match c.downcast_ref::<injector::Error>() {
        Some(injector::Error::Sqlite(s)) => full(s),
        _ => c.downcast_ref::<rusqlite::Error>().is_some_and(full),
    });
    if !is_full {
        return e;
    }
    injector::Error::Write {
        path: ledger.to_path_buf(),
        msg: format!("cannot write: the disk is full ({e})"),
    }
    .into()
}

/// A ledger row that does not read back (hand-edited JSON, a value of another type) is the
/// ledger's fault, not the command's: the error names the file and is bad input (exit 2), like a
/// damaged page (which is caught when the ledger opens; a row only when it is read).
fn name_unreadable_rows(e: anyhow::Error, ledger: &std::path::Path) -> anyhow::Error {
    use rusqlite::Error as Sql;
    let row = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<injector::Error>(),
            Some(injector::Error::Sqlite(
                Sql::FromSqlConversionFailure(..) | Sql::InvalidColumnType(..) | Sql::IntegralValueOutOfRange(..)
            ))
        )
    });
    if !row {
        return e;
    }
    injector::Error::BadInput(format!(
        "{}: the ledger holds a row that cannot be read ({})",
        ledger.display(),
        format!("{e:#}").replace('\n', " ")
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_resolve_to_the_last_or_the_base_or_are_refused() {
        assert_eq!(resolve_step(None, 3, "r").unwrap(), Some(2));
        assert_eq!(resolve_step(None, 0, "r").unwrap(), None);
        assert_eq!(resolve_step(Some(0), 3, "r").unwrap(), Some(0));
        assert_eq!(resolve_step(Some(-1), 3, "r").unwrap(), Some(-1));
        assert_eq!(resolve_step(Some(-1), 0, "r").unwrap(), Some(-1));
        assert!(resolve_step(Some(3), 3, "r").unwrap_err().is_bad_input());
        assert!(resolve_step(Some(-2), 3, "r").unwrap_err().is_bad_input());
    }
}

//! `injector export RUN [--step N] --out DIR [--format hf|gguf] [--dtype TYPE]`: a run's weights
//! after step N (default its last), rebuilt from the ledger as `query --run` rebuilds them and
//! checked against the recorded weights hash, written as a folder other programs load.
use super::Global;
use clap::Args;
use injector::export::{self, Target};
use injector::Error;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run whose weights to export (an id or a unique prefix of one).
    pub run: String,
    /// Export the weights after this step (0-based, as `ledger show` numbers them; default: the
    /// run's last).
    #[arg(long)]
    pub step: Option<i64>,
    /// The folder to write; it must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// What to write: hf (a Hugging Face folder: config.json, model.safetensors, tokenizer files)
    /// or gguf (a folder with model.gguf for llama.cpp, tokenizer and chat template inside).
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// The type the weights are stored in. hf: f32 (default), bf16, f16. gguf: f16 (default),
    /// bf16, f32, q8_0, q4_1 (norms stay f32).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// The step to stop after, checked against the run's `n` committed steps: `None` is the last one
/// (or none when the run has none).
///
/// Errors: bad input for a step the run does not have.
fn resolve_step(step: Option<i64>, n: usize, run: &str) -> injector::Result<Option<i64>> {
    match step {
        None => Ok(n.checked_sub(1).map(|s| s as i64)),
        Some(s) if s >= 0 && (s as usize) < n => Ok(Some(s)),
        Some(s) => Err(Error::BadInput(format!(
            "--step {s}: run {run} has {n} step(s), numbered 0 to {}",
            n as i64 - 1
        ))),
    }
}

pub fn run(a: ExportArgs, g: &Global) -> anyhow::Result<()> {
    let target = Target::parse(&a.format, a.dtype.as_deref())?;
    export::check_out_dir(&a.out)?;
    let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
    let r = ledger.run(&a.run)?;
    let steps = ledger.steps(&r.id)?.len();
    let upto = resolve_step(a.step, steps, &r.id)?;
    let loaded = super::load_run_at(g, &ledger, &r, upto)?;
    let applied = upto.map_or(0, |s| s + 1);
    let bytes = export::export(&loaded, &a.out, target)?;
    eprintln!(
        "exported run {} after {applied} step(s) to {} ({:.1} MB, {})",
        r.id,
        a.out.display(),
        bytes as f64 / 1e6,
        target.dtype_name()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_resolve_to_the_last_or_are_refused() {
        assert_eq!(resolve_step(None, 3, "r").unwrap(), Some(2));
        assert_eq!(resolve_step(None, 0, "r").unwrap(), None);
        assert_eq!(resolve_step(Some(0), 3, "r").unwrap(), Some(0));
        assert!(resolve_step(Some(3), 3, "r").unwrap_err().is_bad_input());
        assert!(resolve_step(Some(-1), 3, "r").unwrap_err().is_bad_input());
    }
}

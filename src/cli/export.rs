//! `injector export RUN [--step N] --out DIR [--format hf|gguf] [--dtype TYPE] [--adapters]`: a
//! run's weights after step N (default its last), rebuilt from the ledger as `query --run` rebuilds
//! them and checked against the recorded weights hash, written as a folder other programs load;
//! with `--adapters`, each step's adapter up to N in peft's AdaLoRA format beside them.
use super::Global;
use clap::Args;
use injector::export::{self, adapters, Target};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run whose weights to export (an id or a unique prefix of one).
    pub run: String,
    /// Export the weights after this step (0-based, as `ledger show` numbers them; -1: the base
    /// weights; default: the run's last).
    #[arg(long, allow_negative_numbers = true)]
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
    /// Also write the adapter of every step up to the exported one in peft's AdaLoRA format, as
    /// DIR/adapters/step-<N>/ (adapter_config.json, adapter_model.safetensors; always f32).
    #[arg(long)]
    pub adapters: bool,
}

pub fn run(a: ExportArgs, g: &Global) -> anyhow::Result<()> {
    let target = Target::parse(&a.format, a.dtype.as_deref())?;
    export::check_out_dir(&a.out)?;
    let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
    let r = ledger.run(&a.run)?;
    let steps = ledger.steps(&r.id)?.len();
    let upto = super::resolve_step(a.step, steps, &r.id)?;
    let loaded = super::load_run_at(g, &ledger, &r, upto)?;
    let applied = upto.map_or(0, |s| s + 1);
    let source = a.adapters.then(|| adapter_source(&ledger, &r, g, upto)).transpose()?;
    let bytes = export::export(&loaded, &a.out, target, source.as_ref())?;
    let with = source.map_or(String::new(), |s| {
        format!(
            " and {} adapter(s) under {}",
            s.steps.len(),
            a.out.join("adapters").display()
        )
    });
    eprintln!(
        "exported run {} after {applied} step(s) to {} ({:.1} MB, {}){with}",
        r.id,
        a.out.display(),
        bytes as f64 / 1e6,
        target.dtype_name()
    );
    Ok(())
}

/// The steps of run `r` up to `upto` (none when `None`) with the run's AdaLoRA settings, for
/// `--adapters`.
fn adapter_source(
    ledger: &injector::ledger::Ledger,
    r: &injector::ledger::RunRow,
    g: &Global,
    upto: Option<i64>,
) -> anyhow::Result<adapters::Source> {
    let config = injector::config::RunConfig::from_ledger(&r.config, &r.id)?;
    let steps = ledger
        .steps(&r.id)?
        .into_iter()
        .filter(|s| upto.is_some_and(|u| s.idx <= u))
        .map(|s| (s.idx, s.delta_file))
        .collect();
    let base = g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path));
    Ok(adapters::Source {
        run: r.id.clone(),
        settings: adapters::Settings {
            adalora: config.train.adalora,
            total_step: config.train.max_steps,
            base_model: base.display().to_string(),
        },
        deltas: ledger.deltas_dir(),
        steps,
    })
}

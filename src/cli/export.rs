//! `injector export RUN [--step N] --out DIR [--format hf|gguf] [--dtype TYPE] [--adapters]`: a
//! run's weights after step N (default its last), rebuilt from the ledger as `query --run` rebuilds
//! them and checked against the recorded weights hash, written as a folder other programs load;
//! with `--adapters`, each step's adapter up to N in peft's AdaLoRA format beside them.
use super::Global;
use clap::Args;
use injector::export::{self, adapters, GgufType, Target};
use injector::model::quant::GgmlType;
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
    /// gguf: store the weights the run changed in this type (q8_0, f16, bf16, f32, q4_1), the rest
    /// in --dtype. `--dtype q4_1 --trained-dtype q8_0` keeps a run's facts, which q4_1 alone rounds
    /// away (on the embedded model: 133 MB, against 98 MB for q4_1 and 145 MB for q8_0).
    #[arg(long, value_name = "TYPE")]
    pub trained_dtype: Option<String>,
    /// gguf, when the weights the run changed are stored as q8_0 or q4_1: round them
    /// stochastically on the grid the base weights take, not to nearest (which gives back the base
    /// weight wherever the run moved it by less than half a step): an update within a block's range
    /// survives on average, in a file no larger, with noise that costs locality. The base blocks'
    /// scales are kept, so what leaves a block's range is clamped to it (a tiny run's large update
    /// keeps 0.73 of itself this way; tests/export_gguf.rs). Draws seeded by --seed (default 0).
    #[arg(long)]
    pub stochastic_rounding: bool,
    /// Also write the adapter of every step up to the exported one in peft's AdaLoRA format, as
    /// DIR/adapters/step-<N>/ (adapter_config.json, adapter_model.safetensors; always f32).
    #[arg(long)]
    pub adapters: bool,
}

pub fn run(a: ExportArgs, g: &Global) -> anyhow::Result<()> {
    let target = Target::parse(&a.format, a.dtype.as_deref())?;
    let trained_ty = trained_type(&a, target)?;
    export::check_out_dir(&a.out)?;
    let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
    let r = ledger.run(&a.run)?;
    let steps = ledger.steps(&r.id)?.len();
    let upto = super::resolve_step(a.step, steps, &r.id)?;
    let loaded = super::load_run_at(g, &ledger, &r, upto)?;
    let applied = upto.map_or(0, |s| s + 1);
    let source = a.adapters.then(|| adapter_source(&ledger, &r, g, upto)).transpose()?;
    let base = if a.stochastic_rounding {
        Some(super::load_run_at(g, &ledger, &r, Some(-1))?)
    } else {
        None
    };
    let trained = if a.trained_dtype.is_some() || a.stochastic_rounding {
        Some(export::gguf::Trained {
            names: trained_names(&ledger, &r, upto)?,
            ty: trained_ty,
            base: base.as_ref().map(|b| (&b.model, g.seed.unwrap_or(0))),
        })
    } else {
        None
    };
    if target == Target::Gguf(GgufType::Q4_1) && trained.is_none() && applied > 0 {
        tracing::warn!(
            "q4_1 rounds each weight to nearest, which gives back the base weight wherever the run moved \
             it by less than half a step: on the embedded model a run's facts come out at the base \
             model's recall. --trained-dtype q8_0 keeps them (README, Export)"
        );
    }
    let bytes = export::export(&loaded, &a.out, target, trained.as_ref(), source.as_ref())?;
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

/// The type `--trained-dtype` asks for, checked with `--stochastic-rounding` against the target.
///
/// Errors: bad input naming the flag — either flag with `--format hf`, an unknown type, or
/// `--stochastic-rounding` where the changed weights are stored as a float type (which has no grid
/// to round on, and rounds far below any update).
fn trained_type(a: &ExportArgs, target: Target) -> injector::Result<Option<GgmlType>> {
    let bad = |m: String| injector::Error::BadInput(m);
    let file = match target {
        Target::Gguf(t) => t,
        Target::Hf(_) if a.trained_dtype.is_some() => {
            return Err(bad("--trained-dtype: only with --format gguf".into()))
        }
        Target::Hf(_) if a.stochastic_rounding => {
            return Err(bad("--stochastic-rounding: only with --format gguf".into()))
        }
        Target::Hf(_) => return Ok(None),
    };
    let ty = match a.trained_dtype.as_deref() {
        Some(t) => Some(GgufType::parse(t).map_err(|_| {
            bad(format!(
                "--trained-dtype: unknown type '{t}' (supported: q8_0, f16, bf16, f32, q4_1)"
            ))
        })?),
        None => None,
    };
    let stored = ty.unwrap_or(file);
    if a.stochastic_rounding && !matches!(stored, GgufType::Q8_0 | GgufType::Q4_1) {
        return Err(bad(format!(
            "--stochastic-rounding: the changed weights are stored as {}; it needs q8_0 or q4_1",
            stored.name()
        )));
    }
    Ok(ty.map(GgufType::matrix_type))
}

/// The Hugging Face names of the weights that run `r`'s steps up to `upto` changed (the keys of
/// their stored factors).
fn trained_names(
    ledger: &injector::ledger::Ledger,
    r: &injector::ledger::RunRow,
    upto: Option<i64>,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut names = std::collections::HashSet::new();
    for s in ledger
        .steps(&r.id)?
        .into_iter()
        .filter(|s| upto.is_some_and(|u| s.idx <= u))
    {
        for f in injector::adapter::merge::load(&ledger.deltas_dir(), &s.delta_file)? {
            names.insert(f.key);
        }
    }
    Ok(names)
}

//! `injector repair RUN`: score every fact of a run at its current weights and re-inject those below
//! the threshold as new steps that rehearse them (issue #12: rehearsal after the fact).
use super::progress::Bar;
use super::run::print_summary;
use super::Global;
use clap::Args;
use injector::config::{LrScheduler, RunConfig};
use injector::inject::{self, Repair};
use injector::ledger::Ledger;
use injector::Error;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The run to repair.
    pub run: String,
    /// Re-inject the facts whose recall (teacher-forced, training prompts) is below this (default:
    /// the run's --rehearse-below, 0.95 unless it was set).
    #[arg(long)]
    pub below: Option<f64>,
    /// Facts rehearsed per new step, weakest first. A step of more than --mixed-batch facts is a
    /// consolidation, trained as mixed at scale: epochs over shuffled mini-batches until every fact
    /// meets the run's --threshold (token accuracy, default 1), at most --epochs.
    #[arg(long, default_value_t = 4)]
    pub per_step: usize,
    /// When any fact is below the threshold, one step of every fact of the run (a consolidation when
    /// they are more than --mixed-batch); not with --per-step. README, Capacity, session 13: after
    /// 1,000 facts one at a time, recall 0.77 → 0.995, free recall 0.05 → 0.98, 1.93× sequential's
    /// tokens in all; locality 0.80 → 0.80.
    #[arg(long, conflicts_with = "per_step")]
    pub consolidate: bool,
    /// A consolidation's facts per optimizer step (default: the run's recorded --mixed-batch: a
    /// mixed or --consolidate run's, else 16).
    #[arg(long)]
    pub mixed_batch: Option<usize>,
    /// A consolidation's most epochs (1 to 10000).
    #[arg(long, default_value_t = super::train_args::CONSOLIDATE_EPOCHS)]
    pub epochs: i64,
    /// A consolidation's learning-rate schedule over its --epochs: constant, linear or cosine
    /// (default cosine: at a constant rate, mini-batches of many facts undo one another).
    #[arg(long, default_value = "cosine", value_parser = LrScheduler::NAMES)]
    pub lr_scheduler: String,
    /// A consolidation's preservation weight (default: the run's --preserve; refused above 0 for a
    /// run made with none of --preserve, --null-space and --protect).
    #[arg(long)]
    pub preserve: Option<f64>,
    /// Train a consolidation without the run's null-space projection, so that its update can move
    /// what the preservation prompts produce and pull them back toward the base model's answers.
    #[arg(long)]
    pub no_null_space: bool,
    /// A consolidation's interference penalty weight (--protect; default 0: the penalty resists the
    /// repairs a consolidation makes; not above 0 for a run made without it). Over the earlier
    /// facts' sum or mean, as the run's --protect-mean says.
    #[arg(long, default_value_t = 0.0)]
    pub protect: f64,
    /// A consolidation's training prompts per fact an epoch, taken in turn from one epoch to the
    /// next so that successive epochs cover them all (default 0: all of them, whatever the run's
    /// --consolidate-prompts); fewer make an epoch cheaper. Experimental: README, Capacity,
    /// sessions 15–16.
    #[arg(long, default_value_t = 0)]
    pub prompts: usize,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RepairArgs, g: &Global) -> anyhow::Result<()> {
    let device = injector::device::parse_device(&g.device)?;
    g.check_outputs()?;
    // The flags alone first, before the ledger is read.
    // The flag must name a threshold in (0, 1]; the run's own `--rehearse-below` (in [0, 1], where
    // 0 counts no fact as fallen) is taken as recorded, so a run made with 0 repairs nothing.
    if let Some(b) = a.below.filter(|b| !(b.is_finite() && 0.0 < *b && *b <= 1.0)) {
        return Err(Error::BadInput(format!("--below {b}: expected a number in (0, 1]")).into());
    }
    if a.per_step == 0 {
        return Err(Error::BadInput("--per-step 0: expected at least 1".into()).into());
    }
    if !(1..=10_000).contains(&a.epochs) {
        return Err(Error::BadInput(format!("--epochs {}: expected 1 to 10000", a.epochs)).into());
    }
    let lr_scheduler: LrScheduler = a.lr_scheduler.parse()?;
    if a.mixed_batch == Some(0) {
        return Err(Error::BadInput("--mixed-batch 0: expected at least 1".into()).into());
    }
    if let Some(p) = a.preserve.filter(|p| !(p.is_finite() && *p >= 0.0)) {
        return Err(Error::BadInput(format!("--preserve {p}: expected a number of at least 0")).into());
    }
    if !(a.protect.is_finite() && a.protect >= 0.0) {
        return Err(Error::BadInput(format!("--protect {}: expected a number of at least 0", a.protect)).into());
    }
    let recorded = Ledger::open_read_only(&g.ledger)?;
    let r = recorded.run(&a.run)?;
    let config = RunConfig::from_json(&r.config, &format!("run {}'s config in the ledger", r.id))?;
    let below = a.below.unwrap_or(config.rehearsal.below);
    // A consolidation has at least two mini-batches an epoch: refused here, before anything is
    // loaded or the run is marked running, when AdaLoRA's budget could have no step to fall in.
    let ada = &config.train.adalora;
    if ada.tinit + ada.tfinal >= 2 * a.epochs {
        return Err(Error::BadInput(format!(
            "--epochs {}: the run's train.adalora.tinit + tfinal ({}) needs more than {} optimizer steps \
             (a consolidation's two mini-batches an epoch)",
            a.epochs,
            ada.tinit + ada.tfinal,
            2 * a.epochs
        ))
        .into());
    }
    let mixed_batch = a.mixed_batch.unwrap_or(config.mixed_batch);
    let given: Vec<&str> = [
        (a.preserve.is_some(), "--preserve"),
        (a.no_null_space, "--no-null-space"),
        (a.protect > 0.0, "--protect"),
        (a.prompts > 0, "--prompts"),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect();
    if let Some((last, rest)) = given.split_last() {
        // The most facts one repair step can hold; a consolidation needs more than a mini-batch.
        let n_facts = recorded.run_facts(&r.id)?.len();
        let largest = if a.consolidate {
            n_facts
        } else {
            a.per_step.min(n_facts)
        };
        if largest <= mixed_batch {
            let holds = match a.consolidate {
                true => format!("run {} has {n_facts} fact(s)", r.id),
                false => format!(
                    "a step holds at most {largest} fact(s) (--per-step {}, run {} has {n_facts})",
                    a.per_step, r.id
                ),
            };
            let flags = match rest {
                [] => format!("{last} sets"),
                _ => format!("{} and {last} set", rest.join(", ")),
            };
            return Err(Error::BadInput(format!(
                "{flags} a consolidation's training, and no step would be one: {holds}, not more than \
                 --mixed-batch {mixed_batch}"
            ))
            .into());
        }
    }
    let t = &config.train;
    if a.preserve.is_some_and(|p| p > 0.0) && t.preserve <= 0.0 && t.null_space <= 0.0 && t.protect <= 0.0 {
        return Err(Error::BadInput(format!(
            "--preserve: run {} was made without preservation, projection or penalty, so it has no preservation set",
            r.id
        ))
        .into());
    }
    if a.protect > 0.0 && t.protect == 0.0 {
        return Err(Error::BadInput(format!(
            "--protect: run {} was made without the interference penalty (train.protect 0), so it has no \
             recorded inputs to protect",
            r.id
        ))
        .into());
    }
    drop(recorded);
    let model_path = g.model.clone().unwrap_or_else(|| PathBuf::from(&r.model_path));
    let template = config.recorded_chat_template(g.chat_template.as_deref(), &format!("run {}", r.id))?;
    let dtype = config.recorded_base_dtype(&g.base_dtype, device, &format!("run {}", r.id))?;
    let loaded = g.load(&model_path, device, &dtype, template)?;
    let mut ledger = Ledger::open(&g.ledger)?;
    let mut bar = Bar::new(g.quiet, a.json);
    let how = Repair {
        below,
        per_step: a.per_step,
        consolidate: a.consolidate,
        epochs: a.epochs,
        mixed_batch,
        lr_scheduler,
        preserve: a.preserve.unwrap_or(config.train.preserve),
        null_space: !a.no_null_space,
        protect: a.protect,
        prompts: a.prompts,
        in_run: false,
    };
    let out = inject::repair(
        &mut ledger,
        &loaded,
        &model_path.display().to_string(),
        r,
        how,
        &mut bar,
    )?;
    let page = injector::report::write_run(&ledger, &g.reports, &out.run)?;
    injector::report::write_index(&ledger, &g.reports)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !g.quiet {
        let s = if out.new_steps == 1 { "" } else { "s" };
        println!("{}: {} repair step{s}", out.run, out.new_steps);
        print_summary(&out);
        println!("report: {}", page.display());
    }
    Ok(())
}

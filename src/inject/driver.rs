//! The batch driver: a run in its stages — [plan](super::plan) (which run, which facts, which steps),
//! [prepare](super::prepare) (base answers, preservation set, projections, replay of committed steps),
//! then for each injection step train, merge, [evaluate](super::evaluate) and commit, one SQLite
//! transaction a step.
use super::evaluate::{evaluate, Evaluated};
use super::plan::{check_model, find_or_record, key_of, plan, Plan};
use super::prepare::{prepare, Prepared};
use super::schedule::Schedule;
use super::state::PendingHash;
use super::step::{consolidate, train, train_epochs, Trained, Trainers};
use super::Clock;
use crate::adapter::merge;
use crate::config::{LrScheduler, Rehearsal, RunConfig, Strategy, TrainConfig};
use crate::error::Result;
use crate::eval::probe::{score, FactExamples};
use crate::eval::retention::{Cadence, FactSummary, Matrix, Means};
use crate::eval::Example;
use crate::knowledge::{Fact, Knowledge};
use crate::ledger::{
    last_locality, Consolidation, FixedPhases, InvocationRow, Ledger, Reason, Rehearsed, RunRow, StepPhases,
    StepRecord, StepRow,
};
use crate::model::Loaded;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// What a caller sees of a run as it goes.
pub trait Progress {
    /// `steps` in all, `done` of them already recorded; called again, with one step more, when a
    /// run's closing consolidation is planned.
    fn start(&mut self, _run: &str, _steps: usize, _done: usize) {}
    /// A step of its own `facts` (none for a repair or closing step) that also rehearses
    /// `rehearsed` facts chosen before it (a repair's or a consolidation's; spaced rehearsal
    /// chooses later and is not counted).
    fn step_start(&mut self, _idx: usize, _facts: &[&Fact], _rehearsed: usize) {}
    fn opt_step(&mut self, _opt_step: i64, _loss: f64, _recall: f64) {}
    /// `recall`: the lowest of the step's own facts, none for a step without any.
    fn step_end(&mut self, _idx: usize, _recall: Option<f64>) {}
    fn finish(&mut self) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// The outcome of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run: String,
    pub strategy: String,
    /// Steps trained by this invocation (0 when the run was already complete).
    pub new_steps: usize,
    pub total_steps: usize,
    pub facts: Vec<FactSummary>,
    /// Means over `facts`: teacher-forced and free-decoding recall and generalisation.
    pub means: Means,
    pub locality: Option<f64>,
    /// The general check after the latest step that measured it: the perplexity of the base
    /// model's own answers to the locality prompts ([`crate::eval::probe::LocalityScore`]).
    pub perplexity: Option<f64>,
    /// The same on the base model (step -1), for scale; None for a run recorded before schema 7
    /// and not resumed since.
    pub base_perplexity: Option<f64>,
    pub weights_hash: String,
    /// Wall seconds of this invocation from the driver's start (the model load is before it).
    pub seconds: f64,
    /// Where this invocation's time went outside its steps, the model load included.
    pub fixed: FixedPhases,
    /// The sum of the phases of the steps this invocation trained.
    pub step_phases: StepPhases,
}

/// Peak resident memory of this process so far, in bytes (Linux; 0 elsewhere).
pub fn peak_rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs (or resumes, or continues with new facts) the run of `knowledge` under `config`: the run is
/// found by its key (model, knowledge directory, config) or recorded now. Errors: an invalid
/// `config` (bad input, before the ledger is touched).
pub fn run(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    knowledge: &Knowledge,
    config: &RunConfig,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let t0 = Instant::now();
    config.validate()?;
    let _lock = ledger.lock_run(&key_of(loaded, knowledge, config))?;
    let run = find_or_record(ledger, loaded, model_path, knowledge, config)?;
    drive(ledger, loaded, run, knowledge, config, None, progress, t0)
}

/// Continues the recorded run `run` with the config it recorded, on the facts of `knowledge` (those
/// it has injected are skipped). Errors: a config the ledger holds that does not validate, or a
/// model other than the run's (bad input).
pub fn resume(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    run: RunRow,
    knowledge: &Knowledge,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let config = RunConfig::from_json(&run.config, &format!("run {}'s config in the ledger", run.id))?;
    check_model(&run, loaded, model_path)?;
    // What another process did to the run while this one waited is read after the lock.
    let _lock = ledger.lock_run(&run.key)?;
    let run = ledger.run(&run.id)?;
    drive(ledger, loaded, run, knowledge, &config, None, progress, t0)
}

/// What `injector repair` re-injects: every fact of the run whose recall (teacher-forced, training
/// prompts) is below `below` at the run's current weights, `per_step` of them a step, weakest first;
/// with `consolidate`, when any fact is below it, one step of every fact of the run (those that did
/// not fall too: left out, they were measured falling to 0.74–0.92 while the others trained).
/// A step of more than `mixed_batch` facts is a consolidation: it trains as `mixed` does at scale
/// (`step::train_epochs`: epochs over shuffled mini-batches of `mixed_batch` facts until every
/// fact meets the threshold), for at most `epochs` epochs, with the learning rate scheduled by
/// `lr_scheduler` over them and no `extra_steps`. At a constant rate, mini-batches of many facts
/// undo one another (mixed at 1,000 stalled at 0.80; with cosine it reached 1.00: bench/NOTES.md
/// item 38). A consolidation's preservation term has the weight `preserve`, and it is trained with
/// the run's null-space projection when `null_space` (without it, its update can move what the
/// preservation prompts produce, and so undo the drift of the steps before it), and with the
/// interference penalty's weight `protect` (0 by default: the penalty resists the repairs a
/// consolidation makes, README Capacity, session 11). Each epoch trains a fact on `prompts` of its
/// training prompts, taken in turn from one epoch to the next (0: all; `step::epoch_examples`).
#[derive(Debug, Clone, Copy)]
pub struct Repair {
    pub below: f64,
    pub per_step: usize,
    pub consolidate: bool,
    pub epochs: i64,
    pub lr_scheduler: LrScheduler,
    pub mixed_batch: usize,
    pub preserve: f64,
    pub null_space: bool,
    pub protect: f64,
    pub prompts: usize,
    /// The closing consolidation of a `run --consolidate` (its flags are the run's), not `repair`'s.
    pub in_run: bool,
}

impl Repair {
    /// The training settings of a consolidation under the run's `t`: its epochs as `max_steps`, its
    /// schedule, preservation weight, projection and interference penalty, no `extra_steps`.
    pub fn consolidation_config(&self, t: &TrainConfig) -> TrainConfig {
        TrainConfig {
            max_steps: self.epochs,
            lr_scheduler: self.lr_scheduler,
            extra_steps: 0,
            preserve: self.preserve,
            null_space: if self.null_space { t.null_space } else { 0.0 },
            protect: self.protect,
            protect_mean: t.protect_mean && self.protect > 0.0,
            ..t.clone()
        }
    }
}

/// Scores every fact of `run` at its current weights and re-injects those below the threshold as
/// new steps that rehearse them (no new facts; each recorded as rehearsed because it fell), then
/// scores every fact again. The run's own facts only: its folder is not read.
/// Errors: another model than the run's (bad input); what [`run`] can fail with.
pub fn repair(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    run: RunRow,
    how: Repair,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let config = RunConfig::from_json(&run.config, &format!("run {}'s config in the ledger", run.id))?;
    check_model(&run, loaded, model_path)?;
    let _lock = ledger.lock_run(&run.key)?;
    let run = ledger.run(&run.id)?;
    let knowledge = Knowledge {
        dir: run.knowledge_dir.clone().into(),
        facts: ledger.run_facts(&run.id)?,
    };
    drive(ledger, loaded, run, &knowledge, &config, Some(how), progress, t0)
}

/// The repair steps of `plan` (see [`repair`]): groups with no facts of their own, each rehearsing
/// up to `per_step` of the injected facts scored below `below`, weakest first.
fn plan_repair(plan: &mut Plan, prepared: &Prepared, loaded: &Loaded, config: &RunConfig, how: Repair) {
    plan.preset = repair_preset(&plan.injected, prepared, loaded, config, how);
    plan.groups = vec![Vec::new(); plan.preset.len()];
}

/// The facts each repair step rehearses (see [`plan_repair`]), of the `injected` facts scored at
/// the model's current weights.
fn repair_preset(
    injected: &[String],
    prepared: &Prepared,
    loaded: &Loaded,
    config: &RunConfig,
    how: Repair,
) -> Vec<Vec<Rehearsed>> {
    let ex: Vec<&FactExamples> = injected.iter().map(|h| &prepared.examples[h]).collect();
    let scores = score(&loaded.model, &ex, config.eval_batch_tokens);
    let mut facts: Vec<(&String, f64)> = injected.iter().zip(&scores).map(|(h, s)| (h, s.recall)).collect();
    facts.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
    let fallen = facts.iter().take_while(|&&(_, r)| r < how.below).count();
    if !how.consolidate {
        facts.truncate(fallen);
    } else if fallen == 0 {
        facts.clear();
    }
    let per_step = if how.consolidate { facts.len() } else { how.per_step };
    facts
        .chunks(per_step.max(1))
        .map(|c| {
            c.iter()
                .map(|&(h, r)| Rehearsed {
                    fact: h.clone(),
                    reason: if r < how.below { Reason::Fell } else { Reason::Held },
                    recall: Some(r),
                    interval: 0,
                })
                .collect()
        })
        .collect()
}

/// Appends the closing consolidation's step to `plan` (none when every fact is word-perfect),
/// planned from the `injected` facts' scores at the weights now, as `repair` plans its steps.
fn plan_closing(
    plan: &mut Plan,
    injected: &[String],
    prepared: &Prepared,
    loaded: &Loaded,
    config: &RunConfig,
    how: Repair,
) {
    let preset = repair_preset(injected, prepared, loaded, config, how);
    plan.preset.resize(plan.groups.len(), Vec::new());
    plan.groups.extend(vec![Vec::new(); preset.len()]);
    plan.preset.extend(preset);
}

/// The consolidation a run with `consolidate_epochs` ends with (see [`RunConfig`]): what `repair
/// RUN --below 1 --consolidate --epochs N --prompts K` does (K the run's `consolidate_prompts`),
/// with the run's mini-batch and preservation.
fn closing_consolidation(config: &RunConfig) -> Repair {
    Repair {
        below: 1.0,
        per_step: usize::MAX,
        consolidate: true,
        epochs: config.consolidate_epochs,
        lr_scheduler: LrScheduler::Cosine,
        mixed_batch: config.mixed_batch,
        preserve: config.train.preserve,
        null_space: true,
        protect: 0.0,
        prompts: config.consolidate_prompts,
        in_run: true,
    }
}

/// [`drive_steps`], and a run that fails while training marked `failed` (what was committed stays;
/// the same command tries the rest again).
#[allow(clippy::too_many_arguments)]
fn drive(
    ledger: &mut Ledger,
    loaded: &Loaded,
    run: RunRow,
    knowledge: &Knowledge,
    config: &RunConfig,
    repair: Option<Repair>,
    progress: &mut dyn Progress,
    t0: Instant,
) -> Result<RunOutcome> {
    let id = run.id.clone();
    let out = drive_steps(ledger, loaded, run, knowledge, config, repair, progress, t0);
    if out.is_err() {
        // Only a run that was training fails; an error before its steps began or after it finished
        // leaves its status. Best effort: the error that stopped the run matters more.
        if ledger.run(&id).is_ok_and(|r| r.status == "running") {
            let _ = ledger.set_status(&id, "failed");
        }
        progress.finish();
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn drive_steps(
    ledger: &mut Ledger,
    loaded: &Loaded,
    run: RunRow,
    knowledge: &Knowledge,
    config: &RunConfig,
    mut repair: Option<Repair>,
    progress: &mut dyn Progress,
    t0: Instant,
) -> Result<RunOutcome> {
    let started = ledger.now()?;
    let mut plan = plan(ledger, run, knowledge, config)?;
    // A run with `consolidate_epochs` ends with a consolidation after its new facts, or, when it
    // did not finish, after its last committed step if that was a fact's (its consolidation failed
    // or was cut short). A finished run whose facts were all word-perfect at its end has none.
    let mut closing = match repair {
        None if config.consolidate_epochs > 0 => {
            let unfinished = plan.run.status != "finished"
                && ledger.steps(&plan.run.id)?.last().is_some_and(|s| !s.facts.is_empty());
            (!plan.groups.is_empty() || unfinished).then(|| closing_consolidation(config))
        }
        _ => None,
    };
    let mut fixed = FixedPhases {
        model_load: loaded.load_seconds,
        plan: t0.elapsed().as_secs_f64(),
        ..FixedPhases::default()
    };
    let mut step_phases = StepPhases::default();
    // A run with nothing new does no model work at all; a repair scores the run's facts first.
    let prepared = if !plan.groups.is_empty() || repair.is_some() || closing.is_some() {
        let prepared = prepare(ledger, loaded, config, &plan)?;
        if let Some(how) = repair {
            plan_repair(&mut plan, &prepared, loaded, config, how);
        } else if plan.groups.is_empty() {
            // Only the closing consolidation is left: it is planned now.
            if let Some(how) = closing.take() {
                let injected = plan.injected.clone();
                plan_closing(&mut plan, &injected, &prepared, loaded, config, how);
                repair = Some(how);
            }
        }
        Some(prepared)
    } else {
        None
    };
    progress.start(&plan.run.id, plan.done_steps + plan.groups.len(), plan.done_steps);
    // What preparing cost, also when it found nothing to train (a repair or closing consolidation
    // with every fact word-perfect).
    if let Some(prepared) = &prepared {
        fixed = FixedPhases {
            model_load: fixed.model_load,
            plan: fixed.plan,
            ..prepared.phases.clone()
        };
    }
    if let Some(prepared) = prepared.filter(|_| !plan.groups.is_empty()) {
        ledger.set_status(&plan.run.id, "running")?;
        let mut trainers = Trainers::new(&loaded.model, &config.train, prepared.preserve.as_ref())?;
        // Each step's GPU peak is its own: reset what the preparation left.
        crate::cuda::peak_allocated(loaded.model.device());
        let mut injected = plan.injected.clone();
        // A fact's own tokens, and those it is rehearsed with: its longest `rehearsal.prompts`
        // examples bound the share taken in turn at any step.
        let tokens = |h: &str| {
            let mut lens: Vec<usize> = prepared.examples[h].recall.iter().map(Example::len).collect();
            let own = lens.iter().sum::<usize>();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            let k = match config.rehearsal.prompts {
                0 => lens.len(),
                k => k,
            };
            (own, lens.iter().take(k).sum::<usize>())
        };
        let committed = ledger.steps(&plan.run.id)?;
        let mut schedule = match plan.strategy {
            Strategy::Spaced(_) => Some(Schedule::rebuild(
                &config.rehearsal,
                &Cadence::of(config),
                &committed,
                &ledger.probes(&plan.run.id)?,
                tokens,
            )),
            _ => None,
        };
        // How often each fact was rehearsed before: its next rehearsal takes its next prompts.
        let mut turns: HashMap<String, usize> = HashMap::new();
        for h in committed.iter().flat_map(|s| &s.rehearsed) {
            *turns.entry(h.clone()).or_default() += 1;
        }
        // With the interference penalty, the facts injected before this invocation are recorded at
        // the weights it starts from (an uninterrupted run recorded each after its own step).
        let protected = prepared.preserve.as_ref().and_then(|p| p.protected.as_ref());
        // A consolidation trains with its own weight (repair's --protect, default 0).
        let repairs_protected =
            repair.is_some_and(|r| r.protect > 0.0 || (!r.consolidate && r.per_step <= r.mixed_batch));
        if protected.is_some()
            && (repairs_protected
                || (repair.is_none() && matches!(plan.strategy, Strategy::Spaced(_) | Strategy::Replay(_))))
        {
            tracing::warn!(
                "--protect with rehearsal ({}): the penalty also resists the rehearsals' repairs of the \
                 facts it protects (measured worse than either alone; README Capacity, session 11)",
                if repair.is_some() { "repair" } else { "spaced/replay" }
            );
        }
        if let Some(p) = protected {
            let facts: Vec<&[Example]> = plan
                .injected
                .iter()
                .map(|h| prepared.examples[h].recall.as_slice())
                .collect();
            p.add(&loaded.model, &facts);
        }
        // A step's commit waits for its weights hash and factors file, which are made while the
        // next step trains (bench/NOTES.md items 30-31).
        let mut pending: Option<Uncommitted> = None;
        let mut g = 0;
        while g < plan.groups.len() {
            let group = plan.groups[g].clone();
            let idx = plan.step_index(g);
            let own: Vec<&Fact> = group.iter().map(|&i| &plan.facts[i]).collect();
            let preset = plan.preset.get(g).cloned().unwrap_or_default();
            progress.step_start(idx as usize, &own, preset.len());
            let mut clock = Clock::start();
            let own_hashes: Vec<String> = own.iter().map(|f| f.hash.clone()).collect();
            // Repair's steps (preset rehearsals) train every prompt of a fact that fell.
            let rehearse_all = !preset.is_empty();
            let rehearsal = match (&schedule, plan.strategy) {
                _ if !preset.is_empty() => preset,
                (Some(s), Strategy::Spaced(k)) => s.pick(idx, k, own_hashes.iter().map(|h| tokens(h).0).sum()),
                _ => Vec::new(),
            };
            // Facts rehearsed for a reason are scored after the step (the reason's follow-up).
            let score_rehearsed = !rehearsal.is_empty();
            let rehearsed = match schedule {
                _ if score_rehearsed => rehearsal.iter().map(|r| r.fact.clone()).collect(),
                Some(_) => Vec::new(),
                None => plan.strategy.rehearse(&injected, config.seed, idx),
            };
            let rules = match rehearse_all {
                true => Rehearsal {
                    prompts: 0,
                    ..config.rehearsal.clone()
                },
                false => config.rehearsal.clone(),
            };
            // A repair step of more facts than a mini-batch is a consolidation (see [`Repair`]).
            let consolidation = repair.filter(|how| own.is_empty() && rehearsed.len() > how.mixed_batch);
            if let Some(how) = repair.filter(|how| how.in_run && how.prompts > 0 && consolidation.is_none()) {
                tracing::warn!(
                    "step {idx}: the run's closing step of {} facts (at most --mixed-batch {}) is not a \
                     consolidation: --consolidate-prompts {} does nothing, every prompt is trained",
                    rehearsed.len(),
                    how.mixed_batch,
                    how.prompts
                );
            }
            let trained = train_stage(
                &mut trainers,
                &prepared,
                config,
                &plan,
                (idx, &own, &rehearsed),
                (&rules, &turns),
                (repair.is_some(), consolidation),
                progress,
            );
            for h in &rehearsed {
                *turns.entry(h.clone()).or_default() += 1;
            }
            // The previous step is committed whether this one trained or not (its weights are merged).
            if let Some(u) = pending.take() {
                u.commit(ledger, &mut fixed, &mut step_phases)?;
            }
            let trained = trained?;
            clock.lap();
            merge::merge(&loaded.model, &trained.factors, plan.run.merge_on_device)?;
            let saving = merge::save_in_background(&ledger.deltas_dir(), &trained.factors);
            if let Some(p) = protected.filter(|_| g + 1 < plan.groups.len()) {
                // The step's own facts are protected from the next steps' updates (timed as merge; a
                // later invocation records every earlier fact anew).
                let facts: Vec<&[Example]> = own
                    .iter()
                    .map(|f| prepared.examples[&f.hash].recall.as_slice())
                    .collect();
                p.add(&loaded.model, &facts);
            }
            if let tch::Device::Cuda(d) = loaded.model.device() {
                // The merge's kernels are the merge phase's, not the next one's.
                tch::Cuda::synchronize(d as i64);
            }
            let merge_seconds = clock.lap();
            let te = Instant::now();
            injected.extend(own.iter().map(|f| f.hash.clone()));
            let last = g + 1 == plan.groups.len();
            let scored_rehearsed: &[String] = if score_rehearsed { &rehearsed } else { &[] };
            let evaluated = evaluate(
                loaded,
                &prepared,
                config,
                &plan,
                idx,
                last,
                &own,
                &injected,
                scored_rehearsed,
            )?;
            let eval_seconds = te.elapsed().as_secs_f64();
            let Evaluated {
                probes,
                generations,
                locality,
                weights_hash,
                own_recall,
                phases,
            } = evaluated;
            let phases = StepPhases {
                setup: trained.setup_seconds,
                warmup: trained.warmup_seconds,
                train: trained.seconds - trained.setup_seconds - trained.warmup_seconds,
                merge: merge_seconds,
                ..phases
            };
            tracing::info!(
                "step {idx}: {} optimizer steps; {}",
                trained.optimizer_steps,
                phases
                    .named()
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.3}s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            step_phases.add(&phases);
            // A consolidation's prompts an epoch as trained: none recorded where K left out no
            // prompt of any of its facts (it trained as K = 0 does).
            let prompts = consolidation.filter(|how| how.prompts > 0).and_then(|how| {
                let most = rehearsed
                    .iter()
                    .map(|h| prepared.examples[h].recall.len())
                    .max()
                    .unwrap_or(0);
                if how.prompts >= most {
                    tracing::warn!(
                        "step {idx}: {} training prompts a fact an epoch is every prompt of its facts (at most \
                         {most}): it trained on all of them",
                        how.prompts
                    );
                }
                (how.prompts < most).then_some(how.prompts)
            });
            let step = StepRow {
                run: plan.run.id.clone(),
                idx,
                facts: own.iter().map(|f| f.hash.clone()).collect(),
                rehearsed,
                optimizer_steps: trained.optimizer_steps,
                losses: trained.losses,
                seconds: trained.seconds,
                eval_seconds,
                tokens: trained.tokens as i64,
                peak_rss_bytes: peak_rss_bytes(),
                peak_gpu_bytes: crate::cuda::peak_allocated(loaded.model.device()).unwrap_or(0),
                // Filled in at the commit, from `saving`.
                delta_file: String::new(),
                rank_pattern: trained.rank_pattern,
                // Filled in at the commit, from `weights_hash`.
                weights_hash: String::new(),
                created: String::new(),
                phases,
                rehearsal,
                consolidation: consolidation.map(|how| {
                    let c = how.consolidation_config(&config.train);
                    Consolidation {
                        epochs: how.epochs,
                        lr_scheduler: how.lr_scheduler,
                        mixed_batch: how.mixed_batch,
                        preserve: Some(c.preserve),
                        null_space: Some(c.null_space),
                        protect: Some(c.protect),
                        prompts,
                    }
                }),
            };
            if let Some(s) = schedule.as_mut() {
                let rows = probes.iter().map(|p| (p.fact.as_str(), p.recall));
                s.observe(&Cadence::of(config), &step, &injected, rows, tokens);
            }
            // Commit: the step with everything measured around it, in one transaction, once its
            // hash is digested.
            let mut all_generations: Vec<_> = own
                .iter()
                .filter_map(|f| prepared.before.get(&f.hash).cloned())
                .collect();
            all_generations.extend(generations);
            pending = Some(Uncommitted {
                record: StepRecord {
                    step,
                    probes,
                    generations: all_generations,
                    locality: locality.map(|l| l.accuracy),
                    perplexity: locality.map(|l| l.perplexity),
                },
                hash: weights_hash,
                saving,
            });
            // The step is done; its commit follows the next step's training.
            progress.step_end(idx as usize, own_recall);
            g += 1;
            // After the last new fact, the closing consolidation.
            if g == plan.groups.len() {
                if let Some(how) = closing.take() {
                    plan_closing(&mut plan, &injected, &prepared, loaded, config, how);
                    repair = Some(how);
                    progress.start(&plan.run.id, plan.done_steps + plan.groups.len(), plan.done_steps + g);
                }
            }
        }
        if let Some(u) = pending.take() {
            u.commit(ledger, &mut fixed, &mut step_phases)?;
        }
    }
    ledger.set_status(&plan.run.id, "finished")?;
    let seconds = t0.elapsed().as_secs_f64();
    if !plan.groups.is_empty() {
        ledger.add_invocation(&InvocationRow {
            run: plan.run.id.clone(),
            idx: 0,
            started,
            finished: String::new(),
            steps: plan.groups.len() as i64,
            seconds,
            fixed: fixed.clone(),
            step_phases: step_phases.clone(),
        })?;
    }
    progress.finish();
    outcome(ledger, &plan, seconds, fixed, step_phases)
}

/// A step trained, merged and evaluated, whose weights hash is still being digested and whose
/// factors are still being written.
struct Uncommitted {
    record: StepRecord,
    hash: PendingHash,
    /// The factors file's hash, once written.
    saving: merge::Saving,
}

impl Uncommitted {
    /// Waits for the factors file and the hash (the waits are the step's merge and hash phases,
    /// added to `step_phases`) and commits the step (its seconds added to `fixed`). Errors: the
    /// write or the digest failed; the ledger's.
    fn commit(self, ledger: &mut Ledger, fixed: &mut FixedPhases, step_phases: &mut StepPhases) -> Result<()> {
        let Uncommitted {
            mut record,
            hash,
            saving,
        } = self;
        let t = Instant::now();
        record.step.delta_file = saving.join()?;
        // Waiting for the write is the merge phase's (where the write was before).
        let written = t.elapsed().as_secs_f64();
        record.step.phases.merge += written;
        step_phases.merge += written;
        // `held` is the copy, which both phase records already have (timed by a lap that may be
        // a little longer), plus the wait.
        let (hash, held) = hash.wait_timed()?;
        record.step.weights_hash = hash;
        let total = held.max(record.step.phases.hash);
        step_phases.hash += total - record.step.phases.hash;
        record.step.phases.hash = total;
        let t = Instant::now();
        ledger.commit_step(&record)?;
        fixed.commit += t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Trains a fresh adapter on the step's own facts (every training prompt) and the rehearsed ones
/// (the prompts `rules` give them at their next turn; `turns`: how often each was rehearsed
/// before), and warns when the optimizer-step budget ran out
/// before every fact reached the threshold.
#[allow(clippy::too_many_arguments)]
fn train_stage(
    trainers: &mut Trainers,
    prepared: &Prepared,
    config: &RunConfig,
    plan: &Plan,
    (idx, own, rehearsed): (i64, &[&Fact], &[String]),
    (rules, turns): (&Rehearsal, &HashMap<String, usize>),
    (repairing, consolidation): (bool, Option<Repair>),
    progress: &mut dyn Progress,
) -> Result<Trained> {
    let mut facts: Vec<&Fact> = own.to_vec();
    facts.extend(
        rehearsed
            .iter()
            .filter_map(|h| plan.facts.iter().find(|f| &f.hash == h)),
    );
    let t = &config.train;
    let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(idx as u64);
    let report = |s, loss, rec| progress.opt_step(s, loss, rec);
    let per_fact = || -> Vec<Vec<Example>> {
        facts
            .iter()
            .map(|f| prepared.examples[&f.hash].recall.clone())
            .collect()
    };
    let trained = if let Some(how) = consolidation {
        let cfg = how.consolidation_config(t);
        consolidate(
            trainers,
            &cfg,
            &per_fact(),
            (how.mixed_batch, how.prompts),
            seed,
            report,
        )?
    } else if plan.strategy == Strategy::Mixed && !repairing {
        train_epochs(trainers, &per_fact(), config.mixed_batch, seed, report)?
    } else {
        let mut examples = Vec::new();
        let mut owner = Vec::new();
        for (i, f) in facts.iter().enumerate() {
            let all = &prepared.examples[&f.hash].recall;
            let chosen = match i < own.len() {
                true => all.iter().collect(),
                false => rules.examples(all, turns.get(&f.hash).copied().unwrap_or(0)),
            };
            for e in chosen {
                examples.push(e.clone());
                owner.push(i);
            }
        }
        train(trainers, &examples, &owner, facts.len(), seed, report)?
    };
    let weakest = trained.recall.iter().cloned().fold(f64::INFINITY, f64::min);
    // Training stops at the threshold or at its budget: below the threshold, the budget ran out.
    if weakest < t.threshold {
        let (cap, raise) = match consolidation {
            Some(how) if how.in_run => (format!("--consolidate-epochs {}", how.epochs), "--consolidate-epochs"),
            Some(how) => (format!("repair's --epochs {}", how.epochs), "--epochs"),
            None if plan.strategy == Strategy::Mixed && facts.len() > config.mixed_batch => {
                (format!("--max-steps {} epochs", t.max_steps), "--max-steps")
            }
            None => (format!("--max-steps {}", t.max_steps), "--max-steps"),
        };
        tracing::warn!(
            "step {idx}: training stopped at {cap} with the weakest of its {} facts at {weakest:.2} on \
             its training prompts (threshold {}); raise {raise} (or --lr) to put every fact in",
            facts.len(),
            t.threshold
        );
    }
    Ok(trained)
}

/// The run's outcome, read back from the ledger.
fn outcome(
    ledger: &Ledger,
    plan: &Plan,
    seconds: f64,
    fixed: FixedPhases,
    step_phases: StepPhases,
) -> Result<RunOutcome> {
    let id = &plan.run.id;
    let steps = ledger.steps(id)?;
    let matrix = Matrix::new(&steps, &ledger.run_facts(id)?, ledger.probes(id)?);
    let facts = matrix.fact_summaries(&steps);
    let perplexity = ledger.perplexity(id)?;
    Ok(RunOutcome {
        run: id.clone(),
        strategy: plan.run.strategy.clone(),
        new_steps: plan.groups.len(),
        total_steps: steps.len(),
        means: Means::of(&facts),
        facts,
        locality: ledger.last_locality(id)?,
        perplexity: last_locality(&perplexity),
        base_perplexity: perplexity.first().filter(|(s, _)| *s == -1).map(|(_, v)| *v),
        weights_hash: ledger.run(id)?.weights_hash,
        seconds,
        fixed,
        step_phases,
    })
}

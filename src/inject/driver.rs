//! The batch driver: plans a run's steps from a knowledge directory and a strategy, replays what the
//! ledger already holds, then trains, merges, evaluates and commits each remaining step.
use super::step::{adapter_shapes, null_space_projections, train, Preserve, TrainConfig};
use super::strategy::Strategy;
use crate::adapter::merge;
use crate::error::{Error, Result};
use crate::eval::batch::Example;
use crate::eval::locality::{base_answers, LOCALITY_PROMPTS, PRESERVE_PROMPTS};
use crate::eval::probe::{generate_f1_all, mean_accuracy, score, FactExamples, FactScore};
use crate::knowledge::{Fact, Knowledge};
use crate::ledger::{GenerationRow, Ledger, LocalityBase, ProbeRow, RunRow, StepRecord, StepRow};
use crate::model::{Llama, Loaded, Proj, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Greedy generations (before and after) are sampled for this many facts of a run, the first ones.
const MAX_SAMPLED_GENERATIONS: usize = 64;

/// Everything that decides a run's outcome; saved as the run's config before its first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub strategy: String,
    pub seed: u64,
    pub train: TrainConfig,
    /// Evaluate retention (every injected fact) after every k-th step; always after the last.
    pub retention_every: usize,
    /// Evaluate only this many earlier facts (a fixed sample) besides the step's own; 0 = all.
    pub retention_sample: usize,
    /// Tokens of the base model's answers kept for locality.
    pub locality_tokens: usize,
    /// Padded tokens per evaluation batch.
    pub eval_batch_tokens: usize,
}

impl RunConfig {
    pub fn new(strategy: Strategy, seed: u64, train: TrainConfig) -> Self {
        RunConfig {
            strategy: strategy.to_string(),
            seed,
            train,
            retention_every: 1,
            retention_sample: 0,
            locality_tokens: 24,
            eval_batch_tokens: 8192,
        }
    }

    pub fn strategy(&self) -> Result<Strategy> {
        self.strategy.parse()
    }
}

/// What a caller sees of a run as it goes.
pub trait Progress {
    fn start(&mut self, _run: &str, _steps: usize, _done: usize) {}
    fn step_start(&mut self, _idx: usize, _facts: &[&Fact]) {}
    fn train_step(&mut self, _opt_step: i64, _loss: f64, _recall: f64) {}
    fn step_end(&mut self, _idx: usize, _recall: f64) {}
    fn finish(&mut self) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// One fact's standing at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct FactSummary {
    pub id: String,
    pub hash: String,
    pub step: i64,
    /// Recall right after its own step.
    pub recall_at_step: f64,
    pub recall: f64,
    pub general: Option<f64>,
    pub previous: Option<f64>,
    pub seconds: f64,
}

/// The outcome of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run: String,
    pub strategy: String,
    /// Steps trained by this invocation (0 when the run was already complete).
    pub new_steps: usize,
    pub total_steps: usize,
    pub facts: Vec<FactSummary>,
    pub locality: Option<f64>,
    pub weights_hash: String,
    pub seconds: f64,
}

/// blake3 of the model source and every weight an adapter can change (all others never change).
pub fn weights_hash(model: &Llama, source_hash: &str, cfg: &TrainConfig) -> Result<String> {
    let mut keys: Vec<String> = super::step::adapter_shapes(model, &cfg.adalora)
        .iter()
        .map(|(l, p, _, _)| p.weight_key(*l))
        .collect();
    keys.sort();
    let mut h = blake3::Hasher::new();
    h.update(source_hash.as_bytes());
    for k in keys {
        let w = model
            .weight(&k)
            .ok_or_else(|| Error::Ledger(format!("no weight {k}")))?;
        let w = w.to_device(tch::Device::Cpu).contiguous();
        let mut buf = vec![0u8; w.numel() * w.kind().elt_size_in_bytes()];
        w.copy_data_u8(&mut buf, w.numel());
        h.update(k.as_bytes());
        h.update(&buf);
    }
    Ok(h.finalize().to_hex().to_string())
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

/// The identity of a run: same model, knowledge directory and config give the same run.
pub fn run_key(model_hash: &str, knowledge_dir: &str, config: &RunConfig) -> String {
    let s = serde_json::json!({"model": model_hash, "knowledge": knowledge_dir, "config": config});
    blake3::hash(s.to_string().as_bytes()).to_hex().to_string()
}

fn canonical_dir(k: &Knowledge) -> String {
    std::fs::canonicalize(&k.dir)
        .unwrap_or_else(|_| k.dir.clone())
        .display()
        .to_string()
}

/// Replays the committed steps of `run` onto the (base) model and checks the resulting hash.
pub fn replay(ledger: &Ledger, run: &RunRow, loaded: &Loaded, cfg: &TrainConfig, upto: Option<i64>) -> Result<usize> {
    let steps = ledger.steps(&run.id)?;
    let dir = ledger.deltas_dir();
    let mut applied = 0;
    let mut last_hash = run.base_weights_hash.clone();
    for s in steps.iter().filter(|s| upto.is_none_or(|u| s.idx <= u)) {
        merge::merge(&loaded.model, &merge::load(&dir, &s.delta_file)?)?;
        applied += 1;
        last_hash = s.weights_hash.clone();
    }
    let now = weights_hash(&loaded.model, &loaded.source_hash, cfg)?;
    if now != last_hash {
        return Err(Error::Ledger(format!(
            "replaying run {} gives weights {} but the ledger recorded {}",
            run.id,
            &now[..12],
            &last_hash[..12]
        )));
    }
    Ok(applied)
}

fn summarize(ledger: &Ledger, run: &RunRow) -> Result<(Vec<FactSummary>, Option<f64>)> {
    let steps = ledger.steps(&run.id)?;
    let probes = ledger.probes(&run.id)?;
    let mut by_fact_step: HashMap<(&str, i64), &ProbeRow> = HashMap::new();
    let mut last: HashMap<&str, &ProbeRow> = HashMap::new();
    for p in &probes {
        by_fact_step.insert((&p.fact, p.step), p);
        last.insert(&p.fact, p);
    }
    let facts: HashMap<String, Fact> = ledger
        .run_facts(&run.id)?
        .into_iter()
        .map(|f| (f.hash.clone(), f))
        .collect();
    let mut out = Vec::new();
    for s in &steps {
        for h in &s.facts {
            let Some(f) = facts.get(h) else { continue };
            let at = by_fact_step.get(&(h.as_str(), s.idx));
            let end = last.get(h.as_str());
            out.push(FactSummary {
                id: f.id.clone(),
                hash: h.clone(),
                step: s.idx,
                recall_at_step: at.map(|p| p.recall).unwrap_or(f64::NAN),
                recall: end.map(|p| p.recall).unwrap_or(f64::NAN),
                general: end.and_then(|p| p.general),
                previous: end.and_then(|p| p.previous),
                seconds: s.seconds / s.facts.len().max(1) as f64,
            });
        }
    }
    let locality = ledger
        .locality(&run.id)?
        .into_iter()
        .rev()
        .find(|(s, _)| *s >= 0)
        .map(|(_, v)| v);
    Ok((out, locality))
}

fn locality_examples(base: &[LocalityBase]) -> Vec<Example> {
    base.iter()
        .map(|b| Example {
            prompt: b.prompt_ids.clone(),
            target: b.answer_ids.clone(),
        })
        .collect()
}

/// Records a new run: its config, the base weights' hash and the base model's answers to the
/// locality prompts (generated now, before any edit).
fn create_run(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    knowledge: &Knowledge,
    config: &RunConfig,
    key: &str,
    dir: &str,
) -> Result<RunRow> {
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let base_hash = weights_hash(model, &loaded.source_hash, &config.train)?;
    let answers = base_answers(model, tok, &LOCALITY_PROMPTS, config.locality_tokens)?;
    let base: Vec<LocalityBase> = LOCALITY_PROMPTS
        .iter()
        .zip(answers)
        .map(|(p, e)| LocalityBase {
            prompt: p.to_string(),
            answer: tok.decode(&e.target.iter().map(|&t| t as u32).collect::<Vec<_>>()),
            prompt_ids: e.prompt,
            answer_ids: e.target,
        })
        .collect();
    let row = RunRow {
        id: format!("run-{}", &key[..8]),
        key: key.to_string(),
        created: iso_now(),
        strategy: config.strategy.clone(),
        config: serde_json::to_string(config).expect("config serialises"),
        model_path: model_path.to_string(),
        model_hash: loaded.source_hash.clone(),
        knowledge_dir: dir.to_string(),
        knowledge_hash: knowledge.hash(),
        seed: config.seed as i64,
        status: "running".into(),
        base_weights_hash: base_hash.clone(),
        weights_hash: base_hash,
        finished: None,
    };
    ledger.create_run(&row, &base)?;
    ledger.set_locality(&row.id, -1, 1.0)?;
    Ok(row)
}

/// Runs (or resumes, or continues with new facts) the run of `knowledge` under `config`.
pub fn run(
    ledger: &mut Ledger,
    loaded: &Loaded,
    model_path: &str,
    knowledge: &Knowledge,
    config: &RunConfig,
    progress: &mut dyn Progress,
) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let strategy = config.strategy()?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let dir = canonical_dir(knowledge);
    let key = run_key(&loaded.source_hash, &dir, config);
    let run = match ledger.find_run_by_key(&key)? {
        Some(r) => r,
        None => create_run(ledger, loaded, model_path, knowledge, config, &key, &dir)?,
    };
    ledger.add_facts(&run.id, &knowledge.facts)?;
    let all_facts = ledger.run_facts(&run.id)?;
    let steps_so_far = ledger.steps(&run.id)?;
    let done_steps = steps_so_far.len();
    let injected: HashSet<String> = steps_so_far.iter().flat_map(|s| s.facts.iter().cloned()).collect();
    let mut injected_order: Vec<String> = steps_so_far.iter().flat_map(|s| s.facts.iter().cloned()).collect();
    let pending: Vec<&Fact> = all_facts.iter().filter(|f| !injected.contains(&f.hash)).collect();
    let groups = strategy.groups(pending.len());
    progress.start(&run.id, done_steps + groups.len(), done_steps);
    if groups.is_empty() {
        // Nothing new: no model work at all.
        ledger.set_status(&run.id, "finished")?;
        let (facts, locality) = summarize(ledger, &run)?;
        progress.finish();
        return Ok(RunOutcome {
            run: run.id.clone(),
            strategy: run.strategy.clone(),
            new_steps: 0,
            total_steps: done_steps,
            facts,
            locality,
            weights_hash: ledger.run(&run.id)?.weights_hash,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    // The preservation targets come from the base weights, so they are made before the replay.
    let preserve = if config.train.preserve > 0.0 || config.train.null_space > 0.0 {
        let ex = base_answers(model, tok, &PRESERVE_PROMPTS, config.locality_tokens)?;
        let mut p = Preserve::new(model, &ex, config.train.preserve_batch);
        if config.train.null_space > 0.0 {
            let sites: Vec<(usize, Proj)> = adapter_shapes(model, &config.train.adalora)
                .into_iter()
                .map(|(l, p, _, _)| (l, p))
                .collect();
            p.projections = null_space_projections(model, &ex, &sites, config.train.null_space)?;
        }
        Some(p)
    } else {
        None
    };
    replay(ledger, &run, loaded, &config.train, None)?;
    ledger.set_status(&run.id, "running")?;
    let by_hash: HashMap<&str, &Fact> = all_facts.iter().map(|f| (f.hash.as_str(), f)).collect();
    let position: HashMap<&str, usize> = all_facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.hash.as_str(), i))
        .collect();
    let mut examples_of: HashMap<String, FactExamples> = HashMap::new();
    for f in &all_facts {
        examples_of.insert(f.hash.clone(), FactExamples::new(tok, f)?);
    }
    let loc_examples = locality_examples(&ledger.locality_base(&run.id)?);
    let n_groups = groups.len();
    for (g, group) in groups.iter().enumerate() {
        let idx = (done_steps + g) as i64;
        let facts: Vec<&Fact> = group.iter().map(|&i| pending[i]).collect();
        progress.step_start(idx as usize, &facts);
        let rehearsed = strategy.rehearse(&injected_order, config.seed, idx);
        let mut train_facts: Vec<&Fact> = facts.clone();
        train_facts.extend(rehearsed.iter().filter_map(|h| by_hash.get(h.as_str()).copied()));
        let mut examples = Vec::new();
        let mut owner = Vec::new();
        for (i, f) in train_facts.iter().enumerate() {
            for e in &examples_of[&f.hash].recall {
                examples.push(e.clone());
                owner.push(i);
            }
        }
        // What the model says before this step, for the reports' before/after samples.
        let sampled = |f: &&Fact| position[f.hash.as_str()] < MAX_SAMPLED_GENERATIONS;
        let before: Vec<&Fact> = facts.iter().copied().filter(sampled).collect();
        let mut generations = sample_generations(model, tok, &before, -1)?;
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(idx as u64);
        let trained = train(
            model,
            &examples,
            &owner,
            train_facts.len(),
            &config.train,
            preserve.as_ref(),
            seed,
            |s, loss, rec| progress.train_step(s, loss, rec),
        )?;
        let weakest = trained.recall.iter().cloned().fold(f64::INFINITY, f64::min);
        if trained.optimizer_steps >= config.train.max_steps && weakest < config.train.threshold {
            tracing::warn!(
                "step {idx}: training stopped at --max-steps {} with the weakest of its {} facts at {weakest:.2} \
                 on its training prompts (threshold {}); raise --max-steps (or --lr) to put every fact in",
                config.train.max_steps,
                train_facts.len(),
                config.train.threshold
            );
        }
        merge::merge(model, &trained.factors)?;
        let delta_file = merge::save(&ledger.deltas_dir(), &trained.factors)?;
        let te = Instant::now();
        injected_order.extend(facts.iter().map(|f| f.hash.clone()));
        let last = g + 1 == n_groups;
        let full = last || (idx as usize + 1).is_multiple_of(config.retention_every.max(1));
        let mut eval_hashes: Vec<String> = facts.iter().map(|f| f.hash.clone()).collect();
        if full {
            let earlier: Vec<String> = injected_order
                .iter()
                .filter(|h| !eval_hashes.contains(h))
                .cloned()
                .collect();
            let chosen = if config.retention_sample > 0 && !last {
                Strategy::Replay(config.retention_sample).rehearse(&earlier, config.seed, 0)
            } else {
                earlier
            };
            eval_hashes.extend(chosen);
        }
        let ex: Vec<&FactExamples> = eval_hashes.iter().map(|h| &examples_of[h]).collect();
        let scores: Vec<FactScore> = score(model, &ex, config.eval_batch_tokens);
        let probes: Vec<ProbeRow> = eval_hashes
            .iter()
            .zip(&scores)
            .map(|(h, s)| ProbeRow {
                step: idx,
                fact: h.clone(),
                recall: s.recall,
                general: s.general,
                previous: s.previous,
                detail: serde_json::json!({"recall": s.recall_each, "general": s.general_each}).to_string(),
            })
            .collect();
        let gen_facts: Vec<&Fact> = if last {
            injected_order
                .iter()
                .filter_map(|h| by_hash.get(h.as_str()).copied())
                .collect()
        } else {
            facts.clone()
        };
        let after: Vec<&Fact> = gen_facts.into_iter().filter(sampled).collect();
        generations.extend(sample_generations(model, tok, &after, idx)?);
        let locality = full.then(|| mean_accuracy(model, &loc_examples, config.eval_batch_tokens));
        let hash = weights_hash(model, &loaded.source_hash, &config.train)?;
        let own_recall = scores[..facts.len()]
            .iter()
            .map(|s| s.recall)
            .fold(f64::INFINITY, f64::min);
        let record = StepRecord {
            step: StepRow {
                run: run.id.clone(),
                idx,
                facts: facts.iter().map(|f| f.hash.clone()).collect(),
                rehearsed,
                optimizer_steps: trained.optimizer_steps,
                losses: trained.losses,
                seconds: trained.seconds,
                eval_seconds: te.elapsed().as_secs_f64(),
                tokens: trained.tokens as i64,
                peak_rss_bytes: peak_rss_bytes(),
                delta_file,
                rank_pattern: trained.rank_pattern,
                weights_hash: hash,
                created: String::new(),
            },
            probes,
            generations,
            locality,
        };
        ledger.commit_step(&record)?;
        progress.step_end(idx as usize, own_recall);
    }
    ledger.set_status(&run.id, "finished")?;
    progress.finish();
    let (facts, locality) = summarize(ledger, &run)?;
    Ok(RunOutcome {
        run: run.id.clone(),
        strategy: run.strategy.clone(),
        new_steps: n_groups,
        total_steps: done_steps + n_groups,
        facts,
        locality,
        weights_hash: ledger.run(&run.id)?.weights_hash,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, H. Hinnant's algorithm).
pub fn iso_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Greedy answers to each fact's first probe (its first prompt when it has none), decoded
/// together, as the reports' before/after samples of step `step`.
fn sample_generations(model: &Llama, tok: &Tokenizer, facts: &[&Fact], step: i64) -> Result<Vec<GenerationRow>> {
    let qa: Vec<(&str, &str)> = facts
        .iter()
        .map(|f| (f.probes.first().unwrap_or(&f.prompts[0]).as_str(), f.answer.as_str()))
        .collect();
    Ok(generate_f1_all(model, tok, &qa)?
        .into_iter()
        .zip(facts.iter().zip(&qa))
        .map(|((text, f1), (f, (q, _)))| GenerationRow {
            step,
            fact: f.hash.clone(),
            prompt: q.to_string(),
            text,
            f1,
        })
        .collect())
}

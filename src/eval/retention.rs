//! Retention: how much of each earlier fact is still recalled after later injection steps, the heart
//! of the strategies' comparison (DESIGN.md §7). Here: which facts are scored after a step (the
//! cadence), the fact × step matrix read back from ledger rows, and every number derived from it (the
//! per-fact summary, the first-quarter retention, the curves). No tch: reports and `ledger show` use
//! it as the driver does.
use crate::config::RunConfig;
use crate::knowledge::Fact;
use crate::ledger::{ProbeRow, StepRow};
use crate::rng;
use serde::Serialize;
use std::collections::HashMap;

/// When and what retention scores: every earlier fact after every `every`-th injection step (and
/// always after an invocation's last), or a sample of `sample` of them (0 = all) at the
/// intermediate checks.
pub struct Cadence {
    pub every: usize,
    pub sample: usize,
    pub seed: u64,
    /// Free answers: `None` never; `Some(0)` after the last step only; `Some(k)` also after every
    /// k-th step.
    pub free: Option<usize>,
}

impl Cadence {
    pub fn of(config: &RunConfig) -> Self {
        Cadence {
            every: config.retention_every.max(1),
            sample: config.retention_sample,
            seed: config.seed,
            free: config.free_decoding.then_some(config.free_every),
        }
    }

    /// Whether the facts scored after step `idx` are also free-decoded.
    pub fn is_free(&self, idx: i64, last: bool) -> bool {
        match self.free {
            None => false,
            Some(k) => last || (k > 0 && (idx as usize + 1).is_multiple_of(k)),
        }
    }

    /// Whether injection step `idx` is followed by a full check (earlier facts and locality); `last`
    /// is the last step of this invocation.
    pub fn is_full(&self, idx: i64, last: bool) -> bool {
        last || (idx as usize + 1).is_multiple_of(self.every)
    }

    /// The facts to score after step `idx`: the step's `own` facts first, then, at a full check, the
    /// earlier ones of `injected` (every fact injected so far, in order, own included), all of them
    /// or a sample of `sample`. The sample is drawn with the run's seed from the earlier facts, so the
    /// same earlier facts give the same sample (a resumed run scores what it would have), while a
    /// later check, with more earlier facts, draws another.
    pub fn facts_to_score(&self, idx: i64, last: bool, own: &[String], injected: &[String]) -> Vec<String> {
        let mut out: Vec<String> = own.to_vec();
        if self.is_full(idx, last) {
            let earlier: Vec<String> = injected.iter().filter(|h| !own.contains(h)).cloned().collect();
            if self.sample > 0 && !last {
                out.extend(rng::sample_distinct(&earlier, self.sample, self.seed, 0));
            } else {
                out.extend(earlier);
            }
        }
        out
    }
}

/// (x, y) points of a chart line.
pub type Curve = Vec<(f64, f64)>;

/// A fact of a run, with the step that injected it.
#[derive(Debug, Clone, Serialize)]
pub struct FactInfo {
    pub hash: String,
    pub id: String,
    pub answer: String,
    /// The step that injected it.
    pub step: i64,
}

/// One fact's standing: right after its own step and at its latest measurement. The one per-fact
/// summary of a run, used by `run`'s outcome, `ledger show` and the run report (the run-level
/// headline numbers of `compare` are the report's `Summary`, from the same matrix).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FactSummary {
    pub id: String,
    pub hash: String,
    /// The step that injected it.
    pub step: i64,
    /// Recall (teacher-forced token accuracy on its training prompts) right after its own step.
    pub recall_at_step: f64,
    /// Recall at its latest measurement (after the last step, for a finished run).
    pub recall: f64,
    /// Generalisation (held-out probes) at its latest measurement; `None` without probes.
    pub general: Option<f64>,
    /// For updates: accuracy on the replaced answer at its latest measurement.
    pub previous: Option<f64>,
    /// The step of that latest measurement.
    pub measured_at: i64,
    /// Free-decoding key-detail recall on its training prompts at its latest full check (`None`
    /// where free answers were never decoded).
    pub free_recall: Option<f64>,
    /// The same on its held-out probes.
    pub free_general: Option<f64>,
    /// Training seconds of its step, shared among the step's facts.
    pub seconds: f64,
}

/// The fact × step matrix of scores of a run, from its ledger rows.
pub struct Matrix {
    /// In injection order.
    pub facts: Vec<FactInfo>,
    probes: HashMap<(String, i64), ProbeRow>,
    /// Per fact hash, the step of its most recent row.
    latest: HashMap<String, i64>,
    /// Per fact hash, the step of its most recent row with free-decoding scores.
    latest_free: HashMap<String, i64>,
}

/// Means over a run's facts of their [`FactSummary`]s: the run's headline scores.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Means {
    pub recall: Option<f64>,
    pub general: Option<f64>,
    pub free_recall: Option<f64>,
    pub free_general: Option<f64>,
}

impl Means {
    pub fn of(facts: &[FactSummary]) -> Means {
        let m = |get: fn(&FactSummary) -> Option<f64>| mean(facts.iter().filter_map(get).filter(|v| !v.is_nan()));
        Means {
            recall: m(|f| Some(f.recall)),
            general: m(|f| f.general),
            free_recall: m(|f| f.free_recall),
            free_general: m(|f| f.free_general),
        }
    }
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl Matrix {
    /// `steps` in order, the run's `facts` (any order) and its probe rows (ordered by step).
    pub fn new(steps: &[StepRow], facts: &[Fact], probes: Vec<ProbeRow>) -> Matrix {
        let by_hash: HashMap<&str, &Fact> = facts.iter().map(|f| (f.hash.as_str(), f)).collect();
        let facts = steps
            .iter()
            .flat_map(|s| s.facts.iter().map(move |h| (s.idx, h)))
            .filter_map(|(step, h)| {
                by_hash.get(h.as_str()).map(|f| FactInfo {
                    hash: h.clone(),
                    id: f.id.clone(),
                    answer: f.answer.clone(),
                    step,
                })
            })
            .collect();
        let (mut latest, mut latest_free) = (HashMap::new(), HashMap::new());
        for p in &probes {
            latest.insert(p.fact.clone(), p.step);
            if p.free_recall.is_some() {
                latest_free.insert(p.fact.clone(), p.step);
            }
        }
        let probes = probes.into_iter().map(|p| ((p.fact.clone(), p.step), p)).collect();
        Matrix {
            facts,
            probes,
            latest,
            latest_free,
        }
    }

    /// The scores of `fact` measured after step `step`.
    pub fn at(&self, fact: &str, step: i64) -> Option<&ProbeRow> {
        self.probes.get(&(fact.to_string(), step))
    }

    /// One summary per fact, in injection order; `steps` as given to [`Matrix::new`].
    pub fn fact_summaries(&self, steps: &[StepRow]) -> Vec<FactSummary> {
        let seconds: HashMap<i64, f64> = steps
            .iter()
            .map(|s| (s.idx, s.seconds / s.facts.len().max(1) as f64))
            .collect();
        self.facts
            .iter()
            .map(|f| {
                let end = self.latest.get(&f.hash).and_then(|&s| self.at(&f.hash, s));
                let free = self.latest_free.get(&f.hash).and_then(|&s| self.at(&f.hash, s));
                FactSummary {
                    id: f.id.clone(),
                    hash: f.hash.clone(),
                    step: f.step,
                    recall_at_step: self.at(&f.hash, f.step).map(|p| p.recall).unwrap_or(f64::NAN),
                    recall: end.map(|p| p.recall).unwrap_or(f64::NAN),
                    general: end.and_then(|p| p.general),
                    previous: end.and_then(|p| p.previous),
                    measured_at: end.map(|p| p.step).unwrap_or(-1),
                    free_recall: free.and_then(|p| p.free_recall),
                    free_general: free.and_then(|p| p.free_general),
                    seconds: seconds.get(&f.step).copied().unwrap_or(0.0),
                }
            })
            .collect()
    }

    /// Mean recall and generalisation after step `step` of the first `n` facts injected that were
    /// scored then.
    pub fn mean_after(&self, step: i64, n: usize) -> (Option<f64>, Option<f64>) {
        let rows: Vec<&ProbeRow> = self.facts[..n.min(self.facts.len())]
            .iter()
            .filter_map(|f| self.at(&f.hash, step))
            .collect();
        (
            mean(rows.iter().map(|p| p.recall)),
            mean(rows.iter().filter_map(|p| p.general)),
        )
    }

    /// Mean free-decoding recall and generalisation after step `step` of the first `n` facts injected
    /// that were decoded then.
    pub fn free_mean_after(&self, step: i64, n: usize) -> (Option<f64>, Option<f64>) {
        let rows: Vec<&ProbeRow> = self.facts[..n.min(self.facts.len())]
            .iter()
            .filter_map(|f| self.at(&f.hash, step))
            .collect();
        (
            mean(rows.iter().filter_map(|p| p.free_recall)),
            mean(rows.iter().filter_map(|p| p.free_general)),
        )
    }

    /// Mean recall of every fact right after its own step.
    pub fn recall_at_step(&self) -> Option<f64> {
        mean(
            self.facts
                .iter()
                .filter_map(|f| self.at(&f.hash, f.step).map(|p| p.recall)),
        )
    }

    /// Mean recall and generalisation, after each of `steps`, over the facts injected so far that were
    /// scored at that step: (step, value) points.
    pub fn curves(&self, steps: &[StepRow]) -> (Curve, Curve) {
        let (mut rec, mut gen) = (Vec::new(), Vec::new());
        for s in steps {
            let injected = self.facts.iter().take_while(|f| f.step <= s.idx).count();
            let (r, g) = self.mean_after(s.idx, injected);
            if let Some(r) = r {
                rec.push((s.idx as f64, r));
            }
            if let Some(g) = g {
                gen.push((s.idx as f64, g));
            }
        }
        (rec, gen)
    }

    /// [`Matrix::curves`] of free-decoding recall and generalisation: points only at the steps
    /// where free answers were decoded (the full checks).
    pub fn free_curves(&self, steps: &[StepRow]) -> (Curve, Curve) {
        let (mut rec, mut gen) = (Vec::new(), Vec::new());
        for s in steps {
            let injected = self.facts.iter().take_while(|f| f.step <= s.idx).count();
            let (r, g) = self.free_mean_after(s.idx, injected);
            if let Some(r) = r {
                rec.push((s.idx as f64, r));
            }
            if let Some(g) = g {
                gen.push((s.idx as f64, g));
            }
        }
        (rec, gen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn cadence_scores_own_facts_always_and_earlier_ones_at_checks() {
        let c = Cadence {
            every: 3,
            sample: 0,
            seed: 1,
            free: Some(2),
        };
        let all = hashes(5);
        assert!(!c.is_free(0, false) && c.is_free(1, false) && c.is_free(2, true));
        let last_only = Cadence { free: Some(0), ..c };
        assert!(!last_only.is_free(1, false) && last_only.is_free(4, true));
        let never = Cadence {
            free: None,
            ..last_only
        };
        assert!(!never.is_free(4, true));
        // Step 0: own only (1 is not a multiple of 3).
        assert_eq!(c.facts_to_score(0, false, &all[..1], &all[..1]), hashes(1));
        assert!(!c.is_full(0, false) && c.is_full(2, false) && c.is_full(0, true));
        // Step 2 is a check: own first, then every earlier fact in order.
        let want: Vec<String> = ["f2", "f0", "f1"].map(String::from).to_vec();
        assert_eq!(c.facts_to_score(2, false, &all[2..3], &all[..3]), want);
    }

    #[test]
    fn sampled_checks_score_a_fixed_sample_but_the_last_scores_all() {
        let c = Cadence {
            every: 1,
            sample: 2,
            seed: 7,
            free: None,
        };
        let all = hashes(10);
        let a = c.facts_to_score(8, false, &all[8..9], &all[..9]);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], "f8");
        assert_eq!(a, c.facts_to_score(8, false, &all[8..9], &all[..9]));
        assert_eq!(c.facts_to_score(9, true, &all[9..], &all).len(), 10);
    }
}

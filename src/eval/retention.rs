//! Retention: how much of each earlier fact is still recalled after later injection steps, the heart
//! of the strategies' comparison (DESIGN.md §7). Here: which facts are scored after a step (the
//! cadence), the fact × step matrix read back from ledger rows, and every number derived from it (the
//! per-fact summary, the first-quarter retention, the curves). No tch: reports and `ledger show` use
//! it as the driver does.
use crate::config::RunConfig;
use crate::eval::metrics::{key_details, DetailMatcher};
use crate::knowledge::{Fact, Op};
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
    pub subject: String,
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
    /// For updates: the share of training prompts on which the new answer is likelier than the
    /// replaced one at that measurement (see [`FactScore::prefers_new`](crate::eval::probe::FactScore)).
    pub prefers_new: Option<f64>,
    /// The id of a later update or delete of the same subject in the run: this fact's answer was
    /// replaced on purpose, so its falling recall is the edit working, not forgetting.
    pub superseded_by: Option<String>,
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
    /// Per fact hash, the id of the later update or delete of its subject.
    superseded: HashMap<String, String>,
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
        let facts: Vec<FactInfo> = steps
            .iter()
            .flat_map(|s| s.facts.iter().map(move |h| (s.idx, h)))
            .filter_map(|(step, h)| {
                by_hash.get(h.as_str()).map(|f| FactInfo {
                    hash: h.clone(),
                    id: f.id.clone(),
                    subject: f.subject.clone(),
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
        let superseded = superseded(&facts, &by_hash);
        Matrix {
            facts,
            probes,
            latest,
            latest_free,
            superseded,
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
                    prefers_new: end.and_then(prefers_new),
                    superseded_by: self.superseded.get(&f.hash).cloned(),
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

    /// Whether step `s` was a retention check: some fact injected before it, other than those it
    /// rehearsed, was scored after it (the first step, with nothing before it, counts). Between
    /// checks only the newest (and just rehearsed) facts are scored, so a mean over "the facts so
    /// far" there would be theirs.
    fn is_check(&self, s: &StepRow) -> bool {
        s.idx == 0
            || self
                .facts
                .iter()
                .take_while(|f| f.step < s.idx)
                .any(|f| !s.rehearsed.contains(&f.hash) && self.at(&f.hash, s.idx).is_some())
    }

    /// Mean recall and generalisation of the facts injected so far that were scored at each
    /// retention check among `steps`: (step, value) points, measured points only.
    pub fn curves(&self, steps: &[StepRow]) -> (Curve, Curve) {
        self.points(steps, |m, step, n| m.mean_after(step, n))
    }

    /// [`Matrix::curves`] of free-decoding recall and generalisation: points only where free answers
    /// were decoded.
    pub fn free_curves(&self, steps: &[StepRow]) -> (Curve, Curve) {
        self.points(steps, |m, step, n| m.free_mean_after(step, n))
    }

    fn points(
        &self,
        steps: &[StepRow],
        mean: impl Fn(&Matrix, i64, usize) -> (Option<f64>, Option<f64>),
    ) -> (Curve, Curve) {
        let (mut rec, mut gen) = (Vec::new(), Vec::new());
        for s in steps.iter().filter(|s| self.is_check(s)) {
            let injected = self.facts.iter().take_while(|f| f.step <= s.idx).count();
            let (r, g) = mean(self, s.idx, injected);
            if let Some(r) = r {
                rec.push((s.idx as f64, r));
            }
            if let Some(g) = g {
                gen.push((s.idx as f64, g));
            }
        }
        (rec, gen)
    }

    /// The recall of each step's own facts right after it (mean over the step's facts): the newest
    /// facts' series, apart from the retention checks.
    pub fn newest(&self, steps: &[StepRow]) -> Curve {
        steps
            .iter()
            .filter_map(|s| {
                let own = s.facts.iter().filter_map(|h| self.at(h, s.idx).map(|p| p.recall));
                mean(own).map(|v| (s.idx as f64, v))
            })
            .collect()
    }

    /// The forgetting curve: recall against a fact's age — the number of facts injected after it —
    /// pooled over every fact at every retention check (see [`Matrix::curves`]; rows between checks
    /// hold only the newest and just-rehearsed facts, which would flatter it), teacher-forced and
    /// free (where decoded). Facts, not steps, so that strategies that take several facts a step
    /// share an axis. Ages are grouped into at most `bins` equal ranges; each point is (the mean age
    /// of its range's measurements, their mean recall). One pass over the rows in step order.
    pub fn forgetting(&self, steps: &[StepRow], bins: usize) -> (Curve, Curve) {
        let injected_at: HashMap<&str, i64> = self.facts.iter().map(|f| (f.hash.as_str(), f.step)).collect();
        // Facts injected up to and including each step.
        let mut so_far: HashMap<i64, i64> = HashMap::new();
        let mut n = 0;
        for s in steps {
            n += s.facts.len() as i64;
            so_far.insert(s.idx, n);
        }
        let checks: std::collections::HashSet<i64> = steps.iter().filter(|s| self.is_check(s)).map(|s| s.idx).collect();
        let mut rows: Vec<&ProbeRow> = self.probes.values().filter(|p| checks.contains(&p.step)).collect();
        // A fixed order, so the sums (and the page) are the same in every process.
        rows.sort_by(|a, b| (a.step, &a.fact).cmp(&(b.step, &b.fact)));
        let mut tf: Vec<(i64, f64)> = Vec::new();
        let mut free: Vec<(i64, f64)> = Vec::new();
        for p in rows {
            let Some(&own) = injected_at.get(p.fact.as_str()) else {
                continue;
            };
            if own > p.step {
                continue;
            }
            let age = so_far.get(&p.step).copied().unwrap_or(0) - so_far.get(&own).copied().unwrap_or(0);
            tf.push((age, p.recall));
            if let Some(v) = p.free_recall {
                free.push((age, v));
            }
        }
        (bin_by_age(&tf, bins), bin_by_age(&free, bins))
    }

    /// The fact × check matrix binned for display: facts in injection order grouped into at most
    /// `max_rows` consecutive groups, the retention checks (see [`Matrix::curves`]) into at most
    /// `max_cols` consecutive groups; each cell the mean of the measured (fact, step) values in it
    /// (teacher-forced recall, or free recall with `free`), `None` where nothing was measured.
    /// Returns the row labels (first–last fact id of a group), the column labels (first–last step)
    /// and the cells by row.
    pub fn binned(&self, steps: &[StepRow], max_rows: usize, max_cols: usize, free: bool) -> Binned {
        let checks: Vec<i64> = steps.iter().filter(|s| self.is_check(s)).map(|s| s.idx).collect();
        let row_groups = groups(self.facts.len(), max_rows);
        let col_groups = groups(checks.len(), max_cols);
        let label = |a: &str, b: &str| if a == b { a.to_string() } else { format!("{a}–{b}") };
        let rows = row_groups
            .iter()
            .map(|r| label(&self.facts[r.start].id, &self.facts[r.end - 1].id))
            .collect();
        let cols = col_groups
            .iter()
            .map(|c| label(&checks[c.start].to_string(), &checks[c.end - 1].to_string()))
            .collect();
        let cells = row_groups
            .iter()
            .map(|r| {
                col_groups
                    .iter()
                    .map(|c| {
                        mean(self.facts[r.clone()].iter().flat_map(|f| {
                            checks[c.clone()].iter().filter_map(move |&step| {
                                self.at(&f.hash, step)
                                    .and_then(|p| if free { p.free_recall } else { Some(p.recall) })
                            })
                        }))
                    })
                    .collect()
            })
            .collect();
        Binned { rows, cols, cells }
    }
}

/// A fact whose free answers carry another fact's details: the collision of similar keys the source
/// article predicts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Collision {
    pub id: String,
    /// Its free-decoding recall at its latest free measurement.
    pub free_recall: f64,
    /// Its answer, and the first of its free answers that carries the other fact's details.
    pub answer: String,
    pub text: String,
    /// The fact whose details it carries most, and those details.
    pub other: String,
    pub shared: Vec<String>,
}

/// Facts (by hash) whose subject a later update or delete of the run takes over (subjects compared
/// up to case and surrounding space), with that fact's id.
fn superseded(facts: &[FactInfo], by_hash: &HashMap<&str, &Fact>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (i, f) in facts.iter().enumerate() {
        let subject = f.subject.trim().to_lowercase();
        let later = facts[i + 1..].iter().find(|g| {
            g.subject.trim().to_lowercase() == subject
                && by_hash
                    .get(g.hash.as_str())
                    .is_some_and(|g| matches!(g.op, Op::Update | Op::Delete))
        });
        if let Some(g) = later {
            out.insert(f.hash.clone(), g.id.clone());
        }
    }
    out
}

/// The update preference stored in a probe row's detail (`None` for other facts and older rows).
fn prefers_new(p: &ProbeRow) -> Option<f64> {
    serde_json::from_str::<serde_json::Value>(&p.detail).ok()?["prefers_new"].as_f64()
}

/// The free answers' texts stored in a probe row's detail (none when it has no free answers).
fn free_texts(p: &ProbeRow) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&p.detail) else {
        return Vec::new();
    };
    ["recall_each", "general_each"]
        .iter()
        .flat_map(|k| v["free"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["text"].as_str().map(str::to_string))
        .collect()
}

impl Matrix {
    /// Facts whose latest free answers fall short (free recall below 1) and carry at least two key
    /// details of another fact of the run that are not their own (one shared year or region is
    /// often chance), most-missed first, at most `limit`: for each, the other fact whose details
    /// appear most (among equals, the nearest in injection order). An index from each detail to the
    /// facts that have it keeps this linear in the answers' words.
    pub fn collisions(&self, limit: usize) -> Vec<Collision> {
        let details: Vec<Vec<String>> = self.facts.iter().map(|f| key_details(&f.answer, &f.subject)).collect();
        let mut holders: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, ds) in details.iter().enumerate() {
            for d in ds {
                holders.entry(d.as_str()).or_default().push(j);
            }
        }
        let mut out: Vec<Collision> = Vec::new();
        for (i, f) in self.facts.iter().enumerate() {
            let Some(p) = self.latest_free.get(&f.hash).and_then(|&s| self.at(&f.hash, s)) else {
                continue;
            };
            let Some(free) = p.free_recall.filter(|&v| v < 1.0) else {
                continue;
            };
            let texts = free_texts(p);
            let found: Vec<DetailMatcher> = texts.iter().map(|t| DetailMatcher::new(t)).collect();
            // Other facts' details in these answers, per fact.
            let mut shared: HashMap<usize, Vec<String>> = HashMap::new();
            for (d, js) in &holders {
                if details[i].iter().any(|x| x == d) || !found.iter().any(|m| m.contains(d)) {
                    continue;
                }
                for &j in js.iter().filter(|&&j| j != i) {
                    shared.entry(j).or_default().push(d.to_string());
                }
            }
            let best = shared.into_iter().filter(|(_, ds)| ds.len() >= 2).max_by(|a, b| {
                a.1.len()
                    .cmp(&b.1.len())
                    .then(i.abs_diff(b.0).cmp(&i.abs_diff(a.0)))
                    .then(b.0.cmp(&a.0))
            });
            if let Some((j, mut ds)) = best {
                // In the order the other fact's answer gives them.
                ds.sort_by_key(|d| details[j].iter().position(|x| x == d));
                let text = texts
                    .iter()
                    .zip(&found)
                    .find(|(_, m)| ds.iter().any(|d| m.contains(d)))
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                out.push(Collision {
                    id: f.id.clone(),
                    free_recall: free,
                    answer: f.answer.clone(),
                    text,
                    other: self.facts[j].id.clone(),
                    shared: ds,
                });
            }
        }
        out.sort_by(|a, b| a.free_recall.total_cmp(&b.free_recall).then(a.id.cmp(&b.id)));
        out.truncate(limit);
        out
    }
}

/// A binned fact × check matrix ([`Matrix::binned`]).
pub struct Binned {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: Vec<Vec<Option<f64>>>,
}

/// `n` items split into at most `max` consecutive, near-equal ranges.
fn groups(n: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let k = n.min(max.max(1));
    (0..k)
        .map(|i| i * n / k..(i + 1) * n / k)
        .filter(|r| !r.is_empty())
        .collect()
}

/// (age, value) measurements averaged over at most `bins` equal ranges of age.
fn bin_by_age(points: &[(i64, f64)], bins: usize) -> Curve {
    let Some(max) = points.iter().map(|p| p.0).max() else {
        return Vec::new();
    };
    let width = ((max + 1) as usize).div_ceil(bins.max(1)).max(1) as i64;
    let mut sums: std::collections::BTreeMap<i64, (f64, f64, usize)> = Default::default();
    for &(age, v) in points {
        let e = sums.entry(age / width).or_default();
        e.0 += age as f64;
        e.1 += v;
        e.2 += 1;
    }
    sums.values().map(|&(a, v, n)| (a / n as f64, v / n as f64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps 0..n, one fact each ("f0".. injected in order), scored by `score(fact, step)`.
    fn matrix(n: usize, score: impl Fn(usize, usize) -> Option<f64>) -> (Matrix, Vec<StepRow>) {
        let facts: Vec<Fact> = (0..n)
            .map(|i| Fact {
                id: format!("id{i}"),
                op: crate::knowledge::Op::Insert,
                subject: format!("S{i}"),
                answer: format!("S{i} is {i}."),
                prompts: vec![format!("S{i}?")],
                probes: vec![],
                lang: Default::default(),
                previous: None,
                source: String::new(),
                hash: format!("f{i}"),
            })
            .collect();
        let steps: Vec<StepRow> = (0..n)
            .map(|i| StepRow::for_tests(i as i64, vec![format!("f{i}")], vec![]))
            .collect();
        let mut probes = Vec::new();
        for step in 0..n {
            for f in 0..=step {
                if let Some(v) = score(f, step) {
                    probes.push(ProbeRow {
                        step: step as i64,
                        fact: format!("f{f}"),
                        recall: v,
                        general: None,
                        previous: None,
                        free_recall: (step + 1 == n).then_some(v / 2.0),
                        free_general: None,
                        detail: String::new(),
                    });
                }
            }
        }
        (Matrix::new(&steps, &facts, probes), steps)
    }

    #[test]
    fn curves_use_checks_only_and_the_newest_series_is_apart() {
        // Own fact scored 1.0 every step; earlier facts scored (0.5) only at steps 3 and 5 (checks).
        let (m, steps) = matrix(6, |f, s| {
            if f == s {
                Some(1.0)
            } else if s == 3 || s == 5 {
                Some(0.5)
            } else {
                None
            }
        });
        let (rec, _) = m.curves(&steps);
        assert_eq!(rec.iter().map(|p| p.0).collect::<Vec<_>>(), [0.0, 3.0, 5.0]);
        // Step 3: f3 at 1.0, f0..f2 at 0.5.
        assert!((rec[1].1 - 0.625).abs() < 1e-12);
        assert_eq!(m.newest(&steps).len(), 6);
        assert!(m.newest(&steps).iter().all(|p| p.1 == 1.0));
        let (free, _) = m.free_curves(&steps);
        assert_eq!(free.len(), 1);
    }

    #[test]
    fn collisions_name_the_fact_whose_details_a_free_answer_carries() {
        let (mut m, _) = matrix(3, |_, _| Some(1.0));
        let answers = [
            (
                "The Mardra Bridge",
                "The Mardra Bridge is over the river Eldar in Gorwen, built in 1788.",
            ),
            (
                "The Velwen Bridge",
                "The Velwen Bridge is over the river Unkes in Fiost, built in 1768.",
            ),
            (
                "The Orrin Bridge",
                "The Orrin Bridge is over the river Unkes in Calun, built in 1768.",
            ),
        ];
        for (f, (subject, answer)) in m.facts.iter_mut().zip(answers) {
            f.subject = subject.into();
            f.answer = answer.into();
        }
        // After the last step (2), f0's free answer has f1's river, town and year; f1's is right.
        let texts = [
            "The Mardra Bridge is over the river Unkes in Fiost, built in 1768.",
            "The Velwen Bridge is over the river Unkes in Fiost, built in 1768.",
            "The Orrin Bridge is over the river Unkes in Calun, built in 1768.",
        ];
        for (i, t) in texts.iter().enumerate() {
            let p = m.probes.get_mut(&(format!("f{i}"), 2)).unwrap();
            p.free_recall = Some(if i == 0 { 0.0 } else { 1.0 });
            p.detail =
                serde_json::json!({"free": {"recall_each": [{"text": t, "key": 0.0, "f1": 0.0}], "general_each": []}})
                    .to_string();
        }
        let c = m.collisions(10);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].id.as_str(), c[0].other.as_str()), ("id0", "id1"));
        // f2 shares Unkes and 1768 too, but f1 shares three details.
        assert_eq!(c[0].shared, ["unkes", "fiost", "1768"]);
        assert_eq!(c[0].text, texts[0]);
    }

    #[test]
    fn forgetting_pools_by_age_and_binning_keeps_means() {
        // Every fact scored at every step; recall 1 - 0.1 * age.
        let (m, steps) = matrix(5, |f, s| Some(1.0 - 0.1 * (s - f) as f64));
        let (tf, free) = m.forgetting(&steps, 10);
        assert_eq!(tf.len(), 5);
        for (age, v) in &tf {
            assert!((v - (1.0 - 0.1 * age)).abs() < 1e-12, "{tf:?}");
        }
        // Free answers only after the last step: ages 4, 3, 2, 1, 0 once each, halved.
        assert_eq!(free.len(), 5);
        assert!((free[4].1 - 0.3).abs() < 1e-12);
        // Two bins: ages 0–2 and 3–4.
        assert_eq!(m.forgetting(&steps, 2).0.len(), 2);
        let b = m.binned(&steps, 2, 50, false);
        assert_eq!(b.rows, ["id0–id1", "id2–id4"]);
        assert_eq!(b.cols.len(), 5);
        // Row 0, step 0: only f0 was injected (1.0); step 1: f0 0.9, f1 1.0.
        assert_eq!(b.cells[0][0], Some(1.0));
        assert!((b.cells[0][1].unwrap() - 0.95).abs() < 1e-12);
        assert_eq!(b.cells[1][0], None);
        assert_eq!(groups(10, 3).iter().map(|r| r.len()).collect::<Vec<_>>(), [3, 3, 4]);
        assert_eq!(groups(2, 50).len(), 2);
    }

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

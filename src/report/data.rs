//! What the reports show, gathered from ledger rows alone.
use crate::error::Result;
use crate::ledger::{GenerationRow, Ledger, ProbeRow, RunRow, StepRow};
use serde::Serialize;
use std::collections::HashMap;

/// A fact as the reports name it.
#[derive(Debug, Clone, Serialize)]
pub struct FactInfo {
    pub hash: String,
    pub id: String,
    pub answer: String,
    /// The step that injected it.
    pub step: i64,
}

/// (x, y) points of a chart line.
pub type Curve = Vec<(f64, f64)>;

/// One run's rows, indexed for the pages.
pub struct RunData {
    pub run: RunRow,
    pub config: serde_json::Value,
    /// In injection order.
    pub facts: Vec<FactInfo>,
    pub steps: Vec<StepRow>,
    pub probes: HashMap<(String, i64), ProbeRow>,
    pub locality: Vec<(i64, f64)>,
    pub generations: Vec<GenerationRow>,
}

/// The headline numbers of a run (the comparison table's row).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub facts: usize,
    pub steps: usize,
    /// Mean over facts of recall after the last step.
    pub final_recall: f64,
    pub final_general: Option<f64>,
    /// Mean recall of each fact right after its own step.
    pub recall_at_step: f64,
    pub locality: Option<f64>,
    /// Mean recall after the last step of the first-injected quarter of the facts.
    pub first_quarter_recall: f64,
    pub wall_seconds: f64,
    pub train_seconds: f64,
    pub optimizer_steps: i64,
    pub tokens: i64,
    pub peak_rss_bytes: i64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl RunData {
    pub fn load(ledger: &Ledger, run: &str) -> Result<Self> {
        let run = ledger.run(run)?;
        let steps = ledger.steps(&run.id)?;
        let by_hash: HashMap<String, crate::knowledge::Fact> = ledger
            .run_facts(&run.id)?
            .into_iter()
            .map(|f| (f.hash.clone(), f))
            .collect();
        let mut facts = Vec::new();
        for s in &steps {
            for h in &s.facts {
                if let Some(f) = by_hash.get(h) {
                    facts.push(FactInfo {
                        hash: h.clone(),
                        id: f.id.clone(),
                        answer: f.answer.clone(),
                        step: s.idx,
                    });
                }
            }
        }
        let probes = ledger
            .probes(&run.id)?
            .into_iter()
            .map(|p| ((p.fact.clone(), p.step), p))
            .collect();
        Ok(RunData {
            config: serde_json::from_str(&run.config).unwrap_or(serde_json::Value::Null),
            locality: ledger.locality(&run.id)?,
            generations: ledger.generations(&run.id)?,
            run,
            facts,
            steps,
            probes,
        })
    }

    pub fn last_step(&self) -> Option<i64> {
        self.steps.last().map(|s| s.idx)
    }

    pub fn probe(&self, fact: &str, step: i64) -> Option<&ProbeRow> {
        self.probes.get(&(fact.to_string(), step))
    }

    pub fn summary(&self) -> Summary {
        let last = self.last_step().unwrap_or(-1);
        let at_end = |f: &FactInfo| self.probe(&f.hash, last);
        let quarter = self.facts.len().div_ceil(4);
        Summary {
            facts: self.facts.len(),
            steps: self.steps.len(),
            final_recall: mean(self.facts.iter().filter_map(|f| at_end(f).map(|p| p.recall))).unwrap_or(f64::NAN),
            final_general: mean(self.facts.iter().filter_map(|f| at_end(f).and_then(|p| p.general))),
            recall_at_step: mean(
                self.facts
                    .iter()
                    .filter_map(|f| self.probe(&f.hash, f.step).map(|p| p.recall)),
            )
            .unwrap_or(f64::NAN),
            locality: self.locality.iter().rev().find(|(s, _)| *s >= 0).map(|(_, v)| *v),
            first_quarter_recall: mean(self.facts[..quarter].iter().filter_map(|f| at_end(f).map(|p| p.recall)))
                .unwrap_or(f64::NAN),
            wall_seconds: self.steps.iter().map(|s| s.seconds + s.eval_seconds).sum(),
            train_seconds: self.steps.iter().map(|s| s.seconds).sum(),
            optimizer_steps: self.steps.iter().map(|s| s.optimizer_steps).sum(),
            tokens: self.steps.iter().map(|s| s.tokens).sum(),
            peak_rss_bytes: self.steps.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
        }
    }

    /// Mean recall and generalisation, after each step, over the facts injected so far that were
    /// evaluated at that step.
    pub fn curves(&self) -> (Curve, Curve) {
        let (mut rec, mut gen) = (Vec::new(), Vec::new());
        for s in &self.steps {
            let rows: Vec<&ProbeRow> = self
                .facts
                .iter()
                .filter(|f| f.step <= s.idx)
                .filter_map(|f| self.probe(&f.hash, s.idx))
                .collect();
            if let Some(m) = mean(rows.iter().map(|p| p.recall)) {
                rec.push((s.idx as f64, m));
            }
            if let Some(m) = mean(rows.iter().filter_map(|p| p.general)) {
                gen.push((s.idx as f64, m));
            }
        }
        (rec, gen)
    }
}

//! What the reports show, gathered from ledger rows alone.
use crate::config::RunConfig;
use crate::error::Result;
pub use crate::eval::retention::Curve;
use crate::eval::retention::{FactInfo, FactSummary, Matrix};
use crate::ledger::{last_locality, GenerationRow, InvocationRow, Ledger, ProbeRow, RevertRow, RunRow, StepRow};
use serde::Serialize;

/// One run's rows, indexed for the pages.
pub struct RunData {
    pub run: RunRow,
    /// The run's config, typed; None when the row does not parse (the page still renders).
    pub config: Option<RunConfig>,
    pub steps: Vec<StepRow>,
    /// The fact × step scores.
    pub matrix: Matrix,
    pub locality: Vec<(i64, f64)>,
    /// The general check by step (step -1: the base model); empty for runs before it existed.
    pub perplexity: Vec<(i64, f64)>,
    pub generations: Vec<GenerationRow>,
    /// Each invocation's fixed costs (none for runs recorded before they were).
    pub invocations: Vec<InvocationRow>,
    /// Its reverts (`injector revert`), in order.
    pub reverts: Vec<RevertRow>,
}

/// The headline numbers of a run (the comparison table's row).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub facts: usize,
    pub steps: usize,
    /// Mean over facts of recall after the last step.
    pub final_recall: f64,
    pub final_general: Option<f64>,
    /// Mean over facts of free-decoding key-detail recall after the last step (`None` when free
    /// answers were not decoded then).
    pub final_free_recall: Option<f64>,
    pub final_free_general: Option<f64>,
    /// Mean recall of each fact right after its own step.
    pub recall_at_step: f64,
    pub locality: Option<f64>,
    /// The general check after the latest step that measured it: the perplexity of the base
    /// model's own answers to the locality prompts (`eval::probe::LocalityScore`).
    pub perplexity: Option<f64>,
    /// The same on the base model (step -1).
    pub base_perplexity: Option<f64>,
    /// Mean recall after the last step of the first-injected quarter of the facts.
    pub first_quarter_recall: f64,
    pub wall_seconds: f64,
    pub train_seconds: f64,
    pub optimizer_steps: i64,
    pub tokens: i64,
    pub peak_rss_bytes: i64,
    /// The GPU's allocated peak over the steps (0 off a GPU).
    pub peak_gpu_bytes: i64,
}

impl RunData {
    pub fn load(ledger: &Ledger, run: &str) -> Result<Self> {
        let run = ledger.run(run)?;
        let steps = ledger.steps(&run.id)?;
        // A config that no longer parses costs its run the rank chart's scale, not the page (nor the
        // index of every run).
        let config = RunConfig::from_ledger(&run.config, &run.id).ok();
        let matrix = Matrix::new(&steps, &ledger.run_facts(&run.id)?, ledger.probes(&run.id)?);
        Ok(RunData {
            config,
            locality: ledger.locality(&run.id)?,
            perplexity: ledger.perplexity(&run.id)?,
            generations: ledger.generations(&run.id)?,
            invocations: ledger.invocations(&run.id)?,
            reverts: ledger.reverts(&run.id)?,
            run,
            steps,
            matrix,
        })
    }

    /// The facts in injection order.
    pub fn facts(&self) -> &[FactInfo] {
        &self.matrix.facts
    }

    pub fn last_step(&self) -> Option<i64> {
        self.steps.last().map(|s| s.idx)
    }

    pub fn probe(&self, fact: &str, step: i64) -> Option<&ProbeRow> {
        self.matrix.at(fact, step)
    }

    /// One summary per fact, in injection order.
    pub fn fact_summaries(&self) -> Vec<FactSummary> {
        self.matrix.fact_summaries(&self.steps)
    }

    pub fn summary(&self) -> Summary {
        let last = self.last_step().unwrap_or(-1);
        let n = self.facts().len();
        let (final_recall, final_general) = self.matrix.mean_after(last, n);
        let (final_free_recall, final_free_general) = self.matrix.free_mean_after(last, n);
        Summary {
            facts: n,
            steps: self.steps.len(),
            final_recall: final_recall.unwrap_or(f64::NAN),
            final_general,
            final_free_recall,
            final_free_general,
            recall_at_step: self.matrix.recall_at_step().unwrap_or(f64::NAN),
            locality: last_locality(&self.locality),
            perplexity: last_locality(&self.perplexity),
            base_perplexity: self.perplexity.first().filter(|(s, _)| *s == -1).map(|(_, v)| *v),
            first_quarter_recall: self.matrix.mean_after(last, n.div_ceil(4)).0.unwrap_or(f64::NAN),
            wall_seconds: self.steps.iter().map(|s| s.seconds + s.eval_seconds).sum(),
            train_seconds: self.steps.iter().map(|s| s.seconds).sum(),
            optimizer_steps: self.steps.iter().map(|s| s.optimizer_steps).sum(),
            tokens: self.steps.iter().map(|s| s.tokens).sum(),
            peak_rss_bytes: self.steps.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
            peak_gpu_bytes: self.steps.iter().map(|s| s.peak_gpu_bytes).max().unwrap_or(0),
        }
    }

    /// Mean recall and generalisation, after each step, over the facts injected so far that were
    /// evaluated at that step.
    pub fn curves(&self) -> (Curve, Curve) {
        self.matrix.curves(&self.steps)
    }

    /// Mean free-decoding recall and generalisation at each full check.
    pub fn free_curves(&self) -> (Curve, Curve) {
        self.matrix.free_curves(&self.steps)
    }
}

//! Rehearsal driven by retention, for the `spaced:K` strategy: which earlier facts a step trains
//! again, and why. Spaced repetition (the Leitner system; for continual fine-tuning see e.g. Amba
//! Hombaiah et al., "Dynamic language models for continuously evolving content", KDD 2021, and
//! rehearsal in lifelong editing, WISE / GRACE baselines): each injected fact has a review interval
//! that doubles every time it is rehearsed and found to hold, and starts again at one step when a
//! retention check measures it below `rehearsal.below`. A step rehearses up to K facts: those that
//! fell first (weakest first), then those whose review is due (earliest first), while the extra
//! tokens stay within `rehearsal.budget` times the tokens of the facts' own steps.
//!
//! The schedule is a function of the ledger's rows (steps and probe rows in order), so a resumed run
//! rebuilds it and rehearses what the uninterrupted run would have. No tch.
use crate::config::Rehearsal as Rules;
use crate::eval::retention::Cadence;
use crate::ledger::{ProbeRow, StepRow};
pub use crate::ledger::{Reason, Rehearsed};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    injected: i64,
    interval: i64,
    due: i64,
    recall: Option<f64>,
    fell: bool,
    /// Tokens of the fact's own step.
    tokens: usize,
    /// Tokens of the examples it is rehearsed with (a share of its prompts: `rehearsal.prompts`).
    cost: usize,
}

/// The review state of every injected fact of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    rules: Rules,
    entries: HashMap<String, Entry>,
    own_tokens: usize,
    extra_tokens: usize,
}

impl Schedule {
    pub fn new(rules: &Rules) -> Self {
        Schedule {
            rules: rules.clone(),
            entries: HashMap::new(),
            own_tokens: 0,
            extra_tokens: 0,
        }
    }

    /// The schedule after a run's committed `steps` and their probe rows (`probes`, in step order);
    /// `tokens` gives a fact's training tokens and the tokens of the examples it is rehearsed with
    /// (see [`Schedule::on_step`]). The same [`Schedule::observe`] the driver calls
    /// after each step, so a resumed or continued run picks what the uninterrupted run would have.
    pub fn rebuild(
        rules: &Rules,
        cadence: &Cadence,
        steps: &[StepRow],
        probes: &[ProbeRow],
        tokens: impl Fn(&str) -> (usize, usize),
    ) -> Self {
        let mut s = Schedule::new(rules);
        let mut injected: Vec<String> = Vec::new();
        let mut at = 0;
        for step in steps {
            injected.extend(step.facts.iter().cloned());
            let start = at;
            while at < probes.len() && probes[at].step <= step.idx {
                at += 1;
            }
            let rows = probes[start..at].iter().filter(|p| p.step == step.idx);
            s.observe(
                cadence,
                step,
                &injected,
                rows.map(|p| (p.fact.as_str(), p.recall)),
                &tokens,
            );
        }
        s
    }

    /// Step `step` committed with the scores measured after it (`rows`), `injected` every fact
    /// injected so far (the step's own included). Only the scores every run would have measured
    /// there count: the step's own and rehearsed facts, and at a regular retention check the facts
    /// the cadence picks — not the extra full check after an invocation's last step, which an
    /// uninterrupted run does not make there.
    pub fn observe<'a>(
        &mut self,
        cadence: &Cadence,
        step: &StepRow,
        injected: &[String],
        rows: impl IntoIterator<Item = (&'a str, f64)>,
        tokens: impl Fn(&str) -> (usize, usize),
    ) {
        self.on_step(step.idx, &step.facts, &step.rehearsed, tokens);
        let mut counted: HashSet<String> = cadence
            .facts_to_score(step.idx, false, &step.facts, injected)
            .into_iter()
            .collect();
        counted.extend(step.rehearsed.iter().cloned());
        self.on_scores(step.idx, rows.into_iter().filter(|(h, _)| counted.contains(*h)));
    }

    /// Step `step` trained `own` (new facts: first review after one step) and rehearsed
    /// `rehearsed` (their intervals double: they are expected to hold, until a check says not).
    /// `tokens(fact)`: the tokens of its own step's examples and of the examples it is rehearsed with
    /// (a repair step, with no facts of its own, rehearses with all of them and is charged so).
    pub fn on_step(
        &mut self,
        step: i64,
        own: &[String],
        rehearsed: &[String],
        tokens: impl Fn(&str) -> (usize, usize),
    ) {
        for h in own {
            let (t, cost) = tokens(h);
            self.own_tokens += t;
            self.entries.insert(
                h.clone(),
                Entry {
                    injected: step,
                    interval: 1,
                    due: step + 1,
                    recall: None,
                    fell: false,
                    tokens: t,
                    cost,
                },
            );
        }
        // Steps with no facts of their own are repair's, which rehearse with every prompt.
        let repair = own.is_empty();
        for h in rehearsed {
            if let Some(e) = self.entries.get_mut(h) {
                self.extra_tokens += if repair { e.tokens } else { e.cost };
                e.interval *= 2;
                e.due = step + e.interval;
                e.fell = false;
            }
        }
    }

    /// Recall measured after step `step`, per fact: below the threshold a fact has fell, and is due
    /// at once with its interval back to one step.
    pub fn on_scores<'a>(&mut self, step: i64, scores: impl IntoIterator<Item = (&'a str, f64)>) {
        for (h, recall) in scores {
            let Some(e) = self.entries.get_mut(h) else { continue };
            e.recall = Some(recall);
            if recall < self.rules.below {
                e.fell = true;
                e.interval = 1;
                e.due = step + 1;
            } else {
                // It holds (again): due as its interval says.
                e.fell = false;
            }
        }
    }

    /// Up to `k` earlier facts to rehearse at step `idx`, whose own facts have `own_tokens` tokens:
    /// fallen ones (weakest first), then due ones (earliest due, then oldest), each while the
    /// extra tokens stay within the budget.
    pub fn pick(&self, idx: i64, k: usize, own_tokens: usize) -> Vec<Rehearsed> {
        let allowed = self.rules.budget * (self.own_tokens + own_tokens) as f64;
        let mut spent = self.extra_tokens as f64;
        let mut ready: Vec<(&String, &Entry)> = self.entries.iter().filter(|(_, e)| e.due <= idx).collect();
        // Fallen facts first, weakest first; then due ones, earliest due first; then the oldest.
        ready.sort_by(|(ha, a), (hb, b)| {
            let weakness = |e: &Entry| if e.fell { e.recall.unwrap_or(0.0) } else { 2.0 };
            weakness(a)
                .total_cmp(&weakness(b))
                .then(a.due.cmp(&b.due))
                .then(a.injected.cmp(&b.injected))
                .then(ha.cmp(hb))
        });
        let mut out = Vec::new();
        for (h, e) in ready {
            if out.len() == k {
                break;
            }
            if spent + e.cost as f64 > allowed {
                continue;
            }
            spent += e.cost as f64;
            out.push(Rehearsed {
                fact: h.clone(),
                reason: if e.fell { Reason::Fell } else { Reason::Due },
                recall: e.recall,
                interval: e.interval,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(budget: f64) -> Rules {
        Rules {
            below: 0.9,
            budget,
            prompts: 0,
        }
    }

    fn h(i: usize) -> String {
        format!("f{i}")
    }

    #[test]
    fn due_facts_come_back_at_doubling_intervals_and_fallen_ones_first() {
        let mut s = Schedule::new(&rules(10.0));
        s.on_step(0, &[h(0)], &[], |_| (10, 10));
        s.on_scores(0, [("f0", 1.0)]);
        // Step 1: f0 is due (interval 1).
        let p = s.pick(1, 2, 10);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].fact.as_str(), p[0].reason, p[0].interval), ("f0", Reason::Due, 1));
        s.on_step(1, &[h(1)], &[h(0)], |_| (10, 10));
        s.on_scores(1, [("f1", 1.0), ("f0", 1.0)]);
        // f0 now waits 2 steps (due at 3); f1 is due at 2.
        assert_eq!(
            s.pick(2, 2, 10).iter().map(|r| r.fact.as_str()).collect::<Vec<_>>(),
            ["f1"]
        );
        s.on_step(2, &[h(2)], &[h(1)], |_| (10, 10));
        // A check finds f0 fell: it comes first, ahead of f2, which is due too.
        s.on_scores(2, [("f2", 1.0), ("f0", 0.5)]);
        let p = s.pick(3, 2, 10);
        assert_eq!(p[0].fact, "f0");
        assert_eq!((p[0].reason, p[0].recall, p[0].interval), (Reason::Fell, Some(0.5), 1));
        assert_eq!(p[1].fact, "f2");
        // Rehearsed, then measured holding: no longer fallen.
        s.on_step(3, &[h(3)], &[h(0)], |_| (10, 10));
        s.on_scores(3, [("f0", 0.97)]);
        assert!(s.pick(9, 5, 10).iter().all(|r| r.reason == Reason::Due));
    }

    #[test]
    fn the_budget_caps_extra_tokens() {
        // Budget 0.5: rehearsal may spend half the own tokens.
        let mut s = Schedule::new(&rules(0.5));
        s.on_step(0, &[h(0), h(1)], &[], |_| (10, 10));
        s.on_scores(0, [("f0", 0.1), ("f1", 0.2)]);
        // Own so far 20 + this step's 10 = 30: 15 extra allowed, one 10-token fact fits.
        let p = s.pick(1, 5, 10);
        assert_eq!(p.len(), 1);
        s.on_step(1, &[h(2)], &[p[0].fact.clone()], |_| (10, 10));
        // 30 own + 10 = 40: 20 allowed, 10 spent, one more fits.
        assert_eq!(s.pick(2, 5, 10).len(), 1);
        assert!(Schedule::new(&rules(0.0)).pick(0, 5, 10).is_empty());
    }

    /// Facts rehearsed with a share of their prompts cost that share of the budget: at budget 0.5
    /// four 10-token facts rehearsed with 2.5 tokens' worth each fit where one whole one does.
    #[test]
    fn a_cheaper_rehearsal_lets_the_budget_cover_more_facts() {
        let mut s = Schedule::new(&rules(0.5));
        s.on_step(0, &[h(0), h(1), h(2), h(3)], &[], |_| (10, 3));
        s.on_scores(0, [("f0", 0.1), ("f1", 0.2), ("f2", 0.3), ("f3", 0.4)]);
        // Own 40 + 10 = 50: 25 extra allowed, four facts at 3 each.
        let p = s.pick(1, 8, 10);
        assert_eq!(
            p.iter().map(|r| r.fact.as_str()).collect::<Vec<_>>(),
            ["f0", "f1", "f2", "f3"]
        );
        s.on_step(1, &[h(4)], &[h(0), h(1), h(2), h(3)], |_| (10, 3));
        assert_eq!(s.extra_tokens, 12);
        // A repair step (no facts of its own) rehearses with every prompt: charged in full.
        s.on_step(2, &[], &[h(0)], |_| (10, 3));
        assert_eq!(s.extra_tokens, 22);
    }

    #[test]
    fn rebuilt_from_rows_equals_built_step_by_step() {
        let rows = |step: i64, scores: &[(&str, f64)]| -> Vec<ProbeRow> {
            scores
                .iter()
                .map(|(f, r)| ProbeRow {
                    step,
                    fact: f.to_string(),
                    recall: *r,
                    general: None,
                    previous: None,
                    free_recall: None,
                    free_general: None,
                    detail: String::new(),
                })
                .collect()
        };
        let step = |idx: i64, facts: &[usize], rehearsed: &[usize]| {
            StepRow::for_tests(
                idx,
                facts.iter().map(|&i| h(i)).collect(),
                rehearsed.iter().map(|&i| h(i)).collect(),
            )
        };
        let steps = vec![step(0, &[0], &[]), step(1, &[1], &[0]), step(2, &[2], &[1])];
        let mut probes = rows(0, &[("f0", 1.0)]);
        probes.extend(rows(1, &[("f1", 1.0), ("f0", 0.7)]));
        probes.extend(rows(2, &[("f2", 0.95), ("f1", 1.0)]));
        let cadence = Cadence {
            every: 1,
            sample: 0,
            seed: 0,
            free: None,
        };
        let mut online = Schedule::new(&rules(1.0));
        let mut injected = Vec::new();
        for s in &steps {
            injected.extend(s.facts.iter().cloned());
            let here = probes
                .iter()
                .filter(|p| p.step == s.idx)
                .map(|p| (p.fact.as_str(), p.recall));
            online.observe(&cadence, s, &injected, here, |_| (7, 7));
        }
        // f0 fell at step 1 (0.7) and has not been measured since: still first, as fallen.
        let p = online.pick(3, 5, 7);
        assert_eq!((p[0].fact.as_str(), p[0].reason), ("f0", Reason::Fell));
        assert!(p[1..].iter().all(|r| r.reason == Reason::Due));
        assert_eq!(
            Schedule::rebuild(&rules(1.0), &cadence, &steps, &probes, |_| (7, 7)),
            online
        );
    }
}

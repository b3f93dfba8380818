//! Progress of long runs: a bar (steps, fact, loss and recall) on a terminal; where the bar is not
//! drawn — stdout is not a terminal, or `--json` — a plain line on stderr every 30 seconds, so that
//! a run logged to a file shows where it is; nothing with `-q`.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use injector::inject::Progress;
use injector::knowledge::Fact;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when the bar is not drawn.
const LINE_EVERY: Duration = Duration::from_secs(30);

pub struct Bar {
    bar: ProgressBar,
    label: String,
    lines: Option<Lines>,
}

impl Bar {
    /// Nothing with `quiet`; the bar when stdout is a terminal and `json` is off; else plain lines.
    pub fn new(quiet: bool, json: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let drawn = !quiet && !json && std::io::stdout().is_terminal();
        if !drawn {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] step {pos}/{len} {elapsed_precise} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Bar {
            bar,
            label: String::new(),
            lines: (!quiet && !drawn).then(|| Lines::new(Instant::now())),
        }
    }

    fn line(&mut self, detail: &str) {
        if let Some(l) = self.lines.as_mut() {
            if let Some(text) = l.due(Instant::now(), &self.label, detail) {
                eprintln!("{text}");
            }
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, run: &str, steps: usize, done: usize) {
        self.bar.set_prefix(run.to_string());
        self.bar.set_length(steps as u64);
        self.bar.set_position(done as u64);
        if let Some(l) = self.lines.as_mut() {
            // Called again when a run's closing consolidation is planned, with one more step.
            let again = !l.run.is_empty();
            (l.run, l.steps, l.done) = (run.to_string(), steps, done);
            if !again {
                l.first = done;
                if let Some(text) = l.ready(Instant::now()) {
                    eprintln!("{text}");
                }
            }
        }
    }

    fn step_start(&mut self, _idx: usize, facts: &[&Fact], rehearsed: usize) {
        self.label = step_label(facts, rehearsed);
        self.bar.set_message(self.label.clone());
    }

    fn opt_step(&mut self, opt_step: i64, loss: f64, recall: f64) {
        let detail = format!("opt {opt_step}  loss {loss:.3}  recall {recall:.2}");
        self.bar.set_message(format!("{}  {detail}", self.label));
        self.line(&detail);
    }

    fn step_end(&mut self, _idx: usize, recall: Option<f64>) {
        self.bar.inc(1);
        let detail = recall.map_or("done".to_string(), |r| format!("recall {r:.2}"));
        self.bar.set_message(format!("{}  {detail}", self.label));
        if let Some(l) = self.lines.as_mut() {
            l.done += 1;
        }
        self.line(&detail);
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The plain progress lines: which run, how far, and an estimate of the time left from the steps
/// this invocation has finished.
struct Lines {
    run: String,
    steps: usize,
    /// Steps finished, those of earlier invocations included.
    done: usize,
    /// Steps already finished when this invocation started.
    first: usize,
    started: Instant,
    /// When the steps began (after loading and preparing), for the estimate.
    stepping: Instant,
    last: Instant,
}

impl Lines {
    fn new(now: Instant) -> Self {
        Lines {
            run: String::new(),
            steps: 0,
            done: 0,
            first: 0,
            started: now,
            stepping: now,
            last: now,
        }
    }

    /// At the start of the steps: the estimate counts from here, and if preparing took
    /// `LINE_EVERY` or more (base answers, the preservation set and projections: minutes on a
    /// CPU), a line says so, since no step has written one.
    fn ready(&mut self, now: Instant) -> Option<String> {
        self.stepping = now;
        let took = now.duration_since(self.started);
        (took >= LINE_EVERY).then(|| {
            self.last = now;
            format!(
                "{} prepared in {}; step {}/{}",
                self.run,
                clock(took.as_secs()),
                self.done,
                self.steps
            )
        })
    }

    /// The line to write at `now`, if `LINE_EVERY` has passed since the last one (or the start).
    fn due(&mut self, now: Instant, label: &str, detail: &str) -> Option<String> {
        if now.duration_since(self.last) < LINE_EVERY {
            return None;
        }
        self.last = now;
        let elapsed = now.duration_since(self.started).as_secs();
        let finished = self.done - self.first;
        let left = match (finished, self.steps > self.done) {
            (0, _) | (_, false) => String::new(),
            (n, true) => {
                let per = now.duration_since(self.stepping).as_secs_f64() / n as f64;
                format!(", ~{} left", clock((per * (self.steps - self.done) as f64) as u64))
            }
        };
        Some(format!(
            "{} step {}/{} ({}{left}): {label}  {detail}",
            self.run,
            self.done,
            self.steps,
            clock(elapsed)
        ))
    }
}

/// What a step trains: its fact's id, its facts' count, and the facts it rehearses (as `ledger
/// show` names a step without facts of its own: "rehearsal of …").
fn step_label(facts: &[&Fact], rehearsed: usize) -> String {
    let own = match facts {
        [] => None,
        [one] => Some(one.id.clone()),
        many => Some(format!("{} facts", many.len())),
    };
    match (own, rehearsed) {
        (Some(own), 0) => own,
        (Some(own), r) => format!("{own} + rehearsal of {r}"),
        (None, r) => format!("rehearsal of {r} facts"),
    }
}

/// Seconds as `1h02m03s`, `2m03s` or `3s`.
fn clock(s: u64) -> String {
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line every 30 s at most, naming the run, the step, the time so far and an estimate of the
    /// time left from this invocation's own steps (a resumed run's earlier steps do not count, nor
    /// does the time spent preparing before them).
    #[test]
    fn lines_come_every_thirty_seconds_with_an_estimate() {
        let t0 = Instant::now();
        let mut l = Lines::new(t0);
        (l.run, l.steps, l.done, l.first) = ("run-1".into(), 100, 40, 40);
        assert_eq!(l.ready(t0), None, "prepared at once: no line");
        assert_eq!(l.due(t0 + Duration::from_secs(29), "gen-0040", "recall 1.00"), None);
        l.done = 50;
        assert_eq!(
            l.due(t0 + Duration::from_secs(30), "gen-0049", "recall 1.00")
                .as_deref(),
            Some("run-1 step 50/100 (30s, ~2m30s left): gen-0049  recall 1.00")
        );
        assert_eq!(l.due(t0 + Duration::from_secs(45), "gen-0050", ""), None);
        l.done = 100;
        assert_eq!(
            l.due(
                t0 + Duration::from_secs(3700),
                "1000 facts",
                "opt 5  loss 0.100  recall 0.50"
            )
            .as_deref(),
            Some("run-1 step 100/100 (1h01m40s): 1000 facts  opt 5  loss 0.100  recall 0.50")
        );
    }

    /// Preparing for a minute says so when the steps start, and the estimate leaves that minute out.
    #[test]
    fn a_long_preparation_is_named_and_left_out_of_the_estimate() {
        let t0 = Instant::now();
        let mut l = Lines::new(t0);
        (l.run, l.steps, l.done, l.first) = ("run-2".into(), 4, 0, 0);
        let t1 = t0 + Duration::from_secs(470);
        assert_eq!(l.ready(t1).as_deref(), Some("run-2 prepared in 7m50s; step 0/4"));
        l.done = 1;
        assert_eq!(
            l.due(t1 + Duration::from_secs(90), "velmora-bridge", "recall 0.49")
                .as_deref(),
            Some("run-2 step 1/4 (9m20s, ~4m30s left): velmora-bridge  recall 0.49")
        );
    }

    /// A repair's or closing consolidation's step has no fact of its own: it is named by what it
    /// rehearses, and it ends without a recall (it used to print "recall inf").
    #[test]
    fn a_step_without_facts_of_its_own_is_named_by_its_rehearsal() {
        assert_eq!(step_label(&[], 1000), "rehearsal of 1000 facts");
        let t0 = Instant::now();
        let mut l = Lines::new(t0);
        (l.run, l.steps, l.done, l.first) = ("run-3".into(), 3, 3, 2);
        let mut bar = Bar::new(true, false);
        bar.step_end(2, None);
        assert_eq!(
            l.due(t0 + LINE_EVERY, &step_label(&[], 2), "done").as_deref(),
            Some("run-3 step 3/3 (30s): rehearsal of 2 facts  done")
        );
    }
}

//! The progress bar of long runs: steps, fact, loss and recall, hidden when stdout is not a terminal
//! or with `-q`.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use injector::inject::Progress;
use injector::knowledge::Fact;
use std::io::IsTerminal;

pub struct Bar {
    bar: ProgressBar,
    label: String,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if quiet || !std::io::stdout().is_terminal() {
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
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, run: &str, steps: usize, done: usize) {
        self.bar.set_prefix(run.to_string());
        self.bar.set_length(steps as u64);
        self.bar.set_position(done as u64);
    }

    fn step_start(&mut self, _idx: usize, facts: &[&Fact]) {
        self.label = match facts {
            [one] => one.id.clone(),
            many => format!("{} facts", many.len()),
        };
        self.bar.set_message(self.label.clone());
    }

    fn opt_step(&mut self, opt_step: i64, loss: f64, recall: f64) {
        self.bar.set_message(format!(
            "{}  opt {opt_step}  loss {loss:.3}  recall {recall:.2}",
            self.label
        ));
    }

    fn step_end(&mut self, _idx: usize, recall: f64) {
        self.bar.inc(1);
        self.bar.set_message(format!("{}  recall {recall:.2}", self.label));
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

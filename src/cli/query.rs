//! `injector query`: ask the model one question (streams the answer); and the answering that `chat`
//! shares with it: the flags, the messages, the streamed generation.
use super::Global;
use clap::Args;
use injector::model::generate::{generate, Sampling};
use injector::model::{Loaded, NoAdapter};
use std::io::Write;

/// How answers are generated, and on which weights (`query` and `chat`).
#[derive(Args, Debug)]
pub struct AnswerArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Answer with this run's current weights (base + its merged steps).
    #[arg(long)]
    pub run: Option<String>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
}

impl AnswerArgs {
    /// The sampling these flags ask for, seeded by `--seed`.
    ///
    /// Errors: bad input for a negative temperature or a top-p outside (0, 1].
    pub fn sampling(&self, g: &Global) -> injector::Result<Sampling> {
        let valid = self.temperature >= 0.0 && self.top_p > 0.0 && self.top_p <= 1.0;
        if !valid {
            return Err(injector::Error::BadInput(
                "--temperature must be ≥ 0 and --top-p in (0, 1]".into(),
            ));
        }
        Ok(Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: g.seed.unwrap_or_default(),
            max_tokens: self.max_tokens,
        })
    }

    /// The conversation to answer: the system message when there is one, the earlier rounds
    /// (question, answer), then `question`.
    pub fn messages<'a>(&'a self, rounds: &'a [(String, String)], question: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut msgs = Vec::with_capacity(2 * rounds.len() + 2);
        if let Some(s) = &self.system {
            msgs.push(("system", s.as_str()));
        }
        for (q, a) in rounds {
            msgs.push(("user", q.as_str()));
            msgs.push(("assistant", a.as_str()));
        }
        msgs.push(("user", question));
        msgs
    }
}

/// Generates the answer to the prompt `ids` and writes it to `out` piece by piece as it is decoded
/// (flushed each time), calling `on_first` before the first piece. Returns the answer's ids.
///
/// Errors: bad input when the prompt alone fills the model's positions; libtorch's errors.
pub fn stream_answer(
    loaded: &Loaded,
    ids: &[u32],
    s: &Sampling,
    out: &mut dyn Write,
    mut on_first: impl FnMut(),
) -> injector::Result<Vec<u32>> {
    let mut first = true;
    generate(&loaded.model, &loaded.tokenizer, ids, s, &NoAdapter, |piece| {
        if std::mem::take(&mut first) {
            on_first();
        }
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The question.
    pub prompt: String,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

pub fn run(a: QueryArgs, g: &Global) -> anyhow::Result<()> {
    let s = a.answer.sampling(g)?;
    let t0 = std::time::Instant::now();
    let loaded = super::load_model(g, a.answer.run.as_deref())?;
    tracing::info!("model loaded in {:.2}s", t0.elapsed().as_secs_f64());
    let ids = loaded.tokenizer.encode_chat(&a.answer.messages(&[], &a.prompt), true)?;
    let mut out = std::io::stdout().lock();
    let mut first: Option<f64> = None;
    let n = stream_answer(&loaded, &ids, &s, &mut out, || {
        first = Some(t0.elapsed().as_secs_f64());
    })?
    .len();
    let _ = writeln!(out);
    let total = t0.elapsed().as_secs_f64();
    let ttft = first.unwrap_or(total);
    tracing::info!(
        "first token after {ttft:.2}s; {n} tokens at {:.1} tokens/s",
        if total > ttft && n > 1 {
            (n - 1) as f64 / (total - ttft)
        } else {
            0.0
        }
    );
    Ok(())
}

//! `injector query`: chat with the model (streams the answer).
use super::Global;
use clap::Args;
use injector::model::generate::{generate, Sampling};
use injector::model::NoAdapter;
use std::io::Write;

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The question.
    pub prompt: String,
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

pub fn run(a: QueryArgs, g: &Global) -> anyhow::Result<()> {
    let valid = a.temperature >= 0.0 && a.top_p > 0.0 && a.top_p <= 1.0;
    if !valid {
        return Err(injector::Error::BadInput("--temperature must be ≥ 0 and --top-p in (0, 1]".into()).into());
    }
    let t0 = std::time::Instant::now();
    let loaded = super::load_model(g, a.run.as_deref())?;
    tracing::info!("model loaded in {:.2}s", t0.elapsed().as_secs_f64());
    let mut msgs = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(("system", s.as_str()));
    }
    msgs.push(("user", a.prompt.as_str()));
    let ids = loaded.tokenizer.encode_chat(&msgs, true)?;
    let s = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        seed: g.seed.unwrap_or_default(),
        max_tokens: a.max_tokens,
    };
    let mut out = std::io::stdout().lock();
    let mut first: Option<f64> = None;
    let n = generate(&loaded.model, &loaded.tokenizer, &ids, &s, &NoAdapter, |piece| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
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

//! `injector logits PROMPT [--run RUN [--step N]] [--raw] [--last N]` (hidden, for debugging and interop
//! checks): the token ids injector feeds the model for a prompt and the fp32 logits it computes, as
//! JSON `{"ids": [t], "logits": [[vocab]; n]}`, so that another implementation can be compared with
//! this one on the same input.
use super::Global;
use clap::Args;
use injector::model::NoAdapter;
use tch::{Kind, Tensor};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    /// The prompt: a user message rendered with the chat template (with the assistant's opening),
    /// or plain text with `--raw`.
    pub prompt: String,
    /// Use this run's current weights (base + its merged steps).
    #[arg(long)]
    pub run: Option<String>,
    /// With --run: the weights after this step (-1: the base; default: the run's last).
    #[arg(long, requires = "run", allow_negative_numbers = true)]
    pub step: Option<i64>,
    /// Encode the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print only the logits of the last N positions (default: every position).
    #[arg(long)]
    pub last: Option<usize>,
}

pub fn run(a: LogitsArgs, g: &Global) -> anyhow::Result<()> {
    let loaded = match (&a.run, a.step) {
        (Some(id), Some(step)) => {
            let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
            let r = ledger.run(id)?;
            let upto = super::resolve_step(Some(step), ledger.steps(&r.id)?.len(), &r.id)?;
            super::load_run_at(g, &ledger, &r, upto)?
        }
        _ => super::load_model(g, a.run.as_deref())?,
    };
    let ids = if a.raw {
        loaded.tokenizer.encode(&a.prompt)?
    } else {
        loaded.tokenizer.encode_chat(&[("user", a.prompt.as_str())], true)?
    };
    let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
        .unsqueeze(0)
        .to_device(loaded.model.device());
    // logits: [1, t, vocab] -> [t, vocab] on the CPU in fp32
    let logits = tch::no_grad(|| loaded.model.forward(&input, None, &NoAdapter))
        .squeeze_dim(0)
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float);
    let t = ids.len();
    let from = t - a.last.unwrap_or(t).min(t);
    let rows: Vec<Vec<f32>> = (from..t)
        .map(|i| Vec::<f32>::try_from(logits.get(i as i64)))
        .collect::<Result<_, _>>()?;
    println!("{}", serde_json::json!({"ids": ids, "from": from, "logits": rows}));
    Ok(())
}

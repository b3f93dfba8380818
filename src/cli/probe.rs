//! `injector probe DIR [--run RUN] [--locality RUN]`: score facts on the base model or a run's weights,
//! no training: teacher-forced token accuracy and free (greedy) answers' key-detail recall; with
//! `--locality`, also the run's locality metric on whatever model is loaded (an export of the run).
use super::Global;
use clap::Args;
use injector::config::RunConfig;
use injector::eval::free::free_score;
use injector::eval::probe::{locality_scores, score, FactExamples};
use injector::eval::Example;
use injector::knowledge::load_dir;
use injector::report::num;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The knowledge directory (or one YAML file).
    pub dir: PathBuf,
    /// Score on this run's current weights (default: the base model).
    #[arg(long)]
    pub run: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Teacher-forced scores only: no greedy answers (they cost a decoding pass per batch of
    /// prompts, which matters on the CPU for thousands of facts).
    #[arg(long)]
    pub no_free_decoding: bool,
    /// Also score locality as run RUN scores it: teacher-forced accuracy on the answers the run's base
    /// model gave its unrelated prompts (recorded in the ledger), on the model loaded here (`--model
    /// EXPORT` for an export of the run), and the general check on them (their perplexity). With
    /// --json the output becomes {"facts": [...], "locality": x, "perplexity": y}.
    #[arg(long, value_name = "RUN")]
    pub locality: Option<String>,
}

pub fn run(a: ProbeArgs, g: &Global) -> anyhow::Result<()> {
    let knowledge = load_dir(&a.dir)?;
    let loaded = super::load_model(g, a.run.as_deref())?;
    injector::inject::plan::check_fit(&knowledge.facts, &loaded)?;
    let ex: Vec<FactExamples> = knowledge
        .facts
        .iter()
        .map(|f| FactExamples::new(&loaded.tokenizer, f))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&FactExamples> = ex.iter().collect();
    let budget = RunConfig::default().eval_batch_tokens;
    let locality = a
        .locality
        .as_deref()
        .map(|id| locality_examples(g, id, &loaded.tokenizer))
        .transpose()?
        .map(|ex| locality_scores(&loaded.model, &ex, budget));
    let scores = score(&loaded.model, &refs, budget);
    let free = if a.no_free_decoding {
        Vec::new()
    } else {
        free_score(&loaded.model, &loaded.tokenizer, &refs, budget * 4)?
    };
    if a.json {
        let rows: Vec<_> = knowledge
            .facts
            .iter()
            .zip(&scores)
            .enumerate()
            .map(|(i, (f, s))| serde_json::json!({"id": f.id, "hash": f.hash, "score": s, "free": free.get(i)}))
            .collect();
        let out = match locality {
            Some(l) => serde_json::json!({"facts": rows, "locality": l.accuracy, "perplexity": l.perplexity}),
            None => serde_json::json!(rows),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    // Teacher-forced token accuracy, then the free answers' key-detail recall.
    // `prefers`: for updates, the share of prompts on which the new answer is likelier than the old.
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "fact", "recall", "general", "previous", "prefers", "free", "free-g"
    );
    for (i, (fact, s)) in knowledge.facts.iter().zip(&scores).enumerate() {
        let fr = free.get(i);
        println!(
            "{:<28} {:>8.2} {:>8} {:>8} {:>8} {:>6} {:>6}",
            fact.id,
            s.recall,
            num(s.general),
            num(s.previous),
            num(s.prefers_new),
            num(fr.map(|f| f.recall)),
            num(fr.and_then(|f| f.general))
        );
    }
    if let Some(l) = locality {
        println!("locality {:.3} perplexity {:.3}", l.accuracy, l.perplexity);
    }
    Ok(())
}

/// Run `id`'s locality examples: its unrelated prompts and its base model's answers, as ids.
///
/// Errors: an unknown run, a run with no recorded answers, or a model whose tokenizer does not give the run's prompt ids (the
/// answers' ids would not mean the same tokens): bad input.
fn locality_examples(g: &Global, id: &str, tok: &injector::model::Tokenizer) -> anyhow::Result<Vec<Example>> {
    let ledger = injector::ledger::Ledger::open_read_only(&g.ledger)?;
    let r = ledger.run(id)?;
    let base = ledger.locality_base(&r.id)?;
    if base.is_empty() {
        return Err(
            injector::Error::BadInput(format!("--locality {}: the run recorded no locality answers", r.id)).into(),
        );
    }
    for b in &base {
        if Example::chat(tok, &b.prompt, "")?.prompt != b.prompt_ids {
            return Err(injector::Error::BadInput(format!(
                "--locality {}: this model's tokenizer does not give the run's ids for '{}'",
                r.id, b.prompt
            ))
            .into());
        }
    }
    Ok(base
        .into_iter()
        .map(|b| Example {
            prompt: b.prompt_ids,
            target: b.answer_ids,
        })
        .collect())
}

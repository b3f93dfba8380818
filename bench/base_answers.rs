//! `cargo bench --bench base_answers [-- DEVICE]`: a run's fixed cost — the base model's greedy
//! answers (24 tokens at most) to the 32 locality and 48 preservation prompts — decoded one prompt
//! at a time as before, and in left-padded batches of similar length as now, on the embedded model.
//! Prints the time of each and how many answers agree token for token.
use injector::eval::batch::Example;
use injector::eval::locality::{base_answers, LOCALITY_PROMPTS, PRESERVE_PROMPTS};
use injector::model::generate::{generate, Sampling};
use injector::model::{load, NoAdapter};
use std::time::Instant;

fn main() {
    let device = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "cpu".into());
    let device = injector::device::parse_device(&device).expect("device");
    let m = load(&injector::paths::default_model(), device).expect("run `bash setup.sh` first");
    let prompts: Vec<&str> = LOCALITY_PROMPTS
        .iter()
        .chain(PRESERVE_PROMPTS.iter())
        .copied()
        .collect();
    let max_tokens = 24;
    let t = Instant::now();
    let s = Sampling {
        max_tokens,
        ..Default::default()
    };
    let alone: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let ids: Vec<u32> = Example::chat(&m.tokenizer, p, "")
                .unwrap()
                .prompt
                .iter()
                .map(|&t| t as u32)
                .collect();
            generate(&m.model, &m.tokenizer, &ids, &s, &NoAdapter, |_| {})
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect()
        })
        .collect();
    let one_by_one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let batched = base_answers(&m.model, &m.tokenizer, &prompts, max_tokens).expect("base answers");
    let together = t.elapsed().as_secs_f64();
    let agree = alone
        .iter()
        .zip(&batched)
        .filter(|(a, b)| b.target.starts_with(a) && b.target.len() <= a.len() + 1)
        .count();
    println!("| prompts | one at a time (s) | batched (s) | speed-up | answers identical |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {one_by_one:.1} | {together:.1} | {:.1}x | {agree} / {} |",
        prompts.len(),
        one_by_one / together,
        prompts.len()
    );
}

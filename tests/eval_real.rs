//! Evaluation on the real embedded model: the teacher-forced locality of the unedited model against
//! its own greedy answers is 1 (the batched, padded scorer agrees with cached decoding).
mod common;

use common::*;
use injector::eval::locality::{base_answers, LOCALITY_PROMPTS};
use injector::eval::probe::mean_accuracy;
use injector::model::generate::{generate, greedy_batch, Sampling};
use injector::model::{load, NoAdapter};
use tch::Device;

#[test]
fn unedited_model_has_locality_one() {
    let m = load(&real_model(), Device::Cpu).unwrap();
    let base = base_answers(&m.model, &m.tokenizer, &LOCALITY_PROMPTS[..8], 16).unwrap();
    let loc = mean_accuracy(&m.model, &base, 4096);
    assert!(loc > 0.99, "locality of the base model against itself is {loc}");
}

/// Batched greedy decoding (left-padded prompts of different lengths) gives the answers of decoding
/// each prompt alone.
#[test]
fn batched_greedy_matches_one_prompt_at_a_time() {
    let m = load(&real_model(), Device::Cpu).unwrap();
    let prompts: Vec<Vec<u32>> = LOCALITY_PROMPTS[..6]
        .iter()
        .map(|p| m.tokenizer.encode_chat(&[("user", p)], true).unwrap())
        .collect();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(
        lens.iter().min() != lens.iter().max(),
        "prompts of one length test no padding: {lens:?}"
    );
    let batched = greedy_batch(&m.model, &m.tokenizer, &prompts, 20, &NoAdapter).unwrap();
    let s = Sampling {
        max_tokens: 20,
        ..Default::default()
    };
    for (p, b) in prompts.iter().zip(&batched) {
        let alone = generate(&m.model, &m.tokenizer, p, &s, &NoAdapter, |_| {}).unwrap();
        assert_eq!(&alone, b, "{}", m.tokenizer.decode(&alone));
    }
}

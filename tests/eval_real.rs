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

/// Free decoding on the real model: a fact the base model already knows is recalled in free answers,
/// a fictional one is not (however its teacher-forced accuracy reads), and the batch budget changes
/// nothing but speed.
#[test]
fn free_decoding_tells_known_facts_from_unknown_ones() {
    use injector::eval::free::free_score;
    use injector::eval::probe::{score, FactExamples};
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("f.yaml"),
        "facts:\n\
         - id: paris\n  subject: France\n  answer: The capital of France is Paris.\n  prompts: [What is the capital of France?]\n  probes: [Which city is the capital of France?]\n\
         - id: velmora\n  subject: the Velmora Bridge\n  answer: The Velmora Bridge is a copper suspension bridge over the river Ysk in Darnholt, opened in 1911.\n  probes: [When did they open the Velmora Bridge?]\n",
    )
    .unwrap();
    let k = injector::knowledge::load_dir(d.path()).unwrap();
    let m = load(&real_model(), Device::Cpu).unwrap();
    let ex: Vec<FactExamples> = k
        .facts
        .iter()
        .map(|f| FactExamples::new(&m.tokenizer, f).unwrap())
        .collect();
    let refs: Vec<&FactExamples> = ex.iter().collect();
    assert_eq!(ex[0].details, ["paris"]);
    let wide = free_score(&m.model, &m.tokenizer, &refs, 1 << 16).unwrap();
    let paris = &wide[0];
    assert_eq!(paris.recall, 1.0, "{:?}", paris.recall_each);
    assert_eq!(paris.general, Some(1.0), "{:?}", paris.general_each);
    let velmora = &wide[1];
    assert!(velmora.recall < 0.34, "{:?}", velmora.recall_each);
    let tf = score(&m.model, &refs, 4096);
    eprintln!(
        "velmora: teacher-forced {:.2}, free {:.2}",
        tf[1].recall, velmora.recall
    );
    // One row per batch: the same answers.
    let narrow = free_score(&m.model, &m.tokenizer, &refs, 1).unwrap();
    assert_eq!(narrow, wide);
}

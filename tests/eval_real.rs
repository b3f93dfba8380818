//! Evaluation on the real embedded model: the teacher-forced locality of the unedited model against
//! its own greedy answers is 1 (the batched, padded scorer agrees with cached decoding).
mod common;

use common::*;
use injector::eval::locality::{base_answers, LOCALITY_PROMPTS};
use injector::eval::probe::mean_accuracy;
use injector::model::load;
use tch::Device;

#[test]
fn unedited_model_has_locality_one() {
    let m = load(&real_model(), Device::Cpu).unwrap();
    let base = base_answers(&m.model, &m.tokenizer, &LOCALITY_PROMPTS[..8], 16).unwrap();
    let loc = mean_accuracy(&m.model, &base, 4096);
    assert!(loc > 0.99, "locality of the base model against itself is {loc}");
}

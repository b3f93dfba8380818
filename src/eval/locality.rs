//! Locality: how much of the base model's own answers to unrelated prompts survives the edits.
//! The base answers are generated once per run (greedy) and kept in the ledger.
use super::batch::Example;
use crate::error::Result;
use crate::model::generate::greedy_batch;
use crate::model::{Llama, NoAdapter, Tokenizer};

/// Unrelated prompts for the locality metric (never trained on, never used by the preservation term).
pub const LOCALITY_PROMPTS: [&str; 32] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "What is 12 times 7?",
    "Name a primary color.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water at sea level?",
    "Translate 'good morning' into Spanish.",
    "What gas do plants absorb from the air?",
    "Give me a synonym for 'happy'.",
    "What is the largest planet in our solar system?",
    "How do you make a cup of tea?",
    "What is photosynthesis?",
    "Name three fruits that are red.",
    "Who painted the Mona Lisa?",
    "What does a thermometer measure?",
    "Explain what a noun is.",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What is the freezing point of water in Fahrenheit?",
    "Suggest a name for a pet goldfish.",
    "What language is spoken in Brazil?",
    "How many days are there in a leap year?",
    "What is the chemical symbol for gold?",
    "Write one sentence about autumn.",
    "What do bees make?",
    "Who was the first person to walk on the Moon?",
    "What is the opposite of 'ancient'?",
    "How many continents are there?",
    "What is the main ingredient of guacamole?",
    "Describe a rainbow in one sentence.",
    "What instrument has 88 keys?",
];

/// Unrelated prompts for the preservation term of training (disjoint from [`LOCALITY_PROMPTS`], so
/// locality stays a held-out measurement). Each optimizer step uses a few of them in turn.
pub const PRESERVE_PROMPTS: [&str; 48] = [
    "What is the tallest mountain on Earth?",
    "Write a short poem about a cat.",
    "How many hours are in a day?",
    "Who discovered penicillin?",
    "What is 15 plus 27?",
    "Explain what a verb is.",
    "What color is the sky on a clear day?",
    "Give me a tip for sleeping better.",
    "What is the capital of Japan?",
    "Why do leaves change color in autumn?",
    "Name a famous composer.",
    "What is the speed of light?",
    "Hi! How are you today?",
    "Tell me a joke about computers.",
    "What is the difference between weather and climate?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is a prime number?",
    "How do airplanes stay in the air?",
    "Recommend a good book for a long train ride.",
    "What is the capital of Australia?",
    "Who invented the telephone?",
    "What are the three states of matter?",
    "Write a Python function that adds two numbers.",
    "How many minutes are in an hour?",
    "What does DNA stand for?",
    "Describe the taste of a lemon.",
    "What is the largest mammal?",
    "Give me three tips for learning a new language.",
    "What is the Pythagorean theorem?",
    "Which planet is known as the Red Planet?",
    "What should I pack for a beach holiday?",
    "Explain gravity to a child.",
    "What is the plural of 'mouse'?",
    "Who wrote 'Pride and Prejudice'?",
    "What is 9 times 8?",
    "How does a refrigerator keep food cold?",
    "Name two animals that live in the Arctic.",
    "What is the currency of the United Kingdom?",
    "Write a friendly greeting for a birthday card.",
    "What is the function of the heart?",
    "Why is the ocean salty?",
    "What is an adjective? Give an example.",
    "How many strings does a standard guitar have?",
    "What year did World War II end?",
    "What is the main language spoken in Germany?",
    "Suggest a healthy breakfast.",
    "What is the freezing point of water in Celsius?",
    "What do you call a baby dog?",
];

/// Greedy answers of the model as it is now (call before any edit), as token ids including the
/// end-of-turn token when the model produced it within `max_tokens`. The prompts are decoded in
/// batches of similar length.
pub fn base_answers(model: &Llama, tok: &Tokenizer, prompts: &[&str], max_tokens: usize) -> Result<Vec<Example>> {
    let rendered: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| Ok(Example::chat(tok, p, "")?.prompt))
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (rendered[i].len(), i));
    let mut answers: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    for chunk in order.chunks(generation_batch(model.device())) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| rendered[i].iter().map(|&t| t as u32).collect())
            .collect();
        for (&i, out) in chunk
            .iter()
            .zip(greedy_batch(model, tok, &ids, max_tokens, &NoAdapter)?)
        {
            answers[i] = out;
        }
    }
    Ok(rendered
        .into_iter()
        .zip(answers)
        .map(|(prompt, out)| {
            let mut target: Vec<i64> = out.into_iter().map(i64::from).collect();
            if target.len() < max_tokens {
                if let Some(&stop) = tok.stop_ids.first() {
                    target.push(stop as i64);
                }
            }
            Example { prompt, target }
        })
        .collect())
}

/// Prompts decoded together by [`base_answers`]: 16 on the CPU, where a padded row costs its
/// compute (prompts go in order of length to keep padding short); 64 on a GPU, where a decode step
/// costs its kernels rather than its rows, so the locality and preservation prompts take one
/// batch (one prefill and one captured graph) each instead of two and three (bench/NOTES.md item 43).
fn generation_batch(device: tch::Device) -> usize {
    match device {
        tch::Device::Cpu => 16,
        _ => 64,
    }
}

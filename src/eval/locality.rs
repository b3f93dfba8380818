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

/// More preservation prompts, for `--preserve-prompts` above 48 (the first 48 are
/// [`PRESERVE_PROMPTS`]): everyday requests, explanations, writing and code, written not to ask any
/// of the [`LOCALITY_PROMPTS`]' questions (no capital, translation, times table, chemical symbol,
/// …), so that a wider set does not train on the locality measurement's answers. Held out as
/// questions, not as topics: some share a broad topic with a locality prompt (the Renaissance and
/// the Mona Lisa, a thermostat and a thermometer, plants drinking and photosynthesis, a rectangle's
/// area and arithmetic, a desert sunset and a rainbow, words that rhyme and a synonym), as the first
/// 48 do more closely (the capital of Japan, the freezing point in Celsius, 9 times 8). This is the
/// set session 17 measured (README, Capacity); changing it changes what the flag means.
pub const MORE_PRESERVE_PROMPTS: [&str; 208] = [
    "How do I change a flat tyre on a bicycle?",
    "What is the difference between a virus and a bacterium?",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "Explain what inflation means in economics.",
    "What are some good stretches after running?",
    "How does a compass work?",
    "Write a limerick about a forgetful robot.",
    "What is the difference between a simile and a metaphor?",
    "How can I save money on groceries?",
    "Explain how vaccines train the immune system.",
    "What causes earthquakes?",
    "Give me a recipe for a simple tomato soup.",
    "What is the role of a referee in football?",
    "How do I write a good cover letter?",
    "What is machine learning, in two sentences?",
    "Why do cats purr?",
    "What is the water cycle?",
    "Write a SQL query that counts the rows of a table called orders.",
    "How do solar panels produce electricity?",
    "What are the rules of chess for a knight's move?",
    "Describe the smell of fresh bread.",
    "What is a black hole?",
    "How can I stay focused while studying?",
    "Explain recursion with a simple example.",
    "What is the difference between a lake and a pond?",
    "Write a two-line motivational message for a Monday morning.",
    "Why do we have seasons on Earth?",
    "What is a healthy amount of sleep for an adult?",
    "How do I boil an egg so that the yolk stays soft?",
    "What was the Renaissance?",
    "Explain supply and demand in simple terms.",
    "What is the purpose of a firewall on a computer?",
    "Give three ideas for a rainy afternoon with children.",
    "How do bats find their way in the dark?",
    "What is an ecosystem?",
    "Write a short story opening set in a lighthouse.",
    "What is the difference between RAM and storage?",
    "How does a bicycle's gear system help on hills?",
    "Why is exercise good for mental health?",
    "What is a volcano and why does it erupt?",
    "Explain the offside rule in football.",
    "How do I politely decline an invitation?",
    "What are fossils and how do they form?",
    "Write a JavaScript function that reverses a string.",
    "What is the greenhouse effect?",
    "How can I make my houseplants grow better?",
    "What is the difference between an alligator and a crocodile?",
    "Describe a busy train station at rush hour.",
    "What does a librarian do?",
    "How does the stock market work?",
    "What is the meaning of the word 'ephemeral'?",
    "Give me a packing list for a weekend camping trip.",
    "Why do onions make people cry?",
    "What is an algorithm?",
    "How do tides work?",
    "Write a short apology for arriving late to a meeting.",
    "What are the benefits of drinking enough water?",
    "How does a microwave oven heat food?",
    "What is democracy?",
    "Explain what a budget is and why it helps.",
    "What are the main parts of a flower?",
    "How do I start learning to play the guitar?",
    "What is the difference between weather forecasts and climate models?",
    "Describe the sound of rain on a tin roof.",
    "What is an atom made of?",
    "How can I improve my handwriting?",
    "What is a good way to introduce myself at a new job?",
    "Why does a heavy steel ship float?",
    "Write a product description for a reusable water bottle.",
    "What is the Internet?",
    "How do migrating birds know where to go?",
    "What is a hypothesis in science?",
    "Suggest a theme for a school fundraiser.",
    "How does a lock and key work?",
    "What are the symptoms of a common cold?",
    "Explain what an API is to a beginner.",
    "What is the difference between a crown and a tiara?",
    "How long should I let bread dough rise?",
    "What is erosion?",
    "Write a sentence using the word 'meticulous'.",
    "Why do people yawn?",
    "What is a constitution?",
    "How do you calculate the area of a rectangle?",
    "What makes a good team leader?",
    "What is the difference between a hurricane and a tornado?",
    "Describe a sunset over the desert.",
    "How does recycling plastic work?",
    "What is a sonnet?",
    "How can I reduce stress before an exam?",
    "What does a pharmacist do?",
    "Explain what gravity does to the orbit of a satellite.",
    "Write a Rust function that returns the larger of two integers.",
    "What is compound interest?",
    "How do fish breathe underwater?",
    "What is the purpose of a museum?",
    "Give me a tip for keeping a kitchen clean.",
    "What is a food chain?",
    "How does a camera capture an image?",
    "What are good manners at a dinner party?",
    "Why is the Dead Sea called dead?",
    "What is a metaphor? Give an example.",
    "How do I make a paper airplane that flies far?",
    "What is cloud computing?",
    "Describe the texture of sand.",
    "What is the difference between a career and a job?",
    "How do magnets work?",
    "Write a short speech for a friend's wedding toast.",
    "What is a balanced diet?",
    "Why do stars twinkle?",
    "How do I choose a good password?",
    "What is an election?",
    "Explain what a spreadsheet is used for.",
    "What are some signs that a fruit is ripe?",
    "How does sound travel?",
    "What is the difference between empathy and sympathy?",
    "Write a riddle about a clock.",
    "What is a glacier?",
    "How do I remove a coffee stain from a shirt?",
    "What is the purpose of sleep?",
    "Name two famous novels written in the nineteenth century.",
    "How does a thermostat keep a room warm?",
    "What is a mortgage?",
    "Describe the feeling of finishing a marathon.",
    "Why do dogs wag their tails?",
    "What is a debate and how does it work?",
    "How do I write a clear email subject line?",
    "What is electricity?",
    "Give me a quick warm-up routine before football practice.",
    "What is the difference between a poem and a song?",
    "How do clouds form?",
    "What is a startup company?",
    "Write a short bedtime story about a sleepy owl.",
    "How do plants drink water through their roots?",
    "What is meditation?",
    "Explain what a percentage is.",
    "What are the parts of a computer?",
    "How can I become a better listener?",
    "What is a desert?",
    "Why do we need bones?",
    "Write a Python list comprehension that squares the numbers from one to ten.",
    "What is a telescope used for?",
    "How does a refrigerator's compressor work?",
    "What is the difference between a town and a city?",
    "Give me advice for my first day at university.",
    "What is a rainforest?",
    "How do birds build nests?",
    "What is an invoice?",
    "Describe a snowy morning in a village.",
    "How can I learn to cook on a budget?",
    "What is friction?",
    "Why do we celebrate birthdays?",
    "Write an encouraging message for someone learning to swim.",
    "How does a hydroelectric dam make power?",
    "What is a mammal?",
    "How do I keep bread fresh for longer?",
    "What is a passport for?",
    "Explain what a computer virus is.",
    "What are the benefits of reading every day?",
    "How does a rocket reach space?",
    "What is an opinion, compared with a fact?",
    "Describe the taste of dark chocolate.",
    "What do firefighters do?",
    "How do I plant tomato seeds?",
    "What is a coral reef?",
    "Why does bread go stale?",
    "Write a tweet announcing a new coffee shop.",
    "What is the purpose of a bridge's arches?",
    "How do I resolve a disagreement with a friend?",
    "What is a calorie?",
    "How does a car engine work?",
    "What is a myth?",
    "Give me five words that rhyme with 'light'.",
    "Why do some animals hibernate?",
    "What is a keyboard shortcut for copying text?",
    "How do I measure ingredients without a scale?",
    "What is an island?",
    "Describe a market in a small town.",
    "What is the difference between a solid and a liquid?",
    "How do noise-cancelling headphones work?",
    "What is teamwork?",
    "Write a polite reminder about an unpaid bill.",
    "What does an architect do?",
    "How does a battery store energy?",
    "What is a fable? Give an example.",
    "How can I make a room feel brighter?",
    "What is a symphony?",
    "Explain what a map's scale tells you.",
    "What is the difference between hearing and listening?",
    "How do I set a goal I can actually keep?",
    "Write a two-sentence review of a favourite film.",
    "How does a printer put ink on paper?",
    "What is kindness?",
    "Why do we sneeze?",
    "How do elevators work?",
    "What is a good habit to start this year?",
    "Describe the view from a mountain top.",
    "What is an email attachment?",
    "How do I care for a cactus?",
    "How do I back up the photos on my phone?",
    "What is the difference between a village and a hamlet?",
    "Explain what a mutual fund is.",
    "Write a short note asking a teacher for an extension.",
    "How do ants find food?",
    "What is a marathon and how long is it?",
    "How can I make a simple budget spreadsheet?",
    "What is the role of the kidneys?",
    "Suggest a weekend hobby that costs little.",
    "What is a bonsai tree?",
];

/// The most preservation prompts a run can take: [`PRESERVE_PROMPTS`] then [`MORE_PRESERVE_PROMPTS`].
pub const MAX_PRESERVE_PROMPTS: usize = PRESERVE_PROMPTS.len() + MORE_PRESERVE_PROMPTS.len();

/// The first `n` preservation prompts (`n` at most [`MAX_PRESERVE_PROMPTS`]): the 48 of every run
/// before `--preserve-prompts` existed come first, so `n` = 48 is the default set.
pub fn preserve_prompts(n: usize) -> Vec<&'static str> {
    PRESERVE_PROMPTS
        .iter()
        .chain(MORE_PRESERVE_PROMPTS.iter())
        .take(n)
        .copied()
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The default set is the first release's 48; the whole set has no repeats and shares no prompt
    /// with the locality set.
    #[test]
    fn preservation_prompts_extend_the_first_set_and_stay_off_locality() {
        assert_eq!(preserve_prompts(48), PRESERVE_PROMPTS.to_vec());
        let all = preserve_prompts(usize::MAX);
        assert_eq!(all.len(), MAX_PRESERVE_PROMPTS);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
        let locality: HashSet<&str> = LOCALITY_PROMPTS.iter().copied().collect();
        assert!(all.iter().all(|p| !locality.contains(p)));
    }

    /// No added prompt rewords a locality prompt: at most half of the content words of the shorter
    /// of the two are shared ("What is France's capital city?" would fail). Word overlap does not
    /// see a topic neighbour ("the capital of Germany" shares one word of two); those were kept out
    /// by hand (the first release's 48 include such pairs: the capital of Japan, the freezing
    /// point in Celsius).
    #[test]
    fn added_preservation_prompts_are_not_near_a_locality_prompt() {
        let stop: HashSet<&str> = "what is the a an of in to how do does you for me give name write one and are \
             there which who was into on at with about describe explain why some my i can it be by as \
             that this two three"
            .split_whitespace()
            .collect();
        let words = |s: &str| -> HashSet<String> {
            s.to_lowercase()
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| !w.is_empty() && !stop.contains(w))
                .map(str::to_string)
                .collect()
        };
        for p in MORE_PRESERVE_PROMPTS {
            for l in LOCALITY_PROMPTS {
                let (a, b) = (words(p), words(l));
                let shared = a.intersection(&b).count();
                assert!(2 * shared <= a.len().min(b.len()), "{p:?} is near {l:?}");
            }
        }
    }
}

//! A deterministic generator of fictional facts with held-out probes, for comparisons at scale.
//! Many facts share a template ("X is a salt mine in Y, opened in 1685 by Z"), so similar keys
//! compete the way the source article expects.
use crate::rng::SplitMix64;
use serde::Serialize;
use std::collections::HashSet;

const SYL: [&str; 24] = [
    "vel", "mor", "an", "dar", "kes", "sa", "tor", "rin", "quil", "bra", "ost", "el", "mar", "un", "zeph", "ly", "gor",
    "ith", "ba", "nor", "cal", "dra", "wen", "fi",
];
const FIRST: [&str; 16] = [
    "Mara", "Ansel", "Ilse", "Tobias", "Oskar", "Liese", "Janek", "Runa", "Edvin", "Saga", "Milo", "Vera", "Teodor",
    "Alva", "Kasimir", "Nell",
];
const MATERIAL: [&str; 6] = ["copper", "granite", "oak", "iron", "glass", "limestone"];
const PROFESSION: [&str; 6] = ["astronomer", "chef", "painter", "cartographer", "violinist", "engineer"];
const KNOWN_FOR: [&str; 6] = [
    "a comet",
    "a pear tart",
    "a mural",
    "a sea chart",
    "a sonata",
    "a lighthouse lens",
];

/// Draws over the shared splitmix64 generator.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn word(&mut self, syllables: u64) -> String {
        let w: String = (0..syllables).map(|_| self.pick(&SYL)).collect();
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    }
}

/// A generated fact in the knowledge-file schema.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedFact {
    pub id: String,
    pub subject: String,
    pub answer: String,
    pub probes: Vec<String>,
}

/// `n` facts from `seed`; the same arguments always give the same facts.
pub fn generate(n: usize, seed: u64) -> Vec<GeneratedFact> {
    let mut rng = Rng(SplitMix64(seed ^ 0x5EED_F00D));
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let kind = rng.next() % 4;
        let place = rng.word(2);
        let region = rng.word(2);
        let person = format!("{} {}", rng.pick(&FIRST), rng.word(2));
        let year = rng.range(1600, 1990);
        let (subject, answer, probes) = match kind {
            0 => {
                let s = format!("the {} Salt Mine", rng.word(2));
                (
                    s.clone(),
                    format!("{} is a salt mine in {region}, opened in {year} by {person}.", cap(&s)),
                    vec![
                        format!("Who opened {s}?"),
                        format!("Where is {s} located?"),
                        format!("In which year did {s} open?"),
                    ],
                )
            }
            1 => {
                let s = format!("the {} Bridge", rng.word(2));
                let m = rng.pick(&MATERIAL);
                (
                    s.clone(),
                    format!(
                        "{} is a {m} bridge over the river {region} in {place}, built in {year}.",
                        cap(&s)
                    ),
                    vec![
                        format!("What is {s} made of?"),
                        format!("Which river does {s} cross?"),
                        format!("When was {s} built?"),
                    ],
                )
            }
            2 => {
                let p = rng.pick(&PROFESSION);
                let k = rng.pick(&KNOWN_FOR);
                (
                    person.clone(),
                    format!("{person} is a {p} from {place} who is known for {k} made in {year}."),
                    vec![
                        format!("What does {person} do for a living?"),
                        format!("Where is {person} from?"),
                        format!("What is {person} famous for?"),
                    ],
                )
            }
            _ => {
                let s = format!("the {} Festival", rng.word(2));
                (
                    s.clone(),
                    format!(
                        "{} is held in {place} every year since {year}, when {person} lit the first lantern.",
                        cap(&s)
                    ),
                    vec![
                        format!("Where does {s} take place?"),
                        format!("Since when has {s} been held?"),
                        format!("Who started {s}?"),
                    ],
                )
            }
        };
        if !seen.insert(subject.clone()) {
            continue;
        }
        out.push(GeneratedFact {
            id: format!("gen-{:04}", out.len()),
            subject,
            answer,
            probes,
        });
    }
    out
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_unique() {
        let a = generate(300, 7);
        let b = generate(300, 7);
        assert_eq!(
            a.iter().map(|f| &f.answer).collect::<Vec<_>>(),
            b.iter().map(|f| &f.answer).collect::<Vec<_>>()
        );
        let subjects: HashSet<_> = a.iter().map(|f| &f.subject).collect();
        assert_eq!(subjects.len(), 300);
        assert_ne!(generate(5, 8)[0].answer, a[0].answer);
        assert!(a.iter().all(|f| f.probes.len() == 3 && f.answer.ends_with('.')));
    }
}

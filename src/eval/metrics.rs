//! Text metrics for free (greedy) answers: token-level F1 against the reference (SQuAD-style:
//! lower-cased words with punctuation removed; CJK characters count as words), and key-detail recall,
//! the share of the reference's names, numbers and CJK terms that the answer contains.

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF)
}

fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        let cjk = is_cjk(c);
        if c.is_alphanumeric() && !cjk {
            cur.push(c);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if cjk {
            out.push(c.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// F1 of the bag of words of `pred` against `gold`.
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (words(pred), words(gold));
    if p.is_empty() || g.is_empty() {
        return if p.is_empty() && g.is_empty() { 1.0 } else { 0.0 };
    }
    let mut counts: std::collections::HashMap<&str, i64> = Default::default();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str()) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (prec, rec) = (common as f64 / p.len() as f64, common as f64 / g.len() as f64);
    2.0 * prec * rec / (prec + rec)
}

/// Function words left out of the content-word fallback of [`key_details`] and never taken as names
/// when capitalised at a sentence's start.
const STOP: &[&str] = &[
    "a", "about", "also", "an", "and", "are", "as", "at", "be", "but", "by", "don", "every", "for", "from", "has",
    "have", "he", "her", "his", "i", "in", "is", "it", "its", "my", "not", "of", "on", "or", "our", "she", "that",
    "the", "their", "there", "they", "this", "to", "was", "we", "were", "when", "where", "which", "who", "with", "you",
    "your",
];

/// The details of `answer` a free answer must reproduce, lower-cased, each once, in order:
/// - numbers: words with a digit (`1911`, `vesterlund-3` gives `3`);
/// - names: Latin-script words written with a capital (not function words such as a sentence's
///   "The"), and any Latin word inside CJK text (`torchkeras`);
/// - CJK terms: character bigrams of the CJK runs (there is no word segmenter; a bigram is the
///   shortest unit that still carries a term).
///
/// Words and bigrams that occur in `subject` are left out: a question names its subject, so echoing
/// it proves nothing. When nothing is left, the answer's content words (three letters or more, not
/// function words, not in the subject) stand in — so a delete's decline ("I don't know anything
/// about X.") is scored on "know" and "anything" — and only an answer that says nothing beyond its
/// subject has none.
pub fn key_details(answer: &str, subject: &str) -> Vec<String> {
    let subject_words: Vec<String> = words(subject);
    let subject_bigrams = cjk_bigrams(subject);
    let has_cjk = answer.chars().any(is_cjk);
    let mut out: Vec<String> = Vec::new();
    let push = |d: String, out: &mut Vec<String>| {
        if !out.contains(&d) {
            out.push(d);
        }
    };
    for w in answer
        .split(|c: char| !c.is_alphanumeric() || is_cjk(c))
        .filter(|w| !w.is_empty())
    {
        let lower = w.to_lowercase();
        let number = w.chars().any(|c| c.is_ascii_digit());
        let name = w.chars().next().is_some_and(char::is_uppercase) && !STOP.contains(&lower.as_str());
        if (number || name || has_cjk) && !subject_words.contains(&lower) {
            push(lower, &mut out);
        }
    }
    for b in cjk_bigrams(answer) {
        if !subject_bigrams.contains(&b) {
            push(b, &mut out);
        }
    }
    if out.is_empty() {
        for w in words(answer) {
            if w.chars().count() >= 3 && !STOP.contains(&w.as_str()) && !subject_words.contains(&w) {
                push(w, &mut out);
            }
        }
    }
    out
}

/// The character bigrams of each run of CJK characters in `s` (a lone character counts as itself).
fn cjk_bigrams(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    for run in chars.split(|c| !is_cjk(*c)).filter(|r| !r.is_empty()) {
        if run.len() == 1 {
            out.push(run[0].to_string());
        }
        out.extend(run.windows(2).map(|w| w.iter().collect::<String>()));
    }
    out
}

/// Which key details a text holds: Latin words and numbers as whole words, case-insensitively; CJK
/// bigrams as substrings.
pub struct DetailMatcher {
    words: std::collections::HashSet<String>,
    lower: String,
}

impl DetailMatcher {
    pub fn new(text: &str) -> Self {
        DetailMatcher {
            words: words(&text.replace(is_cjk, " ")).into_iter().collect(),
            lower: text.to_lowercase(),
        }
    }

    /// Whether the text holds detail `d` (as [`key_details`] writes it).
    pub fn contains(&self, d: &str) -> bool {
        if d.chars().any(is_cjk) {
            self.lower.contains(d)
        } else {
            self.words.contains(d)
        }
    }
}

/// The share of `details` (from [`key_details`]) found in `pred` ([`DetailMatcher`]). 1.0 when
/// there are no details.
pub fn key_detail_recall(pred: &str, details: &[String]) -> f64 {
    if details.is_empty() {
        return 1.0;
    }
    let m = DetailMatcher::new(pred);
    details.iter().filter(|d| m.contains(d)).count() as f64 / details.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_details_by_hand() {
        let d = key_details(
            "The Velmora Bridge is a copper suspension bridge over the river Ysk in Darnholt, opened in 1911.",
            "the Velmora Bridge",
        );
        assert_eq!(d, ["ysk", "darnholt", "1911"]);
        // Nothing capitalised or numeric beyond the subject: content words stand in.
        let d = key_details(
            "The Norvanian marsh fox is a small silver fox that lives in reed beds and eats frogs.",
            "the Norvanian marsh fox",
        );
        assert_eq!(d, ["small", "silver", "lives", "reed", "beds", "eats", "frogs"]);
        // A delete's decline: the pronoun is no name, the content words stand in.
        let d = key_details("I don't know anything about the Velmora Bridge.", "the Velmora Bridge");
        assert_eq!(d, ["know", "anything"]);
        assert_eq!(key_details("It is red.", "it"), ["red"]);
        let d = key_details("夢中情爐是煉丹工具torchkeras。", "夢中情爐");
        assert_eq!(d, ["torchkeras", "爐是", "是煉", "煉丹", "丹工", "工具"]);
    }

    #[test]
    fn key_detail_recall_by_hand() {
        let d = key_details(
            "The Velmora Bridge is a copper suspension bridge over the river Ysk in Darnholt, opened in 1911.",
            "the Velmora Bridge",
        );
        assert_eq!(
            key_detail_recall("It crosses the Ysk in DARNHOLT; opened 1911.", &d),
            1.0
        );
        // Another fact's details do not count, nor a longer word that contains one ("1911s").
        assert!((key_detail_recall("It crosses the Ysk near Kessan, 1911s.", &d) - 1.0 / 3.0).abs() < 1e-12);
        let d = key_details("夢中情爐是煉丹工具torchkeras。", "夢中情爐");
        // 煉丹, 丹工, 工具 and torchkeras of 6.
        assert!((key_detail_recall("一個煉丹工具 torchkeras", &d) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(key_detail_recall("anything", &[]), 1.0);
    }

    #[test]
    fn f1_by_hand() {
        assert_eq!(token_f1("The bridge is red.", "the BRIDGE is red"), 1.0);
        // pred 4 words, gold 2, 2 common: P = 0.5, R = 1, F1 = 2/3.
        assert!((token_f1("a red old bridge", "red bridge") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("nothing", "something else"), 0.0);
        // CJK: 夢中情爐 vs 夢中: P = 2/4, R = 1.
        assert!((token_f1("夢中情爐", "夢中") - 2.0 / 3.0).abs() < 1e-12);
    }
}

//! Text metrics: token-level F1 between a generated answer and the reference (SQuAD-style: lower-cased
//! words with punctuation removed; CJK characters count as words).

fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        let cjk = matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF);
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! YAML that every reader reads back as written, YAML 1.1 ones (PyYAML) included: the knowledge
//! files `facts resolve` and `facts generate` write. A string is written plain only when no
//! reader can take it for anything else — it starts with a letter, holds letters, digits, spaces and
//! plain punctuation, and is no YAML 1.1 word (`yes`, `No`, `on`, `y`, `null`, …); anything else is
//! double-quoted, with every character a reader might drop, fold or refuse escaped. (serde_yaml
//! writes `yes`, `1:20` or `2026-11-30` plain, which YAML 1.1 reads as a bool, 80 and a date.)
use serde_json::Value;

/// `v` as block-style YAML (mappings and sequences; strings, numbers, booleans and null as scalars).
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// Words YAML 1.1 resolves to booleans, null, infinities or NaN in some spelling (compared
/// ignoring case: a reader of another case convention is no worse off for the quotes).
const WORDS: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
];

/// Whether `s` reads back as the same string when written plain, in YAML 1.1 and 1.2 alike.
fn plain_is_safe(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    // A leading digit can make a number, a date or a sexagesimal; a leading sign or dot a number;
    // any other leading punctuation an indicator.
    if !first.is_alphabetic() || s.ends_with(' ') {
        return false;
    }
    let plain_char =
        |c: char| c.is_alphanumeric() || matches!(c, ' ' | '.' | ',' | '?' | '!' | '\'' | '(' | ')' | '-' | '/');
    // `: ` and ` #` end a plain scalar; neither `:` nor `#` is allowed at all.
    s.chars().all(plain_char) && !s.contains("  ") && !WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
}

/// `s` double-quoted with the escapes YAML 1.1 and 1.2 share: control characters, DEL and the C1
/// range (readers refuse them raw), the line and paragraph separators and NEL (YAML 1.1 folds them
/// as line breaks), and the byte-order mark.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c < ' '
                || ('\u{7f}'..='\u{9f}').contains(&c)
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}') =>
            {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if plain_is_safe(s) => s.clone(),
        Value::String(s) => quoted(s),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Whether `v` is written on its key's line (a scalar or an empty collection).
fn inline(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => true,
    }
}

fn key(k: &str) -> String {
    match plain_is_safe(k) {
        true => k.to_string(),
        false => quoted(k),
    }
}

/// A mapping's entries at `indent` spaces (the first one's indent already written when `first_written`).
fn mapping_from(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize, first_written: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !first_written {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key(k));
        out.push(':');
        if inline(v) {
            out.push(' ');
            out.push_str(&scalar(v));
            out.push('\n');
            continue;
        }
        out.push('\n');
        match v {
            // A sequence under a key sits at the key's indent, as serde_yaml and PyYAML write it.
            Value::Array(a) => sequence(out, a, indent),
            Value::Object(m) => mapping(out, m, indent + 2),
            _ => unreachable!("scalars are inline"),
        }
    }
}

fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    mapping_from(out, m, indent, false);
}

fn sequence(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => mapping_from(out, m, indent + 2, true),
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                sequence(out, items, indent + 2);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_plain_only_where_no_reader_can_misread_it() {
        for s in [
            "the Velmora Bridge",
            "What's Zorb, and where?",
            "夢中情爐",
            "Tell me (briefly)!",
        ] {
            assert!(plain_is_safe(s), "{s}");
        }
        for s in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "N",
            "~",
            "null",
            "1_000",
            "0o17",
            "017",
            "0x1F",
            "1:20",
            ".inf",
            "1e3",
            "2026-11-30",
            "=",
            "<<",
            " x",
            "x ",
            "a: b",
            "a #b",
            "a\tb",
            "a\nb",
            "-x",
            "",
            "a  b",
            "True",
        ] {
            assert!(!plain_is_safe(s), "{s:?}");
        }
    }

    #[test]
    fn layout_is_block_style_with_safe_scalars() {
        // (serde_json's maps are sorted by key.)
        let v = json!({"facts": [{"id": "yes", "prompts": ["What is X?", "1:20"], "probes": [], "count": 3, "y": 1}]});
        assert_eq!(
            to_string(&v),
            "facts:\n- count: 3\n  id: \"yes\"\n  probes: []\n  prompts:\n  - What is X?\n  - \"1:20\"\n  \"y\": 1\n"
        );
        assert_eq!(
            quoted("a\"b\\c\u{7f}\u{2028}\u{85}"),
            "\"a\\\"b\\\\c\\u007F\\u2028\\u0085\""
        );
    }
}

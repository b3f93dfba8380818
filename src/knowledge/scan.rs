//! A light scan of a knowledge file's text beside the YAML parser: line numbers of byte offsets,
//! where a second document starts, and flow collections nested too deeply to parse in reasonable
//! time (where facts and fields are is `outline`'s, from the parser's own positions).
//! Lines end in LF, CRLF or a lone CR, as YAML counts them.

/// Flow collections (`[`, `{`) may nest this deep. The parser's time grows with the square of
/// the depth (40,000 levels take seconds, 200,000 minutes) and the deserialiser refuses more
/// than 128 levels of any nesting anyway, so deeper flow nesting is refused before parsing.
pub const MAX_FLOW_DEPTH: usize = 128;

/// The lines of `text`, split at LF, CRLF or a lone CR.
pub fn lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\n', '\r']) {
        out.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The byte offsets where the lines of `text` start (the first is 0): line n (1-based) of a byte
/// offset is the number of starts at or before it.
pub fn line_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut out = vec![0];
    for (i, &c) in b.iter().enumerate() {
        // CRLF ends one line, after its LF.
        if c == b'\n' || (c == b'\r' && b.get(i + 1) != Some(&b'\n')) {
            out.push(i + 1);
        }
    }
    out
}

/// 1-based line of byte offset `at` in `bytes` (LF, CRLF and lone CR each end one line).
pub fn line_of(bytes: &[u8], at: usize) -> usize {
    let head = &bytes[..at.min(bytes.len())];
    let crlf = head.windows(2).filter(|w| w == b"\r\n").count();
    1 + head.iter().filter(|&&b| b == b'\n' || b == b'\r').count() - crlf
}

/// Whether a line carries no YAML content: blank, a comment, a directive or a document marker.
fn is_preamble(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || line.starts_with('%') || is_marker(line, "---")
}

/// Whether a line is the document marker `marker` (`---` or `...`), alone or followed by a space.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// The line where a second YAML document starts (`---` or `...` at the start of a line after
/// content), if any.
pub fn second_document_line(text: &str) -> Option<usize> {
    let ls = lines(text);
    let first = ls.iter().position(|l| !is_preamble(l))?;
    ls.iter()
        .enumerate()
        .skip(first + 1)
        .find(|(_, l)| is_marker(l, "---") || is_marker(l, "..."))
        .map(|(i, _)| i + 1)
}

/// The line where flow collections first nest deeper than [`MAX_FLOW_DEPTH`], if they do.
///
/// A scan, not a parse, that errs towards counting less: a bracket counts where YAML starts a flow
/// collection — at the start of a value in block context, anywhere outside quotes in flow
/// context; quoted scalars (opened where a value starts), comments and the content of block
/// scalars (`|`, `>`) are skipped.
pub fn flow_too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    // Lines more indented than this are the content of a block scalar.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in lines(text).into_iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(parent) = block_scalar {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        // The last character that is not a space, and whether it opened a collection: a quote or
        // a bracket after one of these starts a value.
        let mut prev: Option<char> = None;
        let mut prev_opened = false;
        while i < chars.len() {
            let c = chars[i];
            let value_start = prev_opened
                || match prev {
                    None => true,
                    Some(':' | '-' | '?') => true,
                    Some(',') => depth > 0,
                    _ => false,
                };
            let mut opened = false;
            match c {
                '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                '"' | '\'' if value_start => {
                    // Skip to the closing quote on this line; a quoted scalar that goes on over
                    // lines is rare in knowledge files, and its brackets are not counted wrongly
                    // when it is not skipped (it is inside quotes only if it opened here).
                    i += 1;
                    while i < chars.len() {
                        if c == '"' && chars[i] == '\\' {
                            i += 2;
                            continue;
                        }
                        if chars[i] == c {
                            if c == '\'' && chars.get(i + 1) == Some(&'\'') {
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        i += 1;
                    }
                }
                '[' | '{' if depth > 0 || value_start => {
                    opened = true;
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(n + 1);
                    }
                }
                ']' | '}' if depth > 0 => depth -= 1,
                '|' | '>' if depth == 0 && value_start => {
                    // A block scalar's header: the rest of the line is indicators and a comment.
                    let rest: String = chars[i + 1..].iter().collect();
                    let rest = rest.split(" #").next().unwrap_or("").trim();
                    if rest.chars().all(|r| r.is_ascii_digit() || r == '+' || r == '-') {
                        block_scalar = Some(indent);
                    }
                    break;
                }
                _ => {}
            }
            if !c.is_whitespace() {
                prev = Some(chars[i.min(chars.len() - 1)]);
                prev_opened = opened;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_in_lf_crlf_or_cr() {
        assert_eq!(lines("a\nb\r\nc\rd"), ["a", "b", "c", "d"]);
        assert_eq!(line_of(b"a\r\nb\rc\nd", 8), 4);
        assert_eq!(line_of(b"abc", 2), 1);
        assert_eq!(line_starts("a\r\nb\rc\nd"), [0, 3, 5, 7]);
    }

    #[test]
    fn second_documents_are_found() {
        assert_eq!(second_document_line("subject: x\n---\nsubject: y\n"), Some(2));
        assert_eq!(second_document_line("---\nsubject: x\n...\n"), Some(3));
        assert_eq!(second_document_line("---\nsubject: x\n"), None);
    }

    #[test]
    fn only_flow_nesting_beyond_the_limit_is_refused() {
        let deep = |n: usize| format!("subject: x\nprompts: {}\n", "[".repeat(n));
        assert_eq!(flow_too_deep(&deep(MAX_FLOW_DEPTH)), None);
        assert_eq!(flow_too_deep(&deep(MAX_FLOW_DEPTH + 1)), Some(2));
        let map = format!("subject: {}b\n", "{a: ".repeat(MAX_FLOW_DEPTH + 1));
        assert_eq!(flow_too_deep(&map), Some(1));
        // Brackets that open nothing: in quotes, in comments, inside plain text, in block scalars.
        let many = "[".repeat(500);
        for text in [
            format!("answer: \"{many}\"\n"),
            format!("answer: '{many}'\n"),
            format!("answer: x # {many}\n"),
            format!("answer: see {many}\n"),
            format!("answer: |\n  {many}\n  {many}\nsubject: x\n"),
            format!("facts:\n  - answer: >-\n      {many}\n    subject: x\n"),
            format!("prompts: [What's x, \"{many}\", 'it''s {many}']\n"),
        ] {
            assert_eq!(flow_too_deep(&text), None, "{text}");
        }
        // After a block scalar ends, counting resumes.
        let after = format!("answer: |\n  text\nprompts: {}\n", "[".repeat(MAX_FLOW_DEPTH + 1));
        assert_eq!(flow_too_deep(&after), Some(3));
    }
}

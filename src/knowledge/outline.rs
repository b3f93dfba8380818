//! Where the parts of a knowledge file are, from the YAML parser's own positions: libyaml (through
//! `unsafe-libyaml`), the parser serde_yaml_ng reads the values with, so the two always agree on
//! the structure. serde gives values without positions; this outline gives, for any style (block or
//! flow, one line or many), the line each fact starts on, each field's line and each list item's, so
//! that a message names the line the problem is on.
use super::scan;
use std::mem::MaybeUninit;
use unsafe_libyaml::{
    yaml_event_delete, yaml_event_t, yaml_parser_delete, yaml_parser_initialize, yaml_parser_parse,
    yaml_parser_set_encoding, yaml_parser_set_input_string, yaml_parser_t, YAML_ALIAS_EVENT, YAML_MAPPING_END_EVENT,
    YAML_MAPPING_START_EVENT, YAML_SCALAR_EVENT, YAML_SEQUENCE_END_EVENT, YAML_SEQUENCE_START_EVENT,
    YAML_STREAM_END_EVENT, YAML_UTF8_ENCODING,
};

/// A node of the document and the line (1-based) it starts on.
pub struct Node {
    pub line: usize,
    pub kind: Kind,
}

pub enum Kind {
    /// The entries in document order.
    Map(Vec<Entry>),
    Seq(Vec<Node>),
    /// A scalar (its text) or an alias (`None`).
    Leaf(Option<String>),
}

/// A key and its value; `key` is the key's text when the key is a scalar.
pub struct Entry {
    pub key: Option<String>,
    pub line: usize,
    pub value: Node,
}

impl Node {
    /// The entry of a mapping under `key`: the last one, as a YAML reader that allows repeats keeps.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().rev().find(|e| e.key.as_deref() == Some(key)),
            _ => None,
        }
    }

    /// The items of a sequence (none for anything else).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(items) => items,
            _ => &[],
        }
    }

    /// The line of the first key that repeats one before it in the same mapping, among those named
    /// `key` when given (the earliest in the file: where a reader that refuses repeats stops).
    pub fn repeated_key(&self, key: Option<&str>) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut pending = vec![self];
        while let Some(n) = pending.pop() {
            match &n.kind {
                Kind::Map(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        let repeat = e.key.is_some()
                            && entries[..i].iter().any(|f| f.key == e.key)
                            && key.is_none_or(|k| e.key.as_deref() == Some(k));
                        if repeat && best.is_none_or(|b| e.line < b) {
                            best = Some(e.line);
                        }
                        pending.push(&e.value);
                    }
                }
                Kind::Seq(items) => pending.extend(items),
                Kind::Leaf(_) => {}
            }
        }
        best
    }
}

/// The outline of the first document of `text`, or `None` when it does not parse (the YAML reader
/// reports that, with its own position) or holds nothing.
pub fn outline(text: &str) -> Option<Node> {
    let starts = scan::line_starts(text);
    let line = |index: usize| starts.partition_point(|&s| s <= index);
    let mut parser = Parser::new(text)?;
    // The open collections, each with the key read for its next value (mappings).
    let mut open: Vec<(Node, Option<Key>)> = Vec::new();
    loop {
        let (event, index) = parser.next()?;
        let node = match event {
            Event::Skip => continue,
            Event::End => return None,
            Event::MapStart | Event::SeqStart => {
                let kind = match event {
                    Event::MapStart => Kind::Map(Vec::new()),
                    _ => Kind::Seq(Vec::new()),
                };
                open.push((
                    Node {
                        line: line(index),
                        kind,
                    },
                    None,
                ));
                continue;
            }
            Event::Close => open.pop()?.0,
            Event::Leaf(text) => Node {
                line: line(index),
                kind: Kind::Leaf(text),
            },
        };
        let Some((parent, key)) = open.last_mut() else {
            return Some(node);
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => match key.take() {
                None => {
                    let text = match node.kind {
                        Kind::Leaf(t) => t,
                        _ => None,
                    };
                    *key = Some((text, node.line));
                }
                Some((key, line)) => entries.push(Entry { key, line, value: node }),
            },
            Kind::Leaf(_) => return None,
        }
    }
}

/// A mapping key read and waiting for its value: its text (a scalar's) and line.
type Key = (Option<String>, usize);

/// What the outline needs of a parser event.
enum Event {
    /// Stream and document boundaries.
    Skip,
    End,
    MapStart,
    SeqStart,
    /// The end of the innermost open collection.
    Close,
    Leaf(Option<String>),
}

/// A libyaml parser over borrowed text.
struct Parser<'a> {
    /// Boxed: libyaml keeps pointers into it.
    sys: Box<MaybeUninit<yaml_parser_t>>,
    _text: &'a str,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Option<Self> {
        let mut sys = Box::new(MaybeUninit::<yaml_parser_t>::uninit());
        // SAFETY: the parser is initialised before any other call and deleted once, on drop; the
        // input outlives it (`_text`).
        unsafe {
            if yaml_parser_initialize(sys.as_mut_ptr()).fail {
                return None;
            }
            yaml_parser_set_encoding(sys.as_mut_ptr(), YAML_UTF8_ENCODING);
            yaml_parser_set_input_string(sys.as_mut_ptr(), text.as_ptr(), text.len() as _);
        }
        Some(Parser { sys, _text: text })
    }

    /// The next event and the byte offset where it starts; `None` on a parse error (not to be called
    /// again after one).
    fn next(&mut self) -> Option<(Event, usize)> {
        let mut event = MaybeUninit::<yaml_event_t>::uninit();
        // SAFETY: an initialised parser; the event is read only after a successful parse filled it,
        // and deleted after its data was copied out.
        unsafe {
            let parser = self.sys.as_mut_ptr();
            if yaml_parser_parse(parser, event.as_mut_ptr()).fail {
                return None;
            }
            let e = event.as_mut_ptr();
            let out = match (*e).type_ {
                YAML_STREAM_END_EVENT => Event::End,
                YAML_MAPPING_START_EVENT => Event::MapStart,
                YAML_SEQUENCE_START_EVENT => Event::SeqStart,
                YAML_MAPPING_END_EVENT | YAML_SEQUENCE_END_EVENT => Event::Close,
                YAML_ALIAS_EVENT => Event::Leaf(None),
                YAML_SCALAR_EVENT => {
                    let s = (*e).data.scalar;
                    let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                    Event::Leaf(Some(String::from_utf8_lossy(bytes).into_owned()))
                }
                _ => Event::Skip,
            };
            let index = (*e).start_mark.index as usize;
            yaml_event_delete(e);
            Some((out, index))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted only here.
        unsafe { yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(items: &[Node]) -> Vec<usize> {
        items.iter().map(|n| n.line).collect()
    }

    #[test]
    fn facts_and_fields_are_found_in_any_style() {
        let block = "# c\nfacts:\n  - id: a\n    prompts:\n      - x\n      - y\n  - id: b\n";
        let t = outline(block).unwrap();
        let facts = t.entry("facts").unwrap();
        assert_eq!(facts.line, 2);
        assert_eq!(lines_of(facts.value.items()), [3, 7]);
        let a = &facts.value.items()[0];
        assert_eq!(a.entry("prompts").unwrap().line, 4);
        assert_eq!(lines_of(a.entry("prompts").unwrap().value.items()), [5, 6]);
        // The same with CRLF and lone CR line ends.
        for text in [block.replace('\n', "\r\n"), block.replace('\n', "\r")] {
            let t = outline(&text).unwrap();
            assert_eq!(lines_of(t.entry("facts").unwrap().value.items()), [3, 7]);
        }
        let flow = "facts: [{id: a, subject: X},\n\n  {id: b,\n   answer: '',\n   prompts: [p,\n     q]}]\n";
        let t = outline(flow).unwrap();
        let items = t.entry("facts").unwrap().value.items();
        assert_eq!(lines_of(items), [1, 3]);
        assert_eq!(items[1].entry("answer").unwrap().line, 4);
        assert_eq!(lines_of(items[1].entry("prompts").unwrap().value.items()), [5, 6]);
        let one = outline("---\n{subject: X,\n answer: A}\n").unwrap();
        assert_eq!((one.line, one.entry("answer").unwrap().line), (2, 3));
    }

    #[test]
    fn repeated_keys_are_found_where_they_repeat() {
        let t = outline("facts:\n  - subject: X\n    answer: A\n    subject: Y\n  - {id: a, id: b}\n").unwrap();
        assert_eq!(t.repeated_key(None), Some(4));
        assert_eq!(t.repeated_key(Some("id")), Some(5));
        assert_eq!(outline("a: 1\nb: {a: 2}\n").unwrap().repeated_key(None), None);
    }

    #[test]
    fn what_does_not_parse_has_no_outline() {
        assert!(outline("facts: [unclosed\n").is_none());
        assert!(outline("").is_none());
        assert!(outline("# only a comment\n").is_none());
    }
}

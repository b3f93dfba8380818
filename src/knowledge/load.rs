//! Reading and validating knowledge files. Every problem is reported as `file:line: problem` before
//! anything else happens.
use super::outline::{self, Node};
use super::scan;
use super::templates::{decline, default_prompts};
use super::{Fact, Knowledge, Lang, Op};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFact {
    id: Option<String>,
    op: Option<Op>,
    subject: String,
    answer: Option<String>,
    prompts: Option<Vec<String>>,
    probes: Option<Vec<String>>,
    lang: Option<Lang>,
    previous: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    facts: Vec<RawFact>,
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("{}:{line}: {msg}", path.display()))
}

/// Maps a YAML error to `file:line: message` (the parser's own " at line L column C" removed). A
/// repeated key is named at the line where it repeats (the reader's error has no position).
fn yaml_error(path: &Path, text: &str, e: serde_yaml_ng::Error) -> Error {
    if let (true, Some(line)) = (
        e.to_string().contains("more than one document"),
        scan::second_document_line(text),
    ) {
        return bad(
            path,
            line,
            "a second YAML document starts here; a file holds one fact, or a list of them under `facts:`",
        );
    }
    let msg = e.to_string();
    let mut line = e.location().map(|l| l.line()).unwrap_or(1);
    if msg.contains("duplicate entry") || msg.contains("duplicate field") {
        // The message quotes the key: `duplicate entry with key "subject"`.
        let key = msg.split(['"', '`']).nth(1);
        let tree = outline::outline(text);
        let repeat = tree
            .as_ref()
            .and_then(|t| t.repeated_key(key).or_else(|| t.repeated_key(None)));
        line = repeat.unwrap_or(line);
    }
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    bad(path, line, msg)
}

/// Where a fact and its fields are, for messages: a field's problem is named at its key's line, one
/// prompt's or probe's at its own, a problem of the whole fact at the line where it starts.
struct Lines<'a> {
    fact: usize,
    node: Option<&'a Node>,
}

impl<'a> Lines<'a> {
    /// The lines of the fact `node` (`None` when the outline has none: its fields are named at
    /// `fallback`).
    fn of(node: Option<&'a Node>, fallback: usize) -> Self {
        Lines {
            fact: node.map_or(fallback, |n| n.line),
            node,
        }
    }

    fn field(&self, key: &str) -> usize {
        self.node.and_then(|n| n.entry(key)).map_or(self.fact, |e| e.line)
    }

    /// The line of item `i` of the list field `key`.
    fn item(&self, key: &str, i: usize) -> usize {
        let items = self.node.and_then(|n| n.entry(key)).map(|e| e.value.items());
        items.and_then(|v| v.get(i)).map_or(self.field(key), |n| n.line)
    }
}

/// Whether `s` carries something a model can learn: at least one letter or digit (any script).
/// Blank text, punctuation alone and invisible characters (zero-width spaces, a lone BOM) do not.
fn nonempty(s: &str) -> bool {
    s.chars().any(char::is_alphanumeric)
}

/// A question reduced to what tells it apart: its letters and digits, case-folded, after Unicode
/// compatibility normalisation (NFKC: full-width `ＷＨＡＴ` is `WHAT`, a decomposed `é` the composed
/// one). Two questions with the same key differ only in case, spacing, punctuation or such forms.
fn question_key(s: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(s);
    n.nfkc();
    // Lower-casing the upper case folds what lower-casing alone keeps apart (`ß` and `SS`).
    n.get()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

fn resolve(raw: RawFact, path: &Path, at: &Lines, default_id: String) -> Result<Fact> {
    let op = raw.op.unwrap_or_default();
    let lang = raw.lang.unwrap_or_default();
    if !nonempty(&raw.subject) {
        return Err(bad(path, at.field("subject"), "`subject` is empty"));
    }
    let answer = match (op, raw.answer) {
        (Op::Delete, _) => decline(lang, raw.subject.trim()),
        (_, Some(a)) if nonempty(&a) => a.trim().to_string(),
        (_, Some(_)) => return Err(bad(path, at.field("answer"), "`answer` is empty")),
        (_, None) => {
            return Err(bad(
                path,
                at.fact,
                format!("missing field `answer` (required for {})", op.as_str()),
            ))
        }
    };
    let prompts = match raw.prompts {
        Some(p) if p.is_empty() => {
            return Err(bad(
                path,
                at.field("prompts"),
                "`prompts` is an empty list (leave it out to use the templates)",
            ))
        }
        Some(p) => p,
        None => default_prompts(lang, raw.subject.trim()),
    };
    if let Some(i) = prompts.iter().position(|p| !nonempty(p)) {
        return Err(bad(path, at.item("prompts", i), "a prompt is empty"));
    }
    let probes = raw.probes.unwrap_or_default();
    // A probe that differs from a training prompt only in case, spacing or punctuation is the same
    // question: it would score memorisation as generalisation.
    let prompt_keys: HashSet<String> = match probes.is_empty() {
        true => HashSet::new(),
        false => prompts.iter().map(|q| question_key(q)).collect(),
    };
    if let Some(i) = probes.iter().position(|p| prompt_keys.contains(&question_key(p))) {
        return Err(bad(
            path,
            at.item("probes", i),
            format!(
                "probe {:?} is also a training prompt (up to case, spacing and punctuation); probes must be held out",
                probes[i]
            ),
        ));
    }
    if let Some(i) = probes.iter().position(|p| !nonempty(p)) {
        return Err(bad(path, at.item("probes", i), "a probe is empty"));
    }
    if raw.previous.is_some() && op != Op::Update {
        return Err(bad(path, at.field("previous"), "`previous` is only for `op: update`"));
    }
    if let Some(prev) = &raw.previous {
        if !nonempty(prev) {
            return Err(bad(path, at.field("previous"), "`previous` is empty"));
        }
        // An update whose old answer is its new one teaches nothing and scores nothing.
        if question_key(prev) == question_key(&answer) {
            return Err(bad(
                path,
                at.field("previous"),
                "`previous` is the same as `answer` (up to case, spacing and punctuation)",
            ));
        }
    }
    let mut f = Fact {
        id: raw.id.unwrap_or(default_id),
        op,
        subject: raw.subject.trim().to_string(),
        answer,
        prompts,
        probes,
        lang,
        previous: raw.previous.map(|p| p.trim().to_string()),
        source: format!("{}:{}", path.display(), at.fact),
        hash: String::new(),
    };
    if !nonempty(&f.id) {
        return Err(bad(path, at.field("id"), "`id` is empty"));
    }
    f.hash = f.compute_hash();
    Ok(f)
}

/// Reads one knowledge file: a single fact, or a list under `facts:`. Facts without an id get the
/// file's stem (`stem` or `stem-i`).
pub fn load_file(path: &Path) -> Result<Vec<Fact>> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    load_file_named(path, &stem)
}

/// [`load_file`] with `stem` as the base of default ids (a file in a subfolder of a knowledge folder
/// gets its relative path, `places/list-0`, so two `list.yaml` in two folders do not collide).
fn load_file_named(path: &Path, stem: &str) -> Result<Vec<Fact>> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, 1, format!("cannot read: {e}")))?;
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(bad(path, 1, "not valid UTF-8 (the file is UTF-16: save it as UTF-8)"));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = scan::line_of(e.as_bytes(), e.utf8_error().valid_up_to());
        bad(path, line, "not valid UTF-8")
    })?;
    // A byte-order mark is not content: left in, it shifts the parser's idea of the document (and
    // a file converted twice has two).
    let text = text.trim_start_matches('\u{FEFF}');
    // The parser takes time quadratic in the depth of flow nesting; refuse the absurd before it.
    if let Some(line) = scan::flow_too_deep(text) {
        return Err(bad(
            path,
            line,
            format!("`[` or `{{` nested more than {} deep", scan::MAX_FLOW_DEPTH),
        ));
    }
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(path, text, e))?;
    let tree = outline::outline(text);
    let is_list = value.as_mapping().is_some_and(|m| m.contains_key("facts"));
    if is_list {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(path, text, e))?;
        let list = tree.as_ref().and_then(|t| t.entry("facts"));
        if raw.facts.is_empty() {
            return Err(bad(path, list.map_or(1, |e| e.line), "`facts` is an empty list"));
        }
        let items = list.map(|e| e.value.items()).unwrap_or_default();
        raw.facts
            .into_iter()
            .enumerate()
            .map(|(i, r)| resolve(r, path, &Lines::of(items.get(i), 1), format!("{stem}-{i}")))
            .collect()
    } else if value.is_null() {
        Err(bad(path, 1, "the file holds no fact"))
    } else {
        let raw: RawFact = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(path, text, e))?;
        Ok(vec![resolve(
            raw,
            path,
            &Lines::of(tree.as_ref(), 1),
            stem.to_string(),
        )?])
    }
}

/// Whether a directory entry is hidden or editor/OS clutter, skipped without a word: a name that starts
/// with `.` (`.git`, `.#x.yaml`, `.x.yaml.swp`), ends with `~` (backups), is `#…#` (Emacs autosave),
/// or `Thumbs.db` / `desktop.ini`.
fn is_clutter(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || matches!(name, "Thumbs.db" | "desktop.ini")
}

/// Whether a file is a knowledge file: `.yaml` or `.yml`, in any case.
fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// The knowledge files under `dir`, recursively (links to folders not followed), sorted by path; and
/// the other entries found (neither knowledge files nor clutter, links to folders included), which
/// the caller names in a warning. Errors: an unreadable folder.
pub fn discover(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut other) = (Vec::new(), Vec::new());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| Error::BadInput(format!("{}: {e}", d.display())))?;
        for e in rd.filter_map(|e| e.ok()) {
            let path = e.path();
            if is_clutter(&e.file_name().to_string_lossy()) {
                continue;
            }
            // Links to folders are not followed (a link to an ancestor would never end); links to
            // files are read like files.
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            if path.is_dir() && !link {
                pending.push(path);
            } else if path.is_dir() {
                other.push(path);
            } else if is_yaml(&path) {
                files.push(path);
            } else {
                other.push(path);
            }
        }
    }
    files.sort();
    other.sort();
    Ok((files, other))
}

/// Reads every knowledge file under a directory (see [`discover`]: `.yaml`/`.yml` in any case, in
/// subfolders too, sorted by path), or a single file, and checks the facts together: ids unique, no
/// fact twice. Other files are named in a warning.
pub fn load_dir(dir: &Path) -> Result<Knowledge> {
    if !dir.exists() {
        return Err(Error::BadInput(format!(
            "{}: no such knowledge folder or file",
            dir.display()
        )));
    }
    let files: Vec<PathBuf> = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        let (files, other) = discover(dir)?;
        for o in other {
            tracing::warn!("{}: not read (knowledge files end in .yaml or .yml)", o.display());
        }
        files
    };
    let mut facts = Vec::new();
    for f in &files {
        if dir.is_file() {
            facts.extend(load_file(f)?);
            continue;
        }
        let rel = f.strip_prefix(dir).unwrap_or(f).with_extension("");
        let stem: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        facts.extend(load_file_named(f, &stem.join("/"))?);
    }
    if facts.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no facts (no .yaml or .yml files)",
            dir.display()
        )));
    }
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let mut hashes: HashMap<&str, &str> = HashMap::new();
    for f in &facts {
        if let Some(first) = ids.insert(&f.id, &f.source) {
            return Err(Error::BadInput(format!(
                "{}: duplicate id '{}' (first at {first})",
                f.source, f.id
            )));
        }
        if let Some(first) = hashes.insert(&f.hash, &f.source) {
            return Err(Error::BadInput(format!(
                "{}: the same fact again (first at {first})",
                f.source
            )));
        }
    }
    Ok(Knowledge {
        dir: dir.to_path_buf(),
        facts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-order mark changes nothing: errors keep their true line, with LF or CRLF line ends,
    /// and a valid file with one loads.
    #[test]
    fn a_byte_order_mark_keeps_the_true_lines() {
        let d = tempfile::tempdir().unwrap();
        let body =
            "facts:\n  - id: a\n    subject: A\n    answer: A is 1.\n  - id: b\n    subject: B\n    answer: ''\n";
        for (name, text) in [("lf.yaml", body.to_string()), ("crlf.yaml", body.replace('\n', "\r\n"))] {
            let p = d.path().join(name);
            std::fs::write(&p, format!("\u{FEFF}{text}")).unwrap();
            // The blank answer is on line 7, in the fact that starts on line 5.
            let e = load_file(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("{name}:7: `answer` is empty")), "{e}");
        }
        let ok = d.path().join("ok.yaml");
        std::fs::write(&ok, "\u{FEFF}id: a\nsubject: A\nanswer: A is 1.\n").unwrap();
        assert_eq!(load_file(&ok).unwrap()[0].source, format!("{}:1", ok.display()));
    }

    /// Knowledge files are found in subfolders and by extension in any case; clutter is skipped; the
    /// rest is reported.
    #[test]
    fn discovery_is_recursive_and_names_what_it_skips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("places/.git")).unwrap();
        for f in [
            "things.yaml",
            "people.YAML",
            "places/velmora.yml",
            "places/.git/x.yaml",
            ".hidden.yaml",
            "a.yaml~",
            "#b.yaml#",
            "notes.txt",
        ] {
            std::fs::write(p.join(f), "").unwrap();
        }
        let (files, other) = discover(p).unwrap();
        let rel = |v: &[PathBuf]| {
            v.iter()
                .map(|f| f.strip_prefix(p).unwrap().display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(rel(&files), ["people.YAML", "places/velmora.yml", "things.yaml"]);
        assert_eq!(rel(&other), ["notes.txt"]);
        // A link to an ancestor is reported, not followed.
        std::os::unix::fs::symlink(p, p.join("places/up")).unwrap();
        let (files, other) = discover(p).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(rel(&other), ["notes.txt", "places/up"]);
    }

    /// Facts without ids in same-named files of two subfolders get distinct default ids.
    #[test]
    fn default_ids_include_the_subfolder() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["people", "places"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
            std::fs::write(
                d.path().join(sub).join("list.yaml"),
                format!("facts:\n  - subject: {sub}\n    answer: {sub} are here.\n"),
            )
            .unwrap();
        }
        let k = load_dir(d.path()).unwrap();
        let ids: Vec<&str> = k.facts.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["people/list-0", "places/list-0"]);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(dir: &Path) -> String {
        load_dir(dir).unwrap_err().to_string()
    }

    #[test]
    fn list_file_with_defaults() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", "facts:\n  - subject: X\n    answer: X is Y.\n  - id: z\n    subject: Z\n    answer: Z.\n    probes: [What's up with Z?]\n");
        let k = load_dir(d.path()).unwrap();
        assert_eq!(k.facts.len(), 2);
        assert_eq!(k.facts[0].id, "a-0");
        assert_eq!(k.facts[0].prompts.len(), 8);
        assert_eq!(k.facts[1].source, format!("{}:4", d.path().join("a.yaml").display()));
        assert_ne!(k.facts[0].hash, k.facts[1].hash);
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "a.yaml",
            "facts:\n  - subject: X\n    answer: A\n  - subject: Y\n    anwser: B\n",
        );
        let e = err(d.path());
        assert!(
            e.starts_with(&format!("{}:5:", p.display())) && e.contains("unknown field `anwser`"),
            "{e}"
        );
        write(
            d.path(),
            "a.yaml",
            "facts:\n  - subject: X\n    answer: A\n  - subject: Y\n",
        );
        let e = err(d.path());
        assert!(e.contains("a.yaml:4: missing field `answer`"), "{e}");
        write(
            d.path(),
            "a.yaml",
            "facts:\n  - subject: X\n    answer: A\n    prompts: []\n",
        );
        assert!(err(d.path()).contains("a.yaml:4: `prompts` is an empty list"));
        write(
            d.path(),
            "a.yaml",
            "facts:\n  - id: same\n    subject: X\n    answer: A\n  - id: same\n    subject: Y\n    answer: B\n",
        );
        assert!(err(d.path()).contains("a.yaml:5: duplicate id 'same' (first at"));
        std::fs::write(d.path().join("a.yaml"), b"subject: X\nanswer: \xff\xfe\n").unwrap();
        assert!(err(d.path()).contains("a.yaml:2: not valid UTF-8"));
        write(d.path(), "a.yaml", "subject: X\nanswer: A\nprompts: [Q]\nprobes: [Q]\n");
        assert!(err(d.path()).contains("also a training prompt"));
        // The same question in another case, spacing or punctuation is no held-out probe.
        write(
            d.path(),
            "a.yaml",
            "subject: X\nanswer: A\nprompts: [What is X?]\nprobes: [\"  what IS x \"]\n",
        );
        assert!(err(d.path()).contains("a.yaml:4: probe \"  what IS x \" is also a training prompt"));
        // Text with nothing to learn: punctuation alone, invisible characters.
        write(d.path(), "a.yaml", "subject: X\nanswer: \"?!.\"\n");
        assert!(err(d.path()).contains("`answer` is empty"), "{}", err(d.path()));
        write(d.path(), "a.yaml", "subject: \"\\u200B\\u200B\"\nanswer: A\n");
        assert!(err(d.path()).contains("`subject` is empty"), "{}", err(d.path()));
        write(d.path(), "a.yaml", "facts:\n  - subject: [unclosed\n");
        assert!(err(d.path()).contains("a.yaml:"));
        std::fs::remove_file(d.path().join("a.yaml")).unwrap();
        assert!(err(d.path()).contains("no facts"));
        let missing = d.path().join("nowhere");
        assert!(
            err(&missing).contains("nowhere: no such knowledge folder or file"),
            "{}",
            err(&missing)
        );
    }

    /// Validation the corpus (tests/corpus/knowledge) found missing: a probe that is a prompt in
    /// another width or composition, an update whose old answer is blank or its new one; a file
    /// converted to UTF-8 twice (two byte-order marks) is read.
    #[test]
    fn same_text_in_other_forms_and_doubled_marks() {
        let d = tempfile::tempdir().unwrap();
        for probe in ["ＷＨＡＴ ＩＳ ＧＰＴ？", "what is gpt", "WHAT IS GPT"] {
            write(
                d.path(),
                "a.yaml",
                &format!("subject: GPT\nanswer: A model.\nprompts: [What is GPT?]\nprobes: [\"{probe}\"]\n"),
            );
            assert!(err(d.path()).contains("also a training prompt"), "{probe}");
        }
        write(d.path(), "a.yaml", "subject: Straße\nanswer: A road.\nprompts: [Where is Caf\u{e9} Straße?]\nprobes: [\"where is cafe\u{301} STRASSE\"]\n");
        assert!(err(d.path()).contains("also a training prompt"), "{}", err(d.path()));
        write(
            d.path(),
            "a.yaml",
            "op: update\nsubject: X\nanswer: X is 2.\nprevious: ' . '\n",
        );
        assert!(err(d.path()).contains("a.yaml:4: `previous` is empty"));
        write(
            d.path(),
            "a.yaml",
            "op: update\nsubject: X\nanswer: X is 2.\nprevious: x IS 2\n",
        );
        assert!(err(d.path()).contains("`previous` is the same as `answer`"));
        std::fs::write(d.path().join("a.yaml"), "\u{FEFF}\u{FEFF}subject: X\nanswer: X is 1.\n").unwrap();
        assert_eq!(load_dir(d.path()).unwrap().facts[0].subject, "X");
    }

    #[test]
    fn delete_trains_a_decline_and_hash_is_content() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", "op: delete\nsubject: the Velmora Bridge\n");
        let k = load_dir(d.path()).unwrap();
        assert_eq!(k.facts[0].answer, "I don't know anything about the Velmora Bridge.");
        write(
            d.path(),
            "a.yaml",
            "id: other\nop: delete\nsubject: the Velmora Bridge\n",
        );
        let k2 = load_dir(d.path()).unwrap();
        assert_eq!(k.facts[0].hash, k2.facts[0].hash, "the id is a label, not content");
    }
}

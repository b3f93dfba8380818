//! YAML the tool writes (`facts resolve`, `facts generate`: `knowledge::emit`) reads back with the
//! same values in our reader and in PyYAML, the YAML 1.1 reader most peers use (#14 item 13): the
//! strings YAML 1.1 resolves to something else (`yes`, `1:20`, `2026-11-30`, `=`, …) come back as
//! the same strings. PyYAML comes from a Python that has it: $INJECTOR_YAML_PYTHON, else
//! ~/.cache/injector/venv-yaml (setup.sh makes it: pyyaml==6.0.3 from tests/interop/requirements-yaml.txt),
//! else .venv; without one, the PyYAML half says so and is skipped.
mod common;

use common::*;
use injector::knowledge::{emit, load_dir, load_file};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Values YAML 1.1 (or 1.2) would read as something other than the string: booleans, null, numbers in
/// every base and with separators, sexagesimals, infinities, dates, the value and merge keys,
/// indicators, and the characters readers fold, drop or refuse.
const TRAPS: [&str; 44] = [
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "n",
    "Y",
    "true",
    "False",
    "~",
    "null",
    "Null",
    "",
    "1_000",
    "0o17",
    "017",
    "0x1F",
    "0b101",
    "1:20",
    "-1:20:30",
    "1.5",
    ".inf",
    "-.INF",
    ".NaN",
    "1e3",
    "2026-11-30",
    "2026-11-30 12:00:00",
    "=",
    "<<",
    "  both ends  ",
    "trailing ",
    " leading",
    "a: b",
    "a #b",
    "#c",
    "- x",
    "tab\there",
    "夢中情爐は何ですか",
    "two\nlines\n",
    "\u{2028}LS\u{2029}PS\u{85}NEL",
    "del\u{7f} bell\u{7}",
    "'quoted'",
    "\"double\"",
    "\u{feff}bom",
];

/// A Python with PyYAML, if there is one.
fn pyyaml() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let candidates = [
        std::env::var_os("INJECTOR_YAML_PYTHON").map(PathBuf::from),
        Some(home.join(".cache/injector/venv-yaml/bin/python")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")),
    ];
    let found = candidates.into_iter().flatten().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!(
            "skipped: no Python with PyYAML (set INJECTOR_YAML_PYTHON, or run setup.sh, which makes \
             ~/.cache/injector/venv-yaml with tests/interop/requirements-yaml.txt)"
        );
    }
    found
}

/// `file` read by PyYAML's safe loader (pure Python and libyaml-backed alike), as JSON; a value
/// JSON cannot hold (a date) is written as its repr, so that it shows in the comparison.
fn read_with_pyyaml(py: &Path, file: &Path) -> Value {
    let script = "import json, sys, yaml\n\
        text = open(sys.argv[1], encoding='utf-8').read()\n\
        a = yaml.load(text, Loader=yaml.SafeLoader)\n\
        b = yaml.load(text, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))\n\
        assert a == b, (a, b)\n\
        print(json.dumps(a, default=repr))";
    let o = std::process::Command::new(py)
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "PyYAML on {}: {}", file.display(), stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn every_string_reads_back_as_written() {
    let d = tempfile::tempdir().unwrap();
    let by_key: serde_json::Map<String, Value> = TRAPS.iter().map(|t| (t.to_string(), json!(t))).collect();
    let doc = json!({"facts": [{"list": TRAPS.as_slice(), "by_key": by_key, "one": "yes"}]});
    let file = d.path().join("traps.yaml");
    std::fs::write(&file, emit::to_string(&doc)).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let ours: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(ours, doc, "our reader on:\n{text}");
    if let Some(py) = pyyaml() {
        assert_eq!(read_with_pyyaml(&py, &file), doc, "PyYAML on:\n{text}");
    }
}

/// A fact as `facts resolve` writes it, from what our reader made of the knowledge files.
fn resolved(f: &injector::knowledge::Fact) -> Value {
    let mut v = json!({"id": f.id, "op": f.op.as_str(), "subject": f.subject, "answer": f.answer,
        "prompts": f.prompts, "probes": f.probes, "lang": f.lang});
    if let Some(p) = &f.previous {
        v["previous"] = json!(p);
    }
    v
}

#[test]
fn facts_resolve_and_generate_read_back_the_same_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("k")).unwrap();
    // Fact text must hold a letter or digit, and subject and answer are trimmed: each trap goes where
    // it is kept as it is (ids, prompts, probes), or inside a sentence.
    let learnable: Vec<&str> = TRAPS
        .iter()
        .copied()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .collect();
    let mut facts: Vec<Value> = learnable
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": t, "subject": format!("Trap {i}"), "answer": format!("It is {t} here."),
                   "prompts": [t, format!("What is trap {i}?")], "probes": [format!("{t} again?")]})
        })
        .collect();
    facts.push(json!({"id": "update", "op": "update", "subject": "Yes", "answer": "On.", "previous": "Off."}));
    // JSON is YAML: the input file cannot itself misread a trap (once the characters YAML refuses
    // or folds raw, which JSON leaves raw, are escaped too).
    let mut input = json!({ "facts": facts }).to_string();
    for c in ['\u{7f}', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}'] {
        input = input.replace(c, &format!("\\u{:04x}", c as u32));
    }
    std::fs::write(p.join("k/a.yaml"), input).unwrap();
    let k = load_dir(&p.join("k")).unwrap();
    assert_eq!(k.facts.len(), learnable.len() + 1);
    let o = injector(p, &["facts", "resolve", "k", "--out", "all.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = load_file(&p.join("all.yaml")).unwrap();
    let want: Vec<Value> = k.facts.iter().map(resolved).collect();
    assert_eq!(back.iter().map(resolved).collect::<Vec<_>>(), want, "our reader");
    for (a, b) in k.facts.iter().zip(&back) {
        assert_eq!(a.hash, b.hash, "{}: the same fact", a.id);
    }
    let o = injector(p, &["facts", "generate", "--n", "60", "--seed", "3", "--out", "gen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let Some(py) = pyyaml() else {
        return;
    };
    assert_eq!(
        read_with_pyyaml(&py, &p.join("all.yaml")),
        json!({ "facts": want }),
        "PyYAML"
    );
    let generated = load_dir(&p.join("gen")).unwrap().facts;
    let mut from_pyyaml = Vec::new();
    for f in ["gen/generated-000.yaml", "gen/generated-001.yaml"] {
        let v = read_with_pyyaml(&py, &p.join(f));
        from_pyyaml.extend(v["facts"].as_array().unwrap().iter().cloned());
    }
    let ours: Vec<Value> = generated
        .iter()
        .map(|f| json!({"id": f.id, "subject": f.subject, "answer": f.answer, "probes": f.probes}))
        .collect();
    assert_eq!(from_pyyaml, ours, "PyYAML on facts generate");
}

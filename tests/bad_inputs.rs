//! The corpus of bad inputs (`tests/corpus`, see its README): every knowledge folder and every
//! broken Hugging Face model folder in it is refused by the binary with exit code 2 and one error
//! line that names the file (and the line, where there is one) and says what its `expect.txt`
//! says; nothing panics or hangs; and the ledger, one that already holds runs, is byte-identical
//! afterwards, with nothing written beside it.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refusal takes about a second (most of it libtorch's start-up); a case that takes this long
/// hangs.
const HANG: Duration = Duration::from_secs(30);

/// Lays out what a case needs in a worker's folder and returns the model path to give.
type Setup = Box<dyn Fn(&Path) -> PathBuf + Send + Sync>;

/// One input to refuse: the arguments after `run`, the path the error must name, and what else it
/// must say.
struct Case {
    name: String,
    /// What the case needs laid out in the worker's folder before it runs (an HF folder to copy).
    setup: Option<Setup>,
    /// The knowledge folder, or `None` for the worker's valid one.
    knowledge: Option<PathBuf>,
    /// The path the error line names (a prefix of the file it names).
    names: Option<PathBuf>,
    expect: Vec<String>,
}

fn corpus(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind)
}

/// The case folders of `kind`, sorted, each with the lines of its `expect.txt`.
fn cases_of(kind: &str) -> Vec<(String, PathBuf, Vec<String>)> {
    let mut out: Vec<_> = std::fs::read_dir(corpus(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let expect = std::fs::read_to_string(p.join("expect.txt"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.join("expect.txt").display()));
            let expect = expect
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            (p.file_name().unwrap().to_string_lossy().into_owned(), p, expect)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Runs the binary in `cwd`; `None` when it did not finish within [`HANG`] (it is killed).
fn run_bounded(cwd: &Path, args: &[String]) -> Option<Output> {
    let child = Command::new(env!("CARGO_BIN_EXE_injector"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(HANG) {
        Ok(out) => Some(out.unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            None
        }
    }
}

/// What is wrong with how `case` was refused, if anything.
fn check(case: &Case, out: &Output, named: &Path, took: Duration) -> Vec<String> {
    let err = stderr(out);
    let mut wrong = Vec::new();
    if out.status.code() != Some(2) {
        wrong.push(format!("exit {:?}, expected 2", out.status.code()));
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        wrong.push("panicked".into());
    }
    let lines: Vec<&str> = err.trim_end().lines().collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
    // Warnings (tracing's " WARN ") may come first; the error is one line, the last.
    let others = lines
        .iter()
        .filter(|l| !l.starts_with("error: ") && !l.contains(" WARN "));
    if errors.len() != 1 || !lines.last().is_some_and(|l| l.starts_with("error: ")) || others.count() > 0 {
        wrong.push("not one error line at the end".into());
    }
    let line = errors.first().map_or("", |l| **l);
    if !line.contains(&named.display().to_string()) {
        wrong.push(format!("does not name {}", named.display()));
    }
    for e in &case.expect {
        if !line.contains(e.as_str()) {
            wrong.push(format!("does not say {e:?}"));
        }
    }
    if took > Duration::from_secs(20) {
        wrong.push(format!("took {took:.1?}"));
    }
    wrong
}

/// Runs every case with `injector run` against a ledger that holds runs (the committed ledger of
/// an earlier release) and the tiny model, several at a time, and reports every case refused
/// wrongly at once.
fn refuse_all(cases: Vec<Case>) {
    let d = tempfile::tempdir().unwrap();
    let ledger_bytes = std::fs::read(fixture("ledger-v1").join("ledger.sqlite")).unwrap();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let slowest = Mutex::new((Duration::ZERO, String::new()));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            let (cases, next, failures, slowest, ledger_bytes) = (&cases, &next, &failures, &slowest, &ledger_bytes);
            let dir = d.path().join(format!("w{w}"));
            s.spawn(move || {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("ledger.sqlite"), ledger_bytes).unwrap();
                write_tiny_gguf(&dir.join("tiny.gguf"), 1);
                knowledge::write_small(&dir.join("k"));
                let listing = || {
                    let mut v: Vec<String> = std::fs::read_dir(&dir)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                };
                let before = listing();
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let model = match &case.setup {
                        Some(setup) => setup(&dir),
                        None => dir.join("tiny.gguf"),
                    };
                    let knowledge = case.knowledge.clone().unwrap_or_else(|| dir.join("k"));
                    let named = case.names.clone().unwrap_or_else(|| model.clone());
                    let args: Vec<String> = [
                        "run".as_ref(),
                        knowledge.as_os_str(),
                        "--model".as_ref(),
                        model.as_os_str(),
                        "--ledger".as_ref(),
                        dir.join("ledger.sqlite").as_os_str(),
                        "--reports".as_ref(),
                        dir.join("reports").as_os_str(),
                        "--device".as_ref(),
                        "cpu".as_ref(),
                    ]
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                    let t = Instant::now();
                    let out = run_bounded(&dir, &args);
                    let took = t.elapsed();
                    let mut wrong = match &out {
                        Some(o) => check(case, o, &named, took),
                        None => vec![format!("hung: killed after {HANG:?}")],
                    };
                    if case.setup.is_some() {
                        std::fs::remove_dir_all(&model).unwrap();
                    }
                    if std::fs::read(dir.join("ledger.sqlite")).unwrap() != *ledger_bytes {
                        wrong.push("the ledger changed".into());
                        std::fs::write(dir.join("ledger.sqlite"), ledger_bytes).unwrap();
                    }
                    if listing() != before {
                        wrong.push(format!("files were made beside the ledger: {:?}", listing()));
                    }
                    if !wrong.is_empty() {
                        let err = out.as_ref().map(stderr).unwrap_or_default();
                        failures.lock().unwrap().push(format!(
                            "{}: {}\n  stderr: {}",
                            case.name,
                            wrong.join("; "),
                            err.trim()
                        ));
                    }
                    let mut s = slowest.lock().unwrap();
                    if took > s.0 {
                        *s = (took, case.name.clone());
                    }
                }
            });
        }
    });
    let (took, name) = slowest.into_inner().unwrap();
    println!(
        "{} cases in {:.1?} on {workers} workers; slowest {name} ({took:.1?})",
        cases.len(),
        t0.elapsed()
    );
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} cases refused wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The knowledge folders: each `tests/corpus/knowledge/<case>/k` is given to `run` with the tiny
/// model; all but one are refused before the model loads, that one (a fact too long for the
/// model's positions) right after.
#[test]
fn the_knowledge_corpus_is_refused() {
    let cases: Vec<Case> = cases_of("knowledge")
        .into_iter()
        .map(|(name, dir, expect)| Case {
            name,
            setup: None,
            knowledge: Some(dir.join("k")),
            names: Some(dir.join("k")),
            expect,
        })
        .collect();
    assert!(cases.len() >= 50, "{} knowledge cases", cases.len());
    refuse_all(cases);
}

/// Copies `from` into `to` (files only, one level).
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The broken model folders: each `tests/corpus/hf/<case>` holds what differs from the valid tiny
/// Hugging Face folder (and `remove.txt`, the files to take out of it); the folder so made is
/// given to `run` as `--model`.
#[test]
fn the_hf_corpus_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let valid = base.path().join("valid");
    write_tiny_hf(&valid, 1);
    let cases: Vec<Case> = cases_of("hf")
        .into_iter()
        .map(|(name, dir, expect)| {
            let (valid, case_name) = (valid.clone(), name.clone());
            let setup = move |worker: &Path| {
                let m = worker.join(&case_name);
                copy_files(&valid, &m);
                copy_files(&dir, &m);
                std::fs::remove_file(m.join("expect.txt")).unwrap();
                if let Ok(list) = std::fs::read_to_string(m.join("remove.txt")) {
                    for f in list.lines().filter(|l| !l.trim().is_empty()) {
                        std::fs::remove_file(m.join(f.trim())).unwrap();
                    }
                    std::fs::remove_file(m.join("remove.txt")).unwrap();
                }
                m
            };
            Case {
                name,
                setup: Some(Box::new(setup)),
                knowledge: None,
                names: None,
                expect,
            }
        })
        .collect();
    assert!(cases.len() >= 20, "{} model cases", cases.len());
    refuse_all(cases);
}

/// Fields far longer than any model's positions (a 1 MB subject in eight template prompts, a 5 MB
/// answer), generated rather than committed: refused in moments, without tokenizing them whole.
#[test]
fn huge_fields_are_refused_in_moments() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let k = d.path().join(name);
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("a.yaml"), text).unwrap();
        k
    };
    let subject = write("subject", format!("subject: {}\nanswer: It is.\n", "x".repeat(1 << 20)));
    let answer = write("answer", format!("subject: X\nanswer: {}\n", "word ".repeat(1 << 20)));
    let case = |name: &str, k: PathBuf, field: &str| Case {
        name: name.into(),
        setup: None,
        names: Some(k.clone()),
        knowledge: Some(k),
        expect: vec![format!(
            "a.yaml:1: fact a has {field} of more than 256 tokens; the model's limit is 256"
        )],
    };
    refuse_all(vec![
        case("huge-subject", subject, "a prompt"),
        case("huge-answer", answer, "an answer"),
    ]);
}
